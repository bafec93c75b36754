"""Variance components of a crossed (trained model × test point) design, and the designs a
budget of retrains allows."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from tests.test_stats import crossed_cells
from tracin_we.core.variance import (
    crossed_components,
    deletion_components,
    grand_mean_sd,
    plan_designs,
)
from tracin_we.experiments.deletion import run_deletion
from tracin_we.variance_study import run_study

SPLITS = {"n_train": 32, "n_test": 16}  # conftest's synthetic splits, for the tiny study


def test_components_recover_the_generating_variances():
    cells = crossed_cells(60, 400, (0.5, 1.0, 2.0), seed=0)[..., 0]
    parts = crossed_components(cells)
    assert parts["model"] == pytest.approx(0.25, rel=0.3)
    assert parts["point"] == pytest.approx(1.0, rel=0.15)
    assert parts["residual"] == pytest.approx(4.0, rel=0.05)


def test_components_follow_the_sums_of_squares():
    """The ANOVA identity SS_total = SS_model + SS_point + SS_residual, and the moments."""
    y = np.array([[1.0, 2.0, 6.0], [3.0, 5.0, 7.0]])
    parts = crossed_components(y)
    grand = y.mean()
    ss_model = 3 * ((y.mean(1) - grand) ** 2).sum()
    ss_point = 2 * ((y.mean(0) - grand) ** 2).sum()
    ss_residual = ((y - grand) ** 2).sum() - ss_model - ss_point
    assert parts["residual"] == pytest.approx(ss_residual / 2)
    assert parts["model"] == pytest.approx(max((ss_model - parts["residual"]) / 3, 0))
    assert parts["point"] == pytest.approx((ss_point / 2 - parts["residual"]) / 2)
    assert grand_mean_sd(parts, 2, 3) == pytest.approx(
        np.sqrt(parts["model"] / 2 + parts["point"] / 3 + parts["residual"] / 6)
    )


def test_components_refuse_a_single_model():
    with pytest.raises(ValueError, match=r"cells has shape \(1, 4\)"):
        crossed_components(np.zeros((1, 4)))


def test_deletion_components_of_methods_and_their_difference():
    rng = np.random.default_rng(0)
    records = [
        {
            "model": s,
            "point": p,
            "method": m,
            "direction": d,
            "k": 5,
            "seed": s,
            "DEL": rng.normal(),
        }
        for s in (0, 1, 2)
        for p in (10, 11, 12, 13)
        for m in ("tracin-we", "tracin-last")
        for d in ("proponents", "opponents")
    ]
    table = pd.DataFrame.from_records(records)
    out = deletion_components(table).set_index(["metric", "quantity"])
    assert set(out.index.get_level_values("quantity")) == {
        "tracin-we",
        "tracin-last",
        "tracin-we − tracin-last",
    }
    plus = table[table["direction"] == "proponents"].pivot_table(
        index=["model", "point"], columns="method", values="DEL"
    )
    diff = (plus["tracin-we"] - plus["tracin-last"]).to_numpy().reshape(3, 4)
    row = out.loc[("DEL+", "tracin-we − tracin-last")]
    expected = crossed_components(diff)
    for c in ("model", "point", "residual"):
        assert row[f"var_{c}"] == pytest.approx(expected[c])
    assert row["mean"] == pytest.approx(diff.mean())
    assert row[["share_model", "share_point", "share_residual"]].sum() == pytest.approx(1.0)
    assert row["sd_of_mean"] == pytest.approx(grand_mean_sd(expected, 3, 4))


def test_plan_designs_spends_the_budget_in_whole_classes():
    parts = {"model": 0.01, "point": 0.04, "residual": 0.02}
    out = plan_designs(parts, retrains_per_cell=8, budget=300, points_per_class=4)
    by_models = out.set_index("n_models")
    assert by_models.loc[3, "n_points"] == 12  # (300 − 3) // 24 = 12 cells, whole classes of 4
    assert by_models.loc[3, "retrains"] == 3 * (1 + 12 * 8) <= 300
    assert (out["retrains"] <= 300).all() and (out["n_points"] % 4 == 0).all()
    assert not by_models.loc[1, "covered"] and by_models.loc[3, "covered"]
    assert by_models.loc[3, "halfwidth"] == pytest.approx(1.959964 * grand_mean_sd(parts, 3, 12))


def test_the_study_splits_a_tiny_sweep(splits, tmp_path, deletion_config):
    """``variance_study``: components over two trained models, the retrain noise of one model's
    cells (by hand: each retrain against its own seed's baseline), and designs for a budget."""
    config = deletion_config(methods=("tracin-last", "tracin-we"), ks=(3,))
    tables = run_study(config, (0, 1), 4, budget=60, splits=splits, cache=tmp_path, progress=False)
    claim = tables["components"].query("quantity == 'tracin-we − tracin-last'")
    assert set(claim["metric"]) == {"DEL+", "DEL-"} and (claim["n_models"] == 2).all()
    one_model = run_deletion(
        replace(config, seeds=(0, 1), n_test_points=4), splits, cache=tmp_path, progress=False
    )  # read back from the cache
    t = one_model.table.assign(d=one_model.table["p"] - one_model.table["baseline_seed"])
    d = t.pivot_table(index=["direction", "point", "seed"], columns="method", values="d")
    var = d.groupby(level=["direction", "point"]).var(ddof=1).groupby(level="direction").mean()
    noise = tables["retrain_noise"].set_index(["metric", "quantity"])["var_retrain"]
    assert noise[("DEL+", "tracin-we")] == pytest.approx(var.loc["proponents", "tracin-we"])
    designs = tables["designs"]
    assert set(designs["metric"]) == {"DEL+", "DEL-"} and (designs["retrains"] <= 60).all()
