from __future__ import annotations

from pathlib import Path

import pytest

from tickvault.bus.spool import Spool


def _spool(path: Path, max_memory: int = 3) -> Spool[bytes]:
    return Spool(path, lambda b: b, lambda b: b, max_memory=max_memory)


def test_fifo_across_memory_and_file(tmp_path: Path) -> None:
    spool = _spool(tmp_path / "s")
    spool.extend([b"%d" % i for i in range(10)])
    assert len(spool) == 10 and spool.on_disk == 7 and spool.spilled == 7
    spool.extend([b"10", b"11"])  # once something is on disk, new items queue behind it
    out = []
    while chunk := spool.take(4):
        out += chunk
    assert out == [b"%d" % i for i in range(12)]
    assert not (tmp_path / "s").exists(), "a drained spool deletes its file"


def test_putback_returns_items_to_the_front(tmp_path: Path) -> None:
    spool = _spool(tmp_path / "s", max_memory=100)
    spool.extend([b"a", b"b", b"c"])
    first = spool.take(2)
    spool.putback(first)
    assert spool.take(10) == [b"a", b"b", b"c"]


def test_close_keeps_everything_for_the_next_run(tmp_path: Path) -> None:
    spool = _spool(tmp_path / "s")
    spool.extend([b"%d" % i for i in range(8)])
    assert spool.take(2) == [b"0", b"1"]
    spool.close()
    again = _spool(tmp_path / "s")
    assert len(again) == 6
    out = []
    while chunk := again.take(5):
        out += chunk
    assert out == [b"%d" % i for i in range(2, 8)]


def test_disk_refusal_keeps_items_in_memory(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    spool = _spool(blocker / "s", max_memory=2)  # the parent is a file: every spill fails
    spool.extend([b"%d" % i for i in range(5)])
    assert spool.spill_errors >= 1
    assert sorted(spool.take(10)) == [b"%d" % i for i in range(5)]


@pytest.mark.parametrize("n", [0, 1, 1000])
def test_length_is_exact(tmp_path: Path, n: int) -> None:
    spool = _spool(tmp_path / "s", max_memory=10)
    spool.extend([b"x"] * n)
    assert len(spool) == n


_FULL_DISK_SCRIPT = """
import resource, signal, sys
from pathlib import Path
from tickvault.bus.spool import Spool

signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # past the limit a write fails with EFBIG, as on a full disk
resource.setrlimit(resource.RLIMIT_FSIZE, (1000, resource.RLIM_INFINITY))
spool = Spool(Path(sys.argv[1]), lambda b: b, lambda b: b, max_memory=2)
items = [b"%06d" % i for i in range(400)]
for start in range(0, 400, 7):  # batches that do not divide the limit: one is cut mid-record
    spool.extend(items[start : start + 7])
assert spool.spill_errors >= 1, "the limit was never reached"
out = []
while chunk := spool.take(13):
    out += chunk
assert sorted(out) == items, (len(out), out[:5])
assert spool.corrupt == 0
print("ok", spool.spilled, spool.spill_errors)
"""


def test_a_disk_filling_mid_batch_loses_nothing_and_leaves_no_torn_record(tmp_path: Path) -> None:
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", _FULL_DISK_SCRIPT, str(tmp_path / "s")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("ok")


def test_a_torn_last_record_from_a_killed_process_is_cut_off(tmp_path: Path) -> None:
    spool = _spool(tmp_path / "s", max_memory=0)
    spool.extend([b"one", b"two"])
    with open(tmp_path / "s", "ab") as f:
        f.write(b"\x09\x00\x00\x00thr")  # a record of 9 bytes, killed after 3
    again = _spool(tmp_path / "s", max_memory=0)
    assert len(again) == 2
    again.extend([b"four"])
    assert again.take(10) == [b"one", b"two", b"four"]


def test_an_undecodable_record_is_counted_and_skipped(tmp_path: Path) -> None:
    def decode(b: bytes) -> bytes:
        if b == b"bad":
            raise ValueError("not a tick")
        return b

    spool = Spool(tmp_path / "s", lambda b: b, decode, max_memory=0)
    spool.extend([b"a", b"bad", b"c"])
    assert spool.take(10) == [b"a", b"c"]
    assert spool.corrupt == 1
