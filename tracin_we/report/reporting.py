"""What notebooks show and record: figures saved to ``figures/``, metrics JSON read by the tests,
and one HTML report of the executed notebooks.

Figures follow one convention: a title that says what is shown, labelled axes, legends outside
the axes (they never cover data), and a reference line (0 or chance) where one reads against it.
"""

from __future__ import annotations

import copy
import html
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

from tracin_we.core.persistence import atomic_write, write_json
from tracin_we.core.stats import spearman


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


def save_table(table: pd.DataFrame, folder: str | Path, name: str, index: bool = False) -> Path:
    """Save ``table`` as ``<folder>/<name>.csv`` (atomically, the folder created if need be) and
    return the path."""
    path = Path(folder) / f"{name}.csv"
    atomic_write(path, lambda tmp: table.to_csv(tmp, index=index))
    return path


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
    left.set(title="training loss per epoch", ylabel="mean cross-entropy")
    right.set(title="validation accuracy after each epoch", ylabel="accuracy", ylim=(0, 1))
    for ax in (left, right):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
    fig.tight_layout()
    return fig


def deletion_curves(table: pd.DataFrame) -> plt.Figure:
    """DEL against k for each method, proponents (DEL+, should fall) and opponents (DEL−, should
    rise) side by side, with 95% bootstrap bands over test points (v1 Figures 1–3). With a single
    k, a band has no width to show: each method is then a point with its interval bar. Methods
    keep their order in ``table`` (the run's ``methods``)."""
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


# ---- one HTML report of executed notebooks ----

WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"  # a live widget: no state in a report
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"  # saved by papermill (nbclient)
KERNEL_METADATA = ("kernelspec", "language_info")  # the first notebook's, for the highlighting


def notebook_title(notebook) -> str:
    """The text of the notebook's first ``#`` heading (its title), else its file name."""
    for cell in notebook.cells:
        if cell.cell_type == "markdown":
            for line in cell.source.splitlines():
                if line.startswith("# "):
                    return line[2:].strip()
    return notebook.metadata.get("title", "untitled notebook")


def widget_html(model_id: str, state: dict) -> str | None:
    """Static HTML of a saved widget (``state``: the notebook's widget-state ``state`` map): a
    box joins its children, an HTML/Label widget gives its value, a progress widget a
    ``<progress>`` bar, so that a tqdm bar shows how far it got. None for an unknown model."""
    model = state.get(model_id)
    if model is None:
        return None
    name, values = model.get("model_name", ""), model.get("state", {})
    if name.endswith("BoxModel"):
        children = [widget_html(c.removeprefix("IPY_MODEL_"), state) for c in values["children"]]
        return "<span>" + " ".join(c for c in children if c) + "</span>"
    if name == "HTMLModel":
        return str(values.get("value", ""))  # already HTML
    if name.endswith("ProgressModel"):
        return (
            f'<progress value="{values.get("value", 0)}" max="{values.get("max", 100)}"></progress>'
        )
    text = values.get("value", values.get("description", ""))
    return html.escape(str(text)) if text else ""


def _report_cells(notebook, anchor: str) -> list:
    """The notebook's cells for the report: ids made unique across notebooks, an anchor before
    the first cell, and widget views (tqdm bars: no live kernel in a report) replaced by their
    saved final state as static HTML, or by their text fallback without one."""
    import nbformat

    saved = notebook.metadata.get("widgets", {}).get(WIDGET_STATE, {}).get("state", {})
    cells = [nbformat.v4.new_markdown_cell(f'<a id="{anchor}"></a>', id=f"{anchor}-anchor")]
    for i, cell in enumerate(copy.deepcopy(notebook.cells)):
        cell["id"] = f"{anchor}-{i}"
        for output in cell.get("outputs", []):
            view = output.get("data", {}).pop(WIDGET_VIEW, None)
            static = view and widget_html(view.get("model_id", ""), saved)
            if static:
                output["data"]["text/html"] = static
        cells.append(cell)
    return cells


def notebooks_html(paths: Sequence[str | Path], title: str) -> str:
    """One HTML page of the executed notebooks at ``paths``, in that order: a contents list
    (each notebook's title and papermill run time, linked), then every notebook with its
    outputs; figures are inline PNG data URIs, so the page is self-contained."""
    import nbformat
    from nbconvert import HTMLExporter

    if not paths:
        raise ValueError("paths is empty: no executed notebook to put in a report")
    contents, cells, kernel = [], [], {}
    for path in map(Path, paths):
        notebook = nbformat.read(path, as_version=4)
        kernel = kernel or {
            k: notebook.metadata[k] for k in KERNEL_METADATA if k in notebook.metadata
        }
        run = notebook.metadata.get("papermill", {})
        duration = run.get("duration")
        status = "failed" if run.get("exception") else f"{duration:.0f} s" if duration else "run"
        contents.append(f"- [{notebook_title(notebook)}](#{path.stem}) ({status})")
        cells += _report_cells(notebook, path.stem)
    header = nbformat.v4.new_markdown_cell(
        f"# {title}\n\n" + "\n".join(contents), id="report-contents"
    )
    report = nbformat.v4.new_notebook(cells=[header, *cells])
    report.metadata.update(kernel)
    exporter = HTMLExporter(template_name="lab")
    body, _ = exporter.from_notebook_node(report, resources={"metadata": {"name": title}})
    return body


def write_report(paths: Sequence[str | Path], path: str | Path, title: str) -> Path:
    """``notebooks_html(paths, title)`` written atomically to ``path``; returns ``path``."""
    html = notebooks_html(paths, title)
    path = Path(path)
    atomic_write(path, lambda tmp: tmp.write_text(html, encoding="utf-8"))
    return path
