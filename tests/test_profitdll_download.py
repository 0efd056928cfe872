"""`tickvault download`: the fake ProfitDLL's history of a range into the store once, on the history
channel for a foreign subscriber, the live stream untouched."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import valkey
import zmq
from typer.testing import CliRunner

from fake_profitdll import build_fake_dll
from tickvault.app.cli import app
from tickvault.domain.events import B3_TZ, decode_tick, to_ms
from tickvault.store.api import Store

runner = CliRunner()
SYMBOL = "WINZ25"


@pytest.fixture(scope="module")
def fake_dll(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_fake_dll(tmp_path_factory)


@pytest.fixture
def dll_env(fake_dll: Path, system_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    env = {"PROFIT_DLL_PATH": str(fake_dll), "PROFIT_USER": "trader", "PROFIT_PASSWORD": "s3cret",
           "PROFIT_KEY": "KEY-123"}  # fmt: skip
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return {**system_env, **env}


@pytest.fixture
def history_sub(dll_env: dict[str, str]) -> Iterator[zmq.Socket[Any]]:
    """A foreign subscriber of the history port: plain ZeroMQ, no tickvault code."""
    context = zmq.Context()
    sub = context.socket(zmq.SUB)
    sub.setsockopt(zmq.RCVHWM, 0)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.SUBSCRIBE, b"history_")
    sub.connect(f"tcp://127.0.0.1:{dll_env['ZMQ_HISTORY_PORT']}")
    try:
        yield sub
    finally:
        sub.close(0)
        context.term()


def history_frames(sub: zmq.Socket[Any], n: int, timeout: float = 10.0) -> list[bytes]:
    """The payloads of the first `n` history_WINZ25 frames (heartbeats, `hb.` topics, skipped)."""
    got: list[bytes] = []
    deadline = time.monotonic() + timeout
    while len(got) < n and time.monotonic() < deadline:
        if sub.poll(100):
            topic, payload = sub.recv_multipart()
            if topic == f"history_{SYMBOL}".encode():
                got.append(payload)
    return got


def window() -> tuple[datetime, datetime]:
    day = datetime.now(B3_TZ).date() - timedelta(days=3)
    start = datetime(day.year, day.month, day.day, 10, 0, tzinfo=B3_TZ)
    return start, start + timedelta(minutes=30)


def stored_ids(store: Store) -> list[int]:
    start, end = window()  # the fake stamps milliseconds into the last second: read it whole
    return sorted(store.columns(SYMBOL, to_ms(start), to_ms(end) + 999).trade_id.tolist())


def download(*more: str) -> Any:
    start, end = window()
    return runner.invoke(
        app, ["download", SYMBOL, "--start", start.isoformat(), "--end", end.isoformat(), *more]
    )


def test_a_range_arrives_once_on_the_history_channel_and_in_the_store(
    dll_env: dict[str, str], history_sub: zmq.Socket[Any], store: Store, valkey_client: valkey.Valkey
) -> None:
    first = download("--wait-subscribers", "1")
    assert first.exit_code == 0, first.output
    assert f"{SYMBOL}: received=31 stored=31 duplicates=0 rejected=2 (date=1, price=1)" in first.stdout
    assert "published=31 durable=yes" in first.stdout
    for percent in (25, 50, 75, 100):
        assert f"{SYMBOL}: {percent}%" in first.output

    assert stored_ids(store) == list(range(601, 632))
    # the bulk path: history blocks only, no live stream entry (the bulk writer leaves an empty stream)
    assert valkey_client.xlen(store.keys.ticks(SYMBOL)) == 0

    # the foreign subscriber read every frame as JSON, numbered 1..31 on history_WINZ25
    got = history_frames(history_sub, 31)
    assert [json.loads(payload)["seq"] for payload in got] == list(range(1, 32))
    assert [decode_tick(payload).trade_id for payload in got] == list(range(601, 632))

    again = download()
    assert again.exit_code == 0, again.output
    assert "received=31 stored=0 duplicates=31" in again.stdout
    assert stored_ids(store) == list(range(601, 632))
    assert valkey_client.xlen(store.keys.ticks(SYMBOL)) == 0


def test_a_range_beyond_30_days_is_one_line_and_exit_2(dll_env: dict[str, str]) -> None:
    result = runner.invoke(app, ["download", SYMBOL, "--start", "-40d", "--end", "-39d"])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "30 days back only" in lines[0], result.output
