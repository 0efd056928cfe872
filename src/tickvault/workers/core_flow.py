"""Live features, predictions and signals: the in-process core flow after ingest.

Ingest hands each tick to `FeatureService.submit` (a queue put: the source callback never waits for
feature work). The service's own thread runs the feature engine, then the model if one is loaded, and
fans the results out: in-process handlers first (the core flow works with ZeroMQ and Valkey off), then
the ZeroMQ signal port (`features_{SYMBOL}`, `signal_{SYMBOL}`), then Valkey streams
(`stream:features|predictions|signals:{SYMBOL}`) in batches. A failing output is counted and logged;
it never stops the others.

Ticks and book batches taken from two buses (`run` with ZMQ_CONSUME_ENABLED) arrive in no known
order between them, so the service can merge them by time (`wait_for_book`): a tick at T waits until
its symbol's book has brought a batch of effective time >= T (then every batch stamped before T is
in), at most `BOOK_WAIT_S`, and the ticks behind it wait with it, so ticks are folded in the order
they came; a batch waits for the first tick after it, so the live book never runs ahead of the
ticks. Before each tick its symbol's batches of effective time < T are applied: what in-process
order gives. A wait that runs out is counted (`features_book_waits_expired`); a batch stamped
before T that comes after it then counts in `features_book_late`. A symbol whose wait ran out
before it ever had a book is not waited for again until its book appears (a symbol the source
makes no book for).

Previous sessions' statistics come from the store (`store_history`), cached in Valkey per symbol and
day, so every process and every backfill sees the same history for the same day. A session that
starts while Valkey is unreachable starts at once without them (`HistoryLookup`): they are looked
up again in the background and the engine catches up when they arrive.
"""

from __future__ import annotations

import collections
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import zmq

from tickvault.analytics.features import (
    FeatureConfig,
    FeatureEngine,
)
from tickvault.bus.curve import ServerKeys, as_server
from tickvault.bus.publisher import BIND_RETRY_S
from tickvault.domain.book import BookBatch, BookColumns
from tickvault.domain.events import Event, Features, Prediction, Signal, Tick, encode
from tickvault.domain.keys import features_topic, signal_topic
from tickvault.errors import StoreError, StoreUnavailable
from tickvault.ml.decisions import Model, decide, model_covers
from tickvault.store.api import Store
from tickvault.workers.session_history import HistoryLookup, store_history

log = logging.getLogger("tickvault.features")

BOOK_WAIT_S = 1.0  # the longest a tick waits for its book (wall time)
# batches of a symbol kept for its next tick at most: past it (a book without trades for long) the
# oldest are applied, and the live book keeps the values ticks behind them read (HELD moments)
BOOK_QUEUE_MAX = 10_000


@dataclass
class FeatureStats:
    ticks: int = 0
    features: int = 0
    predictions: int = 0
    signals: int = 0
    late: int = 0
    errors: int = 0
    published: int = 0
    publish_errors: int = 0
    stored: int = 0
    store_errors: int = 0
    dropped: int = 0  # events not written to Valkey because it was down too long (recomputable)
    warmed_up: int = 0  # stored ticks of the session folded in at start (a restart mid-session)
    book_waits_expired: int = 0  # ticks folded before their book reached them (see the module docstring)
    latency_ns: list[int] = field(default_factory=list)  # tick handed in -> prediction out (last 100k)


class FeatureService:
    def __init__(
        self,
        symbols: Iterable[str],
        *,
        store: Store | None = None,
        model: Model | None = None,
        threshold: float = 0.55,
        config: FeatureConfig | None = None,
        signal_bind: str | None = None,
        handlers: list[Callable[[Event], None]] | None = None,
        max_pending_writes: int = 100_000,
        curve: ServerKeys | None = None,
        history: Store | None = None,
    ) -> None:
        self.store = store
        # `history`: the store previous sessions are read from when not `store` (a replay's: the live one)
        self._history = (
            HistoryLookup(store_history(history or store, cache=store.keys)) if store is not None else None
        )
        self.engine = FeatureEngine(symbols, config, history=self._history)
        self.model = model
        self._unmodelled: set[str] = set()
        self.threshold = threshold
        self.handlers = list(handlers or [])
        self.stats = FeatureStats()
        self._inbox: queue.SimpleQueue[tuple[Tick, int] | BookBatch | Callable[[], Iterable[Tick]] | None] = (
            queue.SimpleQueue()
        )
        self._pending: list[Event] = []
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._writer: threading.Thread | None = None
        self._max_pending = max_pending_writes
        self._socket: zmq.Socket[bytes] | None = None
        self.signal_endpoint: str | None = None
        # a taken signal port is retried every BIND_RETRY_S from the feature thread (the socket's owner)
        self.signal_problem = ""
        self._rebind: tuple[str, ServerKeys | None] | None = None
        self._next_bind = 0.0
        if signal_bind:
            self._bind(signal_bind, curve)
        self._thread: threading.Thread | None = None
        self.idle = threading.Event()
        self._book_wait_s: float | None = None  # None: ticks are not held for the book
        self._held: collections.deque[tuple[Tick, int, float]] = collections.deque()  # tick, ns, deadline
        self._bookless: set[str] = set()  # waited for in vain, no book yet: not waited for
        self._books: dict[str, collections.deque[tuple[int, BookBatch]]] = {}  # (effective time, batch)
        self._book_reach: dict[str, int] = {}  # the effective time of the newest batch taken

    def wait_for_book(self, wait_s: float | None = None) -> None:
        """Hold each tick until its symbol's book has reached its time, at most `wait_s` (default
        BOOK_WAIT_S; call before the first tick; see the module docstring)."""
        self._book_wait_s = BOOK_WAIT_S if wait_s is None else wait_s

    def _bind(self, address: str, curve: ServerKeys | None) -> None:
        sock: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.PUB)
        sock.setsockopt(zmq.LINGER, 0)
        if curve is not None:
            as_server(sock, curve)
        sock.setsockopt(zmq.SNDHWM, 100_000)
        try:
            sock.bind(address)
        except zmq.ZMQError as exc:
            sock.close()
            if self._rebind is None:
                log.error(
                    "signal port %s unavailable (%s): features and signals stay in-process and in Valkey;"
                    " retrying every %g s",
                    address,
                    exc,
                    BIND_RETRY_S,
                )
            self.signal_problem = f"signal port {address} unavailable ({exc})"
            self._rebind = (address, curve)
            self._next_bind = time.monotonic() + BIND_RETRY_S
            return
        if self._rebind is not None:
            log.warning("signal port %s bound: signals flow on ZeroMQ again", address)
        self._rebind, self.signal_problem = None, ""
        self._socket = sock
        self.signal_endpoint = sock.getsockopt_string(zmq.LAST_ENDPOINT)  # last: the rest is done

    def _retry_bind(self) -> None:
        if self._rebind is not None and time.monotonic() >= self._next_bind:
            self._bind(*self._rebind)

    # -- input -----------------------------------------------------------------------------------

    def submit(self, tick: Tick) -> None:
        """The ingest handler: never blocks, never raises into the source."""
        self._inbox.put((tick, time.perf_counter_ns()))

    def submit_book(self, batch: BookBatch) -> None:
        """The ingest book handler: the batch goes to the engine's live book (the book features) in
        order with the ticks; never blocks, never raises into the source."""
        self._inbox.put(batch)

    def warm_up(
        self, load: Callable[[], Iterable[Tick]], books: Callable[[], Iterable[BookColumns]] | None = None
    ) -> None:
        """Before the live ticks: fold the ticks `load` returns (the session so far, from the store)
        into the engine without sending anything, then start the live books from the stored ones
        `books` returns, so a restarted run's features go on as if it had never stopped (and equal a
        backfill of the whole session from the stored ticks and book). Runs on the feature thread:
        the source never waits for it; live ticks and book batches queue meanwhile."""
        if books is None:
            self._inbox.put(load)
            return

        def both() -> Iterable[Tick]:
            yield from load()
            for cols in books():
                state = self.engine.states.get(cols.symbol)
                self.engine.load_book(cols, live_after_ms=state.last_ms if state is not None else -1)

        self._inbox.put(both)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="features", daemon=True)
        self._thread.start()
        # Valkey writes on their own thread: a slow or dead server never delays features or signals
        self._writer = threading.Thread(target=self._write_loop, name="features-writer", daemon=True)
        self._writer.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Process everything submitted, write what is pending, close."""
        self._inbox.put(None)
        if self._thread is not None:
            self._thread.join(timeout)
        if self._history is not None:
            self._history.stop(timeout)
        self._done.set()
        if self._writer is not None:
            self._writer.join(timeout)
        self._flush()
        if self._socket is not None:
            self._socket.close()

    def _run(self) -> None:
        while True:
            try:
                wait = 0.05 if not self._held else max(0.0, min(0.05, self._held[0][2] - time.monotonic()))
                item = self._inbox.get(timeout=wait)
                if item is None:
                    self._release(until_empty=True)  # every input is in: nothing more to wait for
                    return
                self.idle.clear()
                if isinstance(item, BookBatch):
                    self._book(item)
                    self._release()
                    continue
                if callable(item):
                    self._replay(item)
                    continue
                if self._book_wait_s is None:
                    self.process(*item)
                else:
                    self._held.append((*item, time.monotonic() + self._book_wait_s))
                    self._release()
            except queue.Empty:
                self._release()
                if not self._held:
                    self.idle.set()
            self._retry_bind()

    def _release(self, *, until_empty: bool = False) -> None:
        """Fold the held ticks, first come first, while the first one's book has reached it or its
        wait has run out; before each, its book's batches of effective time before it."""
        held, reach = self._held, self._book_reach
        now = time.monotonic()
        while held:
            tick, received_ns, deadline = held[0]
            symbol = tick.symbol
            book_ms = reach.get(symbol)
            if book_ms is None:
                book_ms = self.engine.book_time(symbol)  # started from the store, nothing new yet
            reached = book_ms is not None and book_ms >= tick.timestamp_ms
            if not (until_empty or reached or symbol in self._bookless):
                if now < deadline:
                    return
                self.stats.book_waits_expired += 1
                if book_ms is None:
                    self._bookless.add(symbol)
                    log.warning(
                        "%s: no book within %g s of its tick; its ticks do not wait for it",
                        symbol,
                        self._book_wait_s,
                    )
            held.popleft()
            self._apply_books(symbol, tick.timestamp_ms)
            self.process(tick, received_ns)
        if until_empty:
            for symbol in list(self._books):
                self._apply_books(symbol, 2**62)

    def _apply_books(self, symbol: str, before_ms: int) -> None:
        queued = self._books.get(symbol)
        while queued and queued[0][0] < before_ms:
            self._apply(queued.popleft()[1])

    def _book(self, batch: BookBatch) -> None:
        if self._book_wait_s is None or not batch:
            self._apply(batch)
            return
        # held ticks: the batch waits for the first tick after it (the book never runs ahead of the
        # ticks, which it may on another bus by far more than `LiveBookFeatures` keeps)
        symbol = batch[0].symbol
        self._bookless.discard(symbol)  # its book has come: its ticks wait for it again
        if symbol not in self._book_reach:
            loaded = self.engine.book_time(symbol)  # a book started from the store (a warm-up)
            self._book_reach[symbol] = -1 if loaded is None else loaded
        effective = self._book_reach[symbol] = max(self._book_reach[symbol], *(e.timestamp_ms for e in batch))
        queued = self._books.setdefault(symbol, collections.deque())
        queued.append((effective, batch))
        if len(queued) > BOOK_QUEUE_MAX:
            self._apply(queued.popleft()[1])

    def _apply(self, batch: BookBatch) -> None:
        try:
            for update in batch:
                self.engine.on_book(update)
        except Exception:
            self.stats.errors += 1
            log.exception("feature engine failed on a book batch of %s", batch[0].symbol if batch else "?")

    def _replay(self, load: Callable[[], Iterable[Tick]]) -> None:
        started = time.monotonic()
        try:
            folded = 0
            for tick in load():
                self.engine.on_tick(tick)  # what it would emit was emitted then (and stored)
                folded += 1
        except Exception as exc:  # a store that cannot be read: the features start cold, loudly
            self.stats.errors += 1
            log.error("features start without the session so far (could not read it: %s)", exc)
            return
        self.stats.warmed_up = folded
        self.stats.late = self.engine.late
        if folded:
            log.info(
                "features warmed up on %d ticks of the session in %.1f s", folded, time.monotonic() - started
            )

    def _write_loop(self) -> None:
        while not self._done.wait(0.05):
            if not self._flush():
                self._done.wait(0.5)  # Valkey unreachable: try again shortly, events stay queued

    # -- work ------------------------------------------------------------------------------------

    def process(self, tick: Tick, received_ns: int | None = None) -> list[Event]:
        """Fold one tick; return (and send out) the features, prediction and signal it produced."""
        self.stats.ticks += 1
        if self._history is not None and self._history.arrived:
            for symbol, day, history in self._history.take_arrived():
                self.engine.set_history(symbol, day, history)
        try:
            features = self.engine.on_tick(tick)
        except Exception:
            self.stats.errors += 1
            log.exception("feature engine failed on %s trade %s", tick.symbol, tick.trade_id)
            return []
        self.stats.late = self.engine.late
        if features is None:
            return []
        out: list[Event] = [features]
        self.stats.features += 1
        if self.model is not None and self._predicts(tick.symbol):
            try:
                probabilities = self.model.predict_proba_one(features.values)
                action, confidence = decide(probabilities, self.threshold)
                sym, ts, ms, name = tick.symbol, tick.timestamp, tick.timestamp_ms, self.model.name
                out.append(
                    Prediction(
                        symbol=sym, timestamp=ts, timestamp_ms=ms, model=name, probabilities=probabilities
                    )
                )
                signal = Signal(
                    symbol=sym,
                    timestamp=ts,
                    timestamp_ms=ms,
                    action=action,
                    confidence=confidence,
                    model=name,
                )
                out.append(signal)
                self.stats.predictions += 1
                self.stats.signals += 1
            except Exception:
                self.stats.errors += 1
                log.exception("model failed on the features of %s at %s", tick.symbol, tick.timestamp)
        if received_ns is not None:
            if len(self.stats.latency_ns) >= 100_000:
                del self.stats.latency_ns[:50_000]
            self.stats.latency_ns.append(time.perf_counter_ns() - received_ns)
        for event in out:
            self._emit(event)
        return out

    def _predicts(self, symbol: str) -> bool:
        assert self.model is not None
        if model_covers(self.model, symbol):
            return True
        if symbol not in self._unmodelled:
            self._unmodelled.add(symbol)
            log.warning("%s is not a symbol of model %s: features only for it", symbol, self.model.name)
        return False

    def _emit(self, event: Event) -> None:
        for handler in self.handlers:
            try:
                handler(event)
            except Exception:
                self.stats.errors += 1
                log.exception("features handler %r failed", handler)
        if self._socket is not None and not isinstance(event, Prediction):
            topic = (
                features_topic(event.symbol) if isinstance(event, Features) else signal_topic(event.symbol)
            )
            try:
                self._socket.send_multipart([topic.encode(), encode(event)], flags=zmq.NOBLOCK)
                self.stats.published += 1
            except zmq.ZMQError:
                self.stats.publish_errors += 1
        if self.store is not None:
            with self._lock:
                if len(self._pending) >= self._max_pending:
                    self.stats.dropped += 1
                else:
                    self._pending.append(event)

    def _flush(self) -> bool:
        """Write what is pending; False if Valkey was unreachable (the events stay queued)."""
        with self._lock:
            if self.store is None or not self._pending:
                return True
            batch, self._pending = self._pending, []
        try:
            self.stats.stored += self.store.append_events(batch)  # type: ignore[arg-type]
        except StoreUnavailable as exc:
            self.stats.store_errors += 1
            with self._lock:
                self._pending = batch + self._pending  # kept for the next try (bounded in _emit)
            log.warning("features not written to Valkey yet (%s); %d waiting", exc, len(self._pending))
            return False
        except StoreError as exc:
            self.stats.store_errors += 1
            self.stats.dropped += len(batch)
            log.error("features refused by Valkey (%s); %d events not stored", exc, len(batch))
        return True

    def counters(self) -> dict[str, int]:
        s = self.stats
        return {
            "feature_ticks": s.ticks, "features": s.features, "predictions": s.predictions,
            "signals": s.signals,
            "feature_errors": s.errors, "features_stored": s.stored, "feature_store_errors": s.store_errors,
            "features_dropped": s.dropped, "late_for_features": s.late, "features_warmed_up": s.warmed_up,
            "feature_sessions_without_history": self._history.misses if self._history else 0,
            "features_published": s.published, "feature_publish_errors": s.publish_errors,
            "features_book_late": self.engine.book_late, "features_book_rejected": self.engine.book_rejected,
            "features_book_gaps": self.engine.book_gaps, "features_book_waits_expired": s.book_waits_expired,
        }  # fmt: skip
