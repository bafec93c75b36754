"""The cancellation effect, measured per parameter tensor and per layer group.

For per-example training gradients g_i of a parameter block θ (arXiv 2202.11844, "The cancellation
effect"):

    C_l1(θ)    = Σ_i ‖g_i‖₁ / ‖Σ_i g_i‖₁       (the 2025 critique's measure; ≥ 1)
    C_l1_l2(θ) = Σ_i ‖g_i‖₁ / ‖Σ_i g_i‖₂       (the L2 variant of the denominator)
    C_l2(θ)    = Σ_i ‖g_i‖₂ / ‖Σ_i g_i‖₂       (≥ 1)

A large C means large per-example gradients that cancel in their sum: large TracIn scores of
both signs whose deletion barely moves the model. Everything is computed in one pass over the data
with batched per-example gradients; the word embedding uses the sparse rows of the influence engine.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import pandas as pd
import torch
from torch import nn

from tracin_we.core.inputs import model_inputs
from tracin_we.core.models import word_embeddings
from tracin_we.influence.gradients import batch_rows, batches, param_grads

VARIANTS = ("C_l1", "C_l1_l2", "C_l2")


def check_variant(variant: str) -> None:
    """``variant`` names one of the ratios ``VARIANTS``; a ``ValueError`` naming it otherwise."""
    if variant not in VARIANTS:
        raise ValueError(f"variant={variant!r} is unknown; allowed: {list(VARIANTS)}")


@dataclass
class _Accumulator:
    """Running sums for one parameter tensor over the examples seen so far."""

    sum_l1: float  # Σ_i ‖g_i‖₁
    total: torch.Tensor  # Σ_i g_i, flattened
    sq_norms: list[torch.Tensor]  # per batch: ‖g_i‖₂² of each example, (B,)

    def add(self, grads: torch.Tensor) -> None:
        """``grads`` (B, P): the batch's per-example gradients of this tensor."""
        self.sum_l1 += grads.abs().sum().item()
        self.total += grads.sum(0)
        self.sq_norms.append(grads.pow(2).sum(1))


def layer_groups(model: nn.Module) -> dict[str, str]:
    """Parameter name → layer group, first layer to last: ``word_embeddings``, ``embeddings``
    (position/type/LayerNorm), ``layer<k>.attention``, ``layer<k>.ffn``, ``pooler``,
    ``classifier`` for BERT-style models; ``conv<k>`` for the CNN; else the module path."""
    embedding = word_embeddings(model).weight
    groups = {}
    for name, param in model.named_parameters():
        if param is embedding:
            groups[name] = "word_embeddings"
        elif m := re.search(r"layer\.(\d+)\.attention", name):
            groups[name] = f"layer{m.group(1)}.attention"
        elif m := re.search(r"layer\.(\d+)\.(intermediate|output)", name):
            groups[name] = f"layer{m.group(1)}.ffn"
        elif m := re.search(r"convs\.(\d+)", name):
            groups[name] = f"conv{int(m.group(1)) // 2 + 1}"
        elif "embeddings" in name:
            groups[name] = "embeddings"
        elif "pooler" in name:
            groups[name] = "pooler"
        elif "classifier" in name or "score" in name:
            groups[name] = "classifier"
        else:
            groups[name] = name.rsplit(".", 1)[0]
    return groups


def cancellation(
    model: nn.Module,
    state_dict: dict[str, torch.Tensor] | None,
    data,
    batch_size: int = 64,
    device: str = "cpu",
    groups: list[str] | None = None,
) -> pd.DataFrame:
    """Cancellation ratios of ``model`` (loaded with ``state_dict`` when given) over ``data``.

    Returns one row per parameter tensor and one per layer group (``level`` = "tensor" or
    "group"), in first-to-last order, with ``group``, ``name``, ``n_params``, ``sum_l1``,
    ``l1_of_sum``, ``sum_l2``, ``l2_of_sum`` and the ratios ``C_l1``, ``C_l1_l2``, ``C_l2``.
    ``groups`` restricts the computation to those layer groups (names from ``layer_groups``).
    """
    if state_dict is not None:
        model.load_state_dict(state_dict)
    model.eval().to(device)
    tensors = model_inputs(data)
    if not len(tensors.get("labels", [])):
        raise ValueError("data is empty; give at least one labelled example")
    names = _chosen(model, groups)
    embedding_name = next((n for n in names if layer_groups(model)[n] == "word_embeddings"), None)
    dense = [n for n in names if n != embedding_name]
    params = dict(model.named_parameters())
    sums = {
        n: _Accumulator(
            0.0, torch.zeros(params[n].numel(), dtype=params[n].dtype, device=device), []
        )
        for n in names
    }
    for batch in batches(tensors, batch_size, device):
        if embedding_name is not None:
            _add_embedding(model, batch, sums[embedding_name])
        if dense:
            flat = param_grads(model, batch, dense, len(batch["labels"]), device)
            start = 0
            for name in dense:
                size = params[name].numel()
                sums[name].add(flat[:, start : start + size])
                start += size
    return _table(sums, {n: layer_groups(model)[n] for n in names})


def _chosen(model: nn.Module, groups: list[str] | None) -> list[str]:
    mapping = layer_groups(model)
    if groups is None:
        return list(mapping)
    unknown = sorted(set(groups) - set(mapping.values()))
    if unknown:
        raise ValueError(
            f"groups: unknown layer names {unknown}; allowed: "
            f"{list(dict.fromkeys(mapping.values()))}"
        )
    return [n for n, g in mapping.items() if g in groups]


def _add_embedding(model: nn.Module, batch: dict[str, torch.Tensor], acc: _Accumulator) -> None:
    """The word-embedding gradient of each example is non-zero only in its tokens' rows."""
    rows = batch_rows(model, batch)
    d = rows.rows.shape[1]
    acc.sum_l1 += rows.rows.abs().sum().item()
    acc.total.view(-1, d).index_add_(0, rows.ids, rows.rows)
    acc.sq_norms.append(rows.sq_norms())


def _table(sums: dict[str, _Accumulator], groups: dict[str, str]) -> pd.DataFrame:
    lines = []
    for name, acc in sums.items():
        lines.append(
            _ratios(
                "tensor",
                groups[name],
                name,
                acc.total.numel(),
                acc.sum_l1,
                acc.total.abs().sum().item(),
                acc.total.pow(2).sum().item(),
                torch.cat(acc.sq_norms),
            )
        )
    for group in dict.fromkeys(groups.values()):
        members = [sums[n] for n in sums if groups[n] == group]
        sq = torch.stack([torch.cat(a.sq_norms) for a in members]).sum(0)
        lines.append(
            _ratios(
                "group",
                group,
                group,
                sum(a.total.numel() for a in members),
                sum(a.sum_l1 for a in members),
                sum(a.total.abs().sum().item() for a in members),
                sum(a.total.pow(2).sum().item() for a in members),
                sq,
            )
        )
    return pd.DataFrame(lines)


def _ratios(
    level: str,
    group: str,
    name: str,
    n_params: int,
    sum_l1: float,
    l1_of_sum: float,
    sq_of_sum: float,
    example_sq_norms: torch.Tensor,
) -> dict:
    sum_l2 = example_sq_norms.sqrt().sum().item()
    l2_of_sum = sq_of_sum**0.5
    return {
        "level": level,
        "group": group,
        "name": name,
        "n_params": n_params,
        "sum_l1": sum_l1,
        "l1_of_sum": l1_of_sum,
        "sum_l2": sum_l2,
        "l2_of_sum": l2_of_sum,
        "C_l1": sum_l1 / l1_of_sum if l1_of_sum > 0 else float("inf"),
        "C_l1_l2": sum_l1 / l2_of_sum if l2_of_sum > 0 else float("inf"),
        "C_l2": sum_l2 / l2_of_sum if l2_of_sum > 0 else float("inf"),
    }


def influence_sums(scores_by_method: dict[str, torch.Tensor]) -> pd.DataFrame:
    """Per method and test point j (rows of a (n_test, n_train) score matrix): Σ_i |s_ij| (the
    magnitude of the influences), |Σ_i s_ij| (what survives their cancellation) and the ratio."""
    frames = []
    for method, matrix in scores_by_method.items():
        m = matrix.double()
        frames.append(
            pd.DataFrame(
                {
                    "method": method,
                    "point": range(len(m)),
                    "sum |influence|": m.abs().sum(1).numpy(),
                    "|sum influence|": m.sum(1).abs().numpy(),
                }
            )
        )
    frame = pd.concat(frames, ignore_index=True)
    frame["cancellation"] = frame["sum |influence|"] / frame["|sum influence|"]
    return frame
