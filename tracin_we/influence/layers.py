"""TracIn on chosen parameters (TracIn-Second, middle layers, all parameters) and grad-cos.

Per-example gradients come from ``torch.func`` (``vmap(grad(...))`` over each batch) and are kept
flattened, (n, P): memory grows with the number of chosen parameters. Positive = proponent.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tracin_we.core.inputs import Tensors
from tracin_we.core.persistence import config_key
from tracin_we.influence.context import Kernel, Run
from tracin_we.influence.gradients import param_grads


@dataclass(frozen=True)
class ParamKernel:
    """TracIn on the parameters ``names``: ∇_θ ℓ(z) · ∇_θ ℓ(z')."""

    names: tuple[str, ...]

    @property
    def kind(self) -> str:
        return "params:" + config_key(list(self.names), 16)

    def features(self, run: Run, data: Tensors) -> Tensors:
        grads = param_grads(
            run.model, data, list(self.names), run.options.batch_size, run.options.device
        )
        return {"grads": grads}

    def pairwise(self, test: Tensors, train: Tensors) -> torch.Tensor:
        return test["grads"] @ train["grads"].T

    def diagonal(self, features: Tensors) -> torch.Tensor:
        return features["grads"].pow(2).sum(-1)


@dataclass(frozen=True)
class CosineKernel:
    """grad-cos: ``inner`` on unit-normalised gradients, inner(z, z') / (‖g(z)‖ ‖g(z')‖), per
    checkpoint; an example with a zero gradient scores 0."""

    inner: Kernel

    @property
    def kind(self) -> str:
        return self.inner.kind  # the same features: the cache is shared with the inner method

    def features(self, run: Run, data: Tensors) -> Tensors:
        return self.inner.features(run, data)

    def pairwise(self, test: Tensors, train: Tensors) -> torch.Tensor:
        test_norm, train_norm = (self._norms(f) for f in (test, train))
        return self.inner.pairwise(test, train) / (test_norm.unsqueeze(1) * train_norm)

    def diagonal(self, features: Tensors) -> torch.Tensor:
        squared = self.inner.diagonal(features)
        return (squared > 0).to(squared.dtype)

    def _norms(self, features: Tensors) -> torch.Tensor:
        squared = self.inner.diagonal(features)
        return squared.sqrt().clamp_min(torch.finfo(squared.dtype).tiny)
