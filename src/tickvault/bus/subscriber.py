"""The bus subscriber: SUB sockets on topic prefixes, sequence numbers per topic, gaps filled from the
publisher's replay endpoint and then from a recovery callable (the store), heartbeats that reveal a
lost tail. See `Subscriber` for its two modes (ordered for consumers, unordered for the recorder).
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import zmq

from tickvault.bus.curve import ClientKeys, as_client
from tickvault.bus.envelope import HEARTBEAT_PREFIX, envelope_seqs, heartbeat_seq, is_heartbeat
from tickvault.bus.ring import ReplayClient
from tickvault.errors import DataError

log = logging.getLogger("tickvault.bus")


RCVHWM = 1_000_000


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
    heartbeats_rejected: collections.Counter[str] = field(default_factory=collections.Counter)  # by reason
    last_seq: dict[str, int] = field(default_factory=dict)

    @property
    def recovered(self) -> int:
        return self.recovered_replay + self.recovered_store


Recover = Callable[[str, int, int], list[bytes]]

Validate = Callable[[Sequence[Sequence[bytes]]], Sequence[int | None]]
"""Checks a batch of `[topic, payload]` messages: per message its `seq` if the message is valid (0:
valid but not numbered), None if it is not. Only a valid message's number may move a position."""

MAX_FILLS = 1000  # gap requests queued for the fill thread; past it the oldest is given up (counted)
# ordered: a heartbeat further ahead of its topic's position than a replay ring holds (its default
# size) is absurd; a real gap that large is still filled, once a valid message shows it
MAX_HEARTBEAT_AHEAD = 100_000


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
      so after `prime` the live messages up to the primed numbers are dropped. A heartbeat is only a
      hint that the tail may have been lost: it moves no position; past the position it asks the
      replay endpoint once (one attempt, per position reached) and only the valid messages that come
      back move it. A heartbeat that is not a non-negative integer, or further than
      `MAX_HEARTBEAT_AHEAD` ahead, is rejected (`stats.heartbeats_rejected`, by reason).
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
        self._hinted: dict[str, int] = {}  # ordered: topic -> the position a heartbeat's fill was asked at
        self._fills = threading.Condition()
        self._requests: collections.deque[tuple[str, int, int]] = collections.deque()
        self._busy = False
        self._filled: list[list[bytes]] = []
        self._filler: threading.Thread | None = None

    def prime(self, last_seq: dict[str, int]) -> None:
        """Declare what the caller already has (topic -> last sequence number)."""
        self.stats.last_seq.update(last_seq)

    def receive(
        self,
        timeout_ms: int = 100,
        max_messages: int = 5000,
        linger_ms: float = 0,
        max_bytes: int | None = None,
    ) -> list[list[bytes]]:
        """Wait up to `timeout_ms` for a message, then take what is queued (up to `max_messages`, and
        no more once `max_bytes` of payload are in), waiting up to `linger_ms` more for stragglers: a
        batch consumer (the recorder) trades a millisecond of latency for batches large enough to
        amortise its per-batch costs."""
        if not self._socket.poll(timeout_ms, zmq.POLLIN):
            return []
        messages = self._read(max_messages, linger_ms, max_bytes)
        self.stats.received += len(messages)
        if self._only is not None:  # other topics that share a subscribed prefix
            only = self._only
            messages = [m for m in messages if m[0].removeprefix(HEARTBEAT_PREFIX) in only]
        out: list[list[bytes]] = []
        if not self.ordered:
            for frames in messages:
                if is_heartbeat(frames):
                    self._note_heartbeat(frames)
                else:
                    out.append(frames)
            return out
        data = [m for m in messages if not is_heartbeat(m)]
        seqs = list(self._validate(data)) if data else []
        if len(seqs) != len(data):
            raise ValueError(f"validate returned {len(seqs)} results for {len(data)} messages")
        numbered = iter(seqs)
        for frames in messages:
            if not is_heartbeat(frames):
                self._admit(frames, next(numbered), out)
            elif (beat := self._heartbeat(frames)) is not None:
                self._hint(*beat, out)
        return out

    def _read(self, max_messages: int, linger_ms: float, max_bytes: int | None) -> list[list[bytes]]:
        out: list[list[bytes]] = []
        sock = self._socket
        recv, more = sock.recv, sock.getsockopt
        until = time.monotonic() + linger_ms / 1000
        budget = max_bytes if max_bytes is not None else 1 << 62
        while len(out) < max_messages and budget > 0:
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
            budget -= len(frames[-1])
            out.append(frames)
        return out

    def _heartbeat(self, frames: Sequence[bytes]) -> tuple[str, int] | None:
        """(topic, newest), or None for a heartbeat that is not one (counted by reason)."""
        self.stats.heartbeats += 1
        topic = frames[0][len(HEARTBEAT_PREFIX) :].decode("utf-8", "replace")
        try:
            return topic, heartbeat_seq(frames[1])
        except DataError as exc:
            self._reject_heartbeat(topic, exc)
            return None

    def _reject_heartbeat(self, topic: str, exc: DataError) -> None:
        rejected = self.stats.heartbeats_rejected
        rejected[exc.kind] += 1
        if rejected[exc.kind] == 1:  # a stranger may send them at any rate: the first of each kind
            log.warning("%s: heartbeat rejected (%s); further ones are only counted", topic, exc)

    def _note_heartbeat(self, frames: Sequence[bytes]) -> None:
        beat = self._heartbeat(frames)
        if beat is not None and beat[1] > self._heartbeats.get(beat[0], 0):
            self._heartbeats[beat[0]] = beat[1]

    def _hint(self, topic: str, newest: int, out: list[list[bytes]]) -> None:
        """Ordered: a heartbeat says messages up to `newest` were published (it is read after the
        messages sent before it), so past the position the tail may have been dropped on the wire.
        Anyone may send one: its number moves nothing; the replay endpoint is asked once per position
        reached, and what comes back counts only as valid messages do."""
        last = self.stats.last_seq.get(topic)
        if last is None or newest <= last:
            return
        if newest - last > MAX_HEARTBEAT_AHEAD:
            ahead = DataError("ahead", f"heartbeat seq {newest} is {newest - last} past the position")
            self._reject_heartbeat(topic, ahead)
            return
        if self._replay is None or self._hinted.get(topic) == last:
            return
        self._hinted[topic] = last
        _, got = self._replay.fetch(topic, last + 1, newest, attempts=1)
        if not got:
            return
        self.stats.gaps += 1
        self.stats.missing += len(got)
        self.stats.recovered_replay += len(got)
        name = topic.encode()
        filled = [[name, payload] for payload in got]
        for frames, seq in zip(filled, self._validate(filled), strict=True):
            self._admit(frames, seq, out)

    def _advance(self, topic: str, newest: int) -> None:
        """`ordered=False`, a heartbeat: messages up to `newest` were published; past the position the
        tail was dropped on the wire (a heartbeat is read after the messages sent before it). The
        position follows the numbering whichever way it goes, so a stranger's number costs a fill."""
        last = self.stats.last_seq.get(topic)
        if last is not None and newest > last:
            self._gap(topic, last + 1, newest, None)
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
                self._advance(topic, newest)
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
