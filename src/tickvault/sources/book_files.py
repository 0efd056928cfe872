"""Order-book files (`book_layouts`) read as the book batches a live source would give.

`book_layout(file)` tells a book file from a tick file by its header (CSV, `.gz`, `.zip` members and
Parquet are opened by `tick_files.members`, as tick files are). `BookFileReader.items()` reads one
row by row, in file order, and yields `BookBatch`es and `BadRow`s (line 1 is the CSV header;
Parquet rows count from 1): a bad row is reported and skipped, the rows around it go on.

Batches (`Batcher`), per symbol: consecutive rows that share a timestamp (as written, to the ns) are
one batch, its last update flagged LAST, so the book is read only between them. A run of
`is_snapshot` rows is one snapshot group, as the simulator's: a clear of the whole book, then every
level, all flagged SNAPSHOT. In a price-level file with snapshots, the rows before a symbol's first
snapshot update a book nobody knows: they are skipped and counted (`skipped`). An order-level file
applies to the book as it is (a first file: an empty book). Update seqs count each symbol's updates
in the file from 1 (the clears included); whoever stores or publishes them renumbers.
"""

from __future__ import annotations

import csv
import io
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tickvault.domain.book import LAST, SNAPSHOT, BookBatch, BookEvent, BookKind, BookUpdate, OrderUpdate
from tickvault.domain.events import SYMBOL_PATTERN, from_ms
from tickvault.errors import DataError
from tickvault.sources.book_layouts import BookLayout, BookRow
from tickvault.sources.files import BadRow
from tickvault.sources.tick_files import TickFile, members


def _header(file: TickFile) -> tuple[list[str], str]:
    """The column names of a file (and the CSV delimiter)."""
    with file.opener() as fh:
        if file.parquet:
            import pyarrow.parquet as pq

            try:
                return list(pq.ParquetFile(fh).schema_arrow.names), ","
            except Exception as exc:  # pyarrow raises several types for a damaged file
                raise DataError("path", f"{file.name} is not a readable Parquet file: {exc}") from None
        text = fh.readline().decode("utf-8-sig", errors="replace").rstrip("\r\n")
    delimiter = max((",", ";", "\t"), key=text.count) if text else ","
    return [c.strip() for c in next(csv.reader([text], delimiter=delimiter), [])], delimiter


def book_layout(file: TickFile) -> BookLayout | None:
    """The book layout of `file`, None for a tick file. DataError: a book file lacking a column."""
    names, _ = _header(file)
    try:
        return BookLayout.detect(names, symbol=file.symbol)
    except DataError as exc:
        raise DataError("columns", f"{file.name} {exc.reason}") from None


def is_book_path(path: Path, *, symbol: str | None = None) -> bool:
    """Whether the file at `path` (or its first member) is a book file (False when unreadable)."""
    try:
        first = next(iter(members(path, symbol=symbol)), None)
        # told by the columns alone: a missing symbol is reported when the file is read
        return first is not None and BookLayout.detect(_header(first)[0], symbol=symbol or "-") is not None
    except (DataError, OSError):
        return False


@dataclass
class _Pending:
    rows: list[BookRow] = field(default_factory=list)
    snapshot: bool = False
    started: bool = False  # a snapshot was seen (files with snapshots skip the rows before it)
    seq: int = 0


class Batcher:
    """Rows of one file, in file order, into BookBatches (see the module docstring)."""

    def __init__(self, kind: BookKind, snapshots: bool) -> None:
        self.kind = kind
        self.snapshots = snapshots and kind == "mbp"
        self.skipped: Counter[str] = Counter()  # symbol -> rows before its first snapshot
        self._open: dict[str, _Pending] = {}

    def add(self, row: BookRow) -> BookBatch | None:
        """Take one row; returns the batch it closed, if any (of the same symbol)."""
        pending = self._open.get(row.symbol)
        if pending is None:
            pending = self._open[row.symbol] = _Pending(started=not self.snapshots)
        if not pending.started and not row.is_snapshot:
            self.skipped[row.symbol] += 1
            return None
        done = None
        if pending.rows and (
            row.is_snapshot != pending.snapshot
            or (not row.is_snapshot and row.stamp != pending.rows[-1].stamp)
        ):
            done = self._close(pending)
        if not pending.rows:
            pending.snapshot = row.is_snapshot
        pending.started = True
        pending.rows.append(row)
        return done

    def finish(self) -> Iterator[BookBatch]:
        """The batches still open, at the end of the file."""
        for pending in self._open.values():
            if pending.rows:
                yield self._close(pending)

    def _close(self, pending: _Pending) -> BookBatch:
        rows, pending.rows = pending.rows, []
        flags = SNAPSHOT if pending.snapshot else 0
        events: list[BookEvent] = []
        if pending.snapshot:
            first = rows[0]
            pending.seq += 1
            events.append(self._event(first, pending.seq, flags, clear=True))
        for i, row in enumerate(rows):
            pending.seq += 1
            events.append(self._event(row, pending.seq, flags | (LAST if i == len(rows) - 1 else 0)))
        return BookBatch(events)

    def _event(self, row: BookRow, seq: int, flags: int, *, clear: bool = False) -> BookEvent:
        stamp = from_ms(row.timestamp_ms)
        common = dict(symbol=row.symbol, timestamp=stamp, timestamp_ms=row.timestamp_ms,
                      received_ms=row.received_ms, seq=seq, flags=flags)  # fmt: skip
        if clear:
            cleared = dict(side="none", price=0.0, quantity=0, action="clear")
            if self.kind == "mbp":
                return BookUpdate(**common, **cleared)  # type: ignore[arg-type]
            return OrderUpdate(**common, **cleared, order_id=0)  # type: ignore[arg-type]
        if self.kind == "mbp":
            return BookUpdate(
                **common, side=row.side, price=row.price, quantity=row.quantity, orders=row.orders,  # type: ignore[arg-type]
                action=row.action,
            )  # fmt: skip
        return OrderUpdate(
            **common, side=row.side, price=row.price, quantity=row.quantity, order_id=row.order_id,  # type: ignore[arg-type]
            agent=row.agent, action=row.action,
        )  # fmt: skip


class BookFileReader:
    """One book file (a plain file or an archive member) read into batches and bad rows."""

    def __init__(self, file: TickFile, layout: BookLayout) -> None:
        self.file = file
        self.layout = layout
        self.batcher = Batcher(layout.kind, layout.has_snapshots)
        self.rows = 0  # data rows read, good and bad

    @property
    def skipped(self) -> Counter[str]:
        return self.batcher.skipped

    def items(self) -> Iterator[BookBatch | BadRow]:
        """The file's batches and bad rows in file order."""
        layout, batcher = self.layout, self.batcher
        for line, raw in self._raw_rows():
            self.rows += 1
            if isinstance(raw, DataError):
                yield BadRow(line, raw)
                continue
            try:
                row = layout.row(raw)
            except DataError as exc:
                yield BadRow(line, exc)
                continue
            if row.is_snapshot and layout.kind == "mbo":
                row = row._replace(is_snapshot=False)
            done = batcher.add(row)
            if done is not None:
                yield done
        yield from batcher.finish()

    def _raw_rows(self) -> Iterator[tuple[int, dict[str, object] | DataError]]:
        if self.file.parquet:
            yield from self._parquet_rows()
            return
        with self.file.opener() as raw:
            text = io.TextIOWrapper(raw, encoding="utf-8-sig", errors="replace", newline="")
            header = text.readline()
            delimiter = max((",", ";", "\t"), key=header.count) if header else ","
            names = [c.strip() for c in next(csv.reader([header], delimiter=delimiter), [])]
            reader = csv.reader(text, delimiter=delimiter)
            for values in reader:
                line = reader.line_num + 1  # the header was read apart
                if not values or values == [""]:
                    continue
                if len(values) != len(names):
                    yield line, DataError("row", f"{len(values)} values for {len(names)} columns")
                    continue
                yield line, dict(zip(names, values, strict=True))

    def _parquet_rows(self) -> Iterator[tuple[int, dict[str, object] | DataError]]:
        import pyarrow.parquet as pq

        with self.file.opener() as fh:
            try:
                source = pq.ParquetFile(fh)
            except Exception as exc:  # pyarrow raises several types for a damaged file
                raise DataError("path", f"{self.file.name} is not a readable Parquet file: {exc}") from None
            line = 0
            for batch in source.iter_batches(batch_size=65_536, columns=list(self.layout.fields)):
                for row in batch.to_pylist():
                    line += 1
                    yield line, row


def read_book(path: Path, *, symbol: str | None = None) -> Iterator[BookBatch | BadRow]:
    """Every book file in `path` (itself, a .gz's content, a .zip's members) as batches and bad rows.
    DataError when it is not a book file."""
    for file in members(Path(path), symbol=symbol):
        layout = book_layout(file)
        if layout is None:
            raise DataError(
                "columns", f"{file.name} is not a book file (no is_snapshot, or order id and action)"
            )
        yield from BookFileReader(file, layout).items()


def book_file_symbols(path: Path, *, symbol: str | None = None) -> list[str]:
    """The distinct symbols of a book file, in order of appearance (a first pass over it)."""
    seen: dict[str, None] = {}
    for file in members(Path(path), symbol=symbol):
        layout = book_layout(file)
        if layout is None:
            continue
        if layout.symbol_column is None:
            return [symbol] if symbol else []
        for _, raw in BookFileReader(file, layout)._raw_rows():
            if isinstance(raw, dict):
                value = str(raw.get(layout.symbol_column) or "").strip()
                if value and value not in seen:
                    seen[value] = None
    return [s for s in seen if SYMBOL_PATTERN.fullmatch(s)]  # the others are bad rows when read
