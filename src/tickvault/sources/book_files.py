"""Order-book files (`book_layouts`) read as the book batches a live source would give.

`book_layout(file)` tells a book file from a tick file by its header (CSV, `.gz`, `.zip` members and
Parquet are opened by `tick_files.members`, as tick files are). `BookFileReader` reads one in chunks
(CSV cut at line ends and parsed by `tick_files`' chunk parser, which keeps each row's line number;
Parquet by record batches), checks each chunk a column at a time (`book_table.read_rows`) and cuts
it into batches: `chunks()` gives each symbol's complete batches as `BookColumns` (what `ingest`
stores), `items()` the same as `BookBatch`es, symbols merged by time (what `run` plays), with the
`BadRow`s (line 1 is the CSV header; Parquet rows count from 1): a bad row is reported and skipped,
the rows around it go on.

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
import heapq
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tickvault.domain.book import CLEAR, LAST, NO_SIDE, SNAPSHOT, BookBatch, BookColumns, BookKind
from tickvault.domain.events import SYMBOL_PATTERN
from tickvault.errors import DataError
from tickvault.sources.book_layouts import BookLayout
from tickvault.sources.book_table import BookRows, read_rows
from tickvault.sources.files import BadRow
from tickvault.sources.tick_files import TickFile, _ChunkParser, _chunks, members


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
class _Open:
    """One symbol's state between chunks: whether its book started (a snapshot was seen), the
    updates numbered so far, and the rows of its batch still open (its end is not known yet)."""

    started: bool
    seq: int = 0
    rows: BookRows | None = None


class Batcher:
    """Checked rows, chunk by chunk in file order, into each symbol's complete batches as
    BookColumns (see the module docstring)."""

    def __init__(self, kind: BookKind, snapshots: bool) -> None:
        self.kind = kind
        self.snapshots = snapshots and kind == "mbp"
        self.skipped: Counter[str] = Counter()  # symbol -> rows before its first snapshot
        self._open: dict[str, _Open] = {}

    def add(self, rows: BookRows) -> list[BookColumns]:
        """The batches `rows` complete, per symbol (in order of first appearance)."""
        out = []
        codes, first = np.unique(rows.symbol, return_index=True)
        for code in codes[np.argsort(first)].tolist():
            symbol = rows.symbols[code]
            state = self._open.setdefault(symbol, _Open(started=not self.snapshots))
            mine = rows.take(np.flatnonzero(rows.symbol == code))
            if not state.started:
                snaps = np.flatnonzero(mine.snapshot)
                skip = int(snaps[0]) if snaps.size else len(mine)
                self.skipped[symbol] += skip
                if not snaps.size:
                    continue
                mine, state.started = mine.take(np.arange(skip, len(mine))), True
            if state.rows is not None:
                mine = _concat(state.rows, mine)
            starts = _group_starts(mine)
            state.rows = mine.take(np.arange(int(starts[-1]), len(mine)))  # its end is not known yet
            if starts[-1] > 0:
                out.append(self._columns(symbol, state, mine.take(np.arange(int(starts[-1]))), starts[:-1]))
        return out

    def finish(self) -> list[BookColumns]:
        """The batches still open, at the end of the file."""
        out = []
        for symbol, state in self._open.items():
            if state.rows is not None and len(state.rows):
                out.append(self._columns(symbol, state, state.rows, _group_starts(state.rows)))
                state.rows = None
        return out

    def _columns(self, symbol: str, state: _Open, rows: BookRows, starts: np.ndarray) -> BookColumns:
        """Whole batches (`starts`: where each begins) as columns: LAST on each one's last row, a
        clear before each snapshot group, seqs continuing the symbol's."""
        n = len(rows)
        last = np.zeros(n, np.bool_)
        last[np.r_[starts[1:] - 1, n - 1]] = True
        at = starts[rows.snapshot[starts]]  # a clear goes before each snapshot group
        zeros = np.zeros(at.size, np.int64)
        snap = np.insert(rows.snapshot, at, True)
        flags = np.where(snap, SNAPSHOT, 0) | np.where(np.insert(last, at, False), LAST, 0)
        state.seq += n + at.size
        return BookColumns(
            symbol,
            self.kind,
            timestamp_ms=np.insert(rows.timestamp_ms, at, rows.timestamp_ms[at]),
            received_ms=np.insert(rows.received_ms, at, rows.received_ms[at]),
            seq=np.arange(state.seq - n - at.size + 1, state.seq + 1),
            side=np.insert(rows.side, at, NO_SIDE),
            price=np.insert(rows.price, at, 0.0),
            quantity=np.insert(rows.quantity, at, zeros),
            orders=np.insert(rows.orders, at, zeros),
            order_id=np.insert(rows.order_id, at, zeros),
            agent=np.insert(rows.agent, at, zeros),
            action=np.insert(rows.action, at, CLEAR),
            flags=flags,
        )


def _group_starts(rows: BookRows) -> np.ndarray:
    """Where each batch begins: a row of another timestamp, or into or out of a snapshot run."""
    snap, stamp = rows.snapshot, rows.stamp
    new = np.empty(len(rows), np.bool_)
    new[0] = True
    new[1:] = (snap[1:] != snap[:-1]) | (~snap[1:] & (stamp[1:] != stamp[:-1]))
    return np.flatnonzero(new)


def _concat(a: BookRows, b: BookRows) -> BookRows:
    symbols = b.symbols
    arrays = {}
    for name in ("stamp", "timestamp_ms", "received_ms", "side", "price", "quantity", "orders", "order_id",
                 "agent", "action", "snapshot"):  # fmt: skip
        arrays[name] = np.concatenate([getattr(a, name), getattr(b, name)])
    # the symbol codes of `a` are of its own chunk: a symbol's rows take one code in `b`'s list
    code = b.symbol[0] if len(b) else 0
    return BookRows(symbols, np.full(len(a) + len(b), code, np.int32), **arrays)


class BookFileReader:
    """One book file (a plain file or an archive member) read in chunks into batches and bad rows."""

    def __init__(self, file: TickFile, layout: BookLayout, *, vectorised: bool = True) -> None:
        self.file = file
        self.layout = layout
        self.vectorised = vectorised
        self.batcher = Batcher(layout.kind, layout.has_snapshots)
        self.rows = 0  # data rows read, good and bad

    @property
    def skipped(self) -> Counter[str]:
        return self.batcher.skipped

    def chunks(self) -> Iterator[tuple[list[BookColumns], list[BadRow]]]:
        """(each symbol's complete batches as columns, bad rows) chunk by chunk, in file order;
        the batches still open come last."""
        for table, lines, bad in self._tables():
            self.rows += table.num_rows + len(bad)
            rows, rejected = read_rows(table, lines, self.layout, vectorised=self.vectorised)
            bad += rejected
            yield (self.batcher.add(rows) if len(rows) else []), sorted(bad, key=lambda b: b.line)
        yield self.batcher.finish(), []

    def items(self) -> Iterator[BookBatch | BadRow]:
        """The file's batches (symbols merged by time) and bad rows."""
        for parts, bad in self.chunks():
            yield from bad
            yield from heapq.merge(*(_batches(cols) for cols in parts), key=lambda b: b.timestamp_ms)

    def _tables(self) -> Iterator[tuple[pa.Table, np.ndarray, list[BadRow]]]:
        if self.file.parquet:
            yield from self._parquet()
            return
        with self.file.opener() as fh:
            header = fh.readline()
            text = header.decode("utf-8-sig", errors="replace").rstrip("\r\n")
            delimiter = max((",", ";", "\t"), key=text.count) if text else ","
            names = [c.strip() for c in next(csv.reader([text], delimiter=delimiter), [])]
            parse = _ChunkParser(names, self.layout, delimiter)
            # a small file, a small buffer (the chunk reader allocates twice a chunk's size up front)
            size = max(64 << 10, min(self.file.chunk_bytes, self.file.total_bytes + 1))
            for chunk in _chunks(fh, size):
                yield parse(chunk)

    def _parquet(self) -> Iterator[tuple[pa.Table, np.ndarray, list[BadRow]]]:
        import pyarrow.parquet as pq

        with self.file.opener() as fh:
            try:
                source = pq.ParquetFile(fh)
            except Exception as exc:  # pyarrow raises several types for a damaged file
                raise DataError("path", f"{self.file.name} is not a readable Parquet file: {exc}") from None
            first = 1
            rows = max(1024, self.file.chunk_bytes // 64)
            for record in source.iter_batches(batch_size=rows, columns=list(self.layout.fields)):
                table = pa.Table.from_batches([record])
                yield table, np.arange(first, first + table.num_rows, dtype=np.int64), []
                first += table.num_rows


def _batches(cols: BookColumns) -> Iterator[BookBatch]:
    events = cols.events()
    start = 0
    for end in cols.batch_ends().tolist():
        yield BookBatch(events[start : end + 1])
        start = end + 1


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
        column = layout.symbol_column
        if column is None:
            return [symbol] if symbol else []
        for table, _, _ in BookFileReader(file, layout)._tables():
            for value in pc.unique(table.column(column)).to_pylist():
                text = str(value or "").strip()
                if text and text not in seen:
                    seen[text] = None
    return [s for s in seen if SYMBOL_PATTERN.fullmatch(s)]  # the others are bad rows when read
