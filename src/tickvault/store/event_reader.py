"""Candle and event reads: bars computed from the stored ticks, the bars the candle worker wrote,
and the features, predictions and signals streams, each in the `output=` form asked for.

`EventQueries` is a mixin of `Store` (its methods use the store's `client` and `keys`, and its
`ticks`, which `TickQueries` gives it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal, overload

import numpy as np
import pandas as pd
import pyarrow as pa

from tickvault.analytics.candles import bar_bounds, candles_from_ticks, check_timeframe, empty_candles
from tickvault.domain.events import B3_TZ, Candle, Event, Features, Prediction, Signal, from_fields
from tickvault.domain.keys import KeySpace
from tickvault.domain.timeparse import TimeLike, to_ms_bounds
from tickvault.errors import DataError
from tickvault.store.frames import Output, check_output, from_frame
from tickvault.store.valkey_errors import map_valkey_errors

if TYPE_CHECKING:
    import polars as pl

_EVENT_STREAM: dict[type[Event], str] = {Features: "features", Prediction: "predictions", Signal: "signals"}


class EventQueries:
    """The candle and event reads of `Store` (see the module docstring)."""

    client: Any
    keys: KeySpace

    if TYPE_CHECKING:  # `TickQueries.ticks` (Store has both): candles are computed from the ticks

        def ticks(self, symbol: str, start: TimeLike, end: TimeLike) -> pd.DataFrame: ...

    @overload
    def candles(
        self, symbol: str, tf: str, start: TimeLike, end: TimeLike, *, output: Literal["pandas"] = ...
    ) -> pd.DataFrame: ...
    @overload
    def candles(
        self, symbol: str, tf: str, start: TimeLike, end: TimeLike, *, output: Literal["arrow"]
    ) -> pa.Table: ...
    @overload
    def candles(
        self, symbol: str, tf: str, start: TimeLike, end: TimeLike, *, output: Literal["polars"]
    ) -> pl.DataFrame: ...
    def candles(
        self, symbol: str, tf: str, start: TimeLike, end: TimeLike, *, output: Output = "pandas"
    ) -> Any:
        """Bars of timeframe `tf` (1m, 5m, 15m, 1h, 1d) computed from the stored ticks in
        [start, end], labelled by their open time in B3 time (see candles.py)."""
        check_timeframe(tf)
        check_output(output)
        return from_frame(candles_from_ticks(self.ticks(symbol, start, end), tf), output)

    def candle_stream(self, symbol: str, tf: str, start: TimeLike, end: TimeLike) -> pd.DataFrame:
        """Bars the live candle worker wrote to `stream:candles:{tf}:{symbol}` that overlap
        [start, end] (like `candles`): the last version of each bar (a correction is a later entry of
        the same open time). The bar still open is there only once the worker stopped."""
        check_timeframe(tf)
        start_ms, end_ms = to_ms_bounds(start, end)
        start_ms = bar_bounds(start_ms, tf)[0]
        with map_valkey_errors():
            # corrections sit at ids after their open time, so read on to the stream's end
            entries = self.client.xrange(self.keys.candles(tf, symbol), min=str(start_ms), max="+")
        latest: dict[int, Candle] = {}
        for _, fields in entries:
            bar = from_fields({k.decode(): v.decode() for k, v in fields.items()}, Candle)
            if start_ms <= bar.timestamp_ms <= end_ms:
                latest[bar.timestamp_ms] = bar
        out = empty_candles()
        if not latest:
            return out
        bars = [latest[ms] for ms in sorted(latest)]
        frame = pd.DataFrame({name: [getattr(b, name) for b in bars] for name in out.columns})
        frame.index = (
            pd.DatetimeIndex(
                pd.to_datetime([b.timestamp_ms for b in bars], unit="ms", utc=True), name="timestamp"
            )
            .tz_convert(B3_TZ)
            .as_unit("ns")
        )  # as `candles` has it (from the ticks' ns index)
        return frame.astype(out.dtypes.to_dict())

    @overload
    def events(
        self, kind: str, symbol: str, start: TimeLike, end: TimeLike, *, output: Literal["pandas"] = ...
    ) -> pd.DataFrame: ...
    @overload
    def events(
        self, kind: str, symbol: str, start: TimeLike, end: TimeLike, *, output: Literal["arrow"]
    ) -> pa.Table: ...
    @overload
    def events(
        self, kind: str, symbol: str, start: TimeLike, end: TimeLike, *, output: Literal["polars"]
    ) -> pl.DataFrame: ...
    def events(
        self, kind: str, symbol: str, start: TimeLike, end: TimeLike, *, output: Output = "pandas"
    ) -> Any:
        """`kind` in features|predictions|signals: events in [start, end] as a DataFrame indexed by
        exchange time; a feature or probability dict becomes one column per name."""
        check_output(output)
        event_type = {v: k for k, v in _EVENT_STREAM.items()}.get(kind)
        if event_type is None:
            raise DataError("kind", f"{kind!r} must be features, predictions or signals")
        start_ms, end_ms = to_ms_bounds(start, end)
        with map_valkey_errors():
            entries = self.client.xrange(self.keys.stream(kind, symbol), min=str(start_ms), max=str(end_ms))
        rows = []
        for _, fields in entries:
            event: Event = from_fields({k.decode(): v.decode() for k, v in fields.items()}, event_type)
            row = {name: getattr(event, name) for name in event.__struct_fields__ if name != "timestamp"}
            for nested in ("values", "probabilities"):
                row.update(row.pop(nested, None) or {})
            rows.append(row)
        frame = pd.DataFrame(rows)
        ms = frame["timestamp_ms"].to_numpy() if len(frame) else np.empty(0, np.int64)
        frame.index = pd.DatetimeIndex(pd.to_datetime(ms, unit="ms", utc=True), name="timestamp").tz_convert(
            B3_TZ
        )
        return from_frame(frame, output)

    @overload
    def features(
        self, symbol: str, start: TimeLike, end: TimeLike, *, output: Literal["pandas"] = ...
    ) -> pd.DataFrame: ...
    @overload
    def features(
        self, symbol: str, start: TimeLike, end: TimeLike, *, output: Literal["arrow"]
    ) -> pa.Table: ...
    @overload
    def features(
        self, symbol: str, start: TimeLike, end: TimeLike, *, output: Literal["polars"]
    ) -> pl.DataFrame: ...
    def features(self, symbol: str, start: TimeLike, end: TimeLike, *, output: Output = "pandas") -> Any:
        return self.events("features", symbol, start, end, output=output)

    @overload
    def predictions(
        self, symbol: str, start: TimeLike, end: TimeLike, *, output: Literal["pandas"] = ...
    ) -> pd.DataFrame: ...
    @overload
    def predictions(
        self, symbol: str, start: TimeLike, end: TimeLike, *, output: Literal["arrow"]
    ) -> pa.Table: ...
    @overload
    def predictions(
        self, symbol: str, start: TimeLike, end: TimeLike, *, output: Literal["polars"]
    ) -> pl.DataFrame: ...
    def predictions(self, symbol: str, start: TimeLike, end: TimeLike, *, output: Output = "pandas") -> Any:
        return self.events("predictions", symbol, start, end, output=output)

    @overload
    def signals(
        self, symbol: str, start: TimeLike, end: TimeLike, *, output: Literal["pandas"] = ...
    ) -> pd.DataFrame: ...
    @overload
    def signals(
        self, symbol: str, start: TimeLike, end: TimeLike, *, output: Literal["arrow"]
    ) -> pa.Table: ...
    @overload
    def signals(
        self, symbol: str, start: TimeLike, end: TimeLike, *, output: Literal["polars"]
    ) -> pl.DataFrame: ...
    def signals(self, symbol: str, start: TimeLike, end: TimeLike, *, output: Output = "pandas") -> Any:
        return self.events("signals", symbol, start, end, output=output)
