"""Text classifiers behind one interface.

Every model here maps ``(input_ids, attention_mask, token_type_ids)`` of shape ``(B, T)`` to logits
``(B, C)`` and names two modules that influence methods need:

- ``model.word_embeddings()``: the ``nn.Embedding`` holding the word-embedding matrix E
  (vocab × d), the layer of TracIn-WE;
- ``model.classifier_layer()``: the final ``nn.Linear`` (logits f = W a + b), the layer of
  TracIn-Last, influence functions and representer points.

Models: ``"bert-tiny"`` (the paper's), ``"cnn"`` (the authors' notebook), ``"minilm-l6"`` (a
pretrained 6-layer encoder, found offline and checked by hash: ``core.pretrained``), or any
``AutoModelForSequenceClassification`` name or local path. A ``transformers.PreTrainedModel``
given as it is (its output has ``.logits``) is wrapped in ``HFClassifier`` by ``as_classifier``,
the one place where that happens; every public entry point that takes a model calls it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from functools import cache

import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    BertConfig,
    BertForSequenceClassification,
    PreTrainedModel,
)

from tracin_we.core.hf_models import HFClassifier, hf_classifier, hub_reachable
from tracin_we.core.inputs import PAD_ID, forward
from tracin_we.core.persistence import tensor_digest
from tracin_we.core.pretrained import PRETRAINED, pretrained_folder
from tracin_we.core.tokenizer import VOCAB_SIZE

log = logging.getLogger(__name__)

BERT_TINY_HUB = "google/bert_uncased_L-2_H-128_A-2"
BUILTIN_MODELS = ("bert-tiny", "cnn", *PRETRAINED)  # built-ins read bert-base-uncased's ids


class CNNClassifier(nn.Module):
    """The authors' AG News CNN: Embedding(vocab, 128) → Conv1D(50, 5, relu) → Conv1D(50, 5, relu)
    → Conv1D(50, 1, relu) → global max pool → Linear(50, C).

    Padding positions get a zero embedding, so [PAD] receives no gradient (as BERT's attention mask
    ensures for BERT). Inputs must be at least 9 tokens long (two valid width-5 convolutions):
    ``length_limits``.
    """

    def __init__(
        self,
        num_labels: int,
        vocab_size: int = VOCAB_SIZE,
        embed_dim: int = 128,
        channels: int = 50,
        kernel_size: int = 5,
    ) -> None:
        super().__init__()
        self.embeddings = nn.Embedding(vocab_size, embed_dim)
        self.convs = nn.Sequential(
            nn.Conv1d(embed_dim, channels, kernel_size),
            nn.ReLU(),
            nn.Conv1d(channels, channels, kernel_size),
            nn.ReLU(),
            nn.Conv1d(channels, channels, 1),
            nn.ReLU(),
        )
        self.classifier = nn.Linear(channels, num_labels)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        e = self.embeddings(input_ids)  # (B, T, d)
        if attention_mask is not None:
            e = e * attention_mask.unsqueeze(-1).to(e.dtype)
        h = self.convs(e.transpose(1, 2))  # (B, channels, T - 8)
        return self.classifier(h.amax(dim=-1))

    def word_embeddings(self) -> nn.Embedding:
        return self.embeddings

    def classifier_layer(self) -> nn.Linear:
        return self.classifier

    def length_limits(self) -> tuple[int, int | None]:
        """(fewest, most) tokens per input: a valid convolution of width k and dilation d
        shortens the sequence by d·(k − 1) − 2·padding, and the max-pool needs one position."""
        convs = [m for m in self.convs if isinstance(m, nn.Conv1d)]
        shrink = sum(c.dilation[0] * (c.kernel_size[0] - 1) - 2 * c.padding[0] for c in convs)
        return 1 + shrink, None


ALLOWED_MODELS = (
    "a transformers.PreTrainedModel whose output has .logits (e.g. any "
    "AutoModelForSequenceClassification), or an nn.Module mapping (input_ids, attention_mask, "
    "token_type_ids) to a (B, C) logits tensor"
)


def as_classifier(model: nn.Module) -> nn.Module:
    """``model`` behind this module's interface: a ``transformers.PreTrainedModel`` wrapped in
    ``HFClassifier`` (sharing its parameters, so training or loading the wrapper changes
    ``model``), anything else as it is. ``ValueError`` for what is not an ``nn.Module``."""
    if isinstance(model, PreTrainedModel):
        return HFClassifier(model)
    if not isinstance(model, nn.Module):
        raise ValueError(
            f"model: a {type(model).__name__} is not a model; allowed: {ALLOWED_MODELS}"
        )
    return model


def pad_token_id(model: nn.Module) -> int:
    """The id that pads inputs of ``model``: its Hugging Face config's ``pad_token_id``, else
    [PAD] of the shipped BERT vocabulary."""
    config = getattr(getattr(model, "model", model), "config", None)
    pad = getattr(config, "pad_token_id", None)
    return PAD_ID if pad is None else int(pad)


@torch.no_grad()
def check_logits(model: nn.Module, batch: dict[str, torch.Tensor]) -> None:
    """``ValueError`` unless ``model`` (from ``as_classifier``, in eval mode) maps ``batch``
    (B examples) to a (B, C) floating tensor: one forward pass, no gradient."""
    try:
        logits = forward(model, batch)
    except AttributeError as err:  # HFClassifier's `.logits` of an output that has none
        raise ValueError(
            f"model: the output of {type(getattr(model, 'model', model)).__name__} has no "
            f".logits ({err}); allowed: {ALLOWED_MODELS}"
        ) from err
    n = len(batch["input_ids"])
    if not (torch.is_tensor(logits) and logits.is_floating_point() and logits.shape[0] == n):
        what = type(logits).__name__
        shape = tuple(logits.shape) if torch.is_tensor(logits) else what
        raise ValueError(
            f"model: {type(model).__name__} returned {shape} for {n} inputs, not (B, C) logits; "
            f"allowed: {ALLOWED_MODELS}"
        )


def word_embeddings(model: nn.Module) -> nn.Embedding:
    """The word-embedding module of ``model`` (see the module docstring)."""
    try:
        if hasattr(model, "word_embeddings"):
            module = model.word_embeddings()
        elif hasattr(model, "get_input_embeddings"):
            module = model.get_input_embeddings()
        else:
            module = None
    except NotImplementedError:  # transformers' default for models without one
        module = None
    if not isinstance(module, nn.Embedding):
        raise ValueError(
            f"model: {type(model).__name__} has no identifiable word-embedding layer (nothing "
            "from word_embeddings() or get_input_embeddings() is an nn.Embedding); allowed: a "
            "transformers.PreTrainedModel whose get_input_embeddings() is an nn.Embedding, or a "
            "model with a `word_embeddings()` method returning its nn.Embedding"
        )
    return module


def classifier_layer(model: nn.Module) -> nn.Linear:
    """The final linear layer of ``model`` (see the module docstring)."""
    module = model.classifier_layer() if hasattr(model, "classifier_layer") else None
    if not isinstance(module, nn.Linear):
        raise ValueError(
            f"model: {type(model).__name__} has no identifiable final linear layer; allowed: a "
            "transformers.PreTrainedModel with an nn.Linear of config.num_labels outputs, or "
            "a model with a `classifier_layer()` method returning its nn.Linear"
        )
    return module


def length_limits(model: nn.Module) -> tuple[int, int | None]:
    """(fewest, most or None) tokens per input that ``model`` accepts."""
    return model.length_limits() if hasattr(model, "length_limits") else (1, None)


def check_length(
    model: nn.Module | str, max_length: int, what: str = "max_length", name: str | None = None
) -> None:
    """``ValueError`` naming the model when ``max_length`` tokens per input are outside its
    ``length_limits``. ``model``: a model (named ``name``, default its class) or a built-in name,
    whose architecture is then built on the meta device (nothing allocated, no random draw)."""
    name = name or (model if isinstance(model, str) else type(model).__name__)
    low, high = _builtin_limits(model) if isinstance(model, str) else length_limits(model)
    if max_length < low or (high is not None and max_length > high):
        raise ValueError(
            f"{what}={max_length} does not fit model={name!r}: it takes {low} to "
            f"{high if high is not None else 'any number of'} tokens per input"
        )


@cache
def _builtin_limits(name: str) -> tuple[int, int | None]:
    if name not in BUILTIN_MODELS:
        return 1, None  # a Hugging Face model: checked once built (train, scores)
    with torch.device("meta"):
        if name in PRETRAINED:
            config = AutoConfig.from_pretrained(pretrained_folder(name), num_labels=2)
            model = HFClassifier(AutoModelForSequenceClassification.from_config(config))
        else:
            model = CNNClassifier(2) if name == "cnn" else HFClassifier(_bert_tiny(2, VOCAB_SIZE))
    return length_limits(model)


def bert_tiny_config(vocab_size: int = VOCAB_SIZE, **changes) -> BertConfig:
    """The BERT-tiny architecture (google/bert_uncased_L-2_H-128_A-2: 2 layers, hidden 128, 2
    heads, feed-forward 512), with ``changes`` (``num_labels``, ``tie_word_embeddings``...)."""
    return BertConfig(
        vocab_size=vocab_size,
        hidden_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=512,
        **changes,
    )


def _bert_tiny(
    num_labels: int, vocab_size: int, pad_token_id: int = PAD_ID
) -> BertForSequenceClassification:
    """The BERT-tiny architecture (google/bert_uncased_L-2_H-128_A-2), randomly initialised;
    ``pad_token_id``: the embedding row kept at zero (the tokenizer's [PAD])."""
    config = bert_tiny_config(vocab_size, num_labels=num_labels, pad_token_id=pad_token_id)
    model = BertForSequenceClassification(config)
    model.set_attn_implementation("eager")  # vmap has batching rules for it, not for SDPA
    return model


def build_model(
    name: str,
    num_labels: int,
    seed: int,
    pretrained: bool = True,
    vocab_size: int = VOCAB_SIZE,
    pad_token_id: int | None = None,
    label_names: Sequence[str | int] | None = None,
) -> tuple[nn.Module, str]:
    """A fresh model and a description of its initialisation (part of every cache key).

    ``seed`` fixes every randomly initialised weight (for pretrained models: the new head).
    ``vocab_size`` and ``pad_token_id`` (None: bert-base-uncased's [PAD], 0) shape the built-in
    models' word embedding for the tokenizer in use; a Hugging Face model keeps its own.
    ``"bert-tiny"`` loads ``google/bert_uncased_L-2_H-128_A-2`` when ``pretrained`` and the hub is
    reachable, else the same architecture randomly initialised, and logs which. ``"minilm-l6"``
    loads the checked files of ``core.pretrained`` with a new seeded head. Any other name is
    a Hugging Face classifier (``hf_classifier``; ``label_names``: the data's classes in order),
    described as ``pretrained:<name>@<digest of its weights>`` (a new head's included).
    """
    if num_labels < 2:
        raise ValueError(f"num_labels={num_labels} must be >= 2")
    torch.manual_seed(seed)
    if name == "cnn":
        return CNNClassifier(num_labels, vocab_size), f"random(seed={seed})"
    if name == "bert-tiny":
        if pretrained and hub_reachable(BERT_TINY_HUB):
            log.info("bert-tiny: pretrained weights from %s", BERT_TINY_HUB)
            model = hf_classifier(BERT_TINY_HUB, num_labels)
            model.model.set_attn_implementation("eager")
            return model, f"hub:{BERT_TINY_HUB}"
        log.warning(
            "bert-tiny: hub unreachable or pretrained=False; random init of the "
            "BERT-tiny architecture (2 layers, hidden 128, 2 heads, vocab %d)",
            vocab_size,
        )
        pad = PAD_ID if pad_token_id is None else pad_token_id
        return HFClassifier(_bert_tiny(num_labels, vocab_size, pad)), f"random(seed={seed})"
    if name in PRETRAINED:  # checked by hash, found offline (core.pretrained)
        model = hf_classifier(str(pretrained_folder(name)), num_labels, pretrained, label_names)
        model.model.set_attn_implementation("eager")  # vmap has batching rules for it, not SDPA
        if not pretrained:
            log.warning("%s: pretrained=False, so its architecture starts from a random init", name)
            return model, f"random(seed={seed}):{name}"
        return model, f"pretrained:{name}@{tensor_digest(model.model.state_dict())}"
    if os.path.isdir(name) or "/" in name:
        model = hf_classifier(name, num_labels, pretrained, label_names)
        if not pretrained:
            return model, f"random(seed={seed}):{name}"
        # Named by content, not only by name: a folder trained again in place is another init.
        return model, f"pretrained:{name}@{tensor_digest(model.model.state_dict())}"
    raise ValueError(
        f"model={name!r} is unknown; allowed: {list(BUILTIN_MODELS)} or a Hugging Face "
        "AutoModelForSequenceClassification name ('org/name') or local folder"
    )
