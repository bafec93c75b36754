"""Model inputs: the batch format every module shares, and the one forward call.

A batch is a dict of tensors (``Tensors``): ``input_ids``, ``attention_mask`` and
``token_type_ids`` (each (N, T), when present) and ``labels`` (N,). Texts of different lengths
(tokenized without padding, as Hugging Face's ``DataCollatorWithPadding`` expects them, or batches
that collator padded each to its own length) are padded on the right to the longest one.

Structural tokens ([CLS], [SEP], [PAD] for BERT; <s>, </s>, <pad> for RoBERTa) are never "shared
words", never edited and never shown as words: ``structural_ids`` finds them from the tokenizer,
or without one from the data. ``PAD_ID``, ``CLS_ID``, ``SEP_ID`` are bert-base-uncased's, the
default tokenizer's.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from datasets import Dataset
from torch import nn
from torch.utils.data import DataLoader

Tensors = dict[str, torch.Tensor]

MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
PAD_ID, CLS_ID, SEP_ID, MASK_ID = 0, 101, 102, 103  # bert-base-uncased [PAD] [CLS] [SEP] [MASK]


def structural_ids(tokenizer=None, datasets: Sequence[Tensors] = ()) -> tuple[int, ...]:
    """Sorted ids of the tokens that mark a text's structure rather than a word.

    With a tokenizer: its pad, cls (else bos) and sep (else eos) ids — (0, 101, 102) for
    bert-base-uncased, (0, 1, 2) for RoBERTa. Without one (or one that names none of them):
    ``framing_ids(datasets)``, the ids that open every input or close every input."""

    def first(*names: str) -> int | None:
        found = (getattr(tokenizer, name, None) for name in names)
        return next((int(i) for i in found if i is not None), None)

    ids = {first("pad_token_id"), first("cls_token_id", "bos_token_id")}
    ids |= {first("sep_token_id", "eos_token_id")}
    ids.discard(None)
    return tuple(sorted(ids)) if ids else framing_ids(datasets)


def framing_ids(datasets: Sequence[Tensors]) -> tuple[int, ...]:
    """Sorted ids that a tokenizer puts around every text: the id at the first unmasked position
    of every input of ``datasets`` when it is the same everywhere ([CLS], <s>), and likewise at
    the last ([SEP], </s>). A tokenizer that adds none gives (), unless all texts happen to start
    (or end) with one word — with one text, its first and last tokens."""
    inputs = [d for d in datasets if len(d["input_ids"])]
    if not inputs:
        return ()
    ends = []
    for data in inputs:
        mask = data.get("attention_mask", torch.ones_like(data["input_ids"])).bool()
        first = mask.int().argmax(dim=1)
        last = mask.shape[1] - 1 - mask.flip(1).int().argmax(dim=1)
        rows = torch.arange(len(mask))
        ends.append(torch.stack([data["input_ids"][rows, first], data["input_ids"][rows, last]]))
    both = torch.cat(ends, dim=1)  # (2, N): first and last id of every input
    return tuple(sorted({int(row[0]) for row in both if bool((row == row[0]).all())}))


def model_inputs(data: Dataset | list[dict] | dict, pad_id: int = PAD_ID) -> Tensors:
    """Stack a ``Dataset``, a list of example dicts or a list of batch dicts (each (B_k, T_k)
    tensors, e.g. a ``DataLoader``'s batches) into tensors: ``input_ids``, ``attention_mask``,
    ``token_type_ids`` (each (N, T), when present) and ``labels`` (N,).

    Texts of different lengths are padded on the right to the longest (T = max length):
    ``input_ids`` with ``pad_id``, the rest with 0; without an ``attention_mask``, one marking
    each text's own positions is added. Texts of one length are stacked as they are."""
    if isinstance(data, dict) and "input_ids" in data and torch.is_tensor(data["input_ids"]):
        return data
    if isinstance(data, DataLoader):
        data = list(data)
    if isinstance(data, list) and data and _is_batch(data[0]):
        return _concat([_batch_tensors(batch) for batch in data], pad_id)
    rows = data.to_dict() if isinstance(data, Dataset) else None
    if rows is None:
        if not data:
            return {}
        rows = {k: [ex[k] for ex in data] for k in data[0]}
    out = {k: _stack(rows[k], pad_id if k == "input_ids" else 0) for k in MODEL_INPUTS if k in rows}
    if "input_ids" in out and "attention_mask" not in out:
        lengths = {len(ids) for ids in rows["input_ids"]}
        if len(lengths) > 1:
            out["attention_mask"] = _stack([[1] * len(ids) for ids in rows["input_ids"]], 0)
    label_key = "labels" if "labels" in rows else "label" if "label" in rows else None
    if label_key is not None:
        out["labels"] = torch.as_tensor(rows[label_key], dtype=torch.long)
    return out


def _is_batch(item: object) -> bool:
    """A collated batch: a mapping whose ``input_ids`` is 2-D (B, T)."""
    ids = item.get("input_ids") if hasattr(item, "get") else None
    return torch.is_tensor(ids) and ids.dim() == 2


def _batch_tensors(batch: dict) -> Tensors:
    """A collated batch's model inputs and labels (``label`` renamed ``labels``)."""
    keep = (*MODEL_INPUTS, "label", "labels")
    return {("labels" if k == "label" else k): v for k, v in batch.items() if k in keep}


def _stack(values: list, fill: int) -> torch.Tensor:
    """(N, T) from N sequences, padded on the right with ``fill`` when their lengths differ."""
    if len({len(v) for v in values}) <= 1 and not (values and torch.is_tensor(values[0])):
        return torch.as_tensor(values)
    return nn.utils.rnn.pad_sequence(
        [torch.as_tensor(v) for v in values], batch_first=True, padding_value=fill
    )


def _concat(parts: list[Tensors], pad_id: int) -> Tensors:
    """Batches of their own lengths T_k, concatenated after padding each to max T_k."""
    keys = set(parts[0])
    if any(set(p) != keys for p in parts):
        raise ValueError(f"data: the batches have different keys: {[sorted(p) for p in parts]}")
    width = max(p["input_ids"].shape[1] for p in parts)

    def padded(key: str, tensor: torch.Tensor) -> torch.Tensor:
        if key not in MODEL_INPUTS:
            return tensor
        fill = pad_id if key == "input_ids" else 0
        return nn.functional.pad(tensor, (0, width - tensor.shape[1]), value=fill)

    return {k: torch.cat([padded(k, p[k]) for p in parts]) for k in parts[0]}


def select(tensors: Tensors, index: torch.Tensor, device: str | torch.device) -> Tensors:
    """Rows ``index`` of every tensor, moved to ``device``."""
    return {k: v[index].to(device) for k, v in tensors.items()}


def forward(model: nn.Module, batch: Tensors) -> torch.Tensor:
    """Logits (B, C) for a batch dict (labels ignored)."""
    return model(**{k: v for k, v in batch.items() if k in MODEL_INPUTS})
