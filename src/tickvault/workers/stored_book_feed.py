"""The stored book of one symbol, fed to a feature worker's engine in step with the stored ticks.

A feature worker follows the stored tick stream; the book features need, before a tick at T, every
stored book batch of effective time < T applied to the engine's live book, and none after (the rule
of `analytics.book_features`, which a backfill reads from the same store). The tick and book
recorders write independently, so a tick at T may be stored before the batches stamped before T:
`reached()` says how far the stored book has got (its newest stored exchange time, from
`tv:bookpos`), and the worker waits for it a bounded time.

`start(T)` rebuilds the live book as of just before T from the stored one (`Store.book_replay`: the
newest snapshot, then the updates after it), when the worker takes a symbol. `read(T)` then reads
the updates stored since (`Store.book_update_columns`, stamped from the newest time read on, seq
after the last read) and `feed_before(T)` hands the engine the complete batches among them of
effective time < T, in seq order. Known limit: an update stored late with a stamp older than what was
already read (an out-of-order feed, a gap filled late) is not read: its seq is missing, and the live
book counts a gap and is invalid until the next snapshot (`features_book_gaps`).
"""

from __future__ import annotations

import numpy as np

from tickvault.analytics.features import FeatureEngine
from tickvault.domain.book import BookColumns
from tickvault.store.api import Store


class StoredBookFeed:
    def __init__(self, store: Store, symbol: str, engine: FeatureEngine) -> None:
        self.store, self.symbol, self.engine = store, symbol, engine
        self.started = False
        self.fed_ms = -(2**62)  # the running maximum of the stamps handed over (the book's effective time)
        self.read_ms = -(2**62)  # updates stamped up to here, seq up to `read_seq`, have been read
        self.read_seq = 0
        # read, not handed over yet: the rows, where their batches end, each batch's effective time
        self._cols: BookColumns | None = None
        self._ends = np.empty(0, np.int64)
        self._effective = np.empty(0, np.int64)
        self._fed = 0  # batches of `_cols` handed over

    def start(self, at_ms: int) -> None:
        """The live book as of just before `at_ms`, from the store (nothing if none is stored)."""
        self.read_ms, self.started = at_ms, True
        if self.store.book_position(self.symbol).kind is None:
            return
        cols, _ = self.store.book_replay(self.symbol, at_ms - 1, at_ms - 1)
        ends = cols.batch_ends()
        if not ends.size:
            return
        self.engine.load_book(cols)
        stop = int(ends[-1]) + 1
        self.read_seq = int(cols.seq[stop - 1])
        self.fed_ms = self.read_ms = int(cols.timestamp_ms[:stop].max())

    def reached(self) -> int:
        """Up to when the stored book is known to hold every batch: its newest stored exchange time
        (a batch stamped before it is stored); with no book stored, every time (nothing to wait for)."""
        position = self.store.book_position(self.symbol)
        return position.ms if position.kind is not None else 2**62

    def read(self, t_ms: int) -> None:
        """Read the stored updates a tick at `t_ms` may need (stamped before it) not read yet."""
        if t_ms - 1 < self.read_ms:
            return
        cols = self.store.book_update_columns(self.symbol, self.read_ms, t_ms - 1)
        if self.read_seq:
            cols = cols.take(cols.seq > self.read_seq)
        self.read_ms = t_ms - 1
        if not len(cols):
            return
        self.read_seq = int(cols.seq.max())
        kept = self._unfed()
        cols = BookColumns.concat([kept, cols]) if kept is not None else cols
        self._cols, self._ends, self._fed = cols, cols.batch_ends(), 0
        self._effective = np.maximum.accumulate(np.maximum(cols.timestamp_ms, self.fed_ms))[self._ends]

    def _unfed(self) -> BookColumns | None:
        if self._cols is None:
            return None
        start = int(self._ends[self._fed - 1]) + 1 if self._fed else 0
        return self._cols.take(slice(start, len(self._cols))) if start < len(self._cols) else None

    def feed_before(self, t_ms: int) -> None:
        """Hand the engine the complete batches read of effective time < `t_ms`."""
        n = int(np.searchsorted(self._effective, t_ms, side="left"))
        if n <= self._fed or self._cols is None:
            return
        start = int(self._ends[self._fed - 1]) + 1 if self._fed else 0
        for event in self._cols.take(slice(start, int(self._ends[n - 1]) + 1)).events():
            self.engine.on_book(event)
        self._fed, self.fed_ms = n, int(self._effective[n - 1])
