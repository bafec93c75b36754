"""LDS's tables, from the retrained outputs f and a method's predictions g to LDS per point and
method, its bootstrap summary and its convergence in M (``lds`` runs the evaluation).

f and g are (n_points, M) for one trained model, or (n_models, n_points, M) where every seed
trains and explains its own model (``LDSConfig.model_per_seed``): LDS is then one ρ per (model,
point), and the CIs resample the models as well as the points and the subsets
(``stats.two_way_means`` with ``n_models``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

import numpy as np
import pandas as pd
import torch

from tracin_we.core.stats import (
    HIGHER_IS_BETTER,
    compare,
    crossed_means,
    paired_bootstrap,
    spearman,
    two_way_means,
)


class LDSConfig(Protocol):
    """What the tables read of an evaluation's config (``lds.LDSConfig``)."""

    methods: tuple[str, ...]
    seeds: tuple[int, ...]
    references: tuple[str, ...]
    n_bootstrap: int
    resample_subsets: bool
    ci: float
    bootstrap_seed: int


def margins(probabilities: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The class margin log p_c − log(1 − p_c) in float64, (..., n), from probabilities
    (..., n, C) and true classes (n,). 1 − p_c is summed over the other classes (accurate
    where p_c rounds to 1); zeros are clamped to the smallest float64 so the margin stays finite."""
    p = probabilities.double()
    index = labels.expand(p.shape[:-1]).unsqueeze(-1)
    tiny = torch.finfo(torch.float64).tiny
    true = p.gather(-1, index).squeeze(-1)
    others = p.scatter(-1, index, 0.0).sum(-1)
    return true.clamp_min(tiny).log() - others.clamp_min(tiny).log()


def subset_outputs(
    probabilities: torch.Tensor,
    points: Sequence[int],
    labels: torch.Tensor,
    n_seeds: int,
    per_seed: bool = False,
) -> torch.Tensor:
    """f (n_points, M): the margins at the test ``points`` (classes ``labels`` (n_test,)) of the
    retrains (M · n_seeds, n_test, C) of ``subset_jobs``, averaged over seeds; with
    ``per_seed``, each seed's own (n_seeds, n_points, M)."""
    index = torch.as_tensor(list(points))
    f = margins(probabilities[:, index], labels[index])  # (M · S, n_points)
    by_seed = f.view(-1, n_seeds, len(index))  # (M, S, n_points)
    return by_seed.permute(1, 2, 0).contiguous() if per_seed else by_seed.mean(1).T


def predictions(rows: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """g (n_points, M) = Σ_{i ∈ S_m} score[j, i]: score rows (n_points, n) summed over each keep
    mask (M, n), in float64."""
    return rows.double() @ masks.double().T


def lds_table(
    f: torch.Tensor,
    g: Mapping[str, torch.Tensor],
    points: Sequence[int],
    models: Sequence[int] | None = None,
) -> pd.DataFrame:
    """LDS_j per (test point, method): columns ``point``, ``method``, ``LDS``, ``constant``, from
    f (n_points, M) and each method's g (n_points, M). For f and g (n_models, n_points, M): one
    block per model, with a ``model`` column (the seeds ``models``)."""
    if f.dim() == 3:
        blocks = [
            lds_table(f[s], {m: v[s] for m, v in g.items()}, points).assign(model=model)
            for s, model in enumerate(models or range(len(f)))
        ]
        return pd.concat(blocks, ignore_index=True)
    frames = []
    for method, prediction in g.items():
        rho, constant = spearman(f.numpy(), prediction.numpy())
        frames.append(
            pd.DataFrame(
                {"point": list(points), "method": method, "LDS": rho, "constant": constant}
            )
        )
    return pd.concat(frames, ignore_index=True)


def summarize(
    f: torch.Tensor, g: Mapping[str, torch.Tensor], points: Sequence[int], config: LDSConfig
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(per_point, summary, differences): ``lds_table`` and its bootstrap tables
    (``stats.compare``), resampling test points and, with ``config.resample_subsets``, subsets
    (``stats.two_way_means``), and with several trained models (f, g (n_models, n_points, M))
    the models too. The summary has per method ``mean``, ``low``, ``high``, ``n_points`` and
    ``constant`` ((model, point) cells with ρ := 0)."""
    wrong = [m for m in config.methods if tuple(g[m].shape) != tuple(f.shape)]
    if wrong:
        raise ValueError(f"g of {wrong} has another shape than f {tuple(f.shape)}")
    n_models = f.shape[0] if f.dim() == 3 else 1
    per_point = lds_table(f, g, points, config.seeds if n_models > 1 else None)
    values = per_point.groupby(["point", "method"])["LDS"].mean().unstack("method")
    values = values.loc[list(points), list(config.methods)]
    options = (config.references, config.ci)
    if n_models > 1 or config.resample_subsets:
        resampled = _crossed_replicates(f, g, per_point, config, n_models)
        summary, differences = compare(values, resampled, HIGHER_IS_BETTER["LDS"], *options)
    else:
        summary, differences = paired_bootstrap(
            values.sort_index(),
            HIGHER_IS_BETTER["LDS"],
            config.references,
            config.n_bootstrap,
            config.ci,
            config.bootstrap_seed,
        )
    constant = per_point.groupby("method")["constant"].sum()
    summary = summary.assign(constant=summary["method"].map(constant).astype(int))
    return per_point, summary, differences.assign(n_models=n_models)


def _crossed_replicates(
    f: torch.Tensor,
    g: Mapping[str, torch.Tensor],
    per_point: pd.DataFrame,
    config: LDSConfig,
    n_models: int,
) -> np.ndarray:
    """(B, n_methods) replicates of each method's mean LDS: over points and subsets
    (``two_way_means``; (model, point) rows with several models), or, without
    ``resample_subsets``, over models and points given the subsets (``crossed_means``)."""
    seed, draws = config.bootstrap_seed, config.n_bootstrap
    if config.resample_subsets:
        rows = f.shape[-1]
        flat = {m: g[m].reshape(-1, rows) for m in config.methods}
        return two_way_means(f.reshape(-1, rows), flat, draws, seed, n_models=n_models)
    cells = per_point.pivot_table(index=["model", "point"], columns="method", values="LDS")
    cells = cells[list(config.methods)].to_numpy().reshape(n_models, -1, len(config.methods))
    return crossed_means(cells, draws, seed)


def convergence_grid(n_subsets: int) -> list[int]:
    """Prefix sizes for ``convergence``: 4, 8, 16, ... below M, then M."""
    return [m for m in (2**k for k in range(2, 31)) if m < n_subsets] + [n_subsets]


def convergence(
    f: torch.Tensor,
    g: Mapping[str, torch.Tensor],
    points: Sequence[int],
    config: LDSConfig,
    sizes: Sequence[int] | None = None,
) -> pd.DataFrame:
    """LDS measured on the first M' subsets for each M' in ``sizes`` (default
    ``convergence_grid(M)``): columns ``n_subsets``, ``method``, ``mean``, ``low``, ``high``,
    ``width`` (= high − low). No retraining: f and g (…, n_points, M) are cut to M' columns."""
    frames, n_subsets = [], f.shape[-1]
    for size in sizes or convergence_grid(n_subsets):
        if not 3 <= size <= n_subsets:
            raise ValueError(f"sizes has {size}; each must be in [3, {n_subsets}]")
        cut = {m: v[..., :size] for m, v in g.items()}
        summary = summarize(f[..., :size], cut, points, config)[1]
        frames.append(summary.assign(n_subsets=size))
    out = pd.concat(frames, ignore_index=True)
    out["width"] = out["high"] - out["low"]
    return out[["n_subsets", "method", "mean", "low", "high", "width"]]


def typical_point(per_point: pd.DataFrame, method: str = "tracin-we") -> int:
    """The test point whose LDS under ``method`` is closest to that method's median (of the first
    trained model's, where there are several)."""
    rows = per_point[per_point["method"] == method]
    if "model" in rows.columns:
        rows = rows[rows["model"] == rows["model"].iloc[0]]
    if rows.empty:
        raise ValueError(
            f"method={method!r} is not in the table; allowed: {sorted(set(per_point['method']))}"
        )
    return int(rows.loc[(rows["LDS"] - rows["LDS"].median()).abs().idxmin(), "point"])
