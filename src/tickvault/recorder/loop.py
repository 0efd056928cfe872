"""The recorder loop: how the tick recorder and the book recorder get frames from the bus into Valkey
without losing a valid one. What differs between them is a `FrameKind` (recorder.py's `TickFrameKind`,
book_recorder.py's `BookFrameKind`): how a frame is validated into storable items, which writer stores a
batch, the kind's own counters and positions.

Two threads. The receiver takes frames from the bus (or items handed over in-process), has the kind
validate them, and queues the valid items in a spool: memory up to a bound, then a local file, so a
slow or absent Valkey costs disk, never data. A bad frame (or a bad part of one) is rejected with its
reason, counted and kept in the dead-letter stream; what is around it goes on, and a number of which
nothing is kept counts for nothing. Only the numbers of what was kept go to the Subscriber
(`ordered=False`), which fills a gap beside the receiver; what a fill fetches is validated and queued
when it comes. Live items wait for a fill under way at most FILL_HOLD_S, so each topic's stored
numbers stay a prefix and a recorder killed now resumes at the gap; no valid item is dropped for its
number: a repeat is made harmless by the kind's idempotent writer, so a publisher that restarts or
numbers its own way loses nothing. The writer takes batches from the spool and stores each in one
round trip; while Valkey is unreachable it retries with backoff, and once a write (or the check of
one) has failed it first re-sends the batches of the last RETAIN_S seconds, which a restarted Valkey
may have lost from its append-only file (fsync every second). A batch counts as written (`last_seq`,
`caught_up`) only once the next write or flush has checked it. Every `housekeeping_s` it seals what is
older than the live window into history blocks and applies retention. At stop, what Valkey did not
take stays in the spool file for next time.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, NamedTuple, Protocol, TypeVar

from tickvault.bus.spool import Spool
from tickvault.bus.subscriber import Subscriber
from tickvault.errors import DataError, StoreError
from tickvault.store.api import Store

LINGER_MS = 2.0  # gather a batch for up to 2 ms: per-batch costs dominate tiny batches
HOUSEKEEPING_S = 60.0
ARRIVAL_GRAIN_S = 0.01  # store_lag_ms resolution
RETAIN_S = 5.0  # > the 1 s (at worst 2 s) of writes an append-only file with fsync everysec can lose
BACKOFF_S = (0.05, 2.0)
FILL_WAIT_S = 5.0  # at stop, gap fills under way get this long (a live replay ring answers in ms)
FILL_HOLD_S = 1.0  # live items wait at most this long for a gap fill under way (see _queue_live)

T = TypeVar("T")  # what the spool holds: a tick, or a chunk of book updates
R = TypeVar("R", bound="WriteResult")
S = TypeVar("S", bound="LoopStats")
S_contra = TypeVar("S_contra", bound="LoopStats", contravariant=True)


@dataclass
class LoopStats:
    """What every recorder counts; a kind adds its own counters (see its `count`)."""

    received: int = 0  # frames (or items handed over in-process)
    stored: Counter[str] = field(default_factory=Counter)  # rows, by symbol
    duplicates: int = 0  # rows already stored (re-sent, replayed)
    rejected: Counter[str] = field(default_factory=Counter)  # by reason
    write_errors: int = 0
    rewritten: int = 0  # rows re-stored after a failure (Valkey had lost them)
    expired: int = 0
    sealed: int = 0
    last_seq: dict[str, int] = field(default_factory=dict)  # the kind's key -> highest seq confirmed

    @property
    def stored_total(self) -> int:
        return sum(self.stored.values())

    @property
    def rejected_total(self) -> int:
        return sum(self.rejected.values())


class WriteResult(Protocol):
    @property
    def stored(self) -> int: ...

    @property
    def duplicates(self) -> int: ...

    @property
    def stored_by_symbol(self) -> Counter[str]: ...


class Refused(Protocol):
    @property
    def error(self) -> DataError: ...

    @property
    def frames(self) -> Sequence[bytes]: ...


class Intake(NamedTuple, Generic[T]):
    """What the kind makes of a batch of `[topic, payload]` messages."""

    items: Sequence[T]  # the valid ones, ready to queue
    seqs: list[tuple[str, int]]  # (topic, frame seq) of the frames kept: what the Subscriber follows
    rejected: Sequence[Refused]


class FrameKind(Protocol[T, R, S_contra]):
    """What differs between the frames a recorder loop stores."""

    log: logging.Logger
    rows: str  # what it stores, in log lines ("ticks")
    items: str  # what its spool holds, in log lines
    writer_thread: str  # the writer thread's name
    take: int  # spool items one write takes
    max_messages: int  # messages received at once ...
    max_bytes: int | None  # ... and at most this much payload

    def decode(self, messages: Sequence[Sequence[bytes]]) -> Intake[T]:
        """Validate `[topic, payload]` messages column-wise (see `Intake`)."""
        ...

    def key(self, symbol: str) -> str:
        """`last_seq`'s key for `symbol`."""
        ...

    def tops(self, items: Sequence[T]) -> dict[str, int]:
        """The highest seq of `items` by `key`."""
        ...

    def write(self, items: Sequence[T]) -> tuple[list[T], R]:
        """Store `items` (checked by the next `write` or `flush`); the items written, as a re-send would
        send them again, and the result. Raises StoreError."""
        ...

    def flush(self) -> None:
        """Check the last write. Raises StoreError."""
        ...

    def release(self) -> None: ...

    def count(self, stats: S_contra, result: R) -> None:
        """The kind's own counters, of a write."""
        ...

    def seal(self, symbol: str) -> int: ...

    def expire(self, symbol: str, days: float) -> int: ...


class RecorderLoop(Generic[T, R, S]):
    def __init__(
        self,
        store: Store,
        kind: FrameKind[T, R, S],
        stats: S,
        spool: Spool[T],
        *,
        retention_days: float,
        housekeeping_s: float,
    ) -> None:
        self.store = store
        self.kind = kind
        self.stats = stats
        self.spool = spool
        self.retention_days = retention_days
        self.housekeeping_s = housekeeping_s
        self._next_housekeeping = time.monotonic() + housekeeping_s
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._in_flight: dict[str, int] = {}  # key -> highest seq sent but not yet confirmed
        # counts of items queued and confirmed (the spool is FIFO): a gap fill's items, queued after
        # later ones, are confirmed once `_confirmed` reaches `_fill_mark` (see caught_up)
        self._queued = len(self.spool)
        self._in_flight_n = 0
        self._confirmed = 0
        self._fill_mark = 0
        self._taking_fill = False
        self._subscriber: Subscriber | None = None
        self._held: list[T] = []  # live items waiting (briefly) for a gap fill: receiver thread
        self._held_since = 0.0
        self._retained: collections.deque[tuple[float, list[T]]] = collections.deque()
        # set by any failed write or check, cleared only by a re-send of `_retained` that went out: a
        # batch whose replies were lost may never have been applied, whatever happens next
        self._resend_owed = False
        # [arrival time, key, highest seq], one per key per ARRIVAL_GRAIN_S: store_lag_ms
        self._arrivals: collections.deque[list[Any]] = collections.deque()
        self._last_arrival: dict[str, list[Any]] = {}

    @property
    def buffered(self) -> int:
        return len(self.spool)

    # -- intake ----------------------------------------------------------------------------------

    def intake(self, messages: Sequence[Sequence[bytes]]) -> Intake[T]:
        """The valid items of a batch of `[topic, payload]` messages; the rest is rejected and counted."""
        self.stats.received += len(messages)
        decoded = self.kind.decode(messages)
        for bad in decoded.rejected:
            self.reject(bad.error, bad.frames)
        return decoded

    def queue(self, items: Sequence[T]) -> None:
        """Queue validated items for writing."""
        if items:
            self._note_arrival(items)
            self.spool.extend(items)
            self._wake.set()

    def reject(self, exc: DataError, frames: Sequence[bytes]) -> None:
        self.stats.rejected[exc.kind] += 1
        self.kind.log.warning("rejected message: %s", exc)
        topic, payload = (bytes(frames[0]), bytes(frames[-1])) if frames else (b"", b"")
        try:
            self.store.dead_letter(str(exc), exc.kind, topic=topic, payload=payload)
        except Exception as err:  # the dead-letter copy is best effort; the count above is not
            self.kind.log.warning("could not keep rejected message: %s", err)

    def _queue_live(self, items: Sequence[T], subscriber: Subscriber) -> None:
        """Live items go to the spool at once, unless a gap fill is under way: then they wait for it,
        at most FILL_HOLD_S. A live ring answers in milliseconds, and the fill stored first keeps
        each topic's stored numbers a prefix, so a recorder killed now resumes at the gap, not past
        it; an endpoint that does not answer delays storing by that bound only."""
        if items and not self._held and not subscriber.filling():
            self.queue(items)
            return
        if items:
            if not self._held:
                self._held_since = time.monotonic()
            self._held.extend(items)
        if self._held and (not subscriber.filling() or time.monotonic() - self._held_since >= FILL_HOLD_S):
            self._take_fills(subscriber)
            self._release_held()

    def _release_held(self) -> None:
        held, self._held = self._held, []
        self.queue(held)

    def _take_fills(self, subscriber: Subscriber) -> None:
        """Queue what the Subscriber's gap fills fetched (validated like any frame)."""
        with self._lock:
            frames = subscriber.take_filled()
            if not frames:
                return
            self._taking_fill = True
        try:
            self.queue(self.intake(frames).items)
        finally:
            with self._lock:
                self._fill_mark = self._queued
                self._taking_fill = False

    def _note_arrival(self, items: Sequence[T]) -> None:
        tops = self.kind.tops(items)
        now = time.monotonic()
        with self._lock:
            self._queued += len(items)
            for key, seq in tops.items():
                last = self._last_arrival.get(key)
                if last is not None and now - last[0] < ARRIVAL_GRAIN_S:
                    last[2] = max(last[2], seq)  # measured from the earlier arrival: never optimistic
                else:
                    entry = [now, key, seq]
                    self._arrivals.append(entry)
                    self._last_arrival[key] = entry

    def store_lag_ms(self) -> int:
        """bus -> store lag: how long the oldest received item not yet confirmed in Valkey has waited
        (0 when everything received is stored). Grows through an outage; back to 0 once caught up."""
        with self._lock:
            arrivals, done = self._arrivals, self.stats.last_seq
            while arrivals and arrivals[0][2] <= done.get(arrivals[0][1], 0):
                entry = arrivals.popleft()
                if self._last_arrival.get(entry[1]) is entry:
                    del self._last_arrival[entry[1]]
            return int((time.monotonic() - arrivals[0][0]) * 1000) if arrivals else 0

    # -- writing ---------------------------------------------------------------------------------

    def write(self, items: Sequence[T], stop: threading.Event | None = None) -> bool:
        """Store one batch, retrying while Valkey fails (until `stop`). True if stored."""
        if not items:
            return True
        delay = BACKOFF_S[0]
        while True:
            try:
                self._resend_if_owed()
                written, result = self.kind.write(items)  # checked by the next write or flush
                break
            except StoreError as exc:
                self._resend_owed = True
                self.stats.write_errors += 1
                self.kind.log.error(
                    "write of %d %s failed, retrying in %.2f s: %s", len(items), self.kind.items, delay, exc
                )
                if stop is not None and stop.wait(delay):
                    return False
                if stop is None:
                    time.sleep(delay)
                delay = min(delay * 2, BACKOFF_S[1])
        now = time.monotonic()
        self._retained.append((now, written))
        while self._retained and now - self._retained[0][0] > RETAIN_S:
            self._retained.popleft()
        tops = self.kind.tops(written)
        with self._lock:
            self.stats.duplicates += result.duplicates
            self.stats.stored.update(result.stored_by_symbol)
            self.kind.count(self.stats, result)
            # the write above checked the batch before this one: that one is confirmed now, this one
            # only once the next write or flush checks it (`caught_up` must mean "in Valkey")
            self._confirm()
            self._in_flight_n = len(items)
            self._in_flight = tops
        return True

    def _resend_if_owed(self) -> None:
        # Valkey may have restarted without its last second, or died holding a batch it never
        # applied: the recent batches go again (idempotent). Raises StoreError while it cannot.
        if not self._resend_owed:
            return
        for _, batch in list(self._retained):
            _, result = self.kind.write(batch)
            with self._lock:
                self.stats.rewritten += result.stored
                self.stats.stored.update(result.stored_by_symbol)
        self._resend_owed = False
        if self.stats.rewritten:
            self.kind.log.warning(
                "re-stored %d %s that Valkey had lost", self.stats.rewritten, self.kind.rows
            )

    def _housekeeping(self) -> None:
        if time.monotonic() < self._next_housekeeping:
            return
        self._next_housekeeping = time.monotonic() + self.housekeeping_s
        for symbol in list(self.stats.stored):
            try:
                self.stats.sealed += self.kind.seal(symbol)
                if self.retention_days > 0:
                    self.stats.expired += self.kind.expire(symbol, self.retention_days)
            except StoreError as exc:
                self.kind.log.warning("housekeeping of %s skipped: %s", symbol, exc)

    def _flush(self, stop: threading.Event) -> bool:
        """Check the batch in flight; after a failure re-send the recent batches. False if `stop`
        came first: then the recent batches go back to the spool, kept for the next run."""
        delay = BACKOFF_S[0]
        while True:
            try:
                self._resend_if_owed()
                self.kind.flush()
                with self._lock:
                    self._confirm()
                return True
            except StoreError as exc:
                self._resend_owed = True
                self.stats.write_errors += 1
                self.kind.log.error("the last batch was not confirmed, re-sending the recent ones: %s", exc)
            if stop.wait(delay):
                self._keep_unconfirmed()
                return False
            delay = min(delay * 2, BACKOFF_S[1])

    def _keep_unconfirmed(self) -> None:
        """Stopping with a re-send owed: the recent batches go back to the spool (in front, they are
        older), kept for the next run; storing them again is harmless."""
        if self._resend_owed:
            self.spool.putback([item for _, batch in self._retained for item in batch])
            self._retained.clear()

    def _write_loop(self, stop: threading.Event) -> None:
        while True:
            try:
                if not self._write_step(stop):
                    return
            except Exception:  # a dead writer would stall the recorder silently: log, count, go on
                self.stats.write_errors += 1
                self.kind.log.exception("recorder writer failed; going on in 1 s")
                if stop.wait(1.0):
                    return

    def _write_step(self, stop: threading.Event) -> bool:
        """One batch from the spool to Valkey; False when the loop should end."""
        self._housekeeping()
        batch = self.spool.take(self.kind.take)
        if not batch:
            if not self._flush(stop):
                return False
            if stop.is_set():  # items queued during the flush, just before the stop, go first
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
        """Receive from the bus (or only from what is handed over in-process when `subscriber` is
        None) and write, until `stop`; then write what is queued while Valkey takes it, and keep the
        rest in the spool file. The subscriber must be `ordered=False`: an ordered one drops valid
        frames for their numbers."""
        if subscriber is not None and subscriber.ordered:
            raise ValueError("a recorder keeps every valid frame: give it a Subscriber(ordered=False)")
        kind = self.kind
        self._subscriber = subscriber
        writer_stop = threading.Event()
        writer = threading.Thread(
            target=self._write_loop, args=(writer_stop,), name=kind.writer_thread, daemon=True
        )
        writer.start()
        try:
            while not stop.is_set():
                if subscriber is None:
                    stop.wait(0.05)
                    continue
                messages = subscriber.receive(
                    timeout_ms=50,
                    max_messages=kind.max_messages,
                    linger_ms=LINGER_MS,
                    max_bytes=kind.max_bytes,
                )
                intake = self.intake(messages) if messages else Intake([], [], [])
                # only what was kept counts; a gap it shows is filled beside (not awaited)
                subscriber.track(intake.seqs)
                self._take_fills(subscriber)
                self._queue_live(intake.items, subscriber)
        finally:
            if subscriber is not None:  # everything received is stored: fills under way, then the rest
                subscriber.finish_fills(FILL_WAIT_S)
                self._take_fills(subscriber)
                self._release_held()
            writer_stop.set()
            self._wake.set()
            writer.join()
            kind.release()
            if len(self.spool):
                kind.log.warning(
                    "%d %s not yet in Valkey are kept in %s", len(self.spool), kind.items, self.spool.path
                )
            self.spool.close()

    def _confirm(self) -> None:
        """Valkey has applied the batch in flight: its sequence numbers count as written."""
        done = self.stats.last_seq
        for key, seq in self._in_flight.items():
            if seq > done.get(key, 0):
                done[key] = seq
        self._in_flight = {}
        self._confirmed += self._in_flight_n
        self._in_flight_n = 0

    def caught_up(self, last_seq: dict[str, int]) -> bool:
        """True once every symbol's sequence number in `last_seq` (symbol -> seq) has been written,
        and every gap fill too (its items come after later ones)."""
        with self._lock:
            subscriber = self._subscriber
            if subscriber is not None and subscriber.filling():
                return False
            if self._held or self._taking_fill or self._confirmed < self._fill_mark:
                return False
            done, key = self.stats.last_seq, self.kind.key
            return all(done.get(key(s), 0) >= n for s, n in last_seq.items())
