"""Streaming top-k (``influence.top_k_streaming``): at the same batch size and with TracIn-WE's
exact shared-token scoring (``exact=True``), exactly ``top_k(scores(...))``, ties included, for
any chunk size (both run the same computation); no (n_test, n_train) tensor; the chunk cache;
bad input. The fast default streams within its tolerance: tests/test_fast_scoring.py."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from tests.conftest import assert_top_k_close
from tests.test_influence import bert, checkpoints, cnn, texts
from tracin_we import influence
from tracin_we.core.inputs import model_inputs
from tracin_we.influence import embedding
from tracin_we.influence.context import Run, prepared, tracin
from tracin_we.influence.embedding import WordEmbeddingKernel
from tracin_we.influence.options import Options
from tracin_we.influence.streaming import RunningTopK, chunk_step, stream_top_k

N_TRAIN, N_TEST, BATCH = 23, 5, 4  # 23: no chunk size above 1 divides it
CHUNK_SIZES = [1, 3, 4, 7, 10, 23, 100]  # rounded up to multiples of BATCH: 4, 8, 12, 24, 100


def with_duplicates(n: int, seed: int) -> list[dict]:
    """``texts`` whose batch 4 (examples 16-19) repeats batch 0 at ``batch_size=BATCH``: the two
    batches run the same computation (same inputs, size and positions), so their gradients and
    scores are bitwise equal and every test row has exact ties across chunk boundaries. (The same
    text in another batch, or at another position in one, may round differently on some CPUs.)"""
    data = texts(n, seed)
    data[4 * BATCH : 5 * BATCH] = data[:BATCH]
    return data


@pytest.fixture(params=["bert", "cnn"])
def case(request: pytest.FixtureRequest):
    model = {"bert": bert, "cnn": cnn}[request.param]().float()
    return model, checkpoints(model), with_duplicates(N_TRAIN, 0), texts(N_TEST, 1)


def assert_same(actual: influence.InfluentialResults, expected: influence.InfluentialResults):
    assert torch.equal(actual.indices, expected.indices)
    assert torch.equal(actual.influence_scores, expected.influence_scores)
    assert actual.influence_scores.device.type == "cpu"


@pytest.mark.parametrize(
    ("method", "exact"),
    [("tracin-we", {"exact": True}), ("tracin-we-noc", {"exact": True}), ("tracin-we-syn", {})],
)
def test_streaming_equals_top_k_of_scores(case, method: str, exact: dict) -> None:
    model, ckpts, train, test = case
    full = influence.scores(method, model, ckpts, train, test, batch_size=BATCH, **exact)
    for chunk_size in CHUNK_SIZES:
        for k in (1, 5, N_TRAIN):
            both = influence.top_k_streaming_both(
                method,
                model,
                ckpts,
                train,
                test,
                k,
                chunk_size=chunk_size,
                progress=False,
                batch_size=BATCH,
                **exact,
            )
            assert_same(both.proponents, influence.top_k(full, k))
            assert_same(both.opponents, influence.top_k(full, k, proponents=False))
    one_side = influence.top_k_streaming(
        method, model, ckpts, train, test, k=4, proponents=False, chunk_size=7, progress=False,
        batch_size=BATCH, **exact,
    )  # fmt: skip
    assert_same(one_side, influence.top_k(full, 4, proponents=False))


def test_ties_keep_training_index_order(case) -> None:
    """NoC drops [CLS]/[SEP]: pairs without a shared word score exactly 0, and the duplicated
    batch ties with batch 0; streamed in chunks of 4, tied entries still come in index order.
    ``scores`` runs at the streaming call's batch size: both then run the same computation, so
    the scores, hence the order, are bitwise the same (at another batch size near-equal BERT
    scores round differently on some CPUs and may swap)."""
    model, ckpts, train, test = case
    full = influence.scores(
        "tracin-we-noc", model, ckpts, train, test, special_token_ids=[101, 102], batch_size=BATCH,
        exact=True,
    )  # fmt: skip
    assert (full == 0).any() and torch.equal(full[:, :BATCH], full[:, 4 * BATCH : 5 * BATCH])
    top = influence.top_k_streaming(
        "tracin-we-noc", model, ckpts, train, test, N_TRAIN, chunk_size=4, progress=False,
        special_token_ids=[101, 102], batch_size=BATCH, exact=True,
    )  # fmt: skip
    for row_values, row_indices in zip(top.influence_scores, top.indices, strict=True):
        for value in row_values.unique():
            tied = row_indices[row_values == value]
            assert torch.equal(tied, tied.sort().values)
    assert torch.equal(top.indices, influence.top_k(full, N_TRAIN).indices)


def test_topk_positions_and_other_kernels(case) -> None:
    """TracIn-WE-Topk (3 positions per text) through the engine: exactly the full computation.
    Kernels that are matrix products (TracIn-Last, -Layer, grad-cos on them) agree to the last
    bit only: a product's entries can round differently with the width of the matrix."""
    model, ckpts, train, test = case
    options = Options(batch_size=BATCH)
    train_t, test_t = model_inputs(train), model_inputs(test)
    with prepared(model, options):
        run = Run(model, ckpts, options)
        kernel = WordEmbeddingKernel(top_tokens=3, exact=True)
        full = tracin(run, kernel, train_t, test_t)
        for chunk_size in (1, 9, 40):
            prop, opp = stream_top_k(run, kernel, train_t, test_t, 6, (True, False), chunk_size)
            assert_same_values(prop, influence.top_k(full, 6))
            assert_same_values(opp, influence.top_k(full, 6, proponents=False))
    for method, options in [
        ("grad-cos", {"layer": "embedding", "exact": True}),
        ("tracin-last", {}),
        ("grad-cos", {}),
        ("tracin-layer", {"params": "classifier"}),
    ]:
        full = influence.scores(method, model, ckpts, train, test, batch_size=BATCH, **options)
        for chunk_size in (1, 7):
            both = influence.top_k_streaming_both(
                method, model, ckpts, train, test, 5, chunk_size=chunk_size, progress=False,
                batch_size=BATCH, **options,
            )  # fmt: skip
            for side, expected in zip(both, (True, False), strict=True):
                expected = influence.top_k(full, 5, proponents=expected)
                if options.get("layer") == "embedding":
                    assert_same(side, expected)
                # Up to rounding: the k best values, each the score of the index it comes with
                # (near-ties may swap). float32 products whose width differs round differently;
                # the error is relative to the terms summed (~ the largest score), not to each
                # entry: 1e-5 of it (seen: ≤ 2 ulps, 6e-8 of 0.35); a misplaced row is off by O(1).
                close = {"rtol": 0.0, "atol": 1e-5 * float(full.abs().max())}
                torch.testing.assert_close(
                    side.influence_scores, expected.influence_scores, **close
                )
                torch.testing.assert_close(
                    full.gather(1, side.indices), side.influence_scores, **close
                )


def assert_same_values(actual: influence.InfluentialResults, expected) -> None:
    """Bitwise equal, NaN included."""
    assert torch.equal(actual.indices.cpu(), expected.indices)
    torch.testing.assert_close(
        actual.influence_scores.cpu(), expected.influence_scores, rtol=0, atol=0, equal_nan=True
    )


def test_running_top_k_equals_sorting_with_many_ties() -> None:
    g = torch.Generator().manual_seed(0)
    matrix = torch.randint(-3, 4, (6, 50), generator=g).float()  # 7 values: ties everywhere
    for proponents in (True, False):
        expected = influence.top_k(matrix, 12, proponents)
        for width in (1, 7, 12, 13, 50):
            top = RunningTopK(12, proponents)
            for start in range(0, 50, width):
                top.update(matrix[:, start : start + width], start)
            assert_same_values(top.result(), expected)
    with pytest.raises(ValueError, match="start=3: blocks must be consecutive"):
        RunningTopK(2).update(matrix[:, 3:5], 3)
    matrix[2, 10] = torch.nan
    with pytest.raises(ValueError, match=r"scores has NaN in rows \[2\]"):
        RunningTopK(2).update(matrix, 0)  # as top_k: NaN has no rank


def test_chunks_start_on_batch_boundaries() -> None:
    assert [chunk_step(c, 4) for c in (1, 4, 5, 8, 9)] == [4, 4, 8, 8, 12]


class ShapeLog(TorchDispatchMode):
    """Records the shape of every tensor any torch operation returns, and of the floating ones."""

    def __init__(self) -> None:
        super().__init__()
        self.shapes: list[tuple[int, ...]] = []
        self.floating: list[tuple[int, ...]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for item in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(item, torch.Tensor):
                self.shapes.append(tuple(item.shape))
                if item.is_floating_point():
                    self.floating.append(tuple(item.shape))
        return out


def test_never_builds_an_n_test_by_n_train_tensor() -> None:
    """1,200 training texts in chunks of 8: no tensor the streaming call creates has even half of
    n_test × n_train elements (the largest are the inputs, 1,200 × 12, and a chunk's gathered
    gradient rows), and on the exact path its score blocks are (n_test, ≤ k + chunk) (the fast
    path also lays out the test texts' dense tokens, (n_test, m·d)); the same probe on ``scores``
    sees the full matrix, so this test can fail."""
    model = cnn().float()
    ckpts, train, test = checkpoints(model), texts(1200, 0), texts(30, 1)
    full_size = len(train) * len(test)
    whole = ShapeLog()
    with whole:
        influence.scores("tracin-we", model, ckpts, train, test, batch_size=8)
    assert (len(test), len(train)) in whole.shapes
    for exact in (False, True):
        streamed = ShapeLog()
        with streamed:
            influence.top_k_streaming_both(
                "tracin-we", model, ckpts, train, test, 3, chunk_size=8, progress=False,
                batch_size=8, exact=exact,
            )  # fmt: skip
        largest = max(torch.Size(s).numel() for s in streamed.shapes)
        assert largest < full_size / 2, f"largest tensor {largest} elements"
    blocks = [s for s in streamed.floating if len(s) == 2 and s[0] == len(test)]
    assert (len(test), 8) in blocks and max(s[1] for s in blocks) <= 3 + 8


def test_chunks_are_read_back_from_the_cache(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = cnn().float()
    ckpts, train, test = checkpoints(model), texts(N_TRAIN, 0), texts(N_TEST, 1)
    passes = []
    grads = embedding.embedding_grads
    monkeypatch.setattr(embedding, "embedding_grads", lambda *a: passes.append(1) or grads(*a))
    call = {"chunk_size": 8, "progress": False, "batch_size": BATCH, "cache_dir": tmp_path}
    fresh = influence.top_k_streaming("tracin-we", model, ckpts, train, test, 5, **call)
    assert (
        len(list((tmp_path / "gradients").glob("*.pt"))) == 3 * 2
    )  # one entry per chunk and checkpoint
    before = len(passes)
    cached = influence.top_k_streaming("tracin-we", model, ckpts, train, test, 5, **call)
    assert before == 2 * (6 + 2)  # 2 checkpoints × (6 train + 2 test batches)
    assert len(passes) - before == 2 * 2  # the test set's only
    assert_same(cached, fresh)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"k": N_TRAIN + 1}, rf"k={N_TRAIN + 1} must be in \[1, {N_TRAIN}\]"),
        ({"k": 0}, "k=0 must be in"),
        ({"k": 2.5}, r"k=2.5 has type float; k must be an int"),
        ({"chunk_size": 0}, "chunk_size=0 must be a positive integer"),
        ({"chunk_size": -4}, "chunk_size=-4 must be a positive integer"),
        ({"method": "influence-last"}, r"method='influence-last' cannot stream .*allowed: \["),
        ({"method": "nope"}, "method='nope' is unknown"),
        ({"damping": 1.0}, r"options \['damping'\] do not apply"),
    ],
)
def test_bad_input_raises_before_any_gradient(
    arguments: dict, message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = cnn().float()
    monkeypatch.setattr(embedding, "embedding_grads", lambda *a: pytest.fail("gradient taken"))
    call = {"method": "tracin-we", "k": 3, "chunk_size": 4, "progress": False} | arguments
    with pytest.raises(ValueError, match=message):
        influence.top_k_streaming(
            model=model,
            checkpoints=checkpoints(model),
            train=texts(N_TRAIN, 0),
            test=texts(N_TEST, 1),
            **call,
        )


def test_model_is_restored() -> None:
    model: nn.Module = cnn().float()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    influence.top_k_streaming(
        "tracin-we", model, checkpoints(model), texts(9, 0), texts(3, 1), 2, chunk_size=4
    )
    assert model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu() -> None:
    """CUDA and CPU kernels sum in other orders: in float64 they agree to ~1e-15 of the scores'
    scale, so to 1e-10 of it, and ranks agree wherever neighbouring scores are further apart
    than that (the duplicated batch's exact ties may come in either order)."""
    model = cnn()
    ckpts, train, test = checkpoints(model), with_duplicates(N_TRAIN, 0), texts(N_TEST, 1)
    call = {"progress": False, "batch_size": BATCH, "dtype": torch.float64}
    full = influence.scores("tracin-we", model, ckpts, train, test, **call)
    stream = call | {"chunk_size": 7}
    on_cpu = influence.top_k_streaming_both("tracin-we", model, ckpts, train, test, 6, **stream)
    on_gpu = influence.top_k_streaming_both(
        "tracin-we", model, ckpts, train, test, 6, device="cuda", **stream
    )
    atol = 1e-10 * float(full.abs().max())
    for gpu, cpu, proponents in zip(on_gpu, on_cpu, (True, False), strict=True):
        assert gpu.indices.device.type == "cpu"
        assert_same(cpu, influence.top_k(full, 6, proponents))  # the same CPU computation
        assert assert_top_k_close(gpu, full, 6, proponents, atol=atol) > 0.5
