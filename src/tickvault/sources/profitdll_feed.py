"""ProfitDLL's book callbacks from the queue to validated `BookBatch`es, on tickvault's side.

The DLL's thread only copies a callback's arguments, and the bytes of its full-book pages, into an
`OfferCall` or a `PriceCall` and returns (`sources/profitdll.py`). Everything else happens here, on
the thread that reads the queue: `BookFeed.on_call` decodes the pages (`decode_offer_page`,
`decode_price_page`), hands the call to `OfferBookTranslator` / `PriceBookTranslator`
(`sources/profitdll_book.py`, the positional lists) and cuts the events into `BookBatch`es, one per
LAST flag (a callback gives one batch; a completed full book one snapshot group; a full book cut
short by another action its group, then that action's batch).

Each batch is checked before it goes out: one symbol, LAST on its last event only, SNAPSHOT on all
of its events or none, seq following the previous batch of its symbol and kind. Nothing bad is
raised: a page that does not decode, an event the translator could not build or a batch that fails
the checks is counted in `rejected` (by reason, with the translators' own: position, price, date,
...), and the call or batch is dropped. `desynced` counts positions outside our lists (the next full
book repairs them); `counters()` flattens all of it for health and metrics.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, NamedTuple, TypeAlias

from tickvault.domain.book import LAST, SNAPSHOT, BookBatch, BookEvent, BookKind, BookUpdate
from tickvault.errors import DataError
from tickvault.sources.profitdll_book import (
    OfferBookTranslator,
    PriceBookTranslator,
    decode_offer_page,
    decode_price_page,
)

log = logging.getLogger("tickvault.profitdll")


class OfferCall(NamedTuple):
    """One TOfferBookCallbackV2, copied: its arguments in order (the flags as booleans), the bytes of
    its full-book pages (None where the DLL passed no page) and when it arrived."""

    symbol: str
    action: int
    position: int
    side: int
    quantity: int
    agent: int
    offer_id: int
    price: float
    has_price: bool
    has_quantity: bool
    has_date: bool
    has_offer_id: bool
    has_agent: bool
    date: str
    sell: bytes | None
    buy: bytes | None
    received_ms: int


class PriceCall(NamedTuple):
    """One TPriceBookCallbackV2, copied likewise (`orders`: its nCount)."""

    symbol: str
    action: int
    position: int
    side: int
    quantity: int
    orders: int
    price: float
    sell: bytes | None
    buy: bytes | None
    received_ms: int


BookCall: TypeAlias = OfferCall | PriceCall


@dataclass
class FeedStats:
    calls: int = 0
    batches: int = 0
    events: int = 0
    rejected: Counter[str] = field(default_factory=Counter)  # the feed's own: page, event, batch, unexpected


class BookFeed:
    """Book calls in, validated batches out; the translators' positional lists live here."""

    def __init__(
        self,
        *,
        offer_edits: Literal["delta", "absolute"] = "delta",
        price_edits: Literal["delta", "absolute"] = "absolute",
    ) -> None:
        self.offers = OfferBookTranslator(edit_quantity=offer_edits)
        self.prices = PriceBookTranslator(edit_quantity=price_edits)
        self.stats = FeedStats()
        self._last_seq: dict[tuple[BookKind, str], int] = {}

    def on_call(self, call: BookCall) -> list[BookBatch]:
        """The batches one callback completes (none while a full book waits for its last page)."""
        self.stats.calls += 1
        try:
            events: Sequence[BookEvent] = self._translate(call)
        except DataError as exc:
            return self._reject(exc.kind, call, exc)
        except Exception as exc:  # noqa: BLE001 - a bug must cost one callback, not the session
            log.exception("ProfitDLL book callback for %s failed", call.symbol)
            return self._reject("unexpected", call, exc)
        batches: list[BookBatch] = []
        start = 0
        for i, event in enumerate(events):
            if event.flags & LAST:
                batch = BookBatch(events[start : i + 1])
                start = i + 1
                if self._valid(batch):
                    batches.append(batch)
        if start != len(events):  # events after the last LAST: a batch never closed
            self.stats.rejected["batch"] += 1
        self.stats.batches += len(batches)
        self.stats.events += sum(len(b) for b in batches)
        return batches

    def _translate(self, call: BookCall) -> Sequence[BookEvent]:
        if isinstance(call, OfferCall):
            sell = None if call.sell is None else decode_offer_page(call.sell)
            buy = None if call.buy is None else decode_offer_page(call.buy)
            return self.offers.on_offer(*call[:14], sell, buy, received_ms=call.received_ms)
        levels_sell = None if call.sell is None else decode_price_page(call.sell)
        levels_buy = None if call.buy is None else decode_price_page(call.buy)
        return self.prices.on_price(*call[:7], levels_sell, levels_buy, received_ms=call.received_ms)

    def _reject(self, reason: str, call: BookCall, exc: Exception) -> list[BookBatch]:
        self.stats.rejected[reason] += 1
        log.debug("ProfitDLL book callback for %s rejected: %s", call.symbol, exc)
        return []

    def _valid(self, batch: BookBatch) -> bool:
        kind: BookKind = "mbp" if isinstance(batch[0], BookUpdate) else "mbo"
        key = (kind, batch.symbol)
        first_seq, last_seq = batch[0].seq, batch[-1].seq
        expected = self._last_seq.get(key, first_seq - 1) + 1
        self._last_seq[key] = last_seq  # a rejected batch still moves the sequence on: no cascade
        snapshot = batch[0].flags & SNAPSHOT
        ok = (
            first_seq == expected
            and all(type(e) is type(batch[0]) and e.symbol == batch.symbol for e in batch)
            and all(e.seq == first_seq + i for i, e in enumerate(batch))
            and all(e.flags & SNAPSHOT == snapshot for e in batch)
            and not any(e.flags & LAST for e in batch[:-1])
        )
        if not ok:
            self.stats.rejected["batch"] += 1
            log.error("ProfitDLL book batch of %s (seq %d..%d) rejected", batch.symbol, first_seq, last_seq)
        return ok

    @property
    def rejected(self) -> Counter[str]:
        """Rejections by reason: the translators' (position, price, date, ...) and the feed's."""
        return self.offers.stats.rejected + self.prices.stats.rejected + self.stats.rejected

    @property
    def desynced(self) -> int:
        """Positions outside our lists: the lists no longer match the DLL's until the next full book."""
        return self.offers.stats.desynced + self.prices.stats.desynced

    def counters(self) -> dict[str, int]:
        """Flat counters for health and metrics."""
        offers, prices = self.offers.stats, self.prices.stats
        out = {
            "book_calls": self.stats.calls,
            "book_batches": self.stats.batches,
            "book_events": self.stats.events,
            "book_snapshots": offers.snapshots + prices.snapshots,
            "book_interrupted": offers.interrupted + prices.interrupted,
            "book_desynced": self.desynced,
            "book_rejected": sum(self.rejected.values()),
        }
        out.update({f"book_rejected_{reason}": n for reason, n in sorted(self.rejected.items())})
        return out
