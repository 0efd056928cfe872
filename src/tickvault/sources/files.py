"""Tick files: CSV or Parquet with the tick fields of DESIGN.md, read row by row with line numbers.

Fields: `symbol`, `price`, `quantity`, and `timestamp` (ISO 8601 with an offset) or `timestamp_ms`;
optional `trade_id` (default: the trade's number in its symbol and session, in file order),
`volume` (default price x quantity x the symbol's multiplier), `buyer`, `seller`, `trade_type`,
`aggressor` (default from trade_type: 2 buy, 3 sell), `is_edit`, `seq` (ignored: ingest numbers
ticks itself). Columns may carry other common names (see `layouts`: English, Portuguese, B3's trade
files); CSV may be `,`, `;` or tab separated. A row that breaks a rule is yielded as a `BadRow` with
its line number and reason; the rows around it are unaffected.
"""

from __future__ import annotations

import contextlib
import csv
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tickvault.domain.events import SYMBOL_PATTERN, Tick, make_tick, to_ms
from tickvault.domain.instruments import instrument_for
from tickvault.domain.timeparse import parse_time
from tickvault.errors import DataError
from tickvault.sources.layouts import Layout

_TRUE = {"true", "1", "yes", "t", "y"}
_FALSE = {"false", "0", "no", "f", "n", ""}


@dataclass(frozen=True)
class BadRow:
    line: int
    error: DataError

    def __str__(self) -> str:
        return f"line {self.line}: {self.error}"


def _int(row: dict[str, Any], name: str, default: int | None = None) -> int:
    raw = row.get(name)
    if raw is None or (isinstance(raw, str) and raw.strip() == ""):
        if default is None:
            raise DataError(name, "required field is missing")
        return default
    if isinstance(raw, bool):
        raise DataError(name, f"expected an integer, got {raw!r}")
    if isinstance(raw, int):
        return raw
    if isinstance(raw, float):
        if not raw.is_integer():
            raise DataError(name, f"expected an integer, got {raw!r}")
        return int(raw)
    try:
        return int(str(raw).strip())
    except ValueError:
        raise DataError(name, f"expected an integer, got {raw!r}") from None


def _float(row: dict[str, Any], name: str) -> float:
    raw = row.get(name)
    if raw is None or (isinstance(raw, str) and raw.strip() == ""):
        raise DataError(name, "required field is missing")
    try:
        value = float(raw)
    except (TypeError, ValueError):
        raise DataError(name, f"expected a number, got {raw!r}") from None
    if not math.isfinite(value):
        raise DataError(name, f"must be a finite number, got {raw!r}")
    return value


def _bool(row: dict[str, Any], name: str) -> bool:
    raw = row.get(name)
    if raw is None or isinstance(raw, bool):
        return bool(raw)
    text = str(raw).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise DataError(name, f"expected true or false, got {raw!r}")


def _time_ms(row: dict[str, Any]) -> int:
    if row.get("timestamp") not in (None, ""):
        stamp = row["timestamp"]
        moment = parse_time(
            stamp if not hasattr(stamp, "to_pydatetime") else stamp.to_pydatetime(), field="timestamp"
        )
        ms = to_ms(moment)
        if row.get("timestamp_ms") not in (None, "") and _int(row, "timestamp_ms") != ms:
            raise DataError("timestamp_ms", f"{row['timestamp_ms']} does not match timestamp {stamp}")
        return ms
    return _int(row, "timestamp_ms")


def tick_from_row(row: dict[str, Any], layout: Layout | None = None) -> Tick:
    """One file row (text or typed values) -> a validated Tick; DataError names the field. With a
    `layout`, the row is in the file's own column names."""
    if layout is not None:
        row = layout.row(row)
    symbol, ms = row_key(row)
    if layout is not None:
        layout.number(row, symbol, ms)
    return finish_tick(row, symbol, ms)


def row_key(row: dict[str, Any]) -> tuple[str, int]:
    """(symbol, exchange ms) of a row in tick field names: what a row needs before it can be given a
    trade number (the vectorised reader, `tick_table`, runs these same steps on the rows it cannot
    decide column-wise)."""
    symbol = row.get("symbol")
    if not isinstance(symbol, str):
        raise DataError(
            "symbol", "required field is missing" if symbol is None else f"must be text, got {symbol!r}"
        )
    ms = _time_ms(row)
    if not 0 <= ms <= _LAST_MS:  # a date must be one (a number past year 9999 overflowed the readers)
        raise DataError("timestamp_ms", f"{ms} is not a time between 1970 and 9999")
    return symbol.strip(), ms


_LAST_MS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z


def finish_tick(row: dict[str, Any], symbol: str, ms: int) -> Tick:
    """The rest of `tick_from_row` once a row has its symbol, time and trade id."""
    price, quantity = _float(row, "price"), _int(row, "quantity")
    volume = _float(row, "volume") if row.get("volume") not in (None, "") else None
    aggressor = str(row["aggressor"]).strip() if row.get("aggressor") not in (None, "") else None
    if aggressor not in (None, "buy", "sell", "none"):
        raise DataError("aggressor", f"must be buy, sell or none, got {aggressor!r}")
    return make_tick(
        symbol,
        ms,
        _int(row, "trade_id"),
        price,
        quantity,
        volume=volume,
        multiplier=instrument_for(symbol).multiplier if volume is None else 1.0,
        buyer=_int(row, "buyer", 0),
        seller=_int(row, "seller", 0),
        trade_type=_int(row, "trade_type", 0),
        aggressor=aggressor,  # type: ignore[arg-type]
        is_edit=_bool(row, "is_edit"),
    )


def _layout(columns: list[str], path: Path, symbol: str | None, delimiter: str = ",") -> Layout:
    try:
        return Layout.detect(columns, symbol=symbol, delimiter=delimiter)
    except DataError as exc:
        raise DataError("columns", f"{path.name} {exc.reason}") from None


def read_ticks(path: Path, *, symbol: str | None = None) -> Iterator[Tick | BadRow]:
    """Ticks of a .csv or .parquet file in file order, bad rows as BadRow (line 1 is the CSV header).
    `symbol` is the symbol of a file that has no symbol column."""
    path = Path(path)
    if not path.exists():
        raise DataError("path", f"{path} does not exist")
    if path.suffix.lower() in (".parquet", ".pq"):
        yield from _read_parquet(path, symbol)
    else:
        yield from _read_csv(path, symbol)


def file_symbols(path: Path, *, symbol: str | None = None) -> list[str]:
    """The distinct symbols of a tick file, in order of appearance (a cheap first pass)."""
    path = Path(path)
    if not path.exists():
        raise DataError("path", f"{path} does not exist")
    seen: dict[str, None] = {}
    if path.suffix.lower() in (".parquet", ".pq"):
        import pyarrow.parquet as pq

        try:
            names = pq.read_schema(path).names
        except Exception as exc:
            raise DataError("path", f"{path.name} is not a readable Parquet file: {exc}") from None
        column = _layout(names, path, symbol).symbol_column
        if column is None:
            return [symbol] if symbol and SYMBOL_PATTERN.fullmatch(symbol) else []
        values = pq.read_table(path, columns=[column]).column(column)
        seen.update(dict.fromkeys(str(v).strip() for v in values.unique().to_pylist() if v is not None))
    else:
        with _csv_reader(path) as (reader, delimiter):
            column = _layout(list(reader.fieldnames or []), path, symbol, delimiter).symbol_column
            if column is None:
                return [symbol] if symbol and SYMBOL_PATTERN.fullmatch(symbol) else []
            for row in reader:
                found = (row.get(column) or "").strip() or symbol or ""
                if found and found not in seen:
                    seen[found] = None
    # an invalid symbol's rows are reported as bad rows on the second pass
    return [s for s in seen if SYMBOL_PATTERN.fullmatch(s)]


@contextlib.contextmanager
def _csv_reader(path: Path) -> Iterator[tuple[csv.DictReader[str], str]]:
    """A DictReader with the delimiter the header line uses (`,`, `;` or tab), header names stripped."""
    with open(path, newline="", encoding="utf-8-sig", errors="replace") as fh:
        header = fh.readline()
        fh.seek(0)
        delimiter = max((",", ";", "\t"), key=header.count) if header else ","
        reader = csv.DictReader(fh, delimiter=delimiter)
        if reader.fieldnames:
            reader.fieldnames = [c.strip() for c in reader.fieldnames]
        yield reader, delimiter


def _read_csv(path: Path, symbol: str | None) -> Iterator[Tick | BadRow]:
    with _csv_reader(path) as (reader, delimiter):
        layout = _layout(list(reader.fieldnames or []), path, symbol, delimiter)
        for row in reader:
            line = reader.line_num
            if None in row or None in row.values():  # too many values, or too few
                values = (
                    len(row) - 1 + len(row[None]) if None in row else sum(v is not None for v in row.values())
                )
                columns = len(reader.fieldnames or [])
                yield BadRow(line, DataError("row", f"{values} values for {columns} columns"))
                continue
            try:
                yield tick_from_row(row, layout)
            except DataError as exc:
                yield BadRow(line, exc)


def _read_parquet(path: Path, symbol: str | None) -> Iterator[Tick | BadRow]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises several types for a damaged file
        raise DataError("path", f"{path.name} is not a readable Parquet file: {exc}") from None
    layout = _layout(table.column_names, path, symbol)
    row_number = 0
    for batch in table.to_batches(max_chunksize=65_536):
        for row in batch.to_pylist():
            row_number += 1
            try:
                yield tick_from_row(row, layout)
            except DataError as exc:
                yield BadRow(row_number, exc)
