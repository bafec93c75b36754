"""What notebooks show and record: figures saved to ``figures/``, metrics JSON read by the tests."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.ticker import MaxNLocator

from tracin_we.persistence import atomic_write, write_json
from tracin_we.stats import spearman


def record_metrics(path: str | Path, **metrics: Any) -> dict:
    """Merge ``metrics`` into the JSON file at ``path`` (atomically) and return the whole record.
    NaN becomes null, so the file stays valid JSON."""
    path = Path(path)
    record = json.loads(path.read_text()) if path.is_file() else {}
    record.update(
        {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in metrics.items()}
    )
    write_json(path, record)
    return record


def save_figure(fig: plt.Figure, figures_dir: str | Path, name: str) -> Path:
    """Save ``fig`` as ``<figures_dir>/<name>.png`` (atomically) and return the path."""
    path = Path(figures_dir) / f"{name}.png"
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight"))
    return path


def training_curves(history: list[dict]) -> plt.Figure:
    """Training loss and validation accuracy per epoch, side by side."""
    frame = pd.DataFrame(history)
    sns.set_theme(style="whitegrid")
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.2))
    sns.lineplot(data=frame, x="epoch", y="train_loss", marker="o", ax=left)
    sns.lineplot(data=frame, x="epoch", y="val_accuracy", marker="o", ax=right)
    left.set(title="training loss (cross-entropy)", ylabel="loss")
    right.set(title="validation accuracy", ylabel="accuracy", ylim=(0, 1))
    for ax in (left, right):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.tight_layout()
    return fig


def deletion_curves(table: pd.DataFrame) -> plt.Figure:
    """DEL against k for each method, proponents (DEL+, should fall) and opponents (DEL−, should
    rise) side by side, with 95% bootstrap bands over test points (v1 Figures 1–3)."""
    per_point = table.groupby(["method", "direction", "k", "point"], as_index=False)["DEL"].mean()
    sns.set_theme(style="whitegrid")
    grid = sns.relplot(
        data=per_point,
        x="k",
        y="DEL",
        hue="method",
        col="direction",
        col_order=[d for d in ("proponents", "opponents") if d in set(per_point["direction"])],
        kind="line",
        marker="o",
        errorbar=("ci", 95),
        n_boot=1000,
        seed=0,
        height=3.4,
        aspect=1.2,
        facet_kws={"sharey": False},
        err_kws={"alpha": 0.08},
    )
    for ax in grid.axes.flat:
        ax.axhline(0, color="black", linewidth=0.8)
    grid.set_axis_labels("k (training examples deleted)", "DEL = Δ p(true class)")
    return grid.figure


def layer_profile(
    frame: pd.DataFrame, y: str, hue: str | None = None, title: str = ""
) -> plt.Figure:
    """``y`` per layer group from first to last (the order of ``frame``), one line per ``hue``."""
    sns.set_theme(style="whitegrid")
    fig, ax = plt.subplots(figsize=(7, 3.2))
    sns.lineplot(data=frame, x="group", y=y, hue=hue, marker="o", sort=False, ax=ax)
    ax.set(xlabel="layer (first → last)", title=title, yscale="log")
    ax.tick_params(axis="x", rotation=30)
    fig.tight_layout()
    return fig


def cancellation_bars(sums: pd.DataFrame) -> plt.Figure:
    """Per test point and method: Σ|influence| next to |Σ influence| (log scale)."""
    long = sums.melt(
        id_vars=["method", "point"],
        value_vars=["sum |influence|", "|sum influence|"],
        var_name="quantity",
        value_name="value",
    )
    sns.set_theme(style="whitegrid")
    grid = sns.catplot(
        data=long,
        x="point",
        y="value",
        hue="quantity",
        col="method",
        kind="bar",
        height=3.2,
        aspect=1.3,
        sharey=False,
    )
    grid.set(yscale="log")
    return grid.figure


def layer_scatter(frame: pd.DataFrame, x: str, ys: list[str]) -> tuple[plt.Figure, dict]:
    """``x`` against each of ``ys`` across layer groups, points labelled by group; returns the
    figure and the Spearman correlation of each pair (NaN with fewer than 3 groups)."""
    from scipy.stats import spearmanr

    sns.set_theme(style="whitegrid")
    fig, axes = plt.subplots(1, len(ys), figsize=(4.2 * len(ys), 3.4), squeeze=False)
    correlations = {}
    for ax, y in zip(axes[0], ys, strict=True):
        rho = spearmanr(frame[x], frame[y]).statistic if len(frame) >= 3 else float("nan")
        correlations[y] = float(rho)
        sns.scatterplot(data=frame, x=x, y=y, ax=ax)
        for _, row in frame.iterrows():
            ax.annotate(
                row["group"],
                (row[x], row[y]),
                fontsize=8,
                xytext=(3, 3),
                textcoords="offset points",
            )
        ax.set(title=f"Spearman ρ = {rho:.2f}")
    fig.tight_layout()
    return fig, correlations


def ndr_bars(table: pd.DataFrame) -> plt.Figure:
    """NDR@p and AUC-NDR per score column (layers, then aggregations) as grouped bars."""
    long = table.melt(id_vars="column", var_name="metric", value_name="value")
    sns.set_theme(style="whitegrid")
    fig, ax = plt.subplots(figsize=(8, 3.4))
    sns.barplot(data=long, x="column", y="value", hue="metric", ax=ax)
    ax.set(xlabel="layer or aggregation", ylabel="share of flipped labels found", ylim=(0, 1))
    ax.tick_params(axis="x", rotation=30)
    fig.tight_layout()
    return fig


def fixing_figure(summary: pd.DataFrame) -> plt.Figure:
    """Per method and fix: the share of (mistake, seed) retrains predicting the true class, and
    inside it the share the edit fixed where the same seed's unedited retrain did not; the
    unedited control as a dashed line."""
    edited = summary[summary["method"] != "control"]
    control = summary.loc[summary["method"] == "control", "share_fixed"]
    fig, ax = plt.subplots(figsize=(6.4, 3.2))
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
    ax.legend(loc="upper right", fontsize=7)
    ax.set(ylabel="share of (mistake, seed) retrains", ylim=(0, 1.15), title="targeted fixing")
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
    ax.set(yticks=y, yticklabels=summary["method"], xlabel="mean LDS (Spearman ρ) over test points")
    ax.invert_yaxis()
    fig.tight_layout()
    return fig


def lds_scatter(
    outputs: pd.DataFrame, point: int, methods: Sequence[str] = ("tracin-we", "tracin-last")
) -> plt.Figure:
    """For one test point, f (retrained margin) against each method's g over the subsets."""
    rows = outputs[outputs["point"] == point]
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
    left.set(ylabel="mean LDS")
    right.set(ylabel="CI width of the mean LDS")
    left.legend(fontsize=7)
    fig.tight_layout()
    return fig


def domain_heatmap(table: pd.DataFrame, title: str) -> plt.Figure:
    """A pretraining-domain × test-class table (``influence.multistage.by_domain``) as a heatmap
    centred on 0 (positive = proponent), annotated with its values."""
    sns.set_theme(style="white")
    fig, ax = plt.subplots(figsize=(1.6 * table.shape[1] + 2.5, 0.55 * table.shape[0] + 1.4))
    sns.heatmap(table, annot=True, fmt=".2g", center=0, cmap="vlag", cbar=False, ax=ax)
    ax.set(title=title, xlabel="test class (fine-tuning)", ylabel="pretraining domain")
    ax.tick_params(axis="y", rotation=0)
    fig.tight_layout()
    return fig


def domain_weight_curves(history: pd.DataFrame) -> plt.Figure:
    """DoGE's domain weights α against the step (``doge.DogeResult.history``); dashed: uniform."""
    sns.set_theme(style="whitegrid")
    fig, ax = plt.subplots(figsize=(6.5, 3.4))
    sns.lineplot(data=history, x="step", y="weight", hue="domain", ax=ax)
    ax.axhline(1 / history["domain"].nunique(), color="black", linestyle="--", linewidth=0.8)
    ax.set(xlabel="DoGE step", ylabel="domain weight α")
    fig.tight_layout()
    return fig


def counterfactual_bars(table: pd.DataFrame) -> plt.Figure:
    """Δp(true class) after removing k pretraining texts and re-pretraining + re-fine-tuning:
    the mean per method with its 95% bootstrap CI over test points, and each test point."""
    sns.set_theme(style="whitegrid")
    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    sns.barplot(data=table, x="method", y="delta", errorbar=("ci", 95), seed=0, alpha=0.5, ax=ax)
    sns.stripplot(data=table, x="method", y="delta", color="black", size=4, ax=ax)
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set(xlabel="texts removed", ylabel="Δ p(true class)")
    fig.tight_layout()
    return fig
