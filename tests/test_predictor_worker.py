"""Predictor workers sharing symbols: a worker dies holding read-but-unacknowledged entries; the
others take its symbols over and every features entry gets exactly one prediction and one signal."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from typing import Any

from conftest import wait_until
from factories import BASE_MS
from tickvault.domain.events import Features, from_ms
from tickvault.store.api import Store
from tickvault.workers.leased import LeasedWorker
from tickvault.workers.predictor_worker import GROUP, PredictorWorker

SYMBOLS = ("WDOFUT", "WINFUT", "DOLFUT", "INDFUT")
N = 300


class SignModel:
    name = "sign"

    def predict_proba_one(self, values: dict[str, Any]) -> dict[str, float]:
        up = 0.8 if (values.get("ofi_60s") or 0) > 0 else 0.1
        return {"DOWN": 0.9 - up, "FLAT": 0.1, "UP": up}


def features(symbol: str, i: int) -> Features:
    ms = BASE_MS + i * 1000
    values: dict[str, float | str | None] = {"ofi_60s": (-1) ** i * 0.5}
    return Features(symbol=symbol, timestamp=from_ms(ms), timestamp_ms=ms, values=values)


@contextlib.contextmanager
def running(worker: LeasedWorker[Any]) -> Iterator[threading.Thread]:
    stop = threading.Event()
    thread = threading.Thread(target=worker.run, args=(stop,), name="worker", daemon=True)
    thread.start()
    try:
        yield thread
    finally:
        stop.set()
        thread.join(30)


def pending(store: Store, symbol: str) -> int:
    return int(store.client.xpending(store.keys.features(symbol), GROUP)["pending"])


def test_a_dead_workers_symbols_are_taken_over_without_loss_or_duplicates(store: Store) -> None:
    store.append_events([features(s, i) for s in SYMBOLS for i in range(N)])
    dying = PredictorWorker(store, SignModel(), SYMBOLS, name="dying", lease_ms=300)
    dying._claim_symbols()
    assert set(dying.owned) == set(SYMBOLS)  # first come, takes everything
    reply = store.client.xreadgroup(GROUP, "dying", {store.keys.features(s): ">" for s in SYMBOLS}, count=50)
    for key, entries in reply:  # half a batch done, then SIGKILL: 30 entries per symbol stay pending
        dying.handle(key.decode().rsplit(":", 1)[1], entries[:20])
    pending = sum(store.client.xpending(store.keys.features(s), GROUP)["pending"] for s in SYMBOLS)
    assert pending == 30 * len(SYMBOLS)

    workers = [PredictorWorker(store, SignModel(), SYMBOLS, name=f"w{k}", lease_ms=300) for k in range(2)]
    deadline = time.monotonic() + 60

    def done() -> bool:
        return all(store.client.xlen(store.keys.predictions(s)) == N for s in SYMBOLS) and not any(
            store.client.xpending(store.keys.features(s), GROUP)["pending"] for s in SYMBOLS
        )

    while not done() and time.monotonic() < deadline:
        for worker in workers:
            worker.step(block_ms=20)
    assert done()
    assert sum(w.stats.claimed for w in workers) == 30 * len(SYMBOLS)
    assert sum(w.stats.predicted for w in workers) + dying.stats.predicted == N * len(SYMBOLS)
    for symbol in SYMBOLS:
        ids = [e[0] for e in store.client.xrange(store.keys.features(symbol))]
        assert [e[0] for e in store.client.xrange(store.keys.predictions(symbol))] == ids
        assert [e[0] for e in store.client.xrange(store.keys.signals(symbol))] == ids
    signals = store.signals("WDOFUT", BASE_MS, BASE_MS + N * 1000)
    assert list(signals["action"][:2]) == ["BUY", "SELL"]  # ofi +0.5 -> P(UP) 0.8; -0.5 -> P(DOWN) 0.8


def test_a_repeated_write_is_refused_not_duplicated(store: Store) -> None:
    store.append_events([features("WDOFUT", i) for i in range(5)])
    worker = PredictorWorker(store, SignModel(), ("WDOFUT",), name="w")
    while worker.step(block_ms=0):
        pass
    entries = store.client.xrange(store.keys.features("WDOFUT"))
    worker.handle("WDOFUT", entries)  # as if a crash made it run the same entries again
    assert worker.stats.duplicates == 5 and store.client.xlen(store.keys.predictions("WDOFUT")) == 5
    worker.release()
    assert store.client.get("tv:predictor:WDOFUT") is None


def test_run_only_predictor_needs_a_model(system_env: dict[str, str], tmp_path: Any) -> None:
    from typer.testing import CliRunner

    from tickvault.app.cli import app

    result = CliRunner().invoke(
        app, ["--model-path", str(tmp_path / "none.pkl"), "run", "--only", "predictor", "--no-dashboard"]
    )
    assert result.exit_code == 2 and "TICKVAULT_MODEL" in result.output and "tickvault train" in result.output


def test_an_entry_that_does_not_decode_is_counted_and_the_others_are_predicted(store: Store) -> None:
    """Someone else's bad entry in a features stream must not stop the symbol: it is refused,
    counted and acknowledged; the entries after it get their predictions."""
    stream = store.keys.features("WDOFUT")
    store.append_events([features("WDOFUT", i) for i in range(3)])
    store.client.xadd(stream, {"symbol": "WDOFUT", "timestamp_ms": "soon"}, id=f"{BASE_MS + 2500}-0")
    store.append_events([features("WDOFUT", i) for i in range(3, 6)])
    worker = PredictorWorker(store, SignModel(), ("WDOFUT",), name="w")
    while worker.step(block_ms=0):
        pass
    good = [i for i, fields in store.client.xrange(stream) if b"timestamp" in fields]
    assert len(good) == 6
    assert [e[0] for e in store.client.xrange(store.keys.predictions("WDOFUT"))] == good
    assert worker.stats.rejected == 1 and worker.counters()["predictions_rejected"] == 1
    assert store.client.xpending(stream, GROUP)["pending"] == 0


def test_a_write_refused_not_as_a_repeat_stays_pending_until_it_is_written(store: Store) -> None:
    """Something else holds the signals key (a string: every XADD to it is refused with WRONGTYPE).
    The entries stay pending and are tried again until the key is out of the way; then each gets its
    prediction and its signal. The old worker acknowledged them with the refused writes: their
    signals were lost for good."""
    signals = store.keys.signals("WDOFUT")
    store.client.set(signals, "in the way")
    store.append_events([features("WDOFUT", i) for i in range(5)])
    worker = PredictorWorker(store, SignModel(), ("WDOFUT",), name="w", max_deliveries=1_000_000)
    with running(worker):
        assert wait_until(lambda: worker.stats.errors >= 2, 30)  # refused, and tried again
        assert pending(store, "WDOFUT") == 5  # none acknowledged
        store.client.delete(signals)
        assert wait_until(lambda: store.client.xlen(signals) == 5 and pending(store, "WDOFUT") == 0, 30)
    ids = [e[0] for e in store.client.xrange(store.keys.features("WDOFUT"))]
    assert [e[0] for e in store.client.xrange(store.keys.predictions("WDOFUT"))] == ids
    assert [e[0] for e in store.client.xrange(signals)] == ids
    assert worker.stats.dead_lettered == 0 and store.client.xlen(store.keys.dead_letters()) == 0


def test_an_entry_refused_on_every_delivery_is_dead_lettered_and_the_symbol_goes_on(store: Store) -> None:
    """A refusal that does not go away (the predictions key is a string) must not stop the symbol:
    on its third delivery each entry is kept in the dead-letter stream with the reason, counted and
    acknowledged; the entries after the key is fixed are predicted."""
    predictions = store.keys.predictions("WDOFUT")
    store.client.set(predictions, "in the way")
    store.append_events([features("WDOFUT", i) for i in range(3)])
    worker = PredictorWorker(store, SignModel(), ("WDOFUT",), name="w", max_deliveries=3)
    with running(worker):
        assert wait_until(lambda: worker.stats.dead_lettered == 3 and pending(store, "WDOFUT") == 0, 30)
        store.client.delete(predictions)
        store.append_events([features("WDOFUT", i) for i in range(3, 5)])
        assert wait_until(lambda: store.client.xlen(predictions) == 2 and pending(store, "WDOFUT") == 0, 30)
    ids = [e[0] for e in store.client.xrange(store.keys.features("WDOFUT"))]
    assert [e[0] for e in store.client.xrange(predictions)] == ids[3:]
    dead = [fields for _, fields in store.client.xrange(store.keys.dead_letters())]
    assert [f[b"entry"] for f in dead] == ids[:3]
    assert all(f[b"field"] == b"prediction_write" for f in dead)
    assert all(b"after 3 deliveries" in f[b"reason"] and b"WRONGTYPE" in f[b"reason"] for f in dead), dead
    assert worker.counters()["predictions_dead_lettered"] == 3 and worker.stats.predicted == 2
