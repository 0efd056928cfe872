"""`tickvault backtest`: a recorded range replayed with a model through the live pipeline into a
namespace, scored against what the market did next, reported."""

from __future__ import annotations

import itertools
import re
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from test_feature_service import SYMBOLS, TODAY, past_sessions
from test_replay import all_keys
from tickvault.analytics.features import FeatureConfig
from tickvault.app.backtest import RUN_SETTINGS, run_backtest
from tickvault.app.cli import app
from tickvault.config import load_settings
from tickvault.domain.keys import KeySpace
from tickvault.domain.timeparse import to_ms_bounds
from tickvault.errors import TickvaultError
from tickvault.ml.scoring import SymbolRun, score, scored_rows
from tickvault.sources.simulator import MarketSimulator
from tickvault.store.api import Store

runner = CliRunner()
START, END = "2025-11-24T09:00:00-03:00", "2025-11-24T12:00:00-03:00"


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    import tickvault.ml.model as model_module
    from test_model import planted_sessions
    from tickvault.ml.model import save, train, training_set

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(model_module, "ITERATIONS", 30)
        data = training_set(planted_sessions(2), "WDOFUT", horizon_ms=60_000, tick_size=0.5,
                            config=FeatureConfig(emit_interval_ms=30_000))  # fmt: skip
        path = tmp_path_factory.mktemp("model") / "model.pkl"
        save(train(data, "WDOFUT", horizon_ms=60_000, tick_size=0.5)[0], path)
    yield path


def recorded_morning(store: Store) -> None:
    past_sessions(store, days=2)  # the history-aware features read previous sessions
    today = list(itertools.islice(MarketSimulator(list(SYMBOLS), seed=9, start=TODAY).ticks(), 0, 40_000, 5))
    store.append_ticks(today)
    store.writer.release()


def numbers(line: str) -> str:
    """A summary line without what differs between two backtests (their namespace and report)."""
    assert line.startswith("backtest: ticks="), line
    return re.sub(r" namespace=\S+ report=\S+", "", line)


def test_two_backtests_of_a_range_report_the_same_numbers_and_touch_no_live_key(
    system_env: dict[str, str],
    store: Store,
    model: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SIGNAL_THRESHOLD", "0.34")  # so that this model trades
    recorded_morning(store)
    before = all_keys(store.client)

    args = ["backtest", ",".join(SYMBOLS), "--start", START, "--end", END, "--model", str(model)]
    result = runner.invoke(app, [*args, "--namespace", "bt-a", "--output", str(tmp_path / "a.html")])
    assert result.exit_code == 0, result.output
    line = result.stdout.strip().splitlines()[-1]

    settings = load_settings(symbols=",".join(SYMBOLS), namespace="bt-b", model_path=model, **RUN_SETTINGS)
    ns = Store(store.client, KeySpace(namespace="bt-b"))
    start_ms, end_ms = to_ms_bounds(START, END)
    again = run_backtest(settings, ns, start_ms, end_ms, output=tmp_path / "b.html", fee=1.0)

    # the same numbers, from a replay of every tick of the range, and a scored model
    assert numbers(again.summary()) == numbers(line)
    assert again.ticks == len(store.ticks(list(SYMBOLS), START, END))
    assert list(again.by_symbol) == ["WDOFUT"]  # the model's symbol; WINFUT only feeds its features
    total = again.total
    assert total.predictions == len(ns.events("predictions", "WDOFUT", START, END)) > 100
    assert 0 < total.labelled < total.predictions  # the last minute's horizon runs past the range
    assert total.trades > 0 and 0.0 <= total.hit_rate <= 1.0
    assert sum(map(sum, total.confusion)) == total.labelled
    page = (tmp_path / "a.html").read_text()
    assert "Hit rate" in page and "Confusion matrix" in page and f"{total.equity:,.2f} BRL" in page
    # only the two namespaces' keys are new
    new = all_keys(store.client) - before
    assert new and all(k.startswith(("ns:bt-a:", "ns:bt-b:")) for k in new), sorted(new)[:5]


def test_a_backtest_stopped_before_the_end_of_its_range_writes_no_report(
    system_env: dict[str, str], store: Store, model: Path, tmp_path: Path
) -> None:
    store.append_ticks(list(itertools.islice(MarketSimulator(["WDOFUT"], seed=9, start=TODAY).ticks(), 500)))
    settings = load_settings(symbols="WDOFUT", namespace="cut", model_path=model, **RUN_SETTINGS)
    stopped = threading.Event()
    stopped.set()  # Ctrl+C, SIGTERM: before the first tick
    with pytest.raises(TickvaultError, match="stopped after 0 of the range's 500 ticks"):
        run_backtest(settings, Store(store.client, KeySpace(namespace="cut")), *to_ms_bounds(START, END),
                     output=tmp_path / "r.html", fee=1.0, stop=stopped)  # fmt: skip
    assert not (tmp_path / "r.html").exists()


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["WDOFUT", "--start", "2025-11-25", "--end", "2025-11-24"], "before start"),
        (["PETR4", "--start", START, "--end", END], "unknown symbol"),
        (["WDOFUT", "--start", "2020-01-02", "--end", "2020-01-03"], "no ticks of WDOFUT"),
        (["WDOFUT", "--start", START, "--end", END, "--model", "missing.pkl"], "no model file"),
        (["WINFUT", "--start", START, "--end", END], "predicts WDOFUT only"),
        (["WDOFUT", "--start", START, "--end", END, "--namespace", "a:b"], "TICKVAULT_NAMESPACE"),
        (["WDOFUT", "--start", START, "--end", END, "--namespace", "used"], "already holds data"),
    ],
)
def test_bad_backtest_arguments_exit_2_with_one_line(
    system_env: dict[str, str], store: Store, model: Path, args: list[str], says: str
) -> None:
    recorded_ticks = list(itertools.islice(MarketSimulator(list(SYMBOLS), seed=9, start=TODAY).ticks(), 50))
    store.append_ticks(recorded_ticks)
    store.client.set("ns:used:something", "1")
    model_args = [] if "--model" in args else ["--model", str(model)]
    result = runner.invoke(app, ["backtest", *args, *model_args])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and says in lines[0], result.output


def test_scoring_labels_each_prediction_as_training_does_and_counts_the_trades() -> None:
    """Three predictions a minute apart, WDOFUT (tick 0.5, 10 BRL a point), horizon 60 s: the first
    rises 1.0 (UP) and was a BUY, the second falls 0.5 (one tick: FLAT) and was a SELL, the third's
    horizon runs past the last trade (unlabelled)."""
    run = SymbolRun(
        "WDOFUT",
        tick_ms=np.array([0, 60_000, 120_000, 150_000]),
        tick_price=np.array([100.0, 101.0, 100.5, 100.5]),
        at_ms=np.array([0, 60_000, 120_000]),
        price=np.array([100.0, 101.0, 100.5]),
        probabilities=np.array([[0.1, 0.2, 0.7], [0.6, 0.3, 0.1], [0.2, 0.5, 0.3]]),
        actions=np.array(["BUY", "SELL", "HOLD"], dtype=object),
    )
    rows = scored_rows(run, horizon_ms=60_000, tick_size=0.5, multiplier=10.0, fee=1.0)
    assert rows["label"].tolist() == [2, 1] and rows["predicted"].tolist() == [2, 0]
    assert rows["pnl"].tolist() == [1.0 * 10 - 2, 0.5 * 10 - 2]  # short and the price fell half a point
    s = score(rows, predictions=3)
    assert (s.labelled, s.trades, s.hit_rate, s.accuracy, s.equity) == (2, 2, 0.5, 0.5, 11.0)
    assert s.confusion == [[0, 0, 0], [1, 0, 0], [0, 0, 1]]
