"""Book queries: the stored book of any moment, frames at a regular step, quotes, the raw updates.

`BookQueries` is a mixin of `Store` (its methods use the store's `client` and `keys`). Every query
starts from the newest stored snapshot at or before its start (a live snapshot, or the head of the
sealed block that holds that moment), adds the updates after it (blocks, then the live stream,
merged by seq), and hands the columns to `analytics.book`: so a book as of any T is one snapshot
and at most about SNAPSHOT_EVERY updates away, whatever the session's length. "As of T" is the book
after the last complete batch whose exchange time is at or before T (`book_at`).

`valid` (the `attrs` of `book`, a column of `book_frames`) is False when that book is not known in
full: a seq is missing between the snapshot used (or the last clear) and T, or the snapshot used
was itself stored across a gap, or no snapshot or clear of each side comes before T.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal, overload

import numpy as np
import pandas as pd
import pyarrow as pa

from tickvault.analytics.book import (
    book_at,
    book_frames,
    cutoffs,
    frames_at,
    quotes,
    snapshot_at,
    valid_rows,
)
from tickvault.domain.book import ACTIONS, COLUMN_NAMES, SIDES, BookColumns, BookKind
from tickvault.domain.events import B3_TZ, to_ms, validate_symbol
from tickvault.domain.keys import KeySpace
from tickvault.domain.timeparse import TimeLike, parse_duration_ms, parse_time, to_ms_bounds
from tickvault.errors import DataError
from tickvault.store.book_codec import decode_columns
from tickvault.store.book_live import (
    BookPosition,
    LiveSnapshot,
    entry_columns,
    finish_live,
    live_rows,
    queue_live,
    read_position,
)
from tickvault.store.book_sealing import BookBlockRef, BookHistory
from tickvault.store.cluster import node_client
from tickvault.store.frames import Coded, Output, check_output, numpy_output
from tickvault.store.valkey_errors import map_valkey_errors

if TYPE_CHECKING:
    import polars as pl

_UPDATE_COLUMNS = {
    "mbp": ("side", "price", "quantity", "orders", "action", "flags", "seq", "received_ms", "timestamp_ms"),
    "mbo": (
        "side",
        "price",
        "quantity",
        "order_id",
        "agent",
        "action",
        "flags",
        "seq",
        "received_ms",
        "timestamp_ms",
    ),
}
# both kinds' columns: one schema for an exported dataset of MBP and MBO books
_ALL_UPDATE_COLUMNS = (
    "side",
    "price",
    "quantity",
    "orders",
    "order_id",
    "agent",
    "action",
    "flags",
    "seq",
    "received_ms",
    "timestamp_ms",
)


class BookQueries:
    """The order-book reads of `Store` (see the module docstring)."""

    client: Any
    keys: KeySpace

    @property
    def book_history(self) -> BookHistory:
        return BookHistory(self.client, self.keys)

    # -- what is stored --------------------------------------------------------------------------

    def book_position(self, symbol: str) -> BookPosition:
        """The book's kind, highest bus frame and update seq stored, newest time, updates stored."""
        with map_valkey_errors():
            return read_position(self.client, self.keys, validate_symbol(symbol))

    def book_symbols(self) -> list[str]:
        with map_valkey_errors():
            return sorted(s.decode() for s in self.client.smembers(self.keys.book_symbols()))

    def _kind(self, symbol: str) -> BookKind:
        return self.book_position(symbol).kind or "mbp"

    # -- columns ---------------------------------------------------------------------------------

    def book_replay(self, symbol: str, from_ms: int, to_ms: int) -> tuple[BookColumns, bool]:
        """(columns, opening valid): the newest snapshot at or before `from_ms` (when there is one)
        followed by every update after it through the last one that may count at `to_ms`."""
        validate_symbol(symbol)
        keys = self.keys
        history = self.book_history
        parts: list[BookColumns] = []
        head: BookColumns | None = None
        opening, after = True, 0
        with map_valkey_errors():
            # one round trip for where to start, one for what to read: a book at T costs two
            pipe = node_client(self.client, keys.book(symbol)).pipeline(transaction=False)
            pipe.hget(keys.book_position(symbol), "kind")
            pipe.zrevrangebyscore(keys.book_snapshots(symbol), from_ms, "-inf", start=0, num=4)
            history.queue_head(pipe, symbol, from_ms)
            kind_raw, found, *candidates = pipe.execute()
            kind: BookKind = "mbo" if kind_raw == b"mbo" else "mbp"
            snaps = sorted(map(LiveSnapshot.parse, found), key=lambda x: (x.ms, x.seq), reverse=True)
            snap = snaps[0] if snaps else None
            if snap is not None:
                pipe.get(keys.book_snapshot(symbol, snap.seq))
                queue_live(pipe, keys, symbol, snap.ms, to_ms)
                data, *replies = pipe.execute()
                if data is not None:
                    head, opening, after = decode_columns(data, symbol), snap.valid, snap.seq
                    live = entry_columns(finish_live(self.client, keys, symbol, replies), symbol)
                else:  # sealed since the index was read: start again from the blocks
                    snap = None
                    candidates = history.head_candidates(symbol, from_ms)
            if snap is None:
                first = history.head_from(candidates, from_ms)
                refs = [first] if first is not None and to_ms < first.last_ms else []
                if not refs:
                    refs = self._blocks_from(history, symbol, first, to_ms)
                history.queue_load(pipe, symbol, refs)
                queue_live(pipe, keys, symbol, first.first_ms if first is not None else 0, to_ms)
                blocks, *replies = pipe.execute()
                for i, (ref, cols) in enumerate(history.loaded(symbol, refs, blocks)):
                    if i == 0 and ref.head:
                        head, opening = cols.take(slice(0, ref.head)), ref.valid
                        after = int(head.seq[0])
                    parts.append(cols.take(slice(ref.head, len(cols))) if ref.head else cols)
                live = entry_columns(finish_live(self.client, keys, symbol, replies), symbol)
        if live is not None:
            parts.append(live)
        rows = _merged(symbol, kind, parts, after)
        cols = rows if head is None else BookColumns.concat([head, rows]) if len(rows) else head
        if len(cols):  # nothing after the first update whose time counts past `to_ms`
            over = np.searchsorted(np.maximum.accumulate(cols.timestamp_ms), to_ms, side="right")
            if over < len(cols):
                cols = cols.take(slice(0, int(over)))
        return cols, opening

    def _blocks_from(
        self, history: BookHistory, symbol: str, first: BookBlockRef | None, to_ms: int
    ) -> list[BookBlockRef]:
        """The block `first` (None: from the oldest) and every later one starting by `to_ms`."""
        start = first.last_ms if first is not None else 0
        refs = [
            r for r in history.refs(symbol, start, to_ms) if first is None or r.first_ms >= first.first_ms
        ]
        if first is not None and first not in refs:
            refs.insert(0, first)
        return refs

    def book_update_columns(self, symbol: str, start_ms: int, end_ms: int) -> BookColumns:
        """The stored updates stamped in [start_ms, end_ms], in seq order (no stored snapshots)."""
        position = self.book_position(symbol)
        kind = position.kind or "mbp"
        start_ms = max(start_ms, position.floor)  # below it: removed by retention
        if end_ms < start_ms:
            return BookColumns.empty(symbol, kind)
        with map_valkey_errors():
            history = self.book_history
            parts = [
                cols.take(slice(ref.head, len(cols))) if ref.head else cols
                for ref, cols in history.load(symbol, history.refs(symbol, start_ms, end_ms))
            ]
            live = live_rows(self.client, self.keys, symbol, start_ms, 0, end_ms)
        if live is not None:
            parts.append(live)
        rows = _merged(symbol, kind, parts, 0)
        return rows.slice_time(start_ms, end_ms)

    def book_snapshot_columns(self, symbol: str, at_ms: int) -> BookColumns | None:
        """The book as of `at_ms` (after its last complete batch by then) as one snapshot group (a
        clear, then every level or order: `analytics.book.snapshot_at`); None when none is stored."""
        cols, _ = self.book_replay(symbol, at_ms, at_ms)
        stop = int(cutoffs(cols, np.array([at_ms], np.int64))[0]) if len(cols) else -1
        return snapshot_at(cols, stop) if stop >= 0 else None

    # -- queries ---------------------------------------------------------------------------------

    @overload
    def book(
        self, symbol: str, at: TimeLike, depth: int | None = 10, *, output: Literal["pandas"] = ...
    ) -> pd.DataFrame: ...
    @overload
    def book(
        self, symbol: str, at: TimeLike, depth: int | None = 10, *, output: Literal["arrow"]
    ) -> pa.Table: ...
    @overload
    def book(
        self, symbol: str, at: TimeLike, depth: int | None = 10, *, output: Literal["polars"]
    ) -> pl.DataFrame: ...
    def book(self, symbol: str, at: TimeLike, depth: int | None = 10, *, output: Output = "pandas") -> Any:
        """The book of `symbol` after its last complete batch at or before `at`: one row per level
        (bids best first, then asks), columns side, level (1 = best), price, quantity, orders,
        indexed by `at`. `attrs`: symbol, at, as_of (time of the last batch applied, None if none),
        seq (of its last update), valid (see the module docstring); arrow has them as schema metadata
        (`tickvault.valid`...), polars not. `output`: "pandas", "arrow" or "polars" (`store.frames`)."""
        check_output(output)
        at_ms = to_ms(parse_time(at, field="at"))
        cols, opening = self.book_replay(symbol, at_ms, at_ms)
        result = book_at(cols, at_ms, depth)
        valid = bool(valid_rows(cols, cutoffs(cols, np.array([at_ms])), opening=opening)[0])
        table = result.table()
        attrs = {
            "symbol": symbol,
            "at": pd.Timestamp(at_ms, unit="ms", tz="UTC").tz_convert(B3_TZ),
            "as_of": None
            if result.as_of_ms is None
            else pd.Timestamp(result.as_of_ms, unit="ms", tz="UTC").tz_convert(B3_TZ),
            "seq": result.seq,
            "valid": valid,
        }
        return numpy_output(np.full(len(table["side"]), at_ms), table, output, attrs)

    @overload
    def book_frames(
        self,
        symbol: str,
        start: TimeLike,
        end: TimeLike,
        every: str | int = "1s",
        depth: int = 10,
        *,
        orders: bool = False,
        output: Literal["pandas"] = ...,
    ) -> pd.DataFrame: ...
    @overload
    def book_frames(
        self,
        symbol: str,
        start: TimeLike,
        end: TimeLike,
        every: str | int = "1s",
        depth: int = 10,
        *,
        orders: bool = False,
        output: Literal["arrow"],
    ) -> pa.Table: ...
    @overload
    def book_frames(
        self,
        symbol: str,
        start: TimeLike,
        end: TimeLike,
        every: str | int = "1s",
        depth: int = 10,
        *,
        orders: bool = False,
        output: Literal["polars"],
    ) -> pl.DataFrame: ...
    def book_frames(
        self,
        symbol: str,
        start: TimeLike,
        end: TimeLike,
        every: str | int = "1s",
        depth: int = 10,
        *,
        orders: bool = False,
        output: Output = "pandas",
    ) -> Any:
        """The book every `every` (`1s`, `500ms`, `1m`...) from `start` through `end`: one row per step,
        columns bid_px_1..N, bid_sz_1..N, ask_px_1..N, ask_sz_1..N (price NaN and size 0 past a
        side's end), with `orders` bid_orders_1..N and ask_orders_1..N (the levels' order counts),
        and valid, indexed by the step's time."""
        check_output(output)
        start_ms, end_ms = to_ms_bounds(start, end)
        step = parse_duration_ms(every)
        cols, opening = self.book_replay(symbol, start_ms, end_ms)
        frames = book_frames(cols, start_ms, end_ms, step, depth, orders=orders)
        valid = frames.valid & valid_rows(cols, cutoffs(cols, frames.time_ms), opening=opening)
        return numpy_output(frames.time_ms, {**frames.columns(), "valid": valid}, output)

    @overload
    def book_changes(
        self, symbol: str, start: TimeLike, end: TimeLike, depth: int = 10, *, output: Literal["pandas"] = ...
    ) -> pd.DataFrame: ...
    @overload
    def book_changes(
        self, symbol: str, start: TimeLike, end: TimeLike, depth: int = 10, *, output: Literal["arrow"]
    ) -> pa.Table: ...
    @overload
    def book_changes(
        self, symbol: str, start: TimeLike, end: TimeLike, depth: int = 10, *, output: Literal["polars"]
    ) -> pl.DataFrame: ...
    def book_changes(
        self, symbol: str, start: TimeLike, end: TimeLike, depth: int = 10, *, output: Output = "pandas"
    ) -> Any:
        """The top `depth` levels after every batch in [start, end] that changed them (or `valid`):
        `book_frames`' columns with the order counts (bid_px_1..N, bid_sz_1..N, ask_px_1..N,
        ask_sz_1..N, bid_orders_1..N, ask_orders_1..N, valid) plus the seq of the batch's last
        update, indexed by its time. Each row equals `book(symbol, time,
        depth)`; batches of one ms make one row (the book as of that ms), a batch that changed only
        deeper levels none. The first row is one if it differs from the book just before `start`."""
        check_output(output)
        start_ms, end_ms = to_ms_bounds(start, end)
        if depth <= 0:
            raise DataError("depth", f"must be positive, got {depth}")
        cols, opening = self.book_replay(symbol, start_ms - 1, end_ms)
        ends = cols.batch_ends()
        stamps = np.maximum.accumulate(cols.timestamp_ms)[ends] if len(cols) else np.empty(0, np.int64)
        times = np.unique(stamps[(stamps >= start_ms) & (stamps <= end_ms)])
        every = np.concatenate([[start_ms - 1], times])  # the book before `start`: what the first changes
        frames = frames_at(cols, every, depth, orders=True)
        stops = cutoffs(cols, every)
        valid = frames.valid & valid_rows(cols, stops, opening=opening)
        data: dict[str, np.ndarray] = {**frames.columns(), "valid": valid}
        changed = np.zeros(every.size, bool)
        for values in data.values():
            same = (values[1:] == values[:-1]) | (
                np.isnan(values[1:]) & np.isnan(values[:-1]) if values.dtype.kind == "f" else False
            )
            changed[1:] |= ~same
        keep = np.flatnonzero(changed)
        out = {name: values[keep] for name, values in data.items()}
        out["seq"] = cols.seq[stops[keep]] if keep.size else np.empty(0, np.int64)
        return numpy_output(every[keep], out, output)

    @overload
    def quotes(
        self, symbol: str, start: TimeLike, end: TimeLike, *, output: Literal["pandas"] = ...
    ) -> pd.DataFrame: ...
    @overload
    def quotes(
        self, symbol: str, start: TimeLike, end: TimeLike, *, output: Literal["arrow"]
    ) -> pa.Table: ...
    @overload
    def quotes(
        self, symbol: str, start: TimeLike, end: TimeLike, *, output: Literal["polars"]
    ) -> pl.DataFrame: ...
    def quotes(self, symbol: str, start: TimeLike, end: TimeLike, *, output: Output = "pandas") -> Any:
        """The best bid and ask (bid_px, bid_sz, ask_px, ask_sz) after every batch in [start, end]
        that changed either, with the seq of that batch's last update; price NaN: side empty."""
        check_output(output)
        start_ms, end_ms = to_ms_bounds(start, end)
        cols, _ = self.book_replay(symbol, start_ms, end_ms)
        q = quotes(cols)
        keep = (q.time_ms >= start_ms) & (q.time_ms <= end_ms)
        data = {
            "bid_px": q.bid_price[keep],
            "bid_sz": q.bid_quantity[keep],
            "ask_px": q.ask_price[keep],
            "ask_sz": q.ask_quantity[keep],
            "seq": q.seq[keep],
        }
        return numpy_output(q.time_ms[keep], data, output)

    @overload
    def book_updates(
        self, symbol: str, start: TimeLike, end: TimeLike, *, output: Literal["pandas"] = ...
    ) -> pd.DataFrame: ...
    @overload
    def book_updates(
        self, symbol: str, start: TimeLike, end: TimeLike, *, output: Literal["arrow"]
    ) -> pa.Table: ...
    @overload
    def book_updates(
        self, symbol: str, start: TimeLike, end: TimeLike, *, output: Literal["polars"]
    ) -> pl.DataFrame: ...
    def book_updates(self, symbol: str, start: TimeLike, end: TimeLike, *, output: Output = "pandas") -> Any:
        """The raw book updates stamped in [start, end], in the order they apply (seq), as stored:
        MBP columns side, price, quantity, orders, action, flags, seq, received_ms, timestamp_ms (MBO:
        order_id and agent instead of orders), indexed by exchange time; `attrs` symbol and kind."""
        check_output(output)
        start_ms, end_ms = to_ms_bounds(start, end)
        return book_updates_frame(self.book_update_columns(symbol, start_ms, end_ms), output)

    # -- housekeeping ----------------------------------------------------------------------------

    def compact_book(self, symbol: str, live_ms: int) -> int:
        """Seal book updates older than `live_ms` before the newest into blocks; returns how many."""
        with map_valkey_errors():
            newest = read_position(self.client, self.keys, symbol).ms
            if not newest:
                return 0
            return self.book_history.seal(symbol, newest - live_ms)

    def book_retention(self, symbol: str, days: float) -> int:
        """Remove book updates stamped more than `days` before the symbol's newest (as ticks'
        retention): blocks (a straddling one gets a new head snapshot), live entries and snapshots
        older than that (the newest snapshot before the cut stays: what is kept replays from it),
        and the seq bitmaps wholly below what is kept. Returns the updates removed."""
        with map_valkey_errors():
            newest = read_position(self.client, self.keys, symbol).ms
            if not newest or days <= 0:
                return 0
            cutoff = newest - int(days * 86_400_000)
            removed = self.book_history.expire(symbol, cutoff)
            # a live entry holding updates both sides of the cut stays whole: the floor hides the older
            self.client.hset(self.keys.book_position(symbol), "floor", cutoff)
            key = self.keys.book(symbol)
            old = self.client.xrange(key, min="-", max=str(cutoff - 1))
            if old:
                removed += sum(int(fields.get(b"updates", 0)) for _, fields in old)
                self.client.xdel(key, *[entry_id for entry_id, _ in old])
                self.client.zrem(self.keys.book_late(symbol), *[entry_id for entry_id, _ in old])
            stale = self.client.zrangebyscore(self.keys.book_snapshots(symbol), "-inf", f"({cutoff}")[:-1]
            for member in stale:
                seq = int(member.split(b":")[1])
                self.client.delete(self.keys.book_snapshot(symbol, seq))
                self.client.zrem(self.keys.book_snapshots(symbol), member)
        return removed


def _merged(symbol: str, kind: BookKind, parts: list[BookColumns], after: int) -> BookColumns:
    """The rows of `parts` with seq > `after`, in seq order, each seq once."""
    parts = [p for p in parts if len(p)]
    if not parts:
        return BookColumns.empty(symbol, kind)
    rows = BookColumns.concat(parts) if len(parts) > 1 else parts[0]
    if after and rows.seq.size and rows.seq.min() <= after:
        rows = rows.take(rows.seq > after)
    if np.any(np.diff(rows.seq) <= 0):  # blocks, live entries and late fills, in seq order
        rows = rows.take(np.argsort(rows.seq, kind="stable"))
        once = np.r_[True, np.diff(rows.seq) != 0]
        if not once.all():
            rows = rows.take(once)
    return rows


def book_updates_frame(cols: BookColumns, output: Output = "pandas", *, every_column: bool = False) -> Any:
    """BookColumns -> the book_updates frame (see `BookQueries.book_updates`), in the form asked for;
    `every_column`: MBP's and MBO's columns both (orders, order_id, agent: 0 where the kind has none)."""
    data: dict[str, np.ndarray | Coded] = {}
    for name in _ALL_UPDATE_COLUMNS if every_column else _UPDATE_COLUMNS[cols.kind]:
        values = getattr(cols, name)
        if name == "side":
            data[name] = Coded(values, SIDES)
        elif name == "action":
            data[name] = Coded(values, ACTIONS)
        else:
            data[name] = values
    return numpy_output(cols.timestamp_ms, data, output, {"symbol": cols.symbol, "kind": cols.kind})


def book_updates_columns(frame: pd.DataFrame, symbol: str, kind: BookKind) -> BookColumns:
    """A book_updates DataFrame back to BookColumns (exactly: for the JSON output and comparisons)."""
    n = len(frame)
    data: dict[str, np.ndarray] = {name: np.zeros(n, np.int64) for name in COLUMN_NAMES}
    for name in frame.columns:
        column = frame[name]
        data[name] = (
            column.cat.codes.to_numpy()
            if isinstance(column.dtype, pd.CategoricalDtype)
            else column.to_numpy()
        )
    return BookColumns(symbol, kind, **data)
