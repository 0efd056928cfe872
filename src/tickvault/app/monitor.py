"""`tickvault monitor`: the market and the pipeline's health, read from Valkey only, so it runs on any
machine that reaches the server. `gather` never raises: an unreachable server is a snapshot that
says DISCONNECTED, and a symbol whose stored data cannot be read shows its error in its row. `render`
is pure (snapshot in, rich renderable out), so it is tested headless.

Health comes from the `tv:health:{component}` hashes that running processes refresh every second
(see health.py). Counters are summed over the live components. ticks/s is the change of `stored`
between two frames over the time between them ("-" on the first frame).

The book: per symbol with a stored order book, the newest top of book (`Store.book` at the newest
stored book time, best level only: the newest snapshot and the updates after it), in a table of its
own under the market's (bid, its size, ask, its size, spread), so that a narrow terminal cuts no
number of either.

bus->store lag: "now minus the exchange time of the last stored tick" is not lag (a replay or a
simulated market runs on its own clock; a quiet market looks late), so the monitor shows only the
recorder's own measure, `store_lag_ms` (the largest over components), and "-" while none reports one.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass, field
from datetime import datetime

import numpy as np
import valkey
from rich.console import Group
from rich.table import Table
from rich.text import Text

from tickvault.domain.events import B3_TZ, from_ms, to_ms
from tickvault.domain.tick_schema import stream_id
from tickvault.errors import StoreError, StoreUnavailable, TickvaultError
from tickvault.store.api import Store
from tickvault.store.cluster import used_memory
from tickvault.store.valkey_errors import UNREACHABLE

log = logging.getLogger("tickvault.monitor")

SPARK = "▁▂▃▄▅▆▇█"
WINDOW_MS = 5 * 60_000
SPARK_MINUTES = 15
LAG_KEY = "store_lag_ms"
MAX_OVER_COMPONENTS = {LAG_KEY}  # a lag is not additive over processes


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
    error: str = ""  # stored data that could not be read
    book: Quote | None = None  # the newest stored top of book; None: no book stored
    book_error: str = ""  # a stored book that could not be read


@dataclass(frozen=True)
class Quote:
    """The top of a stored book: best bid and ask (price None: that side is empty)."""

    at: datetime
    bid: float | None
    bid_size: int
    ask: float | None
    ask_size: int

    @property
    def spread(self) -> float | None:
        return self.ask - self.bid if self.ask is not None and self.bid is not None else None


@dataclass
class MonitorSnapshot:
    connected: bool
    error: str = ""
    rows: list[SymbolRow] = field(default_factory=list)
    health: dict[str, int] = field(default_factory=dict)  # counters summed over live components
    components: list[str] = field(default_factory=list)
    memory_bytes: int | None = None
    taken_at: float = 0.0
    ticks_per_s: float | None = None
    bad_health_values: int = 0  # health fields that were not integers (skipped)
    heartbeats: dict[str, int] = field(default_factory=dict)  # component -> unix s of its last report

    @property
    def lag_ms(self) -> int | None:
        return self.health.get(LAG_KEY)


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


def gather(
    store: Store, symbols: tuple[str, ...], previous: MonitorSnapshot | None = None
) -> MonitorSnapshot:
    """One frame's data. Never raises for an unreachable server (connected=False) or bad data."""
    snap = MonitorSnapshot(connected=True, taken_at=time.monotonic())
    try:
        for symbol in symbols:
            snap.rows.append(_symbol_row(store, symbol))
        _read_health(store, snap)
        snap.memory_bytes = _used_memory(store)
    except (StoreError, valkey.ValkeyError, OSError) as exc:
        return MonitorSnapshot(connected=False, error=str(exc), taken_at=time.monotonic())
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


def _used_memory(store: Store) -> int | None:
    try:
        return used_memory(store.client)  # summed over the nodes of a cluster
    except valkey.ResponseError:  # e.g. an ACL user without INFO: memory unknown, not disconnected
        return None


def _read_health(store: Store, snap: MonitorSnapshot) -> None:
    prefix = store.keys.health("")
    for key in store.client.scan_iter(match=store.keys.health("*"), count=100):
        fields = store.client.hgetall(key)
        if not fields:
            continue  # expired between SCAN and HGETALL
        component = key.decode(errors="replace").removeprefix(prefix)
        snap.components.append(component)
        for raw_name, raw_value in fields.items():
            name = raw_name.decode(errors="replace")
            if name == "at":
                with contextlib.suppress(ValueError):
                    snap.heartbeats[component] = int(raw_value)
                continue
            try:
                value = int(raw_value)
            except ValueError:
                snap.bad_health_values += 1
                log.warning("health %s field %s is not an integer: %r", key, name, raw_value[:40])
                continue
            if name in MAX_OVER_COMPONENTS:
                snap.health[name] = max(snap.health.get(name, value), value)
            else:
                snap.health[name] = snap.health.get(name, 0) + value
    snap.components.sort()


def _symbol_row(store: Store, symbol: str) -> SymbolRow:
    row = SymbolRow(symbol)
    try:
        _fill_row(store, row)
    except (StoreUnavailable, *UNREACHABLE, OSError):
        raise  # the server, not the data: the whole frame is DISCONNECTED
    except (TickvaultError, valkey.ValkeyError, ValueError, KeyError, IndexError) as exc:
        # a malformed stored entry must not take the monitor down: shown in the row, logged
        log.warning("monitor: cannot read %s: %s", symbol, exc)
        row = SymbolRow(symbol, error=f"{type(exc).__name__}: {exc}")
    try:
        row.book = _top_of_book(store, symbol)
    except (StoreUnavailable, *UNREACHABLE, OSError):
        raise
    except (TickvaultError, valkey.ValkeyError, ValueError, KeyError, IndexError) as exc:
        log.warning("monitor: cannot read the book of %s: %s", symbol, exc)
        row.book_error = f"{type(exc).__name__}: {exc}"
    return row


def _top_of_book(store: Store, symbol: str) -> Quote | None:
    """The newest stored top of book, or None while no book of `symbol` is stored."""
    position = store.book_position(symbol)
    if position.kind is None:
        return None
    book = store.book(symbol, position.ms, depth=1)
    side = book["side"].to_numpy()
    bid, ask = book[side == "bid"], book[side == "ask"]
    return Quote(
        book.attrs["at"].to_pydatetime(),
        float(bid["price"].iloc[0]) if len(bid) else None,
        int(bid["quantity"].iloc[0]) if len(bid) else 0,
        float(ask["price"].iloc[0]) if len(ask) else None,
        int(ask["quantity"].iloc[0]) if len(ask) else 0,
    )


def _fill_row(store: Store, row: SymbolRow) -> None:
    last = store.last_tick(row.symbol)
    if last is None:
        return
    row.last_price, row.last_time = last.price, last.timestamp
    end = last.timestamp_ms
    recent = store.columns(row.symbol, end - SPARK_MINUTES * 60_000 + 1, end)
    in_window = recent.timestamp_ms > end - WINDOW_MS
    row.volume_5m = float(recent.volume[in_window].sum())
    row.trades_5m = int(in_window.sum())
    minute = (end - recent.timestamp_ms) // 60_000
    row.spark = np.bincount(SPARK_MINUTES - 1 - minute, minlength=SPARK_MINUTES).tolist()
    opened = _session_open_price(store, row.symbol, end)
    row.change_pct = (last.price / opened - 1) * 100 if opened else None
    top = store.client.xrevrange(store.keys.features(row.symbol), count=1)
    if top:
        at = stream_id(top[0][0])[0]
        latest = store.events("features", row.symbol, at, at)
        if len(latest):
            row.features = latest.iloc[-1].to_dict()
    sig = store.client.xrevrange(store.keys.signals(row.symbol), count=1)
    if sig:
        row.signal = sig[0][1][b"action"].decode()
        row.confidence = float(sig[0][1][b"confidence"])


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


COMPACT_BELOW = 120  # terminal columns: narrower terminals get the essential columns only
DATED_FROM = 150  # terminal columns: from here the time column carries the date too
_COMPACT = ("symbol", "time", "last", "chg %", "trades 5m", "ofi 60s", "signal")


def _money(value: float) -> str:
    """Financial volume short enough never to be cut: 1.40 B, 123.4 M, 98,765."""
    if abs(value) >= 1e9:
        return f"{value / 1e9:,.2f} B"
    if abs(value) >= 1e6:
        return f"{value / 1e6:,.1f} M"
    return f"{value:,.0f}"


def render(snap: MonitorSnapshot, where: str = "", width: int | None = None) -> Group:
    """The frame; `width` (the terminal's columns) below DATED_FROM drops the date from the time,
    below COMPACT_BELOW also the volume, the sparkline, the 5-minute return and the regime, so the
    rest stays readable."""
    if not snap.connected:
        banner = Text(f"DISCONNECTED from Valkey {where}: {snap.error}", style="bold white on red")
        return Group(banner, Text("retrying every refresh; nothing shown is current", style="dim"))
    compact = width is not None and width < COMPACT_BELOW
    dated = width is None or width >= DATED_FROM
    table = Table(title=f"tickvault monitor {where}".rstrip(), expand=False)
    columns = ("symbol", "exchange time" if dated else "time", "last", "chg %", "volume 5m", "trades 5m",
               f"trades/min ({SPARK_MINUTES}m)", "ret 5m", "ofi 60s", "regime", "signal")  # fmt: skip
    keep = [not compact or name in _COMPACT for name in columns]
    for name, shown in zip(columns, keep, strict=True):
        if shown:
            left = name in ("symbol", "exchange time", "time", "regime", "signal")
            # a time split over two lines is hard to read: the other columns give way instead
            table.add_column(
                name, justify="left" if left else "right", no_wrap=name in ("symbol", "exchange time")
            )
    blank = ["-"] * (sum(keep) - 2)
    for row in snap.rows:
        if row.error:
            table.add_row(row.symbol, Text(f"UNREADABLE {row.error}", style="red"), *blank)
            continue
        if row.last_price is None or row.last_time is None:
            table.add_row(row.symbol, Text("NO DATA", style="yellow"), *blank)
            continue
        change = row.change_pct
        style = "green" if change and change > 0 else "red" if change and change < 0 else ""
        signal = "-" if row.signal is None else f"{row.signal} {row.confidence:.2f}"
        cells: tuple[str | Text, ...] = (
            row.symbol,
            row.last_time.astimezone(B3_TZ).strftime("%Y-%m-%d %H:%M:%S.%f" if dated else "%H:%M:%S.%f")[:-3],
            f"{row.last_price:,.2f}",
            Text(_num(change, "+.3f"), style=style),
            _money(row.volume_5m),
            f"{row.trades_5m:,}",
            sparkline(row.spark),
            _num(row.features.get("ret_5m"), "+.5f"),
            _num(row.features.get("ofi_60s"), "+.2f"),
            str(row.features.get("volatility_regime_30d") or "-"),
            Text(signal, style="green" if row.signal == "BUY" else "red" if row.signal == "SELL" else ""),
        )
        table.add_row(*(cell for cell, shown in zip(cells, keep, strict=True) if shown))
    books = _book_table(snap.rows, compact, dated)
    return Group(table, *([books] if books is not None else []), Text(_health_line(snap), style="dim"))


def _book_table(rows: list[SymbolRow], compact: bool, dated: bool) -> Table | None:
    """Top of book per symbol with a stored book (a narrow terminal: without its time); None when no
    symbol has one."""
    shown = [row for row in rows if row.book is not None or row.book_error]
    if not shown:
        return None
    table = Table(title="order book (newest stored)", expand=False)
    names = ("symbol", *(() if compact else ("book time",)), "bid qty", "bid", "ask", "ask qty", "spread")
    for name in names:
        table.add_column(name, justify="left" if name in ("symbol", "book time") else "right", no_wrap=True)
    for row in shown:
        quote = row.book
        if quote is None:
            # the reason is in the log: a long one here would widen the table past the terminal
            table.add_row(row.symbol, Text("UNREADABLE", style="red"), *["-"] * (len(names) - 2))
            continue
        at = quote.at.astimezone(B3_TZ).strftime("%Y-%m-%d %H:%M:%S.%f" if dated else "%H:%M:%S.%f")[:-3]
        table.add_row(
            row.symbol,
            *(() if compact else (at,)),
            f"{quote.bid_size:,}" if quote.bid is not None else "-",
            _num(quote.bid, ",.2f"),
            _num(quote.ask, ",.2f"),
            f"{quote.ask_size:,}" if quote.ask is not None else "-",
            _num(quote.spread, ",.2f"),
        )
    return table


def _health_line(snap: MonitorSnapshot) -> str:
    h = snap.health
    memory = "-" if snap.memory_bytes is None else f"{snap.memory_bytes / 2**20:,.1f} MiB"
    if not snap.components:
        return f"no running component reports health | Valkey memory {memory}"
    rate = "-" if snap.ticks_per_s is None else f"{snap.ticks_per_s:,.0f}"
    lag = "-" if snap.lag_ms is None else f"{snap.lag_ms:,} ms"
    line = (f"ticks/s stored {rate} | bus→store lag {lag} | stored {h.get('stored', 0):,}"
            f" | gaps {h.get('gaps', 0):,} recovered {h.get('recovered', 0):,} | rejected"
            f" {h.get('rejected', 0):,} | buffered {h.get('buffered', 0):,} | spilled {h.get('spilled', 0):,}"
            f" | Valkey memory {memory} | components: {', '.join(snap.components)}")  # fmt: skip
    if snap.bad_health_values:
        line += f" | {snap.bad_health_values} unreadable health values"
    return line
