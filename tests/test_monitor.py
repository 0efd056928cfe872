"""`tickvault monitor`: rendered headless with data, with no data, with Valkey down; health written
by a running component is read back; `--once` prints one frame and exits."""

from __future__ import annotations

import io
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import valkey
from rich.console import Console

from conftest import subprocess_env, wait_until
from factories import BASE_MS, tick
from tickvault.app.monitor import gather, render, sparkline
from tickvault.domain.events import Features, Signal, from_ms
from tickvault.store.api import Store
from tickvault.store.health import HealthReporter


def text_of(renderable: object) -> str:
    console = Console(record=True, width=220, file=io.StringIO())
    console.print(renderable)
    return console.export_text()


def test_with_data_the_numbers_are_right(store: Store) -> None:
    # 09:00 open at 5000, then a trade every 30 s for 10 minutes up to 5010 (last at 09:10)
    open_ms = BASE_MS - 4 * 3_600_000
    trades = [
        tick(ts_ms=open_ms + i * 30_000, trade_id=i + 1, price=5000.0 + 0.5 * i, quantity=2)
        for i in range(21)
    ]
    store.append_ticks(trades)
    last_ms = trades[-1].timestamp_ms
    store.append_events([
        Features(symbol="WDOFUT", timestamp=from_ms(last_ms), timestamp_ms=last_ms,
                 values={"ret_5m": 0.001, "ofi_60s": 0.25, "volatility_regime_30d": "HIGH_VOL"}),
        Signal(symbol="WDOFUT", timestamp=from_ms(last_ms), timestamp_ms=last_ms, action="BUY",
               confidence=0.71),
    ])  # fmt: skip
    snap = gather(store, ("WDOFUT", "WINFUT"))
    row = snap.rows[0]
    in_5m = [t for t in trades if t.timestamp_ms > last_ms - 300_000]
    assert row.trades_5m == len(in_5m) == 10
    assert row.volume_5m == sum(t.volume for t in in_5m)
    assert row.change_pct == (5010.0 / 5000.0 - 1) * 100
    assert sum(row.spark) == 21 and row.spark[-1] == 2  # the minute up to the last trade: 09:09:30, 09:10
    text = text_of(render(snap))
    assert "5,010.00" in text and "+0.200" in text and "BUY 0.71" in text and "HIGH_VOL" in text
    assert "NO DATA" in text  # WINFUT has nothing


def test_health_reported_by_a_component_is_shown(store: Store) -> None:
    counters = {"stored": 100, "rejected": 2, "buffered": 0, "gaps": 1, "recovered": 1}
    reporter = HealthReporter(store.client, "recorder@test", lambda: dict(counters))
    reporter.report()
    first = gather(store, ("WDOFUT",))
    counters["stored"] = 400
    reporter.report()
    second = gather(store, ("WDOFUT",), first)
    assert second.health["stored"] == 400 and second.components == ["recorder@test"]
    assert second.ticks_per_s is not None and second.ticks_per_s > 0
    text = text_of(render(second))
    assert "rejected 2" in text and "recorder@test" in text
    assert 0 < store.client.ttl("tv:health:recorder@test") <= 10
    reporter.stop()
    assert not store.client.exists("tv:health:recorder@test")


def test_running_reporter_refreshes_its_hash_and_removes_it_on_stop(store: Store) -> None:
    counters = {"stored": 1}
    reporter = HealthReporter(store.client, "run@test", lambda: dict(counters), interval=0.05)
    reporter.start()
    try:
        assert wait_until(lambda: gather(store, ()).components == ["run@test"], timeout=10)
        counters["stored"] = 7  # picked up by a later beat, not only the first
        assert wait_until(lambda: gather(store, ()).health.get("stored") == 7, timeout=10)
        assert int(store.client.hget("tv:health:run@test", "at") or 0) > 0
    finally:
        reporter.stop()
    assert gather(store, ()).components == []
    assert "no running component reports health" in text_of(render(gather(store, ())))


def test_counters_sum_over_components_and_lag_is_only_a_reported_measure(store: Store) -> None:
    HealthReporter(store.client, "source@a", lambda: {"generated": 50}).report()
    HealthReporter(store.client, "recorder@b", lambda: {"stored": 30, "rejected": 1}).report()
    HealthReporter(store.client, "recorder@c", lambda: {"stored": 20, "rejected": 2}).report()
    snap = gather(store, ())
    assert snap.health["stored"] == 50 and snap.health["rejected"] == 3 and snap.lag_ms is None
    text = text_of(render(snap))
    assert "bus→store lag - " in text and "ticks/s stored - " in text  # first frame: no rate yet
    HealthReporter(store.client, "recorder@b", lambda: {"stored": 30, "store_lag_ms": 40}).report()
    HealthReporter(store.client, "recorder@c", lambda: {"stored": 20, "store_lag_ms": 250}).report()
    snap = gather(store, ())
    assert snap.lag_ms == 250  # the worst recorder, not a sum
    assert "bus→store lag 250 ms" in text_of(render(snap))


def test_bad_stored_data_is_shown_in_its_row_not_a_crash(store: Store) -> None:
    store.append_ticks([tick(trade_id=1, price=5100.0)])
    store.client.xadd(store.keys.ticks("WINFUT"), {"price": "not a number"})
    store.client.hset("tv:health:odd", mapping={"stored": "many", "rejected": 4})
    snap = gather(store, ("WDOFUT", "WINFUT"))
    assert snap.connected and snap.rows[0].last_price == 5100.0
    assert snap.rows[1].error and snap.rows[1].last_price is None
    assert snap.bad_health_values == 1 and snap.health == {"rejected": 4}
    text = text_of(render(snap))
    assert "5,100.00" in text and "UNREADABLE" in text and "1 unreadable health values" in text


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # closed again: nothing listens there


def test_valkey_down_is_disconnected_not_a_crash() -> None:
    port = closed_port()
    dead = Store(valkey.Valkey(host="127.0.0.1", port=port, socket_connect_timeout=0.5, socket_timeout=0.5))
    snap = gather(dead, ("WDOFUT",))
    assert not snap.connected
    assert "DISCONNECTED" in text_of(render(snap, f"127.0.0.1:{port}"))


def test_money_is_short_enough_never_to_be_cut() -> None:
    from tickvault.app.monitor import _money

    assert [_money(v) for v in (1_398_063_945.0, 123_456_789.0, 98_765.0)] == ["1.40 B", "123.5 M", "98,765"]


def test_sparkline() -> None:
    assert sparkline([0, 0]) == "▁▁"
    assert sparkline([0, 4, 8]) == "▁▄█"


def test_monitor_once_prints_one_frame(system_env: dict[str, str], store: Store, tmp_path: Path) -> None:
    store.append_ticks([tick(trade_id=1, price=5123.5)])
    result = subprocess.run(
        [sys.executable, "-m", "tickvault", "monitor", "--once", "--symbols", "WDOFUT,WINFUT"],
        env=subprocess_env(system_env), cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "5,123.50" in result.stdout and "NO DATA" in result.stdout


def test_monitor_once_with_valkey_down_prints_disconnected(tmp_path: Path) -> None:
    port = closed_port()
    result = subprocess.run(
        [sys.executable, "-m", "tickvault", "monitor", "--once", "--symbols", "WDOFUT"],
        env=subprocess_env({"VALKEY_URL": f"valkey://127.0.0.1:{port}/0"}), cwd=tmp_path,
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "DISCONNECTED" in result.stdout and f"127.0.0.1:{port}" in result.stdout
    assert "Traceback" not in result.stderr


def test_run_dashboard_is_the_monitor_frame_and_falls_back_in_process_when_valkey_dies(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import itertools
    import os
    import signal

    from tickvault.app.dashboard import LiveView, RunDashboard
    from tickvault.app.system import System
    from tickvault.config import load_settings
    from tickvault.sources.simulator import MarketSimulator
    from tickvault.store.server import EmbeddedValkey

    server = EmbeddedValkey(tmp_path / "valkey")
    info = server.ensure_running()
    for name, value in (
        ("VALKEY_URL", f"valkey://{info.host}:{info.port}/0"), ("TICKVAULT_DATA_DIR", str(tmp_path)),
        ("TICKVAULT_SYMBOLS", "WDOFUT"), ("ZMQ_ENABLED", "false"),
        ("TICKVAULT_MODEL", str(tmp_path / "no-model.pkl")),
    ):  # fmt: skip
        monkeypatch.setenv(name, value)
    start = from_ms(BASE_MS)
    ticks = list(itertools.islice(MarketSimulator(["WDOFUT"], seed=3, start=start).ticks(), 2000))
    view = LiveView(("WDOFUT",))
    system = System(load_settings(), source=lambda _: iter(ticks), handlers=[view])
    client = valkey.Valkey(host=info.host, port=info.port)
    try:
        system.start()
        assert wait_until(lambda: Store(client).count("WDOFUT") == 2000, timeout=60)
        board = RunDashboard(system, view, every_s=0)
        # the health line comes from the run's own report (every second)
        assert wait_until(lambda: "stored 2,000" in text_of(board.frame()), timeout=30)
        frame = text_of(board.frame())
        assert f"{ticks[-1].price:,.2f}" in frame and "NO DATA" not in frame
        assert "tickvault running" in frame and "bus→store lag 0 ms" in frame
        os.kill(info.pid, signal.SIGKILL)
        assert wait_until(lambda: "DISCONNECTED" in text_of(board.frame()), timeout=60)
        frame = text_of(board.frame())
        assert "2,000" in frame and f"{ticks[-1].price:,.2f}" in frame  # the in-process view goes on
    finally:
        server.ensure_running()
        system.stop()
        client.close()
        server.stop()  # restarted for the drain above: not left running after the test


def test_a_narrow_terminal_gets_the_essential_columns(store: Store) -> None:
    store.append_ticks([tick(trade_id=1, price=5123.5)])
    snap = gather(store, ("WDOFUT", "WINFUT"))
    console = Console(record=True, width=80, file=io.StringIO())
    console.print(render(snap, width=80))
    narrow = console.export_text()
    assert all(len(line) <= 80 for line in narrow.splitlines())
    assert "WDOFUT" in narrow and "5,123.50" in narrow and "NO DATA" in narrow and "2025-11-24" not in narrow
    wide = text_of(render(snap, width=200))
    assert "2025-11-24" in wide and "trades/min" in wide


def _record_book(store: Store, symbol: str, ms: int, batches: list[list[tuple[str, float, int]]]) -> None:
    """MBP batches (side, price, quantity; 0 removes) through the book writer, the first a snapshot."""
    from tickvault.domain.book import LAST, SNAPSHOT, BookColumns, level_update
    from tickvault.store.book_writer import BookPart, BookWriter

    events, seq = [], 0
    for n, batch in enumerate(batches):
        flags = SNAPSHOT if n == 0 else 0
        rows = [("none", 0.0, 0)] if n == 0 else []
        for i, (side, price, quantity) in enumerate(rows + batch):
            seq += 1
            last = LAST if i == len(rows + batch) - 1 else 0
            action = "clear" if side == "none" else "delete" if quantity == 0 else "update"
            events.append(level_update(symbol, ms + 1000 * n, side, price, quantity, 1 if quantity else 0,  # type: ignore[arg-type]
                                       action, seq=seq, flags=flags | last))  # fmt: skip
    BookWriter(store.client, store.keys).write([BookPart(BookColumns.from_events(events))])


def test_the_newest_stored_book_shows_bid_ask_and_spread_per_symbol(store: Store) -> None:
    store.append_ticks([tick(trade_id=1, price=5400.5)])
    _record_book(store, "WDOFUT", BASE_MS, [
        [("bid", 5400.0, 30), ("bid", 5399.5, 5), ("ask", 5400.5, 12)],
        [("ask", 5400.5, 0), ("ask", 5401.0, 7)],  # the newest batch: the best ask moves up
    ])  # fmt: skip
    _record_book(store, "WINFUT", BASE_MS, [[("bid", 130_000.0, 1_250), ("ask", 130_005.0, 4)]])
    snap = gather(store, ("WDOFUT", "WINFUT", "DOLFUT"))
    wdo, win, dol = (row.book for row in snap.rows)
    assert wdo is not None and (wdo.bid, wdo.bid_size, wdo.ask, wdo.ask_size, wdo.spread) == (
        5400.0,
        30,
        5401.0,
        7,
        1.0,
    )
    newest = store.book("WDOFUT", BASE_MS + 1000, depth=1)  # what Store.book says of that moment
    assert newest["price"].tolist() == [wdo.bid, wdo.ask] and newest["quantity"].tolist() == [30, 7]
    assert win is not None and win.spread == 5.0 and dol is None  # DOLFUT: no book stored, no row
    text = text_of(render(snap))
    assert "order book" in text and "5,401.00" in text and "130,005.00" in text and "1,250" in text
    line = next(line for line in text.splitlines() if "WINFUT" in line and "130,005.00" in line)
    assert "5.00" in line and "DOLFUT" not in text.split("order book")[1]
    console = Console(record=True, width=80, file=io.StringIO())
    console.print(render(snap, width=80))  # a narrow terminal: every number whole, nothing past 80
    narrow = console.export_text()
    assert all(len(line) <= 80 for line in narrow.splitlines())
    assert "130,000.00" in narrow and "130,005.00" in narrow and "1,250" in narrow and "5,401.00" in narrow
    # no stored book anywhere: no book table
    assert "order book" not in text_of(render(gather(store, ("DOLFUT",))))


def test_the_run_dashboard_shows_the_running_simulator_s_stored_book(
    system_env: dict[str, str], store: Store
) -> None:
    from tickvault.app.dashboard import LiveView, RunDashboard
    from tickvault.app.system import System
    from tickvault.config import load_settings

    system = System(load_settings(speed=0, symbols="WDOFUT"))
    try:
        system.start()
        assert wait_until(lambda: store.book_position("WDOFUT").updates > 1000)
        board = RunDashboard(system, LiveView(("WDOFUT",)), every_s=0, width=200)
        assert "order book (newest stored)" in text_of(board.frame())
    finally:
        summary = system.stop()
    assert summary.drained
    frame = text_of(board.frame())  # the run has stopped: its newest stored book, exactly
    book = store.book("WDOFUT", store.book_position("WDOFUT").ms, depth=1)
    bid, ask = book["price"].tolist()
    row = next(line for line in frame.splitlines() if f"{bid:,.2f}" in line and f"{ask:,.2f}" in line)
    assert row.split()[1] == "WDOFUT" and f"{ask - bid:,.2f}" in row.split("│")[-2]
