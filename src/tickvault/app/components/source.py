"""The source: the market (`--source`: the simulator, a tick file, ProfitDLL) pumped into ingest
on its own thread, started last so every consumer is listening, stopped first."""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from tickvault.app.components.base import SummaryPart, Wiring, spawn
from tickvault.config import Settings
from tickvault.domain.book import BookBatch
from tickvault.domain.events import B3_TZ, Tick
from tickvault.errors import ConfigError, TickvaultError
from tickvault.sources.book_simulator import BookMarketSimulator
from tickvault.sources.simulator import SESSION, MarketSimulator, pace
from tickvault.store.api import Store

log = logging.getLogger("tickvault.system")

# An unpaced source (a file, the simulator at speed 0) is held back while this many of its ticks are
# not yet in Valkey: memory stays bounded, --duration means market produced and stored, and a stop
# drains in seconds. A live source (ProfitDLL, a paced simulator) is never held back: it is buffered.
MAX_UNSTORED = 20_000
_CHECK_EVERY = 1024

SourceFactory = Callable[[Store | None], Iterator[Tick | BookBatch]]


def simulator_resuming(
    settings: Settings, lasts: dict[str, Tick], *, book: bool = False
) -> MarketSimulator | BookMarketSimulator:
    """A simulator that continues after what the store already holds, so a second run adds new
    ticks (new times, new trade ids) instead of replaying the first run's ones as duplicates.
    `book`: the same ticks with an order book around them (`BookMarketSimulator`)."""
    start = SESSION.start_for(datetime.now(B3_TZ))
    first_ids: dict[str, int] = {}
    if lasts:
        # the moment the simulator will really start (a stop at the close resumes at the next open,
        # where trade ids restart at 1)
        start = SESSION.trading_moment(
            max(start, max(t.timestamp for t in lasts.values()) + timedelta(milliseconds=1))
        )
        session = start.astimezone(B3_TZ).strftime("%Y%m%d")
        first_ids = {s: t.trade_id + 1 for s, t in lasts.items() if t.session == session}
    simulator = BookMarketSimulator if book else MarketSimulator
    return simulator(settings.symbols, seed=settings.seed, start=start, first_trade_ids=first_ids)


class Source:
    name = "source"

    def __init__(self, wiring: Wiring, factory: SourceFactory | None, hold_back: bool) -> None:
        self.wiring = wiring
        self.factory = factory  # None: the simulator, continuing the stored market
        self.hold_back = hold_back
        self.error: Exception | None = None  # why the source stopped early, if it failed
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        w = self.wiring
        items: Iterator[Tick | BookBatch]
        if self.factory:
            items = self.factory(w.store)
        else:
            simulator = simulator_resuming(w.settings, w.lasts(), book=w.book_unstored is not None)
            made = simulator.events() if isinstance(simulator, BookMarketSimulator) else simulator.ticks()
            items = pace(made, w.settings.speed, stop=w.stop)
        self._thread = spawn("source", self._pump, items)

    def _unstored(self) -> int:
        w = self.wiring
        return max(w.unstored(), w.book_unstored() if w.book_unstored is not None else 0)

    def _pump(self, ticks: Iterator[Tick | BookBatch]) -> None:
        w = self.wiring
        hold = self.hold_back and w.recorder is not None
        try:
            for n, tick in enumerate(ticks):
                if w.stop.is_set():
                    break
                if hold and n % _CHECK_EVERY == 0:
                    while self._unstored() > MAX_UNSTORED and not w.stop.wait(0.005):
                        pass
                if isinstance(tick, BookBatch):
                    w.ingest.on_book(tick)
                else:
                    w.ingest.on_tick(tick)
        except TickvaultError as exc:  # a refused login, a missing library: one clear line, no traceback
            self.error = exc
            log.error("source failed: %s", exc)
        except Exception as exc:
            self.error = exc
            log.exception("source failed")
        finally:
            w.source_done.set()

    def stop(self) -> SummaryPart | None:
        self.wiring.stop.set()  # the run's stop is the source's: it also ends a live feed's queue
        if self._thread is not None:
            self._thread.join(10)
        return {"generated": Counter(self.wiring.ingest.stats.generated)}

    def counters(self) -> dict[str, int]:
        return {}


@dataclass(frozen=True)
class SourceSpec:
    """What `run --source` names: `sim`, `replay:PATH` (a CSV/Parquet tick file or book file;
    `replay:TICKS,BOOK` both, merged by time), `store:START..END` (the live store's recorded ticks
    and book, run into a namespace) or `profitdll`."""

    spec: str
    replay: Path | None = None
    book_file: Path | None = None  # a book file to replay (told from a tick file by its columns)
    symbols: str | None = None  # for the settings: a file's own symbols when none were given
    symbol: str | None = None  # the one symbol a file without a symbol column plays as
    stored: tuple[int, int] | None = None  # store:START..END as inclusive epoch ms

    @classmethod
    def parse(cls, spec: str, symbols: str | None) -> SourceSpec:
        if spec in ("sim", "profitdll"):
            return cls(spec, symbols=symbols)
        if spec.startswith("store:"):
            return cls(spec, symbols=symbols, stored=parse_range(spec.removeprefix("store:")))
        if not spec.startswith("replay:"):
            raise ConfigError("--source", spec, "must be sim, replay:PATH, store:START..END or profitdll")
        from tickvault.sources.book_files import book_file_symbols, is_book_path
        from tickvault.sources.files import file_symbols

        given = spec.removeprefix("replay:")
        paths = [Path(given)] if Path(given).is_file() else [Path(p.strip()) for p in given.split(",")]
        for path in paths:
            if not path.is_file():
                raise ConfigError("--source", spec, f"{path} is not a file")
        books = [p for p in paths if is_book_path(p, symbol=symbols)]
        ticks = [p for p in paths if p not in books]
        if len(books) > 1 or len(ticks) > 1:
            raise ConfigError("--source", spec, "must be replay:FILE or replay:TICKS,BOOK (one of each)")
        replay = ticks[0] if ticks else None
        book_file = books[0] if books else None
        if symbols is None:
            found = file_symbols(replay) if replay is not None else []
            found += book_file_symbols(book_file) if book_file is not None else []
            symbols = ",".join(dict.fromkeys(found)) or None
        # a file without a symbol column plays as the one symbol given
        return cls(spec, replay, book_file, symbols, symbols if symbols and "," not in symbols else None)

    @property
    def live(self) -> bool:
        """A live feed is buffered, never held back, and continues the stored session."""
        return self.spec == "profitdll"

    @property
    def makes_book(self) -> bool:
        """Whether the source makes order-book batches (for the book component of the run)."""
        return self.spec in ("sim", "profitdll") or self.stored is not None or self.book_file is not None

    def makes_book_with(self, settings: Settings) -> bool:
        """`makes_book`, unless PROFIT_BOOK=none leaves ProfitDLL's book alone (trades only)."""
        return self.makes_book and not (self.live and settings.profit_book == "none")

    def factory(self, settings: Settings, stop: threading.Event) -> SourceFactory | None:
        """How the ticks are made (None: the simulator); `stop` ends a live feed."""
        if self.replay is not None or self.book_file is not None:
            return _replay(self.replay, self.book_file, settings.speed, self.symbol)
        if self.stored is not None:
            return _from_store(*self.stored, settings, stop)
        if self.live:
            from tickvault.sources.profitdll import profitdll_source

            book = settings.profit_book if settings.book_enabled else "none"
            return profitdll_source(settings, stop, book=book)
        return None


def _replay(path: Path | None, book_file: Path | None, speed: float, symbol: str | None) -> SourceFactory:
    """A tick file, a book file, or both merged by time, as the market: paced at --speed (0: as fast
    as possible); a bad row is logged with its line and reason and skipped, the rest plays on."""
    from tickvault.sources.book_files import read_book
    from tickvault.sources.files import BadRow, read_ticks
    from tickvault.sources.store_book_replay import by_time

    replay_log = logging.getLogger("tickvault.replay")

    def good(name: str, items: Iterator[Tick | BookBatch | BadRow]) -> Iterator[Tick | BookBatch]:
        for item in items:
            if isinstance(item, BadRow):
                replay_log.error("replay %s: rejected %s", name, item)
                continue
            yield item

    def played(_: Store | None) -> Iterator[Tick | BookBatch]:
        streams: list[Iterator[Tick | BookBatch]] = []
        if path is not None:
            streams.append(good(path.name, read_ticks(path, symbol=symbol)))
        if book_file is not None:
            streams.append(good(book_file.name, read_book(book_file, symbol=symbol)))
        return pace(by_time(*streams) if len(streams) > 1 else streams[0], speed)

    return played


def parse_range(text: str) -> tuple[int, int]:
    """`START..END` (each as `query --start` takes it) to inclusive epoch ms; an end before the start
    or a missing part is refused."""
    from tickvault.domain.timeparse import to_ms_bounds

    start, sep, end = text.partition("..")
    if not sep or not start.strip() or not end.strip():
        raise ConfigError(
            "--source", f"store:{text}", "must be store:START..END, e.g. store:2025-11-24..2025-11-25"
        )
    return to_ms_bounds(start.strip(), end.strip())


def _from_store(start_ms: int, end_ms: int, settings: Settings, stop: threading.Event) -> SourceFactory:
    """The live store's ticks and book updates of the range as the market, merged by time, paced
    like a file replay. It needs a namespace: a replay's output must never land among the live data
    it reads."""
    from tickvault.sources.store_book_replay import by_time, store_book_batches
    from tickvault.sources.store_replay import store_ticks

    if not settings.namespace:
        raise ConfigError(
            "--namespace", "", "store:START..END replays into a namespace; give --namespace NAME"
        )

    def ticks(store: Store | None) -> Iterator[Tick | BookBatch]:
        if store is None:
            raise ConfigError("--source", "store", "a replay from the store needs Valkey (--valkey)")
        live = Store(store.client, store.keys.live())
        streams: list[Iterator[Tick | BookBatch]] = [store_ticks(live, settings.symbols, start_ms, end_ms)]
        if settings.book_enabled:
            streams.append(store_book_batches(live, settings.symbols, start_ms, end_ms))
        played = by_time(*streams)
        return pace(played, settings.speed, stop=stop)

    return ticks
