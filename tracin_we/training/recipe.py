"""The training recipe's config: ``TrainConfig`` holds the model, its data and the recipe
(SGD + momentum 0.9, the paper's, v1 §5, or Adam; a constant learning rate; mini-batches), checked
when built. The loop that trains it is ``training.loop``; a fresh model for it,
``training.model_init``. BERT-tiny starts from the hub's pretrained weights (``pretrained``, when
reachable), a random init, or a local MLM pretraining run (``init_from``: ``training.pretrain``).
"""

from __future__ import annotations

import os
import warnings
from dataclasses import asdict, dataclass, field, replace
from typing import Protocol

from tracin_we.core.data import DataConfig
from tracin_we.core.models import BUILTIN_MODELS, check_length
from tracin_we.core.params import check_types, from_params
from tracin_we.core.pretrained import PRETRAINED
from tracin_we.core.tokenizer import model_tokenizer

DISTILLED = "distilled:"  # init_from="distilled:<teacher>": training.distill's cached run

OPTIMIZERS = ("sgd", "adam")
# Part of every cache key: bump it when the training loop changes its numbers (v2: fused Adam).
RECIPE_VERSION = 2


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
    # A local MLM pretraining or distillation run (training.pretrain, .distill: its folder, or a
    # .pt checkpoint) whose word embeddings and encoder start bert-tiny; "distilled:minilm-l6":
    # MiniLM distilled on the texts this data leaves unused (cached; the first time took 45 min on
    # 2 shared cores, presets/distilled.yaml); None: `pretrained` decides (hub or random init).
    init_from: str | None = None
    # A pretrained encoder ("minilm-l6") whose word embeddings, PCA-projected to this model's
    # width, start the CNN's or BERT-tiny's (training.embedding_init); None: random rows.
    embedding_init: str | None = None

    def __post_init__(self) -> None:
        check_types(self)
        object.__setattr__(self, "checkpoint_epochs", tuple(self.checkpoint_epochs))
        check_recipe(self)
        check_model(self)  # before any data is loaded or model built
        check_length(self.model, self.data.max_length)  # built-ins here, others once built
        own = None if self.model in BUILTIN_MODELS else model_tokenizer(self.model)
        if own is not None and self.data.tokenizer is None:
            # A Hugging Face model reads the ids of its own tokenizer, not the built-ins' default.
            object.__setattr__(self, "data", replace(self.data, tokenizer=own))
        if self.init_from is not None:
            _check_init_from(self)

    @classmethod
    def from_params(cls, **params) -> TrainConfig:
        """Build from the flat parameters of a notebook or preset (``tracin_we.core.params``): data
        fields go to ``DataConfig``, ``seed`` to both; unknown names are an error."""
        return from_params(cls, params)


def check_model(config: TrainConfig) -> None:
    """``ValueError`` for a model name that is none of the built-ins, a hub name or a folder, or
    a pretrained built-in given another tokenizer's ids; a ``UserWarning`` when a pretrained
    model is to start from a random init (``pretrained=False``), before any training."""
    name = config.model
    if name not in BUILTIN_MODELS and "/" not in name and not os.path.isdir(name):
        raise ValueError(
            f"model={name!r} is unknown; allowed: {list(BUILTIN_MODELS)}, or a Hugging Face "
            "AutoModelForSequenceClassification name ('org/name') or local folder"
        )
    if name in PRETRAINED and config.data.vocab_size is not None:
        raise ValueError(
            f"model={name!r} reads bert-base-uncased's token ids; tokenizer="
            f"{config.data.tokenizer!r} gives others: leave tokenizer as None"
        )
    if config.embedding_init is not None:
        _check_embedding_init(config)
    if name not in ("bert-tiny", "cnn") and not config.pretrained:
        warnings.warn(
            f"model={name!r} with pretrained=False: its pretrained weights are NOT loaded and "
            "it starts from a random init; set pretrained=True to fine-tune them",
            UserWarning,
            stacklevel=4,
        )


def _check_init_from(config: TrainConfig) -> None:
    """``init_from`` starts a BERT-tiny from an existing file or folder, or names a teacher to
    distil (``distilled:<teacher>``, training.distill) for a model reading the shipped ids."""
    source, distillable = config.init_from, [DISTILLED + name for name in PRETRAINED]
    if config.model != "bert-tiny":
        raise ValueError(
            f"init_from={source!r} needs model='bert-tiny' (got {config.model!r}): pretraining "
            "and distillation build the BERT-tiny architecture"
        )
    if source.startswith(DISTILLED):
        if source not in distillable:
            raise ValueError(f"init_from={source!r}: unknown teacher; allowed: {distillable}")
        if config.data.vocab_size is not None:
            raise ValueError(
                f"init_from={source!r} reads bert-base-uncased's ids; tokenizer="
                f"{config.data.tokenizer!r} gives others: leave tokenizer as None"
            )
    elif not os.path.exists(source):
        raise ValueError(
            f"init_from={source!r} does not exist; give a pretraining or distillation run "
            f"folder (tracin_we.training.pretrain, .distill) or one of its .pt checkpoints, "
            f"{distillable}, or None"
        )


def _check_embedding_init(config: TrainConfig) -> None:
    """``embedding_init`` names a pretrained encoder and a model it can start: the CNN, or a
    BERT-tiny with no other pretrained weights, reading the shipped tokenizer's ids."""
    source = config.embedding_init
    if source not in PRETRAINED:
        raise ValueError(f"embedding_init={source!r} is unknown; allowed: {list(PRETRAINED)}")
    if config.model not in ("cnn", "bert-tiny"):
        raise ValueError(
            f"embedding_init={source!r} starts 'cnn' or 'bert-tiny', not model={config.model!r}"
        )
    if config.model == "bert-tiny" and (config.pretrained or config.init_from is not None):
        raise ValueError(
            f"embedding_init={source!r} replaces BERT-tiny's word embeddings: set "
            "pretrained=False and init_from=None, or drop embedding_init"
        )
    if config.data.vocab_size is not None:
        raise ValueError(
            f"embedding_init={source!r} maps bert-base-uncased's token ids; tokenizer="
            f"{config.data.tokenizer!r} gives others: leave tokenizer as None"
        )


def check_recipe(config: Recipe) -> None:
    """``ValueError`` naming the field of a recipe (``TrainConfig``, ``pretrain.PretrainConfig``)
    that is out of range, and what is allowed: epochs >= 1, lr > 0, momentum in [0, 1),
    max_grad_norm > 0 or None, batch_size >= 1, checkpoint_epochs distinct in [1, epochs].
    Finiteness (lr, momentum, max_grad_norm) and the seed's range are ``check_types``' rules."""
    if config.epochs < 1:
        raise ValueError(f"epochs={config.epochs} must be a positive integer")
    if not config.lr > 0:
        raise ValueError(f"lr={config.lr} must be > 0")
    if config.optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer={config.optimizer!r}; allowed: {list(OPTIMIZERS)}")
    if not 0 <= config.momentum < 1:
        raise ValueError(f"momentum={config.momentum} must be in [0, 1)")
    if config.max_grad_norm is not None and not config.max_grad_norm > 0:
        raise ValueError(f"max_grad_norm={config.max_grad_norm} must be > 0 or None")
    if config.batch_size < 1:
        raise ValueError(f"batch_size={config.batch_size} must be a positive integer")
    epochs = config.checkpoint_epochs
    bad = [e for e in epochs if not 1 <= e <= config.epochs]
    if not epochs or bad or len(set(epochs)) != len(epochs):
        raise ValueError(
            f"checkpoint_epochs={list(epochs)} must be a non-empty list of distinct epochs in "
            f"[1, epochs={config.epochs}]"
        )


class Recipe(Protocol):
    """What ``fit`` reads from a config (``TrainConfig``, ``pretrain.PretrainConfig``)."""

    epochs: int
    lr: float
    momentum: float
    optimizer: str
    batch_size: int
    seed: int
    max_grad_norm: float | None
    freeze_embeddings: bool
    checkpoint_epochs: tuple[int, ...]


def config_identity(config: TrainConfig) -> dict:
    """``asdict(config)`` without what does not define a result: where the data lives
    (``DataConfig.identity``), and ``init_from`` and ``embedding_init`` when unset, so that the
    keys of runs made before they existed are unchanged."""
    resolved = asdict(config) | {"data": config.data.identity()}
    for optional in ("init_from", "embedding_init"):
        if resolved[optional] is None:
            resolved.pop(optional)
    return resolved


def with_overrides(config: TrainConfig, **changes) -> TrainConfig:
    """A copy of ``config`` with top-level or data fields changed. A new ``model`` without a
    ``tokenizer`` drops the tokenizer the old model brought (``TrainConfig`` gave it its own):
    the new one gets its own, or the built-ins' default. (``dataclasses.replace`` would keep it.)
    """
    if "model" in changes and "tokenizer" not in changes:
        own = None if config.model in BUILTIN_MODELS else model_tokenizer(config.model)
        if own is not None and config.data.tokenizer == own:
            changes["tokenizer"] = None
    data_changes = {k: v for k, v in changes.items() if k in DataConfig.__dataclass_fields__}
    top = {k: v for k, v in changes.items() if k not in data_changes}
    return replace(config, data=replace(config.data, **data_changes), **top)
