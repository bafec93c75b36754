"""Hugging Face classifiers behind the package's interface.

``HFClassifier`` wraps an ``AutoModelForSequenceClassification`` (its ``.logits``, word
embeddings and head); ``hf_classifier`` loads one by name or folder (fine-tuned as it is, or with
a new seeded head for another class count; a head naming the data's classes in another order is
reordered); ``hub_reachable`` says whether the hub answers."""

from __future__ import annotations

import logging
import socket
from collections.abc import Sequence
from functools import lru_cache
from urllib.parse import urlparse

import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    PretrainedConfig,
)

log = logging.getLogger(__name__)


# BERT-family models take a ready (B, 1, 1, T) additive mask as they would build it themselves;
# unlike a 0/1 mask, it involves no data-dependent check, so torch.func.vmap can batch
# per-example gradients through the model.
ADDITIVE_MASK_MODELS = ("bert", "roberta", "electra")


def additive_mask(attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(B, T) 0/1 → (B, 1, 1, T): 0 where attended, the dtype's minimum where masked."""
    keep = attention_mask[:, None, None, :].to(dtype)
    return (1.0 - keep) * torch.finfo(dtype).min


class HFClassifier(nn.Module):
    """A Hugging Face sequence classifier returning plain logits.

    ``load_state_dict`` also accepts the wrapped model's own keys (no ``model.`` prefix), as saved
    by ``transformers.Trainer``.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if attention_mask is not None and self.model.config.model_type in ADDITIVE_MASK_MODELS:
            attention_mask = additive_mask(attention_mask, self.model.dtype)
        kwargs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None and getattr(self.model.config, "type_vocab_size", 0) > 1:
            kwargs["token_type_ids"] = token_type_ids
        return self.model(**kwargs).logits

    def word_embeddings(self) -> nn.Embedding:
        return self.model.get_input_embeddings()

    def classifier_layer(self) -> nn.Linear:
        """The last ``nn.Linear`` producing ``num_labels`` outputs (BERT's ``classifier``,
        RoBERTa's ``classifier.out_proj``, GPT-2's ``score``...)."""
        num_labels = self.model.config.num_labels
        heads = [
            m
            for m in self.model.modules()
            if isinstance(m, nn.Linear) and m.out_features == num_labels
        ]
        if not heads:
            raise ValueError(
                f"model: {type(self.model).__name__} has no nn.Linear with config.num_labels="
                f"{num_labels} outputs, which the last-layer methods need; allowed: a "
                "transformers classifier (AutoModelForSequenceClassification) or a model with a "
                "`classifier_layer()` method returning its nn.Linear"
            )
        return heads[-1]

    def length_limits(self) -> tuple[int, int | None]:
        """(1, positions): the position-embedding rows, less the offset of models that number
        positions after the padding index (RoBERTa); else the config's maximum, if any."""
        embeddings = getattr(self.model.base_model, "embeddings", None)
        positions = getattr(embeddings, "position_embeddings", None)
        if isinstance(positions, nn.Embedding):
            offset = 0 if positions.padding_idx is None else positions.padding_idx + 1
            return 1, positions.num_embeddings - offset
        config = self.model.config
        return 1, getattr(config, "max_position_embeddings", None) or getattr(
            config, "n_positions", None
        )

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        if not any(k.startswith("model.") for k in state_dict):
            return self.model.load_state_dict(state_dict, strict=strict, assign=assign)
        return super().load_state_dict(state_dict, strict=strict, assign=assign)


def hf_classifier(
    name: str,
    num_labels: int,
    pretrained: bool = True,
    label_names: Sequence[str | int] | None = None,
) -> HFClassifier:
    """The Hugging Face model ``name`` (hub name or folder) as a classifier of ``num_labels``
    classes. A model without a classification head, or with one for another number of classes,
    gets a new head, seeded by the caller (logged). A head whose named classes
    (``config.id2label``) are the data's ``label_names`` in another order has its output rows
    reordered to the data's (logged), so that output i is the data's class i.
    ``pretrained=False``: the architecture, randomly initialised."""
    config = AutoConfig.from_pretrained(name, trust_remote_code=False)
    if not pretrained:
        config.num_labels = num_labels
        return HFClassifier(AutoModelForSequenceClassification.from_config(config))
    model, loading = AutoModelForSequenceClassification.from_pretrained(
        name,
        num_labels=num_labels,
        ignore_mismatched_sizes=config.num_labels != num_labels,
        output_loading_info=True,
        trust_remote_code=False,
    )
    classifier = HFClassifier(model)
    head = classifier.classifier_layer()
    (head_name,) = [f"{n}.weight" for n, m in model.named_modules() if m is head]
    mismatched = {key if isinstance(key, str) else key[0] for key in loading["mismatched_keys"]}
    if head_name in mismatched:  # a trained head set aside: worth a warning
        log.warning("model %s: its head replaced by a new one of %d classes", name, num_labels)
    elif head_name in loading["missing_keys"]:  # a base model: the usual start of fine-tuning
        log.info("model %s: a new, randomly initialised head of %d classes", name, num_labels)
    elif label_names is not None:
        _match_head_classes(name, model.config, head, [str(label) for label in label_names])
    return classifier


def _match_head_classes(
    name: str, config: PretrainedConfig, head: nn.Linear, data: list[str]
) -> None:
    """Reorder ``head``'s output rows when its named classes (``config.id2label``) are the data's
    in another order; log when they are other names (output i is then read as the data's
    class i)."""
    named = [str(config.id2label.get(i, f"LABEL_{i}")) for i in range(config.num_labels)]
    folded, wanted = [n.casefold() for n in named], [d.casefold() for d in data]
    if all(label == f"LABEL_{i}" for i, label in enumerate(named)) or folded == wanted:
        return  # an unnamed head, or the same classes in the same order
    if sorted(folded) != sorted(wanted):
        log.warning(
            "model %s: its head's classes %s are not the data's %s; output i is read as the "
            "data's class i",
            name,
            named,
            data,
        )
        return
    order = [folded.index(label) for label in wanted]
    with torch.no_grad():
        head.weight.copy_(head.weight[order])
        if head.bias is not None:
            head.bias.copy_(head.bias[order])
    config.id2label = dict(enumerate(data))
    config.label2id = {label: i for i, label in enumerate(data)}
    log.info("model %s: head outputs reordered from %s to the data's %s", name, named, data)


@lru_cache(maxsize=8)
def hub_reachable(repo_id: str) -> bool:
    """Whether ``repo_id`` can be loaded: cached locally, or the hub answers within seconds.

    A plain socket probe comes first because the hub client retries for ~20 s when offline.
    """
    from huggingface_hub import constants, hf_hub_download

    try:
        hf_hub_download(repo_id, "config.json", local_files_only=True)
        return True
    except Exception:  # not cached: any failure here just means "ask the hub"
        pass
    if constants.HF_HUB_OFFLINE:
        return False
    host = urlparse(constants.ENDPOINT).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=3).close()
        hf_hub_download(repo_id, "config.json", etag_timeout=5)
        return True
    except Exception:  # DNS, TLS, HTTP or auth errors all mean: not reachable now
        return False
