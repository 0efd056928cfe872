"""The bus publisher: one XPUB socket per channel, owned by its own thread.

Frames are `[topic, payload]`, payload a JSON object (events.encode), so any language can read them.
XPUB (wire-compatible with PUB) lets it see subscriptions arrive: a component waits for its
subscriber before the source starts instead of sleeping out the slow joiner. `publish` only appends
to a queue, so the caller (a source callback) never blocks on the network and never sees a socket
error. A replay ring answers subscribers that missed messages; heartbeats carry each topic's newest
sequence number. Book batches queued together become one frame (`book_framing`), numbered here.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import zmq

from tickvault.bus.book_framing import BookFramer, Message
from tickvault.bus.curve import ServerKeys, as_server, is_loopback
from tickvault.bus.envelope import HEARTBEAT_PREFIX, seq_of
from tickvault.bus.ring import DEFAULT_RING, DEFAULT_RING_BYTES, Ring
from tickvault.bus.spool import Spool
from tickvault.domain.book import BookBatch
from tickvault.errors import BusError, InsecureBind

log = logging.getLogger("tickvault.bus")

_pair_decoder = msgspec.msgpack.Decoder(tuple[bytes, bytes])  # spooled [topic, payload] pairs


SNDHWM = 1_000_000
MAX_QUEUE = 1_000_000
HEARTBEAT_S = 0.5
SEND_ROUND = 1024  # queued messages taken at once by the socket thread
BIND_RETRY_S = 1.0  # a port taken at start is tried again this often (it may free up)


@dataclass
class PublisherStats:
    published: int = 0
    send_errors: int = 0
    subscriptions: int = 0
    replay_requests: int = 0
    overflowed: int = 0


class Publisher:
    """Publishes `[topic, json]` frames on one bound endpoint from a background thread."""

    def __init__(
        self,
        bind: str,
        *,
        replay_bind: str | None = None,
        ring_size: int = DEFAULT_RING,
        ring_bytes: int = DEFAULT_RING_BYTES,
        sndhwm: int = SNDHWM,
        max_queue: int = MAX_QUEUE,
        spool_path: Path | None = None,
        context: zmq.Context[Any] | None = None,
        curve: ServerKeys | None = None,
        allow_insecure: bool = False,
    ) -> None:
        """`max_queue` bounds the messages held in memory between the caller and the socket;
        beyond it they go to a spool at `spool_path` (a temporary file when not given). Binding
        beyond loopback needs `curve` keys (encryption, server identity) or `allow_insecure`."""
        for address in (bind, replay_bind):
            if address is not None and curve is None and not allow_insecure and not is_loopback(address):
                raise InsecureBind(
                    f"refusing to bind {address} beyond loopback without CURVE: set ZMQ_CURVE_SERVER_SECRET"
                    " (see `tickvault curve-keys`) or force it with ZMQ_ALLOW_INSECURE=true"
                )
        self.endpoint = bind
        self.max_queue = max_queue
        self._spool: Spool[tuple[bytes, bytes]] | None = Spool(
            spool_path or Path(tempfile.gettempdir()) / f"tickvault-publisher-{os.getpid()}-{id(self)}.spool",
            msgspec.msgpack.encode,
            _pair_decoder.decode,
            max_memory=max_queue,
        )
        self._context = context or zmq.Context.instance()
        self._queue: collections.deque[tuple[bytes, msgspec.Struct | bytes | BookBatch]] = collections.deque()
        self.framer = BookFramer()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        self._idle = False
        self._closing = threading.Event()
        self._subscribed: list[bytes] = []
        self._sub_cond = threading.Condition()
        self.stats = PublisherStats()
        self._socket = self._context.socket(zmq.XPUB)
        self._socket.setsockopt(zmq.LINGER, 2000)
        self._socket.setsockopt(zmq.SNDHWM, sndhwm)
        self._socket.setsockopt(zmq.XPUB_VERBOSE, 1)  # see every subscriber, not only the first per topic
        if curve is not None:
            as_server(self._socket, curve)
        try:
            self._socket.bind(bind)
        except zmq.ZMQError as exc:
            self._socket.close(0)
            os.close(self._wake_r)
            os.close(self._wake_w)
            raise BusError(f"cannot bind {bind}: {exc}") from None
        self.endpoint = self._socket.getsockopt_string(zmq.LAST_ENDPOINT)
        self.ring = Ring(ring_size, ring_bytes)
        self._last_heartbeat = 0.0
        self.replay_endpoint: str | None = None
        self._replay: zmq.Socket[Any] | None = None
        if replay_bind is not None:
            self._replay = self._context.socket(zmq.ROUTER)
            self._replay.setsockopt(zmq.LINGER, 0)
            if curve is not None:
                as_server(self._replay, curve)
            try:
                self._replay.bind(replay_bind)
            except zmq.ZMQError as exc:
                self._replay.close(0)
                self._socket.close(0)
                os.close(self._wake_r)
                os.close(self._wake_w)
                raise BusError(f"cannot bind replay endpoint {replay_bind}: {exc}") from None
            self.replay_endpoint = self._replay.getsockopt_string(zmq.LAST_ENDPOINT)
        self._thread = threading.Thread(target=self._run, name=f"publisher {self.endpoint}", daemon=True)
        self._thread.start()

    @property
    def port(self) -> int:
        return int(self.endpoint.rsplit(":", 1)[1])

    def publish(self, topic: str, event: msgspec.Struct | bytes | BookBatch) -> None:
        """Queue one message (an event, its JSON, or a book batch: framed and numbered when sent, see
        `book_framing`); never blocks, never raises (the caller may be a market-data callback)."""
        self._queue.append((topic.encode(), event))
        if self._idle:
            try:  # noqa: SIM105 - a bare try is cheaper than contextlib.suppress on this hot path
                os.write(self._wake_w, b"\0")
            except OSError:
                pass  # the pipe is full of wake-ups already, or the publisher is closed

    def wait_for_subscriber(self, prefix: str, timeout: float = 10.0, *, count: int = 1) -> bool:
        """Block until `count` subscriptions cover the topic prefix `prefix` (one per subscriber)."""
        want = prefix.encode()
        deadline = time.monotonic() + timeout
        with self._sub_cond:
            while sum(want.startswith(sub) for sub in self._subscribed) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._sub_cond.wait(left)
        return True

    def subscriptions(self) -> list[bytes]:
        """Topic prefixes subscribed right now (one entry per subscriber and prefix)."""
        with self._sub_cond:
            return list(self._subscribed)

    def pending(self) -> int:
        return len(self._queue) + (len(self._spool) if self._spool is not None else 0)

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until everything queued so far has been handed to ZeroMQ."""
        deadline = time.monotonic() + timeout
        while self.pending() or not self._idle:
            if time.monotonic() > deadline or not self._thread.is_alive():
                return False
            time.sleep(0.001)
        return True

    def close(self, timeout: float = 10.0) -> None:
        if self._wake_w < 0:
            return
        self.flush(timeout)
        self._closing.set()
        with contextlib.suppress(BlockingIOError):
            os.write(self._wake_w, b"\0")
        self._thread.join(timeout)
        # the pipe is closed here, after the thread is gone: never a write to a closed (or reused) fd
        os.close(self._wake_r)
        os.close(self._wake_w)
        self._wake_r = self._wake_w = -1

    # -- the socket thread ------------------------------------------------------------------------

    def _run(self) -> None:
        poller = zmq.Poller()
        poller.register(self._socket, zmq.POLLIN)
        poller.register(self._wake_r, zmq.POLLIN)
        if self._replay is not None:
            poller.register(self._replay, zmq.POLLIN)
        try:
            while not self._closing.is_set():
                self._drain()
                self._idle = True
                if self._queue:  # appended between the drain and the idle flag
                    self._idle = False
                    continue
                events = dict(poller.poll(100))
                self._idle = False
                if self._wake_r in events:
                    os.read(self._wake_r, 65536)
                if self._socket in events:
                    self._read_subscriptions()
                if self._replay is not None and self._replay in events:
                    self._serve_replay()
                self._heartbeat()
            self._drain()
        finally:
            self._idle = True
            self._socket.close()
            if self._replay is not None:
                self._replay.close()

    def _overflow(self) -> None:
        """Past `max_queue` queued messages, move the oldest to the spool (memory, then disk), in
        order: a source faster than the socket costs disk, never messages."""
        queue, spool = self._queue, self._spool
        if spool is None or len(queue) <= self.max_queue:
            return
        items = [queue.popleft() for _ in range(len(queue) - self.max_queue // 2)]
        moved = [(topic, payload) for topic, payload, _ in self.framer.messages(items)]
        spool.extend(moved)
        self.stats.overflowed += len(items)

    def _take(self) -> list[Message]:
        """The oldest messages: the spool's (it holds older ones), else everything queued now (up to
        SEND_ROUND), book batches joined into frames."""
        if self._spool is not None and len(self._spool):
            return [(topic, payload, seq_of(payload)) for topic, payload in self._spool.take(SEND_ROUND)]
        queue = self._queue
        if not queue:
            return []
        popleft = queue.popleft
        return self.framer.messages([popleft() for _ in range(min(len(queue), SEND_ROUND))])

    def _drain(self) -> None:
        # two plain sends: 0.7 µs a message; send_multipart(copy=False) builds a tracked Frame per
        # part, 2.4 µs (zero-copy pays only for large messages, these are ~250 bytes)
        send, more = self._socket.send, zmq.SNDMORE
        sent = 0
        ring = self.ring
        while True:
            self._overflow()
            messages = self._take()
            if not messages:
                return
            for topic, payload, seq in messages:
                try:
                    send(topic, more)
                    send(payload)
                    self.stats.published += 1
                except zmq.ZMQError as exc:
                    self.stats.send_errors += 1
                    log.error("publish on %s failed: %s", self.endpoint, exc)
                if seq:
                    ring.append(topic, seq, payload)
            sent += len(messages)
            if sent >= SEND_ROUND:
                sent = 0
                if self._socket.poll(0, zmq.POLLIN):
                    self._read_subscriptions()
                if self._replay is not None and self._replay.poll(0, zmq.POLLIN):
                    self._serve_replay()

    def _heartbeat(self) -> None:
        """Every HEARTBEAT_S, the newest seq of each topic on `hb.{topic}`: without it a subscriber
        could not notice that the last messages before a quiet spell were dropped."""
        now = time.monotonic()
        if now - self._last_heartbeat < HEARTBEAT_S:
            return
        self._last_heartbeat = now
        for topic, seq in self.ring.newest().items():
            with contextlib.suppress(zmq.ZMQError):
                self._socket.send_multipart((HEARTBEAT_PREFIX + topic, b'{"seq":%d}' % seq), zmq.NOBLOCK)

    def _serve_replay(self) -> None:
        assert self._replay is not None
        while True:
            try:
                frames = self._replay.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            if len(frames) < 3:
                continue
            self.stats.replay_requests += 1
            reply = self.ring.answer(frames[-1])
            try:
                self._replay.send_multipart([*frames[:-1], *reply], zmq.NOBLOCK)
            except zmq.ZMQError as exc:
                log.warning("replay reply failed: %s", exc)

    def _read_subscriptions(self) -> None:
        while True:
            try:
                msg = self._socket.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            if not msg:
                continue
            with self._sub_cond:
                if msg[0] == 1:
                    self._subscribed.append(msg[1:])
                    self.stats.subscriptions += 1
                elif msg[0] == 0 and msg[1:] in self._subscribed:
                    self._subscribed.remove(msg[1:])
                self._sub_cond.notify_all()
