"""The order book from ingest over the bus (`book_{SYMBOL}` frames) through the book recorder into
Valkey: everything sent comes back, once, under the tick path's faults (a stalled subscriber past the
high-water mark, Valkey killed mid-stream, the recorder process killed mid-stream), and bad frames
are rejected, counted and dead-lettered with nothing else lost."""

from __future__ import annotations

import contextlib
import functools
import itertools
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import msgspec
import pytest
import valkey
import zmq

from conftest import subprocess_env, wait_until
from tickvault.bus.book_framing import BookFramer
from tickvault.bus.envelope import endpoint
from tickvault.bus.ingest import Ingest
from tickvault.bus.publisher import Publisher
from tickvault.bus.subscriber import Subscriber
from tickvault.domain.book import BookBatch, BookColumns, BookFrame, BookKind
from tickvault.domain.events import B3_TZ, encode
from tickvault.recorder.book_recorder import BookRecorder
from tickvault.sources.book_simulator import BookMarketSimulator
from tickvault.store.api import Store
from tickvault.store.server import EmbeddedValkey

SYMBOL = "WDOFUT"
OPEN = datetime(2025, 11, 24, 9, 0, tzinfo=B3_TZ)


@functools.cache
def _session(kind: BookKind, items: int) -> tuple[BookBatch, ...]:
    sim = BookMarketSimulator([SYMBOL], kind=kind, seed=11, start=OPEN)
    return tuple(b for b in itertools.islice(sim.events(), items) if isinstance(b, BookBatch))


def session(kind: BookKind = "mbo", items: int = 4000) -> list[BookBatch]:
    """Fresh copies (ingest numbers the events in place) of a simulated session's book batches."""
    return [BookBatch(msgspec.structs.replace(e) for e in batch) for batch in _session(kind, items)]


def columns(batches: Sequence[BookBatch]) -> BookColumns:
    return BookColumns.from_events([e for b in batches for e in b])


@contextlib.contextmanager
def running_book_recorder(
    store: Store, subscriber: Subscriber | None, tmp_path: Path, **kwargs: Any
) -> Iterator[BookRecorder]:
    recorder = BookRecorder(store, spool_path=tmp_path / "book.spool", writer_name="book@test", **kwargs)
    stop = threading.Event()
    thread = threading.Thread(target=recorder.run, args=(subscriber, stop), daemon=True)
    thread.start()
    try:
        yield recorder
    finally:
        stop.set()
        thread.join(30)


@pytest.fixture
def book_publisher() -> Iterator[Publisher]:
    pub = Publisher("tcp://127.0.0.1:*", replay_bind="tcp://127.0.0.1:*")
    yield pub
    pub.close()


def _subscriber(pub: Publisher, **kwargs: Any) -> Subscriber:
    return Subscriber(pub.endpoint, ["book_"], replay=pub.replay_endpoint, ordered=False, **kwargs)


def _assert_exactly_once(store: Store, sent: Sequence[BookBatch]) -> None:
    stored = store.book_update_columns(SYMBOL, 0, 2**62)
    want = columns(sent)
    assert len(stored) == len(want), f"{len(want) - len(stored)} updates lost"
    assert stored.equals(want)


@pytest.mark.parametrize("kind", ["mbo", "mbp"])
def test_book_batches_through_bus_and_recorder_come_back_exactly_as_sent(
    store: Store, book_publisher: Publisher, tmp_path: Path, kind: BookKind
) -> None:
    sub = _subscriber(book_publisher)
    try:
        with running_book_recorder(store, sub, tmp_path) as recorder:
            assert book_publisher.wait_for_subscriber("book_", 10)
            ingest = Ingest()
            ingest.book_publisher = book_publisher
            sent = session(kind)
            for batch in sent:
                ingest.on_book(batch)
            assert wait_until(lambda: recorder.caught_up(ingest.produced_book()))
            assert recorder.stats.rejected_total == 0 and sub.stats.unrecovered == 0
        _assert_exactly_once(store, sent)
        position = store.book_position(SYMBOL)
        frames = book_publisher.framer.last[b"book_WDOFUT"]
        assert (position.frame, position.seq) == (frames, sent[-1][-1].seq) and frames <= len(sent)
    finally:
        sub.close()


def test_a_foreign_subscriber_reads_book_frames_as_json(book_publisher: Publisher) -> None:
    context = zmq.Context.instance()
    sock = context.socket(zmq.SUB)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        sock.connect(book_publisher.endpoint)
        sock.setsockopt(zmq.SUBSCRIBE, b"book_")
        assert book_publisher.wait_for_subscriber("book_", 10)
        ingest = Ingest()
        ingest.book_publisher = book_publisher
        sent = session()[:300]
        for batch in sent:
            ingest.on_book(batch)  # the batches queued together when the publisher sends share a frame
        got = []
        while sum(len(f["events"]) for _, f in got) < len(columns(sent)):
            assert sock.poll(10_000)
            topic, payload = sock.recv_multipart()
            if not topic.startswith(b"hb."):
                got.append((topic, json.loads(payload)))
        assert {t for t, _ in got} == {b"book_WDOFUT"}
        assert [f["seq"] for _, f in got] == list(range(1, len(got) + 1))  # frames counted per topic
        events = [e for _, f in got for e in f["events"]]
        assert [e["seq"] for e in events] == list(range(1, len(events) + 1))  # updates counted per symbol
        ends = [i + 1 for i, e in enumerate(events) if e["flags"] & 1]  # a batch ends at its LAST event
        assert ends == list(itertools.accumulate(len(b) for b in sent))
        assert all(f["events"][-1]["flags"] & 1 for _, f in got)  # never a batch split across frames
        assert {f["kind"] for _, f in got} == {"mbo"} and events[0]["action"] == "clear"
        assert set(events[0]) >= {
            "symbol",
            "timestamp",
            "side",
            "price",
            "order_id",
        }
    finally:
        sock.close()


def numbered(batches: list[BookBatch]) -> list[BookBatch]:
    """The batches numbered as ingest numbers them (in place)."""
    ingest = Ingest()
    for batch in batches:
        ingest.on_book(batch)
    return batches


def test_bad_book_frames_are_rejected_counted_dead_lettered_and_nothing_else_lost(
    store: Store, book_publisher: Publisher, tmp_path: Path
) -> None:
    sent = numbered(session("mbo", 1500))
    good = [encode(BookFrame(seq=i + 1, symbol=SYMBOL, kind="mbo", events=b)) for i, b in enumerate(sent)]
    e = sent[50][-1]
    jump = [msgspec.structs.replace(e, seq=10**6, flags=0), msgspec.structs.replace(e, seq=10**6 + 2)]
    unnumbered = functools.partial(BookFrame, seq=0, symbol=SYMBOL)  # a bad frame's number counts for nothing
    bad = {
        "json": b"{not json",
        "quantity": good[5].replace(b'"quantity":', b'"quantity":-', 1),
        "seq": encode(unnumbered(kind="mbo", events=jump)),
        "flags": encode(unnumbered(kind="mbo", events=[msgspec.structs.replace(e, seq=10**6, flags=0)])),
        "action": good[8].replace(b'"action":"', b'"action":"x', 1),
        "topic": good[9],  # sent on another symbol's topic
        "symbol": good[10].replace(b'"symbol":"WDOFUT"', b'"symbol":"WDO FUT"', 1),
        "kind": encode(unnumbered(kind="mbp", events=numbered(session("mbp", 50))[0])),  # an MBO book
    }
    sub = _subscriber(book_publisher)
    try:
        with running_book_recorder(store, sub, tmp_path) as recorder:
            assert book_publisher.wait_for_subscriber("book_", 10)
            for i, payload in enumerate(good):
                book_publisher.publish(f"book_{SYMBOL}", payload)
                if i == 100:  # the bad ones in the middle of the stream
                    for name, wrong in bad.items():
                        book_publisher.publish("book_WINFUT" if name == "topic" else f"book_{SYMBOL}", wrong)
            assert wait_until(lambda: recorder.caught_up({SYMBOL: sent[-1][-1].seq}))
            assert wait_until(lambda: recorder.stats.rejected_total == len(bad))
        _assert_exactly_once(store, sent)
        assert set(recorder.stats.rejected) == set(bad)
        assert store.client.xlen(store.keys.dead_letters()) == len(bad)
        assert sub.stats.gaps == 0
    finally:
        sub.close()


def test_frames_of_several_batches_are_recorded_and_a_bad_batch_costs_only_itself(
    store: Store, book_publisher: Publisher, tmp_path: Path
) -> None:
    sent = numbered(session("mbo", 1500))
    framer = BookFramer(max_updates=30)
    frames = [json.loads(p) for _, p, _ in framer.messages([(b"book_WDOFUT", b) for b in sent])]
    # a frame of several batches in the middle of the stream: its second batch goes bad
    at = next(i for i, f in enumerate(frames) if i > len(frames) // 2 and len(f["events"]) >= 4)
    events = frames[at]["events"]
    second = next(i for i, e in enumerate(events) if e["flags"] & 1) + 1
    assert second < len(events)
    events[second]["price"] = -1.0
    lost = next(b for b in sent if b[0].seq == events[second]["seq"])
    sub = _subscriber(book_publisher)
    try:
        with running_book_recorder(store, sub, tmp_path) as recorder:
            assert book_publisher.wait_for_subscriber("book_", 10)
            for frame in frames:
                book_publisher.publish(f"book_{SYMBOL}", json.dumps(frame).encode())
            assert wait_until(lambda: recorder.caught_up({SYMBOL: sent[-1][-1].seq}))
            assert wait_until(lambda: recorder.stats.rejected_total == 1)
        _assert_exactly_once(store, [b for b in sent if b is not lost])
        assert recorder.stats.rejected == {"price": 1} and store.client.xlen(store.keys.dead_letters()) == 1
        assert sub.stats.gaps == 0  # the frame with the bad batch counted: no gap, nothing asked again
        assert store.book_position(SYMBOL).frame == len(frames) < len(sent) // 2
    finally:
        sub.close()


def test_a_stalled_recorder_past_the_high_water_mark_loses_nothing(store: Store, tmp_path: Path) -> None:
    pub = Publisher("tcp://127.0.0.1:*", replay_bind="tcp://127.0.0.1:*", sndhwm=5)
    pub.framer.max_updates = 50  # frames of several batches, yet more of them than the wire holds
    sub = _subscriber(pub, rcvhwm=5)
    try:
        assert pub.wait_for_subscriber("book_", 10)
        sub.prime({f"book_{SYMBOL}": 0})
        ingest = Ingest()
        ingest.book_publisher = pub
        sent = session("mbo", 6000)
        for batch in sent:
            ingest.on_book(batch)  # nobody reads meanwhile: the high-water marks drop frames
        assert pub.flush(30)
        with running_book_recorder(store, sub, tmp_path) as recorder:
            assert wait_until(lambda: recorder.caught_up(ingest.produced_book()), timeout=90)
        assert sub.stats.gaps > 0 and sub.stats.unrecovered == 0
        _assert_exactly_once(store, sent)
    finally:
        sub.close()
        pub.close()


def test_valkey_killed_and_restarted_mid_stream_loses_no_book_update(tmp_path: Path) -> None:
    server = EmbeddedValkey(tmp_path / "valkey")
    info = server.ensure_running()
    client = valkey.Valkey(host=info.host, port=info.port, socket_timeout=2, socket_connect_timeout=1)
    store = Store(client)
    pub = Publisher("tcp://127.0.0.1:*", replay_bind="tcp://127.0.0.1:*")
    sub = _subscriber(pub)
    try:
        with running_book_recorder(store, sub, tmp_path) as recorder:
            assert pub.wait_for_subscriber("book_", 10)
            ingest = Ingest()
            ingest.book_publisher = pub
            sent = session("mbo", 9000)
            third = len(sent) // 3
            for batch in sent[:third]:
                ingest.on_book(batch)
            assert wait_until(lambda: recorder.stats.stored_total > 0)
            os.kill(info.pid, signal.SIGKILL)  # no shutdown, no final fsync
            for batch in sent[third : 2 * third]:
                ingest.on_book(batch)  # Valkey is down: the recorder buffers and retries
            assert wait_until(lambda: recorder.stats.write_errors > 0)
            assert server.ensure_running().port == info.port
            for batch in sent[2 * third :]:
                ingest.on_book(batch)
            assert wait_until(lambda: recorder.caught_up(ingest.produced_book()), timeout=90)
        _assert_exactly_once(store, sent)
    finally:
        sub.close()
        pub.close()
        client.close()
        server.stop()


def test_recorder_process_sigkilled_mid_stream_and_restarted_loses_no_book_update(
    system_env: dict[str, str], store: Store, tmp_path: Path
) -> None:
    pub = Publisher(
        endpoint("127.0.0.1", int(system_env["ZMQ_BOOK_PORT"])),
        replay_bind=endpoint("127.0.0.1", int(system_env["ZMQ_BOOK_REPLAY_PORT"])),
    )

    def recorder_process() -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [sys.executable, "-m", "tickvault", "run", "--only", "recorder", "--no-dashboard"],
            env=subprocess_env({**system_env, "TICKVAULT_SYMBOLS": SYMBOL}),
            cwd=tmp_path,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def subscribed() -> bool:
        return b"book_" in pub.subscriptions()

    ingest = Ingest()
    ingest.book_publisher = pub
    sent = session("mbo", 9000)
    third = len(sent) // 3
    proc = recorder_process()
    try:
        assert wait_until(subscribed)
        for batch in sent[:third]:
            ingest.on_book(batch)
        assert wait_until(lambda: store.book_position(SYMBOL).updates > 100)
        proc.kill()  # SIGKILL: no flush, no goodbye
        proc.wait(30)
        assert wait_until(lambda: not subscribed())
        for batch in sent[third : 2 * third]:
            ingest.on_book(batch)  # nobody records these live
        proc = recorder_process()
        assert wait_until(subscribed)
        for batch in sent[2 * third :]:
            ingest.on_book(batch)
        total = len(columns(sent))
        assert wait_until(lambda: store.book_position(SYMBOL).updates >= total, timeout=120)
        _assert_exactly_once(store, sent)
    finally:
        proc.terminate()
        proc.wait(30)
        pub.close()
