"""What a component is, and what the components of one run share (`Wiring`).

A component starts after the ones before it in its system's registry and stops before them, and
its `stop()` drains its own input first: so stopping in reverse start order is the zero-loss
shutdown (the source stops, the core flow catches up with the bus, the recorder with what was
produced, workers read to the end, then Valkey closes).
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol, TypedDict

import msgspec
import zmq

from tickvault.bus.curve import ClientKeys, ServerKeys, allow_client, client_keys, server_keys
from tickvault.bus.ingest import Ingest
from tickvault.bus.publisher import Publisher
from tickvault.config import Settings
from tickvault.domain.events import Tick
from tickvault.domain.keys import tick_topic
from tickvault.errors import ConfigError
from tickvault.recorder.recorder import Recorder
from tickvault.store.api import Store
from tickvault.store.connection import Connection
from tickvault.workers.core_flow import FeatureService

DRAIN_TIMEOUT_S = 60.0


class SummaryPart(TypedDict, total=False):
    """A component's share of the run summary (the fields of `RunSummary`)."""

    generated: Counter[str]
    published: int
    stored: Counter[str]
    duplicates: int
    rejected: int
    drained: bool
    durable: bool
    where: str


class Component(Protocol):
    name: str

    def start(self) -> None: ...

    def stop(self) -> SummaryPart | None:
        """Drain its input, stop its threads, close what it opened (called once, by `System`)."""
        ...

    def counters(self) -> dict[str, int]: ...


@dataclass
class Wiring:
    """What the components of one run share: set by the component that owns each thing when it
    starts, read by the components started after it."""

    settings: Settings
    ingest: Ingest
    stop: threading.Event  # the run's stop: ends the source (and `System.wait`)
    private_bus: bool = False  # a batch job (ingest) binds free loopback ports, not the configured ones
    record_only: tuple[str, ...] | None = None  # `run --only recorder --symbols A,B`: exactly these
    connection: Connection | None = None
    store: Store | None = None
    publisher: Publisher | None = None
    recorder: Recorder | None = None
    features: FeatureService | None = None
    degraded: list[str] = field(default_factory=list)  # what could not start: logged, in `describe`
    notices: list[tuple[int, str]] = field(default_factory=list)  # (log level, line) for the user
    source_done: threading.Event = field(default_factory=threading.Event)
    book_unstored: Callable[[], int] | None = None  # the book's part of a held-back source (see Book)
    book_publisher: Publisher | None = None  # the book's bus (set by Book), for the core flow to consume
    _lasts: dict[str, Tick] | None = None

    def lasts(self) -> dict[str, Tick]:
        """The last stored tick per configured symbol (read once, before the source starts)."""
        if self._lasts is None:
            self._lasts = last_stored(self.store, self.settings.symbols)
        return self._lasts

    def unstored(self) -> int:
        """Ticks this run produced that the in-process recorder has not stored (or refused) yet."""
        if self.recorder is None:
            return 0
        stats = self.recorder.stats
        generated = sum(self.ingest.stats.generated.values())
        return generated - stats.stored_total - stats.duplicates - stats.rejected_total

    def needs_valkey(self, component: str, reason: str) -> bool:
        """Whether `component` can run: without Valkey it stands aside in the whole system, and is
        refused when it is what this process runs (`--only`)."""
        if self.connection is not None:
            return True
        if self.settings.only == component:
            raise ConfigError("VALKEY_ENABLED", False, reason)
        return False


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


def primed(symbols: tuple[str, ...], lasts: dict[str, Tick]) -> dict[str, int]:
    """What an in-process subscriber already has: up to the last stored tick, or nothing (0) of a
    symbol never stored, so a first message it misses is a gap to fill, not a start to accept."""
    have = {tick_topic(sym): 0 for sym in symbols}
    have.update({tick_topic(sym): t.seq for sym, t in lasts.items()})
    return have


def detach(ingest: Ingest, handler: Callable[[Tick], None]) -> None:
    """Take a stopped component's handler out of ingest: a new list, so a tick being handed out on
    the source's thread right now still reaches every other handler."""
    ingest.handlers = [h for h in ingest.handlers if h != handler]


def spawn(name: str, target: Callable[..., None], *args: object) -> threading.Thread:
    thread = threading.Thread(target=target, args=args, name=name, daemon=True)
    thread.start()
    return thread


def own_client_keys(settings: Settings, private_bus: bool) -> ClientKeys | None:
    """An in-process subscriber's keys for a CURVE publisher: a fresh pair, the server's public key."""
    if settings.zmq_curve_server_secret is None or private_bus:
        return None
    public, secret = zmq.curve_keypair()
    allow_client(zmq.Context.instance(), public)  # on the allow-list, if there is one
    return ClientKeys(public, secret, server_keys(settings.zmq_curve_server_secret).public)


def server_keys_of(settings: Settings) -> ServerKeys | None:
    if settings.zmq_curve_server_secret is None:
        return None
    return server_keys(settings.zmq_curve_server_secret, clients=settings.zmq_curve_clients)


def client_keys_of(settings: Settings) -> ClientKeys | None:
    if settings.zmq_curve_client_secret is None:
        return None
    if settings.zmq_curve_server_public is None:
        raise ConfigError("ZMQ_CURVE_SERVER_PUBLIC", None, "is needed with ZMQ_CURVE_CLIENT_SECRET")
    return client_keys(settings.zmq_curve_client_secret, settings.zmq_curve_server_public)
