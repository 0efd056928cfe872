"""Log lines: one line per event in both formats, tracebacks included; JSON lines parse."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

from conftest import subprocess_env
from tickvault.app.logs import JsonFormatter, LineFormatter


def _record_with_traceback() -> logging.LogRecord:
    try:
        raise ValueError("bad\nthing")
    except ValueError:
        return logging.LogRecord(
            "tickvault.recorder", logging.ERROR, __file__, 1, "writer failed: %s", ("x",), sys.exc_info()
        )


def test_text_lines_fold_a_traceback_into_the_event() -> None:
    line = LineFormatter().format(_record_with_traceback())
    assert "\n" not in line
    assert " ERROR tickvault.recorder writer failed: x | Traceback (most recent call last):" in line
    assert line.endswith("ValueError: bad | thing")


def test_json_lines_carry_the_fields_and_the_traceback() -> None:
    line = JsonFormatter().format(_record_with_traceback())
    assert "\n" not in line
    event = json.loads(line)
    assert (event["level"], event["logger"], event["msg"]) == (
        "ERROR",
        "tickvault.recorder",
        "writer failed: x",
    )
    assert event["exc"].startswith("Traceback") and "ValueError: bad\nthing" in event["exc"]
    assert event["ts"][10] == "T" and event["ts"][-6] in "+-"  # ISO 8601 with its offset


def test_a_run_with_json_logs_writes_only_json_lines_to_stderr(
    system_env: dict[str, str], tmp_path: Path
) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "tickvault", "--log-format", "json",
         "run", "--duration", "2", "--no-dashboard", "--speed", "50"],
        env=subprocess_env(system_env), cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    events = [json.loads(line) for line in proc.stderr.splitlines()]  # each line is one JSON event
    messages = [e["msg"] for e in events]
    assert any(m.startswith("tickvault running: ") for m in messages)
    assert "stopping: draining bus and recorder ..." in messages
    assert all(e["logger"].startswith("tickvault") for e in events)


def test_log_format_env_is_honoured_and_a_bad_one_named(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "tickvault", "query", "WDOFUT", "--start", "-1h"],
        env=subprocess_env({"LOG_FORMAT": "xml"}), cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("tickvault: error: LOG_FORMAT='xml'")
