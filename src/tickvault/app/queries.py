"""What the commands read from the store: `query --kind`, checked and read; `train`'s rows."""

from __future__ import annotations

import pandas as pd

from tickvault.analytics.candles import TIMEFRAMES
from tickvault.analytics.features import FeatureConfig
from tickvault.domain.instruments import instrument_for
from tickvault.errors import ConfigError
from tickvault.ml.model import Dataset, training_set
from tickvault.store.api import Store, frame_to_ticks
from tickvault.workers.session_history import store_history

EVENTS = ("features", "predictions", "signals")


def check_kind(kind: str, symbols: list[str]) -> None:
    """ticks (of one symbol or several), features, predictions, signals or candles:TF."""
    if len(symbols) > 1 and kind != "ticks":
        raise ConfigError("SYMBOL", ",".join(symbols), "several symbols at once are for --kind ticks only")
    if kind == "ticks" or kind in EVENTS:
        return
    tf = kind.split(":", 1)[1] if kind.startswith("candles:") else ""
    if tf not in TIMEFRAMES:
        raise ConfigError(
            "--kind",
            kind,
            f"must be ticks, features, predictions, signals or candles:TF (TF in {', '.join(TIMEFRAMES)})",
        )


def read_kind(store: Store, kind: str, symbols: list[str], start: str, end: str) -> pd.DataFrame:
    """The rows of `kind` between start and end (inclusive); several symbols' ticks in one frame in
    time order, read from their nodes in parallel."""
    check_kind(kind, symbols)
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
    features need them all), with the stored history of earlier sessions."""
    ticks = frame_to_ticks(store.ticks(symbols, start, end))
    return training_set(
        ticks, symbol, horizon_ms=horizon_ms, tick_size=instrument_for(symbol).tick_size, symbols=symbols,
        config=config, history=store_history(store),
    )  # fmt: skip
