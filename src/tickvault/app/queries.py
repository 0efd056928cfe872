"""What the commands read from the store: `query --kind`, checked and read; `train`'s rows."""

from __future__ import annotations

import pandas as pd

from tickvault.analytics.candles import TIMEFRAMES
from tickvault.analytics.features import FeatureConfig
from tickvault.domain.instruments import instrument_for
from tickvault.domain.timeparse import parse_duration_ms
from tickvault.errors import ConfigError, DataError
from tickvault.ml.model import Dataset, training_set
from tickvault.store.api import Store, frame_to_ticks
from tickvault.workers.book_backfill import store_book
from tickvault.workers.session_history import store_history

EVENTS = ("features", "predictions", "signals")


BookKind = tuple[str, str, int]  # (what, step, depth)


def book_kind(kind: str) -> BookKind | None:
    """(what, step, depth) of an order-book --kind, None for any other kind."""
    what, _, rest = kind.partition(":")
    if what not in ("book", "book-frames", "book-changes", "quotes", "book-updates"):
        return None
    try:
        if what in ("book", "book-changes"):
            return what, "", int(rest) if rest else 10
        if what == "book-frames":
            step, _, depth = rest.partition(":")
            parse_duration_ms(step or "1s")
            return what, step or "1s", int(depth) if depth else 10
    except (ValueError, DataError):
        pass
    else:
        if not rest:
            return what, "", 0
    raise ConfigError(
        "--kind",
        kind,
        "must be book:N, book-frames:STEP[:N] (e.g. book-frames:1s:10), book-changes[:N], quotes or"
        " book-updates",
    )


def check_kind(kind: str, symbols: list[str], start: str | None = "", at: str | None = None) -> None:
    """ticks (of one symbol or several), features, predictions, signals, candles:TF, or the book's
    kinds (book:N needs --at; every other kind a --start)."""
    if len(symbols) > 1 and kind != "ticks":
        raise ConfigError("SYMBOL", ",".join(symbols), "several symbols at once are for --kind ticks only")
    book = book_kind(kind)
    if book is not None and book[0] == "book":
        if at is None:
            raise ConfigError("--at", None, f"--kind {kind} needs the moment: --at T")
        if book[2] <= 0:
            raise ConfigError("--kind", kind, "the depth must be a positive number of levels")
        return
    if start is None:
        raise ConfigError("--start", None, f"--kind {kind} needs a range: --start T [--end T]")
    if book is not None:
        if book[0] in ("book-frames", "book-changes") and book[2] <= 0:
            raise ConfigError("--kind", kind, "the depth must be a positive number of levels")
        return
    if kind == "ticks" or kind in EVENTS:
        return
    tf = kind.split(":", 1)[1] if kind.startswith("candles:") else ""
    if tf not in TIMEFRAMES:
        raise ConfigError(
            "--kind",
            kind,
            f"must be ticks, features, predictions, signals or candles:TF (TF in {', '.join(TIMEFRAMES)})",
        )


def read_kind(
    store: Store, kind: str, symbols: list[str], start: str | None, end: str, at: str | None = None
) -> pd.DataFrame:
    """The rows of `kind` between start and end (inclusive), or the book as of `at`; several
    symbols' ticks in one frame in time order, read from their nodes in parallel."""
    check_kind(kind, symbols, start, at)
    book = book_kind(kind)
    if book is not None:
        what, step, depth = book
        if what == "book":
            return store.book(symbols[0], at, depth)
        assert start is not None
        if what == "book-frames":
            return store.book_frames(symbols[0], start, end, step, depth)
        if what == "book-changes":
            return store.book_changes(symbols[0], start, end, depth)
        if what == "quotes":
            return store.quotes(symbols[0], start, end)
        return store.book_updates(symbols[0], start, end)
    assert start is not None
    if kind == "ticks":
        return store.ticks(symbols if len(symbols) > 1 else symbols[0], start, end)
    if kind in EVENTS:
        return store.events(kind, symbols[0], start, end)
    return store.candles(symbols[0], kind.split(":", 1)[1], start, end)


def training_data(
    store: Store,
    symbol: str,
    symbols: list[str],
    start: str,
    end: str,
    *,
    horizon_ms: int,
    config: FeatureConfig,
) -> Dataset:
    """`symbol`'s training rows, replayed from the stored ticks of `symbols` (the cross-symbol
    features need them all), with the stored history of earlier sessions and the stored book."""
    ticks = frame_to_ticks(store.ticks(symbols, start, end))
    return training_set(
        ticks, symbol, horizon_ms=horizon_ms, tick_size=instrument_for(symbol).tick_size, symbols=symbols,
        config=config, history=store_history(store), book=store_book(store),
    )  # fmt: skip
