"""Two runs paired point by point (``report.compare_runs``), on run folders written here."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tracin_we.report.compare_runs import compare_runs, main


def _deletion(folder, shift: dict[str, float], points=range(6)) -> None:
    rng = np.random.default_rng(0)
    rows = [
        {"point": p, "method": m, "direction": d, "k": 5, "seed": s, "DEL": rng.normal()}
        for p in points
        for m in ("tracin-we", "random")
        for d in ("proponents", "opponents")
        for s in (0, 1)
    ]
    table = pd.DataFrame(rows)
    table["DEL"] += table["method"].map(shift).fillna(0.0)
    folder.mkdir(exist_ok=True)
    table.to_csv(folder / "03_deletion.csv", index=False)


def test_a_shift_of_one_method_is_found_and_signed(tmp_path):
    _deletion(tmp_path / "a", {})
    _deletion(tmp_path / "b", {"tracin-we": 0.25})
    table = compare_runs(tmp_path / "a", tmp_path / "b", ("random-init", "pca"))
    we = table[table["method"] == "tracin-we"].set_index("metric")
    assert we.loc["DEL+", "difference"] == pytest.approx(0.25)
    assert we.loc["DEL+", "low"] == pytest.approx(0.25) == we.loc["DEL+", "high"]
    assert we.loc["DEL+", "verdict"] == "random-init better"  # DEL+: lower is better
    assert we.loc["DEL-", "verdict"] == "pca better"  # DEL-: higher is better
    control = table[table["method"] == "random"]
    assert (control["difference"].abs() < 1e-12).all()
    assert (control["verdict"] == "inconclusive").all()
    assert set(table.columns) >= {"random-init", "pca", "n_points"}
    assert (table["n_points"] == 6).all()


def test_lds_tables_pair_too_and_other_points_are_refused(tmp_path):
    for name, offset in (("a", 0.0), ("b", -0.1)):
        folder = tmp_path / name
        folder.mkdir()
        pd.DataFrame(
            {"point": [3, 1, 3, 1], "method": ["m", "m", "n", "n"], "LDS": [0.5, 0.2, 0.1, 0.0]}
        ).assign(LDS=lambda t, o=offset: t["LDS"] + o).to_csv(folder / "08_lds_per_point.csv")
    table = compare_runs(tmp_path / "a", tmp_path / "b")
    assert list(table["metric"]) == ["LDS", "LDS"]
    assert table["difference"].tolist() == pytest.approx([-0.1, -0.1])
    assert set(table["verdict"]) == {"baseline better"}
    _deletion(tmp_path / "c", {}, points=range(6))
    _deletion(tmp_path / "d", {}, points=range(1, 7))
    with pytest.raises(ValueError, match="scored different test points"):
        compare_runs(tmp_path / "c", tmp_path / "d")
    with pytest.raises(ValueError, match="holds neither"):
        compare_runs(tmp_path / "c", tmp_path / "nothing")
    with pytest.raises(ValueError, match="share no metric"):
        compare_runs(tmp_path / "a", tmp_path / "c")


def test_command_line_prints_and_writes(tmp_path, capsys):
    _deletion(tmp_path / "a", {})
    _deletion(tmp_path / "b", {"random": -0.5})
    main([str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "c.csv")])
    assert "random" in capsys.readouterr().out
    assert len(pd.read_csv(tmp_path / "c.csv")) == 4
