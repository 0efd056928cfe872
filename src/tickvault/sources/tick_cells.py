"""Cells of tick files read a column at a time: numbers, times, and the short text columns decided
once per distinct value. Every function answers, beside the values, which rows it decided the way
the row reader (`files.tick_from_row`) would; `tick_table` sends the others through the row reader's
own steps. What each accepts is a subset of what the row reader accepts, with equal values:
pyarrow's integer cast takes plain digits only, its float cast the decimal forms Python's float()
reads the same (both round correctly), its ISO 8601 parser the forms `datetime.fromisoformat` reads
the same (but the year 0000, which Python refuses: checked here).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from datetime import date, datetime, timedelta
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tickvault.domain.events import B3_TZ
from tickvault.errors import DataError
from tickvault.sources.layouts import check_action, local_time

FAIL = object()  # a distinct value the column-wise path cannot decide: its rows take the row path
CLOCK = r"(?P<h>[0-9]{2}):?(?P<m>[0-9]{2}):?(?P<s>[0-9]{2})(?:[.,:]?(?P<f>[0-9]{1,6}))?\s*$"
DAY_MS = 86_400_000
_EPOCH_DAY = date(1970, 1, 1)
_SMALLEST_PIECE = 256  # a cast that fails is retried on halves down to this many rows


def per_value(arr: pa.Array, fn: Callable[[Any], Any]) -> tuple[list[Any], np.ndarray]:
    """`fn` once per distinct value (nulls: `fn(None)`, last): (results, each row's index into them)."""
    if pa.types.is_null(arr.type):
        return [fn(None)], np.zeros(len(arr), np.int64)
    encoded = arr if pa.types.is_dictionary(arr.type) else pc.dictionary_encode(arr)
    values = encoded.dictionary.to_pylist() + [None]
    codes = encoded.indices.fill_null(len(values) - 1).to_numpy(zero_copy_only=False)
    return [fn(v) for v in values], codes.astype(np.int64, copy=False)


def decided(fn: Callable[[Any], Any]) -> Callable[[Any], Any]:
    def decided(value: Any) -> Any:
        try:
            return fn(value)
        except DataError:
            return FAIL

    return decided


def cast(arr: pa.Array, kind: pa.DataType) -> tuple[np.ndarray, np.ndarray]:
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


def as_text(arr: pa.Array) -> pa.Array | None:
    """The column as plain text if it is text (large_string, dictionary-encoded text too), else None."""
    if pa.types.is_dictionary(arr.type) and pa.types.is_string(arr.type.value_type):
        return arr.dictionary_decode()
    if pa.types.is_string(arr.type):
        return arr
    if pa.types.is_large_string(arr.type):
        return arr.cast(pa.string())
    return None


def is_blank(arr: pa.Array) -> np.ndarray:
    """Null, or the empty string: what the row reader treats as a missing value."""
    empty = pc.is_null(arr)
    if pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type) or pa.types.is_dictionary(arr.type):
        empty = pc.or_(empty, pc.equal(arr, "").fill_null(False))
    mask: np.ndarray = empty.fill_null(True).to_numpy(zero_copy_only=False)
    return mask


def numbers(
    arr: pa.Array, kind: pa.DataType, decimal_comma: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(values, ok, blank) of an int64 or float64 field: ok where the row reader reads the same
    number; blank where it finds none (null or ""), for the caller's rule (required, or a default)."""
    text = as_text(arr)
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
        blank = is_blank(text)
        # blanks read as 0 here: a cast refuses "", and a column left empty would otherwise send
        # every row the slow way
        values, ok = cast(pc.if_else(pc.equal(text, ""), "0", text), kind)
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


def iso_ms(arr: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(ms, ok) of a timestamp column: ISO 8601 text with an offset and at most ms digits (what
    pyarrow's parser reads, it reads as `datetime.fromisoformat` does, but for the year 0000 that
    Python refuses), or a timezone-aware timestamp type, floored to ms as `to_ms` does."""
    text = as_text(arr)
    if text is not None:
        ms, ok = cast(text, pa.timestamp("ms", "UTC"))
        year0 = pc.starts_with(text, "0000").fill_null(False).to_numpy(zero_copy_only=False)
        return ms, ok & ~year0
    if pa.types.is_timestamp(arr.type) and arr.type.tz is not None:
        per_ms = {"s": 1 / 1000, "ms": 1, "us": 1000, "ns": 1_000_000}[arr.type.unit]
        raw = arr.cast(pa.int64()).fill_null(0).to_numpy(zero_copy_only=False)
        ms = raw * int(1 / per_ms) if per_ms < 1 else raw // int(per_ms)
        return ms, arr.is_valid().to_numpy(zero_copy_only=False)
    return np.zeros(len(arr), np.int64), np.zeros(len(arr), np.bool_)


def trade_action(action: Any) -> int:
    check_action(action)
    return 0


def b3_clock(text: pa.Array) -> tuple[np.ndarray, ...] | None:
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


def local_day(value: Any) -> int:
    """Days since 1970 of a file's date (`2025-11-24`, `24/11/2025`), by `layouts.local_time` itself."""
    return (date.fromisoformat(local_time(value, "000000")[:10]) - _EPOCH_DAY).days


class Offsets:
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
