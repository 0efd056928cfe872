"""Prometheus endpoint (`run --metrics-port N`): every pipeline counter, read at scrape time (no
bookkeeping on the hot path), and the tick -> prediction latency as a histogram."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

LEVELS = {"buffered", "publish_queue"}  # values that go up and down
LATENCY_BUCKETS_S = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 1.0)


class PipelineCollector(Collector):
    def __init__(self, counters: Callable[[], dict[str, int]], latency_ns: Callable[[], list[int]]) -> None:
        self.counters = counters
        self.latency_ns = latency_ns

    def collect(self) -> Iterator[Any]:
        for name, value in sorted(self.counters().items()):
            if name in LEVELS:
                yield GaugeMetricFamily(f"tickvault_{name}", f"tickvault {name}", value=value)
            else:
                yield CounterMetricFamily(f"tickvault_{name}", f"tickvault {name}", value=value)
        seconds = np.array(self.latency_ns(), dtype=np.float64) / 1e9
        counts = [int(np.sum(seconds <= b)) for b in LATENCY_BUCKETS_S]
        buckets = [(str(b), c) for b, c in zip(LATENCY_BUCKETS_S, counts, strict=True)]
        buckets.append(("+Inf", len(seconds)))
        yield HistogramMetricFamily(
            "tickvault_prediction_latency_seconds",
            "tick handed to ingest -> features/prediction out (recent window)",
            buckets=buckets,
            sum_value=float(seconds.sum()),
        )


class MetricsServer:
    def __init__(self, server: Any) -> None:
        self._server = server
        self.port: int = server.server_address[1]

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def start_metrics(
    port: int,
    counters: Callable[[], dict[str, int]],
    latency_ns: Callable[[], list[int]] | None = None,
    host: str = "127.0.0.1",
) -> MetricsServer:
    """Serve /metrics on host:port (0: a free port)."""
    registry = CollectorRegistry()
    registry.register(PipelineCollector(counters, latency_ns or (lambda: [])))
    server, _thread = start_http_server(port, addr=host, registry=registry)
    return MetricsServer(server)
