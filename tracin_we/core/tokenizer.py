"""The BERT uncased WordPiece tokenizer, available offline.

``bert-base-uncased``'s vocabulary (30,522 tokens, Apache-2.0, from Google's BERT release) ships
in ``tracin_we/assets`` so that the default run needs no network; any other name or path goes to
``transformers.AutoTokenizer`` (the hub, or a local folder). A Hugging Face model brings its own
(``model_tokenizer``); the built-in models size their word embedding by the tokenizer's
(``DataConfig.vocab_size``).
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

from transformers import AutoTokenizer, BertTokenizerFast, PreTrainedTokenizerBase

BERT_UNCASED = "bert-base-uncased"
VOCAB_FILE = Path(__file__).parents[1] / "assets" / "bert-base-uncased-vocab.txt"
VOCAB_SIZE = 30522
# What AutoTokenizer reads from a folder; a Trainer checkpoint saved without its tokenizer has none.
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.txt",
    "vocab.json",
    "spiece.model",
    "sentencepiece.bpe.model",
)


@lru_cache(maxsize=4)
def load_tokenizer(name: str | None = BERT_UNCASED) -> PreTrainedTokenizerBase:
    """``bert-base-uncased`` (also for ``None``) from the shipped vocabulary, anything else via
    ``AutoTokenizer``."""
    if name is None or name == BERT_UNCASED:
        # Positional: the argument is `vocab_file` in transformers 4 and `vocab` in 5.
        return BertTokenizerFast(str(VOCAB_FILE), do_lower_case=True)
    return AutoTokenizer.from_pretrained(name)


def model_tokenizer(model: str) -> str | None:
    """The tokenizer that comes with Hugging Face model ``model``: its hub name, or its local
    folder when that holds tokenizer files (``TOKENIZER_FILES``); None for a folder without any.
    """
    if os.path.isdir(model):
        return model if any((Path(model) / f).is_file() for f in TOKENIZER_FILES) else None
    return model
