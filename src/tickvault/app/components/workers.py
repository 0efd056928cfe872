"""The leased workers as components: candles (in the whole system and `--only candles`), feature
workers (`--only features`) and predictor workers (`--only predictor`), each on its own thread with
its own stop. They follow streams in Valkey, so they stop after the recorder: they read to the end
of what it wrote, then stop."""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable
from typing import Any

from tickvault.app.components.base import SummaryPart, Wiring, spawn
from tickvault.app.components.core_flow import feature_config
from tickvault.errors import ConfigError
from tickvault.ml.decisions import load_model, model_covers
from tickvault.store.api import Store
from tickvault.store.connection import Connection
from tickvault.workers.candle_worker import CandleWorker
from tickvault.workers.feature_worker import FeatureWorker
from tickvault.workers.leased import LeasedWorker
from tickvault.workers.predictor_worker import PredictorWorker

log = logging.getLogger("tickvault.system")


def _who(kind: str) -> str:
    return f"{kind}@{socket.gethostname()}:{os.getpid()}"  # who holds a lease, for operators


class Worker:
    """A leased worker built when the run starts (it needs Valkey) and run on its own thread."""

    def __init__(
        self, wiring: Wiring, name: str, needs: str, make: Callable[[Wiring, Connection], LeasedWorker[Any]]
    ) -> None:
        self.wiring = wiring
        self.name = name
        self.needs = needs  # why it cannot run without Valkey
        self.make = make
        self.worker: LeasedWorker[Any] | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if not self.wiring.needs_valkey(self.name, self.needs):
            return
        assert self.wiring.connection is not None
        self.worker = self.make(self.wiring, self.wiring.connection)
        self._thread = spawn(self.name, self.worker.run, self._stop)

    def stop(self) -> SummaryPart | None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
        return None

    def counters(self) -> dict[str, int]:
        return self.worker.counters() if self.worker is not None else {}


def candles(wiring: Wiring) -> Worker:
    def make(w: Wiring, connection: Connection) -> LeasedWorker[Any]:
        stored = w.store.symbols() if w.store else ()
        return CandleWorker(
            Store(connection.client("candles"), connection.keys),
            tuple(dict.fromkeys((*w.settings.symbols, *stored))),
            name=_who("candles"),
            lease_ms=5_000,  # several `run --only candles` share the symbols
        )

    return Worker(wiring, "candles", "the candle worker needs Valkey", make)


def feature_workers(wiring: Wiring) -> Worker:
    """One of several feature workers sharing the symbols (see feature_worker.py)."""

    def make(w: Wiring, connection: Connection) -> LeasedWorker[Any]:
        return FeatureWorker(
            Store(connection.client("features"), connection.keys),
            w.settings.symbols,
            feature_config(w.settings),
            name=_who("features"),
        )

    return Worker(wiring, "features", "feature workers read the tick streams in Valkey", make)


def predictor_workers(wiring: Wiring) -> Worker:
    """One of several predictor processes sharing the symbols (see predictor_worker.py)."""

    def make(w: Wiring, connection: Connection) -> LeasedWorker[Any]:
        s = w.settings
        model = load_model(s.model_file)
        if model is None:
            raise ConfigError(
                "TICKVAULT_MODEL", str(s.model_file), "does not exist; run `tickvault train` first"
            )
        symbols = tuple(sym for sym in s.symbols if model_covers(model, sym))
        if not symbols:
            raise ConfigError(
                "TICKVAULT_SYMBOLS", ",".join(s.symbols), f"none is a symbol of model {model.name}"
            )
        if len(symbols) < len(s.symbols):
            log.warning("model %s predicts only %s", model.name, ",".join(symbols))
        return PredictorWorker(
            Store(connection.client("predictor"), connection.keys),
            model,
            symbols,
            threshold=s.signal_threshold,
        )

    return Worker(wiring, "predictor", "predictor workers read the features streams in Valkey", make)
