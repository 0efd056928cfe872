"""A FIFO that stays in memory up to a bound, then overflows to a local file.

The recorder queues what it received here while Valkey is slow or down: memory is bounded, nothing
is dropped, and records come back out in the order they went in (once anything is on disk, new
records go to disk behind it). The file is deleted when drained.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import struct
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import BinaryIO, Generic, TypeVar

log = logging.getLogger("tickvault.spool")
_LEN = struct.Struct("<I")
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
        self._writer: BinaryIO | None = None
        self._read_pos = 0
        self.spilled = 0  # records that went to disk, ever
        self.spill_errors = 0
        self._disk_backoff = 0
        if self.path.exists():  # left by an earlier run that stopped before Valkey took everything
            self._file_count = sum(1 for _ in self._records(0))
            log.info("%s holds %d records from an earlier run", self.path, self._file_count)

    def _records(self, position: int) -> Iterable[bytes]:
        with open(self.path, "rb") as reader:
            reader.seek(position)
            while head := reader.read(_LEN.size):
                yield reader.read(_LEN.unpack(head)[0])

    def __len__(self) -> int:
        with self._lock:
            return len(self._memory) + self._file_count

    @property
    def on_disk(self) -> int:
        return self._file_count

    def extend(self, items: Iterable[T]) -> None:
        with self._lock:
            try:
                for item in items:
                    if self._file_count == 0 and len(self._memory) < self.max_memory:
                        self._memory.append(item)
                    elif not self._spill(item):
                        # the disk refused (full?): keep it in memory rather than lose it
                        self._memory.append(item)
            finally:
                if self._writer is not None:  # open only while spilling one batch
                    with contextlib.suppress(OSError):
                        self._writer.close()
                    self._writer = None

    def _spill(self, item: T) -> bool:
        if self._disk_backoff:
            self._disk_backoff -= 1  # after a disk error, try the disk again only now and then
            return False
        try:
            if self._writer is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._writer = open(self.path, "ab")  # noqa: SIM115 - kept open while spilling
            record = self._encode(item)
            self._writer.write(_LEN.pack(len(record)) + record)
        except OSError as exc:
            self.spill_errors += 1
            self._disk_backoff = 10_000
            log.error(
                "spill to %s failed, holding in memory (order may suffer, nothing is lost): %s",
                self.path,
                exc,
            )
            return False
        self._file_count += 1
        self.spilled += 1
        return True

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
                self._memory.append(self._decode(reader.read(size)))
                self._file_count -= 1
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
