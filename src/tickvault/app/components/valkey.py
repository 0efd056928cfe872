"""The run's Valkey connection and the recorder's store: opened first, closed last."""

from __future__ import annotations

import socket

from tickvault.app.components.base import SummaryPart, Wiring
from tickvault.store.api import Store
from tickvault.store.connection import Connection


class Valkey:
    name = "valkey"

    def __init__(self, wiring: Wiring) -> None:
        self.wiring = wiring

    def start(self) -> None:
        w, s = self.wiring, self.wiring.settings
        if not s.valkey_enabled:
            return
        connection = Connection.open(s)
        try:
            connection.check()
        except Exception:
            connection.close()
            raise
        # one name per data folder: a restarted recorder takes over its streams at once
        name = f"recorder@{socket.gethostname()}:{s.data_dir.resolve()}"
        if w.record_only:  # one recorder per symbol group: its own writer name
            name += f"[{','.join(w.record_only)}]"
        w.connection = connection
        w.store = Store(connection.client("recorder"), connection.keys, writer_name=name)

    def stop(self) -> SummaryPart | None:
        connection = self.wiring.connection
        if connection is None:
            return None
        connection.close()
        return {"where": connection.where}

    def counters(self) -> dict[str, int]:
        return {}
