"""The ProfitDLL binding driven by a fake library built here with gcc: same exported functions and
callback signatures, callbacks fired from the library's own threads with wide-char strings."""

from __future__ import annotations

import ctypes
import threading
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from conftest import wait_until
from fake_profitdll import build_fake_dll
from tickvault.domain.events import B3_TZ, Tick
from tickvault.errors import ConfigError, DataError
from tickvault.sources.profitdll import ProfitDLLSource, check_history_window, parse_profit_date


@pytest.fixture(scope="module")
def fake_dll(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_fake_dll(tmp_path_factory)


def drain(session: ProfitDLLSource, n: int) -> list[Tick]:
    got: list[Tick] = []
    assert wait_until(lambda: got.extend(iter_queue(session)) or len(got) >= n, timeout=10)
    return got


def iter_queue(session: ProfitDLLSource) -> list[Tick]:
    out = []
    while not session.queue.empty():
        out.append(session.queue.get())
    return out


def test_every_trade_arrives_as_a_correct_tick(fake_dll: Path) -> None:
    session = ProfitDLLSource(fake_dll, "KEY-123", "trader", "s3cret", login_timeout=10)
    session.start()
    session.subscribe(["WDOF26"])
    ticks = drain(session, 5)
    assert wait_until(lambda: session._dll.FakeBusy() == 0, timeout=10)
    assert len(ticks) == 5 and session.stats.received == 5
    first, second, cross, edit, huge = ticks
    assert first.symbol == "WDOF26" and first.trade_id == 1001
    assert first.timestamp == datetime(2025, 11, 24, 10, 15, 30, 123000, tzinfo=B3_TZ)
    assert first.timestamp.utcoffset().total_seconds() == -3 * 3600
    assert (first.price, first.volume, first.quantity) == (5412.5, 108250.0, 2)
    assert (first.buyer, first.seller, first.trade_type, first.aggressor) == (3, 120, 2, "buy")
    assert (second.trade_type, second.aggressor) == (3, "sell")
    assert (cross.trade_type, cross.aggressor, cross.buyer, cross.seller) == (1, "none", 45, 45)
    assert edit.is_edit and edit.trade_id == 1001 and edit.price == 5412.0 and session.stats.edits == 1
    assert huge.trade_id == 4_000_000_000 and huge.timestamp.microsecond == 999_000
    # the trade with 31/02 was rejected, counted, and the trades after it still arrived
    assert session.stats.rejected == {"date": 1}
    session.close()


def recent_day(days_back: int = 2) -> datetime:
    """10:00 B3 time of a day a little in the past (within the DLL's 30 days)."""
    day = datetime.now(B3_TZ).date() - timedelta(days=days_back)
    return datetime(day.year, day.month, day.day, 10, 0, tzinfo=B3_TZ)


@pytest.fixture(scope="module")
def fake_dll_v1(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_fake_dll(tmp_path_factory, "FAKE_V1_HISTORY_ONLY")


@pytest.mark.parametrize("version", [2, 1])
def test_history_trades_arrive_apart_from_live_ones_with_progress(
    fake_dll: Path, fake_dll_v1: Path, version: int
) -> None:
    path = fake_dll if version == 2 else fake_dll_v1
    session = ProfitDLLSource(path, "KEY-123", "trader", "s3cret", login_timeout=10)
    session.start()
    try:
        start = recent_day()
        seen: list[int] = []
        ticks = list(
            session.history_ticks("WINZ25", start, start + timedelta(minutes=30), threading.Event(),
                                  on_progress=seen.append)
        )  # fmt: skip
        # one trade a minute, 10:00 to 10:30 inclusive; the fake's impossible date and zero price refused
        assert [t.trade_id for t in ticks] == list(range(601, 632))
        assert {t.symbol for t in ticks} == {"WINZ25"} and ticks[0].timestamp == start
        assert (ticks[0].price, ticks[0].aggressor, ticks[1].aggressor) == (130000.0, "buy", "sell")
        assert session.stats.history_rejected == {"date": 1, "price": 1}
        assert seen == [25, 50, 75, 100]
        # told apart: nothing on the live queue, no live counter moved
        assert session.queue.empty() and session.stats.received == 0 and session.stats.rejected == {}
        assert session.stats.history == 31 and session.history_done.is_set()
        # V2 when the DLL has it, and then only V2: the V1 slot got NULL, so no trade came twice
        calls = session._dll.FakeHistoryCalls
        calls.restype = ctypes.c_long
        assert session.stats.history_v2 == (version == 2)
        assert (calls(1), calls(2)) == ((0, 33) if version == 2 else (33, 0))
        assert session.stats.history_last_packets == (version == 2)
    finally:
        session.close()


def test_a_history_range_beyond_30_days_is_refused_before_asking() -> None:
    now = datetime(2026, 12, 1, 13, 0, tzinfo=B3_TZ)
    check_history_window(datetime(2026, 11, 1, 0, 0, tzinfo=B3_TZ), now, now)  # exactly 30 days: served
    with pytest.raises(DataError, match="30 days back only, from 2026-11-01") as info:
        check_history_window(datetime(2026, 10, 31, 23, 59, tzinfo=B3_TZ), now, now)
    assert "\n" not in str(info.value)
    with pytest.raises(DataError, match="before the start"):
        check_history_window(now, now - timedelta(hours=1), now)


def test_wrong_password_is_a_clear_error(fake_dll: Path) -> None:
    session = ProfitDLLSource(fake_dll, "KEY-123", "trader", "wrong", login_timeout=10)
    with pytest.raises(ConfigError, match="login refused") as info:
        session.start()
    assert "wrong" not in str(info.value)


def test_a_missing_library_names_the_setting(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="PROFIT_DLL_PATH"):
        ProfitDLLSource(tmp_path / "nope.dll", "k", "u", "p").start()


def test_ticks_iterator_stops_on_the_event(fake_dll: Path) -> None:
    session = ProfitDLLSource(fake_dll, "KEY-123", "trader", "s3cret", login_timeout=10)
    session.start()
    session.subscribe(["WDOF26"])
    stop = threading.Event()
    got = []
    for tick in session.ticks(stop):
        got.append(tick)
        if len(got) == 5:
            stop.set()
    assert len(got) == 5
    session.close()


def test_date_parser() -> None:
    assert parse_profit_date("01/02/2026 09:00:00.5") == datetime(2026, 2, 1, 9, 0, 0, 500000, tzinfo=B3_TZ)
    assert parse_profit_date("01/02/2026 09:00:00") == datetime(2026, 2, 1, 9, 0, tzinfo=B3_TZ)
    for bad in ("2026-02-01 09:00:00", "31/02/2025 10:00:00.000", "", "01/02/2026 25:00:00.000"):
        with pytest.raises(DataError, match="date"):
            parse_profit_date(bad)


@given(st.text(max_size=40))
def test_date_parser_never_crashes(text: str) -> None:
    try:
        parsed = parse_profit_date(text)
    except DataError:
        return
    assert parsed.tzinfo is B3_TZ


def test_the_fake_dll_feeds_the_whole_system(
    fake_dll: Path, system_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from tickvault.app.system import System
    from tickvault.config import load_settings
    from tickvault.sources.profitdll import profitdll_source
    from tickvault.store.api import Store

    for name, value in (
        ("PROFIT_DLL_PATH", str(fake_dll)),
        ("PROFIT_USER", "trader"),
        ("PROFIT_PASSWORD", "s3cret"),
        ("PROFIT_KEY", "KEY-123"),
        ("TICKVAULT_SYMBOLS", "WDOF26"),
    ):
        monkeypatch.setenv(name, value)  # fmt: skip
    settings = load_settings()
    stop = threading.Event()
    system = System(settings, source=profitdll_source(settings, stop))
    system.stop_event = stop
    system.start()
    assert system.store is not None
    store: Store = system.store
    assert wait_until(lambda: store.count("WDOF26") == 5, timeout=30)
    summary = system.stop()
    assert summary.drained
    stored = store.tick_events("WDOF26", 0, 2**42)
    assert sorted((t.trade_id, t.is_edit) for t in stored) == [
        (1001, False), (1001, True), (1002, False), (1003, False), (4_000_000_000, False),
    ]  # fmt: skip
