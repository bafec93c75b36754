"""Each notebook executed by papermill under the smoke preset, asserting on its recorded metrics;
last, the HTML report of all of them rendered in headless Chromium."""

from __future__ import annotations

import json
import re
from pathlib import Path

import nbformat
import pandas as pd
import papermill
import pytest

from tests import browser
from tests.reference_metrics import drift
from tracin_we.preflight import NOTEBOOKS, notebook_defaults, select_notebooks
from tracin_we.report import results_page
from tracin_we.report.html import notebook_title
from tracin_we.reproduce import load_preset, reproduce

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One runs folder for the module: each notebook adds its executed copy, and the report
    test renders the report of all of them without executing anything again."""
    return tmp_path_factory.mktemp("runs")


def _defaults(prefix: str) -> dict:
    (notebook,) = select_notebooks([prefix])
    return notebook_defaults(notebook)


def run_smoke(prefix: str, tmp_path: Path, runs: Path) -> tuple[dict, list]:
    """Run the notebook ``prefix`` under the smoke preset; its metrics and the figure files it
    wrote (each notebook writes its figures into its own ``tmp_path``). Progress bars must
    render as widgets."""
    figures = tmp_path / "figures"
    (executed,) = reproduce("smoke", only=[prefix], runs=runs, figures_dir=figures)
    # tqdm.auto draws widgets (ipywidgets installed), not "IProgress not found" warnings.
    streams = [
        output.get("text", "")
        for cell in nbformat.read(executed, as_version=4).cells
        for output in cell.get("outputs", [])
    ]
    assert not any("IProgress not found" in text for text in streams), prefix
    path = next((runs / "smoke" / "metrics").glob(f"{prefix}_*.json"))
    metrics = json.loads(path.read_text())
    moved = drift(path.stem, metrics)
    assert not moved, "metrics moved beyond their tolerance (tests/reference_metrics.py):\n" + (
        "\n".join(moved)
    )
    return metrics, sorted(p.name for p in figures.glob("*.png"))


def test_notebooks_are_committed_clean_with_one_parameters_cell():
    for path in sorted(NOTEBOOKS.glob("*.ipynb")):
        notebook = nbformat.read(path, as_version=4)
        code = [c for c in notebook.cells if c.cell_type == "code"]
        assert all(not c.outputs and c.execution_count is None for c in code), path.name
        tagged = [c for c in code if "parameters" in c.metadata.get("tags", [])]
        assert len(tagged) == 1, path.name
        assert not any(
            line.lstrip().startswith(("def ", "class "))
            for c in code
            for line in c.source.splitlines()
        ), path.name


def test_papermill_parses_every_parameter():
    for path in sorted(NOTEBOOKS.glob("*.ipynb")):
        notebook = nbformat.read(path, as_version=4)
        cell = next(c for c in notebook.cells if "parameters" in c.metadata.get("tags", []))
        assigned = {
            line.split("=")[0].strip()
            for line in cell.source.splitlines()
            if "=" in line and not line.startswith("#")
        }
        assert set(papermill.inspect_notebook(str(path))) == assigned, path.name


def test_unknown_preset_is_refused():
    with pytest.raises(ValueError, match="preset='huge' is unknown; allowed:"):
        load_preset("huge")


def test_00_tracin_we_by_hand(tmp_path, runs):
    metrics, figures = run_smoke("00", tmp_path, runs)
    # The three routes to one TracIn-WE score agree to float64 rounding.
    for route in ("dense", "shared", "words", "last"):
        assert metrics[f"{route}_rel_error"] < 1e-10, route
    assert metrics["rows_outside_text"] == [0, 0, 0, 0]
    assert all(
        0 < n <= m for n, m in zip(metrics["nonzero_rows"], metrics["distinct_tokens"], strict=True)
    )
    assert all(s != 0 for s in metrics["tracin_we"])  # [CLS]/[SEP] are shared by every pair
    assert metrics["noc_zero"] == [not shared for shared in metrics["shares_a_word"]]
    assert metrics["cancellation"]["TracIn-Last"] > metrics["cancellation"]["TracIn-WE"]
    assert figures == []


def test_01_train(ag_news_dir, tmp_path, runs):
    metrics, figures = run_smoke("01", tmp_path, runs)
    assert 0.0 <= metrics["test_accuracy"] <= 1.0
    assert metrics["epochs_run"] == _defaults("01")["epochs"]
    assert metrics["n_checkpoints"] == 2
    assert metrics["init"].startswith("random")
    assert figures == ["01_training_curves.png"]


def test_02_influence(ag_news_dir, tmp_path, runs):
    metrics, figures = run_smoke("02", tmp_path, runs)
    assert metrics["word_sum_error"] < 1e-4
    assert metrics["last_zero_share"] == 0.0  # every pair shares the final activation
    assert metrics["we_zero_share"] == 0.0  # every pair shares [CLS] and [SEP]
    assert metrics["noc_zero_share"] >= metrics["we_zero_share"]
    assert 1 <= metrics["last_most_common_count"] <= metrics["n_test_points"]
    assert figures == ["02_score_distributions.png"]


def test_03_case_deletion(ag_news_dir, tmp_path, runs):
    metrics, figures = run_smoke("03", tmp_path, runs)
    assert metrics["n_points"] == 4
    assert set(metrics["auc_del_plus"]) == {"tracin-last", "tracin-we", "random"}
    assert all(-1.0 <= v <= 1.0 for v in metrics["auc_del_minus"].values())
    assert metrics["crn_se_ratio_median"] is None or metrics["crn_se_ratio_median"] >= 0
    assert figures == ["03_deletion_curves.png"]
    assert (runs / "smoke" / "03_paired_differences.csv").is_file()
    defaults = _defaults("03")
    assert metrics["seeds"] == sorted(defaults["seeds"])
    if defaults["model_per_seed"]:  # one explained model per seed; where the variance comes from
        assert metrics["models"] == metrics["seeds"]
        assert (runs / "smoke" / "03_variance_components.csv").is_file()
        for metric, shares in (metrics["variance_shares_we_minus_last"] or {}).items():
            assert sum(shares.values()) == pytest.approx(1.0), metric
    if {"tracin-we", "tracin-last"} <= set(defaults["methods"]):
        paired = metrics["we_minus_last"]  # TracIn-WE − TracIn-Last, paired over test points
        assert set(paired) == {"DEL+", "DEL-"}
        for metric, row in paired.items():
            assert set(row) == {"difference", "low", "high", "share_better"}, metric
            # The percentile CI of a mean holds the mean; 1e-12 for its float rounding.
            assert row["low"] - 1e-12 <= row["difference"] <= row["high"] + 1e-12, metric
            assert 0.0 <= row["share_better"] <= 1.0, metric


def test_04_no_overlap(ag_news_dir, tmp_path, runs):
    metrics, figures = run_smoke("04", tmp_path, runs)
    assert metrics["n_points"] == 4
    assert metrics["n_candidates"] == 30  # candidate_fraction 0.25 of 120
    assert metrics["candidate_max_cosine"] < 0.2
    methods = {
        "tracin-we",
        "tracin-we-noc",
        "tracin-last",
        "influence-last",
        "representer",
        "random",
    }
    assert set(metrics["auc_del_plus"]) == set(metrics["auc_del_minus"]) == methods
    assert all(-1.0 <= v <= 1.0 for v in metrics["auc_del_plus"].values())
    assert figures == ["04_no_overlap_auc_del.png"]


def test_05_fixing(ag_news_dir, tmp_path, runs):
    metrics, figures = run_smoke("05", tmp_path, runs)
    assert metrics["n_mistakes"] == 2
    assert set(metrics["share_fixed"]) == {
        "control none",
        "tracin-we-topk remove",
        "tracin-we-topk replace",
        "influence-last remove",
        "influence-last replace",
    }
    assert all(0.0 <= v <= 1.0 for v in metrics["share_fixed"].values())
    assert metrics["newly_fixed"]["control none"] == 0.0
    assert metrics["control_share_fixed"] <= 0.5  # seed 0 reproduces the mistakes themselves
    assert figures == ["05_fixing.png"]


def test_06_cancellation(ag_news_dir, tmp_path, runs):
    metrics, figures = run_smoke("06", tmp_path, runs)
    assert metrics["variant"] == "C_l1"
    assert metrics["min_ratio"] >= 1.0 - 1e-6
    assert list(metrics["ratio_by_layer"]) == [
        "word_embeddings",
        "conv1",
        "conv2",
        "conv3",
        "classifier",
    ]
    assert set(metrics["median_cancellation"]) == {"tracin-we", "tracin-last"}
    assert set(metrics["layer_auc_del_plus"]) == set(metrics["ratio_by_layer"])
    assert figures == [
        "06_cancellation_by_layer.png",
        "06_cancellation_vs_deletion.png",
        "06_influence_cancellation.png",
    ]


def test_07_layers_and_aggregation(ag_news_dir, tmp_path, runs):
    metrics, figures = run_smoke("07", tmp_path, runs)
    assert metrics["n_flipped"] == round(0.2 * 120)
    assert {"word_embeddings", "classifier", "agg:mean", "agg:rank", "agg:vote"} <= set(
        metrics["ndr"]
    )
    assert all(0.0 <= v <= 1.0 for v in metrics["ndr"].values())
    assert set(metrics["spearman_c"]) == set(metrics["spearman_ndr"]) == {"DEL+", "DEL-"}
    assert figures == [
        "07_c_vs_deletion.png",
        "07_ndr_vs_deletion.png",
        "07_noise_detection.png",
    ]


def test_08_lds(ag_news_dir, tmp_path, runs):
    metrics, figures = run_smoke("08", tmp_path, runs)
    assert metrics["n_points"] == 8 and metrics["n_subsets"] == 6
    assert set(metrics["lds"]) == {"tracin-last", "tracin-we", "random"}
    assert all(-1.0 <= v <= 1.0 for v in metrics["lds"].values())
    assert all(
        metrics["lds_low"][m] <= v <= metrics["lds_high"][m] for m, v in metrics["lds"].items()
    )
    assert set(metrics["tracin_we_minus"]) == {"tracin-last", "random"}
    defaults = _defaults("08")
    assert metrics["n_models"] == (len(defaults["seeds"]) if defaults["model_per_seed"] else 1)
    assert figures == ["08_lds.png", "08_lds_convergence.png", "08_lds_scatter.png"]


def test_09_pretraining_influence(ag_news_dir, tmp_path, runs):
    metrics, figures = run_smoke("09", tmp_path, runs)
    section = _defaults("09")  # the smoke preset overrides no default
    assert metrics["n_corpus"] == section["n_corpus"]
    assert metrics["n_points"] == section["n_test_points"] and metrics["k"] == section["k"]
    domains = {"World", "Sports", "Business", "Sci/Tech"}
    for weights in (metrics["doge_average"], metrics["doge_final"]):
        assert set(weights) == domains and abs(sum(weights.values()) - 1) < 1e-9
    assert set(metrics["influence_signed"]) == domains
    assert all(set(row) == {"World", "Sci/Tech"} for row in metrics["influence_magnitude"].values())
    assert set(metrics["mixtures"]) == {"uniform", "doge"}
    assert set(metrics["counterfactual_mean"]) == {"multistage-tracin-we", "random"}
    for method, mean in metrics["counterfactual_mean"].items():
        low, high = metrics["counterfactual_low"][method], metrics["counterfactual_high"][method]
        assert low - 1e-12 <= mean <= high + 1e-12 and -1 <= mean <= 1, method
    assert figures == [
        "09_counterfactual.png",
        "09_doge_weights.png",
        "09_domain_influence.png",
        "09_domain_influence_magnitude.png",
    ]


def test_report_of_the_smoke_run_renders_in_headless_chromium(runs, tmp_path):
    """The report that reproduce wrote after the notebooks above (the last one's run holds all
    of them), opened in Chromium: every executed notebook's title is a heading of the rendered
    page and every figure an inline image, and its screenshot is a real page, not a blank."""
    found = browser.find_browser()
    if found is None:
        pytest.skip("no Chromium/Chrome found (apt-get install chromium, or make browser)")
    executed = sorted((runs / "smoke" / "notebooks").glob("*.ipynb"))
    if not executed:
        pytest.skip("no smoke notebook ran in this session (deselected or skipped)")
    report = runs / "smoke" / "report.html"
    notebooks = [nbformat.read(path, as_version=4) for path in executed]
    n_figures = sum(
        "image/png" in output.get("data", {})
        for notebook in notebooks
        for cell in notebook.cells
        for output in cell.get("outputs", [])
    )
    dom = browser.dump_dom(found, report)
    headings = [re.sub(r"<[^>]+>", "", h) for h in re.findall(r"<h1[^>]*>(.*?)</h1>", dom, re.S)]
    for notebook in notebooks:
        title = notebook_title(notebook)
        assert any(h.strip().rstrip("¶").strip() == title for h in headings), (title, headings)
    assert dom.count('src="data:image/png;base64,') == n_figures
    # A clean run: logs are output, warnings are notes, and nothing is styled as an error.
    assert 'data-mime-type="application/vnd.jupyter.stderr"' not in dom
    assert n_figures >= (len(executed) > 1)  # 00 alone draws none; 01-08 draw at least one
    shot = browser.screenshot(found, report, tmp_path / "report.png")
    n_colours, not_background = browser.colours(shot)
    assert shot.stat().st_size > 20_000
    assert n_colours > 100 and not_background > 0.05, (n_colours, not_background)


def test_results_page_of_the_smoke_run(runs):
    """``docs/results.md``'s generator on the smoke run that the tests above left: every
    notebook's section is filled from its own metrics, and each paired reading follows the
    verdict of 03's table (the larger runs, absent here, say what to run)."""
    if not (runs / "smoke" / "metrics" / "09_pretraining_influence.json").is_file():
        pytest.skip("the smoke notebooks did not all run in this session")
    text = results_page.page(runs, "smoke")
    metrics = json.loads((runs / "smoke" / "metrics" / "01_train.json").read_text())
    assert f"test accuracy **{metrics['test_accuracy']:.3f}**" in text
    for heading in ("01 ·", "02 ·", "03 ·", "04 ·", "05 ·", "06 ·", "07 ·", "08 ·", "09 ·"):
        section = text.split(f"## {heading}", 1)[1].split("\n## ", 1)[0]
        assert "Not run yet" not in section, heading
    assert "Not run yet: `python -m tracin_we.reproduce --preset deletion-models`" in text
    paired = pd.read_csv(runs / "smoke" / "03_paired_differences.csv")
    for row in paired.itertuples():
        first, second = (results_page.name(m) for m in (row.reference, row.method))
        expected = {"reference better": f"{first} better", "method better": f"{second} better"}
        reading = expected.get(row.verdict, "not separated")
        line = next(x for x in text.splitlines() if x.startswith(f"| {first} − {second} "))
        cell = line.split("|")[2 if row.metric == "DEL+" else 3]  # | comparison | DEL+ | DEL- |
        assert f"**{reading}**" in cell, (line, row.metric, row.verdict)
