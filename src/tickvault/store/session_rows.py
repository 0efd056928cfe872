"""A session's rows and the rows new to it, without I/O: B3 session dates, the live writer's
duplicate rules (a trade once per session and trade id, as the seen bitmaps say; an edit once per
content), seq numbering and the (exchange time, seq) order reads return. `bulk.BulkWriter` merges
with these.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta

import numpy as np

from tickvault.domain.events import B3_TZ, to_ms
from tickvault.store.block_codec import Columns
from tickvault.store.sealing import HOUR_MS
from tickvault.store.seen_bits import CHUNK_MASK, SEEN_CHUNK_BITS


class SessionDays:
    """B3 session date (YYYYMMDD as an int) of exchange times in ms, worked out once per hour."""

    def __init__(self) -> None:
        self._by_hour: dict[int, int] = {}

    def __call__(self, ms: np.ndarray) -> np.ndarray:
        hours = np.asarray(ms) // HOUR_MS
        if not len(hours):
            return np.empty(0, np.int64)
        lo, hi = int(hours.min()), int(hours.max())
        if hi - lo < 1 << 20:  # a table over the hours spanned (no sort): years of hours at most
            table = np.array([self._day(h) for h in range(lo, hi + 1)], np.int64)
            days: np.ndarray = table[hours - lo]
            return days
        unique, inverse = np.unique(hours, return_inverse=True)
        return np.array([self._day(h) for h in unique.tolist()], np.int64)[inverse]

    def _day(self, hour: int) -> int:
        day = self._by_hour.get(hour)
        if day is None:
            day = self._by_hour[hour] = int(datetime.fromtimestamp(hour * 3600, B3_TZ).strftime("%Y%m%d"))
        return day


def session_bounds(session: int) -> tuple[int, int]:
    """[first, last] ms of a B3 session date: local midnight to the next one."""
    day = date(session // 10_000, session // 100 % 100, session % 100)
    after = day + timedelta(days=1)
    start = to_ms(datetime(day.year, day.month, day.day, tzinfo=B3_TZ))
    return start, to_ms(datetime(after.year, after.month, after.day, tzinfo=B3_TZ)) - 1


def edit_mark(trade_id: int, ms: int, price: float, quantity: int) -> bytes:
    """What makes an edit the same edit (the live writer's rule, `TickWriter._commands`)."""
    return f"{trade_id}:{ms}:{float(price)!r}:{quantity}".encode()


def fresh_rows(new: Columns, known: np.ndarray, unmarked: np.ndarray, marks: set[bytes]) -> Columns:
    """The new rows not stored yet: trades by id (seen bit unset, not among the session's ids
    stored without one; the first of a repeated one), edits by content."""
    keep = np.zeros(len(new), np.bool_)
    plain = np.flatnonzero(~new.is_edit)
    if len(plain):
        ids = new.trade_id[plain]
        if len(ids) < 2 or bool(np.all(ids[1:] > ids[:-1])):  # ids counting up: no repeats
            candidate = np.ones(len(plain), np.bool_)
        else:
            _, first = np.unique(ids, return_index=True)
            candidate = np.zeros(len(plain), np.bool_)
            candidate[first] = True
        candidate &= ~known[plain]
        if len(unmarked):
            candidate &= ~np.isin(ids, unmarked)
        keep[plain[candidate]] = True
    edits = np.flatnonzero(new.is_edit)
    if len(edits):
        have = set(marks)
        for i in edits.tolist():
            mark = edit_mark(new.trade_id[i], new.timestamp_ms[i], new.price[i], new.quantity[i])
            if mark not in have:
                have.add(mark)
                keep[i] = True
    return new if keep.all() else new.take(keep)


@dataclass
class Held:
    """What a session holds, as duplicates are decided: its trades' ids, its edits, its top seq."""

    ids: np.ndarray
    marks: set[bytes]
    seq: int


def held_of(parts: list[Columns], lo: int, hi: int) -> Held:
    """Held of the rows `parts` have in the session [lo, hi]."""
    ids, marks, seq = [], set(), 0
    for part in parts:
        if not len(part):
            continue
        ms = part.timestamp_ms
        mine = part if lo <= ms.min() and ms.max() <= hi else part.take((ms >= lo) & (ms <= hi))
        edits = np.flatnonzero(mine.is_edit)
        ids.append(np.delete(mine.trade_id, edits) if len(edits) else mine.trade_id)
        for i in edits.tolist():
            marks.add(edit_mark(mine.trade_id[i], mine.timestamp_ms[i], mine.price[i], mine.quantity[i]))
        seq = max(seq, int(part.seq.max()))
    return Held(np.concatenate(ids) if ids else np.empty(0, np.int64), marks, seq)


def chunks_of(ids: np.ndarray) -> list[int]:
    """The seen-bitmap chunks (8M ids each) the ids fall in."""
    if not len(ids):
        return []
    lo, hi = int(ids.min()) >> SEEN_CHUNK_BITS, int(ids.max()) >> SEEN_CHUNK_BITS
    return [lo] if lo == hi else np.unique(ids >> SEEN_CHUNK_BITS).tolist()


def distinct(values: np.ndarray) -> np.ndarray:
    """Sorted distinct values of a mostly sorted array (hours): cheaper than np.unique's hash."""
    if len(values) < 2 or bool(np.all(values[1:] >= values[:-1])):
        return values[np.r_[True, values[1:] != values[:-1]]] if len(values) else values
    return np.unique(values)


def bits_set(ids: np.ndarray, bitmaps: dict[int, bytes | None]) -> np.ndarray:
    """Whether each id's seen bit is set in the fetched `bitmaps` (chunk -> bytes; others: unset)."""
    found = np.zeros(len(ids), np.bool_)
    if not len(ids):
        return found
    chunk = ids >> SEEN_CHUNK_BITS
    single = int(chunk.min()) if chunk.min() == chunk.max() else None
    for c, raw in bitmaps.items():
        if not raw:
            continue
        bits = np.unpackbits(np.frombuffer(raw, np.uint8)).view(np.bool_)  # Valkey's bit order: high first
        rows = np.arange(len(ids)) if single == c else np.flatnonzero(chunk == c)
        offsets = ids[rows] & CHUNK_MASK
        if int(offsets.max()) < len(bits):
            found[rows] = bits[offsets]
        else:
            inside = offsets < len(bits)
            found[rows[inside]] = bits[offsets[inside]]
    return found


def concat(parts: list[Columns]) -> Columns:
    """Columns.concat without copying when at most one part has rows."""
    full = [p for p in parts if len(p)]
    return full[0] if len(full) == 1 else Columns.concat(full)


def row_range(cols: Columns, lo: int, hi: int) -> Columns:
    if (lo, hi) == (0, len(cols)):
        return cols
    return Columns(**{name: getattr(cols, name)[lo:hi] for name in cols.__dataclass_fields__})


def numbered(fresh: Columns, top: int) -> Columns:
    """New rows in exchange-time order (file order within a ms), seq top + 1, top + 2, ... (so after
    every row the session held, in the order reads return them)."""
    ms = fresh.timestamp_ms
    if len(ms) > 1 and not bool(np.all(ms[1:] >= ms[:-1])):
        fresh = fresh.take(np.argsort(ms, kind="stable"))
    seq = np.arange(top + 1, top + 1 + len(fresh), dtype=np.int64)
    return Columns(**{**{name: getattr(fresh, name) for name in fresh.__dataclass_fields__}, "seq": seq})


def ordered(cols: Columns) -> Columns:
    """Rows in (exchange time, seq) order: the order `Store.columns` returns them in."""
    if len(cols) < 2:
        return cols
    step = np.diff(cols.timestamp_ms)
    if np.all(step >= 0) and np.all(np.diff(cols.seq)[step == 0] > 0):
        return cols
    return cols.take(np.lexsort((cols.seq, cols.timestamp_ms)))
