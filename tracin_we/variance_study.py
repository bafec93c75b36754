"""Measure where case deletion's uncertainty comes from, to decide how a preset spends retrains.

    python -m tracin_we.variance_study --preset default --seeds 0 1 2 --n-test-points 32

Two sweeps of the preset's notebook 03 recipe (retrains come from the cache and go to it):

1. ``model_per_seed`` over ``--seeds``: each seed trains, explains and retrains its own model on
   the same ``--n-test-points``; ``core.variance.deletion_components`` splits each method's
   AUC-DEL± and TracIn-WE − TracIn-Last into model, point and residual variance;
2. one model (the recipe's seed) whose TracIn-WE and TracIn-Last deletion sets are retrained at
   the first two seeds: how much a retrain's seed alone moves a cell (``retrain noise``:
   var_s(DEL of a cell), averaged over cells, which 1 also holds inside its residual).

Like ``reproduce``, it reads a preset, so it sits above the floors. Writes ``components.csv``,
``retrain_noise.csv`` and ``designs.csv`` (``core.variance.plan_designs`` at the preset's own 03
budget) to ``--out`` (default ``runs/variance``).
"""

from __future__ import annotations

import argparse
import os
from dataclasses import replace
from functools import partial
from pathlib import Path

import pandas as pd
from datasets import DatasetDict

from tracin_we.core.stats import DELETION_METRICS
from tracin_we.core.variance import COMPONENTS, deletion_components, plan_designs
from tracin_we.experiments.deletion import DeletionConfig, run_deletion
from tracin_we.preflight import check_notebook, select_notebooks
from tracin_we.reproduce import params_for

CLAIM = "tracin-we − tracin-last"


def retrain_noise(table: pd.DataFrame) -> pd.DataFrame:
    """Per (metric, method): the variance over retrain seeds of a cell's DEL (one explained
    model, the same deletion set), averaged over the cells (points, k), and for the paired
    TracIn-WE − TracIn-Last difference when both ran."""
    cell = ["direction", "point", "k"]
    paired = table.assign(d=table["p"] - table["baseline_seed"])  # each retrain vs its own seed's
    by_method = paired.pivot_table(index=[*cell, "seed"], columns="method", values="d")
    if {"tracin-we", "tracin-last"} <= set(by_method.columns):
        by_method[CLAIM] = by_method["tracin-we"] - by_method["tracin-last"]
    variance = by_method.groupby(level=cell).var(ddof=1).groupby(level="direction").mean()
    out = variance.stack().rename("var_retrain").reset_index()
    out.insert(0, "metric", out.pop("direction").map(DELETION_METRICS))
    return out.rename(columns={"method": "quantity"})


def run_study(
    config: DeletionConfig,
    seeds: tuple[int, ...],
    n_test_points: int,
    budget: int,
    splits: DatasetDict | None = None,
    cache: str | os.PathLike | None = None,
    progress: bool = True,
) -> dict[str, pd.DataFrame]:
    """The two sweeps of the module docstring, and their tables; ``budget``: the retrains that
    the designs table spreads over models and points."""
    if len(seeds) < 2:
        raise ValueError(f"seeds={list(seeds)}: give at least two, one trained model per seed")
    crossed = replace(config, seeds=seeds, model_per_seed=True, n_test_points=n_test_points)
    sweep = partial(run_deletion, splits=splits, cache=cache, progress=progress)
    components = deletion_components(sweep(crossed).table)
    pair = tuple(m for m in ("tracin-last", "tracin-we") if m in config.methods) or config.methods
    one_model = replace(
        config, seeds=seeds[:2], model_per_seed=False, methods=pair, n_test_points=n_test_points
    )
    noise = retrain_noise(sweep(one_model).table)
    per_cell = len(config.methods) * len(config.directions) * len(config.ks)
    designs = []
    for row in components[components["quantity"] == CLAIM].itertuples():
        parts = {c: getattr(row, f"var_{c}") for c in COMPONENTS}
        found = plan_designs(
            parts, per_cell, budget, points_per_class=config.train.data.num_classes
        )
        designs.append(found.assign(metric=row.metric))
    designs_table = pd.concat(designs, ignore_index=True) if designs else pd.DataFrame()
    return {"components": components, "retrain_noise": noise, "designs": designs_table}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m tracin_we.variance_study",
        description=__doc__.splitlines()[0],
    )
    parser.add_argument("--preset", default="default", help="whose notebook 03 recipe to study")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--n-test-points", type=int, default=32)
    parser.add_argument(
        "--budget", type=int, help="retrains to plan for (default: the preset's 03)"
    )
    parser.add_argument("--out", type=Path, default=Path("runs") / "variance")
    args = parser.parse_args(argv)
    (notebook,) = select_notebooks(["03"])
    config = check_notebook(notebook, params_for(args.preset, "03"))
    budget = args.budget or config.n_retrains
    tables = run_study(config, tuple(args.seeds), args.n_test_points, budget)
    args.out.mkdir(parents=True, exist_ok=True)
    for name, table in tables.items():
        table.to_csv(args.out / f"{name}.csv", index=False)
        print(f"\n{name} ({args.out / name}.csv)\n{table.round(5).to_string(index=False)}")


if __name__ == "__main__":
    main()
