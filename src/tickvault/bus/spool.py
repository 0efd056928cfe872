"""A FIFO that stays in memory up to a bound, then overflows to a local file.

The recorder queues what it received here while Valkey is slow or down: memory is bounded, nothing
is dropped, and records come back out in the order they went in (once anything is on disk, new
records go to disk behind it). The file is deleted when drained.

The file only ever holds whole records: records are written in chunks with unbuffered writes and,
when the disk refuses part of a chunk (full, over quota, a file-size limit), the file is cut back to
its size before that chunk, which stays in memory with everything after it. A file left by a process
killed mid-write ends in a torn record, cut off at the next start (that record was never counted).
"""

from __future__ import annotations

import collections
import logging
import os
import struct
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Generic, TypeVar

log = logging.getLogger("tickvault.spool")
_LEN = struct.Struct("<I")
CHUNK = 16 * 1024  # bytes per write: a nearly full disk still takes what fits
T = TypeVar("T")


class Spool(Generic[T]):
    """Items live in memory as objects; only those past `max_memory` are encoded to the file."""

    def __init__(
        self,
        path: Path,
        encode: Callable[[T], bytes],
        decode: Callable[[bytes], T],
        *,
        max_memory: int = 1_000_000,
    ) -> None:
        self.path = Path(path)
        self.max_memory = max_memory
        self._encode = encode
        self._decode = decode
        self._memory: collections.deque[T] = collections.deque()
        self._lock = threading.Lock()
        self._file_count = 0  # records on disk not yet read back
        self._read_pos = 0
        self.spilled = 0  # records that went to disk, ever
        self.spill_errors = 0
        self._disk_backoff = 0
        self.corrupt = 0  # records on disk that could not be decoded (logged, skipped)
        if self.path.exists():  # left by an earlier run that stopped before Valkey took everything
            whole = self._whole_records()
            log.info("%s holds %d records from an earlier run", self.path, self._file_count)
            if whole < self.path.stat().st_size:
                log.warning("%s ends in a torn record (killed mid-write): cut at byte %d", self.path, whole)
                os.truncate(self.path, whole)

    def _whole_records(self) -> int:
        """Count the whole records in the file; return the byte offset where they end."""
        end = 0
        with open(self.path, "rb") as reader:
            while len(head := reader.read(_LEN.size)) == _LEN.size:
                (size,) = _LEN.unpack(head)
                if len(reader.read(size)) < size:
                    break
                end = reader.tell()
                self._file_count += 1
        return end

    def _records(self, position: int) -> Iterable[bytes]:
        with open(self.path, "rb") as reader:
            reader.seek(position)
            while len(head := reader.read(_LEN.size)) == _LEN.size:
                record = reader.read(_LEN.unpack(head)[0])
                if len(record) < _LEN.unpack(head)[0]:
                    return
                yield record

    def __len__(self) -> int:
        with self._lock:
            return len(self._memory) + self._file_count

    @property
    def on_disk(self) -> int:
        return self._file_count

    def extend(self, items: Iterable[T]) -> None:
        with self._lock:
            overflow: list[T] = []
            for item in items:
                if self._file_count == 0 and not overflow and len(self._memory) < self.max_memory:
                    self._memory.append(item)
                else:
                    overflow.append(item)
            if overflow:
                kept = self._spill(overflow)
                # what the disk refused (full?) stays in memory rather than being lost
                self._memory.extend(overflow[kept:])

    def _spill(self, items: list[T]) -> int:
        """Append records in chunks of about CHUNK bytes; returns how many are on disk. A chunk the
        disk refuses, even in part, is cut off again (never half a record), and so is the rest."""
        if self._disk_backoff > 0:
            self._disk_backoff -= len(items)  # after a disk error, try the disk again only now and then
            return 0
        done = 0
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            try:
                while done < len(items):
                    chunk, count = bytearray(), 0
                    while done + count < len(items) and len(chunk) < CHUNK:
                        record = self._encode(items[done + count])
                        chunk += _LEN.pack(len(record)) + record
                        count += 1
                    before = os.fstat(fd).st_size
                    data = memoryview(chunk)
                    try:
                        while data:
                            data = data[os.write(fd, data) :]  # a short write is not an error: go on
                    except OSError:
                        os.ftruncate(fd, before)
                        raise
                    done += count
            finally:
                os.close(fd)
        except OSError as exc:
            self.spill_errors += 1
            self._disk_backoff = 10_000
            log.error(
                "spill to %s refused after %d of %d records, holding the rest in memory (order may"
                " suffer, nothing is lost): %s",
                self.path,
                done,
                len(items),
                exc,
            )
        self._file_count += done
        self.spilled += done
        return done

    def take(self, n: int) -> list[T]:
        """Up to `n` of the oldest records (removed from the spool)."""
        with self._lock:
            if not self._memory and self._file_count:
                self._load(n)
            out: list[T] = []
            while self._memory and len(out) < n:
                out.append(self._memory.popleft())
            return out

    def _load(self, n: int) -> None:
        with open(self.path, "rb") as reader:
            reader.seek(self._read_pos)
            while self._file_count and len(self._memory) < n:
                (size,) = _LEN.unpack(reader.read(_LEN.size))
                record = reader.read(size)
                self._file_count -= 1
                try:
                    self._memory.append(self._decode(record))
                except Exception as exc:  # noqa: BLE001 - one bad record must not stop the reader
                    self.corrupt += 1
                    log.error("spool record at byte %d of %s unreadable, skipped: %s",
                              reader.tell() - size, self.path, exc)  # fmt: skip
            self._read_pos = reader.tell()
        if self._file_count == 0:
            self._read_pos = 0
            os.unlink(self.path)

    def putback(self, items: list[T]) -> None:
        """Return items taken but not consumed to the front, in their order."""
        with self._lock:
            self._memory.extendleft(reversed(items))

    def close(self) -> None:
        """Keep whatever is left in the file (memory first: it is older), for the next run."""
        with self._lock:
            if not self._memory:
                return
            rest = list(self._records(self._read_pos)) if self._file_count else []
            tmp = self.path.with_suffix(".tmp")
            tmp.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "wb") as out:
                for item in self._memory:
                    record = self._encode(item)
                    out.write(_LEN.pack(len(record)) + record)
                for record in rest:
                    out.write(_LEN.pack(len(record)) + record)
                out.flush()
                os.fsync(out.fileno())
            tmp.replace(self.path)
            self._file_count = len(self._memory) + len(rest)
            self._read_pos = 0
            self._memory.clear()
