"""``docs/pretrained.md`` is written from run folders: here, folders written by the test, so each
number on the page is checked against the one it came from."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tracin_we.report.pretrained_page import main, page

METHODS = ["tracin-last", "tracin-we", "tracin-tfidf", "random"]
LDS_METHODS = ["tracin-we", "tracin-we-topk", "tracin-we-syn", "tracin-last", "tracin-tfidf"]
NOT_RUN = (Path("/no/distilled/run"), Path("/no/lds-bert/run"))


def _run(
    folder, we_shift: float, accuracy: float, cnn_accuracy: float, noise=0.01, init=""
) -> None:
    """A run folder as notebooks 01/03/06/07/08 leave it, TracIn-WE's DEL+ moved by ``we_shift``
    (each value drawn around its mean with standard deviation ``noise``)."""
    rng = np.random.default_rng(0)
    (folder / "metrics").mkdir(parents=True)
    records = {
        "01_train": {"test_accuracy": accuracy, "init": init or "pretrained:minilm-l6@abc"},
        "02_influence": {
            "n_test_points": 40,
            "last_most_common_count": 29,
            "we_most_common_count": 35,
            "we_top1_shared": 0.48,
            "last_top1_shared": 0.3,
        },
        "03_case_deletion": {"test_accuracy": cnn_accuracy},
        "06_cancellation": {
            "variant": "C_l1",
            "ratio_by_layer": {"word_embeddings": 1.1, "layer0.ffn": 2.5, "classifier": 2.8},
            "median_cancellation": {"tracin-last": 9.0, "tracin-we": 3.0},
        },
        "07_layers_and_aggregation": {
            "n_flipped": 160,
            "fraction": 0.3,
            "noise_rate": 0.2,
            "ndr": {"word_embeddings": 0.42, "layer0.ffn": 0.51, "agg:rank": 0.6},
            "auc_ndr": {"word_embeddings": 0.6, "layer0.ffn": 0.7, "agg:rank": 0.75},
        },
    }
    for stem, record in records.items():
        (folder / "metrics" / f"{stem}.json").write_text(json.dumps(record))
    rows = [
        {"point": p, "method": m, "direction": d, "k": 60, "seed": 0, "DEL": rng.normal(0, noise)}
        for p in range(8)
        for m in METHODS
        for d in ("proponents", "opponents")
    ]
    deletion = pd.DataFrame(rows)
    shift = (deletion["method"] == "tracin-we") & (deletion["direction"] == "proponents")
    deletion.loc[shift, "DEL"] += we_shift
    deletion.to_csv(folder / "03_deletion.csv", index=False)
    lds = [
        {"point": p, "method": m, "LDS": rng.normal(0.3 if m == "tracin-we-syn" else 0.0, noise)}
        for p in range(10)
        for m in LDS_METHODS
    ]
    pd.DataFrame(lds).to_csv(folder / "08_lds_per_point.csv", index=False)
    own = {"reference": "tracin-we", "method": "tracin-last", "difference": 0.02, "low": -0.5}
    own |= {"high": 0.5, "verdict": "inconclusive", "n_points": 10}  # 08's two-way CI, wide
    pd.DataFrame([own]).to_csv(folder / "08_lds_differences.csv", index=False)


def test_the_page_reports_what_the_runs_hold(tmp_path):
    _run(tmp_path / "default", 0.0, 0.785, 0.800, noise=0.0, init="random(seed=0)")
    _run(tmp_path / "pretrained", we_shift=-0.5, accuracy=0.878, cnn_accuracy=0.856)
    text = page(tmp_path / "pretrained", tmp_path / "default", *NOT_RUN)
    assert "test accuracy **0.878**" in text and "BERT-tiny (init `random(seed=0)`): 0.785" in text
    assert "of 40 test points: TR-Last 29, TR-WE 35 (the paper" in text
    assert "48% of the other points under TracIn-WE and 30% under" in text
    assert "**0.856**" in text and "(default preset): 0.800" in text
    assert "| word_embeddings | 1.10 | 1 of 3 |" in text  # the least cancelling layer
    assert "Best single layer by NDR@30%: layer0.ffn (0.510)" in text
    assert "Random ranking: NDR@30% ≈ 0.30, AUC-NDR ≈ 0.56." in text
    # TracIn-WE's proponents were made 0.5 better only in the pretrained run: its DEL+ verdict
    # against TracIn-Last and TF-IDF says so there; the default run's equal values separate nothing
    lines = text.splitlines()
    we_last = [line for line in lines if line.startswith("| MiniLM embeddings | DEL+ |")]
    assert all("**TR-WE better**" in line for line in we_last) and len(we_last) == 2
    default_rows = [line for line in lines if line.startswith("| random embeddings | DEL+ |")]
    assert len(default_rows) == 2
    assert all("**not separated**" in line for line in default_rows)
    assert "**TR-WE-Syn better**" in text  # Syn's LDS was made 0.3 higher in both runs
    # LDS: 08's own (two-way) row where it has the pair; the points alone (†) where it has not
    assert (
        "| MiniLM embeddings | LDS | 10 points | +0.020 (-0.500, 0.500) | **not separated** |"
        in text
    )
    syn = [line for line in lines if "| LDS |" in line and "Syn better" in line]
    assert syn and all(" † |" in line for line in syn)
    assert "What the embeddings changed" in text and "minilm-emb better" in text


def test_without_the_default_run_the_page_says_what_to_run(tmp_path, capsys):
    _run(tmp_path / "pretrained", we_shift=-0.5, accuracy=0.878, cnn_accuracy=0.856)
    out = tmp_path / "page.md"
    main(["--pretrained", str(tmp_path / "pretrained"), "--default", str(tmp_path / "no"),
          "--out", str(out)])  # fmt: skip
    text = out.read_text()
    assert "run `make reproduce` to pair" in text and "random embeddings" not in text
    # a default run without 03/08's tables (an older version's, or --only 01) is not paired
    (tmp_path / "old" / "metrics").mkdir(parents=True)
    assert "run `make reproduce` to pair" in page(
        tmp_path / "pretrained", tmp_path / "old", *NOT_RUN
    )
    with pytest.raises(SystemExit):
        main(["--pretrained", str(tmp_path / "nothing"), "--out", str(out)])
    assert "run `make pretrained` first" in capsys.readouterr().err


def test_the_distilled_section_pairs_the_two_inits(tmp_path):
    """BERT-tiny distilled (TracIn-WE's DEL+ 0.5 better) against the random init (equal):
    accuracies from 01 and 03, each run's own verdicts, and the per-method change."""
    _run(tmp_path / "pretrained", we_shift=0.0, accuracy=0.878, cnn_accuracy=0.856)
    _run(tmp_path / "distilled", we_shift=-0.5, accuracy=0.861, cnn_accuracy=0.861)
    _run(tmp_path / "bert", 0.0, 0.5, 0.785, noise=0.0, init="random(seed=0)")
    distilled, bert = tmp_path / "distilled", tmp_path / "bert"
    text = page(tmp_path / "pretrained", tmp_path / "no", distilled, bert)
    assert "test accuracy **0.861** (01); from a random init: 0.785." in text
    lines = text.splitlines()
    assert any(
        line.startswith("| distilled | DEL+ |") and "**TR-WE better**" in line for line in lines
    )
    assert any(
        line.startswith("| random init | DEL+ |") and "**not separated**" in line for line in lines
    )
    assert "What distillation changed" in text and "distilled better" in text
    alone = page(tmp_path / "pretrained", tmp_path / "no", distilled, tmp_path / "none")
    assert "(Random init not run: `python -m tracin_we.reproduce --preset lds-bert`.)" in alone
    missing = page(tmp_path / "pretrained", tmp_path / "no", tmp_path / "none", bert)
    assert "Not run yet: `python -m tracin_we.reproduce --preset distilled`" in missing


def test_the_peers_section_reads_both_runs(tmp_path):
    """TR-WE against TRAK and EK-FAC from 08's own CI rows, with MiniLM's and random embeddings;
    no section where neither run has them."""
    for name in ("pretrained", "peers"):
        _run(tmp_path / name, we_shift=0.0, accuracy=0.878, cnn_accuracy=0.856)
        rows = [
            {"point": p, "method": m, "LDS": 0.1}
            for p in range(10)
            for m in ("tracin-we", "trak", "ekfac")
        ]
        pd.DataFrame(rows).to_csv(tmp_path / name / "08_lds_per_point.csv", index=False)
        own = {"reference": "tracin-we", "difference": 0.01, "low": -0.2, "high": 0.3}
        own |= {"verdict": "inconclusive", "n_points": 10}
        pd.DataFrame([own | {"method": "trak"}, own | {"method": "ekfac"}]).to_csv(
            tmp_path / name / "08_lds_differences.csv", index=False
        )
    text = page(tmp_path / "pretrained", tmp_path / "no", *NOT_RUN, tmp_path / "peers")
    assert "## TracIn-WE against TRAK and EK-FAC (08)" in text
    for label in ("random embeddings", "MiniLM embeddings"):
        for peer in ("TRAK", "EK-FAC"):
            assert (
                f"| {label} | LDS | 10 points | +0.010 (-0.200, 0.300) | **not separated** |"
                in text
            )
            assert f"**TR-WE − {peer}**" in text
    _run(tmp_path / "plain", we_shift=0.0, accuracy=0.878, cnn_accuracy=0.856)  # no TRAK
    plain = page(tmp_path / "plain", tmp_path / "no", *NOT_RUN, tmp_path / "none")
    assert "TRAK and EK-FAC (08)" not in plain
