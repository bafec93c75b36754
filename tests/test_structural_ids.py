"""Structural tokens come from the tokenizer or the data, not from bert-base-uncased's ids.

A RoBERTa-style word-level tokenizer built here (<s> = 0, <pad> = 1, </s> = 2, and real words at
bert-base-uncased's [CLS]/[SEP] ids 101 and 102): TracIn-WE-NoC, TracIn-TFIDF, the no-overlap
candidates, the fixing experiment's word choice and the word highlighting must treat <s>/</s>/<pad>
as structure and 101/102 as the words they are here.
"""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from transformers import PreTrainedTokenizerFast

from tests.conftest import example, word_level_tokenizer
from tests.test_influence import F64, checkpoints, cnn
from tracin_we import influence
from tracin_we.core.inputs import CLS_ID, SEP_ID, framing_ids, model_inputs, structural_ids
from tracin_we.core.models import CNNClassifier
from tracin_we.core.tokenizer import load_tokenizer
from tracin_we.experiments.fixing_edits import most_negative_word
from tracin_we.experiments.overlap import least_overlap_candidates
from tracin_we.influence import WordScores, attribution
from tracin_we.report.explain import highlight_words

SPECIALS = ["<s>", "<pad>", "</s>", "<unk>"]
WORDS = [f"w{i}" for i in range(4, 130)]  # "w101" has id 101, "w102" id 102
BERT_IDS = (0, 101, 102)


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerFast:
    return word_level_tokenizer(WORDS)


def encode(tokenizer, texts: list[str], labels: list[int]) -> dict[str, torch.Tensor]:
    encoded = tokenizer(texts, padding="max_length", max_length=12, return_tensors="pt")
    return {
        "input_ids": encoded["input_ids"],
        "attention_mask": encoded["attention_mask"],
        "labels": torch.tensor(labels),
    }


@pytest.fixture(scope="module")
def data(tokenizer) -> tuple[dict, dict]:
    """Texts in which w101/w102 are frequent words (in most texts, not all) and <s>/</s> frame
    every text."""
    g = torch.Generator().manual_seed(0)
    pool = ["w101", "w102", "w101", "w102", "w5", "w6", "w7", "w8", "w9", "w10"]
    rows = [
        " ".join(pool[int(i)] for i in torch.randint(len(pool), (int(n),), generator=g))
        for n in torch.randint(3, 9, (10,), generator=g)
    ]
    rows[0] = "w5 w6 w7"  # neither w101 nor w102 is in every text
    train = encode(tokenizer, rows[:7], [i % 3 for i in range(7)])
    test = encode(tokenizer, rows[7:], [0, 1, 2])
    return train, test


@pytest.fixture(scope="module")
def model() -> CNNClassifier:
    torch.manual_seed(0)
    return CNNClassifier(3, vocab_size=len(SPECIALS) + len(WORDS), embed_dim=8, channels=6).double()


def test_structural_ids_from_the_tokenizer_or_the_data(tokenizer, data) -> None:
    assert structural_ids(load_tokenizer()) == BERT_IDS  # [PAD], [CLS], [SEP]
    assert structural_ids(tokenizer) == (0, 1, 2)  # <s>, <pad>, </s>: bos/eos stand in
    train, test = data
    assert framing_ids([train, test]) == (0, 2)  # <s> opens, </s> closes every text
    assert structural_ids(None, [train, test]) == (0, 2)
    no_ids = type("Pieces", (), {"convert_ids_to_tokens": lambda self, ids: ids})()
    assert structural_ids(no_ids, [train]) == (0, 2)  # a bare piece-namer: the data decide
    words = {int(i) for i in train["input_ids"][train["attention_mask"].bool()]}
    assert {101, 102} <= words  # real words here


def test_noc_and_tfidf_defaults_keep_words_at_berts_special_ids(model, data) -> None:
    train, test = data
    ckpts = checkpoints(model)
    for method in ("tracin-we-noc", "tracin-tfidf"):
        default = influence.scores(method, model, ckpts, train, test, **F64)
        structural = influence.scores(
            method, model, ckpts, train, test, special_token_ids=[0, 1, 2], **F64
        )
        bert_ids = influence.scores(
            method, model, ckpts, train, test, special_token_ids=[0, 2, *BERT_IDS], **F64
        )
        # The default resolves to these ids: the same computation, so bitwise equal.
        torch.testing.assert_close(default, structural, rtol=0, atol=0)
        assert (default - bert_ids).abs().max() > 1e-3 * default.abs().max(), method


def test_least_overlap_candidates_ignore_the_data_structure(tokenizer, data) -> None:
    train, test = data
    default = least_overlap_candidates(train, test, 0.3)
    assert torch.equal(
        default, least_overlap_candidates(train, test, 0.3, structural_ids(tokenizer))
    )
    # Ignoring w101/w102 (as bert-base-uncased's ids would) picks other candidates here.
    bert = least_overlap_candidates(train, test, 0.3, (0, 2, *BERT_IDS))
    assert not torch.equal(default, bert)


def test_word_choice_and_highlighting_skip_only_structure(tokenizer, data) -> None:
    ids = tokenizer("w101 w5")["input_ids"]  # <s> w101 w5 </s>
    assert ids == [0, 101, 5, 2]
    words = pd.DataFrame(
        {
            "word": ["<s>", "w101", "w5", "</s>"],
            "start": [0, 1, 2, 3],
            "end": [1, 2, 3, 4],
            "contribution": [-9.0, -0.5, 0.2, -5.0],
        }
    )
    worst = most_negative_word(words, torch.tensor(ids), structural_ids(tokenizer))
    assert worst["word"] == "w101"  # not <s>/</s>, and w101 is a word here
    shared = words.iloc[[1]]
    rendered = highlight_words(WordScores(-0.5, pd.DataFrame(), shared), tokenizer, ids)
    assert "&lt;s&gt;" not in rendered and "&lt;/s&gt;" not in rendered
    assert 'title="-0.5">w101</span>' in rendered and "w5" in rendered


def test_one_pair_keeps_its_words() -> None:
    """Without a tokenizer, only the ids that frame every text are structure: on one pair the
    shared words still count (TF-IDF) and are still words (Influence-Last word tables)."""
    model = cnn()
    ckpts = checkpoints(model)
    train, test = [example([CLS_ID, 103, 105, SEP_ID], 0)], [example([CLS_ID, 105, 106, SEP_ID], 1)]
    assert framing_ids([model_inputs(train), model_inputs(test)]) == (CLS_ID, SEP_ID)
    tfidf = influence.scores("tracin-tfidf", model, ckpts, train, test, **F64)
    assert tfidf.abs().max() > 0  # word 105 is shared
    train_t = model_inputs(train)
    vector = attribution.influence_last_vectors(model, ckpts, train_t, model_inputs(test), **F64)
    table = attribution.influence_last_words(model, ckpts, train_t, vector[0], **F64)[0]
    assert list(table["word"]) == ["103", "105"]
