"""The order book's recorder: book frames from the bus (or batches handed in-process) into Valkey.

It keeps the tick recorder's guarantees with the same mechanisms, for frames instead of ticks: a
receiver thread validates frames (`book_frames`; a bad batch is rejected, counted by reason and
dead-lettered, the frame's other batches kept; a frame none of whose batches is kept counts for
nothing, its number included), hands the numbers of the frames kept to the
Subscriber (`ordered=False`: gaps are filled beside, from the publisher's ring), and queues their
updates, as columns, in a spool (memory, then a local file: a slow or absent Valkey costs disk,
never updates). Live frames wait at most FILL_HOLD_S for a fill under way, so the stored frames stay
a prefix and a recorder killed now resumes at the gap. A writer thread takes several received
batches at a time and stores them with `BookWriter` (idempotent by update seq, so a repeat is
harmless and no valid frame is ever dropped for its number); while Valkey fails it retries with
backoff, and after any failure it first re-sends the batches of the last RETAIN_S seconds, which a
restarted Valkey may have lost from its append-only file. Every HOUSEKEEPING_S it seals what is
older than the live window into history blocks and applies retention. At stop, what Valkey did not
take stays in the spool file.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import msgspec

from tickvault.bus.spool import Spool
from tickvault.bus.subscriber import Subscriber
from tickvault.domain.book import BookBatch, BookFrame, BookKind, BookUpdate
from tickvault.domain.events import encode
from tickvault.domain.keys import book_topic
from tickvault.errors import DataError, StoreError
from tickvault.recorder.book_frames import DecodedFrames, decode_book_frames
from tickvault.store.api import Store
from tickvault.store.book_codec import decode_columns, encode_columns
from tickvault.store.book_writer import SNAPSHOT_EVERY, SNAPSHOT_MS, BookPart, BookWriter

log = logging.getLogger("tickvault.bookrecorder")

MAX_FRAMES = 5000  # frames received at once: one chunk (the spool's unit) of validated columns
MAX_BYTES = 1 << 20  # ... and at most about this much JSON (~4,000 updates; frames hold many batches)
CHUNKS_PER_WRITE = 4
LINGER_MS = 2.0
HOUSEKEEPING_S = 60.0
LIVE_WINDOW_MS = 300_000  # the live book stream keeps 5 minutes; older is sealed into blocks
RETAIN_S = 5.0  # > the 1 s (at worst 2 s) an append-only file with fsync everysec can lose
BACKOFF_S = (0.05, 2.0)
FILL_WAIT_S = 5.0
FILL_HOLD_S = 1.0


Chunk = list[BookPart]  # the validated updates of one received batch of frames, one part per symbol


def _encode_chunk(chunk: Chunk) -> bytes:
    return msgspec.msgpack.encode(
        [(p.cols.symbol, p.last_frame, encode_columns(p.cols, level=1)) for p in chunk]
    )


def _decode_chunk(data: bytes) -> Chunk:
    rows = msgspec.msgpack.decode(data, type=list[tuple[str, int, bytes]])
    return [BookPart(decode_columns(blob, symbol), frame) for symbol, frame, blob in rows]


@dataclass
class BookRecorderStats:
    received: int = 0  # frames
    stored: Counter[str] = field(default_factory=Counter)  # updates, by symbol
    batches: int = 0
    duplicates: int = 0  # updates already stored (re-sent, replayed)
    snapshots: int = 0
    rejected: Counter[str] = field(default_factory=Counter)  # frames, by reason
    write_errors: int = 0
    rewritten: int = 0  # updates re-stored after a failure (Valkey had lost them)
    sealed: int = 0
    expired: int = 0
    last_seq: dict[str, int] = field(default_factory=dict)  # symbol -> highest update seq confirmed

    @property
    def stored_total(self) -> int:
        return sum(self.stored.values())

    @property
    def rejected_total(self) -> int:
        return sum(self.rejected.values())


class BookRecorder:
    def __init__(
        self,
        store: Store,
        *,
        spool_path: Path | None = None,
        max_memory: int = 200,
        live_ms: int = LIVE_WINDOW_MS,
        retention_days: float = 0,
        housekeeping_s: float = HOUSEKEEPING_S,
        writer_name: str | None = None,
        snapshot_every: int = SNAPSHOT_EVERY,
        snapshot_ms: int = SNAPSHOT_MS,
    ) -> None:
        """`max_memory` chunks (of up to MAX_FRAMES frames) are held in memory before the spool file
        takes the rest."""
        self.store = store
        self.writer = BookWriter(
            store.client,
            store.keys,
            owner=writer_name,
            snapshot_every=snapshot_every,
            snapshot_ms=snapshot_ms,
        )
        self.live_ms = live_ms
        self.retention_days = retention_days
        self.housekeeping_s = housekeeping_s
        self._next_housekeeping = time.monotonic() + housekeeping_s
        self.stats = BookRecorderStats()
        path = spool_path or Path("data") / "spool" / "book-recorder.spool"
        self.spool: Spool[Chunk] = Spool(path, _encode_chunk, _decode_chunk, max_memory=max_memory)
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._subscriber: Subscriber | None = None
        self._held: list[Chunk] = []
        self._held_since = 0.0
        self._taking_fill = False
        self._retained: collections.deque[tuple[float, list[BookPart]]] = collections.deque()
        self._resend_owed = False
        self._writing = False

    @property
    def buffered(self) -> int:
        return len(self.spool)

    # -- intake ----------------------------------------------------------------------------------

    def decode(self, messages: Sequence[Sequence[bytes]]) -> DecodedFrames:
        """The valid frames of a batch of `[topic, payload]` messages (and their updates as columns);
        the rest is rejected, counted and dead-lettered."""
        self.stats.received += len(messages)
        decoded = decode_book_frames(messages)
        for bad in decoded.rejected:
            self.reject(bad.error, bad.frames)
        return decoded

    def submit(self, chunk: Chunk) -> None:
        """Queue validated updates for writing."""
        if chunk:
            self.spool.extend([chunk])
            self._wake.set()

    def submit_batch(self, batch: BookBatch) -> None:
        """The in-process path (no bus): one numbered batch, validated as a frame from the bus is (a
        frame without a number: 0)."""
        kind: BookKind = "mbp" if type(batch[0]) is BookUpdate else "mbo"
        payload = encode(BookFrame(seq=0, symbol=batch[0].symbol, kind=kind, events=batch))
        self.submit(self.decode([[book_topic(batch[0].symbol).encode(), payload]]).parts)

    def reject(self, exc: DataError, frames: Sequence[bytes]) -> None:
        self.stats.rejected[exc.kind] += 1
        log.warning("rejected book message: %s", exc)
        topic, payload = (bytes(frames[0]), bytes(frames[-1])) if frames else (b"", b"")
        try:
            self.store.dead_letter(str(exc), exc.kind, topic=topic, payload=payload)
        except Exception as err:  # the dead-letter copy is best effort; the count above is not
            log.warning("could not keep rejected book message: %s", err)

    def _queue_live(self, chunk: Chunk, subscriber: Subscriber) -> None:
        """Live frames go to the spool at once, unless a gap fill is under way: then they wait for
        it, at most FILL_HOLD_S (see the tick recorder's `_queue_live`)."""
        if chunk and not self._held and not subscriber.filling():
            self.submit(chunk)
            return
        if chunk:
            if not self._held:
                self._held_since = time.monotonic()
            self._held.append(chunk)
        if self._held and (not subscriber.filling() or time.monotonic() - self._held_since >= FILL_HOLD_S):
            self._take_fills(subscriber)
            self._release_held()

    def _release_held(self) -> None:
        held, self._held = self._held, []
        for chunk in held:
            self.submit(chunk)

    def _take_fills(self, subscriber: Subscriber) -> None:
        with self._lock:
            filled = subscriber.take_filled()
            if not filled:
                return
            self._taking_fill = True
        try:
            self.submit(self.decode(filled).parts)
        finally:
            with self._lock:
                self._taking_fill = False

    # -- writing ---------------------------------------------------------------------------------

    def _split_kinds(self, parts: list[BookPart]) -> list[BookPart]:
        """The parts of each symbol's book kind (the stored one, else the first seen); the others
        are rejected (a symbol's book is MBP or MBO, never both)."""
        kinds: dict[str, BookKind] = {}
        out = []
        for part in parts:
            symbol = part.cols.symbol
            kind = kinds.get(symbol)
            if kind is None:
                kind = kinds[symbol] = self.writer.position(symbol).kind or part.cols.kind
            if part.cols.kind != kind:
                events = part.cols.take(slice(0, 20)).events()
                payload = b"[" + b",".join(encode(e) for e in events) + b"]"
                why = DataError("kind", f"{symbol}'s book is {kind}; got {part.cols.kind} updates")
                self.reject(why, [book_topic(symbol).encode(), payload])
            else:
                out.append(part)
        return out

    def write(self, parts: list[BookPart], stop: threading.Event | None = None) -> bool:
        """Store the updates of `parts`, retrying while Valkey fails (until `stop`). True once stored."""
        delay = BACKOFF_S[0]
        while True:
            try:
                self._resend_if_owed()
                parts = self._split_kinds(parts)
                result = self.writer.write(parts)
                break
            except StoreError as exc:
                self._resend_owed = True
                self.stats.write_errors += 1
                log.error("book write failed, retrying in %.2f s: %s", delay, exc)
                if stop is not None and stop.wait(delay):
                    return False
                if stop is None:
                    time.sleep(delay)
                delay = min(delay * 2, BACKOFF_S[1])
        now = time.monotonic()
        self._retained.append((now, parts))
        while self._retained and now - self._retained[0][0] > RETAIN_S:
            self._retained.popleft()
        with self._lock:
            stats = self.stats
            stats.stored.update(result.stored_by_symbol)
            stats.batches += result.batches
            stats.duplicates += result.duplicates
            stats.snapshots += result.snapshots
            for part in parts:
                symbol, top = part.cols.symbol, int(part.cols.seq.max()) if len(part.cols) else 0
                if top > stats.last_seq.get(symbol, 0):
                    stats.last_seq[symbol] = top
        return True

    def _resend_if_owed(self) -> None:
        if not self._resend_owed:
            return
        for _, parts in list(self._retained):
            result = self.writer.write(parts)
            with self._lock:
                self.stats.rewritten += result.stored
                self.stats.stored.update(result.stored_by_symbol)
        self._resend_owed = False
        if self.stats.rewritten:
            log.warning("re-stored %d book updates that Valkey had lost", self.stats.rewritten)

    def _housekeeping(self) -> None:
        if time.monotonic() < self._next_housekeeping:
            return
        self._next_housekeeping = time.monotonic() + self.housekeeping_s
        for symbol in list(self.stats.stored):
            try:
                self.stats.sealed += self.store.compact_book(symbol, self.live_ms)
                if self.retention_days > 0:
                    self.stats.expired += self.store.book_retention(symbol, self.retention_days)
            except StoreError as exc:
                log.warning("book housekeeping of %s skipped: %s", symbol, exc)

    def _write_loop(self, stop: threading.Event) -> None:
        while True:
            try:
                if not self._write_step(stop):
                    return
            except Exception:  # a dead writer would stall the recorder silently: log, count, go on
                self.stats.write_errors += 1
                log.exception("book recorder writer failed; going on in 1 s")
                if stop.wait(1.0):
                    return

    def _write_step(self, stop: threading.Event) -> bool:
        self._housekeeping()
        with self._lock:
            chunks = self.spool.take(CHUNKS_PER_WRITE)
            self._writing = bool(chunks)
        try:
            if not chunks:
                if stop.is_set():
                    return False
                self._wake.wait(0.05)
                self._wake.clear()
                return True
            try:
                written = self.write([part for chunk in chunks for part in chunk], stop)
            except BaseException:
                self.spool.putback(chunks)
                raise
            if not written:
                self.spool.putback(chunks)
                if self._resend_owed:  # batches Valkey may have lost go back too, for the next run
                    self.spool.putback([parts for _, parts in self._retained])
                    self._retained.clear()
                return False
            return True
        finally:
            with self._lock:
                self._writing = False

    # -- loops -----------------------------------------------------------------------------------

    def run(self, subscriber: Subscriber | None, stop: threading.Event) -> None:
        """Receive from the bus (or only from `submit` when `subscriber` is None) and write, until
        `stop`; then write what is queued while Valkey takes it, and keep the rest in the spool file."""
        if subscriber is not None and subscriber.ordered:
            raise ValueError("the book recorder keeps every valid frame: give it a Subscriber(ordered=False)")
        self._subscriber = subscriber
        writer_stop = threading.Event()
        writer = threading.Thread(
            target=self._write_loop, args=(writer_stop,), name="book-writer", daemon=True
        )
        writer.start()
        try:
            while not stop.is_set():
                if subscriber is None:
                    stop.wait(0.05)
                    continue
                messages = subscriber.receive(
                    timeout_ms=50, max_messages=MAX_FRAMES, linger_ms=LINGER_MS, max_bytes=MAX_BYTES
                )
                decoded = self.decode(messages) if messages else DecodedFrames()
                topics = {f.symbol: book_topic(f.symbol) for f in decoded.frames}
                subscriber.track([(topics[f.symbol], f.seq) for f in decoded.frames])
                self._take_fills(subscriber)
                self._queue_live(decoded.parts, subscriber)
        finally:
            if subscriber is not None:
                subscriber.finish_fills(FILL_WAIT_S)
                self._take_fills(subscriber)
                self._release_held()
            writer_stop.set()
            self._wake.set()
            writer.join()
            self.writer.release()
            if len(self.spool):
                log.warning(
                    "%d chunks of book frames not yet in Valkey are kept in %s",
                    len(self.spool),
                    self.spool.path,
                )
            self.spool.close()

    def caught_up(self, last_seqs: dict[str, int]) -> bool:
        """True once every symbol's update seq in `last_seqs` is stored, with every gap fill and
        nothing left queued."""
        with self._lock:
            subscriber = self._subscriber
            if subscriber is not None and subscriber.filling():
                return False
            if self._held or self._taking_fill or self._writing or len(self.spool):
                return False
            done = self.stats.last_seq
            return all(done.get(s, 0) >= n for s, n in last_seqs.items())
