"""A dataset of one's own by parameters alone: local files, a hub name, label names inferred or
given, errors naming the parameter, workers that need nothing but the config, and notebooks
01 → 03 run from a preset."""

from __future__ import annotations

import json
import pickle
import re
import shutil
from pathlib import Path

import datasets
import numpy as np
import pandas as pd
import papermill
import pytest
import torch
import yaml
from transformers import BertConfig, BertForSequenceClassification

from tests.conftest import local_dask_client, word_level_tokenizer
from tracin_we.core.data import DataConfig, load_pools, make_splits
from tracin_we.core.inputs import model_inputs
from tracin_we.core.models import word_embeddings
from tracin_we.core.paper import beside_paper, fixed_share_beside_paper, paper_note
from tracin_we.core.tokenizer import VOCAB_SIZE, load_tokenizer
from tracin_we.experiments.overlap import paper_comparison
from tracin_we.report.figures import auc_del_figure
from tracin_we.reproduce import reproduce
from tracin_we.training.loop import fit
from tracin_we.training.model_init import new_model
from tracin_we.training.recipe import TrainConfig, with_overrides
from tracin_we.training.retrain import RetrainJob, retrain_probabilities

POSITIVE = ["great", "loved", "wonderful", "superb", "fun", "moving"]
NEGATIVE = ["awful", "boring", "hated", "dull", "waste", "clumsy"]


def reviews(n: int, seed: int = 0) -> pd.DataFrame:
    """``n`` reviews with columns ``review`` and ``sentiment`` ("pos"/"neg", alternating)."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        words = POSITIVE if i % 2 == 0 else NEGATIVE
        text = " ".join(rng.choice(words, size=5)) + f" film number {seed}x{i}"
        rows.append({"review": text, "sentiment": "pos" if i % 2 == 0 else "neg"})
    return pd.DataFrame(rows)


@pytest.fixture
def reviews_csv(tmp_path: Path) -> Path:
    path = tmp_path / "my reviews.csv"
    reviews(200).to_csv(path, index=False)
    return path


def own_params(path: Path) -> dict:
    """The data parameters of the reviews CSV at ``path``."""
    return dict(
        dataset=str(path),
        text_columns=("review",),
        label_column="sentiment",
        n_train=60,
        n_val=20,
        n_test=40,
        max_length=16,
    )


def own(path: Path, **changes) -> DataConfig:
    return DataConfig(**(own_params(path) | changes))


def test_one_csv_with_string_labels(reviews_csv):
    config = own(reviews_csv)
    assert config.label_names == ("neg", "pos")  # read from the data, sorted
    assert config.num_classes == 2 and config.name == "my_reviews"
    splits = make_splits(config)
    assert [len(splits[k]) for k in ("train", "validation", "test")] == [60, 20, 40]
    assert np.bincount(splits["test"]["label"]).tolist() == [20, 20]  # drawn from the one file
    rows = {k: set(splits[k]["source_index"]) for k in splits}
    assert not rows["train"] & rows["test"] and not rows["validation"] & rows["test"]
    frame = pd.read_csv(reviews_csv)
    for row in splits["train"].select(range(5)):
        expected = "pos" if row["label"] == 1 else "neg"
        assert frame.loc[row["source_index"], "sentiment"] == expected
    # Given names set the class order: now "pos" is class 0.
    flipped = make_splits(own(reviews_csv, label_names=("pos", "neg")))
    for row in flipped["train"].select(range(5)):
        expected = "pos" if row["label"] == 0 else "neg"
        assert frame.loc[row["source_index"], "sentiment"] == expected
    # The identity saved beside results names the data, not where the file lies.
    assert config.identity()["dataset"] == "my_reviews" and "data_dir" not in config.identity()


def test_folder_of_split_files_with_integer_labels_and_pairs(tmp_path):
    folder = tmp_path / "nli"
    folder.mkdir()
    frame = pd.DataFrame(
        {
            "first": [f"a cat sat {i}" for i in range(30)],
            "second": [f"an animal {'sat' if i % 3 else 'flew'}" for i in range(30)],
            "y": [1 + i % 3 for i in range(30)],  # 1, 2, 3
        }
    )
    frame.to_json(folder / "train.jsonl", orient="records", lines=True)
    frame.assign(first=frame["first"] + " today").to_parquet(folder / "test.parquet")
    config = DataConfig(
        dataset=str(folder),
        text_columns=("first", "second"),
        label_column="y",
        n_train=12,
        n_val=3,
        n_test=9,
        max_length=16,
    )
    assert config.label_names == (1, 2, 3)
    splits = make_splits(config)
    assert set(splits["test"]["label"]) == {0, 1, 2}
    assert 1 in splits["train"][0]["token_type_ids"]  # the second text is segment 1
    # Integer labels that name no class are indices into the given names (the hub's convention).
    indexed = make_splits(DataConfig(**{**config.__dict__, "label_names": ("w", "x", "y", "z")}))
    test = indexed["test"]
    assert test["label"] == frame.loc[test["source_index"], "y"].tolist()  # 1 → "x", ...


def test_hub_dataset_through_load_dataset(tmp_path, monkeypatch):
    """The hub path calls ``datasets.load_dataset(name, config, split=...)``; here the real
    function reads local files, so nothing touches the network."""
    folder = tmp_path / "hub"
    folder.mkdir()
    reviews(80, seed=0).to_csv(folder / "train.csv", index=False)
    reviews(40, seed=1).to_csv(folder / "test.csv", index=False)
    real, calls = datasets.load_dataset, []

    def offline(path, name=None, split=None):
        calls.append((path, name, split))
        data = real(str(folder), split=split)
        labels = datasets.ClassLabel(names=["neg", "pos"])  # the hub's class names win
        return data.cast_column("sentiment", labels)

    monkeypatch.setattr(datasets, "load_dataset", offline)
    config = DataConfig(
        dataset="someone/reviews",
        dataset_config="plain",
        text_columns=("review",),
        label_column="sentiment",
        n_train=30,
        n_val=10,
        n_test=20,
        max_length=16,
    )
    assert config.label_names == ("neg", "pos") and config.name == "someone_reviews"
    splits = make_splits(config)
    assert calls[-2:] == [
        ("someone/reviews", "plain", "train"),
        ("someone/reviews", "plain", "test"),
    ]
    assert np.bincount(splits["test"]["label"]).tolist() == [10, 10]


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (
            {"text_columns": ("body",)},
            r"text_columns=\('body',\): '.*my reviews\.csv' has no column 'body'; its columns: "
            r"\['review', 'sentiment'\]",
        ),
        ({"label_column": None}, r"label_column=None: .* no column 'label' \(the default"),
        (
            {"label_names": ("good", "bad")},
            r"label_names=\['good', 'bad'\] do not cover the labels of '.*my reviews\.csv': "
            r"\['neg', 'pos'\]",
        ),
        ({"label_names": ("pos", "pos")}, r"label_names=\['pos', 'pos'\]: give at least two"),
        ({"text_columns": ("review",) * 3}, "text_columns=.*: give one text column, or two"),
        ({"split_names": ("train",)}, "split_names=.* is one file"),
        ({"dataset": "./nowhere/data.csv"}, r"dataset='./nowhere/data.csv': no such file"),
        ({"n_test": 200}, "n_test=200 leaves none of the 200 examples"),
    ],
)
def test_mismatch_is_an_error_naming_the_parameter(reviews_csv, change, match):
    with pytest.raises(ValueError, match=match):
        make_splits(own(reviews_csv, **change))


def test_builtin_task_keeps_its_columns_and_one_class_is_refused(tmp_path):
    with pytest.raises(ValueError, match="label_column='y': dataset='ag_news' is a built-in task"):
        DataConfig(label_column="y")
    path = tmp_path / "one.csv"
    pd.DataFrame({"text": ["a", "b"], "label": ["x", "x"]}).to_csv(path, index=False)
    with pytest.raises(ValueError, match=r"has 1 distinct label\(s\) \['x'\]; .* needs two"):
        DataConfig(dataset=str(path))


def test_paper_numbers_only_for_the_papers_datasets():
    summary = pd.DataFrame({"method": ["random", "tracin-we"], "DEL+": [0.0, -0.1]})
    assert "paper DEL+" in beside_paper(summary, "ag_news").columns
    own_table = beside_paper(summary, "my_reviews")
    assert list(own_table.columns) == ["method", "DEL+"]
    assert list(own_table["method"]) == ["tracin-we", "random"]
    assert paper_note("my_reviews").startswith("No paper columns")


def test_no_overlap_and_fixing_show_paper_numbers_only_for_the_papers_datasets():
    summary = pd.DataFrame(
        {"method": ["tracin-we", "random"], "DEL+": [-0.1, 0.0], "DEL-": [0.1, 0.0]}
        | {f"DEL{s} low": [-0.2, -0.1] for s in "+-"}
        | {f"DEL{s} high": [0.2, 0.1] for s in "+-"}
    )
    assert "paper DEL+" in paper_comparison(summary, "ag_news").columns
    assert list(paper_comparison(summary, "my_reviews.csv").columns) == ["DEL+", "DEL-"]
    figure = auc_del_figure(summary, "my_reviews.csv")
    labels = [label for ax in figure.axes for label in ax.get_legend_handles_labels()[1]]
    assert "paper (Toxicity)" not in labels
    fixed = pd.DataFrame({"method": ["tracin-we-topk"], "share_fixed": [0.5]})
    assert fixed_share_beside_paper(fixed, "ag_news")["paper"].tolist() == [0.73]
    assert "paper" not in fixed_share_beside_paper(fixed, "my_reviews.csv")


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["joblib", "dask"])
def test_workers_retrain_from_the_config_alone(reviews_csv, backend):
    """Workers get the class count from the pickled config: the file is gone when they run."""
    config = TrainConfig(
        data=own(reviews_csv), model="cnn", epochs=1, batch_size=16, checkpoint_epochs=(1,)
    )
    splits = make_splits(config.data)
    train, test = model_inputs(splits["train"]), model_inputs(splits["test"])
    reviews_csv.unlink()
    config = pickle.loads(pickle.dumps(config))
    jobs = [RetrainJob(0), RetrainJob(1, (0, 1))]
    if backend == "joblib":
        probs = retrain_probabilities(
            config, jobs, train, test, "joblib", n_workers=2, threads=1, progress=False
        )
    else:
        with local_dask_client() as client:
            probs = retrain_probabilities(
                config, jobs, train, test, "dask", client=client, progress=False
            )
    local = retrain_probabilities(config, jobs, train, test, "sequential", threads=1)
    assert probs.shape == (2, 40, 2)
    # Every worker runs the same fit on one torch thread, as the sequential run does: bitwise.
    assert np.array_equal(probs.numpy(), local.numpy())


@pytest.mark.slow
def test_notebooks_01_to_03_on_own_csv_by_a_preset_alone(reviews_csv, tmp_path):
    """The done-when check of issue 10: a CSV with columns of its own, two string classes, and
    notebooks 01 → 03 run by editing a preset only."""
    preset = {
        "common": {
            "dataset": str(reviews_csv),
            "text_columns": ["review"],
            "label_column": "sentiment",
            "model": "cnn",
            "pretrained": False,
            "n_train": 60,
            "n_val": 20,
            "n_test": 40,
            "max_length": 16,
            "epochs": 2,
            "optimizer": "adam",
            "lr": 0.01,
            "batch_size": 16,
            "checkpoint_epochs": [1, 2],
        },
        "02_influence": {"per_class": 1, "k": 2, "diagnostic_per_class": 2, "diagnostic_k": 2},
        "03_case_deletion": {
            "methods": ["tracin-we", "tracin-last", "random"],
            "ks": [3],
            "n_test_points": 2,
            "seeds": [0],
            "backend": "sequential",
        },
    }
    path = tmp_path / "own_reviews.yaml"
    path.write_text(yaml.safe_dump(preset))
    runs, figures = tmp_path / "runs", tmp_path / "figures"
    reproduce(path, only=["01", "02", "03"], runs=runs, figures_dir=figures)
    metrics = {
        name: json.loads((runs / "own_reviews" / "metrics" / f"{name}.json").read_text())
        for name in ("01_train", "02_influence", "03_case_deletion")
    }
    assert 0.0 <= metrics["01_train"]["test_accuracy"] <= 1.0
    assert metrics["02_influence"]["n_test_points"] == 4  # 2 per class, 2 classes
    assert metrics["03_case_deletion"]["n_points"] == 2
    table = pd.read_csv(runs / "own_reviews" / "03_auc_del.csv")
    assert not [c for c in table.columns if c.startswith("paper")]  # not the paper's data
    assert sorted(p.name for p in figures.glob("*.png")) == [
        "01_training_curves.png",
        "02_score_distributions.png",
        "03_deletion_curves.png",
    ]


# ---- a tokenizer of one's own ------------------------------------------------------------------


@pytest.fixture
def review_tokenizer(tmp_path: Path) -> Path:
    """A RoBERTa-style word-level tokenizer of the reviews' words, saved as a folder."""
    words = sorted({w for text in reviews(200)["review"] for w in text.split()})
    folder = tmp_path / "review-tokenizer"
    word_level_tokenizer(words).save_pretrained(folder)
    return folder


def test_own_tokenizer_tokenizes_and_sizes_the_builtin_model(reviews_csv, review_tokenizer):
    tokenizer = load_tokenizer(str(review_tokenizer))
    config = TrainConfig.from_params(
        **own_params(reviews_csv),
        tokenizer=str(review_tokenizer),
        model="cnn",
        epochs=1,
        optimizer="adam",
        lr=0.01,
        checkpoint_epochs=[1],
    )
    train = model_inputs(make_splits(config.data)["train"])
    lengths = train["attention_mask"].sum(1)
    assert (train["input_ids"][:, 0] == 0).all()  # <s>
    assert (train["input_ids"][torch.arange(len(lengths)), lengths - 1] == 2).all()  # </s>
    assert (train["input_ids"][train["attention_mask"] == 0] == 1).all()  # <pad>
    model = new_model(config)[0]
    assert word_embeddings(model).num_embeddings == len(tokenizer) < VOCAB_SIZE
    before = word_embeddings(model).weight.detach().clone()
    fit(model, train, config, progress=False)  # trains on the tokenizer's ids
    moved = (word_embeddings(model).weight.detach() != before).any(dim=1)
    assert moved[0] and moved[2]  # <s> and </s> are inputs like any token


def test_bert_tiny_keeps_the_tokenizers_pad_row_and_workers_need_only_the_config(
    reviews_csv, review_tokenizer
):
    config = TrainConfig.from_params(
        **own_params(reviews_csv),
        tokenizer=str(review_tokenizer),
        model="bert-tiny",
        pretrained=True,  # the hub's weights read BERT's ids: a random init instead
        epochs=1,
        optimizer="adam",
        lr=0.01,
        checkpoint_epochs=[1],
    )
    size = len(load_tokenizer(str(review_tokenizer)))
    assert (config.data.vocab_size, config.data.pad_token_id) == (size, 1)
    train = model_inputs(make_splits(config.data)["train"])
    shutil.rmtree(review_tokenizer)  # a worker elsewhere has only the config
    load_tokenizer.cache_clear()
    model, init = new_model(config)
    assert init.startswith("random") and word_embeddings(model).padding_idx == 1
    assert word_embeddings(model).num_embeddings == config.data.vocab_size
    before = word_embeddings(model).weight.detach().clone()
    fit(model, train, config, progress=False)
    moved = (word_embeddings(model).weight.detach() != before).any(dim=1)
    assert moved[0] and not moved[1]  # <s> trains; <pad> stays at zero


def test_a_hugging_face_model_folder_brings_its_own_tokenizer(
    reviews_csv, review_tokenizer, tmp_path
):
    tokenizer = load_tokenizer(str(review_tokenizer))
    bert = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=32,
        num_labels=2,
        pad_token_id=tokenizer.pad_token_id,
    )
    with_tokenizer, without = tmp_path / "with", tmp_path / "without"
    for folder in (with_tokenizer, without):
        BertForSequenceClassification(bert).save_pretrained(folder)
    tokenizer.save_pretrained(with_tokenizer)
    config = TrainConfig.from_params(**own_params(reviews_csv), model=str(with_tokenizer))
    assert config.data.tokenizer == str(with_tokenizer)
    ids = model_inputs(make_splits(config.data)["test"])["input_ids"]
    assert (ids[:, 0] == tokenizer.bos_token_id).all()
    # A folder without tokenizer files (a Trainer checkpoint saved without one) keeps the default;
    # a tokenizer named explicitly wins, bert-base-uncased included.
    plain = TrainConfig.from_params(**own_params(reviews_csv), model=str(without))
    assert plain.data.tokenizer is None
    assert plain.data.identity()["tokenizer"] == "bert-base-uncased"
    named = TrainConfig.from_params(
        **own_params(reviews_csv), model=str(without), tokenizer=str(review_tokenizer)
    )
    assert named.data.tokenizer == str(review_tokenizer)
    bert = TrainConfig.from_params(
        **own_params(reviews_csv), model=str(with_tokenizer), tokenizer="bert-base-uncased"
    )
    assert bert.data.tokenizer == "bert-base-uncased"
    # Another model through with_overrides: the tokenizer the first model brought goes with it,
    # one named explicitly stays.
    assert with_overrides(config, model=str(without)).data.tokenizer is None
    assert with_overrides(config, model="cnn").data.tokenizer is None
    assert with_overrides(plain, model=str(with_tokenizer)).data.tokenizer == str(with_tokenizer)
    assert with_overrides(named, model="cnn").data.tokenizer == str(review_tokenizer)


def test_notebooks_take_a_tokenizer_parameter():
    """Each notebook that builds a TrainConfig exposes ``tokenizer`` in its parameters cell, so a
    preset can set it."""
    for path in sorted(Path("notebooks").glob("0[1-9]_*.ipynb")):
        default = papermill.inspect_notebook(str(path))["tokenizer"]["default"]
        assert default == "None", path.name


# ---- every bad value named before anything trains ----------------------------------------------
# Rows are named as a user finds them: in CSV/TSV the header is row 1 (pandas' own count: the line
# number, unless a quoted cell spans lines); in JSONL the line number; in parquet row 1 is the
# first. Each message says which.


def write(folder: Path, name: str, content: str | pd.DataFrame) -> Path:
    """``content`` written verbatim (text) or as parquet (a table) to ``folder / name``."""
    path = folder / name
    if isinstance(content, pd.DataFrame):
        content.to_parquet(path)
    else:
        path.write_text(content, encoding="utf-8")
    return path


def jsonl(*records: str) -> str:
    return "".join(f"{r}\n" for r in records)


def refused(folder: Path, name: str, content: str | pd.DataFrame, match: str, **params) -> None:
    """Building the config of ``content`` as ``name`` is a ValueError matching ``match``."""
    with pytest.raises(ValueError, match=match):
        DataConfig(dataset=str(write(folder, name, content)), **params)


CSV = "text,label\na,pos\nb,neg\n"
HEADER = r"\(row 1 is the header\)"


@pytest.mark.parametrize(
    ("name", "content", "count", "where"),
    [
        ("nan.csv", CSV + "c,NaN\n", 1, rf"rows \[4\] {HEADER} hold \['NaN'\]"),
        (
            "na.csv",
            CSV + "c,NA\nd,x\ne,null\n",
            2,
            rf"rows \[4, 6\] {HEADER} hold \['NA', 'null'\]",
        ),
        ("blank.csv", CSV + "c,\nd, \n", 2, rf"rows \[4, 5\] {HEADER} hold \['', ' '\]"),
        ("inf.csv", CSV + "c,inf\nd,-Infinity\ne,1e400\n", 3, r"rows \[4, 5, 6\]"),
        ("short.csv", CSV + "c\n", 1, rf"rows \[4\] {HEADER} hold \[''\]"),
        ("skipped.csv", "text,label\na,pos\n\n,\nb,neg\nc,nan\n", 1, rf"rows \[6\] {HEADER}"),
        ("nan.tsv", CSV.replace(",", "\t") + "c\tNaN\n", 1, rf"rows \[4\] {HEADER}"),
        (
            "null.jsonl",
            jsonl('{"text": "a", "label": "pos"}', "", '{"text": "b", "label": null}'),
            1,
            r"rows \[3\] \(line numbers\) hold \[None\]",
        ),
        (
            "nokey.jsonl",
            jsonl('{"text": "a", "label": 1}', '{"text": "b", "label": 0}', '{"text": "c"}'),
            1,
            r"rows \[3\] \(line numbers\) hold \[None\]",
        ),
        (
            "nan.jsonl",
            jsonl('{"text": "a", "label": 1}', '{"text": "b", "label": NaN}', '{"text": "c"}'),
            2,
            r"rows \[2, 3\] \(line numbers\)",
        ),
        (
            "inf.parquet",
            pd.DataFrame({"text": ["a", "b", "c"], "label": [0.0, 1.0, np.inf]}),
            1,
            r"rows \[3\] \(row 1 is the first\) hold \[inf\]",
        ),
        (
            "none.parquet",
            pd.DataFrame({"text": ["a", "b", "c"], "label": [None, "pos", "neg"]}),
            1,
            r"rows \[1\] \(row 1 is the first\) hold \[None\]",
        ),
    ],
)
def test_missing_or_non_finite_label_is_an_error_naming_column_file_and_rows(
    tmp_path, name, content, count, where
):
    """NaN, NA, null, empty, inf: never a class of its own."""
    match = (
        rf"label_column=None: {count} row\(s\) of '.*{re.escape(name)}' have a missing or "
        rf"non-finite label in column 'label': {where}.*; allowed: a class name"
    )
    refused(tmp_path, name, content, match)


def test_missing_label_is_named_when_label_names_are_given(tmp_path):
    path = write(tmp_path, "given.csv", "text,y\na,pos\nb,NaN\n")
    config = DataConfig(dataset=str(path), label_column="y", label_names=("neg", "pos"))
    with pytest.raises(ValueError, match=r"label_column='y': 1 row\(s\) .* rows \[3\]"):
        make_splits(config)


def test_a_missing_marker_listed_in_label_names_is_a_class(tmp_path):
    """ "NA" (North America) reads as missing unless ``label_names`` lists it as a class."""
    rows = "".join(f"text {i},{'NA' if i % 2 else 'EU'}\n" for i in range(20))
    path = write(tmp_path, "regions.csv", "text,region\n" + rows)
    params = dict(dataset=str(path), label_column="region", n_train=8, n_val=2, n_test=4)
    with pytest.raises(ValueError, match=r"label_column='region': 10 row\(s\)"):
        DataConfig(**params)
    test = make_splits(DataConfig(**params, label_names=("EU", "NA")))["test"]
    assert sorted(test["label"]) == [0, 0, 1, 1]
    for text, label in zip(test["text"], test["label"], strict=True):
        assert int(text.split()[1]) % 2 == label


@pytest.mark.parametrize(
    ("labels", "classes"),
    [
        (["1", "1.0", "01", " 1 ", "2"], (1, 2)),  # integers by value, as documented
        (["1", "1.0000000000000001"], ("1", "1.0000000000000001")),  # a float rounds to 1
        (["1e30", "2e30"], (10**30, 2 * 10**30)),  # past int64
        ([str(2**53), str(2**53 + 1)], (2**53, 2**53 + 1)),  # past a float's integers
    ],
)
def test_numeric_labels_are_compared_exactly(tmp_path, labels, classes):
    """Labels read as numbers are compared as decimals: no two distinct values become one
    class."""
    rows = "".join(f"text {i},{label}\n" for i, label in enumerate(labels))
    assert DataConfig(dataset=str(write(tmp_path, "n.csv", "text,label\n" + rows))).label_names == (
        classes
    )


@pytest.mark.parametrize(
    ("name", "content", "match"),
    [
        (
            "blank.csv",
            "text,label\na,pos\n ,neg\n",
            r"text_columns=None: 1 row\(s\) of '.*blank\.csv' have a missing or empty text in "
            rf"column 'text': rows \[3\] {HEADER} hold \[' '\]; allowed: a non-blank text",
        ),
        (
            "null.jsonl",
            jsonl('{"text": "a", "label": 1}', '{"text": null, "label": 0}'),
            r"text_columns=None: 1 row\(s\) of '.*null\.jsonl' .* rows \[2\] \(line numbers\)",
        ),
        (
            "nokey.jsonl",
            jsonl('{"label": 1}', '{"text": "b", "label": 0}'),
            r"text_columns=None: .*nokey\.jsonl' .* rows \[1\] \(line numbers\) hold \[None\]",
        ),
        (
            "none.parquet",
            pd.DataFrame({"text": ["a", None], "label": [0, 1]}),
            r"text_columns=None: 1 row\(s\) .* rows \[2\] \(row 1 is the first\) hold \[None\]",
        ),
        (
            "list.jsonl",
            jsonl('{"text": ["a", "b"], "label": 1}', '{"text": "b", "label": 0}'),
            r"text_columns=None: 1 row\(s\) of '.*list\.jsonl' have a list or object in column "
            r"'text': rows \[1\] \(line numbers\) hold \[\['a', 'b'\]\]; allowed: a text or a "
            r"number in each cell",
        ),
        (
            "object.jsonl",
            jsonl('{"text": "a", "label": 1}', '{"text": "b", "label": {"x": 0}}'),
            r"label_column=None: 1 row\(s\) .* have a list or object in column 'label': rows \[2\]",
        ),
    ],
)
def test_missing_or_unusable_text_is_an_error_naming_column_file_and_rows(
    tmp_path, name, content, match
):
    """A text is a non-blank string (or a number) in every row; a list or object in a text or
    label cell is refused too."""
    refused(tmp_path, name, content, match)


def test_texts_that_look_missing_are_texts_in_csv(tmp_path):
    """CSV/TSV cells are read verbatim: "NA", "None" and "nan" are texts there (labels are
    checked separately)."""
    texts = ["NA", "None", "nan", "null", ' say "hi", then\nleave ', "ünï"]
    frame = pd.DataFrame({"text": texts * 4, "label": ["a", "b"] * 12})
    path = tmp_path / "texts.csv"
    frame.to_csv(path, index=False)
    splits = make_splits(DataConfig(dataset=str(path), n_train=10, n_val=2, n_test=6))
    for split in splits.values():
        for row in split:
            assert row["text"] == frame.loc[row["source_index"], "text"]


@pytest.mark.parametrize(
    ("name", "content", "match"),
    [
        (  # the first row: pandas would take the first column as an index and shift the rest
            "first.csv",
            "text,label\nhello, world,pos\nbye,neg\n",
            rf"dataset: '.*first\.csv' row 2 has 3 fields but the header has 2 {HEADER}; "
            "allowed: one field per header column; quote a cell that holds",
        ),
        (  # a later row, after a quoted cell that spans two lines (one row)
            "later.csv",
            'text,label\n"two\nlines",pos\nbye,neg\nhello, world,pos\n',
            r"'.*later\.csv' row 4 has 3 fields but the header has 2",
        ),
        (
            "tab.tsv",
            "text\tlabel\nhello\tpos\nhel\tlo\tneg\n",
            r"'.*tab\.tsv' row 3 has 3 fields but the header has 2 .* TSV cells cannot hold tabs",
        ),
    ],
)
def test_row_with_more_fields_than_the_header_is_an_error_naming_file_and_row(
    tmp_path, name, content, match
):
    refused(tmp_path, name, content, match)


def test_quote_never_closed_is_an_error_naming_file_and_row(tmp_path):
    """pandas counts this row from 0; the message counts as every other does."""
    content = 'text,label\n"two\nlines",pos\n\nb,neg\n"c,pos\nd,neg\n'
    match = rf"dataset: '.*open\.csv' row 5 opens a quoted cell that no quote closes {HEADER}"
    refused(tmp_path, "open.csv", content, match)


def test_short_rows_read_their_missing_cells_as_empty(tmp_path):
    """A row with fewer fields than the header has its last cells empty (pandas' reading): it
    loads when they are unused, and is refused as an empty label when the label is one."""
    rows = "".join(f"text {i},{'pos' if i % 2 else 'neg'},note\n" for i in range(10))
    ok = write(tmp_path, "ok.csv", "text,label,note\n" + rows + "short,pos\n")
    pool, _ = load_pools(DataConfig(dataset=str(ok), n_train=6, n_val=1, n_test=4))
    assert len(pool) == 11 and pool["text"].iloc[-1] == "short" and pool["label"].iloc[-1] == 1
    # An unquoted line break inside a text: its first half is a row without a label.
    broken = "text,label,note\n" + rows + "first\nhalf,pos,x\n"
    refused(tmp_path, "broken.csv", broken, r"label_column=None: 1 row\(s\) .* rows \[12\]")


@pytest.mark.parametrize(
    ("name", "content", "match"),
    [
        (
            "dup.csv",
            "text,label,text\na,pos,b\nc,neg,d\n",
            r"dataset: '.*dup\.csv' names the column\(s\) \['text'\] more than once in its "
            r"header; allowed: distinct column names",
        ),
        ("unused.csv", "note,text,label,note\nx,a,pos,y\n", r"'.*unused\.csv' .* \['note'\]"),
        ("dup.tsv", "label\ttext\tlabel\npos\ta\tneg\n", r"'.*dup\.tsv' .* \['label'\]"),
        (
            "dup.jsonl",
            jsonl('{"text": "a", "label": 1}', '{"text": "b", "label": 0, "text": "c"}'),
            r"dataset: '.*dup\.jsonl' row 2 \(line numbers\) has the key 'text' twice; "
            r"allowed: distinct keys",
        ),
    ],
)
def test_duplicate_column_names_are_an_error_naming_column_and_file(tmp_path, name, content, match):
    """pandas would rename a second ``text`` to ``text.1`` (CSV) or keep the last (JSON)."""
    refused(tmp_path, name, content, match)


@pytest.mark.parametrize(
    ("line", "what"),
    [("[1, 2]", "holds a JSON list"), ('{"text": "b"', r"is not valid JSON \(Expecting")],
)
def test_jsonl_line_that_is_not_an_object_is_named(tmp_path, line, what):
    content = jsonl('{"text": "a", "label": 1}', "", line)
    match = rf"dataset: '.*bad\.jsonl' row 3 \(line numbers\) {what}.*; allowed: one JSON object"
    refused(tmp_path, "bad.jsonl", content, match)


def test_duplicate_parquet_columns_are_an_error_naming_column_and_file(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "dup.parquet"
    columns = [pa.array(["a", "b"]), pa.array([0, 1]), pa.array(["c", "d"])]
    pq.write_table(pa.table(columns, names=["text", "label", "text"]), path)
    with pytest.raises(ValueError, match=r"'.*dup\.parquet' names the column\(s\) \['text'\]"):
        DataConfig(dataset=str(path))


def test_blank_rows_are_skipped_and_counted(tmp_path):
    """Blank lines and rows of empty cells (",," as spreadsheets write empty rows) are skipped;
    row numbers still count them, as pandas' own errors do."""
    rows = "".join(f"text {i},{'pos' if i % 2 else 'neg'}\n" for i in range(10))
    path = write(tmp_path, "blank.csv", "text,label\n\n" + rows + ",\n\n")
    pool, _ = load_pools(DataConfig(dataset=str(path), n_train=5, n_val=1, n_test=4))
    assert pool["text"].tolist() == [f"text {i}" for i in range(10)]
    bad = "text,label\n\n" + rows + ",\n\nlast,nan\n"
    refused(tmp_path, "bad.csv", bad, rf"rows \[15\] {HEADER}")


def test_real_ag_news_as_own_tsv_loads_and_names_a_bad_row(ag_news_dir, tmp_path):
    """The shipped AG News sample (10,001 rows, unquoted TSV) with a header added loads as is;
    one extra tab or one "NaN" label is named by row."""
    lines = (ag_news_dir / "ag_news" / "train_10k.tsv").read_text("utf-8").splitlines(True)
    params = dict(text_columns=("description",), label_column="class")
    path = write(tmp_path, "ag.tsv", "description\tclass\n" + "".join(lines))
    config = DataConfig(dataset=str(path), **params)
    assert config.label_names == ("Business", "Sci/Tech", "Sports", "World")
    assert len(load_pools(config)[0]) == len(lines)
    nan, tab = list(lines), list(lines)
    nan[41] = nan[41].rsplit("\t", 1)[0] + "\tNaN\n"
    tab[99] = tab[99].replace(" ", "\t", 1)
    match = rf"label_column='class': 1 row\(s\) .* rows \[43\] {HEADER} hold \['NaN'\]"
    refused(tmp_path, "ag.tsv", "description\tclass\n" + "".join(nan), match, **params)
    match = rf"row 101 has 3 fields but the header has 2 {HEADER}"
    refused(tmp_path, "ag.tsv", "description\tclass\n" + "".join(tab), match, **params)


def test_json_file_of_records_or_columns_loads_and_a_repeated_key_is_named(tmp_path):
    """A .json file: an array of records or pandas' columns layout; a key twice is named."""
    frame = reviews(20)
    frame.to_json(tmp_path / "records.json", orient="records")
    frame.to_json(tmp_path / "columns.json")  # pandas' default layout
    for name in ("records.json", "columns.json"):
        pool, _ = load_pools(own(tmp_path / name))
        assert pool["text"].tolist() == frame["review"].tolist()
        assert pool["label"].tolist() == [1, 0] * 10  # neg, pos
    content = '[{"review": "a", "sentiment": "pos"}, {"review": "b", "review": "c"}]'
    match = r"dataset: '.*dup\.json' has the key 'review' twice in one object; allowed: distinct"
    refused(tmp_path, "dup.json", content, match, text_columns=("review",))
