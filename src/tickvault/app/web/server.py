"""The web dashboard's HTTP side: a small Starlette app served by uvicorn on its own thread.

Routes: `/` (the page, with its first view: see `index`), `/static/...` (its CSS and JS, and the
vendored chart library), `/api/meta` (symbols, timeframes), `/api/view` (every panel of a symbol as of
now or a past moment: timeframe switch and time travel), `/api/live` (Server-Sent Events from the
live feed) and `/api/health`.

Safety: it binds loopback unless told otherwise, and beyond loopback refuses to start without
WEB_TOKEN; with a token every request must carry it (`Authorization: Bearer TOKEN`, or the cookie
that opening `/?token=TOKEN` sets). Without a token, a request must name a loopback host (a page
elsewhere cannot reach the dashboard by rebinding a DNS name to 127.0.0.1). Nothing secret reaches
the page: Valkey is described by `Connection.where` (no password) and errors pass through
`config.redact`. A bad query parameter is a 400 naming it and why.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from datetime import datetime
from importlib import resources
from pathlib import Path
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tickvault.analytics.candles import check_timeframe
from tickvault.app.web.assets import asset_response, load_assets
from tickvault.app.web.live import INTERVAL_S, Cursor, LiveFeed
from tickvault.app.web.page import Page
from tickvault.app.web.panels import BookSource, Runner, book_ladder, moment, one_by_one
from tickvault.config import Settings, redact
from tickvault.domain.events import B3_TZ, to_ms, validate_symbol
from tickvault.domain.timeparse import parse_time
from tickvault.errors import ConfigError, DataError, StoreError
from tickvault.store.api import Store

log = logging.getLogger("tickvault.web")

STATIC = Path(str(resources.files("tickvault.app.web") / "static"))
COOKIE = "tickvault_token"
KEEPALIVE_S = 15.0
VIEW_READERS = 8  # threads making a view's reads at once (five per view)
_LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1"}
_SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    # the page's own files only: no CDN, no inline script (the chart library sets inline styles)
    (b"content-security-policy",
     b"default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
     b"connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"),
]  # fmt: skip


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a name: it may resolve to anything


def token_of(settings: Settings) -> str | None:
    return settings.web_token.get_secret_value() or None if settings.web_token is not None else None


def check_bind(host: str, token: str | None) -> None:
    """Refuse to serve beyond loopback without a token (ConfigError naming WEB_TOKEN)."""
    if not is_loopback(host) and not token:
        raise ConfigError(
            "WEB_TOKEN", None, f"is required to serve the dashboard on {host} (beyond loopback); set it"
            " to a long random string, or bind WEB_HOST=127.0.0.1"
        )  # fmt: skip


# -- query parameters ----------------------------------------------------------------------------


def _params(request: Request, allowed: Iterable[str]) -> dict[str, str]:
    known = set(allowed)
    unknown = [name for name in request.query_params if name not in known]
    if unknown:
        raise DataError(unknown[0], f"unknown parameter (allowed: {', '.join(sorted(known))})")
    return dict(request.query_params)


def _symbol(params: dict[str, str]) -> str:
    if "symbol" not in params:
        raise DataError("symbol", "is required")
    return validate_symbol(params["symbol"])


def _moment_ms(params: dict[str, str]) -> int | None:
    """`at` (any form `Store.as_of` takes: ISO 8601 with an offset, ...) or `local` (B3 wall-clock
    time, as the page's date-time input gives it); neither: live."""
    if "at" in params and "local" in params:
        raise DataError("at", "give at or local, not both")
    if "at" in params:
        return to_ms(parse_time(params["at"], field="at"))
    if "local" in params:
        try:
            local = datetime.fromisoformat(params["local"])
        except ValueError:
            raise DataError(
                "local", f"{params['local']!r} is not a date-time (YYYY-MM-DDTHH:MM[:SS.fff])"
            ) from None
        return to_ms(local if local.tzinfo is not None else local.replace(tzinfo=B3_TZ))
    return None


def _nonnegative_int(params: dict[str, str], name: str) -> int:
    text = params.get(name, "0")
    if not text.isdigit() or len(text) > 18:
        raise DataError(name, f"{text!r} must be a non-negative integer")
    return int(text)


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": redact("VALKEY_URL", message)}, status_code=status,
                        headers={"cache-control": "no-store"})  # fmt: skip


Handler = Callable[[Request], Response]


def _guarded(handler: Handler) -> Handler:
    """Bad input -> 400 with the reason; an unreachable store -> 503; never a traceback page."""

    def wrapped(request: Request) -> Response:
        try:
            return handler(request)
        except DataError as exc:
            return _error(400, str(exc))
        except StoreError as exc:
            return _error(503, f"store unavailable: {exc}")

    return wrapped


# -- the app -------------------------------------------------------------------------------------


def create_app(
    store: Store,
    feed: LiveFeed,
    *,
    symbols: tuple[str, ...],
    token: str | None = None,
    closing: threading.Event | None = None,
    book: BookSource = book_ladder,
    run: Runner = one_by_one,
) -> ASGIApp:
    """The dashboard as an ASGI app (`feed` started and stopped by the caller; `run` makes a view's
    reads, see `panels.moment`)."""
    stop = closing or threading.Event()
    assets = load_assets(STATIC)
    interval_ms = int(feed.interval * 1000)
    page = Page(STATIC / "index.html", store, symbols=symbols, interval_ms=interval_ms, book=book, run=run)

    async def static(request: Request) -> Response:
        return asset_response(assets, request)  # from memory: on the event loop, no thread

    @_guarded
    def meta(request: Request) -> Response:
        _params(request, ())
        return JSONResponse(page.meta())

    @_guarded
    def view(request: Request) -> Response:
        params = _params(request, ("symbol", "tf", "at", "local"))
        symbol = _symbol(params)
        tf = check_timeframe(params.get("tf", "1m"))
        at_ms = _moment_ms(params)
        view = moment(store, symbol, tf, at_ms, book, run)
        return JSONResponse(view, headers={"cache-control": "no-store"})

    @_guarded
    def health(request: Request) -> Response:
        _params(request, ())
        return JSONResponse(feed.health(), headers={"cache-control": "no-store"})

    async def live(request: Request) -> Response:
        try:
            params = _params(request, ("symbol", "tf", "since_ms"))
            symbol = _symbol(params)
            tf = check_timeframe(params.get("tf", "1m"))
            since_ms = _nonnegative_int(params, "since_ms")
        except DataError as exc:
            return _error(400, str(exc))
        return StreamingResponse(
            _events(feed, symbol, tf, since_ms, stop),
            media_type="text/event-stream",
            headers={"cache-control": "no-store", "x-accel-buffering": "no"},
        )

    app = Starlette(
        routes=[
            Route("/", page.response),
            Route("/api/meta", meta),
            Route("/api/view", view),
            Route("/api/health", health),
            Route("/api/live", live),
            Route("/static/{path:path}", static),
        ]
    )
    return Guard(app, token)


def at_once(pool: Executor) -> Runner:
    """Reads made at once on `pool`, their results in order (the first failure raised)."""

    def run(reads: Sequence[Callable[[], Any]]) -> list[Any]:
        return [future.result() for future in [pool.submit(read) for read in reads]]

    return run


async def _events(feed: LiveFeed, symbol: str, tf: str, since_ms: int, stop: threading.Event) -> Any:
    """One page's stream: what changed since its last update, at most one update per feed interval."""
    loop = asyncio.get_running_loop()
    feed.watch(symbol)
    cursor = Cursor(since_ms=since_ms)
    try:
        yield b"retry: 1000\n\n"
        last_sent = loop.time()
        while not stop.is_set():
            seen = feed.changes.version
            message = feed.update(symbol, tf, cursor)
            if message is not None:
                yield b"data: " + message + b"\n\n"
                last_sent = loop.time()
            elif loop.time() - last_sent >= KEEPALIVE_S:
                yield b": keepalive\n\n"  # a proxy or the browser must not think the stream is dead
                last_sent = loop.time()
            await feed.changes.wait(seen, timeout=0.5)  # wakes at the feed's next change
            gap = last_sent + feed.interval - loop.time()  # coalesced: <= 1 update per interval
            if gap > 0 and not stop.is_set():
                await asyncio.sleep(gap)
    finally:
        feed.unwatch(symbol)


class Guard:
    """Token (beyond loopback, or whenever WEB_TOKEN is set) or loopback Host check; security headers."""

    def __init__(self, app: ASGIApp, token: str | None) -> None:
        self.app = app
        self.token = token.encode() if token else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *_SECURITY_HEADERS]
            await send(message)

        request = Request(scope)
        refusal = self._refusal(request)
        if refusal is not None:
            await refusal(scope, receive, send_with_headers)
            return
        if self.token is not None and scope["path"] == "/" and "token" in request.query_params:
            # the token came in the address: keep it in a cookie, and take it out of the address bar
            redirect = RedirectResponse("/", status_code=303)
            redirect.set_cookie(COOKIE, self.token.decode(), httponly=True, samesite="strict", path="/")
            await redirect(scope, receive, send_with_headers)
            return
        await self.app(scope, receive, send_with_headers)

    def _refusal(self, request: Request) -> Response | None:
        if self.token is None:
            host = (request.url.hostname or "").lower()
            if host not in _LOOPBACK_NAMES:
                return _error(400, f"unexpected Host {host!r}: the dashboard answers loopback names only")
            return None
        presented = [
            request.headers.get("authorization", "").removeprefix("Bearer ").strip(),
            request.cookies.get(COOKIE, ""),
        ]
        if request.url.path == "/":
            presented.append(request.query_params.get("token", ""))
        if any(p and hmac.compare_digest(p.encode(), self.token) for p in presented):
            return None
        return JSONResponse(
            {"error": "a token is needed: open /?token=TOKEN once, or send it as a Bearer token"},
            status_code=401,
            headers={"www-authenticate": "Bearer", "cache-control": "no-store"},
        )


# -- serving -------------------------------------------------------------------------------------


class WebServer:
    """The dashboard on `host:port` (0: any free port), uvicorn and the live feed on their own threads."""

    def __init__(
        self,
        store: Store,
        *,
        symbols: tuple[str, ...],
        host: str = "127.0.0.1",
        port: int = 8050,
        token: str | None = None,
        where: str = "",
        problems: Callable[[], Iterable[str]] | None = None,
        book: BookSource = book_ladder,
        interval: float = INTERVAL_S,
    ) -> None:
        check_bind(host, token)
        self.host, self.port = host, port
        self.feed = LiveFeed(store, book=book, problems=problems, where=where, interval=interval)
        self._closing = threading.Event()
        self._reads = ThreadPoolExecutor(VIEW_READERS, thread_name_prefix="web-read")
        app = create_app(store, self.feed, symbols=symbols, token=token, closing=self._closing, book=book,
                         run=at_once(self._reads))  # fmt: skip
        config = uvicorn.Config(
            app, log_config=None, access_log=False, ws="none", lifespan="off", http="h11",
            loop="asyncio", timeout_graceful_shutdown=3, timeout_keep_alive=5,
        )  # fmt: skip
        self._server = uvicorn.Server(config)
        self._thread: threading.Thread | None = None
        self._socket: socket.socket | None = None

    @classmethod
    def from_settings(cls, settings: Settings, store: Store, **kwargs: Any) -> WebServer:
        return cls(store, host=settings.web_host, port=settings.web_port, token=token_of(settings), **kwargs)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    def start(self, timeout: float = 15.0) -> None:
        """Bind (ConfigError naming WEB_PORT if the address is taken), then serve until `stop()`."""
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.host.strip("[]"), self.port))
        except OSError as exc:
            sock.close()
            raise ConfigError(
                "WEB_PORT", self.port, f"cannot listen on {self.host}: {exc.strerror}"
            ) from None
        self._socket = sock
        self.port = int(sock.getsockname()[1])
        self.feed.start()
        self._thread = threading.Thread(target=self._serve, args=(sock,), name="web", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started and self._thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.01)  # uvicorn has no ready callback; its flag is set once it listens
        if not self._server.started:
            self.stop()
            raise ConfigError("WEB_PORT", self.port, "the web server did not start")

    def _serve(self, sock: socket.socket) -> None:
        asyncio.run(self._server.serve(sockets=[sock]))

    def stop(self) -> None:
        self._closing.set()  # open event streams end at their next wake-up
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(10)
        self.feed.stop()
        self._reads.shutdown(wait=True)
        if self._socket is not None:
            self._socket.close()
