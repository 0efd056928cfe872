"""Prometheus endpoint (`run --metrics-port N`): every pipeline counter, read at scrape time (no
bookkeeping on the hot path), the tick -> prediction latency as a histogram built from the feature
service's recent samples, and `tickvault_tick_latency_seconds`, a histogram callers observe into
(`server.tick_latency.observe(seconds)`). Each server has its own registry, so several can run in one
process (tests, or one per component)."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

LEVELS = {"buffered", "publish_queue", "store_lag_ms"}  # values that go up and down
LATENCY_BUCKETS_S = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 1.0)
_NOT_IN_NAME = re.compile(r"[^a-zA-Z0-9_]")


def metric_name(counter: str) -> str:
    """`tickvault_<counter>`, with anything a Prometheus name cannot hold made `_` (a bad name would
    fail the whole scrape)."""
    return "tickvault_" + _NOT_IN_NAME.sub("_", counter)


class PipelineCollector(Collector):
    def __init__(self, counters: Callable[[], dict[str, int]], latency_ns: Callable[[], list[int]]) -> None:
        self.counters = counters
        self.latency_ns = latency_ns

    def collect(self) -> Iterator[Any]:
        for name, value in sorted(self.counters().items()):
            if name in LEVELS:
                yield GaugeMetricFamily(metric_name(name), f"tickvault {name}", value=value)
            else:
                yield CounterMetricFamily(metric_name(name), f"tickvault {name}", value=value)
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
    def __init__(self, server: Any, tick_latency: Histogram) -> None:
        self._server = server
        self.port: int = server.server_address[1]
        self.tick_latency = tick_latency

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
    tick_latency = Histogram(
        "tickvault_tick_latency_seconds",
        "tick latency observed by the caller (e.g. bus -> store)",
        buckets=LATENCY_BUCKETS_S,
        registry=registry,
    )
    server, _thread = start_http_server(port, addr=host, registry=registry)
    return MetricsServer(server, tick_latency)
