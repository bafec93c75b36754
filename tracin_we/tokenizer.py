"""The BERT uncased WordPiece tokenizer, available offline.

``bert-base-uncased``'s vocabulary (30,522 tokens, Apache-2.0, from Google's BERT release) ships
in ``tracin_we/assets`` so that the default run needs no network; any other name or path goes to
``transformers.AutoTokenizer`` (the hub, or a local folder).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from transformers import AutoTokenizer, BertTokenizerFast, PreTrainedTokenizerBase

BERT_UNCASED = "bert-base-uncased"
VOCAB_FILE = Path(__file__).parent / "assets" / "bert-base-uncased-vocab.txt"
VOCAB_SIZE = 30522


@lru_cache(maxsize=4)
def load_tokenizer(name: str = BERT_UNCASED) -> PreTrainedTokenizerBase:
    """``bert-base-uncased`` from the shipped vocabulary, anything else via ``AutoTokenizer``."""
    if name == BERT_UNCASED:
        # Positional: the argument is `vocab_file` in transformers 4 and `vocab` in 5.
        return BertTokenizerFast(str(VOCAB_FILE), do_lower_case=True)
    return AutoTokenizer.from_pretrained(name)
