"""Valkey Streams storage of ticks: idempotent batched writes and exact time-range reads.

Stream ids are the exchange time in ms plus a sequence (`<ms>-<n>`), so a time range is an id range.
A tick older than the stream's last id (a history download, an edit, a clock step) cannot take its
own time as id; it is stored right after the current last entry, keeps its exchange time in the
`timestamp_ms` field, and is indexed by exchange time in a small sorted set (`tv:late:SYMBOL`) so
range reads still find it. Writes are idempotent on (symbol, session, trade_id): a bitmap per session
remembers which trade ids are stored (1 bit per trade number), edits are remembered by content.
A batch is one MULTI/EXEC, so a crash never leaves half a batch (see `writer`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Literal, overload

import numpy as np
import pandas as pd
import pyarrow as pa
import valkey

from tickvault.analytics.candles import (
    TIMEFRAMES,
    bar_bounds,
    candles_from_ticks,
    check_timeframe,
    empty_candles,
)
from tickvault.domain.events import (
    B3_TZ,
    Candle,
    Event,
    Features,
    Prediction,
    Signal,
    Tick,
    from_fields,
    from_ms,
    to_fields,
    to_ms,
    validate_symbol,
)
from tickvault.domain.keys import KeySpace
from tickvault.domain.tick_schema import COLUMN_FIELDS, TICK_FIELDS, stream_id
from tickvault.domain.timeparse import TimeLike, parse_time, to_ms_bounds
from tickvault.errors import DataError
from tickvault.store.block_codec import Columns
from tickvault.store.book_reader import BookQueries
from tickvault.store.cluster import is_cluster, primaries_with_key
from tickvault.store.frames import Output, check_output, from_frame, from_table, tick_columns, ticks_table
from tickvault.store.live_copy import read_live
from tickvault.store.sealing import History
from tickvault.store.stream_codec import columns_from_entries, columns_of, id_ms, raw_command
from tickvault.store.tick_writer import AppendResult, TickLike, TickWriter
from tickvault.store.valkey_errors import map_valkey_errors, store_error

if TYPE_CHECKING:
    import polars as pl

    from tickvault.store.connection import Connection

log = logging.getLogger("tickvault.store")

DEAD_LETTER_MAXLEN = 100_000  # the dead-letter stream keeps about this many entries, the newest


class Store(BookQueries):
    """Ticks (and, through `BookQueries`, order books) in Valkey. `client` must be created with
    decode_responses=False."""

    def __init__(
        self,
        client: valkey.Valkey,
        keys: KeySpace | None = None,
        *,
        owner: Connection | None = None,
        writer_name: str | None = None,
    ) -> None:
        self.client = client
        self.keys = keys or KeySpace(cluster=is_cluster(client))
        self.writer = TickWriter(client, self.keys, owner=writer_name)
        self.history = History(client, self.keys)
        self._owner = owner
        self._event_ids: dict[str, tuple[int, int]] = {}  # stream -> last (ms, n) appended

    def wait_durable(self, timeout_ms: int = 5000) -> bool:
        """True once everything written so far is fsynced to Valkey's append-only file. A write on
        this connection followed by WAITAOF covers every earlier write too: the file is sequential."""
        durable = True
        with map_valkey_errors():
            for node, probe in primaries_with_key(self.client, self.keys.durability_probe()):
                pipe = node.pipeline(transaction=False)  # in a cluster: every node's file
                pipe.incr(probe)
                pipe.execute_command("WAITAOF", 1, 0, timeout_ms)
                _, (local, _) = pipe.execute()
                durable = durable and int(local) >= 1
        return durable

    def close(self) -> None:
        """Close the connection this store opened (see `tickvault.connect`)."""
        if self._owner is not None:
            self._owner.close()
            self._owner = None

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- writing ---------------------------------------------------------------------------------

    def append_ticks(self, ticks: Iterable[TickLike]) -> AppendResult:
        """Store ticks once each, in arrival order, in one round trip (see `writer.TickWriter`);
        returns once Valkey has applied them."""
        result = self.writer.write(list(ticks))
        self.writer.flush()
        return result

    def dead_letter(
        self, reason: str, field: str, *, topic: str | bytes = b"", payload: bytes = b"", **extra: str | bytes
    ) -> None:
        """Keep a refused message aside in the dead-letter stream, capped at DEAD_LETTER_MAXLEN
        entries: why (`reason`, and `field`, the part at fault, a short word), where it came from
        (`topic`) and what it was (`payload`), cut to a bounded size, with when it was received."""
        fields: dict[str, str | bytes | int] = {
            "reason": reason[:500], "field": field, "topic": topic[:200], **extra,
            "payload": payload[:4096], "received_ms": int(time.time() * 1000),
        }  # fmt: skip
        with map_valkey_errors():
            self.client.xadd(self.keys.dead_letters(), fields, maxlen=DEAD_LETTER_MAXLEN, approximate=True)

    # -- reading ---------------------------------------------------------------------------------

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
            old_late = [i for i in tail.index if stream_id(i) < tail.boundary]
            late: list[tuple[bytes, dict[bytes, bytes]]] = []
            if old_late:
                pipe = self.client.pipeline(transaction=False)
                for entry_id in old_late:
                    pipe.xrange(key, min=entry_id, max=entry_id)
                late = [entry for found in pipe.execute() for entry in found]
        in_range = columns_of(raw)
        on_time = in_range.timestamp_ms == id_ms(raw) if raw else np.ones(0, dtype=np.bool_)
        if not on_time.all():
            in_range = in_range.take(np.flatnonzero(on_time))
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
            late_ids = self.client.zrangebyscore(self.keys.late(symbol), start_ms, end_ms)
            late: list[tuple[bytes, dict[bytes, bytes]]] = []
            if late_ids:
                pipe = self.client.pipeline(transaction=False)
                for entry_id in late_ids:
                    pipe.xrange(key, min=entry_id, max=entry_id)
                late = [entry for found in pipe.execute() for entry in found]
        # entries stored late sit at ids past their time; keep each exactly once, at its exchange time
        in_range = columns_of(raw)
        on_time = in_range.timestamp_ms == id_ms(raw) if raw else np.ones(0, dtype=np.bool_)
        if not on_time.all():
            in_range = in_range.take(np.flatnonzero(on_time))
        if not late:
            return in_range
        return Columns.concat([in_range, columns_from_entries(late)])

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

    def compact(self, symbol: str, live_ms: int, max_len: int = 0) -> int:
        """Seal what is older than `live_ms` before the newest tick, and beyond `max_len` live
        entries (0: no bound) the oldest; the newest tick always stays live. Returns ticks sealed."""
        key = self.keys.ticks(symbol)
        with map_valkey_errors():
            top = self.client.xrevrange(key, count=1)
            if not top:
                return 0
            sealed = self.history.seal(symbol, stream_id(top[0][0])[0] - live_ms)
            excess = int(self.client.xlen(key)) - max_len if max_len > 0 else 0
            if excess > 0:
                oldest = self.client.xrange(key, count=excess + 1)
                sealed += self.history.seal(symbol, stream_id(oldest[-1][0])[0])
        return sealed

    @overload
    def candles(
        self, symbol: str, tf: str, start: TimeLike, end: TimeLike, *, output: Literal["pandas"] = ...
    ) -> pd.DataFrame: ...
    @overload
    def candles(
        self, symbol: str, tf: str, start: TimeLike, end: TimeLike, *, output: Literal["arrow"]
    ) -> pa.Table: ...
    @overload
    def candles(
        self, symbol: str, tf: str, start: TimeLike, end: TimeLike, *, output: Literal["polars"]
    ) -> pl.DataFrame: ...
    def candles(
        self, symbol: str, tf: str, start: TimeLike, end: TimeLike, *, output: Output = "pandas"
    ) -> Any:
        """Bars of timeframe `tf` (1m, 5m, 15m, 1h, 1d) computed from the stored ticks in
        [start, end], labelled by their open time in B3 time (see candles.py)."""
        check_timeframe(tf)
        check_output(output)
        return from_frame(candles_from_ticks(self.ticks(symbol, start, end), tf), output)

    def candle_stream(self, symbol: str, tf: str, start: TimeLike, end: TimeLike) -> pd.DataFrame:
        """Bars the live candle worker wrote to `stream:candles:{tf}:{symbol}` that overlap
        [start, end] (like `candles`): the last version of each bar (a correction is a later entry of
        the same open time). The bar still open is there only once the worker stopped."""
        check_timeframe(tf)
        start_ms, end_ms = to_ms_bounds(start, end)
        start_ms = bar_bounds(start_ms, tf)[0]
        with map_valkey_errors():
            # corrections sit at ids after their open time, so read on to the stream's end
            entries = self.client.xrange(self.keys.candles(tf, symbol), min=str(start_ms), max="+")
        latest: dict[int, Candle] = {}
        for _, fields in entries:
            bar = from_fields({k.decode(): v.decode() for k, v in fields.items()}, Candle)
            if start_ms <= bar.timestamp_ms <= end_ms:
                latest[bar.timestamp_ms] = bar
        out = empty_candles()
        if not latest:
            return out
        bars = [latest[ms] for ms in sorted(latest)]
        frame = pd.DataFrame({name: [getattr(b, name) for b in bars] for name in out.columns})
        frame.index = (
            pd.DatetimeIndex(
                pd.to_datetime([b.timestamp_ms for b in bars], unit="ms", utc=True), name="timestamp"
            )
            .tz_convert(B3_TZ)
            .as_unit("ns")
        )  # as `candles` has it (from the ticks' ns index)
        return frame.astype(out.dtypes.to_dict())

    # -- features, predictions, signals: one entry per event, appended in time order by their one
    #    producer (issue 5 writes them); read back by the same range API

    def append_events(self, events: Sequence[Features | Prediction | Signal]) -> int:
        """Append events to their streams (`stream:features:SYM`, ...). Ids are explicit: the
        exchange ms and a counter of events of that stream within the ms (`ms-0`, `ms-1`, ...), the
        same ids a feature or predictor worker computes for the same events, so whoever writes an
        event second is refused. An event not newer than its stream's last entry (a rerun over the
        same times, a second writer) is skipped, not an error. Returns how many were appended."""
        pipe = self.client.pipeline(transaction=False)
        for event in events:
            key = self.keys.stream(_EVENT_STREAM[type(event)], event.symbol)
            ms = event.timestamp_ms
            last_ms, last_n = self._event_ids.get(key, (-1, -1))
            n = last_n + 1 if ms == last_ms else 0
            if ms >= last_ms:
                self._event_ids[key] = (ms, n)
            pipe.xadd(key, to_fields(event), id=f"{ms}-{n}")
        with map_valkey_errors():
            try:
                replies = pipe.execute(raise_on_error=False)
            except valkey.ValkeyError:
                self._event_ids.clear()  # a retry of this batch must compute the same ids again
                raise
        errors = [r for r in replies if isinstance(r, Exception)]
        for error in errors:
            if not isinstance(error, valkey.ResponseError) or "equal or smaller" not in str(error):
                raise store_error(error)
        return len(events) - len(errors)

    @overload
    def events(
        self, kind: str, symbol: str, start: TimeLike, end: TimeLike, *, output: Literal["pandas"] = ...
    ) -> pd.DataFrame: ...
    @overload
    def events(
        self, kind: str, symbol: str, start: TimeLike, end: TimeLike, *, output: Literal["arrow"]
    ) -> pa.Table: ...
    @overload
    def events(
        self, kind: str, symbol: str, start: TimeLike, end: TimeLike, *, output: Literal["polars"]
    ) -> pl.DataFrame: ...
    def events(
        self, kind: str, symbol: str, start: TimeLike, end: TimeLike, *, output: Output = "pandas"
    ) -> Any:
        """`kind` in features|predictions|signals: events in [start, end] as a DataFrame indexed by
        exchange time; a feature or probability dict becomes one column per name."""
        check_output(output)
        event_type = {v: k for k, v in _EVENT_STREAM.items()}.get(kind)
        if event_type is None:
            raise DataError("kind", f"{kind!r} must be features, predictions or signals")
        start_ms, end_ms = to_ms_bounds(start, end)
        with map_valkey_errors():
            entries = self.client.xrange(self.keys.stream(kind, symbol), min=str(start_ms), max=str(end_ms))
        rows = []
        for _, fields in entries:
            event: Event = from_fields({k.decode(): v.decode() for k, v in fields.items()}, event_type)
            row = {name: getattr(event, name) for name in event.__struct_fields__ if name != "timestamp"}
            for nested in ("values", "probabilities"):
                row.update(row.pop(nested, None) or {})
            rows.append(row)
        frame = pd.DataFrame(rows)
        ms = frame["timestamp_ms"].to_numpy() if len(frame) else np.empty(0, np.int64)
        frame.index = pd.DatetimeIndex(pd.to_datetime(ms, unit="ms", utc=True), name="timestamp").tz_convert(
            B3_TZ
        )
        return from_frame(frame, output)

    @overload
    def features(
        self, symbol: str, start: TimeLike, end: TimeLike, *, output: Literal["pandas"] = ...
    ) -> pd.DataFrame: ...
    @overload
    def features(
        self, symbol: str, start: TimeLike, end: TimeLike, *, output: Literal["arrow"]
    ) -> pa.Table: ...
    @overload
    def features(
        self, symbol: str, start: TimeLike, end: TimeLike, *, output: Literal["polars"]
    ) -> pl.DataFrame: ...
    def features(self, symbol: str, start: TimeLike, end: TimeLike, *, output: Output = "pandas") -> Any:
        return self.events("features", symbol, start, end, output=output)

    @overload
    def predictions(
        self, symbol: str, start: TimeLike, end: TimeLike, *, output: Literal["pandas"] = ...
    ) -> pd.DataFrame: ...
    @overload
    def predictions(
        self, symbol: str, start: TimeLike, end: TimeLike, *, output: Literal["arrow"]
    ) -> pa.Table: ...
    @overload
    def predictions(
        self, symbol: str, start: TimeLike, end: TimeLike, *, output: Literal["polars"]
    ) -> pl.DataFrame: ...
    def predictions(self, symbol: str, start: TimeLike, end: TimeLike, *, output: Output = "pandas") -> Any:
        return self.events("predictions", symbol, start, end, output=output)

    @overload
    def signals(
        self, symbol: str, start: TimeLike, end: TimeLike, *, output: Literal["pandas"] = ...
    ) -> pd.DataFrame: ...
    @overload
    def signals(
        self, symbol: str, start: TimeLike, end: TimeLike, *, output: Literal["arrow"]
    ) -> pa.Table: ...
    @overload
    def signals(
        self, symbol: str, start: TimeLike, end: TimeLike, *, output: Literal["polars"]
    ) -> pl.DataFrame: ...
    def signals(self, symbol: str, start: TimeLike, end: TimeLike, *, output: Output = "pandas") -> Any:
        return self.events("signals", symbol, start, end, output=output)

    @map_valkey_errors()
    def seal(self, symbol: str, before_ms: int) -> int:
        """Move live-stream ticks stored before `before_ms` into history blocks (see history.py)."""
        return self.history.seal(symbol, before_ms)

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

    def apply_retention(self, symbol: str, days: float) -> int:
        """Remove ticks whose exchange time is more than `days` before the symbol's newest tick
        (not the wall clock: loading 2013 data for research must not delete it on arrival). Exact:
        nothing newer is removed, nothing older remains. Returns how many entries were removed."""
        key, late = self.keys.ticks(symbol), self.keys.late(symbol)
        with map_valkey_errors():
            top = self.client.xrevrange(key, count=1)
            # the newest exchange time stored is the top id's ms (a late tick never raises it)
            newest = max([stream_id(top[0][0])[0]] if top else [], default=self.history.newest_ms(symbol))
            if newest is None or days <= 0:
                return 0
            cutoff = newest - int(days * 86_400_000)
            removed = int(self.client.xtrim(key, minid=str(cutoff), approximate=False))
            removed += self.history.expire(symbol, cutoff)
            # derived streams (candles, features, predictions, signals) go with the ticks they came from
            for kind in (*(f"candles:{tf}" for tf in TIMEFRAMES), "features", "predictions", "signals"):
                self.client.xtrim(self.keys.stream(kind, symbol), minid=str(cutoff), approximate=False)
            # ticks stored late sit at newer ids than their time: remove those by exchange time
            old_late = self.client.zrangebyscore(late, "-inf", f"({cutoff}")
            if old_late:
                removed += int(self.client.xdel(key, *old_late))
            self.client.zremrangebyscore(late, "-inf", f"({cutoff}")
            cutoff_session = from_ms(cutoff).strftime("%Y%m%d")
            stale = [
                k
                for pattern in self.keys.session_patterns(symbol)
                for k in self.client.scan_iter(match=pattern, count=1000)
                if k.decode().removeprefix(self.keys.prefix).split(":")[3] < cutoff_session
            ]
            if stale:
                self.client.delete(*stale)
        return removed

    def cleanup(self, days: float) -> dict[str, int]:
        """`apply_retention` (and `book_retention`) for every stored symbol: symbol -> entries removed."""
        out = {symbol: self.apply_retention(symbol, days) for symbol in self.symbols()}
        for symbol in self.book_symbols():
            out[symbol] = out.get(symbol, 0) + self.book_retention(symbol, days)
        return out

    @map_valkey_errors()
    def symbols(self) -> list[str]:
        return sorted(s.decode() for s in self.client.smembers(self.keys.symbols()))


_EVENT_STREAM: dict[type[Event], str] = {Features: "features", Prediction: "predictions", Signal: "signals"}


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
