"""Tick files: CSV or Parquet with the tick fields of DESIGN.md, read row by row with line numbers.

Required columns: `symbol`, `trade_id`, `price`, `quantity`, and `timestamp` (ISO 8601 with an
offset) or `timestamp_ms`. Optional: `volume` (default price x quantity x the symbol's multiplier),
`buyer`, `seller`, `trade_type`, `aggressor` (default from trade_type: 2 buy, 3 sell), `is_edit`,
`seq` (ignored: ingest numbers ticks itself). A row that breaks a rule is yielded as a `BadRow` with
its line number and reason; the rows around it are unaffected.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tickvault.errors import DataError
from tickvault.events import SYMBOL_PATTERN, Tick, make_tick, to_ms
from tickvault.timeparse import parse_time

REQUIRED = ("symbol", "trade_id", "price", "quantity")
KNOWN = frozenset(Tick.__struct_fields__)
_TRUE = {"true", "1", "yes", "t", "y"}
_FALSE = {"false", "0", "no", "f", "n", ""}


@dataclass(frozen=True)
class BadRow:
    line: int
    error: DataError

    def __str__(self) -> str:
        return f"line {self.line}: {self.error}"


def _multiplier(symbol: str) -> float:
    from tickvault.sources.simulator import spec_for

    return spec_for(symbol).multiplier


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


def tick_from_row(row: dict[str, Any]) -> Tick:
    """One file row (text or typed values) -> a validated Tick; DataError names the field."""
    symbol = row.get("symbol")
    if not isinstance(symbol, str):
        raise DataError(
            "symbol", "required field is missing" if symbol is None else f"must be text, got {symbol!r}"
        )
    symbol = symbol.strip()
    if row.get("timestamp") not in (None, ""):
        stamp = row["timestamp"]
        moment = parse_time(
            stamp if not hasattr(stamp, "to_pydatetime") else stamp.to_pydatetime(), field="timestamp"
        )
        ms = to_ms(moment)
        if row.get("timestamp_ms") not in (None, "") and _int(row, "timestamp_ms") != ms:
            raise DataError("timestamp_ms", f"{row['timestamp_ms']} does not match timestamp {stamp}")
    else:
        ms = _int(row, "timestamp_ms")
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
        multiplier=_multiplier(symbol) if volume is None else 1.0,
        buyer=_int(row, "buyer", 0),
        seller=_int(row, "seller", 0),
        trade_type=_int(row, "trade_type", 0),
        aggressor=aggressor,  # type: ignore[arg-type]
        is_edit=_bool(row, "is_edit"),
    )


def _check_columns(columns: list[str], path: Path) -> None:
    missing = [c for c in REQUIRED if c not in columns]
    if "timestamp" not in columns and "timestamp_ms" not in columns:
        missing.append("timestamp or timestamp_ms")
    if missing:
        raise DataError(
            "columns", f"{path.name} lacks {', '.join(missing)} (has {', '.join(columns) or 'none'})"
        )


def read_ticks(path: Path) -> Iterator[Tick | BadRow]:
    """Ticks of a .csv or .parquet file in file order, bad rows as BadRow (line 1 is the CSV header)."""
    path = Path(path)
    if not path.exists():
        raise DataError("path", f"{path} does not exist")
    if path.suffix.lower() in (".parquet", ".pq"):
        yield from _read_parquet(path)
    else:
        yield from _read_csv(path)


def file_symbols(path: Path) -> list[str]:
    """The distinct symbols of a tick file, in order of appearance (a cheap first pass)."""
    path = Path(path)
    if not path.exists():
        raise DataError("path", f"{path} does not exist")
    seen: dict[str, None] = {}
    if path.suffix.lower() in (".parquet", ".pq"):
        import pyarrow.parquet as pq

        try:
            column = pq.read_table(path, columns=["symbol"]).column("symbol")
        except Exception as exc:
            raise DataError("path", f"{path.name}: no readable symbol column: {exc}") from None
        seen.update(dict.fromkeys(str(v) for v in column.unique().to_pylist() if v is not None))
    else:
        with open(path, newline="", encoding="utf-8", errors="replace") as fh:
            reader = csv.DictReader(fh)
            _check_columns([c.strip() for c in reader.fieldnames or []], path)
            for row in reader:
                symbol = (row.get("symbol") or "").strip()
                if symbol and symbol not in seen:
                    seen[symbol] = None
    # an invalid symbol's rows are reported as bad rows on the second pass
    return [symbol for symbol in seen if SYMBOL_PATTERN.fullmatch(symbol)]


def _read_csv(path: Path) -> Iterator[Tick | BadRow]:
    with open(path, newline="", encoding="utf-8", errors="replace") as fh:
        reader = csv.DictReader(fh)
        _check_columns([c.strip() for c in reader.fieldnames or []], path)
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
                yield tick_from_row({k.strip(): v for k, v in row.items()})
            except DataError as exc:
                yield BadRow(line, exc)


def _read_parquet(path: Path) -> Iterator[Tick | BadRow]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises several types for a damaged file
        raise DataError("path", f"{path.name} is not a readable Parquet file: {exc}") from None
    _check_columns(table.column_names, path)
    row_number = 0
    for batch in table.to_batches(max_chunksize=65_536):
        for row in batch.to_pylist():
            row_number += 1
            try:
                yield tick_from_row(row)
            except DataError as exc:
                yield BadRow(row_number, exc)
