"""The order book's recorder: book frames from the bus (or batches handed in-process) into Valkey.

`RecorderLoop` (loop.py) does the receiving, spooling, gap-fill hold, retries, re-sends and drain,
as for ticks; this module is what is particular to the book (`BookFrameKind`): frames validated
column-wise (`book_frames`; a bad batch is rejected, counted by reason and dead-lettered, the frame's
other batches kept; a frame none of whose batches is kept counts for nothing, its number included),
a spool item the validated columns of one received batch of frames (a chunk, one part per symbol),
CHUNKS_PER_WRITE chunks written at a time by `BookWriter` (idempotent by update seq, with snapshots),
a symbol's book one kind (MBP or MBO: parts of the other are rejected), positions by symbol (the
highest update seq).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import msgspec

from tickvault.bus.spool import Spool
from tickvault.domain.book import BookBatch, BookFrame, BookKind, BookUpdate
from tickvault.domain.events import encode
from tickvault.domain.keys import book_topic
from tickvault.errors import DataError
from tickvault.recorder.book_frames import decode_book_frames
from tickvault.recorder.loop import HOUSEKEEPING_S, Intake, LoopStats, RecorderLoop
from tickvault.store.api import Store
from tickvault.store.book_codec import decode_columns, encode_columns
from tickvault.store.book_writer import SNAPSHOT_EVERY, SNAPSHOT_MS, BookPart, BookWriter, BookWriteResult

log = logging.getLogger("tickvault.bookrecorder")

MAX_FRAMES = 5000  # frames received at once: one chunk (the spool's unit) of validated columns
MAX_BYTES = 1 << 20  # ... and at most about this much JSON (~4,000 updates; frames hold many batches)
CHUNKS_PER_WRITE = 4
LIVE_WINDOW_MS = 300_000  # the live book stream keeps 5 minutes; older is sealed into blocks


Chunk = list[BookPart]  # the validated updates of one received batch of frames, one part per symbol


def _encode_chunk(chunk: Chunk) -> bytes:
    return msgspec.msgpack.encode(
        [(p.cols.symbol, p.last_frame, encode_columns(p.cols, level=1)) for p in chunk]
    )


def _decode_chunk(data: bytes) -> Chunk:
    rows = msgspec.msgpack.decode(data, type=list[tuple[str, int, bytes]])
    return [BookPart(decode_columns(blob, symbol), frame) for symbol, frame, blob in rows]


@dataclass
class BookRecorderStats(LoopStats):
    """`received` counts frames; `stored`, `duplicates`, `rewritten` updates; `last_seq` is by symbol,
    the highest update seq confirmed."""

    batches: int = 0
    snapshots: int = 0


class BookFrameKind:
    """Book frames, for `RecorderLoop`."""

    log = log
    rows = "book updates"
    items = "chunks of book frames"
    writer_thread = "book-writer"
    take = CHUNKS_PER_WRITE
    max_messages = MAX_FRAMES
    max_bytes: int | None = MAX_BYTES

    def __init__(
        self,
        store: Store,
        writer: BookWriter,
        live_ms: int,
        reject: Callable[[DataError, Sequence[bytes]], None],
    ) -> None:
        self.store = store
        self.writer = writer
        self.live_ms = live_ms
        self.reject = reject

    def decode(self, messages: Sequence[Sequence[bytes]]) -> Intake[Chunk]:
        decoded = decode_book_frames(messages)
        topics = {f.symbol: book_topic(f.symbol) for f in decoded.frames}
        chunks = [decoded.parts] if decoded.parts else []
        return Intake(chunks, [(topics[f.symbol], f.seq) for f in decoded.frames], decoded.rejected)

    def key(self, symbol: str) -> str:
        return symbol

    def tops(self, chunks: Sequence[Chunk]) -> dict[str, int]:
        top: dict[str, int] = {}
        for chunk in chunks:
            for part in chunk:
                symbol, seq = part.cols.symbol, int(part.cols.seq.max()) if len(part.cols) else 0
                if seq > top.get(symbol, 0):
                    top[symbol] = seq
        return top

    def write(self, chunks: Sequence[Chunk]) -> tuple[list[Chunk], BookWriteResult]:
        parts = self._split_kinds([part for chunk in chunks for part in chunk])
        return ([parts] if parts else []), self.writer.write(parts)

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

    def flush(self) -> None:
        pass  # BookWriter.write returns once Valkey has applied the batch

    def release(self) -> None:
        self.writer.release()

    def count(self, stats: BookRecorderStats, result: BookWriteResult) -> None:
        stats.batches += result.batches
        stats.snapshots += result.snapshots

    def seal(self, symbol: str) -> int:
        return self.store.compact_book(symbol, self.live_ms)

    def expire(self, symbol: str, days: float) -> int:
        return self.store.book_retention(symbol, days)


class BookRecorder(RecorderLoop[Chunk, BookWriteResult, BookRecorderStats]):
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
        self.writer = BookWriter(
            store.client,
            store.keys,
            owner=writer_name,
            snapshot_every=snapshot_every,
            snapshot_ms=snapshot_ms,
        )
        path = spool_path or Path("data") / "spool" / "book-recorder.spool"
        super().__init__(
            store,
            BookFrameKind(store, self.writer, live_ms, self.reject),
            BookRecorderStats(),
            Spool(path, _encode_chunk, _decode_chunk, max_memory=max_memory),
            retention_days=retention_days,
            housekeeping_s=housekeeping_s,
        )

    def submit(self, chunk: Chunk) -> None:
        """Queue validated updates for writing."""
        self.queue([chunk] if chunk else [])

    def submit_batch(self, batch: BookBatch) -> None:
        """The in-process path (no bus): one numbered batch, validated as a frame from the bus is (a
        frame without a number: 0)."""
        kind: BookKind = "mbp" if type(batch[0]) is BookUpdate else "mbo"
        payload = encode(BookFrame(seq=0, symbol=batch[0].symbol, kind=kind, events=batch))
        self.queue(self.intake([[book_topic(batch[0].symbol).encode(), payload]]).items)
