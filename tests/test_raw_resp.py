"""The raw-RESP adapter (store/raw_resp.py) held against the installed valkey-py and libvalkey: every
internal it names is there and called the way it calls it, and the writer's and reader's fast paths
give the expected raw replies from the real embedded Valkey. A failure here names the internal an
upgrade changed."""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from typing import Any

import libvalkey
import pytest
import valkey
import valkey.connection
import valkey.utils

from tickvault.store import raw_resp
from tickvault.store.raw_resp import EXEC_REPLY_ON, REPLY_OFF_MULTI, RawConnection, pack
from tickvault.store.server import ServerInfo

# (the name raw_resp's docstring gives it, its owner, attribute, how raw_resp calls it: args after self)
INTERNALS: list[tuple[str, Any, str, tuple[Any, ...], dict[str, Any]]] = [
    ("ConnectionPool.get_connection", valkey.ConnectionPool, "get_connection", ("MULTI",), {}),
    ("ConnectionPool.release", valkey.ConnectionPool, "release", (object(),), {}),
    ("Connection.send_packed_command", valkey.Connection, "send_packed_command", ([b""],), {}),
    ("Connection.send_command", valkey.Connection, "send_command", ("XRANGE", "k", "-", "+"), {}),
    ("Connection.read_response", valkey.Connection, "read_response", (), {"disable_decoding": True}),
    ("Connection.disconnect", valkey.Connection, "disconnect", (), {}),
]


@pytest.mark.parametrize(
    ("name", "owner", "attribute", "args", "kwargs"), INTERNALS, ids=[i[0] for i in INTERNALS]
)
def test_the_valkey_py_internals_are_there_and_take_our_arguments(
    name: str, owner: Any, attribute: str, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> None:
    assert name in (raw_resp.__doc__ or ""), f"raw_resp's docstring must name {name}, which it relies on"
    method = getattr(owner, attribute, None)
    assert callable(method), f"valkey-py {valkey.__version__} has no {name}: store/raw_resp.py relies on it"
    try:
        inspect.signature(method).bind(None, *args, **kwargs)
    except TypeError as exc:
        pytest.fail(f"valkey-py {valkey.__version__} changed {name}{inspect.signature(method)}: {exc}")


def test_libvalkey_packs_commands_as_resp() -> None:
    assert "libvalkey.pack_command" in (raw_resp.__doc__ or "")
    got = pack(("SET", "k", b"\x00\r\n"))
    assert got == b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$3\r\n\x00\r\n\r\n", (
        f"libvalkey {libvalkey.__version__}: libvalkey.pack_command gives {got!r}"
    )


def test_replies_are_parsed_by_libvalkey() -> None:
    from valkey._parsers import _LibvalkeyParser

    assert "DefaultParser" in (raw_resp.__doc__ or "")
    assert valkey.utils.LIBVALKEY_AVAILABLE, f"valkey-py does not accept libvalkey {libvalkey.__version__}"
    assert valkey.connection.DefaultParser is _LibvalkeyParser, (
        f"valkey.connection.DefaultParser is {valkey.connection.DefaultParser.__name__}, not "
        "_LibvalkeyParser: the raw fast paths would work but lose their speed"
    )


@pytest.fixture
def decoding_client(valkey_server: ServerInfo, valkey_client: valkey.Valkey) -> Iterator[valkey.Valkey]:
    """A client that decodes replies to str: the raw path must give bytes all the same."""
    client = valkey.Valkey(host=valkey_server.host, port=valkey_server.port, decode_responses=True)
    yield client
    client.close()


def test_a_silent_transaction_answers_once_and_the_next_reply_comes_raw(
    decoding_client: valkey.Valkey,
) -> None:
    """The writer's batch: replies off, MULTI, commands, EXEC, replies on, then one command read."""
    conn = RawConnection(decoding_client)
    try:
        body = pack(("SET", "raw:a", "1")) + pack(("XADD", "raw:s", "5-1", "f", "v"))
        conn.send(REPLY_OFF_MULTI + body + EXEC_REPLY_ON + pack(("XRANGE", "raw:s", "-", "+")))
        assert conn.read() == b"OK"  # CLIENT REPLY ON's: nothing else of the transaction answers
        assert conn.read() == [[b"5-1", [b"f", b"v"]]]  # undecoded, no response callback (no dict)
    finally:
        conn.release()
    assert decoding_client.get("raw:a") == "1"  # applied; and the connection went back to the pool clean
    decoding_client.delete("raw:a", "raw:s")


def test_a_held_connection_is_ours_alone(valkey_client: valkey.Valkey) -> None:
    """The writer keeps a batch in flight while the client runs other commands: neither may read the
    other's replies."""
    valkey_client.set("raw:mine", "held")
    conn = RawConnection(valkey_client)
    try:
        conn.send_command("GET", "raw:mine")
        valkey_client.set("raw:other", "x")
        assert valkey_client.get("raw:other") == b"x"
        assert conn.read() == b"held"
    finally:
        conn.release()


def test_an_error_reply_is_raised_and_a_dropped_connection_loses_its_unread_replies(
    valkey_client: valkey.Valkey,
) -> None:
    valkey_client.set("raw:string", "x")
    conn = RawConnection(valkey_client, "XRANGE")
    try:
        conn.send_command("XRANGE", "raw:string", "-", "+")
        with pytest.raises(valkey.ResponseError, match="WRONGTYPE"):
            conn.read()
        conn.send_command("GET", "raw:string")  # never read
    finally:
        conn.disconnect()
        conn.release()
    again = RawConnection(valkey_client, "PING")
    try:
        again.send_command("PING")
        assert again.read() == b"PONG"  # not the GET's reply left over
    finally:
        again.release()
