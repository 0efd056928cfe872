"""The leftover check every test passes through (conftest.py) sees threads and child processes."""

from __future__ import annotations

import subprocess
import sys
import threading

import leaks


def test_a_thread_still_running_is_named_and_one_that_ended_is_not() -> None:
    before = leaks.snapshot()
    stop = threading.Event()
    thread = threading.Thread(target=stop.wait, name="lingering-worker", daemon=True)
    thread.start()
    try:
        assert any("lingering-worker" in item for item in leaks.leftovers(before, grace=0.2))
    finally:
        stop.set()
        thread.join(10)
    assert leaks.leftovers(before, grace=5) == []


def test_a_child_process_still_running_is_named_and_one_that_ended_is_not() -> None:
    before = leaks.snapshot()
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        found = leaks.leftovers(before, grace=0.2)
        assert any(str(child.pid) in item and "time.sleep" in item for item in found)
    finally:
        child.kill()
        child.wait(10)
    assert leaks.leftovers(before, grace=5) == []
