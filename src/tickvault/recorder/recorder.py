"""The recorder: the only writer of market data to Valkey (the guide's "bridge").

Two threads. The receiver takes frames from the bus or ticks handed over in-process (ZeroMQ off),
validates them column-wise, and queues the valid ones in a spool: memory up to a bound, then a local
file, so a slow or absent Valkey costs disk, never ticks. A bad frame is rejected with its reason,
counted, and kept in the dead-letter stream; the ticks around it go on, and its `seq` counts for
nothing. Only the valid ticks' numbers go to the Subscriber (`ordered=False`), which fills a gap
beside the receiver; what a fill fetches is validated and queued when it comes. Storing waits for a
fill at most FILL_HOLD_S, and no valid tick is dropped for its number: a repeat is made harmless by
the idempotent write (symbol, session, trade id), so a publisher that restarts or numbers its own way
loses nothing. The writer takes batches from the spool and stores each in one round trip,
idempotently; while Valkey is unreachable it retries with backoff, and once a write has failed it
first re-sends the batches of the last few seconds, which a restarted Valkey may have lost from its
append-only file (fsync every second). At stop, whatever Valkey did not take stays in the spool file
for next time."""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from tickvault.bus.spool import Spool
from tickvault.bus.subscriber import Subscriber
from tickvault.domain.keys import tick_topic
from tickvault.errors import DataError, StoreError
from tickvault.recorder.frames import TickWire, decode_frames
from tickvault.store.api import Store
from tickvault.store.tick_writer import TickLike

log = logging.getLogger("tickvault.recorder")

MAX_BATCH = 5000
LINGER_MS = 2.0  # gather a batch for up to 2 ms: per-batch costs dominate tiny batches
HOUSEKEEPING_S = 60.0
LIVE_WINDOW_MS = 300_000  # the live stream keeps 5 minutes for stream consumers; older is sealed
ARRIVAL_GRAIN_S = 0.01  # store_lag_ms resolution
RETAIN_S = 5.0  # > the 1 s (at worst 2 s) of writes an append-only file with fsync everysec can lose
BACKOFF_S = (0.05, 2.0)
FILL_WAIT_S = 5.0  # at stop, gap fills under way get this long (a live replay ring answers in ms)
FILL_HOLD_S = 1.0  # live ticks wait at most this long for a gap fill under way (see _queue_live)

_wire_decoder = msgspec.json.Decoder(TickWire)


@dataclass
class RecorderStats:
    received: int = 0
    stored: Counter[str] = field(default_factory=Counter)
    duplicates: int = 0
    late: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    write_errors: int = 0
    rewritten: int = 0
    expired: int = 0
    sealed: int = 0
    last_seq: dict[str, int] = field(default_factory=dict)

    @property
    def stored_total(self) -> int:
        return sum(self.stored.values())

    @property
    def rejected_total(self) -> int:
        return sum(self.rejected.values())


class Recorder:
    def __init__(
        self,
        store: Store,
        *,
        spool_path: Path | None = None,
        max_memory: int = 1_000_000,
        retention_days: float = 0,
        live_ms: int = LIVE_WINDOW_MS,
        stream_max_len: int = 0,
        housekeeping_s: float = HOUSEKEEPING_S,
    ) -> None:
        """Every minute, for each symbol it writes: seal ticks older than `live_ms` before the newest
        (and past `stream_max_len` live entries) into history blocks, then drop what is older than
        `retention_days` (> 0) before the newest. Sealed ticks are still found by every query."""
        self.store = store
        self.retention_days = retention_days
        self.live_ms = live_ms
        self.stream_max_len = stream_max_len
        self.housekeeping_s = housekeeping_s
        self._next_retention = time.monotonic() + housekeeping_s
        self.stats = RecorderStats()
        self._lock = threading.Lock()
        path = spool_path or Path("data") / "spool" / "recorder.spool"
        self.spool: Spool[TickLike] = Spool(
            path, msgspec.json.encode, _wire_decoder.decode, max_memory=max_memory
        )
        self._wake = threading.Event()
        self._in_flight: dict[str, int] = {}  # topic -> highest seq sent but not yet confirmed
        # counts of ticks queued and confirmed (the spool is FIFO): a gap fill's ticks, queued after
        # later ones, are confirmed once `_confirmed` reaches `_fill_mark` (see caught_up)
        self._queued = len(self.spool)
        self._in_flight_n = 0
        self._confirmed = 0
        self._fill_mark = 0
        self._taking_fill = False
        self._subscriber: Subscriber | None = None
        self._held: list[TickWire] = []  # live ticks waiting (briefly) for a gap fill: receiver thread
        self._held_since = 0.0
        self._retained: collections.deque[tuple[float, list[TickLike]]] = collections.deque()
        # set by any failed write or check, cleared only by a re-send of `_retained` that went out: a
        # batch whose replies were lost may never have been applied, whatever happens next
        self._resend_owed = False
        # [arrival time, symbol, topic, highest seq], one per symbol per ARRIVAL_GRAIN_S: store_lag_ms
        self._arrivals: collections.deque[list[Any]] = collections.deque()
        self._last_arrival: dict[str, list[Any]] = {}

    @property
    def buffered(self) -> int:
        return len(self.spool)

    # -- intake ----------------------------------------------------------------------------------

    def decode_frames(self, messages: Sequence[Sequence[bytes]]) -> list[TickWire]:
        """Valid ticks of a batch of `[topic, payload]` messages; the rest is rejected and counted."""
        self.stats.received += len(messages)
        decoded = decode_frames(messages)
        for bad in decoded.rejected:
            self.reject(bad.error, bad.frames)
        return decoded.ticks

    def submit(self, ticks: Sequence[TickLike]) -> None:
        """Queue validated ticks for writing (the in-process path, and the receiver's)."""
        if ticks:
            self._note_arrival(ticks)
            self.spool.extend(ticks)
            self._wake.set()

    def submit_one(self, tick: TickLike) -> None:
        self.stats.received += 1
        self._note_arrival((tick,))
        self.spool.extend((tick,))
        self._wake.set()

    def _queue_live(self, ticks: list[TickWire], subscriber: Subscriber) -> None:
        """Live ticks go to the spool at once, unless a gap fill is under way: then they wait for it,
        at most FILL_HOLD_S. A live ring answers in milliseconds, and the fill stored first keeps
        each topic's stored numbers a prefix, so a recorder killed now resumes at the gap, not past
        it; an endpoint that does not answer delays storing by that bound only."""
        if ticks and not self._held and not subscriber.filling():
            self.submit(ticks)
            return
        if ticks:
            if not self._held:
                self._held_since = time.monotonic()
            self._held.extend(ticks)
        if self._held and (not subscriber.filling() or time.monotonic() - self._held_since >= FILL_HOLD_S):
            self._take_fills(subscriber)
            self._release_held()

    def _release_held(self) -> None:
        held, self._held = self._held, []
        self.submit(held)

    def _take_fills(self, subscriber: Subscriber) -> None:
        """Queue what the Subscriber's gap fills fetched (validated like any frame)."""
        with self._lock:
            frames = subscriber.take_filled()
            if not frames:
                return
            self._taking_fill = True
        try:
            self.submit(self.decode_frames(frames))
        finally:
            with self._lock:
                self._fill_mark = self._queued
                self._taking_fill = False

    def _note_arrival(self, ticks: Sequence[TickLike]) -> None:
        top: dict[str, int] = {}
        for tick in ticks:
            if tick.seq > top.get(tick.symbol, 0):
                top[tick.symbol] = tick.seq
        now = time.monotonic()
        with self._lock:
            self._queued += len(ticks)
            for symbol, seq in top.items():
                last = self._last_arrival.get(symbol)
                if last is not None and now - last[0] < ARRIVAL_GRAIN_S:
                    last[3] = max(last[3], seq)  # measured from the earlier arrival: never optimistic
                else:
                    entry = [now, symbol, tick_topic(symbol), seq]
                    self._arrivals.append(entry)
                    self._last_arrival[symbol] = entry

    def store_lag_ms(self) -> int:
        """bus -> store lag: how long the oldest received tick not yet confirmed in Valkey has waited
        (0 when everything received is stored). Grows through an outage; back to 0 once caught up."""
        with self._lock:
            arrivals, done = self._arrivals, self.stats.last_seq
            while arrivals and arrivals[0][3] <= done.get(arrivals[0][2], 0):
                entry = arrivals.popleft()
                if self._last_arrival.get(entry[1]) is entry:
                    del self._last_arrival[entry[1]]
            return int((time.monotonic() - arrivals[0][0]) * 1000) if arrivals else 0

    def reject(self, exc: DataError, frames: Sequence[bytes]) -> None:
        self.stats.rejected[exc.kind] += 1
        log.warning("rejected message: %s", exc)
        topic, payload = (bytes(frames[0]), bytes(frames[-1])) if frames else (b"", b"")
        try:
            self.store.dead_letter(str(exc), exc.kind, topic=topic, payload=payload)
        except Exception as err:  # the dead-letter copy is best effort; the count above is not
            log.warning("could not keep rejected message: %s", err)

    # -- writing ---------------------------------------------------------------------------------

    def write(self, ticks: Sequence[TickLike], stop: threading.Event | None = None) -> bool:
        """Store one batch, retrying while Valkey fails (until `stop`). True if stored."""
        if not ticks:
            return True
        delay = BACKOFF_S[0]
        while True:
            try:
                self._resend_if_owed()
                result = self.store.writer.write(ticks)  # checked by the next write or flush
                break
            except StoreError as exc:
                self._resend_owed = True
                self.stats.write_errors += 1
                log.error("write of %d ticks failed, retrying in %.2f s: %s", len(ticks), delay, exc)
                if stop is not None and stop.wait(delay):
                    return False
                if stop is None:
                    time.sleep(delay)
                delay = min(delay * 2, BACKOFF_S[1])
        now = time.monotonic()
        self._retained.append((now, list(ticks)))
        while self._retained and now - self._retained[0][0] > RETAIN_S:
            self._retained.popleft()
        with self._lock:
            self.stats.duplicates += result.duplicates
            self.stats.late += result.late
            self.stats.stored.update(result.stored_by_symbol)
            # the write above checked the batch before this one: that one is confirmed now, this one
            # only once the next write or flush checks it (`caught_up` must mean "in Valkey")
            self._confirm()
            self._in_flight_n = len(ticks)
            for tick in ticks:
                topic = tick_topic(tick.symbol)
                if tick.seq > self._in_flight.get(topic, 0):
                    self._in_flight[topic] = tick.seq
        return True

    def _resend_if_owed(self) -> None:
        # Valkey may have restarted without its last second, or died holding a batch it never
        # applied: the recent batches go again (idempotent). Raises StoreError while it cannot.
        if not self._resend_owed:
            return
        for _, batch in list(self._retained):
            result = self.store.writer.write(batch)
            self.stats.rewritten += result.stored
            with self._lock:
                self.stats.stored.update(result.stored_by_symbol)
        self._resend_owed = False
        if self.stats.rewritten:
            log.warning("re-stored %d ticks that Valkey had lost", self.stats.rewritten)

    def _housekeeping(self) -> None:
        if time.monotonic() < self._next_retention:
            return
        self._next_retention = time.monotonic() + self.housekeeping_s
        for symbol in list(self.stats.stored):
            try:
                self.stats.sealed += self.store.compact(symbol, self.live_ms, self.stream_max_len)
                if self.retention_days > 0:
                    self.stats.expired += self.store.apply_retention(symbol, self.retention_days)
            except StoreError as exc:
                log.warning("housekeeping of %s skipped: %s", symbol, exc)

    def _flush(self, stop: threading.Event) -> bool:
        """Check the batch in flight; after a failure re-send the recent batches. False if `stop`
        came first: then the recent batches go back to the spool, kept for the next run."""
        delay = BACKOFF_S[0]
        while True:
            try:
                self._resend_if_owed()
                self.store.writer.flush()
                with self._lock:
                    self._confirm()
                return True
            except StoreError as exc:
                self._resend_owed = True
                self.stats.write_errors += 1
                log.error("the last batch was not confirmed, re-sending the recent ones: %s", exc)
            if stop.wait(delay):
                self._keep_unconfirmed()
                return False
            delay = min(delay * 2, BACKOFF_S[1])

    def _keep_unconfirmed(self) -> None:
        """Stopping with a re-send owed: the recent batches go back to the spool (in front, they are
        older), kept for the next run; storing them again is harmless."""
        if self._resend_owed:
            self.spool.putback([t for _, batch in self._retained for t in batch])
            self._retained.clear()

    def _write_loop(self, stop: threading.Event) -> None:
        while True:
            try:
                if not self._write_step(stop):
                    return
            except Exception:  # a dead writer would stall the recorder silently: log, count, go on
                self.stats.write_errors += 1
                log.exception("recorder writer failed; going on in 1 s")
                if stop.wait(1.0):
                    return

    def _write_step(self, stop: threading.Event) -> bool:
        """One batch from the spool to Valkey; False when the loop should end."""
        self._housekeeping()
        batch = self.spool.take(MAX_BATCH)
        if not batch:
            if not self._flush(stop):
                return False
            if stop.is_set():  # ticks queued during the flush, just before the stop, go first
                return len(self.spool) > 0
            self._wake.wait(0.05)
            self._wake.clear()
            return True
        try:
            written = self.write(batch, stop)
        except BaseException:
            self.spool.putback(batch)
            raise
        if not written:
            self.spool.putback(batch)
            self._keep_unconfirmed()
            return False
        return True

    # -- loops -----------------------------------------------------------------------------------

    def run(self, subscriber: Subscriber | None, stop: threading.Event) -> None:
        """Receive from the bus (or only from `submit` when `subscriber` is None) and write, until
        `stop`; then write what is queued while Valkey takes it, and keep the rest in the spool file.
        The subscriber must be `ordered=False`: an ordered one drops valid ticks for their numbers."""
        if subscriber is not None and subscriber.ordered:
            raise ValueError("the recorder keeps every valid tick: give it a Subscriber(ordered=False)")
        self._subscriber = subscriber
        writer_stop = threading.Event()
        writer = threading.Thread(
            target=self._write_loop, args=(writer_stop,), name="recorder-writer", daemon=True
        )
        writer.start()
        try:
            while not stop.is_set():
                if subscriber is None:
                    stop.wait(0.05)
                    continue
                messages = subscriber.receive(timeout_ms=50, max_messages=MAX_BATCH, linger_ms=LINGER_MS)
                ticks = self.decode_frames(messages) if messages else []
                # only valid ticks' numbers count; a gap they show is filled beside (not awaited)
                subscriber.track([(tick_topic(t.symbol), t.seq) for t in ticks])
                self._take_fills(subscriber)
                self._queue_live(ticks, subscriber)
        finally:
            if subscriber is not None:  # everything received is stored: fills under way, then the rest
                subscriber.finish_fills(FILL_WAIT_S)
                self._take_fills(subscriber)
                self._release_held()
            writer_stop.set()
            self._wake.set()
            writer.join()
            self.store.writer.release()
            if len(self.spool):
                log.warning("%d ticks not yet in Valkey are kept in %s", len(self.spool), self.spool.path)
            self.spool.close()

    def _confirm(self) -> None:
        """Valkey has applied the batch in flight: its sequence numbers count as written."""
        for topic, seq in self._in_flight.items():
            if seq > self.stats.last_seq.get(topic, 0):
                self.stats.last_seq[topic] = seq
        self._in_flight.clear()
        self._confirmed += self._in_flight_n
        self._in_flight_n = 0

    def caught_up(self, last_seq: dict[str, int]) -> bool:
        """True once every topic's sequence number in `last_seq` (symbol -> seq) has been written, and
        every gap fill too (its ticks come after later ones)."""
        with self._lock:
            subscriber = self._subscriber
            if subscriber is not None and subscriber.filling():
                return False
            if self._held or self._taking_fill or self._confirmed < self._fill_mark:
                return False
            return all(self.stats.last_seq.get(tick_topic(s), 0) >= n for s, n in last_seq.items())
