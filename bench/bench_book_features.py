"""Book features for a backfill: the stored book's features at every tick of an hour, vectorised.

Data: the first hour of a simulated WDOFUT session (`sources.book_simulator`, seed 1, MBO and MBP),
its trades and its book. `analytics.book_features.book_feature_table` computes spread, imbalance,
5-level depth imbalance and microprice at every tick time at once (`frames_at`, depth 5); the naive
baseline it replaces is what a backfill calling `Store.book` per tick would do, without Valkey's round
trips: per tick, the book from the newest snapshot (one every 10,000 updates, as the store keeps
them) through the tick (`book_at`), then the same arithmetic; timed on a sample of ticks, checked
equal to the table there. Also: the live engine's cost, book updates/s through `FeatureEngine.on_book`
(features every second) against the bare live book's `apply`.
"""

from __future__ import annotations

import itertools
import time
from datetime import datetime

import numpy as np

from tickvault.analytics.book import book_at, live_book, snapshot_at
from tickvault.analytics.book_features import BOOK_FEATURES, DEPTH, book_feature_table, top_values
from tickvault.analytics.features import FeatureConfig, FeatureEngine
from tickvault.domain.book import LAST, BookColumns
from tickvault.domain.events import B3_TZ, Tick, to_ms
from tickvault.sources.book_simulator import SymbolBook

SYMBOL = "WDOFUT"
OPEN = datetime(2025, 11, 24, 9, 0, tzinfo=B3_TZ)
HOUR_MS = 3_600_000
SNAPSHOT_EVERY = 10_000
SAMPLE = 400


def simulated_hour(kind: str) -> list[object]:
    end = to_ms(OPEN) + HOUR_MS
    items = SymbolBook(SYMBOL, seed=1, start=OPEN, kind=kind).items()  # type: ignore[arg-type]
    return list(
        itertools.takewhile(
            lambda i: (i.timestamp_ms if isinstance(i, Tick) else i[0].timestamp_ms) < end, items
        )
    )


def naive_values(
    cols: BookColumns, ends: np.ndarray, end_ms: np.ndarray, snapshots: dict[int, BookColumns], t_ms: int
) -> tuple[object, ...]:
    """A per-tick read: the newest snapshot at or before the tick's cutoff (the batch ends and their
    times indexed beforehand, as the store indexes them), the rows after it, book_at."""
    j = int(np.searchsorted(end_ms, t_ms - 1, side="right"))
    if j == 0:
        return (None,) * len(BOOK_FEATURES)
    cut = int(ends[j - 1])
    base = max((s for s in snapshots if s <= cut), default=None)
    rows = cols.take(slice(0 if base is None else base + 1, cut + 1))
    replay = rows if base is None else BookColumns.concat([snapshots[base], rows])
    book = book_at(replay, t_ms - 1, DEPTH)
    return top_values(
        book.bid.price.tolist(),
        book.bid.quantity.tolist(),
        book.ask.price.tolist(),
        book.ask.quantity.tolist(),
    )


def run(kind: str) -> None:
    items = simulated_hour(kind)
    ticks = [i for i in items if isinstance(i, Tick)]
    events = [e for i in items if not isinstance(i, Tick) for e in i]  # type: ignore[union-attr]
    cols = BookColumns.from_events(events)  # type: ignore[arg-type]
    times = np.unique(np.array([t.timestamp_ms for t in ticks], np.int64))
    started = time.perf_counter()
    table = book_feature_table(cols, times)
    vectorised = time.perf_counter() - started
    # the store's snapshots: after the batch end at or after every 10,000th update (not timed)
    ends = cols.batch_ends()
    marks = np.unique(ends[np.searchsorted(ends, np.arange(SNAPSHOT_EVERY, len(cols), SNAPSHOT_EVERY))])
    snapshots = {int(m): snapshot_at(cols, int(m)) for m in marks}
    end_ms = np.maximum.accumulate(cols.timestamp_ms)[ends]
    sample = times[np.linspace(0, times.size - 1, SAMPLE).astype(int)]
    started = time.perf_counter()
    naive = [naive_values(cols, ends, end_ms, snapshots, int(t)) for t in sample]
    per_tick = (time.perf_counter() - started) / SAMPLE
    assert naive == [table.at(int(t)) for t in sample], "the baseline and the table disagree"
    print(
        f"{kind}: {len(cols):,} updates, {len(ticks):,} ticks at {times.size:,} distinct times; "
        f"table at every tick time {vectorised * 1000:,.0f} ms = {times.size / vectorised:,.0f} ticks/s | "
        f"per-tick book_at from the newest snapshot {per_tick * 1000:.2f} ms/tick = "
        f"{1 / per_tick:,.0f} ticks/s, all ticks ~{per_tick * times.size:,.1f} s | "
        f"ratio {per_tick * times.size / vectorised:,.0f}x"
    )
    # the live path: the book through the feature engine (features every second) vs the bare book
    bare = live_book(SYMBOL, kind)  # type: ignore[arg-type]
    started = time.perf_counter()
    for event in events:
        bare.apply(event)  # type: ignore[arg-type]
    bare_s = time.perf_counter() - started
    engine = FeatureEngine([SYMBOL], FeatureConfig(time_travel=False))
    started = time.perf_counter()
    for item in items:
        if isinstance(item, Tick):
            engine.on_tick(item)
        else:
            for event in item:  # type: ignore[attr-defined]
                engine.on_book(event)
    engine_s = time.perf_counter() - started
    assert sum(e.flags & LAST for e in events) and engine.book_late == 0  # type: ignore[attr-defined]
    print(
        f"{kind}: live, book updates through FeatureEngine.on_book (+ its {len(ticks):,} ticks) "
        f"{len(events) / engine_s:,.0f} updates/s | "
        f"the bare live book's apply {len(events) / bare_s:,.0f} updates/s"
    )


def main() -> None:
    for kind in ("mbp", "mbo"):
        run(kind)


if __name__ == "__main__":
    main()
