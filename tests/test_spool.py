from __future__ import annotations

from pathlib import Path

import pytest

from tickvault.spool import Spool


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
