"""Feature workers (`tickvault run --only features`) on the 3-node cluster: three processes share
the symbols through leases and a consumer group per tick stream; one is SIGKILLed mid-stream; the
features streams end up exactly what one engine computes over the stored ticks, with no duplicates."""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest
from valkey.cluster import ValkeyCluster

from conftest import subprocess_env, wait_until
from factories import BASE_MS
from tickvault.analytics.features import FeatureConfig, FeatureEngine, backfill
from tickvault.domain.events import Features, from_ms, to_fields
from tickvault.sources.simulator import MarketSimulator
from tickvault.store.api import Store
from tickvault.store.cluster import EmbeddedCluster
from tickvault.workers.feature_worker import GROUP, FeatureWorker
from tickvault.workers.session_history import store_history

SYMBOLS = ("WDOFUT", "WINFUT", "DOLFUT")
CONFIG = FeatureConfig(emit_interval_ms=5_000)


def expected_entries(store: Store, symbol: str, ticks: list) -> list[tuple[str, dict[str, str]]]:
    engine = FeatureEngine([symbol], CONFIG, history=store_history(store))
    out, last = [], (-1, -1)
    for features in backfill(engine, [t for t in ticks if t.symbol == symbol]):
        ms = features.timestamp_ms
        last = (ms, last[1] + 1 if ms == last[0] else 0)
        out.append((f"{last[0]}-{last[1]}", to_fields(features)))
    return out


def stored_entries(store: Store, symbol: str) -> list[tuple[str, dict[str, str]]]:
    found = store.client.xrange(store.keys.features(symbol))
    return [(i.decode(), {k.decode(): v.decode() for k, v in f.items()}) for i, f in found]


def test_a_worker_takes_over_from_where_the_store_says(cluster_client: ValkeyCluster) -> None:
    """In process: a worker stopped mid-stream, another takes over by replay; same entries."""
    store = Store(cluster_client)
    ticks = list(
        itertools.islice(MarketSimulator(list(SYMBOLS), seed=21, start=from_ms(BASE_MS)).ticks(), 9000)
    )
    store.append_ticks(ticks[:4000])
    first = FeatureWorker(store, SYMBOLS, CONFIG, name="first")
    while first.step(block_ms=0):
        pass
    assert first.stats.written > 0 and set(first.owned) == set(SYMBOLS)
    first.owned.clear()  # as if it died: its state is gone, its lease lapses
    for symbol in SYMBOLS:
        cluster_client.delete(first.lease_key(symbol))
    store.append_ticks(ticks[4000:])
    second = FeatureWorker(store, SYMBOLS, CONFIG, name="second")
    while second.step(block_ms=0):
        pass
    assert second.stats.takeovers == 3 and second.stats.replayed > 0
    for symbol in SYMBOLS:
        assert stored_entries(store, symbol) == expected_entries(store, symbol, ticks)


def test_a_lapsed_lease_another_worker_used_is_taken_back_from_the_store(store: Store) -> None:
    """`a` stalls past its lease, `b` takes the symbols and folds on, then stops; `a` wakes up to
    free leases and takes them back. Its engine missed what `b` folded: it must start again from the
    store (as a fresh worker does), not go on from its own stale state."""
    ticks = list(
        itertools.islice(MarketSimulator(list(SYMBOLS), seed=24, start=from_ms(BASE_MS)).ticks(), 6000)
    )
    a = FeatureWorker(store, SYMBOLS, CONFIG, name="a", lease_ms=60_000)
    b = FeatureWorker(store, SYMBOLS, CONFIG, name="b", lease_ms=60_000)
    store.append_ticks(ticks[:2000])
    while a.step(block_ms=0):
        pass
    for symbol in SYMBOLS:
        store.client.delete(a.lease_key(symbol))  # `a` stalls past its lease
    store.append_ticks(ticks[2000:4000])
    while b.step(block_ms=0):
        pass
    b.release()
    store.append_ticks(ticks[4000:])
    while a.step(block_ms=0):
        pass
    assert set(a.owned) == set(SYMBOLS) and a.stats.errors == 0
    assert a.stats.takeovers == 2 * len(SYMBOLS)  # the first start, and again after `b`
    for symbol in SYMBOLS:
        assert stored_entries(store, symbol) == expected_entries(store, symbol, ticks)


def test_a_lapsed_lease_nobody_took_keeps_the_workers_state(store: Store) -> None:
    """The same lapse with nobody taking over: `a` goes on from its own state, no replay."""
    ticks = list(
        itertools.islice(MarketSimulator(list(SYMBOLS), seed=25, start=from_ms(BASE_MS)).ticks(), 4000)
    )
    a = FeatureWorker(store, SYMBOLS, CONFIG, name="a", lease_ms=60_000)
    store.append_ticks(ticks[:2000])
    while a.step(block_ms=0):
        pass
    for symbol in SYMBOLS:
        store.client.delete(a.lease_key(symbol))
    store.append_ticks(ticks[2000:])
    while a.step(block_ms=0):
        pass
    assert a.stats.takeovers == len(SYMBOLS) and a.stats.errors == 0
    for symbol in SYMBOLS:
        assert stored_entries(store, symbol) == expected_entries(store, symbol, ticks)


@pytest.mark.timeout(600)
def test_three_worker_processes_one_sigkilled_mid_stream(
    valkey_cluster: EmbeddedCluster, cluster_client: ValkeyCluster, tmp_path: Path
) -> None:
    store = Store(cluster_client)
    ticks = list(
        itertools.islice(MarketSimulator(list(SYMBOLS), seed=22, start=from_ms(BASE_MS)).ticks(), 30_000)
    )
    env = subprocess_env({
        "VALKEY_URL": valkey_cluster.url, "TICKVAULT_SYMBOLS": ",".join(SYMBOLS),
        "FEATURES_INTERVAL_MS": "5000", "TICKVAULT_DATA_DIR": str(tmp_path / "data"),
    })  # fmt: skip
    workers = [
        subprocess.Popen(
            [sys.executable, "-m", "tickvault", "run", "--only", "features", "--no-dashboard"],
            env=env,
            cwd=tmp_path,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for _ in range(3)
    ]
    feeding = threading.Event()

    def feed(part: list) -> None:
        for i in range(0, len(part), 500):
            store.append_ticks(part[i : i + 500])

    try:
        feed(ticks[:10_000])
        assert wait_until(lambda: all(cluster_client.xlen(store.keys.features(s)) > 5 for s in SYMBOLS), 120)
        holders = {cluster_client.get(store.keys.feature_lease(s)) for s in SYMBOLS}
        victim_pid = int(sorted(h for h in holders if h)[0].decode().rsplit(":", 1)[1])
        assert victim_pid in [w.pid for w in workers]
        rest = threading.Thread(target=lambda: (feeding.set(), feed(ticks[10_000:])), daemon=True)
        rest.start()
        assert feeding.wait(10)
        os.kill(victim_pid, signal.SIGKILL)  # mid-stream: ticks keep arriving
        rest.join(120)
        want = {s: expected_entries(store, s, ticks) for s in SYMBOLS}
        assert wait_until(
            lambda: all(cluster_client.xlen(store.keys.features(s)) >= len(want[s]) for s in SYMBOLS), 180
        ), {s: (cluster_client.xlen(store.keys.features(s)), len(want[s])) for s in SYMBOLS}
        for symbol in SYMBOLS:
            assert stored_entries(store, symbol) == want[symbol]  # complete, in order, none twice
        survivors = {cluster_client.get(store.keys.feature_lease(s)) for s in SYMBOLS}
        assert all(h is not None and str(victim_pid).encode() not in h for h in survivors)
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.send_signal(signal.SIGTERM)
        for worker in workers:
            try:
                worker.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                worker.kill()
    assert [w.returncode for w in workers].count(-signal.SIGKILL) == 1
    assert Features  # the type the entries decode to (see stored_entries)


def test_the_sources_feature_service_and_a_worker_write_each_features_entry_once(store: Store) -> None:
    """`run --only source` computes features in-process while `--only features` workers compute them
    from the store: the same entries get the same ids, so the second writer is refused."""
    from tickvault.workers.core_flow import FeatureService

    ticks = list(
        itertools.islice(MarketSimulator(list(SYMBOLS), seed=23, start=from_ms(BASE_MS)).ticks(), 6000)
    )
    store.append_ticks(ticks)
    worker = FeatureWorker(store, SYMBOLS, CONFIG, name="w")
    while worker.step(block_ms=0):
        pass
    assert worker.stats.written > 0
    # the in-process service computes the same features afterwards: Valkey refuses every one of them
    service = FeatureService(SYMBOLS, store=store, model=None, config=CONFIG)
    service.start()
    for tick in ticks:
        service.submit(tick)
    service.stop()
    assert service.stats.features == worker.stats.written and service.counters()["features_stored"] == 0
    for symbol in SYMBOLS:
        assert stored_entries(store, symbol) == expected_entries(store, symbol, ticks)


def test_a_worker_waits_for_the_stored_book_and_computes_the_book_features_a_backfill_reads(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The tick recorder ahead of the book recorder: the worker holds the ticks until the stored book
    has reached them, then its book features equal a backfill's from the stored book at every tick,
    across its takeover replay (the first half) and the stream it then follows (the second)."""
    from tickvault.bus.ingest import Ingest
    from tickvault.domain.book import BookBatch, BookColumns
    from tickvault.domain.events import Tick
    from tickvault.sources.book_simulator import BookMarketSimulator
    from tickvault.store.book_writer import BookPart, BookWriter
    from tickvault.workers import feature_worker
    from tickvault.workers.book_backfill import store_book

    symbols, config = ("WDOFUT", "WINFUT"), FeatureConfig(emit_interval_ms=0)
    ticks: list[Tick] = []
    batches: list[BookBatch] = []
    ingest = Ingest(handlers=[ticks.append])  # numbers the ticks and the book updates
    ingest.book_handlers.append(batches.append)
    for item in itertools.islice(
        BookMarketSimulator(list(symbols), seed=3, start=from_ms(BASE_MS)).events(), 3000
    ):
        ingest.on_book(item) if isinstance(item, BookBatch) else ingest.on_tick(item)
    writer = BookWriter(store.client, store.keys)

    def store_book_until(end_ms: int, done: list[int] = [0]) -> None:  # noqa: B006 - the batches written
        upto = next((i for i, b in enumerate(batches) if b.timestamp_ms > end_ms), len(batches))
        parts = [
            BookColumns.from_events([e for b in batches[done[0] : upto] if b.symbol == s for e in b])
            for s in symbols
        ]
        writer.write([BookPart(cols) for cols in parts if len(cols)])
        done[0] = upto

    half = len(ticks) // 2
    store_book_until(ticks[0].timestamp_ms - 1)  # the opening snapshots: the book is behind every tick
    store.append_ticks(ticks[:half])
    monkeypatch.setattr(feature_worker, "BOOK_WAIT_S", 60.0)  # the wait must not run out here
    worker = FeatureWorker(store, symbols, config, name="w")
    stop = threading.Event()
    thread = threading.Thread(target=worker.run, args=(stop,), name="feature-worker")
    thread.start()
    expected = {}
    try:
        assert wait_until(lambda: all(store.client.get(worker.lease_key(s)) for s in symbols))
        assert not any(stored_entries(store, s) for s in symbols)  # taken, replaying: waiting for the book
        store_book_until(ticks[half - 1].timestamp_ms)
        store.append_ticks(ticks[half:])
        store_book_until(2**62)
        engine = FeatureEngine(symbols, config, history=store_history(store))
        features = backfill(engine, ticks, book=store_book(store))
        for symbol in symbols:
            mine = [f for f in features if f.symbol == symbol]
            expected[symbol] = [(f"{f.timestamp_ms}-{n}", to_fields(f)) for f, n in _numbered(mine)]
        assert wait_until(lambda: all(len(stored_entries(store, s)) == len(expected[s]) for s in symbols))
    finally:
        stop.set()
        thread.join(30)
    assert worker.counters()["features_book_late"] == 0
    assert sum(f.values["depth_imbalance_5"] is not None for f in features) > 0.9 * len(features)
    for symbol in symbols:
        assert stored_entries(store, symbol) == expected[symbol]


def _numbered(features: list[Features]) -> list[tuple[Features, int]]:
    """Each features event with its counter within its millisecond (the worker's output ids)."""
    out, last = [], (-1, -1)
    for f in features:
        last = (f.timestamp_ms, last[1] + 1 if f.timestamp_ms == last[0] else 0)
        out.append((f, last[1]))
    return out


@contextlib.contextmanager
def running(worker: FeatureWorker) -> Iterator[None]:
    stop = threading.Event()
    thread = threading.Thread(target=worker.run, args=(stop,), name="worker", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(30)


def pending(store: Store, symbol: str) -> int:
    return int(store.client.xpending(store.keys.ticks(symbol), GROUP)["pending"])


def one_symbols_ticks(seed: int, n: int) -> list:
    source = MarketSimulator(["WDOFUT"], seed=seed, start=from_ms(BASE_MS)).ticks()
    return list(itertools.islice(source, n))


def test_a_features_write_refused_not_as_a_repeat_leaves_its_ticks_pending_and_loses_nothing(
    store: Store,
) -> None:
    """Something else holds the features key (a string: every XADD to it is refused with WRONGTYPE).
    The ticks stay pending, the worker retries (from the store); once the key is out of the way the
    features are those of a backfill. The old worker acknowledged the ticks with the refused writes."""
    ticks = one_symbols_ticks(31, 1500)
    worker = FeatureWorker(store, ("WDOFUT",), CONFIG, name="w", batch=2_000, max_deliveries=1_000_000)
    worker.step(block_ms=0)  # the symbol taken while its features key is still a stream
    out_key = store.keys.features("WDOFUT")
    store.client.set(out_key, "in the way")
    store.append_ticks(ticks)
    with running(worker):
        assert wait_until(lambda: worker.stats.errors >= 2, 30)  # refused, and tried again
        assert pending(store, "WDOFUT") == len(ticks)  # none acknowledged
        assert worker.stats.written == 0
        store.client.delete(out_key)
        assert wait_until(lambda: pending(store, "WDOFUT") == 0 and store.client.exists(out_key), 30)
        assert wait_until(
            lambda: stored_entries(store, "WDOFUT") == expected_entries(store, "WDOFUT", ticks), 30
        )
    assert worker.stats.dead_lettered == 0 and store.client.xlen(store.keys.dead_letters()) == 0


def test_ticks_whose_features_are_refused_on_every_delivery_are_dead_lettered_and_the_symbol_goes_on(
    store: Store,
) -> None:
    """A refusal on the `max_deliveries`-th delivery (1 here: the first) dead-letters the tick entries
    whose features were refused, with the features and the reason, counts them and acknowledges them;
    once the key is fixed the symbol goes on from the same engine: every other features entry is a
    backfill's."""
    ticks = one_symbols_ticks(32, 3000)
    worker = FeatureWorker(store, ("WDOFUT",), CONFIG, name="w", max_deliveries=1)
    worker.step(block_ms=0)
    out_key = store.keys.features("WDOFUT")
    store.client.set(out_key, "in the way")
    store.append_ticks(ticks[:1000])
    while worker.step(block_ms=0):
        pass
    assert pending(store, "WDOFUT") == 0 and worker.stats.errors == 0
    dead = [fields for _, fields in store.client.xrange(store.keys.dead_letters())]
    assert dead and worker.counters()["features_dead_lettered"] == len(dead)
    assert all(f[b"field"] == b"feature_write" and b"WRONGTYPE" in f[b"reason"] for f in dead), dead
    store.client.delete(out_key)
    store.append_ticks(ticks[1000:])
    while worker.step(block_ms=0):
        pass
    lost = {f[b"features_id"].decode() for f in dead}
    expected = expected_entries(store, "WDOFUT", ticks)
    assert [e for e in expected if e[0] in lost] == [
        (f[b"features_id"].decode(), msgspec.json.decode(f[b"payload"])) for f in dead
    ]
    assert stored_entries(store, "WDOFUT") == [e for e in expected if e[0] not in lost]
    assert pending(store, "WDOFUT") == 0


def test_a_refusal_that_lasts_is_dead_lettered_on_the_nth_delivery_and_the_symbol_goes_on(
    store: Store,
) -> None:
    """The features key stays a string: the write is refused in the batch's step and in every take
    after it (which cannot even read the key). The takes count as deliveries: on the third the
    features are dead-lettered, each once, the ticks acknowledged, and the symbol goes on; when the
    key is fixed the features after are written, equal to a backfill's."""
    ticks = one_symbols_ticks(33, 3000)
    worker = FeatureWorker(store, ("WDOFUT",), CONFIG, name="w", batch=2_000, max_deliveries=3)
    worker.step(block_ms=0)
    out_key = store.keys.features("WDOFUT")
    store.client.set(out_key, "in the way")
    store.append_ticks(ticks[:1000])
    with running(worker):
        assert wait_until(lambda: worker.stats.dead_lettered > 0 and pending(store, "WDOFUT") == 0, 30)
        dead = [fields for _, fields in store.client.xrange(store.keys.dead_letters())]
        assert worker.counters()["features_dead_lettered"] == len(dead)
        assert all(b"after 3 deliveries" in f[b"reason"] and b"WRONGTYPE" in f[b"reason"] for f in dead), dead
        store.client.delete(out_key)
        store.append_ticks(ticks[1000:])
        lost = {f[b"features_id"].decode() for f in dead}
        expected = expected_entries(store, "WDOFUT", ticks)
        assert wait_until(
            lambda: stored_entries(store, "WDOFUT") == [e for e in expected if e[0] not in lost], 30
        )
        # the ticks are acknowledged just after their features are written, on the worker's thread
        assert wait_until(lambda: pending(store, "WDOFUT") == 0, 30)
    assert [(f[b"features_id"].decode(), msgspec.json.decode(f[b"payload"])) for f in dead] == [
        e for e in expected if e[0] in lost
    ]
    assert expected[0][0] in lost and store.client.xlen(store.keys.dead_letters()) == len(dead)
