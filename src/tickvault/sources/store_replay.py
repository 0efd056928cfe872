"""Recorded ticks as a market (`run --source store:START..END`): a range of the live store read back
by columns, a window at a time, the symbols merged in exchange-time order and handed on as Ticks.

The order is a pure function of what is stored: exchange time, ties between symbols in the order the
symbols are named, ties within a symbol in the store's own order (`Store.columns`: by the source's
sequence number). So two replays of one range feed the pipeline the same ticks in the same order.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

from tickvault.domain.events import Tick, from_ms
from tickvault.domain.tick_schema import AGGRESSOR_CODES
from tickvault.store.api import Store
from tickvault.store.block_codec import Columns

WINDOW_MS = 3_600_000  # read an hour of every symbol at a time: memory stays bounded on long ranges


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
    0: ingest numbers the replay's ticks afresh, as it does any source's."""
    names = list(symbols)
    for which, c in merged_windows(store, names, start_ms, end_ms):
        rows = zip(
            which.tolist(), c.timestamp_ms.tolist(), c.trade_id.tolist(), c.price.tolist(),
            c.volume.tolist(), c.quantity.tolist(), c.buyer.tolist(), c.seller.tolist(),
            c.trade_type.tolist(), c.aggressor.tolist(), c.is_edit.tolist(), strict=True,
        )  # fmt: skip
        for s, ms, trade_id, price, volume, quantity, buyer, seller, trade_type, aggressor, is_edit in rows:
            yield Tick(
                symbol=names[s], timestamp=from_ms(ms), timestamp_ms=ms, trade_id=trade_id, price=price,
                volume=volume, quantity=quantity, buyer=buyer, seller=seller, trade_type=trade_type,
                aggressor=AGGRESSOR_CODES[aggressor], is_edit=bool(is_edit),
            )  # fmt: skip
