"""Linear datamodeling score (LDS): do a method's scores predict what retraining on subsets does?

The evaluation of TRAK (Park et al., 2023) that dattri, Kronfluence and Bergson also use; the
paper's own evaluation is case deletion (arXiv 2202.11844 v1 §5, ``deletion``). Draw M random
subsets S_1..S_M of the training set, each keeping ``round(α·n)`` examples; retrain with the
original recipe on each (for each retrain seed s, ``RetrainJob(s, removed = complement of S_m)``);
then for test point z_j of ground-truth class c:

    f_j(S_m) = mean_s [log p_c − log(1 − p_c)](z_j; θ_s trained on S_m)   (the class margin)
    g_j(S_m) = Σ_{i ∈ S_m} score[j, i]                                   (the method's prediction)
    LDS_j    = Spearman ρ over m = 1..M between f_j(S_m) and g_j(S_m)

The margin is the logit of p_c (TRAK's multi-class output), with 1 − p_c taken as Σ_{c'≠c} p_c'
(accurate where 1 − p_c would round to 0); Spearman is rank-based, so any increasing function
of p_c gives the same LDS. Scores follow ``influence.scores``: positive = proponent, so a good
method has LDS near 1 and ``random`` near 0. A constant f_j or g_j (a score row of zeros) ranks
nothing: its ρ is set to 0 and counted in ``constant``.

The report: the mean LDS per method over the test points with a percentile bootstrap CI, and
every method's paired difference against TracIn-WE and TracIn-Last from the same resamples
(``stats.compare``). Every LDS_j is measured on the same M subsets, so the bootstrap resamples
the subsets as well as the test points (``stats.two_way_means``); resampling test points alone
(``resample_subsets=False``) holds the subsets fixed and, on the default CNN run, gave CIs 2.6×
narrower than the two-way ones, while the first and second 32 of 64 subsets disagreed by up to
0.15 in mean LDS. The first M' subsets of a draw of M are the draw of M' (one generator), so
``convergence`` reads LDS against M' off the same retrains, which go through
``retrain.retrain_cached`` (cached, resumable, parallel; shared with case deletion).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from datasets import DatasetDict

from tracin_we import influence
from tracin_we.core.paper import PAPER_METHODS
from tracin_we.core.params import check_types, from_params
from tracin_we.core.result_folders import (
    check_out_dir,
    claim_result_folder,
    load_tables,
    save_tables,
)
from tracin_we.core.stats import REFERENCES
from tracin_we.experiments.common import (
    evaluation_inputs,
    explained_models,
    identity_rows,
    model_score_rows,
    result_identity,
)
from tracin_we.experiments.lds_tables import (
    convergence,
    predictions,
    subset_outputs,
    summarize,
)
from tracin_we.influence.options import parse_options
from tracin_we.training.recipe import TrainConfig
from tracin_we.training.retrain import RetrainJob, check_backend, retrain_cached


@dataclass(frozen=True)
class LDSConfig:
    """An LDS evaluation: M subsets of fraction α, retrained with ``train``'s recipe."""

    train: TrainConfig = field(default_factory=TrainConfig)  # the original recipe, retrained
    methods: tuple[str, ...] = PAPER_METHODS  # influence.METHODS, in the order reported
    # Options of influence.scores per method, e.g. {"tracin-layer": {"params": "conv1"}}.
    method_options: dict[str, dict] = field(default_factory=dict)
    n_subsets: int = 64  # M: retrained subsets (× len(seeds) retrains)
    alpha: float = 0.5  # share of the training set each subset keeps (TRAK: 0.5)
    subset_seed: int = 0  # which subsets are drawn
    seeds: tuple[int, ...] = (0,)  # retrain seeds per subset, f averaged over them; one seed:
    # every subset shares init and batch order (common random numbers)
    # True: each seed trains and explains its own model, whose f is its own seed's retrains;
    # LDS per (model, point), CIs over models, points and subsets.
    model_per_seed: bool = False
    n_test_points: int = 100  # balanced over classes
    point_seed: int = 0  # which test points are drawn
    backend: str = "joblib"  # retrain.BACKENDS
    dask_scheduler: str | None = None  # backend="dask": its address (else $DASK_SCHEDULER_ADDRESS)
    n_bootstrap: int = 1000  # resamples for the CIs
    # Resample the subsets too (two_way_means); False: test points only, given these subsets.
    resample_subsets: bool = True
    ci: float = 0.95
    bootstrap_seed: int = 0

    def __post_init__(self) -> None:
        check_types(self)
        object.__setattr__(self, "methods", tuple(self.methods))
        object.__setattr__(self, "seeds", tuple(self.seeds))
        unknown = [m for m in self.methods if m not in influence.METHODS]
        if not self.methods or unknown or len(set(self.methods)) != len(self.methods):
            raise ValueError(
                f"methods={list(self.methods)}: give distinct values among "
                f"{list(influence.METHODS)}" + (f"; unknown: {unknown}" if unknown else "")
            )
        extra = sorted(set(self.method_options) - set(self.methods))
        if extra:
            raise ValueError(f"method_options has {extra}, which are not in methods")
        for method, options in self.method_options.items():
            parse_options(method, options)  # unknown options → ValueError naming them
        if not (isinstance(self.n_subsets, int) and self.n_subsets >= 3):
            raise ValueError(f"n_subsets={self.n_subsets} must be an integer >= 3 (Spearman ρ)")
        n_train = self.train.data.n_train
        if not (0 < self.alpha < 1 and 1 <= round(self.alpha * n_train) < n_train):
            raise ValueError(
                f"alpha={self.alpha} must be in (0, 1) with 1 <= round(alpha * n_train) < "
                f"n_train={n_train}"
            )
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds={list(self.seeds)} must be a non-empty list of distinct ints")
        if not 0 < self.n_test_points <= self.train.data.n_test:
            raise ValueError(
                f"n_test_points={self.n_test_points} must be in [1, n_test="
                f"{self.train.data.n_test}]"
            )
        check_backend(self.backend, self.dask_scheduler)
        if self.n_bootstrap < 1:
            raise ValueError(f"n_bootstrap={self.n_bootstrap} must be a positive integer")
        if not 0 < self.ci < 1:
            raise ValueError(f"ci={self.ci} must be in (0, 1)")

    @property
    def n_retrains(self) -> int:
        """Retrains the evaluation needs at most: one per (subset, seed); fewer when cached."""
        return self.n_subsets * len(self.seeds)

    @property
    def references(self) -> tuple[str, ...]:
        """The methods every other is compared with: TracIn-WE and TracIn-Last, where run."""
        return tuple(r for r in REFERENCES if r in self.methods)

    @classmethod
    def from_params(cls, **params) -> LDSConfig:
        """Build from flat notebook/preset parameters: this class's own fields, the rest going to
        ``TrainConfig.from_params`` (unknown names are an error there)."""
        return from_params(cls, params)


def draw_subsets(n_train: int, n_subsets: int, alpha: float, seed: int) -> torch.Tensor:
    """Keep masks (n_subsets, n_train) bool, each with ``round(alpha · n_train)`` True, drawn in
    turn from ``numpy.random.default_rng(seed)``: the first M' rows do not depend on M."""
    size = round(alpha * n_train)
    if not 1 <= size < n_train:
        raise ValueError(f"alpha={alpha} keeps {size} of {n_train}; keep between 1 and n - 1")
    rng = np.random.default_rng(seed)
    masks = torch.zeros(n_subsets, n_train, dtype=torch.bool)
    for m in range(n_subsets):
        masks[m, torch.from_numpy(rng.choice(n_train, size=size, replace=False))] = True
    return masks


def subset_jobs(masks: torch.Tensor, seeds: Sequence[int]) -> list[RetrainJob]:
    """One retrain per (subset, seed), subset-major: ``RetrainJob(seed, removed = ~mask)``."""
    removed = [tuple(torch.nonzero(~mask).flatten().tolist()) for mask in masks]
    return [RetrainJob(int(s), r) for r in removed for s in seeds]


@dataclass
class LDSResult:
    """``per_point``: LDS per (point, method); ``summary``: mean LDS per method with CIs;
    ``differences``: paired differences against TracIn-WE / TracIn-Last; ``convergence``: LDS
    against M'; ``outputs``: per (point, subset) f and each method's g (one column each)."""

    per_point: pd.DataFrame
    summary: pd.DataFrame
    differences: pd.DataFrame
    convergence: pd.DataFrame
    outputs: pd.DataFrame
    masks: torch.Tensor  # (M, n_train) bool, the subsets kept
    points: list[int]  # indices into the test split
    out_dir: Path
    n_trained: int = 0  # retrains run by this call
    n_reused: int = 0  # retrains read from the cache

    def metrics(self) -> dict:
        """What notebook 08 records: the mean LDS per method with its CI, and TracIn-WE − each
        method with its verdict (empty when TracIn-WE was not run)."""
        summary = self.summary.set_index("method")
        versus = self.differences[self.differences["reference"] == "tracin-we"].set_index("method")
        return {
            "n_points": int(summary["n_points"].iloc[0]),
            "n_models": int(self.per_point["model"].nunique()) if "model" in self.per_point else 1,
            "n_subsets": int(self.masks.shape[0]),
            "n_trained": self.n_trained,
            "lds": {m: float(v) for m, v in summary["mean"].items()},
            "lds_low": {m: float(v) for m, v in summary["low"].items()},
            "lds_high": {m: float(v) for m, v in summary["high"].items()},
            "tracin_we_minus": {m: float(v) for m, v in versus["difference"].items()},
            "tracin_we_verdict": {m: str(v) for m, v in versus["verdict"].items()},
        }


def run_lds(
    config: LDSConfig,
    splits: DatasetDict | None = None,
    scores: Mapping[str, torch.Tensor] | None = None,
    cache: str | os.PathLike | None = None,
    out_dir: str | os.PathLike | None = None,
    overwrite: bool = False,
    device: str = "cpu",
    progress: bool = True,
) -> LDSResult:
    """Score, retrain on the subsets (cached), and save ``lds*.csv`` beside ``config.json`` in
    ``out_dir`` (default ``<cache>/lds/<key>``).

    ``scores``: precomputed score matrices (n_test_split, n_train) by method, rows in test-split
    order; the other methods are scored on ``train(config.train)``'s checkpoints (with
    ``model_per_seed``, on each seed's model: then ``scores`` cannot be given). The retrains
    are ``config.n_subsets × len(config.seeds)`` jobs of ``retrain.retrain_cached``.
    """
    check_out_dir(out_dir)  # a folder of foreign files: refused before any score or retrain
    models = explained_models(config, scores)
    splits, train_t, test_t, points = evaluation_inputs(config, splits)
    n_train = len(train_t["labels"])
    masks = draw_subsets(n_train, config.n_subsets, config.alpha, config.subset_seed)
    inputs = (splits, train_t, test_t, points, scores or {}, cache, device)
    scored = model_score_rows(config, models, *inputs)
    by_model = list(scored.values())
    resolved = result_identity(config, splits, identity_rows(scored))
    out_dir = claim_result_folder(resolved, "lds", "LDS evaluation", cache, out_dir, overwrite)
    retrained = retrain_cached(
        config.train,
        subset_jobs(masks, config.seeds),
        train_t,
        test_t,
        cache=cache,
        backend=config.backend,
        client=config.dask_scheduler,
        device=device,
        progress=progress,
    )
    labels = test_t["labels"]
    per_seed = len(models) > 1  # model_per_seed with one seed is the one-model evaluation
    f = subset_outputs(retrained.probabilities, points, labels, len(config.seeds), per_seed)
    g = {
        method: torch.stack([predictions(found[method], masks) for found in by_model]).squeeze(0)
        if len(models) > 1
        else predictions(by_model[0][method], masks)
        for method in config.methods
    }
    per_point, summary, differences = summarize(f, g, points, config)
    per_point.insert(1, "label", labels.numpy()[per_point["point"]])
    outputs = subset_table(f, g, points, models)
    result = LDSResult(
        per_point,
        summary,
        differences,
        convergence(f, g, points, config),
        outputs,
        masks,
        points,
        out_dir,
        retrained.n_trained,
        retrained.n_reused,
    )
    _save(result)
    return result


def subset_table(
    f: torch.Tensor, g: Mapping[str, torch.Tensor], points: Sequence[int], models: Sequence[int]
) -> pd.DataFrame:
    """One row per (model if several, point, subset): f and each method's g."""
    n_subsets = f.shape[-1]
    grid = {
        "point": np.tile(np.repeat(points, n_subsets), len(models)),
        "subset": np.tile(np.arange(n_subsets), len(points) * len(models)),
    }
    if len(models) > 1:
        grid = {"model": np.repeat(models, len(points) * n_subsets)} | grid
    return pd.DataFrame(
        grid | {"f": f.reshape(-1).numpy()} | {m: v.reshape(-1).numpy() for m, v in g.items()}
    )


LDS_TABLES = (
    "lds",
    "lds_summary",
    "lds_differences",
    "lds_convergence",
    "lds_outputs",
    "lds_subsets",
)


def _save(result: LDSResult) -> None:
    subsets = pd.DataFrame(
        {
            "subset": range(len(result.masks)),
            "kept": [" ".join(map(str, torch.nonzero(m).flatten().tolist())) for m in result.masks],
        }
    )
    frames = (
        result.per_point,
        result.summary,
        result.differences,
        result.convergence,
        result.outputs,
        subsets,
    )
    save_tables(result.out_dir, dict(zip(LDS_TABLES, frames, strict=True)))


def load_lds(out_dir: str | os.PathLike) -> dict[str, pd.DataFrame | dict]:
    """A saved evaluation, for plotting without retraining: ``config`` and the tables ``lds``,
    ``lds_summary``, ``lds_differences``, ``lds_convergence``, ``lds_outputs`` and
    ``lds_subsets`` (``kept``: space-separated training indices)."""
    remedy = "rerun run_lds with this config (retrains come from the cache) to rewrite it"
    return load_tables(out_dir, LDS_TABLES, "LDS evaluation", remedy)
