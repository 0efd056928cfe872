"""The ZeroMQ bus: a Publisher per channel and a Subscriber that tracks sequence numbers.

Frames are `[topic, payload]`, payload a JSON object (events.encode), so any language can read them.
The Publisher uses an XPUB socket (wire-compatible with PUB) so it can see subscriptions arrive: a
component waits for its subscriber before the source starts instead of sleeping out the slow joiner.
Its socket is owned by one background thread; `publish` only appends to a queue, so the caller (a
source callback) never blocks on the network and never sees a socket error.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

import msgspec
import zmq

from tickvault.errors import BusError
from tickvault.events import Event, encode

log = logging.getLogger("tickvault.bus")

SNDHWM = 1_000_000
RCVHWM = 1_000_000


def endpoint(host: str, port: int) -> str:
    return f"tcp://{host}:{port}"


@dataclass
class PublisherStats:
    published: int = 0
    send_errors: int = 0
    subscriptions: int = 0


class Publisher:
    """Publishes `[topic, json]` frames on one bound endpoint from a background thread."""

    def __init__(self, bind: str, *, context: zmq.Context | None = None) -> None:
        self.endpoint = bind
        self._context = context or zmq.Context.instance()
        self._queue: collections.deque[tuple[bytes, Event | bytes]] = collections.deque()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        self._idle = False
        self._closing = threading.Event()
        self._subscribed: list[bytes] = []
        self._sub_cond = threading.Condition()
        self.stats = PublisherStats()
        self._socket = self._context.socket(zmq.XPUB)
        self._socket.setsockopt(zmq.LINGER, 2000)
        self._socket.setsockopt(zmq.SNDHWM, SNDHWM)
        self._socket.setsockopt(zmq.XPUB_VERBOSE, 1)  # see every subscriber, not only the first per topic
        try:
            self._socket.bind(bind)
        except zmq.ZMQError as exc:
            self._socket.close(0)
            os.close(self._wake_r)
            os.close(self._wake_w)
            raise BusError(f"cannot bind {bind}: {exc}") from None
        self.endpoint = self._socket.getsockopt_string(zmq.LAST_ENDPOINT)
        self._thread = threading.Thread(target=self._run, name=f"publisher {self.endpoint}", daemon=True)
        self._thread.start()

    @property
    def port(self) -> int:
        return int(self.endpoint.rsplit(":", 1)[1])

    def publish(self, topic: str, event: Event | bytes) -> None:
        """Queue one message; never blocks, never raises (the caller may be a market-data callback)."""
        self._queue.append((topic.encode(), event))
        if self._idle:
            try:  # noqa: SIM105 - a bare try is cheaper than contextlib.suppress on this hot path
                os.write(self._wake_w, b"\0")
            except BlockingIOError:
                pass  # the pipe is full of wake-ups already

    def wait_for_subscriber(self, prefix: str, timeout: float = 10.0) -> bool:
        """Block until a subscriber has subscribed to a topic prefix covering `prefix`."""
        want = prefix.encode()
        deadline = time.monotonic() + timeout
        with self._sub_cond:
            while not any(want.startswith(sub) for sub in self._subscribed):
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
        return len(self._queue)

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until everything queued so far has been handed to ZeroMQ."""
        deadline = time.monotonic() + timeout
        while self._queue or not self._idle:
            if time.monotonic() > deadline or not self._thread.is_alive():
                return False
            time.sleep(0.001)
        return True

    def close(self, timeout: float = 10.0) -> None:
        self.flush(timeout)
        self._closing.set()
        with contextlib.suppress(BlockingIOError):
            os.write(self._wake_w, b"\0")
        self._thread.join(timeout)

    # -- the socket thread ------------------------------------------------------------------------

    def _run(self) -> None:
        poller = zmq.Poller()
        poller.register(self._socket, zmq.POLLIN)
        poller.register(self._wake_r, zmq.POLLIN)
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
            self._drain()
        finally:
            self._idle = True
            self._socket.close()
            os.close(self._wake_r)
            os.close(self._wake_w)

    def _drain(self) -> None:
        queue = self._queue
        send = self._socket.send_multipart
        sent = 0
        while queue:
            topic, event = queue.popleft()
            payload = event if isinstance(event, bytes) else encode(event)
            try:
                send((topic, payload), copy=False)
                self.stats.published += 1
            except zmq.ZMQError as exc:
                self.stats.send_errors += 1
                log.error("publish on %s failed: %s", self.endpoint, exc)
            sent += 1
            if sent % 1024 == 0 and self._socket.poll(0, zmq.POLLIN):
                self._read_subscriptions()

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


@dataclass
class SubscriberStats:
    received: int = 0
    gaps: int = 0
    missing: int = 0
    last_seq: dict[str, int] = field(default_factory=dict)


class _SeqOnly(msgspec.Struct):
    seq: int = 0


_seq_decoder = msgspec.json.Decoder(_SeqOnly)


class Subscriber:
    """SUB socket for some topic prefixes; `receive` returns batches of (topic, payload) frames.

    Sequence numbers are per topic; a jump is counted as a gap (recovery lives in the recorder)."""

    def __init__(self, connect: str, topics: Iterable[str], *, context: zmq.Context | None = None) -> None:
        self.endpoint = connect
        self._context = context or zmq.Context.instance()
        self._socket = self._context.socket(zmq.SUB)
        self._socket.setsockopt(zmq.LINGER, 0)
        self._socket.setsockopt(zmq.RCVHWM, RCVHWM)
        self._socket.connect(connect)
        for topic in topics:
            self._socket.setsockopt(zmq.SUBSCRIBE, topic.encode())
        self.stats = SubscriberStats()

    def receive(self, timeout_ms: int = 100, max_messages: int = 5000) -> list[list[bytes]]:
        """Wait up to `timeout_ms` for a message, then take what is queued (up to `max_messages`)."""
        if not self._socket.poll(timeout_ms, zmq.POLLIN):
            return []
        out: list[list[bytes]] = []
        recv = self._socket.recv_multipart
        while len(out) < max_messages:
            try:
                frames = recv(zmq.NOBLOCK)
            except zmq.Again:
                break
            out.append(frames)
            self._track(frames)
        self.stats.received += len(out)
        return out

    def _track(self, frames: list[bytes]) -> None:
        if len(frames) != 2:
            return
        try:
            seq = _seq_decoder.decode(frames[1]).seq
        except msgspec.MsgspecError:
            return
        topic = frames[0].decode("utf-8", "replace")
        last = self.stats.last_seq.get(topic)
        if last is not None and seq > last + 1:
            self.stats.gaps += 1
            self.stats.missing += seq - last - 1
        if last is None or seq > last:
            self.stats.last_seq[topic] = seq

    def close(self) -> None:
        self._socket.close(0)
