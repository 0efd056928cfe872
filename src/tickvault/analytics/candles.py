"""Candles (OHLCV bars) computed from ticks: 1m, 5m, 15m, 1h on B3 wall-clock time, 1d per session.

Bars are labelled by their open time in America/Sao_Paulo and aligned to the local clock, so the
first 5m bar of a session opens at 09:00. A trade edit (`is_edit`) replaces the trade it corrects
(same session and trade id; the last edit wins), and a late tick simply lands in the bar of its
exchange time: a bar recomputed from history always reflects every correction stored so far.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import numpy as np
import pandas as pd

from tickvault.domain.events import B3_TZ, from_ms, to_ms
from tickvault.errors import DataError

TIMEFRAMES = {"1m": "1min", "5m": "5min", "15m": "15min", "1h": "1h", "1d": "1D"}
CANDLE_COLUMNS = (
    "open", "high", "low", "close", "volume", "quantity", "trades", "vwap", "buy_quantity", "sell_quantity",
)  # fmt: skip

_SIZE_MS = {"1m": 60_000, "5m": 300_000, "15m": 900_000, "1h": 3_600_000}


def bar_bounds(ms: int, tf: str) -> tuple[int, int]:
    """[open, end) in epoch ms of the `tf` bar holding `ms`, aligned to the B3 wall clock like
    `candles.candles_from_ticks` (pandas floor on local time; 1d = the local calendar day)."""
    local = from_ms(ms, B3_TZ).replace(tzinfo=None)
    if tf == "1d":
        start = local.replace(hour=0, minute=0, second=0, microsecond=0)
        end = start + timedelta(days=1)
    else:
        size = _SIZE_MS[tf]
        local_ms = (local - datetime(1970, 1, 1)) // timedelta(milliseconds=1)
        start = datetime(1970, 1, 1) + timedelta(milliseconds=local_ms - local_ms % size)
        end = start + timedelta(milliseconds=size)
    return to_ms(start.replace(tzinfo=B3_TZ)), to_ms(end.replace(tzinfo=B3_TZ))


def check_timeframe(tf: str) -> str:
    if tf not in TIMEFRAMES:
        raise DataError("timeframe", f"{tf!r} must be one of {', '.join(TIMEFRAMES)}")
    return tf


def effective_trades(ticks: pd.DataFrame) -> pd.DataFrame:
    """Ticks with each edited trade replaced by its last edit (per B3 session and trade id)."""
    if not len(ticks) or not ticks["is_edit"].any():
        return ticks
    session = ticks.index.tz_convert(B3_TZ).normalize()
    key = pd.Series(list(zip(session, ticks["trade_id"], strict=True)), index=ticks.index)
    edits = ticks["is_edit"].to_numpy()
    edited = set(key[edits])
    is_original = ~edits & key.isin(edited).to_numpy()
    last_edit = edits & ~key.duplicated(keep="last").to_numpy()
    return ticks[(~edits & ~is_original) | last_edit]


def empty_candles() -> pd.DataFrame:
    index = pd.DatetimeIndex([], tz=B3_TZ, name="timestamp")
    frame = pd.DataFrame({name: pd.Series(dtype=np.float64) for name in CANDLE_COLUMNS}, index=index)
    return frame.astype(
        {"quantity": np.int64, "trades": np.int64, "buy_quantity": np.int64, "sell_quantity": np.int64}
    )


def candles_from_ticks(ticks: pd.DataFrame, tf: str) -> pd.DataFrame:
    """OHLCV + trades, VWAP and aggressor quantities per bar, only bars that have trades."""
    check_timeframe(tf)
    trades = effective_trades(ticks)
    if not len(trades):
        return empty_candles()
    local = trades.index.tz_convert(B3_TZ)
    bucket = local.normalize() if tf == "1d" else local.floor(TIMEFRAMES[tf])
    qty = trades["quantity"].to_numpy()
    aggressor = trades["aggressor"].astype(str).to_numpy()
    work = pd.DataFrame(
        {
            "price": trades["price"].to_numpy(),
            "volume": trades["volume"].to_numpy(),
            "quantity": qty,
            "notional": trades["price"].to_numpy() * qty,
            "buy_quantity": np.where(aggressor == "buy", qty, 0),
            "sell_quantity": np.where(aggressor == "sell", qty, 0),
        },
        index=pd.DatetimeIndex(bucket, name="timestamp"),
    )
    grouped = work.groupby(level=0, sort=True)
    price = grouped["price"]
    out = pd.DataFrame(
        {
            "open": price.first(),
            "high": price.max(),
            "low": price.min(),
            "close": price.last(),
            "volume": grouped["volume"].sum(),
            "quantity": grouped["quantity"].sum().astype(np.int64),
            "trades": price.count().astype(np.int64),
        }
    )
    notional, quantity = grouped["notional"].sum(), out["quantity"]
    out["vwap"] = np.where(quantity > 0, notional / quantity.where(quantity > 0, 1), out["close"])
    out["buy_quantity"] = grouped["buy_quantity"].sum().astype(np.int64)
    out["sell_quantity"] = grouped["sell_quantity"].sum().astype(np.int64)
    return out
