"""The figures' conventions (reporting's module docstring): legends outside the axes, labelled
axes, titles, and the chance levels of noise detection."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import torch

from tracin_we.experiments.noise import auc_ndr, ndr_at
from tracin_we.report import diagnostic_figures, figures, reporting
from tracin_we.report.figures import auc_del_figure, score_distributions

GROUPS = ["word_embeddings", "conv1", "conv2", "conv3", "classifier"]


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def legends(fig: plt.Figure) -> list:
    return [a.get_legend() for a in fig.axes if a.get_legend()] + list(fig.legends)


def assert_legends_outside(fig: plt.Figure) -> None:
    """No legend's box overlaps the box of any axes that holds data."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    boxes = legends(fig)
    assert boxes, "the figure has no legend"
    for legend in boxes:
        outer = legend.get_window_extent(renderer)
        for ax in fig.axes:
            assert not outer.overlaps(ax.get_window_extent(renderer)), legend.get_title().get_text()


def assert_labelled(fig: plt.Figure) -> None:
    """Every axes has an x label, the first a y label that says what it counts (a grid of
    facets labels its first column only), and the figure a title (its own or its axes')."""
    assert all(ax.get_xlabel() for ax in fig.axes)
    assert fig.axes[0].get_ylabel() not in ("", "value", "Count")
    suptitle = fig._suptitle.get_text() if fig._suptitle else ""
    assert suptitle or all(ax.get_title() for ax in fig.axes)


def ndr_table_of(values: np.ndarray) -> pd.DataFrame:
    return pd.DataFrame({"column": GROUPS, "NDR@30%": values, "AUC-NDR": values + 0.2})


def test_chance_ndr_is_what_random_scores_get_on_average():
    g = torch.Generator().manual_seed(0)
    is_noisy = torch.arange(500) % 5 == 0  # noise rate 0.2
    random = [torch.rand(500, generator=g, dtype=torch.float64) for _ in range(300)]
    chance = diagnostic_figures.chance_ndr(0.3, 0.2)
    assert chance["NDR@30%"] == pytest.approx(np.mean([ndr_at(s, is_noisy) for s in random]), 0.03)
    assert chance["AUC-NDR"] == pytest.approx(np.mean([auc_ndr(s, is_noisy) for s in random]), 0.03)
    with pytest.raises(ValueError, match="noise_rate=0"):
        diagnostic_figures.chance_ndr(0.3, 0.0)


def test_ndr_bars_draw_each_metric_s_chance_line_outside_the_legend():
    fig = diagnostic_figures.ndr_bars(ndr_table_of(np.linspace(0.2, 0.9, 5)), 0.3, noise_rate=0.2)
    dashed = [line for line in fig.axes[0].get_lines() if line.get_linestyle() == "--"]
    levels = sorted(line.get_ydata()[0] for line in dashed)
    assert levels == pytest.approx([0.3, 0.5 / 0.9])
    assert_legends_outside(fig)
    assert_labelled(fig)


def test_legends_sit_outside_the_data_and_axes_are_labelled():
    history = [{"epoch": e, "train_loss": 1 / e, "val_accuracy": 0.2 * e} for e in (1, 2, 3)]
    by_layer = pd.DataFrame(
        {"group": GROUPS * 2, "C_l1": np.linspace(2, 20, 10), "checkpoint": ["e1"] * 5 + ["e2"] * 5}
    )
    fixing = pd.DataFrame(
        {
            "method": ["control", "tracin-we-topk", "influence-last"],
            "fix": ["none", "remove", "remove"],
            "share_fixed": [0.4, 1.0, 0.5],
            "newly_fixed": [0.0, 0.6, 0.1],
        }
    )
    convergence = pd.DataFrame(
        {
            "method": ["tracin-we"] * 2 + ["random"] * 2,
            "n_subsets": [4, 8] * 2,
            "mean": [0.3, 0.25, 0.0, 0.01],
            "low": [0.1, 0.1, -0.2, -0.1],
            "high": [0.5, 0.4, 0.2, 0.1],
            "width": [0.4, 0.3, 0.4, 0.2],
        }
    )
    deletion = pd.DataFrame(
        [
            {"method": m, "direction": d, "k": k, "point": p, "DEL": 0.01 * (k + p)}
            for m in ("tracin-we", "random")
            for d in ("proponents", "opponents")
            for k in (5, 10)
            for p in range(3)
        ]
    )
    drawn = {
        "layer_profile": diagnostic_figures.layer_profile(
            by_layer, "C_l1", hue="checkpoint", title="t"
        ),
        "fixing_figure": figures.fixing_figure(fixing),
        "convergence_plot": figures.convergence_plot(convergence),
        "deletion_curves": figures.deletion_curves(deletion),
    }
    for fig in drawn.values():
        assert_legends_outside(fig)
        assert_labelled(fig)
    assert_labelled(figures.training_curves(history))


def test_deletion_at_a_single_k_shows_each_methods_interval():
    """With one k (the default preset's), a band over k has no width: each method is drawn as a
    point with a vertical 95% interval bar, not as a bare dot."""
    rng = np.random.default_rng(0)
    deletion = pd.DataFrame(
        [
            {"method": m, "direction": d, "k": 60, "point": p, "DEL": rng.normal()}
            for m in ("tracin-we", "tracin-last", "random")
            for d in ("proponents", "opponents")
            for p in range(8)
        ]
    )
    fig = figures.deletion_curves(deletion)
    assert_labelled(fig)  # the methods name the x ticks: no legend needed
    for ax in fig.axes:
        finite = [y[np.isfinite(y)] for y in (np.asarray(ln.get_ydata()) for ln in ax.lines)]
        assert sum(y.size > 1 and np.ptp(y) > 0 for y in finite) == 3  # an interval per method
        assert "k = 60" in ax.get_xlabel()


def test_cancellation_bars_say_what_the_values_are():
    sums = pd.DataFrame(
        {
            "method": ["tracin-we"] * 2 + ["tracin-last"] * 2,
            "point": [0, 1] * 2,
            "sum |influence|": [1.0, 2.0, 30.0, 40.0],
            "|sum influence|": [0.5, 0.2, 1.0, 2.0],
        }
    )
    fig = diagnostic_figures.cancellation_bars(sums)
    assert_labelled(fig)  # the y axis is no longer "value"
    assert [ax.get_title() for ax in fig.axes] == ["tracin-we", "tracin-last"]


def test_layer_scatter_titles_name_both_columns_and_rho():
    frame = pd.DataFrame({"group": GROUPS, "NDR": [0.1, 0.2, 0.3, 0.4, 0.5]})
    frame["DEL+"] = -frame["NDR"]
    fig, rho = diagnostic_figures.layer_scatter(frame, "NDR", ["DEL+"])
    assert rho["DEL+"] == pytest.approx(-1.0)
    ax = fig.axes[0]
    assert "DEL+ against NDR" in ax.get_title() and "ρ = -1.00" in ax.get_title()
    assert ax.get_ylabel() == "AUC-DEL+ (lower is better)"


def test_no_overlap_figure_labels_its_x_axis_and_keeps_the_legend_off_the_bars():
    methods = ["tracin-we", "tracin-last", "random"]
    summary = pd.DataFrame({"method": methods})
    for name in ("DEL+", "DEL-"):
        summary[name] = [0.01, -0.02, 0.0]
        summary[f"{name} low"], summary[f"{name} high"] = summary[name] - 0.01, summary[name] + 0.01
    fig = auc_del_figure(summary)
    assert [ax.get_xlabel() for ax in fig.axes] == ["AUC-DEL+", "AUC-DEL-"]
    assert "mean Δ p(true class)" in fig.get_supxlabel()
    assert_legends_outside(fig)


def test_score_distributions_label_their_counts():
    fig = score_distributions({"TracIn-WE": torch.randn(4, 30), "TracIn-Last": torch.randn(4, 30)})
    assert_labelled(fig)


def test_save_table_creates_its_folder_and_leaves_only_the_csv(tmp_path):
    table = pd.DataFrame({"method": ["tracin-we", "random"], "auc": [-0.1, 0.02]})
    path = reporting.save_table(table, tmp_path / "new" / "run", "03_auc_del")
    assert path == tmp_path / "new" / "run" / "03_auc_del.csv"
    pd.testing.assert_frame_equal(pd.read_csv(path), table)
    assert [p.name for p in path.parent.iterdir()] == ["03_auc_del.csv"]  # no temporary left
    indexed = pd.read_csv(
        reporting.save_table(table.set_index("method"), path.parent, "t", index=True)
    )
    assert list(indexed.columns) == ["method", "auc"]
