"""``docs/pretrained.md``, written from a run's metrics and tables: no number typed by hand.

    python -m tracin_we.report.pretrained_page            # after make pretrained (and reproduce)

Reads ``runs/pretrained/`` (``presets/pretrained.yaml``: 01/02/06/07 on fine-tuned MiniLM, 03/08
on the CNN with MiniLM's projected word embeddings) and, to pair 03/08 with the random-init CNN
on the same test points, ``runs/default/`` (``make reproduce``; its section says so when absent);
``runs/distilled/`` (BERT-tiny distilled from MiniLM) against ``runs/lds-bert/`` (BERT-tiny from
a random init), where they exist.
Every verdict is computed here from a paired confidence interval: "better" only where the
interval excludes zero.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd

from tracin_we.core.pretrained import PRETRAINED
from tracin_we.core.stats import HIGHER_IS_BETTER, paired_bootstrap
from tracin_we.report.compare_runs import compare_runs, per_point

REPO = Path(__file__).resolve().parents[2]
FORMULAS = {"C_l1": "Σ‖g_i‖₁ / ‖Σ g_i‖₁", "C_l1_l2": "Σ‖g_i‖₁ / ‖Σ g_i‖₂"}
FORMULAS |= {"C_l2": "Σ‖g_i‖₂ / ‖Σ g_i‖₂"}
NAMES = {"tracin-we": "TR-WE", "tracin-last": "TR-Last", "tracin-tfidf": "TR-TFIDF"}
NAMES |= {"tracin-we-syn": "TR-WE-Syn", "tracin-we-topk": "TR-WE-Topk", "random": "random"}
NAMES |= {"tracin-we-noc": "TR-WE-NoC", "tracin-layer": "TR-Layer", "influence-last": "IF-Last"}
NAMES |= {"representer": "Representer", "grad-cos": "GradCos", "trak": "TRAK", "ekfac": "EK-FAC"}


def metrics(run_dir: Path, stem: str) -> dict | None:
    path = run_dir / "metrics" / f"{stem}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def interval(row: pd.Series | dict) -> str:
    """``+0.123 (−0.045, 0.210)``: a difference and its CI, signed."""
    return f"{row['difference']:+.3f} ({row['low']:.3f}, {row['high']:.3f})"


def sample(row: pd.Series | dict) -> str:
    """What a paired CI resamples: ``32 points``, or ``3 models × 12 points``."""
    models = row.get("n_models", 1)
    models = 1 if pd.isna(models) else int(models)
    points = f"{int(row['n_points'])} points"
    return points if models == 1 else f"{models} models × {points}"


def tables_of(run_dir: Path) -> dict[str, pd.DataFrame]:
    """``compare_runs.per_point``; {} for a folder without 03/08 tables (not run, or run by a
    version that did not save them)."""
    try:
        return per_point(run_dir)
    except ValueError:
        return {}


def paired(run_dir: Path, metric: str, first: str, second: str) -> dict | None:
    """``first − second`` on ``metric``; None when either was not run. The row of the notebook's
    own table where it has the pair: 03's ``03_paired_differences.csv`` for DEL± (its CI resamples
    the trained models as well as the points), 08's ``08_lds_differences.csv`` for LDS (the
    subsets as well as the points); else over the points alone (``points_only`` for LDS, whose
    subsets such a CI ignores)."""
    tables = tables_of(run_dir)
    if metric not in tables or not {first, second} <= set(tables[metric].columns):
        return None
    own = run_dir / ("08_lds_differences.csv" if metric == "LDS" else "03_paired_differences.csv")
    found = pd.read_csv(own) if own.is_file() else pd.DataFrame()
    if not found.empty:
        found = found[(found["reference"] == first) & (found["method"] == second)]
        if "metric" in found.columns:
            found = found[found["metric"] == metric]
    if not found.empty:
        row = found.iloc[0].to_dict() | {"points_only": False}
    else:
        values = tables[metric][[first, second]]
        _, rows = paired_bootstrap(values, HIGHER_IS_BETTER[metric], [first])
        row = rows.iloc[0].to_dict() | {"points_only": metric == "LDS"}
    better = {"reference better": NAMES.get(first, first), "method better": NAMES[second]}
    row["reading"] = (
        f"{better[row['verdict']]} better" if row["verdict"] in better else "not separated"
    )
    return row


def question_rows(run_dirs: dict[str, Path], first: str, second: str) -> list[str]:
    """Markdown rows: per run and metric, ``first − second`` with its verdict."""
    lines = []
    for label, run_dir in run_dirs.items():
        for metric in ("DEL+", "DEL-", "LDS"):
            row = paired(run_dir, metric, first, second)
            if row is not None:
                mark = " †" if row["points_only"] else ""
                lines.append(
                    f"| {label} | {metric} | {sample(row)} | {interval(row)}{mark} | "
                    f"**{row['reading']}** |"
                )
    return lines


def training_section(pre: Path, default: Path) -> list[str]:
    tuned, cnn = metrics(pre, "01_train"), metrics(pre, "03_case_deletion")
    base_cnn, base = metrics(default, "03_case_deletion"), metrics(default, "01_train")
    encoder = PRETRAINED["minilm-l6"]
    out = ["## The models", ""]
    if tuned:
        out.append(
            f"- **MiniLM fine-tuned** (`minilm-l6`: `{encoder.hub}`, sha256 of its weights "
            f"checked before loading): test accuracy **{tuned['test_accuracy']:.3f}** (01; "
            f"init `{tuned['init'].split('@')[0]}`)"
            + (
                f"; the default preset's BERT-tiny (init `{base['init']}`): "
                f"{base['test_accuracy']:.3f}."
                if base
                else "."
            )
        )
    if cnn:
        out.append(
            f"- **The CNN of 03/08 with MiniLM's projected word embeddings**: test accuracy "
            f"**{cnn['test_accuracy']:.3f}**"
            + (
                f"; with random embeddings (default preset): {base_cnn['test_accuracy']:.3f}."
                if base_cnn
                else "."
            )
        )
    return [*out, ""]


def global_term_section(pre: Path) -> list[str]:
    found = metrics(pre, "02_influence")
    if not found:
        return []
    counts = {"TR-Last": "last", "TR-WE": "we", "TR-WE-NoC": "noc"}
    shown = ", ".join(
        f"{name} {found[f'{key}_most_common_count']}"
        for name, key in counts.items()
        if f"{key}_most_common_count" in found
    )
    return [
        "## The global-term diagnostic (02)",
        "",
        f"The training text found most often among a method's top proponents and opponents "
        f"is in the lists of this many of {found['n_test_points']} test points: {shown} (the "
        "paper: one text in 39 of 40 under TracIn-Last on Toxicity). A test point's top "
        "proponent is in the lists of, on average, "
        f"{found['we_top1_shared']:.0%} of the other points under TracIn-WE and "
        f"{found['last_top1_shared']:.0%} under TracIn-Last.",
        "",
    ]


def cancellation_section(pre: Path) -> list[str]:
    found = metrics(pre, "06_cancellation")
    if not found:
        return []
    ratios = pd.Series(found["ratio_by_layer"])
    order = ratios.rank(method="min").astype(int)
    rows = [f"| {g} | {v:.2f} | {order[g]} of {len(ratios)} |" for g, v in ratios.items()]
    median = found["median_cancellation"]
    first, last = ratios.index[0], ratios.index[-1]
    return [
        "## The cancellation effect on a pretrained transformer (06)",
        "",
        f"{found['variant']} = {FORMULAS.get(found['variant'], '')} of the training gradients "
        "per layer group at the final checkpoint (1 = no cancellation), first layer to last "
        "([figure](../figures/pretrained/06_cancellation_by_layer.png)):",
        "",
        f"| layer group | {found['variant']} | rank (1 = least cancellation) |",
        "|---|---|---|",
        *rows,
        "",
        f"The first layer group ({first}) ranks {order[first]} of {len(ratios)}, the last "
        f"({last}) {order[last]}; the most cancelling is {ratios.idxmax()} "
        f"({ratios.max():.2f}). Per test point, the influences' Σ|s| / |Σ s| has median "
        + ", ".join(f"{NAMES.get(m, m)} {v:.1f}" for m, v in median.items())
        + " ([figure](../figures/pretrained/06_influence_cancellation.png)).",
        "",
    ]


def noise_section(pre: Path) -> list[str]:
    found = metrics(pre, "07_layers_and_aggregation")
    if not found:
        return []
    ndr, auc = pd.Series(found["ndr"]), pd.Series(found["auc_ndr"])
    rows = [f"| {c} | {ndr[c]:.3f} | {auc[c]:.3f} |" for c in ndr.index]
    layers = ndr[[c for c in ndr.index if not c.startswith("agg:")]]
    fraction, rate = found.get("fraction"), found.get("noise_rate")
    at = f"NDR@{fraction:.0%}" if fraction is not None else "NDR"
    chance = (
        f" Random ranking: {at} ≈ {fraction:.2f}, AUC-NDR ≈ {0.5 / (1 - rate / 2):.2f}."
        if fraction is not None and rate is not None
        else ""
    )
    return [
        "## Noise detection per layer and aggregation (07)",
        "",
        f"{found['n_flipped']} training labels flipped; each column ranks the training texts by "
        "their TracIn influence on the clean validation set, restricted to that layer or "
        "aggregated over layers ([figure](../figures/pretrained/07_noise_detection.png))." + chance,
        "",
        f"| column | {at} | AUC-NDR |",
        "|---|---|---|",
        *rows,
        "",
        f"Best single layer by {at}: {layers.idxmax()} ({layers.max():.3f}); the word "
        f"embedding: {ndr.get('word_embeddings', float('nan')):.3f}.",
        "",
    ]


QUESTIONS = (
    ("Does TF-IDF's lead survive?", "tracin-we", "tracin-tfidf"),
    ("Does TracIn-WE-Syn now differ from Topk?", "tracin-we-syn", "tracin-we-topk"),
    ("Does TracIn-WE separate from TracIn-Last?", "tracin-we", "tracin-last"),
)
READING_NOTE = (
    "A reading names a method only where the interval excludes zero; † marks a pair 08 does not "
    "compare, whose CI resamples the points alone and so is narrower."
)


def question_blocks(runs: dict[str, Path], model: str) -> list[str]:
    """Each of ``QUESTIONS`` as a table over ``runs`` (label → run folder) and metrics."""
    header = [
        f"| {model} | metric | models × points | difference (95% CI) | reading |",
        "|---|---|---|---|---|",
    ]
    out = []
    for title, first, second in QUESTIONS:
        rows = question_rows(runs, first, second)
        label = f"{NAMES[first]} − {NAMES[second]}"
        out += [f"**{title}** ({label})", "", *header, *rows, ""] if rows else []
    return out


def changed_table(base: Path, other: Path, names: tuple[str, str], what: str) -> list[str]:
    """Per method, ``other − base`` on the same points (``compare_runs``), or why not."""
    try:
        table = compare_runs(base, other, names)
    except ValueError as error:  # other test points, or no metric in common
        return [f"(Not paired with `{base}`: {error}.)", ""]
    table["method"] = table["method"].map(lambda m: NAMES.get(m, m))
    return [
        f"**What {what} changed**, per method ({names[1]} − {names[0]}, same points; CIs "
        "resample the points alone):",
        "",
        table.round(3).to_markdown(index=False),
        "",
    ]


def questions_section(pre: Path, default: Path) -> list[str]:
    runs = {"MiniLM embeddings": pre}
    if tables_of(default):
        runs = {"random embeddings": default, **runs}
    out = [
        "## Pretrained word embeddings: the three questions (03, 08)",
        "",
        "Paired over each run's test points (DEL+: lower is better; DEL− and LDS: higher), with "
        "each notebook's own CIs: 03's resample the trained models and the points, 08's the "
        f"points and the retrained subsets. {READING_NOTE}",
        "",
        *question_blocks(runs, "CNN"),
    ]
    if not tables_of(default):
        out += [f"(No 03/08 tables in `{default}`: run `make reproduce` to pair with the "
                "random-init CNN.)", ""]  # fmt: skip
        return out
    return out + changed_table(default, pre, ("random-emb", "minilm-emb"), "the embeddings")


def peers_section(pre: Path, peers: Path) -> list[str]:
    """TracIn-WE against TRAK and EK-FAC on the LDS with MiniLM's embeddings (the pretrained
    preset's 08) and, where ``peers`` (``presets/lds-peers.yaml``) ran, with random ones."""
    runs = {"random embeddings": peers, "MiniLM embeddings": pre}
    header = [
        "| CNN | metric | models × points | difference (95% CI) | reading |",
        "|---|---|---|---|---|",
    ]
    out = []
    for peer in ("trak", "ekfac"):
        rows = question_rows(runs, "tracin-we", peer)
        out += [f"**TR-WE − {NAMES[peer]}**", "", *header, *rows, ""] if rows else []
    if not out:
        return []
    intro = (
        "## TracIn-WE against TRAK and EK-FAC (08)",
        "",
        "The same retrains and points as the methods above; TRAK and EK-FAC with the settings "
        "of `presets/lds-peers.yaml`, whose run gives the random-embedding rows. CIs as above: "
        f"08's own. {READING_NOTE}",
        "",
    )
    return [*intro, *out]


def distilled_section(distilled: Path, bert: Path) -> list[str]:
    """BERT-tiny distilled from MiniLM (``presets/distilled.yaml``) against the random-init
    BERT-tiny of ``presets/lds-bert.yaml``: the same recipe, test points, subsets and seed."""
    out = ["## A pretrained BERT-tiny: MiniLM distilled into it (01, 03, 08)", ""]
    tuned, base = metrics(distilled, "01_train"), metrics(bert, "03_case_deletion")
    if tuned is None:
        command = "python -m tracin_we.reproduce --preset distilled"
        return [*out, f"Not run yet: `{command}`, then `--preset lds-bert` (random init).", ""]
    out.append(
        "BERT-tiny distilled from MiniLM (`init_from: distilled:minilm-l6`, "
        "`tracin_we.training.distill`: TinyBERT's embedding and hidden-state loss on the offline "
        "texts this fine-tuning leaves unused), then fine-tuned with the default preset's "
        f"BERT-tiny recipe: test accuracy **{tuned['test_accuracy']:.3f}** (01)"
        + (f"; from a random init: {base['test_accuracy']:.3f}." if base else ".")
    )
    out += ["", READING_NOTE, ""]
    runs = {"distilled": distilled}
    if tables_of(bert):
        runs = {"random init": bert, **runs}
    out += question_blocks(runs, "BERT-tiny")
    if not tables_of(bert):
        return [
            *out,
            "(Random init not run: `python -m tracin_we.reproduce --preset lds-bert`.)",
            "",
        ]
    return out + changed_table(bert, distilled, ("random-init", "distilled"), "distillation")


STILL_NEEDED = """## What still needs the hub or a GPU

- Google's pretrained BERT-tiny, the paper's model (`pretrained: true` with `model: bert-tiny`
  loads it when the hub answers), and so `presets/paper.yaml`'s protocol on it.
- Case deletion and LDS on MiniLM itself: each retrain would be a MiniLM fine-tune (minutes
  here), so 03/08 above retrain the CNN with MiniLM's word embeddings, and BERT-tiny distilled
  from MiniLM (~30 s a retrain), at small sizes (8 deletion points, 24 LDS subsets, one model).
- Google's pretraining of BERT-tiny itself: the distilled BERT-tiny above learned from MiniLM's
  hidden states on ~14,000 AG News texts, not from BERT's corpus and objective.
"""


def page(pre: Path, default: Path, distilled: Path, bert: Path, peers: Path | None = None) -> str:
    lines = [
        "# The pretrained setting",
        "",
        "<!-- Generated by `python -m tracin_we.report.pretrained_page`; edit that, not this. -->",
        "Written by `python -m tracin_we.report.pretrained_page` from `runs/pretrained/` "
        "(`make pretrained`) and `runs/default/` (`make reproduce`).",
        "",
        *training_section(pre, default),
        *global_term_section(pre),
        *cancellation_section(pre),
        *noise_section(pre),
        *questions_section(pre, default),
        *(peers_section(pre, peers) if peers is not None else []),
        *distilled_section(distilled, bert),
        STILL_NEEDED,
    ]
    return "\n".join(lines).rstrip() + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m tracin_we.report.pretrained_page", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--pretrained", type=Path, default=REPO / "runs" / "pretrained")
    parser.add_argument("--default", type=Path, default=REPO / "runs" / "default")
    parser.add_argument("--distilled", type=Path, default=REPO / "runs" / "distilled")
    parser.add_argument("--bert", type=Path, default=REPO / "runs" / "lds-bert")
    parser.add_argument("--peers", type=Path, default=REPO / "runs" / "lds-peers")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "pretrained.md")
    args = parser.parse_args(argv)
    if not (args.pretrained / "metrics").is_dir():
        parser.error(f"{args.pretrained} holds no metrics: run `make pretrained` first")
    args.out.write_text(page(args.pretrained, args.default, args.distilled, args.bert, args.peers))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
