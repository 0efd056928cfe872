"""The recorder: the only writer of market data to Valkey (the guide's "bridge").

It takes frames from the bus (or ticks handed over in-process when ZeroMQ is off), validates each,
and writes them in batches, one pipelined round trip per batch. A bad frame is rejected with its
reason, counted, and kept in the dead-letter stream; the valid ticks around it are all stored.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from tickvault.batch import TickWire, decode_frames
from tickvault.bus import Subscriber
from tickvault.errors import DataError, StoreError
from tickvault.events import Tick
from tickvault.keys import tick_topic
from tickvault.store import Store
from tickvault.writer import TickLike

log = logging.getLogger("tickvault.recorder")

MAX_BATCH = 5000
DEAD_LETTER_MAXLEN = 100_000
RETRY_SLEEP_S = 0.2


@dataclass
class RecorderStats:
    received: int = 0
    stored: Counter[str] = field(default_factory=Counter)
    duplicates: int = 0
    late: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    write_errors: int = 0
    last_seq: dict[str, int] = field(default_factory=dict)

    @property
    def stored_total(self) -> int:
        return sum(self.stored.values())

    @property
    def rejected_total(self) -> int:
        return sum(self.rejected.values())


class Recorder:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.stats = RecorderStats()
        self._lock = threading.Lock()

    # -- decoding --------------------------------------------------------------------------------

    def decode_frames(self, messages: Sequence[Sequence[bytes]]) -> list[TickWire]:
        """Valid ticks of a batch of `[topic, payload]` messages; the rest is rejected and counted."""
        self.stats.received += len(messages)
        decoded = decode_frames(messages)
        for bad in decoded.rejected:
            self.reject(bad.error, bad.frames)
        return decoded.ticks

    def reject(self, exc: DataError, frames: Sequence[bytes]) -> None:
        self.stats.rejected[exc.kind] += 1
        log.warning("rejected message: %s", exc)
        fields = {
            "reason": str(exc)[:500],
            "field": exc.kind,
            "topic": bytes(frames[0])[:200] if frames else b"",
            "payload": bytes(frames[-1])[:4096] if frames else b"",
            "received_ms": int(time.time() * 1000),
        }
        try:
            self.store.client.xadd(
                self.store.keys.dead_letters(), fields, maxlen=DEAD_LETTER_MAXLEN, approximate=True
            )
        except Exception as err:  # the dead-letter copy is best effort; the count above is not
            log.warning("could not keep rejected message: %s", err)

    # -- writing ---------------------------------------------------------------------------------

    def write(self, ticks: Sequence[TickLike], stop: threading.Event | None = None) -> bool:
        """Store a batch; while Valkey is unreachable keep retrying (until `stop`). True if stored."""
        if not ticks:
            return True
        while True:
            try:
                result = self.store.append_ticks(ticks)
                break
            except StoreError as exc:
                self.stats.write_errors += 1
                log.error("write of %d ticks failed, retrying: %s", len(ticks), exc)
                if stop is not None and stop.wait(RETRY_SLEEP_S):
                    return False
                if stop is None:
                    time.sleep(RETRY_SLEEP_S)
        with self._lock:
            self.stats.duplicates += result.duplicates
            self.stats.late += result.late
            self.stats.stored.update(result.stored_by_symbol)
            for tick in ticks:
                topic = tick_topic(tick.symbol)
                if tick.seq > self.stats.last_seq.get(topic, 0):
                    self.stats.last_seq[topic] = tick.seq
        return True

    # -- loops -----------------------------------------------------------------------------------

    def run(self, subscriber: Subscriber, stop: threading.Event) -> None:
        """Record from the bus until `stop` is set."""
        while not stop.is_set():
            messages = subscriber.receive(timeout_ms=50, max_messages=MAX_BATCH)
            if messages:
                self.write(self.decode_frames(messages), stop)

    def run_local(self, inbox: queue.SimpleQueue[Tick], stop: threading.Event) -> None:
        """Record ticks handed over in-process (ZeroMQ off) until `stop` is set and the inbox is empty."""
        while True:
            try:
                first = inbox.get(timeout=0.05)
            except queue.Empty:
                if stop.is_set():
                    return
                continue
            batch = [first]
            while len(batch) < MAX_BATCH:
                try:
                    batch.append(inbox.get_nowait())
                except queue.Empty:
                    break
            self.stats.received += len(batch)
            self.write(batch, stop)

    def caught_up(self, last_seq: dict[str, int]) -> bool:
        """True once every topic's sequence number in `last_seq` (symbol -> seq) has been written."""
        with self._lock:
            return all(self.stats.last_seq.get(tick_topic(s), 0) >= n for s, n in last_seq.items())
