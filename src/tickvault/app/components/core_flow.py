"""The core flow after ingest: features, predictions, signals on the feature thread (works with
ZeroMQ and Valkey off). It gets each tick in-process (the default: fastest), or, with
ZMQ_CONSUME_ENABLED, from the bus like any other consumer: gaps filled from the replay ring, then
Valkey, so a consumer elsewhere would see exactly what it sees.

The order book (the book features) comes the same way as the ticks: each batch in-process, or with
ZMQ_CONSUME_ENABLED the `book_{SYMBOL}` frames of the book's bus (its replay ring fills gaps; the
store keeps no frames to fill from), validated as the recorder does (`decode_book_frames`, a refused
frame counted in `consume_book_rejected`) and split into their batches. The two buses keep no order
between them, so the feature service holds each tick until its symbol's book has reached it
(`FeatureService.wait_for_book`). A gap that cannot be filled leaves that symbol's live book invalid,
its book features None, until the next snapshot batch (`features_book_gaps`): reloading it from the
store would not help, the recorder fills its gaps from the same ring."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from tickvault.analytics.features import FeatureConfig
from tickvault.app.components.base import (
    DRAIN_TIMEOUT_S,
    SummaryPart,
    Wiring,
    detach,
    own_client_keys,
    primed,
    server_keys_of,
    spawn,
)
from tickvault.bus.book_framing import FRAME_HWM
from tickvault.bus.curve import is_loopback
from tickvault.bus.envelope import endpoint
from tickvault.bus.publisher import Publisher
from tickvault.bus.subscriber import Subscriber
from tickvault.config import Settings
from tickvault.domain.book import BookBatch, BookColumns
from tickvault.domain.events import Event, Tick, day_start_ms, decode_tick
from tickvault.domain.keys import book_topic, tick_topic
from tickvault.errors import DataError
from tickvault.ml.decisions import load_model
from tickvault.recorder.book_frames import decode_book_frames
from tickvault.recorder.frames import valid_seqs
from tickvault.recorder.recovery import store_recovery
from tickvault.store.api import Store, frame_to_ticks
from tickvault.workers.core_flow import FeatureService

log = logging.getLogger("tickvault.system")


def feature_config(settings: Settings) -> FeatureConfig:
    """The feature engine's settings: its emit interval, and TIME_TRAVEL_ENABLED (off: the
    history-aware features are None and no previous session is read)."""
    return FeatureConfig(
        emit_interval_ms=settings.features_interval_ms, time_travel=settings.time_travel_enabled
    )


class CoreFlow:
    name = "core_flow"

    def __init__(self, wiring: Wiring, handlers: list[Callable[[Event], None]], warm_up: bool) -> None:
        self.wiring = wiring
        self.handlers = handlers  # features, predictions, signals, in-process
        self.warm_up = warm_up
        self.features: FeatureService | None = None
        self.consumer: Subscriber | None = None
        self.book_consumer: Subscriber | None = None
        self.consume_rejected = 0
        self.consume_book_rejected = 0
        self._publisher: Publisher | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._book_thread: threading.Thread | None = None

    def start(self) -> None:
        w = self.wiring
        self.features = w.features = FeatureService(
            w.settings.symbols,
            store=Store(w.connection.client("features"), w.connection.keys) if w.connection else None,
            model=load_model(w.settings.model_file),
            threshold=w.settings.signal_threshold,
            config=feature_config(w.settings),
            signal_bind=self._signal_bind(),
            handlers=self.handlers,
            curve=server_keys_of(w.settings),
            history=self._live_store(),
        )
        self.features.start()
        self._feed(self.features)
        lasts = w.lasts()
        if self.warm_up and w.store is not None and lasts:
            self.features.warm_up(_session_so_far(w.store, lasts), _stored_books(w.store, lasts))

    def _live_store(self) -> Store | None:
        """In a namespace (a replay), previous sessions come from the live data, as they would live."""
        connection = self.wiring.connection
        if connection is None or not connection.keys.namespace:
            return None
        return Store(connection.client("history"), connection.keys.live())

    def _signal_bind(self) -> str | None:
        w, s = self.wiring, self.wiring.settings
        if not s.zmq_enabled:
            return None
        bind = "tcp://127.0.0.1:*" if w.private_bus else endpoint(s.zmq_host, s.zmq_signal_port)
        if not is_loopback(bind) and server_keys_of(s) is None and not s.zmq_allow_insecure:
            w.degraded.append(f"signal port not bound: {bind} is beyond loopback without CURVE")
            log.error("%s (set ZMQ_CURVE_SERVER_SECRET or ZMQ_ALLOW_INSECURE=true)", w.degraded[-1])
            return None
        return bind

    def _feed(self, features: FeatureService) -> None:
        w = self.wiring
        publisher = self._publisher = w.publisher
        if not w.settings.zmq_consume_enabled or publisher is None:
            if w.settings.zmq_consume_enabled:
                log.warning("ZMQ_CONSUME_ENABLED but no bus: the core flow is fed in-process")
            w.ingest.add_handler(features.submit)
            w.ingest.book_handlers.append(features.submit_book)  # in the source's order with the ticks
            return
        if w.book_unstored is not None:  # a book runs (set by the Book component, started before)
            features.wait_for_book()
            if w.book_publisher is None:  # its bus is off: its batches in-process, ahead of the ticks
                w.ingest.book_handlers.append(features.submit_book)
            else:
                self._consume_book(w.book_publisher, features)
        # counted before subscribing: the subscriptions the publisher has seen, then one more, ours
        joined = 1 + sum(b"tick_".startswith(sub) for sub in publisher.subscriptions())
        self.consumer = Subscriber(
            endpoint("127.0.0.1", publisher.port),
            ["tick_"],
            replay=publisher.replay_endpoint,
            recover=store_recovery(w.store) if w.store is not None else None,
            curve=own_client_keys(w.settings, w.private_bus),
            validate=valid_seqs,  # an invalid frame's number must not make valid ticks look stale
        )
        self.consumer.prime(primed(w.settings.symbols, w.lasts()))
        self._thread = spawn("bus-consumer", self._consume, self.consumer, features)
        # subscribed before the first tick: a fill at start would deliver the early ticks of one
        # symbol after later ticks of another, and cross-symbol features see the order
        if not publisher.wait_for_subscriber("tick_", timeout=10, count=joined):
            log.warning("the bus consumer did not subscribe within 10 s; early ticks may need recovery")

    def _consume_book(self, publisher: Publisher, features: FeatureService) -> None:
        w = self.wiring
        joined = 1 + sum(b"book_".startswith(sub) for sub in publisher.subscriptions())  # as for ticks
        self.book_consumer = Subscriber(
            endpoint("127.0.0.1", publisher.port),
            ["book_"],
            replay=publisher.replay_endpoint,
            rcvhwm=FRAME_HWM,
            curve=own_client_keys(w.settings, w.private_bus),
        )
        # what the warm-up's stored book holds; a symbol with nothing stored starts at 0 (a gap to fill)
        stored = {s: w.store.book_position(s).frame for s in w.settings.symbols} if w.store else {}
        self.book_consumer.prime({book_topic(s): stored.get(s, 0) for s in w.settings.symbols})
        self._book_thread = spawn("bus-book-consumer", self._consume_frames, self.book_consumer, features)
        if not publisher.wait_for_subscriber("book_", timeout=10, count=joined):
            log.warning("the book consumer did not subscribe within 10 s; early frames may need recovery")

    def _consume_frames(self, subscriber: Subscriber, features: FeatureService) -> None:
        while not self._stop.is_set():
            messages = subscriber.receive(timeout_ms=50, max_messages=1000)
            if not messages:
                continue
            decoded = decode_book_frames(messages)
            for rejected in decoded.rejected:
                self.consume_book_rejected += 1
                log.warning("bus consumer rejected a book frame: %s", rejected.error)
            for part in decoded.parts:
                try:
                    events = part.cols.events()
                except DataError as exc:  # checked already by the decode: cannot happen, never a crash
                    self.consume_book_rejected += 1
                    log.warning("bus consumer rejected book batches of %s: %s", part.cols.symbol, exc)
                    continue
                start = 0
                for end in part.cols.batch_ends().tolist():
                    features.submit_book(BookBatch(events[start : end + 1]))
                    start = end + 1

    def _consume(self, subscriber: Subscriber, features: FeatureService) -> None:
        while not self._stop.is_set():
            for frames in subscriber.receive(timeout_ms=50, max_messages=1000):
                try:
                    if len(frames) != 2:
                        raise DataError("frames", f"expected [topic, payload], got {len(frames)} frames")
                    tick = decode_tick(frames[1])
                except DataError as exc:
                    self.consume_rejected += 1
                    log.warning("bus consumer rejected a message: %s", exc)
                    continue
                features.submit(tick)

    def _caught_up(self) -> bool:
        assert self.consumer is not None
        done = self.consumer.stats.last_seq
        if not all(done.get(tick_topic(s), 0) >= n for s, n in self.wiring.ingest.produced_seq().items()):
            return False
        if self.book_consumer is None or self.wiring.book_publisher is None:
            return True
        frames = self.book_consumer.stats.last_seq
        sent = self.wiring.book_publisher.framer.last  # final: the source has stopped, the queue flushed
        return all(frames.get(topic.decode(), 0) >= n for topic, n in sent.items())

    def stop(self) -> SummaryPart | None:
        if self.consumer is not None and self._publisher is not None:
            # the core flow must see every tick and book frame produced before it stops
            self._publisher.flush(DRAIN_TIMEOUT_S)
            if self.wiring.book_publisher is not None:
                self.wiring.book_publisher.flush(DRAIN_TIMEOUT_S)
            deadline = time.monotonic() + DRAIN_TIMEOUT_S
            while not self._caught_up() and time.monotonic() < deadline:
                time.sleep(0.01)
        self._stop.set()
        for thread in (self._thread, self._book_thread):
            if thread is not None:
                thread.join(10)  # it hands the features the rest of its last batch first
        if self.features is not None:
            detach(self.wiring.ingest, self.features.submit)
            book = self.features.submit_book
            self.wiring.ingest.book_handlers = [h for h in self.wiring.ingest.book_handlers if h != book]
            self.features.stop()  # the ticks held for their book go now: every input is in
        for consumer in (self.consumer, self.book_consumer):
            if consumer is not None:
                consumer.close()
        return None

    def counters(self) -> dict[str, int]:
        out: dict[str, int] = {}
        if self.consumer is not None:  # ZMQ_CONSUME_ENABLED: the core flow's own bus subscriber
            bus = self.consumer.stats
            out.update(
                consumer_gaps=bus.gaps, consumer_recovered=bus.recovered,
                consumer_unrecovered=bus.unrecovered, consume_rejected=self.consume_rejected,
            )  # fmt: skip
            out.update({f"consumer_heartbeat_rejected_{k}": n for k, n in bus.heartbeats_rejected.items()})
        if self.book_consumer is not None:
            book = self.book_consumer.stats
            out.update(
                consumer_book_gaps=book.gaps, consumer_book_recovered=book.recovered,
                consumer_book_unrecovered=book.unrecovered, consume_book_rejected=self.consume_book_rejected,
            )  # fmt: skip
        if self.features is not None:
            out.update(self.features.counters())
        return out


def _stored_books(store: Store, lasts: dict[str, Tick]) -> Callable[[], list[BookColumns]]:
    """The stored books of the symbols of `lasts` as they are now (before this run adds to them): from
    the newest snapshot at or before the symbol's last stored tick (the book may be stored further:
    the new ticks before its end read it as it was then) through the newest update."""
    positions = {symbol: store.book_position(symbol) for symbol in lasts}
    return lambda: [
        store.book_replay(s, min(p.ms, lasts[s].timestamp_ms), p.ms)[0]
        for s, p in positions.items()
        if p.kind is not None
    ]


def _session_so_far(store: Store, lasts: dict[str, Tick]) -> Callable[[], list[Tick]]:
    """The stored ticks of the session of the newest stored tick, every symbol, in time order."""
    symbols = tuple(lasts)
    newest = max(t.timestamp_ms for t in lasts.values())
    return lambda: frame_to_ticks(store.ticks(list(symbols), day_start_ms(newest), newest))
