"""Book history blocks: sealing old live book entries into zstd column blocks, reading them back.

A block is one `book_codec` frame at `tv:bookblock:{SYMBOL}:{id}`: a snapshot (the book before
its first update; `head` rows, flagged SNAPSHOT) then up to about BLOCK_ROWS updates in seq order,
so any moment inside it is one GET, one decode and a replay of at most that many rows away. The
index `tv:bookblocks:{SYMBOL}` scores blocks by their newest exchange time, member
`first_ms:last_ms:first_seq:last_seq:updates:head:valid:id` (`first_ms`: the head's time; `valid`:
whether the head was known in full).

Sealing cuts at the live snapshots the writer stored: every snapshot older than the live window
but the newest one becomes the head of a block holding the updates up to the next (consecutive
short segments merge up to BLOCK_ROWS); the newest snapshot older than the window stays live as
the start of what is still live. Blocks, index entries, the sealed entries and snapshots go in one
MULTI/EXEC: killed at any point, every update is live or sealed, never both or neither.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import numpy as np

from tickvault.analytics.book import snapshot_at, valid_through
from tickvault.domain.book import BookColumns
from tickvault.domain.keys import KeySpace
from tickvault.store.book_codec import BLOCK_LEVEL, decode_columns, encode_columns
from tickvault.store.book_live import (
    LiveSnapshot,
    delete_live,
    entry_columns,
    load_snapshot,
    snapshots,
)
from tickvault.store.cluster import transaction

BLOCK_ROWS = 10_000  # updates per block at most (a block is decoded whole to read any moment in it)
MAX_SEGMENTS = 500  # snapshot segments sealed per call (housekeeping comes back for the rest)


@dataclass(frozen=True)
class BookBlockRef:
    first_ms: int
    last_ms: int
    first_seq: int
    last_seq: int
    updates: int
    head: int  # rows of the head snapshot (0: the block starts without one)
    valid: bool
    block_id: str

    @property
    def member(self) -> str:
        return (
            f"{self.first_ms}:{self.last_ms}:{self.first_seq}:{self.last_seq}:{self.updates}:{self.head}:"
            f"{int(self.valid)}:{self.block_id}"
        )

    @classmethod
    def parse(cls, member: bytes | str) -> BookBlockRef:
        text = member.decode() if isinstance(member, bytes) else member
        first, last, first_seq, last_seq, updates, head, valid, block_id = text.split(":", 7)
        return cls(
            int(first),
            int(last),
            int(first_seq),
            int(last_seq),
            int(updates),
            int(head),
            valid == "1",
            block_id,
        )


def _ref(head: BookColumns | None, rows: BookColumns, valid: bool) -> BookBlockRef:
    times = [int(rows.timestamp_ms.min()), int(rows.timestamp_ms.max())] if len(rows) else []
    head_ms = int(head.timestamp_ms[0]) if head is not None else None
    first = min([t for t in (head_ms, *times[:1]) if t is not None])
    last = max([t for t in (head_ms, *times[1:]) if t is not None])
    seqs = (int(rows.seq[0]), int(rows.seq[-1])) if len(rows) else (0, 0)
    head_rows = len(head) if head is not None else 0
    return BookBlockRef(first, last, *seqs, len(rows), head_rows, valid, uuid.uuid4().hex[:12])


class BookHistory:
    def __init__(self, client: Any, keys: KeySpace) -> None:
        self.client = client
        self.keys = keys

    # -- sealing ---------------------------------------------------------------------------------

    def seal(self, symbol: str, before_ms: int) -> int:
        """Seal the live book updates older than the last live snapshot before `before_ms`; returns
        how many updates went into blocks."""
        live = snapshots(self.client, self.keys, symbol, "-inf", f"({before_ms}")
        if not live:
            return 0
        live = live[: MAX_SEGMENTS + 1]
        heads, keep = live[:-1], live[-1]  # `keep` stays live: the start of what is still live
        key = self.keys.book(symbol)
        entries = self.client.xrange(key, min="-", max=str(keep.ms))
        sealed = [(i, f) for i, f in entries if int(f.get(b"last_seq", b"0")) <= keep.seq]
        rows = entry_columns(sealed, symbol)
        if rows is None:
            rows = BookColumns.empty(symbol, "mbp")
        rows = rows.take(rows.seq <= keep.seq) if len(rows) and rows.seq[-1] > keep.seq else rows
        loaded = [load_snapshot(self.client, self.keys, symbol, s) for s in heads]
        pipe = delete_live(self.client, self.keys, symbol, [i for i, _ in sealed], heads)
        # the updates before the oldest snapshot have no head; then one segment per snapshot
        bounds = np.searchsorted(rows.seq, [s.seq for s in heads], side="right")
        cuts = [0, *bounds.tolist(), len(rows)]
        starts: list[LiveSnapshot | None] = [None, *loaded]
        i = 0
        while i < len(starts):
            if cuts[i + 1] == cuts[i] and starts[i] is None:
                i += 1
                continue
            j = i + 1  # merge the segments after it while the block stays within BLOCK_ROWS
            while j < len(starts) and cuts[j + 1] - cuts[i] <= BLOCK_ROWS and starts[j] is not None:
                j += 1
            head = starts[i]
            self._put(pipe, symbol, head.cols if head else None, rows.take(slice(cuts[i], cuts[j])), head)
            i = j
        pipe.execute()
        return len(rows)

    def _put(
        self,
        pipe: Any,
        symbol: str,
        head: BookColumns | None,
        rows: BookColumns,
        snap: LiveSnapshot | None,
    ) -> None:
        valid = snap.valid if snap is not None else True
        ref = _ref(head, rows, valid)
        parts = [p for p in (head, rows) if p is not None and len(p)]
        if not parts:
            return
        body = BookColumns.concat(parts) if len(parts) > 1 else parts[0]
        pipe.set(self.keys.book_block(symbol, ref.block_id), encode_columns(body, level=BLOCK_LEVEL))
        pipe.zadd(self.keys.book_blocks(symbol), {ref.member: ref.last_ms})

    # -- reading ---------------------------------------------------------------------------------

    def refs(self, symbol: str, start_ms: int, end_ms: int) -> list[BookBlockRef]:
        """Blocks that may hold updates in [start_ms, end_ms], oldest first."""
        found: list[BookBlockRef] = []
        offset = 0
        while True:  # by pages in time order, up to the first block that starts after end_ms
            page = self.client.zrangebyscore(
                self.keys.book_blocks(symbol), start_ms, "+inf", start=offset, num=256
            )
            refs = [BookBlockRef.parse(member) for member in page]
            found += [ref for ref in refs if ref.first_ms <= end_ms]
            if len(page) < 256 or refs[-1].first_ms > end_ms:
                break
            offset += len(page)
        return sorted(found, key=lambda r: (r.first_ms, r.last_ms))

    def queue_head(self, pipe: Any, symbol: str, at_ms: int) -> None:
        """Queue the two reads `head_from` picks the block of `at_ms` from (its replies)."""
        key = self.keys.book_blocks(symbol)
        pipe.zrangebyscore(key, at_ms, "+inf", start=0, num=2)
        pipe.zrevrangebyscore(key, f"({at_ms}", "-inf", start=0, num=2)

    def head_candidates(self, symbol: str, at_ms: int) -> list[Any]:
        pipe = self.client.pipeline(transaction=False)
        self.queue_head(pipe, symbol, at_ms)
        return list(pipe.execute())

    @staticmethod
    def head_from(replies: list[Any], at_ms: int) -> BookBlockRef | None:
        """The block whose head is the newest at or before `at_ms` (None: no block starts by then)."""
        found = [
            r for r in map(BookBlockRef.parse, [m for reply in replies for m in reply]) if r.first_ms <= at_ms
        ]
        return max(found, key=lambda r: (r.first_ms, r.first_seq), default=None)

    def queue_load(self, pipe: Any, symbol: str, refs: list[BookBlockRef]) -> None:
        """Queue the read of these blocks (one MGET: its reply goes to `loaded`)."""
        pipe.mget(
            [self.keys.book_block(symbol, ref.block_id) for ref in refs]
            or [self.keys.book_block(symbol, "-")]
        )

    @staticmethod
    def loaded(
        symbol: str, refs: list[BookBlockRef], raw: list[Any]
    ) -> list[tuple[BookBlockRef, BookColumns]]:
        """The blocks' columns (head included), in the order given; blocks removed meanwhile skipped."""
        return [
            (ref, decode_columns(data, symbol))
            for ref, data in zip(refs, raw, strict=False)
            if data is not None
        ]

    def load(self, symbol: str, refs: list[BookBlockRef]) -> list[tuple[BookBlockRef, BookColumns]]:
        if not refs:
            return []
        return self.loaded(
            symbol, refs, self.client.mget([self.keys.book_block(symbol, r.block_id) for r in refs])
        )

    def count(self, symbol: str) -> int:
        return sum(
            BookBlockRef.parse(m).updates for m in self.client.zrange(self.keys.book_blocks(symbol), 0, -1)
        )

    # -- retention -------------------------------------------------------------------------------

    def expire(self, symbol: str, cutoff_ms: int) -> int:
        """Drop sealed updates stamped before `cutoff_ms`; a block that straddles it is rewritten with
        a new head, the book just before its first kept update. Returns updates removed."""
        removed = 0
        for ref in self.refs(symbol, 0, cutoff_ms - 1):
            block_key = self.keys.book_block(symbol, ref.block_id)
            pipe = transaction(self.client, self.keys.book(symbol))
            pipe.zrem(self.keys.book_blocks(symbol), ref.member)
            if ref.last_ms < cutoff_ms:
                pipe.delete(block_key)
                removed += ref.updates
                pipe.execute()
                continue
            data = self.client.get(block_key)
            if data is None:
                continue
            cols = decode_columns(data, symbol)
            body = cols.take(slice(ref.head, len(cols)))
            ends = body.batch_ends()
            gone = ends[np.flatnonzero(body.timestamp_ms[ends] < cutoff_ms)]  # whole batches only
            if not gone.size:
                continue
            cut = int(gone[-1]) + ref.head  # the last row removed, in `cols`
            head = snapshot_at(cols, cut)
            valid = valid_through(cols, cut, opening=ref.valid or not ref.head)
            rows = cols.take(slice(cut + 1, len(cols)))
            removed += cut + 1 - ref.head
            pipe.delete(block_key)
            kept = LiveSnapshot(int(head.timestamp_ms[0]), int(head.seq[0]), valid, len(head), b"", head)
            self._put(pipe, symbol, head, rows, kept)
            pipe.execute()
        return removed

    def newest_ms(self, symbol: str) -> int | None:
        top = self.client.zrevrange(self.keys.book_blocks(symbol), 0, 0, withscores=True)
        return int(top[0][1]) if top else None
