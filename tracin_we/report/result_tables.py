"""Markdown pieces of ``results_page``: names, intervals, and the AUC-DEL, paired-difference and
variance tables read from a run's CSVs."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from tracin_we.core.stats import deletion_differences
from tracin_we.report.pretrained_page import NAMES, metrics

READING = {"reference better": "{first} better", "method better": "{second} better"}


def name(method: str) -> str:
    return NAMES.get(method, method)


def quantity_name(quantity: str) -> str:
    """``tracin-we − tracin-last`` → ``TR-WE − TR-Last``."""
    return " − ".join(map(name, quantity.split(" − ")))


def ci(value: float, low: float, high: float, signed: bool = False) -> str:
    """``-0.123 (-0.200, -0.050)``."""
    return f"{value:{'+' if signed else ''}.3f} ({low:.3f}, {high:.3f})"


def read_csv(run: Path, stem: str) -> pd.DataFrame | None:
    path = run / f"{stem}.csv"
    return pd.read_csv(path) if path.is_file() else None


def not_run(command: str) -> list[str]:
    return [f"Not run yet: `{command}`.", ""]


def reading(row: pd.Series) -> str:
    verdict = READING.get(row["verdict"], "not separated")
    return verdict.format(first=name(row["reference"]), second=name(row["method"]))


def sample(run: Path) -> str:
    """Which models and points 03's intervals resample, from its recorded metrics."""
    found = metrics(run, "03_case_deletion") or {}
    models, points = found.get("models", [0]), found.get("n_points", "?")
    seeds = ", ".join(map(str, models))
    return (
        f"{len(models)} trained models (seeds {seeds}) × {points} test points"
        if len(models) > 1
        else f"one trained model × {points} test points"
    )


def auc_table(summary: pd.DataFrame) -> str:
    rows = []
    for r in summary.to_dict("records"):
        row = {"method": name(r["method"])}
        for metric, arrow in (("DEL+", "↓"), ("DEL-", "↑")):
            if f"{metric} low" in r:
                bounds = r[f"{metric} low"], r[f"{metric} high"]
                row[f"{metric} {arrow} (95% CI)"] = ci(r[metric], *bounds)
            else:
                row[f"{metric} {arrow}"] = f"{r[metric]:.3f}"
            if f"paper {metric}" in r and pd.notna(r[f"paper {metric}"]):
                row[f"paper {metric}"] = f"{r[f'paper {metric}']:.3f}"
        rows.append(row)
    return pd.DataFrame(rows).fillna("").to_markdown(index=False)


def paired_table(differences: pd.DataFrame) -> str:
    """One row per (reference, method) and one column per metric: difference (CI), share of
    points where the reference is better, and the reading."""
    rows: dict[tuple, dict] = {}
    for r in differences.to_dict("records"):
        key = (r["reference"], r["method"])
        row = rows.setdefault(key, {"comparison": f"{name(key[0])} − {name(key[1])}"})
        metric = r.get("metric", "LDS")
        row[metric] = (
            f"{ci(r['difference'], r['low'], r['high'], signed=True)}; better on "
            f"{r['share_better']:.0%}: **{reading(pd.Series(r))}**"
        )
    return pd.DataFrame(rows.values()).to_markdown(index=False)


def deletion_section(run: Path, title: str, command: str) -> list[str]:
    summary, differences = read_csv(run, "03_auc_del"), read_csv(run, "03_paired_differences")
    out = [f"## {title}", ""]
    if summary is None or differences is None:
        return out + not_run(command)
    table = read_csv(run, "03_deletion")
    ks = ", ".join(map(str, sorted(table["k"].unique()))) if table is not None else "?"
    out += [
        f"`{command}`: {sample(run)}, k = {ks}. AUC-DEL± per method (mean DEL over k, retrain "
        "seeds, models and points; lower DEL+ and higher DEL− are better) with 95% percentile "
        "bootstrap intervals that resample the test points and, with several models, the "
        "models; the paper's v1 Table 3 is BERT-tiny on 50,000 texts, so compare orderings, not "
        f"values (`{run.name}/03_auc_del.csv`):",
        "",
        auc_table(summary),
        "",
        "Paired differences (reference − method) on the same models and points, with the same "
        f"resamples (`{run.name}/03_paired_differences.csv`): DEL+ negative and DEL− positive "
        "mean the reference deletes better.",
        "",
        paired_table(differences),
        "",
    ]
    if table is not None and table.get("model", pd.Series([0])).nunique() > 1:
        out += each_model_alone(table, run.name)
    components = read_csv(run, "03_variance_components")
    if components is not None:
        out += variance_table(components, f"`{run.name}/03_variance_components.csv`")
    return out


def each_model_alone(table: pd.DataFrame, run_name: str) -> list[str]:
    """TracIn-WE − TracIn-Last per trained model, with the one-way CI over points that a run of
    that model alone would report: how far one model's verdict is from the pooled one."""
    rows = []
    for model, part in table.groupby("model"):
        found = deletion_differences(part, ["tracin-we"])
        pair = found[found["method"] == "tracin-last"]
        if pair.empty:
            return []
        row = {"trained model (seed)": model}
        for r in pair.to_dict("records"):
            row[r["metric"]] = f"{ci(r['difference'], r['low'], r['high'], signed=True)}: " + (
                f"**{reading(pd.Series(r))}**"
            )
        rows.append(row)
    return [
        "TR-WE − TR-Last in each trained model alone, with the interval over its points that a "
        f"single-model run reports (`{run_name}/03_deletion.csv`): where these readings "
        "disagree, one model's verdict was a draw of the seed.",
        "",
        pd.DataFrame(rows).to_markdown(index=False),
        "",
    ]


def variance_table(components: pd.DataFrame, source: str) -> list[str]:
    shown = components.assign(quantity=components["quantity"].map(quantity_name))
    columns = ["metric", "quantity", "mean", "var_model", "var_point", "var_residual"]
    columns += ["share_model", "share_point", "share_residual", "sd_of_mean"]
    return [
        f"Where the variance comes from ({source}; `tracin_we.core.variance`): per (model, "
        "point) cell, between trained models, between test points, and the residual "
        "(interaction and retrain noise); `share_*` is each part's share of the mean's variance "
        "at this size.",
        "",
        shown[columns].to_markdown(index=False, floatfmt=".4g"),
        "",
    ]


def peers_paragraph(lds: Path, deletion: Path, benchmarks: Path) -> list[str]:
    """TracIn-WE among TRAK and EK-FAC, accuracy for cost: per peer, its time beside TracIn-WE's
    (``bench_peers``) and each paired difference against it (LDS from ``lds``'s 08, DEL± from
    ``deletion``'s 03, where they ran); [] without the benchmark or either evaluation."""
    cost, rows = read_csv(benchmarks, "bench_peers"), []
    for run, stem in ((lds, "08_lds_differences"), (deletion, "03_paired_differences")):
        table = read_csv(run, stem)
        if table is not None:
            table = table.assign(metric=table.get("metric", "LDS"), run=run.name)
            rows.append(table[table["reference"] == "tracin-we"])
    if cost is None or not rows or "tracin-we" not in set(cost["method"]):
        return []
    seconds = cost.set_index("method")["seconds"]
    found = pd.concat(rows)
    out, separated = ["**Accuracy for cost.** TracIn-WE against each, paired:", ""], 0
    for peer in [m for m in ("trak", "ekfac") if m in seconds.index]:
        pairs = found[found["method"] == peer]
        separated += int((pairs["verdict"] != "inconclusive").sum())
        readings = "; ".join(
            f"{r['metric']} ({r['run']}) {ci(r['difference'], r['low'], r['high'], signed=True)}: "
            f"**{reading(r)}**"
            for _, r in pairs.iterrows()
        )
        ratio = seconds[peer] / seconds["tracin-we"]
        out.append(f"- {name(peer)}, {ratio:.1f}× TracIn-WE's time: {readings or 'not run'}.")
    out.append("")
    if separated == 0:
        out += [
            "No interval separates TracIn-WE from TRAK or EK-FAC here: these samples cannot tell "
            "their accuracy apart on this CNN, and TracIn-WE takes a fraction of their time.",
            "",
        ]
    return out
