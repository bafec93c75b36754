"""Two runs of the same evaluation on the same test points, compared point by point.

Notebooks 03 and 08 save their per-point results in their run folder (``03_deletion.csv``: DEL
per point, method, direction, k and seed; ``08_lds_per_point.csv``: LDS per point and method).
Two runs that differ in one thing (``presets/default.yaml`` and ``presets/pretrained.yaml``'s CNN
differ only in ``embedding_init``) draw the same test points, so each method's per-point metric
pairs across them: the difference (other − baseline) of AUC-DEL+ / AUC-DEL− / LDS per method,
with a percentile CI from resampling the test points (``stats.paired_bootstrap``; the LDS's
subsets are not resampled here, so these intervals are narrower than 08's own).

    python -m tracin_we.report.compare_runs runs/default runs/pretrained --names random minilm-pca
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from tracin_we.core.stats import HIGHER_IS_BETTER, deletion_per_point, paired_bootstrap

DELETION_TABLE = "03_deletion.csv"
LDS_TABLE = "08_lds_per_point.csv"


def per_point(run_dir: str | Path) -> dict[str, pd.DataFrame]:
    """Per metric (DEL+, DEL-, LDS) found in ``run_dir``: a (point × method) table, points in
    ascending order; a point's AUC-DEL is its DEL averaged over k and seeds (``deletion.auc_del``),
    and its LDS and AUC-DEL are averaged over the trained models where a run has several.
    """
    run_dir, found = Path(run_dir), {}
    if (run_dir / DELETION_TABLE).is_file():
        found |= deletion_per_point(pd.read_csv(run_dir / DELETION_TABLE))
    if (run_dir / LDS_TABLE).is_file():
        table = pd.read_csv(run_dir / LDS_TABLE)
        methods = list(dict.fromkeys(table["method"]))
        by_point = table.groupby(["point", "method"])["LDS"].mean()  # over models, if several
        found["LDS"] = by_point.unstack("method")[methods]
    if not found:
        raise ValueError(f"{run_dir} holds neither {DELETION_TABLE} nor {LDS_TABLE}")
    return found


def compare_runs(
    baseline: str | Path,
    other: str | Path,
    names: tuple[str, str] = ("baseline", "other"),
    n_bootstrap: int = 1000,
    seed: int = 0,
) -> pd.DataFrame:
    """One row per (metric, method) that both runs have: ``names[0]``'s and ``names[1]``'s mean,
    ``difference`` = mean(other − baseline) with its CI ``low``/``high`` over the same resampled
    points, ``verdict`` (``"<name> better"`` or ``"inconclusive"``) and ``n_points``."""
    if names[0] == names[1]:
        raise ValueError(f"names={list(names)} must differ")
    first, second = per_point(baseline), per_point(other)
    rows = []
    for metric in [m for m in first if m in second]:
        a, b = first[metric], second[metric]
        if list(a.index) != list(b.index):
            raise ValueError(
                f"{metric}: the runs scored different test points ({len(a)} and {len(b)}; "
                f"first differing: {sorted(set(a.index) ^ set(b.index))[:5]}): compare runs of "
                "the same data sample, n_test_points and point_seed"
            )
        methods = [m for m in a.columns if m in b.columns]
        values = pd.concat(
            [b[methods].add_prefix(f"{names[1]}:"), a[methods].add_prefix(f"{names[0]}:")], axis=1
        )
        references = [f"{names[1]}:{m}" for m in methods]
        means, differences = paired_bootstrap(
            values, HIGHER_IS_BETTER[metric], references, n_bootstrap, seed=seed
        )
        mean = dict(zip(means["method"], means["mean"], strict=True))
        for method in methods:
            row = differences[
                (differences["reference"] == f"{names[1]}:{method}")
                & (differences["method"] == f"{names[0]}:{method}")
            ].iloc[0]
            verdict = {
                "reference better": f"{names[1]} better",
                "method better": f"{names[0]} better",
            }
            rows.append(
                {
                    "metric": metric,
                    "method": method,
                    names[0]: mean[f"{names[0]}:{method}"],
                    names[1]: mean[f"{names[1]}:{method}"],
                    "difference": row["difference"],
                    "low": row["low"],
                    "high": row["high"],
                    "verdict": verdict.get(row["verdict"], row["verdict"]),
                    "n_points": row["n_points"],
                }
            )
    if not rows:
        raise ValueError(f"{baseline} and {other} share no metric")
    return pd.DataFrame(rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m tracin_we.report.compare_runs", description=__doc__.splitlines()[0]
    )
    parser.add_argument("baseline", type=Path)
    parser.add_argument("other", type=Path)
    parser.add_argument("--names", nargs=2, default=("baseline", "other"), metavar="NAME")
    parser.add_argument("--out", type=Path, help="also write the table as CSV here")
    args = parser.parse_args(argv)
    try:
        table = compare_runs(args.baseline, args.other, tuple(args.names))
    except ValueError as error:
        parser.error(str(error))
    if args.out:
        table.to_csv(args.out, index=False)
    print(table.round(4).to_markdown(index=False))


if __name__ == "__main__":
    main()
