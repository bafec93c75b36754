"""The built-in tasks (AG News, Toxicity, MNLI): where each lives on the hub and which columns hold
text and label (``TASKS``), and reading one split from a local folder (``$TRACIN_WE_DATA_DIR``) or
the hub (``load_raw``), cleaned and checked."""

from __future__ import annotations

import csv
import html
import os
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

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
    return split_file(task_dir, split, f"data_dir: no {split} file for dataset={dataset!r}")


def split_file(folder: Path, split: str, what: str) -> Path:
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
        check_distinct(header, path, "data_dir")
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


def check_distinct(names: Sequence[str], path: Path, param: str = "dataset") -> None:
    """Each column name of ``path`` once: pandas would rename a second ``x`` to ``x.1``, or
    pick one of them. ``param`` names the file's parameter in the error."""
    repeated = [name for name, n in Counter(names).items() if n > 1]
    if repeated:
        raise ValueError(
            f"{param}: {str(path)!r} names the column(s) {repeated} more than once in its "
            f"header; allowed: distinct column names (its columns: {list(names)})"
        )


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
