"""Training and evaluation: labels, walk-forward order, no leakage on a random walk, a planted signal
found, the model file."""

from __future__ import annotations

import itertools
import json
import math
import pickle
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest

import tickvault
import tickvault.ml.model as model_module
from tickvault.analytics.features import FEATURE_NAMES, FeatureConfig
from tickvault.domain.events import B3_TZ, Tick, make_tick, to_ms
from tickvault.errors import ConfigError
from tickvault.ml.model import LABELS, Dataset, label_moves, load, save, train, training_set, walk_forward
from tickvault.sources.simulator import MarketSimulator


@pytest.fixture(autouse=True)
def small_models(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fewer boosting rounds: what the tests check (order, leakage, a plant found) does not need 200."""
    monkeypatch.setattr(model_module, "ITERATIONS", 60)


DAY0 = datetime(2025, 11, 3, 9, 0, tzinfo=B3_TZ)  # a Monday
HORIZON = 60_000


def test_labels_dead_band_and_session_edge() -> None:
    ms = np.array([0, 10_000, 20_000, 30_000, 40_000], dtype=np.int64) + to_ms(DAY0)
    price = np.array([100.0, 100.5, 101.5, 100.0, 99.0])
    at = ms[:4]
    labels = label_moves(ms, price, at, price[:4], 10_000, 0.5)
    # +0.5 (one tick) is FLAT, +1.0 is UP, -1.5 DOWN; the last row's horizon ends at the last trade
    assert labels.tolist() == [1, 2, 0, 0]
    beyond = label_moves(ms, price, ms[-1:], price[-1:], 10_000, 0.5)
    assert beyond.tolist() == [-1]  # past the session's last trade: unlabelled, not next day's data


def test_walk_forward_trains_only_on_earlier_sessions() -> None:
    rng = np.random.default_rng(0)
    days = np.repeat(
        np.array(["2025-11-03", "2025-11-04", "2025-11-05", "2025-11-06"], dtype="datetime64[D]"), 200
    )
    data = Dataset(rng.normal(size=(800, 19)), rng.integers(0, 3, 800), np.arange(800), np.ones(800), days)
    folds, oos = walk_forward(data)
    assert [f.test_session for f in folds] == ["2025-11-04", "2025-11-05", "2025-11-06"]
    for fold in folds:
        assert all(s < fold.test_session for s in fold.train_sessions)
        assert fold.n_train == 200 * len(fold.train_sessions)
    assert len(oos) == 600 and set(oos["session"]) == {"2025-11-04", "2025-11-05", "2025-11-06"}


def thinned_sessions(n_sessions: int, *, random_walk: bool, keep_every: int = 8) -> list[Tick]:
    sim = MarketSimulator(["WDOFUT"], seed=21, start=DAY0, random_walk=random_walk)
    out: list[Tick] = []
    days: set[str] = set()
    for t in itertools.islice(sim.ticks(), 0, None, keep_every):
        days.add(t.timestamp.date().isoformat())
        if len(days) > n_sessions:
            break
        out.append(t)
    return out


def test_no_edge_on_a_random_walk() -> None:
    """Null market: walk-forward accuracy must not beat always answering the training majority by
    more than 3 standard errors. Rows come every 5 s with a 60 s horizon, so neighbouring labels
    share most of their path: the effective sample is n * 5 / 60."""
    ticks = thinned_sessions(4, random_walk=True)
    data = training_set(
        ticks, "WDOFUT", horizon_ms=HORIZON, tick_size=0.5, config=FeatureConfig(emit_interval_ms=5_000)
    )
    folds, _ = walk_forward(data)
    assert len(folds) == 3
    n = sum(f.n_test for f in folds)
    accuracy = sum(f.accuracy * f.n_test for f in folds) / n
    majority = sum(f.majority_rate * f.n_test for f in folds) / n
    n_eff = n * 5 / 60
    bound = 3 * math.sqrt(majority * (1 - majority) / n_eff)
    assert accuracy <= majority + bound, (accuracy, majority, bound)


def planted_sessions(n_sessions: int, seed: int = 3) -> list[Tick]:
    """The planted signal: a hidden regime, redrawn every 5 minutes, sets both the aggressor mix
    (70% buys or 70% sells) and the drift (+/- 0.5 point every ~6 s) of that stretch. The features
    see the mix through `ofi_60s`; the 60 s label sees the drift."""
    rng = np.random.default_rng(seed)
    out: list[Tick] = []
    for d in range(n_sessions):
        open_ms = to_ms(DAY0) + d * 86_400_000
        price, trade_id = 5000.0, 0
        for block in range(6 * 12):  # 6 hours of 5-minute stretches
            regime = 1 if rng.random() < 0.5 else -1
            for k in range(300):  # one trade per second
                trade_id += 1
                buy = rng.random() < 0.5 + 0.2 * regime
                if rng.random() < 1 / 6:
                    price += 0.5 * regime
                price += 0.5 * int(rng.integers(-1, 2)) * (rng.random() < 0.1)
                ms, qty = open_ms + (block * 300 + k) * 1000, int(rng.integers(1, 5))
                out.append(
                    make_tick("WDOFUT", ms, trade_id, price, qty, trade_type=2 if buy else 3, multiplier=10.0)
                )
    return out


def test_a_planted_signal_is_found() -> None:
    ticks = planted_sessions(4)
    data = training_set(
        ticks, "WDOFUT", horizon_ms=HORIZON, tick_size=0.5, config=FeatureConfig(emit_interval_ms=5_000)
    )
    folds, _ = walk_forward(data)
    n = sum(f.n_test for f in folds)
    accuracy = sum(f.accuracy * f.n_test for f in folds) / n
    majority = sum(f.majority_rate * f.n_test for f in folds) / n
    assert accuracy > majority + 0.15, (accuracy, majority)


def test_model_file_round_trip_and_refusal(tmp_path: Path) -> None:
    ticks = planted_sessions(3)
    data = training_set(
        ticks, "WDOFUT", horizon_ms=HORIZON, tick_size=0.5, config=FeatureConfig(emit_interval_ms=10_000)
    )
    model, oos = train(data, "WDOFUT", horizon_ms=HORIZON, tick_size=0.5)
    assert len(oos) == sum(f["n_test"] for f in model.info.folds) and oos["move"].notna().all()
    assert max(model.info.importance, key=model.info.importance.__getitem__) == "ofi_60s"  # the plant
    assert model.info.sessions == 3 and len(model.info.folds) == 2
    path = tmp_path / "model.pkl"
    save(model, path)
    again = load(path)
    values = {"ofi_60s": 0.5, "price": 5000.0, "volatility_regime_30d": "UNKNOWN"}
    assert again.predict_proba_one(values) == model.predict_proba_one(values)
    assert set(model.predict_proba_one(values)) == set(LABELS)
    assert abs(sum(model.predict_proba_one(values).values()) - 1) < 1e-9
    assert path.with_suffix(".json").exists()
    model.info.features = ["something", "else"]
    save(model, path)
    with pytest.raises(ConfigError, match="other features"):
        load(path)
    assert json.loads(path.with_suffix(".json").read_text())["tickvault_version"] == tickvault.__version__
    path.write_bytes(b"not a model")
    with pytest.raises(ConfigError, match="not a tickvault model"):
        load(path)
    # a pickle of something else, and a model file whose estimator is not a fitted forest
    path.write_bytes(pickle.dumps({"format": 1, "info": {"symbol": "X"}}))
    with pytest.raises(ConfigError, match="not a tickvault model"):
        load(path)
    info = dict(json.loads(path.with_suffix(".json").read_text()), features=list(FEATURE_NAMES))
    path.write_bytes(pickle.dumps({"format": 1, "clf": "not an estimator", "info": info}))
    with pytest.raises(ConfigError, match="no usable model"):
        load(path)
    with pytest.raises(ConfigError, match="at least 1"):
        train(data, "WDOFUT", horizon_ms=HORIZON, tick_size=0.5, folds=0)


# the inputs of a model saved before depth_imbalance_5 and microprice existed, in their order then
NINETEEN = [
    "price", "ret_1m", "ret_5m", "ret_15m", "ema_fast", "ema_slow", "ema_gap", "rsi_14", "realized_vol_30m",
    "vwap_distance", "trade_intensity_60s", "ofi_60s", "spread", "book_imbalance", "volume_pattern_score",
    "historical_momentum_rank", "microstructure_imbalance", "volatility_regime_30d", "correlation_stability",
]  # fmt: skip


def test_a_model_trained_before_features_were_added_loads_and_reads_its_own_inputs(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    x = rng.normal(size=(600, len(NINETEEN)))
    y = (x[:, NINETEEN.index("spread")] > 0).astype(int) * 2  # UP when the spread column is positive
    clf = model_module.fit(x, y)
    info = model_module.ModelInfo(symbol="WDOFUT", features=NINETEEN, labels=list(LABELS), horizon_ms=HORIZON,
                                  tick_size=0.5, train_start="2025-11-03", train_end="2025-11-04", sessions=2,
                                  rows=600)  # fmt: skip
    path = tmp_path / "old.pkl"
    save(model_module.TrainedModel(clf, info), path)
    assert len(FEATURE_NAMES) > len(NINETEEN)  # the engine computes more than the model knows
    loaded = load(path)
    values: dict[str, float | str | None] = {name: float(rng.normal()) for name in FEATURE_NAMES}
    values["volatility_regime_30d"] = "HIGH_VOL"
    row = np.array([[2.0 if n == "volatility_regime_30d" else values[n] for n in NINETEEN]], dtype=float)
    expected = dict(zip(LABELS[::2], clf.predict_proba(row)[0].tolist(), strict=True))
    got = loaded.predict_proba_one(values)
    assert got["FLAT"] == 0.0 and all(math.isclose(got[k], v, abs_tol=1e-12) for k, v in expected.items())
    # the features it was not trained on are not its input
    assert loaded.predict_proba_one({**values, "depth_imbalance_5": 0.9, "microprice": 1.0}) == got
    # an estimator that does not take the inputs the model names is refused, not mis-fed
    info.features = NINETEEN[:-1]
    path.write_bytes(pickle.dumps({"format": 1, "clf": clf, "info": model_module.asdict(info)}))
    with pytest.raises(ConfigError, match="no usable model"):
        load(path)
