"""`tickvault export`: a hive-partitioned Parquet dataset, read back by DuckDB and polars exactly."""

from __future__ import annotations

from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from factories import BASE_MS, ticks
from tickvault.app.cli import app
from tickvault.app.export import Partition, export, write_partition
from tickvault.store.api import Store

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
