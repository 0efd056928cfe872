"""The feature engine: hand-computed values on tiny fixtures, an independent pandas computation on a
simulated session, and point-in-time properties."""

from __future__ import annotations

import itertools
import math
from collections import Counter
from datetime import date, datetime

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from factories import BASE_MS, tick
from tickvault.analytics.features import (
    BASE_FEATURES,
    FEATURE_NAMES,
    HISTORY_FEATURES,
    FeatureConfig,
    FeatureEngine,
    SessionSummary,
    backfill,
    quantile_of,
    summarize_session,
)
from tickvault.domain.events import B3_TZ, Tick
from tickvault.sources.simulator import MarketSimulator

OPEN_MS = BASE_MS - 4 * 3_600_000  # 09:00 local on the factories' Monday
SYMBOLS = ("WDOFUT", "WINFUT")


def every_tick() -> FeatureConfig:
    return FeatureConfig(emit_interval_ms=0)


def test_hand_computed_base_features() -> None:
    engine = FeatureEngine(["WDOFUT"], every_tick())
    trades = [
        tick(ts_ms=OPEN_MS, trade_id=1, price=5000.0, quantity=2, trade_type=2),  # buy aggressor
        tick(ts_ms=OPEN_MS + 30_000, trade_id=2, price=5010.0, quantity=1, trade_type=3),  # sell
        tick(ts_ms=OPEN_MS + 61_000, trade_id=3, price=5020.0, quantity=1, trade_type=2),
    ]
    out = backfill(engine, trades)
    assert len(out) == 3
    last = out[-1].values
    assert set(last) == set(FEATURE_NAMES)
    # one minute back from 09:01:01 is the end of second 09:00:01, when the price was 5000
    assert last["ret_1m"] == pytest.approx(math.log(5020 / 5000))
    assert last["ret_5m"] is None  # not that much history yet
    vwap = (5000 * 2 + 5010 * 1 + 5020 * 1) / 4
    assert last["vwap_distance"] == pytest.approx(5020 / vwap - 1)
    assert last["trade_intensity_60s"] == 2  # the trade at 09:00:00 left the 60 s window
    assert last["ofi_60s"] == pytest.approx((1 - 1) / 2)
    assert out[1].values["ofi_60s"] == pytest.approx((2 - 1) / 3)
    assert last["ema_fast"] == 5010.0  # minute 09:00 closed at 5010: the first EMA value is that close
    assert last["volatility_regime_30d"] == "UNKNOWN" and last["microstructure_imbalance"] is None


def test_emission_interval_is_exchange_time() -> None:
    engine = FeatureEngine(["WDOFUT"], FeatureConfig(emit_interval_ms=1_000))
    trades = [tick(ts_ms=OPEN_MS + i * 100, trade_id=i + 1) for i in range(35)]  # 3.5 s of trades
    out = backfill(engine, trades)
    assert [f.timestamp_ms - OPEN_MS for f in out] == [0, 1000, 2000, 3000]


def test_late_ticks_and_edits_feed_nothing() -> None:
    engine = FeatureEngine(["WDOFUT"], every_tick())
    assert engine.on_tick(tick(ts_ms=OPEN_MS + 5000, trade_id=1)) is not None
    assert engine.on_tick(tick(ts_ms=OPEN_MS + 1000, trade_id=2)) is None  # older than the clock
    assert engine.on_tick(tick(ts_ms=OPEN_MS + 6000, trade_id=1, is_edit=True)) is None
    assert engine.late == 2


@given(st.lists(st.integers(1, 500), min_size=1, max_size=200), st.floats(0.01, 0.99))
@settings(max_examples=200, deadline=None)
def test_quantile_of_a_histogram_is_numpy_inverted_cdf(values: list[int], q: float) -> None:
    assert quantile_of(Counter(values), q) == float(np.quantile(values, q, method="inverted_cdf"))


def simulated_session(seed: int = 5, n: int = 60_000) -> list[Tick]:
    ticks = itertools.islice(MarketSimulator(["WDOFUT"], seed=seed).ticks(), n)
    return [t for t in ticks if t.timestamp_ms]


def test_base_features_match_an_independent_pandas_computation() -> None:
    ticks = simulated_session()
    engine = FeatureEngine(["WDOFUT"], every_tick())
    out = backfill(engine, ticks)
    last, values = ticks[-1], out[-1].values
    frame = pd.DataFrame(
        {"price": [t.price for t in ticks], "quantity": [t.quantity for t in ticks]},
        index=pd.to_datetime([t.timestamp_ms for t in ticks], unit="ms", utc=True).tz_convert(B3_TZ),
    )
    minute_now = frame.index[-1].floor("1min")
    closes = frame["price"].resample("1min").last().ffill()
    closes = closes[closes.index < minute_now]  # only closed minutes
    assert values["ema_fast"] == pytest.approx(closes.ewm(span=12, adjust=False).mean().iloc[-1], rel=1e-12)
    assert values["ema_slow"] == pytest.approx(closes.ewm(span=26, adjust=False).mean().iloc[-1], rel=1e-12)
    change = closes.diff().dropna()
    gain = change.clip(lower=0).ewm(alpha=1 / 14, adjust=False).mean().iloc[-1]
    loss = (-change).clip(lower=0).ewm(alpha=1 / 14, adjust=False).mean().iloc[-1]
    assert values["rsi_14"] == pytest.approx(100 - 100 / (1 + gain / loss), rel=1e-9)
    log_ret = np.log(closes).diff().iloc[-30:]
    assert values["realized_vol_30m"] == pytest.approx(math.sqrt((log_ret**2).sum()), rel=1e-9)
    vwap = (frame["price"] * frame["quantity"]).sum() / frame["quantity"].sum()
    assert values["vwap_distance"] == pytest.approx(last.price / vwap - 1, rel=1e-9)
    now_s = last.timestamp_ms // 1000
    for name, h in (("ret_1m", 60), ("ret_5m", 300), ("ret_15m", 900)):
        cut = pd.Timestamp((now_s - h + 1) * 1000, unit="ms", tz="UTC")
        then = frame["price"][frame.index < cut].iloc[-1]
        assert values[name] == pytest.approx(math.log(last.price / then), rel=1e-12)
    window = [t for t in ticks if t.timestamp_ms // 1000 > now_s - 60]
    assert values["trade_intensity_60s"] == len(window)
    buy = sum(t.quantity for t in window if t.aggressor == "buy")
    sell = sum(t.quantity for t in window if t.aggressor == "sell")
    assert values["ofi_60s"] == pytest.approx((buy - sell) / (buy + sell))


def test_a_session_summary_built_live_equals_one_built_from_the_ticks() -> None:
    ticks = simulated_session(n=20_000)
    engine = FeatureEngine(["WDOFUT"], every_tick())
    backfill(engine, ticks)
    live = engine.states["WDOFUT"].summary()
    built = summarize_session(
        live.day,
        np.array([t.timestamp_ms for t in ticks]),
        np.array([t.price for t in ticks]),
        np.array([t.quantity for t in ticks]),
    )
    np.testing.assert_array_equal(live.minute_close, built.minute_close)
    np.testing.assert_array_equal(live.minute_quantity, built.minute_quantity)
    assert live.quantities == built.quantities


def flat_history(day: date, n: int, vol_per_minute: float, seed: int) -> list[SessionSummary]:
    """`n` past sessions whose minute closes follow a random walk of the given per-minute volatility."""
    rng = np.random.default_rng(seed)
    out = []
    for k in range(n):
        close = np.full(1440, np.nan)
        close[540:1110] = 5000 * np.exp(np.cumsum(rng.normal(0, vol_per_minute, 570)))
        qty = np.zeros(1440, dtype=np.int64)
        qty[540:1110] = 100 + (np.arange(570) % 60)  # the same intraday shape every day
        out.append(SessionSummary(day.replace(day=1 + k % 28), close, qty, Counter({1: 850, 5: 140, 50: 10})))
    return out


def test_history_features_against_hand_built_sessions() -> None:
    calm = flat_history(date(2025, 11, 24), 10, 1e-5, seed=1)
    engine = FeatureEngine(["WDOFUT"], every_tick(), history=lambda s, d, n: calm)
    rng = np.random.default_rng(2)
    ticks, price = [], 5000.0
    for i in range(4 * 3600 // 10):  # one trade every 10 s for 4 hours from 09:00, volatile
        price = round(price * math.exp(rng.normal(0, 2e-3)) * 2) / 2
        qty = 50 if i % 7 == 0 else 1
        ticks.append(tick(ts_ms=OPEN_MS + i * 10_000, trade_id=i + 1, price=price, quantity=qty,
                          trade_type=2 if i % 2 else 3))  # fmt: skip
    values = backfill(engine, ticks)[-1].values
    assert engine.states["WDOFUT"].large_threshold == 5.0  # the 90th percentile of 850x1, 140x5, 10x50
    assert values["volatility_regime_30d"] == "HIGH_VOL"  # far more volatile than every past session
    rank = values["historical_momentum_rank"]
    assert rank is not None and 0.0 <= rank <= 1.0
    large = [
        t for t in ticks if t.quantity >= 5 and t.timestamp_ms // 1000 > ticks[-1].timestamp_ms // 1000 - 300
    ]
    b = sum(t.quantity for t in large if t.aggressor == "buy")
    s = sum(t.quantity for t in large if t.aggressor == "sell")
    assert values["microstructure_imbalance"] == pytest.approx((b - s) / (b + s))
    assert values["volume_pattern_score"] is not None


def test_pattern_momentum_and_correlation_against_direct_numpy() -> None:
    """One trade per minute per symbol for 90 minutes (WDO at :00, WIN at :30 of each minute), six
    hand-made previous sessions; the three features recomputed here straight from their definitions."""
    rng = np.random.default_rng(11)
    history = []
    for k in range(6):
        close = np.full(1440, np.nan)
        close[540:700] = 5000 * np.exp(np.cumsum(rng.normal(0, 1e-3, 160)))
        qty = np.zeros(1440, dtype=np.int64)
        qty[540:700] = rng.integers(1, 50, 160)
        history.append(SessionSummary(date(2025, 11, 10 + k), close, qty, Counter({1: 10})))
    engine = FeatureEngine(["WDOFUT", "WINFUT"], every_tick(), history=lambda s, d, n: history)
    n = 90
    wdo = 5000 * np.exp(np.cumsum(rng.normal(0, 1e-3, n)))
    win = 130_000 * np.exp(np.cumsum(rng.normal(0, 1e-3, n)) + 0.5 * np.log(wdo / 5000))
    qty = rng.integers(1, 50, n)
    trades = []
    for i in range(n):
        trades.append(tick("WDOFUT", OPEN_MS + i * 60_000, i + 1, float(wdo[i]), int(qty[i]), trade_type=2))
        trades.append(tick("WINFUT", OPEN_MS + i * 60_000 + 30_000, i + 1, float(win[i]), 1, trade_type=3))
    last = [f for f in backfill(engine, trades) if f.symbol == "WDOFUT"][-1].values
    m = 540 + n - 2  # the last closed minute at WDO's last trade (minute 540 + n - 1 is still open)
    i = n - 2  # its index in the arrays above
    # volume pattern: today's quantity per minute over the last 60 closed minutes vs the sessions' mean
    usual = np.mean([h.minute_quantity[m - 59 : m + 1] for h in history], axis=0)
    expected = np.corrcoef(qty[i - 59 : i + 1].astype(float), usual)[0, 1]
    assert last["volume_pattern_score"] == pytest.approx(expected, rel=1e-12)
    # momentum rank: the last hour's return against the same clock hour on each previous session
    now = math.log(wdo[i] / wdo[i - 60])
    past = np.array([math.log(h.minute_close[m] / h.minute_close[m - 60]) for h in history])
    assert last["historical_momentum_rank"] == pytest.approx(np.mean(past < now) + 0.5 * np.mean(past == now))
    # correlation stability: 30-minute correlations sampled at the last 12 minute closes of WDO
    samples = []
    for j in range(i - 11, i + 1):
        a, b = np.diff(np.log(wdo[j - 30 : j + 1])), np.diff(np.log(win[j - 30 : j + 1]))
        samples.append(np.corrcoef(a, b)[0, 1])
    assert last["correlation_stability"] == pytest.approx(1 - np.std(samples), rel=1e-9)


def test_history_that_arrives_late_catches_the_session_up_exactly() -> None:
    """A provider that cannot give the history at the session start (None: Valkey unreachable): the
    session starts without it (the values of a symbol without history), and once `set_history`
    brings it the features are those of an engine that had it from the start."""
    start = datetime(2025, 11, 24, 9, 0, tzinfo=B3_TZ)
    sim = MarketSimulator(["WDOFUT", "WINFUT"], seed=3, start=start)
    ticks = list(itertools.islice(sim.ticks(), 0, 280_000, 14))  # 96 minutes of both symbols
    day = start.date()
    history = {"WDOFUT": flat_history(day, 10, 1e-4, seed=1), "WINFUT": flat_history(day, 10, 1e-4, seed=2)}
    asked: list[tuple[str, date]] = []

    def unreachable(symbol: str, on: date, n: int) -> list[SessionSummary] | None:
        asked.append((symbol, on))
        return None

    whole = backfill(FeatureEngine(SYMBOLS, every_tick(), history=lambda s, d, n: history[s]), ticks)
    late = FeatureEngine(SYMBOLS, every_tick(), history=unreachable)
    arrive = {"WDOFUT": int(len(ticks) * 0.8), "WINFUT": int(len(ticks) * 0.9)}  # 60+ minutes in
    out = []
    for i, t in enumerate(ticks):
        for symbol, at in arrive.items():
            if i == at:
                assert not late.set_history(symbol, date(2025, 11, 21), history[symbol])  # not its session
                assert late.set_history(symbol, day, history[symbol])
                assert not late.set_history(symbol, day, history[symbol])  # not waiting any more
        found = late.on_tick(t)
        assert found is not None
        out.append(found)
    assert asked == [("WDOFUT", day), ("WINFUT", day)]  # once per session, not per tick
    assert [(f.symbol, f.timestamp_ms) for f in out] == [(f.symbol, f.timestamp_ms) for f in whole]
    for i, (got, want) in enumerate(zip(out, whole, strict=True)):
        if i >= arrive[got.symbol]:
            assert got.values == want.values, (i, got.symbol)
            continue
        for name in FEATURE_NAMES:  # before it arrives: the base features, none from the history
            if name in ("volume_pattern_score", "historical_momentum_rank", "microstructure_imbalance"):
                assert got.values[name] is None
            elif name == "volatility_regime_30d":
                assert got.values[name] == "UNKNOWN"
            else:
                assert got.values[name] == want.values[name], (i, name)
    # the catch-up had something to catch up: the history-aware values right after it are set
    for symbol, at in arrive.items():
        values = next(f.values for f in out[at:] if f.symbol == symbol)
        assert values["microstructure_imbalance"] not in (None, 0.0)
        assert values["volume_pattern_score"] is not None
        assert values["historical_momentum_rank"] is not None
        assert values["volatility_regime_30d"] != "UNKNOWN"


def test_without_time_travel_no_history_is_read_and_the_history_features_are_none() -> None:
    """TIME_TRAVEL_ENABLED=false (FeatureConfig.time_travel): the base features are unchanged, the five
    history-aware ones are None, and the history provider is never asked (nor are sessions remembered)."""
    history = flat_history(date(2025, 11, 24), 6, 1e-3, seed=3)
    asked: list[tuple[str, date]] = []

    def provider(symbol: str, day: date, n: int) -> list[SessionSummary]:
        asked.append((symbol, day))
        return history

    rng = np.random.default_rng(5)
    trades, prices = [], {"WDOFUT": 5000.0, "WINFUT": 130_000.0}
    for i in range(90 * 2):  # 90 minutes, each symbol every minute
        symbol = ("WDOFUT", "WINFUT")[i % 2]
        prices[symbol] *= math.exp(rng.normal(0, 1e-3))
        trades.append(tick(symbol, OPEN_MS + i * 30_000, i // 2 + 1, prices[symbol], int(rng.integers(1, 60)),
                           trade_type=int(rng.choice([2, 3]))))  # fmt: skip
    on = backfill(FeatureEngine(["WDOFUT", "WINFUT"], every_tick(), history=provider), trades)
    assert asked and all(on[-2].values[name] is not None for name in HISTORY_FEATURES)  # they can be computed
    asked.clear()
    off_config = FeatureConfig(emit_interval_ms=0, time_travel=False)
    off = backfill(FeatureEngine(["WDOFUT", "WINFUT"], off_config, history=provider), trades)
    assert asked == []
    assert [f.timestamp_ms for f in off] == [f.timestamp_ms for f in on]
    for a, b in zip(on, off, strict=True):
        assert all(b.values[name] is None for name in HISTORY_FEATURES)
        assert {n: b.values[n] for n in BASE_FEATURES} == {n: a.values[n] for n in BASE_FEATURES}
    # without a provider the engine would remember the sessions it saw: not with time travel off
    alone = FeatureEngine(["WDOFUT"], off_config)
    backfill(alone, [tick(ts_ms=OPEN_MS + day * 86_400_000, trade_id=1) for day in range(3)])
    assert alone.states["WDOFUT"].history == [] and alone.states["WDOFUT"].large_threshold is None
