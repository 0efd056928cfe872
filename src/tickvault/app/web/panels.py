"""What each panel of the web dashboard shows at a moment, read through the Store API users call from
Python (`Store.candles`, `candle_stream`, `ticks`, `as_of`, `features`, `predictions`, `signals`),
as JSON-ready values. The live feed (live.py) keeps these panels current between two such reads;
time travel is one such read at a past moment.

Chart times are B3 wall-clock seconds ("local seconds"): the chart library draws UTC, so each time is
shifted by its own B3 offset, and the offset is shown beside the clock on the page.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from tickvault.analytics.candles import bar_bounds
from tickvault.app.web.bars import bar_rows, chart_bars, index_ms
from tickvault.app.web.clock import clock, local_s, offset_text
from tickvault.domain.instruments import instrument_for
from tickvault.store.api import Store

TAPE_ROWS = 50
LADDER_LEVELS = 10
MARKERS = 500  # bars with signal markers drawn on the chart, the newest
SIGNAL_ROWS = 12
_TAPE_SPANS_MS = (200, 2_000, 60_000, 15 * 60_000, 4 * 3_600_000)  # widened until the tape is full


def price_decimals(symbol: str) -> int:
    """Decimals that show every price of `symbol` exactly (WDO: 0.5 -> 1; WIN: 5 -> 0)."""
    step = instrument_for(symbol).tick_size
    for decimals in range(7):
        if abs(round(step * 10**decimals) - step * 10**decimals) < 1e-9:
            return decimals
    return 6


def signal_markers(signals: pd.DataFrame, tf: str, limit: int = MARKERS) -> list[dict[str, Any]]:
    """BUY/SELL signals (Store.signals) as chart markers: one per bar and action (a model may signal
    every second), with how many and the newest one's confidence; HOLD is not drawn."""
    acting = signals[signals["action"].isin(["BUY", "SELL"])] if len(signals) else signals
    merged: dict[tuple[int, str], dict[str, Any]] = {}
    for ms, row in zip(index_ms(acting), acting.itertuples(index=False), strict=True):
        key = (bar_bounds(int(ms), tf)[0], str(row.action))
        count = merged[key]["count"] + 1 if key in merged else 1
        merged[key] = marker(int(ms), tf, str(row.action), float(row.confidence), count)
    return sorted(merged.values(), key=lambda m: m["ms"])[-limit:]


def recent_signals(signals: pd.DataFrame, rows: int = SIGNAL_ROWS) -> list[dict[str, Any]]:
    """The newest BUY/SELL signals one by one (the signals list beside the chart), oldest first."""
    acting = signals[signals["action"].isin(["BUY", "SELL"])].tail(rows) if len(signals) else signals
    return [
        marker(int(ms), "1d", str(row.action), float(row.confidence))
        for ms, row in zip(index_ms(acting), acting.itertuples(index=False), strict=True)
    ]


def marker(ms: int, tf: str, action: str, confidence: float, count: int = 1) -> dict[str, Any]:
    return {
        "time": local_s(bar_bounds(ms, tf)[0]), "ms": ms, "at": clock(ms), "action": action,
        "confidence": confidence, "count": count,
    }  # fmt: skip


def trade_row(ms: int, trade_id: int, price: float, quantity: int, aggressor: str, buyer: int,
              seller: int) -> dict[str, Any]:  # fmt: skip
    return {
        "id": int(trade_id), "ms": int(ms), "time": clock(int(ms))[11:], "price": float(price),
        "quantity": int(quantity), "aggressor": aggressor, "buyer": int(buyer), "seller": int(seller),
    }  # fmt: skip


def tape_rows(ticks: pd.DataFrame, rows: int = TAPE_ROWS) -> list[dict[str, Any]]:
    """The newest `rows` trades of a ticks frame (Store.ticks), newest first."""
    last = ticks.tail(rows)
    out = [
        trade_row(int(t.timestamp_ms), t.trade_id, t.price, t.quantity, str(t.aggressor), t.buyer, t.seller)
        for t in last.itertuples(index=False)
    ]
    out.reverse()
    return out


def tape_until(store: Store, symbol: str, end_ms: int, rows: int = TAPE_ROWS) -> list[dict[str, Any]]:
    """The last `rows` trades at or before `end_ms` (a window widened until it holds them)."""
    ticks = None
    for span in _TAPE_SPANS_MS:
        ticks = store.ticks(symbol, end_ms - span + 1, end_ms)
        if len(ticks) >= rows:
            break
    assert ticks is not None
    return tape_rows(ticks, rows)


def _number(value: Any) -> Any:
    """A JSON-safe feature value: NaN/inf and missing become None, numpy scalars plain numbers."""
    if value is None:
        return None
    if isinstance(value, bool | np.bool_):
        return bool(value)
    if isinstance(value, int | np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        return float(value) if math.isfinite(value) else None
    return str(value)


_EVENT_COLUMNS = {"symbol", "timestamp_ms", "model", "action", "confidence"}


def features_view(ms: int, values: dict[str, Any]) -> dict[str, Any]:
    return {"ms": ms, "at": clock(ms), "values": {k: _number(v) for k, v in sorted(values.items())}}


def prediction_view(ms: int, model: str, probabilities: dict[str, float]) -> dict[str, Any]:
    return {
        "ms": ms, "at": clock(ms), "model": model,
        "probabilities": {k: float(v) for k, v in sorted(probabilities.items())},
    }  # fmt: skip


def latest_features(store: Store, symbol: str, end_ms: int, span_ms: int = 600_000) -> dict[str, Any] | None:
    """The newest features at or before `end_ms` (Store.features), or None."""
    frame = store.features(symbol, end_ms - span_ms, end_ms)
    if not len(frame):
        return None
    row = frame.iloc[-1]
    values = {k: row[k] for k in frame.columns if k not in _EVENT_COLUMNS}
    return features_view(int(row["timestamp_ms"]), values)


def latest_prediction(
    store: Store, symbol: str, end_ms: int, span_ms: int = 600_000
) -> dict[str, Any] | None:
    """The newest prediction at or before `end_ms` (Store.predictions), or None."""
    frame = store.predictions(symbol, end_ms - span_ms, end_ms)
    if not len(frame):
        return None
    row = frame.iloc[-1]
    probabilities = {k: float(row[k]) for k in frame.columns if k not in _EVENT_COLUMNS and pd.notna(row[k])}
    return prediction_view(int(row["timestamp_ms"]), str(row.get("model", "")), probabilities)


# -- the order book ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Level:
    price: float
    quantity: int
    orders: int = 0


@dataclass(frozen=True)
class Ladder:
    """The best levels of each side, best first."""

    at_ms: int | None
    bids: list[Level] = field(default_factory=list)
    asks: list[Level] = field(default_factory=list)

    def view(self) -> dict[str, Any]:
        return {
            "at": clock(self.at_ms) if self.at_ms is not None else None,
            "bids": [[lv.price, lv.quantity, lv.orders] for lv in self.bids[:LADDER_LEVELS]],
            "asks": [[lv.price, lv.quantity, lv.orders] for lv in self.asks[:LADDER_LEVELS]],
        }


BookSource = Callable[[Store, str, int | None], Ladder | None]


def ladder_from_frame(frame: pd.DataFrame, at_ms: int | None, levels: int = LADDER_LEVELS) -> Ladder | None:
    """Rows of `side` (bid/ask), `price`, `quantity` [, `orders`] -> the best `levels` per side."""
    if frame is None or not len(frame):
        return None
    has_orders = "orders" in frame.columns
    sides: dict[str, list[Level]] = {}
    for side, best_first in (("bid", False), ("ask", True)):
        rows = frame[frame["side"].astype(str) == side].sort_values("price", ascending=best_first)
        sides[side] = [
            Level(float(r.price), int(r.quantity), int(r.orders) if has_orders else 0)
            for r in rows.head(levels).itertuples(index=False)
            if r.quantity > 0
        ]
    return Ladder(at_ms, sides["bid"], sides["ask"])


_END_OF_TIME = 253_402_300_799_000  # 9999-12-31, ms


def book_ladder(store: Store, symbol: str, at_ms: int | None, levels: int = LADDER_LEVELS) -> Ladder | None:
    """The book's best `levels` per side as of `at_ms` (None: the newest), or None while no order
    book is stored: the dashboard shows its book panel only when this returns a ladder. The one seam
    between the dashboard and the book: it reads `Store.book(symbol[, at])` once the store has it
    (a frame of side, price, quantity[, orders] rows, see `ladder_from_frame`)."""
    reader = getattr(store, "book", None)
    if reader is None:
        return None
    # None: the newest book, whatever the clock of the source that wrote it (a simulator runs ahead)
    frame = reader(symbol, _END_OF_TIME if at_ms is None else at_ms, levels)
    return ladder_from_frame(frame, at_ms, levels)


# -- one moment, every panel ---------------------------------------------------------------------

# runs reads and gives their results in order: one after the other, or at once (the server's pool)
Runner = Callable[[Sequence[Callable[[], Any]]], list[Any]]


def one_by_one(reads: Sequence[Callable[[], Any]]) -> list[Any]:
    return [read() for read in reads]


def moment(
    store: Store, symbol: str, tf: str, end_ms: int | None, book: BookSource = book_ladder,
    run: Runner = one_by_one,
) -> dict[str, Any]:  # fmt: skip
    """Every panel of `symbol` as of `end_ms` (None: the newest stored tick, i.e. live). Once the
    moment is known, the panels' reads are independent: `run` may make them at once (on a busy
    machine a dozen round trips to Valkey in series cost a page load hundreds of ms)."""
    live = end_ms is None
    last_tick = store.last_tick(symbol) if live else store.as_of(symbol, end_ms)
    if end_ms is None:
        end_ms = last_tick.timestamp_ms if last_tick is not None else None
    view: dict[str, Any] = {
        "symbol": symbol, "tf": tf, "live": live, "decimals": price_decimals(symbol),
        "tick_size": instrument_for(symbol).tick_size, "instrument": instrument_for(symbol).name,
        "bars": [], "markers": [], "signals": [], "tape": [],
        "book": None, "features": None, "prediction": None, "last": None, "at": None, "offset": None,
    }  # fmt: skip
    if end_ms is None:
        return view  # nothing stored for this symbol yet
    at_ms = end_ms

    def bars_and_signals() -> tuple[pd.DataFrame, pd.DataFrame]:
        # live: the bars closed so far; the bar still open comes with the page's first live update
        bars = chart_bars(store, symbol, tf, at_ms, closed_only=live)
        first_ms = int(index_ms(bars)[0]) if len(bars) else bar_bounds(at_ms, tf)[0]
        return bars, store.signals(symbol, first_ms, at_ms)

    def tape() -> list[dict[str, Any]]:  # the newest trade at or before the moment: the tape ends there
        return tape_until(store, symbol, last_tick.timestamp_ms) if last_tick is not None else []

    (bars, signals), view["tape"], ladder, view["features"], view["prediction"] = run([
        bars_and_signals, tape,
        lambda: book(store, symbol, at_ms),  # live too: the book as of the newest trade on the tape
        lambda: latest_features(store, symbol, at_ms), lambda: latest_prediction(store, symbol, at_ms),
    ])  # fmt: skip
    view["bars"] = bar_rows(bars)
    view["markers"], view["signals"] = signal_markers(signals, tf), recent_signals(signals)
    view["book"] = ladder.view() if ladder is not None else None
    if last_tick is not None:
        view["last"] = trade_row(
            last_tick.timestamp_ms, last_tick.trade_id, last_tick.price, last_tick.quantity,
            last_tick.aggressor, last_tick.buyer, last_tick.seller,
        )  # fmt: skip
    view["at"], view["at_ms"], view["offset"] = clock(end_ms), end_ms, offset_text(end_ms)
    return view
