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

Where a sweep explains several trained models (one per seed, ``deletion``'s ``model_per_seed``),
a per-point value is itself one draw of the model's randomness, and the CIs resample the models as
well as the test points (``crossed_means``).

LDS's own statistics live here too: ``spearman`` (row-wise rank correlation, constant rows
ρ := 0) and ``two_way_means``, the bootstrap that resamples the retrained subsets as well as the
test points, recomputing every ρ from the resampled subsets' multiset ranks without sorting
again.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from scipy.stats import rankdata

HIGHER_IS_BETTER = {"DEL+": False, "DEL-": True, "LDS": True}
# A deletion's direction → its metric: DEL+ deletes proponents, DEL− opponents (the one mapping;
# deletion.DIRECTIONS are its keys).
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
    resamples what each per-point value was computed from, ``two_way_means``). ``values``
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
                    "verdict": _verdict(*sorted((sign * d_low, sign * d_high))),
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


def crossed_means(cells: np.ndarray, n_bootstrap: int = 1000, seed: int = 0) -> np.ndarray:
    """Bootstrap replicates (n_bootstrap, m) of each method's grand mean over a crossed design:
    ``cells`` (S, n, m) holds one value per (trained model, test point, method), every method on
    the same cells. Replicate b draws the points ``bootstrap_index(n, B, seed)[b]`` and, on its
    own, the models ``default_rng([seed, 2]).integers(0, S, (B, S))[b]``, and averages the S·n
    cells they cross: the "pigeonhole" bootstrap (Owen 2007), whose variance covers the models',
    the points' and their interaction's (its coverage: ``tests/test_stats.py``). With S = 1 it is
    the one-way bootstrap over points, draw for draw."""
    n_models, n_points, _ = cells.shape
    points = bootstrap_index(n_points, n_bootstrap, seed)
    if n_models == 1:
        return cells[0][points].mean(1)
    models = np.random.default_rng([seed, 2]).integers(0, n_models, (n_bootstrap, n_models))
    model_counts = _counts(models, n_models)  # (B, S)
    point_counts = _counts(points, n_points)  # (B, n)
    return np.einsum("bs,bp,spm->bm", model_counts, point_counts, cells) / (n_models * n_points)


def _counts(draws: np.ndarray, size: int) -> np.ndarray:
    """(B, size) how often each index appears in each row of ``draws`` (B, k)."""
    return np.stack([np.bincount(row, minlength=size) for row in draws]).astype(float)


def deletion_differences(
    table: pd.DataFrame,
    references: Sequence[str] = REFERENCES,
    n_bootstrap: int = 1000,
    ci: float = 0.95,
    seed: int = 0,
) -> pd.DataFrame:
    """Paired differences of AUC-DEL± from case deletion's per-seed table
    (``deletion.tidy_table``: columns ``point``, ``method``, ``direction``, ``DEL`` and, where it
    explains several trained models, ``model``).

    A point's AUC-DEL under a method and model is its DEL averaged over (k, retrain seed), as in
    ``deletion.auc_del``; the replicates are ``crossed_means`` of those cells (models and points
    ascending), so with one model they are the one-way bootstrap over points
    ``bootstrap_index(n_points, n_bootstrap, seed)``, and with the sweep's ``n_bootstrap``,
    ``ci`` and ``bootstrap_seed`` the means' CIs are those of ``auc_del``. The point estimates and
    ``share_better`` read each point's mean over models. One block of ``compare``'s differences
    per direction, with a ``metric`` column (DEL+ or DEL−); methods keep their order of first
    appearance in ``table``.
    """
    blocks = []
    for metric, cells in deletion_cells(table).items():
        values = cells.groupby(level="point").mean()
        resampled = crossed_means(cells_array(cells), n_bootstrap, seed)
        _, differences = compare(values, resampled, HIGHER_IS_BETTER[metric], references, ci)
        n_models = cells.index.get_level_values("model").nunique()
        blocks.append(differences.assign(metric=metric, n_models=n_models))
    if not blocks:
        raise ValueError(f"table has no direction among {list(DELETION_METRICS)}")
    out = pd.concat(blocks, ignore_index=True)
    return out[["metric", *[c for c in out.columns if c != "metric"]]]


def deletion_cells(table: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Per metric (DEL+, DEL−) that ``table`` has a direction for: a ((model, point) × method)
    table of each cell's AUC-DEL, its DEL averaged over (k, retrain seed) as in
    ``deletion.auc_del``; models then points ascending, methods in their order of first
    appearance. A table without a ``model`` column explains one model (model 0)."""
    needed = {"point", "method", "direction", "DEL"}
    if not needed <= set(table.columns):
        raise ValueError(f"table lacks columns {sorted(needed - set(table.columns))}")
    if "model" not in table.columns:
        table = table.assign(model=0)
    methods = list(dict.fromkeys(table["method"]))
    means = table.groupby(["direction", "model", "point", "method"])["DEL"].mean()
    directions = means.index.get_level_values("direction")
    return {
        metric: means.loc[direction].unstack("method")[methods].sort_index()
        for direction, metric in DELETION_METRICS.items()
        if direction in directions
    }


def deletion_per_point(table: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Per metric: a (point × method) table of each point's AUC-DEL, ``deletion_cells``
    averaged over the trained models; points ascending."""
    return {
        metric: cells.groupby(level="point").mean()
        for metric, cells in deletion_cells(table).items()
    }


def cells_array(cells: pd.DataFrame) -> np.ndarray:
    """A ((model, point) × method) table as an array (S, n, m); every model has every point."""
    models = cells.index.get_level_values("model").unique()
    points = cells.index.get_level_values("point").unique()
    if len(cells) != len(models) * len(points):
        raise ValueError("every trained model must be evaluated on the same test points")
    return cells.to_numpy(dtype=float).reshape(len(models), len(points), cells.shape[1])


def spearman(f: np.ndarray, g: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row-wise Spearman ρ of (n, M) arrays (average ranks for ties), and which rows are
    constant in f or g (their ρ is set to 0)."""
    return _rank_correlation(_centered_ranks(f), _centered_ranks(g))


def _tie_groups(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For rows of x (n, M): the sorting order, and for each sorted position the first and last
    sorted position of its group of equal values."""
    order = np.argsort(x, axis=-1, kind="stable")
    ordered = np.take_along_axis(x, order, -1)
    position = np.arange(x.shape[-1])
    new = np.ones(x.shape, dtype=bool)
    new[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
    last = np.ones(x.shape, dtype=bool)
    last[:, :-1] = new[:, 1:]
    first = np.maximum.accumulate(np.where(new, position, 0), axis=-1)
    final = np.minimum.accumulate(np.where(last, position, x.shape[-1])[:, ::-1], axis=-1)[:, ::-1]
    return order, first, final


def _multiset_ranks(groups: tuple, counts: np.ndarray) -> np.ndarray:
    """Centered average ranks (c, n, M), in the original column order, of each row's values
    taken ``counts[b, i]`` times each (c, M): what ``rankdata`` gives the resampled columns,
    without sorting again. A value's rank = (copies below it) + (its tie group's copies + 1)/2."""
    order, first, final = groups
    sorted_counts = counts[:, order]  # (c, n, M)
    through = sorted_counts.cumsum(-1)
    below = np.take_along_axis(through - sorted_counts, first[None], -1)
    upto = np.take_along_axis(through, final[None], -1)
    ranks = np.empty_like(through)
    np.put_along_axis(
        ranks, np.broadcast_to(order, ranks.shape), below + (upto - below + 1) / 2, -1
    )
    return ranks - (counts.sum(-1)[:, None, None] + 1) / 2


def _centered_ranks(x: np.ndarray) -> np.ndarray:
    ranks = rankdata(x, axis=-1)
    return ranks - ranks.mean(-1, keepdims=True)


def _rank_correlation(rf: np.ndarray, rg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    norm = np.sqrt((rf**2).sum(-1) * (rg**2).sum(-1))
    constant = norm == 0
    return np.where(constant, 0.0, (rf * rg).sum(-1) / np.where(constant, 1.0, norm)), constant


def two_way_means(
    f: np.ndarray, g: Mapping[str, np.ndarray], n_bootstrap: int, seed: int, n_models: int = 1
) -> np.ndarray:
    """Bootstrap replicates (n_bootstrap, n_methods) of each method's mean Spearman ρ between the
    rows of f (rows, M) and of each g[method] (rows, M) — LDS's retrained outputs and predictions
    over M subsets (``lds``; CPU torch tensors are accepted) — that resample the test points
    *and* the subsets: replicate b takes points ``bootstrap_index(n, B, seed)[b]`` (the one-way
    bootstrap's) and subsets ``default_rng([seed, 1]).integers(0, M, (B, M))[b]``, recomputes
    every ρ_j on those subsets and averages over those points.

    With ``n_models`` > 1 the rows are (trained model, test point) pairs, model-major
    (rows = n_models · n), every model on the same subsets and points; replicate b also draws
    the models as ``crossed_means`` does and averages the ρ of the (model, point) cells that the
    two draws cross.

    Every LDS_j is measured on the same M subsets, so their errors are correlated across test
    points; a bootstrap over test points alone treats the subsets as fixed and its CI misses
    that variance (measured in ``lds``'s module docstring). Resampling both ways
    ("pigeonhole" bootstrap, Owen 2007) is mildly conservative."""
    rows, m = f.shape
    n = rows // n_models
    points = bootstrap_index(n, n_bootstrap, seed)
    subsets = np.random.default_rng([seed, 1]).integers(0, m, size=(n_bootstrap, m))
    counts = _counts(subsets, m)  # (B, M)
    if n_models > 1:
        models = np.random.default_rng([seed, 2]).integers(0, n_models, (n_bootstrap, n_models))
        model_counts, point_counts = _counts(models, n_models), _counts(points, n)
    ties_f = _tie_groups(np.asarray(f))
    ties_g = [_tie_groups(np.asarray(v)) for v in g.values()]
    out = np.empty((n_bootstrap, len(ties_g)))
    for start in range(0, n_bootstrap, 64):  # (64, rows, M) arrays at a time
        block = slice(start, start + 64)
        weights = counts[block, None, :]  # (c, 1, M)
        rf = _multiset_ranks(ties_f, counts[block])
        for k, groups in enumerate(ties_g):
            rg = _multiset_ranks(groups, counts[block])
            norm = np.sqrt((weights * rf**2).sum(-1) * (weights * rg**2).sum(-1))
            rho = np.where(
                norm == 0, 0.0, (weights * rf * rg).sum(-1) / np.where(norm == 0, 1, norm)
            )
            if n_models == 1:
                out[block, k] = np.take_along_axis(rho, points[block], axis=1).mean(1)
            else:
                cube = rho.reshape(len(rho), n_models, n)
                crossed = np.einsum("cs,cp,csp->c", model_counts[block], point_counts[block], cube)
                out[block, k] = crossed / rows
    return out
