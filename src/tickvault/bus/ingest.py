"""Ingest: where a source hands over its events.

`on_tick` (and `on_book`, a batch of order-book updates) runs on the source's thread (ProfitDLL's
only callback thread), so it does the least it can:
stamp the per-topic sequence number (in place: ingest owns the tick objects it is given), call the
in-process handlers (the core flow, which works with ZeroMQ and Valkey off), and queue the tick for
the publisher. It never raises into the source: a
failing handler is logged and counted, and the other handlers and the publisher still get the tick.

A book batch gets two numbers, both per symbol and continuing across runs (`set_book_start`): each
update its `seq` (consecutive: the store's idempotency and gap checks follow them), and the batch a
frame number, the `seq` of its `BookFrame` on the book publisher (`book_{SYMBOL}`), which the bus's
ring, heartbeats and gap filling follow as they follow a tick's.
"""

from __future__ import annotations

import itertools
import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import msgspec

from tickvault.bus.publisher import Publisher
from tickvault.domain.book import BookBatch, BookFrame, BookKind, BookUpdate
from tickvault.domain.events import Tick
from tickvault.domain.keys import book_topic, tick_topic

log = logging.getLogger("tickvault.ingest")

TickHandler = Callable[[Tick], None]
BookHandler = Callable[[BookBatch], None]


@dataclass
class IngestStats:
    generated: Counter[str] = field(default_factory=Counter)
    handler_errors: int = 0
    book_updates: Counter[str] = field(default_factory=Counter)
    book_batches: Counter[str] = field(default_factory=Counter)
    book_empty: int = 0  # empty batches handed over: nothing to number, counted and dropped


class Ingest:
    def __init__(
        self,
        publisher: Publisher | None = None,
        handlers: list[TickHandler] | None = None,
        *,
        start_seq: dict[str, int] | None = None,
    ) -> None:
        """`start_seq[symbol]` is the last sequence number already used (e.g. the last stored), so
        numbering continues across restarts and a stored sequence without holes proves nothing was lost."""
        self.publisher = publisher
        self.handlers: list[TickHandler] = list(handlers or [])
        self._seq: dict[str, itertools.count[int]] = {}
        self.last_seq: dict[str, int] = {}
        self.set_start_seq(start_seq or {})
        self.stats = IngestStats()
        self.book_publisher: Publisher | None = None
        self.book_handlers: list[BookHandler] = []
        self.book_seq: dict[str, int] = {}  # symbol -> last update seq
        self.book_frame: dict[str, int] = {}  # symbol -> last frame number

    def set_start_seq(self, start_seq: dict[str, int]) -> None:
        """Continue numbering after `start_seq[symbol]` (call before the first tick of that symbol)."""
        for symbol, last in start_seq.items():
            self._seq[symbol] = itertools.count(last + 1)
            self.last_seq[symbol] = last

    def produced_seq(self) -> dict[str, int]:
        """Last sequence number of each symbol that produced ticks in this run."""
        return {s: n for s, n in self.last_seq.items() if self.stats.generated[s]}

    def add_handler(self, handler: TickHandler) -> None:
        self.handlers.append(handler)

    def set_book_start(self, start: dict[str, tuple[int, int]]) -> None:
        """Continue book numbering after `start[symbol] = (last frame, last update seq)` stored."""
        for symbol, (frame, seq) in start.items():
            self.book_frame[symbol] = frame
            self.book_seq[symbol] = seq

    def produced_book(self) -> dict[str, int]:
        """Last frame number of each symbol that produced book batches in this run."""
        return {s: n for s, n in self.book_frame.items() if self.stats.book_batches[s]}

    def on_book(self, batch: BookBatch) -> None:
        """Number one batch (its updates' seqs in place, its frame), hand it to the book handlers,
        queue its frame for the book publisher. Never raises into the source."""
        if not batch:
            self.stats.book_empty += 1
            return
        symbol = batch[0].symbol
        seq = self.book_seq.get(symbol, 0)
        for event in batch:  # ingest owns the events handed to it, as it owns ticks
            seq += 1
            msgspec.structs.force_setattr(event, "seq", seq)
        self.book_seq[symbol] = seq
        frame = self.book_frame[symbol] = self.book_frame.get(symbol, 0) + 1
        self.stats.book_updates[symbol] += len(batch)
        self.stats.book_batches[symbol] += 1
        for handler in self.book_handlers:
            try:
                handler(batch)
            except Exception:
                self.stats.handler_errors += 1
                log.exception("book handler %r failed", handler)
        if self.book_publisher is not None:
            kind: BookKind = "mbp" if type(batch[0]) is BookUpdate else "mbo"
            self.book_publisher.publish(
                book_topic(symbol), BookFrame(seq=frame, symbol=symbol, kind=kind, events=batch)
            )

    def on_tick(self, tick: Tick) -> None:
        counter = self._seq.get(tick.symbol)
        if counter is None:
            counter = self._seq[tick.symbol] = itertools.count(1)
        seq = next(counter)
        # Ingest owns the ticks handed to it: stamping in place costs 0.05 µs, a validated copy 6 µs.
        msgspec.structs.force_setattr(tick, "seq", seq)
        self.last_seq[tick.symbol] = seq
        self.stats.generated[tick.symbol] += 1
        for handler in self.handlers:
            try:
                handler(tick)
            except Exception:  # one broken handler must not stop the source or the others
                self.stats.handler_errors += 1
                log.exception("tick handler %r failed", handler)
        if self.publisher is not None:
            self.publisher.publish(tick_topic(tick.symbol), tick)
