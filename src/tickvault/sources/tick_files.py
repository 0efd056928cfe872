"""Tick files read in chunks for the bulk path: paths, archives, CSV chunks with their line numbers.

`expand(paths)` turns the command line's paths into files: a file, a directory (the tick files in
it, recursively, in name order) or a glob. `members(path)` opens what a file holds: itself, the
content of a `.gz`, each member of a `.zip` (named `archive.zip:member`). `TickFile.batches()` reads
one of them in chunks of about `chunk_bytes` and yields `tick_table.TickBatch`es, so a file of any
size is read in bounded memory.

CSV (`,`, `;` or tab, told by the header line like the row reader) is cut at line ends and each
chunk parsed by pyarrow's multithreaded reader with every column as text (`tick_table` decides the
types, as the row reader does). Line numbers: the chunk's first line is known, blank lines are
found in its bytes, and a row with the wrong number of values (pyarrow's invalid-row handler) is
placed by a single-threaded parse of that chunk; a chunk whose rows do not map one to one onto its
lines (a quoted value with a line break) is read by Python's csv module instead. Parquet is read by
row groups' batches, its rows numbered from 1.
"""

from __future__ import annotations

import contextlib
import csv
import glob
import gzip
import io
import shutil
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Protocol, cast

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

from tickvault.errors import DataError
from tickvault.sources.files import BadRow
from tickvault.sources.layouts import Layout
from tickvault.sources.tick_table import TableReader, TickBatch

TEXT_SUFFIXES = (".csv", ".txt", ".tsv")
PARQUET_SUFFIXES = (".parquet", ".pq")
_KNOWN = (*TEXT_SUFFIXES, *PARQUET_SUFFIXES, ".gz", ".zip")
_UNREAD = ("seq",)  # tick fields a file may have that tickvault does not take from it
_FEW = ("symbol", "aggressor", "is_edit", "action", "date")  # fields with few distinct values
_DICTIONARY = pa.dictionary(pa.int32(), pa.string())


def expand(paths: list[str] | list[Path]) -> list[Path]:
    """Files named, found in directories (recursively, tick files only) or matched by globs, in
    order, each once. DataError for a path that names nothing."""
    out: dict[Path, None] = {}
    for given in map(str, paths):
        path = Path(given)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and _is_tick_file(p))
        elif path.exists():
            found = [path]
        else:
            found = sorted(Path(p) for p in glob.glob(given, recursive=True) if Path(p).is_file())
        if not found:
            raise DataError(
                "path", f"{given} matches no file" if not path.exists() else f"{given} has no tick file"
            )
        out.update(dict.fromkeys(found))
    return list(out)


def _is_tick_file(path: Path) -> bool:
    return path.name.lower().endswith(_KNOWN)


@dataclass
class TickFile:
    """One tick file to read (a plain file, or what a .gz or .zip holds)."""

    name: str  # for reports: `day.csv`, `trades.zip:TradeIntraday_20251124_1.txt`
    parquet: bool
    opener: Callable[[], IO[bytes]]
    total_bytes: int  # of the content, for progress (an estimate for .gz)
    symbol: str | None = None
    chunk_bytes: int = 32 << 20
    done_bytes: int = field(default=0, init=False)
    done_rows: int = field(default=0, init=False)

    def batches(self) -> Iterator[TickBatch]:
        """The file's ticks and bad rows, chunk by chunk, in file order. DataError (before any batch)
        if the file cannot be read or lacks a column."""
        self.done_bytes = self.done_rows = 0
        reader = self._parquet() if self.parquet else self._csv()
        for batch in reader:
            self.done_rows += batch.rows
            yield batch

    def _layout(self, columns: list[str], delimiter: str = ",") -> Layout:
        try:
            return Layout.detect(columns, symbol=self.symbol, delimiter=delimiter)
        except DataError as exc:
            raise DataError("columns", f"{self.name} {exc.reason}") from None

    # -- Parquet ---------------------------------------------------------------------------------

    def _parquet(self) -> Iterator[TickBatch]:
        import pyarrow.parquet as pq

        with self.opener() as fh:
            try:
                source = pq.ParquetFile(fh)
            except Exception as exc:  # pyarrow raises several types for a damaged file
                raise DataError("path", f"{self.name} is not a readable Parquet file: {exc}") from None
            layout = self._layout(source.schema_arrow.names)
            reader = TableReader(layout)
            rows = max(1024, self.chunk_bytes // 64)
            first = 1
            wanted = [column for column, name in layout.fields.items() if name not in _UNREAD]
            for record in source.iter_batches(batch_size=rows, columns=wanted):
                table = pa.Table.from_batches([record])
                lines = np.arange(first, first + table.num_rows, dtype=np.int64)
                first += table.num_rows
                self.done_bytes = int(self.total_bytes * (first - 1) / max(1, source.metadata.num_rows))
                yield reader.batch(table, lines)

    # -- CSV -------------------------------------------------------------------------------------

    def _csv(self) -> Iterator[TickBatch]:
        with self.opener() as fh:
            header = fh.readline()
            self.done_bytes = len(header)
            text = header.decode("utf-8-sig", errors="replace").rstrip("\r\n")
            delimiter = max((",", ";", "\t"), key=text.count) if text else ","
            names = [c.strip() for c in next(csv.reader([text], delimiter=delimiter), [])]
            layout = self._layout(names, delimiter)
            reader = TableReader(layout)
            parse = _ChunkParser(names, layout, delimiter)
            for chunk in _chunks(fh, self.chunk_bytes):
                self.done_bytes += len(chunk.body)
                table, lines, bad = parse(chunk)
                yield reader.batch(table, lines, bad)


@dataclass
class _Chunk:
    body: memoryview  # whole lines; valid until the next chunk is read
    first_line: int  # the header was line 1
    lines: int
    lone_cr: bool  # has a carriage return not followed by a line feed (a line end to csv and pyarrow)


def _chunks(fh: IO[bytes], size: int) -> Iterator[_Chunk]:
    """The rest of `fh` in pieces of whole lines of about `size` bytes, read into one buffer (no
    copy of a chunk is made: pyarrow parses it where it lies)."""
    line, filled = 2, 0
    buf = bytearray(2 * size)
    while True:
        if len(buf) - filled < size:  # a line (or quoted value) longer than a chunk: more room
            bigger = bytearray(2 * len(buf))
            bigger[:filled] = buf[:filled]
            buf = bigger
        got = fh.readinto(memoryview(buf)[filled : filled + size])  # type: ignore[attr-defined]
        if not got:
            break
        filled += got
        cut = buf.rfind(b"\n", 0, filled) + 1
        # an odd number of quotes before the cut: it falls inside a quoted value (a line break in a
        # value) and the chunk grows (up to a bound, for a file whose quotes never close)
        quoted = buf.find(b'"', 0, cut) >= 0 and buf.count(b'"', 0, cut) % 2 == 1 and filled < 8 * size
        if cut == 0 or quoted:
            continue
        count = buf.count(b"\n", 0, cut)
        lone_cr = False
        if buf.find(b"\r", 0, cut) >= 0:  # a carriage return alone ends a line too
            lone = buf.count(b"\r", 0, cut) - buf.count(b"\r\n", 0, cut)
            count, lone_cr = count + lone, lone > 0
        yield _Chunk(memoryview(buf)[:cut], line, count, lone_cr)
        line += count
        rest = filled - cut
        buf[:rest] = buf[cut:filled]  # the unfinished line to the front (same size: no resize)
        filled = rest
    if bytes(buf[:filled]).strip():
        tail = bytes(buf[:filled]) + b"\n"
        yield _Chunk(memoryview(tail), line, 1, b"\r" in tail.rstrip(b"\r\n"))


class _Fields(Protocol):
    """What the chunk parser reads of a layout (a tick file's, or a book file's)."""

    @property
    def fields(self) -> dict[str, str]: ...


class _ChunkParser:
    """Parses a CSV chunk's bytes into a text table of the layout's columns, with line numbers."""

    def __init__(self, names: list[str], layout: _Fields, delimiter: str) -> None:
        self.names, self.delimiter = names, delimiter
        # the last column of a repeated name is the one csv.DictReader keeps
        self.index = {name: i for i, name in enumerate(names)}
        self.wanted = [column for column, name in layout.fields.items() if name not in _UNREAD]
        self.internal = [f"c{i}" for i in range(len(names))]
        self.include = [self.internal[self.index[name]] for name in self.wanted]
        # few distinct values: pyarrow builds the dictionary while parsing (decided once per value)
        self.types = {
            self.internal[self.index[column]]: _DICTIONARY if layout.fields[column] in _FEW else pa.string()
            for column in self.wanted
        }

    def __call__(self, chunk: _Chunk) -> tuple[pa.Table, np.ndarray, list[BadRow]]:
        body, first_line, count = chunk.body, chunk.first_line, chunk.lines
        if chunk.lone_cr:
            return self._python(body, first_line)  # lines counted as csv counts them
        table, invalid = self._arrow(body, threads=True)
        if not invalid and table.num_rows == count:  # no blank line: row i is line first + i
            return table, np.arange(first_line, first_line + count, dtype=np.int64), []
        lines = _line_numbers(body, first_line)  # of the non-blank lines
        if not invalid and table.num_rows == len(lines):
            return table, lines, []
        if table.num_rows + len(invalid) == len(lines):  # some rows have the wrong number of values
            table, invalid = self._arrow(body, threads=False)  # numbered only without threads
            if all(row.number is not None for row in invalid):
                wrong = np.array([row.number - 1 for row in invalid], np.int64)
                good = np.setdiff1d(np.arange(len(lines)), wrong)
                bad = [_wrong_count(int(lines[i]), row.actual_columns, len(self.names)) for i, row in
                       zip(wrong.tolist(), invalid, strict=True)]  # fmt: skip
                return table, lines[good], bad
        return self._python(body, first_line)

    def _arrow(self, body: memoryview, *, threads: bool) -> tuple[pa.Table, list[Any]]:
        invalid: list[Any] = []

        def handler(row: Any) -> str:
            invalid.append(row)
            return "skip"

        read = pacsv.ReadOptions(column_names=self.internal, use_threads=threads, block_size=4 << 20)
        parse = pacsv.ParseOptions(delimiter=self.delimiter, invalid_row_handler=handler)
        convert = pacsv.ConvertOptions(column_types=self.types, include_columns=self.include)
        try:
            table = pacsv.read_csv(pa.BufferReader(body), read, parse, convert)
        except pa.ArrowInvalid:
            # not UTF-8: decoded with replacement characters, as the row reader opens files
            invalid.clear()
            fixed = bytes(body).decode("utf-8", errors="replace").encode()
            table = pacsv.read_csv(pa.BufferReader(fixed), read, parse, convert)
        invalid.sort(key=lambda row: row.number or 0)
        return table.rename_columns(self.wanted), invalid

    def _python(self, body: memoryview, first_line: int) -> tuple[pa.Table, np.ndarray, list[BadRow]]:
        """The chunk through Python's csv module: exact line numbers whatever the quoting."""
        text = bytes(body).decode("utf-8", errors="replace")
        reader = csv.reader(io.StringIO(text, newline=""), delimiter=self.delimiter)
        columns: list[list[str]] = [[] for _ in self.wanted]
        at = [self.index[name] for name in self.wanted]
        lines, bad = [], []
        for row in reader:
            line = first_line + reader.line_num - 1
            if not row:
                continue
            if len(row) != len(self.names):
                bad.append(_wrong_count(line, len(row), len(self.names)))
                continue
            lines.append(line)
            for out, i in zip(columns, at, strict=True):
                out.append(row[i])
        table = pa.table(
            {name: pa.array(values, pa.string()) for name, values in zip(self.wanted, columns, strict=True)}
        )
        return table, np.array(lines, np.int64), bad


def _wrong_count(line: int, values: int, columns: int) -> BadRow:
    return BadRow(line, DataError("row", f"{values} values for {columns} columns"))


def _line_numbers(body: memoryview, first_line: int) -> np.ndarray:
    """Line numbers of the non-blank lines of `body` (blank: empty, or a lone carriage return)."""
    raw = np.frombuffer(body, np.uint8)
    ends = np.flatnonzero(raw == 10)
    starts = np.r_[0, ends[:-1] + 1]
    length = ends - starts
    blank = (length == 0) | ((length == 1) & (raw[starts.clip(max=len(raw) - 1)] == 13))
    return first_line + np.flatnonzero(~blank).astype(np.int64)


def members(path: Path, *, symbol: str | None = None, chunk_bytes: int = 32 << 20) -> Iterator[TickFile]:
    """The tick files `path` holds: itself, a .gz's content, or each file of a .zip."""
    name = path.name
    lower = name.lower()
    if lower.endswith(".zip"):
        try:
            archive = zipfile.ZipFile(path)
        except (zipfile.BadZipFile, OSError) as exc:
            raise DataError("path", f"{name} is not a readable zip file: {exc}") from None
        with archive:
            found = [info for info in archive.infolist() if not info.is_dir()]
        for info in found:
            parquet = info.filename.lower().endswith(PARQUET_SUFFIXES)
            opener = _zip_opener(path, info, parquet)
            yield TickFile(f"{name}:{info.filename}", parquet, opener, info.file_size, symbol, chunk_bytes)
        return
    if lower.endswith(".gz"):
        inner = lower.removesuffix(".gz")
        parquet = inner.endswith(PARQUET_SUFFIXES)
        yield TickFile(name, parquet, _gzip_opener(path, parquet), _gzip_size(path), symbol, chunk_bytes)
        return
    parquet = lower.endswith(PARQUET_SUFFIXES)
    yield TickFile(name, parquet, lambda: open(path, "rb"), path.stat().st_size, symbol, chunk_bytes)  # noqa: SIM115


def _gzip_size(path: Path) -> int:
    """The content size from the gzip trailer (modulo 4 GiB: then an estimate)."""
    size = path.stat().st_size
    with open(path, "rb") as fh:
        fh.seek(max(0, size - 4))
        stated = int.from_bytes(fh.read(4), "little")
    return stated if stated >= size else size * 4


def _gzip_opener(path: Path, parquet: bool) -> Callable[[], IO[bytes]]:
    def opener() -> IO[bytes]:
        stream = cast(IO[bytes], gzip.open(path, "rb"))  # noqa: SIM115 - the caller closes it
        return _spooled(stream) if parquet else stream

    return opener


def _zip_opener(path: Path, info: zipfile.ZipInfo, parquet: bool) -> Callable[[], IO[bytes]]:
    def opener() -> IO[bytes]:
        with zipfile.ZipFile(path) as archive:  # the member stream keeps the file open until closed
            stream = archive.open(info)
        return _spooled(stream) if parquet else stream

    return opener


def _spooled(stream: IO[bytes]) -> IO[bytes]:
    """A seekable copy on disk (Parquet needs to seek; a compressed stream cannot)."""
    copy = tempfile.TemporaryFile()  # noqa: SIM115 - the caller closes it
    with contextlib.closing(stream):
        shutil.copyfileobj(stream, copy, 1 << 20)
    copy.seek(0)
    return copy
