"""The book writer: whole batches of book updates, each stored once, many per stream entry.

One stream entry per write and symbol (not one per update: at book rates a Valkey would spend its
time on entries), id `<exchange ms>-<n>` like the tick stream's (the newest exchange time written,
never going back), fields readable in valkey-cli (`kind`, `first_seq`, `last_seq`, `updates`,
`batches`, `first_ms`, `last_ms`) and `data`, the rows packed by `book_codec`, in seq order.

- Idempotent on (symbol, seq): a bitmap of the update seqs stored (`tv:bookseen:{SYMBOL}:{chunk}`,
  1 bit per update). A batch any of whose seqs is stored is a duplicate and skipped whole (batches
  are atomic); so a batch re-sent after a crash, or a whole run replayed, is stored once.
- Snapshots: the writer keeps the newest stored snapshot and the rows after it, and stores the book
  after the write's last batch (`analytics.book.snapshot_at`) every SNAPSHOT_EVERY updates or
  SNAPSHOT_MS of exchange time, after a source's own snapshot (a session start), on its first write
  after (re)loading its state (a restart, a reconnect), and once a hole in the seqs is filled. While
  a hole is open the snapshot waits (up to HOLE_BOUND x SNAPSHOT_EVERY updates, then it is stored
  marked invalid). A snapshot is `tv:booksnap:{SYMBOL}:{seq}`, indexed in `tv:booksnaps:{SYMBOL}`.
- A write is one Lua script per symbol: the XADD first (if Valkey refuses it nothing else happens),
  then the bitmap bits, the snapshot, the position hash (`tv:bookpos:{SYMBOL}`: kind, highest frame
  and seq, newest time, updates stored). XINFO STREAM after it proves the entry landed where this
  writer expected; any surprise drops the cached state, so the caller's retry is decided against
  Valkey's own (the recorder re-sends its recent batches after any failure: idempotent).
- An entry holding updates older than the stream's newest (a gap filled late, a clock step back) is
  indexed in `tv:booklate:{SYMBOL}` by its oldest exchange time, so range reads still find it.

The writer must be the only writer of its symbols' books (a lease per symbol, as the tick writer's).
"""

from __future__ import annotations

import contextlib
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import valkey

from tickvault.analytics.book import snapshot_at, valid_through
from tickvault.domain.book import CLEAR, NO_SIDE, SNAPSHOT, BookColumns
from tickvault.domain.keys import KeySpace
from tickvault.domain.tick_schema import stream_id
from tickvault.errors import DataError, StoreError
from tickvault.store.book_codec import encode_columns
from tickvault.store.book_live import BookPosition, LiveSnapshot, live_rows, newest_snapshot, read_position
from tickvault.store.cluster import is_cluster, node_client, refresh
from tickvault.store.leases import SymbolLeases
from tickvault.store.seen_bits import SEEN_CHUNK_BITS, are_set, byte_and_mask, cached_bitmap, or_in, set_bits
from tickvault.store.valkey_errors import map_valkey_errors

LEASE_MS = 10_000
SNAPSHOT_EVERY = 10_000  # updates between stored snapshots: what a read of any moment replays at most
SNAPSHOT_MS = 60_000
HOLE_BOUND = 4

# Runs the commands given one after the other ([argc, arg...]...): the first error stops the rest, so
# an XADD sent first and refused leaves nothing else written (MULTI/EXEC would apply the rest).
_APPLY = """
local i = 1
while i <= #ARGV do
  local argc = tonumber(ARGV[i])
  redis.call(unpack(ARGV, i + 1, i + argc))
  i = i + argc + 1
end
return 1
"""


class BookPart(NamedTuple):
    """Whole batches of one symbol, each ending with a LAST row, and the highest bus frame number
    among them (0: not from the bus)."""

    cols: BookColumns
    last_frame: int = 0


@dataclass
class BookWriteResult:
    stored: int = 0  # updates
    batches: int = 0
    duplicates: int = 0  # updates in batches already stored
    snapshots: int = 0
    refused: list[tuple[str, int, DataError]] = field(default_factory=list)  # (symbol, updates, why)
    stored_by_symbol: Counter[str] = field(default_factory=Counter)


@dataclass
class _State:
    position: BookPosition
    last_ms: int = 0  # the stream's top id (a new stream's is the implicit 0-0)
    last_n: int = 0
    entries_added: int = 0
    exists: bool = False
    seen: dict[str, np.ndarray] = field(default_factory=dict)  # key -> bitmap bytes (Valkey bit order)
    base: BookColumns | None = None  # the newest stored snapshot
    base_valid: bool = True
    since: BookColumns | None = None  # rows after it, seq order
    due: bool = True  # a snapshot at the next write: the state was (re)loaded
    hole: bool = False  # the last snapshot waited for a hole to be filled


def _is_book_snapshot(cols: BookColumns) -> bool:
    """Whether the rows hold a source's snapshot group (a clear of the whole book flagged SNAPSHOT)."""
    return bool(np.any((cols.action == CLEAR) & (cols.side == NO_SIDE) & (cols.flags & SNAPSHOT > 0)))


class BookWriter:
    def __init__(
        self,
        client: valkey.Valkey,
        keys: KeySpace | None = None,
        *,
        owner: str | None = None,
        snapshot_every: int = SNAPSHOT_EVERY,
        snapshot_ms: int = SNAPSHOT_MS,
    ) -> None:
        self.client = client
        self.keys = keys or KeySpace(cluster=is_cluster(client))
        self.owner = owner or f"bookwriter-{uuid.uuid4().hex[:12]}"
        self.snapshot_every = snapshot_every
        self.snapshot_ms = snapshot_ms
        self._symbol_leases = SymbolLeases(
            client, self.keys.book_writer_lease, self.owner, LEASE_MS, subject="the book of {}"
        )
        self._state: dict[str, _State] = {}
        self._script = client.register_script(_APPLY)

    @contextlib.contextmanager
    def _reset_on_failure(self) -> Iterator[None]:
        with map_valkey_errors():
            try:
                yield
            except BaseException:
                self.reset()
                refresh(self.client)
                raise

    def reset(self) -> None:
        """Forget cached state; it is reloaded from Valkey on the next write."""
        self._state.clear()
        self._symbol_leases.forget()

    def release(self) -> None:
        """Give up this writer's leases (at a clean stop), so another writer need not wait."""
        self._symbol_leases.release()

    def _lease(self, symbol: str) -> None:
        if self._symbol_leases.hold(symbol):
            self._state.pop(symbol, None)  # someone else may have written meanwhile: reload

    def position(self, symbol: str) -> BookPosition:
        """What is stored of `symbol`'s book (from this writer's state when it has one)."""
        state = self._state.get(symbol)
        if state is not None:
            return state.position
        with map_valkey_errors():
            return read_position(self.client, self.keys, symbol)

    # -- state -----------------------------------------------------------------------------------

    def _load(self, symbol: str) -> _State:
        state = self._state.get(symbol)
        if state is not None:
            return state
        state = _State(read_position(self.client, self.keys, symbol))
        try:
            raw = self.client.execute_command("XINFO", "STREAM", self.keys.book(symbol))
            state.last_ms, state.last_n, state.entries_added = _parse_info(raw)
            state.exists = True
        except valkey.ResponseError:
            pass  # no stream yet
        snap: LiveSnapshot | None = newest_snapshot(self.client, self.keys, symbol)
        after_seq, from_ms = 0, 0
        if snap is not None:
            state.base, state.base_valid = snap.cols, snap.valid
            after_seq, from_ms = snap.seq, snap.ms
        rows = live_rows(self.client, self.keys, symbol, from_ms, after_seq)
        state.since = rows if rows is not None and len(rows) else None
        self._state[symbol] = state
        return state

    # -- writing ---------------------------------------------------------------------------------

    def write(self, parts: Sequence[BookPart]) -> BookWriteResult:
        """Store the batches of `parts` once each. Returns once Valkey applied them; on failure raises
        StoreError / StoreUnavailable and forgets its cached state (a retry is safe: idempotent)."""
        result = BookWriteResult()
        with self._reset_on_failure():
            by_symbol: dict[str, list[BookPart]] = {}
            for part in parts:
                if len(part.cols):
                    by_symbol.setdefault(part.cols.symbol, []).append(part)
            for symbol, group in by_symbol.items():
                self._write_symbol(symbol, group, result)
        return result

    def _write_symbol(self, symbol: str, group: list[BookPart], result: BookWriteResult) -> None:
        self._lease(symbol)
        state = self._load(symbol)
        kind = state.position.kind or group[0].cols.kind
        mine = []
        for part in group:
            if part.cols.kind != kind:
                why = DataError("kind", f"{symbol}'s book is {kind}; a batch of {part.cols.kind} updates")
                result.refused.append((symbol, len(part.cols), why))
            else:
                mine.append(part)
        if not mine:
            return
        cols = BookColumns.concat([p.cols for p in mine]) if len(mine) > 1 else mine[0].cols
        frame = max(p.last_frame for p in mine)
        commands: list[tuple[Any, ...]] = []
        kept = self._dedupe(symbol, state, cols, commands, result)
        expected = None
        if kept is not None:
            expected = self._entry(symbol, state, kept, commands)
            if self._snapshot_due(state, kept):
                self._snapshot(symbol, state, commands)
                result.snapshots += 1
            result.stored += len(kept)
            result.batches += int(kept.batch_ends().size)
            result.stored_by_symbol[symbol] += len(kept)
        new_symbol = state.position.kind is None
        pos = state.position
        pos.kind = kind
        pos.frame = max(pos.frame, frame)
        position = ("HSET", self.keys.book_position(symbol), "kind", kind, "frame", pos.frame, "seq", pos.seq)
        commands.append((*position, "ms", pos.ms, "updates", pos.updates))
        if new_symbol:
            self.client.sadd(self.keys.book_symbols(), symbol)  # another slot in a cluster: on its own
        self._apply(symbol, commands, expected)

    def _dedupe(
        self,
        symbol: str,
        state: _State,
        cols: BookColumns,
        commands: list[tuple[Any, ...]],
        result: BookWriteResult,
    ) -> BookColumns | None:
        """The batches of `cols` none of whose seqs is stored yet, in seq order; marks them stored."""
        ends = cols.batch_ends()
        if ends.size == 0 or ends[-1] != len(cols) - 1:
            raise DataError("flags", f"{symbol}: rows handed to the book writer must be whole batches")
        starts = np.r_[0, ends[:-1] + 1]
        seq = cols.seq
        chunk = seq >> SEEN_CHUNK_BITS
        seen = np.zeros(len(cols), bool)
        for c in np.unique(chunk).tolist():
            rows = np.flatnonzero(chunk == c)
            bitmap = cached_bitmap(self.client, state.seen, self.keys.book_seen(symbol, c))
            seen[rows] = are_set(bitmap, *byte_and_mask(seq[rows]))
        _, first = np.unique(seq, return_index=True)
        seen[np.setdiff1d(np.arange(len(cols)), first, assume_unique=True)] = True  # repeated in this write
        duplicate = np.logical_or.reduceat(seen, starts)
        result.duplicates += int(np.sum((ends - starts + 1)[duplicate]))
        if duplicate.all():
            return None
        keep = np.repeat(~duplicate, ends - starts + 1)
        kept = cols.take(keep) if not keep.all() else cols
        if np.any(np.diff(kept.seq) < 0):  # a gap filled after later batches: seq order in the entry
            kept = kept.take(np.argsort(kept.seq, kind="stable"))
        # mark the kept seqs (OR-ed in: seen_bits)
        k_seq = kept.seq
        k_chunk = k_seq >> SEEN_CHUNK_BITS
        for c in np.unique(k_chunk).tolist():
            key = self.keys.book_seen(symbol, c)
            lo, hi = set_bits(state.seen, key, *byte_and_mask(k_seq[k_chunk == c]))
            commands.extend(or_in(key, state.seen[key], lo, hi))
        return kept

    def _entry(
        self, symbol: str, state: _State, kept: BookColumns, commands: list[tuple[Any, ...]]
    ) -> tuple[int, int, int]:
        """The XADD of one entry holding `kept` (first of the commands); advances the state."""
        ts = kept.timestamp_ms
        first_ms, last_ms = int(ts.min()), int(ts.max())
        eff = max(last_ms, state.last_ms)
        n = state.last_n + 1 if eff == state.last_ms else 0
        entry_id = f"{eff}-{n}"
        first_seq, last_seq = int(kept.seq[0]), int(kept.seq[-1])
        fields = (
            ("kind", kept.kind),
            ("first_seq", first_seq),
            ("last_seq", last_seq),
            ("updates", len(kept)),
            ("batches", int(kept.batch_ends().size)),
            ("first_ms", first_ms),
            ("last_ms", last_ms),
            ("data", encode_columns(kept)),
        )
        commands.insert(0, ("XADD", self.keys.book(symbol), entry_id, *(x for pair in fields for x in pair)))
        if first_ms < state.last_ms or first_seq <= state.position.seq:
            commands.append(("ZADD", self.keys.book_late(symbol), first_ms, entry_id))
        state.last_ms, state.last_n = eff, n
        state.entries_added += 1
        state.exists = True
        pos = state.position
        pos.seq = max(pos.seq, last_seq)
        pos.ms = max(pos.ms, eff)
        pos.updates += len(kept)
        # the rows after the newest snapshot, in seq order (a late fill before it is not the book's now)
        base_seq = int(state.base.seq[-1]) if state.base is not None else -1
        newer = kept.take(kept.seq > base_seq) if kept.seq[0] <= base_seq else kept
        if len(newer):
            since = BookColumns.concat([state.since, newer]) if state.since is not None else newer
            if state.since is not None and newer.seq[0] < state.since.seq[-1]:
                since = since.take(np.argsort(since.seq, kind="stable"))
            state.since = since
        return eff, n, state.entries_added

    def _snapshot_due(self, state: _State, kept: BookColumns) -> bool:
        since = state.since
        if since is None or not len(since):
            return False
        base = state.base
        start = int(base.seq[-1]) if base is not None else int(since.seq[0]) - 1
        hole = bool(since.seq[0] > start + 1 or np.any(np.diff(since.seq) > 1))
        due = (
            state.due
            or (state.hole and not hole)
            or _is_book_snapshot(kept)
            or len(since) >= self.snapshot_every
            or (
                base is not None
                and int(since.timestamp_ms.max()) - int(base.timestamp_ms[0]) >= self.snapshot_ms
            )
        )
        if due and hole and len(since) < HOLE_BOUND * self.snapshot_every:
            state.hole = True  # wait for the fill (its rows would be missing from the snapshot)
            return False
        return due

    def _snapshot(self, symbol: str, state: _State, commands: list[tuple[Any, ...]]) -> None:
        assert state.since is not None
        rows = BookColumns.concat([state.base, state.since]) if state.base is not None else state.since
        stop = len(rows) - 1
        snap = snapshot_at(rows, stop)
        valid = valid_through(rows, stop, opening=state.base_valid)
        seq, ms = int(snap.seq[0]), int(snap.timestamp_ms[0])
        commands.append(("SET", self.keys.book_snapshot(symbol, seq), encode_columns(snap)))
        member = LiveSnapshot.member_of(ms, seq, valid, len(snap))
        commands.append(("ZADD", self.keys.book_snapshots(symbol), ms, member))
        state.base, state.base_valid, state.since = snap, valid, None
        state.due = state.hole = False

    def _apply(
        self, symbol: str, commands: list[tuple[Any, ...]], expected: tuple[int, int, int] | None
    ) -> None:
        key = self.keys.book(symbol)
        args: list[Any] = []
        for command in commands:
            args.append(len(command))
            args.extend(command)
        pipe = node_client(self.client, key).pipeline(transaction=False)
        self._script(keys=[key], args=args, client=pipe)
        if expected is not None:
            pipe.execute_command("XINFO", "STREAM", key)
        replies = pipe.execute()
        if expected is not None:
            got = _parse_info(replies[-1])
            if got != expected:
                raise StoreError(
                    f"{symbol}: after the write the book stream is at {got[0]}-{got[1]} with {got[2]} "
                    f"entries added, expected {expected[0]}-{expected[1]} with {expected[2]} "
                    "(restarted server, moved slot, or another writer); will reload and retry"
                )


def _parse_info(reply: Any) -> tuple[int, int, int]:
    """(last ms, last n, entries-added) from an XINFO STREAM reply (a flat list or a dict)."""
    info = reply if isinstance(reply, dict) else dict(zip(reply[::2], reply[1::2], strict=True))
    info = {(k.decode() if isinstance(k, bytes) else k): v for k, v in info.items()}
    ms, n = stream_id(info["last-generated-id"])
    return ms, n, int(info["entries-added"])
