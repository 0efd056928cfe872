"""History blocks in Valkey: sealing old ticks out of the live stream, and reading them back.

A block holds one hour slice of one symbol's ticks (see `blocks` for the format), at key
`tv:block:{SYMBOL}:{id}`; `tv:blocks:{SYMBOL}` is a sorted set indexing them by their newest
exchange time, member `"{first_ms}:{last_ms}:{rows}:{id}"`, so a range query fetches only the
blocks it overlaps. Sealing reads entries from the stream, writes their blocks and index entries and
deletes exactly those entries (XDEL, never a trim that could catch a newer one) in one MULTI/EXEC:
killed at any point, it leaves every tick either in the stream or in a block, never both or neither.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import numpy as np
import valkey

from tickvault.domain.keys import KeySpace
from tickvault.domain.tick_schema import stream_id
from tickvault.store.block_codec import Columns, decode_block, encode_block
from tickvault.store.cluster import transaction
from tickvault.store.stream_codec import columns_of, raw_command

HOUR_MS = 3_600_000


@dataclass(frozen=True)
class BlockRef:
    first_ms: int
    last_ms: int
    rows: int
    block_id: str

    @property
    def member(self) -> str:
        return f"{self.first_ms}:{self.last_ms}:{self.rows}:{self.block_id}"

    @classmethod
    def parse(cls, member: bytes | str) -> BlockRef:
        text = member.decode() if isinstance(member, bytes) else member
        first, last, rows, block_id = text.split(":", 3)
        return cls(int(first), int(last), int(rows), block_id)


def _ref(cols: Columns, block_id: str) -> BlockRef:
    return BlockRef(int(cols.timestamp_ms.min()), int(cols.timestamp_ms.max()), len(cols), block_id)


class History:
    def __init__(self, client: valkey.Valkey, keys: KeySpace) -> None:
        self.client = client
        self.keys = keys

    def seal(self, symbol: str, before_ms: int, *, max_entries: int = 500_000) -> int:
        """Move stream entries with ids older than `before_ms` into hour blocks; returns how many."""
        key = self.keys.ticks(symbol)
        entries = raw_command(self.client, key, "XRANGE", key, "-", f"({before_ms}", "COUNT", max_entries)
        if not entries:
            return 0
        ids = [entry_id for entry_id, _ in entries]
        cols = columns_of(entries)
        # time order inside a block (ties keep arrival order): compact deltas, simple reads
        cols = cols.take(np.argsort(cols.timestamp_ms, kind="stable"))
        hours = cols.timestamp_ms // HOUR_MS
        pipe = transaction(self.client, self.keys.ticks(symbol))
        for hour in np.unique(hours).tolist():
            part = cols.take(np.flatnonzero(hours == hour))
            ref = BlockRef(
                int(part.timestamp_ms[0]), int(part.timestamp_ms[-1]), len(part), uuid.uuid4().hex[:12]
            )
            pipe.set(self.keys.block(symbol, ref.block_id), encode_block(part))
            pipe.zadd(self.keys.block_index(symbol), {ref.member: ref.last_ms})
        pipe.xdel(key, *ids)
        pipe.zrem(self.keys.late(symbol), *ids)
        # chunks of the live copy whose ticks are all sealed now (ids are a prefix of the stream)
        last_ms, last_seq = stream_id(ids[-1])
        pipe.xtrim(self.keys.live_copy(symbol), minid=f"{last_ms}-{last_seq + 1}", approximate=False)
        pipe.execute()
        return len(ids)

    def _put(self, pipe: valkey.client.Pipeline, symbol: str, cols: Columns) -> None:
        hours = cols.timestamp_ms // HOUR_MS
        for hour in np.unique(hours).tolist():
            part = cols.take(np.flatnonzero(hours == hour))
            ref = _ref(part, uuid.uuid4().hex[:12])
            pipe.set(self.keys.block(symbol, ref.block_id), encode_block(part))
            pipe.zadd(self.keys.block_index(symbol), {ref.member: ref.last_ms})

    def put(self, symbol: str, cols: Columns) -> None:
        """Store already-validated, time-sorted columns straight into blocks (bulk loads, benchmarks):
        it bypasses the live stream and its duplicate checks."""
        pipe = transaction(self.client, self.keys.ticks(symbol))
        self._put(pipe, symbol, cols)
        pipe.execute()

    def refs(self, symbol: str, start_ms: int, end_ms: int) -> list[BlockRef]:
        """Blocks that may hold ticks in [start_ms, end_ms], oldest first."""
        members = self.client.zrangebyscore(self.keys.block_index(symbol), start_ms, "+inf")
        return [ref for ref in map(BlockRef.parse, members) if ref.first_ms <= end_ms]

    def read(self, symbol: str, start_ms: int, end_ms: int) -> Columns:
        """Sealed ticks with exchange time in [start_ms, end_ms], in block order."""
        refs = self.refs(symbol, start_ms, end_ms)
        if not refs:
            return Columns.empty()
        raw = self.client.mget([self.keys.block(symbol, ref.block_id) for ref in refs])
        parts = []
        for data in raw:
            if data is None:
                continue  # removed by a cleanup between the index read and this one
            cols = decode_block(data)
            ms = cols.timestamp_ms
            lo, hi = int(np.searchsorted(ms, start_ms, "left")), int(np.searchsorted(ms, end_ms, "right"))
            parts.append(cols.take(np.arange(lo, hi)) if (lo, hi) != (0, len(ms)) else cols)
        return Columns.concat(parts)

    def expire(self, symbol: str, cutoff_ms: int) -> int:
        """Drop sealed ticks older than `cutoff_ms` (a straddling block is rewritten); returns how many."""
        removed = 0
        for ref in self.refs(symbol, 0, cutoff_ms - 1):
            block_key = self.keys.block(symbol, ref.block_id)
            pipe = transaction(self.client, self.keys.ticks(symbol))
            pipe.zrem(self.keys.block_index(symbol), ref.member)
            if ref.last_ms < cutoff_ms:
                pipe.delete(block_key)
                removed += ref.rows
            else:
                data = self.client.get(block_key)
                if data is None:
                    continue
                cols = decode_block(data)
                keep = cols.take(np.flatnonzero(cols.timestamp_ms >= cutoff_ms))
                kept = BlockRef(
                    int(keep.timestamp_ms[0]), int(keep.timestamp_ms[-1]), len(keep), ref.block_id
                )
                pipe.set(block_key, encode_block(keep))
                pipe.zadd(self.keys.block_index(symbol), {kept.member: kept.last_ms})
                removed += ref.rows - len(keep)
            pipe.execute()
        # the live copy's chunks whose ticks are all older than the cutoff (trimmed from the stream)
        self.client.xtrim(self.keys.live_copy(symbol), minid=str(cutoff_ms), approximate=False)
        return removed

    def newest_ms(self, symbol: str) -> int | None:
        top = self.client.zrevrange(self.keys.block_index(symbol), 0, 0, withscores=True)
        return int(top[0][1]) if top else None
