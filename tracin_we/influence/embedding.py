"""TracIn-WE (arXiv 2202.11844 v1 eq. 2) and its variants: Topk (eqs. 3–4), NoC and Syn.

score(z, z') = Σ_c η_c Σ_{w ∈ x ∩ x'} g_w(z) · g_w(z'), g_w = Σ_{positions i with token w} ∂ℓ/∂e_i:
TracIn on the word-embedding matrix only, whose per-example gradient is zero outside the rows of
the tokens present. Positive = proponent. Pairs without a shared token score exactly 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment

from tracin_we.core.inputs import Tensors
from tracin_we.core.models import word_embeddings
from tracin_we.influence.context import Run
from tracin_we.influence.gradients import (
    SparseRows,
    add_at,
    batches,
    embedding_grads,
    sparse_rows,
)
from tracin_we.influence.progress import bar

# Elements of the largest index tensor one chunk of ``sparse_dot`` builds (8 MiB of int64):
# at BERT-tiny size, 4× larger chunks ran slower and raised peak memory by ~400 MiB.
CHUNK_ELEMENTS = 1 << 20
# sparse_dot's fast path: a token goes into the dense product when at least this share of the
# (test, train) pairs contain it on both sides (at most MAX_DENSE_TOKENS of them, the most
# shared first); FAST_RTOL bounds each path's distance from the exact sum, relative to
# Σ_w ‖g_w‖ ‖g'_w‖ (tests/test_fast_scoring.py).
DENSE_PAIR_SHARE = 0.01
MAX_DENSE_TOKENS = 128
FAST_RTOL = 1e-5


def kept_positions(
    batch: Tensors, grads: torch.Tensor, top_tokens: int | None, exclude: tuple[int, ...]
) -> torch.Tensor:
    """(B, T) bool: non-[PAD] positions whose token is not in ``exclude``; with ``top_tokens``,
    only that many of them with the largest ‖∂ℓ/∂e_i‖ (TracIn-WE-Topk, eq. 3)."""
    ids = batch["input_ids"]
    keep = batch["attention_mask"].bool()
    if exclude:
        keep &= ~torch.isin(ids, torch.tensor(exclude, device=ids.device))
    if top_tokens is not None:
        norms = grads.norm(dim=-1).masked_fill(~keep, -torch.inf)
        top = norms.topk(min(top_tokens, ids.shape[1]), dim=1).indices
        keep &= torch.zeros_like(keep).scatter_(1, top, True)
    return keep


def embedding_rows(
    run: Run, data: Tensors, top_tokens: int | None = None, exclude: tuple[int, ...] = ()
) -> SparseRows:
    """Each example's rows g_w from its kept positions, one backward pass per batch."""
    vocab_size = word_embeddings(run.model).num_embeddings
    parts = []
    for batch in batches(data, run.options.batch_size, run.options.device, "embedding gradients"):
        grads = embedding_grads(run.model, batch)
        keep = kept_positions(batch, grads, top_tokens, exclude)
        parts.append(sparse_rows(batch["input_ids"], grads, keep, vocab_size))
    return SparseRows.cat(parts)


def sparse_dot(test: SparseRows, train: SparseRows, exact: bool = False) -> torch.Tensor:
    """(n_test, n_train): Σ_{w shared} g_w(test) · g_w(train), without densifying any gradient.

    Default (fast): the few tokens shared by most pairs ([CLS], [SEP], "the", ...: those in at
    least ``DENSE_PAIR_SHARE`` of the (test, train) pairs) go through one dense matrix product
    of their rows laid side by side, (n_test, m·d) @ (m·d, n_train); the rest pair up by a join
    on the token id. The product sums a pair's tokens in another order than ``exact``: each
    path is within ``FAST_RTOL`` · Σ_w ‖g_w(test)‖ ‖g_w(train)‖ of the exact sum (a measured
    bound, float32 and float64: 1.4e-6 of it on BERT-tiny's AG News rows; tested), so the two
    differ by at most twice that. Rows in another dtype (float16, bfloat16) take the exact path.

    ``exact``: every shared token's row dot product, scatter-added pair by pair (~20× slower at
    1,000 × 4,096 AG News texts); a score then does not depend on the other texts scored with it.
    """
    if exact or test.rows.dtype not in (torch.float32, torch.float64):
        return _exact_dot(test, train)
    if not len(test.ids) or not len(train.ids):
        return test.rows.new_zeros(test.n, train.n)
    n_vocab, test_tok, train_tok = _shared_vocabulary(test, train)
    slot = _dense_slots(test_tok, train_tok, n_vocab, test.n, train.n)
    test_slot, train_slot = slot[test_tok], slot[train_tok]
    out = _dense_dot(test, test_slot, train, train_slot, int(slot.max()) + 1)
    _add_shared_pairs(out, test, test_tok, test_slot < 0, train, train_tok, train_slot < 0)
    return out


def _shared_vocabulary(
    test: SparseRows, train: SparseRows
) -> tuple[int, torch.Tensor, torch.Tensor]:
    """(V, test tokens, training tokens): every entry's token id renumbered into 0 .. V − 1 over
    the V distinct tokens the two sides hold, so that tables index by it, not by the vocabulary."""
    vocab, compact = torch.unique(torch.cat([test.ids, train.ids]), return_inverse=True)
    return len(vocab), compact[: len(test.ids)], compact[len(test.ids) :]


def _dense_slots(
    test_tok: torch.Tensor, train_tok: torch.Tensor, n_vocab: int, n_test: int, n_train: int
) -> torch.Tensor:
    """(n_vocab,): each token's block of columns in the dense product, -1 for the join.

    A token in a share s of the test texts and r of the training texts is in s·r of the pairs.
    The product spends d multiply-adds on every pair, the join d on each pair that shares the
    token but ~20 times slower each (gathered rows): the product pays off from s·r ≈ 1/20. At
    1,000 × 4,096 AG News texts a threshold of 1% or 2% measured fastest, 0.5% and 5% ~20%
    slower."""
    share = torch.bincount(test_tok, minlength=n_vocab).double() / n_test
    share *= torch.bincount(train_tok, minlength=n_vocab).double() / n_train
    dense = (share >= DENSE_PAIR_SHARE).nonzero()[:, 0]
    dense = dense[share[dense].argsort(descending=True, stable=True)[:MAX_DENSE_TOKENS]]
    slot = torch.full((n_vocab,), -1, device=test_tok.device)
    slot[dense.sort().values] = torch.arange(len(dense), device=test_tok.device)
    return slot


def _dense_dot(
    test: SparseRows, test_slot: torch.Tensor, train: SparseRows, train_slot: torch.Tensor, m: int
) -> torch.Tensor:
    """(n_test, n_train): Σ over the ``m`` dense tokens of g_w(test) · g_w(train), one matrix
    product per block of test texts × block of training texts (each block's laid-out rows,
    (texts, m·d), at most 4·CHUNK_ELEMENTS numbers). TF32 is off for it on CUDA, as its 10-bit
    mantissa would break FAST_RTOL."""
    out = test.rows.new_zeros(test.n, train.n)
    if m == 0:
        return out
    step = max(1, 4 * CHUNK_ELEMENTS // (m * test.rows.shape[1]))
    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        for t0 in range(0, test.n, step):
            t1 = min(test.n, t0 + step)
            test_block = _laid_out(test, test_slot, m, t0, t1)
            for r0 in range(0, train.n, step):
                r1 = min(train.n, r0 + step)
                out[t0:t1, r0:r1] = test_block @ _laid_out(train, train_slot, m, r0, r1).T
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32
    return out


def _laid_out(rows: SparseRows, slot: torch.Tensor, m: int, lo: int, hi: int) -> torch.Tensor:
    """(hi − lo, m·d): examples lo .. hi − 1, the row of dense token j (``slot``) of each at
    columns j·d .. (j + 1)·d − 1, zeros where the example lacks the token."""
    a, b = int(rows.offsets[lo]), int(rows.offsets[hi])
    part = SparseRows(rows.ids[a:b], rows.rows[a:b], rows.offsets[lo : hi + 1] - a)
    entry = (slot[a:b] >= 0).nonzero()[:, 0]
    dim = rows.rows.shape[1]
    out = rows.rows.new_zeros(hi - lo, m, dim)
    out[part.example_index()[entry], slot[a:b][entry]] = part.rows[entry]
    return out.view(hi - lo, m * dim)


def _add_shared_pairs(
    out: torch.Tensor,
    test: SparseRows,
    test_tok: torch.Tensor,
    test_kept: torch.Tensor,
    train: SparseRows,
    train_tok: torch.Tensor,
    train_kept: torch.Tensor,
) -> None:
    """out[i, j] += g_w(test i) · g_w(train j) for every token w of a kept test entry and a kept
    training entry: a join on the token through the sorted training tokens, in pieces of at
    most CHUNK_ELEMENTS pairs. Each score gets its tokens in ascending order, as ``_exact_dot``."""
    train_entries = train_kept.nonzero()[:, 0]
    sorted_tok, order = train_tok[train_entries].sort(stable=True)
    train_entries = train_entries[order]
    test_entries = test_kept.nonzero()[:, 0]
    first = torch.searchsorted(sorted_tok, test_tok[test_entries])
    count = torch.searchsorted(sorted_tok, test_tok[test_entries], right=True) - first
    ends = count.cumsum(0)  # pairs of test entries 0 .. e
    test_example, train_example = test.example_index(), train.example_index()
    lo = 0
    while lo < len(test_entries):
        done = int(ends[lo - 1]) if lo else 0
        hi = max(lo + 1, int(torch.searchsorted(ends, done + CHUNK_ELEMENTS, right=True)))
        piece = count[lo:hi]
        te = test_entries[lo:hi].repeat_interleave(piece)
        rank = torch.arange(len(te), device=te.device) - (
            ends[lo:hi] - piece - done
        ).repeat_interleave(piece)
        tr = train_entries[first[lo:hi].repeat_interleave(piece) + rank]
        dots = _row_dots(test.rows, te, train.rows, tr)
        add_at(out.view(-1), test_example[te] * train.n + train_example[tr], dots)
        lo = hi


def _exact_dot(test: SparseRows, train: SparseRows) -> torch.Tensor:
    """``sparse_dot(..., exact=True)``: for a chunk of test examples, a (chunk, vocabulary
    present) table locates each test entry; looking every training entry's token up in it yields
    the matching (test entry, train entry) pairs, whose row dot products are scatter-added."""
    out = test.rows.new_zeros(test.n, train.n)
    if not len(test.ids) or not len(train.ids):
        return out
    n_vocab, test_c, train_c = _shared_vocabulary(test, train)
    test_example, train_example = test.example_index(), train.example_index()
    step = max(1, CHUNK_ELEMENTS // max(len(train.ids), n_vocab))
    starts = range(0, test.n, step)
    for j0 in bar(starts, "shared-word scoring", total=len(starts), unit="chunk"):
        j1 = min(test.n, j0 + step)
        lo, hi = int(test.offsets[j0]), int(test.offsets[j1])
        table = torch.full((j1 - j0, n_vocab), -1, device=test_c.device)
        table[test_example[lo:hi] - j0, test_c[lo:hi]] = torch.arange(lo, hi, device=test_c.device)
        match = table[:, train_c]  # (chunk, nnz_train): test entry with the same token, or -1
        jj, ee = (match >= 0).nonzero(as_tuple=True)
        dots = _row_dots(test.rows, match[jj, ee], train.rows, ee)
        add_at(out.view(-1), (jj + j0) * train.n + train_example[ee], dots)
    return out


def _row_dots(a: torch.Tensor, ia: torch.Tensor, b: torch.Tensor, ib: torch.Tensor) -> torch.Tensor:
    """(len(ia),): a[ia[p]] · b[ib[p]], gathered in pieces to bound memory."""
    piece = max(1, CHUNK_ELEMENTS // a.shape[1])
    # index_select copies whole rows: on CPU ~2x faster than a[ia], the same values bitwise.
    return torch.cat(
        [
            (a.index_select(0, ia[s : s + piece]) * b.index_select(0, ib[s : s + piece])).sum(-1)
            for s in range(0, len(ia), piece)
        ]
        or [a.new_zeros(0)]
    )


@dataclass(frozen=True)
class WordEmbeddingKernel:
    """TracIn-WE (``top_tokens=None``), TracIn-WE-Topk (``top_tokens``) and TracIn-WE-NoC
    (``exclude``); ``exact``: ``sparse_dot``'s exact path."""

    top_tokens: int | None = None
    exclude: tuple[int, ...] = ()
    exact: bool = False

    @property
    def kind(self) -> str:
        return f"we:top_tokens={self.top_tokens}:exclude={sorted(self.exclude)}"

    def features(self, run: Run, data: Tensors) -> Tensors:
        return embedding_rows(run, data, self.top_tokens, self.exclude).as_dict()

    def pairwise(self, test: Tensors, train: Tensors) -> torch.Tensor:
        return sparse_dot(SparseRows(**test), SparseRows(**train), self.exact)

    def diagonal(self, features: Tensors) -> torch.Tensor:
        return SparseRows(**features).sq_norms()


@dataclass(frozen=True)
class SynonymKernel:
    """TracIn-WE-Syn: on each text's ``top_tokens`` words, words w, w' whose embedding rows have
    cosine > ``threshold`` are matched one-to-one maximising Σ |g_w · g_w'| (linear sum
    assignment); the kernel is Σ over matched pairs of g_w · g_w'. Identical words qualify for
    any ``threshold`` < 1 (a row's cosine with itself is 1 up to rounding)."""

    top_tokens: int = 10
    threshold: float = 0.7

    @property
    def kind(self) -> str:
        return f"syn:top_tokens={self.top_tokens}"

    def features(self, run: Run, data: Tensors) -> Tensors:
        rows = embedding_rows(run, data, self.top_tokens)
        unit = F.normalize(word_embeddings(run.model).weight.detach()[rows.ids], dim=-1)
        return rows.as_dict() | {"unit": unit.to(rows.rows.dtype)}

    def pairwise(self, test: Tensors, train: Tensors) -> torch.Tensor:
        train_rows, train_unit, valid = _padded(train)
        out = []
        for j in range(len(test["offsets"]) - 1):
            lo, hi = test["offsets"][j], test["offsets"][j + 1]
            out.append(
                self._row(test["rows"][lo:hi], test["unit"][lo:hi], train_rows, train_unit, valid)
            )
        return torch.stack(out)

    def diagonal(self, features: Tensors) -> torch.Tensor:
        rows, unit, valid = _padded(features)
        return torch.cat(
            [
                self._row(
                    rows[i][valid[i]],
                    unit[i][valid[i]],
                    rows[i : i + 1],
                    unit[i : i + 1],
                    valid[i : i + 1],
                )
                for i in range(len(rows))
            ]
        )

    def _row(
        self,
        rows: torch.Tensor,
        unit: torch.Tensor,
        train_rows: torch.Tensor,
        train_unit: torch.Tensor,
        valid: torch.Tensor,
    ) -> torch.Tensor:
        """(n_train,) kernel of one test text (rows, unit: (K, d)) with padded training texts."""
        allowed = torch.einsum("ikd,md->ikm", train_unit, unit) > self.threshold
        allowed &= valid.unsqueeze(-1)
        dots = torch.einsum("ikd,md->ikm", train_rows, rows)
        out = (dots * allowed).sum((1, 2))
        # Where every word has at most one allowed partner, the assignment is all allowed pairs.
        ambiguous = (allowed.sum(2) > 1).any(1) | (allowed.sum(1) > 1).any(1)
        for i in ambiguous.nonzero().flatten().tolist():
            out[i] = _assignment_sum(dots[i], allowed[i])
        return out


def _assignment_sum(dots: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """Σ dots over the one-to-one matching of allowed pairs with the largest Σ |dots|."""
    cost = torch.where(allowed, -dots.abs(), torch.zeros_like(dots)).cpu().double().numpy()
    r, c = linear_sum_assignment(cost)
    r, c = torch.as_tensor(r, device=dots.device), torch.as_tensor(c, device=dots.device)
    return (dots[r, c] * allowed[r, c]).sum()


def _padded(features: Tensors) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """CSR features → rows (n, K, d), unit embeddings (n, K, d), valid (n, K) bool."""
    rows = SparseRows(features["ids"], features["rows"], features["offsets"])
    example = rows.example_index()
    slot = torch.arange(len(example), device=example.device) - rows.offsets[example]
    width = int(slot.max()) + 1 if len(slot) else 1
    shape = (rows.n, width, rows.rows.shape[1])
    padded_rows = rows.rows.new_zeros(shape).index_put_((example, slot), rows.rows)
    padded_unit = rows.rows.new_zeros(shape).index_put_((example, slot), features["unit"])
    valid = torch.zeros(shape[:2], dtype=torch.bool, device=example.device)
    valid[example, slot] = True
    return padded_rows, padded_unit, valid
