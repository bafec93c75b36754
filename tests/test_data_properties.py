"""Property-based tests of the own-data loader (``DataConfig`` + ``load_pools``/``make_splits``).

Random CSV, TSV and JSONL tables (odd column names, texts with quotes, commas, line breaks and
any Unicode, labels as words or numbers) are written to a temporary folder, some with a defect:
a repeated column name, a row with more or fewer fields than the header, a missing, NaN or
infinite label, a missing or blank text, a list where a value belongs, a blank line. An oracle
written from the documented rules says what each table must give; the loader must give exactly
that: the rows as written (texts verbatim, labels onto the class names read from the data), or a
``ValueError`` that names the file and the column, row or key at fault. No other exception may
escape. Derandomized, so that CI sees the same examples on every run.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
import tempfile
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

from hypothesis import event, given, settings
from hypothesis import strategies as st

from tracin_we.core.data import DataConfig, load_pools, make_splits

# What pandas' read_csv reads as missing by default: refused as labels (texts keep them).
PANDAS_NA = {
    *("", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN"),
    *("<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null"),
}
NON_FINITE = re.compile(r"[+-]?(nan|inf|infinity)", re.IGNORECASE)
BAD_LABELS = ["", " ", "NA", "NaN", "nan", "N/A", "null", "None", "<NA>", "inf", "-Infinity"]
BAD_LABELS += ["1e400"]  # a float's overflow: inf
NUMBER_LABELS = ["0", "1", "2", "01", "1.0", " 2 ", "-1", "1e1", "+3", "2.50"]
NUMBER_LABELS += [str(2**53), str(2**53 + 1), "1.0000000000000001"]  # exact, not as floats
SETTINGS = settings(max_examples=150, deadline=None, derandomize=True)


@dataclass
class Table:
    """A table as written: each row a list of cells (CSV/TSV; ``[]`` a blank line) or of (key,
    value) pairs (JSONL; None a blank line), or a line written as it is (a str)."""

    fmt: str
    names: list[str]
    rows: list
    text: str  # the configured text column
    label: str  # the configured label column
    defects: list[str] = field(default_factory=list)
    bom: bool = False  # a UTF-8 byte-order mark first, as Excel writes one
    newline: str = "\r\n"  # CSV always: Python's csv quotes "\r" only when its line end has one


def cell_chars(fmt: str, **kwargs) -> st.SearchStrategy[str]:
    """Characters a cell may hold: anything UTF-8, but no tab or line break in a TSV (read
    unquoted) and no byte-order mark (a BOM at the start of a file is not text)."""
    banned = "\ufeff" + ("\t\n\r" if fmt == "tsv" else "")
    return st.characters(codec="utf-8", exclude_characters=banned, **kwargs)


def is_missing_label(value: object) -> bool:
    """A label the loader must refuse: None, NaN, blank, pandas' NA texts, non-finite."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return True
    text = str(value).strip()
    if text in PANDAS_NA or NON_FINITE.fullmatch(text):
        return True
    try:
        return math.isinf(float(text))
    except ValueError:
        return False


def words(fmt: str) -> st.SearchStrategy[str]:
    """Label words: never numbers (no digits), never missing."""
    fixed = st.sampled_from(["pos", "neg", " pos ", "Sci/Tech", "a,b", 'q"uote', "ünï", "na"])
    drawn = st.text(cell_chars(fmt, exclude_categories=("Nd",)), min_size=1, max_size=4)
    return st.one_of(fixed, drawn).filter(lambda w: w.strip() and not is_missing_label(w))


def label_values(fmt: str) -> st.SearchStrategy[object]:
    numbers = st.sampled_from(NUMBER_LABELS)
    if fmt == "jsonl":
        typed = st.sampled_from([0, 1, 2, 1.0, 2.0, 2.5, 2**53, 2**53 + 1, 2**70])
        numbers = st.one_of(numbers, typed)
    return st.sampled_from(["words", "numbers", "both"]).flatmap(
        lambda mode: {
            "words": words(fmt),
            "numbers": numbers,
            "both": st.one_of(words(fmt), numbers),
        }[mode]
    )


def texts(fmt: str) -> st.SearchStrategy[str]:
    fixed = ["NA", "None", "nan", 'say "hi", then', "two\nlines", "a\r\nb", "tab\there", " pad "]
    fixed = [t for t in fixed if fmt != "tsv" or not set(t) & set("\t\n\r")]
    drawn = st.text(cell_chars(fmt), min_size=1, max_size=12).filter(lambda t: t.strip())
    return st.one_of(st.sampled_from(fixed), drawn)


def column_names(fmt: str) -> st.SearchStrategy[str]:
    fixed = st.sampled_from(["text", "label", "x", "NA", "a,b", 'q"', "two\nlines", " "])
    drawn = st.text(cell_chars(fmt), min_size=1, max_size=6)
    return st.one_of(fixed, drawn).filter(lambda n: fmt != "tsv" or not set(n) & set("\t\n\r"))


@st.composite
def tables(draw: st.DrawFn, fmt: str) -> Table:
    """A clean table of 0-10 rows, then up to three defects (some harmless)."""
    width = draw(st.integers(2, 4))
    names = draw(st.lists(column_names(fmt), min_size=width, max_size=width, unique=True))
    order = draw(st.permutations(range(width)))
    text_at, label_at = order[0], order[1]
    if fmt != "jsonl" and width > 2 and draw(st.booleans()):
        names[order[2]] = ""  # an unnamed column, which pandas calls "Unnamed: 2"
    labels, unused = label_values(fmt), st.text(cell_chars(fmt), max_size=4)
    rows = []
    for _ in range(draw(st.integers(0, 10))):
        cells = [draw(unused) for _ in range(width)]
        cells[text_at], cells[label_at] = draw(texts(fmt)), draw(labels)
        rows.append(cells)
    table = Table(fmt, names, rows, names[text_at], names[label_at], bom=draw(st.booleans()))
    if fmt != "csv":
        table.newline = draw(st.sampled_from(["\n", "\r\n"]))
    for defect in draw(st.lists(st.sampled_from(list(DEFECTS)), max_size=3)):
        DEFECTS[defect](draw, table, text_at, label_at)
        table.defects.append(defect)
    if fmt == "jsonl":
        table.rows = [_jsonl_defect(draw, _pairs(names, r), table) for r in rows]
    else:
        table.rows = [[_csv_cell(v) for v in r] if isinstance(r, list) else r or [] for r in rows]
    return table


def _pairs(names: list[str], cells: list | str | None) -> list[tuple[str | None, object]]:
    """A JSONL record's (key, value) pairs; a cell beyond the names has no key yet."""
    if not isinstance(cells, list):
        return cells  # a blank or raw line
    return [(names[k] if k < len(names) else None, v) for k, v in enumerate(cells)]


def _csv_cell(value: object) -> str:
    return "" if value is None else str(value)


def _row(draw: st.DrawFn, table: Table) -> int | None:
    real = [i for i, r in enumerate(table.rows) if isinstance(r, list)]
    return draw(st.sampled_from(real)) if real else None


def _set(draw: st.DrawFn, table: Table, column: int, values: list) -> None:
    i = _row(draw, table)
    if i is not None and column < len(table.rows[i]):
        table.rows[i][column] = draw(st.sampled_from(values))


def _repeat_name(draw, table, text_at, label_at):
    i, j = draw(st.permutations(range(len(table.names))))[:2]
    table.names[j] = table.names[i]


def _extra_field(draw, table, text_at, label_at):
    i = _row(draw, table)
    if i is not None:
        table.rows[i].append(draw(st.text(cell_chars(table.fmt), max_size=3)))


def _short_row(draw, table, text_at, label_at):
    i = _row(draw, table)
    if i is not None:
        table.rows[i] = table.rows[i][: draw(st.integers(0, len(table.names) - 1))]


def _bad_label(draw, table, text_at, label_at):
    bad = BAD_LABELS + ([None, math.nan, math.inf, -math.inf] if table.fmt == "jsonl" else [])
    _set(draw, table, label_at, bad)


def _bad_text(draw, table, text_at, label_at):
    more = {"csv": ["\n", "\t "], "tsv": [], "jsonl": [None, math.nan]}[table.fmt]
    _set(draw, table, text_at, ["", " ", "\u3000", *more])


def _nested(draw, table, text_at, label_at):
    _set(draw, table, draw(st.sampled_from([text_at, label_at])), [["a", 1], {"k": "v"}])


def _blank_line(draw, table, text_at, label_at):
    table.rows.insert(draw(st.integers(0, len(table.rows))), None)


def _broken_line(draw, table, text_at, label_at):
    """A line no parser can read as a row: a quote never closed (CSV), not a JSON object."""
    lines = (
        ["[1, 2]", '"x"', "3", '{"a": 1', "nul"] if table.fmt == "jsonl" else ['"open,pos', 'a,"b']
    )
    if table.fmt == "jsonl":
        table.rows.insert(draw(st.integers(0, len(table.rows))), draw(st.sampled_from(lines)))
    elif table.fmt == "csv" and not any(isinstance(row, str) for row in table.rows):
        table.rows.append(draw(st.sampled_from(lines)))  # last and once: a quote would close it


def _one_class(draw, table, text_at, label_at):
    value = draw(label_values(table.fmt))
    for row in table.rows:
        if isinstance(row, list) and label_at < len(row):
            row[label_at] = value


DEFECTS = {
    "repeat_name": _repeat_name,
    "extra_field": _extra_field,  # JSONL: a repeated key in one record
    "short_row": _short_row,  # JSONL: keys absent from one record
    "bad_label": _bad_label,
    "bad_text": _bad_text,
    "nested": _nested,
    "blank_line": _blank_line,
    "broken_line": _broken_line,
    "one_class": _one_class,
}


def _jsonl_defect(draw: st.DrawFn, pairs: list | None, table: Table) -> list | None:
    """JSONL records take ``extra_field`` as a repeated key, and may carry a key of their own
    (harmless: an unused column)."""
    if not isinstance(pairs, list):
        return pairs
    keys = [k for k, _ in pairs if k is not None]
    pairs = [(draw(st.sampled_from(keys)) if k is None else k, v) for k, v in pairs]
    if draw(st.booleans()) and draw(st.booleans()):
        pairs.append((f"own {len(pairs)}", "x"))
    return pairs


# ---- writing ------------------------------------------------------------------------------------


def write(table: Table, folder: Path) -> Path:
    path = folder / f"data.{table.fmt}"
    rows = table.rows if table.fmt == "jsonl" else [table.names, *table.rows]  # JSONL: no header
    lines = [_line(row, table) for row in rows]
    text = "\ufeff" * table.bom + "".join(line + table.newline for line in lines)
    path.write_text(text, encoding="utf-8", newline="")
    return path


def _line(row: list | str | None, table: Table) -> str:
    """One row as written: TSV unquoted (as a user's tool writes it), CSV by Python's csv."""
    if isinstance(row, str) or row is None:
        return row or ""
    if table.fmt == "jsonl":
        return "{" + ", ".join(f"{json.dumps(k)}: {json.dumps(v)}" for k, v in row) + "}"
    if table.fmt == "tsv":
        return "\t".join(row)
    out = io.StringIO()  # Python's csv quotes only the line breaks of its lineterminator
    csv.writer(out, lineterminator="\r\n").writerow(row)
    return out.getvalue().removesuffix("\r\n")


# ---- the oracle ---------------------------------------------------------------------------------


@dataclass
class Expected:
    error: str | None = None  # what the message must say, besides the file
    texts: list[str] = field(default_factory=list)
    labels: list = field(default_factory=list)  # each row's class: int, or stripped text


def expect(table: Table) -> Expected:
    """What the documented rules give for ``table``, checked in the loader's order."""
    if table.fmt == "jsonl":
        return _expect_jsonl(table)
    return _expect_delimited(table)


def _expect_delimited(table: Table) -> Expected:
    width = len(table.names)
    for i, cells in enumerate(table.rows):  # pandas refuses these as it reads, in order
        if isinstance(cells, str):  # the header is row 1
            return Expected(f"row {i + 2} opens a quoted cell that no quote closes")
        if len(cells) > width:
            return Expected(f"row {i + 2} has {len(cells)} fields but the header has {width}")
    repeated = [n for n in table.names if n and table.names.count(n) > 1]
    if repeated:
        return Expected(f"names the column(s) [{repeated[0]!r}")
    names = [name or f"Unnamed: {i}" for i, name in enumerate(table.names)]
    for column in (table.text, table.label):
        if column not in names:
            return Expected(f"has no column {column!r}")
    padded = {i + 2: cells + [""] * (width - len(cells)) for i, cells in enumerate(table.rows)}
    kept = {row: cells for row, cells in padded.items() if any(cells)}  # blank rows skipped
    text_at, label_at = names.index(table.text), names.index(table.label)
    return _expect_cells(
        table, {row: (cells[text_at], cells[label_at]) for row, cells in kept.items()}
    )


def _expect_jsonl(table: Table) -> Expected:
    cells = {}
    for i, pairs in enumerate(table.rows):
        if isinstance(pairs, str):  # read line by line: the first bad line is named
            return Expected(f"row {i + 1} (line numbers) ")
        keys = [k for k, _ in pairs or ()]
        repeated = [k for k in keys if keys.count(k) > 1]
        if repeated:
            return Expected(f"row {i + 1} (line numbers) has the key {repeated[0]!r} twice")
        if pairs is not None:
            cells[i + 1] = dict(pairs)
    for column in (table.text, table.label):
        if not any(column in record for record in cells.values()):
            return Expected(f"has no column {column!r}")
    return _expect_cells(
        table, {row: (r.get(table.text), r.get(table.label)) for row, r in cells.items()}
    )


def _expect_cells(table: Table, cells: dict[int, tuple[object, object]]) -> Expected:
    """Texts, then labels: nested values first, then missing ones; then two classes."""
    for at, column in ((0, table.text), (1, table.label)):
        nested = [row for row, pair in cells.items() if isinstance(pair[at], list | dict)]
        if nested:
            return Expected(f"have a list or object in column {column!r}: rows {nested[:5]}")
        is_bad = is_missing_label if at else _is_missing_text
        bad = [row for row, pair in cells.items() if is_bad(pair[at])]
        what = "a missing or non-finite label" if at else "a missing or empty text"
        if bad:
            return Expected(f"{what} in column {column!r}: rows {bad[:5]}")
    labels = _classes([label for _, label in cells.values()])
    if len(set(labels)) < 2:
        return Expected(f"label_column={table.label!r}: ")
    return Expected(None, [text for text, _ in cells.values()], labels)


def _is_missing_text(value: object) -> bool:
    return (
        value is None or (isinstance(value, float) and math.isnan(value)) or not str(value).strip()
    )


def _classes(labels: list) -> list:
    """Each label's class: ints when every label is an integer in decimal, else stripped text."""
    text = [str(label).strip() for label in labels]
    try:
        numbers = [Decimal(t) for t in text]
        if all(n.is_finite() and n == n.to_integral_value() for n in numbers):
            return [int(n) for n in numbers]
    except ArithmeticError:  # not a number ("sNaN" parses, but does not compare)
        pass
    return text


# ---- the property -------------------------------------------------------------------------------


def check(table: Table) -> None:
    expected = expect(table)
    event("loads" if expected.error is None else re.sub(r"'.*|\d+|\[.*", "…", expected.error))
    event(f"defects: {sorted(set(table.defects))}")
    with tempfile.TemporaryDirectory() as folder:
        path = write(table, Path(folder))
        try:
            config = DataConfig(
                dataset=str(path),
                text_columns=(table.text,),
                label_column=table.label,
                n_train=1,
                n_val=0,
                n_test=1,
                max_length=8,
            )
            pool, test = load_pools(config)
        except ValueError as err:
            message = str(err)
            assert expected.error is not None, f"a valid table was refused: {message}"
            assert repr(str(path)) in message, message
            assert expected.error in message, (expected.error, message)
            assert any(s in message for s in ("allowed:", "its columns:", "needs two")), message
            return
        assert expected.error is None, f"loaded, but expected: {expected.error}"
        assert test is None and pool.index.tolist() == list(range(len(expected.texts)))
        assert pool["text"].tolist() == expected.texts
        order = sorted(set(expected.labels), key=lambda v: (isinstance(v, str), v))
        assert config.label_names == tuple(order)
        assert [config.label_names[i] for i in pool["label"]] == expected.labels
        if len(set(expected.texts)) > 1:  # train keeps a text the test split lacks
            for split in make_splits(config).values():
                rows = pool.loc[split["source_index"]]
                assert list(split["text"]) == rows["text"].tolist()
                assert list(split["label"]) == rows["label"].tolist()


@SETTINGS
@given(tables("csv"))
def test_csv_tables_load_as_written_or_are_refused_by_name(table):
    check(table)


@SETTINGS
@given(tables("tsv"))
def test_tsv_tables_load_as_written_or_are_refused_by_name(table):
    check(table)


@SETTINGS
@given(tables("jsonl"))
def test_jsonl_tables_load_as_written_or_are_refused_by_name(table):
    check(table)
