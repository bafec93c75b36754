"""The figures of notebooks 06, 07 and 09: per-layer profiles and cancellation, noise detection,
domain influence and DoGE weights (the conventions of ``report.figures``)."""

from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns

from tracin_we.report.figures import axis_label, legend_outside, slant_ticks


def layer_profile(
    frame: pd.DataFrame, y: str, hue: str | None = None, title: str = ""
) -> plt.Figure:
    """``y`` per layer group from first to last (the order of ``frame``), one line per ``hue``,
    on a log scale; the legend right of the axes."""
    sns.set_theme(style="whitegrid")
    fig, ax = plt.subplots(figsize=(7, 3.2))
    sns.lineplot(data=frame, x="group", y=y, hue=hue, marker="o", sort=False, ax=ax)
    ax.set(
        xlabel="layer (first → last)", ylabel=f"{axis_label(y)} (log)", title=title, yscale="log"
    )
    slant_ticks(ax)
    legend_outside(ax)
    fig.tight_layout()
    return fig


def cancellation_bars(sums: pd.DataFrame) -> plt.Figure:
    """Per test point and method: Σ|influence| next to |Σ influence| over the training set (log
    scale); a large gap is influence that cancels."""
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
    grid.set_axis_labels("test point", "influence over the training set (log)")
    grid.set_titles("{col_name}")
    grid.figure.suptitle(
        "Cancellation: total |influence| against what survives in the sum, per test point", y=1.04
    )
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
        ax.set(xlabel=axis_label(x), ylabel=axis_label(y))
        for _, row in frame.iterrows():
            ax.annotate(
                row["group"],
                (row[x], row[y]),
                fontsize=8,
                xytext=(3, 3),
                textcoords="offset points",
            )
        ax.set_title(f"{y} against {x}, one point per layer\nSpearman ρ = {rho:.2f}", fontsize=10)
    fig.tight_layout()
    return fig, correlations


def chance_ndr(fraction: float, noise_rate: float) -> dict[str, float]:
    """What a random ranking scores in expectation (``noise.ndr_table``'s columns): NDR@p = p,
    and AUC-NDR = ∫₀¹ p dp / ∫₀¹ min(p/r, 1) dp = 0.5 / (1 − r/2) for a noise rate r."""
    if not 0 < fraction <= 1 or not 0 < noise_rate <= 1:
        raise ValueError(f"fraction={fraction} and noise_rate={noise_rate} must be in (0, 1]")
    return {f"NDR@{fraction:.0%}": fraction, "AUC-NDR": 0.5 / (1 - noise_rate / 2)}


def ndr_bars(
    table: pd.DataFrame, fraction: float | None = None, noise_rate: float | None = None
) -> plt.Figure:
    """NDR@p and AUC-NDR per score column (layers, then aggregations) as grouped bars; given
    ``fraction`` and ``noise_rate``, each metric's chance level (``chance_ndr``) as a dashed line
    in its bars' colour."""
    long = table.melt(id_vars="column", var_name="metric", value_name="value")
    sns.set_theme(style="whitegrid")
    fig, ax = plt.subplots(figsize=(8, 3.4))
    sns.barplot(data=long, x="column", y="value", hue="metric", ax=ax)
    if fraction is not None and noise_rate is not None:
        colours = dict(zip(long["metric"].unique(), sns.color_palette(), strict=False))
        for metric, level in chance_ndr(fraction, noise_rate).items():
            ax.axhline(
                level, color=colours.get(metric, "k"), ls="--", lw=1.2, label=f"{metric}, random"
            )
    ax.set(
        xlabel="layer or aggregation",
        ylabel="share of flipped labels found",
        ylim=(0, 1),
        title="Flipped labels found per layer and aggregation",
    )
    slant_ticks(ax)
    ax.legend()
    legend_outside(ax, title="metric")
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
    # No jitter: seaborn draws it from numpy's global generator, so the figure would change
    # between identical runs (same machine and library versions).
    sns.stripplot(data=table, x="method", y="delta", color="black", size=4, jitter=False, ax=ax)
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set(
        xlabel="texts removed",
        ylabel="Δ p(true class)",
        title="Re-pretrained without k texts: change per test point",
    )
    fig.tight_layout()
    return fig
