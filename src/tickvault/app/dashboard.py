"""The live terminal view of `tickvault run`.

With Valkey, it is `tickvault monitor`'s frame (market columns, features, signal, pipeline health,
sparkline) plus this process's startup/DEGRADED line. Without Valkey, or while it is unreachable, it
falls back to `LiveView`, fed in-process by the core flow, with the problem in red on top: the
dashboard never goes blank because a server did.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

from rich.console import Group
from rich.table import Table
from rich.text import Text

from tickvault.domain.events import B3_TZ, Tick


@dataclass
class SymbolView:
    last: Tick | None = None
    open_price: float = 0.0
    ticks: int = 0
    quantity: int = 0


class LiveView:
    """An in-process tick handler that keeps what the dashboard shows."""

    def __init__(self, symbols: tuple[str, ...]) -> None:
        self.symbols = symbols
        self.views = {s: SymbolView() for s in symbols}
        self._lock = threading.Lock()
        self._rate_mark = (time.monotonic(), 0)
        self.rate = 0.0

    def __call__(self, tick: Tick) -> None:
        with self._lock:
            view = self.views.setdefault(tick.symbol, SymbolView())
            if view.last is None:
                view.open_price = tick.price
            view.last = tick
            view.ticks += 1
            view.quantity += tick.quantity

    def total(self) -> int:
        return sum(v.ticks for v in self.views.values())

    def render(self, status: str = "", stored: dict[str, int] | None = None) -> Group:
        now = time.monotonic()
        mark_t, mark_n = self._rate_mark
        total = self.total()
        if now - mark_t >= 1.0:
            self.rate = (total - mark_n) / (now - mark_t)
            self._rate_mark = (now, total)
        table = Table(title="tickvault — live market", expand=False)
        for name in ("symbol", "exchange time", "last", "chg %", "trades", "contracts", "stored"):
            table.add_column(name, justify="left" if name in ("symbol", "exchange time") else "right")
        with self._lock:
            for symbol, view in sorted(self.views.items()):
                if view.last is None:
                    table.add_row(symbol, Text("NO DATA", style="yellow"), "-", "-", "0", "0", "-")
                    continue
                change = (view.last.price / view.open_price - 1.0) * 100 if view.open_price else 0.0
                style = "green" if change > 0 else "red" if change < 0 else ""
                table.add_row(
                    symbol,
                    view.last.timestamp.astimezone(B3_TZ).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3],
                    f"{view.last.price:,.2f}",
                    Text(f"{change:+.3f}", style=style),
                    f"{view.ticks:,}",
                    f"{view.quantity:,}",
                    f"{(stored or {}).get(symbol, 0):,}" if stored is not None else "off",
                )
        footer = Text(f"{self.rate:,.0f} ticks/s   {status}   Ctrl+C to stop", style="dim")
        return Group(table, footer)


class RunDashboard:
    """What `tickvault run` shows each refresh (`frame()`); reads Valkey at most every `every_s`."""

    def __init__(self, system: Any, view: LiveView, every_s: float = 1.0, width: int | None = None) -> None:
        from tickvault.store.api import Store

        self.system = system
        self.view = view
        self.every_s = every_s
        self.width = width  # the terminal's columns (a narrow one gets the compact table)
        self.store = (
            Store(system.connection.client("dashboard"), system.connection.keys)
            if system.connection
            else None
        )
        self.snap: Any = None
        self._next = 0.0

    def frame(self) -> Group:
        from tickvault.app.monitor import gather, render

        status = self.system.describe()
        style = "bold red" if "DEGRADED" in status else "dim"
        if self.store is not None:
            if time.monotonic() >= self._next:
                self.snap = gather(self.store, self.system.settings.symbols, self.snap)
                self._next = time.monotonic() + self.every_s
            if self.snap.connected:
                frame = render(self.snap, self.system.connection.where, width=self.width)
                return Group(frame, Text(status, style=style))
            problem = Text(f"Valkey DISCONNECTED: {self.snap.error} (the core flow goes on in-process; "
                           "ticks are buffered)", style="bold white on red")  # fmt: skip
            return Group(problem, self.view.render(status=status, stored=None))
        return Group(Text(status, style=style), self.view.render(stored=None))
