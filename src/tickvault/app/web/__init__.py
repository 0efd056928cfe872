"""The live web dashboard (`tickvault run` serves it, `tickvault web` alone): candles with signal
markers, the tape, the book ladder, features and prediction, pipeline health, and time travel, in
the browser. `panels` reads a moment through the Store API; `live` is the one reader that keeps the
open pages current; `pipeline` is the health panel; `server` is the Starlette app, its guard and the
uvicorn thread; `static/` is the page (plain HTML/CSS/JS, the vendored chart library: no build step,
no CDN).

Imports: like the rest of `app`, anything below it.
"""

from __future__ import annotations

from tickvault.app.web.panels import Ladder, Level, book_ladder
from tickvault.app.web.server import WebServer, check_bind

__all__ = ["Ladder", "Level", "WebServer", "book_ladder", "check_bind"]
