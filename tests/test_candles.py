"""Candles from stored ticks equal an independent pandas resample of the same trades."""

from __future__ import annotations

import itertools
from datetime import datetime

import msgspec
import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from factories import BASE_MS, tick, ticks
from tickvault.analytics.candles import candles_from_ticks
from tickvault.app.cli import app
from tickvault.domain.events import B3_TZ, Tick
from tickvault.errors import DataError
from tickvault.sources.simulator import MarketSimulator
from tickvault.store.api import Store

RULES = {"1m": "1min", "5m": "5min", "15m": "15min", "1h": "1h"}


def _session(n: int = 20_000) -> list[Tick]:
    start = datetime(2025, 11, 24, 9, 0, tzinfo=B3_TZ)
    out = list(itertools.islice(MarketSimulator(["WDOFUT"], seed=4, start=start).ticks(), n))
    for i, t in enumerate(out):
        msgspec.structs.force_setattr(t, "seq", i + 1)
    return out


def _oracle(written: list[Tick], rule: str) -> pd.DataFrame:
    frame = pd.DataFrame(
        {
            "price": [t.price for t in written],
            "volume": [t.volume for t in written],
            "quantity": [t.quantity for t in written],
            "buy": [t.quantity if t.aggressor == "buy" else 0 for t in written],
            "sell": [t.quantity if t.aggressor == "sell" else 0 for t in written],
        },
        index=pd.DatetimeIndex([t.timestamp for t in written]).tz_convert(B3_TZ),
    )
    frame["notional"] = frame["price"] * frame["quantity"]
    bars = frame.resample(rule, label="left", closed="left")
    out = bars["price"].ohlc()
    out["volume"] = bars["volume"].sum()
    out["quantity"] = bars["quantity"].sum()
    out["trades"] = bars["price"].count()
    out["vwap"] = bars["notional"].sum() / out["quantity"]
    out["buy_quantity"] = bars["buy"].sum()
    out["sell_quantity"] = bars["sell"].sum()
    return out[out["trades"] > 0]


@pytest.mark.parametrize("tf", list(RULES))
def test_candles_equal_a_pandas_resample_oracle(store: Store, tf: str) -> None:
    written = _session()
    store.append_ticks(written)
    store.seal("WDOFUT", written[len(written) // 2].timestamp_ms)  # half from blocks, half live
    got = store.candles("WDOFUT", tf, written[0].timestamp_ms, written[-1].timestamp_ms)
    want = _oracle(written, RULES[tf])
    assert list(got.index) == list(want.index)
    for column in ("open", "high", "low", "close", "quantity", "trades", "buy_quantity", "sell_quantity"):
        assert np.array_equal(got[column].to_numpy(), want[column].to_numpy()), column
    np.testing.assert_allclose(got["volume"], want["volume"], rtol=1e-12)
    np.testing.assert_allclose(got["vwap"], want["vwap"], rtol=1e-12)
    if tf == "5m":
        assert got.index[0] == pd.Timestamp("2025-11-24 09:00", tz=B3_TZ)  # aligned to the session clock


def test_daily_candles_are_per_session(store: Store) -> None:
    day1 = [tick(ts_ms=BASE_MS + i, trade_id=i + 1, price=5400.0 + i) for i in range(10)]
    day2 = [tick(ts_ms=BASE_MS + 86_400_000 + i, trade_id=i + 1, price=5500.0 - i) for i in range(5)]
    store.append_ticks(day1 + day2)
    bars = store.candles("WDOFUT", "1d", "2025-11-24", "2025-11-26")
    assert list(bars.index.strftime("%Y-%m-%d")) == ["2025-11-24", "2025-11-25"]
    assert list(bars["open"]) == [5400.0, 5500.0] and list(bars["close"]) == [5409.0, 5496.0]
    assert list(bars["trades"]) == [10, 5]


def test_late_ticks_and_edits_correct_their_candle(store: Store) -> None:
    on_time = ticks(30, per_ms=1)  # 13:00:00.000 .. .029, one bar of 1m
    store.append_ticks(on_time)
    before = store.candles("WDOFUT", "1m", BASE_MS, BASE_MS + 60_000)
    late = tick(ts_ms=BASE_MS + 5, trade_id=500, price=5300.0, quantity=7)  # a history download
    edit = msgspec.structs.replace(on_time[3], is_edit=True, price=5450.0)  # trade 4 corrected
    store.append_ticks([late, edit])
    after = store.candles("WDOFUT", "1m", BASE_MS, BASE_MS + 60_000)
    assert len(before) == len(after) == 1
    assert after["trades"].iloc[0] == before["trades"].iloc[0] + 1  # the edit replaces, the late tick adds
    assert after["low"].iloc[0] == 5300.0 and after["high"].iloc[0] == 5450.0
    assert after["quantity"].iloc[0] == before["quantity"].iloc[0] + 7


def test_query_kind_candles_prints_what_the_api_returns(system_env: dict[str, str], store: Store) -> None:
    from tickvault.app.output import to_csv_text

    written = _session(3000)
    store.append_ticks(written)
    start, end = written[0].timestamp.isoformat(), written[-1].timestamp.isoformat()
    result = CliRunner().invoke(
        app, ["query", "WDOFUT", "--start", start, "--end", end, "--kind", "candles:1m", "--format", "csv"]
    )
    assert result.exit_code == 0, result.output
    assert result.stdout == to_csv_text(store.candles("WDOFUT", "1m", start, end))
    assert result.stdout.startswith("timestamp,open,high,low,close,volume,quantity,trades,vwap")
    bad = CliRunner().invoke(app, ["query", "WDOFUT", "--start", start, "--kind", "candles:2m"])
    assert bad.exit_code == 2 and "candles:TF (TF in 1m, 5m, 15m, 1h, 1d)" in bad.output


def test_bad_timeframe_and_empty_range(store: Store) -> None:
    with pytest.raises(DataError, match="timeframe"):
        store.candles("WDOFUT", "7m", BASE_MS, BASE_MS + 1)
    empty = store.candles("WDOFUT", "1m", BASE_MS, BASE_MS + 1)
    assert empty.empty and list(empty.columns)[:4] == ["open", "high", "low", "close"]
    assert candles_from_ticks(store.ticks("WDOFUT", BASE_MS, BASE_MS + 1), "1h").empty
