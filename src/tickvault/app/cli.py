"""`tickvault` command line: parses arguments, then calls library functions.

Every setting has a flag on the top-level command (`tickvault --valkey-url URL query ...`); the flags
that matter for one command are also on that command. A flag beats the environment and `.env`.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.live import Live
from rich.table import Table

from tickvault.app.logs import setup_logging
from tickvault.config import Settings, load_settings
from tickvault.errors import ConfigError, DataError, StoreError, TickvaultError

if TYPE_CHECKING:
    from tickvault.store.api import Store

app = typer.Typer(
    name="tickvault",
    help="Real-time B3 market data: ZeroMQ fan-out, Valkey Streams storage, time travel.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
err_console = Console(stderr=True, soft_wrap=True)
log = logging.getLogger("tickvault.cli")
_json_logs = False  # LOG_FORMAT=json: what the CLI says on stderr goes out as log events too


def _say(text: str, level: int = logging.INFO) -> None:
    """A line for the user on stderr; with LOG_FORMAT=json an event like every other log line."""
    if _json_logs:
        log.log(level, "%s", text)
    else:
        err_console.print(text, markup=False, highlight=False)


@contextlib.contextmanager
def _errors() -> Iterator[None]:
    """Turn tickvault errors into one clear line and an exit code (2 = bad input, 1 = failure)."""
    try:
        yield
    except (ConfigError, DataError) as exc:
        _say(f"tickvault: error: {exc}", logging.ERROR)
        raise typer.Exit(2) from None
    except (StoreError, TickvaultError) as exc:
        _say(f"tickvault: error: {exc}", logging.ERROR)
        raise typer.Exit(1) from None


def _settings(ctx: typer.Context, **more: Any) -> Settings:
    overrides = dict(ctx.obj or {})
    overrides.update({k: v for k, v in more.items() if v is not None})
    settings = load_settings(**overrides)
    setup_logging(settings.log_level, settings.log_format)
    global _json_logs
    _json_logs = settings.log_format == "json"
    return settings


@contextlib.contextmanager
def _store(settings: Settings, role: str, *, check: bool = True) -> Iterator[tuple[Store, str]]:
    """The store a command reads or writes (the embedded server of DATA_DIR, or VALKEY_URL) and
    where it is; closed after the command (the last process out stops the embedded server)."""
    from tickvault.store.api import Store
    from tickvault.store.connection import Connection

    with Connection.open(settings) as conn:
        if check:
            conn.check()
        yield Store(conn.client(role), conn.keys), conn.where


Opt = typer.Option


# -- settings flags ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Flag:
    kind: type
    help: str = ""
    decls: tuple[str, ...] = ()  # default: --field-name
    min: int | None = None


# Every flag that sets a setting, by the Settings field it sets: one place for the name, the help and
# the variable it beats. The top-level command takes the shared ones; a command repeats those that
# matter to it (`@_flags(...)`). Either way a given flag lands in `ctx.obj`, read by `_settings`.
FLAGS: dict[str, _Flag] = {
    "valkey_url": _Flag(str, "'embedded' or valkey[s]://[user:pass@]host:port/db"),
    "valkey_host": _Flag(str, "External Valkey host"),
    "valkey_port": _Flag(int, "External Valkey port"),
    "valkey_password": _Flag(str, "Valkey password"),
    "valkey_db": _Flag(int, "Valkey database number"),
    "valkey_ca_cert": _Flag(Path, "CA file for valkeys://"),
    "data_dir": _Flag(Path, "Data folder; the embedded Valkey keeps DATA_DIR/valkey"),
    "zmq_host": _Flag(str, "Address the ZeroMQ sockets bind to"),
    "zmq_tick_port": _Flag(int),
    "zmq_book_port": _Flag(int),
    "zmq_history_port": _Flag(int),
    "zmq_signal_port": _Flag(int),
    "zmq_replay_port": _Flag(int, "Gap replay endpoint"),
    "zmq_book_replay_port": _Flag(int, "Gap replay endpoint of the book frames"),
    "stream_max_len": _Flag(int, "Live stream bound"),
    "stream_retention_days": _Flag(int),
    "time_travel_enabled": _Flag(bool, decls=("--time-travel/--no-time-travel",)),
    "monitor_symbols": _Flag(str, "Comma-separated"),
    "log_level": _Flag(str, "DEBUG, INFO, WARNING, ERROR"),
    "log_format": _Flag(str, "text or json, one line per event"),
    "model_path": _Flag(Path, "Model file"),
    "signal_threshold": _Flag(float, "P(UP)/P(DOWN) to act"),
    "namespace": _Flag(str, "Read and write under ns:NAME: keys (a replay's output), never the live data"),
    "features_interval_ms": _Flag(int),
    # the ones only some commands take
    "symbols": _Flag(str, "Comma-separated symbols"),
    "speed": _Flag(float, "Market time per wall time; 0 = as fast as possible"),
    "seed": _Flag(int, "Simulator seed"),
    "zmq_enabled": _Flag(bool, "Publish on ZeroMQ", ("--zmq/--no-zmq",)),
    "zmq_consume_enabled": _Flag(
        bool, "Core flow reads ticks from the bus, not in-process", ("--consume/--no-consume",)
    ),
    "valkey_enabled": _Flag(bool, "Record to Valkey", ("--valkey/--no-valkey",)),
    "metrics_port": _Flag(
        int, "Serve Prometheus metrics on 127.0.0.1:PORT/metrics (0: any free port)", min=0
    ),
    "only": _Flag(str, "One component per process: source, recorder, candles, features, predictor"),
    "web_enabled": _Flag(bool, "Serve the web dashboard", ("--web/--no-web",)),
    "book_enabled": _Flag(
        bool,
        "The source's order book (sim, ProfitDLL, book file, store): published, recorded, in features",
        ("--book/--no-book",),
    ),
    "web_port": _Flag(int, "Web dashboard port, 0: any free port", min=0),
    "web_host": _Flag(str, "Web dashboard address (beyond loopback it needs WEB_TOKEN)"),
}
SHARED = tuple(FLAGS)[: tuple(FLAGS).index("features_interval_ms") + 1]  # on the top-level command
RUN = ("namespace", "symbols", "speed", "seed", "zmq_enabled", "zmq_consume_enabled", "valkey_enabled",
       "metrics_port", "only", "web_enabled", "web_port", "web_host", "book_enabled")  # fmt: skip


def _option(field: str) -> inspect.Parameter:
    flag = FLAGS[field]
    env = Settings.model_fields[field].validation_alias
    option = Opt(*flag.decls, help=f"{flag.help} [{env}]".strip(), min=flag.min)
    return inspect.Parameter(
        field, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Annotated[flag.kind | None, option]
    )


def _flags(*fields: str) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Give a command the flags of these settings; the ones given join the overrides in `ctx.obj`."""

    def add(command: Callable[..., None]) -> Callable[..., None]:
        signature = inspect.signature(command, eval_str=True)

        @functools.wraps(command)
        def with_flags(ctx: typer.Context, **kwargs: Any) -> None:
            given = {field: kwargs.pop(field) for field in fields}
            ctx.obj = {**(ctx.obj or {}), **{k: v for k, v in given.items() if v is not None}}
            command(ctx, **kwargs)

        params = [*signature.parameters.values(), *(_option(field) for field in fields)]
        with_flags.__signature__ = signature.replace(parameters=params)  # type: ignore[attr-defined]
        return with_flags

    return add


@app.callback()
@_flags(*SHARED)
def main_options(ctx: typer.Context) -> None:
    del ctx  # the flags are in ctx.obj already (see _flags)


# -- run ---------------------------------------------------------------------------------------------


@app.command()
@_flags(*RUN)
def run(
    ctx: typer.Context,
    source: Annotated[
        str, Opt(help="sim, replay:FILE[,BOOKFILE] (ticks or book), store:START..END (namespaced), profitdll")
    ] = "sim",
    duration: Annotated[
        float | None, Opt(help="Stop after this many seconds (default: until Ctrl+C)", min=0)
    ] = None,
    dashboard: Annotated[bool, Opt("--dashboard/--no-dashboard", help="Live terminal dashboard")] = True,
) -> None:
    """Run the whole system: source, bus, recorder, dashboard."""
    from tickvault.app.components.source import SourceSpec
    from tickvault.app.dashboard import LiveView
    from tickvault.app.system import System

    with _errors():
        symbols = ctx.obj.get("symbols")  # given: what a recorder records; else a replayed file's own
        spec = SourceSpec.parse(source, symbols)
        settings = _settings(ctx, symbols=spec.symbols)
        _refuse_an_open_page(settings)
        view, stop = LiveView(settings.symbols), threading.Event()
        system = System(
            settings, handlers=[view], source=spec.factory(settings, stop),
            record_only=settings.symbols if settings.only == "recorder" and symbols else None,
            hold_back=False if spec.live else None, warm_up=True if spec.live else None,
            book=spec.makes_book,
        )  # fmt: skip
        system.stop_event = stop  # the DLL's tick queue ends when the system stops
        _stop_on_sigterm(stop)
        system.start()
        for level, line in [(logging.INFO, system.describe()), *system.notices]:
            _say(line, level)
        _until_stopped(system, view, duration, dashboard and settings.only is None)
        _say("stopping: draining bus and recorder ...")
        summary = system.stop()
        _print_summary(summary, settings)
        _exit_for(system.source_error, summary.drained)


def _refuse_an_open_page(settings: Settings) -> None:
    """A page beyond loopback without WEB_TOKEN: refused before anything starts."""
    if settings.web_enabled and settings.only is None:
        from tickvault.app.web.server import check_bind, token_of

        check_bind(settings.web_host, token_of(settings))


def _exit_for(source_error: Exception | None, drained: bool) -> None:
    """A failed source exits 2 (bad input: its settings, a bad file) or 1; an undrained run exits 1."""
    if source_error is not None:
        _say(f"tickvault: error: source failed: {source_error}", logging.ERROR)
        raise typer.Exit(2 if isinstance(source_error, ConfigError | DataError) else 1)
    if not drained:
        raise typer.Exit(1)


def _stop_on_sigterm(stop: threading.Event) -> None:
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda *_: stop.set())


def _until_stopped(system: Any, view: Any, duration: float | None, dashboard: bool) -> None:
    """The live dashboard on a terminal, else just the wait, until `duration`, Ctrl+C or SIGTERM."""
    try:
        if dashboard and sys.stdout.isatty():
            _live(system, view, duration)
        else:
            system.wait(duration)
    except KeyboardInterrupt:
        pass


def _live(system: Any, view: Any, duration: float | None) -> None:
    import time

    from tickvault.app.dashboard import RunDashboard

    console = Console()
    board = RunDashboard(system, view, width=console.width)
    deadline = None if duration is None else time.monotonic() + duration
    with Live(board.frame(), refresh_per_second=4, console=console) as live:
        while not system.stop_event.is_set():
            if deadline is not None and time.monotonic() >= deadline:
                break
            system.stop_event.wait(0.25)
            live.update(board.frame())


def _print_summary(summary: Any, settings: Settings) -> None:
    table = Table(title=f"run summary ({summary.elapsed_s:.1f} s)")
    for name in ("symbol", "generated", "stored"):
        table.add_column(name, justify="right" if name != "symbol" else "left")
    for symbol in sorted(set(summary.generated) | set(summary.stored)):
        stored = str(summary.stored.get(symbol, 0)) if settings.valkey_enabled else "off"
        table.add_row(symbol, str(summary.generated.get(symbol, 0)), stored)
    console = Console()
    console.print(table)
    published = summary.published if settings.zmq_enabled else "off"
    console.print(
        f"generated={summary.generated_total} published={published} "
        f"stored={sum(summary.stored.values())} duplicates={summary.duplicates} "
        f"rejected={summary.rejected} drained={'yes' if summary.drained else 'NO'}",
        markup=False,
        highlight=False,
    )
    console.print(
        "counters: " + " ".join(f"{k}={v}" for k, v in summary.counters.items()),
        markup=False,
        highlight=False,
    )


# -- ingest ------------------------------------------------------------------------------------------


class IngestFormat(StrEnum):
    text = "text"
    json = "json"


@app.command()
def ingest(
    ctx: typer.Context,
    paths: Annotated[
        list[str], typer.Argument(help="Tick or book files, directories or globs (CSV, Parquet, .gz, .zip)")
    ],
    via_bus: Annotated[
        bool,
        Opt("--via-bus", help="Replay through bus and recorder (live consumers see it), not into blocks"),
    ] = False,
    show: Annotated[int, Opt(help="How many rejected rows to list", min=0)] = 50,
    symbol: Annotated[str | None, Opt(help="The symbol of a file without a symbol column")] = None,
    fmt: Annotated[IngestFormat, Opt("--format", help="text (a line per file) or json")] = IngestFormat.text,
    memory: Annotated[str | None, Opt(help="Working memory bound, e.g. 768MiB (the default), 2GiB")] = None,
    rejects: Annotated[
        Path | None, Opt(help="Write every rejected row here (CSV: file,line,field,reason)")
    ] = None,
) -> None:
    """Past ticks from files straight into history blocks, once each (idempotent, crash-safe); exits
    when they are durable. Columns may have tickvault's names or other common ones (B3's
    TradeIntraday files, Portuguese, English). Order-book files (price levels as Tardis'
    incremental_book_L2, or order events) are told by their columns and stored as the book."""
    from tickvault.app.ingest import run_ingest

    with _errors():
        if symbol is not None:
            from tickvault.domain.events import validate_symbol

            symbol = validate_symbol(symbol)
        settings = _settings(ctx)
        code = run_ingest(
            settings, paths, symbol=symbol, via_bus=via_bus, json_output=fmt == IngestFormat.json,
            show=show, memory=memory, rejects=rejects, err=err_console, say=_say,
        )  # fmt: skip
    if code:
        raise typer.Exit(code)


# -- download ----------------------------------------------------------------------------------------


@app.command()
def download(
    ctx: typer.Context,
    symbol: Annotated[str, typer.Argument(help="The symbol, e.g. WINZ25")],
    start: Annotated[str, Opt(help="ISO 8601 with offset, a date (B3 day) or e.g. '-2d' (30 days back)")],
    end: Annotated[str, Opt(help="Same forms as --start")] = "now",
    wait_subscribers: Annotated[
        int, Opt(help="Hold the first frame until this many subscribe to history_ (10 s at most)", min=0)
    ] = 0,
) -> None:
    """ProfitDLL's past trades of SYMBOL (PROFIT_* settings): published on the history port as
    history_SYMBOL frames and stored straight into history blocks, once each."""
    from tickvault.app.download import run_download
    from tickvault.domain.events import validate_symbol
    from tickvault.domain.timeparse import parse_time

    with _errors():
        settings = _settings(ctx)
        begin, finish = parse_time(start, field="--start"), parse_time(end, field="--end")
        code = run_download(
            settings, validate_symbol(symbol), begin, finish, wait_subscribers=wait_subscribers, say=_say
        )
    if code:
        raise typer.Exit(code)


# -- query -------------------------------------------------------------------------------------------


class Format(StrEnum):
    table = "table"
    csv = "csv"
    json = "json"
    parquet = "parquet"


@app.command()
@_flags("namespace")
def query(
    ctx: typer.Context,
    symbol: Annotated[str, typer.Argument(help="Symbol, e.g. WDOFUT; ticks also take WDOFUT,WINFUT,...")],
    start: Annotated[
        str | None, Opt(help="ISO 8601 with offset, a date (B3 day), 'now' or e.g. '-2h'")
    ] = None,
    end: Annotated[str, Opt(help="Inclusive end, same forms as --start")] = "now",
    kind: Annotated[
        str,
        Opt(
            help="ticks, candles:TF (TF in 1m, 5m, 15m, 1h, 1d), features, predictions, signals; the order "
            "book: book:N (N levels a side, with --at), book-frames:STEP[:N] (e.g. 1s), quotes, book-updates"
        ),
    ] = "ticks",
    at: Annotated[str | None, Opt(help="--kind book:N: the moment, same forms as --start")] = None,
    fmt: Annotated[
        Format, Opt("--format", help="table, csv, json (one JSON object per line) or parquet")
    ] = Format.table,
    output: Annotated[Path | None, Opt(help="Write to this file instead of stdout")] = None,
    limit: Annotated[int, Opt(help="Rows shown by --format table (head and tail)", min=2)] = 40,
) -> None:
    """Read a past time range back from the store."""
    from tickvault.app import output as out
    from tickvault.app.queries import check_kind, read_kind
    from tickvault.domain.events import validate_symbol

    with _errors():
        settings = _settings(ctx)
        symbols = [validate_symbol(s.strip()) for s in symbol.split(",")]
        check_kind(kind, symbols, start, at)
        if fmt is Format.parquet and output is None:
            raise ConfigError("--format", "parquet", "writes binary data; give --output PATH")
        with _store(settings, "query") as (store, _):
            frame = read_kind(store, kind, symbols, start, end, at)
        if "valid" in frame.attrs:  # a book as of a moment says which, and whether it is whole
            valid = "yes" if frame.attrs["valid"] else "NO (a gap, or no snapshot before it)"
            _say(f"{symbols[0]} book as of {frame.attrs['as_of']} (seq {frame.attrs['seq']}), valid: {valid}")
        out.write_frame(frame, fmt.value, output, limit=limit)


# -- export ------------------------------------------------------------------------------------------


@app.command()
def export(
    ctx: typer.Context,
    symbol: Annotated[str, typer.Argument(help="Symbol(s), e.g. WDOFUT or WDOFUT,WINFUT")],
    start: Annotated[str, Opt(help="ISO 8601 with offset, a date (B3 day), 'now' or e.g. '-2h'")],
    output: Annotated[Path, Opt(help="Dataset folder: date=YYYY-MM-DD/symbol=SYMBOL/part-*.parquet")],
    end: Annotated[str, Opt(help="Inclusive end, same forms as --start")] = "now",
    kind: Annotated[
        str, Opt(help="ticks, candles:TF, features, predictions, signals, book:N[:STEP] or book-updates")
    ] = "ticks",
) -> None:
    """Write a time range as a hive-partitioned Parquet dataset (zstd, UTC ns timestamps); exporting
    the same range again replaces its partitions."""
    from tickvault.app.export import check_kind, run_export
    from tickvault.domain.events import validate_symbol

    with _errors():
        settings = _settings(ctx)
        symbols = [validate_symbol(s.strip()) for s in symbol.split(",")]
        check_kind(kind)
        with _store(settings, "export") as (store, _):
            run_export(store, symbols, start, end, kind, output, console=err_console, say=_say)


# -- monitor -----------------------------------------------------------------------------------------


@app.command()
def monitor(
    ctx: typer.Context,
    symbols: Annotated[str | None, Opt(help="Comma-separated symbols [MONITOR_SYMBOLS]")] = None,
    once: Annotated[bool, Opt("--once", help="Print one frame and exit")] = False,
    interval: Annotated[float, Opt(help="Seconds between refreshes", min=0.1)] = 1.0,
) -> None:
    """Live market and pipeline health from Valkey (runs on any machine that reaches the server)."""
    import time

    from tickvault.app.monitor import gather, render

    with _errors():
        settings = _settings(ctx, monitor_symbols=symbols)
        # unchecked: an unreachable server is a red frame that recovers, not an exit
        with (
            _store(settings, "monitor", check=False) as (store, where),
            contextlib.suppress(KeyboardInterrupt),
        ):
            console = Console() if sys.stdout.isatty() else Console(width=200)  # a pipe gets whole rows
            snap = gather(store, settings.monitor_symbols)
            if once:
                console.print(render(snap, where, width=console.width))
                return
            with Live(render(snap, where, console.width), console=console, refresh_per_second=4) as live:
                while True:
                    time.sleep(interval)
                    snap = gather(store, settings.monitor_symbols, snap)
                    live.update(render(snap, where, width=console.width))


@app.command()
def web(
    ctx: typer.Context,
    symbols: Annotated[str | None, Opt(help="Comma-separated symbols shown first [MONITOR_SYMBOLS]")] = None,
    web_port: Annotated[int | None, Opt(help="Port, 0: any free port [WEB_PORT]", min=0, max=65535)] = None,
    web_host: Annotated[
        str | None, Opt(help="Address; beyond loopback WEB_TOKEN is required [WEB_HOST]")
    ] = None,
) -> None:
    """Serve the web dashboard alone, reading Valkey only (beside a system running elsewhere).
    The token for an address beyond loopback comes from WEB_TOKEN (environment or .env)."""
    from tickvault.app.web.server import WebServer, check_bind, token_of
    from tickvault.store.api import Store
    from tickvault.store.connection import Connection

    with _errors():
        settings = _settings(ctx, monitor_symbols=symbols, web_host=web_host, web_port=web_port)
        check_bind(settings.web_host, token_of(settings))  # before anything connects
        stop = threading.Event()
        _stop_on_sigterm(stop)
        with Connection.open(settings) as conn:  # like `monitor`: Valkey down is shown, not fatal
            server = WebServer.from_settings(
                settings,
                Store(conn.client("web"), conn.keys),
                symbols=settings.monitor_symbols,
                where=conn.where,
            )
            server.start()
            try:
                _hold(stop, f"tickvault web: {server.url} reading {conn.where}  Ctrl+C to stop")
            finally:
                server.stop()


@app.command("curve-keys")
def curve_keys(
    folder: Annotated[
        Path, typer.Argument(help="Where to write server.key(_secret) and client.key(_secret)")
    ],
) -> None:
    """Create CURVE key pairs for a ZeroMQ bus beyond loopback (secret files are mode 0600)."""
    from tickvault.bus.curve import create_keys

    with _errors():
        for name in ("server", "client"):
            public, secret = create_keys(folder, name)
            print(f"{name}: public {public}  secret {secret}")
        print("publisher: ZMQ_CURVE_SERVER_SECRET=server.key_secret; subscribers:"
              " ZMQ_CURVE_SERVER_PUBLIC=server.key, ZMQ_CURVE_CLIENT_SECRET=client.key_secret")  # fmt: skip


# -- train and report --------------------------------------------------------------------------------


@app.command()
def train(
    ctx: typer.Context,
    symbol: Annotated[str, typer.Argument(help="Symbol to predict, e.g. WDOFUT")],
    start: Annotated[str, Opt(help="First day of history to learn from (ISO 8601, a date, '-30d')")],
    end: Annotated[str, Opt(help="Inclusive end, same forms as --start")] = "now",
    horizon: Annotated[float, Opt(help="Seconds ahead the label looks", min=1.0)] = 60.0,
    folds: Annotated[
        int | None, Opt(help="Walk-forward folds (default: every session after the first)", min=1)
    ] = None,
    model: Annotated[Path | None, Opt(help="Where to save (default: TICKVAULT_MODEL)")] = None,
) -> None:
    """Train the direction model on stored history, evaluate it walk-forward, save it."""
    from tickvault.app.components.core_flow import feature_config
    from tickvault.app.queries import training_data
    from tickvault.domain.events import validate_symbol
    from tickvault.domain.instruments import instrument_for
    from tickvault.ml.model import save
    from tickvault.ml.model import train as fit_model

    with _errors():
        settings = _settings(ctx)
        validate_symbol(symbol)
        path, horizon_ms = model or settings.model_file, int(horizon * 1000)
        symbols = list(dict.fromkeys((symbol, *settings.symbols)))
        with _store(settings, "train") as (store, _):
            data = training_data(
                store, symbol, symbols, start, end, horizon_ms=horizon_ms, config=feature_config(settings)
            )
        trained, oos = fit_model(
            data, symbol, horizon_ms=horizon_ms, tick_size=instrument_for(symbol).tick_size, folds=folds
        )
        save(trained, path)
        oos.to_parquet(path.with_suffix(".oos.parquet"))
        for fold in trained.info.folds:
            print(f"{fold['test_session']}: accuracy {fold['accuracy']:.3f}"
                  f" (majority {fold['majority_rate']:.3f}) on {fold['n_test']} rows")  # fmt: skip
        print(f"model={path} sessions={trained.info.sessions} rows={trained.info.rows}")


@app.command()
def report(
    ctx: typer.Context,
    model: Annotated[Path | None, Opt(help="Model saved by `train` (default: TICKVAULT_MODEL)")] = None,
    output: Annotated[Path, Opt(help="HTML file to write")] = Path("report.html"),
    fee: Annotated[float, Opt(help="Fee in BRL per contract per side", min=0.0)] = 1.0,
    multiplier: Annotated[float | None, Opt(help="BRL per point (default: the symbol's)", min=0.0)] = None,
    threshold: Annotated[float | None, Opt(help="Probability to act (default: SIGNAL_THRESHOLD)")] = None,
) -> None:
    """Write an HTML report of a trained model: metrics, confusion matrix, importance, equity curve."""
    import pandas as pd

    from tickvault.ml.model import load
    from tickvault.ml.report import write_report

    with _errors():
        settings = _settings(ctx)
        path = model or settings.model_file
        trained = load(path)
        oos_path = path.with_suffix(".oos.parquet")
        if not oos_path.exists():
            raise ConfigError(
                "--model", str(path), f"has no out-of-sample predictions ({oos_path.name}); retrain it"
            )
        written = write_report(
            trained.info, pd.read_parquet(oos_path), output, fee=fee, multiplier=multiplier,
            threshold=threshold if threshold is not None else settings.signal_threshold,
        )  # fmt: skip
        print(f"report={written}")


@app.command()
def backtest(
    ctx: typer.Context,
    symbol: Annotated[str, typer.Argument(help="Symbol(s) to replay, e.g. WDOFUT or WDOFUT,WINFUT")],
    start: Annotated[str, Opt(help="ISO 8601 with offset, a date (B3 day) or e.g. '-2d'")],
    end: Annotated[str, Opt(help="Inclusive end, same forms as --start")],
    model: Annotated[Path | None, Opt(help="Model saved by `train` (default: TICKVAULT_MODEL)")] = None,
    namespace: Annotated[
        str | None, Opt(help="Where the replay's output goes (default: backtest-<UTC time>); must be new")
    ] = None,
    output: Annotated[Path, Opt(help="HTML file to write")] = Path("report.html"),
    fee: Annotated[float, Opt(help="Fee in BRL per contract per side", min=0.0)] = 1.0,
) -> None:
    """Replay a recorded range through the live pipeline with a model, into a namespace, and write
    the report of its predictions and signals: hit rate, confusion matrix, equity after costs."""
    from tickvault.app.backtest import RUN_SETTINGS, default_namespace, run_backtest
    from tickvault.domain.timeparse import to_ms_bounds

    with _errors():
        start_ms, end_ms = to_ms_bounds(start, end)
        settings = _settings(
            ctx, symbols=symbol, namespace=namespace or default_namespace(), model_path=model, **RUN_SETTINGS
        )
        stop = threading.Event()
        _stop_on_sigterm(stop)
        with _store(settings, "backtest") as (store, _):
            result = run_backtest(settings, store, start_ms, end_ms, output=output, fee=fee, stop=stop)
        print(result.summary())


# -- backfill ----------------------------------------------------------------------------------------


@app.command()
@_flags("symbols", "seed")
def backfill(
    ctx: typer.Context,
    days: Annotated[int, Opt(help="How many past B3 sessions per symbol", min=1, max=250)] = 3,
    before: Annotated[str | None, Opt(help="Sessions before this date (default: today in B3 time)")] = None,
) -> None:
    """Fill history with simulated past sessions (for training and history-aware features on a new
    installation); days that already hold ticks are left alone."""
    from tickvault.domain.events import B3_TZ
    from tickvault.domain.timeparse import parse_time
    from tickvault.sources.backfill import backfill as fill

    with _errors():
        settings = _settings(ctx)
        end = parse_time(before, field="--before").astimezone(B3_TZ).date() if before is not None else None
        with _store(settings, "backfill") as (store, _):
            result = fill(store, settings.symbols, days, before=end, seed=settings.seed)
        for (symbol, day), count in sorted(result.written.items()):
            print(f"{symbol} {day}: {count} simulated ticks")
        for symbol, day in result.skipped:
            print(f"{symbol} {day}: already has ticks, left as it is")
        print(f"written={result.ticks} sessions={len(result.written)} skipped={len(result.skipped)}")


# -- cleanup -----------------------------------------------------------------------------------------


@app.command()
def cleanup(
    ctx: typer.Context,
    days: Annotated[float, Opt(help="Keep this many days before each symbol's newest tick", min=0.0)],
) -> None:
    """Remove ticks older than N days (counted back from each symbol's newest tick)."""
    with _errors():
        settings = _settings(ctx)
        with _store(settings, "cleanup") as (store, _):
            removed = store.cleanup(days)
        for symbol, count in sorted(removed.items()):
            print(f"{symbol}: removed {count}")
        print(f"removed={sum(removed.values())} symbols={len(removed)}")


# -- valkey ------------------------------------------------------------------------------------------


@app.command("valkey")
def valkey_server(
    ctx: typer.Context,
    cluster: Annotated[
        int | None,
        Opt(help="Start N cluster-mode servers on loopback, joined into one Valkey Cluster", min=1),
    ] = None,
) -> None:
    """Run the embedded Valkey in the foreground; Ctrl+C stops it unless other tickvault processes use it."""
    from tickvault.store.connection import Connection

    with _errors():
        settings = _settings(ctx)
        if cluster is not None:
            _run_cluster(settings, cluster)
            return
        if not settings.embedded:
            raise ConfigError(
                "VALKEY_URL", settings.valkey_url, "`tickvault valkey` runs the embedded server only"
            )
        stop = threading.Event()
        _stop_on_sigterm(stop)
        with Connection.open(settings) as conn:
            keeper = conn.client("keeper")
            keeper.ping()  # holds a named connection: other processes see the server is in use
            assert conn.embedded is not None
            info = conn.embedded.running()
            port = info.port if info else "?"
            _hold(stop, f"embedded valkey ready: {conn.where}\n  valkey-cli -p {port}    Ctrl+C to stop")


def _hold(stop: threading.Event, ready: str) -> None:
    """Say `ready`, then wait for Ctrl+C or SIGTERM (a foreground server)."""
    _say(ready)
    try:
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass


def _run_cluster(settings: Settings, nodes: int) -> None:
    """`tickvault valkey --cluster N`: the local cluster in the foreground, its URL printed."""
    import valkey

    from tickvault.store.cluster import EmbeddedCluster
    from tickvault.store.server import client_name

    password = settings.valkey_password.get_secret_value() if settings.valkey_password else None
    local = EmbeddedCluster(settings.data_dir / "valkey-cluster", nodes, password=password)
    stop = threading.Event()
    _stop_on_sigterm(stop)
    local.ensure_running()
    keepers = [valkey.Valkey(host=i.host, port=i.port, password=password, client_name=client_name("keeper"))
               for i in local.infos]  # fmt: skip
    for keeper in keepers:
        keeper.ping()  # a named connection per node: other processes see the cluster is in use
    if local.previous_url is None:
        again = ""
    elif local.previous_url == local.url:
        again = "  (the same URL as the last start: processes that use it reconnect)\n"
    else:  # a recorded port was taken: clients that kept the old URL find nothing there
        again = f"  (the URL changed, a port was taken; was {local.previous_url}: restart what uses it)\n"
    _hold(stop, f"embedded valkey cluster ready: {nodes} nodes, data={local.data_dir}\n"
                f"  export VALKEY_URL={local.url}\n{again}  Ctrl+C to stop")  # fmt: skip
    for keeper in keepers:
        keeper.close()
    if local.release():
        _say("stopped the embedded cluster (data kept)")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
