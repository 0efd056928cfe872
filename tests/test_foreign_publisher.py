"""Data from strangers on the tick port: a publisher not written with tickvault (a user's own ProfitDLL
bridge: a plain pyzmq PUB, its own numbering or none, no replay endpoint) mixing invalid frames, some
with absurd sequence numbers, into valid ticks. Every valid tick is stored, at once; an invalid frame
is rejected, counted by reason, dead-lettered, and changes nothing else."""

from __future__ import annotations

import itertools
import json
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import msgspec
import pytest
import valkey
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import running_recorder, subprocess_env, wait_until
from tickvault.bus.envelope import endpoint
from tickvault.bus.publisher import Publisher
from tickvault.bus.subscriber import Subscriber
from tickvault.recorder.frames import valid_seqs
from tickvault.recorder.recorder import Recorder
from tickvault.store.api import Store
from tickvault.store.server import free_port

SESSION = datetime(2024, 1, 2, 9, 0, tzinfo=timezone(timedelta(hours=-3)))
SESSION_MS = int(SESSION.timestamp()) * 1000  # whole seconds: exact


def foreign_tick(symbol: str, trade_id: int, seq: int, **changes: object) -> bytes:
    """A tick as a bridge not written with tickvault sends it: json.dumps, its own `seq`. Everything
    but `seq` is a function of the trade, so a repeat is the same trade."""
    ms = SESSION_MS + 137 * trade_id
    price = 5000.0 + 0.5 * (trade_id % 17)
    quantity = 1 + trade_id % 5
    tick = {
        "symbol": symbol,
        "timestamp": (SESSION + timedelta(milliseconds=137 * trade_id)).isoformat(timespec="milliseconds"),
        "timestamp_ms": ms,
        "trade_id": trade_id,
        "price": price,
        "volume": price * quantity * 10.0,
        "quantity": quantity,
        "buyer": 3,
        "seller": 8,
        "trade_type": 2 + trade_id % 2,
        "aggressor": "buy" if trade_id % 2 == 0 else "sell",
        "is_edit": False,
        "seq": seq,
    }
    tick.update(changes)
    return json.dumps(tick).encode()


def invalid_frames(symbol: str, trade_id: int, seq: int) -> list[tuple[str, list[bytes]]]:
    """(reason the recorder gives, frames): one of each kind of bad input, numbered `seq` where the
    frame has a number at all."""
    topic = f"tick_{symbol}".encode()
    noise = random.Random(seq).randbytes(24)
    return [
        ("json", [topic, b"\x8f\x00" + noise]),
        ("json", [topic, foreign_tick(symbol, trade_id, seq)[:40]]),
        ("json", [topic, foreign_tick(symbol, trade_id, seq, price=float("nan"))]),  # NaN is not JSON
        ("price", [topic, foreign_tick(symbol, trade_id, seq, price=-5.0)]),
        ("symbol", [topic, foreign_tick(symbol.replace("F", " F", 1), trade_id, seq)]),
    ]


def _stored(store: Store, symbol: str) -> list[tuple[int, float, int, int]]:
    return [(t.trade_id, t.price, t.quantity, t.timestamp_ms) for t in store.tick_events(symbol, 0, 2**42)]


def _expected(symbol: str, trade_id: int) -> tuple[int, float, int, int]:
    wire = msgspec.json.decode(foreign_tick(symbol, trade_id, 0))
    return (trade_id, wire["price"], wire["quantity"], wire["timestamp_ms"])


@pytest.fixture
def stranger() -> Iterator[zmq.Socket]:
    """A publisher socket not written with tickvault (XPUB: a PUB that shows us its subscribers)."""
    sock = zmq.Context.instance().socket(zmq.XPUB)
    sock.setsockopt(zmq.LINGER, 0)
    sock.bind_to_random_port("tcp://127.0.0.1")
    yield sock
    sock.close(0)


def _subscribed(sock: zmq.Socket) -> bool:
    return bool(sock.poll(10_000)) and sock.recv()[:1] == b"\x01"


def test_a_foreign_publisher_mixing_invalid_frames_with_absurd_numbers_loses_no_valid_tick(
    system_env: dict[str, str], store: Store, valkey_client: valkey.Valkey, tmp_path: Path
) -> None:
    """The issue's scenario: 400 valid ticks numbered 1..400 on a plain PUB, and after every 20th one
    five invalid frames, the parseable ones numbered 10,000+; nothing answers on the replay port. The
    old recorder declared a gap of 9,999, waited ~30 s on the replay port with the batch unstored,
    then would drop ticks below 10,000 as duplicates: 0 of 400 stored."""
    symbol = "WDOF24"
    topic = f"tick_{symbol}".encode()
    pub = zmq.Context.instance().socket(zmq.PUB)
    pub.setsockopt(zmq.LINGER, 0)
    pub.bind(endpoint("127.0.0.1", int(system_env["ZMQ_TICK_PORT"])))
    proc = subprocess.Popen(
        [sys.executable, "-m", "tickvault", "run", "--only", "recorder", "--no-dashboard"],
        env=subprocess_env(system_env),
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    expected_reasons: Counter[str] = Counter()
    try:
        # a plain PUB cannot see its subscribers: probe (bad frames, told apart by their payload)
        # until the recorder dead-letters one
        probes = itertools.count()

        def recording() -> bool:
            pub.send_multipart([topic, b"probe %d" % next(probes)])
            return bool(valkey_client.xlen("tv:deadletter"))

        assert wait_until(recording, timeout=60), "the recorder never subscribed"
        numbered = itertools.count(10_001)
        for seq in range(1, 401):
            pub.send_multipart([topic, foreign_tick(symbol, seq, seq)])
            if seq % 20 == 0:
                for reason, frames in invalid_frames(symbol, 5000 + seq, next(numbered)):
                    pub.send_multipart(frames)
                    expected_reasons[reason] += 1
        assert wait_until(lambda: store.count(symbol) >= 400, timeout=5), (
            f"{store.count(symbol)} of 400 stored 5 s after they were sent"
        )

        def rejected() -> Counter[str]:
            return Counter(
                fields[b"field"].decode()
                for _, fields in valkey_client.xrange("tv:deadletter")
                if not fields[b"payload"].startswith(b"probe")
            )

        assert wait_until(lambda: rejected() == expected_reasons, timeout=10), rejected()
        assert proc.poll() is None, "the recorder died"

        def health() -> dict[bytes, bytes]:
            keys = valkey_client.keys("tv:health:recorder@*")
            return valkey_client.hgetall(keys[0]) if keys else {}  # type: ignore[no-any-return]

        # the counters by reason, as `tickvault monitor` and Prometheus see them
        assert wait_until(
            lambda: (
                health().get(b"rejected_price") == b"20"
                and health().get(b"rejected_symbol") == b"20"
                and health().get(b"stored") == b"400"
            ),
            timeout=10,
        ), health()
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            out, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        pub.close(0)
    assert _stored(store, symbol) == [_expected(symbol, n) for n in range(1, 401)]  # none invalid
    assert proc.returncode == 0, err[-3000:]
    assert "stored=400 " in out and "drained=yes" in out, out
    assert f"rejected_price={expected_reasons['price']}" in out, out


def test_a_gap_nobody_can_fill_does_not_hold_up_storing(
    stranger: zmq.Socket, store: Store, tmp_path: Path
) -> None:
    """A gap in a valid publisher's numbering, and a replay endpoint that never answers: the ticks
    after the gap are stored within seconds (the old Subscriber asked 4 times over ~30 s first),
    the fill goes on beside, and a stop gives it up (counted) instead of waiting it out."""
    symbol = "WDOF24"
    dead = endpoint("127.0.0.1", free_port())  # nothing listens here
    sub = Subscriber(stranger.getsockopt_string(zmq.LAST_ENDPOINT), ["tick_"], replay=dead, ordered=False)
    try:
        with running_recorder(store, sub, spool_path=tmp_path / "spool") as recorder:
            assert _subscribed(stranger)
            numbers = [*range(1, 11), *range(40, 51)]
            for n in numbers:
                stranger.send_multipart([f"tick_{symbol}".encode(), foreign_tick(symbol, n, n)])
            assert wait_until(lambda: store.count(symbol) == len(numbers), timeout=5)
            assert sub.filling(), "the fill should still be asking the dead endpoint"
            assert not recorder.caught_up({symbol: 50}), "a fill under way is not caught up"
            stopping = time.monotonic()
        assert time.monotonic() - stopping < 20  # the stop gave the fill up (the old one waited 30 s)
    finally:
        sub.close()
    assert _stored(store, symbol) == [_expected(symbol, n) for n in numbers]
    assert (sub.stats.gaps, sub.stats.missing, sub.stats.unrecovered) == (1, 29, 29)


def test_a_fill_from_a_live_ring_is_stored_before_the_ticks_after_the_gap(
    store: Store, valkey_client: valkey.Valkey, tmp_path: Path
) -> None:
    """When the replay ring answers (in milliseconds), the ticks after a gap wait for the fill, so
    the stream holds each topic's numbers as a prefix: a recorder killed at any moment resumes from
    the highest stored number without skipping the gap."""
    symbol = "WDOF24"
    pub = Publisher("tcp://127.0.0.1:*", replay_bind="tcp://127.0.0.1:*")
    for n in range(1, 101):
        pub.publish(f"tick_{symbol}", foreign_tick(symbol, n, n))  # before anyone listens
    flushed = pub.flush(10)
    sub = Subscriber(pub.endpoint, ["tick_"], replay=pub.replay_endpoint, ordered=False)
    sub.prime({f"tick_{symbol}": 0})  # it has nothing: the first message it sees shows the gap
    try:
        assert flushed
        with running_recorder(store, sub, spool_path=tmp_path / "spool") as recorder:
            assert pub.wait_for_subscriber("tick_", timeout=10)
            for n in range(101, 111):
                pub.publish(f"tick_{symbol}", foreign_tick(symbol, n, n))
            assert wait_until(lambda: recorder.caught_up({symbol: 110}), timeout=10)
    finally:
        sub.close()
        pub.close()
    in_stream_order = [int(f[b"seq"]) for _, f in valkey_client.xrange(f"stream:ticks:{symbol}")]
    assert in_stream_order == list(range(1, 111))
    assert sub.stats.recovered_replay == 100 and recorder.stats.late == 0


def test_an_ordered_consumer_ignores_the_number_of_an_invalid_frame(stranger: zmq.Socket) -> None:
    """A consumer that wants each tick once and in order (the features `--consume` flow) checks
    frames before their numbers count: an invalid frame numbered 10,000 must not make the valid
    ticks after it look like duplicates. A real repeat is still dropped."""
    symbol = "WDOF24"
    topic = f"tick_{symbol}".encode()
    sub = Subscriber(stranger.getsockopt_string(zmq.LAST_ENDPOINT), ["tick_"], validate=valid_seqs)
    try:
        assert _subscribed(stranger)
        for n in range(1, 6):
            stranger.send_multipart([topic, foreign_tick(symbol, n, n)])
        bad = foreign_tick(symbol, 999, 10_000, price=-1.0)
        stranger.send_multipart([topic, bad])
        for n in [*range(6, 11), 3]:
            stranger.send_multipart([topic, foreign_tick(symbol, n, n)])
        got: list[list[bytes]] = []

        def received_all() -> bool:
            got.extend(sub.receive(timeout_ms=50))
            return len(got) >= 11

        assert wait_until(received_all, timeout=10)
    finally:
        sub.close()
    assert got[5] == [topic, bad]  # passed through unnumbered: the consumer rejects it
    assert [msgspec.json.decode(f[1])["seq"] for i, f in enumerate(got) if i != 5] == list(range(1, 11))
    assert (sub.stats.gaps, sub.stats.duplicates, sub.stats.last_seq) == (0, 1, {"tick_WDOF24": 10})


def _receive(sub: Subscriber, n: int) -> list[list[bytes]]:
    got: list[list[bytes]] = []

    def received() -> bool:
        got.extend(sub.receive(timeout_ms=50))
        return len(got) >= n

    assert wait_until(received, timeout=10), got
    return got


# what a stranger may put on `hb.tick_X`, with the reason it is rejected ("" for a sane number)
STRANGE_HEARTBEATS = [
    (b'{"seq":1000000000000}', "ahead"),
    (b'{"seq":-5}', "negative"),
    (b'{"seq":7.5}', "seq"),
    (b'{"seq":"9"}', "seq"),
    (b'{"seq":true}', "seq"),
    (b"[1]", "seq"),
    (b"\x8f not json", "json"),
    (b'{"seq":%d}', ""),  # a few ahead of the frames: plausible, but nothing proves it
]


def test_an_ordered_consumer_is_not_moved_by_a_strangers_heartbeats(stranger: zmq.Socket) -> None:
    """Valid ticks 1..16, each followed by a stranger's heartbeat: absurd ones (far ahead, negative,
    not an integer, not JSON) and plausible ones three ahead. A heartbeat's number proves nothing,
    so every valid tick is delivered once and in order, and each absurd one is counted by reason.
    The old consumer took the first heartbeat (10^12) as its position and dropped every tick after."""
    symbol = "WDOF24"
    topic = f"tick_{symbol}".encode()
    sub = Subscriber(stranger.getsockopt_string(zmq.LAST_ENDPOINT), ["tick_"], validate=valid_seqs)
    expected: Counter[str] = Counter()
    try:
        assert _subscribed(stranger)
        for n in range(1, 17):
            stranger.send_multipart([topic, foreign_tick(symbol, n, n)])
            payload, reason = STRANGE_HEARTBEATS[(n - 1) % len(STRANGE_HEARTBEATS)]
            stranger.send_multipart([b"hb." + topic, payload % (n + 3) if not reason else payload])
            expected.update([reason] if reason else [])
        got = _receive(sub, 16)
    finally:
        sub.close()
    assert [msgspec.json.decode(f[1])["seq"] for f in got] == list(range(1, 17))
    assert sub.stats.heartbeats_rejected == expected
    assert (sub.stats.duplicates, sub.stats.last_seq) == (0, {topic.decode(): 16})


def test_a_heartbeat_fill_moves_an_ordered_consumer_only_as_far_as_the_ring_proves(
    stranger: zmq.Socket,
) -> None:
    """A heartbeat is a hint to look for a lost tail: the replay endpoint is asked, what comes back
    valid is delivered (and moves the position), the rest of the heartbeat's claim moves nothing.
    The ring holds ticks 1..5; the wire carries 1..3, a heartbeat claiming 50, then 4..9."""
    symbol = "WDOF24"
    topic = f"tick_{symbol}".encode()
    ring = Publisher("tcp://127.0.0.1:*", replay_bind="tcp://127.0.0.1:*")
    for n in range(1, 6):
        ring.publish(topic.decode(), foreign_tick(symbol, n, n))
    flushed = ring.flush(10)
    sub = Subscriber(
        stranger.getsockopt_string(zmq.LAST_ENDPOINT), ["tick_"], replay=ring.replay_endpoint,
        validate=valid_seqs,
    )  # fmt: skip
    try:
        assert flushed and _subscribed(stranger)
        for n in range(1, 4):
            stranger.send_multipart([topic, foreign_tick(symbol, n, n)])
        stranger.send_multipart([b"hb." + topic, b'{"seq":50}'])
        got = _receive(sub, 5)  # 1..3 from the wire, 4..5 from the ring
        assert sub.stats.last_seq == {topic.decode(): 5}
        for n in range(4, 10):
            stranger.send_multipart([topic, foreign_tick(symbol, n, n)])
            stranger.send_multipart([b"hb." + topic, b'{"seq":50}'])
        got += _receive(sub, 4)
    finally:
        sub.close()
        ring.close()
    assert [msgspec.json.decode(f[1])["seq"] for f in got] == list(range(1, 10))
    assert (sub.stats.recovered_replay, sub.stats.duplicates) == (2, 2)  # 4 and 5 came twice
    assert sub.stats.last_seq == {topic.decode(): 9} and not sub.stats.heartbeats_rejected


# -- any interleaving ------------------------------------------------------------------------------

SYMBOLS = ("WDOF24", "WINF24")
NEXT = -1  # "the publisher's previous number + 1"
numbering = st.one_of(st.just(NEXT), st.just(1), st.integers(0, 50_000), st.integers(10_000, 10**12))
valid = st.tuples(st.just("valid"), st.sampled_from(SYMBOLS), st.integers(1, 25), numbering)
invalid = st.tuples(st.just("invalid"), st.sampled_from(SYMBOLS), st.integers(0, 4), st.integers(0, 10**12))
heartbeat = st.tuples(st.just("heartbeat"), st.sampled_from(SYMBOLS), st.just(0), st.integers(0, 10**12))
_examples = itertools.count()


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    events=st.lists(st.one_of(valid, valid, invalid, heartbeat), min_size=3, max_size=60),
    via_ring=st.booleans(),
)
def test_any_interleaving_of_valid_and_invalid_frames_stores_exactly_the_distinct_valid_ticks(
    valkey_client: valkey.Valkey, tmp_path: Path, events: list[tuple[str, str, int, int]], via_ring: bool
) -> None:
    """Valid ticks numbered any way (in order, repeated, restarted, jumping), repeats of a trade,
    invalid frames and heartbeats with absurd numbers, in any order; from a stranger's socket with no
    replay endpoint, or from a tickvault Publisher whose ring and heartbeats carry the invalid frames'
    numbers too. The store ends up with exactly the distinct valid trades."""
    valkey_client.flushall()
    store = Store(valkey_client)
    ctx = zmq.Context.instance()
    publisher: Publisher | None = None
    raw: zmq.Socket | None = None
    if via_ring:
        publisher = Publisher("tcp://127.0.0.1:*", replay_bind="tcp://127.0.0.1:*")
        sub = Subscriber(publisher.endpoint, ["tick_"], replay=publisher.replay_endpoint, ordered=False)
    else:
        raw = ctx.socket(zmq.XPUB)
        raw.setsockopt(zmq.LINGER, 0)
        raw.bind_to_random_port("tcp://127.0.0.1")
        sub = Subscriber(raw.getsockopt_string(zmq.LAST_ENDPOINT), ["tick_"], ordered=False)
    spool = tmp_path / f"spool-{next(_examples)}"

    def send(frames: list[bytes]) -> None:
        if publisher is not None:
            publisher.publish(frames[0].decode(), frames[1])
        else:
            assert raw is not None
            raw.send_multipart(frames)

    expected: dict[str, set[int]] = {s: set() for s in SYMBOLS}
    invalid_sent = 0
    try:
        with running_recorder(store, sub, spool_path=spool) as recorder:
            if publisher is not None:
                assert publisher.wait_for_subscriber("tick_", timeout=10)
            else:
                assert raw is not None and _subscribed(raw)
            last = dict.fromkeys(SYMBOLS, 0)
            for kind, symbol, n, seq in events:
                topic = f"tick_{symbol}".encode()
                if kind == "valid":
                    seq = last[symbol] + 1 if seq == NEXT else seq
                    last[symbol] = seq
                    send([topic, foreign_tick(symbol, n, seq)])
                    expected[symbol].add(n)
                elif kind == "invalid":
                    send(invalid_frames(symbol, 1000 + n, seq)[n][1])
                    invalid_sent += 1
                else:
                    send([b"hb." + topic, b'{"seq":%d}' % seq])

            def all_stored() -> bool:
                return all(store.count(s) >= len(expected[s]) for s in SYMBOLS) and (
                    recorder.stats.rejected_total >= invalid_sent
                )

            assert wait_until(all_stored, timeout=10)
    finally:
        sub.close()
        if publisher is not None:
            publisher.close()
        if raw is not None:
            raw.close(0)
    for symbol in SYMBOLS:
        assert _stored(store, symbol) == sorted(_expected(symbol, n) for n in expected[symbol])
    if not via_ring:  # a ring's fills may bring an invalid frame back: rejected again
        assert recorder.stats.rejected_total == invalid_sent
    assert recorder.stats.stored_total == sum(map(len, expected.values()))


def test_the_recorder_refuses_an_ordered_subscriber(store: Store) -> None:
    """An ordered Subscriber drops valid ticks for their numbers: the recorder must not use one."""
    sub = Subscriber(endpoint("127.0.0.1", free_port()), ["tick_"])
    try:
        with pytest.raises(ValueError, match="ordered=False"):
            Recorder(store).run(sub, threading.Event())
    finally:
        sub.close()
