"""The market simulator: determinism, B3 sessions, tick validity, market realism, pacing."""

from __future__ import annotations

import hashlib
import itertools
import math
import os
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Callable
from datetime import date, datetime

import numpy as np
import pytest

import tickvault
from tickvault.domain.events import B3_TZ, Tick, decode_tick, encode, make_tick
from tickvault.errors import DataError
from tickvault.sources.simulator import (
    BROKERS,
    SESSION,
    MarketSimulator,
    pace,
    spec_for,
)

MONDAY = datetime(2025, 11, 24, 9, 0, tzinfo=B3_TZ)
MID_MORNING = datetime(2025, 11, 24, 11, 0, tzinfo=B3_TZ)


def _take(n: int, symbols: tuple[str, ...] = ("WDOFUT", "WINFUT"), **kwargs: object) -> list[Tick]:
    kwargs.setdefault("start", MONDAY)
    return list(itertools.islice(MarketSimulator(list(symbols), **kwargs).ticks(), n))  # type: ignore[arg-type]


def _local(t: Tick) -> datetime:
    return t.timestamp.astimezone(B3_TZ)


def _signs(ticks: list[Tick]) -> np.ndarray:
    return np.array([1 if t.aggressor == "buy" else -1 for t in ticks])


def _lag1(x: np.ndarray) -> float:
    return float(np.corrcoef(x[:-1], x[1:])[0, 1])


# --- determinism ------------------------------------------------------------------------------------


def test_same_seed_same_ticks_other_seed_other_ticks() -> None:
    first = _take(5000, seed=3)
    assert first == _take(5000, seed=3)
    assert [encode(t) for t in first] == [encode(t) for t in _take(5000, seed=3)]
    other = _take(5000, seed=4)
    assert other != first
    assert [t.price for t in other] != [t.price for t in first]


def test_a_symbol_does_not_depend_on_the_others_simulated() -> None:
    alone = _take(3000, ("WINFUT",), seed=9)
    together = [t for t in _take(9000, ("WDOFUT", "WINFUT", "PETR4"), seed=9) if t.symbol == "WINFUT"]
    assert len(together) >= 3000
    assert together[:3000] == alone


def test_streams_do_not_depend_on_the_process_hash_seed() -> None:
    """Seeds come from crc32 of the symbol, not Python's salted hash(): another process agrees."""
    code = (
        "import hashlib, itertools; from datetime import datetime;"
        "from tickvault.domain.events import B3_TZ, encode;"
        "from tickvault.sources.simulator import MarketSimulator;"
        "s = MarketSimulator(['WDOFUT', 'PETR4'], seed=5, start=datetime(2025, 11, 24, 9, tzinfo=B3_TZ));"
        "print(hashlib.sha256(b''.join(encode(t) for t in itertools.islice(s.ticks(), 2000))).hexdigest())"
    )
    src = os.path.dirname(os.path.dirname(tickvault.__file__))
    env = {**os.environ, "PYTHONHASHSEED": "4242", "PYTHONPATH": src}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    here = hashlib.sha256(b"".join(encode(t) for t in _take(2000, ("WDOFUT", "PETR4"), seed=5)))
    assert out.stdout.strip() == here.hexdigest()


# --- tick validity ----------------------------------------------------------------------------------


def test_ticks_are_what_make_tick_builds_and_pass_validation() -> None:
    """The fast construction path gives exactly make_tick's Tick, which survives a decode."""
    for t in _take(6000, ("WDOFUT", "WINFUT", "PETR4"))[::7]:
        spec = spec_for(t.symbol)
        rebuilt = make_tick(
            t.symbol, t.timestamp_ms, t.trade_id, t.price, t.quantity, multiplier=spec.multiplier,
            buyer=t.buyer, seller=t.seller, trade_type=t.trade_type,
        )  # fmt: skip
        assert rebuilt == t
        assert encode(rebuilt) == encode(t)
        assert decode_tick(encode(t)) == t
        assert not t.is_edit and t.seq == 0


def test_prices_on_the_tick_grid_positive_and_volume_is_price_quantity_multiplier() -> None:
    ticks = _take(30_000, ("WDOFUT", "WINFUT", "PETR4"))
    assert {t.symbol for t in ticks} == {"WDOFUT", "WINFUT", "PETR4"}
    for t in ticks:
        spec = spec_for(t.symbol)
        units = t.price / spec.tick_size
        assert t.price > 0
        assert abs(units - round(units)) < 1e-6
        if t.symbol != "PETR4":
            assert units == int(units)  # 0.5 and 5 grids are exact floats
        assert t.volume == t.price * t.quantity * spec.multiplier
        assert t.quantity >= 1
    assert all(t.price % 5 == 0 for t in ticks if t.symbol == "WINFUT")


# --- sessions and the calendar ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("start", "next_day"),
    [
        (datetime(2025, 11, 28, 18, 20, tzinfo=B3_TZ), date(2025, 12, 1)),  # Friday -> Monday
        (datetime(2025, 11, 19, 18, 25, tzinfo=B3_TZ), date(2025, 11, 21)),  # over Consciencia Negra
        (datetime(2025, 12, 23, 18, 25, tzinfo=B3_TZ), date(2025, 12, 26)),  # over Christmas Eve and Day
    ],
)
def test_sessions_cross_the_night_on_bvmf_trading_days(start: datetime, next_day: date) -> None:
    ticks: list[Tick] = []
    after = 0
    for t in MarketSimulator(["WDOFUT"], start=start).ticks():
        ticks.append(t)
        after += _local(t).date() == next_day
        if after == 2000:
            break
    for t in ticks:
        local = _local(t)
        assert SESSION.is_trading_day(local.date())
        assert SESSION.open <= local.time() < SESSION.close
    assert sorted({_local(t).date() for t in ticks}) == [start.date(), next_day]
    stamps = [t.timestamp_ms for t in ticks]
    assert stamps == sorted(stamps)
    before = [t for t in ticks if _local(t).date() == start.date()]
    later = [t for t in ticks if _local(t).date() == next_day]
    assert len(before) > 1000  # the last minutes before the close are busy
    assert [t.trade_id for t in before] == list(range(1, len(before) + 1))
    assert [t.trade_id for t in later] == list(range(1, len(later) + 1))  # ids restart each session
    auction = later[0]
    assert _local(auction) == SESSION.open_of(next_day)
    assert (auction.trade_type, auction.aggressor) == (4, "none")
    assert 4 not in {t.trade_type for t in before + later[1:]}


@pytest.mark.parametrize(
    ("start", "opening"),
    [
        (datetime(2025, 11, 20, 11, 0, tzinfo=B3_TZ), datetime(2025, 11, 21, 9, 0, tzinfo=B3_TZ)),
        (datetime(2025, 11, 22, 11, 0, tzinfo=B3_TZ), MONDAY),  # Saturday
        (datetime(2025, 11, 24, 7, 0, tzinfo=B3_TZ), MONDAY),  # before the open
        (datetime(2025, 11, 21, 18, 30, tzinfo=B3_TZ), MONDAY),  # at the close
        (datetime(2025, 11, 24, 22, 0, tzinfo=B3_TZ), datetime(2025, 11, 25, 9, 0, tzinfo=B3_TZ)),
    ],
)
def test_a_start_outside_trading_hours_moves_to_the_next_open(start: datetime, opening: datetime) -> None:
    sim = MarketSimulator(["WDOFUT"], start=start)
    assert sim.clock == opening
    first = next(sim.ticks())
    assert first.timestamp == opening and first.trade_type == 4 and first.trade_id == 1
    assert sim.clock == first.timestamp


def test_order_ids_and_first_trade_ids() -> None:
    sim = MarketSimulator(["WDOFUT", "WINFUT"], start=MID_MORNING, first_trade_ids={"WINFUT": 500})
    assert sim.ticks() is sim.ticks()  # one stream per simulator
    ticks = list(itertools.islice(sim.ticks(), 30_000))
    assert sim.clock == ticks[-1].timestamp
    assert [t.timestamp_ms for t in ticks] == sorted(t.timestamp_ms for t in ticks)
    assert _local(ticks[0]) >= MID_MORNING
    for symbol, first in (("WDOFUT", 1), ("WINFUT", 500)):
        ids = [t.trade_id for t in ticks if t.symbol == symbol]
        assert len(ids) > 5000
        assert ids == list(range(first, first + len(ids)))
    assert 4 not in {t.trade_type for t in ticks}  # a session joined mid-way has no auction print
    resumed = _take(10, ("WDOFUT",), first_trade_ids={"WDOFUT": 10})  # at the open: auction done
    assert resumed[0].trade_id == 10 and resumed[0].trade_type != 4


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="timezone"):
        MarketSimulator(["WDOFUT"], start=datetime(2025, 11, 24, 10, 0))
    with pytest.raises(ValueError, match="symbols"):
        MarketSimulator([])
    with pytest.raises(ValueError, match="symbols"):
        MarketSimulator(["WDOFUT", "WDOFUT"], start=MONDAY)
    with pytest.raises(ValueError, match="first_trade_ids"):
        MarketSimulator(["WDOFUT"], start=MONDAY, first_trade_ids={"WINFUT": 3})
    with pytest.raises(DataError):
        MarketSimulator(["bad symbol"], start=MONDAY)


# --- realism ----------------------------------------------------------------------------------------


def test_aggressors_sizes_bursts_and_brokers() -> None:
    ticks = _take(60_000, ("WINFUT",), start=MID_MORNING)
    for t in ticks:
        assert t.aggressor == {2: "buy", 3: "sell"}.get(t.trade_type, "none")
    types = np.array([t.trade_type for t in ticks])
    assert 0.3 < (types == 2).mean() < 0.7 and 0.3 < (types == 3).mean() < 0.7
    assert 0 < (types == 1).mean() < 0.02  # cross trades are rare
    assert all(t.buyer == t.seller for t in ticks if t.trade_type == 1)
    assert (np.array([t.buyer != t.seller for t in ticks if t.trade_type != 1])).mean() > 0.8
    assert {t.buyer for t in ticks} | {t.seller for t in ticks} <= set(BROKERS.tolist())
    qty = np.array([t.quantity for t in ticks])
    assert np.median(qty) <= 2 and (qty <= 5).mean() > 0.75
    assert qty.max() >= 50 * np.median(qty), "sizes should be heavy-tailed"
    assert ((qty >= 50) & (qty <= 500)).sum() >= 20 and qty.max() <= 500
    gaps = np.diff([t.timestamp_ms for t in ticks])
    assert (gaps == 0).mean() > 0.2, "bursts share milliseconds"
    assert gaps.max() > 100 * max(np.median(gaps), 1), "and quiet spells separate them"


def test_intraday_seasonality_busy_open_and_close_quiet_lunch() -> None:
    """Five full sessions of a 20k-trades symbol: the ratios are about 3 and 2.4, +-0.2 (1 sd)."""
    friday = date(2025, 11, 28)
    ticks = MarketSimulator(["PETR4"], start=MONDAY).ticks()
    week = list(itertools.takewhile(lambda t: _local(t).date() <= friday, ticks))
    per_day = Counter(_local(t).date() for t in week)
    assert len(per_day) == 5
    assert all(0.75 < n / spec_for("PETR4").trades_per_session < 1.25 for n in per_day.values())
    minutes = np.array([_local(t).hour * 60 + _local(t).minute for t in week])
    first = (minutes < 10 * 60).sum()
    lunch = ((minutes >= 12 * 60) & (minutes < 13 * 60)).sum()
    last = (minutes >= 17 * 60 + 30).sum()
    assert first > 1.5 * lunch and last > 1.5 * lunch


def test_order_flow_persists_and_prints_bounce_between_bid_and_ask() -> None:
    ticks = [t for t in _take(40_000, ("WDOFUT",), start=MID_MORNING) if t.trade_type in (2, 3)]
    signs, moves = _signs(ticks), np.diff([t.price for t in ticks])
    assert _lag1(signs) > 0.2
    assert np.corrcoef(signs[1:], moves)[0, 1] > 0.1  # a buy prints at the ask: up from a bid print
    assert _lag1(moves) < -0.1  # the bounce: price changes revert


def test_random_walk_mode_has_no_predictable_structure() -> None:
    """Under independence a lag correlation of n samples has sd about 1/sqrt(n): 4 sd bounds."""
    ticks = _take(60_000, ("WDOFUT",), start=MID_MORNING, random_walk=True)
    assert {t.trade_type for t in ticks} == {2, 3}
    signs, moves = _signs(ticks), np.diff([t.price for t in ticks])
    bound = 4 / math.sqrt(len(ticks))
    assert abs(_lag1(signs)) < bound
    assert abs(np.corrcoef(signs[1:], moves)[0, 1]) < bound  # increments ignore the side
    assert abs(_lag1(moves)) < bound  # and their own past
    assert np.count_nonzero(moves) > 100  # the price does move


# --- pace -------------------------------------------------------------------------------------------


class _FakeClock:
    """A monotonic clock that only moves when pace sleeps; `on_sleep(n)` runs after the n-th sleep."""

    def __init__(self, on_sleep: Callable[[int], None] | None = None) -> None:
        self.now = 0.0
        self.slept: list[float] = []
        self.on_sleep = on_sleep

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds
        if self.on_sleep is not None:
            self.on_sleep(len(self.slept))


def _at(*offsets_ms: int, base: datetime = MID_MORNING) -> list[Tick]:
    start = int(base.timestamp() * 1000)
    return [make_tick("WDOFUT", start + off, i + 1, 5400.0, 1) for i, off in enumerate(offsets_ms)]


def _paced(ticks: list[Tick], speed: float, fake: _FakeClock, **kwargs: object) -> list[tuple[float, Tick]]:
    return [(fake.now, t) for t in pace(ticks, speed, clock=fake.clock, sleep=fake.sleep, **kwargs)]  # type: ignore[arg-type]


def test_pace_unpaced_never_sleeps() -> None:
    ticks = _take(500, ("WDOFUT",))
    for speed in (0, math.inf):
        fake = _FakeClock()
        assert [t for _, t in _paced(ticks, speed, fake)] == ticks
        assert fake.slept == []


def test_pace_maps_exchange_time_to_wall_time_divided_by_speed() -> None:
    offsets = (0, 0, 5, 300, 1200, 1201, 1900)
    fake = _FakeClock()
    out = _paced(_at(*offsets), 2.0, fake)
    assert [t.timestamp_ms - out[0][1].timestamp_ms for _, t in out] == list(offsets)
    assert [round(now, 6) for now, _ in out] == [off / 1000 / 2 for off in offsets]
    assert max(fake.slept) <= 0.05  # small steps, so a stop is noticed promptly


def test_pace_caps_the_overnight_wait() -> None:
    friday = _at(0, 500, base=datetime(2025, 11, 28, 18, 29, 59, tzinfo=B3_TZ))
    monday = _at(0, 400, base=datetime(2025, 12, 1, 9, 0, tzinfo=B3_TZ))
    fake = _FakeClock()
    out = _paced(friday + monday, 1.0, fake, max_wait=1.0)
    assert len(out) == 4
    assert [round(now, 6) for now, _ in out] == [0.0, 0.5, 1.5, 1.9]  # the weekend took 1 s


def test_pace_stops_when_the_event_is_set() -> None:
    stop = threading.Event()
    stop.set()
    fake = _FakeClock()
    assert _paced(_at(0, 100, 200), 1.0, fake, stop=stop) == [] and fake.slept == []
    assert list(pace(_at(0, 100), 0, stop=stop)) == []
    stop = threading.Event()

    def third_sleep_sets_stop(n: int) -> None:
        if n == 3:
            stop.set()

    fake = _FakeClock(on_sleep=third_sleep_sets_stop)
    out = _paced(_at(0, 1000, 2000, 3000), 1.0, fake, stop=stop)
    assert len(out) == 1 and len(fake.slept) == 3  # returned right after the sleep that saw it
    stop = threading.Event()  # the consumer sets it between ticks: no wait for the next one
    paced = pace(_at(0, 3_600_000), 1.0, stop=stop)
    assert next(paced).trade_id == 1
    stop.set()
    assert list(paced) == []


def test_pace_refuses_a_negative_speed() -> None:
    for speed in (-1.0, math.nan):
        with pytest.raises(ValueError, match="speed"):
            list(pace(_at(0), speed))
