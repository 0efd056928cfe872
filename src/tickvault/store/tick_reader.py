"""Tick reads: a time range of one or several symbols (history blocks and the live stream stitched,
in exchange-time order), the tick as of a moment, by seq, the newest, the count.

`TickQueries` is a mixin of `Store` (its methods use the store's `client`, `keys` and `history`).
Late ticks (stored after a newer one, see `api`) sit at ids past their time: the range and as-of
reads find them through the late index and put them back at their exchange time.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Literal, overload

import numpy as np
import pandas as pd
import pyarrow as pa

from tickvault.domain.events import B3_TZ, Tick, from_fields, to_ms, validate_symbol
from tickvault.domain.keys import KeySpace
from tickvault.domain.tick_schema import COLUMN_FIELDS, TICK_FIELDS, stream_id
from tickvault.domain.timeparse import TimeLike, parse_time, to_ms_bounds
from tickvault.store.block_codec import Columns
from tickvault.store.frames import Output, check_output, from_table, tick_columns, ticks_table
from tickvault.store.live_copy import read_live
from tickvault.store.sealing import History
from tickvault.store.stream_codec import columns_from_entries, columns_of, id_ms, raw_command
from tickvault.store.valkey_errors import map_valkey_errors

if TYPE_CHECKING:
    import polars as pl


class TickQueries:
    """The tick reads of `Store` (see the module docstring)."""

    client: Any
    keys: KeySpace
    history: History

    def _live(self, symbol: str, start_ms: int, end_ms: int) -> Columns:
        """Live stream ticks whose exchange time lies in [start_ms, end_ms] (in no particular order):
        the same rows, in the same order, as `_live_entries`, but the part the columnar copy covers
        is read from it (see live_copy.py) and only the rest entry by entry."""
        key = self.keys.ticks(symbol)
        with map_valkey_errors():
            tail = read_live(self.client, self.keys, symbol, start_ms, end_ms)
            if tail.empty:
                return Columns.empty()
            if tail.boundary is None:
                return self._live_entries(symbol, start_ms, end_ms)
            below = f"({tail.boundary[0]}-{tail.boundary[1]}"
            upper = str(end_ms) if end_ms < tail.boundary[0] else below
            raw = raw_command(self.client, key, "XRANGE", key, str(start_ms), upper)
            late = self._entries_by_id(key, [i for i in tail.index if stream_id(i) < tail.boundary])
        in_range = _on_time(raw)
        # late rows in the late index's order: exchange time, then id text (as ZRANGEBYSCORE gives them)
        late_cols = Columns.concat([columns_from_entries(late), tail.late]) if late else tail.late
        late_keys = [entry_id for entry_id, _ in late] + tail.late_ids
        if len(late_keys) > 1:
            times = late_cols.timestamp_ms.tolist()
            order = sorted(range(len(late_keys)), key=lambda i: (times[i], late_keys[i]))
            late_cols = late_cols.take(np.array(order, dtype=np.int64))
        parts = [p for p in (in_range, tail.on_time, late_cols) if len(p)]
        return Columns.concat(parts) if parts else Columns.empty()

    def _live_entries(self, symbol: str, start_ms: int, end_ms: int) -> Columns:
        """`_live` entry by entry: XRANGE of the stream and the late index (the reference path, and the
        path for whatever the columnar copy does not cover)."""
        key = self.keys.ticks(symbol)
        with map_valkey_errors():
            raw = raw_command(self.client, key, "XRANGE", key, str(start_ms), str(end_ms))
            late = self._entries_by_id(
                key, self.client.zrangebyscore(self.keys.late(symbol), start_ms, end_ms)
            )
        in_range = _on_time(raw)
        if not late:
            return in_range
        return Columns.concat([in_range, columns_from_entries(late)])

    def _entries_by_id(self, key: str, entry_ids: list[Any]) -> list[tuple[bytes, dict[bytes, bytes]]]:
        """The stream entries of these ids (late ticks, listed by the late index), one round trip."""
        if not entry_ids:
            return []
        pipe = self.client.pipeline(transaction=False)
        for entry_id in entry_ids:
            pipe.xrange(key, min=entry_id, max=entry_id)
        return [entry for found in pipe.execute() for entry in found]

    def columns(self, symbol: str, start_ms: int, end_ms: int) -> Columns:
        """Ticks with exchange time in [start_ms, end_ms] from history blocks and the live stream,
        ordered by exchange time, ties by the source's sequence number (a tick stored late shares
        its millisecond in the order it was produced, not the order it reached Valkey)."""
        with map_valkey_errors():
            sealed = self.history.read(symbol, start_ms, end_ms)
            live = self._live(symbol, start_ms, end_ms)
        parts = [p for p in (sealed, live) if len(p)]
        both = Columns.concat(parts) if len(parts) > 1 else parts[0] if parts else live
        if len(both) < 2:
            return both
        step = np.diff(both.timestamp_ms)
        if np.all(step >= 0) and np.all(np.diff(both.seq)[step == 0] > 0):
            return both  # the usual case: blocks in time order, then the live tail; nothing to sort
        # exchange time, then seq: per symbol and continuing across runs, unlike arrival or block order
        return both.take(np.lexsort((both.seq, both.timestamp_ms)))

    def tick_events(self, symbol: str, start: TimeLike, end: TimeLike) -> list[Tick]:
        """The stored ticks of `symbol` with exchange time in [start, end], as Tick objects."""
        return frame_to_ticks(self.ticks(symbol, start, end))

    @overload
    def ticks(
        self, symbol: str | Sequence[str], start: TimeLike, end: TimeLike, *, output: Literal["pandas"] = ...
    ) -> pd.DataFrame: ...
    @overload
    def ticks(
        self, symbol: str | Sequence[str], start: TimeLike, end: TimeLike, *, output: Literal["arrow"]
    ) -> pa.Table: ...
    @overload
    def ticks(
        self, symbol: str | Sequence[str], start: TimeLike, end: TimeLike, *, output: Literal["polars"]
    ) -> pl.DataFrame: ...
    def ticks(
        self, symbol: str | Sequence[str], start: TimeLike, end: TimeLike, *, output: Output = "pandas"
    ) -> Any:
        """Ticks with exchange time in [start, end] (both inclusive, ms resolution) as a DataFrame
        indexed by exchange timestamp (America/Sao_Paulo); blocks and the live stream stitched.
        Several symbols give one frame in time order, told apart by the `symbol` column.
        `output`: "pandas", "arrow" (made from the columns, no pandas) or "polars" (see frames.py)."""
        check_output(output)
        start_ms, end_ms = to_ms_bounds(start, end)
        if isinstance(symbol, str):
            if output != "pandas":
                return from_table(ticks_table([(symbol, self.columns(symbol, start_ms, end_ms))]), output)
            return columns_frame(symbol, self.columns(symbol, start_ms, end_ms))
        symbols = [validate_symbol(s) for s in symbol]
        # one reader per symbol at once: in a cluster each goes to its own node (zstd and the socket
        # wait release the GIL, so this helps on one server too)
        with ThreadPoolExecutor(max_workers=max(1, min(len(symbols), 8))) as pool:
            found = list(pool.map(lambda s: self.columns(s, start_ms, end_ms), symbols))
        if output != "pandas":
            return from_table(ticks_table(list(zip(symbols, found, strict=True))), output)
        frames = [columns_frame(s, cols) for s, cols in zip(symbols, found, strict=True)]
        merged = pd.concat(frames) if frames else columns_frame("", Columns.empty())
        merged["symbol"] = pd.Categorical(merged["symbol"].astype(str), categories=symbols)
        return merged.sort_index(kind="stable")

    @overload
    def as_of(self, symbol: str, when: TimeLike, *, output: None = None) -> Tick | None: ...
    @overload
    def as_of(self, symbol: str, when: TimeLike, *, output: Literal["pandas"]) -> pd.DataFrame: ...
    @overload
    def as_of(self, symbol: str, when: TimeLike, *, output: Literal["arrow"]) -> pa.Table: ...
    @overload
    def as_of(self, symbol: str, when: TimeLike, *, output: Literal["polars"]) -> pl.DataFrame: ...
    def as_of(self, symbol: str, when: TimeLike, *, output: Output | None = None) -> Any:
        """The last tick with exchange time at or before `when` (None if there is none). With
        `output`: that tick as a one-row frame of the form asked for, like `ticks` (empty if none)."""
        if output is not None:
            check_output(output)
            found = self.as_of(symbol, when)
            cols = tick_columns([found] if found is not None else [])
            if output == "pandas":
                return columns_frame(symbol, cols)
            return from_table(ticks_table([(symbol, cols)]), output)
        at_ms = to_ms(parse_time(when, field="when"))
        key = self.keys.ticks(symbol)
        with map_valkey_errors():
            found = self.client.xrevrange(key, max=str(at_ms), min="-", count=64)
            late_ids = self.client.zrevrangebyscore(self.keys.late(symbol), at_ms, "-inf", start=0, num=1)
            late = self.client.xrange(key, min=late_ids[0], max=late_ids[0]) if late_ids else []
        candidates = [e for e in found if int(e[1][b"timestamp_ms"]) == stream_id(e[0])[0]][:1] + late
        if candidates:
            best = max(candidates, key=lambda e: (int(e[1][b"timestamp_ms"]), stream_id(e[0])))
            return from_fields({k.decode(): v.decode() for k, v in best[1].items()}, Tick)
        # nothing live at or before `when`: the newest sealed tick at or before it
        sealed = self.columns(symbol, at_ms - 86_400_000 * 31, at_ms)
        if not len(sealed):
            return None
        return frame_to_ticks(columns_frame(symbol, sealed.take(np.array([len(sealed) - 1]))))[0]

    def ticks_by_seq(self, symbol: str, first: int, last: int, *, scan: int = 1_000_000) -> list[Tick]:
        """Stored ticks with `first <= seq <= last`, in seq order, for a subscriber filling a gap the
        publisher's ring no longer holds. Scans back from the newest entry (gaps are recent), at most
        `scan` entries."""
        key = self.keys.ticks(symbol)
        found: dict[int, Tick] = {}
        upper = "+"
        scanned = 0
        with map_valkey_errors():
            while scanned < scan:
                chunk = self.client.xrevrange(key, max=upper, min="-", count=2000)
                if not chunk:
                    break
                scanned += len(chunk)
                lowest = None
                for _, fields in chunk:
                    seq = int(fields[b"seq"])
                    lowest = seq if lowest is None else min(lowest, seq)
                    if first <= seq <= last:
                        found[seq] = from_fields({k.decode(): v.decode() for k, v in fields.items()}, Tick)
                if len(found) == last - first + 1 or (lowest is not None and lowest < first - 10_000):
                    break  # arrival order is seq order up to recovered gaps: far enough back
                upper = "(" + chunk[-1][0].decode()
        return [found[seq] for seq in sorted(found)]

    def last_tick(self, symbol: str) -> Tick | None:
        """The newest stored tick of `symbol` by exchange time (ties: the last stored), or None."""
        tail = self._tail(symbol)
        return from_fields({k.decode(): v.decode() for k, v in tail[-1][1].items()}, Tick) if tail else None

    def last_seq(self, symbol: str) -> int:
        """The highest sequence number stored for `symbol` (0 if none): where a restarted source
        or recorder resumes. Not simply the last entry's: a tick stored late (after a newer one)
        sits at the end of the stream with a sequence number older, or, after a clock step back,
        newer than the on-time entry before it."""
        return max((int(fields[b"seq"]) for _, fields in self._tail(symbol)), default=0)

    def _tail(self, symbol: str) -> list[tuple[bytes, dict[bytes, bytes]]]:
        """The stream's last entries, newest first, through the newest one that is not late."""
        key, late = self.keys.ticks(symbol), self.keys.late(symbol)
        out: list[tuple[bytes, dict[bytes, bytes]]] = []
        end: bytes | str = "+"
        with map_valkey_errors():
            while page := self.client.xrevrange(key, max=end, count=256):
                scores = self.client.zmscore(late, [entry_id for entry_id, _ in page])
                for entry, score in zip(page, scores, strict=True):
                    out.append(entry)
                    if score is None:
                        return out
                end = b"(" + page[-1][0]
        return out

    @map_valkey_errors()
    def count(self, symbol: str) -> int:
        """Ticks stored for `symbol`: live entries plus sealed rows."""
        sealed = sum(ref.rows for ref in self.history.refs(symbol, 0, 2**62))
        return int(self.client.xlen(self.keys.ticks(symbol))) + sealed


def columns_frame(symbol: str, cols: Columns) -> pd.DataFrame:
    """Columns -> the ticks DataFrame: indexed by exchange time in B3 time, the same columns and
    dtypes whether empty or not: the schema's fields in its order, each of its `frame` dtype."""
    data: dict[str, Any] = {
        "symbol": pd.Categorical.from_codes(np.zeros(len(cols), dtype=np.int8), categories=[symbol])
    }
    for f in COLUMN_FIELDS:
        values = getattr(cols, f.name)
        if f.frame == "category":  # int8 codes
            data[f.name] = pd.Categorical.from_codes(values, categories=list(f.codes))
        else:
            data[f.name] = values.astype(f.frame, copy=False)  # no copy: Columns has that dtype
    index = pd.DatetimeIndex(pd.to_datetime(cols.timestamp_ms, unit="ms", utc=True), name="timestamp")
    # ns, as arrow and polars outputs have it (pandas 3 would pick us for ms input)
    return pd.DataFrame(data, index=index.tz_convert(B3_TZ).as_unit("ns"), copy=False)


_CATEGORICAL = tuple(f.name for f in TICK_FIELDS if f.frame == "category")


def frame_to_ticks(frame: pd.DataFrame) -> list[Tick]:
    """Rows of a ticks DataFrame back to Tick objects (for exact comparisons and JSON output)."""
    out = []
    for ts, row in zip(frame.index, frame.itertuples(index=False), strict=True):
        values = row._asdict()
        values["timestamp"] = ts.to_pydatetime()
        for name in _CATEGORICAL:
            values[name] = str(values[name])
        out.append(from_fields(values, Tick))
    return out


def _on_time(raw: list[Any]) -> Columns:
    """The entries of an XRANGE by time stored on time: an entry stored late sits at an id past its
    exchange time, and is kept once, at its exchange time, from the late index."""
    in_range = columns_of(raw)
    on_time = in_range.timestamp_ms == id_ms(raw) if raw else np.ones(0, dtype=np.bool_)
    return in_range if on_time.all() else in_range.take(np.flatnonzero(on_time))
