"""The README's headline table, written from run folders: no number in it is typed by hand.

    python -m tracin_we.report.headline           # after make reproduce and make pretrained
    python -m tracin_we.report.headline --check   # exit 1 when the README's table differs

Reads ``runs/default/`` and ``runs/pretrained/`` and rewrites the block between ``START`` and
``END`` in ``README.md``; while any cell would read "not run" (a run missing, or run only in
part), the README is left as it is and ``--check`` says so (``make reproduce`` and ``make
pretrained`` both call this, in either order). Each paired comparison's
reading comes from its confidence interval (``pretrained_page.paired``): a method is named
better only where the interval excludes zero.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tracin_we.report.pretrained_page import NAMES, REPO, interval, metrics, paired, sample

START = "<!-- headline: written by python -m tracin_we.report.headline; edit that, not this -->"
END = "<!-- /headline -->"
COMPARISONS = (  # (metric, first, second, what its sign means)
    ("DEL+", "tracin-we", "tracin-last", "negative: removing TR-WE's top proponents lowers "
     "p(true class) more"),
    ("DEL-", "tracin-we", "tracin-last", "positive: removing TR-WE's top opponents raises it more"),
    ("DEL+", "tracin-we", "tracin-tfidf", "positive: TF-IDF word overlap × last-layer δ deletes "
     "better"),
    ("LDS", "tracin-we", "tracin-last", "positive: TR-WE predicts retrained outputs better"),
)  # fmt: skip
RUNS = ("default", "pretrained")  # the columns: the default preset's run, the pretrained one's
ACCURACY = (  # (notebook, what its test accuracy is of, in both runs)
    ("01_train", "01's transformer (paper, pretrained BERT-tiny: 0.90)"),
    ("03_case_deletion", "the CNN of 03–08"),
)


def cell(row: dict | None) -> str:
    if row is None:
        return "not run"
    return f"{interval(row)}, {sample(row)}: **{row['reading']}**"


def table(runs: Path) -> str:
    """The headline block, ``START`` and ``END`` included: one column per run (``RUNS``)."""
    lines = [
        "| paired, 95% CI | default preset: CNN, random init | pretrained preset: CNN, "
        "MiniLM's word embeddings |",
        "|---|---|---|",
    ]
    for metric, first, second, meaning in COMPARISONS:
        cells = [cell(paired(runs / name, metric, first, second)) for name in RUNS]
        name = f"{metric}, {NAMES[first]} − {NAMES[second]} ({meaning})"
        lines.append(f"| {name} | {' | '.join(cells)} |")
    for stem, what in ACCURACY:
        found = [metrics(runs / name, stem) or {} for name in RUNS]
        values = [
            f"{m['test_accuracy']:.3f}" + (f" (`{m['init'].split('@')[0]}`)" if "init" in m else "")
            if "test_accuracy" in m
            else "not run"
            for m in found
        ]
        lines.append(f"| test accuracy of {what} | {' | '.join(values)} |")
    return "\n".join([START, *lines, END])


def updated(readme: str, block: str) -> str:
    """``readme`` with its headline block replaced by ``block``."""
    if START not in readme or END not in readme:
        raise ValueError(f"the README has no headline block ({START!r} … {END!r})")
    head, rest = readme.split(START, 1)
    return head + block + rest.split(END, 1)[1]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m tracin_we.report.headline", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--runs", type=Path, default=REPO / "runs")
    parser.add_argument("--readme", type=Path, default=REPO / "README.md")
    parser.add_argument("--check", action="store_true", help="only report a difference")
    args = parser.parse_args(argv)
    block = table(args.runs)
    if "not run" in block:  # a half-filled table would replace real numbers
        missing = [name for name in RUNS if not (args.runs / name / "metrics").is_dir()]
        print(
            f"headline left as it is: the runs under {args.runs} are incomplete"
            + (f" (no {', '.join(missing)} run yet)" if missing else "")
        )
        return
    text = args.readme.read_text()
    try:
        new = updated(text, block)
    except ValueError as error:
        parser.error(str(error))
    if args.check:
        print("the headline is up to date" if new == text else "the headline differs")
        sys.exit(0 if new == text else 1)
    args.readme.write_text(new)
    print(f"wrote the headline of {args.readme}")


if __name__ == "__main__":
    main()
