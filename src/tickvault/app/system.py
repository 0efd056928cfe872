"""`tickvault run`: the components of this process (`--only`, TICKVAULT_ONLY), picked from the
registry, started in its order and stopped in reverse, with a clean shutdown.

Order matters: the recorder subscribes before the source starts (no slow-joiner loss), and on stop
the source stops first, the core flow catches up with the bus, the recorder writes everything the
source produced, the workers read to the end of it, and only then is anything closed: each
component drains its own input before its `stop()` returns (see `components/base.py`).
"""

from __future__ import annotations

import threading
import time
import typing
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from tickvault.app.components.base import Component, SummaryPart, Wiring, last_stored
from tickvault.app.components.bus import Bus
from tickvault.app.components.core_flow import CoreFlow, feature_config
from tickvault.app.components.recorder import BusRecorder, LocalRecorder
from tickvault.app.components.services import Health, Metrics
from tickvault.app.components.source import Source, SourceFactory, simulator_resuming
from tickvault.app.components.valkey import Valkey
from tickvault.app.components.workers import candles, feature_workers, predictor_workers
from tickvault.bus.ingest import Ingest
from tickvault.bus.publisher import Publisher
from tickvault.config import Only, Settings
from tickvault.domain.events import Event, Tick
from tickvault.recorder.recorder import Recorder
from tickvault.store.api import Store
from tickvault.store.connection import Connection
from tickvault.workers.core_flow import FeatureService

__all__ = ["REGISTRY", "RunSummary", "System", "feature_config", "last_stored", "simulator_resuming"]

Role = str | None  # an `--only` value; None: the whole system
EVERY: frozenset[Role] = frozenset({None, *typing.get_args(Only)})
WHOLE_OR_SOURCE: frozenset[Role] = frozenset({None, "source"})


def _metrics(system: System) -> Component | None:
    port = system.settings.metrics_port
    return Metrics(system.wiring, port, system.counters) if port is not None else None


def _book(system: System) -> Component | None:
    s = system.settings
    if not s.book_enabled or (s.only != "recorder" and not system.book_source):
        return None  # a source without a book (a tick file, a mere iterator of ticks)
    from tickvault.app.components.book import Book

    return Book(system.wiring, recorder_only=s.only == "recorder")


def _web(system: System) -> Component | None:
    if not system.settings.web_enabled or system.wiring.private_bus:  # a batch job shows no page
        return None
    from tickvault.app.components.web import Web  # starlette and uvicorn only when serving

    return Web(system.wiring, system.problems)


# Which components each `--only` runs, in start order (stopped in the reverse): an entry builds its
# component from the system, or None when the settings leave it out.
REGISTRY: tuple[tuple[frozenset[Role], Callable[[System], Component | None]], ...] = (
    (EVERY, _metrics),
    (EVERY, lambda s: Valkey(s.wiring)),
    (frozenset({None, "candles"}), lambda s: candles(s.wiring)),
    (frozenset({"features"}), lambda s: feature_workers(s.wiring)),
    (frozenset({"predictor"}), lambda s: predictor_workers(s.wiring)),
    (WHOLE_OR_SOURCE, lambda s: Bus(s.wiring)),
    (frozenset({None}), lambda s: LocalRecorder(s.wiring)),
    (frozenset({"recorder"}), lambda s: BusRecorder(s.wiring)),
    (frozenset({None, "source", "recorder"}), _book),  # after the recorder it feeds
    # after the book: fed its batches in-process or from its bus, and stopped first, caught up with both
    (WHOLE_OR_SOURCE, lambda s: CoreFlow(s.wiring, s.event_handlers, s.warm_up)),
    (WHOLE_OR_SOURCE, lambda s: Source(s.wiring, s.source_factory, s.hold_back)),
    (frozenset({None}), _web),  # after the source: the page opens on a running system
    (EVERY, lambda s: Health(s.wiring, s.counters)),  # last: it reports every counter
)


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


class System:
    """One run of the pipeline. `source` defaults to the simulator; `handlers` see every tick
    in-process (before the bus), `event_handlers` every feature, prediction and signal."""

    # what the registry's entries read
    wiring: Wiring
    source_factory: SourceFactory | None
    event_handlers: list[Callable[[Event], None]]
    hold_back: bool
    warm_up: bool
    book_source: bool

    def __init__(
        self,
        settings: Settings,
        *,
        source: SourceFactory | None = None,
        handlers: list[Callable[[Tick], None]] | None = None,
        event_handlers: list[Callable[[Event], None]] | None = None,
        private_bus: bool = False,
        record_only: tuple[str, ...] | None = None,
        hold_back: bool | None = None,
        warm_up: bool | None = None,
        book: bool | None = None,
    ) -> None:
        """`settings.only` picks what runs in this process (see REGISTRY). `private_bus`: a batch
        job binds free loopback ports. `record_only`: `run --only recorder --symbols A,B` records
        exactly these (several recorders share one bus by symbol). `hold_back`: whether the source
        may wait for the recorder (default: when it is unpaced, speed 0; never for a live feed).
        `warm_up`: whether the features start from the stored session so far (default: for the
        simulator, which continues the stored market; a file of older ticks would only find a
        warmed engine ahead of it). `book`: whether the source makes order-book batches, which the
        book component then publishes and records (default: the simulator does)."""
        self.settings = settings
        self.only = settings.only
        self.source_factory = source
        self.hold_back = settings.speed == 0 if hold_back is None else hold_back
        self.warm_up = source is None if warm_up is None else warm_up
        self.book_source = source is None if book is None else book
        self.event_handlers = list(event_handlers or [])
        self.wiring = Wiring(settings, Ingest(handlers=handlers), threading.Event(), private_bus, record_only)
        self.components: list[Component] = []  # started, in start order
        self._stopped: dict[int, SummaryPart] = {}  # id(component) -> its part of the summary
        self._summary: RunSummary | None = None
        self.started_at = 0.0

    # -- what the components share, for callers -------------------------------------------------

    @property
    def stop_event(self) -> threading.Event:
        return self.wiring.stop

    @stop_event.setter
    def stop_event(self, event: threading.Event) -> None:
        """Before start: an event that also ends the source itself (ProfitDLL's tick queue)."""
        self.wiring.stop = event

    @property
    def ingest(self) -> Ingest:
        return self.wiring.ingest

    @property
    def connection(self) -> Connection | None:
        return self.wiring.connection

    @property
    def store(self) -> Store | None:
        return self.wiring.store

    @property
    def publisher(self) -> Publisher | None:
        return self.wiring.publisher

    @property
    def recorder(self) -> Recorder | None:
        return self.wiring.recorder

    @property
    def features(self) -> FeatureService | None:
        return self.wiring.features

    @property
    def degraded(self) -> list[str]:
        return self.wiring.degraded

    @property
    def notices(self) -> list[tuple[int, str]]:
        """(log level, line) the components have for the user (e.g. where metrics are served)."""
        return self.wiring.notices

    @property
    def source_error(self) -> Exception | None:
        """Why the source stopped early, if it failed."""
        source = self.component("source")
        return source.error if isinstance(source, Source) else None

    def component(self, name: str) -> Component | None:
        return next((c for c in self.components if c.name == name), None)

    # -- run and stop ----------------------------------------------------------------------------

    def start(self) -> None:
        """Start this process's components in registry order; if one fails, the ones already
        started are stopped and the error goes on."""
        for roles, build in REGISTRY:
            component = build(self) if self.only in roles else None
            if component is None:
                continue
            try:
                component.start()
            except BaseException:
                self.stop()
                raise
            self.components.append(component)
        self.started_at = time.monotonic()

    def wait(self, duration: float | None = None) -> None:
        """Until `duration` seconds pass, the source ends, or stop() is called."""
        deadline = None if duration is None else time.monotonic() + duration
        while not self.stop_event.is_set() and not self.wiring.source_done.is_set():
            left = 0.2 if deadline is None else min(0.2, deadline - time.monotonic())
            if left <= 0:
                break
            self.stop_event.wait(left)

    def stop_component(self, name: str) -> SummaryPart | None:
        """Stop one component (its threads, its sockets), leaving the others running."""
        component = self.component(name)
        return self._stop_one(component) if component is not None else None

    def _stop_one(self, component: Component) -> SummaryPart:
        if id(component) not in self._stopped:
            self._stopped[id(component)] = component.stop() or {}
        return self._stopped[id(component)]

    def stop(self) -> RunSummary:
        """Stop every component in reverse start order (each drains its input first), close
        everything; returns the summary. Stopping again returns the same summary (a test fixture
        stops whatever a test left running)."""
        if self._summary is None:
            self.stop_event.set()
            parts: SummaryPart = {}
            for component in reversed(self.components):
                part = self._stop_one(component)
                drained = parts.get("drained", True) and part.get("drained", True)  # every part's
                parts.update(part)
                parts["drained"] = drained
            elapsed = time.monotonic() - self.started_at if self.started_at else 0.0
            self._summary = RunSummary(**parts, elapsed_s=elapsed, counters=self.counters())
        return self._summary

    # -- what it says ----------------------------------------------------------------------------

    def counters(self) -> dict[str, int]:
        """Every pipeline counter, by name (also printed by `tickvault run` at exit)."""
        out: dict[str, int] = {
            "generated": sum(self.ingest.stats.generated.values()),
            "handler_errors": self.ingest.stats.handler_errors,
        }
        for component in list(self.components):
            out.update(component.counters())
        return out

    def describe(self) -> str:
        s, w = self.settings, self.wiring
        parts = [f"symbols={','.join(s.symbols)}", f"speed={'max' if s.speed == 0 else s.speed}"]
        parts.append(f"zmq tick={w.publisher.endpoint}" if w.publisher else "zmq off")
        parts.append(w.connection.where if w.connection else "valkey off")
        said = getattr(self.component("book"), "describe", lambda: "")()
        if said:
            parts.append(said)
        url = getattr(self.component("web"), "url", None)
        if url:
            parts.append(f"web={url}")
        parts += [f"DEGRADED: {problem}" for problem in self.problems()]
        return "tickvault running: " + " ".join(parts)

    def problems(self) -> list[str]:
        """What runs degraded: parts that could not start, a signal port not bound."""
        w = self.wiring
        signal = w.features.signal_problem if w.features is not None else ""
        book: list[str] = getattr(self.component("book"), "degraded", [])
        return [*w.degraded, *book, *([signal] if signal else [])]

    def unstored(self) -> int:
        """Ticks this run produced that the in-process recorder has not stored (or refused) yet."""
        return self.wiring.unstored()
