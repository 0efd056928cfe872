"""tickvault: real-time B3 market data for ML trading.

store = tickvault.connect()          # the embedded Valkey of ./data, or VALKEY_URL
df = store.ticks("WDOFUT", "2026-11-24T10:00-03:00", "2026-11-24T10:05-03:00")
"""

from __future__ import annotations

from tickvault.bus.publisher import Publisher
from tickvault.bus.subscriber import Subscriber
from tickvault.config import Settings, load_settings
from tickvault.domain.book import BookUpdate, OrderUpdate
from tickvault.domain.events import Candle, Features, Prediction, Signal, Tick, make_tick
from tickvault.errors import (
    BusError,
    ConfigError,
    DataError,
    StoreError,
    StoreUnavailable,
    TickvaultError,
)
from tickvault.store.api import Store

__version__ = "0.1.0"


def connect(url: str | None = None) -> Store:
    """Open the store: `url` ('embedded' or valkey[s]://...) or, by default, settings (VALKEY_URL,
    .env), which in the same folder finds the embedded server that `tickvault run` uses.
    Close it (or use `with`) when done: the last tickvault process out stops the embedded server."""
    from tickvault.store.connection import Connection

    settings = load_settings(valkey_url=url)
    conn = Connection.open(settings)
    conn.check()
    return Store(conn.client("api"), conn.keys, owner=conn)


__all__ = [
    "BookUpdate",
    "BusError",
    "Candle",
    "ConfigError",
    "DataError",
    "Features",
    "OrderUpdate",
    "Prediction",
    "Publisher",
    "Settings",
    "Signal",
    "Store",
    "StoreError",
    "StoreUnavailable",
    "Subscriber",
    "Tick",
    "TickvaultError",
    "connect",
    "make_tick",
]
