"""Simulated history: past B3 sessions from the market simulator, written straight into history blocks.

A new installation has no history, and training (walk-forward over sessions) or the history-aware
features need several sessions of it. `backfill` makes them in seconds: for each symbol, the N BVMF
trading days before today (or `before`), one whole simulated session
each (09:00-18:30, the day's own random seed, so every day differs and a rerun gives the same day),
encoded into hour blocks like sealed ticks. It bypasses bus, recorder and live stream on purpose:
this is bulk history, not a feed. A day that already holds ticks of the symbol is never touched, so
running it twice stores nothing twice and never mixes simulated trades into recorded ones.

Backfilled ticks carry `seq` 1..n in time order, counted per backfilled session: they did not come
through a live channel, so they are not part of its sequence.
"""

from __future__ import annotations

import logging
import operator
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta

import numpy as np

from tickvault.domain.events import B3_TZ, to_ms
from tickvault.domain.tick_schema import AGGRESSOR_CODES
from tickvault.errors import DataError
from tickvault.sources.simulator import SESSION, MarketSimulator
from tickvault.store.api import Store
from tickvault.store.block_codec import Columns
from tickvault.store.valkey_errors import map_valkey_errors

log = logging.getLogger("tickvault.backfill")

MAX_DAYS = 250  # about a year of sessions; more is a research data set, not a demo
_AGGRESSOR = {name: code for code, name in enumerate(AGGRESSOR_CODES)}
_fields = operator.attrgetter(
    "timestamp_ms", "trade_id", "price", "volume", "quantity", "buyer", "seller", "trade_type", "is_edit"
)


@dataclass
class BackfillResult:
    written: dict[tuple[str, date], int] = field(default_factory=dict)  # (symbol, day) -> ticks
    skipped: list[tuple[str, date]] = field(default_factory=list)  # days that already held ticks

    @property
    def ticks(self) -> int:
        return sum(self.written.values())


def previous_trading_days(before: date, n: int) -> list[date]:
    """The `n` BVMF session dates before `before`, oldest first."""
    days: list[date] = []
    day = before
    while len(days) < n:
        day -= timedelta(days=1)
        if SESSION.is_trading_day(day):
            days.append(day)
    return days[::-1]


def _bounds(day: date) -> tuple[int, int]:
    return to_ms(SESSION.open_of(day)), to_ms(SESSION.close_of(day))


def simulated_session(symbol: str, day: date, seed: int) -> Columns:
    """One whole simulated session of `symbol` on `day`, as time-ordered columns (seq 1..n)."""
    open_ms, close_ms = _bounds(day)
    day_seed = zlib.crc32(f"{seed}:{day.isoformat()}".encode())
    sim = MarketSimulator([symbol], seed=day_seed, start=SESSION.open_of(day))
    rows: list[tuple[object, ...]] = []
    aggressor: list[int] = []
    for tick in sim.ticks():
        if tick.timestamp_ms >= close_ms:
            break
        rows.append(_fields(tick))
        aggressor.append(_AGGRESSOR[tick.aggressor])
    if not rows:
        return Columns.empty()
    ms, trade_id, price, volume, quantity, buyer, seller, trade_type, is_edit = zip(*rows, strict=True)
    cols = Columns(
        timestamp_ms=np.array(ms, np.int64),
        trade_id=np.array(trade_id, np.int64),
        price=np.array(price, np.float64),
        volume=np.array(volume, np.float64),
        quantity=np.array(quantity, np.int64),
        buyer=np.array(buyer, np.int64),
        seller=np.array(seller, np.int64),
        trade_type=np.array(trade_type, np.int64),
        aggressor=np.array(aggressor, np.int8),
        is_edit=np.array(is_edit, np.bool_),
        seq=np.arange(1, len(rows) + 1, dtype=np.int64),
    )
    assert open_ms <= int(cols.timestamp_ms[0])  # the simulator starts at the open it was given
    return cols


def _holds_ticks(store: Store, symbol: str, day: date) -> bool:
    start, end = _bounds(day)
    return len(store.columns(symbol, start, end)) > 0


def backfill(
    store: Store,
    symbols: Sequence[str],
    days: int,
    *,
    before: date | None = None,
    seed: int = 7,
) -> BackfillResult:
    """Write `days` simulated sessions per symbol into history: the BVMF sessions before `before`
    (default: today in B3 time). Days that already hold ticks of the symbol are skipped, so the same
    call twice writes nothing the second time."""
    if not 1 <= days <= MAX_DAYS:
        raise DataError("days", f"must be between 1 and {MAX_DAYS}, got {days}")
    result = BackfillResult()
    end = before or datetime.now(B3_TZ).date()
    for symbol in symbols:
        for day in previous_trading_days(end, days):
            if _holds_ticks(store, symbol, day):
                result.skipped.append((symbol, day))
                log.info("backfill: %s already has ticks on %s; left as it is", symbol, day)
                continue
            cols = simulated_session(symbol, day, seed)
            with map_valkey_errors():
                store.history.put(symbol, cols)
                store.client.sadd(store.keys.symbols(), symbol)
            result.written[(symbol, day)] = len(cols)
            log.info("backfill: %s %s: %d simulated ticks", symbol, day, len(cols))
    return result
