"""The training recipe: its config, the training loop and the model's predictions.

Recipe: SGD + momentum 0.9 (the paper's, v1 §5) or Adam (β1 = ``momentum``: it trains a randomly
initialised BERT-tiny, which the paper's SGD leaves at chance), a constant learning rate,
cross-entropy, mini-batches in a seeded order (``epoch_order``). ``TrainConfig`` holds the model,
its data and the recipe; ``fit`` trains a model in place (optionally without some examples, for
retraining); ``predict_proba`` and ``accuracy`` evaluate it. Nothing here touches the disk: the
cached, resumable run is ``tracin_we.train``.

Training stops with ``FloatingPointError`` as soon as it diverges: a non-finite (or absurdly
large, ``DIVERGED_LOSS``) loss at any step, non-finite weights at the end of an epoch.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from tracin_we.data import DataConfig
from tracin_we.inputs import forward, select
from tracin_we.models import build_model, check_length, word_embeddings
from tracin_we.params import check_types, from_params

OPTIMIZERS = ("sgd", "adam")
# Part of every cache key: bump it when the training loop changes its numbers (v2: fused Adam).
RECIPE_VERSION = 2
# A mini-batch's mean cross-entropy above this means p(true class) < e^-10000 on average: no model
# that is learning gets there; one whose weights run away does, and may never reach inf or NaN
# (BERT-tiny, SGD lr 1e6: loss 4e7 after one epoch, LayerNorm keeps every activation finite).
DIVERGED_LOSS = 1e4


@dataclass(frozen=True)
class TrainConfig:
    """A model, its data and the recipe that trains it. Frozen: it keys the cache."""

    data: DataConfig = field(default_factory=DataConfig)
    model: str = "bert-tiny"  # "bert-tiny", "cnn", or a Hugging Face name/path
    pretrained: bool = (
        True  # load pretrained weights where the model has them and they are reachable
    )
    epochs: int = 10  # paper, AG News: 10
    lr: float = 2e-2  # paper, AG News: 2e-2 (Toxicity: 2e-4)
    momentum: float = 0.9  # paper: 0.9
    optimizer: str = "sgd"  # "sgd" (the paper's) or "adam" (trains BERT-tiny from scratch)
    batch_size: int = 32
    checkpoint_epochs: tuple[int, ...] = (5, 10)  # save after these epochs (1-based)
    seed: int = 0  # model init, batch order and dropout
    freeze_embeddings: bool = False  # no-overlap experiment: word embeddings stay at init
    max_grad_norm: float | None = None  # clip the global gradient norm (HF Trainer uses 1.0)

    def __post_init__(self) -> None:
        check_types(self)
        object.__setattr__(self, "checkpoint_epochs", tuple(self.checkpoint_epochs))
        if self.epochs < 1:
            raise ValueError(f"epochs={self.epochs} must be a positive integer")
        if not self.lr > 0:
            raise ValueError(f"lr={self.lr} must be > 0")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer={self.optimizer!r}; allowed: {list(OPTIMIZERS)}")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"momentum={self.momentum} must be in [0, 1)")
        if self.max_grad_norm is not None and not self.max_grad_norm > 0:
            raise ValueError(f"max_grad_norm={self.max_grad_norm} must be > 0 or None")
        if self.batch_size < 1:
            raise ValueError(f"batch_size={self.batch_size} must be a positive integer")
        bad = [e for e in self.checkpoint_epochs if not 1 <= e <= self.epochs]
        if not self.checkpoint_epochs or bad:
            raise ValueError(
                f"checkpoint_epochs={list(self.checkpoint_epochs)} must be a non-empty list of "
                f"epochs in [1, {self.epochs}]"
            )
        # Validates the name before any data is loaded or model built.
        if (
            self.model not in ("bert-tiny", "cnn")
            and "/" not in self.model
            and not os.path.isdir(self.model)
        ):
            raise ValueError(
                f"model={self.model!r} is unknown; allowed: 'bert-tiny', 'cnn', or a Hugging Face "
                "AutoModelForSequenceClassification name ('org/name') or local folder"
            )
        check_length(self.model, self.data.max_length)  # built-ins here, others once built

    @classmethod
    def from_params(cls, **params) -> TrainConfig:
        """Build from the flat parameters of a notebook or preset (``tracin_we.params``): data
        fields go to ``DataConfig``, ``seed`` to both; unknown names are an error."""
        return from_params(cls, params)


def new_model(config: TrainConfig) -> tuple[nn.Module, str]:
    return build_model(
        config.model,
        config.data.num_classes,
        config.seed,
        pretrained=config.pretrained,
    )


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The permutation of ``range(n)`` used in ``epoch`` (0-based); depends on nothing else, so a
    retrain on a reduced set visits the remaining examples in the same order."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=generator)


def fit(
    model: nn.Module,
    train: dict[str, torch.Tensor],
    config: TrainConfig,
    keep: torch.Tensor | None = None,
    device: str = "cpu",
    start_epoch: int = 0,
    optimizer_state: dict | None = None,
    progress: bool = True,
    on_epoch: Callable[[int, nn.Module, torch.optim.Optimizer, float], None] | None = None,
) -> nn.Module:
    """Train ``model`` in place on ``train`` (tensors from ``model_inputs``) with SGD + momentum
    (``config.optimizer="sgd"``, the paper's) or Adam (``"adam"``, β1 = ``config.momentum``).

    ``keep`` (bool, (N,)) drops examples: each epoch visits ``epoch_order`` and every mini-batch
    loses its dropped examples (a batch left empty is skipped), so deleting examples changes
    nothing else — the common-random-numbers design of the case-deletion study.
    ``on_epoch(epoch, model, optimizer, mean_loss)`` runs after each epoch (1-based).

    Raises ``FloatingPointError`` naming the epoch and step at the first non-finite loss (or one
    above ``DIVERGED_LOSS``), checked every step before its update, and when the weights hold a
    non-finite value, checked once per epoch, before ``on_epoch`` saves them.
    """
    model.to(device)
    frozen = word_embeddings(model).weight if config.freeze_embeddings else None
    params = [p for p in model.parameters() if p.requires_grad and p is not frozen]
    if config.optimizer == "adam":  # momentum is then Adam's beta1
        # fused: one kernel for all tensors; ~10x faster than foreach on the 30,522 x 128 embedding
        optimizer = torch.optim.Adam(
            params, lr=config.lr, betas=(config.momentum, 0.999), fused=True
        )
    else:
        optimizer = torch.optim.SGD(params, lr=config.lr, momentum=config.momentum)
    if optimizer_state is not None:
        optimizer.load_state_dict(optimizer_state)
    n = len(train["labels"])
    for epoch in range(start_epoch, config.epochs):
        model.train()
        order = epoch_order(n, config.seed, epoch)
        if keep is not None:
            kept = keep[order]
        total, count = 0.0, 0
        batches = range(0, n, config.batch_size)
        for start in tqdm(
            batches, desc=f"epoch {epoch + 1}/{config.epochs}", leave=False, disable=not progress
        ):
            index = order[start : start + config.batch_size]
            if keep is not None:
                index = index[kept[start : start + config.batch_size]]
                if len(index) == 0:
                    continue
            batch = select(train, index, device)
            loss = F.cross_entropy(forward(model, batch), batch["labels"])
            value = loss.item()
            if not (math.isfinite(value) and value <= DIVERGED_LOSS):
                where = f"epoch {epoch + 1}, step {start // config.batch_size + 1}/{len(batches)}"
                raise FloatingPointError(_diverged(f"the loss is {value:.3g} at {where}", config))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if config.max_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
            optimizer.step()
            total, count = total + value * len(index), count + len(index)
        bad = [name for name, p in model.named_parameters() if not torch.isfinite(p).all()]
        if bad:
            where = f"after epoch {epoch + 1}'s last step ({len(batches)}/{len(batches)})"
            raise FloatingPointError(_diverged(f"weights {bad[:3]} are non-finite {where}", config))
        if on_epoch is not None:
            on_epoch(epoch + 1, model, optimizer, total / max(count, 1))
    return model


def _diverged(what: str, config: TrainConfig) -> str:
    return (
        f"training diverged: {what} (optimizer={config.optimizer!r}, lr={config.lr}); "
        "lower lr" + (" or set max_grad_norm" if config.max_grad_norm is None else "")
    )


@torch.no_grad()
def predict_proba(
    model: nn.Module, data: dict[str, torch.Tensor], batch_size: int = 256, device: str = "cpu"
) -> torch.Tensor:
    """Softmax probabilities (N, C) in eval mode."""
    model.eval().to(device)
    n = len(data["input_ids"])
    out = [
        forward(model, select(data, torch.arange(i, min(i + batch_size, n)), device)).softmax(-1)
        for i in range(0, n, batch_size)
    ]
    return torch.cat(out).cpu()


def accuracy(model: nn.Module, data: dict[str, torch.Tensor], device: str = "cpu") -> float:
    if not len(data.get("labels", [])):
        return float("nan")
    return (
        (predict_proba(model, data, device=device).argmax(-1) == data["labels"])
        .float()
        .mean()
        .item()
    )


def with_overrides(config: TrainConfig, **changes) -> TrainConfig:
    """A copy of ``config`` with top-level or data fields changed."""
    data_changes = {k: v for k, v in changes.items() if k in DataConfig.__dataclass_fields__}
    top = {k: v for k, v in changes.items() if k not in data_changes}
    return replace(config, data=replace(config.data, **data_changes), **top)
