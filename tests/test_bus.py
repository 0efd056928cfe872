from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import msgspec
import pytest
import zmq

from factories import BASE_MS, ticks
from tickvault.bus.ingest import Ingest
from tickvault.bus.publisher import Publisher
from tickvault.bus.ring import Ring
from tickvault.bus.subscriber import Subscriber
from tickvault.domain.events import decode_tick, encode
from tickvault.domain.keys import tick_topic
from tickvault.errors import BusError


@pytest.fixture
def publisher() -> Iterator[Publisher]:
    pub = Publisher("tcp://127.0.0.1:*")
    yield pub
    pub.close()


def _receive(sub: zmq.Socket, n: int, timeout_s: float = 30) -> list[list[bytes]]:
    got: list[list[bytes]] = []
    deadline = time.monotonic() + timeout_s
    while len(got) < n and time.monotonic() < deadline:
        if sub.poll(100):
            got.append(sub.recv_multipart())
    return got


def test_plain_pyzmq_sub_receives_topic_and_json(publisher: Publisher) -> None:
    ctx = zmq.Context.instance()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.connect(publisher.endpoint)
    sub.setsockopt(zmq.SUBSCRIBE, b"tick_WDO")
    assert publisher.wait_for_subscriber("tick_WDOFUT", timeout=10)
    ingest = Ingest(publisher)
    sent = ticks(50) + ticks(5, symbol="WINFUT")
    for t in sent:
        ingest.on_tick(t)
    got = _receive(sub, 50)
    sub.close()
    assert [frames[0] for frames in got] == [b"tick_WDOFUT"] * 50
    payloads = [msgspec.json.decode(frames[1]) for frames in got]
    assert [p["seq"] for p in payloads] == list(range(1, 51))
    assert set(payloads[0]) == {
        "symbol",
        "timestamp",
        "timestamp_ms",
        "trade_id",
        "price",
        "volume",
        "quantity",
        "buyer",
        "seller",
        "trade_type",
        "aggressor",
        "is_edit",
        "seq",
    }
    assert payloads[0]["timestamp"] == "2025-11-24T13:00:00-03:00"
    assert [decode_tick(f[1]).trade_id for f in got] == [t.trade_id for t in sent[:50]]


def test_subscription_handshake_replaces_sleeping(publisher: Publisher) -> None:
    assert not publisher.wait_for_subscriber("tick_X", timeout=0.05)
    sub = Subscriber(publisher.endpoint, ["tick_"])
    try:
        assert publisher.wait_for_subscriber("tick_X", timeout=10)
        publisher.publish("tick_X", b'{"seq": 1}')
        deadline = time.monotonic() + 10
        got: list[list[bytes]] = []
        while not got and time.monotonic() < deadline:
            got = sub.receive(timeout_ms=100)
        assert got == [[b"tick_X", b'{"seq": 1}']]
    finally:
        sub.close()


def test_subscriber_counts_sequence_gaps_per_topic(publisher: Publisher) -> None:
    sub = Subscriber(publisher.endpoint, ["tick_"])
    try:
        assert publisher.wait_for_subscriber("tick_A", timeout=10)
        for topic, seq in [
            ("tick_A", 1),
            ("tick_A", 2),
            ("tick_B", 1),
            ("tick_A", 5),
            ("tick_B", 2),
            ("tick_A", 6),
        ]:
            publisher.publish(topic, b'{"seq": %d}' % seq)
        received = 0
        deadline = time.monotonic() + 10
        while received < 6 and time.monotonic() < deadline:
            received += len(sub.receive(timeout_ms=100))
        assert received == 6
        assert (sub.stats.gaps, sub.stats.missing) == (1, 2)
        assert sub.stats.last_seq == {"tick_A": 6, "tick_B": 2}
    finally:
        sub.close()


def test_binding_a_taken_port_is_a_bus_error(publisher: Publisher) -> None:
    with pytest.raises(BusError, match="cannot bind"):
        Publisher(publisher.endpoint)


def test_publish_from_callback_thread_never_raises_and_keeps_order(publisher: Publisher) -> None:
    sub = Subscriber(publisher.endpoint, ["tick_"])
    try:
        assert publisher.wait_for_subscriber("tick_WDOFUT", timeout=10)
        ingest = Ingest(publisher)
        sent = ticks(2000)
        thread = threading.Thread(target=lambda: [ingest.on_tick(t) for t in sent])
        thread.start()
        thread.join(30)
        frames: list[list[bytes]] = []
        deadline = time.monotonic() + 30
        while len(frames) < 2000 and time.monotonic() < deadline:
            frames += sub.receive(timeout_ms=100)
        assert [decode_tick(f[1]).seq for f in frames] == list(range(1, 2001))
        assert sub.stats.gaps == 0
    finally:
        sub.close()


def test_failing_handler_does_not_stop_others_or_publisher(publisher: Publisher) -> None:
    seen: list[int] = []

    def broken(_: object) -> None:
        raise RuntimeError("boom")

    ingest = Ingest(publisher, handlers=[broken, lambda t: seen.append(t.seq)])
    for t in ticks(3):
        ingest.on_tick(t)
    assert seen == [1, 2, 3]
    assert ingest.stats.handler_errors == 3
    assert publisher.flush(10)
    assert publisher.stats.published == 3


def test_sequence_numbers_are_per_topic() -> None:
    seen: list[tuple[str, int]] = []
    ingest = Ingest(handlers=[lambda t: seen.append((t.symbol, t.seq))])
    for t in [*ticks(2), *ticks(1, symbol="WINFUT"), *ticks(1, start_ms=BASE_MS + 5)]:
        ingest.on_tick(t)
    assert seen == [("WDOFUT", 1), ("WDOFUT", 2), ("WINFUT", 1), ("WDOFUT", 3)]
    assert ingest.last_seq == {"WDOFUT": 3, "WINFUT": 1}
    assert tick_topic("WDOFUT") == "tick_WDOFUT"
    assert encode(ticks(1)[0]).startswith(b'{"symbol":"WDOFUT"')


def test_source_faster_than_the_socket_overflows_to_the_spool_in_order(tmp_path: object) -> None:
    from pathlib import Path

    pub = Publisher("tcp://127.0.0.1:*", max_queue=100, spool_path=Path(str(tmp_path)) / "pub.spool")
    sub = Subscriber(pub.endpoint, ["tick_"])
    try:
        assert pub.wait_for_subscriber("tick_WDOFUT", timeout=10)
        ingest = Ingest(pub)
        for t in ticks(20_000):
            ingest.on_tick(t)  # a tight loop outruns the publisher thread
        frames: list[list[bytes]] = []
        deadline = time.monotonic() + 60
        while len(frames) < 20_000 and time.monotonic() < deadline:
            frames += sub.receive(timeout_ms=100)
        assert pub.stats.overflowed > 0
        assert [decode_tick(f[1]).seq for f in frames] == list(range(1, 20_001))
        assert pub.pending() == 0
    finally:
        sub.close()
        pub.close()


def test_the_replay_ring_keeps_at_most_its_bytes_and_replies_in_bounded_pieces() -> None:
    ring = Ring(capacity=100, max_bytes=1000)  # a topic's frames may be large (a book frame of many batches)
    for seq in range(1, 11):
        ring.append(b"book_X", seq, b"x" * 300)
    header, *payloads = ring.answer(b'{"topic": "book_X", "from": 1, "to": 10}')
    assert msgspec.json.decode(header) == {
        "topic": "book_X",
        "from": 8,
        "count": 3,
        "oldest": 8,
        "newest": 10,
    }
    assert len(payloads) == 3
    big = Ring(capacity=10)
    for seq in (1, 2, 3):
        big.append(b"book_X", seq, bytes(7 << 20))
    header, *payloads = big.answer(b'{"topic": "book_X", "from": 1, "to": 3}')
    assert msgspec.json.decode(header)["count"] == len(payloads) == 2  # 16 MiB a reply: the rest asked next
