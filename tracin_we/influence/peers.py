"""TRAK and EK-FAC influence functions through their own libraries, on this package's models and
data: MadryLab's ``traker`` (TRAK, Park et al. 2023, arXiv 2303.14186) and ``kronfluence``
(EK-FAC influence functions, Grosse et al. 2023, arXiv 2308.03296). Neither is re-implemented
here: these functions hand the libraries the model, the tensors and the checkpoints, and return
their scores as (n_test, n_train) with positive = proponent, as every method of ``scores``.

- ``trak_scores``: ``TRAKer`` with its ``text_classification`` model output (the margin
  f = log[p(y|x) / (1 − p(y|x))]), float32, a Gaussian random projection of the gradients to
  ``proj_dim`` (traker's ``BasicProjector``, its matrix held whole rather than regenerated per
  batch in blocks; traker's CUDA projector needs ``fast_jl``), and
  one TRAK "model" per checkpoint (the ensemble is the checkpoints of one training run). For
  checkpoints m = 1..M with projected gradients Φ_m (n_train × proj_dim) and φ_m(z) of one
  example, and Q_m(z) = 1 − p(y|x):
      score(z', z) = [1/M Σ_m φ_m(z')ᵀ (Φ_mᵀ Φ_m)⁻¹ φ_m(z) / (P c_m)] · [1/M Σ_m Q_m(z)],
  c_m = mean |(Φ_mᵀ Φ_m)⁻¹| and P the number of parameters (traker's rescalings: the scale is
  arbitrary, the ranking is TRAK's). Gradients are taken with respect to
  ``params`` (default: every parameter but the word embedding, whose vocabulary × d rows would
  make the projection the whole cost).
- ``ekfac_scores``: kronfluence's EK-FAC factors and pairwise scores at the last checkpoint:
      score(z', z) = ∇ℓ(z')ᵀ (G + λI)⁻¹ ∇ℓ(z),
  G the EK-FAC approximation of the (true, label-sampling) Fisher of the training loss over the
  tracked modules, ℓ the cross-entropy at the true label. Training on z then lowers ℓ(z'):
  positive = proponent. kronfluence tracks ``nn.Linear`` and ``nn.Conv2d``; each ``nn.Conv1d``
  (the CNN's) runs as the equivalent ``nn.Conv2d`` of height 1 (``conv1d_as_conv2d``: the same
  weights, the same outputs); embeddings are not tracked. λ: kronfluence's heuristic (0.1 × the
  mean eigenvalue of each module's factors) unless ``damping`` is given.
"""

from __future__ import annotations

import copy
import importlib
import logging
import tempfile
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from tracin_we.core.checkpoints import StateDict
from tracin_we.core.inputs import Tensors, forward
from tracin_we.core.models import word_embeddings

KRONFLUENCE = "--no-deps kronfluence==1.0.1"  # without the torchvision it declares (pyproject)
# The inputs both libraries get, in the order of traker's text_classification batch.
KEYS = ("input_ids", "token_type_ids", "attention_mask", "labels")


def _library(module: str, install: str):
    """``module`` imported, or an ``ImportError`` that says how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise ImportError(
            f"this method needs {module!r}: pip install {install} (make does it)"
        ) from error


class _Logits(nn.Module):
    """``model`` called with keyword inputs, as the libraries call it; returns its logits."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids, token_type_ids=None, attention_mask=None) -> torch.Tensor:
        batch = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            batch["token_type_ids"] = token_type_ids
        return forward(self.model, batch)


def _batches(data: Tensors, size: int) -> list[dict[str, torch.Tensor]]:
    n = len(data["labels"])
    full = {**data}
    full.setdefault("token_type_ids", torch.zeros_like(data["input_ids"]))
    return [{k: full[k][i : i + size] for k in KEYS} for i in range(0, n, size)]


def default_trak_params(model: nn.Module) -> list[str]:
    """Every trainable parameter's name but the word embedding's."""
    embedding = word_embeddings(model).weight
    return [n for n, p in model.named_parameters() if p.requires_grad and p is not embedding]


def trak_scores(
    model: nn.Module,
    checkpoints: Sequence[tuple[StateDict, float]],
    train: Tensors,
    test: Tensors,
    proj_dim: int = 1024,
    params: Sequence[str] | None = None,
    seed: int = 0,
    batch_size: int = 32,
    device: str | torch.device = "cpu",
    projector=None,
    gradient_computer=None,
) -> torch.Tensor:
    """TRAK (module docstring) of ``train`` on ``test``: (n_test, n_train). ``model``: from
    ``models.as_classifier`` (left at the last checkpoint, in eval mode); ``checkpoints``:
    resolved state dicts (their learning rates are not used); ``params``: parameter names of
    ``model``; ``projector``, ``gradient_computer``: traker's instead of the defaults (tests use
    ``NoOpProjector`` and traker's own gradient computer). ``proj_dim`` must not exceed the
    training texts or the gradient's size: Φᵀ Φ (proj_dim × proj_dim) would be singular."""
    names = list(params) if params is not None else default_trak_params(model)
    n_params = sum(model.get_parameter(n).numel() for n in names)
    if projector is None and proj_dim > min(len(train["labels"]), n_params):
        raise ValueError(
            f"proj_dim={proj_dim} must be <= the {len(train['labels'])} training texts and the "
            f"{n_params} gradient parameters (TRAK inverts a proj_dim × proj_dim Gram matrix)"
        )
    wrapped = _Logits(model).to(device)
    with tempfile.TemporaryDirectory(prefix="trak-") as folder:
        traker = _library("trak", "traker").TRAKer(
            model=wrapped, task="text_classification", train_set_size=len(train["labels"]),
            save_dir=folder, device=str(device), proj_dim=proj_dim, use_half_precision=False,
            projector_seed=seed, grad_wrt=[f"model.{n}" for n in names],
            projector=projector or _held_projector(n_params, proj_dim, seed, device),
            gradient_computer=gradient_computer or _selected_gradients(),
            logging_level=logging.WARNING,
        )  # fmt: skip
        states = _featurize(traker, model, wrapped, checkpoints, train, batch_size, device)
        for model_id, state in enumerate(states):
            traker.start_scoring_checkpoint("test", state, model_id, len(test["labels"]))
            for batch in _batches(test, batch_size):
                traker.score(batch=_ordered(batch, device), num_samples=len(batch["labels"]))
        return torch.as_tensor(traker.finalize_scores(exp_name="test")).T.float().clone()


def _featurize(traker, model, wrapped, checkpoints, train, batch_size, device) -> list[StateDict]:
    """Each checkpoint's projected training gradients, then traker's Φ (Φᵀ Φ)⁻¹; returns the
    wrapped model's state dict per checkpoint (the scoring pass loads them again)."""
    states = []
    for model_id, (state, _) in enumerate(checkpoints):
        model.load_state_dict(state)
        states.append({k: v.clone() for k, v in wrapped.state_dict().items()})
        traker.load_checkpoint(states[-1], model_id=model_id)
        for batch in _batches(train, batch_size):
            traker.featurize(batch=_ordered(batch, device), num_samples=len(batch["labels"]))
    traker.finalize_features()
    return states


def _held_projector(n_params: int, proj_dim: int, seed: int, device):
    """traker's Gaussian ``BasicProjector`` with its matrix (n_params × proj_dim) built once and
    kept: traker's default regenerates it 100 columns at a time for every batch, and frees it
    after featurizing, which one checkpoint would then need again."""
    projectors = _library("trak.projectors", "traker")

    class Held(projectors.BasicProjector):
        def free_memory(self) -> None:
            pass

    return Held(
        grad_dim=n_params, proj_dim=proj_dim, seed=seed, device=str(device),
        proj_type=projectors.ProjectionType.normal, block_size=proj_dim,
    )  # fmt: skip


def _selected_gradients():
    """traker's ``FunctionalGradientComputer`` differentiating only the ``grad_wrt`` parameters:
    the others enter ``functional_call`` as the module's own, so no per-example gradient of the
    word embedding (vocabulary × d per example) is formed and then dropped."""
    base = _library("trak.gradient_computers", "traker").FunctionalGradientComputer

    class Selected(base):
        def load_model_params(self, model: nn.Module) -> None:
            super().load_model_params(model)
            keep = getattr(self, "grad_wrt", None)  # None during traker's own __init__
            if keep is not None:
                self.func_weights = {k: v for k, v in self.func_weights.items() if k in keep}

    return Selected


def _ordered(batch: dict[str, torch.Tensor], device) -> list[torch.Tensor]:
    """traker's text_classification batch: the ``KEYS`` in order, on ``device``."""
    return [batch[k].to(device) for k in KEYS]


class _Conv1dAs2d(nn.Module):
    """``conv`` (an ``nn.Conv1d``) as an ``nn.Conv2d`` of kernel height 1 on (B, C, 1, L)."""

    def __init__(self, conv: nn.Conv1d) -> None:
        super().__init__()
        self.conv = nn.Conv2d(
            conv.in_channels, conv.out_channels, (1, conv.kernel_size[0]),
            stride=(1, conv.stride[0]), padding=(0, conv.padding[0]),
            dilation=(1, conv.dilation[0]), groups=conv.groups, bias=conv.bias is not None,
            device=conv.weight.device, dtype=conv.weight.dtype,
        )  # fmt: skip
        with torch.no_grad():
            self.conv.weight.copy_(conv.weight.unsqueeze(2))
            if conv.bias is not None:
                self.conv.bias.copy_(conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x.unsqueeze(2)).squeeze(2)


def conv1d_as_conv2d(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose every ``nn.Conv1d`` is a ``_Conv1dAs2d`` holding the same
    weights; a Conv1d with string padding ("same") or non-zero padding mode is refused."""
    model = copy.deepcopy(model)
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, nn.Conv1d):
                if isinstance(child.padding, str) or child.padding_mode != "zeros":
                    raise ValueError(
                        f"{name}.{child_name}: padding={child.padding!r}, padding_mode="
                        f"{child.padding_mode!r}; ekfac converts integer zero padding only"
                    )
                setattr(module, child_name, _Conv1dAs2d(child))
    return model


def _classification_task(tracked: list[str] | None, seed: int = 0):
    Task = _library("kronfluence.task", KRONFLUENCE).Task

    generator = torch.Generator().manual_seed(seed)

    class Classification(Task):
        """Cross-entropy at the label, or at a label drawn from the model (the true Fisher;
        from ``generator``, so that the same call gives the same factors)."""

        def compute_train_loss(self, batch, model, sample=False):
            logits = model(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"])
            labels = batch["labels"]
            if sample:
                with torch.no_grad():
                    p = logits.detach().softmax(-1).cpu()
                    labels = torch.multinomial(p, 1, generator=generator).flatten()
                    labels = labels.to(logits.device)
            return F.cross_entropy(logits, labels, reduction="sum")

        def compute_measurement(self, batch, model):
            logits = model(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"])
            return F.cross_entropy(logits, batch["labels"], reduction="sum")

        def get_influence_tracked_modules(self):
            return tracked

    return Classification()


class _Rows(torch.utils.data.Dataset):
    def __init__(self, data: Tensors) -> None:
        self.rows = _batches(data, len(data["labels"]))[0]

    def __len__(self) -> int:
        return len(self.rows["labels"])

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {k: v[i] for k, v in self.rows.items()}


def ekfac_scores(
    model: nn.Module,
    state: StateDict,
    train: Tensors,
    test: Tensors,
    damping: float | None = None,
    batch_size: int = 32,
    device: str | torch.device = "cpu",
    tracked: list[str] | None = None,
) -> torch.Tensor:
    """EK-FAC influence (module docstring) at the checkpoint ``state``: (n_test, n_train).
    ``model``: from ``models.as_classifier``; ``tracked``: module names of the converted model
    (``conv1d_as_conv2d``; default: every Linear and Conv2d)."""
    model.load_state_dict(state)
    converted = _Logits(conv1d_as_conv2d(model)).eval().to(device)
    return kronfluence_scores(
        converted, _classification_task(tracked), _Rows(train), _Rows(test), damping=damping,
        batch_size=batch_size, device=device,
    )  # fmt: skip


def kronfluence_scores(
    model: nn.Module,
    task,
    train: torch.utils.data.Dataset,
    test: torch.utils.data.Dataset,
    damping: float | None = None,
    batch_size: int = 32,
    device: str | torch.device = "cpu",
    empirical_fisher: bool = False,
) -> torch.Tensor:
    """kronfluence's EK-FAC pairwise scores (n_test, n_train) of ``model`` under its ``Task``:
    ∇f(z')ᵀ (G + λI)⁻¹ ∇ℓ(z), G from labels drawn from the model (the true Fisher) or, with
    ``empirical_fisher``, from the data's own labels."""
    _library("kronfluence", KRONFLUENCE)
    from kronfluence.analyzer import Analyzer, prepare_model
    from kronfluence.arguments import FactorArguments, ScoreArguments

    # kronfluence's State is a process-wide singleton: else the first call's device would stick
    _library("kronfluence.utils.state", KRONFLUENCE).State._reset_state()
    prepared = prepare_model(model, task)
    factor_args = FactorArguments(strategy="ekfac", use_empirical_fisher=empirical_fisher)
    with tempfile.TemporaryDirectory(prefix="ekfac-") as folder:
        analyzer = Analyzer(
            analysis_name="tracin_we", model=prepared, task=task, cpu=str(device) == "cpu",
            disable_tqdm=True, output_dir=folder, disable_model_save=True,
        )  # fmt: skip
        analyzer.fit_all_factors(
            factors_name="ekfac", dataset=train, per_device_batch_size=batch_size,
            factor_args=factor_args, overwrite_output_dir=True,
        )  # fmt: skip
        analyzer.compute_pairwise_scores(
            scores_name="scores", factors_name="ekfac", query_dataset=test, train_dataset=train,
            per_device_query_batch_size=batch_size, per_device_train_batch_size=batch_size,
            score_args=ScoreArguments(damping_factor=damping), overwrite_output_dir=True,
        )  # fmt: skip
        return analyzer.load_pairwise_scores("scores")["all_modules"].float().clone()
