"""`tickvault backtest`: a model judged on a recorded range through the live code path.

The range is replayed from the store exactly as `run --source store:START..END --namespace NAME
--speed 0` replays it: the same `System`, its components as `run` builds them with no web page and
no ZeroMQ (the core flow and the recorder are fed in-process), its output in the namespace. Once the
system has stopped (each component drains its input first, so every replayed tick has been folded
and every prediction and signal written), the namespace's predictions, signals and the features'
prices are read back and scored against labels from the replayed ticks (`ml.scoring`), and the
report is written (`ml.report.write_backtest_report`).

Everything it is given is checked before anything runs: the range, the model file and the symbols
it predicts, symbols the store knows with ticks in the range, a namespace not used yet.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from tickvault.app.components.source import SourceSpec
from tickvault.app.system import System
from tickvault.config import Settings
from tickvault.domain.events import from_ms
from tickvault.domain.instruments import instrument_for
from tickvault.errors import ConfigError, DataError, TickvaultError
from tickvault.ml.decisions import model_covers
from tickvault.ml.model import LABELS, TrainedModel, load
from tickvault.ml.report import write_backtest_report
from tickvault.ml.scoring import Score, SymbolRun, in_time_order, score, scored_rows
from tickvault.store.api import Store
from tickvault.store.block_codec import Columns


@dataclass(frozen=True)
class BacktestResult:
    namespace: str
    ticks: int  # replayed
    by_symbol: dict[str, Score]  # the symbols the model predicts
    total: Score
    report: Path

    def summary(self) -> str:
        t = self.total
        hit = "n/a" if np.isnan(t.hit_rate) else f"{t.hit_rate:.4f}"
        return (f"backtest: ticks={self.ticks} predictions={t.predictions} labelled={t.labelled}"
                f" trades={t.trades} hit_rate={hit} equity={t.equity:.2f} BRL"
                f" namespace={self.namespace} report={self.report}")  # fmt: skip


# what a backtest changes in the run's settings: unpaced, no page, no bus
RUN_SETTINGS: dict[str, object] = {
    "speed": 0.0, "web_enabled": False, "zmq_enabled": False, "zmq_consume_enabled": False,
}  # fmt: skip


def default_namespace() -> str:
    return datetime.now(UTC).strftime("backtest-%Y%m%dT%H%M%S-%f")


def run_backtest(
    settings: Settings,
    store: Store,
    start_ms: int,
    end_ms: int,
    *,
    output: Path,
    fee: float,
    stop: threading.Event | None = None,
) -> BacktestResult:
    """Replay [start_ms, end_ms] of `settings.symbols` with `settings.model_file` into
    `settings.namespace` (`store`: that namespace's), score it, write the report to `output`."""
    if not settings.namespace:
        raise ConfigError("--namespace", "", "a backtest writes into a namespace of its own")
    replayed = _replayed_ticks(Store(store.client, store.keys.live()), settings.symbols, start_ms, end_ms)
    model = _model(settings.model_file)
    predicted = [s for s in settings.symbols if model_covers(model, s)]
    if not predicted:
        raise ConfigError(
            "SYMBOL", ",".join(settings.symbols), f"model {model.name} predicts {model.info.symbol} only"
        )
    _check_unused(store, settings.namespace)
    expected = sum(len(c) for c in replayed.values())
    ticks = _replay(settings, start_ms, end_ms, stop or threading.Event(), expected)
    info, parts, by_symbol = model.info, [], {}
    mult = {s: instrument_for(s).multiplier for s in predicted}
    for symbol in predicted:
        run = _symbol_run(store, symbol, replayed[symbol], start_ms, end_ms)
        rows = scored_rows(
            run, horizon_ms=info.horizon_ms, tick_size=info.tick_size, multiplier=mult[symbol], fee=fee
        )
        parts.append(rows)
        by_symbol[symbol] = score(rows, len(run.at_ms))
    rows = in_time_order(parts)
    total = score(rows, sum(s.predictions for s in by_symbol.values()))
    about = (f"Model {model.name} (trained on {info.symbol}, {info.train_start} to {info.train_end}, horizon"
             f" {info.horizon_ms / 1000:g} s; signals at P >= {settings.signal_threshold:g}), replayed from"
             f" {from_ms(start_ms).isoformat()} to"
             f" {from_ms(end_ms).isoformat()} ({', '.join(settings.symbols)}) through the live pipeline into"
             f" namespace {settings.namespace}: {ticks:,} ticks. Labels as in training, from the"
             f" replayed trades; a prediction whose horizon runs past the last of its session is not"
             f" scored.")  # fmt: skip
    report = write_backtest_report(about, by_symbol, total, rows, output, fee=fee)
    return BacktestResult(settings.namespace, ticks, by_symbol, total, report)


def _model(path: Path) -> TrainedModel:
    if not path.is_file():
        raise ConfigError("--model", str(path), "no model file there (train one with `tickvault train`)")
    return load(path)


def _replayed_ticks(live: Store, symbols: tuple[str, ...], start_ms: int, end_ms: int) -> dict[str, Columns]:
    """Each symbol's stored ticks of the range (what the replay will play, and what labels them);
    a symbol the store never recorded, or a range with none of any, is refused."""
    known = set(live.symbols())
    unknown = [s for s in symbols if s not in known]
    if unknown:
        raise ConfigError("SYMBOL", ",".join(unknown), "the store holds no ticks of it (unknown symbol)")
    out = {s: live.columns(s, start_ms, end_ms) for s in symbols}
    empty = [s for s, c in out.items() if not len(c)]
    if empty:
        between = f"between {from_ms(start_ms).isoformat()} and {from_ms(end_ms).isoformat()}"
        raise DataError("--start/--end", f"no ticks of {','.join(empty)} {between}")
    return out


def _check_unused(store: Store, namespace: str) -> None:
    """A namespace that holds data would mix another run's events into this one's report."""
    if next(iter(store.client.scan_iter(match=f"{store.keys.prefix}*", count=1000)), None) is not None:
        raise ConfigError("--namespace", namespace, "already holds data; a backtest needs a new namespace")


def _replay(settings: Settings, start_ms: int, end_ms: int, stop: threading.Event, expected: int) -> int:
    """The replay through the run's own System; returns the ticks it played, once every one of the
    `expected` ticks of the range has been played, folded and its events written."""
    spec = SourceSpec(
        f"store:{start_ms}..{end_ms}", symbols=",".join(settings.symbols), stored=(start_ms, end_ms)
    )
    system = System(settings, source=spec.factory(settings, stop))
    system.stop_event = stop
    system.start()
    try:
        system.wait()
    except KeyboardInterrupt:
        pass  # stopped below like any other end; the count says it was cut short
    finally:
        summary = system.stop()
    error = system.source_error
    if isinstance(error, TickvaultError):
        raise error
    if error is not None:
        raise TickvaultError(f"the replay's source failed: {error!r}") from error
    played, counters = summary.generated_total, summary.counters
    if played < expected:
        raise TickvaultError(
            f"backtest stopped after {played:,} of the range's {expected:,} ticks: no report"
        )
    if played > expected:  # a recorder writing into the range meanwhile: labels would miss ticks
        raise TickvaultError("the range gained ticks while it was replayed: give an --end in the past")
    lost = counters.get("features_dropped", 0) + counters.get("feature_errors", 0)
    if not summary.drained or counters.get("feature_ticks") != played or lost:
        raise TickvaultError(
            f"the replay did not complete (drained={summary.drained}, {counters}): no report"
        )
    return played


def _symbol_run(store: Store, symbol: str, ticks: Columns, start_ms: int, end_ms: int) -> SymbolRun:
    """One symbol's predictions and signals from the namespace, each with the price its features saw
    (each prediction and its signal follow their features in their streams, one for one)."""
    features = store.events("features", symbol, start_ms, end_ms)
    predictions = store.events("predictions", symbol, start_ms, end_ms)
    signals = store.events("signals", symbol, start_ms, end_ms)
    at = predictions["timestamp_ms"].to_numpy(np.int64) if len(predictions) else np.empty(0, np.int64)
    for name, other in (("features", features), ("signals", signals)):
        ms = other["timestamp_ms"].to_numpy(np.int64) if len(other) else np.empty(0, np.int64)
        if not np.array_equal(ms, at):
            raise TickvaultError(f"{symbol}: {len(at)} predictions and {len(ms)} {name} do not pair up")
    trades = ~ticks.is_edit.astype(bool)
    probabilities = predictions[list(LABELS)].to_numpy(float) if len(predictions) else np.empty((0, 3))
    return SymbolRun(
        symbol, ticks.timestamp_ms[trades], ticks.price[trades], at,
        features["price"].to_numpy(float) if len(features) else np.empty(0),
        probabilities, signals["action"].to_numpy(object) if len(signals) else np.empty(0, object),
    )  # fmt: skip
