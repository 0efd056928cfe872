"""What each panel of the web dashboard shows at a moment, read through the Store API users call from
Python (`Store.candles`, `candle_stream`, `ticks`, `as_of`, `features`, `predictions`, `signals`),
as JSON-ready values. The live feed (live.py) keeps these panels current between two such reads;
time travel is one such read at a past moment.

Chart times are B3 wall-clock seconds ("local seconds"): the chart library draws UTC, so each time is
shifted by its own B3 offset, and the offset is shown beside the clock on the page.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from tickvault.analytics.candles import bar_bounds
from tickvault.domain.events import from_ms
from tickvault.domain.instruments import instrument_for
from tickvault.store.api import Store

TAPE_ROWS = 50
LADDER_LEVELS = 10
MARKERS = 500  # the newest signals drawn on the chart
_H = 3_600_000
# how far back the chart reaches when it opens, per timeframe (about 300-500 bars of a B3 session)
WINDOW_MS = {"1m": 8 * _H, "5m": 3 * 24 * _H, "15m": 8 * 24 * _H, "1h": 45 * 24 * _H, "1d": 400 * 24 * _H}
# bars missing from the candle stream (the bar still open, a worker behind or not running) are
# computed from ticks, over at most this span: more would cost the page its one-second load
TICK_WINDOW_MS = {"1m": 8 * _H, "5m": 24 * _H, "15m": 3 * 24 * _H, "1h": 7 * 24 * _H, "1d": 7 * 24 * _H}
_TAPE_SPANS_MS = (60_000, 15 * 60_000, 4 * _H)  # widened until the tape is full


def local_s(ms: int) -> int:
    """B3 wall-clock seconds of an epoch-ms time (what the chart's time axis shows)."""
    offset = from_ms(ms).utcoffset()
    return (ms // 1000) + (int(offset.total_seconds()) if offset is not None else 0)


def clock(ms: int) -> str:
    """`2026-11-24 10:00:00.123` in B3 time."""
    return from_ms(ms).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def offset_text(ms: int) -> str:
    """The B3 offset from UTC at `ms`, e.g. `-03:00`."""
    text = from_ms(ms).strftime("%z")
    return f"{text[:3]}:{text[3:]}"


def price_decimals(symbol: str) -> int:
    """Decimals that show every price of `symbol` exactly (WDO: 0.5 -> 1; WIN: 5 -> 0)."""
    step = instrument_for(symbol).tick_size
    for decimals in range(7):
        if abs(round(step * 10**decimals) - step * 10**decimals) < 1e-9:
            return decimals
    return 6


def _index_ms(frame: pd.DataFrame) -> np.ndarray:
    index = pd.DatetimeIndex(frame.index)
    return np.asarray(index.as_unit("ms").asi8, dtype=np.int64)


def bar_rows(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """A candles frame (Store.candles / candle_stream) as chart bars; `volume` is contracts."""
    rows = []
    for ms, bar in zip(_index_ms(frame), frame.itertuples(index=False), strict=True):
        rows.append(bar_row(int(ms), bar.open, bar.high, bar.low, bar.close, bar.quantity, bar.trades))
    return rows


def bar_row(ms: int, o: float, h: float, lo: float, c: float, quantity: int, trades: int) -> dict[str, Any]:
    return {
        "time": local_s(ms), "ms": ms, "open": float(o), "high": float(h), "low": float(lo),
        "close": float(c), "volume": int(quantity), "trades": int(trades),
    }  # fmt: skip


def candles_until(store: Store, symbol: str, tf: str, end_ms: int) -> pd.DataFrame:
    """The bars of the chart ending at `end_ms` (the last one as it stood then): closed bars from
    the candle stream the workers write, the rest (the bar still open, bars the stream does not have
    yet) computed from ticks by `Store.candles`, within TICK_WINDOW_MS."""
    start_ms = bar_bounds(end_ms - WINDOW_MS[tf], tf)[0]
    current_open = bar_bounds(end_ms, tf)[0]
    stream = store.candle_stream(symbol, tf, start_ms, end_ms)
    stream = stream[_index_ms(stream) < current_open]  # the bar holding end_ms: as of end_ms, from ticks
    from_ticks = bar_bounds(end_ms - TICK_WINDOW_MS[tf], tf)[0]
    if len(stream):
        from_ticks = max(from_ticks, bar_bounds(int(_index_ms(stream)[-1]), tf)[1])
    computed = store.candles(symbol, tf, max(from_ticks, start_ms), end_ms)
    parts = [p for p in (stream, computed) if len(p)]
    return pd.concat(parts) if len(parts) > 1 else parts[0] if parts else computed


def signal_markers(signals: pd.DataFrame, tf: str, limit: int = MARKERS) -> list[dict[str, Any]]:
    """BUY/SELL signals (Store.signals) as chart markers on the bar of their time (HOLD is not drawn)."""
    if not len(signals):
        return []
    acting = signals[signals["action"].isin(["BUY", "SELL"])].tail(limit)
    return [
        marker(int(ms), tf, str(row.action), float(row.confidence))
        for ms, row in zip(_index_ms(acting), acting.itertuples(index=False), strict=True)
    ]


def marker(ms: int, tf: str, action: str, confidence: float) -> dict[str, Any]:
    return {
        "time": local_s(bar_bounds(ms, tf)[0]), "ms": ms, "at": clock(ms), "action": action,
        "confidence": confidence,
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


def book_ladder(store: Store, symbol: str, at_ms: int | None, levels: int = LADDER_LEVELS) -> Ladder | None:
    """The book's best `levels` per side as of `at_ms` (None: the newest), or None while no order
    book is stored: the dashboard shows its book panel only when this returns a ladder. The one seam
    between the dashboard and the book: it reads `Store.book(symbol[, at])` once the store has it
    (a frame of side, price, quantity[, orders] rows, see `ladder_from_frame`)."""
    reader = getattr(store, "book", None)
    if reader is None:
        return None
    frame = reader(symbol) if at_ms is None else reader(symbol, at_ms)
    return ladder_from_frame(frame, at_ms, levels)


# -- one moment, every panel ---------------------------------------------------------------------


def moment(
    store: Store, symbol: str, tf: str, end_ms: int | None, book: BookSource = book_ladder
) -> dict[str, Any]:
    """Every panel of `symbol` as of `end_ms` (None: the newest stored tick, i.e. live)."""
    live = end_ms is None
    last_tick = store.last_tick(symbol) if live else store.as_of(symbol, end_ms)
    if end_ms is None:
        end_ms = last_tick.timestamp_ms if last_tick is not None else None
    view: dict[str, Any] = {
        "symbol": symbol, "tf": tf, "live": live, "decimals": price_decimals(symbol),
        "tick_size": instrument_for(symbol).tick_size, "bars": [], "markers": [], "tape": [],
        "book": None, "features": None, "prediction": None, "last": None, "at": None, "offset": None,
    }  # fmt: skip
    if end_ms is None:
        return view  # nothing stored for this symbol yet
    bars = candles_until(store, symbol, tf, end_ms)
    view["bars"] = bar_rows(bars)
    first_ms = int(_index_ms(bars)[0]) if len(bars) else end_ms
    view["markers"] = signal_markers(store.signals(symbol, first_ms, end_ms), tf)
    if last_tick is not None:  # the newest trade at or before end_ms: the tape ends there
        view["tape"] = tape_until(store, symbol, last_tick.timestamp_ms)
    ladder = book(store, symbol, None if live else end_ms)
    view["book"] = ladder.view() if ladder is not None else None
    view["features"] = latest_features(store, symbol, end_ms)
    view["prediction"] = latest_prediction(store, symbol, end_ms)
    if last_tick is not None:
        view["last"] = trade_row(
            last_tick.timestamp_ms, last_tick.trade_id, last_tick.price, last_tick.quantity,
            last_tick.aggressor, last_tick.buyer, last_tick.seller,
        )  # fmt: skip
    view["at"], view["at_ms"], view["offset"] = clock(end_ms), end_ms, offset_text(end_ms)
    return view
