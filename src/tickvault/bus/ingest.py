"""Ingest: where a source hands over its events.

`on_tick` runs on the source's thread (ProfitDLL's only callback thread), so it does the least it can:
stamp the per-topic sequence number (in place: ingest owns the tick objects it is given), call the
in-process handlers (the core flow, which works with ZeroMQ and Valkey off), and queue the tick for
the publisher. It never raises into the source: a
failing handler is logged and counted, and the other handlers and the publisher still get the tick.
"""

from __future__ import annotations

import itertools
import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import msgspec

from tickvault.bus.publisher import Publisher
from tickvault.domain.events import Tick
from tickvault.domain.keys import tick_topic

log = logging.getLogger("tickvault.ingest")

TickHandler = Callable[[Tick], None]


@dataclass
class IngestStats:
    generated: Counter[str] = field(default_factory=Counter)
    handler_errors: int = 0


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
