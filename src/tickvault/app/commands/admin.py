"""`tickvault cleanup`, `valkey` and `curve-keys`: the store trimmed, the embedded server (or cluster)
in the foreground, the bus's CURVE keys."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Annotated

import typer

from tickvault.app.commands.support import Opt, errors, hold, open_store, say, settings_of, stop_on_sigterm
from tickvault.config import Settings
from tickvault.errors import ConfigError


def cleanup(
    ctx: typer.Context,
    days: Annotated[float, Opt(help="Keep this many days before each symbol's newest tick", min=0.0)],
) -> None:
    """Remove ticks older than N days (counted back from each symbol's newest tick)."""
    with errors():
        settings = settings_of(ctx)
        with open_store(settings, "cleanup") as (store, _):
            removed = store.cleanup(days)
        for symbol, count in sorted(removed.items()):
            print(f"{symbol}: removed {count}")
        print(f"removed={sum(removed.values())} symbols={len(removed)}")


# -- valkey ------------------------------------------------------------------------------------------


def valkey_server(
    ctx: typer.Context,
    cluster: Annotated[
        int | None,
        Opt(help="Start N cluster-mode servers on loopback, joined into one Valkey Cluster", min=1),
    ] = None,
) -> None:
    """Run the embedded Valkey in the foreground; Ctrl+C stops it unless other tickvault processes use it."""
    from tickvault.store.connection import Connection

    with errors():
        settings = settings_of(ctx)
        if cluster is not None:
            _run_cluster(settings, cluster)
            return
        if not settings.embedded:
            raise ConfigError(
                "VALKEY_URL", settings.valkey_url, "`tickvault valkey` runs the embedded server only"
            )
        stop = threading.Event()
        stop_on_sigterm(stop)
        with Connection.open(settings) as conn:
            keeper = conn.client("keeper")
            keeper.ping()  # holds a named connection: other processes see the server is in use
            assert conn.embedded is not None
            info = conn.embedded.running()
            port = info.port if info else "?"
            hold(stop, f"embedded valkey ready: {conn.where}\n  valkey-cli -p {port}    Ctrl+C to stop")


def _run_cluster(settings: Settings, nodes: int) -> None:
    """`tickvault valkey --cluster N`: the local cluster in the foreground, its URL printed."""
    import valkey

    from tickvault.store.cluster import EmbeddedCluster
    from tickvault.store.server import client_name

    password = settings.valkey_password.get_secret_value() if settings.valkey_password else None
    local = EmbeddedCluster(settings.data_dir / "valkey-cluster", nodes, password=password)
    stop = threading.Event()
    stop_on_sigterm(stop)
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
    hold(stop, f"embedded valkey cluster ready: {nodes} nodes, data={local.data_dir}\n"
               f"  export VALKEY_URL={local.url}\n{again}  Ctrl+C to stop")  # fmt: skip
    for keeper in keepers:
        keeper.close()
    if local.release():
        say("stopped the embedded cluster (data kept)")


def curve_keys(
    folder: Annotated[
        Path, typer.Argument(help="Where to write server.key(_secret) and client.key(_secret)")
    ],
) -> None:
    """Create CURVE key pairs for a ZeroMQ bus beyond loopback (secret files are mode 0600)."""
    from tickvault.bus.curve import create_keys

    with errors():
        for name in ("server", "client"):
            public, secret = create_keys(folder, name)
            print(f"{name}: public {public}  secret {secret}")
        print("publisher: ZMQ_CURVE_SERVER_SECRET=server.key_secret; subscribers:"
              " ZMQ_CURVE_SERVER_PUBLIC=server.key, ZMQ_CURVE_CLIENT_SECRET=client.key_secret")  # fmt: skip
