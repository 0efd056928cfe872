"""A chunk of a tick file decided column by column: a pyarrow table in, tick columns and bad rows out.

The row reader (`files.tick_from_row`) spends ~20 µs of Python on a row; this does the same work
with pyarrow and numpy kernels over a whole chunk. The rule that keeps the two readers equal: a row
is decided column-wise only where every value passes a check the row reader would pass with the same
result (a plain integer, a decimal number, an ISO time with an offset, a known side...). Any other
row, a bad one or one in an unusual form (`" 12 "`, `+5`, `1_000`, a time with microseconds), goes
through the row reader's own steps (`Layout.row`, `files.row_key`, `files.finish_tick`), so both
readers accept the same rows with the same values and give each bad row the same reason
(tests/test_tick_files.py holds them equal). The cells are read by `tick_cells`; short text columns
(symbol, side, edit flag, B3's action, dates) are decided once per distinct value.

Trades without an id are numbered per symbol and B3 session in file order across the chunks of a
file (the rule of `Layout.number`), so reading the file again gives the same ids.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tickvault.domain.events import Tick, validate_symbol
from tickvault.domain.instruments import instrument_for
from tickvault.domain.tick_schema import AGGRESSOR_CODES
from tickvault.errors import DataError
from tickvault.sources.files import BadRow, _bool, finish_tick, row_key
from tickvault.sources.layouts import Layout, side_of
from tickvault.sources.tick_cells import (
    CLOCK,
    DAY_MS,
    FAIL,
    Offsets,
    as_text,
    b3_clock,
    cast,
    decided,
    is_blank,
    iso_ms,
    local_day,
    numbers,
    per_value,
    trade_action,
)
from tickvault.store.block_codec import Columns
from tickvault.store.session_rows import SessionDays

_DERIVED = -1  # no side given: the aggressor follows trade_type, as in make_tick
_CODE: dict[str, int] = {name: code for code, name in enumerate(AGGRESSOR_CODES)}


@dataclass
class TickBatch:
    """The rows of one chunk: valid ticks as columns (file order, seq 0) and the bad rows."""

    symbols: list[str]
    symbol: np.ndarray  # int32 codes into `symbols`
    line: np.ndarray  # int64 line (CSV, header = 1) or row number (Parquet) of each tick
    cols: Columns
    bad: list[BadRow] = field(default_factory=list)
    rows: int = 0  # rows of the file this chunk covered, good and bad

    def __len__(self) -> int:
        return len(self.cols)


class TableReader:
    """Reads the chunks of one file, in order: `batch(table, lines)` per chunk. Holds the file's
    layout and its trade numbering."""

    def __init__(self, layout: Layout) -> None:
        self.layout = layout
        self.column = {name: column for column, name in layout.fields.items()}
        self._next_id: dict[tuple[str, int], int] = {}
        self._sessions = SessionDays()
        self._offsets = Offsets()

    def batch(self, table: pa.Table, lines: np.ndarray, bad: list[BadRow] | None = None) -> TickBatch:
        """The ticks and bad rows of `table` (the file's columns; `lines` numbers its rows); `bad`
        are rows the file layer already refused (wrong number of values), counted in `rows`."""
        chunk = _Chunk(self, table, lines)
        return chunk.run(list(bad or []))

    def _get(self, table: pa.Table, name: str) -> pa.Array | None:
        column = self.column.get(name)
        return None if column is None else table.column(column).combine_chunks()

    def number(self, symbols: list[str], code: np.ndarray, ms: np.ndarray) -> np.ndarray:
        """Trade numbers for rows without an id (in file order): the next of their symbol and session."""
        if not len(code):
            return np.empty(0, np.int64)
        key = code.astype(np.int64) * 100_000_000 + self._sessions(ms)
        unique, inverse = np.unique(key, return_inverse=True)
        counts = np.bincount(inverse)
        order = np.argsort(inverse, kind="stable")
        rank = np.empty(len(key), np.int64)
        rank[order] = np.arange(len(key)) - np.repeat(np.cumsum(counts) - counts, counts)
        base = np.empty(len(unique), np.int64)
        for i, k in enumerate(unique.tolist()):
            name = (symbols[k // 100_000_000], k % 100_000_000)
            base[i] = self._next_id.get(name, 0)
            self._next_id[name] = int(base[i] + counts[i])
        return base[inverse] + rank + 1


class _Chunk:
    """The work on one chunk: column-wise checks, then the row path for the rows they leave."""

    def __init__(self, reader: TableReader, table: pa.Table, lines: np.ndarray) -> None:
        self.r, self.table, self.lines = reader, table, lines
        self.layout = reader.layout
        self.n = table.num_rows
        self.symbols: list[str] = []
        self._symbol_code: dict[str, int] = {}

    def code_of(self, symbol: str) -> int:
        if symbol not in self._symbol_code:
            self._symbol_code[symbol] = len(self.symbols)
            self.symbols.append(symbol)
        return self._symbol_code[symbol]

    def _symbol(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(code, reaches numbering, valid symbol) per row."""
        arr = self.r._get(self.table, "symbol")
        given = self.layout.symbol

        def decide(value: Any) -> Any:
            if given is not None and value in (None, ""):
                value = given
            if not isinstance(value, str):
                return FAIL
            stripped = value.strip()
            try:
                validate_symbol(stripped)
            except DataError:
                return (self.code_of(stripped), False)
            return (self.code_of(stripped), True)

        if arr is None:
            found = decide(None)
            codes = np.zeros(self.n, np.int64)
            results = [found]
        else:
            results, codes = per_value(arr, decide)
        reach = np.array([r is not FAIL for r in results])[codes]
        code = np.array([r[0] if r is not FAIL else 0 for r in results], np.int64)[codes]
        valid = np.array([r is not FAIL and r[1] for r in results])[codes]
        return code, reach, valid

    def _time(self) -> tuple[np.ndarray, np.ndarray]:
        """(exchange ms, ok) per row, as `files._time_ms` would read it."""

        def get(name: str) -> Any:
            return self.r._get(self.table, name)

        stamp, stamp_ms = get("timestamp"), get("timestamp_ms")
        if stamp is None and stamp_ms is None:
            return self._local_time(get("date"), get("clock"))
        ms = np.zeros(self.n, np.int64)
        ok = np.zeros(self.n, np.bool_)
        present = np.zeros(self.n, np.bool_) if stamp is None else ~is_blank(stamp)
        if stamp_ms is not None:
            given, given_ok, given_blank = numbers(stamp_ms, pa.int64())
            ms[~present], ok[~present] = given[~present], (given_ok & ~given_blank)[~present]
        if stamp is not None:
            parsed, parsed_ok = iso_ms(stamp)
            if stamp_ms is not None:  # both given: they must agree (else the row path says so)
                parsed_ok &= given_blank | (given_ok & (given == parsed))
            ms[present], ok[present] = parsed[present], parsed_ok[present]
        return ms, ok

    def _local_time(self, day: pa.Array | None, clock: pa.Array | None) -> tuple[np.ndarray, np.ndarray]:
        """Split date and time of day in B3 local time (B3's files, Profit's exports)."""
        none = np.zeros(self.n, np.int64), np.zeros(self.n, np.bool_)
        if day is None:
            return none
        if clock is None:  # "24/11/2025 10:00:00.123" in the date column
            text = as_text(day)
            if text is None:
                return none
            parts = pc.extract_regex(text, r"^\s*(?P<d>[^ ]*) \s*" + CLOCK)
            day = parts.field("d")
        else:
            text = as_text(clock) if not pa.types.is_integer(clock.type) else clock.cast(pa.string())
            if text is None:
                return none
            fast = b3_clock(text)
            if fast is not None:
                return self._local_ms(day, *fast)
            parts = pc.extract_regex(text, r"^\s*" + CLOCK)
        matched = parts.is_valid().to_numpy(zero_copy_only=False)
        fields = {}
        for name in "hms":
            fields[name] = cast(pc.if_else(parts.is_valid(), parts.field(name), "0"), pa.int64())[0]
        frac = pc.utf8_slice_codeunits(pc.utf8_rpad(parts.field("f"), 3, "0"), 0, 3)
        millis = cast(pc.if_else(parts.is_valid(), frac, "0"), pa.int64())[0]
        return self._local_ms(day, fields["h"], fields["m"], fields["s"], millis, matched)

    def _local_ms(
        self,
        day: pa.Array,
        h: np.ndarray,
        m: np.ndarray,
        s: np.ndarray,
        millis: np.ndarray,
        matched: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray]:
        results, codes = per_value(day, decided(local_day))
        day_ok = np.array([r is not FAIL for r in results])[codes]
        days = np.array([0 if r is FAIL else r for r in results], np.int64)[codes]
        ok = matched & day_ok & (h < 24) & (m < 60) & (s < 60)
        local = days * DAY_MS + h * 3_600_000 + m * 60_000 + s * 1000 + millis
        return local - self.r._offsets(local), ok

    def _side(self) -> tuple[np.ndarray, np.ndarray]:
        """(aggressor code, or _DERIVED where it follows trade_type; ok) per row, as Layout.row maps it."""
        arr = self.r._get(self.table, "aggressor")
        if arr is None:
            return np.full(self.n, _DERIVED, np.int64), np.ones(self.n, np.bool_)

        def decide(value: Any) -> Any:
            if value is None:
                return _DERIVED
            if not isinstance(value, str):
                return FAIL
            return _CODE[side_of(value)]

        results, codes = per_value(arr, decided(decide))
        ok = np.array([r is not FAIL for r in results])[codes]
        return np.array([0 if r is FAIL else r for r in results], np.int64)[codes], ok

    def _flag_ok(self, name: str, fn: Callable[[Any], Any]) -> tuple[np.ndarray, np.ndarray]:
        arr = self.r._get(self.table, name)
        if arr is None:
            return np.zeros(self.n, np.int64), np.ones(self.n, np.bool_)
        results, codes = per_value(arr, decided(fn))
        ok = np.array([r is not FAIL for r in results])[codes]
        return np.array([0 if r is FAIL else int(r) for r in results], np.int64)[codes], ok

    def _int_field(self, name: str, default: int | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(values, ok, blank) of an integer field; a blank one takes `default` if there is one."""
        arr = self.r._get(self.table, name)
        if arr is None:
            blank = np.ones(self.n, np.bool_)
            return np.full(self.n, default or 0, np.int64), blank if default is not None else ~blank, blank
        values, ok, blank = numbers(arr, pa.int64())
        if default is not None:
            values[blank] = default
            ok |= blank
        return values, ok & (~blank if default is None else True), blank

    def run(self, bad: list[BadRow]) -> TickBatch:
        """Steps in the row reader's order: up to the trade number (`_keys`), numbering, the rest
        (`_values`); the rows a column could not decide, and the bad ones, by the row reader's steps."""
        rows = self.n + len(bad)
        self.bad, self.raw = bad, _RawRows(self.table)
        self.dead = np.zeros(self.n, np.bool_)
        self._keys()
        numbered = np.flatnonzero(~self.dead & self.id_blank)
        self.trade_id[numbered] = self.r.number(self.symbols, self.code[numbered], self.ms[numbered])
        self.id_ok[numbered] = True
        columns, fast = self._values()
        for i in np.flatnonzero(~fast & ~self.dead).tolist():
            try:
                mapped, symbol, row_ms = self.slow.get(i) or self._again(self.raw[i])
                if self.id_blank[i]:
                    mapped["trade_id"] = int(self.trade_id[i])
                self._put(columns, self.code, i, finish_tick(mapped, symbol, row_ms))
            except DataError as exc:
                self._refuse(i, exc)
        keep = np.flatnonzero(~self.dead) if self.dead.any() else slice(None)
        cols = Columns(
            **{name: values[keep] for name, values in columns.items()}, seq=np.zeros(self.n, np.int64)[keep]
        )
        bad.sort(key=lambda b: b.line)
        return TickBatch(self.symbols, self.code[keep].astype(np.int32), self.lines[keep], cols, bad, rows)

    def _refuse(self, i: int, exc: DataError) -> None:
        self.bad.append(BadRow(int(self.lines[i]), exc))
        self.dead[i] = True

    def _keys(self) -> None:
        """Symbol, time, side, B3 action and trade id per row, as far as the row reader goes before
        it numbers a trade; a row the columns cannot take that far takes the row reader's steps."""
        self.code, reach, self.symbol_ok = self._symbol()
        self.ms, time_ok = self._time()
        self.side, side_ok = self._side()
        _, action_ok = self._flag_ok("action", trade_action)
        self.fast = reach & time_ok & side_ok & action_ok
        self.trade_id, self.id_ok, self.id_blank = self._int_field("trade_id", None)
        self.slow: dict[int, tuple[dict[str, Any], str, int]] = {}
        for i in np.flatnonzero(~self.fast).tolist():
            try:
                mapped = self.layout.row(self.raw[i])
                symbol, row_ms = row_key(mapped)
            except DataError as exc:
                self._refuse(i, exc)
                continue
            self.slow[i] = (mapped, symbol, row_ms)
            self.code[i], self.ms[i] = self.code_of(symbol), row_ms
            self.id_blank[i] = mapped.get("trade_id") in (None, "")

    def _values(self) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """The remaining fields and the rows they decided (as `files.finish_tick` and Tick would)."""
        price, price_ok, price_blank = numbers(
            self.r._get(self.table, "price"), pa.float64(), self.layout.decimal_comma
        )
        quantity, quantity_ok, _ = self._int_field("quantity", None)
        buyer, buyer_ok, _ = self._int_field("buyer", 0)
        seller, seller_ok, _ = self._int_field("seller", 0)
        trade_type, type_ok, _ = self._int_field("trade_type", 0)
        is_edit, edit_ok = self._flag_ok("is_edit", lambda v: _bool({"is_edit": v}, "is_edit"))
        volume, volume_ok = self._volume(price, quantity, self.code)
        with np.errstate(invalid="ignore"):
            fast = (
                self.fast & self.symbol_ok & price_ok & ~price_blank & (price > 0) & np.isfinite(price)
                & quantity_ok & (quantity >= 0) & volume_ok & self.id_ok & (self.trade_id >= 0) & buyer_ok
                & seller_ok & type_ok & edit_ok
            )  # fmt: skip
        derived = np.where(trade_type == 2, 1, np.where(trade_type == 3, 2, 0))
        columns = {
            "timestamp_ms": self.ms, "trade_id": self.trade_id, "price": price, "volume": volume,
            "quantity": quantity, "buyer": buyer, "seller": seller, "trade_type": trade_type,
            "aggressor": np.where(self.side == _DERIVED, derived, self.side).astype(np.int8),
            "is_edit": is_edit.astype(np.bool_),
        }  # fmt: skip
        return columns, fast

    def _again(self, raw: dict[str, Any]) -> tuple[dict[str, Any], str, int]:
        mapped = self.layout.row(raw)
        symbol, ms = row_key(mapped)
        return mapped, symbol, ms

    def _volume(
        self, price: np.ndarray, quantity: np.ndarray, code: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Financial volume: the column where given, else price x quantity x the symbol's multiplier."""
        multiplier = np.array([instrument_for(s).multiplier for s in self.symbols] or [1.0])[code]
        with np.errstate(all="ignore"):
            computed = price * quantity.astype(np.float64) * multiplier
        arr = self.r._get(self.table, "volume")
        if arr is None:
            return computed, np.isfinite(computed)
        given, ok, blank = numbers(arr, pa.float64(), self.layout.decimal_comma)
        volume = np.where(blank, computed, given)
        with np.errstate(invalid="ignore"):
            return volume, np.isfinite(volume) & (volume >= 0) & (ok | blank)

    def _put(self, columns: dict[str, np.ndarray], code: np.ndarray, i: int, tick: Tick) -> None:
        """A row the row path read: its values into the chunk's columns."""
        for name in ("timestamp_ms", "trade_id", "quantity", "buyer", "seller", "trade_type"):
            value = getattr(tick, name)
            if not -(2**63) <= value < 2**63:
                raise DataError(name, f"{value} is out of the 64-bit integer range")
            columns[name][i] = value
        columns["price"][i], columns["volume"][i] = tick.price, tick.volume
        columns["aggressor"][i], columns["is_edit"][i] = _CODE[tick.aggressor], tick.is_edit
        code[i] = self.code_of(tick.symbol)


class _RawRows:
    """Rows of the table as the row reader sees them (dicts of the file's columns), made on demand."""

    def __init__(self, table: pa.Table) -> None:
        self.table = table

    def __getitem__(self, i: int) -> dict[str, Any]:
        return dict(self.table.slice(i, 1).to_pylist()[0])
