from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd
import pytest
import torch

from tracin_we.core.data import (
    DataConfig,
    balanced_indices,
    fingerprint,
    flip_labels,
    make_splits,
    stratified_sample,
)
from tracin_we.core.tasks import clean_ag_news, load_raw
from tracin_we.core.tokenizer import VOCAB_FILE, load_tokenizer

BERT_UNCASED_VOCAB_SHA256 = "07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3"


def test_shipped_vocab_is_bert_base_uncased():
    assert hashlib.sha256(VOCAB_FILE.read_bytes()).hexdigest() == BERT_UNCASED_VOCAB_SHA256
    tokenizer = load_tokenizer()
    assert len(tokenizer) == 30522
    ids = tokenizer("The Cat", "sat")["input_ids"]
    assert ids == [101, 1996, 4937, 102, 2938, 102]  # [CLS] the cat [SEP] sat [SEP]
    assert tokenizer.pad_token_id == 0


def test_ag_news_original_files_load(ag_news_dir):
    train, test = load_raw("ag_news", "train", None), load_raw("ag_news", "test", None)
    assert len(test) == 7600 and len(train) > 9000
    assert sorted(test["label"].unique()) == [0, 1, 2, 3]
    assert (test["label"].value_counts() == 1900).all()
    assert not train["text"].str.contains(r"\\|#39;", regex=True).any()


def test_clean_ag_news():
    assert clean_ag_news("It #39;s a\\new  #36;10 deal") == "It's a new $10 deal"


def test_local_formats(tiny_data_dir):
    csv = load_raw("ag_news", "train", str(tiny_data_dir))
    jsonl = load_raw("ag_news", "test", str(tiny_data_dir))
    assert list(csv.columns) == ["text", "label"] and len(csv) == 160 and len(jsonl) == 60
    folder = tiny_data_dir / "ag_news"
    pd.read_csv(folder / "train.csv").to_parquet(folder / "train.parquet")
    (folder / "train.csv").unlink()
    assert load_raw("ag_news", "train", str(tiny_data_dir)).equals(csv)


def test_pair_task_from_local_files(tmp_path):
    folder = tmp_path / "mnli"
    folder.mkdir()
    frame = pd.DataFrame(
        {
            "premise": ["a cat sat", "dogs run"] * 10,
            "hypothesis": ["an animal sat", "cats fly"] * 10,
            "label": [0, 2] * 10,
        }
    )
    frame.to_csv(folder / "train.csv", index=False)
    frame.assign(premise=frame["premise"] + " today").to_csv(folder / "test.csv", index=False)
    splits = make_splits(
        DataConfig(dataset="mnli", n_train=6, n_val=2, n_test=4, data_dir=str(tmp_path))
    )
    first = splits["train"][0]
    assert "text_pair" in splits["train"].column_names
    assert 1 in first["token_type_ids"]  # the hypothesis is segment 1


def test_splits_are_deterministic_stratified_and_disjoint(tiny_data_dir):
    config = DataConfig(n_train=80, n_val=40, n_test=40, max_length=16, data_dir=str(tiny_data_dir))
    a, b = make_splits(config), make_splits(config)
    assert fingerprint(a) == fingerprint(b)
    assert fingerprint(make_splits(DataConfig(**{**config.__dict__, "seed": 1}))) != fingerprint(a)
    assert np.bincount(a["train"]["label"]).tolist() == [20, 20, 20, 20]
    assert not set(a["train"]["source_index"]) & set(a["validation"]["source_index"])
    assert all(len(ids) == 16 for ids in a["test"]["input_ids"])


def test_train_texts_found_in_test_are_dropped(tiny_data_dir):
    splits = make_splits(DataConfig(n_train=20, n_val=0, n_test=60, data_dir=str(tiny_data_dir)))
    assert not set(splits["train"]["text"]) & set(splits["test"]["text"])


def test_stratified_sample_matches_class_proportions():
    labels = np.array([0] * 70 + [1] * 30)
    picked = stratified_sample(labels, 10, np.random.default_rng(0))
    assert len(set(picked)) == 10 and np.bincount(labels[picked]).tolist() == [7, 3]


def test_balanced_indices_balanced_and_seeded():
    labels = torch.arange(40) % 4
    points = balanced_indices(labels, 10, seed=3, num_classes=4)
    assert np.bincount(labels[points].numpy()).tolist() == [3, 3, 2, 2]
    assert points == balanced_indices(labels, 10, seed=3, num_classes=4)
    assert points != balanced_indices(labels, 10, seed=4, num_classes=4)
    assert sorted(points, key=lambda i: (labels[i], i)) == points  # class by class, ascending
    with pytest.raises(ValueError, match="n_test_points=44: class 0 has 10 examples, 11 needed"):
        balanced_indices(labels, 44, seed=0, num_classes=4, name="n_test_points")


def test_balanced_indices_interleaved_pick_each_class_equally_and_deterministically():
    labels = [0, 1, 2] * 10
    picks = balanced_indices(labels, 9, seed=0, interleave=True)
    assert [labels[i] for i in picks] == [0, 1, 2] * 3
    assert picks == balanced_indices(labels, 9, 0, interleave=True)
    assert picks != balanced_indices(labels, 9, 1, interleave=True)
    # The same draw as the class-by-class order, only ordered in rounds.
    assert sorted(picks) == sorted(balanced_indices(labels, 9, seed=0))
    with pytest.raises(ValueError, match="n=33: class 0 has 10 examples, 11 needed"):
        balanced_indices(labels, 33, seed=0, interleave=True)


def test_label_noise_flips_exactly_the_requested_share():
    frame = pd.DataFrame({"text": list("abcdefghij") * 10, "label": [0, 1, 2, 3] * 25})
    noisy = flip_labels(frame, 0.2, 4, np.random.default_rng(0))
    assert noisy["is_noisy"].sum() == 20
    assert (noisy["label"] != noisy["clean_label"]).sum() == 20
    assert noisy["label"].between(0, 3).all()


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"dataset": "imdb"}, "dataset='imdb' is unknown"),
        ({"n_train": 0}, "n_train=0"),
        ({"label_noise": 1.0}, r"label_noise=1.0 must be in \[0, 1\)"),
        ({"max_length": 4}, "max_length=4"),
    ],
)
def test_bad_config_is_refused(change, match):
    with pytest.raises(ValueError, match=match):
        DataConfig(**change)


def test_too_many_examples_is_refused(tiny_data_dir):
    with pytest.raises(ValueError, match=r"n_train \+ n_val=500 exceeds the 160"):
        make_splits(DataConfig(n_train=400, n_val=100, data_dir=str(tiny_data_dir)))


def test_missing_local_file_is_refused(tmp_path):
    (tmp_path / "ag_news").mkdir()
    with pytest.raises(ValueError, match="no train file"):
        load_raw("ag_news", "train", str(tmp_path))
    with pytest.raises(ValueError, match="does not exist"):
        load_raw("ag_news", "train", str(tmp_path / "nowhere"))


def test_labels_outside_the_class_range_are_refused(tiny_data_dir):
    path = tiny_data_dir / "ag_news" / "train.csv"
    frame = pd.read_csv(path)
    frame.loc[3, "label"] = 7
    frame.to_csv(path, index=False)
    with pytest.raises(ValueError, match=r"integers in \[0, 3\]; rows \[3\] have \[7"):
        load_raw("ag_news", "train", str(tiny_data_dir))


def test_empty_texts_are_refused(tiny_data_dir):
    path = tiny_data_dir / "ag_news" / "train.csv"
    frame = pd.read_csv(path)
    frame.loc[5, "text"] = "   "
    frame.to_csv(path, index=False)
    with pytest.raises(ValueError, match="empty 'text'"):
        load_raw("ag_news", "train", str(tiny_data_dir))


def test_duplicate_header_names_are_refused(tmp_path):
    """A repeated column name (compared as the loader reads it, lower-cased) is named."""
    (tmp_path / "ag_news").mkdir()
    (tmp_path / "ag_news" / "train.csv").write_text("text,label,Text\nhello,1,x\nworld,2,y\n")
    with pytest.raises(ValueError, match=r"train\.csv' names the column\(s\) \['text'\] more"):
        load_raw("ag_news", "train", str(tmp_path))
