"""The one map from valkey-py's errors to tickvault's (store/valkey_errors.py), held against a real
server: every Store call on an unreachable server raises StoreUnavailable (never "no data"), a
refused request raises StoreError with the server's words, and no message carries a password."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
import valkey

from factories import BASE_MS, ticks
from tickvault.domain.events import Features, from_ms
from tickvault.errors import StoreError, StoreUnavailable
from tickvault.store.api import Store
from tickvault.store.server import ServerInfo, free_port
from tickvault.store.valkey_errors import map_valkey_errors

END = BASE_MS + 10_000
FEATURES = Features(symbol="WDOFUT", timestamp=from_ms(BASE_MS), timestamp_ms=BASE_MS, values={"x": 1.0})

# every public Store call that talks to Valkey, with arguments
CALLS: dict[str, Callable[[Store], Any]] = {
    "wait_durable": lambda s: s.wait_durable(100),
    "append_ticks": lambda s: s.append_ticks(ticks(2)),
    "columns": lambda s: s.columns("WDOFUT", BASE_MS, END),
    "ticks": lambda s: s.ticks("WDOFUT", BASE_MS, END),
    "ticks of several symbols": lambda s: s.ticks(["WDOFUT", "WINFUT"], BASE_MS, END),
    "tick_events": lambda s: s.tick_events("WDOFUT", BASE_MS, END),
    "compact": lambda s: s.compact("WDOFUT", 1000),
    "candles": lambda s: s.candles("WDOFUT", "1m", BASE_MS, END),
    "candle_stream": lambda s: s.candle_stream("WDOFUT", "1m", BASE_MS, END),
    "append_events": lambda s: s.append_events([FEATURES]),
    "features": lambda s: s.features("WDOFUT", BASE_MS, END),
    "seal": lambda s: s.seal("WDOFUT", END),
    "as_of": lambda s: s.as_of("WDOFUT", END),
    "ticks_by_seq": lambda s: s.ticks_by_seq("WDOFUT", 1, 5),
    "last_tick": lambda s: s.last_tick("WDOFUT"),
    "last_seq": lambda s: s.last_seq("WDOFUT"),
    "count": lambda s: s.count("WDOFUT"),
    "apply_retention": lambda s: s.apply_retention("WDOFUT", 1),
    "cleanup": lambda s: s.cleanup(1),
    "symbols": lambda s: s.symbols(),
}


@pytest.fixture
def dead_store() -> Iterator[Store]:
    """A store whose server is not there (a free port nobody listens on), a password in its URL."""
    client = valkey.Valkey.from_url(
        f"valkey://tv:Sekr1t-pw@127.0.0.1:{free_port()}/0", socket_connect_timeout=0.5
    )
    yield Store(client)
    client.close()


@pytest.mark.parametrize("call", list(CALLS.values()), ids=list(CALLS))
def test_every_store_call_on_an_unreachable_server_raises_store_unavailable(
    dead_store: Store, call: Callable[[Store], Any]
) -> None:
    with pytest.raises(StoreUnavailable) as info:
        call(dead_store)
    message = str(info.value)
    assert message.startswith("valkey unreachable: "), message
    assert "Sekr1t-pw" not in message
    assert isinstance(info.value.__cause__, valkey.ConnectionError)


def test_a_refused_request_is_a_store_error_in_the_servers_words(
    store: Store, valkey_client: valkey.Valkey
) -> None:
    valkey_client.set(store.keys.ticks("WDOFUT"), "not a stream")
    with pytest.raises(StoreError) as info:
        store.count("WDOFUT")
    assert type(info.value) is StoreError  # the server answered: not StoreUnavailable
    assert str(info.value) == "WRONGTYPE Operation against a key holding the wrong kind of value"
    assert isinstance(info.value.__cause__, valkey.ResponseError)


def test_a_wrong_password_is_unavailable_and_not_echoed(
    valkey_server: ServerInfo, valkey_client: valkey.Valkey
) -> None:
    valkey_client.execute_command("ACL", "SETUSER", "tv3", "on", ">right-pass", "~*", "+@all")
    client = valkey.Valkey.from_url(f"valkey://tv3:Wr0ng-Pass@{valkey_server.host}:{valkey_server.port}/0")
    try:
        with pytest.raises(StoreUnavailable) as info:
            Store(client).symbols()
        message = str(info.value)
        assert message.startswith("valkey unreachable: ") and "Wr0ng-Pass" not in message
        assert isinstance(info.value.__cause__, valkey.AuthenticationError)
    finally:
        client.close()
        valkey_client.execute_command("ACL", "DELUSER", "tv3")


def test_only_valkey_errors_are_mapped() -> None:
    with pytest.raises(ValueError, match="not ours"), map_valkey_errors():
        raise ValueError("not ours")

    @map_valkey_errors()
    def timed_out() -> None:
        raise valkey.TimeoutError("Timeout reading from 127.0.0.1:1")

    with pytest.raises(StoreUnavailable, match="^valkey unreachable: Timeout reading from 127.0.0.1:1$"):
        timed_out()
    with pytest.raises(StoreUnavailable):
        timed_out()  # a decorated function maps on every call, not just the first
