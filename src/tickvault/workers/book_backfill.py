"""The stored book for a features backfill: the book features at every tick time of a symbol, read from
the store an hour of ticks at a time (one `Store.book_replay`, from the newest snapshot before the
hour, then `analytics.book_features.book_feature_table` over all its ticks at once), so a backfill
over many sessions holds one hour of book updates, never a per-tick book read.
"""

from __future__ import annotations

import numpy as np

from tickvault.analytics.book_features import BookFeatureTable, book_feature_table
from tickvault.analytics.features import BookProvider
from tickvault.store.api import Store

CHUNK_MS = 3_600_000  # tick time covered by one read of the book


def store_book(store: Store, chunk_ms: int = CHUNK_MS) -> BookProvider:
    """A `backfill(..., book=)` provider reading `store`'s book; None for a symbol with none stored."""

    def provide(symbol: str, times_ms: np.ndarray) -> BookFeatureTable | None:
        if store.book_position(symbol).kind is None:
            return None
        times = np.asarray(times_ms, np.int64)
        parts = []
        start = 0
        while start < times.size:
            stop = int(np.searchsorted(times, times[start] + chunk_ms, side="left"))
            chunk = times[start:stop]
            # a tick at T reads the book of batches before T: from T - 1 back to the snapshot before it
            cols, _ = store.book_replay(symbol, int(chunk[0]) - 1, int(chunk[-1]) - 1)
            parts.append(book_feature_table(cols, chunk))
            start = stop
        return BookFeatureTable.concat(parts)

    return provide
