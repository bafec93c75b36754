"""Datasets of one's own: CSV/TSV/JSONL/JSON/parquet files, a folder of split files, or a hub
name; their tables read, every cell used checked, and their labels named and encoded."""

from __future__ import annotations

import csv
import json
import re
import reprlib
from collections import Counter
from collections.abc import Sequence
from decimal import Decimal
from pathlib import Path
from typing import NamedTuple, Protocol

import numpy as np
import pandas as pd

from tracin_we.core.tasks import LOCAL_SUFFIXES, TASKS, TaskSpec, check_distinct, split_file


class DataSource(Protocol):
    """What the readers here take from a ``data.DataConfig`` of one's own dataset."""

    dataset: str
    dataset_config: str | None
    text_columns: tuple[str, ...] | None
    label_column: str | None
    label_names: tuple[str | int, ...] | None

    @property
    def local_path(self) -> Path | None: ...

    @property
    def task(self) -> TaskSpec: ...


class _Table(NamedTuple):
    frame: pd.DataFrame  # text [, text_pair], label (ints, or stripped text)
    source: str  # the file, or "hub name (split)", for errors
    class_names: tuple[str, ...] | None  # the hub's ClassLabel names, if any


def infer_label_names(config: DataSource) -> tuple[str | int, ...]:
    """The class names of a dataset of one's own: the hub's ``ClassLabel`` names, else its
    distinct labels over every split, sorted (integers by value, before text)."""
    tables = user_tables(config)
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


def user_tables(config: DataSource) -> list[_Table]:
    """The dataset's tables, one per split name (a single file: one table)."""
    task, local = config.task, config.local_path
    if local is None:
        return [_hub_table(config, split) for split in task.hub_splits]
    paths = [local] if local.is_file() else []
    for split in task.hub_splits if local.is_dir() else ():
        what = f"dataset: no {split!r} file (split_names={list(task.hub_splits)})"
        paths.append(split_file(local, split, what))
    tables = []
    for path in paths:
        table, rows = _read_table(path)
        tables.append(_Table(_select(table, config, str(path), rows), str(path), None))
    return tables


def _hub_table(config: DataSource, split: str) -> _Table:
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
    check_distinct(header, path)
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


def _read_parquet(path: Path) -> tuple[pd.DataFrame, str]:
    import pyarrow.parquet as pq  # deferred: only parquet files need it

    try:
        names = pq.read_schema(path).names
    except ValueError as err:  # not parquet (ArrowInvalid)
        raise _unreadable(path, err) from err
    check_distinct(names, path)  # before reading: pyarrow refuses repeated names unnamed
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


def _select(table: pd.DataFrame, config: DataSource, source: str, rows: str) -> pd.DataFrame:
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
