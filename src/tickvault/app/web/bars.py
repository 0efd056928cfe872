"""The chart's bars at any moment, at the cost of a few hundred stream entries and at most the last
minute of ticks, whatever the tick rate.

Bars that closed come from the candle streams the candle worker writes (`Store.candle_stream`); the
worker's saved position says how far it has read, so every bar that opened before the bar holding
that position is there. The rest (the bar still open, and bars the worker has not written yet) is
merged from the 1m candle stream and, for the minutes the worker has not closed, computed from ticks
by `Store.candles`. Bars nest (1m in 5m in 15m in 1h in one B3 day), so merging 1m bars gives the
same open, high, low, close, contracts and trades as computing from the ticks. Without a candle
worker (or one far behind) everything is computed from ticks over `TICK_WINDOW_MS`.

`Bar` and `fold` are the live feed's side: a bar kept in memory and grown tick by tick.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from tickvault.analytics.candles import CANDLE_COLUMNS, bar_bounds, empty_candles
from tickvault.app.web.clock import local_s
from tickvault.domain.events import B3_TZ
from tickvault.store.api import Store
from tickvault.store.block_codec import Columns

_H = 3_600_000
# how far back the chart reaches when it opens, per timeframe (about 300-500 bars of a B3 session)
WINDOW_MS = {"1m": 8 * _H, "5m": 3 * 24 * _H, "15m": 8 * 24 * _H, "1h": 45 * 24 * _H, "1d": 400 * 24 * _H}
# without a candle worker keeping up, bars are computed from ticks over at most this span: more
# would cost the page its one-second load
TICK_WINDOW_MS = {"1m": 8 * _H, "5m": 24 * _H, "15m": 3 * 24 * _H, "1h": 7 * 24 * _H, "1d": 7 * 24 * _H}


_EMPTY = empty_candles()  # building it costs milliseconds; a copy, microseconds


def _empty() -> pd.DataFrame:
    return _EMPTY.copy()


def index_ms(frame: pd.DataFrame) -> np.ndarray:
    return np.asarray(pd.DatetimeIndex(frame.index).as_unit("ms").asi8, dtype=np.int64)


def bar_row(ms: int, o: float, h: float, lo: float, c: float, quantity: int, trades: int) -> dict[str, Any]:
    """One chart bar; `volume` is contracts."""
    return {
        "time": local_s(ms), "ms": ms, "open": float(o), "high": float(h), "low": float(lo),
        "close": float(c), "volume": int(quantity), "trades": int(trades),
    }  # fmt: skip


def bar_rows(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """A candles frame (Store.candles / candle_stream) as chart bars."""
    return [
        bar_row(int(ms), b.open, b.high, b.low, b.close, b.quantity, b.trades)
        for ms, b in zip(index_ms(frame), frame.itertuples(index=False), strict=True)
    ]


def worker_position(store: Store, symbol: str) -> int | None:
    """The exchange ms up to which the candle worker has read `symbol`'s tick stream (None: no
    worker wrote bars for it): every bar of any timeframe that opened before the bar holding it is
    in the candle streams."""
    saved = store.client.get(store.keys.candle_position(symbol))
    if not saved or saved == b"0-0":
        return None
    return int(saved.split(b"-")[0])


def _first_bar_ms(store: Store, symbol: str, tf: str) -> int | None:
    """Open time of the oldest bar in the candle stream of `tf` (older bars, e.g. history loaded
    before the worker started, are not in it)."""
    head = store.client.xrange(store.keys.candles(tf, symbol), count=1)
    return int(head[0][1][b"timestamp_ms"]) if head else None


def _concat(parts: list[pd.DataFrame]) -> pd.DataFrame:
    parts = [p for p in parts if len(p)]
    out = pd.concat(parts) if len(parts) > 1 else parts[0] if parts else _empty()
    out.index = pd.DatetimeIndex(out.index).as_unit("ns")  # as Store.candles: ns whatever pandas infers
    return out


def _stream(store: Store, symbol: str, tf: str, start_ms: int, before_ms: int) -> pd.DataFrame:
    """Candle-stream bars of `tf` opening in [start_ms, before_ms)."""
    if before_ms <= start_ms:
        return _empty()
    bars = store.candle_stream(symbol, tf, start_ms, before_ms - 1)
    return bars[index_ms(bars) < before_ms]


def merge_up(minutes: pd.DataFrame, tf: str) -> pd.DataFrame:
    """1m bars merged into bars of `tf` (1m: unchanged)."""
    if tf == "1m" or not len(minutes):
        return minutes if tf == "1m" else _empty()
    opens = np.array([bar_bounds(int(ms), tf)[0] for ms in index_ms(minutes)], dtype=np.int64)
    groups = minutes.groupby(opens, sort=True)
    out = pd.DataFrame({
        "open": groups["open"].first(), "high": groups["high"].max(), "low": groups["low"].min(),
        "close": groups["close"].last(), "volume": groups["volume"].sum(),
        "quantity": groups["quantity"].sum(), "trades": groups["trades"].sum(),
    })  # fmt: skip
    notional = (minutes["vwap"] * minutes["quantity"]).groupby(opens, sort=True).sum()
    out["vwap"] = np.where(out["quantity"] > 0, notional / out["quantity"].where(out["quantity"] > 0, 1),
                           out["close"])  # fmt: skip
    out["buy_quantity"] = groups["buy_quantity"].sum()
    out["sell_quantity"] = groups["sell_quantity"].sum()
    out.index = pd.DatetimeIndex(pd.to_datetime(out.index, unit="ms", utc=True), name="timestamp").tz_convert(
        B3_TZ
    )
    return out[list(CANDLE_COLUMNS)].astype(_EMPTY.dtypes.to_dict())


def _from_worker(
    store: Store, symbol: str, tf: str, start_ms: int, before_ms: int, floor_ms: int
) -> pd.DataFrame:
    """Bars of `tf` opening in [start_ms, before_ms), all closed and read by the worker: from its
    stream, and before the stream's first bar (history older than the worker) from ticks, not
    before `floor_ms`."""
    if before_ms <= start_ms:
        return _empty()
    first = _first_bar_ms(store, symbol, tf)
    older_end = before_ms if first is None else min(before_ms, first)
    older_start = max(start_ms, floor_ms)
    older = store.candles(symbol, tf, older_start, older_end - 1) if older_end > older_start else None
    return _concat([*([older] if older is not None else []), _stream(store, symbol, tf, start_ms, before_ms)])


def minute_bars(store: Store, symbol: str, start_ms: int, end_ms: int, position: int | None) -> pd.DataFrame:
    """1m bars opening in [start_ms, end_ms] as they stood at end_ms: the worker's, then ticks."""
    if position is None:
        return store.candles(symbol, "1m", start_ms, end_ms)
    cut = max(start_ms, min(bar_bounds(position, "1m")[0], bar_bounds(end_ms, "1m")[0]))
    return _concat([_from_worker(store, symbol, "1m", start_ms, cut, start_ms),
                    store.candles(symbol, "1m", cut, end_ms)])  # fmt: skip


def chart_bars(store: Store, symbol: str, tf: str, end_ms: int, *, closed_only: bool = False) -> pd.DataFrame:
    """The chart of `tf` ending at `end_ms`: `WINDOW_MS` of bars, the last one as it stood at end_ms
    (or only the bars closed by then)."""
    start_ms = bar_bounds(end_ms - WINDOW_MS[tf], tf)[0]
    current = bar_bounds(end_ms, tf)[0]
    last_ms = current - 1 if closed_only else end_ms
    position = worker_position(store, symbol)
    if position is not None and position < end_ms - TICK_WINDOW_MS["1m"]:
        position = None  # a worker that stopped long ago: its streams end before this chart's tail
    if position is None:
        start_ms = max(start_ms, bar_bounds(end_ms - TICK_WINDOW_MS[tf], tf)[0])
        return store.candles(symbol, tf, start_ms, last_ms) if last_ms >= start_ms else _empty()
    cut = min(current, bar_bounds(position, tf)[0])  # tf bars before it are in the tf stream
    rest = max(start_ms, cut)
    floor = bar_bounds(end_ms - TICK_WINDOW_MS[tf], tf)[0]
    tail = merge_up(minute_bars(store, symbol, rest, last_ms, position), tf) if last_ms >= rest else None
    return _concat(
        [_from_worker(store, symbol, tf, start_ms, cut, floor), *([tail] if tail is not None else [])]
    )


def forming_bars(store: Store, symbol: str, end_ms: int) -> dict[str, pd.DataFrame]:
    """Per timeframe, the bar holding `end_ms` as it stood then (one minute-bar read for all)."""
    day = bar_bounds(end_ms, "1d")[0]
    position = worker_position(store, symbol)
    if position is not None and position < day:
        position = None  # the worker has not reached today: today from ticks
    minutes = minute_bars(store, symbol, day, end_ms, position)
    opens = index_ms(minutes)
    return {
        tf: merge_up(minutes[opens >= bar_bounds(end_ms, tf)[0]], tf)
        for tf in ("1m", "5m", "15m", "1h", "1d")
    }


# -- the live feed's bars ------------------------------------------------------------------------


@dataclass
class Bar:
    """A bar the live feed keeps and grows; `version` is when it last changed. `first` and `last`
    are (exchange ms, seq) of its first and last trade when the feed saw the bar open (None for a
    bar read whole from the store: a late tick in it is then recomputed, not added)."""

    open_ms: int
    open: float
    high: float
    low: float
    close: float
    quantity: int
    trades: int
    version: int
    first: tuple[int, int] | None = None
    last: tuple[int, int] | None = None

    def row(self) -> dict[str, Any]:
        return bar_row(self.open_ms, self.open, self.high, self.low, self.close, self.quantity, self.trades)

    def add_late(self, ms: int, seq: int, price: float, quantity: int, version: int) -> bool:
        """A tick stored late, in time order with the rest (exchange time, then seq); False if this
        bar cannot take it incrementally."""
        if self.first is None or self.last is None:
            return False
        if (ms, seq) < self.first:
            self.open, self.first = price, (ms, seq)
        if (ms, seq) > self.last:
            self.close, self.last = price, (ms, seq)
        self.high, self.low = max(self.high, price), min(self.low, price)
        self.quantity += quantity
        self.trades += 1
        self.version = version
        return True


def bars_of(frame: pd.DataFrame, version: int) -> list[Bar]:
    return [
        Bar(int(ms), float(b.open), float(b.high), float(b.low), float(b.close), int(b.quantity),
            int(b.trades), version)
        for ms, b in zip(index_ms(frame), frame.itertuples(index=False), strict=True)
    ]  # fmt: skip


def fold(bars: dict[int, Bar], cols: Columns, tf: str, version: int) -> None:
    """Add ticks stored on time (exchange time never going back) to the bars of `tf`, opening new ones."""
    ms, seq, price, qty = cols.timestamp_ms, cols.seq, cols.price, cols.quantity
    i, n = 0, len(ms)
    while i < n:
        open_ms, end_ms = bar_bounds(int(ms[i]), tf)
        j = max(int(np.searchsorted(ms, end_ms, side="left")), i + 1)
        seg = price[i:j]
        last = (int(ms[j - 1]), int(seq[j - 1]))
        bar = bars.get(open_ms)
        if bar is None:
            first = (int(ms[i]), int(seq[i]))
            bars[open_ms] = Bar(open_ms, float(seg[0]), float(seg.max()), float(seg.min()), float(seg[-1]),
                                int(qty[i:j].sum()), j - i, version, first, last)  # fmt: skip
        else:
            bar.high = max(bar.high, float(seg.max()))
            bar.low = min(bar.low, float(seg.min()))
            bar.close = float(seg[-1])
            bar.quantity += int(qty[i:j].sum())
            bar.trades += j - i
            bar.version = version
            bar.last = last if bar.last is not None else None
        i = j
