"""The live tail at block speed: a columnar copy of every recorded batch beside the tick stream.

`stream:ticks:{SYMBOL}` stays the contract (one entry per tick, every field a stream field), but
reading it back costs ~14 µs per entry. So the tick writer, in the same MULTI/EXEC as a batch's
XADDs, also appends the batch's columns to `tv:livecopy:{SYMBOL}` (same slot), a stream of chunks:

- entry id: the stream id of the batch's last XADDed tick (batches append in id order, so the chunk
  stream is in id order too and XTRIM MINID drops chunks whose ticks are all older);
- field `m`: `kind first_id prev_id added_before rows min_ts`: `first_id` the batch's first tick id,
  `prev_id` the tick stream's last id before it, `added_before` its entries-added counter before it;
- field `d`: the rows, in arrival (= id) order. Kind `r`: raw little-endian records (`RAW`, 74 bytes
  a row): what a single batch writes, cheap to make. Kind `b`: a zstd column block (`encode_block`,
  ~3-5 bytes a row): every `MERGE_ROWS` rows or `MERGE_BATCHES` batches the writer replaces its run
  of raw chunks by one block chunk in the transaction of the batch that completes it.

Only ticks the writer actually XADDs go into a chunk (a re-sent batch stores nothing new, so it adds
no rows). Stream ids are not stored: they follow from `prev_id` and the rows' exchange times by the
writer's own rule (`stream_ids`), and a chunk whose derived ids do not end at its entry id is refused.

Reading (`read_live`) trusts the copy only as far as it can prove it equals the stream, from one
MULTI/EXEC snapshot of the stream's XINFO and the chunks:

- the *chain*: the newest chunk must end at the stream's `last-generated-id` with its
  `entries-added`, and walking back each chunk must start where its predecessor ended (id and
  counter). So every entry added since the chain's first chunk is in the chain: a writer that wrote
  no copy (an older version, a hand XADD) breaks it, and the reader starts after the break;
- deletions: a prefix of the stream (sealing's XDEL of the oldest ids, XTRIM) removes nothing the
  reader still wants, rows below the stream's first entry are dropped. Any other deletion (the bulk
  ingest moving a session, retention removing old late entries) raises the stream's
  `max-deleted-entry-id`, and copy rows at or below it are not trusted.

Ids below the trusted boundary are read from the stream itself (XRANGE and the late index), as
before; the rest from the chunks. Nothing else needs to keep the copy in step: sealing and retention
trim it (XTRIM MINID) only to free memory. Extra memory per live tick: ~3-5 bytes once merged (plus
at most `MERGE_ROWS` raw rows of 74 bytes per symbol), against ~105 bytes for its stream entry.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import valkey

from tickvault.domain.keys import KeySpace
from tickvault.domain.tick_schema import COLUMN_DTYPES, COLUMNS, stream_id
from tickvault.store.block_codec import Columns, decode_block, encode_block
from tickvault.store.cluster import node_client
from tickvault.store.raw_resp import pack

log = logging.getLogger("tickvault.store")

MERGE_ROWS = 4096  # a run of raw chunks becomes one block chunk at this many rows ...
MERGE_BATCHES = 256  # ... or batches (the recorder's 2 ms batches are often a few ticks each)
RAW = np.dtype([(name, COLUMN_DTYPES[name].newbyteorder("<")) for name in COLUMNS])
Id = tuple[int, int]


def stream_ids(ms: np.ndarray, prev: Id) -> tuple[np.ndarray, np.ndarray]:
    """The stream ids (ms part, seq part) the tick writer gives rows with exchange times `ms`
    appended after the id `prev`: a tick never goes below the last id (a late one takes the current
    last ms), and ticks of one ms count up from 0 (from prev's seq + 1 in prev's ms)."""
    n = len(ms)
    eff = np.maximum.accumulate(np.maximum(ms, prev[0]))
    starts = np.r_[0, np.flatnonzero(np.diff(eff)) + 1]
    run = np.repeat(np.arange(len(starts)), np.diff(np.r_[starts, n]))
    seq = np.arange(n) - starts[run]
    seq += np.where(eff == prev[0], prev[1] + 1, 0)
    return eff, seq


def _id_text(entry: Id) -> str:
    return f"{entry[0]}-{entry[1]}"


def raw_rows(cols: Columns) -> bytes:
    records = np.empty(len(cols), RAW)
    for name in COLUMNS:
        records[name] = getattr(cols, name)
    return records.tobytes()


def _from_raw(data: bytes) -> Columns:
    records = np.frombuffer(data, RAW)
    return Columns(**{name: np.ascontiguousarray(records[name], COLUMN_DTYPES[name]) for name in COLUMNS})


# -- writing (called by the tick writer while it builds a batch's transaction) ---------------------


@dataclass
class _Run:
    """The writer's raw chunks not merged yet: where the run started, its chunk ids and rows."""

    first: Id
    prev: Id
    added_before: int
    ids: list[str] = field(default_factory=list)
    parts: list[Columns] = field(default_factory=list)
    rows: int = 0
    last: Id = (0, 0)  # where the run ends: the next batch continues it only from exactly there
    added_after: int = 0


class CopyRun:
    """One symbol's copy state inside the tick writer (dropped with the writer's cached state: the
    run's raw chunks then simply stay raw)."""

    def __init__(self) -> None:
        self._run: _Run | None = None

    def commands(
        self, key: str, cols: Columns, first: Id, last: Id, prev: Id, added_before: int
    ) -> list[bytes]:
        """RESP commands that add the chunk of a batch whose rows `cols` were XADDed with ids
        `first`..`last` after the stream's `prev` id and `added_before` entries."""
        run = self._run
        if run is None or (run.last, run.added_after) != (prev, added_before):
            # a new run; one not continued (entries came between) stays as its raw chunks
            run = self._run = _Run(first, prev, added_before)
        run.parts.append(cols)
        run.rows += len(cols)
        run.last, run.added_after = last, added_before + len(cols)
        entry = _id_text(last)
        if run.rows < MERGE_ROWS and len(run.parts) < MERGE_BATCHES:
            run.ids.append(entry)
            return [_chunk(key, entry, "r", first, prev, added_before, cols, raw_rows(cols))]
        self._run = None
        merged = Columns.concat(run.parts)
        out = [pack(("XDEL", key, *run.ids))] if run.ids else []
        data = encode_block(merged, level=1)
        out.append(_chunk(key, entry, "b", run.first, run.prev, run.added_before, merged, data))
        return out


def _chunk(
    key: str, entry: str, kind: str, first: Id, prev: Id, added_before: int, cols: Columns, data: bytes
) -> bytes:
    low = int(cols.timestamp_ms.min())
    meta = f"{kind} {_id_text(first)} {_id_text(prev)} {added_before} {len(cols)} {low}"
    return pack(("XADD", key, entry, "m", meta, "d", data))


# -- reading ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Chunk:
    last: Id
    kind: bytes
    first: Id
    prev: Id
    added_before: int
    rows: int
    min_ts: int
    data: bytes

    @classmethod
    def parse(cls, entry_id: bytes, fields: dict[bytes, bytes]) -> _Chunk:
        kind, first, prev, added, rows, min_ts = fields[b"m"].split()
        return cls(stream_id(entry_id), kind, stream_id(first), stream_id(prev), int(added), int(rows),
                   int(min_ts), fields[b"d"])  # fmt: skip


@dataclass(frozen=True)
class LiveTail:
    """What `read_live` found: the copy's rows of [start, end] with ids at or past `boundary`, and
    the late-index ids of [start, end] (for the rows below the boundary, read from the stream)."""

    boundary: Id | None  # None: the copy covers nothing; everything comes from the stream
    on_time: Columns  # copy rows stored at their own time, in id order
    late: Columns  # copy rows stored late
    late_ids: list[bytes]  # their stream ids (text), for ordering beside the stream's late entries
    index: list[bytes]  # late-index members with exchange time in [start, end]
    empty: bool  # no live stream at all


def _info(reply: Any) -> dict[bytes, Any]:
    return dict(zip(reply[::2], reply[1::2], strict=True))


def _after(ms: np.ndarray, seq: np.ndarray, bound: Id) -> np.ndarray:
    """Rows whose id (ms, seq) is >= bound."""
    found: np.ndarray = (ms > bound[0]) | ((ms == bound[0]) & (seq >= bound[1]))
    return found


def read_live(client: Any, keys: KeySpace, symbol: str, start_ms: int, end_ms: int) -> LiveTail:
    key, copy_key, late_key = keys.ticks(symbol), keys.live_copy(symbol), keys.late(symbol)
    pipe = node_client(client, key).pipeline(transaction=True)  # one snapshot of stream and copy
    pipe.execute_command("XINFO", "STREAM", key)
    pipe.execute_command("XRANGE", copy_key, str(start_ms), "+")
    pipe.execute_command("ZRANGEBYSCORE", late_key, str(start_ms), str(end_ms))
    info_reply, chunks_reply, index = pipe.execute(raise_on_error=False)
    for reply in (chunks_reply, index):
        if isinstance(reply, Exception):
            raise reply
    nothing = LiveTail(None, Columns.empty(), Columns.empty(), [], list(index), False)
    if isinstance(info_reply, valkey.ResponseError):
        return LiveTail(None, Columns.empty(), Columns.empty(), [], [], True)  # no stream
    if isinstance(info_reply, Exception):
        raise info_reply
    info = _info(info_reply)
    if int(info[b"length"]) == 0:
        return LiveTail(None, Columns.empty(), Columns.empty(), [], [], True)
    chain = _chain(chunks_reply, stream_id(info[b"last-generated-id"]), int(info[b"entries-added"]))
    if not chain:
        return nothing
    deleted = stream_id(info[b"max-deleted-entry-id"])
    boundary = max(chain[0].first, (deleted[0], deleted[1] + 1))
    first_entry = info[b"first-entry"]
    keep_from = max(boundary, stream_id(first_entry[0])) if first_entry else boundary
    # a suffix of chunks that cannot hold rows <= end_ms is skipped (only a suffix: ids are derived
    # along the chain from its first chunk)
    while chain and chain[-1].min_ts > end_ms:
        chain.pop()
    if not chain:
        return LiveTail(boundary, Columns.empty(), Columns.empty(), [], list(index), False)
    cols = _decode(chain)
    ms, seq = stream_ids(cols.timestamp_ms, chain[0].prev)
    ends = np.cumsum([c.rows for c in chain]) - 1
    if len(cols) != int(ends[-1]) + 1 or any(
        (int(ms[e]), int(seq[e])) != c.last or (int(ms[e - c.rows + 1]), int(seq[e - c.rows + 1])) != c.first
        for e, c in zip(ends.tolist(), chain, strict=True)
    ):
        log.warning("%s: the live copy does not match its stream ids; reading the stream", symbol)
        return nothing
    ts = cols.timestamp_ms
    wanted = _after(ms, seq, keep_from) & (ts >= start_ms) & (ts <= end_ms)
    late = wanted & (ts != ms)
    on_time = wanted & ~late
    late_rows = np.flatnonzero(late)
    pairs = zip(ms[late_rows].tolist(), seq[late_rows].tolist(), strict=True)
    late_ids = [f"{m}-{s}".encode() for m, s in pairs]
    return LiveTail(
        boundary,
        cols if on_time.all() else cols.take(np.flatnonzero(on_time)),
        cols.take(late_rows),
        late_ids,
        list(index),
        False,
    )


def _chain(reply: Sequence[Any], last: Id, added: int) -> list[_Chunk]:
    """The chunks proven to hold every entry added to the stream since the first of them."""
    chunks = [_Chunk.parse(entry_id, fields) for entry_id, fields in reply]
    end = next(
        (i for i in range(len(chunks) - 1, -1, -1)
         if chunks[i].last == last and chunks[i].added_before + chunks[i].rows == added),
        None,
    )  # fmt: skip
    if end is None:
        return []
    head = end
    while head > 0:
        before, this = chunks[head - 1], chunks[head]
        if before.last != this.prev or before.added_before + before.rows != this.added_before:
            break
        head -= 1
    return chunks[head : end + 1]


def _decode(chain: list[_Chunk]) -> Columns:
    parts: list[Columns] = []
    raw: list[bytes] = []
    for chunk in chain:
        if chunk.kind == b"r":
            raw.append(chunk.data)
            continue
        if raw:
            parts.append(_from_raw(b"".join(raw)))
            raw = []
        parts.append(decode_block(chunk.data))
    if raw:
        parts.append(_from_raw(b"".join(raw)))
    return Columns.concat(parts)
