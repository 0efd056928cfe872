"""The suite's short soak (`bench/soak.py --short`): 24 minutes of the opening burst of two symbols
through real source, recorder and Valkey processes, every fault of the full soak once. Every tick
the source produced must be in the store exactly once, and the watched bus subscriber must have
seen each once, in order."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import subprocess_env

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.timeout(900)
def test_short_soak_loses_and_duplicates_nothing_under_every_fault(tmp_path: Path) -> None:
    out = tmp_path / "soak.json"
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "soak.py"), "--short", "--workdir", str(tmp_path / "run"),
         "--json", str(out)],
        env=subprocess_env({}), capture_output=True, text=True, timeout=600, cwd=tmp_path,
    )  # fmt: skip
    assert out.exists(), done.stdout + done.stderr
    report = json.loads(out.read_text())
    assert report["ticks"] > 50_000
    assert (report["lost"], report["duplicated"], report["phantom"], report["altered"]) == (0, 0, 0, 0), (
        report["lost_examples"]
    )
    assert report["out_of_order"] == 0
    assert report["stepped_kept"] == report["stepped_emitted"] > 0
    sub = report["subscriber"]
    assert (sub["lost"], sub["duplicated"], sub["out_of_order"]) == (0, 0, 0)
    kinds = {f["kind"] for f in report["faults"]}
    assert kinds == {"recorder_kill", "valkey_kill", "subscriber_pause", "publisher_stall", "recorder_stall",
                     "clock_step", "disk_full"}  # fmt: skip
    assert all(f["fired"] and f["recovered"] for f in report["faults"]), report["faults"]
    assert report["problems"] == []
    assert done.returncode == 0, done.stdout[-3000:]
