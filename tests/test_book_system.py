"""The order book in `tickvault run` (the simulator's book published, recorded, in the features) and
in `tickvault query` (--kind book:N, book-frames:STEP, book-changes:N, quotes, book-updates)."""

from __future__ import annotations

import functools
import itertools
import time
from datetime import datetime

import msgspec
import pytest
from typer.testing import CliRunner

from conftest import wait_until
from tickvault.app.cli import app
from tickvault.app.output import to_csv_text, to_json_lines
from tickvault.app.system import System
from tickvault.config import load_settings
from tickvault.domain.book import BookBatch, BookColumns, OrderUpdate
from tickvault.domain.events import B3_TZ, Event, Features
from tickvault.sources.book_simulator import BookMarketSimulator
from tickvault.store.api import Store
from tickvault.store.book_writer import BookPart, BookWriter

SYMBOL = "WDOFUT"
OPEN = datetime(2025, 11, 24, 9, 0, tzinfo=B3_TZ)
runner = CliRunner()


def _run_until(system: System, updates: int, timeout: float = 60) -> None:
    system.start()
    deadline = time.monotonic() + timeout
    while sum(system.ingest.stats.book_updates.values()) < updates and time.monotonic() < deadline:
        time.sleep(0.01)


def test_run_with_the_simulator_records_its_book_and_the_features_see_it(
    system_env: dict[str, str], store: Store
) -> None:
    emitted: list[Event] = []
    system = System(load_settings(speed=0, symbols=SYMBOL), event_handlers=[emitted.append])
    _run_until(system, 3000)
    summary = system.stop()
    assert summary.drained
    features = [e for e in emitted if isinstance(e, Features)]
    assert features and sum(f.values["spread"] is not None for f in features) > len(features) // 2
    counters = summary.counters
    produced = sum(system.ingest.stats.book_updates.values())
    assert produced >= 3000 and counters["book_stored"] == produced
    assert counters["book_rejected"] == counters["book_unrecovered"] == 0
    position = store.book_position(SYMBOL)
    assert (position.kind, position.seq, position.frame) == (
        "mbo",
        produced,
        system.component("book").flow.publisher.framer.last[b"book_WDOFUT"],
    )
    book = store.book(SYMBOL, position.ms)
    assert book.attrs["valid"] and len(book) == 20  # the simulator keeps at least 12 levels a side
    # the features' live book is the stored one at the end
    assert system.features is not None
    live = system.features.engine.books[SYMBOL]
    best_bid, best_ask = live.best("bid"), live.best("ask")
    assert best_bid is not None and best_ask is not None
    assert (book["price"].iloc[0], book["price"].iloc[10]) == (best_bid[0], best_ask[0])


def test_a_second_run_continues_the_books_numbering(system_env: dict[str, str], store: Store) -> None:
    produced = 0
    for _ in range(2):
        system = System(load_settings(speed=0, symbols=SYMBOL))
        _run_until(system, 1500)
        summary = system.stop()
        assert summary.drained and summary.counters["book_duplicates"] == 0
        produced += sum(system.ingest.stats.book_updates.values())
    stored = store.book_update_columns(SYMBOL, 0, 2**62)
    assert stored.seq.tolist() == list(range(1, produced + 1))
    # the second run opened with the book of its start (a snapshot): its books are valid throughout
    frames = store.book_frames(SYMBOL, int(stored.timestamp_ms[0]), int(stored.timestamp_ms[-1]), "1s")
    assert frames["valid"].all()


def test_no_book_runs_ticks_only(system_env: dict[str, str], store: Store) -> None:
    system = System(load_settings(speed=0, symbols=SYMBOL, book_enabled=False))
    system.start()
    assert wait_until(lambda: system.ingest.stats.generated[SYMBOL] >= 500)
    summary = system.stop()
    assert summary.drained and store.book_symbols() == [] and "book_stored" not in summary.counters


# --- query ---------------------------------------------------------------------------------------


@functools.cache
def _batches() -> tuple[BookBatch, ...]:
    sim = BookMarketSimulator([SYMBOL], seed=3, start=OPEN)
    return tuple(b for b in itertools.islice(sim.events(), 2500) if isinstance(b, BookBatch))


@pytest.fixture
def stored_book(store: Store) -> tuple[int, int]:
    events = [e for b in _batches() for e in b]
    BookWriter(store.client, store.keys).write([BookPart(BookColumns.from_events(events))])
    return events[0].timestamp_ms, events[-1].timestamp_ms


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, B3_TZ).isoformat(timespec="milliseconds")


@pytest.mark.parametrize(
    ("kind", "call"),
    [
        ("book:5", lambda store, a, b: store.book(SYMBOL, (a + b) // 2, 5)),
        ("book-frames:500ms:3", lambda store, a, b: store.book_frames(SYMBOL, a, b, "500ms", 3)),
        ("book-changes:4", lambda store, a, b: store.book_changes(SYMBOL, a, b, 4)),
        ("quotes", lambda store, a, b: store.quotes(SYMBOL, a, b)),
        ("book-updates", lambda store, a, b: store.book_updates(SYMBOL, a, b)),
    ],
)
def test_query_book_kinds_print_exactly_what_the_api_returns(
    system_env: dict[str, str], store: Store, stored_book: tuple[int, int], kind: str, call: object
) -> None:
    a, b = stored_book
    where = (
        ["--at", _iso((a + b) // 2)] if kind.startswith("book:") else ["--start", _iso(a), "--end", _iso(b)]
    )
    frame = call(store, a, b)  # type: ignore[operator]
    assert len(frame) > 0
    for fmt, text in (("csv", to_csv_text(frame)), ("json", to_json_lines(frame))):
        result = runner.invoke(app, ["query", SYMBOL, "--kind", kind, *where, "--format", fmt])
        assert result.exit_code == 0, result.output
        assert result.stdout == text, fmt


def test_query_book_updates_as_json_are_the_events(
    system_env: dict[str, str], store: Store, stored_book: tuple[int, int]
) -> None:
    a, b = stored_book
    result = runner.invoke(
        app,
        ["query", SYMBOL, "--kind", "book-updates", "--start", _iso(a), "--end", _iso(b), "--format", "json"],
    )
    assert result.exit_code == 0, result.output
    got = [msgspec.json.decode(line, type=OrderUpdate) for line in result.stdout.splitlines()]
    assert got == [e for batch in _batches() for e in batch]


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--kind", "book:5"], "--at"),
        (["--kind", "book:x", "--at", "now"], "book:N"),
        (["--kind", "book:0", "--at", "now"], "positive"),
        (["--kind", "book-frames:fast", "--start", "-1h"], "book-frames"),
        (["--kind", "quotes"], "--start"),
        (["--kind", "book-changes:0", "--start", "-1h"], "positive"),
    ],
)
def test_query_refuses_a_bad_book_kind_with_a_clear_message(
    system_env: dict[str, str], args: list[str], says: str
) -> None:
    result = runner.invoke(app, ["query", SYMBOL, *args])
    assert result.exit_code == 2 and says in result.output
