"""What a test leaves behind: threads and child processes still alive after its teardown.

A thread or process that outlives its test logs into, and competes for the CPU with, the tests
after it; a failed test is the likeliest to leave one. conftest.py snapshots both before each
test and fails the test's teardown, naming what was left, if anything new is still alive once a
short grace period has passed (a stopping thread may need a moment to return).
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from dataclasses import dataclass


@dataclass(frozen=True)
class Child:
    pid: int
    command: str


def child_processes() -> dict[int, Child]:
    """Live (not zombie) direct children of this process, from /proc."""
    me = os.getpid()
    children: dict[int, Child] = {}
    try:
        entries = os.listdir("/proc")
    except OSError:  # not Linux: nothing to check
        return children
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as stat:
                fields = stat.read().rsplit(b")", 1)[1].split()
            if int(fields[1]) != me or fields[0] == b"Z":
                continue
            with open(f"/proc/{entry}/cmdline", "rb") as cmdline:
                command = cmdline.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except (OSError, IndexError, ValueError):
            continue  # it ended while we looked
        children[int(entry)] = Child(int(entry), command[:200])
    return children


@dataclass(frozen=True)
class Snapshot:
    threads: frozenset[int]
    children: frozenset[int]


def snapshot() -> Snapshot:
    return Snapshot(
        frozenset(t.ident for t in threading.enumerate() if t.ident is not None),
        frozenset(child_processes()),
    )


def _running(thread: threading.Thread) -> bool:
    """Alive, and its OS thread still exists: a thread a C library started and that called into
    Python stays in `threading.enumerate()` as a "Dummy" thread for ever, even after it has ended."""
    if not thread.is_alive():
        return False
    try:
        return str(thread.native_id) in os.listdir("/proc/self/task")
    except OSError:  # not Linux: trust is_alive
        return True


def leftovers(before: Snapshot, grace: float = 10.0) -> list[str]:
    """Threads and children started since `before` still alive after `grace` seconds, described."""
    deadline = time.monotonic() + grace
    while True:
        threads = [t for t in threading.enumerate() if t.ident not in before.threads and _running(t)]
        children = [c for pid, c in child_processes().items() if pid not in before.children]
        if (not threads and not children) or time.monotonic() >= deadline:
            break
        time.sleep(0.05)
    found = [f"thread {t.name!r} (daemon={t.daemon})" for t in threads]
    found += [f"child process {c.pid}: {c.command}" for c in children]
    return found


def kill_children(before: Snapshot) -> None:
    """SIGKILL and reap the children started since `before`."""
    for pid in child_processes():
        if pid in before.children:
            continue
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
