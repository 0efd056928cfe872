"""The order book of the other sources of `tickvault run`: ProfitDLL's offer or price book (the gcc-built
fake DLL of tests/native) and a replay from the store (`store:START..END` into a namespace), each
published and recorded, the stored book held against the book it came from."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest

from conftest import wait_until
from fake_profitdll import BUY, OFFER, PRICE, SELL, FakeControls, build_fake_dll
from tickvault.app.components.source import SourceSpec
from tickvault.app.system import System
from tickvault.config import load_settings
from tickvault.domain.book import BookBatch, BookColumns
from tickvault.domain.events import B3_TZ, Tick, from_ms
from tickvault.domain.keys import KeySpace
from tickvault.sources.book_simulator import BookMarketSimulator
from tickvault.store.api import Store
from tickvault.store.book_writer import BookPart, BookWriter

Levels = dict[str, list[tuple[float, int, int]]]


def stored_levels(store: Store, symbol: str, at_ms: int) -> Levels:
    frame = store.book(symbol, at_ms, depth=None)
    out: Levels = {"bid": [], "ask": []}
    for side, price, quantity, orders in zip(
        frame.side, frame.price, frame.quantity, frame.orders, strict=True
    ):
        out[side].append((float(price), int(quantity), int(orders)))
    return out


# --- ProfitDLL ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fake_dll(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_fake_dll(tmp_path_factory)


@pytest.fixture
def fake(fake_dll: Path) -> Iterator[FakeControls]:
    controls = FakeControls(fake_dll)
    controls.reset()
    yield controls
    controls.reset()


def dll_levels(fake: FakeControls, book: int) -> Levels:
    """The fake DLL's own book, by price, best first: the offer book's orders summed, the price book's
    levels as they are (each with its count of orders)."""
    out: Levels = {}
    for side, name in ((BUY, "bid"), (SELL, "ask")):
        levels: dict[float, tuple[int, int]] = {}
        for price, quantity, count, _ in fake.snapshot(book, side):
            total, orders = levels.get(price, (0, 0))
            levels[price] = (total + quantity, orders + (1 if book == OFFER else count))
        prices = sorted(levels, reverse=name == "bid")
        out[name] = [(p, *levels[p]) for p in prices]
    return out


# seeds whose random sessions leave both sides of the book non-empty after every burst
@pytest.mark.parametrize(
    ("setting", "book", "kind", "seed"), [("offer", OFFER, "mbo", 40), ("price", PRICE, "mbp", 60)]
)
def test_run_with_profitdll_records_the_dll_s_book(
    fake: FakeControls,
    fake_dll: Path,
    system_env: dict[str, str],
    store: Store,
    monkeypatch: pytest.MonkeyPatch,
    setting: str,
    book: int,
    kind: str,
    seed: int,
) -> None:
    for name, value in (
        ("PROFIT_DLL_PATH", str(fake_dll)),
        ("PROFIT_USER", "trader"),
        ("PROFIT_PASSWORD", "s3cret"),
        ("PROFIT_KEY", "KEY-123"),
        ("TICKVAULT_SYMBOLS", "WDOF26"),
        ("WEB_ENABLED", "false"),
        ("PROFIT_BOOK", setting),
    ):
        monkeypatch.setenv(name, value)  # fmt: skip
    spec = SourceSpec.parse("profitdll", "WDOF26")
    settings = load_settings()
    stop = threading.Event()
    system = System(
        settings, source=spec.factory(settings, stop), hold_back=False, warm_up=True, book=spec.makes_book
    )
    system.stop_event = stop
    # the newest book: the fake stamps some updates with a stale date, which reads as the receive time
    newest = lambda: time.time_ns() // 1_000_000 + 86_400_000  # noqa: E731
    system.start()
    try:
        assert wait_until(lambda: store.book_position("WDOF26").updates > 0, timeout=30)  # the full book
        for burst in range(3):
            assert wait_until(fake.idle, timeout=60)
            fake.random(book, seed + burst, 300)
            assert wait_until(fake.idle, timeout=60)
            expected = dll_levels(fake, book)
            assert expected["bid"] and expected["ask"]
            wait_until(
                lambda expected=expected: stored_levels(store, "WDOF26", newest()) == expected, timeout=30
            )  # type: ignore[misc]
            assert stored_levels(store, "WDOF26", newest()) == expected, burst
        assert wait_until(lambda: store.count("WDOF26") == 5, timeout=30)  # the trades as well
    finally:
        summary = system.stop()
    assert summary.drained and system.source_error is None
    counters = summary.counters
    assert counters["book_stored"] == counters["book_generated"] > 0 and counters["book_rejected"] == 0
    assert store.book_position("WDOF26").kind == kind
    assert fake.calls(PRICE if book == OFFER else OFFER, 2) == 0  # the other book was never subscribed


@pytest.mark.parametrize("no_book", [("BOOK_ENABLED", "false"), ("PROFIT_BOOK", "none")])
def test_run_with_profitdll_and_no_book_records_trades_only(
    fake: FakeControls,
    fake_dll: Path,
    system_env: dict[str, str],
    store: Store,
    monkeypatch: pytest.MonkeyPatch,
    no_book: tuple[str, str],
) -> None:
    for name, value in (
        ("PROFIT_DLL_PATH", str(fake_dll)),
        ("PROFIT_USER", "trader"),
        ("PROFIT_PASSWORD", "s3cret"),
        ("PROFIT_KEY", "KEY-123"),
        ("TICKVAULT_SYMBOLS", "WDOF26"),
        ("WEB_ENABLED", "false"),
        no_book,
    ):
        monkeypatch.setenv(name, value)  # fmt: skip
    spec = SourceSpec.parse("profitdll", "WDOF26")
    settings = load_settings()
    stop = threading.Event()
    system = System(
        settings, source=spec.factory(settings, stop), hold_back=False, warm_up=True,
        book=spec.makes_book_with(settings),
    )  # fmt: skip
    system.stop_event = stop
    system.start()
    try:
        assert wait_until(lambda: store.count("WDOF26") == 5, timeout=30)
    finally:
        summary = system.stop()
    assert summary.drained and system.component("book") is None
    assert fake.calls(OFFER, 2) == fake.calls(PRICE, 2) == 0 and store.book_position("WDOF26").kind is None


# --- a replay from the store -------------------------------------------------------------------------

OPEN = datetime(2025, 11, 24, 9, 0, tzinfo=B3_TZ)
SYMBOLS = ("WDOFUT", "WINFUT")


def recorded_session(store: Store) -> tuple[list[Tick], dict[str, list[BookBatch]]]:
    """A simulated session's start in the live store: its ticks and both symbols' books."""
    sim = BookMarketSimulator(list(SYMBOLS), seed=11, start=OPEN)
    ticks: list[Tick] = []
    books: dict[str, list[BookBatch]] = {s: [] for s in SYMBOLS}
    for item in itertools.islice(sim.events(), 6000):
        if isinstance(item, BookBatch):
            books[item.symbol].append(item)
        else:
            ticks.append(item)
    store.append_ticks(ticks)
    store.writer.release()
    writer = BookWriter(store.client, store.keys, snapshot_every=500)
    for batches in books.values():
        for i in range(0, len(batches), 50):
            part = batches[i : i + 50]
            writer.write([BookPart(BookColumns.from_events([e for b in part for e in b]))])
    writer.release()
    return ticks, books


def test_a_store_replay_plays_the_recorded_book_into_the_namespace(
    system_env: dict[str, str], store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    ticks, books = recorded_session(store)
    first, last = ticks[0].timestamp_ms, ticks[-1].timestamp_ms
    start, end = first + (last - first) // 4, last  # from within: the replay opens with the book by then
    monkeypatch.setenv("TICKVAULT_NAMESPACE", "bookreplay")
    monkeypatch.setenv("WEB_ENABLED", "false")
    spec = SourceSpec.parse(
        f"store:{from_ms(start).isoformat()}..{from_ms(end).isoformat()}", ",".join(SYMBOLS)
    )
    assert spec.makes_book
    settings = load_settings(symbols=spec.symbols, speed=0)
    stop = threading.Event()
    system = System(settings, source=spec.factory(settings, stop), book=spec.makes_book)
    system.stop_event = stop
    system.start()
    try:
        system.wait(120)
    finally:
        summary = system.stop()
    assert summary.drained and system.source_error is None
    replayed = Store(store.client, KeySpace(namespace="bookreplay"))
    assert replayed.count("WDOFUT") == sum(
        1 for t in ticks if t.symbol == "WDOFUT" and start <= t.timestamp_ms <= end
    )
    for symbol in SYMBOLS:
        assert replayed.book_position(symbol).kind == "mbo"
        for k in range(7):
            at = start + (end - start) * k // 6
            assert stored_levels(replayed, symbol, at) == stored_levels(store, symbol, at), (symbol, at)
    assert stored_levels(replayed, "WDOFUT", start)["bid"]  # the opening book, not an empty one
