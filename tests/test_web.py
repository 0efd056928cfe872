"""The web dashboard without a browser: what each panel reads is what the Store API returns, the live
feed folds ticks into the bars `Store.candles` computes, bad parameters are a 400 with the reason,
the token and loopback rules, no secret on the wire, the vendored chart library, and the CLI.
(tests/test_web_browser.py drives the page itself in Chromium.)"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import json
import re
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import valkey

from conftest import subprocess_env, wait_until
from factories import BASE_MS, tick
from tickvault.analytics.candles import TIMEFRAMES, bar_bounds
from tickvault.app.web.bars import chart_bars, worker_position
from tickvault.app.web.clock import local_s
from tickvault.app.web.live import Cursor, LiveFeed
from tickvault.app.web.panels import Ladder, Level, book_ladder, moment
from tickvault.app.web.server import STATIC, WebServer
from tickvault.config import redact
from tickvault.domain.events import Candle, Features, Prediction, Signal, from_ms, to_fields
from tickvault.errors import ConfigError
from tickvault.store.api import Store
from tickvault.store.health import HealthReporter
from tickvault.store.server import EmbeddedValkey, free_port
from tickvault.workers.candle_worker import CandleWorker

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "t0ken-W3b-Dashb0ard-Secret"


# -- helpers ---------------------------------------------------------------------------------------


def request(
    port: int, path: str, headers: dict[str, str] | None = None, host: str | None = None
) -> tuple[int, dict[str, str], bytes]:
    """One GET to 127.0.0.1:port, no redirect followed: (status, headers, body)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        sent = dict(headers or {})
        if host is not None:
            sent["Host"] = host
        conn.request("GET", path, headers=sent)
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


def events(port: int, path: str, count: int, headers: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """The first `count` Server-Sent Events of `path`, decoded (then the stream is closed)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    out: list[dict[str, Any]] = []
    try:
        conn.request("GET", path, headers=headers or {})
        response = conn.getresponse()
        assert response.status == 200, response.read()
        assert response.getheader("content-type", "").startswith("text/event-stream")
        while len(out) < count:
            line = response.fp.readline()
            assert line, "the stream ended"
            if line.startswith(b"data: "):
                out.append(json.loads(line[6:]))
    finally:
        conn.close()
    return out


@pytest.fixture
def serve(store: Store) -> Iterator[Any]:
    """serve(**options) -> a started WebServer on a free port (stopped at the end, passed or failed)."""
    started: list[WebServer] = []

    def start(**options: Any) -> WebServer:
        options.setdefault("symbols", ("WDOFUT", "WINFUT"))
        options.setdefault("port", 0)
        server = WebServer(options.pop("store", store), **options)
        server.start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def session_ticks(n: int = 600, start_ms: int = BASE_MS, step_ms: int = 700) -> list[Any]:
    """`n` trades `step_ms` apart (several 1m and 5m bars), prices wandering, both aggressors."""
    rng = np.random.default_rng(5)
    prices = 5400.0 + 0.5 * np.cumsum(rng.integers(-2, 3, n))
    return [
        tick(ts_ms=start_ms + i * step_ms, trade_id=i + 1, price=float(prices[i]), quantity=1 + i % 5,
             trade_type=2 + i % 2, buyer=10 + i % 7, seller=20 + i % 3, seq=i + 1)
        for i in range(n)
    ]  # fmt: skip


def signal(ms: int, action: str, confidence: float = 0.7) -> Signal:
    return Signal(
        symbol="WDOFUT", timestamp=from_ms(ms), timestamp_ms=ms, action=action, confidence=confidence
    )  # type: ignore[arg-type]


def same_bars(rows: list[dict[str, Any]], frame: pd.DataFrame) -> None:
    """Chart bars equal a candles frame: every bar, open time and OHLC, contracts and trades."""
    expected = [
        (int(ts.value // 1_000_000), b.open, b.high, b.low, b.close, b.quantity, b.trades)
        for ts, b in zip(frame.index, frame.itertuples(index=False), strict=True)
    ]
    got = [(r["ms"], r["open"], r["high"], r["low"], r["close"], r["volume"], r["trades"]) for r in rows]
    assert got == expected


# -- panels: a moment through the Store API ---------------------------------------------------------


def test_a_moment_shows_what_the_store_api_returns(store: Store) -> None:
    ticks = session_ticks()
    store.append_ticks(ticks)
    last = ticks[-1]
    store.append_events([
        signal(ticks[100].timestamp_ms, "BUY"), signal(ticks[101].timestamp_ms, "BUY", 0.9),
        signal(ticks[200].timestamp_ms, "HOLD"),
        signal(ticks[300].timestamp_ms, "SELL", 0.61),
        Features(symbol="WDOFUT", timestamp=last.timestamp, timestamp_ms=last.timestamp_ms,
                 values={"ofi_60s": 0.25, "ret_1m": float("nan"), "volatility_regime_30d": "LOW_VOL"}),
        Prediction(symbol="WDOFUT", timestamp=last.timestamp, timestamp_ms=last.timestamp_ms, model="m1",
                   probabilities={"DOWN": 0.2, "FLAT": 0.3, "UP": 0.5}),
    ])  # fmt: skip
    view = moment(store, "WDOFUT", "1m", None)
    first_ms = view["bars"][0]["ms"]
    # live: the bars closed so far (the open one comes with the page's first live update)
    closed_until = bar_bounds(last.timestamp_ms, "1m")[0] - 1
    same_bars(view["bars"], store.candles("WDOFUT", "1m", first_ms, closed_until))
    assert view["live"] and view["last"]["id"] == store.last_tick("WDOFUT").trade_id == last.trade_id  # type: ignore[union-attr]
    assert [row["id"] for row in view["tape"]] == [t.trade_id for t in reversed(ticks[-50:])]
    assert view["tape"][0]["buyer"] == last.buyer and view["tape"][0]["aggressor"] == last.aggressor
    # one marker per bar and action: the count and the newest; HOLD is not drawn
    markers = [(m["action"], m["ms"], m["count"], m["confidence"]) for m in view["markers"]]
    assert markers == [("BUY", ticks[101].timestamp_ms, 2, 0.9), ("SELL", ticks[300].timestamp_ms, 1, 0.61)]
    assert [s["ms"] for s in view["signals"]] == [
        t.timestamp_ms for t in (ticks[100], ticks[101], ticks[300])
    ]
    assert view["markers"][0]["time"] == local_s(bar_bounds(ticks[101].timestamp_ms, "1m")[0])
    assert view["features"]["values"] == {"ofi_60s": 0.25, "ret_1m": None, "volatility_regime_30d": "LOW_VOL"}
    assert view["prediction"]["probabilities"] == {"DOWN": 0.2, "FLAT": 0.3, "UP": 0.5}
    assert view["book"] is None  # nothing stores a book yet: the page hides its panel
    assert view["offset"] == "-03:00" and view["at"] == "2025-11-24 13:06:59.300"
    # chart times are B3 wall-clock seconds: the bar of 13:00 -03:00 is drawn at 13:00
    assert local_s(BASE_MS) == BASE_MS // 1000 - 3 * 3600


def test_a_past_moment_is_the_market_as_it_stood_then(store: Store) -> None:
    ticks = session_ticks()
    store.append_ticks(ticks)
    at_ms = ticks[333].timestamp_ms + 350  # between two trades
    ladder = Ladder(at_ms, [Level(5400.0 - i, 10 + i, 1 + i) for i in range(12)],
                    [Level(5400.5 + i, 20 + i, 2) for i in range(12)])  # fmt: skip
    seen: list[tuple[str, int | None]] = []

    def book(_: Store, symbol: str, when: int | None) -> Ladder:
        seen.append((symbol, when))
        return ladder

    view = moment(store, "WDOFUT", "5m", at_ms, book)
    expected = store.as_of("WDOFUT", from_ms(at_ms))
    assert not view["live"] and view["last"]["id"] == expected.trade_id == ticks[333].trade_id  # type: ignore[union-attr]
    assert view["tape"][0]["id"] == ticks[333].trade_id and len(view["tape"]) == 50
    same_bars(view["bars"], store.candles("WDOFUT", "5m", view["bars"][0]["ms"], at_ms))
    assert view["bars"][-1]["close"] == ticks[333].price  # the open bar as of then, not as it ended
    assert seen == [("WDOFUT", at_ms)]
    assert view["book"]["bids"][0] == [5400.0, 10, 1] and len(view["book"]["bids"]) == 10  # 10 levels
    assert view["book"]["asks"][0] == [5400.5, 20, 2] and view["book"]["at"] == view["at"]


def test_chart_bars_from_the_candle_worker_history_and_ticks_equal_store_candles(store: Store) -> None:
    ticks = session_ticks(1500, step_ms=900)  # 22 minutes
    store.append_ticks(ticks[:500])
    store.seal("WDOFUT", ticks[500].timestamp_ms)  # history older than the worker (a backfill, say)
    worker = CandleWorker(store, ("WDOFUT",))
    for i in range(500, 1400, 100):  # the worker keeps up; the last 100 ticks it has not read yet
        store.append_ticks(ticks[i : i + 100])
        while worker.step(block_ms=0):
            pass
    store.append_ticks(ticks[1400:])
    assert worker_position(store, "WDOFUT") == ticks[1399].timestamp_ms
    for end in (
        ticks[-1].timestamp_ms,
        ticks[1399].timestamp_ms + 1,
        ticks[900].timestamp_ms,
        ticks[250].timestamp_ms,
    ):
        for tf in TIMEFRAMES:
            bars = chart_bars(store, "WDOFUT", tf, end)
            assert len(bars)
            first = int(bars.index[0].value // 1_000_000)
            pd.testing.assert_frame_equal(
                bars[CHART], store.candles("WDOFUT", tf, first, end)[CHART], check_freq=False
            )
            closed = chart_bars(store, "WDOFUT", tf, end, closed_only=True)
            before = bar_bounds(end, tf)[0] - 1
            expected = store.candles("WDOFUT", tf, first, before) if before >= first else closed
            pd.testing.assert_frame_equal(closed[CHART], expected[CHART], check_freq=False)
    # closed bars really come from the worker's stream: a correction written there is what is shown
    minute = bar_bounds(ticks[700].timestamp_ms, "1m")[0]
    bar = store.candle_stream("WDOFUT", "1m", minute, minute).iloc[0]
    store.client.xadd(store.keys.candles("1m", "WDOFUT"), to_fields(Candle(
        symbol="WDOFUT", timestamp=from_ms(minute), timestamp_ms=minute, timeframe="1m", open=bar.open,
        high=bar.high + 100.0, low=bar.low, close=bar.close, volume=bar.volume, quantity=int(bar.quantity),
        trades=int(bar.trades), vwap=bar.vwap)))  # fmt: skip
    shown = chart_bars(store, "WDOFUT", "1m", ticks[-1].timestamp_ms)
    assert shown.loc[from_ms(minute), "high"] == bar.high + 100.0


CHART = ["open", "high", "low", "close", "quantity", "trades"]  # what the chart draws (vwap may round)


# -- the live feed ----------------------------------------------------------------------------------


def merge(bars: dict[int, dict[str, Any]], message: bytes | None) -> None:
    if message is not None:
        for row in json.loads(message).get("bars", []):
            bars[row["ms"]] = row


def test_the_live_feed_folds_ticks_into_the_bars_store_candles_computes(store: Store) -> None:
    ticks = session_ticks(900, step_ms=900)
    store.append_ticks(ticks[:300])
    feed = LiveFeed(store, interval=0.02)
    feed.start()
    try:
        feed.watch("WDOFUT")
        cursors = {tf: Cursor() for tf in TIMEFRAMES}
        seen: dict[str, dict[int, dict[str, Any]]] = {tf: {} for tf in TIMEFRAMES}

        def caught_up(batch_end: int) -> bool:
            for tf in TIMEFRAMES:
                merge(seen[tf], feed.update("WDOFUT", tf, cursors[tf]))
            last = json.loads(feed.update("WDOFUT", "1m", Cursor()) or b"{}").get("last") or {}
            return last.get("id") == batch_end

        assert wait_until(lambda: caught_up(300), timeout=30)
        late = tick(ts_ms=ticks[500].timestamp_ms - 450, trade_id=5000, price=5300.0, quantity=7, seq=901)
        edit = tick(ts_ms=ticks[520].timestamp_ms, trade_id=521, price=5500.0, quantity=3, is_edit=True,
                    seq=902)  # fmt: skip
        for part in (ticks[300:450], ticks[450:700], [late, edit], ticks[700:]):  # across bars, late, edited
            store.append_ticks(part)
            before = feed.reads
            assert wait_until(lambda b=before: feed.reads >= b + 2, timeout=30)  # type: ignore[misc]
            caught_up(0)  # takes in what changed
        assert caught_up(ticks[-1].trade_id)
        for tf in TIMEFRAMES:
            first = min(seen[tf])
            expected = store.candles("WDOFUT", tf, first, ticks[-1].timestamp_ms)
            same_bars([seen[tf][ms] for ms in sorted(seen[tf])], expected)
        assert any(b["low"] == 5300.0 for b in seen["1m"].values())  # the late trade is in its bar
        assert any(b["high"] == 5500.0 for b in seen["1m"].values())  # the edit replaced its trade
    finally:
        feed.stop()


def test_a_page_that_skips_updates_still_gets_every_bar_trade_and_signal(store: Store) -> None:
    ticks = session_ticks(400)
    store.append_ticks(ticks[:100])
    feed = LiveFeed(store, interval=0.02)
    feed.start()
    try:
        feed.watch("WDOFUT")
        cursor = Cursor()
        assert wait_until(lambda: feed.update("WDOFUT", "1m", cursor) is not None, timeout=30)
        before = feed.reads
        store.append_ticks(ticks[100:130])
        store.append_events([signal(ticks[110].timestamp_ms, "BUY")])
        assert wait_until(lambda: feed.reads > before + 2, timeout=30)
        store.append_ticks(ticks[130:160])
        assert wait_until(lambda: feed.reads > before + 5, timeout=30)
        # this page slept through several reads: one update carries all it missed
        update = json.loads(feed.update("WDOFUT", "1m", cursor) or b"{}")
        assert [t["id"] for t in update["tape"]] == [t.trade_id for t in reversed(ticks[110:160])]
        assert [m["ms"] for m in update["markers"]] == [ticks[110].timestamp_ms]
        opens = {bar_bounds(t.timestamp_ms, "1m")[0] for t in ticks[100:160]}
        assert {b["ms"] for b in update["bars"]} == opens
        again = feed.update("WDOFUT", "1m", cursor)
        assert again is None or "tape" not in json.loads(again)  # nothing twice
    finally:
        feed.stop()


# -- HTTP: parameters, tokens, secrets --------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "words"),
    [
        ("/api/view", "symbol: is required"),
        ("/api/view?symbol=wdo%20fut", "must match"),
        ("/api/view?symbol=WDOFUT&tf=2m", "timeframe: '2m' must be one of 1m, 5m, 15m, 1h, 1d"),
        ("/api/view?symbol=WDOFUT&local=yesterday", "local: 'yesterday' is not a date-time"),
        ("/api/view?symbol=WDOFUT&at=2025-11-24T10:00", "has no timezone"),
        ("/api/view?symbol=WDOFUT&at=now&local=2025-11-24T10:00", "not both"),
        ("/api/view?symbol=WDOFUT&limit=5", "limit: unknown parameter"),
        ("/api/live?symbol=WDOFUT&since_ms=-1", "since_ms: '-1' must be a non-negative integer"),
        ("/api/live?symbol=W{DO}", "must match"),
        ("/api/meta?x=1", "x: unknown parameter"),
    ],
)
def test_bad_query_parameters_are_a_400_with_the_reason(serve: Any, path: str, words: str) -> None:
    server = serve()
    status, headers, body = request(server.port, path)
    assert status == 400 and headers["content-type"] == "application/json"
    assert words in json.loads(body)["error"]


def test_beyond_loopback_it_refuses_to_start_without_a_token(store: Store) -> None:
    with pytest.raises(ConfigError) as err:
        WebServer(store, symbols=("WDOFUT",), host="0.0.0.0", port=0)
    assert err.value.name == "WEB_TOKEN" and "0.0.0.0" in str(err.value)


def test_beyond_loopback_every_request_needs_the_token(serve: Any, store: Store) -> None:
    store.append_ticks(session_ticks(50))
    server = serve(host="0.0.0.0", token=TOKEN)  # reached through 127.0.0.1 only
    paths = ["/", "/api/meta", "/api/view?symbol=WDOFUT", "/api/health", "/static/dashboard.js",
             "/static/vendor/lightweight-charts/lightweight-charts.standalone.production.js"]  # fmt: skip
    for path in paths:
        status, headers, body = request(server.port, path)
        assert status == 401, path
        assert headers["www-authenticate"] == "Bearer" and b"token" in body
        assert request(server.port, path, {"Authorization": "Bearer wrong"})[0] == 401
        assert request(server.port, path, {"Authorization": f"Bearer {TOKEN}"})[0] == 200, path
    status, headers, _ = request(server.port, f"/?token={TOKEN}")
    assert status == 303 and headers["location"] == "/"  # the token leaves the address bar
    cookie = headers["set-cookie"]
    assert "httponly" in cookie.lower() and "samesite=strict" in cookie.lower()
    jar = cookie.split(";")[0]
    assert request(server.port, "/api/view?symbol=WDOFUT", {"Cookie": jar})[0] == 200
    assert request(server.port, "/api/view?symbol=WDOFUT", {"Cookie": "tickvault_token=nope"})[0] == 401
    assert events(server.port, "/api/live?symbol=WDOFUT", 1, {"Cookie": jar})[0]["symbol"] == "WDOFUT"
    assert request(server.port, f"/api/view?symbol=WDOFUT&token={TOKEN}")[0] == 401  # not outside "/"


def test_on_loopback_a_request_for_another_host_name_is_refused(serve: Any) -> None:
    server = serve()
    assert request(server.port, "/", host=f"localhost:{server.port}")[0] == 200
    status, _, body = request(server.port, "/", host="attacker.example")
    assert status == 400 and b"loopback names only" in body  # a DNS rebinding page gets nothing


def boot_of(page: bytes) -> dict[str, Any]:
    """The first view the page came with (its JSON data block)."""
    found = re.search(rb'<script type="application/json" id="boot">(.*?)</script>', page, re.S)
    assert found is not None, "the page has no first view"
    return dict(json.loads(found.group(1)))


def test_the_page_comes_with_its_first_view(serve: Any, store: Store) -> None:
    ticks = session_ticks(300)
    store.append_ticks(ticks)
    last = ticks[-1]
    hostile = "</script><script>alert(1)</script><!--"
    store.append_events([Features(symbol="WDOFUT", timestamp=last.timestamp, timestamp_ms=last.timestamp_ms,
                                  values={"ofi_60s": 0.25, "note": hostile})])  # fmt: skip
    server = serve()
    status, headers, page = request(server.port, "/?tf=5m")
    assert status == 200 and headers["content-type"].startswith("text/html")
    boot = boot_of(page)
    # what the page's script would have asked first, in one response: /api/meta, then /api/view
    assert boot["meta"] == json.loads(request(server.port, "/api/meta")[2])
    assert boot["view"] == json.loads(request(server.port, "/api/view?symbol=WDOFUT&tf=5m")[2])
    assert boot["view"]["last"]["id"] == last.trade_id and boot["view"]["tf"] == "5m"
    # stored text cannot end the data block (or run as a script), and reads back unchanged
    assert hostile.encode() not in page and page.count(b"</script>") == page.count(b"<script")
    assert boot["view"]["features"]["values"]["note"] == hostile
    # a symbol or timeframe the page does not know: the defaults, as the script picks them
    fallback = boot_of(request(server.port, "/?symbol=NOPE1&tf=2m")[2])["view"]
    assert (fallback["symbol"], fallback["tf"]) == ("WDOFUT", "1m")
    assert boot_of(request(server.port, "/?symbol=WINFUT")[2])["view"]["last"] is None  # nothing stored


def test_the_page_files_come_from_memory_with_etags_and_gzip(serve: Any) -> None:
    server = serve()
    path = "/static/vendor/lightweight-charts/lightweight-charts.standalone.production.js"
    raw = (STATIC / path.removeprefix("/static/")).read_bytes()
    status, headers, body = request(server.port, path, {"Accept-Encoding": "gzip, deflate"})
    assert status == 200 and headers["content-encoding"] == "gzip" and headers["vary"] == "accept-encoding"
    assert gzip.decompress(body) == raw and len(body) < len(raw) // 2
    assert headers["cache-control"] == "public, max-age=86400"  # the pinned build: kept a day
    # a reload asks whether it changed: 304, nothing sent
    status, _, again = request(
        server.port, path, {"Accept-Encoding": "gzip", "If-None-Match": headers["etag"]}
    )
    assert status == 304 and again == b""
    status, plain_headers, plain = request(server.port, path)  # no gzip accepted: the bytes as they are
    assert status == 200 and plain == raw and "content-encoding" not in plain_headers
    assert plain_headers["etag"] != headers["etag"]  # each encoding its own tag
    status, own, _ = request(server.port, "/static/dashboard.js")
    assert own["cache-control"] == "no-cache"  # may change with tickvault: revalidated every load
    assert (
        own["content-type"] == "text/javascript; charset=utf-8" and own["x-content-type-options"] == "nosniff"
    )
    assert request(server.port, "/static/missing.js")[0] == 404
    assert request(server.port, "/static/%2e%2e/server.py")[0] == 404


def test_security_headers_and_no_cdn(serve: Any) -> None:
    server = serve()
    status, headers, body = request(server.port, "/")
    assert status == 200 and headers["x-frame-options"] == "DENY"
    assert "script-src 'self'" in headers["content-security-policy"]
    assert not re.search(
        rb"(src|href)=\"(https?:)?//", body.replace(b'href="https://www.tradingview.com/"', b"")
    )


@pytest.fixture
def secret_valkey(tmp_path: Path) -> Iterator[tuple[EmbeddedValkey, str]]:
    server = EmbeddedValkey(tmp_path / "secret-valkey", password="pa55-" + TOKEN[::-1])
    server.ensure_running()
    yield server, "pa55-" + TOKEN[::-1]
    server.stop()


def test_no_secret_reaches_the_page(serve: Any, secret_valkey: tuple[EmbeddedValkey, str]) -> None:
    server_valkey, password = secret_valkey
    info = server_valkey.running()
    assert info is not None
    url = f"valkey://:{password}@127.0.0.1:{info.port}/0"
    client = valkey.Valkey.from_url(url)
    try:
        store = Store(client)
        store.append_ticks(session_ticks(100))
        where = redact("VALKEY_URL", url)
        server = serve(store=store, where=where, token=TOKEN)
        auth = {"Authorization": f"Bearer {TOKEN}"}
        bodies = [request(server.port, p, auth)[2] for p in (
            "/", "/api/meta", "/api/view?symbol=WDOFUT", "/api/health", "/static/dashboard.js")]  # fmt: skip
        bodies += [json.dumps(e).encode() for e in events(server.port, "/api/live?symbol=WDOFUT", 2, auth)]
        server_valkey.stop()  # now the errors, too
        assert wait_until(lambda: b"DISCONNECTED" in request(server.port, "/api/health", auth)[2], timeout=30)
        bodies.append(request(server.port, "/api/health", auth)[2])
        bodies.append(request(server.port, "/api/view?symbol=WDOFUT", auth)[2])
        for body in bodies:
            assert password.encode() not in body and TOKEN.encode() not in body
    finally:
        client.close()


def test_the_web_token_is_redacted_like_a_password() -> None:
    assert redact("WEB_TOKEN", TOKEN) == "***"


# -- health --------------------------------------------------------------------------------------


def test_health_names_a_stalled_component_and_rejected_messages_by_reason(serve: Any, store: Store) -> None:
    store.client.hset(store.keys.health("recorder@stuck"), mapping={"stored": 5, "rejected": 3, "at": 1})
    HealthReporter(store.client, "run@ok", lambda: {"generated": 9}).report()
    for reason in ("price", "price", "symbol"):
        store.client.xadd(store.keys.dead_letters(), {"reason": "bad", "field": reason})
    server = serve()
    health = json.loads(request(server.port, "/api/health")[2])
    assert health["status"] == "DEGRADED" and health["reasons"][0].startswith("recorder@stuck: no heartbeat")
    assert health["rejected_by_reason"] == {"price": 2, "symbol": 1} and health["counters"]["rejected"] == 3
    assert [c["name"] for c in health["components"]] == ["recorder@stuck", "run@ok"]
    store.client.delete(store.keys.health("recorder@stuck"))
    assert json.loads(request(server.port, "/api/health")[2])["status"] == "LIVE"


# -- the vendored chart library --------------------------------------------------------------------


def test_the_vendored_chart_library_is_the_recorded_build() -> None:
    folder = STATIC / "vendor" / "lightweight-charts"
    code = (folder / "lightweight-charts.standalone.production.js").read_bytes()
    record = (folder / "VENDOR.md").read_text()
    assert hashlib.sha256(code).hexdigest() in record
    version = re.search(r"Lightweight Charts™ (\d+\.\d+\.\d+)", record)
    assert version and f"v{version.group(1)}".encode() in code[:300]  # the build's own banner
    assert (
        "Apache License" in (folder / "LICENSE").read_text()
        and "TradingView" in (folder / "NOTICE").read_text()
    )
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    assert "static/vendor/*/*" in data["tickvault.app.web"]
    page = (STATIC / "index.html").read_text()
    assert "https://www.tradingview.com/" in page and "NOTICE" in page  # the licence's attribution


# -- the command line ------------------------------------------------------------------------------


def test_run_prints_the_dashboard_address_and_serves_it(system_env: dict[str, str], tmp_path: Path) -> None:
    port = int(system_env["WEB_PORT"])
    argv = [sys.executable, "-m", "tickvault", "run", "--duration", "60", "--no-dashboard", "--speed", "20"]
    lines: list[str] = []
    with subprocess.Popen(
        argv, env=subprocess_env(system_env), cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        text=True,
    ) as proc:  # fmt: skip
        reader = threading.Thread(target=lambda: lines.extend(iter(proc.stderr.readline, "")), daemon=True)  # type: ignore[union-attr]
        reader.start()
        try:
            assert wait_until(lambda: any("tickvault running:" in line for line in lines), timeout=60), lines
            startup = next(line for line in lines if "tickvault running:" in line)
            assert f"web=http://127.0.0.1:{port}/" in startup
            assert request(port, "/")[0] == 200
            assert wait_until(
                lambda: json.loads(request(port, "/api/view?symbol=WDOFUT")[2])["last"], timeout=60
            )
        finally:
            proc.terminate()
            proc.wait(60)
            reader.join(10)
    assert proc.returncode == 0, "".join(lines)


def test_run_no_web_serves_nothing(system_env: dict[str, str], tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "tickvault", "run", "--duration", "2", "--no-dashboard", "--no-web"],
        env=subprocess_env(system_env), cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "tickvault running:" in done.stderr and "web=" not in done.stderr


@pytest.mark.parametrize(
    ("env", "args", "words"),
    [
        ({"WEB_PORT": "http"}, ["web"], "WEB_PORT='http'"),
        ({"WEB_HOST": "0.0.0.0"}, ["web"], "WEB_TOKEN=None: is required to serve the dashboard on 0.0.0.0"),
        ({}, ["web", "--web-host", "0.0.0.0"], "WEB_TOKEN=None"),
        ({"WEB_HOST": "0.0.0.0"}, ["run", "--duration", "1", "--no-dashboard"], "WEB_TOKEN=None"),
    ],
)
def test_a_bad_web_setting_is_one_line_and_exit_2(
    system_env: dict[str, str], tmp_path: Path, env: dict[str, str], args: list[str], words: str
) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "tickvault", *args], env=subprocess_env({**system_env, **env}), cwd=tmp_path,
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and words in lines[0] and "Traceback" not in done.stderr


def test_without_chromium_make_test_says_in_one_line_that_browser_tests_were_skipped_and_why(
    tmp_path: Path,
) -> None:
    missing = tmp_path / "no-chromium"
    done = subprocess.run(  # what `make test` runs, on the browser tests only
        [sys.executable, "-m", "pytest", "-n", "2", "-p", "no:cacheprovider", "tests/test_web_browser.py"],
        env=subprocess_env({"TICKVAULT_CHROMIUM": str(missing)}), cwd=ROOT, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    why = f"no Chromium at {missing} (apt-get install chromium, or set TICKVAULT_CHROMIUM)"
    assert [line for line in done.stdout.splitlines() if "browser tests skipped" in line] == [
        f"browser tests skipped: {why}"
    ]
    assert "4 skipped" in done.stdout.splitlines()[-1]


def test_web_command_serves_a_store_filled_elsewhere(
    system_env: dict[str, str], tmp_path: Path, store: Store
) -> None:
    ticks = session_ticks(120)
    store.append_ticks(ticks)
    port = free_port()
    with subprocess.Popen(
        [sys.executable, "-m", "tickvault", "web", "--web-port", str(port)],
        env=subprocess_env({**system_env, "MONITOR_SYMBOLS": "WINFUT,WDOFUT"}), cwd=tmp_path,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    ) as proc:  # fmt: skip
        try:
            line = ""
            while "tickvault web:" not in line:
                line = proc.stderr.readline()  # type: ignore[union-attr]
                assert line, "tickvault web ended before serving"
            assert f"tickvault web: http://127.0.0.1:{port}/" in line
            meta = json.loads(request(port, "/api/meta")[2])
            assert meta["symbols"] == ["WINFUT", "WDOFUT"]
            view = json.loads(request(port, "/api/view?symbol=WDOFUT&tf=5m")[2])
            assert view["last"]["id"] == ticks[-1].trade_id
            update = events(port, f"/api/live?symbol=WDOFUT&tf=5m&since_ms={view['at_ms']}", 1)[0]
            assert update["tape"][0]["id"] == ticks[-1].trade_id
            # the bar still open comes with the first live update: with the view's, the whole chart
            bars = view["bars"] + update["bars"]
            same_bars(bars, store.candles("WDOFUT", "5m", bars[0]["ms"], ticks[-1].timestamp_ms))
        finally:
            proc.terminate()
            proc.wait(60)
    assert proc.returncode == 0


def test_on_a_cluster_the_view_and_the_live_feed_work(cluster_client: Any, serve: Any) -> None:
    store = Store(cluster_client)
    ticks = session_ticks(200)
    store.append_ticks(ticks)
    server = serve(store=store)
    view = json.loads(request(server.port, "/api/view?symbol=WDOFUT")[2])
    closed_until = bar_bounds(ticks[-1].timestamp_ms, "1m")[0] - 1
    same_bars(view["bars"], store.candles("WDOFUT", "1m", view["bars"][0]["ms"], closed_until))
    first = events(server.port, f"/api/live?symbol=WDOFUT&since_ms={view['at_ms']}", 1)[0]
    assert first["tape"][0]["id"] == ticks[-1].trade_id
    assert json.loads(request(server.port, "/api/health")[2])["status"] == "IDLE"


def test_the_book_panel_shows_the_stored_book_as_of_the_moment(store: Store) -> None:
    """With a book stored, the page's ladder is `Store.book` at that moment (best 10 a side), and
    the live view shows the newest book."""
    from test_book_store import session, write_all

    batches = session("mbo", 3000)
    write_all(store, batches)
    at_ms = batches[len(batches) // 2].timestamp_ms
    ladder = book_ladder(store, "WDOFUT", at_ms)
    expected = store.book("WDOFUT", at_ms, 10)
    assert ladder is not None
    for side, levels in (("bid", ladder.bids), ("ask", ladder.asks)):
        rows = expected[expected["side"].astype(str) == side]
        assert [(lv.price, lv.quantity, lv.orders) for lv in levels] == [
            (float(r.price), int(r.quantity), int(r.orders)) for r in rows.itertuples()
        ]
    newest = book_ladder(store, "WDOFUT", None)
    last = store.book("WDOFUT", batches[-1].timestamp_ms, 10)
    assert newest is not None and newest.bids[0].price == float(
        last[last["side"].astype(str) == "bid"].iloc[0].price
    )
