"""Predictor workers: several processes share the symbols' feature streams, each symbol owned by one
worker at a time, handed over without loss or duplicates when a worker dies.

Why ownership and not free load-balancing: predictions go to append-only streams whose ids are the
features' exchange times, so a symbol's outputs must be written in order; two workers writing one
symbol would refuse each other's older ids. So each symbol has a lease (`tv:predictor:{SYMBOL}`,
renewed while the worker lives) and a consumer group `predictors` on `stream:features:{SYMBOL}`:
- the owner reads new entries with XREADGROUP, writes the prediction and the signal with the
  features entry's own id in one MULTI/EXEC, and XACKs the entries once their writes are known to be
  done (one XACK per batch): a crash in between leaves them pending, and their writes come back as
  repeats, which acknowledges them;
- when an owner dies its lease expires; the next worker takes the symbol and first XAUTOCLAIMs the
  entries the dead one had read but not acknowledged, then goes on with new ones;
- a write whose id already exists (a repeat after a crash between EXEC and the caller seeing it) is
  refused by Valkey as "equal or smaller" and counted as a duplicate avoided;
- a write refused for any other reason (a key of the wrong type, Valkey out of memory or read-only)
  leaves the entry pending: the step fails, and the base's retry claims it and writes it again, in
  order (nothing after it is written first, which would make its id unwritable). An entry refused on
  its `max_deliveries`-th delivery (XPENDING's count) is dead-lettered instead (`tv:deadletter`, field
  `prediction_write`), counted (`predictions_dead_lettered`) and acknowledged, so one bad key cannot
  stop the symbol for good; a refusal that also refuses the dead letter (memory, read-only) is
  retried on (this rule is `LeasedWorker`'s, shared with the feature worker);
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
from tickvault.workers.leased import MAX_DELIVERIES, Entry, LeasedWorker, WorkerStats, is_repeat, refusal

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
        "dead_lettered": "predictions_dead_lettered",
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
        max_deliveries: int = MAX_DELIVERIES,
    ) -> None:
        super().__init__(
            store, symbols, PredictorStats(), name=name or f"predictor-{uuid.uuid4().hex[:8]}",
            lease_key=store.keys.predictor_lease, lease_ms=lease_ms, batch=batch,
            max_deliveries=max_deliveries,
        )  # fmt: skip
        self.model = model
        self.threshold = threshold

    def stream(self, symbol: str) -> str:
        return self.keys.features(symbol)

    def take(self, symbol: str) -> None:
        return None  # what a previous owner left pending is claimed and handled first (LeasedWorker)

    def handle(self, symbol: str, entries: list[Entry]) -> None:
        """Predict each entry in order; acknowledge those done (written, repeated, rejected, dead-
        lettered), up to the first whose write must be tried again (raised: it and those after it
        stay pending)."""
        stream = self.keys.features(symbol)
        done: list[bytes] = []
        try:
            for entry_id, fields in entries:
                self._predict(symbol, stream, entry_id, fields)
                done.append(entry_id)
        finally:
            self.ack(symbol, done)

    def _predict(self, symbol: str, stream: str, entry_id: bytes, fields: dict[bytes, bytes]) -> None:
        try:
            features = from_fields({k.decode(): v.decode() for k, v in fields.items()}, Features)
        except (DataError, msgspec.MsgspecError, UnicodeDecodeError) as exc:
            # bad data written by someone else: retrying it would stop the symbol for good
            self.stats.rejected += 1
            log.warning("%s: features entry %s of %s refused: %s", self.name, entry_id, symbol, exc)
            return
        try:
            probabilities = self.model.predict_proba_one(features.values)
        except Exception:
            self.stats.errors += 1
            log.exception("model failed on %s %s; acknowledged without a prediction", symbol, entry_id)
            return
        action, confidence = decide(probabilities, self.threshold)
        stamp = {"symbol": symbol, "timestamp": features.timestamp, "timestamp_ms": features.timestamp_ms}
        prediction = Prediction(**stamp, model=self.model.name, probabilities=probabilities)  # type: ignore[arg-type]
        signal = Signal(**stamp, action=action, confidence=confidence, model=self.model.name)  # type: ignore[arg-type]
        pipe = transaction(self.client, stream)
        pipe.xadd(self.keys.predictions(symbol), to_fields(prediction), id=entry_id)
        pipe.xadd(self.keys.signals(symbol), to_fields(signal), id=entry_id)
        results = pipe.execute(raise_on_error=False)
        failed = [exc for exc in map(refusal, results) if exc is not None]
        if failed:
            payload = msgspec.json.encode({k.decode(errors="replace"): v.decode(errors="replace")
                                           for k, v in fields.items()})  # fmt: skip
            self.retry_or_dead_letter(
                symbol, entry_id, failed[0], what="prediction", field="prediction_write", payload=payload
            )
        elif any(map(is_repeat, results)):
            self.stats.duplicates += 1
        else:
            self.stats.predicted += 1
