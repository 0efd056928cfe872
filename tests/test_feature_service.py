"""Live features in the running system equal a later backfill from history; outputs reach ZeroMQ,
Valkey and in-process handlers; the history cache is per day."""

from __future__ import annotations

import itertools
import logging
import threading
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
import valkey
import zmq

from conftest import wait_until
from factories import BASE_MS, tick
from tickvault.analytics.features import HISTORY_FEATURES, FeatureConfig, FeatureEngine, backfill
from tickvault.app.components.core_flow import feature_config
from tickvault.app.system import System
from tickvault.config import load_settings
from tickvault.domain.events import B3_TZ, Event, Features, Prediction, Tick, day_start_ms, decode, to_ms
from tickvault.ml.decisions import decide
from tickvault.sources.simulator import MarketSimulator
from tickvault.store.api import Store, frame_to_ticks
from tickvault.store.server import EmbeddedValkey, free_port
from tickvault.workers.book_backfill import store_book
from tickvault.workers.core_flow import FeatureService
from tickvault.workers.session_history import store_history

SYMBOLS = ("WDOFUT", "WINFUT")
TODAY = datetime(2025, 11, 24, 9, 0, tzinfo=B3_TZ)


def past_sessions(store: Store, days: int = 6) -> None:
    """A few sparse previous sessions (one trade every 20 s, 09:00-18:00) for both symbols."""
    rng = np.random.default_rng(0)
    for back in range(1, days + 1):
        open_ms = to_ms(TODAY) - back * 86_400_000
        for symbol, base, step in (("WDOFUT", 5400.0, 0.5), ("WINFUT", 130_000.0, 5.0)):
            price, out = base, []
            for i in range(9 * 180):
                price += step * int(rng.integers(-2, 3))
                out.append(tick(symbol, open_ms + i * 20_000, i + 1, price, int(rng.integers(1, 30)),
                                trade_type=int(rng.choice([2, 3]))))  # fmt: skip
            store.append_ticks(out)
    store.writer.release()  # the system's recorder writes these symbols next


def test_live_features_equal_a_backfill_from_history(system_env: dict[str, str], store: Store) -> None:
    past_sessions(store)
    sim = MarketSimulator(list(SYMBOLS), seed=9, start=TODAY)
    # every 5th simulated trade: two hours of session in 50k ticks, enough for every feature
    today = list(itertools.islice(sim.ticks(), 0, 250_000, 5))
    seen: list[Event] = []
    system = System(load_settings(), source=lambda _: iter(today), event_handlers=[seen.append])
    system.start()
    system.wait(120)
    summary = system.stop()
    assert summary.drained
    live = [e for e in seen if isinstance(e, Features)]
    assert summary.counters["features"] == len(live) > 100
    # what reached Valkey is what the handlers saw
    stored = store.features("WDOFUT", today[0].timestamp_ms, today[-1].timestamp_ms)
    assert len(stored) == sum(f.symbol == "WDOFUT" for f in live)
    # the history-aware features had history to work with
    last_wdo = [f for f in live if f.symbol == "WDOFUT"][-1].values
    assert last_wdo["microstructure_imbalance"] is not None
    assert last_wdo["volume_pattern_score"] is not None
    assert last_wdo["correlation_stability"] is not None
    # later, from history only: the same values at the same timestamps
    frame = store.ticks(list(SYMBOLS), today[0].timestamp_ms, today[-1].timestamp_ms)
    engine = FeatureEngine(SYMBOLS, FeatureConfig(), history=store_history(store))
    again = backfill(engine, frame_to_ticks(frame))
    assert [(f.symbol, f.timestamp_ms) for f in again] == [(f.symbol, f.timestamp_ms) for f in live]
    assert [f.values for f in again] == [f.values for f in live]


def test_live_book_features_equal_a_backfill_from_the_stored_book(
    system_env: dict[str, str], store: Store
) -> None:
    """The simulator's book, live in the features at every tick, recorded, over two runs (the second
    resumes the market); later the stored ticks and the stored book (read an hour of ticks at a time;
    here 20 s, so from snapshots mid-run) give the same values at every tick, book features included."""
    settings = load_settings(speed=0, symbols=",".join(SYMBOLS), features_interval_ms=0)
    live: list[Features] = []
    for _ in range(2):
        seen: list[Event] = []
        system = System(settings, event_handlers=[seen.append])
        # 1500 more each run (the first run's stop may overshoot any total the second aimed at)
        target = sum(store.count(s) for s in SYMBOLS) + 1500
        try:
            system.start()
            assert wait_until(lambda n=target: sum(store.count(s) for s in SYMBOLS) >= n)
        finally:
            summary = system.stop()
        assert summary.drained
        counters = summary.counters
        assert counters["features"] == counters["feature_ticks"] > 0  # features at every tick
        assert counters["features_book_late"] == counters["features_book_rejected"] == 0
        assert counters["book_stored"] == sum(system.ingest.stats.book_updates.values()) > 10_000
        live += [e for e in seen if isinstance(e, Features)]
    assert sum(f.values["depth_imbalance_5"] is not None for f in live) > 0.9 * len(live)
    first, last = min(f.timestamp_ms for f in live), max(f.timestamp_ms for f in live)
    frame = store.ticks(list(SYMBOLS), first, last)
    engine = FeatureEngine(SYMBOLS, feature_config(settings), history=store_history(store))
    again = backfill(engine, frame_to_ticks(frame), book=store_book(store, chunk_ms=20_000))
    assert [(f.symbol, f.timestamp_ms) for f in again] == [(f.symbol, f.timestamp_ms) for f in live]
    assert [f.values for f in again] == [f.values for f in live]
    # the store's snapshots lie inside the ticks' time: later chunks start from them
    assert store.client.zcard(store.keys.book_snapshots("WDOFUT")) >= 2


def test_a_run_restarted_mid_session_goes_on_as_if_it_had_never_stopped(
    system_env: dict[str, str], store: Store
) -> None:
    past_sessions(store, days=2)
    today = list(itertools.islice(MarketSimulator(list(SYMBOLS), seed=4, start=TODAY).ticks(), 0, 120_000, 4))
    half = len(today) // 2
    live: list[Features] = []
    for part, warm in ((today[:half], True), (today[half:], True)):
        seen: list[Event] = []
        system = System(load_settings(), source=lambda _, p=part: iter(p), event_handlers=[seen.append],
                        warm_up=warm)  # fmt: skip
        system.start()
        system.wait(120)
        summary = system.stop()
        assert summary.drained
        live += [e for e in seen if isinstance(e, Features)]
    assert summary.counters["features_warmed_up"] == half  # the second run folded the first's ticks
    frame = store.ticks(list(SYMBOLS), today[0].timestamp_ms, today[-1].timestamp_ms)
    again = backfill(
        FeatureEngine(SYMBOLS, FeatureConfig(), history=store_history(store)), frame_to_ticks(frame)
    )
    assert [(f.symbol, f.timestamp_ms) for f in again] == [(f.symbol, f.timestamp_ms) for f in live]
    assert [f.values for f in again] == [f.values for f in live]  # ret_5m, EMAs, VWAP... across the restart


def test_time_travel_disabled_reads_no_history_and_leaves_the_history_features_empty(
    system_env: dict[str, str], store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """TIME_TRAVEL_ENABLED=false reaches the running system's feature engine."""
    past_sessions(store, days=2)
    monkeypatch.setenv("TIME_TRAVEL_ENABLED", "false")
    today = list(itertools.islice(MarketSimulator(list(SYMBOLS), seed=9, start=TODAY).ticks(), 0, 20_000, 5))
    seen: list[Event] = []
    system = System(load_settings(), source=lambda _: iter(today), event_handlers=[seen.append])
    try:
        system.start()
        system.wait(120)
    finally:
        summary = system.stop()
    live = [e for e in seen if isinstance(e, Features)]
    assert summary.drained and live
    assert all(f.values[name] is None for f in live for name in HISTORY_FEATURES)
    assert any(f.values["ret_1m"] is not None for f in live)  # the base features are computed
    assert not list(store.client.scan_iter(store.keys.day_summary("*", "*")))  # no session summary read


def test_a_restarted_service_starts_from_the_stored_book(store: Store) -> None:
    """A feed whose first tick after a restart comes before its first book batch: the features read
    the stored book, as a backfill does, not an empty one."""
    from tickvault.domain.book import LAST, SNAPSHOT, BookColumns, level_update
    from tickvault.store.book_writer import BookPart, BookWriter

    rows = [("none", 0.0, 0, "clear"), ("bid", 5400.0, 30, "add"), ("ask", 5400.5, 10, "add")]
    stored = [
        level_update("WDOFUT", BASE_MS, side, price, qty, 1 if qty else 0, action,  # type: ignore[arg-type]
                     seq=i + 1, flags=SNAPSHOT | (LAST if i == len(rows) - 1 else 0))
        for i, (side, price, qty, action) in enumerate(rows)
    ]  # fmt: skip
    BookWriter(store.client, store.keys).write([BookPart(BookColumns.from_events(stored))])
    seen: list[Event] = []
    service = FeatureService(SYMBOLS, config=FeatureConfig(emit_interval_ms=0), handlers=[seen.append])
    service.warm_up(lambda: [], lambda: [store.book_replay("WDOFUT", BASE_MS, BASE_MS)[0]])
    service.start()
    after = tick(ts_ms=BASE_MS + 5_000, trade_id=7)
    try:
        service.submit(after)
        assert wait_until(lambda: len(seen) == 1)
    finally:
        service.stop()
    live = seen[0]
    assert (
        isinstance(live, Features) and live.values["spread"] == 0.5 and live.values["microprice"] == 5400.375
    )
    again = backfill(
        FeatureEngine(SYMBOLS, FeatureConfig(emit_interval_ms=0)), [after], book=store_book(store)
    )
    assert [f.values for f in again] == [live.values]


def test_a_restarted_service_reads_a_stored_book_ahead_of_its_ticks_as_it_was_then(store: Store) -> None:
    """The stored book goes on past the last stored tick (the source stopped between a trade and the
    next book batches); the resumed run's first ticks come before its clock: they read the stored
    book as it was at their time, as a backfill does, not nothing."""
    from tickvault.domain.book import LAST, SNAPSHOT, BookColumns, level_update
    from tickvault.store.book_writer import BookPart, BookWriter

    rows = [("none", 0.0, 0, "clear"), ("bid", 5400.0, 30, "add"), ("ask", 5400.5, 10, "add")]
    stored = [
        level_update("WDOFUT", BASE_MS, side, price, qty, 1 if qty else 0, action,  # type: ignore[arg-type]
                     seq=i + 1, flags=SNAPSHOT | (LAST if i == len(rows) - 1 else 0))
        for i, (side, price, qty, action) in enumerate(rows)
    ]  # fmt: skip
    stored.append(level_update("WDOFUT", BASE_MS + 10, "ask", 5401.0, 10, 1, "add", seq=4, flags=LAST))
    BookWriter(store.client, store.keys).write([BookPart(BookColumns.from_events(stored))])
    seen: list[Event] = []
    service = FeatureService(SYMBOLS, config=FeatureConfig(emit_interval_ms=0), handlers=[seen.append])
    # as the core flow reads it: from the last stored tick (here BASE_MS) to the newest stored book
    service.warm_up(lambda: [], lambda: [store.book_replay("WDOFUT", BASE_MS, BASE_MS + 10)[0]])
    service.start()
    resumed = [tick(ts_ms=BASE_MS + 5, trade_id=7), tick(ts_ms=BASE_MS + 11, trade_id=8)]
    try:
        for t in resumed:
            service.submit(t)
        assert wait_until(lambda: len(seen) == 2)
    finally:
        service.stop()
    assert [f.values["spread"] for f in seen if isinstance(f, Features)] == [0.5, 0.5]
    again = backfill(
        FeatureEngine(SYMBOLS, FeatureConfig(emit_interval_ms=0)), resumed, book=store_book(store)
    )
    assert [f.values for f in again] == [f.values for f in seen if isinstance(f, Features)]


def test_a_tick_from_another_bus_than_its_book_waits_for_the_book_to_reach_it() -> None:
    """Ticks and book batches from two buses (ZMQ_CONSUME_ENABLED): a tick that comes before the
    batches stamped before it is held until its book has reached its time, so it reads them as it
    would in-process; a wait that runs out is counted, and so is the batch that then comes late."""
    from tickvault.domain.book import LAST, SNAPSHOT, BookBatch, level_update

    def batches(symbol: str) -> list[BookBatch]:
        opening = [
            level_update(symbol, BASE_MS, "none", 0.0, 0, 0, "clear", seq=1, flags=SNAPSHOT),
            level_update(symbol, BASE_MS, "bid", 5400.0, 30, 1, "add", seq=2, flags=SNAPSHOT),
            level_update(symbol, BASE_MS, "ask", 5400.5, 10, 1, "add", seq=3, flags=SNAPSHOT | LAST),
        ]
        wider = level_update(symbol, BASE_MS + 5, "ask", 5400.5, 0, 0, "delete", seq=4, flags=LAST)
        later = level_update(symbol, BASE_MS + 10, "bid", 5399.5, 1, 1, "add", seq=5, flags=LAST)
        return [BookBatch(opening), BookBatch([wider]), BookBatch([later])]

    def run(wait_s: float) -> tuple[list[Event], dict[str, int]]:
        seen: list[Event] = []
        service = FeatureService(["WDOFUT"], config=FeatureConfig(emit_interval_ms=0), handlers=[seen.append])
        service.wait_for_book(wait_s)
        service.start()
        opening, wider, later = batches("WDOFUT")
        try:
            service.submit_book(opening)
            service.submit(tick(ts_ms=BASE_MS + 10))  # before the batch stamped +5 that precedes it
            service.submit_book(wider)
            service.submit_book(later)
            assert wait_until(lambda: len(seen) == 1)
        finally:
            service.stop()
        return seen, service.counters()

    held, counters = run(60.0)
    assert isinstance(held[0], Features) and held[0].values["spread"] is None  # the ask side emptied at +5
    assert counters["features_book_waits_expired"] == counters["features_book_late"] == 0
    expired, counters = run(0.0)  # no wait: the tick reads the opening book, the +5 batch comes late
    assert isinstance(expired[0], Features) and expired[0].values["spread"] == 0.5
    assert counters["features_book_waits_expired"] == counters["features_book_late"] == 1


def test_outputs_reach_zeromq_and_survive_a_dead_valkey_writer(store: Store) -> None:
    service = FeatureService(
        SYMBOLS, store=store, config=FeatureConfig(emit_interval_ms=0), signal_bind="tcp://127.0.0.1:*"
    )
    sub = zmq.Context.instance().socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.RCVTIMEO, 200)
    sub.connect(service.signal_endpoint or "")
    sub.setsockopt(zmq.SUBSCRIBE, b"features_WDOFUT")
    got: list[list[bytes]] = []
    trade = itertools.count(1)
    for _ in range(200):  # until the slow joiner's subscription has reached the publisher
        service.process(tick(ts_ms=to_ms(TODAY) + next(trade), trade_id=next(trade)))
        try:
            got.append(sub.recv_multipart())
            break
        except zmq.Again:
            continue
    assert got and got[0][0] == b"features_WDOFUT"
    assert decode(got[0][1], Features).symbol == "WDOFUT"
    service.stop()
    sub.close()
    assert service.stats.stored == service.stats.features
    assert service.counters()["features_published"] >= 1 and service.counters()["feature_publish_errors"] == 0


def test_a_model_predicts_only_the_symbols_it_was_trained_for() -> None:
    class WdoModel:  # as a trained model says what it learnt (TrainedModel.symbols)
        name, symbols = "hgb-WDOFUT-test", ("WDOFUT",)

        def predict_proba_one(self, values: dict[str, object]) -> dict[str, float]:
            return {"DOWN": 0.1, "FLAT": 0.2, "UP": 0.7}

    service = FeatureService(SYMBOLS, model=WdoModel(), config=FeatureConfig(emit_interval_ms=0))
    out: list[Event] = []
    for i in range(20):
        for symbol, price in (("WDOFUT", 5400.0), ("WINFUT", 130_000.0)):
            out += service.process(tick(symbol, to_ms(TODAY) + i, i + 1, price))
    service.stop()
    features = {e.symbol for e in out if isinstance(e, Features)}
    predicted = {e.symbol for e in out if isinstance(e, Prediction)}
    assert features == {"WDOFUT", "WINFUT"} and predicted == {"WDOFUT"}


def test_decide() -> None:
    assert decide({"UP": 0.7, "FLAT": 0.2, "DOWN": 0.1}, 0.55) == ("BUY", 0.7)
    assert decide({"UP": 0.1, "FLAT": 0.2, "DOWN": 0.7}, 0.55) == ("SELL", 0.7)
    assert decide({"UP": 0.4, "FLAT": 0.5, "DOWN": 0.1}, 0.55) == ("HOLD", 0.5)


def test_history_summaries_are_cached_per_day(store: Store) -> None:
    past_sessions(store, days=2)
    provider = store_history(store)
    first = provider("WDOFUT", TODAY.date(), 30)
    assert len(first) == 2
    assert store.client.exists("tv:daysum:WDOFUT:20251123")
    again = provider("WDOFUT", TODAY.date(), 30)
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a.minute_close, b.minute_close)
        np.testing.assert_array_equal(a.minute_quantity, b.minute_quantity)
        assert a.quantities == b.quantities and a.day == b.day


def test_with_the_zeromq_ports_taken_the_core_flow_still_predicts_and_the_bus_returns_when_they_free_up(
    system_env: dict[str, str], store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tickvault.ml.model as model_module
    from conftest import wait_until
    from test_model import planted_sessions
    from tickvault.bus.envelope import endpoint
    from tickvault.bus.subscriber import Subscriber
    from tickvault.ml.model import save, train, training_set

    monkeypatch.setattr(model_module, "ITERATIONS", 30)

    data = training_set(planted_sessions(2), "WDOFUT", horizon_ms=60_000, tick_size=0.5,
                        config=FeatureConfig(emit_interval_ms=30_000))  # fmt: skip
    save(train(data, "WDOFUT", horizon_ms=60_000, tick_size=0.5)[0], tmp_path / "model.pkl")
    squatters = []
    for name in ("ZMQ_TICK_PORT", "ZMQ_SIGNAL_PORT"):
        squatter = zmq.Context.instance().socket(zmq.PUB)
        squatter.setsockopt(zmq.LINGER, 0)
        monkeypatch.setenv(name, str(squatter.bind_to_random_port("tcp://127.0.0.1")))
        squatters.append(squatter)
    monkeypatch.setenv("TICKVAULT_MODEL", str(tmp_path / "model.pkl"))
    ticks = list(itertools.islice(MarketSimulator(["WDOFUT"], seed=4, start=TODAY).ticks(), 0, 100_000, 10))
    half = len(ticks) // 2
    resume = threading.Event()

    def source(_: object) -> Iterator[Tick]:
        yield from ticks[:half]
        resume.wait(60)  # the ports are freed here
        yield from ticks[half:]

    seen: list[Event] = []
    settings = load_settings()
    system = System(settings, source=source, event_handlers=[seen.append])
    listener = None
    signals = zmq.Context.instance().socket(zmq.SUB)
    signals.setsockopt(zmq.LINGER, 0)
    try:
        system.start()
        assert system.publisher is None and "ZeroMQ unavailable" in system.describe()
        assert "signal port" in system.describe()
        # with the tick port taken the core flow still predicts and the recorder is fed in-process
        assert wait_until(lambda: any(isinstance(e, Prediction) for e in seen), timeout=60)
        assert wait_until(lambda: store.count("WDOFUT") == half, timeout=60)
        for squatter in squatters:
            squatter.close()
        assert wait_until(lambda: system.publisher is not None, timeout=30)
        assert wait_until(lambda: system.features is not None and system.features.signal_endpoint, timeout=30)
        assert "DEGRADED" not in system.describe()
        assert system.publisher is not None and system.publisher.port == settings.zmq_tick_port
        listener = Subscriber(endpoint("127.0.0.1", settings.zmq_tick_port), ["tick_WDOFUT"])
        signals.connect(endpoint("127.0.0.1", settings.zmq_signal_port))
        signals.setsockopt(zmq.SUBSCRIBE, b"")
        assert system.publisher.wait_for_subscriber("tick_WDOFUT", timeout=10)
        resume.set()
        received: list[list[bytes]] = []
        assert wait_until(
            lambda: received.extend(listener.receive(timeout_ms=50)) or len(received) >= len(ticks) - half,
            timeout=60,
        )
        assert signals.poll(30_000), "no signal on the re-bound signal port"
        system.wait(120)
        summary = system.stop()
    finally:
        resume.set()
        for squatter in squatters:
            squatter.close()
        signals.close()
        if listener is not None:
            listener.close()
    assert summary.drained
    # the bus carries the ticks produced after it came back, in order, each once
    assert [decode(frame[1], Tick).trade_id for frame in received] == [t.trade_id for t in ticks[half:]]
    predictions = [e for e in seen if isinstance(e, Prediction)]
    assert len(predictions) == summary.counters["features"] > 0
    assert [t.trade_id for t in store.tick_events("WDOFUT", 0, 2**42)] == [t.trade_id for t in ticks]


def test_valkey_dying_mid_run_keeps_the_core_flow_predicting_and_loses_no_tick(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os
    import signal

    import valkey

    import tickvault.ml.model as model_module
    from conftest import wait_until
    from test_model import planted_sessions
    from tickvault.ml.model import save, train, training_set
    from tickvault.store.server import EmbeddedValkey

    monkeypatch.setattr(model_module, "ITERATIONS", 30)
    data = training_set(planted_sessions(2), "WDOFUT", horizon_ms=60_000, tick_size=0.5,
                        config=FeatureConfig(emit_interval_ms=30_000))  # fmt: skip
    save(train(data, "WDOFUT", horizon_ms=60_000, tick_size=0.5)[0], tmp_path / "model.pkl")
    server = EmbeddedValkey(tmp_path / "valkey")
    info = server.ensure_running()
    for name, value in (
        ("VALKEY_URL", f"valkey://{info.host}:{info.port}/0"),
        ("TICKVAULT_DATA_DIR", str(tmp_path)),
        ("TICKVAULT_MODEL", str(tmp_path / "model.pkl")),
        ("TICKVAULT_SYMBOLS", "WDOFUT"),
    ):
        monkeypatch.setenv(name, value)  # fmt: skip
    ticks = list(itertools.islice(MarketSimulator(["WDOFUT"], seed=8, start=TODAY).ticks(), 0, 150_000, 10))
    phase = [threading.Event(), threading.Event()]

    def source(_: object) -> Iterator[Tick]:
        yield from ticks[:5000]
        phase[0].wait(60)  # Valkey is killed here
        yield from ticks[5000:10_000]
        phase[1].wait(60)  # and restarted here
        yield from ticks[10_000:]

    seen: list[Event] = []
    client = valkey.Valkey(host=info.host, port=info.port, socket_timeout=2, socket_connect_timeout=1)
    system = System(load_settings(), source=source, event_handlers=[seen.append], private_bus=True)
    try:
        system.start()
        assert wait_until(lambda: Store(client).count("WDOFUT") >= 5000, timeout=60)
        os.kill(info.pid, signal.SIGKILL)  # no shutdown, no final fsync
        before = sum(isinstance(e, Prediction) for e in seen)
        phase[0].set()
        # with Valkey dead, the core flow goes on: ticks -> features -> predictions in-process
        assert wait_until(lambda: sum(isinstance(e, Prediction) for e in seen) > before + 10, timeout=60)
        assert wait_until(
            lambda: system.recorder is not None and system.recorder.stats.write_errors > 0, timeout=60
        )
        assert server.ensure_running().port == info.port  # same data, same port
        phase[1].set()
        system.wait(120)
        summary = system.stop()
        assert summary.drained
        stored = Store(client).tick_events("WDOFUT", 0, 2**42)
        assert [t.trade_id for t in stored] == [t.trade_id for t in ticks]  # none lost, none twice
        assert summary.counters["predictions"] == sum(isinstance(e, Prediction) for e in seen)
    finally:
        system.stop_event.set()
        client.close()
        server.stop()


@pytest.fixture
def own_valkey(tmp_path: Path) -> Iterator[tuple[EmbeddedValkey, valkey.Valkey]]:
    """A Valkey of this test alone, to stop and start again (the session's server is never stopped)."""
    server = EmbeddedValkey(tmp_path / "valkey", port=free_port())
    info = server.ensure_running()
    client = valkey.Valkey(host=info.host, port=info.port, socket_timeout=2, socket_connect_timeout=1)
    try:
        yield server, client
    finally:
        client.close()
        server.stop()


class FixedModel:
    """A model of any symbol that always answers the same: it shows that predictions flow."""

    name, symbols = "fixed-test", None

    def predict_proba_one(self, values: dict[str, object]) -> dict[str, float]:
        return {"DOWN": 0.2, "FLAT": 0.5, "UP": 0.3}


def history_log(caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> Callable[[str], int]:
    """Counts the feature log's records containing a text (whatever an in-process CLI test set up)."""
    monkeypatch.setattr(logging.getLogger("tickvault"), "propagate", True)
    caplog.set_level(logging.INFO, logger="tickvault")
    return lambda text: sum(text in r.getMessage() for r in caplog.records if r.name == "tickvault.features")


UNAVAILABLE = "history of previous sessions unavailable"
BACK = "history of previous sessions is back"


def test_a_session_starting_while_valkey_is_down_starts_without_history_and_catches_up_when_it_returns(
    own_valkey: tuple[EmbeddedValkey, valkey.Valkey],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    server, client = own_valkey
    logged = history_log(caplog, monkeypatch)
    store = Store(client)
    past_sessions(store)
    day_ms = 86_400_000
    yesterday = frame_to_ticks(store.ticks(list(SYMBOLS), to_ms(TODAY) - day_ms, to_ms(TODAY) - 1))
    sim = MarketSimulator(list(SYMBOLS), seed=6, start=TODAY)
    today = list(itertools.islice(sim.ticks(), 0, 280_000, 14))  # 96 minutes of the session
    outage, after = today[:16_000], today[16_000:]  # Valkey is back 77 minutes in
    seen: list[Event] = []
    every_tick = FeatureConfig(emit_interval_ms=0)
    service = FeatureService(
        SYMBOLS, store=store, model=FixedModel(), config=every_tick, handlers=[seen.append]
    )

    def feed(ticks: list[Tick]) -> list[Event]:
        """Every tick gives features, a prediction and a signal."""
        mark = len(seen)
        for t in ticks:
            service.submit(t)
        assert wait_until(lambda: len(seen) == mark + 3 * len(ticks), timeout=60)
        return seen[mark:]

    service.start()
    try:
        features = [e for e in feed(yesterday) if isinstance(e, Features)]
        assert features[-1].values["microstructure_imbalance"] is not None  # the history, Valkey up
        server.stop()  # returns once the server has exited
        assert server.running() is None
        # the first tick of a new session comes now, with Valkey down: the core flow goes on at once
        during = feed(outage)
        features = [e for e in during if isinstance(e, Features)]
        assert len(features) == sum(isinstance(e, Prediction) for e in during) == len(outage)
        for f in features:
            assert f.values["volume_pattern_score"] is None
            assert f.values["historical_momentum_rank"] is None
            assert f.values["microstructure_imbalance"] is None
            assert f.values["volatility_regime_30d"] == "UNKNOWN"
        assert service.stats.errors == 0
        assert logged(UNAVAILABLE) == 1 and logged(BACK) == 0  # one line, not one per tick or symbol
        assert not [r for r in caplog.records if r.exc_info]  # and no traceback
        assert service.counters()["feature_sessions_without_history"] == 2  # both symbols' sessions
        assert server.ensure_running().port == client.connection_pool.connection_kwargs["port"]
        assert wait_until(lambda: logged(BACK) == 1, timeout=60)  # looked up again in the background
        resumed = [e for e in feed(after) if isinstance(e, Features)]
    finally:
        service.stop()
    assert logged(UNAVAILABLE) == 1 and logged(BACK) == 1
    for name in ("volume_pattern_score", "historical_momentum_rank", "microstructure_imbalance"):
        assert resumed[0].values[name] is not None, name
    assert resumed[0].values["volatility_regime_30d"] != "UNKNOWN"
    # from there on the values are those of a run that had the history all along
    whole = backfill(FeatureEngine(SYMBOLS, every_tick, history=store_history(store)), yesterday + today)
    assert [(f.symbol, f.timestamp_ms) for f in resumed] == [(t.symbol, t.timestamp_ms) for t in after]
    assert [f.values for f in whole[-len(after) :]] == [f.values for f in resumed]


def test_a_run_starting_while_valkey_is_down_warms_up_cold_and_its_history_look_up_ends_with_it(
    own_valkey: tuple[EmbeddedValkey, valkey.Valkey],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    server, client = own_valkey
    logged = history_log(caplog, monkeypatch)
    store = Store(client)
    past_sessions(store, days=2)
    today = list(itertools.islice(MarketSimulator(list(SYMBOLS), seed=2, start=TODAY).ticks(), 0, 30_000, 10))
    store.append_ticks(today[:1000])  # the session so far, stored by the run before
    server.stop()
    newest = today[999].timestamp_ms
    seen: list[Event] = []
    service = FeatureService(
        SYMBOLS, store=store, config=FeatureConfig(emit_interval_ms=0), handlers=[seen.append]
    )
    # what System does for a restarted run: fold the stored session first, on the feature thread
    service.warm_up(lambda: frame_to_ticks(store.ticks(list(SYMBOLS), day_start_ms(newest), newest)))
    service.start()
    try:
        for t in today[1000:]:
            service.submit(t)
        assert wait_until(lambda: sum(isinstance(e, Features) for e in seen) == len(today) - 1000, timeout=60)
        assert service.stats.warmed_up == 0 and service.stats.errors == 1  # the session could not be read
        assert logged("features start without the session so far") == 1
        assert logged(UNAVAILABLE) == 1
        assert [t for t in threading.enumerate() if t.name == "features-history"]  # still looking
    finally:
        service.stop()
    assert not [t for t in threading.enumerate() if t.name == "features-history"]  # ended with its owner
    assert logged(BACK) == 0
