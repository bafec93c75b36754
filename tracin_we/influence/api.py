"""Training-data influence of language models: one function for every method.

``scores(method, model, checkpoints, train, test, **options)`` returns a float tensor of shape
(len(test), len(train)); entry [j, i] is the influence of training example i on test example j.
**Positive = proponent** (training on it raises the test point's ground-truth probability),
negative = opponent. ``checkpoints`` are ``(state_dict_or_path, learning_rate)`` pairs; each is
loaded into ``model`` in turn and the model is put back as it was afterwards. Gradients are taken
in eval mode, of the cross-entropy at the ground-truth label.

Methods (``METHODS``; formulas in docs/paper.md, arXiv 2202.11844 v1 eq. 2–4 and Table 3):

- ``tracin-we``: TracIn on the word-embedding matrix, eq. 2; ``tracin-we-topk`` (option
  ``top_tokens``: positions kept per text, eqs. 3–4), ``tracin-we-syn`` (``top_tokens``,
  ``threshold``), ``tracin-we-noc`` (``special_token_ids``);
- ``tracin-last``, ``tracin-layer`` (``params``: a regex or parameter names), ``grad-cos``
  (``layer``: "last", "embedding" or a parameter regex);
- ``influence-last`` (``damping``) and ``representer`` (``l2``): at the last checkpoint only;
- ``tracin-tfidf`` (``special_token_ids``): TF-IDF cosine × the last layer's δ · δ'; ``random``;
- ``trak`` (``proj_dim``, ``params``, ``seed``: MadryLab's traker) and ``ekfac``
  (``ekfac_damping``: kronfluence's EK-FAC influence function), through their own libraries
  (``influence.peers``): scores only, no self-influence, no memory estimate; TRAK differentiates
  the margin log[p/(1 − p)] rather than the cross-entropy, and neither uses ``cache_dir``.

Every method takes ``batch_size``, ``device``, ``dtype``, ``cache_dir`` (the cache root of
``tracin_we.core.persistence``: training-set gradient rows are cached per checkpoint in
``<cache_dir>/gradients``) and ``progress`` (bars over checkpoints and gradient batches, default
True). Bad input raises ``ValueError`` naming the argument before any gradient is taken
(``options.prepare_data``, ``checkpoints.resolve_checkpoints``, ``Options``): among it, token ids
that are not an integer (n, L) tensor within the model's vocabulary, labels that are not whole
numbers in range(num_classes), masks not shaped like the ids, a learning rate that is not a finite
number > 0, checkpoints with non-finite weights or that do not fit the model, texts longer or
shorter than the model accepts, and a model that gives no logits or lacks the layer the method
needs. A call whose memory estimate (``memory``) exceeds
what the device has free raises ``MemoryError`` before any work. A result holding NaN or ±inf is
an error too, not a score.

``model``: any ``nn.Module`` mapping (input_ids, attention_mask, token_type_ids) to logits, or a
``transformers.PreTrainedModel`` as it is (its ``.logits`` are used: ``models.as_classifier``).
``train``/``test``: a ``Dataset``, a list of example dicts, a list of collated batches (e.g.
``list(DataLoader(..., collate_fn=DataCollatorWithPadding(tokenizer)))``) or a dict of tensors;
texts of different lengths are padded on the right with the model's pad id.
"""

from __future__ import annotations

import numbers
import os
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
from datasets import Dataset
from torch import nn

from tracin_we.core.checkpoints import StateDict, resolve_checkpoints
from tracin_we.core.inputs import Tensors, framing_ids
from tracin_we.core.models import as_classifier, check_length, pad_token_id
from tracin_we.influence.context import Kernel, Run, prepared, tracin, tracin_diagonal
from tracin_we.influence.embedding import SynonymKernel, WordEmbeddingKernel
from tracin_we.influence.last_layer import (
    influence_last,
    last_layer_kernel,
    representer,
    tfidf_cosine,
    tfidf_self_cosine,
)
from tracin_we.influence.layers import CosineKernel, ParamKernel
from tracin_we.influence.memory import check_memory
from tracin_we.influence.options import (
    METHOD_OPTIONS,
    PEER_METHODS,
    Options,
    check_checkpoint_keys,
    model_sizes,
    parse_options,
    prepare_data,
    select_params,
)
from tracin_we.influence.peers import ekfac_scores, trak_scores
from tracin_we.influence.progress import shown

METHODS: tuple[str, ...] = tuple(METHOD_OPTIONS)

Data = Dataset | list[dict] | Tensors
Checkpoints = Sequence[tuple[StateDict | str | os.PathLike, float]]


class InfluentialResults(NamedTuple):
    """The k most influential training examples per test example, like captum's
    ``KMostInfluentialResults``: ``indices`` and ``influence_scores``, each (n_test, k)."""

    indices: torch.Tensor
    influence_scores: torch.Tensor


def scores(
    method: str, model: nn.Module, checkpoints: Checkpoints, train: Data, test: Data, **options: Any
) -> torch.Tensor:
    """(len(test), len(train)) influence of each training example on each test example under
    ``method``; positive = proponent. See the module docstring for methods and options."""
    options_, model, train_t, test_t, checkpoints_ = _validated(
        method, model, checkpoints, options, train=train, test=test
    )
    if method == "random":
        generator = torch.Generator().manual_seed(options_.seed)
        return torch.randn(
            len(test_t["labels"]), len(train_t["labels"]), generator=generator, dtype=options_.dtype
        )
    with prepared(model, options_, probe=test_t), shown(options_.progress):
        if method in PEER_METHODS:
            out = _peer(method, model, checkpoints_, train_t, test_t, options_)
        else:
            out = _influence(method, Run(model, checkpoints_, options_), train_t, test_t)
    return _finite(out.to(device="cpu", dtype=options_.dtype), method)


def self_influence(
    method: str, model: nn.Module, checkpoints: Checkpoints, data: Data, **options: Any
) -> torch.Tensor:
    """(len(data),) the influence of each example on itself: the diagonal of
    ``scores(method, model, checkpoints, data, data, **options)``, computed directly."""
    if method in ("random", *PEER_METHODS):
        raise ValueError(
            f"method={method!r} has no self-influence; allowed: "
            f"{[m for m in METHODS if m not in ('random', *PEER_METHODS)]}"
        )
    options_, model, data_t, _, checkpoints_ = _validated(
        method, model, checkpoints, options, data=data
    )
    with prepared(model, options_, probe=data_t), shown(options_.progress):
        out = _influence(method, Run(model, checkpoints_, options_), data_t, None)
    return _finite(out.to(device="cpu", dtype=options_.dtype), method)


def refuse_nan(scores: torch.Tensor) -> None:
    """A ``ValueError`` naming the rows of ``scores`` (n_test, n_train) that hold NaN."""
    nan_rows = torch.isnan(scores).any(1).nonzero().flatten().tolist()
    if nan_rows:
        raise ValueError(
            f"scores has NaN in rows {nan_rows[:10]}{' ...' if len(nan_rows) > 10 else ''}; "
            "NaN scores cannot be ranked: recompute them (influence.scores refuses to return NaN)"
        )


def top_k(scores: torch.Tensor, k: int, proponents: bool = True) -> InfluentialResults:
    """Per test example (row of ``scores``, (n_test, n_train)), the ``k`` training examples with the
    largest scores (proponents) or the most negative first (opponents); ties keep index order.
    NaN scores are refused (they have no rank); ±inf rank first or last. ``scores`` must be a 2-D
    real tensor and ``k`` an integer in [1, n_train] (``check_k``)."""
    if not torch.is_tensor(scores):
        raise ValueError(
            f"scores is a {type(scores).__name__}; it must be a 2-D torch tensor (n_test, "
            "n_train), as influence.scores returns (from numpy: torch.from_numpy(scores))"
        )
    if scores.dim() != 2 or scores.dtype.is_complex:
        raise ValueError(
            f"scores has shape {tuple(scores.shape)} and dtype {scores.dtype}; it must be a 2-D "
            "real tensor (n_test, n_train), as influence.scores returns (one test example: "
            "scores[None])"
        )
    if not isinstance(proponents, (bool, np.bool_)):  # a truthy "opponents" ranks proponents
        raise ValueError(f"proponents={proponents!r} must be True or False")
    check_k(k, scores.shape[1])
    refuse_nan(scores)
    values, indices = torch.sort(scores, dim=1, descending=bool(proponents), stable=True)
    return InfluentialResults(indices[:, :k], values[:, :k])


def check_k(k: object, n_train: int) -> None:
    """``ValueError`` unless ``k`` is an integer (a Python or numpy int, not a bool or float) in
    [1, n_train]."""
    if not isinstance(k, numbers.Integral) or isinstance(k, bool):
        raise ValueError(
            f"k={k!r} has type {type(k).__name__}; k must be an int (the number of training "
            f"examples to return, in [1, {n_train}])"
        )
    if not 1 <= k <= n_train:
        raise ValueError(f"k={k!r} must be in [1, {n_train}] (the number of training examples)")


def to_captum(scores: torch.Tensor) -> torch.Tensor:
    """Captum's layout, (n_test, n_train) with positive = proponent: ``scores`` unchanged."""
    return scores


def to_dattri(scores: torch.Tensor) -> torch.Tensor:
    """dattri's layout, (n_train, n_test): ``scores`` transposed; the sign is kept (positive =
    proponent, as dattri's TracIn)."""
    return scores.T


def _validated(
    method: str,
    model: nn.Module,
    checkpoints: Checkpoints,
    options: dict,
    memory: bool = True,
    **data: Data,
) -> tuple[Options, nn.Module, Tensors, Tensors | None, list]:
    """Resolved options, the model (``as_classifier``), the data as checked tensors (train/test
    or data) and checkpoints; with ``memory``, ``scores``' memory estimate checked too."""
    options_ = parse_options(method, options)
    model = as_classifier(model)
    num_classes, vocab_size = model_sizes(model, method, options_)
    pad = pad_token_id(model)
    tensors = [
        prepare_data(name, value, num_classes, vocab_size, pad) for name, value in data.items()
    ]
    for name, tensor in zip(data, tensors, strict=True):
        check_length(model, tensor["input_ids"].shape[1], f"{name}'s length")
    if method == "tracin-layer":
        select_params(model, options_.params, "params")
    if method == "grad-cos" and options_.layer not in ("last", "embedding"):
        select_params(model, options_.layer, "layer")
    checkpoints_ = resolve_checkpoints(checkpoints)
    check_checkpoint_keys(model, checkpoints_)
    n = [len(t["labels"]) for t in tensors]
    if memory and method not in ("random", *PEER_METHODS):
        check_memory(method, model, options_, n[0], n[1] if len(n) > 1 else 0, len(checkpoints_))
    return options_, model, tensors[0], tensors[1] if len(tensors) > 1 else None, checkpoints_


def _finite(out: torch.Tensor, method: str) -> torch.Tensor:
    """``out`` when every entry is finite, else ``ValueError``."""
    bad = int((~torch.isfinite(out)).sum())
    if bad:
        raise ValueError(
            f"method={method!r} gave {bad} non-finite scores of {out.numel()}: the model or its "
            "checkpoints overflow on this data (for influence-last/representer: raise damping/l2)"
        )
    return out


def _peer(
    method: str,
    model: nn.Module,
    checkpoints: list,
    train: Tensors,
    test: Tensors,
    options: Options,
) -> torch.Tensor:
    """TRAK over the checkpoints, or EK-FAC at the last one, through their libraries."""
    device, batch = options.device, options.batch_size
    if method == "ekfac":
        state = checkpoints[-1][0]
        return ekfac_scores(model, state, train, test, options.ekfac_damping, batch, device)
    names = None if options.params is None else select_params(model, options.params, "params")
    return trak_scores(
        model, checkpoints, train, test, options.proj_dim, names, options.seed, batch, device
    )


def _influence(method: str, run: Run, train: Tensors, test: Tensors | None) -> torch.Tensor:
    """(n_test, n_train) scores; with ``test=None``, the self-influences of ``train`` (n_train,)."""
    if method == "influence-last":
        return influence_last(run, train, test)
    if method == "representer":
        return representer(run, train, test)
    if method == "tracin-tfidf":
        ignore = run.options.special_token_ids
        if ignore is None:
            ignore = framing_ids([train] if test is None else [train, test])
        kernel = last_layer_kernel(run, activations=False)
        if test is None:
            logit_part = tracin_diagonal(run, kernel, train)
            return tfidf_self_cosine(train, ignore).to(logit_part) * logit_part
        logit_part = tracin(run, kernel, train, test)
        return tfidf_cosine(train, test, ignore).to(logit_part) * logit_part
    if test is None:
        return tracin_diagonal(run, _kernel(method, run, [train]), train)
    return tracin(run, _kernel(method, run, [train, test]), train, test)


def _kernel(method: str, run: Run, datasets: list[Tensors]) -> Kernel:
    """The per-checkpoint kernel of a TracIn-style method."""
    options = run.options
    if method == "tracin-we":
        return WordEmbeddingKernel(exact=options.exact)
    if method == "tracin-we-topk":
        return WordEmbeddingKernel(top_tokens=options.top_tokens, exact=options.exact)
    if method == "tracin-we-noc":
        exclude = options.special_token_ids
        if exclude is None:
            exclude = framing_ids(datasets)
        return WordEmbeddingKernel(exclude=tuple(sorted(set(exclude))), exact=options.exact)
    if method == "tracin-we-syn":
        return SynonymKernel(options.top_tokens, options.threshold)
    if method == "tracin-last":
        return last_layer_kernel(run)
    if method == "tracin-layer":
        return ParamKernel(tuple(select_params(run.model, options.params, "params")))
    if options.layer == "last":
        return CosineKernel(last_layer_kernel(run))
    if options.layer == "embedding":
        return CosineKernel(WordEmbeddingKernel(exact=options.exact))
    return CosineKernel(ParamKernel(tuple(select_params(run.model, options.layer, "layer"))))
