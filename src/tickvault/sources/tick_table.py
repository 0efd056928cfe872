"""A chunk of a tick file decided column by column: a pyarrow table in, tick columns and bad rows out.

The row reader (`files.tick_from_row`) spends ~20 µs of Python on a row; this does the same work
with pyarrow and numpy kernels over a whole chunk. The rule that keeps the two readers equal: a row
is decided column-wise only where every value passes a check the row reader would pass with the same
result (a plain integer, a decimal number, an ISO time with an offset, a known side...). Any other
row, a bad one or one in an unusual form (`" 12 "`, `+5`, `1_000`, a time with microseconds), goes
through the row reader's own steps (`Layout.row`, `files.row_key`, `files.finish_tick`), so both
readers accept the same rows with the same values and give each bad row the same reason
(tests/test_tick_files.py holds them equal). Short text columns (symbol, side, edit flag, B3's
action, dates) are decided once per distinct value.

Trades without an id are numbered per symbol and B3 session in file order across the chunks of a
file (the rule of `Layout.number`), so reading the file again gives the same ids.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tickvault.domain.events import B3_TZ, Tick, validate_symbol
from tickvault.domain.instruments import instrument_for
from tickvault.errors import DataError
from tickvault.sources.files import BadRow, _bool, finish_tick, row_key
from tickvault.sources.layouts import Layout, check_action, local_time, side_of
from tickvault.store.block_codec import AGGRESSOR_CODES, Columns
from tickvault.store.bulk import SessionDays

_FAIL = object()  # a distinct value the column-wise path cannot decide: its rows take the row path
_DERIVED = -1  # no side given: the aggressor follows trade_type, as in make_tick
_CODE = {name: code for code, name in enumerate(AGGRESSOR_CODES)}
_EPOCH_DAY = date(1970, 1, 1)
_DAY_MS = 86_400_000
_CLOCK = r"(?P<h>[0-9]{2}):?(?P<m>[0-9]{2}):?(?P<s>[0-9]{2})(?:[.,:]?(?P<f>[0-9]{1,6}))?\s*$"
_SMALLEST_PIECE = 256  # a cast that fails is retried on halves down to this many rows


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


def _per_value(arr: pa.Array, fn: Callable[[Any], Any]) -> tuple[list[Any], np.ndarray]:
    """`fn` once per distinct value (nulls: `fn(None)`, last): (results, each row's index into them)."""
    if pa.types.is_null(arr.type):
        return [fn(None)], np.zeros(len(arr), np.int64)
    encoded = arr if pa.types.is_dictionary(arr.type) else pc.dictionary_encode(arr)
    values = encoded.dictionary.to_pylist() + [None]
    codes = encoded.indices.fill_null(len(values) - 1).to_numpy(zero_copy_only=False)
    return [fn(v) for v in values], codes.astype(np.int64, copy=False)


def _decide(fn: Callable[[Any], Any]) -> Callable[[Any], Any]:
    def decided(value: Any) -> Any:
        try:
            return fn(value)
        except DataError:
            return _FAIL

    return decided


def _cast(arr: pa.Array, kind: pa.DataType) -> tuple[np.ndarray, np.ndarray]:
    """(values, ok): pyarrow's cast, which refuses a whole array for one bad value; halves are
    retried so one bad value costs a few small casts, and only its piece takes the row path."""
    n = len(arr)
    out = np.zeros(n, np.float64 if pa.types.is_floating(kind) else np.int64)
    ok = np.zeros(n, np.bool_)
    pending = [(0, n)]
    while pending:
        lo, hi = pending.pop()
        try:
            done = pc.cast(arr.slice(lo, hi - lo), kind)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            if hi - lo > _SMALLEST_PIECE:
                mid = (lo + hi) // 2
                pending += [(lo, mid), (mid, hi)]
            continue
        if pa.types.is_timestamp(kind):
            done = done.cast(pa.int64())
        out[lo:hi] = done.fill_null(0).to_numpy(zero_copy_only=False)
        ok[lo:hi] = done.is_valid().to_numpy(zero_copy_only=False)
    return out, ok


def _text(arr: pa.Array) -> pa.Array | None:
    """The column as plain text if it is text (large_string, dictionary-encoded text too), else None."""
    if pa.types.is_dictionary(arr.type) and pa.types.is_string(arr.type.value_type):
        return arr.dictionary_decode()
    if pa.types.is_string(arr.type):
        return arr
    if pa.types.is_large_string(arr.type):
        return arr.cast(pa.string())
    return None


def _blank(arr: pa.Array) -> np.ndarray:
    """Null, or the empty string: what the row reader treats as a missing value."""
    empty = pc.is_null(arr)
    if pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type) or pa.types.is_dictionary(arr.type):
        empty = pc.or_(empty, pc.equal(arr, "").fill_null(False))
    return empty.fill_null(True).to_numpy(zero_copy_only=False)


def _numbers(
    arr: pa.Array, kind: pa.DataType, decimal_comma: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(values, ok, blank) of an int64 or float64 field: ok where the row reader reads the same
    number; blank where it finds none (null or ""), for the caller's rule (required, or a default)."""
    text = _text(arr)
    if text is not None:
        if decimal_comma:  # as Layout.row: "5.412,50" -> "5412.50", only where there is a comma
            if not pc.any(pc.match_substring(text, ".")).as_py():
                text = pc.replace_substring(text, ",", ".")  # no dots anywhere (B3's files): one pass
            else:
                comma = pc.match_substring(text, ",")
                fixed = pc.replace_substring(pc.replace_substring(text, ".", ""), ",", ".")
                text = pc.if_else(comma, fixed, text)
        with contextlib.suppress(pa.ArrowInvalid):  # the usual case: every value a plain number
            done = pc.cast(text, kind)
            if done.null_count == 0:
                return (
                    done.to_numpy(zero_copy_only=False, writable=True),
                    np.ones(len(arr), np.bool_),
                    np.zeros(len(arr), np.bool_),
                )
        blank = _blank(text)
        # blanks read as 0 here: a cast refuses "", and a column left empty would otherwise send
        # every row the slow way
        values, ok = _cast(pc.if_else(pc.equal(text, ""), "0", text), kind)
        return values, ok, blank
    blank = ~arr.is_valid().to_numpy(zero_copy_only=False)
    if pa.types.is_integer(arr.type):
        valid = ~blank
        if pa.types.is_unsigned_integer(arr.type) and arr.type.bit_width == 64:
            big = pc.greater(arr, 2**63 - 1).fill_null(False).to_numpy(zero_copy_only=False)
            valid = valid & ~big
            arr = pc.if_else(pa.array(big), 0, arr)
        values = arr.cast(pa.int64()).fill_null(0).to_numpy(zero_copy_only=False, writable=True)
        return (values.astype(np.float64) if kind == pa.float64() else values), valid, blank
    if pa.types.is_floating(arr.type):
        values = arr.cast(pa.float64()).fill_null(0.0).to_numpy(zero_copy_only=False, writable=True)
        if kind == pa.float64():
            return values, ~blank, blank
        whole = np.isfinite(values) & (np.floor(values) == values) & (np.abs(values) < 2**62)
        return np.where(whole, values, 0).astype(np.int64), ~blank & whole, blank
    zeros = np.zeros(len(arr), np.float64 if kind == pa.float64() else np.int64)
    return zeros, np.zeros(len(arr), np.bool_), blank


def _iso_ms(arr: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(ms, ok) of a timestamp column: ISO 8601 text with an offset and at most ms digits (what
    pyarrow's parser reads, it reads as `datetime.fromisoformat` does, but for the year 0000 that
    Python refuses), or a timezone-aware timestamp type, floored to ms as `to_ms` does."""
    text = _text(arr)
    if text is not None:
        ms, ok = _cast(text, pa.timestamp("ms", "UTC"))
        year0 = pc.starts_with(text, "0000").fill_null(False).to_numpy(zero_copy_only=False)
        return ms, ok & ~year0
    if pa.types.is_timestamp(arr.type) and arr.type.tz is not None:
        per_ms = {"s": 1 / 1000, "ms": 1, "us": 1000, "ns": 1_000_000}[arr.type.unit]
        raw = arr.cast(pa.int64()).fill_null(0).to_numpy(zero_copy_only=False)
        ms = raw * int(1 / per_ms) if per_ms < 1 else raw // int(per_ms)
        return ms, arr.is_valid().to_numpy(zero_copy_only=False)
    return np.zeros(len(arr), np.int64), np.zeros(len(arr), np.bool_)


def _action_ok(action: Any) -> int:
    check_action(action)
    return 0


def _b3_clock(text: pa.Array) -> tuple[np.ndarray, ...] | None:
    """B3's HHMMSSmmm in every row (9 digits): (h, m, s, ms, matched) by integer arithmetic, what
    the clock pattern reads from such a value; None when some row has another form."""
    if not pc.all(pc.equal(pc.utf8_length(text), 9)).as_py():
        return None
    with contextlib.suppress(pa.ArrowInvalid):
        value = pc.cast(text, pa.int64())
        if value.null_count == 0 and pc.min(value).as_py() >= 0:  # digits only (no sign)
            v = value.to_numpy()
            return v // 10_000_000, v // 100_000 % 100, v // 1000 % 100, v % 1000, np.ones(len(v), np.bool_)
    return None


def _local_day(value: Any) -> int:
    """Days since 1970 of a file's date (`2025-11-24`, `24/11/2025`), by `layouts.local_time` itself."""
    return (date.fromisoformat(local_time(value, "000000")[:10]) - _EPOCH_DAY).days


class _Offsets:
    """B3's UTC offset in ms of naive local times, per local hour (B3 had DST; changes fall on hours)."""

    def __init__(self) -> None:
        self._by_hour: dict[int, int] = {}

    def __call__(self, local_ms: np.ndarray) -> np.ndarray:
        hours, inverse = np.unique(local_ms // 3_600_000, return_inverse=True)
        out = []
        for hour in hours.tolist():
            if hour not in self._by_hour:
                moment = (datetime(1970, 1, 1) + timedelta(hours=hour)).replace(tzinfo=B3_TZ)
                offset = moment.utcoffset() or timedelta(0)
                self._by_hour[hour] = offset // timedelta(milliseconds=1)
            out.append(self._by_hour[hour])
        return np.array(out, np.int64)[inverse]


class TableReader:
    """Reads the chunks of one file, in order: `batch(table, lines)` per chunk. Holds the file's
    layout and its trade numbering."""

    def __init__(self, layout: Layout) -> None:
        self.layout = layout
        self.column = {name: column for column, name in layout.fields.items()}
        self._next_id: dict[tuple[str, int], int] = {}
        self._sessions = SessionDays()
        self._offsets = _Offsets()

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
                return _FAIL
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
            results, codes = _per_value(arr, decide)
        reach = np.array([r is not _FAIL for r in results])[codes]
        code = np.array([r[0] if r is not _FAIL else 0 for r in results], np.int64)[codes]
        valid = np.array([r is not _FAIL and r[1] for r in results])[codes]
        return code, reach, valid

    def _time(self) -> tuple[np.ndarray, np.ndarray]:
        """(exchange ms, ok) per row, as `files._time_ms` would read it."""
        get = lambda name: self.r._get(self.table, name)  # noqa: E731
        stamp, stamp_ms = get("timestamp"), get("timestamp_ms")
        if stamp is None and stamp_ms is None:
            return self._local_time(get("date"), get("clock"))
        ms = np.zeros(self.n, np.int64)
        ok = np.zeros(self.n, np.bool_)
        present = np.zeros(self.n, np.bool_) if stamp is None else ~_blank(stamp)
        if stamp_ms is not None:
            given, given_ok, given_blank = _numbers(stamp_ms, pa.int64())
            ms[~present], ok[~present] = given[~present], (given_ok & ~given_blank)[~present]
        if stamp is not None:
            parsed, parsed_ok = _iso_ms(stamp)
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
            text = _text(day)
            if text is None:
                return none
            parts = pc.extract_regex(text, r"^\s*(?P<d>[^ ]*) \s*" + _CLOCK)
            day = parts.field("d")
        else:
            text = _text(clock) if not pa.types.is_integer(clock.type) else clock.cast(pa.string())
            if text is None:
                return none
            fast = _b3_clock(text)
            if fast is not None:
                return self._local_ms(day, *fast)
            parts = pc.extract_regex(text, r"^\s*" + _CLOCK)
        matched = parts.is_valid().to_numpy(zero_copy_only=False)
        fields = {}
        for name in "hms":
            fields[name] = _cast(pc.if_else(parts.is_valid(), parts.field(name), "0"), pa.int64())[0]
        frac = pc.utf8_slice_codeunits(pc.utf8_rpad(parts.field("f"), 3, "0"), 0, 3)
        millis = _cast(pc.if_else(parts.is_valid(), frac, "0"), pa.int64())[0]
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
        results, codes = _per_value(day, _decide(_local_day))
        day_ok = np.array([r is not _FAIL for r in results])[codes]
        days = np.array([0 if r is _FAIL else r for r in results], np.int64)[codes]
        ok = matched & day_ok & (h < 24) & (m < 60) & (s < 60)
        local = days * _DAY_MS + h * 3_600_000 + m * 60_000 + s * 1000 + millis
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
                return _FAIL
            return _CODE[side_of(value)]

        results, codes = _per_value(arr, _decide(decide))
        ok = np.array([r is not _FAIL for r in results])[codes]
        return np.array([0 if r is _FAIL else r for r in results], np.int64)[codes], ok

    def _flag_ok(self, name: str, fn: Callable[[Any], Any]) -> tuple[np.ndarray, np.ndarray]:
        arr = self.r._get(self.table, name)
        if arr is None:
            return np.zeros(self.n, np.int64), np.ones(self.n, np.bool_)
        results, codes = _per_value(arr, _decide(fn))
        ok = np.array([r is not _FAIL for r in results])[codes]
        return np.array([0 if r is _FAIL else int(r) for r in results], np.int64)[codes], ok

    def _int_field(self, name: str, default: int | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(values, ok, blank) of an integer field; a blank one takes `default` if there is one."""
        arr = self.r._get(self.table, name)
        if arr is None:
            blank = np.ones(self.n, np.bool_)
            return np.full(self.n, default or 0, np.int64), blank if default is not None else ~blank, blank
        values, ok, blank = _numbers(arr, pa.int64())
        if default is not None:
            values[blank] = default
            ok |= blank
        return values, ok & (~blank if default is None else True), blank

    def run(self, bad: list[BadRow]) -> TickBatch:
        rows = self.n + len(bad)
        n, layout, get = self.n, self.layout, lambda name: self.r._get(self.table, name)
        code, reach, symbol_ok = self._symbol()
        ms, time_ok = self._time()
        side, side_ok = self._side()
        _, action_ok = self._flag_ok("action", _action_ok)
        fast1 = reach & time_ok & side_ok & action_ok  # got this far like the row path, column-wise
        trade_id, id_ok, id_blank = self._int_field("trade_id", None)
        raw_rows = _RawRows(self.table)
        # rows the column-wise checks could not take to their trade number: the row path's first steps
        slow: dict[int, tuple[dict[str, Any], str, int]] = {}
        dead = np.zeros(n, np.bool_)
        for i in np.flatnonzero(~fast1).tolist():
            try:
                mapped = layout.row(raw_rows[i])
                symbol, row_ms = row_key(mapped)
            except DataError as exc:
                bad.append(BadRow(int(self.lines[i]), exc))
                dead[i] = True
                continue
            slow[i] = (mapped, symbol, row_ms)
            code[i], ms[i] = self.code_of(symbol), row_ms
            id_blank[i] = mapped.get("trade_id") in (None, "")
        numbered = np.flatnonzero(~dead & id_blank)
        trade_id[numbered] = self.r.number(self.symbols, code[numbered], ms[numbered])
        id_ok[numbered] = True
        price, price_ok, price_blank = _numbers(get("price"), pa.float64(), layout.decimal_comma)
        quantity, quantity_ok, _ = self._int_field("quantity", None)
        buyer, buyer_ok, _ = self._int_field("buyer", 0)
        seller, seller_ok, _ = self._int_field("seller", 0)
        trade_type, type_ok, _ = self._int_field("trade_type", 0)
        is_edit, edit_ok = self._flag_ok("is_edit", lambda v: _bool({"is_edit": v}, "is_edit"))
        volume, volume_ok = self._volume(price, quantity, code)
        with np.errstate(invalid="ignore"):
            fast2 = (
                fast1 & symbol_ok & price_ok & ~price_blank & (price > 0) & np.isfinite(price)
                & quantity_ok & (quantity >= 0) & volume_ok & id_ok & (trade_id >= 0) & buyer_ok
                & seller_ok & type_ok & edit_ok
            )  # fmt: skip
        aggressor = np.where(
            side == _DERIVED, np.where(trade_type == 2, 1, np.where(trade_type == 3, 2, 0)), side
        )
        columns = {
            "timestamp_ms": ms, "trade_id": trade_id, "price": price, "volume": volume,
            "quantity": quantity, "buyer": buyer, "seller": seller, "trade_type": trade_type,
            "aggressor": aggressor.astype(np.int8), "is_edit": is_edit.astype(np.bool_),
        }  # fmt: skip
        for i in np.flatnonzero(~fast2 & ~dead).tolist():
            try:
                mapped, symbol, row_ms = slow.get(i) or self._again(raw_rows[i])
                if id_blank[i]:
                    mapped["trade_id"] = int(trade_id[i])
                tick = finish_tick(mapped, symbol, row_ms)
                self._put(columns, code, i, tick)
            except DataError as exc:
                bad.append(BadRow(int(self.lines[i]), exc))
                dead[i] = True
        keep = np.flatnonzero(~dead) if dead.any() else slice(None)
        cols = Columns(
            **{name: values[keep] for name, values in columns.items()}, seq=np.zeros(n, np.int64)[keep]
        )
        bad.sort(key=lambda b: b.line)
        symbol_codes = code[keep].astype(np.int32)
        return TickBatch(self.symbols, symbol_codes, self.lines[keep], cols, bad, rows)

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
        given, ok, blank = _numbers(arr, pa.float64(), self.layout.decimal_comma)
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
