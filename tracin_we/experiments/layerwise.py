"""TracIn restricted to each layer group, against a whole reference set, in one pass.

For layer group L (``cancellation.layer_groups``) and a reference set R (e.g. clean validation
points), the influence of training example z_i on R's summed loss is

    s_L(z_i) = Σ_c η_c ∇_L ℓ(z_i; θ_c) · Σ_{z' ∈ R} ∇_L ℓ(z'; θ_c)        (positive = proponent),

which equals summing ``scores("tracin-layer", params=L)`` over R's rows, but needs only one
backward pass over R per checkpoint: the dot product distributes over the sum. The word
embedding uses the sparse rows of the influence engine.
"""

from __future__ import annotations

from dataclasses import replace

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from tracin_we.core.checkpoints import resolve_checkpoints
from tracin_we.core.data import make_splits
from tracin_we.core.inputs import forward, model_inputs
from tracin_we.core.models import word_embeddings
from tracin_we.experiments.cancellation import layer_groups
from tracin_we.experiments.deletion import DeletionConfig, run_deletion
from tracin_we.influence.context import prepared
from tracin_we.influence.gradients import batch_rows, batches, param_grads
from tracin_we.influence.options import Options
from tracin_we.training.model_init import new_model


def layer_scores(
    model: nn.Module, checkpoints, train, reference, batch_size: int = 64, device: str = "cpu"
) -> pd.DataFrame:
    """(N_train × groups) table of s_L(z_i), columns in first-to-last layer order."""
    pairs = resolve_checkpoints(checkpoints)
    train_t, reference_t = model_inputs(train), model_inputs(reference)
    for name, data in (("train", train_t), ("reference", reference_t)):
        if not len(data.get("labels", [])):
            raise ValueError(f"{name} is empty; give at least one labelled example")
    groups = layer_groups(model)
    total = {g: torch.zeros(len(train_t["labels"]), dtype=torch.float64) for g in groups.values()}
    with prepared(model, Options(device=device)):  # weights, device and mode restored on exit
        for state_dict, lr in pairs:
            model.load_state_dict(state_dict)
            for group, column in _one_checkpoint(
                model, groups, train_t, reference_t, batch_size, device
            ).items():
                total[group] += lr * column
    return pd.DataFrame({g: t.numpy() for g, t in total.items()})


def _one_checkpoint(
    model: nn.Module,
    groups: dict[str, str],
    train: dict,
    reference: dict,
    batch_size: int,
    device: str,
) -> dict[str, torch.Tensor]:
    embedding = word_embeddings(model)
    embedding_name = next(n for n, p in model.named_parameters() if p is embedding.weight)
    dense = [n for n in groups if n != embedding_name]
    summed = _summed_gradient(model, reference, batch_size, device)
    target = torch.cat([summed[n].flatten() for n in dense])
    sizes = [summed[n].numel() for n in dense]
    columns = {g: [] for g in groups.values()}
    for batch in batches(train, batch_size, device):
        flat = param_grads(model, batch, dense, len(batch["labels"]), device)
        products = (flat * target).split(sizes, dim=1)
        per_group: dict[str, torch.Tensor] = {}
        for name, product in zip(dense, products, strict=True):
            g = groups[name]
            per_group[g] = per_group.get(g, 0) + product.sum(1).double()
        per_group[groups[embedding_name]] = _embedding_dots(model, batch, summed[embedding_name])
        for g, value in per_group.items():
            columns[g].append(value.cpu())
    return {g: torch.cat(parts) for g, parts in columns.items()}


def _summed_gradient(
    model: nn.Module, data: dict, batch_size: int, device: str
) -> dict[str, torch.Tensor]:
    """Σ_{z ∈ data} ∇ℓ(z) for every parameter: plain backward passes of the summed loss."""
    model.zero_grad(set_to_none=True)
    with torch.enable_grad():
        for batch in batches(data, batch_size, device):
            F.cross_entropy(forward(model, batch), batch["labels"], reduction="sum").backward()
    summed = {
        n: p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p)
        for n, p in model.named_parameters()
    }
    model.zero_grad(set_to_none=True)
    return summed


def _embedding_dots(model: nn.Module, batch: dict, target: torch.Tensor) -> torch.Tensor:
    """(B,): Σ_w g_w(z_i) · target[w] from each example's sparse word-embedding rows."""
    rows = batch_rows(model, batch)
    dots = (rows.rows * target[rows.ids]).sum(1).double()
    out = torch.zeros(rows.n, dtype=torch.float64, device=dots.device)
    return out.index_add_(0, rows.example_index(), dots)


def layer_deletion(
    config: DeletionConfig,
    groups: list[str] | None = None,
    splits=None,
    device: str = "cpu",
    progress: bool = True,
) -> pd.DataFrame:
    """AUC-DEL± of TracIn restricted to each layer group (rows in first-to-last order).

    One case-deletion sweep per group through ``deletion.run_deletion``: ``tracin-we`` for the
    word embedding (equal to ``tracin-layer`` on it, and sparse), ``tracin-layer`` with the
    group's parameter names otherwise. ``config`` is a ``DeletionConfig`` whose ``methods`` are
    ignored; retrains are shared with every other sweep of the same recipe through the cache.
    """
    splits = splits if splits is not None else make_splits(config.train.data)
    mapping = layer_groups(new_model(config.train)[0])
    chosen = list(dict.fromkeys(mapping.values())) if groups is None else groups
    unknown = sorted(set(chosen) - set(mapping.values()))
    if unknown:
        raise ValueError(
            f"groups: unknown layer names {unknown}; allowed: "
            f"{list(dict.fromkeys(mapping.values()))}"
        )
    rows = []
    for group in chosen:
        if group == "word_embeddings":
            sweep = replace(config, methods=("tracin-we",), method_options={})
        else:
            names = [n for n, g in mapping.items() if g == group]
            sweep = replace(
                config,
                methods=("tracin-layer",),
                method_options={"tracin-layer": {"params": names}},
            )
        summary = run_deletion(sweep, splits, device=device, progress=progress).summary
        rows.append(summary.drop(columns="method").iloc[0].to_dict() | {"group": group})
    return pd.DataFrame(rows)[["group", *[c for c in rows[0] if c != "group"]]]
