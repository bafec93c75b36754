"""A fresh model for a training config: built (random or the hub's weights) or started from a
local MLM pretraining run (``init_from``)."""

from __future__ import annotations

from torch import nn

from tracin_we.core.models import build_model
from tracin_we.core.tokenizer import VOCAB_SIZE
from tracin_we.training.pretrain import load_encoder
from tracin_we.training.recipe import TrainConfig


def new_model(config: TrainConfig) -> tuple[nn.Module, str]:
    """A fresh model for ``config`` and a description of its init (part of every cache key):
    ``build_model``'s, or ``mlm:<sha256 of the weights>`` with ``init_from``, whose word
    embeddings and encoder then replace the random ones (the classifier head stays seeded)."""
    # The hub's BERT-tiny reads bert-base-uncased ids: with another tokenizer's, a random init.
    other_ids = config.model == "bert-tiny" and config.data.vocab_size is not None
    model, init = build_model(
        config.model,
        config.data.num_classes,
        config.seed,
        pretrained=config.pretrained and config.init_from is None and not other_ids,
        vocab_size=config.data.vocab_size or VOCAB_SIZE,
        pad_token_id=config.data.pad_token_id,
        label_names=config.data.class_names,
    )
    if config.init_from is not None:
        init = load_encoder(model, config.init_from)
    return model, init
