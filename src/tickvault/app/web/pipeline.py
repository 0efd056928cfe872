"""The dashboard's pipeline-health panel: `tickvault monitor`'s snapshot (monitor.gather, the
`tv:health:*` hashes every running component refreshes) turned into what the page shows, with a
plain status:

- DISCONNECTED: Valkey cannot be reached (the page keeps its last data, marked as such);
- DEGRADED: connected, but something is wrong now (a component stopped beating, the recorder
  lags, writes fail or spill to disk, ticks were lost since the last look, or the running system
  says so), each reason listed;
- IDLE: connected, and no component reports health (nothing runs against this Valkey);
- LIVE: otherwise.

Each status follows the facts of the last second, so it recovers by itself.
"""

from __future__ import annotations

import time
from collections import Counter
from datetime import datetime
from typing import Any

from tickvault.app.monitor import MonitorSnapshot
from tickvault.config import redact
from tickvault.domain.events import B3_TZ
from tickvault.store.api import Store

STALE_S = 3.5  # components report every second; three missed beats mean it is stuck or gone
LAG_DEGRADED_MS = 2_000
DEAD_LETTERS_READ = 500
_COUNTERS = ("generated", "stored", "gaps", "recovered", "unrecovered", "rejected", "buffered", "spilled",
             "write_errors", "duplicates", "late")  # fmt: skip
_GROWING_IS_BAD = {
    "unrecovered": "ticks lost",
    "write_errors": "failed writes",
    "spilled": "ticks spilled to disk",
}


class PipelineHealth:
    """Successive snapshots -> the panel's values (rates need the previous snapshot)."""

    def __init__(self, where: str = "") -> None:
        self.where = where
        self._previous: MonitorSnapshot | None = None
        self._reasons: tuple[int, dict[str, int]] = (-1, {})  # rejected total they were read at

    def view(self, snap: MonitorSnapshot, store: Store, problems: list[str]) -> dict[str, Any]:
        previous, self._previous = self._previous, snap
        base: dict[str, Any] = {"where": self.where, "checked_at": datetime.now(B3_TZ).strftime("%H:%M:%S")}
        if not snap.connected:
            return {
                **base,
                "status": "DISCONNECTED",
                "reasons": [],
                "error": redact("VALKEY_URL", snap.error),
            }
        h = snap.health
        counters = {name: h.get(name, 0) for name in _COUNTERS}
        now = time.time()
        ages = {name: max(0.0, now - at) for name, at in snap.heartbeats.items()}
        components = [{"name": name, "age_s": ages.get(name)} for name in snap.components]
        reasons = [str(p) for p in problems]
        reasons += [f"{name}: no heartbeat for {age:.0f} s" for name, age in ages.items() if age > STALE_S]
        if snap.lag_ms is not None and snap.lag_ms > LAG_DEGRADED_MS:
            reasons.append(f"bus→store lag {snap.lag_ms / 1000:,.1f} s")
        if previous is not None and previous.connected:
            for name, what in _GROWING_IS_BAD.items():
                grew = h.get(name, 0) - previous.health.get(name, 0)
                if grew > 0:
                    reasons.append(f"{grew:,} {what} in the last second")
        status = "DEGRADED" if reasons else "LIVE" if snap.components else "IDLE"
        return {
            **base,
            "status": status,
            "reasons": reasons,
            "counters": counters,
            "ticks_in_per_s": _rate(snap, previous, "generated"),
            "ticks_stored_per_s": snap.ticks_per_s,
            "lag_ms": snap.lag_ms,
            "memory_bytes": snap.memory_bytes,
            "components": components,
            "rejected_by_reason": self._rejected_by_reason(store, counters["rejected"]),
        }

    def _rejected_by_reason(self, store: Store, rejected: int) -> dict[str, int]:
        """Reasons of the newest rejected messages kept in the dead-letter stream (read again only
        when the rejected count moved)."""
        if rejected == self._reasons[0]:
            return self._reasons[1]
        entries = store.client.xrevrange(store.keys.dead_letters(), count=DEAD_LETTERS_READ)
        found = Counter(fields.get(b"field", b"?").decode(errors="replace") for _, fields in entries)
        self._reasons = (rejected, dict(found.most_common()))
        return self._reasons[1]


def _rate(snap: MonitorSnapshot, previous: MonitorSnapshot | None, name: str) -> float | None:
    if previous is None or not previous.connected or name not in snap.health or name not in previous.health:
        return None
    elapsed = snap.taken_at - previous.taken_at
    return (snap.health[name] - previous.health[name]) / elapsed if elapsed > 0 else None
