"""What every command shares: the user's lines on stderr, errors as one line and an exit code, the
settings (each with its flag) and the store a command opens, the wait of a foreground server."""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
import signal
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console

from tickvault.app.logs import setup_logging
from tickvault.config import Settings, load_settings
from tickvault.errors import ConfigError, DataError, StoreError, TickvaultError

if TYPE_CHECKING:
    from tickvault.store.api import Store


err_console = Console(stderr=True, soft_wrap=True)
log = logging.getLogger("tickvault.cli")
_json_logs = False  # LOG_FORMAT=json: what the CLI says on stderr goes out as log events too


def say(text: str, level: int = logging.INFO) -> None:
    """A line for the user on stderr; with LOG_FORMAT=json an event like every other log line."""
    if _json_logs:
        log.log(level, "%s", text)
    else:
        err_console.print(text, markup=False, highlight=False)


@contextlib.contextmanager
def errors() -> Iterator[None]:
    """Turn tickvault errors into one clear line and an exit code (2 = bad input, 1 = failure)."""
    try:
        yield
    except (ConfigError, DataError) as exc:
        say(f"tickvault: error: {exc}", logging.ERROR)
        raise typer.Exit(2) from None
    except (StoreError, TickvaultError) as exc:
        say(f"tickvault: error: {exc}", logging.ERROR)
        raise typer.Exit(1) from None


def settings_of(ctx: typer.Context, **more: Any) -> Settings:
    """The settings of a command: its flags (in `ctx.obj`) and `more` beat the environment."""
    overrides = dict(ctx.obj or {})
    overrides.update({k: v for k, v in more.items() if v is not None})
    settings = load_settings(**overrides)
    setup_logging(settings.log_level, settings.log_format)
    global _json_logs
    _json_logs = settings.log_format == "json"
    return settings


@contextlib.contextmanager
def open_store(settings: Settings, role: str, *, check: bool = True) -> Iterator[tuple[Store, str]]:
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
class Flag:
    kind: type
    help: str = ""
    decls: tuple[str, ...] = ()  # default: --field-name
    min: int | None = None


# Every flag that sets a setting, by the Settings field it sets: one place for the name, the help and
# the variable it beats. The top-level command takes the shared ones; a command repeats those that
# matter to it (`@flags(...)`). Either way a given flag lands in `ctx.obj`, read by `settings_of`.
FLAGS: dict[str, Flag] = {
    "valkey_url": Flag(str, "'embedded' or valkey\\[s]://\\[user:pass@]host:port/db"),
    "valkey_host": Flag(str, "External Valkey host"),
    "valkey_port": Flag(int, "External Valkey port"),
    "valkey_password": Flag(str, "Valkey password"),
    "valkey_db": Flag(int, "Valkey database number"),
    "valkey_ca_cert": Flag(Path, "CA file for valkeys://"),
    "data_dir": Flag(Path, "Data folder; the embedded Valkey keeps DATA_DIR/valkey"),
    "zmq_host": Flag(str, "Address the ZeroMQ sockets bind to"),
    "zmq_tick_port": Flag(int),
    "zmq_book_port": Flag(int),
    "zmq_history_port": Flag(int),
    "zmq_signal_port": Flag(int),
    "zmq_replay_port": Flag(int, "Gap replay endpoint"),
    "zmq_book_replay_port": Flag(int, "Gap replay endpoint of the book frames"),
    "stream_max_len": Flag(int, "Live stream bound"),
    "stream_retention_days": Flag(int),
    "time_travel_enabled": Flag(bool, decls=("--time-travel/--no-time-travel",)),
    "monitor_symbols": Flag(str, "Comma-separated"),
    "log_level": Flag(str, "DEBUG, INFO, WARNING, ERROR"),
    "log_format": Flag(str, "text or json, one line per event"),
    "model_path": Flag(Path, "Model file"),
    "signal_threshold": Flag(float, "P(UP)/P(DOWN) to act"),
    "namespace": Flag(str, "Read and write under ns:NAME: keys (a replay's output), never the live data"),
    "features_interval_ms": Flag(int),
    # the ones only some commands take
    "symbols": Flag(str, "Comma-separated symbols"),
    "speed": Flag(float, "Market time per wall time; 0 = as fast as possible"),
    "seed": Flag(int, "Simulator seed"),
    "zmq_enabled": Flag(bool, "Publish on ZeroMQ", ("--zmq/--no-zmq",)),
    "zmq_consume_enabled": Flag(
        bool, "Core flow reads ticks from the bus, not in-process", ("--consume/--no-consume",)
    ),
    "valkey_enabled": Flag(bool, "Record to Valkey", ("--valkey/--no-valkey",)),
    "metrics_port": Flag(int, "Serve Prometheus metrics on 127.0.0.1:PORT/metrics (0: any free port)", min=0),
    "only": Flag(str, "One component per process: source, recorder, candles, features, predictor"),
    "web_enabled": Flag(bool, "Serve the web dashboard", ("--web/--no-web",)),
    "book_enabled": Flag(
        bool,
        "The source's order book (sim, ProfitDLL, book file, store): published, recorded, in features",
        ("--book/--no-book",),
    ),
    "profit_book": Flag(str, "ProfitDLL's book: offer (by order), price (by level) or none"),
    "web_port": Flag(int, "Web dashboard port, 0: any free port", min=0),
    "web_host": Flag(str, "Web dashboard address (beyond loopback it needs WEB_TOKEN)"),
}
SHARED = tuple(FLAGS)[: tuple(FLAGS).index("features_interval_ms") + 1]  # on the top-level command
RUN = ("namespace", "symbols", "speed", "seed", "zmq_enabled", "zmq_consume_enabled", "valkey_enabled",
       "metrics_port", "only", "web_enabled", "web_port", "web_host", "book_enabled",
       "profit_book")  # fmt: skip


def option(field: str) -> inspect.Parameter:
    flag = FLAGS[field]
    env = Settings.model_fields[field].validation_alias
    option = Opt(*flag.decls, help=f"{flag.help} [{env}]".strip(), min=flag.min)
    return inspect.Parameter(
        field, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Annotated[flag.kind | None, option]
    )


def flags(*fields: str) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Give a command the flags of these settings; the ones given join the overrides in `ctx.obj`."""

    def add(command: Callable[..., None]) -> Callable[..., None]:
        signature = inspect.signature(command, eval_str=True)

        @functools.wraps(command)
        def with_flags(ctx: typer.Context, **kwargs: Any) -> None:
            given = {field: kwargs.pop(field) for field in fields}
            ctx.obj = {**(ctx.obj or {}), **{k: v for k, v in given.items() if v is not None}}
            command(ctx, **kwargs)

        params = [*signature.parameters.values(), *(option(field) for field in fields)]
        with_flags.__signature__ = signature.replace(parameters=params)  # type: ignore[attr-defined]
        return with_flags

    return add


def stop_on_sigterm(stop: threading.Event) -> None:
    """SIGTERM sets `stop`, like Ctrl+C ends a foreground wait (only the main thread may install it)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda *_: stop.set())


def hold(stop: threading.Event, ready: str) -> None:
    """Say `ready`, then wait for Ctrl+C or SIGTERM (a foreground server)."""
    say(ready)
    try:
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
