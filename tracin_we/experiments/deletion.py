"""Case deletion (v1 §2.2, §5): one loop for every influence method, the method given as data.

For a test point z' of ground-truth class c, a method I, a size k and a direction, delete the
top-k proponents (DEL+) or opponents (DEL−) of z' under I (``influence.top_k`` on I's score row),
retrain with exactly the original recipe for each seed s, and read p_c(z') again:

    DEL(z', k, I) = mean_s p_c(z'; θ_s without the k) − mean_s p_c(z'; θ_s)

with the baseline θ_s trained by the same recipe and seed on the full set (common random
numbers: a retrain and its baseline share init and batch order, ``loop.fit``). That is the paper's
protocol: one trained model (the recipe's seed) is explained, and its deletion sets are retrained
at every seed. With ``model_per_seed`` each seed s instead trains its own model θ_s, explains it,
and retrains θ_s's recipe without θ_s's deletion sets, so DEL = p_c(θ_s without the k) −
p_c(θ_s): the seeds are then replicates of the whole study, and the CIs resample the trained
models as well as the test points (``stats.crossed_means``). Scores follow
``influence.scores``: positive = proponent. So DEL+ should be negative and DEL− positive for a
good method. AUC-DEL± = mean over the k grid, then mean over test points, with a bootstrap CI
over test points. ``random`` (random scores) is the deletion control.

Every retrain goes through ``retrain.retrain_cached``: a model is trained once per (training
config, removed set, seed) and reused by reruns, other methods and other k; an interrupted sweep
resumes.

This module runs one sweep, from its config to its saved folder (plan, retrains, result); its
tables are ``deletion_tables``, the paired statistics ``stats``, the plots ``reporting``, the
retrains ``retrain``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

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
from tracin_we.core.stats import DELETION_METRICS
from tracin_we.experiments.common import (
    evaluation_inputs,
    explained_models,
    identity_rows,
    model_score_rows,
    result_identity,
)
from tracin_we.experiments.deletion_tables import auc_del, crn_variance, tidy_table
from tracin_we.influence.options import parse_options
from tracin_we.training.recipe import TrainConfig
from tracin_we.training.retrain import RetrainJob, check_backend, retrain_cached

DIRECTIONS = tuple(DELETION_METRICS)  # ("proponents", "opponents"): DEL+ and DEL−


@dataclass(frozen=True)
class DeletionConfig:
    """A case-deletion sweep. Defaults: the paper's AG News protocol (v1 §5)."""

    train: TrainConfig = field(default_factory=TrainConfig)  # the original recipe, retrained
    methods: tuple[str, ...] = PAPER_METHODS  # v1 Table 3's methods; random: the control
    ks: tuple[int, ...] = (10, 20, 30, 40, 50, 60, 70, 80, 90, 100)  # paper: 10, 20, ..., 100
    n_test_points: int = 100  # balanced over classes; paper, AG News: 100 (25 per class)
    seeds: tuple[int, ...] = tuple(range(10))  # paper: 10 retrains per k
    # True: each seed trains, explains and retrains its own model (CIs over models and points);
    # False: the paper's protocol, one model (train.seed) explained, retrained at every seed.
    model_per_seed: bool = False
    directions: tuple[str, ...] = DIRECTIONS
    point_seed: int = 0  # which test points are drawn
    # Options of influence.scores per method, e.g. {"tracin-we-topk": {"top_tokens": 10}}.
    method_options: dict[str, dict] = field(default_factory=dict)
    backend: str = "joblib"  # retrain.BACKENDS; joblib, one torch thread per core: fastest on a CPU
    dask_scheduler: str | None = None  # backend="dask": its address (else $DASK_SCHEDULER_ADDRESS)
    n_bootstrap: int = 1000  # resamples of the test points for the CIs
    ci: float = 0.95
    bootstrap_seed: int = 0

    def __post_init__(self) -> None:
        check_types(self)
        for name in ("methods", "ks", "seeds", "directions"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        self._check_choices("methods", self.methods, influence.METHODS)
        self._check_choices("directions", self.directions, DIRECTIONS)
        n_train = self.train.data.n_train
        bad = [k for k in self.ks if not (isinstance(k, int) and 0 < k < n_train)]
        if not self.ks or bad or len(set(self.ks)) != len(self.ks):
            raise ValueError(
                f"ks={list(self.ks)}: each k must be a distinct integer with 0 < k < "
                f"n_train={n_train}"
            )
        if not 0 < self.n_test_points <= self.train.data.n_test:
            raise ValueError(
                f"n_test_points={self.n_test_points} must be in [1, n_test="
                f"{self.train.data.n_test}]"
            )
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds={list(self.seeds)} must be a non-empty list of distinct ints")
        check_backend(self.backend, self.dask_scheduler)
        if self.n_bootstrap < 1:
            raise ValueError(f"n_bootstrap={self.n_bootstrap} must be a positive integer")
        if not 0 < self.ci < 1:
            raise ValueError(f"ci={self.ci} must be in (0, 1)")
        extra = sorted(set(self.method_options) - set(self.methods))
        if extra:
            raise ValueError(f"method_options has {extra}, which are not in methods")
        for method, options in self.method_options.items():
            parse_options(method, options)  # unknown options → ValueError naming them

    @classmethod
    def from_params(cls, **params) -> DeletionConfig:
        """Build from flat notebook/preset parameters: this class's own fields, the rest going to
        its ``TrainConfig`` (``tracin_we.core.params``); unknown names are an error."""
        return from_params(cls, params)

    @property
    def n_retrains(self) -> int:
        """Retrains the sweep needs at most: per seed, its baseline and one per (test point,
        method, direction, k); fewer when deletion sets coincide or are cached."""
        per_seed = self.n_test_points * len(self.methods) * len(self.directions) * len(self.ks)
        return len(self.seeds) * (1 + per_seed)

    @staticmethod
    def _check_choices(name: str, values: tuple, allowed: tuple) -> None:
        unknown = [v for v in values if v not in allowed]
        if not values or unknown or len(set(values)) != len(values):
            raise ValueError(
                f"{name}={list(values)}: give distinct values among {list(allowed)}"
                + (f"; unknown: {unknown}" if unknown else "")
            )


@dataclass
class DeletionResult:
    """``table``: one row per (point, method, direction, k, seed) with ``p`` = p_c(z') retrained,
    ``baseline`` = mean_s p_c(z') with nothing removed, ``baseline_seed`` = that seed's baseline
    and ``DEL`` = p − baseline (its mean over seeds is DEL(z', k, I)). ``summary``: AUC-DEL± per
    method with CIs. ``crn``: how much common random numbers narrow them (``crn_variance``)."""

    table: pd.DataFrame
    summary: pd.DataFrame
    crn: pd.DataFrame
    points: list[int]  # indices into the test split
    plan: pd.DataFrame  # (position in points, method, direction, k, model) → removed indices
    out_dir: Path
    n_trained: int = 0  # retrains run by this call
    n_reused: int = 0  # retrains read from the cache (or shared with another row)

    def metrics(self, differences: pd.DataFrame | None = None) -> dict:
        """What notebook 03 records: AUC-DEL± per method, the sweep's size (its points, retrain
        seeds and the seeds of the models it explains), the median CRN standard-error ratio (None
        with one seed) and, given ``stats.deletion_differences``, TracIn-WE − TracIn-Last per
        metric (None when either was not run)."""
        summary = self.summary.set_index("method")
        several_seeds = self.table["seed"].nunique() > 1
        return {
            "n_points": int(summary["n_points"].iloc[0]),
            "seeds": sorted(int(s) for s in self.table["seed"].unique()),
            "models": sorted(int(s) for s in self.table["model"].unique()),
            "n_trained": self.n_trained,
            "auc_del_plus": {m: float(v) for m, v in summary["DEL+"].items()},
            "auc_del_minus": {m: float(v) for m, v in summary["DEL-"].items()},
            "crn_se_ratio_median": float(self.crn["se_ratio"].median()) if several_seeds else None,
            "we_minus_last": _we_minus_last(differences),
        }


def _we_minus_last(differences: pd.DataFrame | None) -> dict | None:
    """TracIn-WE − TracIn-Last per metric from paired differences; None without that pair."""
    if differences is None or differences.empty:
        return None
    pair = differences[
        (differences["reference"] == "tracin-we") & (differences["method"] == "tracin-last")
    ]
    fields = ("difference", "low", "high", "share_better")
    return {
        row.metric: {f: float(getattr(row, f)) for f in fields} for row in pair.itertuples()
    } or None


def run_deletion(
    config: DeletionConfig,
    splits: DatasetDict | None = None,
    scores: Mapping[str, torch.Tensor] | None = None,
    cache: str | os.PathLike | None = None,
    out_dir: str | os.PathLike | None = None,
    overwrite: bool = False,
    device: str = "cpu",
    client=None,
    progress: bool = True,
) -> DeletionResult:
    """Run the sweep of ``config`` and save ``deletion.csv``, ``auc_del.csv``, ``crn.csv`` and
    ``deletion_sets.csv`` beside ``config.json`` in ``out_dir`` (default
    ``<cache>/deletion/<key>``).

    ``scores``: precomputed score matrices (n_test_split, n_train) by method, rows in test-split
    order; other methods are computed by ``influence.scores`` on ``train(config.train)``'s
    checkpoints (with ``model_per_seed``, on each seed's model: then ``scores`` cannot be given).
    Everything is validated before the first retrain.
    """
    check_out_dir(out_dir)  # a folder of foreign files: refused before any score or retrain
    models = explained_models(config, scores)
    splits, train_t, test_t, points = evaluation_inputs(config, splits)
    n_train = len(train_t["labels"])
    if max(config.ks) >= n_train:
        raise ValueError(f"ks={list(config.ks)}: each k must be < the {n_train} training examples")
    inputs = (splits, train_t, test_t, points, scores or {}, cache, device)
    by_model = model_score_rows(config, models, *inputs)
    plans = [deletion_plan(config, rows).assign(model=m) for m, rows in by_model.items()]
    resolved = result_identity(config, splits, identity_rows(by_model))
    out_dir = claim_result_folder(resolved, "deletion", "deletion sweep", cache, out_dir, overwrite)
    plan = pd.concat(plans, ignore_index=True)
    runs = retrain_runs(config, plan)
    jobs = [RetrainJob(s, ()) for s in config.seeds] + [
        RetrainJob(s, removed) for s, removed in zip(runs["seed"], runs["removed"], strict=True)
    ]
    retrained = retrain_cached(
        config.train,
        jobs,
        train_t,
        test_t,
        cache=cache,
        backend=config.backend,
        client=client if client is not None else config.dask_scheduler,
        device=device,
        progress=progress,
    )
    table = tidy_table(config, runs, points, test_t["labels"], retrained.probabilities)
    result = DeletionResult(
        table,
        auc_del(table, config),
        crn_variance(table, config),
        points,
        plan,
        out_dir,
        retrained.n_trained,
        retrained.n_reused,
    )
    _save(result)
    return result


def retrain_runs(config: DeletionConfig, plan: pd.DataFrame) -> pd.DataFrame:
    """One row per retrain, in job order: each plan row at every seed (the paper's protocol), or
    at its own model's seed (``model_per_seed``); a ``seed`` column is added."""
    if config.model_per_seed:
        return plan.assign(seed=plan["model"])
    runs = plan.loc[plan.index.repeat(len(config.seeds))].reset_index(drop=True)
    return runs.assign(seed=list(config.seeds) * len(plan))


def deletion_plan(config: DeletionConfig, rows: Mapping[str, torch.Tensor]) -> pd.DataFrame:
    """One row per (point position, method, direction, k) with ``removed``: the indices of
    ``influence.top_k(rows[method], k, proponents=direction == "proponents")``."""
    records = []
    for method in config.methods:
        for direction in config.directions:
            for k in config.ks:
                top = influence.top_k(rows[method], k, proponents=direction == "proponents")
                records += [
                    {
                        "position": i,
                        "method": method,
                        "direction": direction,
                        "k": k,
                        "removed": tuple(sorted(idx.tolist())),
                    }
                    for i, idx in enumerate(top.indices)
                ]
    return pd.DataFrame.from_records(records)


DELETION_TABLES = ("deletion", "auc_del", "crn", "deletion_sets")  # what a sweep's folder holds


def _save(result: DeletionResult) -> None:
    sets = result.plan.assign(
        point=[result.points[i] for i in result.plan["position"]],
        removed=result.plan["removed"].map(lambda r: " ".join(map(str, r))),
    )
    save_tables(
        result.out_dir,
        {
            "deletion": result.table,
            "auc_del": result.summary,
            "crn": result.crn,
            "deletion_sets": sets.drop(columns="position"),
        },
    )


def load_deletion(out_dir: str | os.PathLike) -> dict[str, pd.DataFrame | dict]:
    """A saved sweep, for plotting without retraining: ``config`` and the tables ``deletion``,
    ``auc_del``, ``crn`` and ``deletion_sets`` (``removed``: space-separated training indices).
    Every file is verified; a damaged one is refused naming it."""
    remedy = "rerun run_deletion with this config (retrains come from the cache) to rewrite it"
    return load_tables(out_dir, DELETION_TABLES, "deletion sweep", remedy)
