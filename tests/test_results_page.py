"""``docs/results.md`` is written from run folders: sections of notebooks that did not run say
what to run, and ``--check`` fails while the page differs from what its runs give."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest

from tracin_we.core.stats import deletion_differences
from tracin_we.report import result_tables as results_page_tables
from tracin_we.report import results_page
from tracin_we.report.result_tables import peers_paragraph


def _run(runs) -> None:
    """A default run with only 01 and 03 (two trained models) done."""
    folder = runs / "default"
    (folder / "metrics").mkdir(parents=True)
    (folder / "metrics" / "01_train.json").write_text(
        json.dumps({"test_accuracy": 0.8123, "val_accuracy": 0.8, "epochs_run": 4})
    )
    (folder / "metrics" / "03_case_deletion.json").write_text(
        json.dumps({"test_accuracy": 0.7, "models": [0, 1], "n_points": 8, "seeds": [0, 1]})
    )
    pd.DataFrame(
        [{"method": "tracin-we", "DEL+": -0.2, "DEL+ low": -0.3, "DEL+ high": -0.1,
          "DEL-": 0.05, "DEL- low": -0.01, "DEL- high": 0.1, "n_points": 8}]
    ).to_csv(folder / "03_auc_del.csv", index=False)  # fmt: skip
    pd.DataFrame(
        [{"metric": "DEL+", "reference": "tracin-we", "method": "random", "difference": -0.2,
          "low": -0.3, "high": -0.1, "share_better": 0.75, "verdict": "reference better",
          "n_points": 8, "n_models": 2}]
    ).to_csv(folder / "03_paired_differences.csv", index=False)  # fmt: skip
    pd.DataFrame({"k": [5, 10]}).to_csv(folder / "03_deletion.csv", index=False)


def test_page_reads_its_runs_and_names_what_is_missing(tmp_path):
    _run(tmp_path)
    text = results_page.page(tmp_path)
    assert "test accuracy **0.812**" in text and "**0.700**" in text
    assert "2 trained models (seeds 0, 1) × 8 test points, k = 5, 10" in text
    assert "| TR-WE − random | -0.200 (-0.300, -0.100); better on 75%: **TR-WE better** |" in text
    assert "-0.200 (-0.300, -0.100)" in text  # the AUC-DEL table
    for stem in ("04", "05", "06", "07", "08", "09"):
        command = f"python -m tracin_we.reproduce --preset default --only {stem}"
        assert f"Not run yet: `{command}`" in text, stem


def test_check_fails_until_the_page_is_written(tmp_path, capsys):
    _run(tmp_path)
    out = tmp_path / "results.md"
    args = ["--runs", str(tmp_path), "--out", str(out)]
    with pytest.raises(SystemExit, match="differs"):
        results_page.main([*args, "--check"])
    results_page.main(args)
    results_page.main([*args, "--check"])
    assert "up to date" in capsys.readouterr().out


def test_refuses_runs_without_the_default_run(tmp_path, capsys):
    with pytest.raises(SystemExit):
        results_page.main(["--runs", str(tmp_path), "--out", str(tmp_path / "r.md")])
    assert "make reproduce" in capsys.readouterr().err


def test_each_model_alone_reads_its_own_one_way_interval():
    """Per trained model, TR-WE − TR-Last with the one-way CI that model's run would report."""
    rng = np.random.default_rng(0)
    records = [
        {"model": s, "seed": s, "point": p, "k": 5, "method": m, "direction": d,
         "DEL": rng.normal(0, 0.01) - (0.5 if (s == 0 and m == "tracin-we") else 0.0)}
        for s in (0, 1) for p in range(8) for m in ("tracin-we", "tracin-last")
        for d in ("proponents", "opponents")
    ]  # fmt: skip
    table = pd.DataFrame(records)
    lines = results_page_tables.each_model_alone(table, "run")
    text = "\n".join(lines).splitlines()
    rows = [line for line in text if line.startswith("|") and "---" not in line][1:]
    assert len(rows) == 2
    assert "**TR-WE better**" in rows[0].split("|")[2]  # model 0: TR-WE's DEL+ far lower
    one = deletion_differences(table[table["model"] == 1], ["tracin-we"])
    plus = one[(one["metric"] == "DEL+") & (one["method"] == "tracin-last")].iloc[0]
    assert f"{plus['difference']:+.3f} ({plus['low']:.3f}, {plus['high']:.3f})" in rows[1]


def test_cancellation_reads_c_from_the_default_and_deletions_from_the_layers_run(tmp_path):
    _run(tmp_path)
    metrics = {"variant": "C_l1", "ratio_by_layer": {"word_embeddings": 2.5, "classifier": 9.0},
               "median_cancellation": {"tracin-we": 3.0, "tracin-last": 7.0}}  # fmt: skip
    (tmp_path / "default" / "metrics" / "06_cancellation.json").write_text(json.dumps(metrics))
    alone = "\n".join(results_page.cancellation_section(tmp_path / "default", tmp_path / "layers"))
    assert re.search(r"\| word_embeddings \| +2\.500 \|", alone)
    assert "`python -m tracin_we.reproduce --preset layers`" in alone
    layers = tmp_path / "layers"
    (layers / "metrics").mkdir(parents=True)
    (layers / "metrics" / "06_cancellation.json").write_text(
        json.dumps(metrics | {"spearman_c_vs_del_plus": -0.5})
    )
    pd.DataFrame(
        [{"group": g, "DEL+": v, "DEL+ low": v - 0.1, "DEL+ high": v + 0.1, "DEL-": 0.0,
          "DEL- low": -0.1, "DEL- high": 0.1, "n_points": 4}
         for g, v in (("word_embeddings", -0.2), ("classifier", -0.05))]
    ).to_csv(layers / "06_layer_deletion.csv", index=False)  # fmt: skip
    both = "\n".join(results_page.cancellation_section(tmp_path / "default", layers))
    assert (
        "-0.200 (-0.300, -0.100)" in both
        and "Spearman ρ of C with per-layer AUC-DEL+: -0.50" in both
    )


def test_the_cost_of_trak_and_ekfac_comes_from_the_benchmark_csv(tmp_path):
    assert results_page.cost_section(tmp_path) == []
    pd.DataFrame(
        [{"method": m, "seconds": s, "peak_mib": p, "n_train": 2000, "n_test": 20,
          "checkpoints": 3, "threads": 2}
         for m, s, p in (("tracin-we", 5.0, 100.0), ("trak", 50.0, 400.0), ("ekfac", 10.0, 300.0))]
    ).to_csv(tmp_path / "bench_peers.csv", index=False)  # fmt: skip
    text = "\n".join(results_page.cost_section(tmp_path))
    assert "2,000 training × 20 test texts, 3 checkpoints, 2 threads" in text
    assert re.search(r"\| TRAK +\| +50 \| +400 \| +10 \| +4 \|", text)  # s, MiB, × time, × memory


def test_peers_paragraph_pairs_accuracy_with_cost(tmp_path):
    """Each peer's time ratio and its paired differences from both evaluations; the closing
    sentence only where no interval separates anything."""
    lds, deletion, bench = (tmp_path / n for n in ("lds-peers", "deletion-peers", "benchmarks"))
    for folder in (lds, deletion, bench):
        folder.mkdir()
    pd.DataFrame({"method": ["tracin-we", "trak", "ekfac"], "seconds": [1.0, 9.0, 4.0]}).to_csv(
        bench / "bench_peers.csv", index=False
    )
    row = {"reference": "tracin-we", "difference": 0.02, "low": -0.05, "high": 0.09}
    lds_rows = [row | {"method": m, "verdict": "inconclusive"} for m in ("trak", "ekfac")]
    pd.DataFrame(lds_rows).to_csv(lds / "08_lds_differences.csv", index=False)
    del_rows = [
        row | {"metric": "DEL+", "method": "trak", "verdict": "reference better"},
        row | {"metric": "DEL+", "method": "tracin-last", "verdict": "method better"},
    ]
    pd.DataFrame(del_rows).to_csv(deletion / "03_paired_differences.csv", index=False)
    text = "\n".join(peers_paragraph(lds, deletion, bench))
    assert "- TRAK, 9.0× TracIn-WE's time: LDS (lds-peers) +0.020 (-0.050, 0.090): **not " in text
    assert "DEL+ (deletion-peers) +0.020 (-0.050, 0.090): **TR-WE better**." in text
    assert "- EK-FAC, 4.0× TracIn-WE's time: LDS (lds-peers)" in text
    assert "No interval separates" not in text  # TRAK's DEL+ was separated
    (deletion / "03_paired_differences.csv").unlink()
    assert "No interval separates" in "\n".join(peers_paragraph(lds, deletion, bench))
    assert peers_paragraph(lds, deletion, tmp_path / "none") == []
