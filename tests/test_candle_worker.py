"""Live candles (candle_worker.py) on a real Valkey: the bars the worker writes, corrections included,
equal the bars recomputed from history (`Store.candles`), across restarts and sealing."""

from __future__ import annotations

import msgspec
import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from factories import BASE_MS, tick
from tickvault.analytics.candles import TIMEFRAMES, bar_bounds, candles_from_ticks
from tickvault.domain.events import Tick
from tickvault.store.api import Store
from tickvault.workers.candle_worker import CandleWorker

DAY_MS = 86_400_000
WINDOW = (BASE_MS - 2 * DAY_MS, BASE_MS + 3 * DAY_MS)


def market(n: int, seed: int, symbol: str = "WDOFUT", days: int = 2) -> list[Tick]:
    """`n` ticks in time order over `days` sessions (10:00-17:00 local), on the 0.5 price grid, with
    bursts of equal timestamps; seq stamped as ingest does."""
    rng = np.random.default_rng(seed)
    session_open = BASE_MS - 3 * 3_600_000  # 10:00 local on the factories' Monday
    per_day = n // days
    out: list[Tick] = []
    for day in range(days):
        ms = np.sort(rng.integers(0, 7 * 3_600_000, per_day)) + session_open + day * DAY_MS
        ms[1::7] = ms[0::7][: len(ms[1::7])]  # bursts: several trades in one millisecond
        ms.sort()
        price = 5400 + 0.5 * np.cumsum(rng.integers(-2, 3, per_day))
        for i in range(per_day):
            out.append(
                tick(
                    symbol,
                    int(ms[i]),
                    i + 1,
                    float(price[i]),
                    int(rng.integers(1, 20)),
                    trade_type=int(rng.choice([1, 2, 3])),
                )  # fmt: skip
            )
    return [msgspec.structs.replace(t, seq=i + 1) for i, t in enumerate(out)]


def with_disorder(ticks: list[Tick], seed: int) -> list[Tick]:
    """Arrival order with late ticks (delivered minutes to hours after their time) and trade edits."""
    rng = np.random.default_rng(seed)
    order = list(range(len(ticks)))
    late = rng.choice(len(ticks), size=len(ticks) // 50, replace=False)
    for k, i in enumerate(late):  # arrive minutes later (their bars are closed by then), a few hours later
        order.remove(int(i))
        delay = int(rng.integers(1000, 3000)) if k % 20 == 0 else int(rng.integers(20, 300))
        order.insert(min(len(order), int(i) + delay), int(i))
    arrived = [ticks[i] for i in order]
    for k in range(1, 21):  # an edit corrects a trade that arrived earlier, minutes to hours before
        at = k * len(arrived) // 21
        original = arrived[int(rng.integers(0, at))]
        edit = msgspec.structs.replace(original, is_edit=True, price=original.price + 1.0, quantity=7)
        arrived.insert(at, edit)
    return [msgspec.structs.replace(t, seq=i + 1) for i, t in enumerate(arrived)]


def assert_live_equals_history(store: Store, symbol: str) -> None:
    for tf in TIMEFRAMES:
        live = store.candle_stream(symbol, tf, *WINDOW)
        recomputed = store.candles(symbol, tf, *WINDOW)
        assert len(recomputed) > 0
        pd.testing.assert_frame_equal(live, recomputed, check_exact=True, check_freq=False)


def feed(store: Store, worker: CandleWorker | None, ticks: list[Tick], batch: int) -> None:
    for i in range(0, len(ticks), batch):
        store.append_ticks(ticks[i : i + batch])
        if worker is not None:
            while worker.step(block_ms=0):
                pass


@given(ms=st.integers(BASE_MS - 400 * DAY_MS, BASE_MS + 400 * DAY_MS), tf=st.sampled_from(list(TIMEFRAMES)))
@settings(max_examples=300, deadline=None)
def test_bar_bounds_are_the_buckets_candles_from_ticks_uses(ms: int, tf: str) -> None:
    start, end = bar_bounds(ms, tf)
    assert start <= ms < end
    frame = pd.DataFrame(
        {"price": [1.0], "volume": [1.0], "quantity": [1], "aggressor": ["buy"], "is_edit": [False],
         "trade_id": [1]},
        index=pd.to_datetime([ms], unit="ms", utc=True),
    )  # fmt: skip
    label = candles_from_ticks(frame, tf).index[0]
    assert int(label.timestamp() * 1000) == start


def test_live_candles_equal_history_in_order(store: Store) -> None:
    ticks = market(6_000, seed=1)
    worker = CandleWorker(store, ("WDOFUT",))
    feed(store, worker, ticks, batch=250)
    worker.write(flush=True)
    assert worker.stats.ticks == len(ticks)
    assert_live_equals_history(store, "WDOFUT")


def test_late_ticks_and_edits_correct_the_bars_they_belong_to(store: Store) -> None:
    arrived = with_disorder(market(6_000, seed=2), seed=3)
    worker = CandleWorker(store, ("WDOFUT",))
    feed(store, worker, arrived, batch=100)
    worker.write(flush=True)
    assert worker.stats.recomputed > 0  # corrections really happened
    entries = store.client.xlen(store.keys.candles("1m", "WDOFUT"))
    assert entries > len(store.candles("WDOFUT", "1m", *WINDOW))  # some bars were written again
    assert_live_equals_history(store, "WDOFUT")


def test_a_restarted_worker_resumes_where_the_last_one_wrote(store: Store) -> None:
    arrived = with_disorder(market(4_000, seed=4), seed=5)
    first = CandleWorker(store, ("WDOFUT",))
    feed(store, first, arrived[:1_700], batch=100)
    # the first worker dies here (no flush); ticks keep arriving while nobody follows them
    feed(store, None, arrived[1_700:2_500], batch=100)
    second = CandleWorker(store, ("WDOFUT",))
    feed(store, second, arrived[2_500:], batch=100)
    second.write(flush=True)
    assert second.stats.ticks == len(arrived) - 1_700  # resumed exactly after the first one's position
    assert_live_equals_history(store, "WDOFUT")


def test_ticks_sealed_before_the_worker_read_them_are_recomputed(store: Store) -> None:
    ticks = market(4_000, seed=6, days=1)
    worker = CandleWorker(store, ("WDOFUT",))
    feed(store, worker, ticks[:1_000], batch=200)
    feed(store, None, ticks[1_000:3_000], batch=200)
    # the recorder's housekeeping seals all but the last minutes while the worker is behind
    assert store.seal("WDOFUT", ticks[2_900].timestamp_ms) > 0
    feed(store, worker, ticks[3_000:], batch=200)
    worker.write(flush=True)
    assert worker.stats.caught_up_gaps == 1
    assert_live_equals_history(store, "WDOFUT")


def test_several_symbols_each_get_their_own_streams(store: Store) -> None:
    wdo, win = market(2_000, seed=7), market(2_000, seed=8, symbol="WINFUT")
    worker = CandleWorker(store, ("WDOFUT", "WINFUT"))
    feed(store, worker, sorted(wdo + win, key=lambda t: t.timestamp_ms), batch=300)
    worker.write(flush=True)
    for symbol in ("WDOFUT", "WINFUT"):
        assert_live_equals_history(store, symbol)


def test_workers_share_symbols_by_lease_and_a_dead_ones_symbols_are_taken_over(store: Store) -> None:
    from conftest import wait_until

    symbols = ("WDOFUT", "WINFUT", "DOLFUT", "INDFUT")
    ticks = sorted(
        (t for i, s in enumerate(symbols) for t in market(1_500, seed=20 + i, symbol=s)),
        key=lambda t: t.timestamp_ms,
    )
    a = CandleWorker(store, symbols, name="a", lease_ms=400)
    b = CandleWorker(store, symbols, name="b", lease_ms=400)
    a.step(block_ms=0)  # takes every free symbol
    assert sorted(a.owned) == sorted(symbols) and b.step(block_ms=0) == 0 and list(b.owned) == []
    half = len(ticks) // 2
    store.append_ticks(ticks[:half])
    while a.step(block_ms=0):
        pass
    # `a` dies here (no flush, no release); its leases lapse and `b` takes every symbol over
    store.append_ticks(ticks[half:])
    assert wait_until(lambda: (b.step(block_ms=0), sorted(b.owned) == sorted(symbols))[1], timeout=30)
    while b.step(block_ms=0):
        pass
    b.write(flush=True)
    # a stalled `a` that wakes up cannot write over `b`: its write checks the lease in the transaction
    a.write(flush=True)
    assert list(a.owned) == []
    for symbol in symbols:
        assert_live_equals_history(store, symbol)


def test_a_lapsed_lease_nobody_took_is_taken_back_and_the_work_goes_on(store: Store) -> None:
    ticks = market(2_000, seed=31)
    lease = store.keys.candle_lease("WDOFUT")
    a = CandleWorker(store, ("WDOFUT",), name="a", lease_ms=60_000)
    store.append_ticks(ticks[:1000])
    while a.step(block_ms=0):
        pass
    store.client.delete(lease)  # a slow step: the lease lapses and nobody takes it
    store.append_ticks(ticks[1000:1500])
    assert a.step(block_ms=0) == 500
    assert list(a.owned) == ["WDOFUT"] and store.client.get(lease) == b"a"
    store.append_ticks(ticks[1500:])
    assert a.step(block_ms=0) == 500
    store.client.delete(lease)  # lapsed again, between its read and its write
    a.write(flush=True)
    assert list(a.owned) == ["WDOFUT"] and store.client.get(lease) == b"a"  # re-taken in the write
    assert_live_equals_history(store, "WDOFUT")


def test_a_lapsed_lease_another_worker_used_is_taken_back_from_its_position(store: Store) -> None:
    ticks = market(3_000, seed=32)
    a = CandleWorker(store, ("WDOFUT",), name="a", lease_ms=60_000)
    b = CandleWorker(store, ("WDOFUT",), name="b", lease_ms=60_000)
    store.append_ticks(ticks[:1000])
    while a.step(block_ms=0):
        pass
    # `a` stalls past its lease; `b` takes the symbol, writes on, and stops cleanly
    store.client.delete(store.keys.candle_lease("WDOFUT"))
    store.append_ticks(ticks[1000:2000])
    while b.step(block_ms=0):
        pass
    b.write(flush=True)
    b.release()
    # `a` wakes up and finds the lease free: it must resume from `b`'s position, not its own
    store.append_ticks(ticks[2000:])
    while a.step(block_ms=0):
        pass
    a.write(flush=True)
    assert a.stats.errors == 0
    assert_live_equals_history(store, "WDOFUT")


def test_bad_timeframe_is_refused(store: Store) -> None:
    with pytest.raises(Exception, match="timeframe"):
        store.candle_stream("WDOFUT", "2m", *WINDOW)


def test_the_running_system_writes_candles_equal_to_history(system_env: dict[str, str], store: Store) -> None:
    import itertools

    from tickvault.app.system import System
    from tickvault.config import load_settings
    from tickvault.sources.simulator import MarketSimulator

    ticks = list(itertools.islice(MarketSimulator(["WDOFUT", "WINFUT"], seed=3).ticks(), 20_000))
    system = System(load_settings(), source=lambda _: iter(ticks))
    system.start()
    system.wait(120)
    summary = system.stop()
    assert summary.drained and summary.counters["candle_ticks"] == len(ticks)
    span = (ticks[0].timestamp_ms + 1, ticks[-1].timestamp_ms + DAY_MS)
    for symbol in ("WDOFUT", "WINFUT"):
        for tf in TIMEFRAMES:
            live = store.candle_stream(symbol, tf, *span)
            assert len(live) > 0
            aligned = (bar_bounds(span[0], tf)[0], span[1])  # candles() counts only ticks in its range
            pd.testing.assert_frame_equal(live, store.candles(symbol, tf, *aligned), check_exact=True)
