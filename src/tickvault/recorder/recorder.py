"""The tick recorder: the only writer of ticks to Valkey (the guide's "bridge").

`RecorderLoop` (loop.py) does the receiving, spooling, gap-fill hold, retries, re-sends and drain;
this module is what is particular to ticks (`TickFrameKind`): frames validated column-wise into ticks
(`frames.py`; a bad one rejected with its reason, the ticks around it kept), a spool item a tick,
batches of up to MAX_BATCH written by the store's `TickWriter`, idempotent on (symbol, session, trade
id) and pipelined (a batch is checked by the next write or flush), positions by topic (`tick_SYMBOL`)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import msgspec

from tickvault.bus.spool import Spool
from tickvault.domain.keys import tick_topic
from tickvault.recorder.frames import TickWire, decode_frames
from tickvault.recorder.loop import HOUSEKEEPING_S, Intake, LoopStats, RecorderLoop
from tickvault.store.api import Store
from tickvault.store.tick_writer import AppendResult, TickLike

log = logging.getLogger("tickvault.recorder")

MAX_BATCH = 5000
LIVE_WINDOW_MS = 300_000  # the live stream keeps 5 minutes for stream consumers; older is sealed

_wire_decoder = msgspec.json.Decoder(TickWire)


@dataclass
class RecorderStats(LoopStats):
    late: int = 0  # ticks older than their stream's last entry (stored, indexed by time)


class TickFrameKind:
    """Ticks, for `RecorderLoop`."""

    log = log
    rows = items = "ticks"
    writer_thread = "recorder-writer"
    take = max_messages = MAX_BATCH
    max_bytes: int | None = None

    def __init__(self, store: Store, live_ms: int, stream_max_len: int) -> None:
        self.store = store
        self.live_ms = live_ms
        self.stream_max_len = stream_max_len

    def decode(self, messages: Sequence[Sequence[bytes]]) -> Intake[TickLike]:
        decoded = decode_frames(messages)
        return Intake(decoded.ticks, [(tick_topic(t.symbol), t.seq) for t in decoded.ticks], decoded.rejected)

    def key(self, symbol: str) -> str:
        return tick_topic(symbol)

    def tops(self, ticks: Sequence[TickLike]) -> dict[str, int]:
        top: dict[str, int] = {}
        for tick in ticks:
            if tick.seq > top.get(tick.symbol, 0):
                top[tick.symbol] = tick.seq
        return {tick_topic(symbol): seq for symbol, seq in top.items()}

    def write(self, ticks: Sequence[TickLike]) -> tuple[list[TickLike], AppendResult]:
        return list(ticks), self.store.writer.write(ticks)

    def flush(self) -> None:
        self.store.writer.flush()

    def release(self) -> None:
        self.store.writer.release()

    def count(self, stats: RecorderStats, result: AppendResult) -> None:
        stats.late += result.late

    def seal(self, symbol: str) -> int:
        return self.store.compact(symbol, self.live_ms, self.stream_max_len)

    def expire(self, symbol: str, days: float) -> int:
        return self.store.apply_retention(symbol, days)


class Recorder(RecorderLoop[TickLike, AppendResult, RecorderStats]):
    def __init__(
        self,
        store: Store,
        *,
        spool_path: Path | None = None,
        max_memory: int = 1_000_000,
        retention_days: float = 0,
        live_ms: int = LIVE_WINDOW_MS,
        stream_max_len: int = 0,
        housekeeping_s: float = HOUSEKEEPING_S,
    ) -> None:
        """Every minute, for each symbol it writes: seal ticks older than `live_ms` before the newest
        (and past `stream_max_len` live entries) into history blocks, then drop what is older than
        `retention_days` (> 0) before the newest. Sealed ticks are still found by every query."""
        path = spool_path or Path("data") / "spool" / "recorder.spool"
        spool: Spool[TickLike] = Spool(path, msgspec.json.encode, _wire_decoder.decode, max_memory=max_memory)
        super().__init__(
            store,
            TickFrameKind(store, live_ms, stream_max_len),
            RecorderStats(),
            spool,
            retention_days=retention_days,
            housekeeping_s=housekeeping_s,
        )

    def decode_frames(self, messages: Sequence[Sequence[bytes]]) -> Sequence[TickLike]:
        """Valid ticks of a batch of `[topic, payload]` messages; the rest is rejected and counted."""
        return self.intake(messages).items

    def submit(self, ticks: Sequence[TickLike]) -> None:
        """Queue validated ticks for writing (the in-process path)."""
        self.queue(ticks)

    def submit_one(self, tick: TickLike) -> None:
        self.stats.received += 1
        self.queue((tick,))
