"""Book batches queued for a publisher become `book_{SYMBOL}` frames (`domain.book.BookFrame`).

The batches of one topic that are queued together when the publisher's thread comes to send share
one frame: natural batching, nothing waits to fill a frame. A slow flow sends each batch alone at
once; a fast one (the simulator at speed 0, a B3 open) sends what piled up during the previous send
as one JSON object, one ZeroMQ message and one entry of the replay ring, which is what the publisher,
the recorder and any subscriber pay per message. A frame holds up to FRAME_UPDATES updates, in whole
batches (a batch is never split: a bigger one travels alone), of one kind. Frames are numbered here,
per topic, consecutively, continuing from `start` (what the store holds, so a resumed subscriber
sees no gap).
"""

from __future__ import annotations

from typing import Any

from tickvault.bus.envelope import seq_of
from tickvault.domain.book import BookBatch, BookFrame, BookKind, OrderUpdate
from tickvault.domain.events import encode

FRAME_UPDATES = 200  # ~50 kB of JSON: the ~8 µs a message costs on the bus is 0.04 µs an update
FRAME_HWM = 20_000  # frames ZeroMQ queues per book subscriber (a stall): at most ~1 GB, 4M updates

Message = tuple[bytes, bytes, int]  # topic, payload, seq (0: not numbered)


class BookFramer:
    """Numbers and encodes the frames of queued book batches, per topic."""

    def __init__(self, max_updates: int = FRAME_UPDATES) -> None:
        self.max_updates = max_updates
        self.last: dict[bytes, int] = {}  # topic -> the last frame number used

    def start(self, topic: bytes, last_frame: int) -> None:
        """Number `topic`'s next frame `last_frame + 1` (call before its first batch)."""
        self.last[topic] = last_frame

    def messages(self, items: list[tuple[bytes, Any]]) -> list[Message]:
        """The messages of queued items, in the order each topic queued them: consecutive batches of
        a topic (and kind) joined into frames, anything else (an event, ready JSON) as it is."""
        out: list[Message] = []
        open_: dict[bytes, list[BookBatch]] = {}  # topic -> the batches of its frame being filled
        sizes: dict[bytes, int] = {}
        for topic, item in items:
            if type(item) is BookBatch:
                group = open_.get(topic)
                if group is not None and (
                    sizes[topic] + len(item) > self.max_updates or type(group[0][0]) is not type(item[0])
                ):
                    out.append(self._frame(topic, open_.pop(topic)))
                    group = None
                if group is None:
                    open_[topic], sizes[topic] = [item], len(item)
                else:
                    group.append(item)
                    sizes[topic] += len(item)
                continue
            if topic in open_:  # a topic's own order: its frame so far goes first
                out.append(self._frame(topic, open_.pop(topic)))
            if isinstance(item, bytes):
                out.append((topic, item, seq_of(item)))
            else:
                out.append((topic, encode(item), getattr(item, "seq", 0)))
        out.extend(self._frame(topic, group) for topic, group in open_.items())
        return out

    def _frame(self, topic: bytes, batches: list[BookBatch]) -> Message:
        number = self.last[topic] = self.last.get(topic, 0) + 1
        first = batches[0][0]
        kind: BookKind = "mbo" if type(first) is OrderUpdate else "mbp"
        events = batches[0] if len(batches) == 1 else [e for batch in batches for e in batch]
        return topic, encode(BookFrame(seq=number, symbol=first.symbol, kind=kind, events=events)), number
