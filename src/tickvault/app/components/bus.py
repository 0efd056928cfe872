"""The bus: ingest's sequence numbers, continued from the store, and the tick publisher.

A taken port degrades the run instead of ending it: the core flow and the recorder are fed
in-process, and the port is tried again until it frees up.
"""

from __future__ import annotations

import logging
import threading

from tickvault.app.components.base import DRAIN_TIMEOUT_S, SummaryPart, Wiring, server_keys_of, spawn
from tickvault.bus.envelope import endpoint
from tickvault.bus.publisher import BIND_RETRY_S, Publisher
from tickvault.errors import BusError, InsecureBind

log = logging.getLogger("tickvault.system")


class Bus:
    name = "bus"

    def __init__(self, wiring: Wiring) -> None:
        self.wiring = wiring
        self._lock = threading.Lock()  # a bus being bound is bound before it is flushed and closed
        self._stop = threading.Event()
        self._rebind: threading.Thread | None = None
        self._problem = ""

    def start(self) -> None:
        w = self.wiring
        # sequence numbers continue from the store, so a stored sequence without holes proves no loss
        w.ingest.set_start_seq({sym: t.seq for sym, t in w.lasts().items()})
        if not w.settings.zmq_enabled:
            return
        if w.private_bus:
            self._use(Publisher("tcp://127.0.0.1:*", replay_bind="tcp://127.0.0.1:*"))
            return
        try:
            self._use(self._bind())
        except BusError as exc:
            # degrade, don't die: the core flow and the recorder run in-process without the bus
            self._problem = f"ZeroMQ unavailable ({exc})"
            w.degraded.append(self._problem)
            retry = not isinstance(exc, InsecureBind)
            log.error(
                "%s: running without the bus (the recorder is fed in-process)%s",
                self._problem,
                f"; retrying every {BIND_RETRY_S:g} s" if retry else "",
            )
            if retry:
                self._rebind = spawn("bus-rebind", self._rebind_loop)

    def _use(self, publisher: Publisher) -> None:
        with self._lock:
            self.wiring.ingest.publisher = publisher
            self.wiring.publisher = publisher  # last: whoever sees it sees the rest done

    def _bind(self) -> Publisher:
        s = self.wiring.settings
        return Publisher(
            endpoint(s.zmq_host, s.zmq_tick_port),
            replay_bind=endpoint(s.zmq_host, s.zmq_replay_port),
            curve=server_keys_of(s),
            allow_insecure=s.zmq_allow_insecure,
        )

    def _rebind_loop(self) -> None:
        """The tick port was taken at start: once it frees up, ticks flow on the bus again. The
        in-process recorder keeps its in-process feed (lossless either way); subscribers that join
        now backfill what came before from Valkey, as any late joiner does."""
        while not self._stop.wait(BIND_RETRY_S):
            with self._lock:
                if self._stop.is_set():
                    return
                try:
                    publisher = self._bind()
                except BusError:
                    continue
                self.wiring.degraded.remove(self._problem)
                self.wiring.ingest.publisher = publisher
                self.wiring.publisher = publisher
            log.warning("ZeroMQ bound on %s: the bus is back", publisher.endpoint)
            return

    def stop(self) -> SummaryPart | None:
        with self._lock:
            self._stop.set()
            publisher = self.wiring.publisher
        if self._rebind is not None:
            self._rebind.join(10)
        if publisher is None:
            return None
        publisher.flush(DRAIN_TIMEOUT_S)
        publisher.close()
        return {"published": publisher.stats.published}

    def counters(self) -> dict[str, int]:
        publisher = self.wiring.publisher
        if publisher is None:
            return {}
        p = publisher.stats
        return {
            "published": p.published,
            "publish_errors": p.send_errors,
            "replay_requests": p.replay_requests,
            "publish_queue": publisher.pending(),
        }
