"""Long work shows progress, and work that cannot fit in memory is refused before it starts."""

from __future__ import annotations

import sys

import pytest
import torch

from tests.conftest import texts
from tracin_we import influence
from tracin_we.core.models import CNNClassifier
from tracin_we.influence import gradients, layers, memory
from tracin_we.influence.options import Options

VOCAB, CLASSES = 120, 3


@pytest.fixture
def case():
    torch.manual_seed(0)
    model = CNNClassifier(CLASSES, vocab_size=VOCAB, embed_dim=8, channels=6)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    return model, [(state, 0.3), ({k: 1.1 * v for k, v in state.items()}, 0.05)]


def test_estimate_is_the_documented_formula(case) -> None:
    model, _ = case
    p = sum(v.numel() for v in model.parameters())  # params=".*": every parameter, dense
    options = Options(params=".*", batch_size=4, dtype=torch.float64)
    got = memory.estimate("tracin-layer", model, options, 30, 10, checkpoints=2)
    assert got.bytes == 8 * p * (30 + 10 + 2 * 4) + 8 * 2 * 10 * 30
    assert f"{p:,} parameters × 8 B × (30 train + 10 test + 2 × 4 batch examples)" in got.formula
    streamed = memory.estimate("tracin-layer", model, options, 30, 10, 2, chunk=8, k=3)
    assert streamed.bytes == 8 * p * (2 * 10 + 8 + 2 * 4) + 8 * 2 * 10 * (8 + 3)
    cached = Options(params=".*", batch_size=4, cache_dir="x")
    assert (
        memory.estimate("tracin-layer", model, cached, 30, 10, 2).bytes
        == 4 * p * (30 + 10 + 2 * 4 + 30) + 4 * 2 * 10 * 30
    )
    # sparse and last-layer methods keep no dense gradients: only the score matrices count
    assert memory.estimate("tracin-we", model, Options(), 30, 10, 2).bytes == 4 * 2 * 10 * 30
    last = memory.estimate("grad-cos", model, Options(layer="classifier"), 30, 10, 2)
    assert last.bytes == 4 * (6 * 3 + 3) * (30 + 10 + 2 * 30) + 4 * 2 * 10 * 30  # batch ≤ n


def test_too_much_memory_is_refused_before_any_gradient(
    case, monkeypatch: pytest.MonkeyPatch
) -> None:
    model, ckpts = case
    train, test = texts(30, 0), texts(10, 1)
    need = memory.estimate("tracin-layer", model, Options(params=".*"), 30, 10, 2).bytes

    def no_gradient(*args, **kwargs):
        raise AssertionError("gradients were taken")

    monkeypatch.setattr(layers, "param_grads", no_gradient)
    monkeypatch.setattr(memory, "available_bytes", lambda device: (need - 1, "available (test)"))
    with pytest.raises(MemoryError) as refused:
        influence.scores("tracin-layer", model, ckpts, train, test, params=".*")
    message = str(refused.value)
    assert f"about {memory.size(need)}" in message and "available (test)" in message
    assert "(30 train + 10 test + 2 × 30 batch examples)" in message
    for remedy in ("fewer parameters", "smaller batch_size (now 32)", "top_k_streaming"):
        assert remedy in message
    with pytest.raises(MemoryError, match="smaller chunk_size"):
        influence.top_k_streaming(
            "tracin-layer", model, ckpts, train, test, k=2, params=".*", chunk_size=4096
        )
    # the same call where the estimate fits: it runs (and the methods without dense gradients
    # are not refused at this budget)
    monkeypatch.undo()
    monkeypatch.setattr(memory, "available_bytes", lambda device: (need, "available (test)"))
    out = influence.scores("tracin-layer", model, ckpts, train, test, params=".*", progress=False)
    assert out.shape == (10, 30) and bool(out.abs().sum() > 0)
    assert influence.scores("tracin-we", model, ckpts, train, test).shape == (10, 30)


def test_available_memory_without_psutil(monkeypatch: pytest.MonkeyPatch) -> None:
    psutil = pytest.importorskip("psutil")
    with_psutil, source = memory.available_bytes("cpu")
    assert source == "available RAM (psutil)"
    total = psutil.virtual_memory().total
    monkeypatch.setitem(sys.modules, "psutil", None)  # import psutil → ImportError
    from_proc, source = memory.available_bytes("cpu")
    assert source == "MemAvailable (/proc/meminfo)"
    assert abs(from_proc - with_psutil) < 0.2 * with_psutil
    assert total > from_proc > 0


def test_param_grads_fill_in_place_equal_per_batch_gradients(case) -> None:
    """The (n, P) result written batch by batch equals the per-batch gradients concatenated:
    bitwise, as each part is computed on exactly the batch ``whole`` computes it on."""
    model, _ = case
    data = influence.options.prepare_data("train", texts(7, 0), CLASSES, VOCAB)
    names = ["convs.0.weight", "classifier.bias"]
    whole = gradients.param_grads(model, data, names, 3, "cpu")
    parts = [
        gradients.param_grads(model, {k: v[s : s + 3] for k, v in data.items()}, names, 3, "cpu")
        for s in (0, 3, 6)
    ]
    assert whole.shape == (7, 6 * 8 * 5 + 3) and torch.equal(whole, torch.cat(parts))


def test_progress_bars_show_only_when_asked(case, capsys: pytest.CaptureFixture) -> None:
    model, ckpts = case
    train, test = texts(6, 0), texts(4, 1)
    quiet = influence.scores("tracin-we", model, ckpts, train, test, progress=False, batch_size=2)
    assert capsys.readouterr().err == ""
    shown = influence.scores("tracin-we", model, ckpts, train, test, batch_size=2)
    err = capsys.readouterr().err
    assert "TracIn over checkpoints" in err and "2/2" in err
    assert torch.equal(quiet, shown)  # the same computation: bars change no bit
    # Another batch size sums in another order (float32): equal to 1e-5 of the largest score.
    whole = influence.scores("tracin-we", model, ckpts, train, test, progress=False)
    torch.testing.assert_close(whole, shown, rtol=0, atol=1e-5 * float(whole.abs().max()))
    influence.scores("tracin-layer", model, ckpts, train, test, params="classifier")
    assert "per-example gradients" in capsys.readouterr().err
    with pytest.raises(ValueError, match=r"progress='yes'.*must be True or False"):
        influence.scores("tracin-we", model, ckpts, train, test, progress="yes")
