"""`tickvault run`: the source, the bus, the recorder, wired per settings, with a clean shutdown.

Order matters: the recorder subscribes before the source starts (no slow-joiner loss), and on stop the
source stops first, the publisher drains, and the recorder is given time to write everything the
source produced before anything is closed.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import msgspec
import zmq

from tickvault.analytics.features import FeatureConfig
from tickvault.app.book_flow import BookFlow
from tickvault.bus.curve import ClientKeys, ServerKeys, allow_client, client_keys, is_loopback, server_keys
from tickvault.bus.ingest import Ingest
from tickvault.bus.pubsub import BIND_RETRY_S, Publisher, Subscriber, endpoint
from tickvault.config import Settings
from tickvault.domain.book import BookBatch
from tickvault.domain.events import B3_TZ, Event, Tick, day_start_ms, decode_tick
from tickvault.domain.keys import tick_topic
from tickvault.errors import BusError, ConfigError, DataError, InsecureBind, StoreError, TickvaultError
from tickvault.recorder.frames import valid_seqs
from tickvault.recorder.recorder import Recorder
from tickvault.recorder.recovery import store_recovery
from tickvault.sources.book_simulator import BookMarketSimulator
from tickvault.sources.simulator import SESSION, MarketSimulator, pace
from tickvault.store.api import Store, frame_to_ticks
from tickvault.store.connection import Connection
from tickvault.store.health import HealthReporter
from tickvault.workers.candle_worker import CandleWorker
from tickvault.workers.core_flow import FeatureService, load_model, model_covers
from tickvault.workers.feature_worker import FeatureWorker
from tickvault.workers.predictor_worker import PredictorWorker

log = logging.getLogger("tickvault.system")

DRAIN_TIMEOUT_S = 60.0
# An unpaced source (a file, the simulator at speed 0) is held back while this many of its ticks are
# not yet in Valkey: memory stays bounded, --duration means market produced and stored, and a stop
# drains in seconds. A live source (ProfitDLL, a paced simulator) is never held back: it is buffered.
MAX_UNSTORED = 20_000
_CHECK_EVERY = 1024
COMPONENTS = (None, "source", "recorder", "candles", "features", "predictor")


@dataclass
class RunSummary:
    generated: Counter[str] = field(default_factory=Counter)
    published: int = 0
    stored: Counter[str] = field(default_factory=Counter)
    duplicates: int = 0
    rejected: int = 0
    elapsed_s: float = 0.0
    drained: bool = True
    durable: bool = False
    where: str = ""
    counters: dict[str, int] = field(default_factory=dict)

    @property
    def generated_total(self) -> int:
        return sum(self.generated.values())


def last_stored(store: Store | None, symbols: tuple[str, ...]) -> dict[str, Tick]:
    """Per symbol, the newest stored tick by exchange time, carrying the highest stored sequence
    number (they differ when ticks were stored late): where a restarted pipeline resumes."""
    if store is None:
        return {}
    out: dict[str, Tick] = {}
    for symbol in symbols:
        last = store.last_tick(symbol)
        if last is not None:
            out[symbol] = msgspec.structs.replace(last, seq=max(last.seq, store.last_seq(symbol)))
    return out


def feature_config(settings: Settings) -> FeatureConfig:
    """The feature engine's settings: its emit interval, and TIME_TRAVEL_ENABLED (off: the
    history-aware features are None and no previous session is read)."""
    return FeatureConfig(
        emit_interval_ms=settings.features_interval_ms, time_travel=settings.time_travel_enabled
    )


def simulator_resuming(
    settings: Settings, lasts: dict[str, Tick], *, book: bool = False
) -> MarketSimulator | BookMarketSimulator:
    """A simulator that continues after what the store already holds, so a second run adds new
    ticks (new times, new trade ids) instead of replaying the first run's ones as duplicates.
    `book`: the same ticks with an order book around them (`BookMarketSimulator`)."""
    start = SESSION.start_for(datetime.now(B3_TZ))
    first_ids: dict[str, int] = {}
    if lasts:
        # the moment the simulator will really start (a stop at the close resumes at the next open,
        # where trade ids restart at 1)
        start = SESSION.trading_moment(
            max(start, max(t.timestamp for t in lasts.values()) + timedelta(milliseconds=1))
        )
        session = start.astimezone(B3_TZ).strftime("%Y%m%d")
        first_ids = {s: t.trade_id + 1 for s, t in lasts.items() if t.session == session}
    simulator = BookMarketSimulator if book else MarketSimulator
    return simulator(settings.symbols, seed=settings.seed, start=start, first_trade_ids=first_ids)


class System:
    """One run of the pipeline. `source` defaults to the simulator; `on_tick` handlers form the
    in-process core flow."""

    def __init__(
        self,
        settings: Settings,
        *,
        source: Callable[[Store | None], Iterator[Tick]] | None = None,
        handlers: list[Callable[[Tick], None]] | None = None,
        event_handlers: list[Callable[[Event], None]] | None = None,
        only: str | None = None,
        private_bus: bool = False,
        record_only: tuple[str, ...] | None = None,
        hold_back: bool | None = None,
        warm_up: bool | None = None,
    ) -> None:
        """`only` runs one component in this process: "source" (source, ingest, publisher, features),
        "recorder" (subscribes to the configured ports and records), "candles" (follows the stored
        tick streams and writes the candle streams), "features" (one of several feature workers
        sharing the symbols' tick streams) or "predictor" (one of several workers sharing the
        symbols' feature streams). `hold_back`: whether the source may wait for the recorder
        (default: when it is unpaced, speed 0; never for a live feed). `warm_up`: whether the
        features start from the stored session so far (default: for the simulator, which continues
        the stored market; a file of older ticks would only find a warmed engine ahead of it)."""
        if only not in COMPONENTS:
            raise ConfigError("--only", only, f"must be one of {', '.join(c for c in COMPONENTS if c)}")
        self.only = only
        # `run --only recorder --symbols A,B`: this recorder records exactly these symbols, so several
        # recorders can share one bus (each symbol has one writer: see writer leases)
        self.record_only = record_only
        self.private_bus = (
            private_bus  # a batch job (ingest) binds free loopback ports, not the configured ones
        )
        self.settings = settings
        self._source_factory = source
        self.hold_back = settings.speed == 0 if hold_back is None else hold_back
        self.warm_up = source is None if warm_up is None else warm_up
        self.connection: Connection | None = None
        self.store: Store | None = None
        self.publisher: Publisher | None = None
        self.recorder: Recorder | None = None
        self.ingest = Ingest(handlers=handlers)
        self.book = BookFlow(settings, self.ingest, private_bus=private_bus)  # the order book's path
        self.event_handlers = list(event_handlers or [])  # features, predictions, signals in-process
        self.degraded: list[str] = []  # what could not start: logged, in the summary
        self.stop_event = threading.Event()
        self._summary: RunSummary | None = None
        self._source_done = threading.Event()
        self._threads: list[threading.Thread] = []
        self._recorder_stop = threading.Event()
        self._subscriber: Subscriber | None = None
        self.candles: CandleWorker | None = None
        self.features: FeatureService | None = None
        self.predictor: PredictorWorker | None = None
        self.feature_worker: FeatureWorker | None = None
        self.health: HealthReporter | None = None
        # one stop per worker: stopping one component must not stop another
        self._candles_stop = threading.Event()
        self._features_stop = threading.Event()
        self._predictor_stop = threading.Event()
        # ZMQ_CONSUME_ENABLED: the core flow takes its ticks from the bus, as any other consumer
        self._consumer: Subscriber | None = None
        self._consumer_stop = threading.Event()
        self._consumer_thread: threading.Thread | None = None
        self.consume_rejected = 0
        self._bus_lock = threading.Lock()
        self.source_error: Exception | None = None  # why the source stopped early, if it failed
        self._bus_problem = ""
        self.started_at = 0.0

    # -- start -----------------------------------------------------------------------------------

    def start(self) -> None:
        self._start()
        if self.connection is not None:  # what `tickvault monitor` shows, from any machine
            name = f"{self.only or 'run'}@{socket.gethostname()}:{os.getpid()}"
            self.health = HealthReporter(self.connection.client("health"), name, self.counters)
            self.health.start()

    def _start(self) -> None:
        s = self.settings
        if s.valkey_enabled:
            self.connection = Connection.open(s)
            self.connection.check()
            # one name per data folder: a restarted recorder takes over its streams at once
            name = f"recorder@{socket.gethostname()}:{s.data_dir.resolve()}"
            spool = "recorder.spool"
            if self.record_only:  # one recorder per symbol group: its own writer name and spool file
                name += f"[{','.join(self.record_only)}]"
                spool = f"recorder-{'-'.join(self.record_only)}.spool"
            self.store = Store(self.connection.client("recorder"), writer_name=name)
            self.book.store = Store(self.connection.client("book-recorder"))
            if self.only != "source":
                self.recorder = Recorder(
                    self.store,
                    spool_path=s.data_dir / "spool" / spool,
                    retention_days=s.stream_retention_days,
                    stream_max_len=s.stream_max_len,
                )
        if self.only in (None, "candles") and self.connection is not None:
            symbols = tuple(dict.fromkeys((*s.symbols, *(self.store.symbols() if self.store else ()))))
            self.candles = CandleWorker(
                Store(self.connection.client("candles")),
                symbols,
                name=f"candles@{socket.gethostname()}:{os.getpid()}",
                lease_ms=5_000,  # several `run --only candles` share the symbols
            )
            self._spawn("candles", self.candles.run, self._candles_stop)
        if self.only == "predictor":
            self._start_predictor_only()
            return
        if self.only == "features":
            self._start_features_only()
            return
        if self.only == "candles":
            if self.candles is None:
                raise ConfigError("VALKEY_ENABLED", False, "the candle worker needs Valkey")
            self.started_at = time.monotonic()
            return
        if self.only == "recorder":
            self._start_recorder_only()
            return
        self._start_features()
        lasts = last_stored(self.store, s.symbols)
        # sequence numbers continue from the store, so a stored sequence without holes proves no loss
        self.ingest.set_start_seq({sym: t.seq for sym, t in lasts.items()})
        if s.zmq_enabled:
            if self.private_bus:
                self.publisher = Publisher("tcp://127.0.0.1:*", replay_bind="tcp://127.0.0.1:*")
            else:
                try:
                    self.publisher = self._bind_publisher()
                except BusError as exc:
                    # degrade, don't die: the core flow and the recorder run in-process without the bus,
                    # and the port is tried again until it frees up
                    self._bus_problem = f"ZeroMQ unavailable ({exc})"
                    self.degraded.append(self._bus_problem)
                    retry = not isinstance(exc, InsecureBind)
                    log.error(
                        "%s: running without the bus (the recorder is fed in-process)%s",
                        self._bus_problem,
                        f"; retrying every {BIND_RETRY_S:g} s" if retry else "",
                    )
                    if retry:
                        self._spawn("bus-rebind", self._rebind_bus)
            with self._bus_lock:
                self.ingest.publisher = self.publisher
        if self.recorder is not None:
            if self.publisher is not None:
                self._subscriber = Subscriber(
                    endpoint("127.0.0.1", self.publisher.port),
                    ["tick_"],
                    replay=self.publisher.replay_endpoint,
                    curve=self._own_client_keys(),
                    ordered=False,  # the recorder keeps every valid tick; fills run beside it
                )
                self._subscriber.prime(self._primed(lasts))
                self._spawn("recorder", self.recorder.run, self._subscriber, self._recorder_stop)
                if not self.publisher.wait_for_subscriber("tick_", timeout=10):
                    log.warning("recorder did not subscribe within 10 s; early ticks may need recovery")
            else:
                self.ingest.add_handler(self.recorder.submit_one)
                self._spawn("recorder", self.recorder.run, None, self._recorder_stop)
        if s.book_enabled and self._source_factory is None:  # the simulator's book (another source: none)
            self.book.start(
                record=self.recorder is not None,
                features=self.features.submit_book if self.features is not None else None,
                server_keys=self._server_keys(),
                client_keys=self._own_client_keys(),
            )
        self._feed_features(lasts)
        if self.warm_up and self.features is not None and self.store is not None and lasts:
            self.features.warm_up(self._session_so_far(lasts))
        if self._source_factory:
            ticks: Iterator[Tick | BookBatch] = self._source_factory(self.store)
        else:
            simulator = simulator_resuming(s, lasts, book=s.book_enabled)
            items = simulator.events() if isinstance(simulator, BookMarketSimulator) else simulator.ticks()
            ticks = pace(items, s.speed, stop=self.stop_event)
        self.started_at = time.monotonic()
        self._spawn("source", self._pump, ticks)

    def _session_so_far(self, lasts: dict[str, Tick]) -> Callable[[], list[Tick]]:
        """The stored ticks of the session of the newest stored tick, every symbol, in time order."""
        assert self.store is not None
        store, symbols = self.store, tuple(lasts)
        newest = max(t.timestamp_ms for t in lasts.values())
        return lambda: frame_to_ticks(store.ticks(list(symbols), day_start_ms(newest), newest))

    def _feed_features(self, lasts: dict[str, Tick]) -> None:
        """The core flow gets each tick in-process (the default: fastest, works with ZeroMQ off), or,
        with ZMQ_CONSUME_ENABLED, from the bus like any other consumer: gaps filled from the replay
        ring, then Valkey, so a consumer elsewhere would see exactly what it sees."""
        if self.features is None:
            return
        if not self.settings.zmq_consume_enabled or self.publisher is None:
            if self.settings.zmq_consume_enabled:
                log.warning("ZMQ_CONSUME_ENABLED but no bus: the core flow is fed in-process")
            self.ingest.add_handler(self.features.submit)
            return
        self._consumer = Subscriber(
            endpoint("127.0.0.1", self.publisher.port),
            ["tick_"],
            replay=self.publisher.replay_endpoint,
            recover=store_recovery(self.store) if self.store is not None else None,
            curve=self._own_client_keys(),
            validate=valid_seqs,  # an invalid frame's number must not make valid ticks look stale
        )
        self._consumer.prime(self._primed(lasts))
        self._consumer_thread = self._spawn(
            "bus-consumer", self._consume, self._consumer, self._consumer_stop
        )
        # subscribed before the first tick: a fill at start would deliver the early ticks of one
        # symbol after later ticks of another, and cross-symbol features see the order
        joined = 1 + (self._subscriber is not None)
        if not self.publisher.wait_for_subscriber("tick_", timeout=10, count=joined):
            log.warning("the bus consumer did not subscribe within 10 s; early ticks may need recovery")

    def _primed(self, lasts: dict[str, Tick]) -> dict[str, int]:
        """What an in-process subscriber already has: up to the last stored tick, or nothing (0) of a
        symbol never stored, so a first message it misses is a gap to fill, not a start to accept."""
        have = {tick_topic(sym): 0 for sym in self.settings.symbols}
        have.update({tick_topic(sym): t.seq for sym, t in lasts.items()})
        return have

    def _consume(self, subscriber: Subscriber, stop: threading.Event) -> None:
        assert self.features is not None
        while not stop.is_set():
            for frames in subscriber.receive(timeout_ms=50, max_messages=1000):
                try:
                    if len(frames) != 2:
                        raise DataError("frames", f"expected [topic, payload], got {len(frames)} frames")
                    tick = decode_tick(frames[1])
                except DataError as exc:
                    self.consume_rejected += 1
                    log.warning("bus consumer rejected a message: %s", exc)
                    continue
                self.features.submit(tick)

    def _consumer_caught_up(self) -> bool:
        assert self._consumer is not None
        done = self._consumer.stats.last_seq
        return all(done.get(tick_topic(s), 0) >= n for s, n in self.ingest.produced_seq().items())

    def _bind_publisher(self) -> Publisher:
        s = self.settings
        return Publisher(
            endpoint(s.zmq_host, s.zmq_tick_port),
            replay_bind=endpoint(s.zmq_host, s.zmq_replay_port),
            curve=self._server_keys(),
            allow_insecure=s.zmq_allow_insecure,
        )

    def _rebind_bus(self) -> None:
        """The tick port was taken at start: once it frees up, ticks flow on the bus again. The
        in-process recorder keeps its in-process feed (lossless either way); subscribers that join
        now backfill what came before from Valkey, as any late joiner does."""
        while not self.stop_event.wait(BIND_RETRY_S):
            with self._bus_lock:
                if self.stop_event.is_set():
                    return
                try:
                    publisher = self._bind_publisher()
                except BusError:
                    continue
                self.degraded.remove(self._bus_problem)
                self.ingest.publisher = publisher
                self.publisher = publisher  # last: whoever sees it sees the rest done
            log.warning("ZeroMQ bound on %s: the bus is back", publisher.endpoint)
            return

    def _start_features(self) -> None:
        """The core flow after ingest: features, predictions, signals (works with ZeroMQ and Valkey off)."""
        s = self.settings
        signal_bind = None
        curve = self._server_keys()
        if s.zmq_enabled:
            signal_bind = "tcp://127.0.0.1:*" if self.private_bus else endpoint(s.zmq_host, s.zmq_signal_port)
            if not is_loopback(signal_bind) and curve is None and not s.zmq_allow_insecure:
                self.degraded.append(f"signal port not bound: {signal_bind} is beyond loopback without CURVE")
                log.error("%s (set ZMQ_CURVE_SERVER_SECRET or ZMQ_ALLOW_INSECURE=true)", self.degraded[-1])
                signal_bind = None
        self.features = FeatureService(
            s.symbols,
            store=Store(self.connection.client("features")) if self.connection else None,
            model=load_model(s.model_file),
            threshold=s.signal_threshold,
            config=feature_config(s),
            signal_bind=signal_bind,
            handlers=self.event_handlers,
            curve=curve,
        )
        self.features.start()  # fed by `_feed_features` once the bus is up (or not)

    def _start_predictor_only(self) -> None:
        """One of several predictor processes sharing the symbols (see predictor_worker.py)."""
        s = self.settings
        if self.connection is None:
            raise ConfigError(
                "VALKEY_ENABLED", False, "predictor workers read the features streams in Valkey"
            )
        model = load_model(s.model_file)
        if model is None:
            raise ConfigError(
                "TICKVAULT_MODEL", str(s.model_file), "does not exist; run `tickvault train` first"
            )
        symbols = tuple(sym for sym in s.symbols if model_covers(model, sym))
        if not symbols:
            raise ConfigError(
                "TICKVAULT_SYMBOLS", ",".join(s.symbols), f"none is a symbol of model {model.name}"
            )
        if len(symbols) < len(s.symbols):
            log.warning("model %s predicts only %s", model.name, ",".join(symbols))
        self.predictor = PredictorWorker(
            Store(self.connection.client("predictor")), model, symbols, threshold=s.signal_threshold
        )
        self._spawn("predictor", self.predictor.run, self._predictor_stop)
        self.started_at = time.monotonic()

    def _start_features_only(self) -> None:
        """One of several feature workers sharing the symbols (see feature_worker.py)."""
        s = self.settings
        if self.connection is None:
            raise ConfigError("VALKEY_ENABLED", False, "feature workers read the tick streams in Valkey")
        self.feature_worker = FeatureWorker(
            Store(self.connection.client("features")),
            s.symbols,
            feature_config(s),
            name=f"features@{socket.gethostname()}:{os.getpid()}",  # who holds a lease, for operators
        )
        self._spawn("features", self.feature_worker.run, self._features_stop)
        self.started_at = time.monotonic()

    def _own_client_keys(self) -> ClientKeys | None:
        """The in-process recorder's keys for a CURVE publisher: a fresh pair, the server's public key."""
        s = self.settings
        if s.zmq_curve_server_secret is None or self.private_bus:
            return None
        public, secret = zmq.curve_keypair()
        allow_client(zmq.Context.instance(), public)  # on the allow-list, if there is one
        return ClientKeys(public, secret, server_keys(s.zmq_curve_server_secret).public)

    def _server_keys(self) -> ServerKeys | None:
        s = self.settings
        if s.zmq_curve_server_secret is None:
            return None
        return server_keys(s.zmq_curve_server_secret, clients=s.zmq_curve_clients)

    def _client_keys(self) -> ClientKeys | None:
        s = self.settings
        if s.zmq_curve_client_secret is None:
            return None
        if s.zmq_curve_server_public is None:
            raise ConfigError("ZMQ_CURVE_SERVER_PUBLIC", None, "is needed with ZMQ_CURVE_CLIENT_SECRET")
        return client_keys(s.zmq_curve_client_secret, s.zmq_curve_server_public)

    def _start_recorder_only(self) -> None:
        s = self.settings
        if self.recorder is None or self.store is None:
            raise ConfigError("VALKEY_ENABLED", False, "the recorder needs Valkey")
        host = "127.0.0.1" if s.zmq_host in ("0.0.0.0", "*") else s.zmq_host
        shard = self.record_only
        self._subscriber = Subscriber(
            endpoint(host, s.zmq_tick_port),
            [tick_topic(sym) for sym in shard] if shard else ["tick_"],
            replay=endpoint(host, s.zmq_replay_port),
            recover=None,  # the recorder is the writer: what the ring lost, Valkey never had
            curve=self._client_keys(),
            exact=bool(shard),
            ordered=False,  # the recorder keeps every valid tick; fills run beside it
        )
        symbols = shard or tuple(dict.fromkeys((*s.symbols, *self.store.symbols())))
        lasts = last_stored(self.store, symbols)
        # a symbol with nothing stored yet starts at 0, so its first live message shows any gap before it
        self._subscriber.prime({tick_topic(sym): lasts[sym].seq if sym in lasts else 0 for sym in symbols})
        self._spawn("recorder", self.recorder.run, self._subscriber, self._recorder_stop)
        self.book.start_recorder_only(symbols, bool(shard), self._client_keys())
        self.started_at = time.monotonic()

    def counters(self) -> dict[str, int]:
        """Every pipeline counter, by name (also printed by `tickvault run` at exit)."""
        out: dict[str, int] = {
            "generated": sum(self.ingest.stats.generated.values()),
            "handler_errors": self.ingest.stats.handler_errors,
        }
        if self.publisher is not None:
            p = self.publisher.stats
            out.update(published=p.published, publish_errors=p.send_errors, replay_requests=p.replay_requests)
            out["publish_queue"] = self.publisher.pending()
        if self._subscriber is not None:
            b = self._subscriber.stats
            out.update(
                delivered=b.received - b.heartbeats, gaps=b.gaps, missing=b.missing, recovered=b.recovered,
                unrecovered=b.unrecovered, duplicates_dropped=b.duplicates, seq_behind=b.behind,
            )  # fmt: skip
        if self._consumer is not None:  # ZMQ_CONSUME_ENABLED: the core flow's own bus subscriber
            bus = self._consumer.stats
            out.update(
                consumer_gaps=bus.gaps, consumer_recovered=bus.recovered,
                consumer_unrecovered=bus.unrecovered, consume_rejected=self.consume_rejected,
            )  # fmt: skip
        if self.recorder is not None:
            r = self.recorder.stats
            out.update(
                stored=r.stored_total, duplicates=r.duplicates, late=r.late, rejected=r.rejected_total,
                write_errors=r.write_errors, rewritten=r.rewritten, sealed=r.sealed, expired=r.expired,
                buffered=self.recorder.buffered, spilled=self.recorder.spool.spilled,
                spill_errors=self.recorder.spool.spill_errors, store_lag_ms=self.recorder.store_lag_ms(),
            )  # fmt: skip
            out.update({f"rejected_{reason}": n for reason, n in sorted(dict(r.rejected).items())})
        if self.features is not None:
            out.update(self.features.counters())
        for worker in (self.predictor, self.feature_worker, self.candles):
            if worker is not None:
                out.update(worker.counters())
        out.update(self.book.counters())
        return out

    def describe(self) -> str:
        s = self.settings
        parts = [f"symbols={','.join(s.symbols)}", f"speed={'max' if s.speed == 0 else s.speed}"]
        parts.append(f"zmq tick={self.publisher.endpoint}" if self.publisher else "zmq off")
        parts += [self.book.describe()] if self.book.describe() else []
        parts.append(self.connection.where if self.connection else "valkey off")
        problems = [*self.degraded, *self.book.degraded]
        if self.features is not None and self.features.signal_problem:
            problems.append(self.features.signal_problem)
        parts += [f"DEGRADED: {problem}" for problem in problems]
        return "tickvault running: " + " ".join(parts)

    def _spawn(self, name: str, target: Callable[..., None], *args: object) -> threading.Thread:
        thread = threading.Thread(target=target, args=args, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)
        return thread

    def unstored(self) -> int:
        """Ticks this run produced that the in-process recorder has not stored (or refused) yet."""
        if self.recorder is None:
            return 0
        stats = self.recorder.stats
        return (
            sum(self.ingest.stats.generated.values())
            - stats.stored_total
            - stats.duplicates
            - stats.rejected_total
        )

    def _pump(self, ticks: Iterator[Tick | BookBatch]) -> None:
        hold = self.hold_back and self.recorder is not None
        try:
            for n, tick in enumerate(ticks):
                if self.stop_event.is_set():
                    break
                if hold and n % _CHECK_EVERY == 0:
                    while (
                        self.unstored() > MAX_UNSTORED or self.book.unstored() > MAX_UNSTORED
                    ) and not self.stop_event.wait(0.005):
                        pass
                if isinstance(tick, BookBatch):
                    self.ingest.on_book(tick)
                else:
                    self.ingest.on_tick(tick)
        except TickvaultError as exc:  # a refused login, a missing library: one clear line, no traceback
            self.source_error = exc
            log.error("source failed: %s", exc)
        except Exception as exc:
            self.source_error = exc
            log.exception("source failed")
        finally:
            self._source_done.set()

    # -- run and stop ----------------------------------------------------------------------------

    def wait(self, duration: float | None = None) -> None:
        """Until `duration` seconds pass, the source ends, or stop() is called."""
        deadline = None if duration is None else time.monotonic() + duration
        while not self.stop_event.is_set() and not self._source_done.is_set():
            left = 0.2 if deadline is None else min(0.2, deadline - time.monotonic())
            if left <= 0:
                break
            self.stop_event.wait(left)

    def stop(self) -> RunSummary:
        """Stop the source, drain the bus and the recorder, close everything; returns the summary.
        Stopping again returns the same summary (a test fixture stops whatever a test left running)."""
        if self._summary is None:
            self._summary = self._stop()
        return self._summary

    def _stop(self) -> RunSummary:
        self.stop_event.set()
        with self._bus_lock:  # a bus being bound right now is bound before it is flushed and closed
            pass
        self._source_done.wait(10)
        summary = RunSummary(generated=Counter(self.ingest.stats.generated))
        if self.health is not None:
            self.health.stop()
        if self._consumer is not None and self.publisher is not None:
            # the core flow must see every tick produced before it stops: let the bus deliver them
            self.publisher.flush(DRAIN_TIMEOUT_S)
            deadline = time.monotonic() + DRAIN_TIMEOUT_S
            while not self._consumer_caught_up() and time.monotonic() < deadline:
                time.sleep(0.01)
        self._consumer_stop.set()
        if self._consumer_thread is not None:
            self._consumer_thread.join(10)  # it hands the features the rest of its last batch first
        if self.features is not None:
            self.features.stop()
        if self.publisher is not None:
            self.publisher.flush(DRAIN_TIMEOUT_S)
        if self.recorder is not None:
            deadline = time.monotonic() + DRAIN_TIMEOUT_S
            while not self.recorder.caught_up(self.ingest.produced_seq()) and time.monotonic() < deadline:
                time.sleep(0.01)
            summary.drained = self.recorder.caught_up(self.ingest.produced_seq())
        summary.drained = self.book.stop() and summary.drained
        self._recorder_stop.set()
        # after the recorder drained: the candle worker reads to the end, then stops
        for worker_stop in (self._candles_stop, self._features_stop, self._predictor_stop):
            worker_stop.set()
        for thread in self._threads:
            thread.join(10)
        if self.recorder is not None and (
            self.recorder.buffered or any(t.name == "recorder" and t.is_alive() for t in self._threads)
        ):
            summary.drained = False  # ticks received and not in Valkey (kept in the spool file, if any)
        if self.publisher is not None:
            self.publisher.close()
            summary.published = self.publisher.stats.published
        if self._subscriber is not None:
            self._subscriber.close()
        if self._consumer is not None:
            self._consumer.close()
        if self.recorder is not None:
            summary.stored = Counter(self.recorder.stats.stored)
            summary.duplicates = self.recorder.stats.duplicates
            summary.rejected = self.recorder.stats.rejected_total
        if self.store is not None and summary.drained:
            try:
                summary.durable = self.store.wait_durable()
            except StoreError as exc:
                log.error("could not confirm the append-only file fsync: %s", exc)
        if self.connection is not None:
            summary.where = self.connection.where
            self.connection.close()
        summary.elapsed_s = time.monotonic() - self.started_at if self.started_at else 0.0
        summary.counters = self.counters()
        return summary
