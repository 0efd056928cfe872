"""Order book reconstruction: updates/s, book_frames (1 h, 1 s, 10 levels), book as of T.

Data: the first hour of a simulated WDOFUT session (`sources.book_simulator`, seed 1), order by
order (MBO) and by level (MBP): the busiest hour of the day. tickvault's vectorised readers
(`analytics.book`: book_frames, quotes, book_at) and its live engine beside the naive baseline, a
per-update Python dict book replayed from the start and sorted at every step, on the same columns
in the same run. The readers' frames are checked equal to the baseline's.
"""

from __future__ import annotations

import itertools
import statistics
import time
from collections.abc import Callable
from datetime import datetime

import numpy as np

from tickvault.analytics.book import book_at, book_frames, live_book, quotes
from tickvault.domain.book import ASK, BID, CLEAR, DELETE, BookColumns
from tickvault.domain.events import B3_TZ, Tick, to_ms
from tickvault.sources.book_simulator import SymbolBook

SYMBOL = "WDOFUT"
OPEN = datetime(2025, 11, 24, 9, 0, tzinfo=B3_TZ)
HOUR_MS = 3_600_000
DEPTH = 10


def simulated_hour(kind: str) -> BookColumns:
    end = to_ms(OPEN) + HOUR_MS
    items = SymbolBook(SYMBOL, seed=1, start=OPEN, kind=kind).items()  # type: ignore[arg-type]
    batches = itertools.takewhile(
        lambda i: (i.timestamp_ms if isinstance(i, Tick) else i[0].timestamp_ms) < end, items
    )
    return BookColumns.from_events(e for item in batches if not isinstance(item, Tick) for e in item)


def _median_s(run: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def naive_frames(cols: BookColumns, times: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The baseline: a dict per side updated row by row; at every step the book sorted, top N kept.
    (MBO: an order dict, levels summed at every step.)"""
    bid_px, ask_px = np.full((times.size, DEPTH), np.nan), np.full((times.size, DEPTH), np.nan)
    books: list[dict[float, int]] = [{}, {}]
    orders: dict[int, tuple[int, float, int]] = {}
    step = 0
    rows = zip(
        cols.timestamp_ms.tolist(),
        cols.side.tolist(),
        cols.price.tolist(),
        cols.quantity.tolist(),
        cols.order_id.tolist(),
        cols.action.tolist(),
        strict=True,
    )

    def record(k: int) -> None:
        if cols.kind == "mbo":
            books[0], books[1] = {}, {}
            for side, price, quantity in orders.values():
                books[side][price] = books[side].get(price, 0) + quantity
        for side, out in ((BID, bid_px), (ASK, ask_px)):
            best = sorted(books[side], reverse=side == BID)[:DEPTH]
            out[k, : len(best)] = best

    for ts, side, price, quantity, order_id, action in rows:
        while step < times.size and ts > times[step]:  # a batch's rows share its time: read between batches
            record(step)
            step += 1
        if action == CLEAR:
            for s in (BID, ASK) if side == 2 else (side,):
                books[s].clear()
                orders = {k: v for k, v in orders.items() if v[0] != s}
        elif cols.kind == "mbp":
            if action == DELETE or quantity == 0:
                books[side].pop(price, None)
            else:
                books[side][price] = quantity
        elif action == DELETE or quantity == 0:
            orders.pop(order_id, None)
        else:
            orders[order_id] = (side, price, quantity)
    while step < times.size:
        record(step)
        step += 1
    return bid_px, ask_px


def run(kind: str) -> None:
    start = time.perf_counter()
    cols = simulated_hour(kind)
    n = len(cols)
    print(f"\n  {kind.upper()}: {n:,} updates in the hour (simulated in {time.perf_counter() - start:.1f} s)")
    t0 = int(cols.timestamp_ms[0])
    t1 = t0 + HOUR_MS - 1
    frames_s = _median_s(lambda: book_frames(cols, t0, t1, 1000, DEPTH), 5)
    frames = book_frames(cols, t0, t1, 1000, DEPTH)
    quotes_s = _median_s(lambda: quotes(cols), 3)
    at_end_s = _median_s(lambda: book_at(cols, t1, DEPTH), 5)
    # book(at=T) as the store serves it: from the last periodic snapshot (here: one a minute)
    book = live_book(SYMBOL, kind)  # type: ignore[arg-type]
    cut = int(np.searchsorted(cols.timestamp_ms, t1 - 60_000))
    cut = int(cols.batch_ends()[np.searchsorted(cols.batch_ends(), cut) - 1])
    book.apply_columns(cols.take(slice(0, cut + 1)))
    recent = BookColumns.concat(
        [BookColumns.from_events(book.snapshot(int(cols.timestamp_ms[cut]))), cols.take(slice(cut + 1, None))]
    )
    at_snapshot_s = _median_s(lambda: book_at(recent, t1, DEPTH), 21)
    fresh = live_book(SYMBOL, kind)  # type: ignore[arg-type]
    live_s = _median_s(lambda: fresh.apply_columns(cols), 1)
    naive_start = time.perf_counter()
    bid_px, ask_px = naive_frames(cols, frames.time_ms)
    naive_s = time.perf_counter() - naive_start
    same = np.array_equal(bid_px, frames.bid_price, equal_nan=True) and np.array_equal(
        ask_px, frames.ask_price, equal_nan=True
    )
    batches = len(cols.batch_ends())
    rate = lambda seconds: f"{n / seconds / 1e6:.1f}M updates/s"  # noqa: E731
    print(f"  book_frames(1 h, every 1 s, {DEPTH} levels): {frames_s * 1e3:.0f} ms = {rate(frames_s)}")
    print(f"  quotes (top of book after {batches:,} batches): {quotes_s * 1e3:.0f} ms = {rate(quotes_s)}")
    print(
        f"  book(at=T) from a snapshot a minute before ({len(recent):,} rows): {at_snapshot_s * 1e3:.2f} ms"
    )
    print(f"  book(at=T) from the session start ({n:,} rows): {at_end_s * 1e3:.1f} ms")
    print(f"  live engine, update by update: {rate(live_s)}")
    print(f"  naive baseline (dict per update, sorted per step): {naive_s * 1e3:.0f} ms = {rate(naive_s)}")
    print(f"  book_frames {naive_s / frames_s:.1f}x faster than the baseline; frames equal: {same}")


def main() -> None:
    for kind in ("mbp", "mbo"):
        run(kind)


if __name__ == "__main__":
    main()
