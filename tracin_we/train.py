"""Training with the paper's recipe (or Adam), saving the checkpoints that TracIn needs.

Recipe: SGD + momentum 0.9 (the paper's, v1 §5) or Adam (β1 = ``momentum``: it trains a randomly
initialised BERT-tiny, which the paper's SGD leaves at chance), a constant learning rate,
cross-entropy, mini-batches in a seeded order. ``train(config)`` caches its result under a key
derived from the resolved config and the data's fingerprint: a rerun with the same config reuses
it, a different config never does, an interrupted run resumes from its last finished epoch, and
every file is written atomically.
Files follow ``tracin_we.persistence``'s rule: written atomically, recorded with their sha256,
verified on every read; damaged partial state of an interrupted run is discarded (training
restarts from scratch, logged), a damaged finished run is refused. The torch thread count is part
of the cache key.

Training stops with ``FloatingPointError`` as soon as it diverges: a non-finite (or absurdly
large, ``DIVERGED_LOSS``) loss at any step, non-finite weights at the end of an epoch.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from datasets import DatasetDict
from torch import nn
from tqdm.auto import tqdm

from tracin_we.checkpoints import load_checkpoint
from tracin_we.data import DataConfig, fingerprint, make_splits
from tracin_we.inputs import forward, model_inputs, select
from tracin_we.models import build_model, check_length, word_embeddings
from tracin_we.params import check_types, from_params
from tracin_we.persistence import CheckpointError, Folder, cache_dir, config_key, file_sha256

log = logging.getLogger(__name__)

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


@dataclass
class Checkpoint:
    path: Path
    epoch: int
    lr: float
    sha256: str


@dataclass
class TrainResult:
    """A finished training run: its folder, config, checkpoints and metrics."""

    run_dir: Path
    config: TrainConfig
    init: str
    checkpoints: list[Checkpoint]
    final: Checkpoint
    metrics: dict
    history: list[dict]

    def checkpoint_pairs(self) -> list[tuple[dict, float]]:
        """``(state_dict, lr)`` for each saved checkpoint: the ``checkpoints`` argument of
        ``tracin_we.influence.scores``. Each file's hash is checked."""
        return [(load_checkpoint(c.path, c.sha256)["state_dict"], c.lr) for c in self.checkpoints]

    def load_model(self, which: str = "final") -> nn.Module:
        """The model at ``which`` = "final" or "epoch<N>" (a saved checkpoint), in eval mode."""
        options = {"final": self.final} | {f"epoch{c.epoch}": c for c in self.checkpoints}
        if which not in options:
            raise ValueError(f"which={which!r}; allowed: {sorted(options)}")
        model = new_model(self.config)[0]
        model.load_state_dict(
            load_checkpoint(options[which].path, options[which].sha256)["state_dict"]
        )
        return model.eval()


def new_model(config: TrainConfig) -> tuple[nn.Module, str]:
    from tracin_we.data import TASKS

    return build_model(
        config.model,
        TASKS[config.data.dataset].num_classes,
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


def resolved_config(config: TrainConfig, init: str, data_fingerprint: str, threads: int) -> dict:
    """The config as saved beside every result: what defines the run, without where data lives.

    ``threads``, the torch (intra-op) thread count training ran with, is part of it and so of the
    cache key: the float reductions of CPU kernels are split by thread, so the same run on 1 and
    on 2 threads differs in the last bits after a few steps (measured, 256 AG News texts, 2
    epochs: BERT-tiny Adam max |Δw| 1.1e-6, CNN SGD 6e-8; the reliability issue saw 1e-3 after a
    full run), while any one thread count gives bitwise-identical weights every time.
    """
    resolved = asdict(config)
    resolved["data"].pop("data_dir")
    resolved |= {
        "init": init,
        "data_fingerprint": data_fingerprint,
        "recipe": RECIPE_VERSION,
        "threads": threads,
    }
    return json.loads(json.dumps(resolved))  # as it reads back from config.json (tuples → lists)


def train(
    config: TrainConfig,
    splits: DatasetDict | None = None,
    run_dir: str | Path | None = None,
    cache: str | Path | None = None,
    overwrite: bool = False,
    device: str = "cpu",
    progress: bool = True,
) -> TrainResult:
    """Train ``config`` (or reuse its cached result) and return its checkpoints and metrics.

    The run folder defaults to ``<cache>/train/<model>-<dataset>-<key>`` (``persistence``). A
    given ``run_dir`` holding another config is refused unless ``overwrite``, which deletes the
    files tracin-we wrote there and refuses a folder holding anything else. Each checkpoint
    stores its state dict, the learning rate in force, its epoch and the resolved config.
    """
    splits = splits if splits is not None else make_splits(config.data)
    model, init = new_model(config)
    check_length(model, config.data.max_length, name=config.model)
    resolved = resolved_config(config, init, fingerprint(splits), torch.get_num_threads())
    key = config_key(resolved)
    name = f"{config.model.replace('/', '_')}-{config.data.dataset}-{key}"
    folder = Folder(Path(run_dir) if run_dir else cache_dir(cache) / "train" / name)
    folder.remove_stale_tmp()
    remedy = f"delete the run folder {str(folder)!r} to retrain"
    try:
        saved = folder.read_json("config.json", recompute=False, remedy=remedy)
    except CheckpointError:
        if not overwrite:
            raise
        saved = "damaged"
    if saved is not None and saved != resolved:
        if not overwrite:
            raise CheckpointError(
                f"run_dir={str(folder)!r} holds a run of another config; choose another run_dir "
                "or pass overwrite=True"
            )
        folder.clear()
    result = folder.read_json("result.json", recompute=False, remedy=remedy)
    if result is not None:
        log.info("reusing %s", folder)
        return _load_result(folder.path, config, result)
    folder.write_json("config.json", resolved)
    tensors = {k: model_inputs(splits[k]) for k in splits}
    _check_vocab(model, tensors)
    return _run(model, init, config, resolved, tensors, folder, device, progress)


def _run(
    model: nn.Module,
    init: str,
    config: TrainConfig,
    resolved: dict,
    tensors: dict[str, dict[str, torch.Tensor]],
    folder: Folder,
    device: str,
    progress: bool,
) -> TrainResult:
    history: list[dict] = []
    start_epoch, optimizer_state = 0, None
    state, checkpoints = _resume_state(folder, config, resolved)
    if state is not None:
        model.load_state_dict(state["state_dict"])
        optimizer_state, start_epoch = state["optimizer"], state["epoch"]
        history = json.loads(state["history"])
        torch.set_rng_state(state["rng"])
        log.info("resuming %s after epoch %d", folder, start_epoch)
    started = time.perf_counter()

    def on_epoch(
        epoch: int, model: nn.Module, optimizer: torch.optim.Optimizer, loss: float
    ) -> None:
        history.append(
            {
                "epoch": epoch,
                "train_loss": loss,
                "val_accuracy": accuracy(model, tensors["validation"], device),
            }
        )
        state = _checkpoint_state(model, config, resolved, epoch)
        if epoch in config.checkpoint_epochs:
            sha = folder.save_torch(f"epoch{epoch}.pt", state)
            checkpoints[epoch] = Checkpoint(folder.path / f"epoch{epoch}.pt", epoch, config.lr, sha)
        folder.save_torch(
            "resume.pt",
            state
            | {
                "optimizer": optimizer.state_dict(),
                "history": json.dumps(history),
                "rng": torch.get_rng_state(),
            },
        )
        log.info("epoch %d: loss %.4f, val acc %.4f", epoch, loss, history[-1]["val_accuracy"])

    fit(
        model,
        tensors["train"],
        config,
        device=device,
        start_epoch=start_epoch,
        optimizer_state=optimizer_state,
        progress=progress,
        on_epoch=on_epoch,
    )
    sha = folder.save_torch("final.pt", _checkpoint_state(model, config, resolved, config.epochs))
    final = Checkpoint(folder.path / "final.pt", config.epochs, config.lr, sha)
    metrics = {
        "test_accuracy": accuracy(model, tensors["test"], device),
        "val_accuracy": history[-1]["val_accuracy"] if history else float("nan"),
        "train_seconds": time.perf_counter() - started,
        "n_train": len(tensors["train"]["labels"]),
    }
    ordered = [checkpoints[e] for e in sorted(checkpoints)]
    folder.write_json(
        "result.json",
        {
            "init": init,
            "metrics": metrics,
            "history": history,
            "checkpoints": [_checkpoint_record(c) for c in ordered],
            "final": _checkpoint_record(final),
        },
    )
    (folder.path / "resume.pt").unlink(missing_ok=True)
    return TrainResult(folder.path, config, init, ordered, final, metrics, history)


def _checkpoint_state(model: nn.Module, config: TrainConfig, resolved: dict, epoch: int) -> dict:
    return {
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "lr": config.lr,
        "epoch": epoch,
        "config": json.dumps(resolved),
    }


def _resume_state(
    folder: Folder, config: TrainConfig, resolved: dict
) -> tuple[dict | None, dict[int, Checkpoint]]:
    """The interrupted run's ``resume.pt`` and the checkpoints it had saved, each verified; None
    and no checkpoints (train from scratch, logged) when any of them is damaged or missing."""
    state = folder.load_torch("resume.pt", recompute=True)
    if state is None:
        return None, {}
    if state.get("config") != json.dumps(resolved):
        folder.damaged("resume.pt", "it belongs to another config", recompute=True)
        return None, {}
    checkpoints = {}
    for epoch in config.checkpoint_epochs:
        name = f"epoch{epoch}.pt"
        if epoch > state["epoch"]:
            continue
        if folder.read(name, recompute=True) is None:
            log.warning("%s: %s is missing or damaged; training again from scratch", folder, name)
            (folder.path / "resume.pt").unlink()
            return None, {}
        sha = folder.records()[name]
        checkpoints[epoch] = Checkpoint(folder.path / name, epoch, config.lr, sha)
    return state, checkpoints


def _checkpoint_record(c: Checkpoint) -> dict:
    return {"file": c.path.name, "epoch": c.epoch, "lr": c.lr, "sha256": c.sha256}


def _load_result(run_dir: Path, config: TrainConfig, saved: dict) -> TrainResult:
    def checkpoint(record: dict) -> Checkpoint:
        path = run_dir / record["file"]
        if not path.is_file() or file_sha256(path) != record["sha256"]:
            raise CheckpointError(
                f"checkpoint {str(path)!r} is missing or corrupted (sha256 differs from "
                "result.json); delete the run folder to retrain"
            )
        return Checkpoint(path, record["epoch"], record["lr"], record["sha256"])

    return TrainResult(
        run_dir,
        config,
        saved["init"],
        [checkpoint(r) for r in saved["checkpoints"]],
        checkpoint(saved["final"]),
        saved["metrics"],
        saved["history"],
    )


def _check_vocab(model: nn.Module, tensors: dict[str, dict[str, torch.Tensor]]) -> None:
    rows = word_embeddings(model).num_embeddings
    top = max(int(t["input_ids"].max()) for t in tensors.values() if len(t.get("input_ids", [])))
    if top >= rows:
        raise ValueError(
            f"tokenizer: token id {top} is outside the model's {rows}-row "
            "word embedding; use the model's own tokenizer"
        )


def with_overrides(config: TrainConfig, **changes) -> TrainConfig:
    """A copy of ``config`` with top-level or data fields changed."""
    data_changes = {k: v for k, v in changes.items() if k in DataConfig.__dataclass_fields__}
    top = {k: v for k, v in changes.items() if k not in data_changes}
    return replace(config, data=replace(config.data, **data_changes), **top)
