"""Datasets: loading, deterministic stratified splits, tokenization.

Every dataset is reduced to one table layout: ``text`` (and ``text_pair`` for sentence pairs) and
an integer ``label`` in ``range(num_classes)``. A dataset is named by ``DataConfig.dataset``:

- a built-in task of the paper (``TASKS``: ``ag_news``, ``toxicity``, ``mnli``), read from the
  Hugging Face hub or from local files (CSV/TSV/JSONL/parquet) in ``data_dir/<task>/``, where
  ``data_dir`` is a parameter or the environment variable ``TRACIN_WE_DATA_DIR``;
- a local CSV/TSV/JSONL/parquet file with a header (the test set is drawn from it), or a folder
  of ``train.*`` and ``test.*`` files;
- any other name: a Hugging Face hub dataset (``datasets.load_dataset(name, dataset_config,
  split=...)``).

For the last two, ``text_columns``, ``label_column`` and ``label_names`` say where text and label
are; label names not given are read from the data when the config is built, so that the config
alone (sent to joblib or Dask workers) knows the class count.

Every cell they use is checked then, before anything trains; each refusal is a ``ValueError``
naming the parameter or file, the column and the rows, and what is allowed. Refused: a CSV/TSV
row with more fields than the header (a shorter row has its last cells empty, as pandas reads
it), a column name twice (a key twice in a JSON record), a list or object in a text or label
cell, a text missing or blank, and a label missing or not finite: None/NaN, blank, what pandas
reads as missing ("NA", "null", ...; a class where ``label_names`` lists it), "inf". CSV/TSV
cells are read verbatim, so "NA" is a text there; rows of empty cells are skipped. Rows are
numbered as a user finds them: in CSV/TSV the header is row 1 (pandas' count: the line number
unless a quoted cell spans lines), in JSONL the line number, in parquet and JSON row 1 is the
first, in a hub dataset row 0.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from datasets import Dataset, DatasetDict

from tracin_we.core.own_data import encode_labels, infer_label_names, user_tables
from tracin_we.core.params import check_types
from tracin_we.core.persistence import tensor_digest
from tracin_we.core.tasks import LOCAL_SUFFIXES, TASKS, TaskSpec, load_raw
from tracin_we.core.tokenizer import BERT_UNCASED, load_tokenizer


@dataclass(frozen=True)
class DataConfig:
    """Which data, how much of it, and how it is tokenized.

    The last five fields describe a dataset of one's own (``dataset`` a local file or folder, or
    a hub name) and must stay None for a built-in task. A label equal to one of ``label_names``
    (compared as text) is that name's class; integer labels that name none are class indices (the
    hub's convention). ``label_names=None`` is replaced, when the config is built, by the hub's
    class names or the distinct labels of the data, sorted (numbers by value).
    """

    dataset: str = "ag_news"  # ag_news | toxicity | mnli, a local file/folder, or a hub name
    n_train: int = 2000  # training examples, stratified sample of the train split
    n_val: int = 500  # validation examples, from the train split, disjoint from train
    n_test: int = 500  # test examples, stratified sample of the test split
    max_length: int = 64  # tokens per text (pairs: per pair), padded to exactly this length
    seed: int = 0  # drives every sample and the label noise
    label_noise: float = 0.0  # share of training labels flipped to another class (NDR studies)
    data_dir: str | None = None  # built-in tasks' folder; None → $TRACIN_WE_DATA_DIR, else hub
    # A tokenizer name/folder; None: bert-base-uncased (shipped, 30,522 ids), or for a Hugging Face
    # model its own (TrainConfig, tokenizer.model_tokenizer).
    tokenizer: str | None = None
    dataset_config: str | None = None  # hub configuration name ("mnli" of "nyu-mll/glue")
    split_names: tuple[str, ...] | None = None  # (train, test) hub splits or file prefixes
    text_columns: tuple[str, ...] | None = None  # one text column, or two for pairs; None: "text"
    label_column: str | None = None  # None: "label"
    label_names: tuple[str | int, ...] | None = None  # class names in class order; None: inferred
    # Read from a tokenizer other than bert-base-uncased when the config is built, so that workers
    # build models without it: its ids (the built-in models' embedding rows) and its [PAD] id.
    vocab_size: int | None = field(default=None, init=False)
    pad_token_id: int | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        check_types(self)
        for name in ("n_train", "n_test", "max_length"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be a positive integer")
        if self.n_val < 0:
            raise ValueError(f"n_val={self.n_val} must be >= 0")
        if self.max_length < 8:
            raise ValueError(f"max_length={self.max_length} must be >= 8 (room for the CNN)")
        if not 0.0 <= self.label_noise < 1.0:
            raise ValueError(f"label_noise={self.label_noise} must be in [0, 1)")
        if self.tokenizer is not None and self.tokenizer != BERT_UNCASED:
            tokenizer = load_tokenizer(self.tokenizer)
            if tokenizer.pad_token_id is None:
                raise ValueError(
                    f"tokenizer={self.tokenizer!r} has no pad token; texts are padded to "
                    "max_length: give a tokenizer with one (save it with tokenizer.pad_token set)"
                )
            object.__setattr__(self, "vocab_size", len(tokenizer))
            object.__setattr__(self, "pad_token_id", int(tokenizer.pad_token_id))
        if self.dataset in TASKS:
            given = [name for name in USER_FIELDS if getattr(self, name) is not None]
            if given:
                raise ValueError(
                    f"{given[0]}={getattr(self, given[0])!r}: dataset={self.dataset!r} is a "
                    f"built-in task with its own columns; leave {given} unset, or give its hub "
                    f"name ({TASKS[self.dataset].hub_path!r}) as dataset to choose them"
                )
            return
        _check_user_fields(self)
        if self.label_names is None:  # read once here, so that the config carries the count
            object.__setattr__(self, "label_names", infer_label_names(self))

    @property
    def is_builtin(self) -> bool:
        return self.dataset in TASKS

    @property
    def task(self) -> TaskSpec:
        """Where the data lives and which columns hold text and label (any dataset)."""
        if self.is_builtin:
            return TASKS[self.dataset]
        return TaskSpec(
            self.dataset,
            self.dataset_config,
            self.split_names or ("train", "test"),
            self.text_columns or ("text",),
            self.label_column or "label",
            self.label_names or (),
        )

    @property
    def num_classes(self) -> int:
        return self.task.num_classes

    @property
    def class_names(self) -> tuple[str, ...]:
        """The class names as text, in class order (index = label)."""
        return tuple(str(name) for name in self.task.label_names)

    @property
    def local_path(self) -> Path | None:
        """The local file or folder of a dataset of one's own; None for a built-in or hub one."""
        if self.is_builtin:
            return None
        path = Path(self.dataset).expanduser()
        return path if path.exists() or _looks_like_path(self.dataset) else None

    @property
    def name(self) -> str:
        """A short name for folder names: the task, the file's stem, or the hub name."""
        local = self.local_path
        raw = self.dataset if local is None else local.stem if local.is_file() else local.name
        return re.sub(r"[^A-Za-z0-9_.-]+", "_", raw).strip("_.") or "data"

    def identity(self) -> dict:
        """The config as saved beside results (JSON values): what the data is, not where it lives.
        Drops ``data_dir`` and unset fields of one's own data, and a local path for its name (the
        data's fingerprint identifies the contents)."""
        resolved = json.loads(json.dumps(asdict(self)))
        resolved.pop("data_dir")
        resolved["tokenizer"] = self.tokenizer or BERT_UNCASED  # keys as before None meant it
        for name in ("vocab_size", "pad_token_id"):  # read from the tokenizer; None for BERT's
            if resolved[name] is None:
                resolved.pop(name)
        for name in USER_FIELDS:
            if resolved[name] is None:
                resolved.pop(name)
        if self.local_path is not None:
            resolved["dataset"] = self.name
        return resolved


# The fields that describe a dataset of one's own (unset for a built-in task).
USER_FIELDS = ("dataset_config", "split_names", "text_columns", "label_column", "label_names")


def _looks_like_path(dataset: str) -> bool:
    return dataset.startswith((".", "/", "~")) or dataset.lower().endswith(LOCAL_SUFFIXES)


def _check_user_fields(config: DataConfig) -> None:
    """The fields of one's own dataset, before any of it is read."""
    local = config.local_path
    if local is not None and not local.exists():
        raise ValueError(
            f"dataset={config.dataset!r}: no such file or folder; allowed: {sorted(TASKS)}, a "
            "local CSV/TSV/JSONL/parquet file or folder of train/test files, or a hub name"
        )
    if config.text_columns is not None and len(config.text_columns) not in (1, 2):
        raise ValueError(
            f"text_columns={list(config.text_columns)}: give one text column, or two for "
            "sentence pairs"
        )
    if config.split_names is not None:
        if len(config.split_names) not in (1, 2):
            raise ValueError(
                f"split_names={list(config.split_names)}: give (train, test), or one name "
                "to draw the test set from it"
            )
        if local is not None and local.is_file():
            raise ValueError(
                f"split_names={list(config.split_names)}: dataset={config.dataset!r} is one "
                "file (the test set is drawn from it); give a folder of split files instead"
            )
    if local is not None and config.dataset_config is not None:
        raise ValueError(
            f"dataset_config={config.dataset_config!r} names a hub configuration, but "
            f"dataset={config.dataset!r} is a local path; leave it unset"
        )
    names = config.label_names
    if names is not None:
        text = [str(n) for n in names]
        if len(names) < 2 or len(set(text)) != len(text):
            raise ValueError(
                f"label_names={list(names)}: give at least two distinct class names, in class "
                "order, or None to read them from the data"
            )


def load_pools(config: DataConfig) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """The train and test tables (``text`` [, ``text_pair``], integer ``label`` in
    ``range(config.num_classes)``, index = row in its source); test is None when the dataset is
    one table (``make_splits`` draws the test set from it)."""
    if config.is_builtin:
        return (
            load_raw(config.dataset, "train", config.data_dir),
            load_raw(config.dataset, "test", config.data_dir),
        )
    frames = []
    for table in user_tables(config):
        frame = table.frame.copy()
        frame["label"] = encode_labels(frame["label"], config.task.label_names, table.source)
        frames.append(frame)
    return frames[0], frames[1] if len(frames) == 2 else None


def stratified_sample(labels: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` indices drawn without replacement, each class in proportion to its frequency
    (largest remainder), returned in a random order."""
    classes, counts = np.unique(labels, return_counts=True)
    quota = counts / counts.sum() * n
    take = np.floor(quota).astype(int)
    take[np.argsort(-(quota - take), kind="stable")[: n - take.sum()]] += 1
    chosen = [
        rng.choice(np.flatnonzero(labels == c), size=t, replace=False)
        for c, t in zip(classes, take, strict=True)
    ]
    return rng.permutation(np.concatenate(chosen))


def balanced_indices(
    labels: Sequence[int] | np.ndarray,
    n: int,
    seed: int,
    num_classes: int | None = None,
    interleave: bool = False,
    name: str = "n",
) -> list[int]:
    """``n`` indices of ``labels`` (a list, array or CPU tensor), ``n // C`` per class (the first
    ``n % C`` classes one more), drawn without replacement with ``numpy.random.default_rng(seed)``
    class after class, over classes ``range(num_classes)`` (default: the labels present): the
    paper's balanced choice of test points. Returned class by class, ascending within a class;
    with ``interleave``, in rounds of one per class, in the order drawn. ``name`` names ``n`` in
    errors."""
    labels = np.asarray(labels)
    classes = list(range(num_classes)) if num_classes is not None else np.unique(labels).tolist()
    if n < 1:
        raise ValueError(f"{name}={n} must be >= 1")
    rng, picks = np.random.default_rng(seed), []
    for position, c in enumerate(classes):
        quota = n // len(classes) + (position < n % len(classes))
        pool = np.flatnonzero(labels == c)
        if quota > len(pool):
            raise ValueError(f"{name}={n}: class {c} has {len(pool)} examples, {quota} needed")
        picks.append(rng.choice(pool, size=quota, replace=False).tolist())
    if interleave:
        return [p[r] for r in range(max(map(len, picks))) for p in picks if r < len(p)]
    return [i for p in picks for i in sorted(p)]


def make_splits(config: DataConfig) -> DatasetDict:
    """Deterministic ``train``/``validation``/``test`` splits, tokenized.

    Train and validation are disjoint stratified samples of the train split, minus texts that also
    occur in the test split; test is a stratified sample of the test split. Columns: ``text``
    [, ``text_pair``], ``label``, ``source_index`` (row in the raw split), ``input_ids``,
    ``attention_mask``, ``token_type_ids`` (each ``max_length`` long) and, with label noise,
    ``clean_label`` and ``is_noisy``.
    """
    train_pool, test_pool = load_pools(config)
    if test_pool is None:  # one table: its test set is a stratified sample drawn first
        if config.n_test >= len(train_pool):
            raise ValueError(
                f"n_test={config.n_test} leaves none of the {len(train_pool)} examples of "
                f"{config.dataset!r} for training"
            )
        rng = np.random.default_rng([config.seed, 1])
        drawn = stratified_sample(train_pool["label"].to_numpy(), config.n_test, rng)
        test_pool = train_pool.iloc[np.sort(drawn)]
        train_pool = train_pool.drop(test_pool.index)
    key = [c for c in ("text", "text_pair") if c in train_pool]
    in_test = pd.MultiIndex.from_frame(train_pool[key]).isin(
        pd.MultiIndex.from_frame(test_pool[key])
    )
    train_pool = train_pool[~in_test]
    for name, wanted, pool, label in (
        ("n_train + n_val", config.n_train + config.n_val, train_pool, "train"),
        ("n_test", config.n_test, test_pool, "test"),
    ):
        if wanted > len(pool):
            raise ValueError(f"{name}={wanted} exceeds the {len(pool)} {label} examples available")

    rng = np.random.default_rng(config.seed)
    train_val = stratified_sample(
        train_pool["label"].to_numpy(), config.n_train + config.n_val, rng
    )
    val_part = stratified_sample(train_pool["label"].to_numpy()[train_val], config.n_val, rng)
    val_idx = train_val[val_part]
    train_idx = train_val[np.setdiff1d(np.arange(len(train_val)), val_part)]
    train_idx = rng.permutation(train_idx)
    test_idx = stratified_sample(test_pool["label"].to_numpy(), config.n_test, rng)

    frames = {
        "train": train_pool.iloc[train_idx],
        "validation": train_pool.iloc[val_idx],
        "test": test_pool.iloc[test_idx],
    }
    frames = {k: f.rename_axis("source_index").reset_index() for k, f in frames.items()}
    if config.label_noise > 0:
        frames["train"] = flip_labels(frames["train"], config.label_noise, config.num_classes, rng)
    tokenizer = load_tokenizer(config.tokenizer)
    return DatasetDict(
        {
            k: tokenize(Dataset.from_pandas(f, preserve_index=False), tokenizer, config.max_length)
            for k, f in frames.items()
        }
    )


def flip_labels(
    frame: pd.DataFrame, rate: float, num_classes: int, rng: np.random.Generator
) -> pd.DataFrame:
    """Flip ``round(rate * n)`` labels, each to a uniformly drawn *other* class."""
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"label_noise={rate} must be in [0, 1)")
    frame = frame.copy()
    flipped = rng.choice(len(frame), size=round(rate * len(frame)), replace=False)
    shift = rng.integers(1, num_classes, size=len(flipped))
    frame["clean_label"] = frame["label"]
    frame["is_noisy"] = False
    frame.loc[flipped, "label"] = (frame.loc[flipped, "label"].to_numpy() + shift) % num_classes
    frame.loc[flipped, "is_noisy"] = True
    return frame


def tokenize(dataset: Dataset, tokenizer, max_length: int) -> Dataset:
    """Add ``input_ids``, ``attention_mask``, ``token_type_ids``, padded to ``max_length``."""
    if len(dataset) == 0:  # an empty split (n_val=0): the tokenizer rejects empty batches
        encoded = {"input_ids": [], "token_type_ids": [], "attention_mask": []}
    else:
        pair = list(dataset["text_pair"]) if "text_pair" in dataset.column_names else None
        encoded = tokenizer(
            list(dataset["text"]),
            pair,
            truncation=True,
            max_length=max_length,
            padding="max_length",
            return_token_type_ids=True,
        )
    return Dataset.from_dict(dataset.to_dict() | dict(encoded))


def fingerprint(splits: DatasetDict) -> str:
    """A short hash of every split's token ids and labels: the data's identity in cache keys."""
    columns = {}
    for name in sorted(splits):
        split = splits[name].with_format("numpy")
        for column in ("input_ids", "label"):
            values = np.ascontiguousarray(split[column], dtype=np.int64)
            columns[f"{name}/{column}"] = torch.from_numpy(values)
    return tensor_digest(columns)
