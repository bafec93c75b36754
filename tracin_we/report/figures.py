"""The figures of notebooks 01–05 and 08: training curves, score distributions, deletion curves and
AUC-DEL, fixing, LDS.

Figures follow one convention: a title that says what is shown, labelled axes, legends outside
the axes (they never cover data), and a reference line (0 or chance) where one reads against it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
import torch
from matplotlib.ticker import MaxNLocator

from tracin_we.core.stats import spearman
from tracin_we.experiments.overlap import paper_comparison

# Axis labels of the columns the figures plot (a column not listed is its own label).
AXIS_LABELS = {
    "DEL+": "AUC-DEL+ (lower is better)",
    "DEL-": "AUC-DEL− (higher is better)",
    "NDR": "NDR (share of flipped labels found)",
    "C_l1": "cancellation C_l1",
    "C_l1_l2": "cancellation C_l1_l2",
    "C_l2": "cancellation C_l2",
}


def axis_label(column: str) -> str:
    return AXIS_LABELS.get(column, column)


def slant_ticks(ax: plt.Axes) -> None:
    """Rotate the x tick labels by 30° and anchor each at its tick, so that long names (layer
    groups) neither overlap nor drift right of their bar."""
    plt.setp(ax.get_xticklabels(), rotation=30, ha="right", rotation_mode="anchor")


def legend_outside(ax: plt.Axes, **kwargs: Any) -> None:
    """Move ``ax``'s legend to the right of the axes, where it cannot cover data (``save_figure``
    crops to the whole figure, legend included)."""
    if ax.get_legend() is not None:
        sns.move_legend(ax, "upper left", bbox_to_anchor=(1.01, 1), frameon=False, **kwargs)


def training_curves(history: list[dict]) -> plt.Figure:
    """Training loss and validation accuracy per epoch, side by side."""
    frame = pd.DataFrame(history)
    sns.set_theme(style="whitegrid")
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.2))
    sns.lineplot(data=frame, x="epoch", y="train_loss", marker="o", ax=left)
    sns.lineplot(data=frame, x="epoch", y="val_accuracy", marker="o", ax=right)
    left.set(title="training loss per epoch", ylabel="mean cross-entropy")
    right.set(title="validation accuracy after each epoch", ylabel="accuracy", ylim=(0, 1))
    for ax in (left, right):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
    fig.tight_layout()
    return fig


def deletion_curves(table: pd.DataFrame) -> plt.Figure:
    """DEL against k for each method, proponents (DEL+, should fall) and opponents (DEL−, should
    rise) side by side, with 95% bootstrap bands over test points (v1 Figures 1–3); a point's DEL
    is averaged over seeds and trained models, so with several models the bands leave out their
    variance, which the sweep's tables (``auc_del``, ``stats.deletion_differences``) resample.
    With a single k, a band has no width to show: each method is then a point with its interval
    bar. Methods keep their order in ``table`` (the run's ``methods``)."""
    per_point = table.groupby(["method", "direction", "k", "point"], as_index=False)["DEL"].mean()
    methods = list(dict.fromkeys(table["method"]))
    directions = [d for d in ("proponents", "opponents") if d in set(per_point["direction"])]
    ks = sorted(set(per_point["k"]))
    sns.set_theme(style="whitegrid")
    shared = dict(
        data=per_point,
        y="DEL",
        hue="method",
        hue_order=methods,
        col="direction",
        col_order=directions,
        errorbar=("ci", 95),
        n_boot=1000,
        seed=0,
        height=3.4,
        aspect=1.2,
    )
    if len(ks) == 1:
        grid = sns.catplot(
            **shared,
            x="method",
            order=methods,
            kind="point",
            linestyle="none",
            sharey=False,
            capsize=0.2,
        )
        grid.set_axis_labels(f"method (k = {ks[0]} training examples deleted)", "")
        for ax in grid.axes.flat:
            slant_ticks(ax)
    else:
        grid = sns.relplot(
            **shared,
            x="k",
            kind="line",
            marker="o",
            facet_kws={"sharey": False},
            err_kws={"alpha": 0.08},
        )
        grid.set_axis_labels("k (training examples deleted)", "")
    for ax in grid.axes.flat:
        ax.axhline(0, color="black", linewidth=0.8)
    grid.axes.flat[0].set_ylabel("DEL = Δ p(true class)")
    grid.set_titles("top-k {col_name} deleted")
    grid.figure.suptitle(
        "Case deletion: change in the test point's p(true class) after retraining without the "
        "top-k (mean, 95% CI over test points)",
        y=1.04,
    )
    return grid.figure


def fixing_figure(summary: pd.DataFrame) -> plt.Figure:
    """Per method and fix: the share of (mistake, seed) retrains predicting the true class, and
    inside it the share the edit fixed where the same seed's unedited retrain did not; the
    unedited control as a dashed line."""
    edited = summary[summary["method"] != "control"]
    control = summary.loc[summary["method"] == "control", "share_fixed"]
    fig, ax = plt.subplots(figsize=(1.8 * len(edited) + 1.5, 3.4))
    labels = [f"{m}\n{f}" for m, f in zip(edited["method"], edited["fix"], strict=True)]
    ax.bar(labels, edited["share_fixed"], color="tab:blue", alpha=0.45, label="fixed")
    ax.bar(
        labels,
        edited["newly_fixed"],
        width=0.5,
        color="tab:blue",
        label="fixed, same seed unedited still wrong",
    )
    if len(control):
        ax.axhline(float(control.iloc[0]), color="k", ls="--", label="control (no edit)")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=7, frameon=False)
    ax.set(
        xlabel="where the opponents come from, and the fix",
        ylabel="share of (mistake, seed) retrains",
        ylim=(0, 1.05),
        title="Targeted fixing: retrains that predict the true class after the edit",
    )
    fig.tight_layout()
    return fig


def lds_bars(summary: pd.DataFrame) -> plt.Figure:
    """Mean LDS per method (rows in the table's order) with its bootstrap CI; 0 is chance."""
    sns.set_theme(style="whitegrid")
    fig, ax = plt.subplots(figsize=(6.5, 0.45 * len(summary) + 1.2))
    y = np.arange(len(summary))
    error = [summary["mean"] - summary["low"], summary["high"] - summary["mean"]]
    ax.errorbar(summary["mean"], y, xerr=error, fmt="o", capsize=3)
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set(
        yticks=y,
        yticklabels=summary["method"],
        xlabel="mean LDS (Spearman ρ) over test points, 95% CI",
        title="Linear datamodeling score per method (0: random)",
    )
    ax.invert_yaxis()
    fig.tight_layout()
    return fig


def lds_scatter(
    outputs: pd.DataFrame, point: int, methods: Sequence[str] = ("tracin-we", "tracin-last")
) -> plt.Figure:
    """For one test point, f (retrained margin) against each method's g over the subsets (the
    first trained model's, where ``outputs`` has several)."""
    rows = outputs[outputs["point"] == point]
    if "model" in rows.columns:
        rows = rows[rows["model"] == rows["model"].iloc[0]]
    sns.set_theme(style="whitegrid")
    fig, axes = plt.subplots(1, len(methods), figsize=(4 * len(methods), 3.4), squeeze=False)
    for ax, method in zip(axes[0], methods, strict=True):
        rho, _ = spearman(rows[["f"]].to_numpy().T, rows[[method]].to_numpy().T)
        ax.scatter(rows[method], rows["f"], s=14)
        ax.set(
            title=f"{method}: ρ = {rho[0]:.2f}",
            xlabel="g = Σ_{i ∈ S} score[j, i]",
            ylabel="f = retrained margin (logit p_c)",
        )
    fig.suptitle(f"test point {point}")
    fig.tight_layout()
    return fig


def convergence_plot(table: pd.DataFrame) -> plt.Figure:
    """Mean LDS with its CI (left) and the CI width (right) against the number of subsets M."""
    sns.set_theme(style="whitegrid")
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    for method, rows in table.groupby("method", sort=False):
        line = left.plot(rows["n_subsets"], rows["mean"], marker="o", label=method)[0]
        left.fill_between(
            rows["n_subsets"], rows["low"], rows["high"], alpha=0.12, color=line.get_color()
        )
        right.plot(rows["n_subsets"], rows["width"], marker="o", color=line.get_color())
    sizes = sorted(table["n_subsets"].unique())
    for ax in (left, right):
        ax.set_xscale("log", base=2)
        ax.set_xticks(sizes, [str(m) for m in sizes])
        ax.minorticks_off()
        ax.set_xlabel("M (subsets retrained)")
    left.set(ylabel="mean LDS", title="mean LDS (95% CI) on the first M subsets")
    right.set(ylabel="CI width of the mean LDS", title="its CI width")
    fig.legend(
        *left.get_legend_handles_labels(),
        loc="upper left",
        bbox_to_anchor=(1.0, 0.95),
        fontsize=8,
        frameon=False,
        title="method",
    )
    fig.tight_layout()
    return fig


def score_distributions(scores_by_method: dict[str, torch.Tensor]) -> plt.Figure:
    """Histogram of every (test, train) score of each method, scaled by that method's largest
    magnitude so that methods on different scales can be compared; zeros are counted apart."""
    frames = []
    for method, matrix in scores_by_method.items():
        flat = matrix.flatten().double()
        scale = flat.abs().max().clamp_min(1e-30)
        frames.append(pd.DataFrame({"method": method, "score / max |score|": (flat / scale)}))
    frame = pd.concat(frames, ignore_index=True)
    sns.set_theme(style="whitegrid")
    grid = sns.displot(
        frame,
        x="score / max |score|",
        col="method",
        bins=60,
        height=3,
        aspect=1.3,
        facet_kws={"sharey": False},
    )
    grid.set(yscale="log")
    grid.set_axis_labels("score / max |score| of the method", "(test, train) pairs (log)")
    grid.set_titles("{col_name}")
    grid.figure.suptitle("Every (test, train) influence score, scaled per method", y=1.04)
    return grid.figure


def auc_del_figure(summary: pd.DataFrame, dataset: str = "ag_news") -> plt.Figure:
    """AUC-DEL+ and AUC-DEL− per method with their bootstrap CIs, paper values as black ticks
    (for the paper's datasets only, ``paper_comparison``)."""
    comparison = paper_comparison(summary, dataset)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.4), sharey=True)
    positions = range(len(comparison))
    for ax, name in zip(axes, ("DEL+", "DEL-"), strict=True):
        frame = summary.set_index("method").loc[comparison.index]
        errors = [frame[name] - frame[f"{name} low"], frame[f"{name} high"] - frame[name]]
        ax.barh(
            list(positions),
            frame[name],
            xerr=errors,
            color="tab:blue",
            alpha=0.7,
            label="this run (95% CI)",
        )
        if f"paper {name}" in comparison:
            ax.scatter(
                comparison[f"paper {name}"],
                list(positions),
                marker="|",
                s=300,
                color="k",
                label="paper (Toxicity)",
            )
        ax.axvline(0, color="grey", lw=0.8)
        ax.set(
            title=f"AUC-{name} ({'lower' if name == 'DEL+' else 'higher'} is better)",
            xlabel=f"AUC-{name}",
            yticks=list(positions),
            yticklabels=list(comparison.index),
        )
    axes[1].legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8, frameon=False)
    fig.suptitle("No word overlap: case deletion among the least-overlapping training texts")
    fig.supxlabel("AUC-DEL± = mean Δ p(true class) over k and test points", fontsize=10)
    fig.tight_layout()
    return fig
