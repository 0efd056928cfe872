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
  refused by Valkey as "equal or smaller" and counted as a duplicate avoided;
- an entry that does not decode is counted, logged and acknowledged.
The lease, the group, the claim and the loop are `LeasedWorker`'s (leased.py).
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass

import msgspec

from tickvault.domain.events import Features, Prediction, Signal, from_fields, to_fields
from tickvault.errors import DataError
from tickvault.ml.decisions import Model, decide
from tickvault.store.api import Store
from tickvault.store.cluster import transaction
from tickvault.workers.leased import Entry, LeasedWorker, WorkerStats

log = logging.getLogger("tickvault.predictor")

GROUP = "predictors"


@dataclass
class PredictorStats(WorkerStats):
    predicted: int = 0
    duplicates: int = 0
    rejected: int = 0  # features entries that do not decode: acknowledged without a prediction


class PredictorWorker(LeasedWorker[None]):
    """Per symbol it keeps nothing between entries: each features entry is predicted on its own."""

    group = GROUP
    log = log
    COUNTERS = {
        "predicted": "predicted", "claimed": "predictions_claimed", "duplicates": "prediction_duplicates",
        "rejected": "predictions_rejected", "errors": "prediction_errors", "outages": "prediction_outages",
    }  # fmt: skip
    stats: PredictorStats

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
        super().__init__(
            store, symbols, PredictorStats(), name=name or f"predictor-{uuid.uuid4().hex[:8]}",
            lease_key=store.keys.predictor_lease, lease_ms=lease_ms, batch=batch,
        )  # fmt: skip
        self.model = model
        self.threshold = threshold

    def stream(self, symbol: str) -> str:
        return self.keys.features(symbol)

    def take(self, symbol: str) -> None:
        return None  # what a previous owner left pending is claimed and handled first (LeasedWorker)

    def handle(self, symbol: str, entries: list[Entry]) -> None:
        stream = self.keys.features(symbol)
        for entry_id, fields in entries:
            try:
                features = from_fields({k.decode(): v.decode() for k, v in fields.items()}, Features)
            except (DataError, msgspec.MsgspecError, UnicodeDecodeError) as exc:
                # bad data written by someone else: retrying it would stop the symbol for good
                self.stats.rejected += 1
                log.warning("%s: features entry %s of %s refused: %s", self.name, entry_id, symbol, exc)
                self.client.xack(stream, GROUP, entry_id)
                continue
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
            pipe.xadd(self.keys.predictions(symbol), to_fields(prediction), id=entry_id)
            pipe.xadd(self.keys.signals(symbol), to_fields(signal), id=entry_id)
            pipe.xack(stream, GROUP, entry_id)
            results = pipe.execute(raise_on_error=False)
            refused = [r for r in results[:2] if isinstance(r, Exception)]
            if refused and all("equal or smaller" in str(r) for r in refused):
                self.stats.duplicates += 1
            elif refused:
                raise refused[0]
            else:
                self.stats.predicted += 1
