from __future__ import annotations

import itertools
import threading
from datetime import date, datetime

import numpy as np

from tickvault.events import B3_TZ, Tick
from tickvault.sources.simulator import (
    SESSION_CLOSE,
    SESSION_OPEN,
    MarketSimulator,
    is_trading_day,
    pace,
    session_start_for,
    spec_for,
)

MONDAY = datetime(2025, 11, 24, 9, 0, tzinfo=B3_TZ)


def _take(n: int, symbols: tuple[str, ...] = ("WDOFUT", "WINFUT"), **kwargs: object) -> list[Tick]:
    kwargs.setdefault("start", MONDAY)
    return list(itertools.islice(MarketSimulator(list(symbols), **kwargs).ticks(), n))  # type: ignore[arg-type]


def test_same_seed_same_ticks_other_seed_other_ticks() -> None:
    assert _take(3000, seed=3) == _take(3000, seed=3)
    assert _take(3000, seed=3) != _take(3000, seed=4)


def test_a_symbol_does_not_depend_on_the_others_simulated() -> None:
    alone = _take(2000, ("WDOFUT",), seed=9)
    together = [t for t in _take(8000, ("WDOFUT", "WINFUT", "PETR4"), seed=9) if t.symbol == "WDOFUT"]
    assert together[: len(alone)] == alone[: len(together)]
    assert len(together) > 500


def test_prices_on_the_tick_grid_and_volume_is_price_times_quantity_times_multiplier() -> None:
    for tick in _take(20_000):
        spec = spec_for(tick.symbol)
        assert tick.price > 0
        assert (tick.price / spec.tick_size) == round(tick.price / spec.tick_size)
        assert tick.volume == tick.price * tick.quantity * spec.multiplier
    assert spec_for("WDOZ26").tick_size == 0.5 and spec_for("WINZ26").tick_size == 5.0


def test_timestamps_in_trading_hours_across_a_session_boundary() -> None:
    late = datetime(2025, 11, 28, 18, 20, tzinfo=B3_TZ)  # a Friday, ten minutes before the close
    ticks = _take(60_000, ("WDOFUT",), start=late)
    days = sorted({t.timestamp.astimezone(B3_TZ).date() for t in ticks})
    assert days == [date(2025, 11, 28), date(2025, 12, 1)]  # the weekend is skipped
    for t in ticks:
        local = t.timestamp.astimezone(B3_TZ)
        assert is_trading_day(local.date())
        assert SESSION_OPEN <= local.time() < SESSION_CLOSE
    monday = [t for t in ticks if t.timestamp.astimezone(B3_TZ).date() == date(2025, 12, 1)]
    assert monday[0].trade_id == 1 and monday[0].trade_type == 1 and monday[0].aggressor == "none"
    assert monday[0].timestamp.astimezone(B3_TZ).time() >= SESSION_OPEN


def test_start_on_a_weekend_or_holiday_moves_to_the_next_session() -> None:
    assert not is_trading_day(date(2025, 11, 20))  # Consciência Negra, a BVMF holiday
    first = _take(1, ("WDOFUT",), start=datetime(2025, 11, 20, 11, 0, tzinfo=B3_TZ))[0]
    assert first.timestamp.astimezone(B3_TZ).date() == date(2025, 11, 21)
    saturday = _take(1, ("WDOFUT",), start=datetime(2025, 11, 22, 11, 0, tzinfo=B3_TZ))[0]
    assert saturday.timestamp.astimezone(B3_TZ).date() == date(2025, 11, 24)
    assert session_start_for(datetime(2025, 11, 23, 15, 0, tzinfo=B3_TZ)) == datetime(
        2025, 11, 21, 9, 0, tzinfo=B3_TZ
    )
    assert session_start_for(datetime(2025, 11, 24, 8, 0, tzinfo=B3_TZ)) == datetime(
        2025, 11, 21, 9, 0, tzinfo=B3_TZ
    )
    assert session_start_for(datetime(2025, 11, 24, 23, 0, tzinfo=B3_TZ)) == MONDAY


def test_order_and_ids() -> None:
    ticks = _take(30_000, first_trade_ids={"WINFUT": 500})
    assert [t.timestamp_ms for t in ticks] == sorted(t.timestamp_ms for t in ticks)
    for symbol, first in (("WDOFUT", 1), ("WINFUT", 500)):
        ids = [t.trade_id for t in ticks if t.symbol == symbol]
        assert ids[0] == first
        assert ids == list(range(first, first + len(ids)))


def test_aggressors_sizes_and_bursts() -> None:
    ticks = _take(50_000, ("WINFUT",))
    for t in ticks:
        assert t.aggressor == {2: "buy", 3: "sell"}.get(t.trade_type, "none")
    sides = {t.aggressor for t in ticks}
    assert {"buy", "sell"} <= sides
    qty = np.array([t.quantity for t in ticks])
    assert qty.max() >= 20 * np.median(qty), "sizes should be heavy-tailed"
    stamps = np.array([t.timestamp_ms for t in ticks])
    assert (np.diff(stamps) == 0).mean() > 0.1, "bursts share milliseconds"
    assert sum(t.buyer != t.seller for t in ticks) > 0.8 * len(ticks)


def test_intraday_seasonality_busy_open_and_close_quiet_lunch() -> None:
    ticks = _take(400_000, ("GENERIC1",))  # 20k trades a session: this spans many sessions
    hours = np.array([t.timestamp.astimezone(B3_TZ).hour for t in ticks])
    first, lunch, last = (hours == 9).sum(), (hours == 12).sum(), (hours == 17).sum()
    assert first > 1.5 * lunch and last > 1.5 * lunch


def test_random_walk_mode_has_independent_sides() -> None:
    ticks = _take(40_000, ("WDOFUT",), random_walk=True)
    signs = np.array([1 if t.aggressor == "buy" else -1 for t in ticks if t.aggressor != "none"])
    r = np.corrcoef(signs[:-1], signs[1:])[0, 1]
    assert abs(r) < 4 / np.sqrt(len(signs))
    persistent = _take(40_000, ("WDOFUT",))
    s2 = np.array([1 if t.aggressor == "buy" else -1 for t in persistent if t.aggressor != "none"])
    assert np.corrcoef(s2[:-1], s2[1:])[0, 1] > 0.2


class _FakeClock:
    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def test_pace_speeds() -> None:
    ticks = _take(200, ("WDOFUT",))
    span = (ticks[-1].timestamp_ms - ticks[0].timestamp_ms) / 1000
    fast = _FakeClock()
    assert list(pace(ticks, 0, clock=fast.clock, sleep=fast.sleep)) == ticks
    assert fast.slept == []
    double = _FakeClock()
    assert list(pace(ticks, 2.0, clock=double.clock, sleep=double.sleep)) == ticks
    assert abs(sum(double.slept) - span / 2) < 0.06
    stop = threading.Event()
    stop.set()
    assert list(pace(ticks, 1.0, stop=stop)) == []


def test_pace_caps_an_overnight_gap() -> None:
    late = datetime(2025, 11, 24, 18, 29, 50, tzinfo=B3_TZ)
    ticks = _take(5000, ("WDOFUT",), start=late)
    days = [t for t in ticks if t.timestamp.date() == ticks[-1].timestamp.date()]
    assert len(days) < len(ticks), "the run should cross the night"
    trading = (ticks[-1].timestamp_ms - days[0].timestamp_ms + 10_000) / 1000  # both sides of the night
    fake = _FakeClock()
    list(pace(ticks, 1.0, clock=fake.clock, sleep=fake.sleep, max_wait=1.0))
    assert sum(fake.slept) < trading + 2  # not the ~14.5 hours of the night
