"""The command line, through typer's runner and as real subprocesses (as a user runs it)."""

from __future__ import annotations

import csv
import io
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import msgspec
import pytest
from typer.testing import CliRunner

from conftest import subprocess_env
from factories import BASE_MS, ticks
from tickvault.app.cli import app
from tickvault.app.output import to_csv_text
from tickvault.domain.events import Tick, decode_tick
from tickvault.store.api import Store
from tickvault.store.server import EmbeddedValkey, free_port

REPO = Path(__file__).resolve().parents[1]
runner = CliRunner()
RANGE = ["--start", "2025-11-24T13:00:00-03:00", "--end", "2025-11-24T13:00:10-03:00"]


def _tickvault(
    *args: str, env: dict[str, str], cwd: Path, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tickvault", *args],
        env=subprocess_env(env),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_query_csv_prints_exactly_what_the_api_returns(system_env: dict[str, str], store: Store) -> None:
    store.append_ticks(ticks(300))
    result = runner.invoke(app, ["query", "WDOFUT", *RANGE, "--format", "csv"])
    assert result.exit_code == 0, result.output
    frame = store.ticks("WDOFUT", BASE_MS, BASE_MS + 10_000)
    assert result.stdout == to_csv_text(frame)
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert len(rows) == 300
    assert rows[0]["timestamp"] == "2025-11-24T13:00:00.000-03:00"
    assert rows[0]["is_edit"] == "false" and rows[0]["quantity"] == "1"


def test_query_json_lines_are_the_bus_payloads(system_env: dict[str, str], store: Store) -> None:
    written = ticks(50)
    store.append_ticks(written)
    result = runner.invoke(app, ["query", "WDOFUT", *RANGE, "--format", "json"])
    assert result.exit_code == 0, result.output
    assert [decode_tick(line) for line in result.stdout.splitlines()] == written


def test_query_parquet_and_table(system_env: dict[str, str], store: Store, tmp_path: Path) -> None:
    import pandas as pd

    store.append_ticks(ticks(100))
    out = tmp_path / "t.parquet"
    assert (
        runner.invoke(app, ["query", "WDOFUT", *RANGE, "--format", "parquet", "--output", str(out)]).exit_code
        == 0
    )
    pd.testing.assert_frame_equal(pd.read_parquet(out), store.ticks("WDOFUT", BASE_MS, BASE_MS + 10_000))
    table = runner.invoke(app, ["query", "WDOFUT", *RANGE, "--format", "table", "--limit", "10"])
    assert table.exit_code == 0
    assert "100 rows, showing the first and last 5" in " ".join(table.stdout.split())


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["query", "wdo fut", "--start", "-1h"], "symbol"),
        (["query", "WDOFUT", "--start", "2025-11-24T10:00:00"], "no timezone"),
        (["query", "WDOFUT", "--start", "soon"], "not a time"),
        (["query", "WDOFUT", "--start", "-1h", "--kind", "bogus"], "--kind"),
        (["query", "WDOFUT", "--start", "-1h", "--format", "parquet"], "--output"),
        (["run", "--source", "nasdaq"], "--source"),
        (["run", "--symbols", "a b"], "TICKVAULT_SYMBOLS"),
        (["run", "--only", "bogus"], "TICKVAULT_ONLY"),
        (["run", "--source", "profitdll", "--profit-book", "levels"], "PROFIT_BOOK='levels'"),
    ],
)
def test_bad_arguments_exit_2_with_a_specific_message(
    system_env: dict[str, str], args: list[str], words: str
) -> None:
    result = runner.invoke(app, args)
    assert result.exit_code == 2
    assert words in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize(
    ("times", "words"),
    [
        (["--start", "99999999999999999"], "start: '99999999999999999' is not a time"),
        (["--start", "+99999999999d"], "start: '+99999999999d' is out of range"),
        (["--start", "-999999d"], "start: '-999999d' is out of range"),
        (["--start", "2025-13-45"], "start: '2025-13-45' is not a date"),
        (["--start", "1950-01-01", "--end", "1960-01-01"], "end: '1960-01-01' is before 1970"),
    ],
)
def test_a_time_out_of_range_is_one_clear_line_and_exit_2(
    system_env: dict[str, str], times: list[str], words: str
) -> None:
    """Times no datetime can hold (or no stream id: before 1970) are bad input, said in one line; the
    old parser let OverflowError and Valkey's "Invalid stream ID" out (exit 1)."""
    result = runner.invoke(app, ["query", "WDOFUT", *times])
    assert (result.exit_code, result.output.count("\n")) == (2, 1), result.output
    assert words in result.output


def test_a_start_before_1970_reads_from_the_first_tick(system_env: dict[str, str], store: Store) -> None:
    store.append_ticks(ticks(3))
    result = runner.invoke(app, ["query", "WDOFUT", "--start", "0001-01-01T00:00:00Z", "--format", "csv"])
    assert result.exit_code == 0, result.output
    assert len(result.stdout.splitlines()) == 1 + 3


def test_each_settings_flag_sets_its_setting_and_is_offered_where_it_belongs() -> None:
    from tickvault.app.commands.support import FLAGS, RUN, SHARED
    from tickvault.config import Settings

    assert set(FLAGS) <= set(Settings.model_fields)
    wide = {"COLUMNS": "250"}
    top, run = runner.invoke(app, ["--help"], env=wide), runner.invoke(app, ["run", "--help"], env=wide)
    for field, flag in FLAGS.items():
        name = flag.decls[0].split("/")[0] if flag.decls else "--" + field.replace("_", "-")
        env = str(Settings.model_fields[field].validation_alias)
        for where, offered in ((top.output, field in SHARED), (run.output, field in RUN)):
            shown = re.search(rf"(?<![\w-]){name}(?![\w-])", where) and f"[{env}]" in where
            assert bool(shown) == offered, (field, offered)


def test_each_command_is_a_thin_function_over_the_library() -> None:
    import ast
    import inspect

    for command in app.registered_commands:
        function = inspect.unwrap(command.callback)  # type: ignore[arg-type]
        name = function.__name__
        tree = ast.parse(inspect.getsource(inspect.getmodule(function)))  # type: ignore[arg-type]
        node = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == name)
        lines = node.end_lineno - min(d.lineno for d in [*node.decorator_list, node]) + 1  # type: ignore[operator]
        assert name == "ingest" or lines <= 40, f"{name} has {lines} lines"  # ingest: being rewritten


def test_only_from_the_environment_runs_that_component_alone(
    system_env: dict[str, str], tmp_path: Path
) -> None:
    env = {**system_env, "TICKVAULT_ONLY": "candles"}
    proc = _tickvault("run", "--duration", "1", "--no-dashboard", env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    counters = dict(kv.split("=") for kv in proc.stdout.split("counters: ")[1].split())
    assert "candle_ticks" in counters and not {"published", "stored", "features"} & set(counters)


def test_unknown_format_is_refused_by_the_parser(system_env: dict[str, str]) -> None:
    result = runner.invoke(app, ["query", "WDOFUT", "--start", "-1h", "--format", "xml"])
    assert result.exit_code == 2
    assert "xml" in result.output


def test_run_prints_a_summary_and_stores_what_it_generated(
    system_env: dict[str, str], tmp_path: Path, store: Store
) -> None:
    proc = _tickvault(
        "run", "--duration", "3", "--no-dashboard", "--speed", "50", env=system_env, cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    assert "tickvault running:" in proc.stderr
    assert "drained=yes" in proc.stdout
    counters = dict(kv.split("=") for kv in proc.stdout.split("counters: ")[1].split())
    assert counters["unrecovered"] == "0" and counters["rejected"] == "0" and counters["buffered"] == "0"
    assert int(counters["published"]) == int(counters["generated"]) == int(counters["stored"])
    generated = int(proc.stdout.split("generated=")[1].split()[0])
    stored = int(proc.stdout.split("stored=")[1].split()[0])
    assert generated > 0 and stored == generated
    assert sum(store.count(s) for s in ("WDOFUT", "WINFUT")) == generated


def test_make_run_then_query_on_the_embedded_server(tmp_path: Path) -> None:
    """Acceptance: `make run ARGS="--duration 15 --no-dashboard"` stores ticks that `query` returns."""
    env = {
        "TICKVAULT_DATA_DIR": str(tmp_path / "data"),
        **{
            name: str(free_port())
            for name in (
                "ZMQ_TICK_PORT",
                "ZMQ_BOOK_PORT",
                "ZMQ_HISTORY_PORT",
                "ZMQ_SIGNAL_PORT",
                "ZMQ_REPLAY_PORT",
            )
        },
    }
    proc = subprocess.run(
        ["make", "--no-print-directory", "run", "ARGS=--duration 15 --no-dashboard"],
        cwd=REPO,
        env=subprocess_env(env),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = [[c.strip() for c in line.strip().strip("│").split("│")] for line in proc.stdout.splitlines()]
    stored = {cells[0]: int(cells[2]) for cells in rows if len(cells) == 3 and cells[0].startswith("W")}
    assert stored.get("WDOFUT", 0) > 0, proc.stdout
    assert EmbeddedValkey(tmp_path / "data" / "valkey").running() is None, "run left its server behind"

    query = _tickvault(
        "query", "WDOFUT", "--start", "2000-01-01", "--end", "+30d", "--format", "json", env=env, cwd=tmp_path
    )
    assert query.returncode == 0, query.stderr
    got = [msgspec.json.decode(line, type=Tick) for line in query.stdout.splitlines()]
    assert len(got) == stored["WDOFUT"]
    assert [t.seq for t in got] == list(range(1, len(got) + 1))
    assert EmbeddedValkey(tmp_path / "data" / "valkey").running() is None, "query left its server behind"


def test_valkey_command_runs_the_server_in_the_foreground_and_shares_it(tmp_path: Path) -> None:
    env = {"TICKVAULT_DATA_DIR": str(tmp_path / "data")}
    server = subprocess.Popen(
        [sys.executable, "-m", "tickvault", "valkey"],
        env=subprocess_env(env),
        cwd=tmp_path,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stderr is not None
        lines: list[str] = []
        while not any("embedded valkey ready" in line for line in lines) and len(lines) < 20:
            lines.append(server.stderr.readline())
        assert "embedded valkey ready" in lines[-1], lines
        info = EmbeddedValkey(tmp_path / "data" / "valkey").running()
        assert info is not None
        query = _tickvault("query", "WDOFUT", "--start", "-1h", "--format", "csv", env=env, cwd=tmp_path)
        assert query.returncode == 0, query.stderr
        assert query.stdout.startswith("timestamp,symbol,timestamp_ms,trade_id,price")
        assert EmbeddedValkey(tmp_path / "data" / "valkey").running() == info, "query stopped a shared server"
    finally:
        server.send_signal(signal.SIGINT)
        server.communicate(timeout=60)
    assert server.returncode == 0
    assert EmbeddedValkey(tmp_path / "data" / "valkey").running() is None
    assert not os.path.exists(tmp_path / "data" / "valkey" / "server.json")


def test_cleanup_command(system_env: dict[str, str], store: Store) -> None:
    day = 86_400_000
    store.append_ticks(ticks(100, start_ms=BASE_MS - 10 * day) + ticks(50, start_ms=BASE_MS))
    result = runner.invoke(app, ["cleanup", "--days", "5"])
    assert result.exit_code == 0, result.output
    assert "WDOFUT: removed 100" in result.stdout
    assert store.count("WDOFUT") == 50
    assert runner.invoke(app, ["cleanup", "--days", "-1"]).exit_code == 2


def test_sigterm_during_a_run_loses_nothing_produced_before_it(
    system_env: dict[str, str], tmp_path: Path, store: Store
) -> None:
    from conftest import wait_until

    proc = subprocess.Popen(
        [sys.executable, "-m", "tickvault", "run", "--no-dashboard", "--speed", "100"],
        env=subprocess_env(system_env),
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert wait_until(lambda: store.count("WINFUT") > 200, timeout=60)
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    generated = int(out.split("generated=")[1].split()[0])
    assert "drained=yes" in out
    assert generated > 200
    assert store.count("WDOFUT") + store.count("WINFUT") == generated


def test_query_kind_signals(system_env: dict[str, str], store: Store) -> None:
    from tickvault.domain.events import Signal, from_ms

    stamps = [(from_ms(BASE_MS + i), BASE_MS + i) for i in range(3)]
    store.append_events(
        [
            Signal(symbol="WDOFUT", timestamp=t, timestamp_ms=ms, action="SELL", confidence=0.9)
            for t, ms in stamps
        ]
    )
    result = runner.invoke(app, ["query", "WDOFUT", *RANGE, "--kind", "signals", "--format", "json"])
    assert result.exit_code == 0, result.output
    rows = [msgspec.json.decode(line) for line in result.stdout.splitlines()]
    assert [r["action"] for r in rows] == ["SELL"] * 3
    assert rows[0]["timestamp"] == "2025-11-24T13:00:00.000-03:00"


def test_query_table_shows_the_whole_time_and_drops_minor_columns_when_narrow(store: Store) -> None:
    from tickvault.app.output import table_of

    store.append_ticks(ticks(30))
    frame = store.ticks("WDOFUT", BASE_MS, BASE_MS + 10_000)

    def rendered(width: int) -> str:
        from rich.console import Console

        console = Console(width=width, record=True, file=io.StringIO())
        console.print(table_of(frame, 10, width=width))
        return console.export_text()

    wide, narrow = rendered(200), rendered(80)
    assert "2025-11-24 13:00:00.000" in wide and "2025-11-24 13:00:00.009" in narrow  # never cut
    assert "time (-03:00)" in narrow and "WDOFUT" in narrow.splitlines()[0]  # the symbol is the title
    for name in ("trade_id", "price", "quantity", "seller", "seq"):
        assert name in wide
    assert "timestamp_ms" not in wide  # the time column says it
    assert all(len(line) <= 80 for line in narrow.splitlines())
    assert "seq" not in narrow.split("rows")[0] and "not shown at this width:" in narrow
    assert "price" in narrow and "quantity" in narrow


def test_the_help_shows_every_form_of_the_valkey_url() -> None:
    """The help is rich markup: an unescaped `[s]` or `[user:pass@]` was read as a tag and dropped,
    so the help hid `valkeys://` and the credentials' form."""
    result = runner.invoke(app, ["--help"], env={"COLUMNS": "240", "TERMINAL_WIDTH": "240"})
    assert result.exit_code == 0
    assert "valkey[s]://[user:pass@]host:port/db" in result.output, result.output
