"""Paired comparisons of attribution methods over test points: the percentile bootstrap.

Every evaluation here gives one number per (test point, method) — a point's AUC-DEL±
(``deletion``) or its LDS (``lds``) — and every method is scored on the same test points. So
methods are compared *paired*: resample the test points with replacement B times (``B × n``
indices from ``numpy.random.default_rng(seed).integers(0, n, (B, n))``, the convention of
``deletion.auc_del``), and on each resample take every method's mean and every difference
``reference − method`` from the same indices. The CI of a difference then carries only the
point-to-point variation of the difference, not that of each method's level, which is what makes a
paired comparison decisive on few test points.

Which side is better depends on the metric: DEL+ (proponents deleted) lower, DEL− (opponents
deleted) and LDS higher (``HIGHER_IS_BETTER``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

HIGHER_IS_BETTER = {"DEL+": False, "DEL-": True, "LDS": True}
# deletion.DIRECTIONS → metric name (as deletion.SUMMARY_NAMES; kept here so that this module
# needs nothing but numpy and pandas).
DELETION_METRICS = {"proponents": "DEL+", "opponents": "DEL-"}
REFERENCES = ("tracin-we", "tracin-last")


def bootstrap_index(n_points: int, n_bootstrap: int = 1000, seed: int = 0) -> np.ndarray:
    """(n_bootstrap, n_points) resampled positions of the test points, with replacement."""
    if n_points < 1 or n_bootstrap < 1:
        raise ValueError(
            f"n_points={n_points}, n_bootstrap={n_bootstrap}: both must be positive integers"
        )
    return np.random.default_rng(seed).integers(0, n_points, size=(n_bootstrap, n_points))


def paired_bootstrap(
    values: pd.DataFrame,
    higher_is_better: bool,
    references: Sequence[str] = REFERENCES,
    n_bootstrap: int = 1000,
    ci: float = 0.95,
    seed: int = 0,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Means and paired differences of methods scored on the same test points.

    ``values``: (n_points, n_methods), one row per test point, one column per method, no NaN.
    Returns ``(means, differences)``:

    - ``means``: per method ``mean`` with the percentile CI ``low``/``high`` and ``n_points``;
    - ``differences``: per (reference, method ≠ reference) ``difference`` = mean(reference −
      method) with its CI from the same resamples; ``share_better``/``share_tied``: the share of
      test points where the reference is strictly better/equal (better = higher when
      ``higher_is_better``, else lower); ``verdict``: ``"reference better"``, ``"method better"``
      or ``"inconclusive"`` (the CI contains 0).
    """
    _check(values, references, ci)
    table = values.to_numpy(dtype=float)
    resampled = table[bootstrap_index(len(table), n_bootstrap, seed)].mean(1)  # (B, m)
    return compare(values, resampled, higher_is_better, references, ci)


def compare(
    values: pd.DataFrame,
    resampled: np.ndarray,
    higher_is_better: bool,
    references: Sequence[str] = REFERENCES,
    ci: float = 0.95,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``paired_bootstrap``'s tables from given bootstrap replicates ``resampled`` (B, n_methods)
    of every method's mean, all drawn on the same resamples (for example a bootstrap that also
    resamples what each per-point value was computed from, ``lds.two_way_means``). ``values``
    (n_points, n_methods) gives the point estimates and the shares."""
    _check(values, references, ci)
    if resampled.ndim != 2 or resampled.shape[1] != values.shape[1]:
        raise ValueError(
            f"resampled has shape {resampled.shape}; expected (n_bootstrap, {values.shape[1]})"
        )
    table = values.to_numpy(dtype=float)  # (n, m)
    tail = (1 - ci) / 2
    low, high = np.quantile(resampled, [tail, 1 - tail], axis=0)
    means = pd.DataFrame(
        {"method": values.columns, "mean": table.mean(0), "low": low, "high": high}
    ).assign(n_points=len(table))
    sign = 1.0 if higher_is_better else -1.0
    records = []
    for reference in references:
        r = values.columns.get_loc(reference)
        for m, method in enumerate(values.columns):
            if method == reference:
                continue
            diff = table[:, r] - table[:, m]  # (n,)
            d_low, d_high = np.quantile(resampled[:, r] - resampled[:, m], [tail, 1 - tail])
            records.append(
                {
                    "reference": reference,
                    "method": method,
                    "difference": diff.mean(),
                    "low": d_low,
                    "high": d_high,
                    "share_better": float(np.mean(sign * diff > 0)),
                    "share_tied": float(np.mean(diff == 0)),
                    "verdict": _verdict(sign * d_low, sign * d_high),
                    "n_points": len(table),
                }
            )
    return means, pd.DataFrame.from_records(records)


def _check(values: pd.DataFrame, references: Sequence[str], ci: float) -> None:
    if not 0 < ci < 1:
        raise ValueError(f"ci={ci} must be in (0, 1)")
    missing = [r for r in references if r not in values.columns]
    if missing:
        raise ValueError(f"references={list(references)}: {missing} not among the methods")
    if values.empty or values.isna().to_numpy().any():
        raise ValueError("values must hold one value per (test point, method), without NaN")


def _verdict(low: float, high: float) -> str:
    """From a CI of (reference − method) × sign, where positive means the reference is better."""
    if low > 0 or high < 0:
        return "reference better" if low > 0 else "method better"
    return "inconclusive"


def deletion_differences(
    table: pd.DataFrame,
    references: Sequence[str] = REFERENCES,
    n_bootstrap: int = 1000,
    ci: float = 0.95,
    seed: int = 0,
) -> pd.DataFrame:
    """Paired differences of AUC-DEL± from case deletion's per-seed table
    (``deletion.tidy_table``: columns ``point``, ``method``, ``direction``, ``k``, ``seed``,
    ``DEL``).

    A point's AUC-DEL under a method is its DEL averaged over (k, seed), as in
    ``deletion.auc_del``; points are taken in ascending order and resampled with
    ``bootstrap_index(n_points, n_bootstrap, seed)``, so with the sweep's ``n_bootstrap``,
    ``ci`` and ``bootstrap_seed`` the means' CIs are those of ``auc_del``. One block of
    ``paired_bootstrap``'s differences per direction, with a ``metric`` column (DEL+ or DEL−);
    methods keep their order of first appearance in ``table``.
    """
    needed = {"point", "method", "direction", "DEL"}
    if not needed <= set(table.columns):
        raise ValueError(f"table lacks columns {sorted(needed - set(table.columns))}")
    methods = list(dict.fromkeys(table["method"]))
    per_point = table.groupby(["direction", "point", "method"])["DEL"].mean()
    blocks = []
    for direction, metric in DELETION_METRICS.items():
        if direction not in per_point.index.get_level_values("direction"):
            continue
        values = per_point.loc[direction].unstack("method")[methods].sort_index()
        _, differences = paired_bootstrap(
            values, HIGHER_IS_BETTER[metric], references, n_bootstrap, ci, seed
        )
        blocks.append(differences.assign(metric=metric))
    if not blocks:
        raise ValueError(f"table has no direction among {list(DELETION_METRICS)}")
    out = pd.concat(blocks, ignore_index=True)
    return out[["metric", *[c for c in out.columns if c != "metric"]]]
