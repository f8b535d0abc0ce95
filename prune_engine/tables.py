"""Rows of a file or a hub split, each kept with where it came from, so every problem with the
data is reported with the file, the row and the column.

Reads .csv, .tsv (no quoting, as STS-B needs), .jsonl, .parquet and .txt (one text per line), and
Hugging Face `datasets` splits; `data.py` turns rows into the engine's typed containers.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

TABLE_SUFFIXES = (".csv", ".tsv", ".jsonl", ".parquet")
TEXT_SUFFIX = ".txt"


class DataError(ValueError):
    """Bad or missing data; the message names the file, the row or column, and what was expected."""


@dataclass(frozen=True)
class Table:
    """Rows of one file or hub split, kept with their origin so every error can point at a row."""

    source: str
    columns: list[str]
    rows: list[dict[str, Any]]
    line_numbers: list[int] | None = None  # file line of each row; None for hub data

    def where(self, index: int) -> str:
        line = f" (line {self.line_numbers[index]})" if self.line_numbers else ""
        return f"{self.source}, row {index + 1}{line}"


def read_table(path: str | Path) -> Table:
    """Read a .csv, .tsv (no quoting, as STS-B needs), .jsonl or .parquet file into rows."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in TABLE_SUFFIXES:
        raise DataError(
            f"{path}: unsupported file type {suffix or '(none)'}; expected one of {', '.join(TABLE_SUFFIXES)}"
        )
    if not path.is_file():
        raise DataError(f"file not found: {path}")
    try:
        if suffix == ".parquet":
            return _read_parquet(path)
        with path.open(newline="", encoding="utf-8-sig") as handle:
            return _read_jsonl(path, handle) if suffix == ".jsonl" else _read_delimited(path, handle, suffix)
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not valid UTF-8 text ({exc.reason} at byte {exc.start})") from exc


def _read_delimited(path: Path, handle: Iterable[str], suffix: str) -> Table:
    tsv = suffix == ".tsv"
    reader = csv.reader(
        handle, delimiter="\t" if tsv else ",", quoting=csv.QUOTE_NONE if tsv else csv.QUOTE_MINIMAL
    )
    header = next(reader, None)
    if not header:
        raise DataError(f"{path}: empty file; expected a header line with column names")
    header = [name.strip() for name in header]
    rows, line_numbers = [], []
    for fields in reader:
        if not fields:
            continue
        if len(fields) != len(header):
            hint = " (a tab inside a text?)" if tsv else ""
            raise DataError(
                f"{path}, row {len(rows) + 1} (line {reader.line_num}): {len(fields)} fields, "
                f"but the header has {len(header)} ({', '.join(header)}){hint}"
            )
        rows.append(dict(zip(header, fields, strict=True)))
        line_numbers.append(reader.line_num)
    return Table(str(path), header, rows, line_numbers)


def _read_jsonl(path: Path, handle: Iterable[str]) -> Table:
    rows, line_numbers, columns = [], [], {}
    for line_number, line in enumerate(handle, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}, line {line_number}: invalid JSON ({exc.msg})") from exc
        if not isinstance(row, dict):
            raise DataError(f"{path}, line {line_number}: expected a JSON object, found {type(row).__name__}")
        rows.append(row)
        line_numbers.append(line_number)
        columns.update(dict.fromkeys(row))
    return Table(str(path), list(columns), rows, line_numbers)


def _read_parquet(path: Path) -> Table:
    import pyarrow.parquet as pq  # installed with datasets; only parquet files need it

    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises several unrelated types for unreadable files
        raise DataError(f"{path}: cannot read parquet file ({exc})") from exc
    return Table(str(path), table.column_names, table.to_pylist())


def hub_table(dataset: Any, source: str) -> Table:
    return Table(source, list(dataset.column_names), dataset.to_list())


def load_hub(hub_id: str, config: str | None = None, split: str | None = None, *, local_hint: str) -> Any:
    """``datasets.load_dataset`` with any failure (offline, unknown name, missing split) as one DataError."""
    what = " ".join(
        part for part in (repr(hub_id), config and f"config {config!r}", split and f"split {split!r}") if part
    )
    try:
        import datasets
    except ImportError as exc:
        raise DataError(f"loading {what} needs the 'datasets' package.{local_hint}") from exc
    try:
        return datasets.load_dataset(hub_id, config, split=split)
    except Exception as exc:  # network, offline mode, missing repo/config/split all raise different types
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise DataError(
            f"could not load {what} from the Hugging Face hub ({type(exc).__name__}: {reason}).{local_hint}"
        ) from exc


def text_cell(table: Table, index: int, row: dict[str, Any], column: str) -> str:
    value = row.get(column)
    if isinstance(value, str) and value.strip():
        return value
    problem = "is empty" if value is None or isinstance(value, str) else f"must be text, found {value!r}"
    raise DataError(f"{table.where(index)}: {column} {problem}")


def identifier_cell(table: Table, index: int, row: dict[str, Any], column: str) -> str:
    value = row.get(column)
    if isinstance(value, bool) or not isinstance(value, str | int) or not str(value).strip():
        raise DataError(f"{table.where(index)}: column {column!r} must be an id, found {value!r}")
    return str(value).strip()


def number_cell(table: Table, index: int, row: dict[str, Any], column: str) -> float:
    value = row.get(column)
    try:
        number = float(value) if not isinstance(value, bool) else float("nan")
    except (TypeError, ValueError):
        number = float("nan")
    if number != number:  # NaN: missing, empty or not a number
        raise DataError(f"{table.where(index)}: column {column!r} must be a number, found {value!r}")
    return number


def read_text_lines(path: Path) -> list[str]:
    """One text per line; blank lines are separators, not texts."""
    if not path.is_file():
        raise DataError(f"file not found: {path}")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not valid UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    texts = [line.strip() for line in lines if line.strip()]
    if not texts:
        raise DataError(f"{path}: no text lines")
    return texts
