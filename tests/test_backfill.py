"""Simulated history written straight into blocks: whole sessions, BVMF days, never twice, never over
recorded ticks."""

from __future__ import annotations

from datetime import date, datetime

import numpy as np
from typer.testing import CliRunner

from factories import tick
from tickvault.app.cli import app
from tickvault.domain.events import B3_TZ, to_ms
from tickvault.sources.backfill import backfill, previous_trading_days, simulated_session
from tickvault.store.api import Store

MONDAY = date(2025, 11, 24)  # the Thursday before, 2025-11-20, is a BVMF holiday
SYMBOL = "PETR4"  # a generic instrument: about 20k trades a session, quick to simulate


def _ms(day: date, hh: int, mm: int) -> int:
    return to_ms(datetime(day.year, day.month, day.day, hh, mm, tzinfo=B3_TZ))


def test_previous_trading_days_skip_weekends_and_holidays() -> None:
    assert previous_trading_days(MONDAY, 3) == [date(2025, 11, 18), date(2025, 11, 19), date(2025, 11, 21)]


def test_whole_sessions_are_written_and_a_second_call_writes_nothing(store: Store) -> None:
    first = backfill(store, [SYMBOL], 2, before=MONDAY)
    days = [date(2025, 11, 19), date(2025, 11, 21)]
    assert sorted(first.written) == [(SYMBOL, d) for d in days] and first.skipped == []
    for day in days:
        frame = store.ticks(SYMBOL, day.isoformat(), day.isoformat())
        assert len(frame) == first.written[(SYMBOL, day)] > 5000
        assert frame.timestamp_ms.min() >= _ms(day, 9, 0) and frame.timestamp_ms.max() < _ms(day, 18, 30)
        assert frame.timestamp_ms.max() > _ms(day, 18, 0)  # the whole session, not its first hours
        assert list(frame.seq) == list(range(1, len(frame) + 1))  # time order, numbered per session
        assert frame.trade_id.is_unique and (frame.price > 0).all()
    assert SYMBOL in store.symbols()
    count = store.count(SYMBOL)
    again = backfill(store, [SYMBOL], 2, before=MONDAY)
    assert again.written == {} and sorted(again.skipped) == [(SYMBOL, d) for d in days]
    assert store.count(SYMBOL) == count


def test_a_day_with_recorded_ticks_is_left_alone(store: Store) -> None:
    recorded = [tick(SYMBOL, _ms(date(2025, 11, 21), 10, 0) + i, i + 1, seq=i + 1) for i in range(10)]
    store.append_ticks(recorded)
    result = backfill(store, [SYMBOL], 2, before=MONDAY)
    assert result.skipped == [(SYMBOL, date(2025, 11, 21))]
    assert list(result.written) == [(SYMBOL, date(2025, 11, 19))]
    assert store.tick_events(SYMBOL, "2025-11-21", "2025-11-21") == recorded


def test_each_day_is_its_own_and_the_same_on_every_run() -> None:
    a = simulated_session(SYMBOL, date(2025, 11, 19), seed=7)
    b = simulated_session(SYMBOL, date(2025, 11, 19), seed=7)
    c = simulated_session(SYMBOL, date(2025, 11, 21), seed=7)
    assert np.array_equal(a.price, b.price) and np.array_equal(a.timestamp_ms, b.timestamp_ms)
    assert not np.array_equal(a.price[:1000], c.price[:1000])


def test_backfill_command(system_env: dict[str, str], store: Store) -> None:
    runner = CliRunner()
    args = ["backfill", "--days", "1", "--symbols", SYMBOL, "--before", MONDAY.isoformat()]
    done = runner.invoke(app, args)
    assert done.exit_code == 0, done.output
    written = store.count(SYMBOL)
    assert f"{SYMBOL} 2025-11-21: {written} simulated ticks" in done.output
    assert f"written={written} sessions=1 skipped=0" in done.output
    again = runner.invoke(app, args)
    assert (
        "already has ticks, left as it is" in again.output
        and "written=0 sessions=0 skipped=1" in again.output
    )
    bad = runner.invoke(app, ["backfill", "--before", "someday"])
    assert bad.exit_code == 2 and "--before" in bad.output
