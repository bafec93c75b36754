"""Noise detection: can influence find mislabelled training examples without any retraining?

The 2025 critique (Vitel & Chhabra, "First is Not Really Better Than Last", ICLR 2026) flips 20% of
the training labels, scores every training example by its influence on clean held-out points (one
score column per layer or method), sorts ascending — mislabelled examples should be opponents — and
counts how many flipped examples sit at the top of that list:

    NDR@p   = |flipped ∩ lowest ⌈p·N⌉| / |flipped|        (the share of the noise found)
    AUC-NDR = ∫₀¹ NDR(p) dp / ∫₀¹ NDR*(p) dp,  NDR*(p) = min(p / r, 1) for a noise rate r.

Several columns are combined by ``aggregate``: ``mean``; ``rank`` (the average rank of a training
example across columns); ``vote`` (−Σ_columns max(0, T − rank), T = round(0.2 N)).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from tracin_we.experiments.deletion import DeletionConfig
from tracin_we.training.recipe import TrainConfig, with_overrides

AGGREGATIONS = ("mean", "rank", "vote")


def ranks(column: torch.Tensor) -> torch.Tensor:
    """0-based ascending ranks (0 = most negative), ties broken by index."""
    order = torch.argsort(column, stable=True)
    out = torch.empty_like(order)
    out[order] = torch.arange(len(column), device=column.device)
    return out


def aggregate(columns: torch.Tensor, how: str) -> torch.Tensor:
    """Combine score columns (N, L) into one score per training example (N,); lower = more
    likely mislabelled, as for a single column."""
    if how not in AGGREGATIONS:
        raise ValueError(f"how={how!r}; allowed: {list(AGGREGATIONS)}")
    if columns.ndim != 2 or columns.shape[0] == 0:
        raise ValueError(f"columns must be (N, L) with N > 0; got {tuple(columns.shape)}")
    if how == "mean":
        return columns.double().mean(1)
    rank_matrix = torch.stack([ranks(c) for c in columns.T], dim=1).double()
    if how == "rank":
        return rank_matrix.mean(1)
    threshold = round(0.2 * columns.shape[0])
    return -(threshold - rank_matrix).clamp_min(0).sum(1)


def ndr_curve(score: torch.Tensor, is_noisy: torch.Tensor) -> np.ndarray:
    """NDR after inspecting the lowest 1, 2, ..., N examples: (N,) shares of the flipped found."""
    noisy = torch.as_tensor(is_noisy, dtype=torch.bool)
    if len(score) != len(noisy):
        raise ValueError(f"score has {len(score)} entries but is_noisy has {len(noisy)}")
    if not noisy.any():
        raise ValueError("is_noisy marks no example; flip some labels (label_noise > 0)")
    found = noisy[torch.argsort(score, stable=True)].double().cumsum(0)
    return (found / noisy.sum()).numpy()


def check_fraction(fraction: float) -> None:
    """NDR's ``fraction`` of the ranking inspected is a number in (0, 1]."""
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)):
        raise ValueError(f"fraction={fraction!r} must be a number in (0, 1]")
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction={fraction} must be in (0, 1]")


def noisy_train_config(config: DeletionConfig, label_noise: float) -> TrainConfig:
    """The recipe of ``config`` trained on labels flipped at rate ``label_noise`` (checked)."""
    return with_overrides(config.train, label_noise=label_noise)


def ndr_at(score: torch.Tensor, is_noisy: torch.Tensor, fraction: float = 0.3) -> float:
    """NDR@fraction: the share of flipped examples among the lowest ⌈fraction·N⌉ scores."""
    check_fraction(fraction)
    curve = ndr_curve(score, is_noisy)
    return float(curve[int(np.ceil(fraction * len(curve))) - 1])


def auc_ndr(score: torch.Tensor, is_noisy: torch.Tensor) -> float:
    """Area under the NDR curve over the inspected fraction, divided by the ideal area."""
    curve = ndr_curve(score, is_noisy)
    n = len(curve)
    ideal = np.minimum(np.arange(1, n + 1) / int(torch.as_tensor(is_noisy).sum()), 1.0)
    return float(curve.sum() / ideal.sum())


def ndr_table(
    columns: dict[str, torch.Tensor], is_noisy: torch.Tensor, fraction: float = 0.3
) -> pd.DataFrame:
    """NDR@``fraction`` and AUC-NDR of every score column (e.g. one per layer) and of the
    ``mean``, ``rank`` and ``vote`` aggregations of all of them (rows ``agg:<how>``)."""
    stacked = torch.stack([torch.as_tensor(c, dtype=torch.float64) for c in columns.values()], 1)
    named = dict(columns) | {f"agg:{how}": aggregate(stacked, how) for how in AGGREGATIONS}
    return pd.DataFrame(
        [
            {
                "column": name,
                f"NDR@{fraction:.0%}": ndr_at(score, is_noisy, fraction),
                "AUC-NDR": auc_ndr(score, is_noisy),
            }
            for name, score in ((n, torch.as_tensor(s)) for n, s in named.items())
        ]
    )
