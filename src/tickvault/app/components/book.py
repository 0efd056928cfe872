"""The order book's part of a run (`BOOK_ENABLED`, `run --no-book`): `BookFlow` (app/book_flow.py)
publishes the source's book batches on the book port and records them; the core flow (started after
it) takes every batch for its live book, in-process or from this bus (`Wiring.book_publisher`). It
runs for a source that makes a book (the simulator, ProfitDLL's offer book, a book file, a store
replay: `System(book=...)`); for others it is left out. `run --only recorder` records the book frames
of the bus too."""

from __future__ import annotations

from tickvault.app.book_flow import BookFlow
from tickvault.app.components.base import SummaryPart, Wiring, client_keys_of, own_client_keys, server_keys_of
from tickvault.store.api import Store


class Book:
    name = "book"

    def __init__(self, wiring: Wiring, *, recorder_only: bool = False) -> None:
        self.wiring = wiring
        self.recorder_only = recorder_only
        self.flow = BookFlow(wiring.settings, wiring.ingest, private_bus=wiring.private_bus)
        wiring.book_unstored = self.flow.unstored

    def start(self) -> None:
        w, s = self.wiring, self.wiring.settings
        if w.connection is not None:
            self.flow.store = Store(w.connection.client("book-recorder"), keys=w.connection.keys)
        if self.recorder_only:
            assert w.store is not None
            symbols = w.record_only or tuple(dict.fromkeys((*s.symbols, *w.store.symbols())))
            self.flow.start_recorder_only(symbols, bool(w.record_only), client_keys_of(s))
            return
        self.flow.start(
            record=w.recorder is not None,
            features=None,  # the core flow feeds itself (`CoreFlow._feed`)
            server_keys=server_keys_of(s),
            client_keys=own_client_keys(s, w.private_bus),
        )
        w.book_publisher = self.flow.publisher

    def stop(self) -> SummaryPart | None:
        return {"drained": self.flow.stop()}

    def counters(self) -> dict[str, int]:
        return self.flow.counters()

    def describe(self) -> str:
        return self.flow.describe()

    @property
    def degraded(self) -> list[str]:
        return self.flow.degraded
