"""TracIn-WE's fast shared-token scoring (``embedding.sparse_dot``, the default) against the exact
path (``exact=True``): within the stated tolerance, |fast − exact| ≤ FAST_RTOL ·
Σ_w ‖g_w(z′)‖ ‖g_w(z)‖, of a float64 reference; bitwise the exact path where no token is dense;
deterministic; through ``scores`` and streaming on a real model."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import assert_top_k_close
from tests.test_influence import F64, MODELS, brute_force, checkpoints, embedding_matrix, texts
from tracin_we import influence
from tracin_we.core.inputs import model_inputs
from tracin_we.influence import embedding
from tracin_we.influence.context import Run, prepared
from tracin_we.influence.embedding import FAST_RTOL, embedding_rows, sparse_dot
from tracin_we.influence.gradients import SparseRows
from tracin_we.influence.options import Options


def zipf_rows(n: int, vocab: int, dim: int, seed: int) -> SparseRows:
    """``n`` examples whose tokens follow a Zipf law over ``vocab`` ids (a few in nearly every
    example, as [CLS] and "the"; a long tail in few), with rows of very different scales."""
    g = torch.Generator().manual_seed(seed)
    p = 1.0 / torch.arange(1, vocab + 1, dtype=torch.float64)
    ids = [
        torch.multinomial(p, int(torch.randint(1, 30, (1,), generator=g)), generator=g)
        for _ in range(n)
    ]
    ids = [torch.cat([torch.tensor([0, 1]), row + 2]).unique() for row in ids]  # 2 always there
    offsets = torch.tensor([0] + [len(row) for row in ids]).cumsum(0)
    nnz = int(offsets[-1])
    scale = torch.exp(3 * torch.randn(nnz, 1, generator=g))  # magnitudes over ~6 decades
    rows = torch.randn(nnz, dim, generator=g) * scale
    return SparseRows(torch.cat(ids), rows.float(), offsets)


def as64(rows: SparseRows) -> SparseRows:
    return SparseRows(rows.ids, rows.rows.double(), rows.offsets)


def magnitude(test: SparseRows, train: SparseRows) -> torch.Tensor:
    """(n_test, n_train): Σ_w ‖g_w(test)‖ ‖g_w(train)‖, the scale of a score's rounding error."""
    norms = [
        SparseRows(r.ids, r.rows.double().norm(dim=1, keepdim=True), r.offsets)
        for r in (test, train)
    ]
    return sparse_dot(*norms, exact=True)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fast_is_within_tolerance_of_the_exact_sum(seed: int) -> None:
    test, train = zipf_rows(40, 500, 24, seed), zipf_rows(300, 500, 24, seed + 10)
    n_vocab, test_tok, train_tok = embedding._shared_vocabulary(test, train)
    slots = embedding._dense_slots(test_tok, train_tok, n_vocab, test.n, train.n)
    assert 0 < int((slots >= 0).sum()) < int((slots < 0).sum())  # both paths carry pairs
    reference = sparse_dot(as64(test), as64(train), exact=True)
    bound = FAST_RTOL * magnitude(test, train)
    for exact in (False, True):
        error = (sparse_dot(test, train, exact=exact).double() - reference).abs()
        assert bool((error <= bound).all()), float((error / bound.clamp_min(1e-300)).max())
    fast = sparse_dot(test, train)
    assert torch.equal(fast, sparse_dot(test, train))  # deterministic
    assert not torch.equal(fast, sparse_dot(test, train, exact=True))  # the tolerance is needed


def test_half_precision_rows_take_the_exact_path() -> None:
    test, train = zipf_rows(10, 200, 8, 7), zipf_rows(60, 200, 8, 8)
    for dtype in (torch.float16, torch.bfloat16):
        half = [
            SparseRows(r.ids, (r.rows / r.rows.abs().max()).to(dtype), r.offsets)
            for r in (test, train)
        ]
        assert torch.equal(sparse_dot(*half), sparse_dot(*half, exact=True))


def test_without_dense_tokens_the_join_is_the_exact_sum_bitwise(monkeypatch) -> None:
    """The join adds each score's tokens in the exact path's order: no dense token, same bits."""
    test, train = zipf_rows(30, 400, 16, 3), zipf_rows(200, 400, 16, 4)
    monkeypatch.setattr(embedding, "DENSE_PAIR_SHARE", 2.0)  # no token is in 200% of pairs
    assert torch.equal(sparse_dot(test, train), sparse_dot(test, train, exact=True))


def test_pieces_blocks_and_edge_cases(monkeypatch) -> None:
    test, train = zipf_rows(25, 300, 8, 5), zipf_rows(120, 300, 8, 6)
    reference = sparse_dot(as64(test), as64(train), exact=True)
    bound = FAST_RTOL * magnitude(test, train)
    monkeypatch.setattr(embedding, "CHUNK_ELEMENTS", 7)  # one-text blocks, pieces of ≤ 7 pairs
    assert bool(((sparse_dot(test, train).double() - reference).abs() <= bound).all())
    monkeypatch.setattr(embedding, "DENSE_PAIR_SHARE", 0.0)  # every token dense, up to the cap
    monkeypatch.setattr(embedding, "MAX_DENSE_TOKENS", 3)
    assert bool(((sparse_dot(test, train).double() - reference).abs() <= bound).all())
    empty = SparseRows(
        torch.zeros(0, dtype=torch.long), torch.zeros(0, 8), torch.zeros(3, dtype=torch.long)
    )
    assert torch.equal(sparse_dot(empty, train), torch.zeros(2, train.n))
    disjoint = SparseRows(torch.tensor([10_000]), torch.ones(1, 8), torch.tensor([0, 1]))
    assert torch.equal(sparse_dot(disjoint, train), torch.zeros(1, train.n))


@pytest.mark.parametrize("name", list(MODELS))
def test_scores_fast_and_exact_on_a_model(name: str) -> None:
    """On a model: both paths equal the brute-force gradient dot product; fast is within the
    tolerance of exact, streaming within it of ``scores``; exact=True streams bitwise."""
    model = MODELS[name]().float()
    ckpts, train, test = checkpoints(model), texts(40, 0), texts(6, 1)
    fast = influence.scores("tracin-we", model, ckpts, train, test)
    exact = influence.scores("tracin-we", model, ckpts, train, test, exact=True)
    bound = FAST_RTOL * checkpoint_magnitude(model, ckpts, train, test)
    assert bool(((fast - exact).double().abs() <= 2 * bound).all())
    brute = brute_force(model.double(), ckpts, train, test, embedding_matrix)
    model.float()
    for ours in (fast, exact):
        torch.testing.assert_close(
            ours.double(), brute, rtol=1e-4, atol=1e-4 * float(brute.abs().max())
        )
    both = influence.top_k_streaming_both(
        "tracin-we", model, ckpts, train, test, 5, chunk_size=8, progress=False
    )
    for side, proponents in zip(both, (True, False), strict=True):
        assert assert_top_k_close(side, fast, 5, proponents, atol=2 * float(bound.max())) > 0
    streamed = influence.top_k_streaming(
        "tracin-we", model, ckpts, train, test, 5, chunk_size=8, progress=False, exact=True
    )
    assert torch.equal(streamed.influence_scores, influence.top_k(exact, 5).influence_scores)


def checkpoint_magnitude(model, ckpts, train, test) -> torch.Tensor:
    """Σ_c |η_c| Σ_w ‖g_w(test)‖ ‖g_w(train)‖ at each checkpoint c."""
    total = 0
    options = Options(progress=False)
    train_t, test_t = model_inputs(train), model_inputs(test)
    with prepared(model, options):
        run = Run(model, ckpts, options)
        for _, lr in run.each_checkpoint():
            total = total + abs(lr) * magnitude(
                embedding_rows(run, test_t), embedding_rows(run, train_t)
            )
    return total


def test_exact_is_refused_where_it_means_nothing() -> None:
    model = MODELS["cnn"]()
    ckpts, data = checkpoints(model), texts(4, 0)
    with pytest.raises(
        ValueError, match="exact=True applies to grad-cos on layer='embedding' only"
    ):
        influence.scores("grad-cos", model, ckpts, data, data, exact=True, **F64)
    with pytest.raises(
        ValueError, match=r"options \['exact'\] do not apply to method='tracin-last'"
    ):
        influence.scores("tracin-last", model, ckpts, data, data, exact=True, **F64)
