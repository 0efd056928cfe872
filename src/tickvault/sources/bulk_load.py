"""Tick files into history: what `tickvault ingest` does, file by file.

`load_files` reads each file in chunks (`tick_files`, decided column-wise by `tick_table`) on a
reader thread while the calling thread hands the chunks to the bulk writer (`store.bulk`), which
merges them into sealed history blocks per symbol and session; each file is flushed when it ends,
so its counts are its own. Memory is bounded by `memory_bytes`: it sizes the chunks (a chunk takes
about 12x its bytes while it is parsed and converted, and two wait in the queue) and the rows the
writer buffers before it merges. The process itself (Python, numpy, pyarrow, pandas) takes about
200 MB more.

`ticks_of` turns the same chunks into Tick objects for `ingest --via-bus` (a replay through the bus
and recorder, as the live path writes).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Protocol

from tickvault.domain.events import Tick, make_tick
from tickvault.domain.tick_schema import AGGRESSOR_CODES
from tickvault.errors import DataError
from tickvault.sources.files import BadRow
from tickvault.sources.tick_files import TickFile, expand, members
from tickvault.sources.tick_table import TickBatch
from tickvault.store.api import Store
from tickvault.store.bulk import ROW_BYTES, BulkWriter

log = logging.getLogger("tickvault.ingest")

DEFAULT_MEMORY = 768 << 20  # working memory: with the process itself, under 1 GiB
_CHUNK_SHARE = 48  # chunk bytes = memory / this (about 12x a chunk is live while it is converted)
_QUEUE = 4  # chunks read ahead of the writer (as tick columns: ~80 B a row)


@dataclass
class FileReport:
    """What happened to one file."""

    name: str
    read: int = 0
    stored: int = 0
    duplicates: int = 0
    rejected: int = 0
    reasons: Counter[str] = field(default_factory=Counter)  # rejected rows by field
    bad: list[BadRow] = field(default_factory=list)  # the first ones, to show
    error: str | None = None  # the file could not be read at all (missing column, damaged)
    elapsed_s: float = 0.0

    def line(self) -> str:
        """The one-line summary: `read= stored= duplicates= rejected=`."""
        if self.error:
            return f"{self.name}: error: {self.error}"
        why = f" ({', '.join(f'{k}={v}' for k, v in self.reasons.most_common())})" if self.rejected else ""
        return (
            f"{self.name}: read={self.read} stored={self.stored} duplicates={self.duplicates} "
            f"rejected={self.rejected}{why}"
        )


class Progress(Protocol):
    """Told about each file as it goes (the CLI draws a bar, or prints a line per file)."""

    def start(self, file: TickFile) -> None: ...

    def advance(self, file: TickFile, report: FileReport) -> None: ...

    def finish(self, file: TickFile, report: FileReport) -> None: ...


def memory_plan(memory_bytes: int) -> tuple[int, int]:
    """(chunk bytes, rows the writer buffers) for a working-memory bound."""
    chunk = max(64 << 10, min(64 << 20, memory_bytes // _CHUNK_SHARE))
    rows = max(10_000, (memory_bytes // 2) // (ROW_BYTES * 3))  # merging a session takes ~3x its rows
    return chunk, rows


def load_files(
    store: Store,
    paths: list[str] | list[Path],
    *,
    symbol: str | None = None,
    memory_bytes: int = DEFAULT_MEMORY,
    keep_bad: int = 50,
    progress: Progress | None = None,
    rejects: IO[str] | None = None,
    stop: threading.Event | None = None,
) -> list[FileReport]:
    """Every file of `paths` (files, directories, globs) straight into history blocks. `rejects`
    gets every rejected row (`file,line,field,reason`); `stop` ends the load after the chunk in hand
    (what was read is stored: a rerun does the rest)."""
    chunk, rows = memory_plan(memory_bytes)
    writer = BulkWriter(store, buffer_rows=rows)
    reports: list[FileReport] = []
    report = FileReport("")
    started = 0.0
    for kind, file, item in _read_ahead(expand(paths), symbol, chunk, stop or threading.Event()):
        if kind == "start":
            report, started = FileReport(file.name), time.monotonic()
            if progress is not None:
                progress.start(file)
        elif kind == "batch":
            assert isinstance(item, TickBatch)
            count_batch(report, item, keep_bad, rejects)
            writer.add(item.symbols, item.symbol, item.cols)
            if progress is not None:
                progress.advance(file, report)
        else:  # "end", or "error" with the file's own error: what was read is stored either way
            report.error = str(item) if item is not None else None
            done = writer.flush()
            report.stored, report.duplicates = done.stored, done.duplicates
            report.elapsed_s = time.monotonic() - started
            if progress is not None:
                progress.finish(file, report)
            log.info("ingest %s (%.2f s)", report.line(), report.elapsed_s)
            reports.append(report)
    return reports


def count_batch(report: FileReport, batch: TickBatch, keep_bad: int, rejects: IO[str] | None) -> None:
    """Add a batch's rows and rejects to the report; every reject to `rejects` (CSV)."""
    report.read += batch.rows
    for row in batch.bad:
        count_bad(report, row, keep_bad, rejects)


def count_bad(report: FileReport, row: BadRow, keep_bad: int, rejects: IO[str] | None) -> None:
    """One rejected row: counted by reason, kept up to `keep_bad`, written to `rejects` (CSV)."""
    report.rejected += 1
    report.reasons[row.error.field] += 1
    if len(report.bad) < keep_bad:
        report.bad.append(row)
    if rejects is not None:
        reason = row.error.reason.replace('"', '""')
        rejects.write(f'"{report.name}",{row.line},{row.error.field},"{reason}"\n')


_Item = tuple[str, TickFile, "TickBatch | DataError | None"]


def _read_ahead(paths: list[Path], symbol: str | None, chunk: int, stop: threading.Event) -> Iterator[_Item]:
    """("start", file, None), ("batch", file, batch)..., then ("end", file, None) or ("error", file,
    DataError) for every file, read on a thread of their own, running ahead of the writer by a few
    chunks, across files too: pyarrow's parsing and most numpy work release the GIL, so reading
    overlaps merging (the merge at a file's end included)."""
    handoff: queue.Queue[_Item | BaseException | None] = queue.Queue(_QUEUE)
    quit_reading = threading.Event()

    def put(item: _Item | BaseException | None) -> bool:
        while not quit_reading.is_set():
            try:
                handoff.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def read() -> None:
        try:
            for path in paths:
                try:
                    files = list(members(path, symbol=symbol, chunk_bytes=chunk))
                except (DataError, OSError) as exc:
                    failed = TickFile(path.name, False, _no_opener, 0, symbol)
                    if not (
                        put(("start", failed, None)) and put(("error", failed, _file_error(path.name, exc)))
                    ):
                        return
                    continue
                for file in files:
                    if stop.is_set() or not put(("start", file, None)):
                        return
                    try:
                        for batch in file.batches():
                            if stop.is_set():
                                break
                            if not put(("batch", file, batch)):
                                return
                    except (DataError, OSError) as exc:  # this file's own: the others still load
                        if not put(("error", file, _file_error(file.name, exc))):
                            return
                        continue
                    if not put(("end", file, None)) or stop.is_set():
                        return
        except BaseException as exc:  # handed to the consuming thread, which raises it
            put(exc)
            return
        finally:
            put(None)

    thread = threading.Thread(target=read, name="ingest-read", daemon=True)
    thread.start()
    try:
        while (item := handoff.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        quit_reading.set()
        thread.join()


def _no_opener() -> IO[bytes]:
    raise DataError("path", "not readable")


def _file_error(name: str, exc: Exception) -> DataError:
    return exc if isinstance(exc, DataError) else DataError("path", f"{name}: {exc}")


def ticks_of(batch: TickBatch) -> Iterator[Tick]:
    """A batch's rows as Tick objects, in file order (for the replay through the bus)."""
    c = batch.cols
    for i in range(len(c)):
        yield make_tick(
            batch.symbols[batch.symbol[i]],
            int(c.timestamp_ms[i]),
            int(c.trade_id[i]),
            float(c.price[i]),
            int(c.quantity[i]),
            volume=float(c.volume[i]),
            buyer=int(c.buyer[i]),
            seller=int(c.seller[i]),
            trade_type=int(c.trade_type[i]),
            aggressor=AGGRESSOR_CODES[c.aggressor[i]],
            is_edit=bool(c.is_edit[i]),
        )
