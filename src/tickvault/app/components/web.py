"""The web dashboard of a whole run (`WEB_ENABLED`, `--web-port`): served on the run's own Valkey,
on its own thread. A taken port is a DEGRADED line, never a failed run; without Valkey there is
nothing to show, and it says so."""

from __future__ import annotations

import logging
from collections.abc import Callable

from tickvault.app.components.base import SummaryPart, Wiring
from tickvault.app.web.server import WebServer
from tickvault.errors import ConfigError
from tickvault.store.api import Store

log = logging.getLogger("tickvault.web")


class Web:
    name = "web"

    def __init__(self, wiring: Wiring, problems: Callable[[], list[str]]) -> None:
        self.wiring = wiring
        self._problems = problems
        self.server: WebServer | None = None

    def start(self) -> None:
        w = self.wiring
        if w.connection is None:
            w.notices.append((logging.WARNING, "web dashboard off: it reads Valkey, and this run has none"))
            return
        server = WebServer.from_settings(
            w.settings, Store(w.connection.client("web"), w.connection.keys), symbols=w.settings.symbols,
            where=w.connection.where, problems=self._problems,
        )  # fmt: skip
        try:
            server.start()
        except ConfigError as exc:
            w.degraded.append(f"web dashboard unavailable ({exc.reason})")
            log.error("web dashboard not served: %s", exc)
            return
        self.server = server

    @property
    def url(self) -> str | None:
        return self.server.url if self.server is not None else None

    def stop(self) -> SummaryPart | None:
        if self.server is not None:
            self.server.stop()
        return None

    def counters(self) -> dict[str, int]:
        return {}
