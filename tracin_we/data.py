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

import csv
import html
import json
import os
import re
import reprlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
import torch
from datasets import Dataset, DatasetDict

from tracin_we.params import check_types
from tracin_we.persistence import tensor_digest
from tracin_we.tokenizer import BERT_UNCASED, load_tokenizer

DATA_DIR_ENV = "TRACIN_WE_DATA_DIR"
LOCAL_SUFFIXES = (".parquet", ".jsonl", ".json", ".csv", ".tsv")


@dataclass(frozen=True)
class TaskSpec:
    """Where a task lives on the hub and which of its columns hold text and label."""

    hub_path: str
    hub_config: str | None
    hub_splits: tuple[str, ...]  # (train split, test split), or one split to draw both from
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
    return _split_file(task_dir, split, f"data_dir: no {split} file for dataset={dataset!r}")


def _split_file(folder: Path, split: str, what: str) -> Path:
    """The first file of ``folder`` (by name) named ``<split>*.<suffix>``."""
    candidates = sorted(
        p for p in folder.iterdir() if p.name.startswith(split) and p.suffix in LOCAL_SUFFIXES
    )
    if not candidates:
        raise ValueError(
            f"{what} in {str(folder)!r}; expected "
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
        _check_distinct(header, path, "data_dir")
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


class _Table(NamedTuple):
    frame: pd.DataFrame  # text [, text_pair], label (ints, or stripped text)
    source: str  # the file, or "hub name (split)", for errors
    class_names: tuple[str, ...] | None  # the hub's ClassLabel names, if any


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
    for table in _user_tables(config):
        frame = table.frame.copy()
        frame["label"] = encode_labels(frame["label"], config.task.label_names, table.source)
        frames.append(frame)
    return frames[0], frames[1] if len(frames) == 2 else None


def infer_label_names(config: DataConfig) -> tuple[str | int, ...]:
    """The class names of a dataset of one's own: the hub's ``ClassLabel`` names, else its
    distinct labels over every split, sorted (integers by value, before text)."""
    tables = _user_tables(config)
    for table in tables:
        if table.class_names:
            return table.class_names
    values = set().union(*(set(t.frame["label"]) for t in tables))
    if len(values) < 2:
        raise ValueError(
            f"label_column={config.task.label_column!r}: {tables[0].source!r} has "
            f"{len(values)} distinct label(s) {sorted(map(str, values))}; a classifier needs two"
        )
    return tuple(sorted(values, key=lambda v: (isinstance(v, str), v)))


def encode_labels(labels: pd.Series, names: Sequence[str | int], source: str) -> pd.Series:
    """Class indices (int) of ``labels``: a label equal to a name (as text) is its position in
    ``names``; otherwise integer labels in ``range(len(names))`` are indices themselves."""
    index = {str(name): i for i, name in enumerate(names)}
    text = labels.map(str)
    if text.isin(index).all():
        return text.map(index).astype(int)
    if all(isinstance(v, int) and 0 <= v < len(names) for v in labels):
        return labels.astype(int)
    unknown = sorted(set(text[~text.isin(index)]))
    raise ValueError(
        f"label_names={list(names)} do not cover the labels of {source!r}: {unknown[:10]} are "
        "none of them; allowed: label_names listing every label value (or None to read them "
        f"from the data), or integer labels that are class indices 0..{len(names) - 1}"
    )


def _user_tables(config: DataConfig) -> list[_Table]:
    """The dataset's tables, one per split name (a single file: one table)."""
    task, local = config.task, config.local_path
    if local is None:
        return [_hub_table(config, split) for split in task.hub_splits]
    paths = [local] if local.is_file() else []
    for split in task.hub_splits if local.is_dir() else ():
        what = f"dataset: no {split!r} file (split_names={list(task.hub_splits)})"
        paths.append(_split_file(local, split, what))
    tables = []
    for path in paths:
        table, rows = _read_table(path)
        tables.append(_Table(_select(table, config, str(path), rows), str(path), None))
    return tables


def _hub_table(config: DataConfig, split: str) -> _Table:
    from datasets import ClassLabel, load_dataset  # deferred: importing it is slow

    try:
        data = load_dataset(config.dataset, config.dataset_config, split=split)
    except (OSError, ValueError) as err:  # not found, offline, unknown config or split
        raise ValueError(
            f"dataset={config.dataset!r} is unknown: not a built-in task ({sorted(TASKS)}), not "
            "a local file or folder, and the Hugging Face hub could not load it "
            f"(dataset_config={config.dataset_config!r}, split {split!r}): "
            f"{type(err).__name__}: {err}"
        ) from err
    source = f"{config.dataset} ({split})"
    feature = data.features.get(config.task.label_column)
    names = tuple(feature.names) if isinstance(feature, ClassLabel) else None
    return _Table(_select(data.to_pandas(), config, source, ROWS_FROM_0), source, names)


# How the row numbers named in errors count, by source (each table is indexed by them).
ROWS_BELOW_HEADER = "row 1 is the header"  # CSV/TSV: pandas' own count, blank lines included
ROWS_ARE_LINES = "line numbers"  # JSONL
ROWS_FROM_1 = "row 1 is the first"  # parquet, JSON
ROWS_FROM_0 = "row 0 is the first"  # a hub dataset, as ``data[i]`` counts
# pandas' refusals of a CSV/TSV: a row longer than the first (the header, read as a row; its
# "line" counts as ours), and a quote never closed (its "row" counts from 0).
_TOO_MANY_FIELDS = re.compile(r"Expected (\d+) fields in line (\d+), saw (\d+)")
_OPEN_QUOTE = re.compile(r"EOF inside string starting at row (\d+)")


def _read_table(path: Path) -> tuple[pd.DataFrame, str]:
    """A local file with a header row (every CSV/TSV cell as text), indexed by the row numbers a
    user finds in it, and how they count. Checked: the file parses, its column names (JSON: the
    keys of each record) are distinct, and no CSV/TSV row has more fields than the header."""
    readers = {
        ".parquet": _read_parquet,
        ".jsonl": _read_json_lines,
        ".json": _read_json,
        ".csv": _read_delimited,
        ".tsv": _read_delimited,
    }
    if path.suffix not in readers:
        raise ValueError(
            f"dataset={str(path)!r}: unknown file type; allowed: {', '.join(LOCAL_SUFFIXES)}"
        )
    return readers[path.suffix](path)


def _unreadable(path: Path, err: Exception) -> ValueError:
    return ValueError(
        f"dataset: {str(path)!r} cannot be read ({type(err).__name__}: {err}); give a "
        "UTF-8 CSV/TSV/JSONL or a parquet file with a header naming its columns"
    )


def _read_delimited(path: Path) -> tuple[pd.DataFrame, str]:
    """A CSV/TSV file, every cell as text. Its header is read as a row, so that pandas refuses a
    row with more fields (rather than take the first column for an index and shift the rest)
    and repeated names stay as written (rather than renamed ``x.1``). A row with fewer fields
    has its missing cells empty (pandas' reading); rows of empty cells (blank lines, ``,,``) are
    skipped."""
    tsv = path.suffix == ".tsv"
    try:
        raw = pd.read_csv(
            path,
            sep="\t" if tsv else ",",
            header=None,
            dtype=str,
            keep_default_na=False,
            skip_blank_lines=False,  # kept (then dropped), so that row numbers count them
            quoting=csv.QUOTE_NONE if tsv else csv.QUOTE_MINIMAL,
        )
    except pd.errors.ParserError as err:
        raise _parser_error(path, err, tsv) from err
    except ValueError as err:  # not UTF-8, empty
        raise _unreadable(path, err) from err
    header = [name or f"Unnamed: {i}" for i, name in enumerate(raw.iloc[0])]  # pandas' names
    _check_distinct(header, path)
    table = raw.iloc[1:].set_axis(header, axis=1)
    table.index = table.index + 1  # raw row 0, the header, is row 1
    return table[~(table == "").all(axis=1)], ROWS_BELOW_HEADER


def _parser_error(path: Path, err: pd.errors.ParserError, tsv: bool) -> ValueError:
    """pandas' refusal of a row longer than the header or of a quote never closed, in words and
    in our row numbers; another parse error as is."""
    where = f"dataset: {str(path)!r} row"
    if found := _OPEN_QUOTE.search(str(err)):
        return ValueError(
            f"{where} {int(found.group(1)) + 1} opens a quoted cell that no quote closes "
            f'({ROWS_BELOW_HEADER}); allowed: a closing quote, and "" for a quote inside a cell'
        )
    if (found := _TOO_MANY_FIELDS.search(str(err))) is None:
        return _unreadable(path, err)
    header, row, fields = found.groups()
    if tsv:
        fix = "TSV cells cannot hold tabs or line breaks (TSV is read unquoted)"
    else:
        fix = 'quote a cell that holds "," or a line break'
    return ValueError(
        f"{where} {row} has {fields} fields but the header has {header} ({ROWS_BELOW_HEADER}); "
        f"allowed: one field per header column; {fix}"
    )


def _check_distinct(names: Sequence[str], path: Path, param: str = "dataset") -> None:
    """Each column name of ``path`` once: pandas would rename a second ``x`` to ``x.1``, or
    pick one of them. ``param`` names the file's parameter in the error."""
    repeated = [name for name, n in Counter(names).items() if n > 1]
    if repeated:
        raise ValueError(
            f"{param}: {str(path)!r} names the column(s) {repeated} more than once in its "
            f"header; allowed: distinct column names (its columns: {list(names)})"
        )


def _read_parquet(path: Path) -> tuple[pd.DataFrame, str]:
    import pyarrow.parquet as pq  # deferred: only parquet files need it

    try:
        names = pq.read_schema(path).names
    except ValueError as err:  # not parquet (ArrowInvalid)
        raise _unreadable(path, err) from err
    _check_distinct(names, path)  # before reading: pyarrow refuses repeated names unnamed
    try:
        table = pd.read_parquet(path)
    except ValueError as err:
        raise _unreadable(path, err) from err
    return table.set_axis(pd.RangeIndex(1, len(table) + 1)), ROWS_FROM_1


def _read_json_lines(path: Path) -> tuple[pd.DataFrame, str]:
    """One JSON object per line (blank lines skipped), indexed by line number."""
    records, lines = [], []
    try:
        with path.open(encoding="utf-8-sig") as file:
            for number, line in enumerate(file, 1):
                if line.strip():
                    records.append(_json_record(line, path, f"row {number} ({ROWS_ARE_LINES})"))
                    lines.append(number)
    except UnicodeDecodeError as err:
        raise _unreadable(path, err) from err
    return pd.DataFrame(records, index=lines, dtype=object), ROWS_ARE_LINES  # values as parsed


def _json_record(line: str, path: Path, where: str) -> dict:
    """One line of a JSONL file: a JSON object with distinct keys."""
    try:
        record = json.loads(line, object_pairs_hook=_distinct_keys)
    except json.JSONDecodeError as err:  # its own "line" counts within this one line
        raise ValueError(
            f"dataset: {str(path)!r} {where} is not valid JSON ({err.msg} at character "
            f"{err.pos + 1}); allowed: one JSON object per line"
        ) from err
    except KeyError as err:
        raise ValueError(
            f"dataset: {str(path)!r} {where} has the key {err.args[0]!r} twice; allowed: "
            "distinct keys in each record"
        ) from None
    if not isinstance(record, dict):
        raise ValueError(
            f"dataset: {str(path)!r} {where} holds a JSON {type(record).__name__}; allowed: one "
            "JSON object per line"
        )
    return record


def _distinct_keys(pairs: list[tuple[str, object]]) -> dict:
    """A JSON object's pairs as a dict; a repeated key raises KeyError (``json`` keeps the
    last one silently)."""
    keys = Counter(key for key, _ in pairs)
    repeated = [key for key, n in keys.items() if n > 1]
    if repeated:
        raise KeyError(repeated[0])
    return dict(pairs)


def _read_json(path: Path) -> tuple[pd.DataFrame, str]:
    """A JSON array of records, or an object of columns (pandas' ``to_json`` layout)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"), object_pairs_hook=_distinct_keys)
        table = pd.DataFrame(data, dtype=object)  # values as parsed
    except KeyError as err:
        raise ValueError(
            f"dataset: {str(path)!r} has the key {err.args[0]!r} twice in one object; allowed: "
            "distinct keys in each record"
        ) from None
    except ValueError as err:  # not UTF-8 or not JSON; not a table
        raise _unreadable(path, err) from err
    return table.set_axis(pd.RangeIndex(1, len(table) + 1)), ROWS_FROM_1


def _select(table: pd.DataFrame, config: DataConfig, source: str, rows: str) -> pd.DataFrame:
    """``text`` [, ``text_pair``] and ``label`` (ints where every label is an integer, else
    stripped text) from the configured columns, indexed from 0. ``table`` is indexed by the row
    numbers a user finds in ``source``, counted as ``rows`` says; errors name them. Checked: each
    column exists; no cell of them holds a list or object; no text is missing or blank; no label
    is missing or non-finite (``_missing_labels``)."""
    task = config.task
    found = [str(c) for c in table.columns]
    wanted = [("text_columns", c, config.text_columns) for c in task.text_columns]
    wanted.append(("label_column", task.label_column, config.label_column))
    for param, column, given in wanted:
        if column not in table.columns:
            default = "" if given is not None else " (the default; name yours)"
            raise ValueError(
                f"{param}={given!r}: {source!r} has no column {column!r}{default}; its "
                f"columns: {found}"
            )
    out = pd.DataFrame(index=pd.RangeIndex(len(table)))
    names = (*("text", "text_pair")[: len(task.text_columns)], "label")
    for (param, column, given), name in zip(wanted, names, strict=True):
        values = table[column]
        for bad, what, allowed in _bad_cells(values, name == "label", config.label_names):
            if bad.any():
                shown = reprlib.repr([None if _is_na(v) else v for v in values[bad][:5]])
                more = f" and {int(bad.sum()) - 5} more" if bad.sum() > 5 else ""
                raise ValueError(
                    f"{param}={given!r}: {int(bad.sum())} row(s) of {source!r} have {what} in "
                    f"column {column!r}: rows {values.index[bad][:5].tolist()}{more} ({rows}) "
                    f"hold {shown}; allowed: {allowed}"
                )
        values = values.reset_index(drop=True)
        out[name] = values.astype(str) if name != "label" else _label_values(values)
    return out


def _bad_cells(
    values: pd.Series, label: bool, names: Sequence[str | int] | None
) -> list[tuple[pd.Series, str, str]]:
    """The checks of one column, in order: (rows failing, what they have, what is allowed)."""
    nested = pd.Series(False, index=values.index)
    if pd.api.types.is_object_dtype(values):  # JSON, parquet: a cell may hold a list or dict
        nested = values.map(lambda v: not pd.api.types.is_scalar(v)).astype(bool)
    checks = [(nested, "a list or object", "a text or a number in each cell")]
    if label:
        missing = ~nested & _missing_labels(values, names)
        allowed = (
            "a class name or a finite number in every row; remove those rows, or list a value "
            "that is a class in label_names"
        )
        checks.append((missing, "a missing or non-finite label", allowed))
    else:
        missing = ~nested & (values.isna() | (values.astype(str).str.strip() == ""))
        checks.append((missing, "a missing or empty text", "a non-blank text; remove those rows"))
    return checks


def _is_na(value: object) -> bool:
    """None, NaN, NA or NaT (pandas holds a JSON null as NaN in a column of texts)."""
    return pd.api.types.is_scalar(value) and bool(pd.isna(value))


# What pandas reads as missing by default (read_csv's na_values): refused as labels, but kept as
# texts, where "NA" or "None" may be words.
MISSING_LABELS = (
    *("", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN"),
    *("<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null"),
)


def _missing_labels(values: pd.Series, names: Sequence[str | int] | None) -> pd.Series:
    """Labels that are missing: None/NaN (a JSON null, an absent key), blank, what pandas reads as
    missing (``MISSING_LABELS``: "NA", "null", ...), or not a finite number ("nan" in any case,
    "inf", "-Infinity", "1e400", a float inf). A value listed in ``names`` is a class however it
    reads ("NA" for North America)."""
    text = values.astype(str).str.strip()
    numbers = pd.to_numeric(text, errors="coerce")
    missing = (
        text.isin(MISSING_LABELS)
        | text.str.fullmatch(r"[+-]?nan", case=False)
        | np.isinf(numbers.astype(float))
    )
    if names is not None:
        missing &= ~text.isin([str(name) for name in names])
    return values.isna() | missing


def _label_values(labels: pd.Series) -> pd.Series:
    """Python ints when every label is a decimal integer (``1``, ``1.0``, ``"1"``, ``"1e3"``),
    else stripped text. Read exactly, not as floats, which round ``"1.0000000000000001"`` onto 1
    and overflow int64 (``"1e30"``), merging classes."""
    text = labels.astype(str).str.strip()
    if text.str.fullmatch(_DECIMAL).all():
        numbers = [Decimal(t) for t in text]
        if all(n == n.to_integral_value() for n in numbers):
            return pd.Series([int(n) for n in numbers], index=labels.index, dtype=object)
    return text


# A decimal number in ASCII digits, as a CSV writes one (Decimal also reads "١" or "1_0").
_DECIMAL = r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?"


# AG News lost the "&" of its HTML entities ("It #39;s", "Johnson  amp; Johnson", "quot;Hi"):
# a space before one stands for it. Named entities are listed, since many words end in ";".
_BROKEN_ENTITY = re.compile(r"(?: |(?<![&\w]))(#\d+|#x[0-9a-fA-F]+|quot|amp|lt|gt|hellip|nbsp);")
_HTML_TAG = re.compile(r"</?[A-Za-z][^<>]*>")  # RSS markup: <A HREF=...>, <b>, <br>, <FONT ...>


def clean_ag_news(text: str) -> str:
    """AG News as text: ``\\`` stands for a newline; HTML entities, with or without their lost
    ``&`` (`` #39;`` → ``'``, `` quot;`` → ``"``, ``&lt;`` → ``<``), are unescaped
    (``html.unescape``: ``#146;`` is cp1252's ``’``), and the HTML tags they spelt are removed."""
    text = re.sub(r"(?:amp;){2,}", "amp;", text.replace("\\", " "))  # "&amp;amp;amp;" once
    text = html.unescape(_BROKEN_ENTITY.sub(r"&\1;", text))
    return re.sub(r"\s+", " ", _HTML_TAG.sub(" ", text)).strip()


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
