"""`tickvault ingest`: files into history (`sources.bulk_load`) or, with `--via-bus`, through the bus
and recorder as a replay; the progress bar, the summaries and the exit code. Order-book files (told
by their columns) go through the book writer into book history (`sources.book_load`), never via the
bus (whose numbering would store a rerun twice).

Output: per file a line `NAME: read= stored= duplicates= rejected= (reasons)` and a total line
ending in `durable=yes|NO` on stdout (or one JSON document with `--format json`); rejected rows on
stderr (the first `--show`; `--rejects FILE` gets every one as CSV); on a terminal a progress bar per
file (rows, rows/s, time left) on stderr. Exit code 0; 2 when a file could not be read (a missing
column, a damaged file: the other files are still loaded); 1 when the store failed, the writes
could not be confirmed durable, or SIGINT/SIGTERM stopped the load (after the chunk in hand: what was
read is stored, and running the command again loads the rest).
"""

from __future__ import annotations

import json
import logging
import re
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeRemainingColumn

from tickvault.config import Settings
from tickvault.errors import ConfigError
from tickvault.sources.book_files import is_book_path
from tickvault.sources.book_load import BookFileReport, load_book_paths
from tickvault.sources.bulk_load import (
    DEFAULT_MEMORY,
    FileReport,
    count_batch,
    load_files,
    memory_plan,
    ticks_of,
)
from tickvault.sources.tick_files import TickFile, expand, members

_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([KMG]?)(?:i?B)?", re.IGNORECASE)
_UNIT = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


def parse_memory(text: str | None) -> int:
    """`768MiB`, `1GiB`, `64M`, `500000000` -> bytes."""
    if text is None:
        return DEFAULT_MEMORY
    found = _SIZE.fullmatch(text.strip())
    if found is None or float(found.group(1)) <= 0:
        raise ConfigError("--memory", text, "must be a size such as 768MiB, 1GiB or 64M")
    return int(float(found.group(1)) * _UNIT[found.group(2).upper()])


class BarProgress:
    """A rich progress bar per file on stderr: rows read, rows/s, time left (by bytes read)."""

    def __init__(self, console: Console) -> None:
        self.bars = Progress(
            TextColumn("{task.description}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
            TextColumn("{task.fields[rows]:>12,} rows {task.fields[rate]:>11,.0f} rows/s"),
            TimeRemainingColumn(), console=console, transient=False,
        )  # fmt: skip
        self._tasks: dict[str, tuple[TaskID, float]] = {}

    def start(self, file: TickFile) -> None:
        task = self.bars.add_task(file.name, total=max(1, file.total_bytes), rows=0, rate=0.0)
        self._tasks[file.name] = (task, time.monotonic())

    def advance(self, file: TickFile, report: FileReport) -> None:
        task, started = self._tasks[file.name]
        rate = report.read / max(1e-9, time.monotonic() - started)
        self.bars.update(task, completed=file.done_bytes, rows=report.read, rate=rate)

    def finish(self, file: TickFile, report: FileReport) -> None:
        task, started = self._tasks[file.name]
        rate = report.read / max(1e-9, time.monotonic() - started)
        self.bars.update(task, completed=max(1, file.total_bytes), rows=report.read, rate=rate)


@contextmanager
def _stop_on_signals(stop: threading.Event) -> Iterator[None]:
    """SIGINT/SIGTERM end the load after the chunk in hand (what was read is stored, a rerun does
    the rest) instead of cutting it anywhere."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    before = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)


def run_ingest(
    settings: Settings,
    paths: list[str],
    *,
    symbol: str | None = None,
    via_bus: bool = False,
    json_output: bool = False,
    show: int = 50,
    memory: str | None = None,
    rejects: Path | None = None,
    err: Console,
    say: Callable[[str, int], None],
) -> int:
    """The `ingest` command's work; returns the exit code. `err` shows the progress bars (on a
    terminal), `say` the lines for the user (rejected rows)."""
    started = time.monotonic()
    stop = threading.Event()
    with ExitStack() as stack:
        rejects_file = stack.enter_context(rejects.open("w", encoding="utf-8")) if rejects else None
        if rejects_file is not None:
            rejects_file.write("file,line,field,reason\n")
        stack.enter_context(_stop_on_signals(stop))
        if via_bus:
            reports, durable = _via_bus(settings, paths, symbol, show, rejects_file, stop)
        else:
            reports, durable = _bulk(
                settings, paths, symbol, parse_memory(memory), show, rejects_file, stop, err
            )
    elapsed = time.monotonic() - started
    for report in reports:
        if report.error:
            say(f"tickvault: error: {report.error}", logging.ERROR)
        for row in report.bad[:show]:
            say(f"rejected {report.name}:{row}", logging.WARNING)
        if report.rejected > show:
            say(f"... and {report.rejected - show} more rejected rows in {report.name}", logging.WARNING)
    _print_result(reports, durable, elapsed, json_output)
    if stop.is_set():
        say("tickvault: interrupted: what was read is stored; run the same command again for the rest",
            logging.WARNING)  # fmt: skip
        return 1
    if any(r.error for r in reports):
        return 2
    return 0 if durable else 1


def _bulk(
    settings: Settings,
    paths: list[str],
    symbol: str | None,
    memory_bytes: int,
    show: int,
    rejects: Any,
    stop: threading.Event,
    err: Console,
) -> tuple[list[FileReport], bool]:
    from tickvault.store.api import Store
    from tickvault.store.connection import Connection

    with Connection.open(settings) as conn:
        conn.check()
        store = Store(conn.client("ingest"), conn.keys)
        bars = BarProgress(err) if err.is_terminal else None
        files = expand(paths)
        books = [path for path in files if is_book_path(path, symbol=symbol)]  # told by their columns
        ticks = [path for path in files if path not in books]
        reports = []
        if ticks:
            with bars.bars if bars is not None else ExitStack():
                reports = load_files(
                    store, ticks, symbol=symbol, memory_bytes=memory_bytes, keep_bad=show, progress=bars,
                    rejects=rejects, stop=stop,
                )  # fmt: skip
        reports += load_book_paths(store, books, symbol=symbol, keep_bad=show, rejects=rejects, stop=stop)
        return reports, store.wait_durable()


def _via_bus(
    settings: Settings, paths: list[str], symbol: str | None, show: int, rejects: Any, stop: threading.Event
) -> tuple[list[FileReport], bool]:
    """Each file through a private bus and the recorder, as `run --source replay:` plays it."""
    from tickvault.app.system import System

    reports: list[FileReport] = []
    durable = True
    for path in expand(paths):
        if is_book_path(path, symbol=symbol):  # the bus numbers updates afresh: a rerun would add them again
            why = "is a book file: ingest it without --via-bus (idempotent) or play it: run --source replay:"
            reports.append(BookFileReport(path.name, error=f"{path.name} {why}"))
            continue
        for file in members(path, symbol=symbol, chunk_bytes=memory_plan(DEFAULT_MEMORY)[0]):
            if stop.is_set():
                return reports, durable
            report = FileReport(file.name)
            started = time.monotonic()
            try:
                symbols = sorted({s for batch in file.batches() for s in set(batch.symbols)})
            except Exception as exc:  # noqa: BLE001 - the file's own error, reported as such
                report.error = str(exc)
                reports.append(report)
                continue

            def rows(_: object, file: TickFile = file, report: FileReport = report) -> Iterator[Any]:
                for batch in file.batches():
                    count_batch(report, batch, show, rejects)
                    yield from ticks_of(batch)
                    if stop.is_set():
                        return

            system = System(
                settings.model_copy(update={"symbols": tuple(symbols) or settings.symbols}),
                source=rows, private_bus=True, hold_back=True,
            )  # fmt: skip
            system.start()
            system.wait()
            summary = system.stop()
            report.stored, report.duplicates = sum(summary.stored.values()), summary.duplicates
            report.elapsed_s = time.monotonic() - started
            durable = durable and summary.drained and summary.durable
            reports.append(report)
    return reports, durable


def _print_result(reports: list[FileReport], durable: bool, elapsed: float, json_output: bool) -> None:
    total = Counter[str]()
    for r in reports:
        total.update(read=r.read, stored=r.stored, duplicates=r.duplicates, rejected=r.rejected)
    if json_output:
        doc = {
            "files": [_as_json(r) for r in reports],
            "total": {**total, "files": len(reports), "elapsed_s": round(elapsed, 3)},
            "durable": durable,
        }
        print(json.dumps(doc))
        return
    for report in reports:
        print(report.line())
    rate = total["read"] / elapsed if elapsed > 0 else 0.0
    print(
        f"total: files={len(reports)} read={total['read']} stored={total['stored']} "
        f"duplicates={total['duplicates']} rejected={total['rejected']} in {elapsed:.2f} s "
        f"({rate:,.0f} rows/s) durable={'yes' if durable else 'NO'}"
    )


def _as_json(report: FileReport) -> dict[str, Any]:
    return {
        "file": report.name, "read": report.read, "stored": report.stored,
        "duplicates": report.duplicates, "rejected": report.rejected, "reasons": dict(report.reasons),
        "rejected_rows": [
            {"line": b.line, "field": b.error.field, "reason": b.error.reason} for b in report.bad
        ],
        "error": report.error, "elapsed_s": round(report.elapsed_s, 3),
        **({"skipped": report.skipped} if isinstance(report, BookFileReport) else {}),
    }  # fmt: skip
