"""Fault tests: each compares every tick the source produced with what Valkey holds at the end,
and asserts 0 lost and 0 duplicated."""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

import valkey

from conftest import running_recorder, wait_until
from factories import BASE_MS, ticks
from tickvault.bus.ingest import Ingest
from tickvault.bus.publisher import Publisher
from tickvault.bus.subscriber import Subscriber
from tickvault.domain.events import Tick
from tickvault.recorder.recorder import Recorder
from tickvault.store.api import Store
from tickvault.store.server import EmbeddedValkey

_wait = wait_until


def _assert_exactly_once(store: Store, sent: list[Tick]) -> None:
    stored = store.tick_events("WDOFUT", BASE_MS - 10**9, BASE_MS + 10**9)
    assert len(stored) == len(sent), f"{len(sent) - len(stored)} lost"
    assert sorted(t.seq for t in stored) == list(range(1, len(sent) + 1)), "lost or duplicated"
    assert sorted(t.trade_id for t in stored) == sorted(t.trade_id for t in sent)


def test_valkey_killed_and_restarted_mid_stream(tmp_path: Path) -> None:
    server = EmbeddedValkey(tmp_path / "valkey")
    info = server.ensure_running()
    client = valkey.Valkey(host=info.host, port=info.port, socket_timeout=2, socket_connect_timeout=1)
    store = Store(client)
    pub = Publisher("tcp://127.0.0.1:*", replay_bind="tcp://127.0.0.1:*")
    sub = Subscriber(pub.endpoint, ["tick_"], replay=pub.replay_endpoint, ordered=False)
    recorder = Recorder(store, spool_path=tmp_path / "spool")
    stop = threading.Event()
    thread = threading.Thread(target=recorder.run, args=(sub, stop), daemon=True)
    thread.start()
    try:
        assert pub.wait_for_subscriber("tick_", 10)
        ingest = Ingest(pub)
        sent = ticks(9000)
        for t in sent[:3000]:
            ingest.on_tick(t)
        assert _wait(lambda: recorder.stats.stored_total >= 3000)
        os.kill(info.pid, signal.SIGKILL)  # no shutdown, no final fsync
        for t in sent[3000:6000]:
            ingest.on_tick(t)  # Valkey is down: the recorder buffers and retries
        assert _wait(lambda: recorder.stats.write_errors > 0)
        assert server.ensure_running().port == info.port  # same data, same port
        for t in sent[6000:]:
            ingest.on_tick(t)
        assert _wait(lambda: recorder.caught_up(ingest.last_seq), timeout=90)
        _assert_exactly_once(store, sent)
    finally:
        stop.set()
        thread.join(30)
        sub.close()
        pub.close()
        client.close()
        server.stop()


def test_a_batch_sent_to_a_valkey_that_dies_before_applying_it_is_sent_again(tmp_path: Path) -> None:
    """The writer pipelines: a batch is sent, and its replies are read with the next write (or a flush
    when nothing else is queued). Here Valkey holds the batch unapplied (CLIENT PAUSE WRITE) and dies:
    the flush fails, and so does the first re-send, while Valkey is still down. The batch must be sent
    again once Valkey is back, not counted as stored."""
    server = EmbeddedValkey(tmp_path / "valkey")
    info = server.ensure_running()
    client = valkey.Valkey(host=info.host, port=info.port, socket_timeout=2, socket_connect_timeout=1)
    admin = valkey.Valkey(host=info.host, port=info.port, socket_timeout=2)
    store = Store(client)
    sent = ticks(200)
    try:
        stamped: list[Tick] = []
        ingest = Ingest(handlers=[stamped.append])
        for t in sent:
            ingest.on_tick(t)
        with running_recorder(store, spool_path=tmp_path / "spool") as recorder:
            recorder.submit(stamped[:100])
            assert _wait(lambda: recorder.caught_up({"WDOFUT": 100}))
            admin.execute_command("CLIENT", "PAUSE", "60000", "WRITE")
            recorder.submit(stamped[100:])  # one batch, and then nothing queued: the flush finds the failure

            def batch_held() -> bool:  # the writer's transaction is blocked (b) in MULTI (x) by the pause
                return any({"x", "b"} <= set(c["flags"]) for c in admin.client_list())

            assert _wait(batch_held)
            os.kill(info.pid, signal.SIGKILL)
            # the flush fails, then a re-send while Valkey is down: the held batch must not count as stored
            assert _wait(lambda: recorder.caught_up(ingest.last_seq) or recorder.stats.write_errors >= 2)
            assert not recorder.caught_up(ingest.last_seq)
            assert server.ensure_running().port == info.port
            assert _wait(lambda: recorder.caught_up(ingest.last_seq), timeout=90)
        _assert_exactly_once(store, sent)
    finally:
        client.close()
        admin.close()
        server.stop()


def test_same_ticks_ingested_twice_are_stored_once(store: Store) -> None:
    sent = ticks(3000)
    for _ in range(2):
        with running_recorder(store) as recorder:
            ingest = Ingest(handlers=[recorder.submit_one])
            for t in ticks(3000):  # fresh objects with the same content, numbered from 1 again
                ingest.on_tick(t)
            assert _wait(lambda r=recorder, i=ingest: r.caught_up(i.last_seq))
    _assert_exactly_once(store, sent)


def test_burst_of_out_of_order_and_equal_timestamps(store: Store) -> None:
    import random

    sent = ticks(4000, per_ms=7)
    shuffled = sent[:]
    random.Random(5).shuffle(shuffled)
    with running_recorder(store) as recorder:
        ingest = Ingest(handlers=[recorder.submit_one])
        for t in shuffled:
            ingest.on_tick(t)
        assert _wait(lambda: recorder.caught_up(ingest.last_seq))
    _assert_exactly_once(store, sent)
    back = store.tick_events("WDOFUT", BASE_MS, BASE_MS + 10**6)
    assert [t.timestamp_ms for t in back] == sorted(t.timestamp_ms for t in sent)


def test_recorder_process_sigkilled_mid_stream_and_restarted(
    system_env: dict[str, str], store: Store, tmp_path: Path
) -> None:
    import subprocess
    import sys

    from conftest import subprocess_env
    from tickvault.bus.envelope import endpoint

    pub = Publisher(
        endpoint("127.0.0.1", int(system_env["ZMQ_TICK_PORT"])),
        replay_bind=endpoint("127.0.0.1", int(system_env["ZMQ_REPLAY_PORT"])),
    )

    def recorder_process() -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [sys.executable, "-m", "tickvault", "run", "--only", "recorder", "--no-dashboard"],
            env=subprocess_env({**system_env, "TICKVAULT_SYMBOLS": "WDOFUT"}),
            cwd=tmp_path,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def subscribed() -> bool:
        return b"tick_" in pub.subscriptions()

    ingest = Ingest(pub)
    sent = ticks(9000)
    proc = recorder_process()
    try:
        assert _wait(subscribed)
        for t in sent[:3000]:
            ingest.on_tick(t)
        assert _wait(lambda: store.count("WDOFUT") >= 1000)
        proc.kill()  # SIGKILL: no flush, no goodbye
        proc.wait(30)
        assert _wait(lambda: not subscribed())
        for t in sent[3000:6000]:
            ingest.on_tick(t)  # nobody records these live
        proc = recorder_process()
        assert _wait(subscribed)
        for t in sent[6000:]:
            ingest.on_tick(t)
        assert _wait(lambda: store.count("WDOFUT") >= 9000, timeout=120)
        _assert_exactly_once(store, sent)
    finally:
        proc.terminate()
        proc.wait(30)
        pub.close()


def test_recorders_sharing_one_bus_by_symbol_store_each_tick_once(
    system_env: dict[str, str], store: Store, tmp_path: Path
) -> None:
    """`run --only recorder --symbols A` and `--symbols B,C` side by side: each records exactly its
    symbols (WDOFUT26 shares the prefix `tick_WDOFUT` and must not reach the WDOFUT recorder)."""
    import subprocess
    import sys

    from conftest import subprocess_env
    from tickvault.bus.envelope import endpoint

    pub = Publisher(
        endpoint("127.0.0.1", int(system_env["ZMQ_TICK_PORT"])),
        replay_bind=endpoint("127.0.0.1", int(system_env["ZMQ_REPLAY_PORT"])),
    )
    shards = ("WDOFUT", "WDOFUT26,WINFUT")
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tickvault",
                "run",
                "--only",
                "recorder",
                "--no-dashboard",
                "--symbols",
                shard,
            ],
            env=subprocess_env(system_env),
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for shard in shards
    ]
    sent = {s: ticks(3000, symbol=s) for s in ("WDOFUT", "WDOFUT26", "WINFUT")}
    try:
        assert _wait(lambda: {b"tick_WDOFUT", b"tick_WINFUT", b"tick_WDOFUT26"} <= set(pub.subscriptions()))
        ingest = Ingest(pub)
        for row in zip(*sent.values(), strict=True):
            for t in row:
                ingest.on_tick(t)
        assert _wait(lambda: all(store.count(s) == 3000 for s in sent), timeout=120)
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        outputs = [proc.communicate(timeout=60) for proc in procs]
        pub.close()
    for symbol, mine in sent.items():
        assert [t.trade_id for t in store.tick_events(symbol, 0, 2**42)] == [t.trade_id for t in mine]
    # each process stored only its own symbols, without a lease conflict (a write error) on the way
    first, second = (out for out, _ in outputs)
    assert "stored=3000" in first and "write_errors=0" in first, outputs[0]
    assert "stored=6000" in second and "write_errors=0" in second, outputs[1]
