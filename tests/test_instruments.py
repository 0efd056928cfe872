"""The instrument registry: symbols resolve to their B3 contract, the figures are B3's, and the
simulator, file loading, training and the report all take them from here."""

from __future__ import annotations

import itertools
from datetime import UTC, date, datetime, time
from pathlib import Path

import msgspec
import pandas as pd
import pytest

from tickvault.domain.events import B3_TZ
from tickvault.domain.instruments import DEFAULT, FUTURES_SESSION, INSTRUMENTS, instrument_for
from tickvault.ml.model import ModelInfo
from tickvault.ml.report import write_report
from tickvault.sources.files import tick_from_row
from tickvault.sources.simulator import SESSION, SPECS, MarketSimulator, spec_for

MONDAY = datetime(2025, 11, 24, 9, 0, tzinfo=B3_TZ)


@pytest.mark.parametrize(
    ("symbol", "root"),
    [
        ("WDOFUT", "WDO"), ("WDOF25", "WDO"), ("WDOZ26", "WDO"),
        ("DOLFUT", "DOL"), ("DOLF26", "DOL"),
        ("WINFUT", "WIN"), ("WINZ26", "WIN"), ("WINZ25", "WIN"),
        ("INDFUT", "IND"), ("INDG26", "IND"),
    ],
)  # fmt: skip
def test_symbols_resolve_to_their_root(symbol: str, root: str) -> None:
    assert instrument_for(symbol) is INSTRUMENTS[root]


@pytest.mark.parametrize(
    "symbol",
    # not B3 futures codes: a share, another root, a bad month letter, a bare root, extra characters
    ["PETR4", "ABCFUT", "WDOA25", "WDO", "WIN", "WDOFUT26", "WDOF2", "XWDOFUT", "DOLLAR", "wdofut"],
)
def test_other_symbols_get_the_default(symbol: str) -> None:
    assert instrument_for(symbol) is DEFAULT


def test_b3_figures() -> None:
    figures = {root: (i.tick_size, i.multiplier, i.currency) for root, i in INSTRUMENTS.items()}
    assert figures == {
        "WDO": (0.5, 10.0, "BRL"),  # mini dollar: BRL 10 per point
        "DOL": (0.5, 50.0, "BRL"),  # full dollar: BRL 50 per point
        "WIN": (5.0, 0.2, "BRL"),  # mini index: BRL 0.20 per point
        "IND": (5.0, 1.0, "BRL"),  # full index: BRL 1.00 per point
    }
    assert (DEFAULT.tick_size, DEFAULT.multiplier, DEFAULT.currency) == (0.01, 1.0, "BRL")
    for instrument in (*INSTRUMENTS.values(), DEFAULT):
        assert instrument.session == FUTURES_SESSION
    assert (FUTURES_SESSION.open, FUTURES_SESSION.close, FUTURES_SESSION.calendar) == (
        time(9, 0),
        time(18, 30),
        "BVMF",
    )
    assert FUTURES_SESSION.length_ms == 570 * 60_000


def test_the_registry_is_frozen() -> None:
    with pytest.raises(AttributeError):
        INSTRUMENTS["DOL"].multiplier = 10.0  # type: ignore[misc]
    with pytest.raises(TypeError):
        INSTRUMENTS["XYZ"] = DEFAULT  # type: ignore[index]
    with pytest.raises(AttributeError):
        FUTURES_SESSION.open = time(10, 0)  # type: ignore[misc]
    assert msgspec.structs.asdict(INSTRUMENTS["WIN"])["tick_size"] == 5.0


# --- every user reads the registry --------------------------------------------------------------------


@pytest.mark.parametrize("symbol", ["WDOFUT", "DOLFUT", "WINFUT", "INDFUT", "DOLF26", "PETR4"])
def test_simulated_ticks_use_the_registry(symbol: str) -> None:
    instrument = instrument_for(symbol)
    assert spec_for(symbol).instrument is instrument
    ticks = list(itertools.islice(MarketSimulator([symbol], start=MONDAY).ticks(), 2000))
    for t in ticks:
        assert t.volume == t.price * t.quantity * instrument.multiplier
        steps = t.price / instrument.tick_size
        assert abs(steps - round(steps)) < 1e-6
    assert instrument.session == SESSION


def test_full_contracts_are_worth_five_minis() -> None:
    """The bug this registry fixed: the simulator priced DOL and IND with the minis' multipliers."""
    dol, wdo = spec_for("DOLFUT"), spec_for("WDOFUT")
    ind, win = spec_for("INDFUT"), spec_for("WINFUT")
    assert dol.multiplier == 5 * wdo.multiplier == 50.0
    assert ind.multiplier == 5 * win.multiplier == 1.0
    assert (dol.tick_size, ind.tick_size) == (wdo.tick_size, win.tick_size)


@pytest.mark.parametrize("symbol", ["WDOFUT", "DOLFUT", "WINZ25", "INDFUT", "PETR4"])
def test_file_rows_without_volume_use_the_registry(symbol: str) -> None:
    row = {
        "symbol": symbol,
        "timestamp_ms": "1763985600000",
        "trade_id": "1",
        "price": "100",
        "quantity": "3",
    }
    assert tick_from_row(row).volume == 100 * 3 * instrument_for(symbol).multiplier


@pytest.mark.parametrize("symbol", ["WDOFUT", "DOLF26", "WINFUT", "INDFUT", "PETR4"])
def test_report_uses_the_registry_multiplier(symbol: str, tmp_path: Path) -> None:
    info = ModelInfo(symbol, [], [], 60_000, instrument_for(symbol).tick_size, "a", "b", 2, 1)
    oos = pd.DataFrame({"DOWN": [0.1], "FLAT": [0.1], "UP": [0.8], "move": [2.0]})
    html = write_report(info, oos, tmp_path / "r.html", threshold=0.6, fee=0.0).read_text()
    multiplier = instrument_for(symbol).multiplier
    assert f"multiplier {multiplier}" in html
    assert f"final equity {2.0 * multiplier:,.2f} BRL" in html


def test_the_simulator_has_a_market_for_every_instrument() -> None:
    assert {root: spec.instrument for root, spec in SPECS.items()} == {**INSTRUMENTS, DEFAULT.root: DEFAULT}


# --- the session and the B3 calendar ------------------------------------------------------------------


def test_the_calendar_knows_b3_holidays() -> None:
    is_trading_day = FUTURES_SESSION.is_trading_day
    assert not is_trading_day(date(2025, 11, 20))  # Consciencia Negra, a BVMF holiday since 2024
    assert is_trading_day(date(2023, 11, 20))  # not yet a holiday then: dates come from the calendar
    assert not is_trading_day(date(2025, 12, 24)) and not is_trading_day(date(2025, 12, 25))
    assert not is_trading_day(date(2025, 11, 22))  # Saturday
    assert is_trading_day(date(2025, 11, 21))
    assert FUTURES_SESSION.next_trading_day(date(2025, 11, 19)) == date(2025, 11, 21)
    assert FUTURES_SESSION.previous_trading_day(date(2025, 11, 24)) == date(2025, 11, 21)


def test_start_for_is_the_current_or_last_open() -> None:
    start_for = FUTURES_SESSION.start_for
    assert start_for(datetime(2025, 11, 24, 23, 0, tzinfo=B3_TZ)) == MONDAY
    assert start_for(datetime(2025, 11, 24, 13, 0, tzinfo=B3_TZ)) == MONDAY
    friday = datetime(2025, 11, 21, 9, 0, tzinfo=B3_TZ)
    assert start_for(datetime(2025, 11, 24, 8, 59, tzinfo=B3_TZ)) == friday
    assert start_for(datetime(2025, 11, 23, 15, 0, tzinfo=B3_TZ)) == friday
    thursday = datetime(2025, 11, 20, 12, 0, tzinfo=B3_TZ)  # a holiday: the session before it
    assert start_for(thursday) == datetime(2025, 11, 19, 9, 0, tzinfo=B3_TZ)
    assert start_for(datetime(2025, 11, 24, 19, 0, tzinfo=UTC)) == MONDAY  # 16:00 local


def test_trading_moment_inside_a_session_or_the_next_open() -> None:
    moment = FUTURES_SESSION.trading_moment
    inside = datetime(2025, 11, 24, 13, 0, tzinfo=B3_TZ)
    assert moment(inside) == inside
    assert moment(datetime(2025, 11, 24, 18, 30, tzinfo=B3_TZ)) == datetime(2025, 11, 25, 9, 0, tzinfo=B3_TZ)
    assert moment(datetime(2025, 11, 22, 10, 0, tzinfo=B3_TZ)) == MONDAY  # Saturday
    assert FUTURES_SESSION.close_of(date(2025, 11, 24)) == datetime(2025, 11, 24, 18, 30, tzinfo=B3_TZ)
