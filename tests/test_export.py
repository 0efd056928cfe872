"""`tickvault export`: a hive-partitioned Parquet dataset, read back by DuckDB and polars exactly."""

from __future__ import annotations

import itertools
from datetime import datetime
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pandas as pd
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from book_reference import apply_batches
from factories import BASE_MS, ticks
from tickvault.app.cli import app
from tickvault.app.export import Partition, export, write_partition
from tickvault.domain.book import BookBatch, BookColumns
from tickvault.domain.events import B3_TZ
from tickvault.sources.book_simulator import BookMarketSimulator
from tickvault.store import book_sealing
from tickvault.store.api import Store
from tickvault.store.book_writer import BookPart, BookWriter

runner = CliRunner()
DAY = 86_400_000
SYMBOLS = ["WDOFUT", "WINFUT"]
# two B3 sessions: Monday 2025-11-24 and Tuesday 2025-11-25, 13:00 -03:00 onwards
RANGE = ["--start", "2025-11-24", "--end", "2025-11-25"]


def _fill(store: Store) -> None:
    for day in (0, 1):
        store.append_ticks(
            ticks(3000, start_ms=BASE_MS + day * DAY) + ticks(500, "WINFUT", BASE_MS + day * DAY)
        )
    store.seal("WDOFUT", BASE_MS + DAY + 200)  # day one sealed, day two partly live
    store.seal("WINFUT", BASE_MS + 100)


def _export(out: Path, *args: str) -> None:
    result = runner.invoke(app, ["export", ",".join(SYMBOLS), *RANGE, "--output", str(out), *args])
    assert result.exit_code == 0, result.output


def _parts(out: Path) -> list[str]:
    return sorted(str(p.relative_to(out).parent) for p in out.rglob("*") if p.is_file())


def _expected(store: Store) -> pd.DataFrame:
    """store.ticks of both symbols, in the form a dataset reader gives back: UTC, plain columns."""
    frame = store.ticks(SYMBOLS, "2025-11-24", "2025-11-25").reset_index()
    frame["timestamp"] = frame["timestamp"].dt.tz_convert("UTC")
    frame["symbol"] = frame["symbol"].astype(str)
    frame["aggressor"] = frame["aggressor"].astype(str)
    frame["date"] = frame["timestamp"].dt.tz_convert("America/Sao_Paulo").dt.date
    return frame.sort_values(["symbol", "timestamp", "seq"], kind="stable").reset_index(drop=True)


def _normal(frame: pd.DataFrame) -> pd.DataFrame:
    """A read-back frame in `_expected`'s column order, types and row order."""
    frame = frame.copy()
    frame["timestamp"] = pd.to_datetime(frame["timestamp"], utc=True).dt.as_unit("ns")
    frame["symbol"] = frame["symbol"].astype(str)
    frame["aggressor"] = frame["aggressor"].astype(str)
    frame["date"] = pd.to_datetime(frame["date"]).dt.date
    return frame.sort_values(["symbol", "timestamp", "seq"], kind="stable").reset_index(drop=True)


def test_export_ticks_reads_back_exactly_with_duckdb_and_polars(
    system_env: dict[str, str], store: Store, tmp_path: Path
) -> None:
    _fill(store)
    out = tmp_path / "dataset"
    _export(out)
    assert _parts(out) == [f"date={d}/symbol={s}" for d in ("2025-11-24", "2025-11-25") for s in SYMBOLS]
    expected = _expected(store)
    assert len(expected) == 7000
    columns = list(expected.columns)
    glob = f"{out}/**/*.parquet"
    from_duckdb = duckdb.sql(f"select * from read_parquet('{glob}', hive_partitioning = true)").df()
    pd.testing.assert_frame_equal(_normal(from_duckdb)[columns], expected, check_dtype=False)
    from_polars = pl.scan_parquet(glob, hive_partitioning=True).collect()
    assert from_polars.schema["timestamp"] == pl.Datetime("ns", "UTC")
    pd.testing.assert_frame_equal(_normal(from_polars.to_pandas())[columns], expected, check_dtype=False)
    # the files themselves: zstd, UTC ns, rows in time order, no symbol column (it is in the path)
    for path in out.rglob("*.parquet"):
        meta = pq.ParquetFile(path).metadata
        assert meta.row_group(0).column(0).compression == "ZSTD"
        table = pq.read_table(path, partitioning=None)
        assert table.schema.field("timestamp").type == pa.timestamp("ns", tz="UTC")
        assert "symbol" not in table.column_names
        assert bool(np.all(np.diff(table.column("timestamp_ms").to_numpy()) >= 0))


def test_exporting_again_replaces_those_partitions_only(
    system_env: dict[str, str], store: Store, tmp_path: Path
) -> None:
    _fill(store)
    out = tmp_path / "dataset"
    _export(out)
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*.parquet")}
    _export(out)  # the same range again: the same rows, once, in new files
    after = sorted(out.rglob("*"))
    assert len(list(out.rglob("*.parquet"))) == 4 and not [p for p in after if p.name.startswith(".")]
    assert not set(before) & set(out.rglob("*.parquet"))
    glob = f"{out}/**/*.parquet"
    count = duckdb.sql(f"select count(*) from read_parquet('{glob}', hive_partitioning = true)").fetchall()
    assert count == [(7000,)]
    # new ticks on Tuesday, then only Tuesday exported: Monday's files stay as they were
    store.append_ticks(ticks(510, "WINFUT", BASE_MS + DAY)[500:])  # trade ids 501..510
    monday = sorted(out.glob("date=2025-11-24/*/*.parquet"))
    result = runner.invoke(
        app,
        ["export", ",".join(SYMBOLS), "--start", "2025-11-25", "--end", "2025-11-25", "--output", str(out)],
    )
    assert result.exit_code == 0, result.output
    assert sorted(out.glob("date=2025-11-24/*/*.parquet")) == monday
    rows = duckdb.sql(
        f"select symbol, count(*) from read_parquet('{glob}', hive_partitioning = true) group by 1 order by 1"
    ).fetchall()
    assert rows == [("WDOFUT", 6000), ("WINFUT", 1010)]
    assert "exported" in result.output and "rows" in result.output  # the summary line off a terminal


def test_a_failed_write_leaves_the_old_partition_whole(store: Store, tmp_path: Path) -> None:
    store.append_ticks(ticks(100))
    out = tmp_path / "dataset"
    export(store, ["WDOFUT"], BASE_MS, BASE_MS + 1000, "ticks", out)
    (old,) = out.rglob("*.parquet")
    part = Partition(pd.Timestamp("2025-11-24").date(), "WDOFUT", BASE_MS, BASE_MS + 1000)
    # a column Parquet has no type for: the write fails
    interval = pa.array([pa.MonthDayNano([1, 2, 3])], pa.month_day_nano_interval())
    bad = pa.table({"timestamp": pa.array([0], pa.timestamp("ns", tz="UTC")), "x": interval})
    with pytest.raises(NotImplementedError, match="month_day_nano_interval"):
        write_partition(out, part, bad, "broken")
    assert list(out.rglob("*")) == [out / "date=2025-11-24", old.parent, old]
    assert pq.read_table(old).num_rows == 100


def test_export_candles_and_features(system_env: dict[str, str], store: Store, tmp_path: Path) -> None:
    _fill(store)
    out = tmp_path / "candles"
    _export(out, "--kind", "candles:1m")
    glob = f"{out}/**/*.parquet"
    got = pl.scan_parquet(glob, hive_partitioning=True).collect().sort("symbol", "timestamp")
    wdo = store.candles("WDOFUT", "1m", "2025-11-24", "2025-11-25", output="polars")
    assert got.filter(pl.col("symbol") == "WDOFUT")["close"].to_list() == wdo["close"].to_list()
    assert (
        got.filter(pl.col("symbol") == "WDOFUT")["timestamp"].to_list()
        == wdo["timestamp"].dt.convert_time_zone("UTC").to_list()
    )


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--start", "2025-11-25", "--end", "2025-11-24"], "end"),
        (["--start", "2025-11-24", "--kind", "book"], "--kind='book'"),
        (["--start", "2025-11-24", "--kind", "candles:7m"], "candles:TF"),
        (["--start", "2025-11-24", "--kind", "book:0"], "book:N needs N"),
        (["--start", "2025-11-24", "--kind", "book:x"], "book:N needs N"),
        (["--start", "2025-11-24", "--kind", "book:10:soon"], "book:N:STEP needs a step"),
        (["--start", "yesterday-ish"], "start"),
    ],
)
def test_bad_export_arguments_exit_2_with_one_line(
    system_env: dict[str, str], tmp_path: Path, args: list[str], words: str
) -> None:
    result = runner.invoke(app, ["export", "WDOFUT", *args, "--output", str(tmp_path / "x")])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tickvault: error:") and words in lines[0]
    assert not (tmp_path / "x").exists()


def test_a_terminal_gets_a_progress_bar_then_the_summary(store: Store, tmp_path: Path) -> None:
    import io

    from rich.console import Console

    from tickvault.app.export import run_export

    store.append_ticks(ticks(100))
    screen = io.StringIO()
    lines: list[str] = []
    console = Console(file=screen, force_terminal=True, width=120)
    result = run_export(
        store, ["WDOFUT"], "2025-11-24", "2025-11-24", "ticks", tmp_path, console=console, say=lines.append
    )
    assert result.rows == 100 and "100 rows" in screen.getvalue()  # the bar's last state
    assert lines == [lines[0]] and lines[0].startswith("exported 100 rows of ticks into 1 partitions")


# -- the order book ----------------------------------------------------------------------------------

BOOKS = {"WDOFUT": "mbp", "WINFUT": "mbo"}


def _fill_book(store: Store, monkeypatch: pytest.MonkeyPatch) -> dict[str, BookColumns]:
    """The same simulated opening on Monday and on Tuesday (seqs continuing) of an MBP and an MBO
    book, written 40 batches at a time, then sealed but for the last seconds: the written columns."""
    monkeypatch.setattr(book_sealing, "BLOCK_ROWS", 600)  # a few blocks a day
    written = {}
    for symbol, kind in BOOKS.items():
        sim = BookMarketSimulator([symbol], kind=kind, seed=7, start=datetime(2025, 11, 24, 9, tzinfo=B3_TZ))  # type: ignore[arg-type]
        batches = [b for b in itertools.islice(sim.events(), 1200) if isinstance(b, BookBatch)]
        writer = BookWriter(
            store.client, store.keys, snapshot_every=300, snapshot_ms=10**12, owner="rec@test"
        )
        parts, seqs = [], 0
        for day in (0, 1):
            for i in range(0, len(batches), 40):
                cols = BookColumns.from_events([e for b in batches[i : i + 40] for e in b]).columns()
                cols["timestamp_ms"] = cols["timestamp_ms"] + day * DAY
                cols["received_ms"] = cols["received_ms"] + day * DAY
                cols["seq"] = cols["seq"] + seqs
                parts.append(BookColumns(symbol, kind, **cols))  # type: ignore[arg-type]
                writer.write([BookPart(parts[-1], len(parts))])
            seqs = int(parts[-1].seq[-1])
        assert store.compact_book(symbol, 2000) > 0
        written[symbol] = BookColumns.concat(parts)
    return written


def _reference_changes(cols: BookColumns, depth: int) -> list[tuple[str, int, int, Any]]:
    """(B3 day, time, seq, top levels) after every batch that changed the top `depth` levels, the last
    batch of a ms standing for it, from the slow reference book."""
    after: dict[int, tuple[int, Any]] = {}
    for last, state in apply_batches(cols.events(), cols.kind):
        after[last.timestamp_ms] = (last.seq, {side: levels[:depth] for side, levels in state.items()})
    rows, previous = [], None
    for ms, (seq, top) in after.items():
        if top != previous:
            day = str(pd.Timestamp(ms, unit="ms", tz=B3_TZ).date())
            rows.append((day, ms, seq, top))
            previous = top
    return rows


def _dataset_changes(frame: pd.DataFrame, depth: int) -> list[tuple[str, int, int, Any]]:
    rows = []
    for row in frame.sort_values("timestamp", kind="stable").itertuples(index=False):
        values = row._asdict()
        top = {
            side: [
                (values[f"{side}_px_{i}"], values[f"{side}_sz_{i}"], values[f"{side}_orders_{i}"])
                for i in range(1, depth + 1)
                if values[f"{side}_sz_{i}"] > 0
            ]
            for side in ("bid", "ask")
        }
        assert values["valid"]
        stamp = pd.Timestamp(values["timestamp"])
        rows.append((str(values["date"])[:10], stamp.value // 1_000_000, values["seq"], top))
    return rows


def test_export_the_book_after_every_change_and_its_updates_read_back_exactly(
    system_env: dict[str, str], store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    written = _fill_book(store, monkeypatch)
    out = tmp_path / "book"
    _export(out, "--kind", "book:3")
    assert _parts(out) == [f"date={d}/symbol={s}" for d in ("2025-11-24", "2025-11-25") for s in SYMBOLS]
    glob = f"{out}/**/*.parquet"
    query = f"select * from read_parquet('{glob}', hive_partitioning = true)"
    from_duckdb = duckdb.sql(query).df()
    from_polars = pl.scan_parquet(glob, hive_partitioning=True).collect()
    assert from_polars.schema["timestamp"] == pl.Datetime("ns", "UTC")
    assert from_polars.columns[:2] == ["timestamp", "bid_px_1"] and "ask_orders_3" in from_polars.columns
    for symbol, cols in written.items():
        expected = _reference_changes(cols, 3)
        assert len(expected) > 500 and {day for day, *_ in expected} == {"2025-11-24", "2025-11-25"}
        mine = from_duckdb[from_duckdb["symbol"] == symbol]
        assert _dataset_changes(mine, 3) == expected, f"duckdb {symbol}"
        mine = from_polars.filter(pl.col("symbol") == symbol).to_pandas()
        assert _dataset_changes(mine, 3) == expected, f"polars {symbol}"
        for _, ms, seq, top in expected[:: len(expected) // 15]:  # and what Store.book says then
            book = store.book(symbol, ms, 3)
            assert book.attrs["seq"] == seq and book.attrs["valid"]
            assert {
                s: list(
                    book[book["side"] == s][["price", "quantity", "orders"]].itertuples(
                        index=False, name=None
                    )
                )
                for s in ("bid", "ask")
            } == top
    # the same range again: the same rows, in new files, nothing else left behind
    before = set(out.rglob("*.parquet"))
    _export(out, "--kind", "book:3")
    assert not before & set(out.rglob("*.parquet")) and len(list(out.rglob("*"))) == 2 + 4 + 4
    again = duckdb.sql(query).df()
    pd.testing.assert_frame_equal(
        again.sort_values(["symbol", "timestamp"], ignore_index=True),
        from_duckdb.sort_values(["symbol", "timestamp"], ignore_index=True),
    )
    # the raw updates: the written columns, row for row, in the order they apply
    updates = tmp_path / "updates"
    _export(updates, "--kind", "book-updates")
    frame = pl.scan_parquet(f"{updates}/**/*.parquet", hive_partitioning=True).collect()
    for symbol, cols in written.items():
        mine = frame.filter(pl.col("symbol") == symbol)
        assert mine["seq"].to_list() == cols.seq.tolist()
        assert mine["price"].to_list() == cols.price.tolist()
        assert mine["quantity"].to_list() == cols.quantity.tolist()
        assert mine["action"].cast(pl.String).to_list() == [
            ("add", "update", "delete", "clear")[a] for a in cols.action
        ]
        assert mine["timestamp"].dt.epoch("ms").to_list() == cols.timestamp_ms.tolist()
        stored = store.book_updates(symbol, "2025-11-24", "2025-11-25", output="polars")
        assert mine["flags"].to_list() == stored["flags"].to_list() == cols.flags.tolist()
    assert "order_id" in frame.columns and "orders" in frame.columns  # MBO's and MBP's, one dataset


def test_export_the_book_every_step(
    system_env: dict[str, str], store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fill_book(store, monkeypatch)
    out = tmp_path / "frames"
    _export(out, "--kind", "book:2:1m")
    got = duckdb.sql(f"select * from read_parquet('{out}/**/*.parquet', hive_partitioning = true)").df()
    for symbol in SYMBOLS:
        want = store.book_frames(symbol, "2025-11-24", "2025-11-25", "1m", 2, orders=True).reset_index()
        want["timestamp"] = want["timestamp"].dt.tz_convert("UTC")
        mine = got[got["symbol"] == symbol].sort_values("timestamp", ignore_index=True)
        mine["timestamp"] = pd.to_datetime(mine["timestamp"], utc=True).dt.as_unit("ns")
        assert len(mine) == 2 * 1440 and mine["valid"].sum() > 0
        pd.testing.assert_frame_equal(mine[list(want.columns)], want, check_dtype=False)
