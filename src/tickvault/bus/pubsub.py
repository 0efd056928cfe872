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
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import zmq

from tickvault.bus.curve import ClientKeys, ServerKeys, as_client, as_server, is_loopback
from tickvault.bus.ring import DEFAULT_RING, ReplayClient, Ring
from tickvault.bus.spool import Spool
from tickvault.domain.events import encode
from tickvault.errors import BusError, InsecureBind

log = logging.getLogger("tickvault.bus")


class _SeqOnly(msgspec.Struct):
    seq: int = 0


_seq_decoder = msgspec.json.Decoder(_SeqOnly)
_pair_decoder = msgspec.msgpack.Decoder(tuple[bytes, bytes])


def _seq_of(payload: bytes) -> int:
    """The `seq` of a JSON payload, 0 if it has none or is not JSON."""
    try:
        return _seq_decoder.decode(payload).seq
    except msgspec.MsgspecError:
        return 0


SNDHWM = 1_000_000
MAX_QUEUE = 1_000_000
HEARTBEAT_S = 0.5
BIND_RETRY_S = 1.0  # a port taken at start is tried again this often (it may free up)
HEARTBEAT_PREFIX = b"hb."
RCVHWM = 1_000_000


def endpoint(host: str, port: int) -> str:
    return f"tcp://{host}:{port}"


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
        self._queue: collections.deque[tuple[bytes, msgspec.Struct | bytes]] = collections.deque()
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
        self.ring = Ring(ring_size)
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

    def publish(self, topic: str, event: msgspec.Struct | bytes) -> None:
        """Queue one message (an event, a book frame, or its JSON); never blocks, never raises (the
        caller may be a market-data callback)."""
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
        moved = []
        while len(queue) > self.max_queue // 2:
            topic, event = queue.popleft()
            moved.append((topic, event if isinstance(event, bytes) else encode(event)))
        spool.extend(moved)
        self.stats.overflowed += len(moved)

    def _next(self) -> tuple[bytes, bytes, int] | None:
        """The oldest message: the spool's first (it holds older ones), else the queue's."""
        if self._spool is not None and len(self._spool):
            topic, payload = self._spool.take(1)[0]
            return topic, payload, _seq_of(payload)
        if not self._queue:
            return None
        topic, event = self._queue.popleft()
        if isinstance(event, bytes):
            return topic, event, _seq_of(event)
        return topic, encode(event), getattr(event, "seq", 0)

    def _drain(self) -> None:
        # two plain sends: 0.7 µs a message; send_multipart(copy=False) builds a tracked Frame per
        # part, 2.4 µs (zero-copy pays only for large messages, these are ~250 bytes)
        send, more = self._socket.send, zmq.SNDMORE
        sent = 0
        ring = self.ring
        while True:
            if sent % 256 == 0:
                self._overflow()
            item = self._next()
            if item is None:
                return
            topic, payload, seq = item
            try:
                send(topic, more)
                send(payload)
                self.stats.published += 1
            except zmq.ZMQError as exc:
                self.stats.send_errors += 1
                log.error("publish on %s failed: %s", self.endpoint, exc)
            if seq:
                ring.append(topic, seq, payload)
            sent += 1
            if sent % 1024 == 0:
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


@dataclass
class SubscriberStats:
    received: int = 0
    gaps: int = 0
    missing: int = 0
    recovered_replay: int = 0
    recovered_store: int = 0
    unrecovered: int = 0
    duplicates: int = 0  # ordered: valid messages dropped, numbered at or below their topic's position
    behind: int = 0  # ordered=False: the same, kept (the consumer's writes are idempotent)
    restarts: int = 0
    heartbeats: int = 0
    last_seq: dict[str, int] = field(default_factory=dict)

    @property
    def recovered(self) -> int:
        return self.recovered_replay + self.recovered_store


Recover = Callable[[str, int, int], list[bytes]]

Validate = Callable[[Sequence[Sequence[bytes]]], Sequence[int | None]]
"""Checks a batch of `[topic, payload]` messages: per message its `seq` if the message is valid (0:
valid but not numbered), None if it is not. Only a valid message's number may move a position."""

MAX_FILLS = 1000  # gap requests queued for the fill thread; past it the oldest is given up (counted)


def envelope_seqs(messages: Sequence[Sequence[bytes]]) -> list[int | None]:
    """The bus's own check, for a consumer without a schema: two frames, a JSON object payload with
    an integer `seq` (or none: 0). It cannot tell a valid tick from an invalid one: see `Subscriber`."""
    return [_seq_of(m[1]) if len(m) == 2 else None for m in messages]


def _is_heartbeat(frames: Sequence[bytes]) -> bool:
    return len(frames) == 2 and frames[0].startswith(HEARTBEAT_PREFIX)


class Subscriber:
    """SUB socket for some topic prefixes that follows each topic's sequence numbers to find gaps.

    A jump in a topic's sequence numbers is a gap: the missing messages are fetched from the
    publisher's replay endpoint, then (what the ring no longer holds) from `recover`, e.g. Valkey;
    anything still missing is counted as unrecovered and logged as an error, never skipped silently.
    A late joiner subscribes first, reads what it missed from Valkey, then calls `prime` with the last
    sequence number it has.

    Anyone may publish on the port (a user's own ProfitDLL bridge), so a message's number counts only
    once the message is valid: an invalid message never moves a topic's position. What the numbers
    decide is the consumer's choice, `ordered`:

    - `ordered=True` (default; a consumer that wants each message once and in order, such as the
      features flow of `run --consume`): `receive` checks each batch with `validate` (by default only
      the bus envelope, `envelope_seqs`; a tick consumer passes `tickvault.recorder.frames.valid_seqs`) and
      passes an invalid message through unnumbered, for the consumer to reject. A gap is filled
      before the message after it, waiting for the replay endpoint. A valid message numbered at or
      below its topic's position is a duplicate and dropped (1 is a restarted publisher, accepted),
      so after `prime` the live messages up to the primed numbers are dropped.
    - `ordered=False` (the recorder: its writes are idempotent, so no valid message is ever dropped
      for its number): `receive` returns every message as it came, reads no number and waits for
      no gap; the consumer validates the messages and hands the numbers of the valid ones to `track`.
      Gaps are filled beside, on a thread of their own: `take_filled` returns what the fills fetched
      so far, `finish_fills` waits a bounded time for those under way. A number at or below the
      position (a restarted publisher, one numbering on its own) is counted (`behind`, `restarts`)
      and becomes the position; its message is the consumer's to keep.
    """

    def __init__(
        self,
        connect: str,
        topics: Iterable[str],
        *,
        replay: str | None = None,
        recover: Recover | None = None,
        rcvhwm: int = RCVHWM,
        context: zmq.Context[Any] | None = None,
        curve: ClientKeys | None = None,
        exact: bool = False,
        ordered: bool = True,
        validate: Validate | None = None,
    ) -> None:
        """`exact`: `topics` are whole topic names, not prefixes; messages of other topics that share
        a prefix (`tick_WDOFUT26` for `tick_WDOFUT`) are dropped unseen, gaps and all. `ordered` and
        `validate`: see the class docstring (`validate` is used only when `ordered`)."""
        self.endpoint = connect
        self.ordered = ordered
        self._validate = validate or envelope_seqs
        topics = list(topics)
        self._only = {t.encode() for t in topics} if exact else None
        self._context = context or zmq.Context.instance()
        self._socket = self._context.socket(zmq.SUB)
        self._socket.setsockopt(zmq.LINGER, 0)
        self._socket.setsockopt(zmq.RCVHWM, rcvhwm)
        if curve is not None:
            as_client(self._socket, curve)
        self._socket.connect(connect)
        for topic in topics:
            self._socket.setsockopt(zmq.SUBSCRIBE, topic.encode())
            self._socket.setsockopt(zmq.SUBSCRIBE, HEARTBEAT_PREFIX + topic.encode())
        self._cancel = threading.Event()  # ends a fill's wait for the replay endpoint (finish_fills)
        self._replay = (
            ReplayClient(replay, context=self._context, curve=curve, cancel=self._cancel) if replay else None
        )
        self._recover = recover
        self.stats = SubscriberStats()
        # ordered=False: a batch's heartbeats wait for `track` (its messages count first), gaps for the
        # fill thread; the fill thread alone uses the replay socket and counts recovered messages
        self._heartbeats: dict[str, int] = {}
        self._fills = threading.Condition()
        self._requests: collections.deque[tuple[str, int, int]] = collections.deque()
        self._busy = False
        self._filled: list[list[bytes]] = []
        self._filler: threading.Thread | None = None

    def prime(self, last_seq: dict[str, int]) -> None:
        """Declare what the caller already has (topic -> last sequence number)."""
        self.stats.last_seq.update(last_seq)

    def receive(
        self, timeout_ms: int = 100, max_messages: int = 5000, linger_ms: float = 0
    ) -> list[list[bytes]]:
        """Wait up to `timeout_ms` for a message, then take what is queued (up to `max_messages`),
        waiting up to `linger_ms` more for stragglers: a batch consumer (the recorder) trades a
        millisecond of latency for batches large enough to amortise its per-batch costs."""
        if not self._socket.poll(timeout_ms, zmq.POLLIN):
            return []
        messages = self._read(max_messages, linger_ms)
        self.stats.received += len(messages)
        if self._only is not None:  # other topics that share a subscribed prefix
            only = self._only
            messages = [m for m in messages if m[0].removeprefix(HEARTBEAT_PREFIX) in only]
        out: list[list[bytes]] = []
        if not self.ordered:
            for frames in messages:
                if _is_heartbeat(frames):
                    self._note_heartbeat(frames)
                else:
                    out.append(frames)
            return out
        data = [m for m in messages if not _is_heartbeat(m)]
        seqs = list(self._validate(data)) if data else []
        if len(seqs) != len(data):
            raise ValueError(f"validate returned {len(seqs)} results for {len(data)} messages")
        numbered = iter(seqs)
        for frames in messages:
            if _is_heartbeat(frames):
                self.stats.heartbeats += 1
                topic, newest = self._heartbeat(frames)
                self._advance(topic, newest, out)
            else:
                self._admit(frames, next(numbered), out)
        return out

    def _read(self, max_messages: int, linger_ms: float) -> list[list[bytes]]:
        out: list[list[bytes]] = []
        sock = self._socket
        recv, more = sock.recv, sock.getsockopt
        until = time.monotonic() + linger_ms / 1000
        while len(out) < max_messages:
            # recv + RCVMORE by hand: pyzmq's recv_multipart costs ~3 µs more per message
            try:
                frames = [recv(zmq.NOBLOCK)]
            except zmq.Again:
                left = until - time.monotonic()
                if left <= 0 or not sock.poll(max(1, int(left * 1000)), zmq.POLLIN):
                    break
                continue
            while more(zmq.RCVMORE):
                frames.append(recv())  # the rest of a message is already here
            out.append(frames)
        return out

    @staticmethod
    def _heartbeat(frames: Sequence[bytes]) -> tuple[str, int]:
        return frames[0][len(HEARTBEAT_PREFIX) :].decode("utf-8", "replace"), _seq_of(frames[1])

    def _note_heartbeat(self, frames: Sequence[bytes]) -> None:
        self.stats.heartbeats += 1
        topic, newest = self._heartbeat(frames)
        if newest > self._heartbeats.get(topic, 0):
            self._heartbeats[topic] = newest

    def _advance(self, topic: str, newest: int, out: list[list[bytes]] | None) -> None:
        """A heartbeat: messages up to `newest` were published; past the position the tail was dropped
        on the wire (a heartbeat is read after the messages sent before it)."""
        last = self.stats.last_seq.get(topic)
        if last is not None and newest > last:
            self._gap(topic, last + 1, newest, out)
            self.stats.last_seq[topic] = newest

    def _admit(self, frames: list[bytes], seq: int | None, out: list[list[bytes]]) -> None:
        if seq is None or seq <= 0:
            out.append(frames)  # invalid or not numbered: the consumer decides (and rejects)
            return
        topic = frames[0].decode("utf-8", "replace")
        last = self.stats.last_seq.get(topic)
        if last is not None:
            if seq <= last:
                if seq != 1:
                    self.stats.duplicates += 1
                    return
                self.stats.restarts += 1  # the publisher started numbering again
                log.warning("%s: sequence restarted at 1 after %d", topic, last)
            elif seq > last + 1:
                self._gap(topic, last + 1, seq - 1, out)
        self.stats.last_seq[topic] = seq
        out.append(frames)

    def track(self, valid: Iterable[tuple[str, int]]) -> None:
        """`ordered=False`: the topic and `seq` of each message of the last `receive` that the consumer
        found valid, in the order received; call it after every `receive` (that batch's heartbeats
        count after its messages). A jump forward is a gap, queued for the fill thread."""
        if self.ordered:
            raise RuntimeError("track() is for a Subscriber(ordered=False); an ordered one tracks itself")
        position = self.stats.last_seq
        for topic, seq in valid:
            if seq <= 0:
                continue  # not numbered
            last = position.get(topic)
            if last is not None:
                if seq <= last:
                    if seq == 1 and last > 1:
                        self.stats.restarts += 1
                        log.warning("%s: sequence restarted at 1 after %d", topic, last)
                    else:
                        self.stats.behind += 1  # a repeat, or a publisher numbering its own way
                elif seq > last + 1:
                    self._gap(topic, last + 1, seq - 1, None)
            position[topic] = seq  # follow the publisher's numbering, whichever way it went
        if self._heartbeats:
            for topic, newest in self._heartbeats.items():
                self._advance(topic, newest, None)
            self._heartbeats.clear()

    # -- gaps ------------------------------------------------------------------------------------

    def _gap(self, topic: str, first: int, last: int, out: list[list[bytes]] | None) -> None:
        """Messages `first..last` of `topic` are missing: fetched into `out` now (ordered), or queued
        for the fill thread (`out` None: ordered=False)."""
        self.stats.gaps += 1
        self.stats.missing += last - first + 1
        if out is not None:
            self._fetch(topic, first, last, out)
        elif self._replay is None and self._recover is None:
            self._unrecovered(topic, first, last)  # nowhere to ask
        else:
            with self._fills:
                if len(self._requests) >= MAX_FILLS:  # a publisher jumping about: bounded, and said
                    self._unrecovered(*self._requests.popleft(), given_up=True)
                self._requests.append((topic, first, last))
                if self._filler is None:
                    self._filler = threading.Thread(
                        target=self._fill_loop, name=f"gap-fill {self.endpoint}", daemon=True
                    )
                    self._filler.start()
                self._fills.notify_all()

    def _fill_loop(self) -> None:
        while True:
            with self._fills:
                while not self._requests and not self._cancel.is_set():
                    self._fills.wait()
                if self._cancel.is_set():
                    return
                topic, first, last = self._requests.popleft()
                self._busy = True
            got: list[list[bytes]] = []
            try:
                self._fetch(topic, first, last, got)
            except Exception:  # a failing fill must not end the fills after it
                log.exception("%s: filling %d..%d failed", topic, first, last)
                if len(got) <= last - first:
                    self._unrecovered(topic, first, last, last - first + 1 - len(got))
            finally:
                with self._fills:
                    self._filled.extend(got)
                    self._busy = False
                    self._fills.notify_all()

    def take_filled(self) -> list[list[bytes]]:
        """`ordered=False`: the messages the fills fetched since the last call (unchecked, as any)."""
        with self._fills:
            filled, self._filled = self._filled, []
        return filled

    def filling(self) -> bool:
        """True while a fill is queued or under way, or what it fetched is not yet taken."""
        with self._fills:
            return bool(self._requests or self._busy or self._filled)

    def finish_fills(self, timeout: float) -> None:
        """`ordered=False`: wait up to `timeout` s for the fills queued or under way, then give up the
        rest (counted unrecovered). What they fetched stays for `take_filled`."""
        deadline = time.monotonic() + timeout
        with self._fills:
            while self._requests or self._busy:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._fills.wait(left)
            self._cancel.set()
            self._fills.notify_all()
            filler, self._filler = self._filler, None
        if filler is not None:
            filler.join()
        with self._fills:
            left_over = list(self._requests)
            self._requests.clear()
        for request in left_over:
            self._unrecovered(*request, given_up=True)
        self._cancel.clear()

    def _fetch(self, topic: str, first: int, last: int, out: list[list[bytes]]) -> None:
        name = topic.encode()
        start, got = self._replay.fetch(topic, first, last) if self._replay else (last + 1, [])
        if not got:
            start = last + 1
        recovered = self._from_store(topic, first, start - 1, out)  # older than the ring holds
        self.stats.recovered_replay += len(got)
        out.extend([name, payload] for payload in got)
        recovered += len(got)
        tail = start + len(got)
        if tail <= last:
            recovered += self._from_store(topic, tail, last, out)
        if recovered < last - first + 1:
            self._unrecovered(topic, first, last, last - first + 1 - recovered)

    def _unrecovered(
        self, topic: str, first: int, last: int, count: int | None = None, *, given_up: bool = False
    ) -> None:
        count = last - first + 1 if count is None else count
        with self._fills:  # counted by the fill thread and by the consumer's
            self.stats.unrecovered += count
        why = " (given up: stopping, or too many gaps queued)" if given_up else ""
        log.error("%s: %d of messages %d..%d could not be recovered%s", topic, count, first, last, why)

    def _from_store(self, topic: str, first: int, last: int, out: list[list[bytes]]) -> int:
        if first > last or self._recover is None or self._cancel.is_set():
            return 0
        try:
            more = self._recover(topic, first, last)
        except Exception as exc:  # a failing fallback must not kill the subscriber
            log.error("%s: recovery of %d..%d failed: %s", topic, first, last, exc)
            return 0
        self.stats.recovered_store += len(more)
        out.extend([topic.encode(), payload] for payload in more)
        return len(more)

    def close(self) -> None:
        self.finish_fills(0)
        self._socket.close(0)
        if self._replay is not None:
            self._replay.close()
