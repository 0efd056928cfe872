"""`tickvault monitor` and `tickvault web`: the terminal and web dashboards, reading Valkey only."""

from __future__ import annotations

import contextlib
import sys
import threading
from typing import Annotated

import typer
from rich.console import Console
from rich.live import Live

from tickvault.app.commands.support import Opt, errors, hold, open_store, settings_of, stop_on_sigterm


def monitor(
    ctx: typer.Context,
    symbols: Annotated[str | None, Opt(help="Comma-separated symbols [MONITOR_SYMBOLS]")] = None,
    once: Annotated[bool, Opt("--once", help="Print one frame and exit")] = False,
    interval: Annotated[float, Opt(help="Seconds between refreshes", min=0.1)] = 1.0,
) -> None:
    """Live market and pipeline health from Valkey (runs on any machine that reaches the server)."""
    import time

    from tickvault.app.monitor import gather, render

    with errors():
        settings = settings_of(ctx, monitor_symbols=symbols)
        # unchecked: an unreachable server is a red frame that recovers, not an exit
        with (
            open_store(settings, "monitor", check=False) as (store, where),
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

    with errors():
        settings = settings_of(ctx, monitor_symbols=symbols, web_host=web_host, web_port=web_port)
        check_bind(settings.web_host, token_of(settings))  # before anything connects
        stop = threading.Event()
        stop_on_sigterm(stop)
        with Connection.open(settings) as conn:  # like `monitor`: Valkey down is shown, not fatal
            server = WebServer.from_settings(
                settings,
                Store(conn.client("web"), conn.keys),
                symbols=settings.monitor_symbols,
                where=conn.where,
            )
            server.start()
            try:
                hold(stop, f"tickvault web: {server.url} reading {conn.where}  Ctrl+C to stop")
            finally:
                server.stop()
