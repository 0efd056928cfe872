"""Recorded order books as a market (`run --source store:START..END`), beside the recorded ticks.

Per symbol: first the book as it stood just before START (the stored book after its last complete
batch by then, `Store.book_snapshot_columns`) as one snapshot group (a clear, then every level or order, as
`analytics.book.snapshot_at` exports it), then the stored updates of the range (`Store.
book_update_columns`), a window at a time, cut into their batches at the LAST flags (a batch cut by
a window's end waits for the rest). The symbols are merged by exchange time (ties in the order the
symbols are named), and `by_time` merges the batches with the ticks (ties: ticks first). So the
namespace's book equals the live store's at every moment of the range. `seq` is left as stored:
ingest numbers the replay's updates afresh.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Iterator, Sequence
from typing import TypeVar

from tickvault.domain.book import BookBatch, BookColumns
from tickvault.store.api import Store

WINDOW_MS = 600_000  # ten minutes of one symbol's book at a time: memory stays bounded at book rates

T = TypeVar("T")


def by_time(*streams: Iterable[T]) -> Iterator[T]:
    """Time-ordered streams (of anything with a `timestamp_ms`) as one, ties in the streams' order."""
    return heapq.merge(*streams, key=lambda item: item.timestamp_ms)  # type: ignore[attr-defined]


def store_book_batches(
    store: Store, symbols: Sequence[str], start_ms: int, end_ms: int, window_ms: int = WINDOW_MS
) -> Iterator[BookBatch]:
    """The stored books of `symbols` over [start_ms, end_ms] as batches (see the module docstring)."""
    return by_time(*(_symbol_batches(store, s, start_ms, end_ms, window_ms) for s in symbols))


def _symbol_batches(
    store: Store, symbol: str, start_ms: int, end_ms: int, window_ms: int
) -> Iterator[BookBatch]:
    if store.book_position(symbol).kind is None:
        return
    opening = store.book_snapshot_columns(symbol, start_ms - 1)
    if opening is not None:
        yield BookBatch(opening.events())
    carry: BookColumns | None = None
    lo = start_ms
    while lo <= end_ms:
        hi = min(end_ms, lo + window_ms - 1)
        cols = store.book_update_columns(symbol, lo, hi)
        if carry is not None and len(carry):
            cols = BookColumns.concat([carry, cols]) if len(cols) else carry
        ends = cols.batch_ends()
        if ends.size:
            events = cols.take(slice(0, int(ends[-1]) + 1)).events()
            first = 0
            for end in ends.tolist():
                yield BookBatch(events[first : end + 1])
                first = end + 1
        carry = cols.take(slice(int(ends[-1]) + 1 if ends.size else 0, len(cols)))
        lo = hi + 1
