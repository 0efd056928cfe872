"""Candle bars of days a bulk load touched: if the candle streams already hold bars of such a day (a
live candle worker wrote them), new versions of every bar of the day recomputed from the merged ticks
are appended in the merge's own transaction (readers keep the last version per open time, see
`Store.candle_stream`), so the streams equal `Store.candles` again. A day without bars gets none:
`Store.candles` computes bars from the ticks on read.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import valkey

from tickvault.analytics.candles import TIMEFRAMES, candles_from_ticks
from tickvault.domain.events import Candle, from_ms, to_fields
from tickvault.domain.keys import KeySpace
from tickvault.store.api import columns_frame
from tickvault.store.block_codec import Columns
from tickvault.store.session_rows import concat, ordered, session_bounds

BarVersions = list[tuple[str, list[tuple[dict[str, str], str]]]]  # [(stream key, [(fields, id), ...])]


class DayCandles:
    """Which days have bars, and their new versions. `forget()` at each drain (the daily streams
    are read once per symbol and drain)."""

    def __init__(self, client: Any, keys: KeySpace) -> None:
        self.client = client
        self.keys = keys
        self._daily: dict[str, set[int]] = {}

    def forget(self) -> None:
        self._daily.clear()

    def versions(
        self, pipe: valkey.client.Pipeline, symbol: str, session: int, parts: list[Columns], minute_bar: bool
    ) -> BarVersions:
        """New versions of the day's bars for every timeframe, if the candle streams hold bars of that
        day; the streams are WATCHed (a worker writing meanwhile makes the merge start again)."""
        lo, hi = session_bounds(session)
        if not (minute_bar or self._daily_bar(symbol, lo, hi)):
            return []
        keys = {tf: self.keys.candles(tf, symbol) for tf in TIMEFRAMES}
        pipe.watch(*keys.values())
        ticks = concat(parts)
        ticks = ordered(ticks.take(np.flatnonzero((ticks.timestamp_ms >= lo) & (ticks.timestamp_ms <= hi))))
        frame = columns_frame(symbol, ticks)
        out = []
        for tf, key in keys.items():
            top = self.client.xrevrange(key, count=1)
            last = int(top[0][0].split(b"-")[0]) if top else 0
            bars = candles_from_ticks(frame, tf)
            opens = bars.index.as_unit("ms").asi8.tolist()
            entries = []
            for open_ms, row in zip(opens, bars.itertuples(index=False), strict=True):
                bar = Candle(
                    symbol=symbol, timestamp=from_ms(open_ms), timestamp_ms=open_ms, timeframe=tf,
                    open=float(row.open), high=float(row.high), low=float(row.low), close=float(row.close),
                    volume=float(row.volume), quantity=int(row.quantity), trades=int(row.trades),
                    vwap=float(row.vwap), buy_quantity=int(row.buy_quantity),
                    sell_quantity=int(row.sell_quantity),
                )  # fmt: skip
                entries.append((to_fields(bar), f"{max(open_ms, last)}-*"))
            out.append((key, entries))
        return out

    def _daily_bar(self, symbol: str, lo: int, hi: int) -> bool:
        """Whether the daily candle stream holds a bar of the day [lo, hi]. With a 1m bar version
        written during the day (the merge's probe), that tells whether a candle worker wrote bars of
        it (a worker writes a bar when it closes, with its open time as id, and the day's bar at the
        day's end or when it stops)."""
        days = self._daily.get(symbol)
        if days is None:
            entries = self.client.xrange(self.keys.candles("1d", symbol))
            days = self._daily[symbol] = {int(fields[b"timestamp_ms"]) for _, fields in entries}
        return any(lo <= d <= hi for d in days)
