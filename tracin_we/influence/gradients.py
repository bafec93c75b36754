"""Batched per-example quantities at the checkpoint currently loaded in the model.

All losses are cross-entropy at the ground-truth label, taken in eval mode (the caller sets it):

- ``embedding_grads``: ∂ℓ/∂e_i at every input position i (e_i = the word-embedding output), from
  one backward pass per batch — examples are independent in eval mode, so the gradient of the
  summed loss at e_i is example i's own;
- ``SparseRows``: the word-embedding gradient of each example, kept as the rows
  g_w = Σ_{i: x_i = w} ∂ℓ/∂e_i of the tokens w it contains (never a dense vocab × d tensor);
- ``last_layer_features``: the input a of the final linear layer and the softmax p
  (∂ℓ/∂f = p − onehot(y));
- ``param_grads``: flattened per-example gradients of chosen parameters (``torch.func``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

from tracin_we.core.inputs import MODEL_INPUTS, Tensors, forward
from tracin_we.core.models import classifier_layer, word_embeddings
from tracin_we.influence.progress import bar

log = logging.getLogger(__name__)


def batches(
    data: Tensors, batch_size: int, device: str | torch.device, desc: str | None = None
) -> Iterator[Tensors]:
    """Consecutive slices of ``data`` (tensors of equal length), moved to ``device``; with
    ``desc``, behind a progress bar (``progress.bar``: shown only where a call enabled bars)."""
    n = len(data["input_ids"])
    starts = range(0, n, batch_size)
    if desc is not None:
        starts = bar(starts, f"{desc} ({n:,} examples)", total=len(starts), unit="batch")
    for start in starts:
        yield {k: v[start : start + batch_size].to(device) for k, v in data.items()}


@contextmanager
def frozen(model: nn.Module) -> Iterator[None]:
    """No parameter requires grad inside: autograd then keeps only what input gradients need."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        for p, _ in flags:
            p.requires_grad_(False)
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def embedding_grads(
    model: nn.Module,
    batch: Tensors,
    loss: Callable[[nn.Module, Tensors], torch.Tensor] | None = None,
) -> torch.Tensor:
    """∂ℓ/∂e_i, shape (B, T, d), for the word-embedding output e_i at every position i.

    ``loss(model, batch)``: the sum over the batch of per-example losses (default: the
    cross-entropy at ``labels``; multi-stage influence passes the MLM loss). [PAD] positions are
    left to the caller: ``embedding.kept_positions`` drops them, whatever gradient the model sends
    there.
    """
    captured: list[torch.Tensor] = []

    def capture(_module: nn.Module, _inputs: tuple, output: torch.Tensor) -> torch.Tensor:
        output = output.detach().requires_grad_()  # a leaf: the gradient stops here
        captured.append(output)
        return output

    handle = word_embeddings(model).register_forward_hook(capture)
    try:
        with torch.enable_grad(), frozen(model):
            if loss is None:
                total = F.cross_entropy(forward(model, batch), batch["labels"], reduction="sum")
            else:
                total = loss(model, batch)
            if len(captured) != 1:
                raise ValueError(
                    f"model: its word-embedding module ran {len(captured)} times in "
                    "one forward pass; TracIn-WE needs exactly one"
                )
            (grads,) = torch.autograd.grad(total, captured)
    finally:
        handle.remove()
    if grads.shape[:2] != batch["input_ids"].shape:
        raise ValueError(
            f"model: word-embedding output {tuple(grads.shape)} does not match "
            f"input_ids {tuple(batch['input_ids'].shape)}"
        )
    return grads


@dataclass
class SparseRows:
    """Per-example word-embedding gradients as rows (arXiv 2202.11844 v1 eq. 2), stored like a CSR
    matrix.

    Example i owns entries ``offsets[i]:offsets[i + 1]``: token ids ``ids`` (ascending, unique
    within the example) and their rows g_w (``rows``, (nnz, d)).
    """

    ids: torch.Tensor  # (nnz,) long
    rows: torch.Tensor  # (nnz, d)
    offsets: torch.Tensor  # (n + 1,) long

    @property
    def n(self) -> int:
        return len(self.offsets) - 1

    def example_index(self) -> torch.Tensor:
        """(nnz,): the example owning each entry."""
        counts = self.offsets.diff()
        return torch.repeat_interleave(torch.arange(self.n, device=counts.device), counts)

    def sq_norms(self) -> torch.Tensor:
        """(n,): Σ_w ‖g_w‖², each example's squared gradient norm."""
        out = torch.zeros(self.n, dtype=self.rows.dtype, device=self.rows.device)
        return add_at(out, self.example_index(), self.rows.pow(2).sum(-1))

    def as_dict(self) -> Tensors:
        return {"ids": self.ids, "rows": self.rows, "offsets": self.offsets}

    @classmethod
    def cat(cls, parts: list[SparseRows]) -> SparseRows:
        counts = torch.cat([p.offsets.diff() for p in parts])
        offsets = torch.cat([counts.new_zeros(1), counts.cumsum(0)])
        return cls(torch.cat([p.ids for p in parts]), torch.cat([p.rows for p in parts]), offsets)


def add_at(out: torch.Tensor, index: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """``out[index[p]] += values[p]`` along dim 0, in place, the same bits in every run: on CPU
    ``index_add_`` adds serially (``index_put_(accumulate=True)`` splits large float inputs
    across threads, which add in another order each run); on CUDA ``index_put_`` sorts first
    (``index_add_`` adds with atomics)."""
    if out.device.type == "cuda":
        return out.index_put_((index,), values, accumulate=True)
    return out.index_add_(0, index, values)


def sparse_rows(
    input_ids: torch.Tensor, grads: torch.Tensor, keep: torch.Tensor, vocab_size: int
) -> SparseRows:
    """Sum the kept positions' gradients by token id within each example: g_w = Σ_{i: x_i = w}.

    ``input_ids`` (B, T), ``grads`` (B, T, d), ``keep`` (B, T) bool.
    """
    b, t = keep.nonzero(as_tuple=True)
    keys, inverse = torch.unique(b * vocab_size + input_ids[b, t], return_inverse=True)
    rows = add_at(grads.new_zeros(len(keys), grads.shape[-1]), inverse, grads[b, t])
    counts = torch.bincount(keys // vocab_size, minlength=len(input_ids))
    offsets = torch.cat([counts.new_zeros(1), counts.cumsum(0)])
    return SparseRows(keys % vocab_size, rows, offsets)


def batch_rows(model: nn.Module, batch: Tensors) -> SparseRows:
    """Each example's word-embedding gradient rows for a whole ``batch``, [PAD] positions dropped
    (all positions kept when the batch has no attention mask)."""
    grads = embedding_grads(model, batch)
    ids = batch["input_ids"]
    keep = (
        batch["attention_mask"].bool()
        if "attention_mask" in batch
        else torch.ones_like(ids, dtype=torch.bool)
    )
    return sparse_rows(ids, grads, keep, word_embeddings(model).num_embeddings)


@torch.no_grad()
def last_layer_features(
    model: nn.Module, data: Tensors, batch_size: int, device: str | torch.device
) -> Tensors:
    """``a`` (n, h): the final linear layer's input; ``probs`` (n, C): softmax of the logits."""
    captured: list[torch.Tensor] = []
    handle = classifier_layer(model).register_forward_hook(
        lambda _m, inputs, _out: captured.append(inputs[0])
    )
    try:
        probs = [
            forward(model, batch).softmax(-1)
            for batch in batches(data, batch_size, device, "last-layer inputs")
        ]
    finally:
        handle.remove()
    return {"a": torch.cat(captured).flatten(1), "probs": torch.cat(probs)}


def param_grads(
    model: nn.Module, data: Tensors, names: list[str], batch_size: int, device: str | torch.device
) -> torch.Tensor:
    """(n, P): per-example gradients of the parameters ``names``, flattened and concatenated in
    ``named_parameters`` order, via ``vmap(grad(...))`` over each batch. The (n, P) result is
    allocated once and filled batch by batch: memory n·P plus a batch's gradients (B·P), which
    ``memory.dense_gradient_bytes`` estimates before any of it is taken.

    Models whose forward branches on tensor values (Hugging Face attention masks check for
    padding) cannot run under ``vmap``; for those, a backward pass per example does the same.
    """
    params = dict(model.named_parameters())
    chosen = {n: params[n].detach() for n in names}
    rest = {n: p.detach() for n, p in params.items() if n not in chosen}
    rest |= dict(model.named_buffers())

    def loss(chosen: Tensors, inputs: Tensors, label: torch.Tensor) -> torch.Tensor:
        one = {k: v.unsqueeze(0) for k, v in inputs.items()}
        logits = functional_call(model, (chosen, rest), args=(), kwargs=one)
        return F.cross_entropy(logits, label.unsqueeze(0))

    per_example = vmap(grad(loss), in_dims=(None, 0, 0))
    use_vmap, start = True, 0
    sizes = [chosen[n].numel() for n in names]
    out = torch.empty(len(data["labels"]), sum(sizes), dtype=chosen[names[0]].dtype, device=device)
    for batch in batches(data, batch_size, device, "per-example gradients"):
        inputs = {k: v for k, v in batch.items() if k in MODEL_INPUTS}
        if use_vmap:
            try:
                grads = per_example(chosen, inputs, batch["labels"])
            except RuntimeError as err:
                if "vmap" not in str(err):
                    raise
                log.info(
                    "param_grads: %s cannot run under vmap; one backward per example",
                    type(model).__name__,
                )
                use_vmap = False
        if not use_vmap:
            grads = _looped_grads(loss, chosen, inputs, batch["labels"])
        end, offset = start + len(batch["labels"]), 0
        for name, size in zip(names, sizes, strict=True):
            out[start:end, offset : offset + size] = grads[name].flatten(1)
            offset += size
        start = end
    return out


def _looped_grads(
    loss: Callable[..., torch.Tensor], chosen: Tensors, inputs: Tensors, labels: torch.Tensor
) -> Tensors:
    rows = [
        grad(loss)(chosen, {k: v[i] for k, v in inputs.items()}, labels[i])
        for i in range(len(labels))
    ]
    return {n: torch.stack([r[n] for r in rows]) for n in chosen}
