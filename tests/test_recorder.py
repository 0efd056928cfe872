from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest
import valkey

from conftest import running_recorder, wait_until
from factories import BASE_MS, ticks
from tickvault.bus.ingest import Ingest
from tickvault.bus.publisher import Publisher
from tickvault.bus.subscriber import Subscriber
from tickvault.domain.events import encode
from tickvault.recorder.recorder import Recorder
from tickvault.store.api import Store


@pytest.fixture
def recording(store: Store) -> Iterator[tuple[Publisher, Recorder]]:
    pub = Publisher("tcp://127.0.0.1:*")
    sub = Subscriber(pub.endpoint, ["tick_"], ordered=False)
    recorder = Recorder(store)
    stop = threading.Event()
    thread = threading.Thread(target=recorder.run, args=(sub, stop), daemon=True)
    thread.start()
    assert pub.wait_for_subscriber("tick_", timeout=10)
    yield pub, recorder
    stop.set()
    thread.join(10)
    sub.close()
    pub.close()


_wait = wait_until


def test_ticks_published_are_stored_exactly(recording: tuple[Publisher, Recorder], store: Store) -> None:
    pub, recorder = recording
    ingest = Ingest(pub)
    sent = ticks(3000) + ticks(1000, symbol="WINFUT")
    for t in sent:
        ingest.on_tick(t)
    assert _wait(lambda: recorder.caught_up(ingest.last_seq))
    for symbol in ("WDOFUT", "WINFUT"):
        mine = [
            msgspec.structs.replace(t, seq=i + 1) for i, t in enumerate(x for x in sent if x.symbol == symbol)
        ]
        assert store.tick_events(symbol, BASE_MS, BASE_MS + 10_000) == mine
    assert recorder.stats.stored == {"WDOFUT": 3000, "WINFUT": 1000}


def test_bad_input_between_valid_ticks_is_rejected_counted_and_kept(
    recording: tuple[Publisher, Recorder], store: Store, valkey_client: valkey.Valkey
) -> None:
    pub, recorder = recording
    valid = ticks(40)
    good = {t.trade_id: encode(t) for t in valid}
    template = msgspec.json.decode(encode(valid[0]))

    def variant(**changes: object) -> bytes:
        return msgspec.json.encode({**template, **changes})

    bad = [
        ("json", b"\x8f\x00\xffrandom bytes"),
        ("json", encode(valid[0])[:25]),
        ("quantity", variant(quantity="three")),
        ("price", variant(price=-1.0)),
        ("price", variant(price=0.0)),
        ("symbol", variant(symbol="WDO FUT")),
        ("symbol", variant(symbol="")),
        ("timestamp", variant(timestamp="2025-11-24T13:00:00")),
        ("topic", variant(symbol="WINFUT")),
    ]
    for i, t in enumerate(valid):
        pub.publish("tick_WDOFUT", good[t.trade_id])
        if i < len(bad):
            pub.publish("tick_WDOFUT", bad[i][1])
    # a NaN cannot be written in JSON at all: a raw 'NaN' token is malformed JSON
    pub.publish("tick_WDOFUT", encode(valid[0]).replace(b'"price":5400.0', b'"price":NaN'))
    assert _wait(lambda: recorder.stats.stored_total == 40 and recorder.stats.rejected_total == len(bad) + 1)
    assert store.tick_events("WDOFUT", BASE_MS, BASE_MS + 1000) == valid
    expected: dict[str, int] = {}
    for field, _ in bad:
        expected[field] = expected.get(field, 0) + 1
    expected["json"] += 1
    assert dict(recorder.stats.rejected) == expected
    dead = valkey_client.xrange("tv:deadletter")
    assert len(dead) == len(bad) + 1
    assert {e[1][b"field"].decode() for e in dead} == set(expected)
    assert all(e[1][b"reason"] for e in dead)


def test_wrong_frame_count_is_rejected(store: Store) -> None:
    recorder = Recorder(store)
    assert recorder.decode_frames([[b"tick_WDOFUT"], [b"a", b"b", b"c"]]) == []
    assert recorder.stats.rejected == {"frames": 2}


def test_in_process_path_records_without_zeromq(store: Store) -> None:
    with running_recorder(store) as recorder:
        ingest = Ingest(handlers=[recorder.submit_one])
        for t in ticks(500):
            ingest.on_tick(t)
        assert _wait(lambda: recorder.caught_up(ingest.last_seq))
    assert store.count("WDOFUT") == 500


def test_stream_max_len_bounds_the_live_stream_and_loses_nothing(store: Store) -> None:
    """Guide defect 7: maxlen=100000 kept only the last 17 minutes of a busy hour; here the ticks
    past STREAM_MAX_LEN are sealed into history blocks, and every query still finds them."""
    from tickvault.config import load_settings

    settings = load_settings(stream_max_len=1000)
    written = ticks(5000)
    with running_recorder(store, stream_max_len=settings.stream_max_len, housekeeping_s=0) as recorder:
        ingest = Ingest(handlers=[recorder.submit_one])
        for t in written:
            ingest.on_tick(t)
        assert _wait(lambda: recorder.caught_up(ingest.last_seq))
        assert _wait(
            lambda: store.count("WDOFUT") == 5000 and store.client.xlen("stream:ticks:WDOFUT") <= 1000
        )
    assert recorder.stats.sealed >= 4000
    assert store.count("WDOFUT") == 5000
    frame = store.ticks("WDOFUT", BASE_MS, BASE_MS + 10**6)
    assert list(frame.trade_id) == [t.trade_id for t in written]


def test_store_lag_is_the_wait_of_the_oldest_unstored_tick(store: Store, tmp_path: Path) -> None:
    import time

    recorder = Recorder(store, spool_path=tmp_path / "spool")
    assert recorder.store_lag_ms() == 0
    batch = [msgspec.structs.replace(t, seq=i + 1) for i, t in enumerate(ticks(100))]
    received = time.monotonic()
    recorder.submit(batch)  # nobody writes yet: the ticks wait
    assert wait_until(lambda: recorder.store_lag_ms() >= 5, timeout=10)
    assert recorder.store_lag_ms() <= (time.monotonic() - received) * 1000 + 1
    stop = threading.Event()
    writer = threading.Thread(target=recorder.run, args=(None, stop), daemon=True)
    writer.start()
    try:
        assert wait_until(lambda: recorder.caught_up({"WDOFUT": 100}), timeout=30)
        assert recorder.store_lag_ms() == 0
    finally:
        stop.set()
        writer.join(10)
    assert store.count("WDOFUT") == 100


def test_ticks_queued_just_before_a_stop_are_written_before_the_writer_ends(
    store: Store, valkey_client: valkey.Valkey, tmp_path: Path
) -> None:
    """A stop drains everything received. When the spool runs empty the writer checks the batch in
    flight; ticks queued while that check waits, right before the stop, were left in the spool file
    (for the next run) because the writer saw the stop once the check was done."""
    stamped = [msgspec.structs.replace(t, seq=i + 1) for i, t in enumerate(ticks(300))]
    recorder = Recorder(store, spool_path=tmp_path / "spool")
    stop = threading.Event()
    thread = threading.Thread(target=recorder.run, args=(None, stop), daemon=True)
    kwargs = valkey_client.connection_pool.connection_kwargs
    admin = valkey.Valkey(host=kwargs["host"], port=kwargs["port"])
    thread.start()
    try:
        recorder.submit(stamped[:100])
        assert wait_until(lambda: recorder.caught_up({"WDOFUT": 100}))
        admin.execute_command("CLIENT", "PAUSE", "2000", "WRITE")  # the next batch's check will wait
        recorder.submit(stamped[100:200])

        def checking() -> bool:
            # Valkey holds the batch (blocked in MULTI) and the writer, with nothing else queued, is
            # reading its replies: the check (the writer's private state says which step it is in)
            held = any({"x", "b"} <= set(c["flags"]) for c in admin.client_list())
            return held and store.writer._in_flight is None

        assert wait_until(checking, timeout=10)
        recorder.submit(stamped[200:])
        stop.set()
        thread.join(30)
    finally:
        stop.set()
        thread.join(30)
        admin.execute_command("CLIENT", "UNPAUSE")
        admin.close()
    assert recorder.buffered == 0
    assert store.count("WDOFUT") == 300
