"""A cached, resumable run of epochs whose checkpoints TracIn needs: the engine behind
``training.train`` (classifier fine-tuning) and ``training.pretrain`` (masked-LM pretraining).

A run lives in one ``persistence.Folder``:

- ``config.json``: the resolved config; a folder holding another config is refused (or cleared
  with ``overwrite``);
- ``epoch<N>.pt`` for each checkpoint epoch and ``final.pt``: ``{"state_dict", "lr", "epoch",
  "config"}`` (``checkpoints.load_checkpoint`` reads them; ``lr`` is TracIn's η);
- ``resume.pt`` while it runs: the last finished epoch's weights, optimizer state, history and
  torch RNG state, so an interrupted run continues bitwise as if never stopped (on the same CPU
  type, torch build and thread count: the thread count is in the key, the CPU is not);
- ``result.json`` when finished: ``record`` (e.g. the init), metrics, the per-epoch history, and
  each checkpoint's file, epoch, learning rate and sha256.

Every file follows ``persistence``'s rule: atomic writes, sha256 recorded and verified on read;
damaged partial state is discarded (the run restarts from scratch, logged), a damaged finished
run is refused.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from tracin_we.core.checkpoints import load_checkpoint
from tracin_we.core.inputs import Tensors
from tracin_we.core.persistence import CheckpointError, Folder, file_sha256
from tracin_we.training.loop import classification_loss, fit
from tracin_we.training.recipe import Recipe

log = logging.getLogger(__name__)

# on_epoch(epoch (1-based), model, optimizer, mean training loss), called by the fit loop.
OnEpoch = Callable[[int, nn.Module, torch.optim.Optimizer, float], None]
# fit(start_epoch, optimizer_state or None, on_epoch): trains the run's model in place.
EpochFit = Callable[[int, "dict | None", OnEpoch], object]


@dataclass
class Checkpoint:
    path: Path
    epoch: int
    lr: float
    sha256: str

    def load(self) -> dict:
        """The checkpoint's dict (``state_dict``, ``lr``, ``epoch``, ``config``), hash-checked."""
        return load_checkpoint(self.path, self.sha256)


@dataclass(frozen=True)
class Schedule:
    """How many epochs, the (constant) learning rate, and after which epochs to keep weights."""

    epochs: int
    lr: float
    checkpoint_epochs: tuple[int, ...]


def open_run(folder: Folder, resolved: dict, overwrite: bool, named: bool) -> dict | None:
    """The finished run's ``result.json`` when ``folder`` holds one for ``resolved``; else None,
    with ``config.json`` written (a folder of another config: ``CheckpointError``, or cleared
    when ``overwrite``). A folder the user ``named`` (``run_dir``) holding anything tracin-we did
    not write is refused first (``Folder.claim``), also under ``overwrite``."""
    if named:
        folder.claim("run_dir")
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
        folder.clear("run_dir", foreign_ok=not named)
    result = folder.read_json("result.json", recompute=False, remedy=remedy)
    if result is not None:
        log.info("reusing %s", folder)
        return result
    folder.write_json("config.json", resolved)
    return None


def run_epochs(
    folder: Folder,
    resolved: dict,
    model: nn.Module,
    fit: EpochFit,
    schedule: Schedule,
    epoch_metrics: Callable[[nn.Module], dict],
    final_metrics: Callable[[nn.Module, list[dict]], dict],
    record: dict,
) -> dict:
    """Train ``model`` with ``fit`` from the last finished epoch in ``folder`` (or from scratch),
    save its checkpoints, then write and return ``result.json``: ``record`` | ``metrics``
    (``final_metrics(model, history)`` and ``train_seconds``), ``history`` (per epoch: epoch,
    train_loss, ``epoch_metrics(model)``), ``checkpoints`` and ``final``."""
    history: list[dict] = []
    start_epoch, optimizer_state = 0, None
    state, checkpoints = _resume_state(folder, schedule, resolved)
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
        history.append({"epoch": epoch, "train_loss": loss} | epoch_metrics(model))
        state = _checkpoint_state(model, schedule.lr, resolved, epoch)
        if epoch in schedule.checkpoint_epochs:
            sha = folder.save_torch(f"epoch{epoch}.pt", state)
            checkpoints[epoch] = Checkpoint(
                folder.path / f"epoch{epoch}.pt", epoch, schedule.lr, sha
            )
        folder.save_torch(
            "resume.pt",
            state
            | {
                "optimizer": optimizer.state_dict(),
                "history": json.dumps(history),
                "rng": torch.get_rng_state(),
            },
        )
        log.info("epoch %d: %s", epoch, {k: round(v, 4) for k, v in history[-1].items()})

    fit(start_epoch, optimizer_state, on_epoch)
    final_state = _checkpoint_state(model, schedule.lr, resolved, schedule.epochs)
    sha = folder.save_torch("final.pt", final_state)
    final = Checkpoint(folder.path / "final.pt", schedule.epochs, schedule.lr, sha)
    metrics = final_metrics(model, history) | {"train_seconds": time.perf_counter() - started}
    ordered = [checkpoints[e] for e in sorted(checkpoints)]
    result = record | {
        "metrics": metrics,
        "history": history,
        "checkpoints": [_checkpoint_record(c) for c in ordered],
        "final": _checkpoint_record(final),
    }
    folder.write_json("result.json", result)
    (folder.path / "resume.pt").unlink(missing_ok=True)
    return json.loads(json.dumps(result, default=str))  # as it reads back from result.json


def fit_epochs(
    folder: Folder,
    resolved: dict,
    model: nn.Module,
    train: Tensors,
    config: Recipe,
    record: dict,
    *,
    device: str,
    progress: bool,
    loss_fn: Callable[[nn.Module, Tensors], torch.Tensor] = classification_loss,
    epoch_metrics: Callable[[nn.Module], dict] = lambda model: {},
    final_metrics: Callable[[nn.Module, list[dict]], dict] = lambda model, history: {},
) -> dict:
    """``run_epochs`` of ``loop.fit`` on ``train`` with ``config``'s recipe and ``loss_fn``:
    what a training, a pretraining and a distillation run each do, resumable."""

    def run_fit(start_epoch: int, optimizer_state: dict | None, on_epoch: OnEpoch) -> None:
        fit(
            model,
            train,
            config,
            device=device,
            start_epoch=start_epoch,
            optimizer_state=optimizer_state,
            progress=progress,
            on_epoch=on_epoch,
            loss_fn=loss_fn,
        )

    schedule = Schedule(config.epochs, config.lr, config.checkpoint_epochs)
    return run_epochs(
        folder, resolved, model, run_fit, schedule, epoch_metrics, final_metrics, record
    )


def load_checkpoints(run_dir: Path, result: dict) -> tuple[list[Checkpoint], Checkpoint]:
    """The checkpoints and the final weights a ``result.json`` lists, each file's sha256 checked
    (``CheckpointError`` naming a missing or corrupted one)."""

    def checkpoint(record: dict) -> Checkpoint:
        path = run_dir / record["file"]
        if not path.is_file() or file_sha256(path) != record["sha256"]:
            raise CheckpointError(
                f"checkpoint {str(path)!r} is missing or corrupted (sha256 differs from "
                "result.json); delete the run folder to retrain"
            )
        return Checkpoint(path, record["epoch"], record["lr"], record["sha256"])

    return [checkpoint(r) for r in result["checkpoints"]], checkpoint(result["final"])


def _checkpoint_state(model: nn.Module, lr: float, resolved: dict, epoch: int) -> dict:
    return {
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "lr": lr,
        "epoch": epoch,
        "config": json.dumps(resolved),
    }


def _resume_state(
    folder: Folder, schedule: Schedule, resolved: dict
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
    for epoch in schedule.checkpoint_epochs:
        name = f"epoch{epoch}.pt"
        if epoch > state["epoch"]:
            continue
        if folder.read(name, recompute=True) is None:
            log.warning("%s: %s is missing or damaged; training again from scratch", folder, name)
            (folder.path / "resume.pt").unlink()
            return None, {}
        checkpoints[epoch] = Checkpoint(
            folder.path / name, epoch, schedule.lr, folder.records()[name]
        )
    return state, checkpoints


def _checkpoint_record(c: Checkpoint) -> dict:
    return {"file": c.path.name, "epoch": c.epoch, "lr": c.lr, "sha256": c.sha256}
