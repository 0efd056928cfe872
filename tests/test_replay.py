"""Replays from the store (`run --source store:START..END --namespace NAME`): the recorded ticks
through the live pipeline into a namespace, deterministically, never touching a live key."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
import valkey
from typer.testing import CliRunner

from test_feature_service import SYMBOLS, TODAY, past_sessions
from tickvault.analytics.features import FeatureConfig, FeatureEngine, backfill
from tickvault.app.cli import app
from tickvault.app.components.source import SourceSpec
from tickvault.app.output import to_csv_text
from tickvault.app.system import System
from tickvault.config import load_settings
from tickvault.domain.events import Event, Features
from tickvault.domain.keys import KeySpace
from tickvault.sources.simulator import MarketSimulator
from tickvault.store.api import Store, frame_to_ticks
from tickvault.workers.session_history import store_history

runner = CliRunner()
START, END = "2025-11-24T09:00:00-03:00", "2025-11-24T12:00:00-03:00"


@pytest.fixture
def model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    import tickvault.ml.model as model_module
    from test_model import planted_sessions
    from tickvault.ml.model import save, train, training_set

    monkeypatch.setattr(model_module, "ITERATIONS", 30)
    data = training_set(planted_sessions(2), "WDOFUT", horizon_ms=60_000, tick_size=0.5,
                        config=FeatureConfig(emit_interval_ms=30_000))  # fmt: skip
    path = tmp_path / "model.pkl"
    save(train(data, "WDOFUT", horizon_ms=60_000, tick_size=0.5)[0], path)
    yield path


def all_keys(client: valkey.Valkey) -> set[str]:
    return {k.decode() for k in client.scan_iter(match="*", count=1000)}


def replay(namespace: str, monkeypatch: pytest.MonkeyPatch) -> list[Event]:
    """One replay of the range through the whole system (as `run` builds it), in `namespace`."""
    monkeypatch.setenv("TICKVAULT_NAMESPACE", namespace)
    monkeypatch.setenv("TICKVAULT_SPEED", "0")
    monkeypatch.setenv("WEB_ENABLED", "false")
    spec = SourceSpec.parse(f"store:{START}..{END}", ",".join(SYMBOLS))
    settings = load_settings(symbols=spec.symbols)
    stop, seen = threading.Event(), []
    system = System(settings, source=spec.factory(settings, stop), event_handlers=[seen.append])
    system.stop_event = stop
    system.start()
    try:
        system.wait(120)
    finally:
        summary = system.stop()
    assert summary.drained and system.source_error is None
    return seen


def outputs(store: Store, namespace: str) -> dict[str, pd.DataFrame]:
    ns = Store(store.client, KeySpace(namespace=namespace))
    return {
        f"{kind}:{symbol}": ns.events(kind, symbol, START, END)
        for kind in ("features", "predictions", "signals")
        for symbol in SYMBOLS
    }


def test_two_replays_write_identical_outputs_equal_to_a_backfill_and_no_live_key(
    system_env: dict[str, str], store: Store, model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TICKVAULT_MODEL", str(model))
    monkeypatch.setenv("SIGNAL_THRESHOLD", "0.34")
    past_sessions(store, days=2)
    today = list(itertools.islice(MarketSimulator(list(SYMBOLS), seed=9, start=TODAY).ticks(), 0, 60_000, 5))
    store.append_ticks(today)
    store.writer.release()
    before = all_keys(store.client)

    first = replay("replay-a", monkeypatch)
    second = replay("replay_b", monkeypatch)

    # only the namespaces' keys are new, and no live key changed its content
    new = all_keys(store.client) - before
    assert new and all(k.startswith(("ns:replay-a:", "ns:replay_b:")) for k in new), sorted(new)[:5]
    assert {k.split(":")[1] for k in new} == {"replay-a", "replay_b"}
    # the two replays stored the same features, predictions and signals
    a, b = outputs(store, "replay-a"), outputs(store, "replay_b")
    assert len(a["features:WDOFUT"]) > 100 and len(a["predictions:WDOFUT"]) > 100
    for name in a:
        pd.testing.assert_frame_equal(a[name], b[name], obj=name)
    assert [e for e in first if not isinstance(e, Features)] == [
        e for e in second if not isinstance(e, Features)
    ]
    # and the replay's features are a backfill's over the same ticks (with the live history)
    live = [e for e in first if isinstance(e, Features)]
    frame = store.ticks(list(SYMBOLS), today[0].timestamp_ms, today[-1].timestamp_ms)
    again = backfill(
        FeatureEngine(SYMBOLS, FeatureConfig(), history=store_history(store)), frame_to_ticks(frame)
    )
    assert [(f.symbol, f.timestamp_ms) for f in again] == [(f.symbol, f.timestamp_ms) for f in live]
    assert [f.values for f in again] == [f.values for f in live]
    assert live[-1].values["volume_pattern_score"] is not None  # the history came from the live store

    # `query --namespace` reads the replay's output; without it, the live (empty) features
    args = ["query", "WDOFUT", "--kind", "features", "--start", START, "--end", END, "--format", "csv"]
    result = runner.invoke(app, [*args, "--namespace", "replay-a"])
    assert result.exit_code == 0, result.output
    assert result.stdout == to_csv_text(a["features:WDOFUT"])
    monkeypatch.delenv("TICKVAULT_NAMESPACE")
    live_result = runner.invoke(app, args)
    assert live_result.exit_code == 0 and live_result.stdout != result.stdout


def test_the_replay_input_is_the_stored_ticks_as_checked_ticks(store: Store) -> None:
    """`store_ticks` builds its Ticks without the checks: they must equal the checked ones, blocks
    and live tail alike, symbols merged in time order."""
    import msgspec

    from tickvault.sources.store_replay import store_ticks

    ticks = list(itertools.islice(MarketSimulator(list(SYMBOLS), seed=3, start=TODAY).ticks(), 3000))
    store.append_ticks(ticks[:2000])
    for symbol in SYMBOLS:
        store.compact(symbol, live_ms=0)  # sealed blocks, then a live tail
    store.append_ticks(ticks[2000:])
    first, last = ticks[0].timestamp_ms, ticks[-1].timestamp_ms
    replayed = list(store_ticks(store, SYMBOLS, first, last))
    frame = store.ticks(list(SYMBOLS), first, last)
    checked = [msgspec.structs.replace(t, seq=0) for t in frame_to_ticks(frame)]
    assert len(replayed) == len(ticks) and replayed == checked
    assert [t.timestamp.isoformat() for t in replayed] == [t.timestamp.isoformat() for t in checked]


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["run", "--source", "store:2025-11-25..2025-11-24", "--namespace", "x"], "before start"),
        (["run", "--source", "store:2025-11-24", "--namespace", "x"], "store:START..END"),
        (["run", "--source", "store:2025-11-24..2025-11-25", "--namespace", "a:b"], "TICKVAULT_NAMESPACE"),
        (["run", "--source", "store:2025-11-24..2025-11-25"], "give --namespace"),
        (["query", "WDOFUT", "--start", START, "--namespace", "*"], "TICKVAULT_NAMESPACE"),
    ],
)
def test_bad_replay_arguments_exit_2_with_one_line(
    system_env: dict[str, str], args: list[str], says: str
) -> None:
    result = runner.invoke(app, [*args, "--no-dashboard"] if args[0] == "run" else args)
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and says in lines[0], result.output
