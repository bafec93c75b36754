"""A cached training run: ``train(config)`` trains a ``TrainConfig`` with the recipe of
``tracin_we.recipe`` and keeps the checkpoints that TracIn needs.

The result is cached under a key derived from the resolved config and the data's fingerprint: a
rerun with the same config reuses it, a different config never does, and an interrupted run
resumes from its last finished epoch. Files follow ``tracin_we.persistence``'s rule: written
atomically, recorded with their sha256, verified on every read; damaged partial state of an
interrupted run is discarded (training restarts from scratch, logged), a damaged finished run is
refused. The torch thread count is part of the cache key.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from datasets import DatasetDict
from torch import nn

from tracin_we.checkpoints import load_checkpoint
from tracin_we.data import fingerprint, make_splits
from tracin_we.inputs import model_inputs
from tracin_we.models import check_length, word_embeddings
from tracin_we.persistence import CheckpointError, Folder, cache_dir, config_key, file_sha256
from tracin_we.recipe import RECIPE_VERSION, TrainConfig, accuracy, fit, new_model

log = logging.getLogger(__name__)


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


def resolved_config(config: TrainConfig, init: str, data_fingerprint: str, threads: int) -> dict:
    """The config as saved beside every result: what defines the run, without where data lives.

    ``threads``, the torch (intra-op) thread count training ran with, is part of it and so of the
    cache key: the float reductions of CPU kernels are split by thread, so the same run on 1 and
    on 2 threads differs in the last bits after a few steps (measured, 256 AG News texts, 2
    epochs: BERT-tiny Adam max |Δw| 1.1e-6, CNN SGD 6e-8; the reliability issue saw 1e-3 after a
    full run), while any one thread count gives bitwise-identical weights every time.
    """
    resolved = asdict(config)
    resolved["data"] = config.data.identity()
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
    name = f"{config.model.replace('/', '_')}-{config.data.name}-{key}"
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
