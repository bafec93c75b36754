"""Case deletion's tables, from the retrained probabilities to AUC-DEL± and what common random
numbers buy: ``tidy_table`` (one row per retrain), ``auc_del`` (per method, with CIs over the
points and the trained models) and ``crn_variance``. ``deletion`` runs the sweep that fills them.
"""

from __future__ import annotations

import math
from itertools import product
from typing import Protocol

import numpy as np
import pandas as pd
import torch

from tracin_we.core.stats import DELETION_METRICS, cells_array, crossed_means, deletion_cells


class DeletionConfig(Protocol):
    """What the tables read of a sweep's config (``deletion.DeletionConfig``)."""

    methods: tuple[str, ...]
    directions: tuple[str, ...]
    seeds: tuple[int, ...]
    model_per_seed: bool
    n_bootstrap: int
    ci: float
    bootstrap_seed: int


def tidy_table(
    config: DeletionConfig,
    runs: pd.DataFrame,
    points: list[int],
    labels: torch.Tensor,
    probabilities: torch.Tensor,
) -> pd.DataFrame:
    """The per-seed table from the retrained probabilities (n_jobs, n_test_split, C), whose jobs
    are the baselines (one per seed) then every row of ``runs`` (``retrain_runs``). ``baseline``
    is what DEL subtracts: the mean over seeds of the baselines in the paper's protocol, the
    seed's own with ``model_per_seed`` (its model's recipe on the full set)."""
    seeds = list(config.seeds)
    point_index = torch.tensor(points)
    classes = labels[point_index]
    base = probabilities[: len(seeds)][:, point_index, classes]  # (n_seeds, n_points)
    position = torch.tensor(runs["position"].to_numpy())
    seed_row = torch.tensor([seeds.index(s) for s in runs["seed"]])
    p = probabilities[len(seeds) :][
        torch.arange(len(runs)), point_index[position], classes[position]
    ]
    table = runs.drop(columns="removed").reset_index(drop=True)
    table.insert(0, "point", [points[i] for i in table.pop("position")])
    table.insert(1, "label", classes[position].numpy())
    table.insert(table.columns.get_loc("seed"), "model", table.pop("model"))
    table["p"] = p.numpy()
    own = base[seed_row, position]
    table["baseline"] = (own if config.model_per_seed else base.mean(0)[position]).numpy()
    table["baseline_seed"] = own.numpy()
    table["DEL"] = table["p"] - table["baseline"]
    return table


def auc_del(table: pd.DataFrame, config: DeletionConfig) -> pd.DataFrame:
    """AUC-DEL± per method: mean over (k, seed) per point and model, then mean over them, with a
    percentile bootstrap CI over the points, and over the trained models where there are several
    (``stats.crossed_means``: the same resamples for every method). Columns ``DEL+``,
    ``DEL+ low``, ``DEL+ high``, ``DEL-``, ...; lower DEL+ and higher DEL− are better."""
    alpha = (1 - config.ci) / 2
    columns = [
        DELETION_METRICS[d] + end for d in config.directions for end in ("", " low", " high")
    ]
    summary = pd.DataFrame(
        index=pd.Index(config.methods, name="method"), columns=columns, dtype=float
    )
    for name, cells in deletion_cells(table).items():
        means = crossed_means(cells_array(cells), config.n_bootstrap, config.bootstrap_seed)
        summary.loc[cells.columns, name] = cells.mean().to_numpy()
        summary.loc[cells.columns, f"{name} low"] = np.quantile(means, alpha, axis=0)
        summary.loc[cells.columns, f"{name} high"] = np.quantile(means, 1 - alpha, axis=0)
    summary["n_points"] = table["point"].nunique()
    return summary.reset_index()


def crn_variance(table: pd.DataFrame, config: DeletionConfig) -> pd.DataFrame:
    """How much pairing each retrain with the baseline of its own seed narrows the CIs.

    Per point, with q_s = mean_k p_c(θ_s without the k) and b_s = p_c(θ_s), the seed noise of
    its AUC-DEL estimate mean_s (q_s − b_s) has variance ``var_s(q_s − b_s) / S`` (paired, the
    design used) and ``(var_s(q_s) + var_s(b_s)) / S`` had retrains and baselines used
    independent seeds. ``se_*`` are root-mean over points; ``ci_halfwidth`` is the bootstrap
    one; ``ci_halfwidth_independent`` = sqrt(hw² + z² · mean(var_indep − var_paired) / n_points),
    the half-width that the extra noise of independent seeds would give. NaN with one seed.
    With ``model_per_seed`` each seed is its own model with its own deletion sets, so these
    variances include the models' too: the comparison is still paired against unpaired.
    """
    q = table.groupby(["method", "direction", "point", "seed"]).agg(
        q=("p", "mean"), b=("baseline_seed", "first")
    )
    q["d"] = q["q"] - q["b"]
    per_point = q.groupby(["method", "direction", "point"]).var(ddof=1) / len(config.seeds)
    per_point["paired"] = per_point["d"]
    per_point["independent"] = per_point["q"] + per_point["b"]
    out = per_point.groupby(["method", "direction"])[["paired", "independent"]].mean()
    summary = auc_del(table, config).set_index("method")
    z = _normal_quantile(1 - (1 - config.ci) / 2)
    records = []
    for method, direction in product(config.methods, config.directions):
        row, name = out.loc[(method, direction)], DELETION_METRICS[direction]
        half = (summary.loc[method, f"{name} high"] - summary.loc[method, f"{name} low"]) / 2
        extra = max(row["independent"] - row["paired"], 0.0) / summary.loc[method, "n_points"]
        records.append(
            {
                "method": method,
                "direction": direction,
                "se_paired": math.sqrt(row["paired"]),
                "se_independent": math.sqrt(row["independent"]),
                "se_ratio": math.sqrt(row["paired"] / row["independent"])
                if row["independent"] > 0
                else float("nan"),
                "ci_halfwidth": half,
                "ci_halfwidth_independent": math.sqrt(half**2 + z**2 * extra),
            }
        )
    return pd.DataFrame.from_records(records)


def _normal_quantile(q: float) -> float:
    return float(torch.distributions.Normal(0.0, 1.0).icdf(torch.tensor(q, dtype=torch.float64)))
