"""Top-k proponents and opponents per test example without the (n_test, n_train) score matrix.

``scores`` builds the whole matrix and, per checkpoint, the features of the whole training set:
at 50,000 AG News texts × 1,000 test texts that is a 200 MB matrix plus ~0.9 GB of TracIn-WE
gradient rows per checkpoint (seq len 64). Here the training set is walked in chunks of
``chunk_size`` examples. For each chunk, at each checkpoint c, the chunk's features are computed
(or read from ``cache_dir``: one entry per chunk and checkpoint) and scored against the test
features of c, which are computed once up front; the block Σ_c η_c kernel(test, chunk),
(n_test, chunk), is merged into a running top-k and dropped. Peak memory beyond the model: the
test features of every checkpoint, one chunk's features and a (n_test, k + chunk) block —
bounded by the chunk size, not by n_train × n_test.

For the word-embedding methods with ``exact=True`` (TracIn-WE, -Topk, -NoC, grad-cos on the
embedding) and TracIn-WE-Syn, the results equal ``top_k(scores(...), k)`` exactly, ties included,
when both run at the same ``batch_size``, dtype, device and torch thread count (a per-example
gradient rounds with its batch: at another batch size, equal to rounding, and near-ties may swap):

- chunks start at multiples of ``batch_size`` (``chunk_size`` is rounded up to a multiple of it),
  so every backward pass sees exactly the batch it sees in ``scores``: a per-example gradient
  changes in the last bits with the batch it is computed in;
- a block is computed with the same kernel and the same checkpoint sum as ``scores``' columns,
  and a sparse row dot product does not depend on the other columns;
- the merge is a stable sort of (kept so far, new block), so ties keep training-index order.

By default those methods score through ``embedding.sparse_dot``'s fast path, whose dense product
covers the tokens shared by most pairs *of the texts scored together*: a chunk may pick other
tokens than the whole set. Streamed and whole scores then each lie within ``embedding.FAST_RTOL``
· Σ_c |η_c| Σ_w ‖g_w(z′)‖ ‖g_w(z)‖ of the exact path (tests/test_fast_scoring.py), so near-ties
may swap.

Kernels that are matrix products (TracIn-Last, TracIn-Layer, grad-cos on them) agree to rounding
only, since a product's entries can round differently with the width of the matrix: near-ties
may then swap.

Positive = proponent, as everywhere in ``tracin_we.influence``.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import nn
from tqdm.auto import tqdm

from tracin_we.core.inputs import Tensors
from tracin_we.influence.api import (
    Checkpoints,
    Data,
    InfluentialResults,
    _kernel,
    _validated,
    check_k,
    refuse_nan,
)
from tracin_we.influence.context import Kernel, Run, prepared
from tracin_we.influence.memory import check_memory
from tracin_we.influence.options import STREAMING_METHODS
from tracin_we.influence.progress import shown

# Training examples per chunk. At BERT-tiny size, seq len 64, 1,000 test texts: ~75 MB of
# gradient rows and a 16 MB score block per chunk; smaller chunks add per-chunk work (each
# checkpoint loaded once per chunk, a top-k merge), larger ones memory.
DEFAULT_CHUNK_SIZE = 4096


class ProponentsOpponents(NamedTuple):
    """Both ends of each test example's ranking, from one pass over the training set."""

    proponents: InfluentialResults
    opponents: InfluentialResults


def top_k_streaming(
    method: str,
    model: nn.Module,
    checkpoints: Checkpoints,
    train: Data,
    test: Data,
    k: int,
    *,
    proponents: bool = True,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    progress: bool = True,
    **options: Any,
) -> InfluentialResults:
    """``top_k(scores(method, model, checkpoints, train, test, **options), k, proponents)``,
    computed ``chunk_size`` training examples at a time: indices and influence_scores, each
    (n_test, k), on the CPU. ``progress`` shows a bar over the chunks."""
    sides = _stream(
        method, model, checkpoints, train, test, k, (proponents,), chunk_size, progress, options
    )
    return sides[0]


def top_k_streaming_both(
    method: str,
    model: nn.Module,
    checkpoints: Checkpoints,
    train: Data,
    test: Data,
    k: int,
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    progress: bool = True,
    **options: Any,
) -> ProponentsOpponents:
    """``top_k_streaming`` for the proponents and the opponents in one pass (the backward passes,
    most of the cost, are shared)."""
    sides = _stream(
        method, model, checkpoints, train, test, k, (True, False), chunk_size, progress, options
    )
    return ProponentsOpponents(*sides)


def stream_top_k(
    run: Run,
    kernel: Kernel,
    train: Tensors,
    test: Tensors,
    k: int,
    sides: tuple[bool, ...],
    chunk_size: int,
    progress: bool = False,
) -> list[InfluentialResults]:
    """The engine: for each of ``sides`` (True = proponents), the top ``k`` of
    Σ_c η_c kernel(test, train) per test example, on ``run.options.device``. The model must be
    prepared (``context.prepared``)."""
    n_train = len(train["labels"])
    step = chunk_step(chunk_size, run.options.batch_size)
    test_features = [kernel.features(run, test) for _ in run.each_checkpoint("test gradients")]
    running = [RunningTopK(k, side) for side in sides]
    starts = range(0, n_train, step)
    desc = f"top-{k} of {n_train:,} training examples"
    for start in tqdm(starts, desc=desc, unit="chunk", disable=not progress):
        chunk = {name: tensor[start : start + step] for name, tensor in train.items()}
        block = _block(run, kernel, test_features, chunk)
        for top in running:
            top.update(block, start)
    return [top.result() for top in running]


def chunk_step(chunk_size: int, batch_size: int) -> int:
    """``chunk_size`` rounded up to a multiple of ``batch_size``: chunks then start where the
    batches of ``scores`` start, so every example's gradient is computed in the same batch."""
    return -(-chunk_size // batch_size) * batch_size


@dataclass
class RunningTopK:
    """The ``k`` largest (``proponents``) or most negative entries of each row of a matrix that
    arrives as consecutive blocks of columns. Each update stable-sorts (kept, block); the kept
    entries precede the block and have smaller column indices, so ties keep column order and the
    result equals ``top_k`` of the whole matrix."""

    k: int
    proponents: bool = True
    values: torch.Tensor | None = None  # (n_rows, ≤ k), best first
    indices: torch.Tensor | None = None  # (n_rows, ≤ k) column indices
    seen: int = 0  # columns merged so far

    def update(self, block: torch.Tensor, start: int) -> None:
        """Merge ``block`` (n_rows, m), the columns ``start .. start + m - 1``."""
        if start != self.seen:
            raise ValueError(f"start={start}: blocks must be consecutive (next is {self.seen})")
        refuse_nan(block)
        rows, width = block.shape
        columns = torch.arange(start, start + width, device=block.device).expand(rows, width)
        if self.values is not None:
            block = torch.cat([self.values, block], 1)
            columns = torch.cat([self.indices, columns], 1)
        values, order = torch.sort(block, dim=1, descending=self.proponents, stable=True)
        self.values = values[:, : self.k]
        self.indices = columns.gather(1, order[:, : self.k])
        self.seen += width

    def result(self) -> InfluentialResults:
        if self.values is None:
            raise ValueError("no block was merged")
        return InfluentialResults(self.indices, self.values)


def _stream(
    method: str,
    model: nn.Module,
    checkpoints: Checkpoints,
    train: Data,
    test: Data,
    k: int,
    sides: tuple[bool, ...],
    chunk_size: int,
    progress: bool,
    options: dict,
) -> list[InfluentialResults]:
    """Validate everything, then stream; results on the CPU in ``options``' dtype."""
    if not (_is_int(chunk_size) and chunk_size >= 1):
        raise ValueError(
            f"chunk_size={chunk_size!r} must be a positive integer (training examples per chunk)"
        )
    options_, model, train_t, test_t, checkpoints_ = _validated(
        method,
        model,
        checkpoints,
        options | {"progress": progress},
        train=train,
        test=test,
        memory=False,
    )
    if method not in STREAMING_METHODS:
        raise ValueError(
            f"method={method!r} cannot stream (it is not a sum of per-checkpoint kernels); "
            f"allowed: {list(STREAMING_METHODS)}, or use scores() and top_k()"
        )
    n_train = len(train_t["labels"])
    check_k(k, n_train)
    n_test, step = len(test_t["labels"]), chunk_step(chunk_size, options_.batch_size)
    check_memory(method, model, options_, n_train, n_test, len(checkpoints_), min(step, n_train), k)
    with prepared(model, options_, probe=test_t), shown(progress):
        run = Run(model, checkpoints_, options_)
        kernel = _kernel(method, run, [train_t, test_t])
        sides_ = stream_top_k(run, kernel, train_t, test_t, k, sides, chunk_size, progress)
    return [
        InfluentialResults(top.indices.cpu(), top.influence_scores.to("cpu", options_.dtype))
        for top in sides_
    ]


def _is_int(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _block(run: Run, kernel: Kernel, test_features: list[Tensors], chunk: Tensors) -> torch.Tensor:
    """(n_test, len(chunk)): Σ_c η_c kernel(test, chunk), the chunk's columns of ``scores``
    computed as ``context.tracin`` computes them (same operations, same order)."""
    total = None
    for (state, lr), features in zip(run.each_checkpoint(), test_features, strict=True):
        part = lr * kernel.pairwise(features, run.train_features(kernel, state, chunk))
        total = part if total is None else total + part
    return total
