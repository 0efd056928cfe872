"""The Prometheus endpoint serves every counter at scrape time and the latency histogram."""

from __future__ import annotations

import subprocess
import sys
import urllib.request
from pathlib import Path

from conftest import subprocess_env, wait_until
from tickvault.app.metrics import start_metrics


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return response.read().decode()


def test_counters_and_histogram_are_read_at_scrape_time() -> None:
    counters = {"stored": 10, "rejected": 1, "buffered": 7}
    latency = [200_000, 800_000, 3_000_000]  # 0.2, 0.8 and 3 ms
    server = start_metrics(0, lambda: dict(counters), lambda: latency)
    port = server.port
    try:
        first = scrape(port)
        assert "tickvault_stored_total 10.0" in first and "tickvault_rejected_total 1.0" in first
        assert "tickvault_buffered 7.0" in first  # a level is a gauge
        assert 'tickvault_prediction_latency_seconds_bucket{le="0.001"} 2.0' in first
        assert 'tickvault_prediction_latency_seconds_bucket{le="+Inf"} 3.0' in first
        counters["stored"] = 25
        assert "tickvault_stored_total 25.0" in scrape(port)
    finally:
        server.stop()


def test_tick_latency_is_observed_by_callers_and_each_server_has_its_own_registry() -> None:
    first = start_metrics(0, lambda: {"stored": 1, "odd-name.x": 2})
    second = start_metrics(0, lambda: {"stored": 2})
    try:
        first.tick_latency.observe(0.0003)
        first.tick_latency.observe(0.02)
        text = scrape(first.port)
        assert 'tickvault_tick_latency_seconds_bucket{le="0.0005"} 1.0' in text
        assert "tickvault_tick_latency_seconds_count 2.0" in text
        assert "tickvault_odd_name_x_total 2.0" in text  # a name Prometheus cannot hold is made valid
        other = scrape(second.port)
        assert "tickvault_stored_total 2.0" in other and "tickvault_tick_latency_seconds_count 0.0" in other
    finally:
        first.stop()
        second.stop()


def test_run_serves_metrics(system_env: dict[str, str], tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tickvault", "run", "--no-dashboard", "--speed", "50",
         "--metrics-port", "0", "--duration", "60"],
        env=subprocess_env(system_env), cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        line = ""
        assert proc.stderr is not None
        while "metrics: http" not in line:
            line = proc.stderr.readline()
            assert line, "run ended without serving metrics"
        port = int(line.rsplit(":", 1)[1].split("/")[0])
        assert wait_until(lambda: "tickvault_generated_total" in scrape(port), timeout=30)
        assert "tickvault_features_total" in scrape(port)
    finally:
        proc.terminate()
        proc.communicate(timeout=60)
