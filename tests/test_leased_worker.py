"""The loop every leased worker shares (workers/leased.py), shown on a predictor worker against a real
Valkey: an outage is logged once each way and the work goes on after it; what a failed step had read
is taken up again; the tick writer holds its symbols by the same leases."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
import valkey

from conftest import wait_until
from factories import tick
from test_predictor_worker import SignModel, features, running
from tickvault.domain.events import to_fields
from tickvault.errors import StoreError
from tickvault.store.api import Store
from tickvault.store.leases import SymbolLeases
from tickvault.store.server import EmbeddedValkey, free_port
from tickvault.store.tick_writer import TickWriter
from tickvault.workers.predictor_worker import GROUP, PredictorWorker


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextlib.contextmanager
def logged(logger: logging.Logger) -> Iterator[list[logging.LogRecord]]:
    """The records `logger` emits (its own handler: the CLI's logging config may stop propagation)."""
    handler = _Lines()
    logger.addHandler(handler)
    try:
        yield handler.records
    finally:
        logger.removeHandler(handler)


def done(store: Store, symbol: str, n: int) -> bool:
    """`n` predictions written and nothing left pending in the group."""
    groups = store.client.xinfo_groups(store.keys.features(symbol))
    pending = sum(g["pending"] for g in groups if g["name"] == GROUP.encode())
    return bool(groups and store.client.xlen(store.keys.predictions(symbol)) == n and pending == 0)


def test_an_outage_is_logged_once_when_valkey_goes_and_once_when_it_is_back(tmp_path: Path) -> None:
    server = EmbeddedValkey(tmp_path / "valkey", port=free_port())  # the same port after the restart
    info = server.ensure_running()
    client = valkey.Valkey(host=info.host, port=info.port, socket_timeout=2, socket_connect_timeout=1)
    store = Store(client)
    worker = PredictorWorker(store, SignModel(), ("WDOFUT",), name="w", lease_ms=60_000)
    try:
        store.append_events([features("WDOFUT", i) for i in range(5)])
        with logged(worker.log) as lines, running(worker) as thread:
            assert wait_until(lambda: done(store, "WDOFUT", 5), 30)
            server.stop()
            assert wait_until(lambda: worker.stats.errors >= 3, 60)  # it kept trying while Valkey was gone
            assert server.ensure_running().port == info.port
            store.append_events([features("WDOFUT", i) for i in range(5, 10)])
            assert wait_until(lambda: done(store, "WDOFUT", 10), 60)  # and goes on once it is back
        assert not thread.is_alive()
        said = [r.getMessage() for r in lines]
        assert len(said) == 2 and "unreachable" in said[0] and "back" in said[1], said
        assert worker.stats.outages == 1 and worker.counters()["prediction_outages"] == 1
    finally:
        client.close()
        server.stop()


def test_what_a_failed_step_had_read_is_handled_once_the_fault_is_gone(store: Store) -> None:
    """Valkey refuses writes (maxmemory reached) right after new entries arrive: the worker reads them
    and its writes fail, so they stay pending with it. Its next steps must take them up, not only
    entries newer than them."""
    client = store.client
    limit = client.config_get("maxmemory")["maxmemory"]
    worker = PredictorWorker(store, SignModel(), ("WDOFUT",), name="w")
    store.append_events([features("WDOFUT", i) for i in range(5)])
    try:
        with running(worker):
            assert wait_until(lambda: done(store, "WDOFUT", 5), 30)
            pipe = client.pipeline(transaction=True)  # new entries and the refusal of writes, at once
            for i in range(5, 10):
                event = features("WDOFUT", i)
                pipe.xadd(store.keys.features("WDOFUT"), to_fields(event), id=f"{event.timestamp_ms}-0")  # type: ignore[arg-type]
            pipe.config_set("maxmemory", 1)
            pipe.execute()
            assert wait_until(lambda: worker.stats.errors >= 1, 30)  # its write was refused
            client.config_set("maxmemory", limit)
            assert wait_until(lambda: done(store, "WDOFUT", 10), 30)
    finally:
        client.config_set("maxmemory", limit)
    ids = [e[0] for e in client.xrange(store.keys.features("WDOFUT"))]
    assert [e[0] for e in client.xrange(store.keys.predictions("WDOFUT"))] == ids
    assert worker.stats.predicted == 10


def test_the_tick_writer_holds_its_symbols_by_the_same_leases(store: Store) -> None:
    """One writer per symbol: another writer is refused while the lease is held, and writes at once
    after a clean release."""
    first, second = TickWriter(store.client, owner="first"), TickWriter(store.client, owner="second")
    assert first.write([tick(trade_id=1)]).stored == 1
    assert store.client.get(store.keys.writer_lease("WDOFUT")) == b"first"
    with pytest.raises(StoreError, match="being written by 'first'"):
        second.write([tick(trade_id=2)])
    first.flush()  # its batch is applied before the lease is handed over (a clean stop)
    first.release()
    assert second.write([tick(trade_id=2)]).stored == 1
    second.flush()
    assert store.client.get(store.keys.writer_lease("WDOFUT")) == b"second"
    assert [t.trade_id for t in store.tick_events("WDOFUT", 0, 2**42)] == [1, 2]


def test_hold_says_when_a_writer_must_reload_a_symbol(store: Store) -> None:
    """The tick and book writers' lease (`SymbolLeases.hold`): taken on a first write, renewed after,
    refused while another writer holds it, and "taken" again after a lapse another writer used or
    after the writer forgot its state: the cases where the writer must reload the symbol."""
    key = store.keys.writer_lease
    a = SymbolLeases(store.client, key, "a", 60_000, renew_every_ms=0)  # asks Valkey on every hold
    b = SymbolLeases(store.client, key, "b", 60_000, renew_every_ms=0, subject="the book of {}")
    assert a.hold("WDOFUT") is True  # nothing known of it yet
    assert a.hold("WDOFUT") is False  # renewed: ours all along
    with pytest.raises(StoreError, match="the book of WDOFUT is being written by 'a'"):
        b.hold("WDOFUT")
    store.client.delete(key("WDOFUT"))  # `a` stalls past its lease; `b` takes the symbol and writes
    assert b.hold("WDOFUT") is True
    b.release()
    assert store.client.get(key("WDOFUT")) is None
    assert a.hold("WDOFUT") is True  # taken back after a lapse
    a.forget()  # a failed write dropped its state
    assert a.hold("WDOFUT") is True and a.hold("WDOFUT") is False
    cached = SymbolLeases(store.client, key, "c", 60_000)  # the writers' own: renewal trusted a while
    assert cached.hold("WINFUT") is True
    store.client.delete(key("WINFUT"))
    assert cached.hold("WINFUT") is False and store.client.get(key("WINFUT")) is None  # not asked again
