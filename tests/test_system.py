"""The thin end-to-end slice: simulator -> ingest -> ZeroMQ -> recorder -> Valkey -> query."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator

import msgspec
import pytest
import zmq

from tickvault.app.components.core_flow import CoreFlow
from tickvault.app.system import System
from tickvault.config import load_settings
from tickvault.domain.events import Tick, decode_tick
from tickvault.sources.simulator import MarketSimulator
from tickvault.store.api import Store

N = 3000


def _sim(n: int = N, seed: int = 11) -> list[Tick]:
    return list(itertools.islice(MarketSimulator(["WDOFUT", "WINFUT"], seed=seed).ticks(), n))


def _stored(store: Store, symbol: str) -> list[Tick]:
    return store.tick_events(symbol, 0, 4_102_444_800_000)


def _with_seq(ticks: list[Tick]) -> dict[str, list[Tick]]:
    out: dict[str, list[Tick]] = {}
    for t in ticks:
        mine = out.setdefault(t.symbol, [])
        mine.append(msgspec.structs.replace(t, seq=len(mine) + 1))
    return out


def test_every_simulated_tick_goes_through_bus_and_recorder_and_back(
    system_env: dict[str, str], store: Store
) -> None:
    expected = _sim()
    plain = zmq.Context.instance().socket(zmq.SUB)
    plain.setsockopt(zmq.LINGER, 0)
    received: list[list[bytes]] = []

    def source(_: Store | None) -> Iterator[Tick]:
        # a plain pyzmq SUB written here (not the project's class) joins before the first tick
        plain.connect(system.publisher.endpoint)  # type: ignore[union-attr]
        plain.setsockopt(zmq.SUBSCRIBE, b"tick_WDO")
        deadline = time.monotonic() + 10
        while b"tick_WDO" not in system.publisher.subscriptions() and time.monotonic() < deadline:  # type: ignore[union-attr]
            time.sleep(0.005)
        yield from expected

    system = System(load_settings(), source=source)
    system.start()
    system.wait(120)
    summary = system.stop()
    n_wdo = sum(t.symbol == "WDOFUT" for t in expected)
    deadline = time.monotonic() + 30
    while len(received) < n_wdo and time.monotonic() < deadline:
        if plain.poll(100):
            received.append(plain.recv_multipart())
    plain.close()

    assert summary.drained
    assert summary.generated_total == N
    want = _with_seq(expected)
    for symbol, ticks in want.items():
        assert _stored(store, symbol) == ticks
        assert summary.stored[symbol] == len(ticks)
    assert {f[0] for f in received} == {b"tick_WDOFUT"}
    assert [decode_tick(f[1]) for f in received] == want["WDOFUT"]
    assert [msgspec.json.decode(f[1])["seq"] for f in received] == list(range(1, n_wdo + 1))


def test_without_zeromq_the_recorder_is_fed_in_process(system_env: dict[str, str], store: Store) -> None:
    expected = _sim(1000)
    system = System(load_settings(zmq_enabled=False), source=lambda _: iter(expected))
    system.start()
    assert system.publisher is None
    system.wait(60)
    summary = system.stop()
    assert summary.drained and summary.published == 0
    for symbol, ticks in _with_seq(expected).items():
        assert _stored(store, symbol) == ticks


def test_without_valkey_the_core_flow_still_runs(system_env: dict[str, str], store: Store) -> None:
    seen: list[Tick] = []
    expected = _sim(500)
    system = System(
        load_settings(valkey_enabled=False), source=lambda _: iter(expected), handlers=[seen.append]
    )
    system.start()
    system.wait(60)
    summary = system.stop()
    assert seen == expected
    assert [t.seq for t in seen if t.symbol == "WDOFUT"] == list(
        range(1, 1 + sum(t.symbol == "WDOFUT" for t in seen))
    )
    assert summary.generated_total == 500 and not summary.stored
    assert store.symbols() == []


def test_a_second_run_continues_the_market_instead_of_repeating_it(
    system_env: dict[str, str], store: Store
) -> None:
    counts = []
    for _ in range(2):
        system = System(load_settings(speed=0, symbols="WDOFUT"))
        system.start()
        deadline = time.monotonic() + 30
        while system.ingest.stats.generated["WDOFUT"] < 2000 and time.monotonic() < deadline:
            time.sleep(0.01)
        summary = system.stop()
        assert summary.drained and summary.duplicates == 0
        counts.append(summary.stored["WDOFUT"])
    stored = _stored(store, "WDOFUT")
    assert len(stored) == sum(counts)
    keys = [(t.session, t.trade_id) for t in stored]
    assert len(set(keys)) == len(keys)
    assert [t.timestamp_ms for t in stored] == sorted(t.timestamp_ms for t in stored)


def test_an_unpaced_source_is_held_back_until_the_recorder_catches_up(
    system_env: dict[str, str], store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tickvault.app.components.source as source_module

    monkeypatch.setattr(source_module, "MAX_UNSTORED", 2000)
    expected = _sim(30_000)
    worst = [0]

    def watch(_: Tick) -> None:  # runs on the source's thread, before each tick is published
        worst[0] = max(worst[0], system.unstored())

    system = System(load_settings(speed=0), source=lambda _: iter(expected), handlers=[watch])
    assert system.hold_back
    system.start()
    system.wait(120)
    summary = system.stop()
    assert summary.drained and summary.generated_total == len(expected)
    assert 2000 < worst[0] <= 2000 + source_module._CHECK_EVERY  # it did wait, and never let more pile up
    for symbol, ticks in _with_seq(expected).items():
        assert _stored(store, symbol) == ticks
    live = System(load_settings(speed=0), source=lambda _: iter(()), hold_back=False)
    assert not live.hold_back  # a live feed is buffered, never held back (ProfitDLL)


def test_the_core_flow_fed_from_the_bus_computes_what_it_computes_in_process(
    system_env: dict[str, str], store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ticks and book frames from their two buses give the features they give in-process, the book
    features included, which equal a backfill from the stored book at every tick."""
    from tickvault.analytics.features import FeatureEngine, backfill
    from tickvault.app.components.core_flow import feature_config
    from tickvault.domain.book import BookBatch
    from tickvault.domain.events import Features, encode
    from tickvault.sources.book_simulator import BookMarketSimulator
    from tickvault.store.api import frame_to_ticks
    from tickvault.workers import core_flow
    from tickvault.workers.book_backfill import store_book
    from tickvault.workers.session_history import store_history

    monkeypatch.setattr(core_flow, "BOOK_WAIT_S", 60.0)  # a busy machine must not run a tick's wait out
    events: list[Tick | BookBatch] = list(
        itertools.islice(BookMarketSimulator(["WDOFUT", "WINFUT"], seed=11).events(), 12_000)
    )
    ticks = [e for e in events if isinstance(e, Tick)]

    def features_of(**settings: object) -> list[Features]:
        store.client.flushall()
        seen: list[object] = []
        system = System(
            load_settings(features_interval_ms=1000, **settings),
            source=lambda _: iter(events),
            event_handlers=[seen.append],
            book=True,
        )
        system.start()
        core_flow = system.component("core_flow")
        consuming = isinstance(core_flow, CoreFlow) and core_flow.consumer is not None
        system.wait(120)
        summary = system.stop()
        assert summary.drained and summary.generated_total == len(ticks)
        assert consuming == (bool(settings.get("zmq_consume_enabled")) and settings.get("zmq_enabled", True))
        if consuming:
            counters = summary.counters
            assert counters["consume_rejected"] == counters["consumer_unrecovered"] == 0
            assert counters["consume_book_rejected"] == counters["consumer_book_unrecovered"] == 0
            assert counters["features_book_waits_expired"] == counters["features_book_late"] == 0
        return [e for e in seen if isinstance(e, Features)]

    in_process = features_of()
    from_bus = features_of(zmq_consume_enabled=True)
    assert len(in_process) > 20 and [encode(f) for f in from_bus] == [encode(f) for f in in_process]
    assert sum(f.values["depth_imbalance_5"] is not None for f in from_bus) > 0.9 * len(from_bus)
    settings = load_settings(features_interval_ms=1000)
    engine = FeatureEngine(("WDOFUT", "WINFUT"), feature_config(settings), history=store_history(store))
    stored = frame_to_ticks(store.ticks(["WDOFUT", "WINFUT"], ticks[0].timestamp_ms, ticks[-1].timestamp_ms))
    assert [f.values for f in backfill(engine, stored, book=store_book(store))] == [
        f.values for f in from_bus
    ]
    # no bus to consume from: the core flow is fed in-process and goes on
    without_bus = features_of(zmq_consume_enabled=True, zmq_enabled=False)
    assert [encode(f) for f in without_bus] == [encode(f) for f in in_process]


def test_stopping_one_component_leaves_the_others_running(system_env: dict[str, str], store: Store) -> None:
    """Each component has its own stop: stopping the candle worker mid-run ends its thread only; the
    source, the bus, the recorder and the features go on, and the run still drains."""
    import threading

    from conftest import wait_until
    from tickvault.domain.events import Features

    first, second = _sim(3000), _sim(6000)[3000:]
    go_on = threading.Event()

    def source(_: Store | None) -> Iterator[Tick]:
        yield from first
        go_on.wait(60)
        yield from second

    seen: list[object] = []
    system = System(load_settings(features_interval_ms=100), source=source, event_handlers=[seen.append])
    try:
        system.start()
        candles = system.component("candles")
        assert candles is not None
        assert wait_until(lambda: candles.counters()["candle_ticks"] == len(first), 60)
        assert system.stop_component("candles") is not None
        assert "candles" not in {t.name for t in threading.enumerate()}
        features_before = sum(isinstance(e, Features) for e in seen)
    finally:
        go_on.set()  # a failure above still lets the source end (the fixture then stops the system)
    system.wait(120)
    summary = system.stop()
    assert summary.drained and sum(summary.stored.values()) == len(first) + len(second)
    assert sum(isinstance(e, Features) for e in seen) > features_before  # the core flow went on
    assert candles.counters()["candle_ticks"] == len(first)  # the stopped worker read no more


@pytest.mark.parametrize("only", ["recorder", "candles", "features"])
def test_a_process_without_a_source_does_not_wait_for_one_at_stop(
    system_env: dict[str, str], store: Store, only: str
) -> None:
    system = System(load_settings(only=only))
    system.start()
    book = ["book"] if only == "recorder" else []  # a recorder records the bus's book frames too
    assert [c.name for c in system.components] == ["valkey", only, *book, "health"]
    began = time.monotonic()
    summary = system.stop()
    assert time.monotonic() - began < 10  # the old stop waited 10 s for a source that never ran
    assert summary.drained and summary.generated_total == 0
