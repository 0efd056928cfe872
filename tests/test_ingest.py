"""`tickvault ingest PATH`: a tick file into history blocks (or, `--via-bus`, through bus and
recorder), counted, durable, idempotent. The bulk path's own properties: tests/test_bulk_ingest.py."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from conftest import subprocess_env
from factories import BASE_MS, ticks
from tickvault.domain.events import Tick
from tickvault.sources.files import BadRow, read_ticks
from tickvault.store.api import Store

HEADER = ",".join(
    ["timestamp", "symbol", "timestamp_ms", "trade_id", "price", "volume", "quantity"]
    + ["buyer", "seller", "trade_type", "aggressor", "is_edit", "seq"]
)


def _set(line: str, column: int, value: str) -> str:
    cells = line.split(",")
    cells[column] = value
    return ",".join(cells)


def _csv(path: Path, n: int = 500) -> list[Tick]:
    written = ticks(n) + ticks(n // 2, symbol="WINFUT")
    lines = [HEADER]
    for t in written:
        lines.append(
            f"{t.timestamp.isoformat(timespec='milliseconds')},{t.symbol},{t.timestamp_ms},{t.trade_id},"
            f"{t.price!r},{t.volume!r},{t.quantity},{t.buyer},{t.seller},{t.trade_type},{t.aggressor},false,0"
        )
    path.write_text("\n".join(lines) + "\n")
    return written


def _ingest(path: Path, env: dict[str, str], cwd: Path, *more: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tickvault", "ingest", str(path), *more],
        env=subprocess_env(env),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=180,
    )


@pytest.mark.parametrize("how", [(), ("--via-bus",)], ids=["into-blocks", "via-bus"])
def test_ingest_stores_every_row_once_even_twice(
    system_env: dict[str, str], store: Store, tmp_path: Path, how: tuple[str, ...]
) -> None:
    path = tmp_path / "ticks.csv"
    written = _csv(path)
    first = _ingest(path, system_env, tmp_path, *how)
    assert first.returncode == 0, first.stderr
    assert "ticks.csv: read=750 stored=750 duplicates=0 rejected=0\n" in first.stdout
    assert "durable=yes" in first.stdout
    again = _ingest(path, system_env, tmp_path, *how)
    assert again.returncode == 0, again.stderr
    assert "ticks.csv: read=750 stored=0 duplicates=750 rejected=0\n" in again.stdout
    # the bulk path never touches the live stream; the replay goes through it
    assert store.client.xlen(store.keys.ticks("WDOFUT")) == (0 if how == () else 500)
    for symbol in ("WDOFUT", "WINFUT"):
        back = store.tick_events(symbol, BASE_MS, BASE_MS + 10**6)
        mine = [t for t in written if t.symbol == symbol]
        assert [(t.trade_id, t.price, t.quantity, t.timestamp_ms) for t in back] == [
            (t.trade_id, t.price, t.quantity, t.timestamp_ms) for t in mine
        ]
        assert [t.seq for t in back] == list(range(1, len(mine) + 1))


def test_bad_rows_are_reported_with_line_and_reason(
    system_env: dict[str, str], store: Store, tmp_path: Path
) -> None:
    path = tmp_path / "ticks.csv"
    _csv(path, 20)
    lines = path.read_text().splitlines()
    lines[3] = _set(lines[3], 4, "-5.0")  # line 4: negative price
    lines[5] = _set(lines[5], 1, "WDO FUT")  # line 6: bad symbol
    lines[7] = "garbage"  # line 8: too few values
    lines[9] = _set(lines[9], 4, "nan")  # line 10: NaN price
    path.write_text("\n".join(lines) + "\n")
    proc = _ingest(path, system_env, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "ticks.csv: read=30 stored=26 duplicates=0 rejected=4" in proc.stdout
    assert "ticks.csv:line 4: price: must be positive" in proc.stderr
    assert "ticks.csv:line 6: symbol:" in proc.stderr
    assert "ticks.csv:line 8: row: 1 values for 13 columns" in proc.stderr
    assert "ticks.csv:line 10: price: must be a finite number" in proc.stderr
    assert store.count("WDOFUT") + store.count("WINFUT") == 26


def test_parquet_file_and_missing_columns(system_env: dict[str, str], store: Store, tmp_path: Path) -> None:
    rows = ticks(300)
    frame = pd.DataFrame(
        {
            "symbol": [t.symbol for t in rows],
            "timestamp_ms": [t.timestamp_ms for t in rows],
            "trade_id": [t.trade_id for t in rows],
            "price": [t.price for t in rows],
            "quantity": [t.quantity for t in rows],
            "trade_type": [t.trade_type for t in rows],
        }
    )
    path = tmp_path / "ticks.parquet"
    frame.to_parquet(path)
    proc = _ingest(path, system_env, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "read=300 stored=300" in proc.stdout
    back = store.tick_events("WDOFUT", BASE_MS, BASE_MS + 10**6)
    assert back[0].volume == rows[0].price * rows[0].quantity * 10.0  # the WDO multiplier filled in
    assert [t.aggressor for t in back] == [t.aggressor for t in rows]
    bad = tmp_path / "bad.csv"
    bad.write_text("symbol,price\nWDOFUT,1\n")
    proc = _ingest(bad, system_env, tmp_path)
    assert proc.returncode == 2
    assert "columns: bad.csv lacks quantity, timestamp, timestamp_ms, or date and time columns" in proc.stderr


def test_a_file_of_one_symbol_without_trade_ids_is_ingested_once_even_twice(
    system_env: dict[str, str], store: Store, tmp_path: Path
) -> None:
    path = tmp_path / "wdo.csv"
    rows = ["Data;Hora;Preço;Quantidade;Agressor"] + [
        f"24/11/2025;10:00:{i // 10:02d}.{i % 10:03d};5400,{5 * (i % 2)};{1 + i % 3};{'CV'[i % 2]}"
        for i in range(300)
    ]
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    args = [sys.executable, "-m", "tickvault", "ingest", str(path), "--symbol", "WDOFUT"]
    for stored in (300, 0):
        env = subprocess_env(system_env)
        proc = subprocess.run(args, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=180)
        assert proc.returncode == 0, proc.stderr
        assert f"wdo.csv: read=300 stored={stored} duplicates={300 - stored} rejected=0" in proc.stdout
    back = store.tick_events("WDOFUT", "2025-11-24", "2025-11-24")
    assert [t.trade_id for t in back] == list(range(1, 301))
    assert back[1].price == 5400.5 and back[1].aggressor == "sell" and back[0].aggressor == "buy"
    without = subprocess.run(args[:-2], env=subprocess_env(system_env), cwd=tmp_path, capture_output=True,
                             text=True, timeout=60)  # fmt: skip
    assert without.returncode == 2 and "lacks symbol" in without.stderr


def test_reader_yields_bad_rows_without_stopping(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    _csv(path, 10)
    lines = path.read_text().splitlines()
    lines[2] = lines[2].replace(",false,", ",maybe,", 1)
    path.write_text("\n".join(lines) + "\n")
    items = list(read_ticks(path))
    assert len(items) == 15
    bad = [i for i in items if isinstance(i, BadRow)]
    assert [(b.line, b.error.field) for b in bad] == [(3, "is_edit")]


def test_run_replays_a_file_as_the_market(system_env: dict[str, str], store: Store, tmp_path: Path) -> None:
    """`run --source replay:PATH`: the file's ticks go through the whole system (bus, recorder,
    features); a bad row is reported with its line and skipped, the rest plays on."""
    path = tmp_path / "day.csv"
    written = _csv(path, n=300)
    lines = path.read_text().splitlines()
    lines.insert(5, _set(lines[5], 4, "nan"))  # a NaN price on line 6 (a duplicate of line 5's trade)
    path.write_text("\n".join(lines) + "\n")
    result = subprocess.run(
        [sys.executable, "-m", "tickvault", "run", "--source", f"replay:{path}", "--speed", "0",
         "--no-dashboard", "--duration", "60"],
        env=subprocess_env(system_env), cwd=tmp_path, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "line 6" in result.stderr and "price" in result.stderr
    for symbol in ("WDOFUT", "WINFUT"):
        expected = [(t.trade_id, t.price) for t in written if t.symbol == symbol]
        got = [(t.trade_id, t.price) for t in store.tick_events(symbol, 0, BASE_MS + 86_400_000)]
        assert got == expected
    bad = subprocess.run(
        [sys.executable, "-m", "tickvault", "run", "--source", "replay:/no/such.csv", "--no-dashboard"],
        env=subprocess_env(system_env), cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert bad.returncode == 2 and "/no/such.csv is not a file" in bad.stderr
