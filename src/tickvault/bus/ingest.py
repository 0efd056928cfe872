"""Ingest: where a source hands over its events.

`on_tick` (and `on_book`, a batch of order-book updates) runs on the source's thread (ProfitDLL's
only callback thread), so it does the least it can:
stamp the per-topic sequence number (in place: ingest owns the tick objects it is given), call the
in-process handlers (the core flow, which works with ZeroMQ and Valkey off), and queue the tick for
the publisher. It never raises into the source: a
failing handler is logged and counted, and the other handlers and the publisher still get the tick.

A book batch's updates get their `seq`, per symbol, consecutive and continuing across runs
(`set_book_start`): the store's idempotency and gap checks follow them. The batch is queued as it is
for the book publisher, which joins the batches queued together into one `BookFrame` and numbers the
frames (`bus.book_framing`): the numbers the bus's ring, heartbeats and gap filling follow.
"""

from __future__ import annotations

import itertools
import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import msgspec

from tickvault.bus.publisher import Publisher
from tickvault.domain.book import BookBatch
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
        self._book_topics: dict[str, str] = {}

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

    def set_book_start(self, start: dict[str, int]) -> None:
        """Continue book numbering after `start[symbol]`, the last update seq stored."""
        self.book_seq.update(start)

    def produced_book(self) -> dict[str, int]:
        """Last update seq of each symbol that produced book batches in this run."""
        return {s: n for s, n in self.book_seq.items() if self.stats.book_batches[s]}

    def on_book(self, batch: BookBatch) -> None:
        """Number one batch's updates (their seqs, in place), hand it to the book handlers, queue it
        for the book publisher. Never raises into the source."""
        if not batch:
            self.stats.book_empty += 1
            return
        symbol = batch[0].symbol
        seq = self.book_seq.get(symbol, 0)
        stamp = msgspec.structs.force_setattr
        for event in batch:  # ingest owns the events handed to it, as it owns ticks
            seq += 1
            stamp(event, "seq", seq)
        self.book_seq[symbol] = seq
        stats = self.stats
        stats.book_updates[symbol] += len(batch)
        stats.book_batches[symbol] += 1
        for handler in self.book_handlers:
            try:
                handler(batch)
            except Exception:
                stats.handler_errors += 1
                log.exception("book handler %r failed", handler)
        if self.book_publisher is not None:
            topic = self._book_topics.get(symbol)
            if topic is None:
                topic = self._book_topics[symbol] = book_topic(symbol)
            self.book_publisher.publish(topic, batch)

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
