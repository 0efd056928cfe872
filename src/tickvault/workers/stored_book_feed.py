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

from dataclasses import dataclass, field

import numpy as np

from tickvault.analytics.features import FeatureEngine
from tickvault.domain.book import BookColumns
from tickvault.store.api import Store


@dataclass
class StoredBookFeed:
    store: Store
    symbol: str
    engine: FeatureEngine
    fed_seq: int = 0  # the last update handed to the engine
    fed_ms: int = -(2**62)  # the running maximum of the stamps handed over (the book's effective time)
    read_ms: int = -(2**62)  # updates stamped up to here, seq up to `read_seq`, have been read
    read_seq: int = 0
    buffer: list[BookColumns] = field(default_factory=list)  # read, not handed over yet
    started: bool = False

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
        self.fed_seq = self.read_seq = int(cols.seq[stop - 1])
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
        if len(cols):
            self.buffer.append(cols)
            self.read_seq = int(cols.seq.max())
        self.read_ms = t_ms - 1

    def feed_before(self, t_ms: int) -> None:
        """Hand the engine the complete batches read of effective time < `t_ms`."""
        if not self.buffer:
            return
        cols = BookColumns.concat(self.buffer) if len(self.buffer) > 1 else self.buffer[0]
        ends = cols.batch_ends()
        if not ends.size:
            return
        effective = np.maximum.accumulate(np.maximum(cols.timestamp_ms, self.fed_ms))[ends]
        n = int(np.searchsorted(effective, t_ms, side="left"))  # batches of effective time < t_ms
        if not n:
            return
        stop = int(ends[n - 1]) + 1
        for event in cols.take(slice(0, stop)).events():
            self.engine.on_book(event)
        self.fed_seq, self.fed_ms = int(cols.seq[stop - 1]), int(effective[n - 1])
        self.buffer = [cols.take(slice(stop, len(cols)))] if stop < len(cols) else []
