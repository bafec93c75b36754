"""Notebook 09's study: which pretraining domains and texts a fine-tuned subtask draws on.

Setting. Fine-tuning is restricted to a subtask of named classes (``target_classes``, e.g. World
vs Sci/Tech; ``class_subset``: every split keeps the texts of those classes, labels unchanged, so
the classifier keeps the task's head and p(true class) its usual meaning). MLM pretraining
(``training.pretrain``) runs on ``n_corpus`` texts of *every* domain that fine-tuning leaves
unused. Three questions, all with common random numbers (one ``seed``: model inits, MLM masks,
batch order and dropout are shared by every run compared):

1. **Domains by DoGE** (``tracin_we.experiments.doge``): do the weights go to the subtask's domains?
   ``compare_mixtures`` pretrains on ``n_mixture`` texts drawn with DoGE's average weights and
   with uniform weights (the same number of texts and steps: ``loop.fit`` with ``keep``),
   fine-tunes both, and compares validation loss and accuracy.
2. **Domains by influence**: multi-stage TracIn-WE (``influence.multistage``) summed by
   pretraining domain × test class (``by_domain``).
3. **Texts by influence** (``counterfactual``): for each of ``n_test_points`` test points z′,
   remove the top-``k`` pretraining texts by multi-stage TracIn-WE (proponents) or ``k`` random
   ones (the control), re-pretrain and re-fine-tune, and record Δp = p(true class | removed) −
   p(true class | all) of z′. Removing proponents should lower p: Δp < 0, below random's.
   ``counterfactual_summary``: means with 95% bootstrap CIs over test points and the paired
   difference (``stats.paired_bootstrap``).

Re-pretraining and re-fine-tuning are not cached (each is a few seconds at the notebook's sizes);
the full-corpus baseline is made by the same code path as the counterfactuals.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from datasets import DatasetDict
from torch import nn
from tqdm.auto import tqdm

from tracin_we.core.data import balanced_indices
from tracin_we.core.inputs import Tensors, model_inputs
from tracin_we.core.params import check_types, from_params
from tracin_we.core.persistence import Folder, cache_dir, config_key, tensor_digest
from tracin_we.core.result_folders import cache_folder
from tracin_we.core.stats import paired_bootstrap
from tracin_we.core.tasks import TASKS
from tracin_we.experiments.doge import DogeResult, DogeSettings, mixture_keep, run_doge
from tracin_we.training.loop import fit, predict_proba
from tracin_we.training.model_init import new_model
from tracin_we.training.pretrain import (
    PretrainConfig,
    PretrainResult,
    load_encoder,
    mlm_loss,
    mlm_tensors,
    new_mlm_model,
)
from tracin_we.training.recipe import TrainConfig
from tracin_we.training.train import resolved_config

METHODS = ("multistage-tracin-we", "random")


@dataclass(frozen=True)
class PretrainStudyConfig:
    """Fine-tuning (``train``: data, BERT-tiny recipe), pretraining sizes, DoGE and the
    counterfactual check. Frozen and validated before anything trains."""

    train: TrainConfig = field(default_factory=TrainConfig)
    doge: DogeSettings = field(default_factory=DogeSettings)
    target_classes: tuple[str, ...] = ("World", "Sci/Tech")  # the fine-tuning subtask
    n_corpus: int = 400  # pretraining texts (domain-stratified)
    pretrain_epochs: int = 2
    pretrain_lr: float = 1e-3  # Adam, as BERT
    n_mixture: int = 200  # texts of each pretraining run that compares domain weights
    n_test_points: int = 4  # counterfactual test points, balanced over the subtask's classes
    k: int = 20  # pretraining texts removed per test point
    point_seed: int = 0
    n_bootstrap: int = 1000

    def __post_init__(self) -> None:
        check_types(self)
        object.__setattr__(self, "target_classes", tuple(self.target_classes))
        names = TASKS[self.train.data.dataset].label_names
        unknown = [c for c in self.target_classes if c not in names]
        if unknown or len(set(self.target_classes)) < 2:
            raise ValueError(
                f"target_classes={list(self.target_classes)}: give at least 2 distinct class "
                f"names of {self.train.data.dataset}: {list(names)}"
            )
        if self.train.model != "bert-tiny" or self.train.init_from is not None:
            raise ValueError(
                f"model={self.train.model!r}, init_from={self.train.init_from!r}: the study "
                "fine-tunes bert-tiny from its own pretraining runs (model='bert-tiny', "
                "init_from=None)"
            )
        for name in ("n_corpus", "pretrain_epochs", "n_mixture", "n_test_points", "k"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be a positive integer")
        if self.n_test_points > self.train.data.n_test:
            raise ValueError(
                f"n_test_points={self.n_test_points} must be <= n_test={self.train.data.n_test}"
            )
        if self.n_bootstrap < 1:
            raise ValueError(f"n_bootstrap={self.n_bootstrap} must be a positive integer")
        if not self.pretrain_lr > 0:
            raise ValueError(f"pretrain_lr={self.pretrain_lr} must be > 0")
        if self.n_mixture > self.n_corpus:
            raise ValueError(f"n_mixture={self.n_mixture} must be <= n_corpus={self.n_corpus}")
        if self.k >= self.n_corpus:
            raise ValueError(f"k={self.k} must be < n_corpus={self.n_corpus}")
        _ = self.pretrain  # validated now, not after fine-tuning (a tokenizer with no mask token)

    @property
    def pretrain(self) -> PretrainConfig:
        """The MLM pretraining run: the fine-tuning data config (its splits are excluded from
        the corpus), Adam, the fine-tuning batch size and seed, a checkpoint per epoch."""
        return PretrainConfig(
            data=self.train.data,
            n_corpus=self.n_corpus,
            epochs=self.pretrain_epochs,
            checkpoint_epochs=tuple(range(1, self.pretrain_epochs + 1)),
            lr=self.pretrain_lr,
            optimizer="adam",
            momentum=0.9,
            batch_size=self.train.batch_size,
            seed=self.train.seed,
        )

    def finetune_from(self, run_dir: str | Path) -> TrainConfig:
        """The fine-tuning config started from the pretraining run in ``run_dir``."""
        return replace(self.train, init_from=str(run_dir))

    @classmethod
    def from_params(cls, **params) -> PretrainStudyConfig:
        return from_params(cls, params)


def class_subset(splits: DatasetDict, classes: Sequence[str], label_names: Sequence[str]):
    """``splits`` with only the texts whose label is one of the named ``classes`` (labels kept)."""
    ids = {label_names.index(c) for c in classes}
    return DatasetDict({k: s.filter(lambda row: row["label"] in ids) for k, s in splits.items()})


def finetune(
    state: dict[str, torch.Tensor] | None, config: TrainConfig, train: Tensors, device: str = "cpu"
) -> nn.Module:
    """BERT-tiny fine-tuned with ``config``'s recipe on ``train``, its encoder from the
    ``MaskedLM`` ``state`` (``pretrain.load_encoder``; None: random init), head seeded."""
    model, _ = new_model(replace(config, pretrained=False))  # the tokenizer's vocabulary
    if state is not None:
        load_encoder(model, state)
    return fit(model, train, config, device=device, progress=False)


def repretrain(
    pre: PretrainResult, keep: torch.Tensor | None, device: str = "cpu"
) -> dict[str, torch.Tensor]:
    """The ``MaskedLM`` weights after pretraining ``pre.config`` on the corpus rows ``keep``
    (None: all), same seed, masks and batch order as every other such run."""
    model = new_mlm_model(pre.config.seed, pre.config.data)
    fit(model, pre.tensors, pre.config, keep=keep, device=device, progress=False, loss_fn=mlm_loss)
    return model.state_dict()


def evaluate(model: nn.Module, data: Tensors, device: str = "cpu") -> dict[str, float]:
    """Mean cross-entropy and accuracy of ``model`` on ``data`` (labels (N,))."""
    proba = predict_proba(model, data, device=device)
    labels = data["labels"]
    loss = F.nll_loss(proba.clamp_min(1e-12).log(), labels).item()
    return {"loss": loss, "accuracy": (proba.argmax(-1) == labels).float().mean().item()}


def compare_mixtures(
    config: PretrainStudyConfig,
    pre: PretrainResult,
    mixtures: dict[str, dict[str, float]],
    data: dict[str, Tensors],
    device: str = "cpu",
) -> pd.DataFrame:
    """Per mixture name → domain weights: pretrain on ``n_mixture`` texts drawn with those
    shares (``doge.mixture_keep``, same draw seed), fine-tune on ``data["train"]``, evaluate on
    ``data["validation"]`` and ``data["test"]``. One row per mixture."""
    domains = list(pre.corpus["domain"])
    rows = []
    for name, weights in mixtures.items():
        keep = mixture_keep(domains, weights, config.n_mixture, config.train.seed)
        model = finetune(repretrain(pre, keep, device), config.train, data["train"], device)
        val, test = (
            evaluate(model, data["validation"], device),
            evaluate(model, data["test"], device),
        )
        kept = pd.Series(np.asarray(domains)[keep.numpy()]).value_counts().to_dict()
        rows.append(
            {
                "mixture": name,
                "val_loss": val["loss"],
                "val_accuracy": val["accuracy"],
                "test_loss": test["loss"],
                "test_accuracy": test["accuracy"],
                "texts_by_domain": {d: int(kept.get(d, 0)) for d in sorted(set(domains))},
            }
        )
    return pd.DataFrame.from_records(rows)


def pick_points(config: PretrainStudyConfig, labels: torch.Tensor) -> list[int]:
    """Rows of the subtask's test split: ``n_test_points`` balanced over its classes."""
    return balanced_indices(
        labels.numpy(), config.n_test_points, config.point_seed, name="n_test_points"
    )


def counterfactual(
    config: PretrainStudyConfig,
    pre: PretrainResult,
    scores: torch.Tensor,
    data: dict[str, Tensors],
    points: Sequence[int],
    device: str = "cpu",
    progress: bool = False,
    cache: str | Path | None = None,
) -> pd.DataFrame:
    """Δp(true class) per test point (rows ``points`` of ``data["test"]``) and method (module
    docstring, 3). ``scores``: (n_test, n_corpus) multi-stage TracIn-WE on ``data["test"]``.
    Columns: ``point``, ``method``, ``p_full``, ``p_removed``, ``delta``.

    Each (re-pretrain, fine-tune) run's p(true class) on ``data["test"]`` is cached under
    ``<cache>/pretrain_counterfactual/<key>/<digest of the kept rows>.pt``
    (``counterfactual_store``), so an interrupted study resumes where it stopped and a rerun
    trains nothing."""
    n = len(pre.tensors["input_ids"])
    if scores.shape != (len(data["test"]["labels"]), n):
        raise ValueError(f"scores has shape {tuple(scores.shape)}; expected (n_test, {n})")
    test, labels = data["test"], data["test"]["labels"]
    store = counterfactual_store(config, pre, data, cache)

    def p_true(keep: torch.Tensor) -> torch.Tensor:
        name = f"{tensor_digest(keep)}.pt"
        saved = store.load_torch(name, recompute=True)
        if saved is None:
            model = finetune(repretrain(pre, keep, device), config.train, data["train"], device)
            saved = predict_proba(model, test, device=device)[torch.arange(len(labels)), labels]
            store.save_torch(name, saved)
        return saved

    full = p_true(torch.ones(n, dtype=torch.bool))
    rows = []
    for point in tqdm(points, "counterfactual test points", disable=not progress):
        removed = {
            "multistage-tracin-we": torch.topk(scores[point], config.k).indices,
            "random": torch.as_tensor(
                np.random.default_rng([config.point_seed, point]).choice(n, config.k, False)
            ),
        }
        for method, index in removed.items():
            keep = torch.ones(n, dtype=torch.bool)
            keep[index] = False
            p = float(p_true(keep)[point])
            rows.append(
                {
                    "point": int(point),
                    "method": method,
                    "p_full": float(full[point]),
                    "p_removed": p,
                    "delta": p - float(full[point]),
                }
            )
    return pd.DataFrame.from_records(rows)


def counterfactual_store(
    config: PretrainStudyConfig,
    pre: PretrainResult,
    data: dict[str, Tensors],
    cache: str | Path | None = None,
) -> Folder:
    """The cache folder of ``counterfactual``'s runs. Its key hashes the fine-tuning recipe, the
    pretraining run (its final checkpoint's sha256), the fine-tuning and test tensors and the
    torch thread count (``train.resolved_config``), so no other study's runs are served."""
    init = f"mlm:{pre.final.sha256}"
    digest = tensor_digest(pre.tensors, data["train"], data["test"])
    resolved = resolved_config(config.train, init, digest, torch.get_num_threads())
    path = cache_dir(cache) / "pretrain_counterfactual" / config_key(resolved)
    return cache_folder(path, resolved)


def counterfactual_summary(
    table: pd.DataFrame, n_bootstrap: int = 1000
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Mean Δp per method with a 95% bootstrap CI over test points, and the paired difference
    multi-stage TracIn-WE − random (lower is better: removing proponents should lower p)."""
    values = table.pivot(index="point", columns="method", values="delta")[list(METHODS)]
    return paired_bootstrap(
        values, higher_is_better=False, references=[METHODS[0]], n_bootstrap=n_bootstrap
    )


def subtask_tensors(splits: DatasetDict) -> dict[str, Tensors]:
    """``model_inputs`` of every split."""
    return {k: model_inputs(s) for k, s in splits.items()}


def doge_weights(
    config: PretrainStudyConfig,
    pre: PretrainResult,
    splits: DatasetDict,
    device: str = "cpu",
    progress: bool = False,
) -> DogeResult:
    """DoGE (``experiments.doge``) from a fresh ``MaskedLM`` (the pretraining run's seed and
    optimizer) over ``pre``'s corpus and domains, the target being the MLM loss on the subtask's
    train texts ``splits["train"]`` (masked as the corpus)."""
    target = mlm_tensors(splits["train"], pre.config)
    return run_doge(
        new_mlm_model(pre.config.seed, pre.config.data),
        pre.tensors,
        list(pre.corpus["domain"]),
        target,
        pre.config,
        config.doge,
        mlm_loss,
        device,
        progress,
    )
