"""Book file rows decided a column at a time: a chunk of a book file (a pyarrow table of the layout's
columns, with each row's line) into checked numpy columns, `BookRows`.

Each column is converted and checked with pyarrow and numpy (the short text columns, symbol, side,
action and is_snapshot, once per distinct value), accepting only what the row reader
(`BookLayout.row`) accepts, with equal values. A row any column could not decide goes through the
row reader itself, which either gives its values (put back in place: file order is kept) or says
why the row is bad (`BadRow`). So a clean file is read at numpy speed and a dirty one row by row
where it is dirty, with the same result (tests/test_book_files.py holds the two paths equal).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tickvault.domain.book import ACTION_CODES, DELETE, SIDE_CODES, UPDATE
from tickvault.domain.events import validate_symbol
from tickvault.errors import DataError
from tickvault.sources.book_layouts import (
    MAX_NS,
    BookLayout,
    BookRow,
    action_of,
    parse_bool,
    side_of,
)
from tickvault.sources.files import BadRow
from tickvault.sources.tick_cells import FAIL, as_text, cast, decided, numbers, per_value

# ISO 8601 times pyarrow's parser reads as Python's fromisoformat does (with an offset, µs at most)
_ISO = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,6})?(Z|[+-][0-9]{2}:[0-9]{2})$"
_INTEGER_FIELDS = ("quantity", "orders", "order_id", "agent")


@dataclass
class BookRows:
    """Checked rows of one chunk in file order: `symbols[symbol[i]]` is row i's symbol, `stamp` its
    time as written in ns (rows of one batch share it), side and action as `domain.book` codes."""

    symbols: list[str]
    symbol: np.ndarray  # int32
    stamp: np.ndarray
    timestamp_ms: np.ndarray
    received_ms: np.ndarray
    side: np.ndarray  # int8
    price: np.ndarray
    quantity: np.ndarray
    orders: np.ndarray
    order_id: np.ndarray
    agent: np.ndarray
    action: np.ndarray  # int8
    snapshot: np.ndarray  # bool

    def __len__(self) -> int:
        return int(self.stamp.size)

    def take(self, index: np.ndarray) -> BookRows:
        arrays = {name: getattr(self, name)[index] for name in _ARRAYS}
        return BookRows(self.symbols, **arrays)


_ARRAYS = ("symbol", "stamp", "timestamp_ms", "received_ms", "side", "price", "quantity", "orders",
           "order_id", "agent", "action", "snapshot")  # fmt: skip


def _column(table: pa.Table, layout: BookLayout, field: str) -> pa.Array | None:
    for column, name in layout.fields.items():
        if name == field:
            return table.column(column).combine_chunks()
    return None


def _by_value(arr: pa.Array, fn: Callable[[Any], Any]) -> tuple[list[Any], np.ndarray]:
    """(results per distinct value, each row's index) with `fn` refusing by DataError -> FAIL."""
    return per_value(arr, decided(fn))


def _times(arr: pa.Array | None, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ns, ok, blank) of a time column: digits (the unit told by the size, as `time_ns`), ISO 8601
    text with an offset, or a timestamp type with a zone."""
    ns, ok = np.zeros(n, np.int64), np.zeros(n, np.bool_)
    if arr is None:
        return ns, ok, np.ones(n, np.bool_)
    blank = ~arr.is_valid().to_numpy(zero_copy_only=False)
    if pa.types.is_integer(arr.type) and not pa.types.is_unsigned_integer(arr.type):
        number = arr.cast(pa.int64()).fill_null(0).to_numpy(zero_copy_only=False)
        return (*_scaled(number, ~blank), blank)
    if pa.types.is_timestamp(arr.type) and arr.type.tz is not None:
        raw = arr.cast(pa.timestamp("ns", arr.type.tz)).cast(pa.int64()).fill_null(0)
        done = raw.to_numpy(zero_copy_only=False) // 1000 * 1000  # as Python's datetime: µs
        return done, ~blank & (done >= 0), blank
    text = as_text(arr)
    if text is None:
        return ns, ok, blank
    blank |= pc.equal(text, "").fill_null(True).to_numpy(zero_copy_only=False)
    digits = pc.match_substring_regex(text, r"^[0-9]{1,19}$").fill_null(False)
    if pc.any(digits).as_py():
        number, cast_ok = cast(pc.if_else(digits, text, "0"), pa.int64())
        scaled, scaled_ok = _scaled(number, cast_ok & digits.to_numpy(zero_copy_only=False))
        ns, ok = np.where(scaled_ok, scaled, ns), ok | scaled_ok
    iso = pc.and_(
        pc.match_substring_regex(text, _ISO).fill_null(False),
        pc.invert(pc.starts_with(text, "0000").fill_null(True)),
    )
    if pc.any(iso).as_py():
        moment, cast_ok = cast(pc.if_else(iso, text, "1970-01-01T00:00:00Z"), pa.timestamp("ns", "UTC"))
        good = cast_ok & iso.to_numpy(zero_copy_only=False) & (moment >= 0)
        ns, ok = np.where(good, moment, ns), ok | good
    return ns, ok, blank


def _scaled(number: np.ndarray, ok: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scale = np.select(
        [number >= 10**17, number >= 10**14, number >= 10**11], [1, 1_000, 1_000_000], 1_000_000_000
    ).astype(np.int64)
    fits = (number >= 0) & (number <= MAX_NS // scale)
    return np.where(fits, number * np.where(fits, scale, 0), 0), ok & fits


def read_rows(
    table: pa.Table, lines: np.ndarray, layout: BookLayout, *, vectorised: bool = True
) -> tuple[BookRows, list[BadRow]]:
    """The rows of `table` checked (see the module docstring); `vectorised=False` sends every row
    through the row reader (what the column-wise path is held equal to)."""
    n = table.num_rows
    ok = np.full(n, vectorised, np.bool_)
    names: list[str] = []
    index: dict[str, int] = {}

    def code_of(symbol: str) -> int:
        if symbol not in index:
            index[symbol] = len(names)
            names.append(symbol)
        return index[symbol]

    symbol = np.zeros(n, np.int32)
    column = _column(table, layout, "symbol")
    fallback = layout.symbol

    def symbol_of(value: Any) -> int:
        text = str(value).strip() if value is not None else ""
        if not text:
            if fallback is None:
                raise DataError("symbol", "required field is missing")
            text = fallback
        return code_of(validate_symbol(text))

    if vectorised:
        if column is not None:
            found, codes = _by_value(column, symbol_of)
            symbol, ok = _decide(found, codes, ok, np.int32)
        else:
            found_one = decided(symbol_of)(None)
            ok &= found_one is not FAIL
            symbol[:] = 0 if found_one is FAIL else found_one
        stamp, t_ok, t_blank = _times(_column(table, layout, "timestamp"), n)
        ok &= t_ok & ~t_blank
        received, r_ok, r_blank = _times(_column(table, layout, "received"), n)
        ok &= r_ok | r_blank
        received = np.where(r_blank, stamp, received)
        side_col = _column(table, layout, "side")
        assert side_col is not None
        found, codes = _by_value(side_col, lambda v: SIDE_CODES[side_of(v)])
        side, ok = _decide(found, codes, ok, np.int8)
        snapshot = np.zeros(n, np.bool_)
        snap_col = _column(table, layout, "is_snapshot")
        if snap_col is not None and layout.kind == "mbp":
            found, codes = _by_value(snap_col, lambda v: parse_bool(v, "is_snapshot"))
            snapshot, ok = _decide(found, codes, ok, np.bool_)
        action_col = _column(table, layout, "action")
        action = np.full(n, -1, np.int8)
        if action_col is not None:
            blank_ok = layout.kind == "mbp"
            found, codes = _by_value(
                action_col,
                lambda v: (
                    -1 if blank_ok and (v is None or str(v).strip() == "") else ACTION_CODES[action_of(v)]
                ),
            )
            action, ok = _decide(found, codes, ok, np.int8)
        price_col = _column(table, layout, "price")
        price, p_ok, p_blank = numbers(price_col if price_col is not None else pa.nulls(n), pa.float64())
        ok &= p_ok | p_blank
        ok &= np.isfinite(price) & (price >= 0)
        ints = {}
        for field in _INTEGER_FIELDS:
            arr = _column(table, layout, field)
            values, i_ok, i_blank = numbers(arr if arr is not None else pa.nulls(n), pa.int64())
            ok &= (i_ok & (values >= 0)) | i_blank
            ints[field] = (np.where(i_blank, 0, values), i_blank)
        quantity, q_blank = ints["quantity"]
        if layout.kind == "mbo":
            deleting = action == DELETE
            price = np.where(p_blank, 0.0, price)
            ok &= (deleting | ((price > 0) & ~p_blank & ~q_blank)) & ~ints["order_id"][1]
            orders = np.zeros(n, np.int64)
        else:
            ok &= ~p_blank & (price > 0) & ~q_blank
            quantity = np.where(action == DELETE, 0, quantity)
            action = np.where(quantity == 0, DELETE, UPDATE).astype(np.int8)
            orders = ints["orders"][0]
        rows = BookRows(
            names, symbol, stamp, stamp // 1_000_000, received // 1_000_000, side, np.where(ok, price, 0.0),
            quantity, orders, ints["order_id"][0] if layout.kind == "mbo" else np.zeros(n, np.int64),
            ints["agent"][0] if layout.kind == "mbo" else np.zeros(n, np.int64), action, snapshot,
        )  # fmt: skip
    else:
        zeros = np.zeros(n, np.int64)
        rows = BookRows(names, np.zeros(n, np.int32), zeros.copy(), zeros.copy(), zeros.copy(),
                        np.zeros(n, np.int8), np.zeros(n), zeros.copy(), zeros.copy(), zeros.copy(),
                        zeros.copy(), np.zeros(n, np.int8), np.zeros(n, np.bool_))  # fmt: skip
    return _by_row(table, lines, layout, rows, ok, code_of)


def _decide(
    found: list[Any], codes: np.ndarray, ok: np.ndarray, dtype: type[np.generic]
) -> tuple[np.ndarray, np.ndarray]:
    failed = np.array([value is FAIL for value in found], np.bool_)
    values = np.array([0 if value is FAIL else value for value in found], dtype)
    return values[codes], ok & ~failed[codes]


def _by_row(
    table: pa.Table,
    lines: np.ndarray,
    layout: BookLayout,
    rows: BookRows,
    ok: np.ndarray,
    code_of: Callable[[str], int],
) -> tuple[BookRows, list[BadRow]]:
    """The rows the columns did not decide, through the row reader: put in place, or bad."""
    bad: list[BadRow] = []
    undecided = np.flatnonzero(~ok)
    if not undecided.size:
        return rows, bad
    columns = list(layout.fields)
    picked = table.select(columns).take(pa.array(undecided)).to_pylist()
    for i, raw in zip(undecided.tolist(), picked, strict=True):
        try:
            row: BookRow = layout.row(raw)
        except DataError as exc:
            bad.append(BadRow(int(lines[i]), exc))
            continue
        ok[i] = True
        rows.symbol[i] = code_of(row.symbol)
        rows.stamp[i], rows.timestamp_ms[i], rows.received_ms[i] = (
            row.stamp,
            row.timestamp_ms,
            row.received_ms,
        )
        rows.side[i], rows.price[i], rows.quantity[i] = SIDE_CODES[row.side], row.price, row.quantity
        rows.orders[i], rows.order_id[i], rows.agent[i] = row.orders, row.order_id, row.agent
        rows.action[i], rows.snapshot[i] = ACTION_CODES[row.action], row.is_snapshot and layout.kind == "mbp"
    return (rows if ok.all() else rows.take(np.flatnonzero(ok))), bad
