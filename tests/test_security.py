"""Valkey credentials: an ACL user confined to tickvault's key prefixes works and can touch nothing
else; a wrong password is one clear error, not a retry storm, and never echoes the password."""

from __future__ import annotations

import pytest
import valkey

from factories import BASE_MS, ticks
from tickvault.config import load_settings
from tickvault.connection import Connection
from tickvault.errors import StoreUnavailable
from tickvault.server import ServerInfo
from tickvault.store import Store


def connections_received(client: valkey.Valkey) -> int:
    return int(client.info("stats")["total_connections_received"])


def test_an_acl_user_limited_to_tickvault_keys(
    valkey_server: ServerInfo, valkey_client: valkey.Valkey
) -> None:
    valkey_client.execute_command(
        "ACL", "SETUSER", "tv", "on", ">tv-pass-1", "~stream:*", "~tv:*", "+@all", "-@dangerous"
    )
    try:
        settings = load_settings(
            valkey_url=f"valkey://tv:tv-pass-1@{valkey_server.host}:{valkey_server.port}/0"
        )
        with Connection.open(settings) as conn:
            conn.check()
            store = Store(conn.client("acl"))
            sent = ticks(500)
            store.append_ticks(sent)
            assert len(store.ticks("WDOFUT", BASE_MS, BASE_MS + 10_000)) == 500
            with pytest.raises(valkey.exceptions.NoPermissionError):
                conn.client("acl").set("someone-else:key", "x")
            with pytest.raises(valkey.exceptions.NoPermissionError):
                conn.client("acl").flushall()
    finally:
        valkey_client.execute_command("ACL", "DELUSER", "tv")


def test_a_wrong_password_fails_once_and_clearly(
    valkey_server: ServerInfo, valkey_client: valkey.Valkey
) -> None:
    valkey_client.execute_command("ACL", "SETUSER", "tv2", "on", ">right-pass", "~*", "+@all")
    try:
        before = connections_received(valkey_client)
        url = f"valkey://tv2:Wr0ng-Secret@{valkey_server.host}:{valkey_server.port}/0"
        with Connection.open(load_settings(valkey_url=url)) as conn, pytest.raises(StoreUnavailable) as info:
            conn.check()
        message = str(info.value)
        assert "refused the credentials" in message and "Wr0ng-Secret" not in message
        # valkey_client's own connection was open before: every new one is the check's. One, no retries.
        assert connections_received(valkey_client) - before == 1
    finally:
        valkey_client.execute_command("ACL", "DELUSER", "tv2")
