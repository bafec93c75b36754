"""Checkpoint files: atomic writes, safe loads, integrity checks, Trainer folders.

A checkpoint is a ``torch.save``d dict ``{"state_dict", "lr", "epoch", "config"}`` that loads with
``weights_only=True``; TracIn takes checkpoints as ``(state_dict, learning_rate)`` pairs.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch

StateDict = dict[str, torch.Tensor]
CheckpointLike = tuple[StateDict | str | os.PathLike, float]


class CheckpointError(ValueError):
    """A saved checkpoint or result is corrupted or does not match the requested config."""


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then rename it onto ``path``:
    an interrupted run never leaves a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_json(path: Path, data: Any) -> None:
    atomic_write(Path(path), lambda tmp: tmp.write_text(json.dumps(data, indent=2, default=str)))


def save_torch(path: Path, obj: Any) -> None:
    atomic_write(Path(path), lambda tmp: torch.save(obj, tmp))


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_checkpoint(path: str | os.PathLike, expected_sha256: str | None = None) -> dict:
    """Load a checkpoint dict with ``weights_only=True``, checking its hash when one is given."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    if expected_sha256 is not None and sha256(path) != expected_sha256:
        raise CheckpointError(
            f"checkpoint {str(path)!r} is corrupted (sha256 differs from the one recorded when "
            "it was written); delete its run folder to retrain"
        )
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # unpickling errors have many types; all mean "unreadable"
        raise CheckpointError(f"checkpoint {str(path)!r} cannot be read: {err}") from err
    return obj if "state_dict" in obj else {"state_dict": obj}


def resolve_checkpoints(checkpoints: Iterable[CheckpointLike]) -> list[tuple[StateDict, float]]:
    """``(state_dict or path, lr)`` pairs → ``(state_dict, lr)``; every lr must be positive."""
    resolved = []
    for i, item in enumerate(checkpoints):
        if not (isinstance(item, (tuple, list)) and len(item) == 2):
            raise ValueError(f"checkpoints[{i}] must be a (state_dict_or_path, lr) pair")
        state, lr = item
        if not float(lr) > 0:
            raise ValueError(f"checkpoints[{i}] has learning rate {lr}; it must be > 0")
        if not isinstance(state, dict):
            state = load_checkpoint(state)["state_dict"]
        resolved.append((state, float(lr)))
    if not resolved:
        raise ValueError("checkpoints is empty; give at least one (state_dict_or_path, lr) pair")
    return resolved


def trainer_checkpoints(output_dir: str | os.PathLike) -> list[tuple[StateDict, float]]:
    """The ``checkpoint-<step>`` folders of a ``transformers.Trainer`` run as ``(state_dict, lr)``
    pairs, in step order. The learning rate is the last one logged at or before that step in the
    folder's ``trainer_state.json``. Keys are the Trainer model's own (``HFClassifier`` loads them).
    """
    folders = sorted(
        (
            p
            for p in Path(output_dir).glob("checkpoint-*")
            if re.fullmatch(r"checkpoint-\d+", p.name)
        ),
        key=lambda p: int(p.name.split("-")[1]),
    )
    if not folders:
        raise ValueError(f"output_dir={str(output_dir)!r} holds no checkpoint-<step> folder")
    return [(_trainer_weights(folder), _trainer_lr(folder)) for folder in folders]


def _trainer_weights(folder: Path) -> StateDict:
    if (folder / "model.safetensors").is_file():
        from safetensors.torch import load_file

        return load_file(folder / "model.safetensors")
    if (folder / "pytorch_model.bin").is_file():
        return torch.load(folder / "pytorch_model.bin", map_location="cpu", weights_only=True)
    raise CheckpointError(f"{str(folder)!r} has no model.safetensors or pytorch_model.bin")


def _trainer_lr(folder: Path) -> float:
    state = json.loads((folder / "trainer_state.json").read_text())
    step = state["global_step"]
    logged = [e for e in state["log_history"] if "learning_rate" in e and e["step"] <= step]
    if not logged:
        raise CheckpointError(
            f"{str(folder)!r}: trainer_state.json logs no learning rate up to step {step}; "
            "train with logging_steps small enough to log one"
        )
    return float(max(logged, key=lambda e: e["step"])["learning_rate"])
