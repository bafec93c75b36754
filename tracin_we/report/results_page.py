"""``docs/results.md``, written from run folders: no number in it is typed by hand.

    python -m tracin_we.report.results_page            # make reproduce runs it at the end
    python -m tracin_we.report.results_page --check    # exit 1 when docs/results.md differs

Reads ``runs/default/`` (``make reproduce``: each notebook's ``metrics/*.json`` and the tables it
saved) and, where they exist, the larger evaluations ``runs/deletion-models/``,
``runs/deletion-peers/``, ``runs/layers/``, ``runs/lds-peers/`` and ``runs/lds-bert/`` and the
variance study ``runs/variance/`` (each section names the command that fills it). A paired
comparison is read from its confidence interval: a method is called better only where the
interval excludes zero.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from tracin_we.report.pretrained_page import REPO, metrics
from tracin_we.report.result_tables import (
    auc_table,
    ci,
    deletion_section,
    name,
    not_run,
    paired_table,
    peers_paragraph,
    quantity_name,
    read_csv,
    variance_table,
)

COMMAND = "python -m tracin_we.report.results_page"
REPRODUCE = "python -m tracin_we.reproduce --preset default"


def training_section(run: Path) -> list[str]:
    out = ["## 01 · Training", ""]
    found, cnn = metrics(run, "01_train"), metrics(run, "03_case_deletion")
    if found is None:
        return out + not_run(REPRODUCE)
    init = found.get("init", "?").split("@")[0]
    out.append(
        f"01's transformer (`{init}`): test accuracy **{found['test_accuracy']:.3f}**, "
        f"validation {found['val_accuracy']:.3f} after {found['epochs_run']} epochs (paper, "
        "pretrained BERT-tiny on 50,000 texts: 0.90)."
    )
    if cnn and "test_accuracy" in cnn:
        out.append(f"The CNN that 03–08 retrain: test accuracy **{cnn['test_accuracy']:.3f}**.")
    return [*out, ""]


def global_term_section(run: Path) -> list[str]:
    found = metrics(run, "02_influence")
    out = ["## 02 · The global-term diagnostic", ""]
    if found is None:
        return out + not_run(f"{REPRODUCE} --only 02")
    n = found["n_test_points"]
    counts = {
        "TR-Last": found["last_most_common_count"],
        "TR-WE": found["we_most_common_count"],
        "TR-WE-NoC": found["noc_most_common_count"],
    }
    listed = ", ".join(f"{m} {c} of {n}" for m, c in counts.items())
    return [
        *out,
        "How many test points' top-10 proponent lists hold the single most frequent training "
        f'example (the paper\'s "global term", v1 §3: 39 of 40 under TracIn-Last on Toxicity): '
        f"{listed}.",
        "",
    ]


def no_overlap_section(run: Path) -> list[str]:
    summary, found = read_csv(run, "04_auc_del"), metrics(run, "04_no_overlap")
    out = ["## 04 · Deletion without word overlap", ""]
    if summary is None or found is None:
        return out + not_run(f"{REPRODUCE} --only 04")
    return [
        *out,
        f"Frozen word embeddings, each test point's {found['n_candidates']} training texts with "
        f"the least word overlap as candidates, {found['n_points']} test points (point "
        f"estimates: too few points for intervals); the frozen CNN's test accuracy "
        f"{found['test_accuracy']:.3f} (`{run.name}/04_auc_del.csv`, paper: Toxicity):",
        "",
        auc_table(summary),
        "",
    ]


def fixing_section(run: Path) -> list[str]:
    found = metrics(run, "05_fixing")
    out = ["## 05 · Fixing mistakes", ""]
    if found is None:
        return out + not_run(f"{REPRODUCE} --only 05")
    arms = pd.DataFrame(
        {
            "share fixed": found["share_fixed"],
            "beyond another seed's retrain": found["newly_fixed"],
            "mean Δp(true class)": found["mean_dp"],
        }
    )
    arms.index = [" ".join([name(a.split(" ")[0]), *a.split(" ")[1:]]) for a in arms.index]
    return [
        *out,
        f"{found['n_mistakes']} mistakes, each (mistake, seed) pair retrained without the "
        "method's top opponents (remove) or with their most harmful word replaced by [PAD] "
        "(replace); the control retrains unchanged (paper, k = 50 of 40 mistakes: TracIn-WE-Topk "
        "73%, Influence-Last 33%):",
        "",
        arms.to_markdown(floatfmt=".3f"),
        "",
    ]


def cancellation_section(run: Path, layers: Path) -> list[str]:
    """C per layer group from ``run``'s 06; beside it, TracIn's AUC-DEL per layer group from the
    ``layers`` preset's run where it exists."""
    found = metrics(run, "06_cancellation")
    out = ["## 06 · Cancellation per layer", ""]
    if found is None:
        return out + not_run(f"{REPRODUCE} --only 06")
    variant = found["variant"]
    table = pd.Series(found["ratio_by_layer"], name=variant).rename_axis("layer").reset_index()
    swept, source = read_csv(layers, "06_layer_deletion"), f"`{run.name}/metrics`"
    if swept is not None:
        swept = swept.rename(columns={"group": "layer"})
        for metric in ("DEL+", "DEL-"):
            swept[f"{metric} (95% CI)"] = [
                ci(v, lo, hi)
                for v, lo, hi in swept[[metric, f"{metric} low", f"{metric} high"]].values
            ]
        columns = ["layer", "DEL+ (95% CI)", "DEL- (95% CI)"]
        table = table.merge(swept[columns], on="layer", how="left")
        source += (
            f" and `{layers.name}/06_layer_deletion.csv` (`python -m tracin_we.reproduce --preset "
            f"{layers.name}`; {int(swept['n_points'].iloc[0])} test points)"
        )
    median = ", ".join(f"{name(m)} {v:.2f}" for m, v in found["median_cancellation"].items())
    rho = metrics(layers, "06_cancellation") or {}
    deletion = (
        f"Spearman ρ of C with per-layer AUC-DEL+: {rho['spearman_c_vs_del_plus']:.2f} (a handful "
        "of layers: no evidence either way). "
        if rho.get("spearman_c_vs_del_plus") is not None
        else "The deletion sweep per layer: `python -m tracin_we.reproduce --preset layers`. "
    )
    return [
        *out,
        f"The cancellation ratio {variant} of each layer's training gradients at the last "
        f"checkpoint, with the AUC-DEL of TracIn restricted to that layer where run ({source}):",
        "",
        table.to_markdown(index=False, floatfmt=".3f"),
        "",
        f"{deletion}Per test point, the median Σ|s| / |Σs| of the influences: {median}.",
        "",
        "![cancellation by layer](../figures/06_cancellation_by_layer.png)",
        "",
    ]


def noise_section(run: Path) -> list[str]:
    found = metrics(run, "07_layers_and_aggregation")
    out = ["## 07 · Noise detection per layer and aggregation (the 2025 critique)", ""]
    if found is None:
        return out + not_run(f"{REPRODUCE} --only 07")
    ndr = f"NDR@{found['fraction']:.0%}"
    table = pd.DataFrame({ndr: found["ndr"], "AUC-NDR": found["auc_ndr"]})
    return [
        *out,
        f"{found['label_noise']:.0%} of the training labels flipped ({found['n_flipped']} texts); "
        f"NDR@{found['fraction']:.0%} is the share of them among the {found['fraction']:.0%} "
        f"highest self-influences (chance: {found['fraction']:.2f}); one run, no intervals:",
        "",
        table.to_markdown(floatfmt=".3f"),
        "",
    ]


def lds_section(run: Path, title: str, command: str) -> list[str]:
    found, differences = metrics(run, "08_lds"), read_csv(run, "08_lds_differences")
    out = [f"## {title}", ""]
    if found is None or differences is None:
        return out + not_run(command)
    n_models = found.get("n_models", 1)
    explained = (
        f"{n_models} trained models, each with its own retrains of the subsets"
        if n_models > 1
        else "one trained model"
    )
    means = pd.DataFrame(
        {
            "method": [name(m) for m in found["lds"]],
            "mean LDS (95% CI)": [
                ci(found["lds"][m], found["lds_low"][m], found["lds_high"][m]) for m in found["lds"]
            ],
        }
    )
    return [
        *out,
        f"`{command}`: M = {found['n_subsets']} random subsets of the training texts; "
        f"{found['n_points']} test points; {explained}. LDS = Spearman ρ between a method's "
        "summed scores over the kept texts and the retrained model's margin, averaged over the "
        f"test points{' and models' if n_models > 1 else ''}; 95% bootstrap over the test points, "
        f"{'the models ' if n_models > 1 else ''}and the subsets, which every point shares "
        f"(`{run.name}/08_lds_differences.csv`):",
        "",
        means.to_markdown(index=False),
        "",
        "Paired, TracIn-WE − method:",
        "",
        paired_table(differences),
        "",
    ]


def cost_section(folder: Path) -> list[str]:
    """TracIn-WE, TRAK and EK-FAC timed on one model and data by ``benchmarks/bench_peers.py``."""
    table = read_csv(folder, "bench_peers")
    if table is None or (table["method"] == "tracin-we").sum() != 1:
        return []  # not run, or not a table this page can read (one tracin-we row)
    base = table.set_index("method").loc["tracin-we"]
    shown = pd.DataFrame({
        "method": [name(m) for m in table["method"]],
        "seconds": table["seconds"].round(2),
        "peak MiB": table["peak_mib"].round(0).astype(int),
        "× TR-WE's time": (table["seconds"] / base["seconds"]).round(1),
        "× TR-WE's memory": (table["peak_mib"] / max(base["peak_mib"], 1.0)).round(1),
    })  # fmt: skip
    size = (
        f"{int(base['n_train']):,} training × {int(base['n_test'])} test texts, "
        f"{int(base['checkpoints'])} checkpoints, {int(base['threads'])} threads"
    )
    return [
        f"Their cost on the same CNN and texts ({size}; `python benchmarks/bench_peers.py`, each "
        "method in its own process, `runs/benchmarks/bench_peers.csv`):",
        "",
        shown.to_markdown(index=False),
        "",
    ]


def pretraining_section(run: Path) -> list[str]:
    found = metrics(run, "09_pretraining_influence")
    out = ["## 09 · Influence back to pretraining data (beyond the paper)", ""]
    if found is None:
        return out + not_run(f"{REPRODUCE} --only 09")
    diff = found["counterfactual_difference"]
    bounds = {k: found[f"counterfactual_{k}"] for k in ("mean", "low", "high")}
    effect = ", ".join(
        f"{m}: {ci(bounds['mean'][m], bounds['low'][m], bounds['high'][m], signed=True)}"
        for m in bounds["mean"]
    )
    doge = ", ".join(f"{d} {w:.2f}" for d, w in found["doge_final"].items())
    mixtures = found["mixtures"]
    return [
        *out,
        f"BERT-tiny MLM-pretrained on {found['n_corpus']} unused texts (loss "
        f"{found['mlm_loss'][0]:.2f} → {found['mlm_loss'][-1]:.2f}), fine-tuned on "
        f"{' vs '.join(found['target_classes'])}: test accuracy "
        f"{found['finetune_test_accuracy']:.3f}.",
        f"- Counterfactual ({found['n_points']} test points, top {found['k']} pretraining texts "
        f"removed, re-pretrained and re-fine-tuned): Δp(true class) {effect}; ranked − random "
        f"{ci(diff['difference'], diff['low'], diff['high'], signed=True)}: **{diff['verdict']}**.",
        f"- DoGE's final domain weights: {doge}. Fine-tuning after pretraining on DoGE's mixture "
        f"vs a uniform one: validation accuracy {mixtures['doge']['val_accuracy']:.3f} vs "
        f"{mixtures['uniform']['val_accuracy']:.3f} (one seed: not evidence).",
        "",
    ]


def study_section(runs: Path) -> list[str]:
    folder = runs / "variance"
    out = ["## Where the uncertainty comes from: the variance study", ""]
    command = "python -m tracin_we.variance_study --preset default --seeds 0 1 2"
    components = read_csv(folder, "components")
    if components is None:
        return out + not_run(command)
    out += [f"`{command}` (`runs/variance/`):", ""]
    out += variance_table(components, "`variance/components.csv`")
    noise, designs = read_csv(folder, "retrain_noise"), read_csv(folder, "designs")
    if noise is not None:
        shown = noise.assign(quantity=noise["quantity"].map(quantity_name))
        out += [
            "Retrain noise inside one trained model: the variance over two retrain seeds of a "
            "cell's DEL (each retrain against its own seed's baseline), averaged over cells "
            "(`variance/retrain_noise.csv`):",
            "",
            shown.to_markdown(index=False, floatfmt=".4g"),
            "",
        ]
    if designs is not None:
        out += [
            "The same budget spread over models and points: the predicted 95% half-width of "
            "TracIn-WE − TracIn-Last (`covered` is False for one model, whose interval leaves "
            "the models' variance out; `variance/designs.csv`):",
            "",
            designs.to_markdown(index=False, floatfmt=".4g"),
            "",
        ]
    return out


def figures_section() -> list[str]:
    figures = sorted((REPO / "figures").glob("*.png"))
    links = [f"[`{p.name}`](../figures/{p.name})" for p in figures]
    return [
        "## Figures",
        "",
        f"Regenerated by `make reproduce` in `figures/`: {', '.join(links)}.",
        "",
    ]


def page(runs: Path, preset: str = "default") -> str:
    """The page from ``runs/<preset>`` (the default preset's run) and the larger runs beside it."""
    default = runs / preset
    lines = [
        "# Results",
        "",
        f"<!-- Generated by `{COMMAND}`; edit that, not this. -->",
        f"Written by `{COMMAND}` from `runs/{preset}/` (`make reproduce`: the default preset on "
        "the offline AG News data, 2 CPU cores) and the larger runs named in their sections. The "
        "pretrained setting has its own page, [pretrained.md](pretrained.md); what differs from "
        "the paper, and why, is in [paper.md](paper.md#what-differs-here-and-why).",
        "",
        *training_section(default),
        *global_term_section(default),
        *deletion_section(default, "03 · Case deletion", REPRODUCE),
        "![deletion](../figures/03_deletion_curves.png)",
        "",
        *deletion_section(
            runs / "deletion-models",
            "03 at a larger size: more trained models and points",
            "python -m tracin_we.reproduce --preset deletion-models",
        ),
        *deletion_section(
            runs / "deletion-peers",
            "03 with TRAK and EK-FAC (the methods people pick in 2026)",
            "python -m tracin_we.reproduce --preset deletion-peers",
        ),
        *study_section(runs),
        *no_overlap_section(default),
        *fixing_section(default),
        *cancellation_section(default, runs / "layers"),
        *noise_section(default),
        *lds_section(default, "08 · Linear datamodeling score", f"{REPRODUCE} --only 08"),
        "![LDS per method](../figures/08_lds.png)",
        "",
        *lds_section(
            runs / "lds-peers",
            "08 with TRAK and EK-FAC (the methods people pick in 2026)",
            "python -m tracin_we.reproduce --preset lds-peers",
        ),
        *cost_section(runs / "benchmarks"),
        *peers_paragraph(runs / "lds-peers", runs / "deletion-peers", runs / "benchmarks"),
        *deletion_section(
            runs / "lds-bert", "03 on BERT-tiny", "python -m tracin_we.reproduce --preset lds-bert"
        ),
        *lds_section(
            runs / "lds-bert", "08 on BERT-tiny", "python -m tracin_we.reproduce --preset lds-bert"
        ),
        *pretraining_section(default),
        *figures_section(),
    ]
    return "\n".join(lines).rstrip() + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog=COMMAND, description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, default=REPO / "runs")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "results.md")
    parser.add_argument("--check", action="store_true", help="exit 1 if the page differs")
    args = parser.parse_args(argv)
    if not (args.runs / "default" / "metrics").is_dir():
        parser.error(f"{args.runs / 'default'} holds no metrics: run `make reproduce` first")
    text = page(args.runs)
    if args.check:
        current = args.out.read_text() if args.out.is_file() else ""
        if current != text:
            sys.exit(f"{args.out} differs from what {COMMAND} writes from {args.runs}")
        print(f"{args.out} is up to date")
        return
    args.out.write_text(text)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
