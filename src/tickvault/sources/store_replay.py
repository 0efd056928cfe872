"""Recorded ticks as a market (`run --source store:START..END`): a range of the live store read back
by columns, a window at a time, the symbols merged in exchange-time order and handed on as Ticks.

The order is a pure function of what is stored: exchange time, ties between symbols in the order the
symbols are named, ties within a symbol in the store's own order (`Store.columns`: by the source's
sequence number). So two replays of one range feed the pipeline the same ticks in the same order.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

from tickvault.domain.events import Tick, stored_ticks
from tickvault.domain.tick_schema import COLUMNS
from tickvault.store.api import Store
from tickvault.store.block_codec import Columns

WINDOW_MS = 3_600_000  # read an hour of every symbol at a time: memory stays bounded on long ranges
CHUNK = 65_536  # Ticks made at a time: an hour of a busy day is millions of objects


def merged_windows(
    store: Store, symbols: Sequence[str], start_ms: int, end_ms: int, window_ms: int = WINDOW_MS
) -> Iterator[tuple[np.ndarray, Columns]]:
    """(symbol index per row, columns) of [start_ms, end_ms], one window at a time, rows in replay
    order (windows are disjoint in time, so their concatenation is in order too)."""
    lo = start_ms
    while lo <= end_ms:
        hi = min(end_ms, lo + window_ms - 1)
        parts = [store.columns(symbol, lo, hi) for symbol in symbols]
        if any(len(p) for p in parts):
            which = np.concatenate([np.full(len(p), i, dtype=np.int32) for i, p in enumerate(parts)])
            both = Columns.concat(parts)
            # stable: ties keep the symbols' order, and each symbol's own order
            order = np.argsort(both.timestamp_ms, kind="stable")
            yield which[order], both.take(order)
        lo = hi + 1


def store_ticks(store: Store, symbols: Sequence[str], start_ms: int, end_ms: int) -> Iterator[Tick]:
    """The stored ticks of `symbols` in [start_ms, end_ms] as Ticks, in replay order. `seq` is left
    0: ingest numbers the replay's ticks afresh, as it does any source's. Built by `stored_ticks`,
    without checking again what the recorder checked: the one source whose values come from the
    store only."""
    names = np.array(list(symbols), dtype=object)
    for which, c in merged_windows(store, list(symbols), start_ms, end_ms):
        for lo in range(0, len(c), CHUNK):
            arrays = {name: getattr(c, name)[lo : lo + CHUNK] for name in COLUMNS if name != "seq"}
            yield from stored_ticks(names[which[lo : lo + CHUNK]].tolist(), arrays)
