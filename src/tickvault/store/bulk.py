"""Past ticks straight into history blocks: the bulk writer behind `tickvault ingest`.

History known in full (a day's trade file, a download) needs none of the live path's per-tick work
(bus, stream entry, feature engine). `BulkWriter` takes tick columns, groups them by symbol and B3
session, and merges each (symbol, session) into the history in one MULTI/EXEC:

- read what the session holds: its blocks and its live-stream entries;
- drop the new rows already stored, with the live writer's rules: a trade once per (symbol,
  session, trade id), as the seen bitmaps (`KeySpace.seen`) and the session's stored ids say; an
  edit once per content (`KeySpace.seen_edits`). Edits are kept beside the trade they correct, as
  the live path keeps them; readers (candles, `effective_trades`) let the last edit replace it;
- write the session again as hour blocks in (exchange time, seq) order under new keys and switch
  the index in the same transaction (ZADD the new, ZREM the old; the old blocks expire a little
  later, so a reader that fetched the old index still finds them); the session's live entries move
  into the blocks (XDEL), except those of the stream's newest millisecond, which stay live as
  compaction leaves them; set the seen bit of every id (the live writer then refuses them too);
  drop the day's cached summary (`KeySpace.day_summary`); and where the candle streams already hold
  bars of that day, append the day's bars recomputed from the merged ticks (`day_candles`). What is
  new and in which order is decided without I/O in `session_rows`.

WATCH on everything read makes the transaction apply only if none of it changed (a recorder
sealing, another bulk writer); otherwise the session is merged again. So a SIGKILL at any moment
leaves each session either as it was or merged, and a rerun stores exactly what is missing.

The live writer keeps the bitmaps of the sessions it writes in memory. While a live writer holds a
symbol's lease (`KeySpace.writer_lease`; a recorder renews it with every batch, and gives it up when
it stops or 10 s after its last write) the bulk writer waits for it, and it holds the lease itself
while it merges that symbol: a live writer that takes the symbol back reloads its state from Valkey,
the bulk writer's bits included, so a trade it stored is never stored twice.

New rows of a session get seq = the session's highest seq + 1, 2, ... in (exchange time, file
order): reads keep them in file order within a millisecond, after what the session already held.
"""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import valkey

from tickvault.errors import StoreError
from tickvault.store.api import Store
from tickvault.store.block_codec import Columns, decode_block, encode_block
from tickvault.store.cluster import node_client, transaction
from tickvault.store.day_candles import DayCandles
from tickvault.store.sealing import HOUR_MS, BlockRef
from tickvault.store.seen_bits import CHUNK_MASK, SEEN_CHUNK_BITS
from tickvault.store.session_rows import (
    SessionDays,
    bits_set,
    chunks_of,
    concat,
    distinct,
    edit_mark,
    fresh_rows,
    held_of,
    numbered,
    ordered,
    row_range,
    session_bounds,
)
from tickvault.store.stream_codec import as_entries, columns_from_entries, columns_of, id_ms, raw_command
from tickvault.store.tick_writer import LEASE_MS
from tickvault.store.valkey_errors import map_valkey_errors

log = logging.getLogger("tickvault.bulk")

LEASE_OWNER = "tickvault-bulk"  # one name for every bulk writer: a killed one's lease is taken over at once
OLD_BLOCK_TTL_MS = 30_000  # replaced blocks stay readable this long for readers holding the old index
ROW_BYTES = 80  # memory of one buffered row (the 11 columns take 74 bytes)
_RELEASE = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"


@dataclass
class BulkResult:
    stored: int = 0
    duplicates: int = 0
    sessions: int = 0  # (symbol, session) pairs that took new rows
    candles: int = 0  # candle bar versions written for days that already had bars

    def add(self, other: BulkResult) -> None:
        self.stored += other.stored
        self.duplicates += other.duplicates
        self.sessions += other.sessions
        self.candles += other.candles


@dataclass
class _Existing:
    """What a session holds before the merge."""

    parts: list[Columns]  # rows of each block overlapping the session
    refs: list[BlockRef]
    live: Columns  # its live-stream entries
    live_ids: list[bytes]
    movable: np.ndarray  # live entries that go into blocks (older than the stream's newest ms)
    stream: bool  # whether the tick stream exists


@dataclass
class _Probe:
    """A session's state as one pipelined read finds it."""

    lease: bytes | None
    bitmaps: list[bytes | None]  # seen bitmaps of the new rows' chunks
    refs: list[BlockRef]
    live: bool  # live entries with ids in the session's range
    late: list[bytes]  # ids of live entries stored late whose exchange time is in the session
    top_ms: int  # the stream's newest id (ms; 0: empty)
    stream: bool
    edits: set[bytes]
    minute_bar: bool  # a 1m candle version written during the session


class BulkWriter:
    """Buffers tick columns per (symbol, session) and merges them into history blocks (see the module
    doc). `add` as the rows come, `flush` at the end (and it flushes by itself past `buffer_rows`)."""

    def __init__(self, store: Store, *, buffer_rows: int = 4_000_000, lease_wait_s: float = 30.0) -> None:
        self.store = store
        self.client = store.client
        self.keys = store.keys
        self.buffer_rows = max(1, buffer_rows)
        self.lease_wait_s = lease_wait_s
        self._buffer: dict[tuple[str, int], list[Columns]] = {}
        self._buffered = 0
        self._sessions = SessionDays()
        self._result = BulkResult()
        self._candles = DayCandles(self.client, self.keys)

    @property
    def buffered(self) -> int:
        return self._buffered

    def add(self, symbols: Sequence[str], code: np.ndarray, cols: Columns) -> None:
        """Rows in file order; `code[i]` indexes `symbols` for row i."""
        if not len(cols):
            return
        key = code.astype(np.int64) * 100_000_000 + self._sessions(cols.timestamp_ms)
        if key[0] == key[-1] and bool(np.all(key == key[0])):  # one symbol and session (a day's file)
            k = int(key[0])
            self._buffer.setdefault((symbols[k // 100_000_000], k % 100_000_000), []).append(cols)
            self._buffered += len(cols)
            if self._buffered >= self.buffer_rows:
                self._drain()
            return
        unique, inverse = np.unique(key, return_inverse=True)
        order = np.argsort(inverse, kind="stable")
        bounds = np.cumsum(np.bincount(inverse))[:-1]
        for k, rows in zip(unique.tolist(), np.split(order, bounds), strict=True):
            self._buffer.setdefault((symbols[k // 100_000_000], k % 100_000_000), []).append(cols.take(rows))
        self._buffered += len(cols)
        if self._buffered >= self.buffer_rows:
            self._drain()

    def flush(self) -> BulkResult:
        """Merge everything buffered; the counts of all merges since the last flush."""
        self._drain()
        result, self._result = self._result, BulkResult()
        return result

    def _drain(self) -> None:
        by_symbol: dict[str, list[int]] = {}
        for symbol, session in self._buffer:
            by_symbol.setdefault(symbol, []).append(session)
        self._candles.forget()
        with map_valkey_errors(), self._leases(sorted(by_symbol)):
            for symbol in sorted(by_symbol):
                for session in sorted(by_symbol[symbol]):
                    parts = self._buffer.pop((symbol, session))
                    new = Columns.concat(parts)
                    del parts
                    self._buffered -= len(new)
                    self._result.add(self._merge(symbol, session, new))

    # -- the symbols' writer leases ------------------------------------------------------------

    @contextlib.contextmanager
    def _leases(self, symbols: list[str]) -> Iterator[None]:
        """Hold the writer lease of every symbol of a drain (taken and given up in one round trip
        each: a file of thousands of instruments); a merge takes one again if it lapsed meanwhile."""
        if not symbols:
            yield
            return
        take = self.client.pipeline(transaction=False)
        take.sadd(self.keys.symbols(), *symbols)
        for symbol in symbols:
            take.set(self.keys.writer_lease(symbol), LEASE_OWNER, nx=True, px=LEASE_MS)
        try:
            for symbol, taken in zip(symbols, take.execute()[1:], strict=True):
                if not taken:
                    self._take_lease(symbol)  # someone holds it: ours again after a killed load, or wait
            yield
        finally:
            with contextlib.suppress(valkey.ValkeyError):  # they expire by themselves
                release = self.client.pipeline(transaction=False)
                for symbol in symbols:
                    release.execute_command("EVAL", _RELEASE, 1, self.keys.writer_lease(symbol), LEASE_OWNER)
                release.execute()

    def _take_lease(self, symbol: str) -> None:
        key = self.keys.writer_lease(symbol)
        deadline = time.monotonic() + self.lease_wait_s
        while True:
            if self.client.set(key, LEASE_OWNER, nx=True, px=LEASE_MS):
                return
            holder = self.client.get(key)
            if holder == LEASE_OWNER.encode() and self.client.pexpire(key, LEASE_MS):
                return
            if time.monotonic() > deadline:
                name = holder.decode() if holder else "?"
                raise StoreError(
                    f"{symbol} is being written live by {name!r} (lease {key}); a bulk load would race its "
                    "duplicate checks. Stop that recorder (or load this file with --via-bus) and retry"
                )
            time.sleep(0.05)

    # -- one session ---------------------------------------------------------------------------

    def _merge(self, symbol: str, session: int, new: Columns) -> BulkResult:
        for _ in range(100):
            pipe = transaction(self.client, self.keys.ticks(symbol))
            try:
                return self._merge_once(pipe, symbol, session, new)
            except valkey.WatchError:
                log.debug("bulk: %s %s changed while merging; merging again", symbol, session)
            finally:
                pipe.reset()
        raise StoreError(f"{symbol} {session}: kept changing during 100 merge attempts")

    def _merge_once(
        self, pipe: valkey.client.Pipeline, symbol: str, session: int, new: Columns
    ) -> BulkResult:
        keys, lo, hi = self.keys, *session_bounds(session)
        day = str(session)
        edits_key = keys.seen_edits(symbol, day)
        plain = ~new.is_edit
        seen_keys = {c: keys.seen(symbol, day, c) for c in chunks_of(new.trade_id[plain])}
        pipe.watch(keys.block_index(symbol), keys.ticks(symbol), keys.late(symbol), keys.writer_lease(symbol),
                   edits_key, *seen_keys.values())  # fmt: skip
        node = node_client(self.client, keys.ticks(symbol))
        probe = self._probe(node, symbol, lo, hi, list(seen_keys.values()), edits_key)  # one round trip
        if probe.lease != LEASE_OWNER.encode():
            self._take_lease(symbol)  # it lapsed (a slow merge): take it again, then merge again
            raise valkey.WatchError("lease retaken")
        bitmaps = dict(zip(seen_keys, probe.bitmaps, strict=True))
        known = plain & bits_set(new.trade_id, bitmaps)
        if known[plain].all() and not new.is_edit.any():
            return BulkResult(duplicates=len(new))  # all stored already: nothing to read or write
        old = self._existing(symbol, lo, hi, probe)
        held = held_of([*old.parts, old.live], lo, hi)
        more = {c: keys.seen(symbol, day, c) for c in chunks_of(held.ids) if c not in bitmaps}
        if more:  # the session's own ids in other bitmaps: watched too, they decide what is new
            pipe.watch(*more.values())
            bitmaps.update(zip(more, node.mget(list(more.values())), strict=True))
        unmarked = held.ids[~bits_set(held.ids, bitmaps)]  # stored without a seen bit (History.put)
        fresh = fresh_rows(new, known, unmarked, held.marks | probe.edits)
        if not len(fresh):
            return BulkResult(duplicates=len(new))
        fresh = numbered(fresh, held.seq)
        blocks, rewrite = self._rewrite(old, fresh)
        candles = self._candles.versions(
            pipe, symbol, session, [*old.parts, old.live, fresh], probe.minute_bar
        )
        pipe.multi()
        pipe.pexpire(keys.writer_lease(symbol), LEASE_MS)
        self._write_blocks(pipe, symbol, blocks, [old.refs[i] for i in rewrite])
        self._move_live(pipe, symbol, old)
        fresh_edits = {
            edit_mark(fresh.trade_id[i], fresh.timestamp_ms[i], fresh.price[i], fresh.quantity[i])
            for i in np.flatnonzero(fresh.is_edit).tolist()
        }
        self._mark_seen(pipe, symbol, day, np.concatenate([fresh.trade_id[~fresh.is_edit], unmarked]),
                        held.marks | fresh_edits)  # fmt: skip
        pipe.delete(keys.day_summary(symbol, day))
        for key, bars in candles:
            for fields, entry_id in bars:
                pipe.xadd(key, fields, id=entry_id)
        pipe.execute()
        written = sum(len(bars) for _, bars in candles)
        return BulkResult(stored=len(fresh), duplicates=len(new) - len(fresh), sessions=1, candles=written)

    @staticmethod
    def _rewrite(old: _Existing, fresh: Columns) -> tuple[Columns, list[int]]:
        """The rows to write as blocks, in order, and which old blocks they replace: only the hours
        that take rows (new ones, or live ones moving in); the session's other blocks stay."""
        moving = old.live.take(old.movable)
        hours = distinct(np.concatenate([fresh.timestamp_ms, moving.timestamp_ms]) // HOUR_MS)
        rewrite = [
            i for i, ref in enumerate(old.refs)
            if np.any((hours >= ref.first_ms // HOUR_MS) & (hours <= ref.last_ms // HOUR_MS))
        ]  # fmt: skip
        head = ordered(concat([*(old.parts[i] for i in rewrite), moving]))
        if not len(head):
            return fresh, rewrite
        if head.timestamp_ms[-1] <= fresh.timestamp_ms[0]:  # the usual load: new rows after the old
            return concat([head, fresh]), rewrite
        return ordered(concat([head, fresh])), rewrite

    def _move_live(self, pipe: valkey.client.Pipeline, symbol: str, old: _Existing) -> None:
        """The session's live entries that went into the blocks leave the stream (as sealing does)."""
        key = self.keys.ticks(symbol)
        if not old.stream:
            # the live writer reads the stream's state after every batch: once seen bits exist, a batch
            # of its that stores nothing must still find a stream (an empty one: created and emptied)
            pipe.xadd(key, {"created": "bulk"}, id="0-1")
            pipe.xdel(key, "0-1")
        moved = [old.live_ids[i] for i in np.flatnonzero(old.movable).tolist()]
        if moved:
            pipe.xdel(key, *moved)
            pipe.zrem(self.keys.late(symbol), *moved)

    def _probe(
        self, node: valkey.Valkey, symbol: str, lo: int, hi: int, seen: list[str], edits: str
    ) -> _Probe:
        """What decides a merge, read in one round trip (after WATCH: a change aborts the merge)."""
        keys, ticks = self.keys, self.keys.ticks(symbol)
        read = node.pipeline(transaction=False)
        read.get(keys.writer_lease(symbol))
        read.mget(seen) if seen else read.echo(b"")
        read.zrangebyscore(keys.block_index(symbol), lo, "+inf")
        read.xrange(ticks, min=str(lo), max=str(hi), count=1)
        read.zrangebyscore(keys.late(symbol), lo, hi)
        read.xrevrange(ticks, count=1)
        read.exists(ticks)
        read.smembers(edits)
        read.xrange(keys.candles("1m", symbol), min=str(lo), max=str(hi), count=1)
        lease, bitmaps, members, live, late, top, exists, marks, minute = read.execute()
        refs = [ref for ref in map(BlockRef.parse, members) if ref.first_ms <= hi]
        top_ms = int(top[0][0].split(b"-")[0]) if top else 0
        return _Probe(
            lease,
            bitmaps if seen else [],
            refs,
            bool(live),
            late,
            top_ms,
            bool(exists),
            set(marks),
            bool(minute),
        )

    def _existing(self, symbol: str, lo: int, hi: int, probe: _Probe) -> _Existing:
        """The session's blocks and live entries."""
        refs = probe.refs
        datas = self.client.mget([self.keys.block(symbol, r.block_id) for r in refs]) if refs else []
        parts = []
        for ref, data in zip(refs, datas, strict=True):
            if data is None:
                raise StoreError(f"{symbol}: block {ref.block_id} is indexed but missing")
            parts.append(decode_block(data))
        key = self.keys.ticks(symbol)
        raw = raw_command(self.client, key, "XRANGE", key, str(lo), str(hi)) if probe.live else []
        # entries stored late sit at ids past their time: those in range by id but not by time belong
        # elsewhere; those of this session found by the late index (as Store._live reads them)
        on_time = np.flatnonzero(columns_of(raw).timestamp_ms == id_ms(raw)) if raw else np.empty(0, int)
        entries = [raw[i] for i in on_time.tolist()]
        if probe.late:
            fetch = self.client.pipeline(transaction=False)
            for entry_id in probe.late:
                fetch.xrange(key, min=entry_id, max=entry_id)
            entries += [(entry_id, fields) for found in fetch.execute() for entry_id, fields in found]
        live = columns_from_entries(as_entries(entries)) if entries else Columns.empty()
        ids = [entry_id for entry_id, _ in entries]
        movable = np.array([int(i.split(b"-")[0]) < probe.top_ms for i in ids], np.bool_)
        return _Existing(parts, refs, live, ids, movable, probe.stream)

    def _write_blocks(
        self, pipe: valkey.client.Pipeline, symbol: str, cols: Columns, old: list[BlockRef]
    ) -> None:
        """Hour blocks of time-ordered `cols` under new keys; the old ones leave the index."""
        index = self.keys.block_index(symbol)
        hours = cols.timestamp_ms // HOUR_MS
        cuts = np.flatnonzero(np.diff(hours)) + 1
        for lo, hi in zip([0, *cuts.tolist()], [*cuts.tolist(), len(cols)], strict=True):
            part = row_range(cols, lo, hi)  # views: the rows are in time order, an hour is a run of them
            ref = BlockRef(
                int(part.timestamp_ms[0]), int(part.timestamp_ms[-1]), len(part), uuid.uuid4().hex[:12]
            )
            pipe.set(self.keys.block(symbol, ref.block_id), encode_block(part))
            pipe.zadd(index, {ref.member: ref.last_ms})
        if old:
            pipe.zrem(index, *[ref.member for ref in old])
            for ref in old:
                pipe.pexpire(self.keys.block(symbol, ref.block_id), OLD_BLOCK_TTL_MS)

    def _mark_seen(
        self, pipe: valkey.client.Pipeline, symbol: str, day: str, ids: np.ndarray, marks: set[bytes]
    ) -> None:
        """Seen bits for trade ids, marks for edits (OR: never clears a bit)."""
        chunks = chunks_of(ids)
        for c in chunks:
            offsets = (
                ids & CHUNK_MASK if len(chunks) == 1 else ids[(ids >> SEEN_CHUNK_BITS) == c] & CHUNK_MASK
            )
            flags = np.zeros(int(offsets.max()) + 1, np.bool_)
            flags[offsets] = True
            bitmap = np.packbits(flags)  # bit 0 of a byte is its high bit, as Valkey numbers them
            key = self.keys.seen(symbol, day, c)
            scratch = f"{key}:new"
            pipe.set(scratch, bitmap.tobytes())
            pipe.bitop("OR", key, key, scratch)
            pipe.delete(scratch)
        if marks:
            pipe.sadd(self.keys.seen_edits(symbol, day), *marks)

    # -- candles of days that already have bars ---------------------------------------------------
