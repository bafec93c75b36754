"""Model inputs: the batch format every module shares, and the one forward call.

A batch is a dict of tensors (``Tensors``): ``input_ids``, ``attention_mask`` and
``token_type_ids`` (each (N, T), when present) and ``labels`` (N,). The special token ids are
bert-base-uncased's, the vocabulary every built-in model uses.
"""

from __future__ import annotations

import torch
from datasets import Dataset
from torch import nn

Tensors = dict[str, torch.Tensor]

MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
PAD_ID, CLS_ID, SEP_ID = 0, 101, 102  # bert-base-uncased [PAD], [CLS], [SEP]
SPECIAL_IDS = (PAD_ID, CLS_ID, SEP_ID)  # in every text: never "shared words", never edited


def model_inputs(data: Dataset | list[dict] | dict) -> Tensors:
    """Stack a ``Dataset`` or list of dicts into tensors: ``input_ids``, ``attention_mask``,
    ``token_type_ids`` (each (N, T), when present) and ``labels`` (N,)."""
    if isinstance(data, dict) and "input_ids" in data and torch.is_tensor(data["input_ids"]):
        return data
    rows = data.to_dict() if isinstance(data, Dataset) else None
    if rows is None:
        if not data:
            return {}
        rows = {k: [ex[k] for ex in data] for k in data[0]}
    out = {k: torch.as_tensor(rows[k]) for k in MODEL_INPUTS if k in rows}
    label_key = "labels" if "labels" in rows else "label" if "label" in rows else None
    if label_key is not None:
        out["labels"] = torch.as_tensor(rows[label_key], dtype=torch.long)
    return out


def select(tensors: Tensors, index: torch.Tensor, device: str | torch.device) -> Tensors:
    """Rows ``index`` of every tensor, moved to ``device``."""
    return {k: v[index].to(device) for k, v in tensors.items()}


def forward(model: nn.Module, batch: Tensors) -> torch.Tensor:
    """Logits (B, C) for a batch dict (labels ignored)."""
    return model(**{k: v for k, v in batch.items() if k in MODEL_INPUTS})
