"""`tickvault download SYMBOL --start --end`: ProfitDLL's history of one symbol into the store, once.

The trades come from the DLL's history-trade callback (`ProfitDLLSource.history_ticks`: its own
queue, never the live one). Each goes out on the history channel (ZMQ_HISTORY_PORT, topic
`history_{SYMBOL}`, the tick's JSON with a per-topic sequence number starting at 1 in each download,
through the bus's `Publisher`), and into the history blocks through the bulk path (`BulkWriter`:
idempotent by (symbol, session, trade id), seen bits set, the live stream untouched).

Why the command records in-process instead of a recorder component subscribed to the history port:
history known in full must land exactly once whether or not a `run` is up, and a PUB socket drops
what is sent before a subscriber joins or past its high-water mark; writing from the same process
that receives the trades makes the store's copy independent of the bus. The frames are still
published for any other consumer (a foreign SUB); `wait_subscribers` holds the first frame until
that many have subscribed (the slow joiner), up to a deadline.

A bad trade from the DLL is rejected in the callback (counted by reason in the report), a trade of
another symbol than the one asked too (`symbol`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime

import msgspec
import numpy as np

from tickvault.app.ingest import _stop_on_signals
from tickvault.bus.envelope import endpoint
from tickvault.bus.publisher import Publisher
from tickvault.config import Settings
from tickvault.domain.events import Tick
from tickvault.domain.keys import history_topic
from tickvault.domain.tick_schema import AGGRESSOR_CODES
from tickvault.sources.profitdll import ProfitDLLSource, check_history_window
from tickvault.store.block_codec import Columns
from tickvault.store.bulk import BulkWriter

log = logging.getLogger("tickvault.download")

CHUNK = 50_000  # trades handed to the bulk writer at a time
SUBSCRIBER_WAIT_S = 10.0
_AGGRESSOR = {name: code for code, name in enumerate(AGGRESSOR_CODES)}


@dataclass
class DownloadReport:
    symbol: str
    received: int = 0  # good trades from the DLL
    stored: int = 0
    duplicates: int = 0
    published: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    progress: list[int] = field(default_factory=list)
    durable: bool = False
    interrupted: bool = False

    def line(self) -> str:
        reasons = ", ".join(f"{k}={v}" for k, v in sorted(self.rejected.items()))
        return (
            f"{self.symbol}: received={self.received} stored={self.stored} duplicates={self.duplicates}"
            f" rejected={sum(self.rejected.values())}{f' ({reasons})' if reasons else ''}"
            f" published={self.published} durable={'yes' if self.durable else 'NO'}"
        )


def tick_columns(ticks: list[Tick]) -> Columns:
    """Ticks of one symbol as block columns, in arrival order (the bulk writer orders and numbers)."""

    def col(name: str, kind: type) -> np.ndarray:
        return np.array([getattr(t, name) for t in ticks], kind)

    return Columns(
        timestamp_ms=np.array([t.timestamp_ms for t in ticks], np.int64), trade_id=col("trade_id", np.int64),
        price=col("price", np.float64), volume=col("volume", np.float64), quantity=col("quantity", np.int64),
        buyer=col("buyer", np.int64), seller=col("seller", np.int64), trade_type=col("trade_type", np.int64),
        aggressor=np.array([_AGGRESSOR[t.aggressor] for t in ticks], np.int8),
        is_edit=col("is_edit", np.bool_), seq=np.zeros(len(ticks), np.int64),
    )  # fmt: skip


def record(
    ticks: Iterable[Tick],
    symbol: str,
    writer: BulkWriter,
    publisher: Publisher | None,
    report: DownloadReport,
) -> None:
    """Publish each trade on `history_{SYMBOL}` (seq 1, 2, ...) and hand them to the bulk writer."""
    topic, chunk, seq = history_topic(symbol), [], 0
    for tick in ticks:
        if tick.symbol != symbol:
            report.rejected["symbol"] += 1
            continue
        seq += 1
        msgspec.structs.force_setattr(tick, "seq", seq)  # ours: the source made it for us
        report.received += 1
        if publisher is not None:
            publisher.publish(topic, tick)
        chunk.append(tick)
        if len(chunk) >= CHUNK:
            writer.add([symbol], np.zeros(len(chunk), np.int32), tick_columns(chunk))
            chunk = []
    if chunk:
        writer.add([symbol], np.zeros(len(chunk), np.int32), tick_columns(chunk))
    done = writer.flush()
    report.stored, report.duplicates = done.stored, done.duplicates


def download(
    settings: Settings,
    symbol: str,
    start: datetime,
    end: datetime,
    *,
    wait_subscribers: int = 0,
    on_progress: Callable[[int], None] | None = None,
    stop: threading.Event | None = None,
) -> DownloadReport:
    """The history of `symbol` in [start, end]: asked of the DLL, published, stored (see the module)."""
    from tickvault.app.components.base import server_keys_of
    from tickvault.store.api import Store
    from tickvault.store.connection import Connection

    check_history_window(start, end)  # before any login: a clear error, nothing started
    stop = stop or threading.Event()
    report = DownloadReport(symbol)

    def progress(percent: int) -> None:
        report.progress.append(percent)
        if on_progress is not None:
            on_progress(percent)

    with Connection.open(settings) as conn:
        conn.check()
        store = Store(conn.client("download"), conn.keys)
        publisher = Publisher(
            endpoint(settings.zmq_host, settings.zmq_history_port), curve=server_keys_of(settings),
            allow_insecure=settings.zmq_allow_insecure,
        )  # fmt: skip
        session = _session(settings)
        try:
            if wait_subscribers and not publisher.wait_for_subscriber(
                history_topic(symbol), SUBSCRIBER_WAIT_S, count=wait_subscribers
            ):
                log.warning("fewer than %d subscribers of history_: publishing anyway", wait_subscribers)
            session.start()
            ticks = session.history_ticks(symbol, start, end, stop, on_progress=progress)
            record(ticks, symbol, BulkWriter(store), publisher, report)
            report.rejected.update(session.stats.history_rejected)
            report.interrupted = stop.is_set()
            report.durable = store.wait_durable()
        finally:
            session.close()
            publisher.close()
            report.published = publisher.stats.published
    return report


def _session(settings: Settings) -> ProfitDLLSource:
    def secret(value: object) -> str:
        return str(value.get_secret_value()) if hasattr(value, "get_secret_value") else ""

    return ProfitDLLSource(
        settings.profit_dll_path, secret(settings.profit_key), settings.profit_user or "",
        secret(settings.profit_password),
    )  # fmt: skip


def run_download(
    settings: Settings,
    symbol: str,
    start: datetime,
    end: datetime,
    *,
    wait_subscribers: int,
    say: Callable[[str, int], None],
) -> int:
    """The `download` command's work: progress lines, the report line on stdout; the exit code (0;
    1 when interrupted or not durable)."""
    started = time.monotonic()
    stop = threading.Event()
    with _stop_on_signals(stop):
        report = download(
            settings, symbol, start, end, wait_subscribers=wait_subscribers, stop=stop,
            on_progress=lambda percent: say(f"{symbol}: {percent}%", logging.INFO),
        )  # fmt: skip
    print(f"{report.line()} ({time.monotonic() - started:.1f} s)", flush=True)
    if report.interrupted:
        say("tickvault: interrupted: what arrived is stored; run the same command again for the rest",
            logging.WARNING)  # fmt: skip
        return 1
    return 0 if report.durable else 1
