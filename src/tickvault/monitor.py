"""`tickvault monitor`: the market and the pipeline's health, read from Valkey only, so it runs on any
machine that reaches the server. `gather` never raises: an unreachable server is a snapshot that
says DISCONNECTED. `render` is pure (snapshot in, rich renderable out), so it is tested headless.

Health comes from `tv:health:{component}` hashes that running processes refresh every second
(`HealthReporter`, with a 10 s expiry so a dead process disappears).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import numpy as np
import valkey
from rich.console import Group
from rich.table import Table
from rich.text import Text

from tickvault.errors import StoreError
from tickvault.events import B3_TZ, from_ms, to_ms
from tickvault.store import Store

log = logging.getLogger("tickvault.monitor")

HEALTH_PREFIX = "tv:health:"
HEALTH_TTL_S = 10
SPARK = "▁▂▃▄▅▆▇█"
WINDOW_MS = 5 * 60_000
SPARK_MINUTES = 15


@dataclass
class SymbolRow:
    symbol: str
    last_price: float | None = None
    last_time: datetime | None = None
    change_pct: float | None = None
    volume_5m: float = 0.0
    trades_5m: int = 0
    spark: list[int] = field(default_factory=list)  # trades per minute back from the last trade, oldest first
    features: dict[str, float | str | None] = field(default_factory=dict)
    signal: str | None = None
    confidence: float | None = None


@dataclass
class Snapshot:
    connected: bool
    error: str = ""
    rows: list[SymbolRow] = field(default_factory=list)
    health: dict[str, int] = field(default_factory=dict)  # counters summed over live components
    components: list[str] = field(default_factory=list)
    memory_bytes: int | None = None
    taken_at: float = 0.0
    ticks_per_s: float | None = None


def _session_open_price(store: Store, symbol: str, last_ms: int) -> float | None:
    """First trade of the B3 day of `last_ms`: the first sealed block of the day, else the stream."""
    local = from_ms(last_ms)
    day_ms = to_ms(datetime(local.year, local.month, local.day, tzinfo=B3_TZ))
    refs = store.history.refs(symbol, day_ms, last_ms)
    if refs:
        first = store.history.read(symbol, day_ms, refs[0].last_ms)
        if len(first):
            return float(first.price[int(np.argmin(first.timestamp_ms))])
    head = store.client.xrange(store.keys.ticks(symbol), min=str(day_ms), max=str(last_ms), count=1)
    return float(head[0][1][b"price"]) if head else None


def gather(store: Store, symbols: tuple[str, ...], previous: Snapshot | None = None) -> Snapshot:
    snap = Snapshot(connected=True, taken_at=time.monotonic())
    try:
        for symbol in symbols:
            snap.rows.append(_symbol_row(store, symbol))
        for key in store.client.scan_iter(match=f"{HEALTH_PREFIX}*", count=100):
            name = key.decode().removeprefix(HEALTH_PREFIX)
            snap.components.append(name)
            for k, v in store.client.hgetall(key).items():
                if k != b"at":
                    snap.health[k.decode()] = snap.health.get(k.decode(), 0) + int(v)
        snap.memory_bytes = int(store.client.info("memory").get("used_memory", 0))
    except (StoreError, valkey.ValkeyError, OSError) as exc:
        return Snapshot(connected=False, error=str(exc), taken_at=time.monotonic())
    if (
        previous is not None
        and previous.connected
        and "stored" in snap.health
        and "stored" in previous.health
    ):
        elapsed = snap.taken_at - previous.taken_at
        if elapsed > 0:
            snap.ticks_per_s = (snap.health["stored"] - previous.health["stored"]) / elapsed
    return snap


def _symbol_row(store: Store, symbol: str) -> SymbolRow:
    row = SymbolRow(symbol)
    last = store.last_tick(symbol)
    if last is None:
        return row
    row.last_price, row.last_time = last.price, last.timestamp
    end = last.timestamp_ms
    recent = store.columns(symbol, end - SPARK_MINUTES * 60_000 + 1, end)
    in_window = recent.timestamp_ms > end - WINDOW_MS
    row.volume_5m = float(recent.volume[in_window].sum())
    row.trades_5m = int(in_window.sum())
    minute = (end - recent.timestamp_ms) // 60_000
    row.spark = np.bincount(SPARK_MINUTES - 1 - minute, minlength=SPARK_MINUTES).tolist()
    opened = _session_open_price(store, symbol, end)
    row.change_pct = (last.price / opened - 1) * 100 if opened else None
    top = store.client.xrevrange(store.keys.features(symbol), count=1)
    if top:
        row.features = store.events("features", symbol, int(top[0][0].split(b"-")[0]), end).iloc[-1].to_dict()
    sig = store.client.xrevrange(store.keys.signals(symbol), count=1)
    if sig:
        row.signal = sig[0][1][b"action"].decode()
        row.confidence = float(sig[0][1][b"confidence"])
    return row


def sparkline(counts: list[int]) -> str:
    top = max(counts, default=0)
    if top == 0:
        return SPARK[0] * len(counts)
    return "".join(SPARK[min(len(SPARK) - 1, c * (len(SPARK) - 1) // top)] for c in counts)


def _num(value: object, fmt: str) -> str:
    return (
        "-"
        if value is None or value == ""
        else format(value, fmt)
        if isinstance(value, int | float)
        else str(value)
    )


def render(snap: Snapshot, where: str = "") -> Group:
    if not snap.connected:
        banner = Text(f"DISCONNECTED from Valkey {where}: {snap.error}", style="bold white on red")
        return Group(banner, Text("retrying every refresh; nothing shown is current", style="dim"))
    table = Table(title=f"tickvault monitor {where}".rstrip(), expand=False)
    columns = ("symbol", "exchange time", "last", "chg %", "volume 5m", "trades 5m",
               f"trades/min ({SPARK_MINUTES}m)", "ret 5m", "ofi 60s", "regime", "signal")  # fmt: skip
    for name in columns:
        table.add_column(
            name, justify="left" if name in ("symbol", "exchange time", "regime", "signal") else "right"
        )
    for row in snap.rows:
        if row.last_price is None or row.last_time is None:
            table.add_row(row.symbol, Text("NO DATA", style="yellow"), *["-"] * 9)
            continue
        change = row.change_pct
        style = "green" if change and change > 0 else "red" if change and change < 0 else ""
        signal = "-" if row.signal is None else f"{row.signal} {row.confidence:.2f}"
        table.add_row(
            row.symbol,
            row.last_time.astimezone(B3_TZ).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3],
            f"{row.last_price:,.2f}",
            Text(_num(change, "+.3f"), style=style),
            f"{row.volume_5m:,.0f}",
            f"{row.trades_5m:,}",
            sparkline(row.spark),
            _num(row.features.get("ret_5m"), "+.5f"),
            _num(row.features.get("ofi_60s"), "+.2f"),
            str(row.features.get("volatility_regime_30d") or "-"),
            Text(signal, style="green" if row.signal == "BUY" else "red" if row.signal == "SELL" else ""),
        )
    h = snap.health
    rate = "-" if snap.ticks_per_s is None else f"{snap.ticks_per_s:,.0f}"
    memory = "-" if snap.memory_bytes is None else f"{snap.memory_bytes / 2**20:,.1f} MiB"
    if snap.components:
        health = (f"ticks/s stored {rate} | stored {h.get('stored', 0):,} | gaps {h.get('gaps', 0):,}"
                  f" recovered {h.get('recovered', 0):,} | rejected {h.get('rejected', 0):,} | buffered"
                  f" {h.get('buffered', 0):,} | spilled {h.get('spilled', 0):,} | Valkey memory {memory}"
                  f" | components: {', '.join(sorted(snap.components))}")  # fmt: skip
    else:
        health = f"no running component reports health | Valkey memory {memory}"
    return Group(table, Text(health, style="dim"))


class HealthReporter:
    """Writes `counters()` to `tv:health:{component}` every `interval` s (expiring after 10 s)."""

    def __init__(
        self,
        client: valkey.Valkey,
        component: str,
        counters: Callable[[], dict[str, int]],
        interval: float = 1.0,
    ) -> None:
        self.client = client
        self.key = f"{HEALTH_PREFIX}{component}"
        self.counters = counters
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="health", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def report(self) -> None:
        values = {k: int(v) for k, v in self.counters().items()}
        pipe = self.client.pipeline(transaction=True)
        pipe.delete(self.key)
        pipe.hset(self.key, mapping={**values, "at": int(time.time())})  # type: ignore[arg-type]
        pipe.expire(self.key, timedelta(seconds=HEALTH_TTL_S))
        pipe.execute()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.report()
            except Exception as exc:  # noqa: BLE001 - health must never take a component down
                log.debug("health not reported: %s", exc)

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)
        with contextlib.suppress(valkey.ValkeyError):
            self.client.delete(self.key)
