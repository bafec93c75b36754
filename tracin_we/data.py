"""The paper's three tasks: loading, deterministic stratified splits, tokenization.

Every task is reduced to one table layout: ``text`` (and ``text_pair`` for MNLI) and an integer
``label`` in ``range(num_classes)``. Data comes from the Hugging Face hub by default, or from local
files (CSV/TSV/JSONL/parquet) in ``data_dir/<task>/`` where ``data_dir`` is a parameter or the
environment variable ``TRACIN_WE_DATA_DIR``.
"""

from __future__ import annotations

import csv
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from datasets import Dataset, DatasetDict

from tracin_we.params import check_types
from tracin_we.persistence import tensor_digest
from tracin_we.tokenizer import load_tokenizer

DATA_DIR_ENV = "TRACIN_WE_DATA_DIR"
LOCAL_SUFFIXES = (".parquet", ".jsonl", ".json", ".csv", ".tsv")


@dataclass(frozen=True)
class TaskSpec:
    """Where a task lives on the hub and which of its columns hold text and label."""

    hub_path: str
    hub_config: str | None
    hub_splits: tuple[str, str]  # (train split, test split)
    text_columns: tuple[str, ...]  # one column, or two for sentence pairs
    label_column: str
    label_names: tuple[str, ...]

    @property
    def num_classes(self) -> int:
        return len(self.label_names)


TASKS: dict[str, TaskSpec] = {
    "ag_news": TaskSpec(
        "fancyzhx/ag_news",
        None,
        ("train", "test"),
        ("text",),
        "label",
        ("World", "Sports", "Business", "Sci/Tech"),
    ),
    # Jigsaw Toxic Comment Classification (binary `toxic`), as a parquet mirror of the Kaggle data.
    "toxicity": TaskSpec(
        "OxAISH-AL-LLM/wiki_toxic",
        None,
        ("train", "test"),
        ("comment_text",),
        "label",
        ("non-toxic", "toxic"),
    ),
    "mnli": TaskSpec(
        "nyu-mll/glue",
        "mnli",
        ("train", "validation_matched"),
        ("premise", "hypothesis"),
        "label",
        ("entailment", "neutral", "contradiction"),
    ),
}

# Column names accepted in local files besides the hub's own.
TEXT_ALIASES = ("text", "comment_text", "description", "sentence", "premise")
PAIR_ALIASES = ("text_pair", "hypothesis")
LABEL_ALIASES = ("label", "labels", "toxic", "class")


@dataclass(frozen=True)
class DataConfig:
    """Which data, how much of it, and how it is tokenized."""

    dataset: str = "ag_news"  # one of TASKS
    n_train: int = 2000  # training examples, stratified sample of the train split
    n_val: int = 500  # validation examples, from the train split, disjoint from train
    n_test: int = 500  # test examples, stratified sample of the test split
    max_length: int = 64  # tokens per text (pairs: per pair), padded to exactly this length
    seed: int = 0  # drives every sample and the label noise
    label_noise: float = 0.0  # share of training labels flipped to another class (NDR studies)
    data_dir: str | None = None  # local folder; None → $TRACIN_WE_DATA_DIR, else the hub
    tokenizer: str = "bert-base-uncased"  # WordPiece uncased, 30,522 ids

    def __post_init__(self) -> None:
        check_types(self)
        if self.dataset not in TASKS:
            raise ValueError(f"dataset={self.dataset!r} is unknown; allowed: {sorted(TASKS)}")
        for name in ("n_train", "n_test", "max_length"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be a positive integer")
        if self.n_val < 0:
            raise ValueError(f"n_val={self.n_val} must be >= 0")
        if self.max_length < 8:
            raise ValueError(f"max_length={self.max_length} must be >= 8 (room for the CNN)")
        if not 0.0 <= self.label_noise < 1.0:
            raise ValueError(f"label_noise={self.label_noise} must be in [0, 1)")

    @property
    def task(self) -> TaskSpec:
        return TASKS[self.dataset]


def resolve_data_dir(data_dir: str | None) -> Path | None:
    """The local data folder: the parameter, else ``$TRACIN_WE_DATA_DIR``, else None (hub)."""
    chosen = data_dir or os.environ.get(DATA_DIR_ENV) or None
    if chosen is None:
        return None
    path = Path(chosen).expanduser()
    if not path.exists():
        source = "data_dir" if data_dir else DATA_DIR_ENV
        raise ValueError(f"{source}={str(path)!r} does not exist")
    return path


def load_raw(dataset: str, split: str, data_dir: str | None = None) -> pd.DataFrame:
    """One split ("train" or "test") as a table with ``text`` [, ``text_pair``] and ``label``."""
    if dataset not in TASKS:
        raise ValueError(f"dataset={dataset!r} is unknown; allowed: {sorted(TASKS)}")
    if split not in ("train", "test"):
        raise ValueError(f"split={split!r}; allowed: 'train', 'test'")
    spec = TASKS[dataset]
    folder = resolve_data_dir(data_dir)
    if folder is None:
        frame, source = _load_hub(spec, split), spec.hub_path
    else:
        path = _find_local_file(folder, dataset, split)
        try:
            frame = _read_local(path, dataset, spec)
        except (UnicodeDecodeError, pd.errors.EmptyDataError, pd.errors.ParserError) as err:
            raise ValueError(
                f"data_dir: {str(path)!r} cannot be read ({type(err).__name__}: {err}); give a "
                "UTF-8 CSV/TSV/JSONL or a parquet file with a header naming its columns"
            ) from err
        source = str(path)
    if dataset == "ag_news":
        frame["text"] = frame["text"].map(clean_ag_news)
    _validate(frame, spec, source)
    return frame


def _load_hub(spec: TaskSpec, split: str) -> pd.DataFrame:
    from datasets import load_dataset  # deferred: importing it is slow and it is unused offline

    hub_split = spec.hub_splits[0 if split == "train" else 1]
    table = load_dataset(spec.hub_path, spec.hub_config, split=hub_split).to_pandas()
    return _standardize(table, spec, spec.hub_path)


def _find_local_file(folder: Path, dataset: str, split: str) -> Path:
    """``folder`` may be the file itself, the task folder, or a folder holding ``<dataset>/``."""
    if folder.is_file():
        return folder
    task_dir = folder / dataset if (folder / dataset).is_dir() else folder
    candidates = sorted(
        p for p in task_dir.iterdir() if p.name.startswith(split) and p.suffix in LOCAL_SUFFIXES
    )
    if not candidates:
        raise ValueError(
            f"data_dir: no {split} file for dataset={dataset!r} in {str(task_dir)!r}; expected "
            f"'{split}.<{'|'.join(s.lstrip('.') for s in LOCAL_SUFFIXES)}>'"
        )
    return candidates[0]


def _read_local(path: Path, dataset: str, spec: TaskSpec) -> pd.DataFrame:
    if path.suffix == ".parquet":
        return _standardize(pd.read_parquet(path), spec, str(path))
    if path.suffix in (".jsonl", ".json"):
        return _standardize(pd.read_json(path, lines=path.suffix == ".jsonl"), spec, str(path))
    sep = "\t" if path.suffix == ".tsv" else ","
    quoting = csv.QUOTE_NONE if sep == "\t" else csv.QUOTE_MINIMAL
    table = pd.read_csv(
        path, sep=sep, header=None, dtype=str, quoting=quoting, keep_default_na=False
    )
    header = [str(v).strip().lower() for v in table.iloc[0]]
    if set(header) & set((*LABEL_ALIASES, spec.label_column)):
        table = table.iloc[1:].set_axis(header, axis=1)
        return _standardize(table, spec, str(path))
    if dataset == "ag_news":
        return _ag_news_original(table, spec, path)
    raise ValueError(f"data_dir: {str(path)!r} has no header naming a text and a label column")


def _ag_news_original(table: pd.DataFrame, spec: TaskSpec, path: Path) -> pd.DataFrame:
    """AG News as its authors distribute it: ``class(1-4), title, description`` (headerless CSV),
    or the 2-column ``description, class name`` sample. Both keep the description only, so that
    train and test texts look alike when one of them lacks titles."""
    if table.shape[1] == 3:
        labels = pd.to_numeric(table[0], errors="coerce") - 1
        return pd.DataFrame({"text": table[2], "label": labels})
    if table.shape[1] == 2:
        index = {name.lower(): i for i, name in enumerate(spec.label_names)}
        labels = table[1].str.strip().str.lower().map(index)
        return pd.DataFrame({"text": table[0], "label": labels})
    raise ValueError(f"data_dir: {str(path)!r} has {table.shape[1]} columns; expected 2 or 3")


def _standardize(table: pd.DataFrame, spec: TaskSpec, source: str) -> pd.DataFrame:
    columns = {c.lower(): c for c in table.columns}

    def pick(preferred: str, aliases: tuple[str, ...]) -> str:
        for name in (preferred.lower(), *aliases):
            if name in columns:
                return columns[name]
        raise ValueError(f"data: {source!r} has no column among {[preferred, *aliases]}")

    out = pd.DataFrame({"text": table[pick(spec.text_columns[0], TEXT_ALIASES)].astype(str)})
    if len(spec.text_columns) == 2:
        out["text_pair"] = table[pick(spec.text_columns[1], PAIR_ALIASES)].astype(str)
    out["label"] = pd.to_numeric(table[pick(spec.label_column, LABEL_ALIASES)], errors="coerce")
    return out.reset_index(drop=True)


def _validate(frame: pd.DataFrame, spec: TaskSpec, source: str) -> None:
    labels = frame["label"]
    bad = labels.isna() | ~labels.isin(range(spec.num_classes))
    if bad.any():
        rows = frame.index[bad][:5].tolist()
        raise ValueError(
            f"data: labels in {source!r} must be integers in [0, {spec.num_classes - 1}]; "
            f"rows {rows} have {labels[bad][:5].tolist()}"
        )
    frame["label"] = labels.astype(int)
    for column in ("text", "text_pair"):
        if column in frame:
            empty = frame[column].str.strip() == ""
            if empty.any():
                raise ValueError(
                    f"data: {int(empty.sum())} rows of {source!r} have an empty {column!r} "
                    f"(rows {frame.index[empty][:5].tolist()}); remove them"
                )


_HTML_ENTITY = re.compile(r" ?#(\d+);")


def clean_ag_news(text: str) -> str:
    """AG News escapes: ``\\`` stands for a newline and `` #39;`` for ``&#39;`` (an apostrophe)."""
    text = _HTML_ENTITY.sub(lambda m: chr(int(m.group(1))), text.replace("\\", " "))
    return re.sub(r"\s+", " ", text).strip()


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
    train_pool = load_raw(config.dataset, "train", config.data_dir)
    test_pool = load_raw(config.dataset, "test", config.data_dir)
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
        frames["train"] = flip_labels(
            frames["train"], config.label_noise, config.task.num_classes, rng
        )
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
