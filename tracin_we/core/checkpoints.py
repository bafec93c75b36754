"""Checkpoint files: verified loads, ``(state_dict, lr)`` pairs, Trainer folders.

A checkpoint is a ``torch.save``d dict ``{"state_dict", "lr", "epoch", "config"}`` that loads with
``weights_only=True``; TracIn takes checkpoints as ``(state_dict, learning_rate)`` pairs. Writing,
hashing and the damaged-file rule live in ``tracin_we.core.persistence``.
"""

from __future__ import annotations

import hashlib
import json
import math
import numbers
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch

from tracin_we.core.persistence import CheckpointError, Folder, load_torch_bytes

StateDict = dict[str, torch.Tensor]
CheckpointLike = tuple[StateDict | str | os.PathLike, float]


def load_checkpoint(path: str | os.PathLike, expected_sha256: str | None = None) -> dict:
    """Load a checkpoint dict with ``weights_only=True``. Its bytes are checked against
    ``expected_sha256`` (a finished run's ``result.json`` record), else against its folder's
    manifest when tracin-we wrote it; a file from elsewhere is loaded as it is."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    remedy, folder = f"delete its run folder {str(path.parent)!r} to retrain", Folder(path.parent)
    if expected_sha256 is None and path.name in folder.records():
        data = folder.read(path.name, recompute=False, remedy=remedy)
    else:
        data = path.read_bytes()
        if expected_sha256 is not None and hashlib.sha256(data).hexdigest() != expected_sha256:
            raise CheckpointError(
                f"checkpoint {str(path)!r} is corrupted (sha256 differs from the one recorded "
                f"when it was written); {remedy}"
            )
    try:
        obj = load_torch_bytes(data)
    except Exception as err:  # unpickling errors have many types; all mean "unreadable"
        raise CheckpointError(f"checkpoint {str(path)!r} cannot be read: {err}") from err
    return obj if "state_dict" in obj else {"state_dict": obj}


def resolve_checkpoints(checkpoints: Iterable[CheckpointLike]) -> list[tuple[StateDict, float]]:
    """``(state_dict or path, lr)`` pairs → ``(state_dict, lr)``. Checked before any file is
    loaded: a non-empty list of pairs, each a state dict or a path with a finite learning rate
    > 0 (``learning_rate``); then each loaded state dict for non-finite weights."""
    if isinstance(checkpoints, (str, os.PathLike, Mapping)) or not isinstance(
        checkpoints, Iterable
    ):
        raise ValueError(
            f"checkpoints must be a list of (state_dict_or_path, lr) pairs; got a "
            f"{type(checkpoints).__name__}"
        )
    pairs = [_pair(i, item) for i, item in enumerate(checkpoints)]
    if not pairs:
        raise ValueError("checkpoints is empty; give at least one (state_dict_or_path, lr) pair")
    return [(_loaded(i, state), lr) for i, (state, lr) in enumerate(pairs)]


def learning_rate(lr: object, name: str) -> float:
    """``lr`` as a float: a real number (an int, a float, a numpy or one-element torch number;
    not a bool), finite and > 0, else a ``ValueError`` naming ``name``."""
    if torch.is_tensor(lr) and lr.numel() == 1 and not lr.dtype.is_complex:
        lr = lr.item()
    if not isinstance(lr, numbers.Real) or isinstance(lr, bool):
        raise ValueError(f"{name} has learning rate {lr!r}; it must be a number > 0")
    if not (math.isfinite(lr) and lr > 0):
        raise ValueError(f"{name} has learning rate {lr}; it must be > 0 and finite")
    return float(lr)


def _pair(i: int, item: object) -> tuple[StateDict | str | os.PathLike, float]:
    """Checkpoint ``i`` as ``(state, lr)``, nothing loaded yet."""
    if not (isinstance(item, (tuple, list)) and len(item) == 2):
        single = " (one checkpoint? give a list of pairs: [(state_dict, lr)])"
        raise ValueError(
            f"checkpoints[{i}] must be a (state_dict_or_path, lr) pair; got a "
            f"{type(item).__name__}" + (single if isinstance(item, Mapping) else "")
        )
    state, lr = item
    if not isinstance(state, (Mapping, str, os.PathLike)):
        raise ValueError(
            f"checkpoints[{i}] holds a value of type {type(state).__name__}; give a state dict "
            "(name → tensor) or the path of a checkpoint file, paired with its learning rate"
        )
    return state, learning_rate(lr, f"checkpoints[{i}]")


def _loaded(i: int, state: StateDict | str | os.PathLike) -> StateDict:
    """Checkpoint ``i``'s state dict (loaded from its path), refused when it holds non-finite
    weights."""
    if not isinstance(state, Mapping):
        state = load_checkpoint(state)["state_dict"]
    bad = [
        k
        for k, v in state.items()
        if torch.is_tensor(v) and v.is_floating_point() and not v.isfinite().all()
    ]
    if bad:
        raise ValueError(
            f"checkpoints[{i}] has non-finite weights in {bad[:5]}"
            f"{' ...' if len(bad) > 5 else ''}: it comes from a diverged run; retrain "
            "with a lower lr"
        )
    return state


def trainer_checkpoints(output_dir: str | os.PathLike) -> list[tuple[StateDict, float]]:
    """The ``checkpoint-<step>`` folders of a ``transformers.Trainer`` run as ``(state_dict, lr)``
    pairs, in step order. The learning rate is the last one logged at or before that step in the
    folder's ``trainer_state.json``. Keys are the Trainer model's own: give ``influence.scores``
    and ``word_scores`` that model as it is (``HFClassifier`` loads them too).
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
