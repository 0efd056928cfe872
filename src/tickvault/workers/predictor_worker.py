"""Predictor workers: several processes share the symbols' feature streams, each symbol owned by one
worker at a time, handed over without loss or duplicates when a worker dies.

Why ownership and not free load-balancing: predictions go to append-only streams whose ids are the
features' exchange times, so a symbol's outputs must be written in order; two workers writing one
symbol would refuse each other's older ids. So each symbol has a lease (`tv:predictor:{SYMBOL}`,
renewed while the worker lives) and a consumer group `predictors` on `stream:features:{SYMBOL}`:
- the owner reads new entries with XREADGROUP, writes the prediction and the signal with the
  features entry's own id and XACKs the entry, all in one MULTI/EXEC (nothing half-done);
- when an owner dies its lease expires; the next worker takes the symbol and first XAUTOCLAIMs the
  entries the dead one had read but not acknowledged, then goes on with new ones;
- a write whose id already exists (a repeat after a crash between EXEC and the caller seeing it) is
  refused by Valkey as "equal or smaller" and counted as a duplicate avoided.
"""

from __future__ import annotations

import logging
import threading
import uuid
from dataclasses import dataclass

import valkey

from tickvault.domain.events import Features, Prediction, Signal, from_fields, to_fields
from tickvault.store.api import Store
from tickvault.store.cluster import read_streams, transaction
from tickvault.store.leases import SymbolLeases
from tickvault.workers.core_flow import Model, decide

log = logging.getLogger("tickvault.predictor")

GROUP = "predictors"


@dataclass
class PredictorStats:
    predicted: int = 0
    claimed: int = 0
    duplicates: int = 0
    errors: int = 0


class PredictorWorker:
    def __init__(
        self,
        store: Store,
        model: Model,
        symbols: tuple[str, ...],
        *,
        name: str | None = None,
        threshold: float = 0.55,
        lease_ms: int = 5_000,
        batch: int = 500,
    ) -> None:
        self.client = store.client
        self.keys = store.keys
        self.model = model
        self.symbols = symbols
        self.name = name or f"predictor-{uuid.uuid4().hex[:8]}"
        self.threshold = threshold
        self.lease_ms = lease_ms
        self.batch = batch
        self.owned: set[str] = set()
        self.stats = PredictorStats()
        self._groups: set[str] = set()
        self.leases = SymbolLeases(self.client, self._lease_key, self.name, lease_ms)

    def _lease_key(self, symbol: str) -> str:
        return self.keys.predictor_lease(symbol)

    def _claim_symbols(self) -> None:
        """Renew the leases we hold, take free ones (a dead owner's lease has expired)."""
        held = self.leases.held(self.symbols)
        self.owned &= set(held)
        for symbol in held:
            if symbol not in self.owned:
                self.owned.add(symbol)
                self._ensure_group(symbol)
                self._take_over(symbol)

    def _ensure_group(self, symbol: str) -> None:
        stream = self.keys.features(symbol)
        if stream in self._groups:
            return
        try:
            self.client.xgroup_create(stream, GROUP, id="0", mkstream=True)
        except valkey.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._groups.add(stream)

    def _take_over(self, symbol: str) -> None:
        """Entries read by a previous owner and never acknowledged come first, in id order."""
        stream, start = self.keys.features(symbol), "0-0"
        while True:
            reply = self.client.xautoclaim(
                stream, GROUP, self.name, min_idle_time=0, start_id=start, count=self.batch
            )
            start, entries = reply[0], reply[1]
            entries = [e for e in entries if e is not None and e[1]]
            self.stats.claimed += len(entries)
            self._handle(symbol, entries)
            if start in (b"0-0", "0-0"):
                return

    def step(self, block_ms: int = 100) -> int:
        self._claim_symbols()
        if not self.owned:
            return 0
        streams = {self.keys.features(s): ">" for s in sorted(self.owned)}
        reply = read_streams(
            self.client, streams, count=self.batch, block_ms=block_ms, group=(GROUP, self.name)
        )
        done = 0
        for key, entries in reply:
            symbol = (key.decode() if isinstance(key, bytes) else key).rsplit(":", 1)[1].strip("{}")
            done += self._handle(symbol, entries)
        return done

    def _handle(self, symbol: str, entries: list[tuple[bytes, dict[bytes, bytes]]]) -> int:
        stream = self.keys.features(symbol)
        for entry_id, fields in entries:
            features = from_fields({k.decode(): v.decode() for k, v in fields.items()}, Features)
            try:
                probabilities = self.model.predict_proba_one(features.values)
            except Exception:
                self.stats.errors += 1
                log.exception("model failed on %s %s; acknowledged without a prediction", symbol, entry_id)
                self.client.xack(stream, GROUP, entry_id)
                continue
            action, confidence = decide(probabilities, self.threshold)
            stamp = {"symbol": symbol, "timestamp": features.timestamp, "timestamp_ms": features.timestamp_ms}
            prediction = Prediction(**stamp, model=self.model.name, probabilities=probabilities)  # type: ignore[arg-type]
            signal = Signal(**stamp, action=action, confidence=confidence, model=self.model.name)  # type: ignore[arg-type]
            pipe = transaction(self.client, stream)
            pipe.xadd(self.keys.predictions(symbol), to_fields(prediction), id=entry_id)  # type: ignore[arg-type]
            pipe.xadd(self.keys.signals(symbol), to_fields(signal), id=entry_id)  # type: ignore[arg-type]
            pipe.xack(stream, GROUP, entry_id)
            results = pipe.execute(raise_on_error=False)
            refused = [r for r in results[:2] if isinstance(r, Exception)]
            if refused and all("equal or smaller" in str(r) for r in refused):
                self.stats.duplicates += 1
            elif refused:
                raise refused[0]
            else:
                self.stats.predicted += 1
        return len(entries)

    def release(self) -> None:
        """A clean stop hands the symbols over at once instead of after the lease expires."""
        self.leases.release(self.owned)
        self.owned.clear()

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                self.step()
            except Exception as exc:  # noqa: BLE001 - a long-running worker logs and retries
                self.stats.errors += 1
                log.warning("predictor %s: %s; retrying", self.name, exc)
                stop.wait(0.5)
        self.release()
