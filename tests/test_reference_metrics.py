"""The smoke metrics' reference check itself (``tests/reference_metrics.py``): it catches a moved,
missing or new metric, and lets rounding-sized moves through."""

from __future__ import annotations

import json

import pytest

from tests import reference_metrics as rm


@pytest.fixture
def reference(tmp_path, monkeypatch):
    metrics = tmp_path / "metrics"
    metrics.mkdir()
    record = {"test_accuracy": 0.8, "n_points": 4, "found": 10, "auc": {"we": -0.1}, "ok": True}
    (metrics / "03_x.json").write_text(json.dumps(record | {"run_dir": "/somewhere"}))
    monkeypatch.setattr(rm, "REFERENCE", tmp_path / "reference" / "smoke.json")
    rm.write_reference(metrics)
    return record


def test_moves_within_tolerance_pass_and_others_are_named(reference):
    assert rm.drift("03_x", reference) == []
    assert rm.drift("03_x", reference | {"test_accuracy": 0.9, "found": 12}) == []
    moved = rm.drift("03_x", reference | {"test_accuracy": 0.6, "n_points": 5, "auc": {}})
    assert len(moved) == 3
    assert any(m.startswith("test_accuracy: 0.6, reference 0.8 ± 0.15") for m in moved)
    assert any(m.startswith("n_points: 5, reference 4 ± 0") for m in moved)
    assert "auc.we: missing (reference -0.1)" in moved
    assert rm.drift("03_x", reference | {"extra": 1.0}) == ["extra: new, not in the reference"]
    assert rm.drift("04_y", reference)[0].startswith("04_y: no reference")
    assert rm.flatten({"a": {"b": 1.5, "c": "s", "d": [1]}, "n_trained": 3}) == {"a.b": 1.5}
