"""Options of the influence methods and validation of their inputs.

Everything here runs before any gradient is taken, so that bad input fails fast with a
``ValueError`` naming the parameter and what is allowed.
"""

from __future__ import annotations

import numbers
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import torch
from datasets import Dataset
from torch import nn
from torch.utils.data import DataLoader

from tracin_we.core.checkpoints import StateDict
from tracin_we.core.hf_models import HFClassifier
from tracin_we.core.inputs import PAD_ID, Tensors, model_inputs
from tracin_we.core.models import classifier_layer, word_embeddings
from tracin_we.core.params import check_types

COMMON_OPTIONS = ("batch_size", "device", "dtype", "cache_dir", "progress")
METHOD_OPTIONS: dict[str, tuple[str, ...]] = {
    "tracin-we": ("exact",),
    "tracin-we-topk": ("top_tokens", "exact"),
    "tracin-we-syn": ("top_tokens", "threshold"),
    "tracin-we-noc": ("special_token_ids", "exact"),
    "tracin-last": (),
    "tracin-layer": ("params",),
    "influence-last": ("damping",),
    "representer": ("l2",),
    "tracin-tfidf": ("special_token_ids",),
    "grad-cos": ("layer", "exact"),
    "random": ("seed",),
    "trak": ("proj_dim", "params", "seed"),  # through traker (influence.peers)
    "ekfac": ("ekfac_damping",),  # through kronfluence (influence.peers)
}
PEER_METHODS = ("trak", "ekfac")  # another library computes them: no self-influence, no streaming
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
    # The cache root (core.persistence): training-set gradient rows go to <cache_dir>/gradients
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
    seed: int = 0  # random: generator seed; trak: the projection's seed
    proj_dim: int = 1024  # trak: dimension of the projected gradients
    # ekfac: λ of (G + λI); None: kronfluence's heuristic, 0.1 × each module's mean eigenvalue
    ekfac_damping: float | None = None
    # TracIn-WE, -Topk, -NoC and grad-cos on the embedding: shared-token scoring without the
    # dense product of the most shared tokens (embedding.sparse_dot); it and the fast default are
    # each within embedding.FAST_RTOL of the exact sum, and it does not depend on the other texts
    # scored with it
    exact: bool = False

    def __post_init__(self) -> None:
        """Types and the shared value rules (``params.check_types``: finite floats, the seed's
        range), then each option's range and the device."""
        for f in fields(self):  # numpy and 0-d torch numbers count as the Python ones
            object.__setattr__(self, f.name, _plain(getattr(self, f.name)))
        check_types(self)
        if self.special_token_ids is not None:
            object.__setattr__(self, "special_token_ids", tuple(self.special_token_ids))
        if self.params is not None and not isinstance(self.params, str):
            object.__setattr__(self, "params", tuple(self.params))
        checks = {
            "batch_size": (self.batch_size >= 1, "a positive integer"),
            "top_tokens": (self.top_tokens >= 1, "a positive integer"),
            "threshold": (-1.0 <= self.threshold <= 1.0, "a cosine in [-1, 1]"),
            # H is singular without it: softmax ignores a shift of all logits (linalg.solve fails).
            "damping": (self.damping > 0, "> 0"),
            "l2": (self.l2 > 0, "> 0"),
            "proj_dim": (self.proj_dim >= 1, "a positive integer"),
            "ekfac_damping": (self.ekfac_damping is None or self.ekfac_damping > 0, "None or > 0"),
            "dtype": (self.dtype.is_floating_point, "a floating torch.dtype"),
        }
        for name, (ok, allowed) in checks.items():
            if not ok:
                raise ValueError(f"{name}={getattr(self, name)!r} must be {allowed}")
        if self.params is not None and not self.params:
            raise ValueError("params is empty; give a regex or a list of parameter names")
        check_device(self.device)


def check_device(device: str | torch.device) -> None:
    """``ValueError`` naming ``device`` when torch cannot parse it, or it is a CUDA device this
    machine does not have."""
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"device={device!r} is not a torch device ({err})") from err
    if parsed.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if (parsed.index or 0) >= count:
            raise ValueError(
                f"device={device!r}: this machine has {count} CUDA device(s); use 'cpu'"
                + (f" or 'cuda:0' to 'cuda:{count - 1}'" if count else "")
            )


def _plain(value: Any) -> Any:
    """numpy numbers and arrays and torch tensors as Python numbers and lists; any other iterable
    but a string or mapping (a set, ``range``, ``dict_keys``, a generator) as a list; containers
    element by element."""
    if isinstance(value, (np.generic, np.ndarray)) or torch.is_tensor(value):
        return value.tolist()
    if isinstance(value, Iterable) and not isinstance(value, (str, bytes, Mapping)):
        return [_plain(v) for v in value]
    return value


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
    parsed = Options(**{k: v for k, v in options.items() if k in known})
    if method == "grad-cos" and parsed.exact and parsed.layer != "embedding":
        raise ValueError(
            f"exact=True applies to grad-cos on layer='embedding' only (layer={parsed.layer!r})"
        )
    return parsed


DATA_FORMATS = (
    "a datasets.Dataset, a list of example dicts, a list of collated batches (a DataLoader's) "
    "or a dict of tensors (input_ids (n, L), attention_mask (n, L), labels (n,))"
)


def prepare_data(
    name: str,
    data: Dataset | list[dict] | Tensors,
    num_classes: int | None,
    vocab_size: int | None,
    pad_id: int = PAD_ID,
) -> Tensors:
    """``data`` as tensors (``model_inputs``: texts of different lengths padded with ``pad_id``),
    checked, every error naming ``name``: one of ``DATA_FORMATS``, non-empty; ``input_ids`` an
    integer (n, L) tensor of ids in ``range(vocab_size)``; one label per input, a whole number in
    ``range(num_classes)``; ``attention_mask`` (n, L) of 0s and 1s; ``token_type_ids`` (n, L)
    integers >= 0. Integer ids, labels and token types come back as int64."""
    tensors = _read(name, data, pad_id)
    if "input_ids" in tensors:
        tensors["input_ids"] = _token_ids(name, tensors["input_ids"], vocab_size)
    if "input_ids" not in tensors or not len(tensors["input_ids"]):
        raise ValueError(
            f"{name} is empty or has no input_ids; give at least one example with "
            "input_ids, attention_mask and label"
        )
    tensors["labels"] = _labels(name, tensors, num_classes)
    _check_masks(name, tensors)
    if "attention_mask" not in tensors:
        tensors["attention_mask"] = torch.ones_like(tensors["input_ids"])
    return tensors


def _read(name: str, data: Any, pad_id: int) -> Tensors:
    """``model_inputs(data)`` (a shallow copy), after refusing what is none of ``DATA_FORMATS``
    and labels that its cast to int64 would truncate (1.5 → 1) or fail on (NaN)."""
    if isinstance(data, Mapping):
        data = dict(data)  # a tokenizer's BatchEncoding too
        if "input_ids" not in data:
            raise ValueError(f"{name} has no input_ids (keys: {sorted(map(str, data))[:8]})")
        if not torch.is_tensor(data["input_ids"]):
            got = type(data["input_ids"]).__name__
            raise ValueError(
                f"{name}: a dict must hold tensors (its input_ids is a {got}); allowed: "
                f"{DATA_FORMATS}; for columns of lists use Dataset.from_dict"
            )
    elif isinstance(data, tuple):
        data = list(data)
    elif not isinstance(data, (Dataset, DataLoader, list)):
        raise ValueError(f"{name} is a {type(data).__name__}; allowed: {DATA_FORMATS}")
    _check_raw_labels(name, data)
    try:
        return dict(model_inputs(data, pad_id))
    except (KeyError, TypeError, ValueError, RuntimeError, IndexError) as err:
        raise ValueError(
            f"{name} cannot be read as model inputs ({type(err).__name__}: {err}); allowed: "
            f"{DATA_FORMATS}, every example with the same keys"
        ) from err


def _check_raw_labels(name: str, data: Any) -> None:
    """Labels of a Dataset's float column or of example dicts: each a whole number."""
    if isinstance(data, Dataset):
        key = next((k for k in ("labels", "label") if k in data.column_names), None)
        dtype = getattr(data.features[key], "dtype", "") if key else ""
        values = data[key] if dtype.startswith("float") else []
    elif isinstance(data, list) and data and isinstance(data[0], Mapping):
        key = "labels" if "labels" in data[0] else "label"
        values = [ex.get(key, 0) if isinstance(ex, Mapping) else 0 for ex in data]
    else:
        return
    for i, value in enumerate(values):
        if isinstance(value, numbers.Real) and not _whole(value):
            raise ValueError(
                f"{name}[{i}] has label {value!r}; a label must be a whole number (the class index)"
            )


def _whole(value: numbers.Real) -> bool:
    return isinstance(value, numbers.Integral) or float(value).is_integer()


def _token_ids(name: str, ids: Any, vocab_size: int | None) -> torch.Tensor:
    """``ids`` as an int64 (n, L) tensor, refused when not integer or outside the vocabulary."""
    ids = torch.as_tensor(ids)
    if ids.dim() != 2:
        raise ValueError(
            f"{name}'s input_ids has shape {tuple(ids.shape)}; it must be 2-D (n_examples, "
            "length) (one example: add a batch dimension, input_ids[None])"
        )
    if not ids.numel():  # no examples (the caller's error), or inputs of length 0
        if len(ids):
            raise ValueError(f"{name}'s input_ids has length 0; each input needs a token")
        return ids.long()
    if not _is_integer(ids.dtype):
        raise ValueError(
            f"{name}'s input_ids has dtype {ids.dtype}; token ids must be an integer tensor "
            "(torch.long)"
        )
    low, high = int(ids.min()), int(ids.max())
    if vocab_size is not None and (low < 0 or high >= vocab_size):
        raise ValueError(
            f"{name} has token ids outside the model's {vocab_size}-row word embedding "
            f"(min {low}, max {high}); allowed: 0 to {vocab_size - 1}"
        )
    return ids.long()


def _labels(name: str, tensors: Tensors, num_classes: int | None) -> torch.Tensor:
    """``tensors["labels"]`` as int64 (n,): whole numbers in ``range(num_classes)``."""
    if "labels" not in tensors:
        raise ValueError(f"{name} has no label/labels column")
    ids, labels = tensors["input_ids"], torch.as_tensor(tensors["labels"])
    if labels.shape != (len(ids),):
        raise ValueError(
            f"{name} has {tuple(labels.shape)} labels for {len(ids)} inputs; give "
            "exactly one integer label per input"
        )
    if not (_is_integer(labels.dtype) or labels.dtype.is_floating_point):
        raise ValueError(f"{name}'s labels have dtype {labels.dtype}; give integer class indices")
    if labels.dtype.is_floating_point:
        bad = (labels != labels.round()) | ~labels.isfinite()
        if bad.any():
            i = int(bad.nonzero()[0])
            raise ValueError(
                f"{name}'s labels hold {labels[i].item()} (row {i}); a label must be a whole "
                "number (the class index)"
            )
    labels = labels.long()
    if num_classes is not None and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(
            f"{name} has labels outside range({num_classes}) of the model's classes "
            f"(min {int(labels.min())}, max {int(labels.max())})"
        )
    return labels


def _check_masks(name: str, tensors: Tensors) -> None:
    """``attention_mask`` (0s and 1s) and ``token_type_ids`` (integers >= 0, made int64), each
    shaped like ``input_ids``."""
    shape = tuple(tensors["input_ids"].shape)
    for key in ("attention_mask", "token_type_ids"):
        if key not in tensors:
            continue
        tensor = torch.as_tensor(tensors[key])
        if tuple(tensor.shape) != shape:
            raise ValueError(
                f"{name}'s {key} has shape {tuple(tensor.shape)}; it must be input_ids' {shape}"
            )
        if key == "attention_mask" and not ((tensor == 0) | (tensor == 1)).all():
            raise ValueError(f"{name}'s attention_mask holds values other than 0 and 1")
        if key == "token_type_ids":
            if not _is_integer(tensor.dtype) or (tensor < 0).any():
                raise ValueError(
                    f"{name}'s token_type_ids must be integers >= 0 (dtype {tensor.dtype})"
                )
            tensor = tensor.long()
        tensors[key] = tensor


def _is_integer(dtype: torch.dtype) -> bool:
    """An integer dtype; bool is not one (a mask, not ids)."""
    return not (dtype.is_floating_point or dtype.is_complex or dtype == torch.bool)


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


def check_checkpoint_keys(model: nn.Module, checkpoints: list[tuple[StateDict, float]]) -> None:
    """``ValueError`` naming the first checkpoint whose state dict would not load into ``model``
    (``load_state_dict``, strict: the same names and shapes), before any is loaded into it."""
    for i, (state, _) in enumerate(checkpoints):
        target = model
        if isinstance(model, HFClassifier) and not any(k.startswith("model.") for k in state):
            target = model.model  # HFClassifier.load_state_dict takes the Trainer's keys too
        wanted = target.state_dict()
        missing = [k for k in wanted if k not in state]
        unexpected = [k for k in state if k not in wanted]
        shapes = [
            f"{k}: {tuple(v.shape)} for {tuple(wanted[k].shape)}"
            for k, v in state.items()
            if k in wanted and torch.is_tensor(v) and v.shape != wanted[k].shape
        ]
        if missing or unexpected or shapes:
            found = {"missing": missing, "unexpected": unexpected, "wrong shapes": shapes}
            listed = "; ".join(f"{what} {keys[:5]}" for what, keys in found.items() if keys)
            raise ValueError(
                f"checkpoints[{i}] does not fit the model ({type(target).__name__}): {listed}; "
                "give state dicts of this model's architecture"
            )
