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
from tracin_we.influence.gradients import SparseRows, batches, embedding_grads, sparse_rows
from tracin_we.influence.progress import bar

# Elements of the largest index tensor one chunk of ``sparse_dot`` builds (8 MiB of int64):
# at BERT-tiny size, 4× larger chunks ran slower and raised peak memory by ~400 MiB.
CHUNK_ELEMENTS = 1 << 20


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


def sparse_dot(test: SparseRows, train: SparseRows) -> torch.Tensor:
    """(n_test, n_train): Σ_{w shared} g_w(test) · g_w(train), without densifying any gradient.

    For a chunk of test examples, a (chunk, vocabulary present) table locates each test entry;
    looking every training entry's token up in it yields the matching (test entry, train entry)
    pairs, whose row dot products are scatter-added into the scores.
    """
    out = test.rows.new_zeros(test.n, train.n)
    if not len(test.ids) or not len(train.ids):
        return out
    vocab, compact = torch.unique(torch.cat([test.ids, train.ids]), return_inverse=True)
    test_c, train_c = compact[: len(test.ids)], compact[len(test.ids) :]
    test_example, train_example = test.example_index(), train.example_index()
    step = max(1, CHUNK_ELEMENTS // max(len(train.ids), len(vocab)))
    starts = range(0, test.n, step)
    for j0 in bar(starts, "shared-word scoring", total=len(starts), unit="chunk"):
        j1 = min(test.n, j0 + step)
        lo, hi = int(test.offsets[j0]), int(test.offsets[j1])
        table = torch.full((j1 - j0, len(vocab)), -1, device=vocab.device)
        table[test_example[lo:hi] - j0, test_c[lo:hi]] = torch.arange(lo, hi, device=vocab.device)
        match = table[:, train_c]  # (chunk, nnz_train): test entry with the same token, or -1
        jj, ee = (match >= 0).nonzero(as_tuple=True)
        dots = _row_dots(test.rows, match[jj, ee], train.rows, ee)
        out[j0:j1].index_put_((jj, train_example[ee]), dots, accumulate=True)
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
    (``exclude``)."""

    top_tokens: int | None = None
    exclude: tuple[int, ...] = ()

    @property
    def kind(self) -> str:
        return f"we:top_tokens={self.top_tokens}:exclude={sorted(self.exclude)}"

    def features(self, run: Run, data: Tensors) -> Tensors:
        return embedding_rows(run, data, self.top_tokens, self.exclude).as_dict()

    def pairwise(self, test: Tensors, train: Tensors) -> torch.Tensor:
        return sparse_dot(SparseRows(**test), SparseRows(**train))

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
