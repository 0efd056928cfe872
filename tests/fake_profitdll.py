"""The fake ProfitDLL (tests/native/fake_profitdll.c): how to build it, and its test-only controls."""

from __future__ import annotations

import ctypes
import shutil
import subprocess
from pathlib import Path

import pytest

NATIVE = Path(__file__).parent / "native" / "fake_profitdll.c"
OFFER, PRICE = 0, 1  # the fake's books
BUY, SELL = 0, 1  # sides as the DLL numbers them

Row = tuple[float, int, int, int]  # (price, quantity, agent or order count, offer id or 0)


def build_fake_dll(tmp_path_factory: pytest.TempPathFactory, *defines: str) -> Path:
    """`defines`: e.g. FAKE_V1_HISTORY_ONLY (a DLL without SetHistoryTradeCallbackV2 and TranslateTrade)."""
    if shutil.which("gcc") is None:
        pytest.skip("gcc is needed to build the fake ProfitDLL")
    out = tmp_path_factory.mktemp("dll") / "libfakeprofit.so"
    flags = [f"-D{name}" for name in defines]
    subprocess.run(["gcc", "-shared", "-fPIC", "-pthread", *flags, "-o", str(out), str(NATIVE)], check=True)
    return out


class FakeControls:
    """The fake's test-only exports. The library is loaded once per process, so these see (and reset)
    the very state the session's callbacks come from."""

    def __init__(self, path: Path) -> None:
        lib = self.lib = ctypes.CDLL(str(path))
        lib.FakeBookSnapshot.argtypes = [
            ctypes.c_int, ctypes.c_int, ctypes.POINTER(ctypes.c_double), ctypes.POINTER(ctypes.c_int64),
            ctypes.POINTER(ctypes.c_int), ctypes.POINTER(ctypes.c_int64), ctypes.c_int,
        ]  # fmt: skip
        lib.FakeBookRandom.argtypes = [ctypes.c_int, ctypes.c_uint, ctypes.c_int]
        for name in ("FakeBookCalls", "FakePagesMade", "FakePagesFreed", "FakeBadFrees"):
            getattr(lib, name).restype = ctypes.c_long
        lib.FreePointer.argtypes = [ctypes.c_void_p, ctypes.c_int]

    def reset(self) -> None:
        self.lib.FakeReset()

    def idle(self) -> bool:
        return bool(self.lib.FakeBusy() == 0)

    def script(self, book: int, phase: int) -> None:
        assert self.lib.FakeBookScript(book, phase) == 0

    def random(self, book: int, seed: int, steps: int) -> None:
        assert self.lib.FakeBookRandom(book, seed, steps) == 0

    def snapshot(self, book: int, side: int) -> list[Row]:
        """The fake's own positional list of one side, index order (the best last)."""
        n = 4096
        price, qty = (ctypes.c_double * n)(), (ctypes.c_int64 * n)()
        extra, ids = (ctypes.c_int * n)(), (ctypes.c_int64 * n)()
        size = self.lib.FakeBookSnapshot(book, side, price, qty, extra, ids, n)
        assert size <= n
        return [(price[i], qty[i], extra[i], ids[i]) for i in range(size)]

    def calls(self, book: int, version: int) -> int:
        return int(self.lib.FakeBookCalls(book, version))

    def pages(self, version: int) -> tuple[int, int]:
        """(made, freed) full-book pages of that callback version."""
        return int(self.lib.FakePagesMade(version)), int(self.lib.FakePagesFreed(version))

    def bad_frees(self) -> int:
        return int(self.lib.FakeBadFrees())
