"""Order-book files into the store: what `tickvault ingest` does with a book file.

A book file's batches (`book_files`) go through the book writer (`store.book_writer`: whole batches,
idempotent on each update's seq, a snapshot every so many updates) and are then sealed into book
history blocks, as the live recorder's housekeeping seals them. Numbering makes it idempotent: a
file's updates of a symbol take the seqs after what the store holds of that symbol, and that first
seq is remembered under the digest of the file's content (`KeySpace.book_files`), so ingesting the
same file again (or the rest of it after an interrupted load) gives every update the same seq and
the writer stores none twice. A book is one sequence per symbol read in seq order, so a new file
must continue the stored book: one whose first update is older than the stored book's newest is
refused with a clear error (ingest a symbol's files in time order).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np

from tickvault.domain.book import BookColumns, BookKind
from tickvault.domain.events import from_ms
from tickvault.errors import DataError, TickvaultError
from tickvault.sources.book_files import BookFileReader, book_layout
from tickvault.sources.book_layouts import BookLayout
from tickvault.sources.bulk_load import FileReport, count_bad
from tickvault.sources.tick_files import TickFile, members
from tickvault.store.api import Store
from tickvault.store.book_writer import SNAPSHOT_EVERY, BookPart, BookWriter

log = logging.getLogger("tickvault.ingest")

WRITE_EVERY = 50_000  # updates read ahead of the writes


@dataclass
class BookFileReport(FileReport):
    """What happened to one book file: `stored` and `duplicates` count updates (a snapshot's clear
    is one), `skipped` the rows before a symbol's first snapshot."""

    skipped: int = 0

    def line(self) -> str:
        base = super().line()
        return base if self.error else f"{base} skipped={self.skipped} (book, before its first snapshot)"


def file_digest(file: TickFile) -> str:
    """The SHA-256 of a file's content (what an archive holds, decompressed)."""
    digest = hashlib.sha256()
    with file.opener() as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()[:32]


class _SymbolSeqs:
    """Each symbol's first seq for this file, registered under the file's digest."""

    def __init__(self, store: Store, digest: str, kind: BookKind) -> None:
        self.store, self.digest, self.kind = store, digest, kind
        self.base: dict[str, int] = {}

    def of(self, symbol: str, first_ms: int) -> int:
        if symbol in self.base:
            return self.base[symbol]
        store, key = self.store, self.store.keys.book_files(symbol)
        position = store.book_position(symbol)
        if position.kind is not None and position.kind != self.kind:
            raise DataError("kind", f"{symbol}'s stored book is {position.kind}, this file is {self.kind}")
        known = store.client.hget(key, self.digest)
        if known is None:
            if position.kind is not None and first_ms < position.ms:
                raise DataError(
                    "timestamp",
                    f"{symbol}'s stored book runs to {from_ms(position.ms).isoformat()}; this file starts at "
                    f"{from_ms(first_ms).isoformat()} (ingest a symbol's book files in time order)",
                )
            store.client.hsetnx(key, self.digest, position.seq)
            known = store.client.hget(key, self.digest)
        self.base[symbol] = int(known)
        return self.base[symbol]


def load_book_file(
    store: Store,
    file: TickFile,
    layout: BookLayout,
    *,
    keep_bad: int = 50,
    rejects: IO[str] | None = None,
    stop: threading.Event | None = None,
) -> BookFileReport:
    """One book file into the store (see the module docstring); its errors are in the report."""
    report = BookFileReport(file.name)
    started = time.monotonic()
    writer = BookWriter(store.client, store.keys, owner=f"ingest-{file.name}-{time.time_ns()}")
    pending: list[BookPart] = []
    touched: set[str] = set()
    reader = BookFileReader(file, layout)
    seqs = _SymbolSeqs(store, "", layout.kind)
    try:
        seqs.digest = file_digest(file)
        for parts, bad in reader.chunks():
            for row in bad:
                count_bad(report, row, keep_bad, rejects)
            for cols in parts:  # each symbol's checked and registered before anything of it is written
                base = seqs.of(cols.symbol, int(cols.timestamp_ms[0]))
                shifted = BookColumns(cols.symbol, cols.kind, **{**cols.columns(), "seq": cols.seq + base})
                pending.append(BookPart(shifted))
                touched.add(cols.symbol)
            if sum(len(p.cols) for p in pending) >= WRITE_EVERY:
                _write(writer, pending, report)
                if stop is not None and stop.is_set():
                    break
        _write(writer, pending, report)
        for symbol in sorted(touched):
            while store.compact_book(symbol, 0):
                pass
    except (TickvaultError, OSError) as exc:  # this file's own: what was read before it is stored
        with contextlib.suppress(
            TickvaultError
        ):  # the store failed: the error says so, a rerun stores the rest
            _write(writer, pending, report)
        report.error = f"{file.name}: {exc}" if not isinstance(exc, DataError) else f"{file.name} {exc}"
    finally:
        writer.release()
    report.read = reader.rows
    report.skipped = sum(reader.skipped.values())
    report.elapsed_s = time.monotonic() - started
    log.info("ingest %s (%.2f s)", report.line(), report.elapsed_s)
    return report


def _write(writer: BookWriter, pending: list[BookPart], report: FileReport) -> None:
    """Each symbol's pending batches, written in pieces of about SNAPSHOT_EVERY updates (cut at batch
    ends): the writer stores a snapshot after such a piece, so any moment is read back from a
    snapshot and a bounded replay, as the live recorder's writes leave it."""
    if not pending:
        return
    by_symbol: dict[str, list[BookColumns]] = {}
    for part in pending:
        by_symbol.setdefault(part.cols.symbol, []).append(part.cols)
    pending.clear()
    for parts in by_symbol.values():
        cols = BookColumns.concat(parts) if len(parts) > 1 else parts[0]
        ends = cols.batch_ends()
        cuts = np.unique(np.searchsorted(ends, np.arange(SNAPSHOT_EVERY, len(cols), SNAPSHOT_EVERY) - 1))
        bounds = [0, *(int(ends[c]) + 1 for c in cuts if c < ends.size - 1), len(cols)]
        for lo, hi in zip(bounds, bounds[1:], strict=False):
            result = writer.write([BookPart(cols.take(slice(lo, hi)))])
            report.stored += result.stored
            report.duplicates += result.duplicates
            for _, updates, why in result.refused:
                report.rejected += updates
                report.reasons[why.field] += updates


def load_book_paths(
    store: Store,
    paths: list[Path],
    *,
    symbol: str | None = None,
    keep_bad: int = 50,
    rejects: IO[str] | None = None,
    stop: threading.Event | None = None,
) -> list[FileReport]:
    """Every book file of `paths` (each a file, a .gz or a .zip of them) into the store, a report each."""
    reports: list[FileReport] = []
    for path in paths:
        try:
            files = [(file, book_layout(file)) for file in members(path, symbol=symbol)]
        except (DataError, OSError) as exc:
            reports.append(BookFileReport(path.name, error=str(exc)))
            continue
        for file, layout in files:
            if stop is not None and stop.is_set():
                return reports
            if layout is None:
                why = "is not a book file (a tick file in a book archive: ingest it apart)"
                reports.append(BookFileReport(file.name, error=f"{file.name} {why}"))
                continue
            reports.append(load_book_file(store, file, layout, keep_bad=keep_bad, rejects=rejects, stop=stop))
    return reports
