"""Where the uncertainty of an AUC-DEL comes from, and how a budget of retrains should be spent.

A case-deletion sweep that explains S trained models (one per seed, ``deletion``'s
``model_per_seed``) on the same n test points gives one value y_sp per (model, point): a method's
AUC-DEL, or the paired difference of two methods'. They are modelled as crossed random effects,

    y_sp = μ + a_s + b_p + e_sp,   Var a = σ²_model,  Var b = σ²_point,  Var e = σ²_residual,

where the residual holds the model × point interaction and the retrain noise (a cell is one
retrain per k, so the two cannot be told apart inside a cell). The two-way ANOVA without
replication estimates them by the method of moments, each truncated at 0:

    MS_model = n Σ_s (ȳ_s· − ȳ)² / (S − 1)     σ²_residual = MS_residual
    MS_point = S Σ_p (ȳ_·p − ȳ)² / (n − 1)     σ²_model    = (MS_model − MS_residual) / n
    MS_residual = Σ_sp (y_sp − ȳ_s· − ȳ_·p + ȳ)² / ((S − 1)(n − 1))
                                               σ²_point    = (MS_point − MS_residual) / S

and the grand mean ȳ of a design with S models and n points then has variance

    σ²_model / S + σ²_point / n + σ²_residual / (S n)        (``grand_mean_sd``),

which is what a budget of S × n × (methods × directions × ks) retrains buys (``plan_designs``).
With few models σ²_model is poorly estimated (S − 1 degrees of freedom): read it as an order of
magnitude.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd

from tracin_we.core.stats import cells_array, deletion_cells

COMPONENTS = ("model", "point", "residual")


def crossed_components(cells: np.ndarray) -> dict[str, float]:
    """σ²_model, σ²_point and σ²_residual (method of moments, truncated at 0) of ``cells``
    (S, n): one value per (trained model, test point); S ≥ 2 and n ≥ 2."""
    y = np.asarray(cells, dtype=float)
    if y.ndim != 2 or min(y.shape) < 2:
        raise ValueError(f"cells has shape {y.shape}; expected (models ≥ 2, points ≥ 2)")
    n_models, n_points = y.shape
    grand, by_model, by_point = y.mean(), y.mean(1), y.mean(0)
    ms_model = n_points * ((by_model - grand) ** 2).sum() / (n_models - 1)
    ms_point = n_models * ((by_point - grand) ** 2).sum() / (n_points - 1)
    residual = y - by_model[:, None] - by_point[None, :] + grand
    ms_residual = (residual**2).sum() / ((n_models - 1) * (n_points - 1))
    return {
        "model": max((ms_model - ms_residual) / n_points, 0.0),
        "point": max((ms_point - ms_residual) / n_models, 0.0),
        "residual": float(ms_residual),
    }


def grand_mean_sd(components: dict[str, float], n_models: int, n_points: int) -> float:
    """Standard deviation of the mean over ``n_models`` × ``n_points`` cells:
    sqrt(σ²_model / S + σ²_point / n + σ²_residual / (S n))."""
    variance = (
        components["model"] / n_models
        + components["point"] / n_points
        + components["residual"] / (n_models * n_points)
    )
    return float(np.sqrt(variance))


def deletion_components(
    table: pd.DataFrame, pairs: Sequence[tuple[str, str]] = (("tracin-we", "tracin-last"),)
) -> pd.DataFrame:
    """Variance components of each method's AUC-DEL± and of each paired difference
    ``reference − method`` in ``pairs``, from a sweep's table over ≥ 2 trained models
    (``deletion.tidy_table``). One row per (metric, quantity) with the mean, the three
    components and each one's share of the grand mean's variance at the sweep's own size."""
    records = []
    for metric, cells in deletion_cells(table).items():
        array = cells_array(cells)  # (S, n, m)
        columns = list(cells.columns)
        quantities = {m: array[..., columns.index(m)] for m in columns}
        for reference, method in pairs:
            if reference in columns and method in columns:
                name = f"{reference} − {method}"
                quantities[name] = quantities[reference] - quantities[method]
        for name, values in quantities.items():
            parts = crossed_components(values)
            records.append(_record(metric, name, values, parts))
    return pd.DataFrame.from_records(records)


def _record(metric: str, name: str, values: np.ndarray, parts: dict[str, float]) -> dict:
    n_models, n_points = values.shape
    divisors = {"model": n_models, "point": n_points, "residual": n_models * n_points}
    total = sum(parts[c] / divisors[c] for c in COMPONENTS)
    return {
        "metric": metric,
        "quantity": name,
        "mean": float(values.mean()),
        "n_models": n_models,
        "n_points": n_points,
        **{f"var_{c}": parts[c] for c in COMPONENTS},
        **{
            f"share_{c}": (parts[c] / divisors[c]) / total if total > 0 else 0.0 for c in COMPONENTS
        },
        "sd_of_mean": float(np.sqrt(total)),
    }


def plan_designs(
    components: dict[str, float],
    retrains_per_cell: int,
    budget: int,
    model_counts: Iterable[int] = (1, 2, 3, 4, 6, 8),
    points_per_class: int = 1,
    ci: float = 0.95,
) -> pd.DataFrame:
    """For each number of trained models S: the most test points n (a multiple of
    ``points_per_class``, so classes stay balanced) that ``budget`` retrains allow at
    ``retrains_per_cell`` per (model, point) plus one baseline per model, and the predicted
    normal half-width z · ``grand_mean_sd`` of the mean. S = 1 is the single-model design, whose
    bootstrap ignores σ²_model: its ``covered`` column is False, as its interval would be too
    narrow by the model's share."""
    from statistics import NormalDist

    z = NormalDist().inv_cdf(1 - (1 - ci) / 2)
    records = []
    for n_models in model_counts:
        cells = (budget - n_models) // (n_models * retrains_per_cell)
        n_points = cells // points_per_class * points_per_class
        if n_points < 2:
            continue
        records.append(
            {
                "n_models": n_models,
                "n_points": n_points,
                "retrains": n_models * (1 + n_points * retrains_per_cell),
                "halfwidth": z * grand_mean_sd(components, n_models, n_points),
                "covered": n_models > 1,
            }
        )
    return pd.DataFrame.from_records(records)
