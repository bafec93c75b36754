"""What a run will train, counted before it starts (``experiments.cost``), and the estimate's
gate in ``reproduce``."""

from __future__ import annotations

import json

import pytest
import yaml

from tracin_we import reproduce as rp
from tracin_we.experiments import cost
from tracin_we.experiments.deletion import DeletionConfig
from tracin_we.experiments.lds import LDSConfig
from tracin_we.training.recipe import TrainConfig

CNN = {"model": "cnn", "n_train": 100, "epochs": 3, "checkpoint_epochs": [3], "max_length": 16}


def test_counts_follow_the_configs():
    train = TrainConfig.from_params(**CNN)
    (one,) = cost.plan("01_train", train, {})
    assert (one.count, one.model, one.example_epochs) == (1, "cnn", 300)
    deletion = DeletionConfig.from_params(
        **CNN, methods=["tracin-we", "random"], ks=[5, 10], n_test_points=4, seeds=[0, 1]
    )  # fmt: skip
    _, retrains = cost.plan("03_case_deletion", deletion, {})
    assert retrains.count == deletion.n_retrains == 2 * (1 + 4 * 2 * 2 * 2)
    per_seed = DeletionConfig.from_params(
        **CNN, methods=["tracin-we"], ks=[5], n_test_points=4, seeds=[0, 1, 2], model_per_seed=True
    )  # fmt: skip
    models, retrains = cost.plan("03_case_deletion", per_seed, {})
    assert (models.count, models.what) == (3, "trained models")  # one explained model per seed
    assert retrains.count == 3 * (1 + 4 * 2)
    lds = LDSConfig.from_params(
        model="cnn",
        n_train=100,
        epochs=3,
        checkpoint_epochs=[3],
        max_length=16,
        n_subsets=6,
        alpha=0.5,
    )
    assert cost.plan("08_lds", lds, {})[1].example_epochs == 150  # half of the texts
    layer = cost.plan("06_cancellation", deletion, {"retrain": True})[1]
    one_method = 2 * (1 + 4 * 2 * 2)
    assert layer.count == 5 * one_method and "5 layers" in layer.what  # the CNN's 5 groups
    assert len(cost.plan("06_cancellation", deletion, {"retrain": False})) == 1
    noisy = cost.plan("07_layers_and_aggregation", deletion, {"retrain": True})
    assert noisy[-1].shared and len(noisy) == 3
    assert cost.plan("00_tracin_we_by_hand", None, {}) == []


def test_estimates_use_measured_rates_where_there_are_some(tmp_path):
    works = [
        cost.Work("03", "retrains", 10, "cnn", 1000.0),
        cost.Work("07", "x", 99, "cnn", 1.0, shared=True),
    ]
    assert cost.estimate(works, {}) == pytest.approx(10 * 1000 * cost.DEFAULT_RATES["cnn"])
    timing = tmp_path / "timing.jsonl"
    cost.record_timing(timing, "03_case_deletion", works, seconds=20.0, trained=10)
    cost.record_timing(timing, "03_case_deletion", works, seconds=20.0, trained=5)  # half cached
    cost.record_timing(timing, "03_case_deletion", works, seconds=3.0, trained=0)  # all cached
    with open(timing, "a") as f:
        f.write('{"notebook": "cut sh')  # a line cut short by a killed run: skipped
    assert len(timing.read_text().splitlines()) == 3  # the cached rerun measured nothing
    rates = cost.measured_rates(timing)
    assert rates == {"cnn@cpu": pytest.approx((20 / 10_000 + 20 / 5_000) / 2)}  # the median
    assert cost.estimate(works, rates) == pytest.approx(10_000 * rates["cnn@cpu"])
    on_gpu = [cost.Work("03", "retrains", 10, "cnn", 1000.0, device="cuda")]
    assert cost.estimate(on_gpu, rates) == cost.estimate(works[:1], {})  # no GPU rate measured
    text = cost.describe(works, rates)
    assert "measured here for ['cnn@cpu']" in text and "shared with an earlier notebook" in text
    assert "total 10 trainings" in text
    huge = [cost.Work("01", "t", 1, "org/huge", 10.0)]
    assert cost.estimate(huge, {}) == pytest.approx(10 * cost.UNKNOWN_RATE)


def test_trainings_are_counted_by_what_the_cache_gains(tmp_path):
    assert cost.trainings_in(tmp_path) == 0
    (tmp_path / "train" / "cnn-x").mkdir(parents=True)
    (tmp_path / "train" / "cnn-x" / "result.json").write_text("{}")
    (tmp_path / "retrain" / "abc").mkdir(parents=True)
    for name in ("a-s0.pt", "a-s1.pt", "config.json"):
        (tmp_path / "retrain" / "abc" / name).write_text("")
    assert cost.trainings_in(tmp_path) == 3


def test_a_long_run_asks_for_yes_before_anything_runs(tmp_path, monkeypatch, capsys):
    preset = tmp_path / "long.yaml"
    preset.write_text(yaml.safe_dump({
        "common": {"model": "cnn", "n_train": 120, "max_length": 16},
        "03_case_deletion": {"n_test_points": 4, "ks": [5], "seeds": [0]},
    }))  # fmt: skip
    monkeypatch.setattr(rp, "ASK_ABOVE_SECONDS", 0.001)
    monkeypatch.setattr(rp, "reproduce", lambda *a, **k: pytest.fail("a notebook ran"))
    with pytest.raises(SystemExit):
        rp.main(["--preset", str(preset), "--only", "03", "--runs", str(tmp_path / "runs")])
    assert "pass --yes to start it" in capsys.readouterr().err
    started = []
    monkeypatch.setattr(rp, "reproduce", lambda *a, **k: started.append(k["plans"]))
    rp.main(["--preset", str(preset), "--only", "03", "--runs", str(tmp_path / "r"), "--yes"])
    (plans,) = started
    assert (
        list(plans) == ["03_case_deletion"] and plans["03_case_deletion"][1].count == 1 + 4 * 3 * 2
    )


def test_every_notebook_has_a_plan_under_the_smoke_preset(tmp_path):
    config = rp.load_preset("smoke")
    run_dir, figures_dir = rp.output_dirs("smoke", tmp_path)
    plans = rp.check_notebooks(config, rp.notebook_paths(), run_dir, figures_dir, "smoke")
    assert sorted(plans) == [nb.stem for nb in rp.notebook_paths()]
    assert all(w.count >= 1 for works in plans.values() for w in works)
    lds_works = json.loads(json.dumps([w.__dict__ for w in plans["08_lds"]]))
    assert lds_works[1]["count"] == 6 * 2  # 6 subsets × 2 seeds
