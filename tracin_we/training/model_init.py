"""A fresh model for a training config: built (random or the hub's weights), started from a
local MLM pretraining run (``init_from``), or with a pretrained encoder's projected word
embeddings (``embedding_init``)."""

from __future__ import annotations

import re

from torch import nn

from tracin_we.core.inputs import PAD_ID
from tracin_we.core.models import build_model
from tracin_we.core.tokenizer import VOCAB_SIZE
from tracin_we.training.distill import distilled_run
from tracin_we.training.embedding_init import init_embeddings
from tracin_we.training.pretrain import load_encoder
from tracin_we.training.recipe import DISTILLED, TrainConfig


def new_model(config: TrainConfig, distil: bool = True) -> tuple[nn.Module, str]:
    """A fresh model for ``config`` and a description of its init (part of every cache key):
    ``build_model``'s, or ``mlm:<sha256 of the weights>`` with ``init_from``, whose word
    embeddings and encoder then replace the random ones (the classifier head stays seeded); with
    ``embedding_init``, ``+emb:<encoder>-pca@<digest>`` names the word-embedding rows.
    ``init_from="distilled:<teacher>"`` distils the teacher when no run is cached, unless
    ``distil`` is False (then ``distill.NotDistilled``)."""
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
        source = config.init_from
        if source.startswith(DISTILLED):
            source = distilled_run(source, config.data, create=distil)
        init = load_encoder(model, source)
    if config.embedding_init is not None:
        pad = PAD_ID if config.data.pad_token_id is None else config.data.pad_token_id
        init += "+" + init_embeddings(model, config.embedding_init, pad)
    return model, init


def init_kind(init: str) -> str:
    """``new_model``'s init description without what the seed changes: ``random(seed=3)`` →
    ``random``; ``pretrained:<name>@<digest with the seeded head>`` → ``pretrained:<name>``."""
    init = re.sub(r"^(pretrained:[^@+]*)@[0-9a-f]+", r"\1", init)
    return re.sub(r"\(seed=\d+\)", "", init)
