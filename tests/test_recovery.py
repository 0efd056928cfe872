"""Gap recovery: a stalled subscriber past the high-water mark, a late joiner, the Valkey fallback,
and a recorder stopped and restarted mid-stream. Each ends with 0 lost and 0 duplicated."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from factories import BASE_MS, ticks
from tickvault.bus.ingest import Ingest
from tickvault.bus.publisher import Publisher
from tickvault.bus.subscriber import Subscriber
from tickvault.domain.events import decode_tick
from tickvault.recorder.recorder import Recorder
from tickvault.recorder.recovery import store_recovery
from tickvault.store.api import Store


@pytest.fixture
def publisher() -> Iterator[Publisher]:
    pub = Publisher("tcp://127.0.0.1:*", replay_bind="tcp://127.0.0.1:*", sndhwm=50, ring_size=100_000)
    yield pub
    pub.close()


def _drain(sub: Subscriber, n: int, timeout: float = 60) -> list[list[bytes]]:
    got: list[list[bytes]] = []
    deadline = time.monotonic() + timeout
    while len(got) < n and time.monotonic() < deadline:
        got += sub.receive(timeout_ms=100)
    return got


def _seqs(frames: list[list[bytes]]) -> list[int]:
    return [decode_tick(f[1]).seq for f in frames]


def test_stalled_subscriber_past_the_high_water_mark_loses_nothing(publisher: Publisher) -> None:
    """Guide defect 6: PUB past the high-water mark dropped 40-76% of ticks, silently."""
    sub = Subscriber(publisher.endpoint, ["tick_"], replay=publisher.replay_endpoint, rcvhwm=50)
    try:
        assert publisher.wait_for_subscriber("tick_WDOFUT", 10)
        ingest = Ingest(publisher)
        for t in ticks(20_000):
            ingest.on_tick(t)  # the subscriber reads nothing meanwhile: it is stalled
        assert publisher.flush(30)
        got = _drain(sub, 20_000)
        assert _seqs(got) == list(range(1, 20_001))
        assert sub.stats.gaps > 0, "the high-water mark should have dropped messages on the wire"
        assert sub.stats.recovered_replay == sub.stats.missing
        assert sub.stats.unrecovered == 0 and sub.stats.duplicates == 0
    finally:
        sub.close()


def test_late_joiner_gets_everything_from_the_ring(publisher: Publisher) -> None:
    ingest = Ingest(publisher)
    for t in ticks(500):
        ingest.on_tick(t)  # nobody is subscribed yet
    assert publisher.flush(10)
    sub = Subscriber(publisher.endpoint, ["tick_WDO"], replay=publisher.replay_endpoint)
    try:
        assert publisher.wait_for_subscriber("tick_WDOFUT", 10)
        sub.prime({"tick_WDOFUT": 0})  # it has nothing yet
        for t in ticks(100, start_ms=BASE_MS + 10_000):
            ingest.on_tick(t)
        got = _drain(sub, 600)
        assert _seqs(got) == list(range(1, 601))
        assert sub.stats.recovered_replay == sub.stats.missing >= 500
    finally:
        sub.close()


def test_gap_older_than_the_ring_is_filled_from_valkey(store: Store) -> None:
    pub = Publisher("tcp://127.0.0.1:*", replay_bind="tcp://127.0.0.1:*", ring_size=100)
    ingest = Ingest(pub)
    written = ticks(1000)
    for t in written:
        ingest.on_tick(t)  # before the subscriber joins
    assert pub.flush(10)
    store.append_ticks(written)  # the recorder stored them
    sub = Subscriber(pub.endpoint, ["tick_"], replay=pub.replay_endpoint, recover=store_recovery(store))
    try:
        assert pub.wait_for_subscriber("tick_WDOFUT", 10)
        sub.prime({"tick_WDOFUT": 0})
        ingest.on_tick(ticks(1, start_ms=BASE_MS + 50_000)[0])
        got = _drain(sub, 1001)
        assert _seqs(got) == list(range(1, 1002))
        # the ring holds only the last 100, so about 900 came from Valkey (exact split depends on
        # whether a heartbeat or the live tick announced the gap first)
        assert sub.stats.recovered_store >= 900 and sub.stats.recovered_replay >= 99
        assert sub.stats.recovered_replay + sub.stats.recovered_store == sub.stats.missing
        assert sub.stats.unrecovered == 0
    finally:
        sub.close()
        pub.close()


def test_recorder_stopped_mid_stream_and_restarted_stores_everything_once(
    publisher: Publisher, store: Store
) -> None:
    def start_recorder() -> tuple[Recorder, Subscriber, threading.Event, threading.Thread]:
        sub = Subscriber(publisher.endpoint, ["tick_"], replay=publisher.replay_endpoint, ordered=False)
        last = store.last_tick("WDOFUT")
        sub.prime({"tick_WDOFUT": last.seq if last else 0})  # resume from what is stored
        recorder = Recorder(store)
        stop = threading.Event()
        thread = threading.Thread(target=recorder.run, args=(sub, stop), daemon=True)
        thread.start()
        return recorder, sub, stop, thread

    ingest = Ingest(publisher)
    written = ticks(6000)
    recorder, sub, stop, thread = start_recorder()
    assert publisher.wait_for_subscriber("tick_", 10)
    for t in written[:2000]:
        ingest.on_tick(t)
    deadline = time.monotonic() + 30
    while recorder.stats.stored_total < 1000 and time.monotonic() < deadline:
        time.sleep(0.001)
    stop.set()  # the recorder goes away mid-stream
    thread.join(10)
    sub.close()
    for t in written[2000:4000]:
        ingest.on_tick(t)  # published while no recorder runs
    assert publisher.flush(10)
    recorder, sub, stop, thread = start_recorder()
    assert publisher.wait_for_subscriber("tick_", 10)
    for t in written[4000:]:
        ingest.on_tick(t)
    deadline = time.monotonic() + 60
    while not recorder.caught_up(ingest.last_seq) and time.monotonic() < deadline:
        time.sleep(0.01)
    stop.set()
    thread.join(10)
    sub.close()
    stored = store.tick_events("WDOFUT", BASE_MS, BASE_MS + 100_000)
    assert [t.seq for t in stored] == list(range(1, 6001))
    assert [t.trade_id for t in stored] == [t.trade_id for t in written]


def test_a_replay_request_unanswered_at_first_is_asked_again() -> None:
    """A publisher busy with a backlog may answer late: the client retries on a fresh socket (a
    single 2 s timeout once made a restarted recorder give up on 9,305 ticks in the soak)."""
    import msgspec
    import zmq

    from tickvault.bus.ring import ReplayClient, ReplayHeader

    server = zmq.Context.instance().socket(zmq.ROUTER)
    server.setsockopt(zmq.LINGER, 0)
    port = server.bind_to_random_port("tcp://127.0.0.1")
    requests: list[bytes] = []

    def serve() -> None:
        while len(requests) < 2 and server.poll(10_000):
            identity, _, request = server.recv_multipart()
            requests.append(request)
            if len(requests) == 2:  # the first request is never answered
                header = msgspec.json.encode(ReplayHeader("tick_WDOFUT", 5, 2, 1, 6))
                server.send_multipart([identity, b"", header, b"five", b"six"])

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    client = ReplayClient(f"tcp://127.0.0.1:{port}", timeout_ms=200)
    try:
        assert client.fetch("tick_WDOFUT", 5, 6) == (5, [b"five", b"six"])
    finally:
        client.close()
        thread.join(10)
        server.close()
    assert len(requests) == 2
