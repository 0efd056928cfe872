"""The dashboard's page (`/`), streamed with its first view.

The page's head goes out at once, so the browser fetches the CSS, the chart library and the script
meanwhile; the script runs while the server reads the first view; then the view follows as a JSON
data block (never run as a script), and the page draws without two more requests in series after
its script ran (/api/meta, then /api/view: on a busy machine each costs a page load hundreds of ms).
What the block holds is what those two requests would return, by the script's own rules: the symbol
named in the address if the dashboard knows it, else the first; the timeframe likewise, else 1m.
"""

from __future__ import annotations

import contextlib
import json
import logging
from importlib import metadata
from pathlib import Path
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from tickvault.analytics.candles import TIMEFRAMES
from tickvault.app.web.panels import BookSource, Runner, moment
from tickvault.config import redact
from tickvault.errors import DataError, StoreError
from tickvault.store.api import Store

log = logging.getLogger("tickvault.web")

BOOT_MARK = "<!--boot-->"  # where index.html takes its first view


def _version() -> str:
    try:
        return metadata.version("tickvault")
    except metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return "dev"


def boot_block(data: dict[str, Any]) -> bytes:
    """`data` as a JSON data block in the page (never run as a script): every `<` escaped, so no
    stored text (a feature's value, say) can close the block."""
    text = json.dumps(data, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    return (
        b'<script type="application/json" id="boot">' + text.replace("<", "\\u003c").encode() + b"</script>"
    )


class Page:
    """`index.html` split at its BOOT_MARK; `response` serves it with the first view in between."""

    def __init__(
        self, template: Path, store: Store, *, symbols: tuple[str, ...], interval_ms: int, book: BookSource,
        run: Runner,
    ) -> None:  # fmt: skip
        head, mark, tail = template.read_text().partition(BOOT_MARK)
        if not mark:
            raise RuntimeError(f"{template} lacks {BOOT_MARK}")
        self.head, self.tail = head.encode(), tail.encode()
        self.store, self.symbols, self.interval_ms = store, symbols, interval_ms
        self.book, self.run = book, run

    def meta(self) -> dict[str, Any]:
        """The symbols (configured, then stored), timeframes, version: `/api/meta`."""
        stored: list[str] = []
        with contextlib.suppress(StoreError):
            stored = self.store.symbols()
        return {
            "symbols": list(dict.fromkeys((*self.symbols, *stored))),
            "timeframes": list(TIMEFRAMES),
            "version": _version(),
            "interval_ms": self.interval_ms,
        }

    def first_view(self, wanted_symbol: str | None, wanted_tf: str | None) -> bytes:
        info = self.meta()
        listed: list[str] = info["symbols"]
        symbol = wanted_symbol if wanted_symbol in listed else listed[0] if listed else None
        tf = wanted_tf if wanted_tf in TIMEFRAMES else "1m"
        data: dict[str, Any] = {"meta": info, "view": None}
        try:
            if symbol is not None:
                data["view"] = moment(self.store, symbol, tf, None, self.book, self.run)
        except (DataError, StoreError) as exc:  # the script asks /api/view itself, and shows why
            data["error"] = redact("VALKEY_URL", str(exc))
        return boot_block(data)

    async def response(self, request: Request) -> Response:
        wanted = request.query_params

        async def body() -> Any:
            yield self.head
            try:
                yield await run_in_threadpool(self.first_view, wanted.get("symbol"), wanted.get("tf"))
            except Exception:  # noqa: BLE001 - the head is sent: the script asks /api/view instead
                log.exception("web: the page's first view failed")
            yield self.tail

        return StreamingResponse(body(), media_type="text/html; charset=utf-8",
                                 headers={"cache-control": "no-store"})  # fmt: skip
