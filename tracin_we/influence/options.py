"""Options of the influence methods and validation of their inputs.

Everything here runs before any gradient is taken, so that bad input fails fast with a
``ValueError`` naming the parameter and what is allowed.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, fields
from typing import Any

import torch
from datasets import Dataset
from torch import nn

from tracin_we.inputs import PAD_ID, Tensors, model_inputs
from tracin_we.models import classifier_layer, word_embeddings

COMMON_OPTIONS = ("batch_size", "device", "dtype", "cache_dir", "progress")
METHOD_OPTIONS: dict[str, tuple[str, ...]] = {
    "tracin-we": (),
    "tracin-we-topk": ("top_tokens",),
    "tracin-we-syn": ("top_tokens", "threshold"),
    "tracin-we-noc": ("special_token_ids",),
    "tracin-last": (),
    "tracin-layer": ("params",),
    "influence-last": ("damping",),
    "representer": ("l2",),
    "tracin-tfidf": ("special_token_ids",),
    "grad-cos": ("layer",),
    "random": ("seed",),
}
EMBEDDING_METHODS = ("tracin-we", "tracin-we-topk", "tracin-we-syn", "tracin-we-noc")
LAST_LAYER_METHODS = ("tracin-last", "influence-last", "representer", "tracin-tfidf")
# The TracIn-style methods: a sum over checkpoints of a kernel between per-example features.
STREAMING_METHODS = (
    "tracin-we",
    "tracin-we-topk",
    "tracin-we-syn",
    "tracin-we-noc",
    "tracin-last",
    "tracin-layer",
    "grad-cos",
)


@dataclass(frozen=True)
class Options:
    """Knobs of ``scores``; each method accepts the common ones and its own (``METHOD_OPTIONS``)."""

    batch_size: int = 32  # examples per forward/backward pass
    device: str | torch.device = "cpu"  # where gradients are taken; scores come back on the CPU
    dtype: torch.dtype = torch.float32  # the model runs in this dtype while scoring
    # The cache root (tracin_we.persistence): training-set gradient rows go to <cache_dir>/gradients
    # (verified on read, recomputed when damaged); None: nothing is cached.
    cache_dir: str | os.PathLike | None = None
    progress: bool = True  # progress bars over checkpoints and gradient batches (tqdm.auto)
    top_tokens: int = 10  # TracIn-WE-Topk/Syn: positions kept per text, eqs. 3–4 (paper: 10)
    threshold: float = 0.7  # TracIn-WE-Syn: embedding cosine above which words match (paper: 0.7)
    # NoC: ids dropped; TF-IDF: ids ignored. Default: the ids that open or close every input of
    # the data scored (inputs.framing_ids: [CLS]/[SEP] for BERT, <s>/</s> for RoBERTa); masked
    # [PAD] never counts. inputs.structural_ids(tokenizer) takes them from a tokenizer instead.
    special_token_ids: tuple[int, ...] | None = None
    params: str | tuple[str, ...] | None = None  # TracIn-Layer: regex or parameter names
    layer: str = "last"  # grad-cos: "last", "embedding" or a parameter-name regex
    damping: float = 1e-3  # Influence-Last: H + damping * I
    l2: float = 1e-2  # representer points: λ of the ℓ2-regularised last layer
    seed: int = 0  # random: generator seed

    def __post_init__(self) -> None:
        if self.special_token_ids is not None:
            object.__setattr__(
                self, "special_token_ids", tuple(int(i) for i in self.special_token_ids)
            )
        if self.params is not None and not isinstance(self.params, str):
            object.__setattr__(self, "params", tuple(self.params))
        checks = {
            "batch_size": (self.batch_size >= 1, "a positive integer"),
            "top_tokens": (self.top_tokens >= 1, "a positive integer"),
            "progress": (isinstance(self.progress, bool), "True or False"),
            "threshold": (-1.0 <= self.threshold <= 1.0, "a cosine in [-1, 1]"),
            "damping": (self.damping >= 0, ">= 0"),
            "l2": (self.l2 > 0, "> 0"),
            "dtype": (
                isinstance(self.dtype, torch.dtype) and self.dtype.is_floating_point,
                "a floating torch.dtype",
            ),
        }
        for name, (ok, allowed) in checks.items():
            if not ok:
                raise ValueError(f"{name}={getattr(self, name)!r} must be {allowed}")
        if self.params is not None and not self.params:
            raise ValueError("params is empty; give a regex or a list of parameter names")


def parse_options(method: str, options: dict[str, Any]) -> Options:
    """Check ``method`` and that each option applies to it; return the resolved ``Options``."""
    if method not in METHOD_OPTIONS:
        raise ValueError(f"method={method!r} is unknown; allowed: {list(METHOD_OPTIONS)}")
    allowed = COMMON_OPTIONS + METHOD_OPTIONS[method]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(
            f"options {unknown} do not apply to method={method!r}; allowed: {list(allowed)}"
        )
    known = {f.name for f in fields(Options)}
    return Options(**{k: v for k, v in options.items() if k in known})


def prepare_data(
    name: str,
    data: Dataset | list[dict] | Tensors,
    num_classes: int | None,
    vocab_size: int | None,
    pad_id: int = PAD_ID,
) -> Tensors:
    """``data`` as tensors (``model_inputs``: texts of different lengths padded with ``pad_id``),
    checked: non-empty, one label per input, labels in ``range(num_classes)``, token ids in
    ``range(vocab_size)``."""
    tensors = dict(model_inputs(data, pad_id))
    if "input_ids" not in tensors or not len(tensors["input_ids"]):
        raise ValueError(
            f"{name} is empty or has no input_ids; give at least one example with "
            "input_ids, attention_mask and label"
        )
    if "labels" not in tensors:
        raise ValueError(f"{name} has no label/labels column")
    ids, labels = tensors["input_ids"], tensors["labels"]
    if labels.shape != (len(ids),):
        raise ValueError(
            f"{name} has {tuple(labels.shape)} labels for {len(ids)} inputs; give "
            "exactly one integer label per input"
        )
    if num_classes is not None and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(
            f"{name} has labels outside range({num_classes}) of the model's classes "
            f"(min {int(labels.min())}, max {int(labels.max())})"
        )
    if vocab_size is not None and (ids.min() < 0 or ids.max() >= vocab_size):
        raise ValueError(
            f"{name} has token ids outside the model's {vocab_size}-row word "
            f"embedding (max {int(ids.max())})"
        )
    if "attention_mask" not in tensors:
        tensors["attention_mask"] = torch.ones_like(ids)
    return tensors


def model_sizes(model: nn.Module, method: str, options: Options) -> tuple[int | None, int | None]:
    """(number of classes, vocabulary size) of ``model``, where it names the layers holding them.

    Raises ``ValueError`` when ``method`` needs a layer the model does not identify.
    """
    grad_cos = method == "grad-cos"
    needs_embedding = method in EMBEDDING_METHODS or (grad_cos and options.layer == "embedding")
    needs_last = method in LAST_LAYER_METHODS or (grad_cos and options.layer == "last")
    try:
        embedding = word_embeddings(model)
    except ValueError:
        if needs_embedding:
            raise
        embedding = None
    try:
        last = classifier_layer(model)
    except ValueError:
        if needs_last:
            raise
        last = None
    return (
        last.out_features if last is not None else None,
        embedding.num_embeddings if embedding is not None else None,
    )


def select_params(model: nn.Module, params: str | tuple[str, ...] | None, option: str) -> list[str]:
    """Names of ``model.named_parameters()`` chosen by a regex (``re.search``) or a list of names,
    given as the option named ``option``."""
    names = [name for name, _ in model.named_parameters()]
    if params is None:
        raise ValueError(
            f"{option} is required for this method: a regex or a list of parameter "
            f"names, e.g. {names[:3]}"
        )
    if isinstance(params, str):
        chosen = [n for n in names if re.search(params, n)]
    else:
        missing = [p for p in params if p not in names]
        if missing:
            raise ValueError(
                f"{option}: {missing} are not parameters of the model; allowed: {names}"
            )
        chosen = [n for n in names if n in params]
    if not chosen:
        raise ValueError(f"{option}={params!r} matches no parameter; allowed names: {names}")
    return chosen
