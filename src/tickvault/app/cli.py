"""`tickvault` command line: parses arguments, then calls library functions.

Every setting has a flag on the top-level command (`tickvault --valkey-url URL query ...`); the flags
that matter for one command are also on that command. A flag beats the environment and `.env`.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import sys
import threading
from collections.abc import Iterator
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.live import Live
from rich.table import Table

from tickvault.app.logs import setup_logging
from tickvault.config import Settings, load_settings
from tickvault.errors import ConfigError, DataError, StoreError, TickvaultError

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


Opt = typer.Option


@app.callback()
def main_options(
    ctx: typer.Context,
    valkey_url: Annotated[
        str | None, Opt(help="'embedded' or valkey[s]://[user:pass@]host:port/db [VALKEY_URL]")
    ] = None,
    valkey_host: Annotated[str | None, Opt(help="External Valkey host [VALKEY_HOST]")] = None,
    valkey_port: Annotated[int | None, Opt(help="External Valkey port [VALKEY_PORT]")] = None,
    valkey_password: Annotated[str | None, Opt(help="Valkey password [VALKEY_PASSWORD]")] = None,
    valkey_db: Annotated[int | None, Opt(help="Valkey database number [VALKEY_DB]")] = None,
    valkey_ca_cert: Annotated[Path | None, Opt(help="CA file for valkeys:// [VALKEY_CA_CERT]")] = None,
    data_dir: Annotated[
        Path | None, Opt(help="Data folder; the embedded Valkey keeps DATA_DIR/valkey [TICKVAULT_DATA_DIR]")
    ] = None,
    zmq_host: Annotated[str | None, Opt(help="Address the ZeroMQ sockets bind to [ZMQ_HOST]")] = None,
    zmq_tick_port: Annotated[int | None, Opt(help="[ZMQ_TICK_PORT]")] = None,
    zmq_book_port: Annotated[int | None, Opt(help="[ZMQ_BOOK_PORT]")] = None,
    zmq_history_port: Annotated[int | None, Opt(help="[ZMQ_HISTORY_PORT]")] = None,
    zmq_signal_port: Annotated[int | None, Opt(help="[ZMQ_SIGNAL_PORT]")] = None,
    zmq_replay_port: Annotated[int | None, Opt(help="Gap replay endpoint [ZMQ_REPLAY_PORT]")] = None,
    zmq_book_replay_port: Annotated[
        int | None, Opt(help="Gap replay endpoint of the book frames [ZMQ_BOOK_REPLAY_PORT]")
    ] = None,
    stream_max_len: Annotated[int | None, Opt(help="Live stream bound [STREAM_MAX_LEN]")] = None,
    stream_retention_days: Annotated[int | None, Opt(help="[STREAM_RETENTION_DAYS]")] = None,
    time_travel: Annotated[
        bool | None, Opt("--time-travel/--no-time-travel", help="[TIME_TRAVEL_ENABLED]")
    ] = None,
    monitor_symbols: Annotated[str | None, Opt(help="Comma-separated [MONITOR_SYMBOLS]")] = None,
    log_level: Annotated[str | None, Opt(help="DEBUG, INFO, WARNING, ERROR [LOG_LEVEL]")] = None,
    log_format: Annotated[str | None, Opt(help="text or json, one line per event [LOG_FORMAT]")] = None,
    model_path: Annotated[Path | None, Opt("--model-path", help="Model file [TICKVAULT_MODEL]")] = None,
    signal_threshold: Annotated[float | None, Opt(help="P(UP)/P(DOWN) to act [SIGNAL_THRESHOLD]")] = None,
    features_interval_ms: Annotated[int | None, Opt(help="[FEATURES_INTERVAL_MS]")] = None,
) -> None:
    ctx.obj = {
        "valkey_url": valkey_url,
        "valkey_host": valkey_host,
        "valkey_port": valkey_port,
        "valkey_password": valkey_password,
        "valkey_db": valkey_db,
        "valkey_ca_cert": valkey_ca_cert,
        "data_dir": data_dir,
        "zmq_host": zmq_host,
        "zmq_tick_port": zmq_tick_port,
        "zmq_book_port": zmq_book_port,
        "zmq_history_port": zmq_history_port,
        "zmq_signal_port": zmq_signal_port,
        "zmq_replay_port": zmq_replay_port,
        "zmq_book_replay_port": zmq_book_replay_port,
        "stream_max_len": stream_max_len,
        "stream_retention_days": stream_retention_days,
        "time_travel_enabled": time_travel,
        "monitor_symbols": monitor_symbols,
        "log_level": log_level,
        "log_format": log_format,
        "model_path": model_path,
        "signal_threshold": signal_threshold,
        "features_interval_ms": features_interval_ms,
    }


# -- run ---------------------------------------------------------------------------------------------


@app.command()
def run(
    ctx: typer.Context,
    source: Annotated[
        str, Opt(help="sim (built-in B3 simulator), replay:PATH (CSV/Parquet ticks) or profitdll (PROFIT_*)")
    ] = "sim",
    symbols: Annotated[str | None, Opt(help="Comma-separated symbols [TICKVAULT_SYMBOLS]")] = None,
    speed: Annotated[
        float | None, Opt(help="Market time per wall time; 0 = as fast as possible [TICKVAULT_SPEED]")
    ] = None,
    seed: Annotated[int | None, Opt(help="Simulator seed [TICKVAULT_SEED]")] = None,
    duration: Annotated[
        float | None, Opt(help="Stop after this many seconds (default: until Ctrl+C)", min=0)
    ] = None,
    zmq: Annotated[bool | None, Opt("--zmq/--no-zmq", help="Publish on ZeroMQ [ZMQ_ENABLED]")] = None,
    consume: Annotated[
        bool | None,
        Opt(
            "--consume/--no-consume",
            help="Core flow reads ticks from the bus, not in-process [ZMQ_CONSUME_ENABLED]",
        ),
    ] = None,
    valkey: Annotated[
        bool | None, Opt("--valkey/--no-valkey", help="Record to Valkey [VALKEY_ENABLED]")
    ] = None,
    dashboard: Annotated[bool, Opt("--dashboard/--no-dashboard", help="Live terminal dashboard")] = True,
    book: Annotated[
        bool | None,
        Opt(
            "--book/--no-book",
            help="The simulator's order book: published, recorded, in features [BOOK_ENABLED]",
        ),
    ] = None,
    metrics_port: Annotated[
        int | None, Opt(help="Serve Prometheus metrics on 127.0.0.1:PORT/metrics (0: any free port)", min=0)
    ] = None,
    only: Annotated[
        str | None, Opt(help="One component per process: source, recorder, candles, features, predictor")
    ] = None,
) -> None:
    """Run the whole system: source, bus, recorder, dashboard."""
    from tickvault.app.dashboard import LiveView
    from tickvault.app.system import System

    with _errors():
        replay: Path | None = None
        file_symbol: str | None = None
        if source.startswith("replay:"):
            replay = Path(source.removeprefix("replay:"))
            if not replay.is_file():
                raise ConfigError("--source", source, f"{replay} is not a file")
            if symbols is None:
                from tickvault.sources.files import file_symbols

                symbols = ",".join(file_symbols(replay)) or None
            # a file without a symbol column plays as the one symbol given
            file_symbol = symbols if symbols and "," not in symbols else None
        elif source not in ("sim", "profitdll"):
            raise ConfigError("--source", source, "must be sim, replay:PATH or profitdll")
        settings = _settings(
            ctx, symbols=symbols, speed=speed, seed=seed, zmq_enabled=zmq, valkey_enabled=valkey,
            zmq_consume_enabled=consume, book_enabled=book,
        )  # fmt: skip
        view = LiveView(settings.symbols)
        chosen = _replay_source(replay, settings, file_symbol) if replay else None
        if source == "profitdll":
            from tickvault.sources.profitdll import profitdll_source

            stop = threading.Event()
            chosen = profitdll_source(settings, stop)
        # a recorder given --symbols records exactly those (recorders sharing one bus by symbol)
        shard = settings.symbols if only == "recorder" and symbols is not None else None
        live = source == "profitdll"  # a live feed is buffered, never held back
        system = System(
            settings,
            handlers=[view],
            only=only,
            source=chosen,
            record_only=shard,
            hold_back=False if live else None,
            warm_up=True if live else None,  # a live feed continues the stored session
        )
        if source == "profitdll":
            system.stop_event = stop  # the DLL's tick queue ends when the system stops
        _stop_on_sigterm(system.stop_event)
        system.start()
        _say(system.describe())
        metrics = _serve_metrics(system, metrics_port) if metrics_port is not None else None
        try:
            if dashboard and only is None and sys.stdout.isatty():
                _live(system, view, duration)
            else:
                system.wait(duration)
        except KeyboardInterrupt:
            pass
        _say("stopping: draining bus and recorder ...")
        summary = system.stop()
        if metrics is not None:
            metrics.stop()
        _print_summary(summary, settings)
        if system.source_error is not None:
            _say(f"tickvault: error: source failed: {system.source_error}", logging.ERROR)
            raise typer.Exit(2 if isinstance(system.source_error, ConfigError | DataError) else 1)
        if not summary.drained:
            raise typer.Exit(1)


def _serve_metrics(system: Any, port: int) -> Any:
    """The Prometheus endpoint, or None (logged) if the port is taken: metrics never stop a run."""
    from tickvault.app.metrics import start_metrics

    try:
        server = start_metrics(
            port, system.counters, lambda: list(system.features.stats.latency_ns) if system.features else []
        )
    except OSError as exc:
        _say(f"metrics port {port} unavailable ({exc}); running without metrics", logging.WARNING)
        return None
    _say(f"metrics: http://127.0.0.1:{server.port}/metrics")
    return server


def _replay_source(path: Path, settings: Settings, symbol: str | None = None) -> Any:
    """A tick file as the market: paced at --speed (0: as fast as possible); a bad row is logged
    with its line and reason and skipped, the rest plays on."""
    import logging

    from tickvault.sources.files import BadRow, read_ticks
    from tickvault.sources.simulator import pace

    log = logging.getLogger("tickvault.replay")

    def source(_: object) -> Iterator[Any]:
        def good() -> Iterator[Any]:
            for item in read_ticks(path, symbol=symbol):
                if isinstance(item, BadRow):
                    log.error("replay %s: rejected %s", path.name, item)
                    continue
                yield item

        return pace(good(), settings.speed)

    return source


def _stop_on_sigterm(stop: threading.Event) -> None:
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda *_: stop.set())


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


@app.command()
def ingest(
    ctx: typer.Context,
    path: Annotated[Path, typer.Argument(help="CSV or Parquet file with the tick fields")],
    show: Annotated[int, Opt(help="How many rejected rows to list", min=0)] = 50,
    symbol: Annotated[str | None, Opt(help="The symbol of a file without a symbol column")] = None,
) -> None:
    """Replay a tick file through the bus and the recorder; exits when everything is durable.
    Columns may have tickvault's names or other common ones (B3's trade files, Portuguese, English)."""
    from collections import Counter

    from tickvault.app.system import System
    from tickvault.sources.files import BadRow, file_symbols, read_ticks

    with _errors():
        if symbol is not None:
            from tickvault.domain.events import validate_symbol

            symbol = validate_symbol(symbol)
        symbols = file_symbols(path, symbol=symbol)
        settings = _settings(ctx, symbols=",".join(symbols) or None)
        counts: Counter[str] = Counter()
        bad: list[BadRow] = []

        def rows(_: object) -> Iterator[Any]:
            for item in read_ticks(path, symbol=symbol):
                counts["read"] += 1
                if isinstance(item, BadRow):
                    bad.append(item)
                    continue
                yield item

        system = System(settings, source=rows, private_bus=True, hold_back=True)
        _stop_on_sigterm(system.stop_event)
        system.start()
        with contextlib.suppress(KeyboardInterrupt):
            system.wait()
        summary = system.stop()
        for row in bad[:show]:
            _say(f"rejected {path.name}:{row}", logging.WARNING)
        if len(bad) > show:
            _say(f"... and {len(bad) - show} more rejected rows", logging.WARNING)
        reasons = Counter(row.error.field for row in bad)
        print(
            f"read={counts['read']} stored={sum(summary.stored.values())} duplicates={summary.duplicates} "
            f"rejected={len(bad)}"
            + (f" ({', '.join(f'{k}={v}' for k, v in reasons.most_common())})" if bad else "")
            + f" durable={'yes' if summary.durable else 'NO'}"
        )
        if not (summary.drained and summary.durable):
            raise typer.Exit(1)


# -- query -------------------------------------------------------------------------------------------


class Format(StrEnum):
    table = "table"
    csv = "csv"
    json = "json"
    parquet = "parquet"


@app.command()
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
    from tickvault.domain.events import validate_symbol
    from tickvault.store.api import Store
    from tickvault.store.connection import Connection

    with _errors():
        settings = _settings(ctx)
        symbols = [validate_symbol(s.strip()) for s in symbol.split(",")]
        events = ("features", "predictions", "signals")
        if len(symbols) > 1 and kind != "ticks":
            raise ConfigError("SYMBOL", symbol, "several symbols at once are for --kind ticks only")
        book = _book_kind(kind)
        if book is not None and book[0] == "book":
            if at is None:
                raise ConfigError("--at", None, f"--kind {kind} needs the moment: --at T")
        elif start is None:
            raise ConfigError("--start", None, f"--kind {kind} needs a range: --start T [--end T]")
        if book is None and kind != "ticks" and kind not in events:
            from tickvault.analytics.candles import TIMEFRAMES

            tf = kind.split(":", 1)[1] if kind.startswith("candles:") else ""
            if tf not in TIMEFRAMES:
                raise ConfigError(
                    "--kind",
                    kind,
                    "must be ticks, features, predictions, signals or candles:TF "
                    f"(TF in {', '.join(TIMEFRAMES)})",
                )
        if fmt is Format.parquet and output is None:
            raise ConfigError("--format", "parquet", "writes binary data; give --output PATH")
        with Connection.open(settings) as conn:
            conn.check()
            store = Store(conn.client("query"))
            if book is not None:
                frame = _book_frame(store, symbols[0], book, start, end, at)
            elif kind == "ticks":
                # several symbols: one frame in time order, read from their nodes in parallel
                frame = store.ticks(symbols if len(symbols) > 1 else symbols[0], start, end)
            elif kind in events:
                frame = store.events(kind, symbol, start, end)
            else:
                frame = store.candles(symbol, kind.split(":", 1)[1], start, end)
        if book is not None and book[0] == "book":
            valid = "yes" if frame.attrs["valid"] else "NO (a gap, or no snapshot before it)"
            _say(f"{symbols[0]} book as of {frame.attrs['as_of']} (seq {frame.attrs['seq']}), valid: {valid}")
        out.write_frame(frame, fmt.value, output, limit=limit)


def _book_kind(kind: str) -> tuple[str, str, int] | None:
    """(what, step, depth) of an order-book --kind, None for any other kind."""
    what, _, rest = kind.partition(":")
    if what not in ("book", "book-frames", "quotes", "book-updates"):
        return None
    try:
        if what == "book":
            return what, "", int(rest) if rest else 10
        if what == "book-frames":
            step, _, depth = rest.partition(":")
            from tickvault.domain.timeparse import parse_duration_ms

            parse_duration_ms(step or "1s")
            return what, step or "1s", int(depth) if depth else 10
    except (ValueError, DataError):
        pass
    else:
        if not rest:
            return what, "", 0
    raise ConfigError(
        "--kind",
        kind,
        "must be book:N, book-frames:STEP[:N] (e.g. book-frames:1s:10), quotes or book-updates",
    )


def _book_frame(
    store: Any, symbol: str, book: tuple[str, str, int], start: str | None, end: str, at: str | None
) -> Any:
    what, step, depth = book
    if depth < 0 or (what in ("book", "book-frames") and depth == 0):
        raise ConfigError("--kind", f"{what}:{depth}", "the depth must be a positive number of levels")
    if what == "book":
        return store.book(symbol, at, depth)
    if what == "book-frames":
        return store.book_frames(symbol, start, end, step, depth)
    if what == "quotes":
        return store.quotes(symbol, start, end)
    return store.book_updates(symbol, start, end)


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
    from tickvault.store.api import Store
    from tickvault.store.connection import Connection

    with _errors():
        settings = _settings(ctx, monitor_symbols=symbols)
        conn = Connection.open(settings)
        try:
            store = Store(conn.client("monitor"))
            console = Console() if sys.stdout.isatty() else Console(width=200)  # a pipe gets whole rows
            snap = gather(store, settings.monitor_symbols)
            if once:
                console.print(render(snap, conn.where, width=console.width))
                return
            with Live(render(snap, conn.where, console.width), console=console, refresh_per_second=4) as live:
                while True:
                    time.sleep(interval)
                    snap = gather(store, settings.monitor_symbols, snap)
                    live.update(render(snap, conn.where, width=console.width))
        except KeyboardInterrupt:
            pass
        finally:
            conn.close()


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
    from tickvault.app.system import feature_config
    from tickvault.domain.events import validate_symbol
    from tickvault.domain.instruments import instrument_for
    from tickvault.ml.model import save, training_set
    from tickvault.ml.model import train as fit_model
    from tickvault.store.api import Store, frame_to_ticks
    from tickvault.store.connection import Connection
    from tickvault.workers.core_flow import store_history

    with _errors():
        settings = _settings(ctx)
        validate_symbol(symbol)
        path = model or settings.model_file
        symbols = list(dict.fromkeys((symbol, *settings.symbols)))
        with Connection.open(settings) as conn:
            conn.check()
            store = Store(conn.client("train"))
            ticks = frame_to_ticks(store.ticks(symbols, start, end))
            tick_size = instrument_for(symbol).tick_size
            data = training_set(
                ticks, symbol, horizon_ms=int(horizon * 1000), tick_size=tick_size, symbols=symbols,
                config=feature_config(settings),
                history=store_history(store),
            )  # fmt: skip
        trained, oos = fit_model(
            data, symbol, horizon_ms=int(horizon * 1000), tick_size=tick_size, folds=folds
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


# -- backfill ----------------------------------------------------------------------------------------


@app.command()
def backfill(
    ctx: typer.Context,
    days: Annotated[int, Opt(help="How many past B3 sessions per symbol", min=1, max=250)] = 3,
    symbols: Annotated[str | None, Opt(help="Comma-separated [TICKVAULT_SYMBOLS]")] = None,
    before: Annotated[str | None, Opt(help="Sessions before this date (default: today in B3 time)")] = None,
    seed: Annotated[int | None, Opt(help="Simulator seed [TICKVAULT_SEED]")] = None,
) -> None:
    """Fill history with simulated past sessions (for training and history-aware features on a new
    installation); days that already hold ticks are left alone."""
    from tickvault.domain.events import B3_TZ
    from tickvault.domain.timeparse import parse_time
    from tickvault.sources.backfill import backfill as fill
    from tickvault.store.api import Store
    from tickvault.store.connection import Connection

    with _errors():
        settings = _settings(ctx, symbols=symbols, seed=seed)
        end = parse_time(before, field="--before").astimezone(B3_TZ).date() if before is not None else None
        with Connection.open(settings) as conn:
            conn.check()
            result = fill(
                Store(conn.client("backfill")), settings.symbols, days, before=end, seed=settings.seed
            )
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
    from tickvault.store.api import Store
    from tickvault.store.connection import Connection

    with _errors():
        settings = _settings(ctx)
        with Connection.open(settings) as conn:
            conn.check()
            removed = Store(conn.client("cleanup")).cleanup(days)
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
