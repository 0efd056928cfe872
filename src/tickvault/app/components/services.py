"""What a run shows the outside: its counters in Valkey for `tickvault monitor` (health) and on a
Prometheus endpoint (`run --metrics-port`, TICKVAULT_METRICS_PORT). Neither ever stops a run."""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable

from tickvault.app.components.base import SummaryPart, Wiring
from tickvault.app.metrics import MetricsServer, start_metrics
from tickvault.store.health import HealthReporter

Counters = Callable[[], dict[str, int]]


class Health:
    """This process's counters in `tv:health:{role}@{host}:{pid}`, readable from any machine."""

    name = "health"

    def __init__(self, wiring: Wiring, counters: Counters) -> None:
        self.wiring = wiring
        self._counters = counters
        self.reporter: HealthReporter | None = None

    def start(self) -> None:
        connection = self.wiring.connection
        if connection is None:
            return
        name = f"{self.wiring.settings.only or 'run'}@{socket.gethostname()}:{os.getpid()}"
        self.reporter = HealthReporter(
            connection.client("health"), name, self._counters, keys=connection.keys
        )
        self.reporter.start()

    def stop(self) -> SummaryPart | None:
        if self.reporter is not None:
            self.reporter.stop()
        return None

    def counters(self) -> dict[str, int]:
        return {}


class Metrics:
    """The Prometheus endpoint on 127.0.0.1; a taken port is said and the run goes on without it."""

    name = "metrics"

    def __init__(self, wiring: Wiring, port: int, counters: Counters) -> None:
        self.wiring = wiring
        self.port = port
        self._counters = counters
        self.server: MetricsServer | None = None

    def start(self) -> None:
        try:
            self.server = start_metrics(self.port, self._counters, self._latency_ns)
        except OSError as exc:
            self.wiring.notices.append(
                (logging.WARNING, f"metrics port {self.port} unavailable ({exc}); running without metrics")
            )
            return
        self.wiring.notices.append((logging.INFO, f"metrics: http://127.0.0.1:{self.server.port}/metrics"))

    def _latency_ns(self) -> list[int]:
        features = self.wiring.features
        return list(features.stats.latency_ns) if features is not None else []

    def stop(self) -> SummaryPart | None:
        if self.server is not None:
            self.server.stop()
        return None

    def counters(self) -> dict[str, int]:
        return {}
