"""`tickvault run`: the whole system in this process, its dashboard, its summary and exit code."""

from __future__ import annotations

import logging
import sys
import threading
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.live import Live
from rich.table import Table

from tickvault.app.commands.support import RUN, Opt, errors, flags, say, settings_of, stop_on_sigterm
from tickvault.config import Settings
from tickvault.errors import ConfigError, DataError


@flags(*RUN)
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

    with errors():
        symbols = ctx.obj.get("symbols")  # given: what a recorder records; else a replayed file's own
        spec = SourceSpec.parse(source, symbols)
        settings = settings_of(ctx, symbols=spec.symbols)
        _refuse_an_open_page(settings)
        view, stop = LiveView(settings.symbols), threading.Event()
        system = System(
            settings, handlers=[view], source=spec.factory(settings, stop),
            record_only=settings.symbols if settings.only == "recorder" and symbols else None,
            hold_back=False if spec.live else None, warm_up=True if spec.live else None,
            book=spec.makes_book_with(settings),
        )  # fmt: skip
        system.stop_event = stop  # the DLL's tick queue ends when the system stops
        stop_on_sigterm(stop)
        system.start()
        for level, line in [(logging.INFO, system.describe()), *system.notices]:
            say(line, level)
        _until_stopped(system, view, duration, dashboard and settings.only is None)
        say("stopping: draining bus and recorder ...")
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
        say(f"tickvault: error: source failed: {source_error}", logging.ERROR)
        raise typer.Exit(2 if isinstance(source_error, ConfigError | DataError) else 1)
    if not drained:
        raise typer.Exit(1)


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
