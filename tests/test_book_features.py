"""The book features (spread, book_imbalance, depth_imbalance_5, microprice): their definitions, which
book a tick reads, and live values equal to the vectorised ones a backfill computes from columns."""

from __future__ import annotations

import functools
import itertools
from datetime import datetime
from typing import Any

import msgspec
import numpy as np
import pytest

from factories import BASE_MS, tick
from tickvault.analytics.book_features import BOOK_FEATURES, book_feature_table, top_values
from tickvault.analytics.features import FeatureConfig, FeatureEngine, backfill
from tickvault.domain.book import LAST, SNAPSHOT, BookBatch, BookColumns, level_update
from tickvault.domain.events import B3_TZ, Features, Tick
from tickvault.sources.book_simulator import BookMarketSimulator

SYMBOL = "WDOFUT"
OPEN = datetime(2025, 11, 24, 9, 0, tzinfo=B3_TZ)


def snapshot(ms: int, bids: list[tuple[float, int]], asks: list[tuple[float, int]]) -> list[Any]:
    rows = [level_update(SYMBOL, ms, "none", 0.0, 0, action="clear", flags=SNAPSHOT)]
    rows += [level_update(SYMBOL, ms, "bid", p, q, 1, "add", flags=SNAPSHOT) for p, q in bids]
    rows += [level_update(SYMBOL, ms, "ask", p, q, 1, "add", flags=SNAPSHOT) for p, q in asks]
    last = rows[-1]
    rows[-1] = level_update(SYMBOL, ms, last.side, last.price, last.quantity, 1, "add", flags=SNAPSHOT | LAST)
    return rows


def values_of(features: Features | None) -> tuple[Any, ...]:
    assert features is not None
    return tuple(features.values[name] for name in BOOK_FEATURES)


def test_the_book_features_follow_their_definitions() -> None:
    bids = [(5400.0, 30), (5399.5, 8), (5399.0, 4), (5398.5, 2), (5398.0, 16), (5397.5, 1000)]
    asks = [(5400.5, 10), (5401.0, 40)]  # a short side: its missing levels count 0
    spread, imbalance, depth, micro = top_values(*zip(*bids, strict=True), *zip(*asks, strict=True))  # type: ignore[arg-type]
    assert spread == 0.5 and imbalance == (30 - 10) / 40
    # weights 1, 1/2, 1/4, 1/8, 1/16; the sixth level is not counted
    assert depth == (20 + 0.5 * -32 + 0.25 * 4 + 0.125 * 2 + 0.0625 * 16) / (40 + 24 + 1 + 0.25 + 1)
    assert micro == (5400.0 * 10 + 5400.5 * 30) / 40  # leans to the ask: the bid queue is longer
    assert top_values([5400.0], [3], [], []) == (None,) * 4  # one side empty: nothing to measure


def test_a_tick_reads_the_book_stamped_before_it_never_a_batch_of_its_own_millisecond() -> None:
    engine = FeatureEngine([SYMBOL], FeatureConfig(emit_interval_ms=0, time_travel=False))
    assert values_of(engine.on_tick(tick(ts_ms=BASE_MS))) == (None,) * 4  # no book yet
    for event in snapshot(BASE_MS, [(5400.0, 30)], [(5400.5, 10)]):
        engine.on_book(event)
    # the batch shares the tick's millisecond: the tick reads the book before it (none)
    assert values_of(engine.on_tick(tick(ts_ms=BASE_MS, trade_id=2))) == (None,) * 4
    first = values_of(engine.on_tick(tick(ts_ms=BASE_MS + 1, trade_id=3)))
    assert first[:2] == (0.5, 0.5)
    # a batch at +5, a tick at +5 (before it: the first book), another at +6 (after it)
    engine.on_book(level_update(SYMBOL, BASE_MS + 5, "ask", 5400.5, 0, 0, "delete"))
    engine.on_book(level_update(SYMBOL, BASE_MS + 5, "ask", 5401.0, 10, 1, "add", flags=LAST))
    assert values_of(engine.on_tick(tick(ts_ms=BASE_MS + 5, trade_id=4))) == first
    assert values_of(engine.on_tick(tick(ts_ms=BASE_MS + 6, trade_id=5)))[0] == 1.0
    # an open batch is never read
    engine.on_book(level_update(SYMBOL, BASE_MS + 7, "ask", 5401.0, 0, 0, "delete"))
    assert values_of(engine.on_tick(tick(ts_ms=BASE_MS + 9, trade_id=6)))[0] == 1.0
    assert engine.book_late == 0


def test_a_batch_stamped_before_a_tick_it_follows_is_counted_late() -> None:
    engine = FeatureEngine([SYMBOL], FeatureConfig(emit_interval_ms=0, time_travel=False))
    engine.on_tick(tick(ts_ms=BASE_MS + 10))
    for event in snapshot(BASE_MS, [(5400.0, 30)], [(5400.5, 10)]):
        engine.on_book(event)
    assert engine.book_late == 1  # the tick at +10 could not see it; a backfill would


def test_a_tick_behind_the_book_s_clock_reads_the_book_as_it_was_then() -> None:
    """Books stamped ahead of the trades (receive time against exchange time) arrive first."""
    engine = FeatureEngine([SYMBOL], FeatureConfig(emit_interval_ms=0, time_travel=False))
    for event in snapshot(BASE_MS, [(5400.0, 30)], [(5400.5, 10)]):
        engine.on_book(event)
    engine.on_book(level_update(SYMBOL, BASE_MS + 20, "ask", 5401.0, 10, 1, "add", flags=LAST))
    engine.on_book(level_update(SYMBOL, BASE_MS + 30, "ask", 5400.5, 0, 0, "delete", flags=LAST))
    assert values_of(engine.on_tick(tick(ts_ms=BASE_MS + 20)))[0] == 0.5
    assert values_of(engine.on_tick(tick(ts_ms=BASE_MS + 25, trade_id=2)))[0] == 0.5
    assert values_of(engine.on_tick(tick(ts_ms=BASE_MS + 31, trade_id=3)))[0] == 1.0


def test_a_gap_in_the_update_seqs_leaves_the_book_features_empty_until_the_next_snapshot() -> None:
    """Updates lost on the way (a gap the bus could not fill): the live book is not the exchange's,
    so its features are None, and counted, until a snapshot brings the whole book again."""
    engine = FeatureEngine([SYMBOL], FeatureConfig(emit_interval_ms=0, time_travel=False))

    def numbered(events: list[Any], first: int) -> list[Any]:
        return [msgspec.structs.replace(e, seq=first + i) for i, e in enumerate(events)]

    opening = numbered(snapshot(BASE_MS, [(5400.0, 30)], [(5400.5, 10)]), 1)
    for event in opening:
        engine.on_book(event)
    nxt = len(opening) + 1
    engine.on_book(level_update(SYMBOL, BASE_MS + 1, "ask", 5401.0, 5, 1, "add", seq=nxt, flags=LAST))
    assert values_of(engine.on_tick(tick(ts_ms=BASE_MS + 2)))[0] == 0.5 and engine.book_gaps == 0
    # seq nxt + 1 never came
    engine.on_book(level_update(SYMBOL, BASE_MS + 3, "bid", 5400.0, 7, 1, "update", seq=nxt + 2, flags=LAST))
    assert values_of(engine.on_tick(tick(ts_ms=BASE_MS + 4, trade_id=2))) == (None,) * 4
    assert engine.book_gaps == 1
    again = numbered(snapshot(BASE_MS + 5, [(5399.5, 3)], [(5400.5, 9)]), nxt + 10)
    for event in again:
        engine.on_book(event)
    assert values_of(engine.on_tick(tick(ts_ms=BASE_MS + 6, trade_id=3)))[0] == 1.0
    assert engine.book_gaps == 1


@functools.cache
def _simulated(kind: str, minutes: float) -> tuple[Tick | BookBatch, ...]:
    end = OPEN.timestamp() * 1000 + minutes * 60_000
    stream = BookMarketSimulator(["WDOFUT", "WINFUT"], seed=5, start=OPEN, kind=kind).events()  # type: ignore[arg-type]
    return tuple(itertools.takewhile(lambda item: item.timestamp_ms <= end, stream))


@pytest.mark.parametrize("emit_interval_ms", [0, 1000])
@pytest.mark.parametrize("kind", ["mbp", "mbo"])
def test_live_book_features_equal_the_vectorised_backfill_at_every_tick(
    kind: str, emit_interval_ms: int
) -> None:
    items = _simulated(kind, 1.5)
    config = FeatureConfig(emit_interval_ms=emit_interval_ms, time_travel=False)
    engine = FeatureEngine(["WDOFUT", "WINFUT"], config)
    live: list[Features] = []
    for item in items:
        if isinstance(item, Tick):
            found = engine.on_tick(item)
            if found is not None:
                live.append(found)
        else:
            for event in item:
                engine.on_book(event)
    assert engine.book_late == engine.book_rejected == 0
    columns = {
        symbol: BookColumns.from_events(
            [e for b in items if isinstance(b, BookBatch) and b.symbol == symbol for e in b]
        )
        for symbol in ("WDOFUT", "WINFUT")
    }
    ticks = [t for t in items if isinstance(t, Tick)]
    again = backfill(
        FeatureEngine(["WDOFUT", "WINFUT"], config),
        ticks,
        book=lambda symbol, times: book_feature_table(columns[symbol], times),
    )
    assert [(f.symbol, f.timestamp_ms) for f in again] == [(f.symbol, f.timestamp_ms) for f in live]
    assert [f.values for f in again] == [f.values for f in live]
    assert sum(f.values["microprice"] is not None for f in live) > 0.9 * len(live)
    if emit_interval_ms == 0:  # every tick: among them those sharing a millisecond with a batch before them
        assert len(live) == len(ticks)
        batch_ms = {b.timestamp_ms for b in items if isinstance(b, BookBatch)}
        shared = sum(t.timestamp_ms in batch_ms for t in ticks)
        assert shared > 100, shared


def test_the_vectorised_table_is_none_where_a_side_is_empty() -> None:
    cols = BookColumns.from_events(snapshot(BASE_MS, [(5400.0, 30)], []))
    table = book_feature_table(cols, np.array([BASE_MS, BASE_MS + 1]))
    assert table.at(BASE_MS) == table.at(BASE_MS + 1) == (None,) * 4
    assert table.at(BASE_MS + 2) == (None,) * 4  # a time it was not computed for
