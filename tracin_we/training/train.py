"""A cached training run: ``train(config)`` trains a ``TrainConfig`` with the recipe of
``tracin_we.training.recipe`` and keeps the checkpoints that TracIn needs.

The result is cached under a key derived from the resolved config and the data's fingerprint: a
rerun with the same config reuses it, a different config never does, and an interrupted run
resumes from its last finished epoch. Files follow ``tracin_we.core.persistence``'s rule: written
atomically, recorded with their sha256, verified on every read; damaged partial state of an
interrupted run is discarded (training restarts from scratch, logged), a damaged finished run is
refused. The torch thread count is part of the cache key. The folder's layout and the resume
logic are ``training.cached_run``'s, shared with MLM pretraining (``training.pretrain``).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from datasets import DatasetDict
from torch import nn

from tracin_we.core.checkpoints import load_checkpoint
from tracin_we.core.data import fingerprint, make_splits
from tracin_we.core.inputs import model_inputs
from tracin_we.core.models import check_length, word_embeddings
from tracin_we.core.persistence import Folder, cache_dir, config_key
from tracin_we.training.cached_run import Checkpoint, fit_epochs, load_checkpoints, open_run
from tracin_we.training.distill import NotDistilled
from tracin_we.training.loop import accuracy
from tracin_we.training.model_init import new_model
from tracin_we.training.recipe import RECIPE_VERSION, TrainConfig, config_identity

log = logging.getLogger(__name__)

__all__ = ["Checkpoint", "TrainResult", "resolved_config", "train", "trained"]


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
    full run), while any one thread count gives bitwise-identical weights every time on one CPU
    type and torch build (another CPU's kernels round otherwise: its models differ like seeds).
    """
    resolved = config_identity(config)
    resolved.pop("init_from", None)  # `init` names the pretrained weights by their hash
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
    stores its state dict, the learning rate in force, its epoch and the resolved config
    (``tracin_we.training.cached_run``).
    """
    splits = splits if splits is not None else make_splits(config.data)
    model, resolved = _built(config, splits)
    init = resolved["init"]
    folder = Folder(Path(run_dir) if run_dir else _cached_path(config, resolved, cache))
    result = open_run(folder, resolved, overwrite, named=run_dir is not None)
    if result is None:
        tensors = {k: model_inputs(splits[k]) for k in splits}
        _check_vocab(model, tensors)

        def final_metrics(model: nn.Module, history: list[dict]) -> dict:
            return {
                "test_accuracy": accuracy(model, tensors["test"], device),
                "val_accuracy": history[-1]["val_accuracy"] if history else float("nan"),
                "n_train": len(tensors["train"]["labels"]),
            }

        result = fit_epochs(
            folder,
            resolved,
            model,
            tensors["train"],
            config,
            {"init": init},
            device=device,
            progress=progress,
            epoch_metrics=lambda model: {
                "val_accuracy": accuracy(model, tensors["validation"], device)
            },
            final_metrics=final_metrics,
        )
    return _result(folder.path, config, result)


def trained(
    config: TrainConfig, splits: DatasetDict | None = None, cache: str | Path | None = None
) -> TrainResult | None:
    """``train(config, splits, cache=cache)``'s result when the cache holds it finished, else
    None; never trains (builds the model once, for its init's name, as ``train`` does; a
    distilled init not yet distilled means nothing trained)."""
    splits = splits if splits is not None else make_splits(config.data)
    try:
        resolved = _built(config, splits, distil=False)[1]
    except NotDistilled:
        return None
    folder = Folder(_cached_path(config, resolved, cache))
    if folder.read_json("config.json", recompute=False) != resolved:
        return None
    result = folder.read_json("result.json", recompute=False)
    return None if result is None else _result(folder.path, config, result)


def _built(config: TrainConfig, splits: DatasetDict, distil: bool = True) -> tuple[nn.Module, dict]:
    """The model ``config`` starts from and the resolved config naming its run (its cache key
    comes from it): what ``train`` and ``trained`` both start from (``distil``: ``new_model``'s)."""
    model, init = new_model(config, distil)
    check_length(model, config.data.max_length, name=config.model)
    return model, resolved_config(config, init, fingerprint(splits), torch.get_num_threads())


def _cached_path(config: TrainConfig, resolved: dict, cache: str | Path | None) -> Path:
    name = f"{config.model.replace('/', '_')}-{config.data.name}-{config_key(resolved)}"
    return cache_dir(cache) / "train" / name


def _result(path: Path, config: TrainConfig, result: dict) -> TrainResult:
    checkpoints, final = load_checkpoints(path, result)
    return TrainResult(
        path, config, result["init"], checkpoints, final, result["metrics"], result["history"]
    )


def _check_vocab(model: nn.Module, tensors: dict[str, dict[str, torch.Tensor]]) -> None:
    rows = word_embeddings(model).num_embeddings
    top = max(int(t["input_ids"].max()) for t in tensors.values() if len(t.get("input_ids", [])))
    if top >= rows:
        raise ValueError(
            f"tokenizer: token id {top} is outside the model's {rows}-row "
            "word embedding; use the model's own tokenizer"
        )
