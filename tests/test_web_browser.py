"""The web dashboard in a real Chromium (Debian's, driven by Playwright), against a running system on
the test Valkey: the chart moves, the tape's newest trade is the newest stored, a signal becomes a
marker, a timeframe shows the bars `Store.candles` computes, time travel shows the market of that
moment, Valkey's death is DISCONNECTED within 3 s and its return is live again without a reload, and
beyond loopback the page needs its token once. Every wait is Playwright polling (`expect`,
`wait_for_function`) or `wait_until`; the browser, its pages and every server close in finalizers."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import valkey

import browser
from conftest import wait_until
from factories import BASE_MS, tick
from test_web import TOKEN, same_bars
from tickvault.analytics.candles import bar_bounds
from tickvault.app.system import System
from tickvault.app.web.clock import clock, local_s, offset_text
from tickvault.app.web.server import WebServer
from tickvault.config import load_settings
from tickvault.domain.events import Signal, from_ms
from tickvault.errors import StoreUnavailable
from tickvault.store.api import Store
from tickvault.store.health import HealthReporter
from tickvault.store.server import EmbeddedValkey, free_port

pytestmark = pytest.mark.skipif(browser.missing() is not None, reason=f"needs Chromium: {browser.missing()}")

if browser.missing() is None:
    from playwright.sync_api import Browser, Page, expect, sync_playwright

SYMBOL = "WDOFUT"
END_OF_TIME_MS = 253_402_300_799_000  # 9999-12-31: the newest book stored


@pytest.fixture(scope="module")
def chromium(request: pytest.FixtureRequest) -> Browser:
    """One headless Chromium per module (its start is the slow part); closed by a finalizer."""
    driver = sync_playwright().start()
    request.addfinalizer(driver.stop)
    launched = driver.chromium.launch(executable_path=str(browser.CHROMIUM), headless=True)
    request.addfinalizer(launched.close)
    return launched


@pytest.fixture
def page(chromium: Browser, request: pytest.FixtureRequest) -> Page:
    """A fresh context and page (B3's time zone, a desktop screen); errors on the page fail the test."""
    context = chromium.new_context(
        viewport={"width": 1600, "height": 1000}, timezone_id="America/Sao_Paulo", locale="en-US"
    )
    request.addfinalizer(context.close)
    opened = context.new_page()
    errors: list[str] = []
    opened.on("pageerror", lambda exc: errors.append(str(exc)))
    opened.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    request.node.page_errors = errors
    return opened


@pytest.fixture
def web(request: pytest.FixtureRequest) -> Callable[..., WebServer]:
    """web(store, **options) -> a started dashboard on a free port, stopped by a finalizer."""

    def start(store: Store, **options: Any) -> WebServer:
        options.setdefault("symbols", ("WDOFUT", "WINFUT"))
        server = WebServer(store, port=0, **options)
        server.start()
        request.addfinalizer(server.stop)
        return server

    return start


def page_errors(request: pytest.FixtureRequest) -> list[str]:
    # a 401 on purpose shows as a failed resource load in the console; anything else is a bug
    return [e for e in request.node.page_errors if "401" not in e]


def last_bar(page: Page) -> Any:
    return page.evaluate("() => JSON.stringify(window.tickvault.chartBars().at(-1))")


def run_system(speed: float, **settings: Any) -> System:
    system = System(load_settings(speed=speed, **settings))  # the test Valkey and free ports: system_env
    system.start()
    return system


# -- live --------------------------------------------------------------------------------------------


def test_the_live_page_follows_the_running_system(
    system_env: dict[str, str], store: Store, page: Page, web: Callable[..., WebServer],
    request: pytest.FixtureRequest,
) -> None:  # fmt: skip
    system = run_system(speed=20)
    assert system.connection is not None
    server = web(Store(system.connection.client("web")), where=system.connection.where)
    asked: list[str] = []
    page.on("request", lambda r: asked.append(r.url))
    page.goto(server.url)
    expect(page.locator("body")).to_have_attribute("data-loaded", f"{SYMBOL}:1m:live", timeout=20_000)
    # the page came with its first view: it drew without asking for it (or for the symbols)
    assert not [url for url in list(asked) if "/api/view" in url or "/api/meta" in url]
    expect(page.get_by_test_id("status")).to_have_text("LIVE", timeout=20_000)
    expect(page.locator("#tape tr").first).to_be_visible()
    # the chart's last bar moves with the market
    before = last_bar(page)
    page.wait_for_function("(b) => JSON.stringify(window.tickvault.chartBars().at(-1)) !== b", arg=before)
    # a signal written to the signals stream (as the predictor writes it) becomes a marker
    newest = store.last_tick(SYMBOL)
    assert newest is not None
    ms = newest.timestamp_ms
    store.append_events(
        [Signal(symbol=SYMBOL, timestamp=from_ms(ms), timestamp_ms=ms, action="BUY", confidence=0.83)]
    )
    expect(page.locator(f'#signals li[data-ms="{ms}"]')).to_contain_text("BUY")
    page.wait_for_function("(id) => window.tickvault.chartMarkers().some(m => m.id === id)", arg=f"BUY:{ms}")
    drawn = page.evaluate("(id) => window.tickvault.chartMarkers().find(m => m.id === id)", f"BUY:{ms}")
    assert drawn["time"] == local_s(bar_bounds(ms, "1m")[0]) and drawn["shape"] == "arrowUp"
    assert drawn["position"] == "belowBar"
    kept = page.evaluate("(ms) => window.tickvault.markers().find(m => m.ms === ms)", ms)
    assert kept["count"] == 1 and kept["confidence"] == 0.83
    # `run` records the simulator's order book: the book panel shows its ladder
    expect(page.get_by_test_id("book")).to_be_visible()
    expect(page.get_by_test_id("health")).to_contain_text("ticks/s stored")
    # the market stops; the tape's newest trade is the newest stored in Valkey
    system.stop()
    stored = store.last_tick(SYMBOL)
    assert stored is not None
    expect(page.locator("#tape tr").first).to_have_attribute("data-trade-id", str(stored.trade_id))
    expect(page.get_by_test_id("last-price")).to_have_attribute("data-trade-id", str(stored.trade_id))
    assert not page_errors(request)


def ladder_on_page(page: Page) -> list[list[str]]:
    return list(
        page.eval_on_selector_all("#ladder tr", "rows => rows.map(r => [...r.cells].map(c => c.textContent))")
    )


def ladder_of(store: Store, at_ms: int) -> list[list[str]]:
    """`Store.book` at `at_ms` as the ladder shows it: orders, quantity, bid | ask, quantity, orders."""
    book = store.book(SYMBOL, at_ms, 10)
    sides = {side: book[book["side"].astype(str) == side] for side in ("bid", "ask")}
    assert len(sides["bid"]) == len(sides["ask"]) == 10  # the simulator keeps at least 12 levels a side
    return [
        [
            f"{b.orders:,}",
            f"{b.quantity:,}",
            f"{b.price:,.1f}",
            f"{a.price:,.1f}",
            f"{a.quantity:,}",
            f"{a.orders:,}",
        ]
        for b, a in zip(sides["bid"].itertuples(), sides["ask"].itertuples(), strict=True)
    ]


def test_timeframes_and_time_travel_show_what_the_store_api_returns(
    system_env: dict[str, str], store: Store, page: Page, web: Callable[..., WebServer],
    request: pytest.FixtureRequest,
) -> None:  # fmt: skip
    # as fast as it goes, one symbol: half an hour of market (and its book) in seconds
    system = run_system(speed=0, symbols=(SYMBOL,))
    assert wait_until(lambda: store.count(SYMBOL) >= 40_000, timeout=120)
    system.stop()
    newest = store.last_tick(SYMBOL)
    assert newest is not None
    server = web(store)
    page.goto(server.url)
    expect(page.locator("body")).to_have_attribute("data-loaded", f"{SYMBOL}:1m:live", timeout=20_000)
    # a timeframe: the bars on the chart are the ones Store.candles computes
    page.get_by_test_id("pick-5m").click()
    expect(page.locator("body")).to_have_attribute("data-loaded", f"{SYMBOL}:5m:live")
    first_ms = page.evaluate("() => window.tickvault.state.bars[0].ms")
    expected = store.candles(SYMBOL, "5m", first_ms, newest.timestamp_ms)
    assert len(expected) >= 4
    # the closed bars come with the page, the open one with its first live update
    page.wait_for_function("(n) => window.tickvault.state.bars.length === n", arg=len(expected))
    bars = page.evaluate("() => window.tickvault.state.bars")
    same_bars(bars, expected)
    drawn = page.evaluate("() => window.tickvault.chartBars()")
    assert [(b["time"], b["close"]) for b in drawn] == [(b["time"], b["close"]) for b in bars]
    # time travel to a past moment: the chart, the tape and the book as of then
    ticks = store.ticks(SYMBOL, newest.timestamp_ms - 20 * 60_000, newest.timestamp_ms)
    at_ms = int(ticks["timestamp_ms"].iloc[len(ticks) // 2]) + 1
    page.fill("#travel-at", from_ms(at_ms).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3])
    page.click("#travel-go")
    expect(page.locator("body")).to_have_attribute("data-loaded", f"{SYMBOL}:5m:past")
    expect(page.get_by_test_id("status")).to_have_text("PAST")
    # times in B3 local time, the offset shown
    expect(page.get_by_test_id("past-banner")).to_contain_text(
        f"{clock(at_ms)} (B3, UTC{offset_text(at_ms)})"
    )
    expect(page.locator("#offset")).to_have_text(f"UTC{offset_text(at_ms)}")
    then = store.as_of(SYMBOL, from_ms(at_ms))
    assert then is not None and then.trade_id != newest.trade_id
    expect(page.get_by_test_id("last-price")).to_have_attribute("data-trade-id", str(then.trade_id))
    expect(page.locator("#tape tr").first).to_have_attribute("data-trade-id", str(then.trade_id))
    expect(page.locator("#tape tr").first.locator("td").first).to_have_text(clock(then.timestamp_ms)[11:])
    past = page.evaluate("() => window.tickvault.state.bars")
    same_bars(past, store.candles(SYMBOL, "5m", past[0]["ms"], at_ms))
    # the book of that moment: the ladder is Store.book then, 10 levels a side
    expect(page.get_by_test_id("book")).to_be_visible()
    expect(page.locator("#book-at")).to_have_text(clock(at_ms))
    assert ladder_on_page(page) == ladder_of(store, at_ms)
    # one click back to live: the newest trade and, the market stopped, the newest book
    page.click("#live-button")
    expect(page.locator("body")).to_have_attribute("data-loaded", f"{SYMBOL}:5m:live")
    expect(page.get_by_test_id("past-banner")).to_be_hidden()
    expect(page.locator("#tape tr").first).to_have_attribute("data-trade-id", str(newest.trade_id))
    newest_book = ladder_of(store, END_OF_TIME_MS)
    assert newest_book != ladder_of(store, at_ms)
    assert wait_until(lambda: ladder_on_page(page) == newest_book, timeout=20)  # within one live update
    assert not page_errors(request)


# -- Valkey dies and comes back -----------------------------------------------------------------------


@pytest.fixture
def own_valkey(tmp_path: Path) -> Iterator[EmbeddedValkey]:
    """A Valkey of this test's own (never the session server): it gets killed."""
    server = EmbeddedValkey(tmp_path / "own-valkey", port=free_port())
    server.ensure_running()
    yield server
    server.stop()


def test_valkey_killed_is_disconnected_within_3_s_and_back_live_without_a_reload(
    own_valkey: EmbeddedValkey, page: Page, web: Callable[..., WebServer], request: pytest.FixtureRequest
) -> None:
    info = own_valkey.running()
    assert info is not None
    client = valkey.Valkey(host=info.host, port=info.port, socket_connect_timeout=1, socket_timeout=5)
    request.addfinalizer(client.close)
    store = Store(client)
    store.append_ticks(
        [tick(ts_ms=BASE_MS + i * 1000, trade_id=i, price=5400.0 + i % 3) for i in range(1, 40)]
    )
    reporter = HealthReporter(client, "run@test", lambda: {"stored": 1}, interval=0.2)
    reporter.start()
    request.addfinalizer(reporter.stop)
    server = web(store, where=f"valkey {info.host}:{info.port}")
    page.goto(server.url)
    status = page.get_by_test_id("status")
    expect(status).to_have_text("LIVE", timeout=20_000)
    page.evaluate("() => { window.sameDocument = true; }")  # gone if the page reloads
    os.kill(info.pid, signal.SIGKILL)
    os.waitpid(info.pid, 0)
    expect(status).to_have_text("DISCONNECTED", timeout=3_000)
    expect(page.get_by_test_id("problem-banner")).to_contain_text("DISCONNECTED")
    restarted = EmbeddedValkey(own_valkey.data_dir, port=info.port).ensure_running()
    assert restarted.port == info.port
    # the test's writer finds its connection dead once, as the recorder would (which retries too)
    assert wait_until(lambda: appended(store, [tick(ts_ms=BASE_MS + 60_000, trade_id=77, price=5411.0)]))
    expect(status).to_have_text("LIVE", timeout=20_000)
    expect(page.locator("#tape tr").first).to_have_attribute("data-trade-id", "77")
    expect(page.get_by_test_id("problem-banner")).to_be_hidden()
    assert page.evaluate("() => window.sameDocument") is True
    assert not page_errors(request)


def appended(store: Store, ticks: list[Any]) -> bool:
    try:
        store.append_ticks(ticks)
    except StoreUnavailable:
        return False
    return True


# -- the token -------------------------------------------------------------------------------------


def test_beyond_loopback_the_page_needs_its_token_once(
    store: Store, page: Page, web: Callable[..., WebServer], request: pytest.FixtureRequest
) -> None:
    store.append_ticks([tick(ts_ms=BASE_MS + i, trade_id=i, price=5400.0) for i in range(1, 30)])
    server = web(store, host="0.0.0.0", token=TOKEN)  # reached through 127.0.0.1 only
    origin = f"http://127.0.0.1:{server.port}"
    refused = page.goto(origin + "/")
    assert refused is not None and refused.status == 401
    page.goto(f"{origin}/?token={TOKEN}")
    assert page.url == origin + "/"  # the token left the address bar
    expect(page.locator("#tape tr").first).to_have_attribute("data-trade-id", "29", timeout=20_000)
    expect(page.get_by_test_id("status")).not_to_have_text("DISCONNECTED")
    assert TOKEN not in page.content()
    assert not [e for e in page_errors(request) if "401" not in e]
