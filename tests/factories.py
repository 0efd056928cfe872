"""Test data factories with defaults (as in Nautilus' test kit)."""

from __future__ import annotations

from tickvault.domain.events import Tick, make_tick

BASE_MS = 1_764_000_000_000  # 2025-11-24 13:00:00 -03:00, a Monday session


def tick(
    symbol: str = "WDOFUT",
    ts_ms: int = BASE_MS,
    trade_id: int = 1,
    price: float = 5400.0,
    quantity: int = 1,
    **kwargs: object,
) -> Tick:
    return make_tick(symbol, ts_ms, trade_id, price, quantity, multiplier=10.0, **kwargs)  # type: ignore[arg-type]


def ticks(n: int, symbol: str = "WDOFUT", start_ms: int = BASE_MS, per_ms: int = 3) -> list[Tick]:
    """`n` ticks, `per_ms` of them sharing each millisecond (bursts are the norm on B3)."""
    return [
        tick(symbol, start_ms + i // per_ms, i + 1, 5400.0 + 0.5 * (i % 9), 1 + i % 4, trade_type=2 + i % 2)
        for i in range(n)
    ]
