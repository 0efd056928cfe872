"""Book frames of several batches: the publisher's framing (batches queued together share a frame,
whole, numbered per topic) and the recorder's checks of such a frame, batch by batch."""

from __future__ import annotations

import itertools
import json
from datetime import datetime

import msgspec
import pytest
import zmq

from tickvault.bus.book_framing import BookFramer
from tickvault.bus.ingest import Ingest
from tickvault.bus.publisher import Publisher
from tickvault.domain.book import LAST, BookBatch, BookKind
from tickvault.domain.events import B3_TZ
from tickvault.recorder.book_frames import decode_book_frames
from tickvault.sources.book_simulator import BookMarketSimulator

OPEN = datetime(2025, 11, 24, 9, 0, tzinfo=B3_TZ)
WDO, WIN = b"book_WDOFUT", b"book_WINFUT"


def batches(symbol: str = "WDOFUT", kind: BookKind = "mbo", items: int = 600) -> list[BookBatch]:
    """A simulated session's book batches, numbered as ingest numbers them."""
    sim = BookMarketSimulator([symbol], kind=kind, seed=3, start=OPEN)
    out = [b for b in itertools.islice(sim.events(), items) if isinstance(b, BookBatch)]
    ingest = Ingest()
    for batch in out:
        ingest.on_book(batch)
    return out


def split_at_last(events: list[dict[str, object]]) -> list[list[int]]:
    """A foreign reader's way: the update seqs of each batch, a batch ending at a LAST flag."""
    out: list[list[int]] = [[]]
    for event in events:
        out[-1].append(int(event["seq"]))  # type: ignore[call-overload]
        if int(event["flags"]) & LAST:  # type: ignore[call-overload]
            out.append([])
    return out[:-1] if not out[-1] else out


def seqs(batch: BookBatch) -> list[int]:
    return [e.seq for e in batch]


def test_batches_queued_together_share_frames_whole_numbered_and_readable_as_json() -> None:
    sent = batches()
    framer = BookFramer(max_updates=40)
    framer.start(WDO, 41)  # what the store holds: numbering continues after it
    messages = framer.messages([(WDO, b) for b in sent])
    frames = [json.loads(payload) for _, payload, _ in messages]
    assert len(frames) < len(sent) // 4  # several batches a frame
    assert [seq for _, _, seq in messages] == [f["seq"] for f in frames] == list(range(42, 42 + len(frames)))
    assert framer.last[WDO] == 41 + len(frames)
    got = [split_at_last(f["events"]) for f in frames]
    assert [b for frame in got for b in frame] == [seqs(b) for b in sent]  # every batch whole, in order
    for frame, split in zip(frames, got, strict=True):
        assert frame["events"][-1]["flags"] & LAST and {frame["symbol"], frame["kind"]} == {"WDOFUT", "mbo"}
        assert len(split) == 1 or len(frame["events"]) <= 40  # only a batch bigger than a frame is alone
    assert any(len(b) > 40 for b in sent)  # ... and there is one (the opening snapshot)


def test_a_topics_frames_keep_its_order_and_never_mix_topics_or_kinds() -> None:
    wdo, win, mbp = batches(), batches("WINFUT"), batches(kind="mbp")
    raw = b'{"seq":0,"symbol":"WDOFUT","kind":"mbo","events":[]}'  # anything published as is
    items = [(WDO, wdo[1]), (WIN, win[1]), (WDO, wdo[2]), (WDO, raw), (WDO, wdo[3]), (WDO, mbp[1])]
    messages = BookFramer().messages(items)
    wdo_frames = [json.loads(p) for t, p, _ in messages if t == WDO]
    assert [split_at_last(f["events"]) for f in wdo_frames] == [
        [seqs(wdo[1]), seqs(wdo[2])],
        [],
        [seqs(wdo[3])],
        [seqs(mbp[1])],
    ]
    assert [f["kind"] for f in wdo_frames] == ["mbo", "mbo", "mbo", "mbp"]
    assert [seq for t, _, seq in messages if t == WDO] == [1, 0, 2, 3]
    assert [seq for t, _, seq in messages if t == WIN] == [1]


Events = list[dict[str, object]]


def as_json(batch: BookBatch, **change: object) -> Events:
    """A batch's events as JSON objects, its first event's fields changed (`change`)."""
    events = [msgspec.to_builtins(e) for e in batch]
    events[0].update(change)
    return events


def _frame_of(*batches: Events) -> list[bytes]:
    """One frame holding the given batches (a foreign publisher's own frame: seq 7)."""
    events = [e for batch in batches for e in batch]
    return [WDO, json.dumps({"seq": 7, "symbol": "WDOFUT", "kind": "mbo", "events": events}).encode()]


def test_a_bad_batch_inside_a_frame_is_rejected_alone_and_the_frame_counts() -> None:
    sent = batches()[1:5]
    frame = _frame_of(as_json(sent[0]), as_json(sent[1], quantity=-1), *map(as_json, sent[2:4]))
    decoded = decode_book_frames([frame])
    stored = [s for part in decoded.parts for s in part.cols.seq.tolist()]
    assert stored == seqs(sent[0]) + seqs(sent[2]) + seqs(sent[3])
    assert [(r.error.field, r.error.reason) for r in decoded.rejected] == [
        ("quantity", "must not be negative (batch 2 of the frame's 4)")
    ]
    assert [f.seq for f in decoded.frames] == [7] and decoded.parts[0].last_frame == 7  # its number counts


def test_a_frames_last_batch_without_its_last_flag_is_rejected_alone() -> None:
    sent = batches()[1:4]
    cut = as_json(sent[2])
    cut[-1]["flags"] = 0  # the rest of this batch would be in the next frame: a batch split across frames
    decoded = decode_book_frames([_frame_of(as_json(sent[0]), as_json(sent[1]), cut)])
    assert [s for part in decoded.parts for s in part.cols.seq.tolist()] == seqs(sent[0]) + seqs(sent[1])
    assert [r.error.field for r in decoded.rejected] == ["flags"]
    assert "never split" in decoded.rejected[0].error.reason


@pytest.mark.parametrize("damage", ["schema", "every batch"])
def test_a_frame_that_does_not_decode_or_keeps_no_batch_is_rejected_and_does_not_count(damage: str) -> None:
    sent = batches()[1:4]
    change = {"price": -1.0} if damage == "every batch" else {}
    topic, payload = _frame_of(*(as_json(b, **change) for b in sent))
    if damage == "schema":  # an unknown field in one event: not a frame of this schema
        payload = payload.replace(b'"agent"', b'"agentx"', 2).replace(b'"agentx"', b'"agent"', 1)
    decoded = decode_book_frames([[topic, payload]])
    assert decoded.parts == [] and decoded.frames == []
    assert [r.error.field for r in decoded.rejected] == (
        ["agentx"] if damage == "schema" else ["price"] * len(sent)
    )


def test_a_slow_flow_sends_each_batch_at_once_in_a_frame_of_its_own() -> None:
    pub = Publisher("tcp://127.0.0.1:*")
    sock = zmq.Context.instance().socket(zmq.SUB)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        sock.connect(pub.endpoint)
        sock.setsockopt(zmq.SUBSCRIBE, b"book_")
        assert pub.wait_for_subscriber("book_", 10)
        ingest = Ingest()
        ingest.book_publisher = pub
        for number, batch in enumerate(batches()[:5], 1):
            ingest.on_book(batch)
            assert sock.poll(10_000)  # sent with nothing after it to fill its frame
            topic, payload = sock.recv_multipart()
            frame = json.loads(payload)
            assert (topic, frame["seq"], split_at_last(frame["events"])) == (WDO, number, [seqs(batch)])
    finally:
        sock.close()
        pub.close()
