"""Replay of recent bus messages by sequence number (the ZeroMQ guide's Clone pattern).

A PUB socket drops messages for a subscriber that is slow or not yet connected; that is how ZeroMQ
keeps one slow consumer from stalling everyone. The publisher therefore keeps the most recent
messages of each topic in a ring and answers requests on a ROUTER socket, so a subscriber that sees
a gap in the sequence numbers asks for exactly what it missed.

Request (a DEALER sends `["", json]`): `{"topic": "tick_WDOFUT", "from": 101, "to": 250}`.
Reply: `["", header, payload, payload, ...]`, header `{"topic", "from", "count", "oldest", "newest"}`;
the payloads are seq `from` .. `from + count - 1`. If `from` is older than the ring the reply starts at
`oldest` and the caller looks elsewhere (Valkey) for the rest.
"""

from __future__ import annotations

import logging
import threading
import time
import typing

import msgspec
import zmq

log = logging.getLogger("tickvault.ring")

MAX_REPLY = 10_000  # messages per reply; a client asks again for the rest
MAX_REPLY_BYTES = 16 << 20  # ... and about this much payload at most (the first message always)
DEFAULT_RING = 100_000  # messages kept per topic
DEFAULT_RING_BYTES = 64 << 20  # payload bytes kept per topic: a book frame may hold many batches


class ReplayRequest(msgspec.Struct, forbid_unknown_fields=True):
    topic: str
    first: int = msgspec.field(name="from")
    last: int = msgspec.field(name="to")


class ReplayHeader(msgspec.Struct):
    topic: str
    first: int = msgspec.field(name="from")
    count: int = 0
    oldest: int = 0
    newest: int = 0


class _TopicRing:
    """Fixed-capacity circular buffer of (seq -> payload) with contiguous sequence numbers, holding at
    most `max_bytes` of payload (the newest message always)."""

    __slots__ = ("capacity", "max_bytes", "items", "first_seq", "size", "start", "bytes")

    def __init__(self, capacity: int, max_bytes: int) -> None:
        self.capacity = capacity
        self.max_bytes = max_bytes
        self.items: list[bytes | None] = [None] * capacity
        self.first_seq = 0
        self.size = 0
        self.start = 0
        self.bytes = 0

    def append(self, seq: int, payload: bytes) -> None:
        if self.size and seq != self.first_seq + self.size:
            self.size = 0  # a jump (publisher restarted its numbering): start over
        if self.size == 0:
            self.first_seq, self.start, self.bytes = seq, 0, 0
        if self.size == self.capacity:
            self._drop_oldest()
        self.items[(self.start + self.size) % self.capacity] = payload
        self.size += 1
        self.bytes += len(payload)
        while self.bytes > self.max_bytes and self.size > 1:
            self._drop_oldest()

    def _drop_oldest(self) -> None:
        item = self.items[self.start]
        self.bytes -= len(item) if item is not None else 0
        self.items[self.start] = None
        self.start = (self.start + 1) % self.capacity
        self.first_seq += 1
        self.size -= 1

    def read(self, first: int, last: int, limit: int) -> tuple[int, list[bytes]]:
        newest = self.first_seq + self.size - 1
        begin = max(first, self.first_seq)
        end = min(last, newest, begin + limit - 1)
        out: list[bytes] = []
        size = 0
        for seq in range(begin, end + 1):
            item = self.items[(self.start + seq - self.first_seq) % self.capacity]
            assert item is not None
            if out and size + len(item) > MAX_REPLY_BYTES:
                break
            out.append(item)
            size += len(item)
        return begin, out


class Ring:
    """The publisher's memory of recent messages, per topic."""

    def __init__(self, capacity: int = DEFAULT_RING, max_bytes: int = DEFAULT_RING_BYTES) -> None:
        """Per topic the newest `capacity` messages, at most `max_bytes` of payload."""
        self.capacity = capacity
        self.max_bytes = max_bytes
        self._topics: dict[bytes, _TopicRing] = {}

    def append(self, topic: bytes, seq: int, payload: bytes) -> None:
        ring = self._topics.get(topic)
        if ring is None:
            ring = self._topics[topic] = _TopicRing(self.capacity, self.max_bytes)
        ring.append(seq, payload)

    def newest(self) -> dict[bytes, int]:
        """Topic -> newest sequence number held."""
        return {t: r.first_seq + r.size - 1 for t, r in self._topics.items() if r.size}

    def answer(self, request: bytes) -> list[bytes]:
        """Reply frames (after the envelope) for one request; a bad request gets a header with count 0."""
        try:
            req = msgspec.json.decode(request, type=ReplayRequest)
        except msgspec.MsgspecError as exc:
            log.warning("bad replay request %r: %s", request[:100], exc)
            return [msgspec.json.encode({"error": str(exc)})]
        ring = self._topics.get(req.topic.encode())
        if ring is None or ring.size == 0:
            return [msgspec.json.encode(ReplayHeader(req.topic, req.first))]
        begin, payloads = ring.read(req.first, req.last, MAX_REPLY)
        header = ReplayHeader(req.topic, begin, len(payloads), ring.first_seq, ring.first_seq + ring.size - 1)
        return [msgspec.json.encode(header), *payloads]


class ReplayClient:
    """Asks a publisher's replay endpoint for missed messages (a lazy-pirate DEALER: a fresh socket
    after a timeout, so a dead publisher never wedges the subscriber)."""

    def __init__(
        self,
        endpoint: str,
        *,
        context: zmq.Context[typing.Any] | None = None,
        timeout_ms: int = 2000,
        attempts: int = 4,
        curve: typing.Any = None,
        cancel: threading.Event | None = None,
    ) -> None:
        """`cancel`, once set, ends a wait for an answer at once (the subscriber is stopping)."""
        self.endpoint = endpoint
        self.cancel = cancel
        self.curve = curve  # curve.ClientKeys when the publisher uses CURVE
        self.timeout_ms = timeout_ms
        self.attempts = attempts  # timeouts double: 2 + 4 + 8 + 16 s by default
        self._context = context or zmq.Context.instance()
        self._socket: zmq.Socket[typing.Any] | None = None

    def _connect(self) -> zmq.Socket[typing.Any]:
        if self._socket is None:
            sock = self._context.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            if self.curve is not None:
                from tickvault.bus.curve import as_client

                as_client(sock, self.curve)
            sock.connect(self.endpoint)
            self._socket = sock
        return self._socket

    def fetch(
        self, topic: str, first: int, last: int, *, attempts: int | None = None
    ) -> tuple[int, list[bytes]]:
        """(start, payloads): the messages seq start..start+len-1 the publisher still has within
        first..last. `start` > `first` when the ring no longer holds the oldest ones; an empty list
        when it holds none or does not answer (within `attempts`, by default the client's own)."""
        out: list[bytes] = []
        start = want = first
        while want <= last:
            frames = self._ask(topic, want, last, attempts or self.attempts)
            if frames is None:
                break
            try:
                header = msgspec.json.decode(frames[1], type=ReplayHeader)
            except (msgspec.MsgspecError, IndexError):
                break
            if header.count == 0 or (out and header.first != want):
                break
            if not out:
                start = header.first
            out.extend(frames[2 : 2 + header.count])
            want = header.first + header.count
        return start, out

    def _ask(self, topic: str, first: int, last: int, attempts: int) -> list[bytes] | None:
        """One request, retried on a fresh socket with a doubling timeout: a publisher busy with a
        backlog may answer late, and for a recorder an unanswered request is a gap nobody else fills."""
        timeout = self.timeout_ms
        for attempt in range(1, attempts + 1):
            sock = self._connect()
            sock.send_multipart([b"", msgspec.json.encode({"topic": topic, "from": first, "to": last})])
            if self._answered(sock, timeout):
                return sock.recv_multipart()
            self.close()  # a late answer must not be read as the next request's
            if self.cancel is not None and self.cancel.is_set():
                return None
            log.warning("replay endpoint %s did not answer in %d ms (attempt %d of %d)",
                        self.endpoint, timeout, attempt, attempts)  # fmt: skip
            timeout *= 2
        return None

    def _answered(self, sock: zmq.Socket[typing.Any], timeout_ms: int) -> bool:
        if self.cancel is None:
            return bool(sock.poll(timeout_ms))
        deadline = time.monotonic() + timeout_ms / 1000
        while not self.cancel.is_set():  # in slices, so that a cancel is seen within 50 ms
            left_ms = int((deadline - time.monotonic()) * 1000)
            if left_ms <= 0:
                return False
            if sock.poll(min(left_ms, 50)):
                return True
        return False

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close(0)
            self._socket = None
