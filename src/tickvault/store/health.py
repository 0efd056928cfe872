"""Health reporting: a running component writes its counters to `tv:health:{component}` every second,
so `tickvault monitor` shows the pipeline from any machine that reaches Valkey.

The hash expires `HEALTH_TTL_S` after the last write, so a dead process's health disappears on its
own; a clean stop deletes it at once. Besides the counters, the hash holds `at` (unix seconds of the
write). A component that measures its own bus->store lag reports it as `store_lag_ms`.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from datetime import timedelta

import valkey

from tickvault.domain.keys import KeySpace
from tickvault.store.cluster import is_cluster, transaction

log = logging.getLogger("tickvault.health")

HEALTH_TTL_S = 10


class HealthReporter:
    """Writes `counters()` to `tv:health:{component}` now and every `interval` s (expiring after 10 s)."""

    def __init__(
        self,
        client: valkey.Valkey,
        component: str,
        counters: Callable[[], dict[str, int]],
        interval: float = 1.0,
        keys: KeySpace | None = None,
    ) -> None:
        self.client = client
        self.key = (keys or KeySpace(cluster=is_cluster(client))).health(component)
        self.counters = counters
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="health", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def report(self) -> None:
        values = {k: int(v) for k, v in self.counters().items()}
        # replaced whole, in one transaction: a counter the component no longer has must not linger
        pipe = transaction(self.client, self.key)
        pipe.delete(self.key)
        pipe.hset(self.key, mapping={**values, "at": int(time.time())})
        pipe.expire(self.key, timedelta(seconds=HEALTH_TTL_S))
        pipe.execute()

    def _run(self) -> None:
        while True:
            try:
                self.report()
            except Exception as exc:  # noqa: BLE001 - health must never take a component down
                log.debug("health not reported: %s", exc)
            if self._stop.wait(self.interval):
                return

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)
        with contextlib.suppress(valkey.ValkeyError):
            self.client.delete(self.key)
