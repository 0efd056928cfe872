"""The README's five-minute tour, line by line, as a new user runs it in a fresh folder on the embedded
Valkey. The commands are read from README.md itself, so the tour cannot drift from what is tested.
The only changes: `make run ARGS="..."` runs `tickvault run ...` (the same program make calls, in this
venv), durations are cut to a few seconds, and `monitor` prints one frame (`--once`) instead of
staying live."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import subprocess_env
from tickvault.store.server import EmbeddedValkey, free_port

README = Path(__file__).resolve().parents[1] / "README.md"
RUN_SECONDS = "6"


def tour_lines() -> list[str]:
    text = README.read_text(encoding="utf-8")
    block = text.split("## A five-minute tour", 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]
    return [line.split("  #", 1)[0].strip() for line in block.splitlines() if line.strip()]


def as_argv(line: str) -> list[str]:
    """A tour line as the argv this test runs."""
    made = re.fullmatch(r'make run ARGS="([^"]*)"', line)
    if made:
        args = ["run", *shlex.split(made.group(1))]
    else:
        words = shlex.split(line)
        assert words[0] == ".venv/bin/tickvault", line
        args = words[1:]
    if "--duration" in args:
        args[args.index("--duration") + 1] = RUN_SECONDS
    if args[0] == "monitor":
        args.append("--once")
    return [sys.executable, "-m", "tickvault", *args]


def test_the_tour_is_what_this_test_runs() -> None:
    lines = tour_lines()
    assert lines[0].startswith("make run") and any(
        line.startswith(".venv/bin/tickvault report") for line in lines
    )
    assert [as_argv(line)[3] for line in lines] == [
        "run", "query", "query", "query", "monitor", "backfill", "train", "report", "run", "query",
    ]  # fmt: skip


@pytest.mark.timeout(600)
def test_a_new_user_follows_the_tour_from_a_fresh_folder(tmp_path: Path) -> None:
    ports = {name: str(free_port()) for name in ("ZMQ_TICK_PORT", "ZMQ_BOOK_PORT", "ZMQ_HISTORY_PORT",
                                                 "ZMQ_SIGNAL_PORT", "ZMQ_REPLAY_PORT",
                                                 "ZMQ_BOOK_REPLAY_PORT")}  # fmt: skip
    # features every 5 s of market instead of 1 s: the same commands, a fifth of the rows to train on
    env = subprocess_env({**ports, "COLUMNS": "160", "FEATURES_INTERVAL_MS": "5000"})
    outputs = []
    for line in tour_lines():
        done = subprocess.run(
            as_argv(line), cwd=tmp_path, env=env, capture_output=True, text=True, timeout=400
        )
        assert done.returncode == 0, f"{line}\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
        outputs.append(done.stdout)
    first_run, ticks, candles, features, monitor, backfill, train, report, second_run, signals = outputs
    assert "drained=yes" in first_run and "drained=yes" in second_run
    assert re.search(r"[\d,]+ rows", ticks) and "WDOFUT" in ticks
    assert candles.startswith("timestamp,open,high,low,close") and len(candles.splitlines()) > 1
    assert re.search(r"[1-9][\d,]* rows", features)
    assert "WDOFUT" in monitor and "NO DATA" not in monitor
    assert "sessions=" in backfill and "written=0 " not in backfill
    assert "model=" in train and (tmp_path / "data" / "model" / "model.pkl").exists()
    assert (tmp_path / "report.html").stat().st_size > 100_000 and report.startswith("report=")
    assert int(re.search(r"predictions=(\d+)", second_run).group(1)) > 0  # type: ignore[union-attr]
    assert re.search(r"[1-9][\d,]* rows", signals) and re.search(r"BUY|SELL|HOLD", signals)
    assert EmbeddedValkey(tmp_path / "data" / "valkey").running() is None  # nothing left running
