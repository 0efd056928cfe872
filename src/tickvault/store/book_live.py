"""The live part of a stored book, read back: its position, its snapshots, its stream entries.

What `book_writer` writes (see its docstring and README "Data in Valkey"): `stream:book:{SYMBOL}`
entries of packed rows, `tv:booksnaps:{SYMBOL}` (snapshots by exchange time, member
`ms:seq:valid:rows`) with one `tv:booksnap:{SYMBOL}:{seq}` each, `tv:booklate:{SYMBOL}` (entries
stored after newer ones, by their oldest exchange time) and `tv:bookpos:{SYMBOL}`. Readers
(`book_reader`), sealing (`book_sealing`) and the writer's own restart read them through here.

Which entries hold the updates stamped in [lo, hi]: an entry's id is the newest exchange time
written so far, so every such update sits in an entry with id in [lo, hi], in the first entry after
hi (its other updates are newer), or in an entry indexed as late.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from tickvault.domain.book import BookColumns, BookKind
from tickvault.domain.keys import KeySpace
from tickvault.store.book_codec import decode_columns
from tickvault.store.cluster import node_client, transaction

Entry = tuple[bytes, dict[bytes, bytes]]


@dataclass
class BookPosition:
    """What is stored of a symbol's book: its kind (None: nothing yet), the highest bus frame and
    update seq, the newest exchange time, how many updates were written, and the retention floor
    (updates stamped before it are gone, or hidden where they share a live entry with newer ones)."""

    kind: BookKind | None = None
    frame: int = 0
    seq: int = 0
    ms: int = 0
    updates: int = 0
    floor: int = 0


def read_position(client: Any, keys: KeySpace, symbol: str) -> BookPosition:
    raw = {k.decode(): v.decode() for k, v in client.hgetall(keys.book_position(symbol)).items()}
    if not raw:
        return BookPosition()
    kind: BookKind | None = "mbo" if raw.get("kind") == "mbo" else "mbp" if raw.get("kind") == "mbp" else None
    numbers = [int(raw.get(name, 0)) for name in ("frame", "seq", "ms", "updates", "floor")]
    return BookPosition(kind, *numbers)


@dataclass
class LiveSnapshot:
    """A stored snapshot: the book after update `seq`, at exchange time `ms`; `valid` when that book
    was known in full (no gap since a clear of each side). `cols` once loaded."""

    ms: int
    seq: int
    valid: bool
    rows: int
    member: bytes
    cols: BookColumns | None = None

    @staticmethod
    def member_of(ms: int, seq: int, valid: bool, rows: int) -> str:
        return f"{ms}:{seq}:{int(valid)}:{rows}"

    @classmethod
    def parse(cls, member: bytes) -> LiveSnapshot:
        ms, seq, valid, rows = member.decode().split(":")
        return cls(int(ms), int(seq), valid == "1", int(rows), member)


def snapshots(
    client: Any, keys: KeySpace, symbol: str, lo: Any = "-inf", hi: Any = "+inf"
) -> list[LiveSnapshot]:
    """The live snapshots with exchange time in [lo, hi], oldest first (one per seq)."""
    found = [LiveSnapshot.parse(m) for m in client.zrangebyscore(keys.book_snapshots(symbol), lo, hi)]
    by_seq = {s.seq: s for s in found}  # a write retried after a failure may have indexed it twice
    return sorted(by_seq.values(), key=lambda s: (s.ms, s.seq))


def load_snapshot(client: Any, keys: KeySpace, symbol: str, snap: LiveSnapshot) -> LiveSnapshot | None:
    data = client.get(keys.book_snapshot(symbol, snap.seq))
    if data is None:
        return None  # sealed (or expired) between the index read and this one
    snap.cols = decode_columns(data, symbol)
    return snap


def snapshot_before(client: Any, keys: KeySpace, symbol: str, at_ms: int) -> LiveSnapshot | None:
    """The newest live snapshot at or before `at_ms`, loaded (None: none is live)."""
    found = client.zrevrangebyscore(keys.book_snapshots(symbol), at_ms, "-inf", start=0, num=4)
    for member in sorted(found, key=lambda m: tuple(int(x) for x in m.split(b":")[:2]), reverse=True):
        loaded = load_snapshot(client, keys, symbol, LiveSnapshot.parse(member))
        if loaded is not None:
            return loaded
    return None


def newest_snapshot(client: Any, keys: KeySpace, symbol: str) -> LiveSnapshot | None:
    return snapshot_before(client, keys, symbol, 2**62)


def queue_live(pipe: Any, keys: KeySpace, symbol: str, lo_ms: int, hi_ms: int | None) -> None:
    """Queue on `pipe` the three reads of `live_entries` (their replies go to `finish_live`)."""
    key = keys.book(symbol)
    pipe.xrange(key, min=str(lo_ms), max="+" if hi_ms is None else str(hi_ms))
    pipe.xrange(key, min=str(hi_ms + 1 if hi_ms is not None else "+"), max="+", count=1)
    pipe.zrangebyscore(keys.book_late(symbol), "-inf", "+inf" if hi_ms is None else hi_ms)


def finish_live(client: Any, keys: KeySpace, symbol: str, replies: list[Any]) -> list[Entry]:
    """The entries from the replies of `queue_live`, with the late ones they name, once each."""
    in_range, after, late_ids = replies
    entries: dict[bytes, dict[bytes, bytes]] = dict([*in_range, *after])
    missing = [i for i in late_ids if i not in entries]
    if missing:
        pipe = node_client(client, keys.book(symbol)).pipeline(transaction=False)
        for entry_id in missing:
            pipe.xrange(keys.book(symbol), min=entry_id, max=entry_id)
        entries.update(e for found in pipe.execute() for e in found)
    return list(entries.items())


def live_entries(
    client: Any, keys: KeySpace, symbol: str, lo_ms: int, hi_ms: int | None = None
) -> list[Entry]:
    """Every live entry that may hold updates stamped in [lo_ms, hi_ms] (None: to the end), once each,
    in stream order (see the module docstring)."""
    pipe = node_client(client, keys.book(symbol)).pipeline(transaction=False)
    queue_live(pipe, keys, symbol, lo_ms, hi_ms)
    return finish_live(client, keys, symbol, pipe.execute())


def entry_columns(entries: list[Entry], symbol: str) -> BookColumns | None:
    """The rows of `entries`, in seq order (None when there are none)."""
    parts = [decode_columns(fields[b"data"], symbol) for _, fields in entries if b"data" in fields]
    parts = [p for p in parts if len(p)]
    if not parts:
        return None
    cols = BookColumns.concat(parts) if len(parts) > 1 else parts[0]
    if np.any(np.diff(cols.seq) < 0):
        cols = cols.take(np.argsort(cols.seq, kind="stable"))
    return cols


def live_rows(
    client: Any, keys: KeySpace, symbol: str, from_ms: int, after_seq: int, to_ms: int | None = None
) -> BookColumns | None:
    """Live updates with seq > `after_seq` from the entries that may hold times [from_ms, to_ms], in
    seq order (a reader cuts at its time itself: whole entries come back)."""
    cols = entry_columns(live_entries(client, keys, symbol, from_ms, to_ms), symbol)
    if cols is None or not after_seq:
        return cols
    return cols.take(cols.seq > after_seq) if cols.seq[0] <= after_seq else cols


def kind_of(client: Any, keys: KeySpace, symbol: str) -> BookKind | None:
    return read_position(client, keys, symbol).kind


def delete_live(
    client: Any, keys: KeySpace, symbol: str, entry_ids: list[bytes], snaps: list[LiveSnapshot]
) -> Any:
    """A transaction (not yet executed) that removes these entries and snapshots."""
    pipe = transaction(client, keys.book(symbol))
    if entry_ids:
        pipe.xdel(keys.book(symbol), *entry_ids)
        pipe.zrem(keys.book_late(symbol), *entry_ids)
    for snap in snaps:
        pipe.delete(keys.book_snapshot(symbol, snap.seq))
        pipe.zrem(keys.book_snapshots(symbol), snap.member)
    return pipe
