"""The model at each checkpoint, and the on-disk cache of training-set gradient rows.

``Run`` loads each checkpoint's state dict into the caller's model in turn (in eval mode, on the
requested device and dtype) and puts the model back as it was afterwards. TracIn-style methods
are a sum over checkpoints of a kernel between per-example features (``Kernel``), so
``tracin(run, kernel, train, test)`` serves all of them; the training set's features are computed
once per checkpoint and, with the ``cache_dir`` option (the cache root of
``core.persistence``), cached in ``<cache_dir>/gradients/`` under a hash of the checkpoint's
tensors, the data's tensors and the kind of feature. Each file is verified when read; a damaged
one is recomputed (``persistence``'s rule).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from typing import Protocol

import torch
from torch import nn

from tracin_we.core.checkpoints import StateDict
from tracin_we.core.inputs import Tensors
from tracin_we.core.models import check_logits
from tracin_we.core.persistence import Folder, cache_dir, config_key, tensor_digest
from tracin_we.influence.options import Options
from tracin_we.influence.progress import bar


class Kernel(Protocol):
    """Per-example features at one checkpoint and the TracIn kernel between them.

    ``pairwise(test_features, train_features)`` → (n_test, n_train); ``diagonal(features)`` → (n,)
    is ``pairwise(f, f)``'s diagonal computed directly. Positive = proponent.
    """

    @property
    def kind(self) -> str:
        """Names the features and every option they depend on (part of the cache key)."""

    def features(self, run: Run, data: Tensors) -> Tensors: ...

    def pairwise(self, test: Tensors, train: Tensors) -> torch.Tensor: ...

    def diagonal(self, features: Tensors) -> torch.Tensor: ...


@dataclass
class Run:
    """A model, its checkpoints ``(state_dict, lr)`` and the options of one ``scores`` call."""

    model: nn.Module
    checkpoints: list[tuple[StateDict, float]]
    options: Options

    def each_checkpoint(self, desc: str | None = None) -> Iterator[tuple[StateDict, float]]:
        """Load each checkpoint into the model in turn; yield ``(state_dict, lr)``. With ``desc``,
        behind a progress bar that stays (``progress.bar``)."""
        items = self.checkpoints
        if desc is not None:
            items = bar(items, desc, total=len(items), unit="checkpoint", leave=True)
        for state, lr in items:
            self.model.load_state_dict(state)
            yield state, lr

    def load_last(self) -> StateDict:
        """Load the last checkpoint (that of influence functions and representer points)."""
        state = self.checkpoints[-1][0]
        self.model.load_state_dict(state)
        return state

    @cached_property
    def gradient_cache(self) -> Folder | None:
        """``<cache_dir>/gradients``, or None without the ``cache_dir`` option."""
        if self.options.cache_dir is None:
            return None
        folder = Folder(cache_dir(self.options.cache_dir) / "gradients")
        folder.remove_stale_tmp()
        return folder

    def train_features(self, kernel: Kernel, state: StateDict, train: Tensors) -> Tensors:
        """``kernel.features(self, train)`` at the loaded checkpoint ``state``, from the gradient
        cache when the ``cache_dir`` option is set and it holds them, verified."""
        folder = self.gradient_cache
        if folder is None:
            return kernel.features(self, train)
        meta = [kernel.kind, type(self.model).__name__, str(self.options.dtype)]
        key = config_key([*meta, tensor_digest(state), tensor_digest(train)], 24)
        name = f"{kernel.kind.split(':')[0]}-{key}.pt"
        saved = folder.load_torch(name, recompute=True)
        if saved is not None and saved.get("key") == key:
            return {k: v.to(self.options.device) for k, v in saved["features"].items()}
        features = kernel.features(self, train)
        folder.save_torch(name, {"key": key, "features": {k: v.cpu() for k, v in features.items()}})
        return features


def tracin(run: Run, kernel: Kernel, train: Tensors, test: Tensors) -> torch.Tensor:
    """Σ_c η_c kernel(test, train) at each checkpoint c: (n_test, n_train), positive = proponent."""
    total = None
    for state, lr in run.each_checkpoint("TracIn over checkpoints"):
        train_features = run.train_features(kernel, state, train)
        part = lr * kernel.pairwise(kernel.features(run, test), train_features)
        total = part if total is None else total + part
        del train_features, part  # not held while the next checkpoint's are computed
    return total


def tracin_diagonal(run: Run, kernel: Kernel, data: Tensors) -> torch.Tensor:
    """Σ_c η_c kernel(z, z) for each example z of ``data``, (n,); ``data`` is a training set, so
    its features are cached as in ``tracin``."""
    total = None
    for state, lr in run.each_checkpoint("self-influence over checkpoints"):
        part = lr * kernel.diagonal(run.train_features(kernel, state, data))
        total = part if total is None else total + part
    return total


@contextmanager
def prepared(
    model: nn.Module, options: Options, probe: Tensors | None = None
) -> Iterator[nn.Module]:
    """``model`` in eval mode on ``options.device`` in ``options.dtype``; on exit its original
    weights, device, dtype and train/eval mode are restored. With ``probe`` (data), one forward
    pass on its first example checks that the model gives logits (``models.check_logits``)
    before any gradient is taken."""
    snapshot = {k: v.detach().clone() for k, v in model.state_dict().items()}
    reference = next(model.parameters())
    device, dtype, training = reference.device, reference.dtype, model.training
    model.to(device=options.device, dtype=options.dtype).eval()
    try:
        if probe is not None:
            check_logits(model, {k: v[:1].to(options.device) for k, v in probe.items()})
        yield model
    finally:
        model.to(device=device, dtype=dtype)
        model.load_state_dict(snapshot)
        model.train(training)
