"""The ML path end to end, beyond tests/test_model.py: both dead-band edges and the session edge with
the next session's data present, walk-forward folds that later data cannot influence, a null test
whose bound counts independent horizons (and a look-ahead control proving the bound can fail), a
planted momentum signal, the equity rule's arithmetic, and `train`/`report` as real subprocesses.

Ticks are generated here with numpy (documented in `session_ticks`): faster than the simulator and
with exactly known properties (a martingale price independent of the aggressor sides)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import tickvault.ml.model as model_module
from conftest import subprocess_env
from tickvault.analytics.features import FEATURE_NAMES, FeatureConfig
from tickvault.domain.events import B3_TZ, Tick, make_tick, to_ms
from tickvault.ml.model import LABELS, Dataset, label_moves, training_set, walk_forward
from tickvault.ml.report import equity
from tickvault.store.api import Store

DAY0 = datetime(2025, 11, 3, 9, 0, tzinfo=B3_TZ)  # a Monday; sessions are consecutive calendar days
DAY_MS = 86_400_000
HORIZON = 60_000
EMIT = 5_000
TICK = 0.5  # WDO


@pytest.fixture(autouse=True)
def small_models(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fewer boosting rounds in-process: order, leakage and a plant found do not need 200."""
    monkeypatch.setattr(model_module, "ITERATIONS", 60)


def session_ticks(
    n_sessions: int, *, seed: int, hours: float = 6.0, plant: float = 0.0, symbol: str = "WDOFUT"
) -> list[Tick]:
    """Trades at Poisson times (mean 2 s apart) from 09:00 B3 for `hours` on consecutive days;
    sizes 1..5; aggressor sides fair coins, independent of the price.

    plant = 0: the price is a pure random walk: each trade moves it -1/0/+1 tick with probability
    0.15/0.70/0.15, independent of everything (increments over disjoint intervals are independent).

    plant > 0 (the planted signal, momentum): a hidden regime r = +/-1, redrawn every 5 minutes,
    adds r ticks on a trade with probability `plant`. A row's past minute (`ret_1m`, `ret_5m`,
    `ema_gap`) shows r, and the next minute's move follows it unless the block ends in between.
    Sides stay fair coins, so order flow (`ofi_60s`) carries nothing here."""
    rng = np.random.default_rng(seed)
    out: list[Tick] = []
    trade_id = 0
    n = int(hours * 3600 / 2)
    for day in range(n_sessions):
        open_ms = to_ms(DAY0) + day * DAY_MS
        ms = open_ms + np.cumsum(rng.exponential(2000, n).astype(np.int64) + 1)
        steps = rng.choice([-1, 0, 1], size=n, p=[0.15, 0.7, 0.15])
        if plant:
            regime = rng.choice([-1, 1], size=int(hours * 12) + 2)[(ms - open_ms) // 300_000]
            steps = steps + regime * (rng.random(n) < plant)
        price = 5000.0 + TICK * np.cumsum(steps)
        qty = rng.integers(1, 6, n)
        buy = rng.random(n) < 0.5
        for i in range(n):
            trade_id += 1
            out.append(
                make_tick(symbol, int(ms[i]), trade_id, float(price[i]), int(qty[i]),
                          trade_type=2 if buy[i] else 3, multiplier=10.0)
            )  # fmt: skip
    return out


def pooled(folds: list[model_module.Fold]) -> tuple[float, float, int]:
    n = sum(f.n_test for f in folds)
    accuracy = sum(f.accuracy * f.n_test for f in folds) / n
    majority = sum(f.majority_rate * f.n_test for f in folds) / n
    return accuracy, majority, n


# -- labels ------------------------------------------------------------------------------------------


def test_labels_dead_band_is_inclusive_on_both_sides_and_never_crosses_sessions() -> None:
    base = to_ms(DAY0)
    day1 = np.array([0, 10_000, 20_000, 30_000, 40_000, 50_000, 60_000], dtype=np.int64) + base
    p1 = np.array([100.0, 99.5, 99.0, 100.0, 100.5, 100.5, 101.0])
    day2 = np.array([0, 5_000, 30_000], dtype=np.int64) + base + DAY_MS
    p2 = np.array([200.0, 200.0, 200.0])  # a gap the day-1 rows must never see
    ms, price = np.r_[day1, day2], np.r_[p1, p2]
    at, at_price = ms, price
    labels = label_moves(ms, price, at, at_price, 10_000, TICK)
    # day 1: -0.5 (one tick down) FLAT, -0.5 FLAT, +1.0 UP, +0.5 FLAT, 0 FLAT, +0.5 FLAT,
    # then the last trade of day 1: its horizon ends after that session's last trade -> unlabelled;
    # day 2: two FLAT rows, and its last trade unlabelled too.
    assert labels.tolist() == [1, 1, 2, 1, 1, 1, -1, 1, 1, -1]
    # A horizon reaching into day 2 (whose price, 200, would say UP) leaves the row unlabelled.
    assert label_moves(ms, price, ms[:1], p1[:1], DAY_MS + 5_000, TICK).tolist() == [-1]
    two_ticks_down = label_moves(ms, price, ms[:1], np.array([100.5]), 20_000, TICK)
    assert two_ticks_down.tolist() == [0]  # 99.0 vs 100.5: -1.0 is beyond the band
    # A horizon ending exactly on the session's last trade is inside the session: labelled.
    assert label_moves(ms, price, ms[5:6], p1[5:6], 10_000, TICK).tolist() == [1]
    # WIN: tick 5 points; a move of exactly 5.0 is FLAT, 10.0 UP, float prices included.
    win_ms = np.array([0, 1_000, 2_000], dtype=np.int64) + base
    win = np.array([125_000.0, 125_005.0, 125_010.0])
    assert label_moves(win_ms, win, win_ms[:2], win[:2], 1_000, 5.0).tolist() == [1, 1]
    assert label_moves(win_ms, win, win_ms[:1], win[:1], 2_000, 5.0).tolist() == [2]


def test_training_rows_match_a_direct_label_computation_within_each_session() -> None:
    ticks = session_ticks(2, seed=4, hours=1.0)
    data = training_set(ticks, "WDOFUT", horizon_ms=HORIZON, tick_size=TICK,
                        config=FeatureConfig(emit_interval_ms=EMIT))  # fmt: skip
    assert len(data.y) > 1000 and data.x.shape == (len(data.y), len(FEATURE_NAMES))
    by_day: dict[str, list[Tick]] = {}
    for t in ticks:
        by_day.setdefault(t.timestamp.astimezone(B3_TZ).date().isoformat(), []).append(t)
    assert sorted(by_day) == sorted({str(s) for s in data.session})
    for at, p, y, day in zip(data.at_ms, data.price, data.y, data.session, strict=True):
        same = by_day[str(day)]
        assert at + HORIZON <= same[-1].timestamp_ms  # never labelled from the next session
        later = [t.price for t in same if t.timestamp_ms <= at + HORIZON][-1]
        move = later - p
        assert y == (2 if move > TICK else 0 if move < -TICK else 1)
    assert data.move is not None
    np.testing.assert_allclose(np.sign(data.move[data.y != 1]), np.where(data.y[data.y != 1] == 2, 1, -1))


# -- walk-forward order ------------------------------------------------------------------------------


def test_walk_forward_folds_cannot_see_their_test_session_or_later_ones() -> None:
    rng = np.random.default_rng(7)
    days = np.array(["2025-11-03", "2025-11-04", "2025-11-05", "2025-11-06", "2025-11-07"], "datetime64[D]")
    session = np.repeat(days, 150)
    x = rng.normal(size=(len(session), len(FEATURE_NAMES)))
    y = (x[:, 1] > 0).astype(int) * 2  # learnable, so the models depend on what they train on
    order = rng.permutation(len(session))  # rows out of time order: folds go by session, not position
    data = Dataset(x[order], y[order], np.arange(len(session)), np.ones(len(session)), session[order])
    folds, oos = walk_forward(data, folds=2)
    assert [f.test_session for f in folds] == ["2025-11-06", "2025-11-07"]
    assert [f.train_sessions for f in folds] == [[str(d) for d in days[:3]], [str(d) for d in days[:4]]]
    assert [f.n_train for f in folds] == [450, 600] and [f.n_test for f in folds] == [150, 150]
    assert set(oos["session"]) == {"2025-11-06", "2025-11-07"}
    np.testing.assert_allclose(oos[list(LABELS)].sum(axis=1), 1.0)

    # Labels of a test session move nothing in its own fold; they are training data for later folds
    # only (which shows the comparison can see a change). A later session's features move nothing.
    def probabilities(x: np.ndarray, y: np.ndarray, day: str) -> np.ndarray:
        _, found = walk_forward(Dataset(x, y, data.at_ms, data.price, data.session), folds=2)
        return found.loc[(found["session"] == day).to_numpy(), list(LABELS)].to_numpy()

    def scrambled_labels(day: str) -> np.ndarray:
        out = data.y.copy()
        here = data.session == np.datetime64(day)
        out[here] = 2 - out[here]
        return out

    def scrambled_features(day: str) -> np.ndarray:
        out = data.x.copy()
        here = data.session == np.datetime64(day)
        out[here] = rng.normal(size=(here.sum(), len(FEATURE_NAMES)))
        return out

    fold1, fold2 = probabilities(data.x, data.y, "2025-11-06"), probabilities(data.x, data.y, "2025-11-07")
    np.testing.assert_array_equal(probabilities(data.x, scrambled_labels("2025-11-07"), "2025-11-07"), fold2)
    np.testing.assert_array_equal(probabilities(data.x, scrambled_labels("2025-11-06"), "2025-11-06"), fold1)
    assert not np.array_equal(probabilities(data.x, scrambled_labels("2025-11-06"), "2025-11-07"), fold2)
    np.testing.assert_array_equal(
        probabilities(scrambled_features("2025-11-07"), data.y, "2025-11-06"), fold1
    )


# -- leakage: a null market, and a control with look-ahead -------------------------------------------


@pytest.fixture(scope="module")
def null_data() -> Iterator[Dataset]:
    yield training_set(session_ticks(5, seed=11), "WDOFUT", horizon_ms=HORIZON, tick_size=TICK,
                       config=FeatureConfig(emit_interval_ms=EMIT))  # fmt: skip


def null_bound(data: Dataset, folds: list[model_module.Fold], majority: float) -> float:
    """3 standard errors of an accuracy measured on the pooled test sessions, with n_eff = the number
    of non-overlapping horizons in them: the predictions use only the past, and a random walk's moves
    over disjoint intervals are independent, so labels a horizon apart are independent given the
    predictions while the ~12 rows inside one horizon share their path (counting them would shrink
    the bound about sqrt(12) = 3.5-fold)."""
    n_eff = 0.0
    for fold in folds:
        at = data.at_ms[data.session == np.datetime64(fold.test_session)]
        n_eff += (at.max() - at.min()) / HORIZON + 1
    return 3 * math.sqrt(majority * (1 - majority) / n_eff)


def test_random_walk_walk_forward_accuracy_is_not_above_chance(null_data: Dataset) -> None:
    """Null: a predictor independent of the test labels has expected accuracy
    sum_c P(pred=c) P(y=c) <= the majority-class rate. The test fails if the pooled walk-forward
    accuracy exceeds the majority rate (of the training sessions' majority class, measured on the
    test rows) by more than `null_bound` (3 SE, ~0.15% one-sided false alarm)."""
    folds, _ = walk_forward(null_data)
    assert len(folds) == 4
    accuracy, majority, n = pooled(folds)
    bound = null_bound(null_data, folds, majority)
    assert n > 10_000 and 0.02 < bound < 0.05  # the bound is a real constraint at this size
    assert accuracy <= majority + bound, (accuracy, majority, bound)


def test_the_null_bound_catches_a_feature_that_looks_ahead(null_data: Dataset) -> None:
    """Control for the test above: the same data with one column (`spread`, empty without a book)
    replaced by the move over the first half of the horizon, a typical look-ahead bug. The same
    statistic must now exceed the bound: the null test can fail."""
    assert np.isnan(null_data.x[:, FEATURE_NAMES.index("spread")]).all()
    ticks = session_ticks(5, seed=11)  # same seed: the same market
    tick_ms = np.array([t.timestamp_ms for t in ticks], dtype=np.int64)
    tick_price = np.array([t.price for t in ticks])
    half = model_module.future_move(tick_ms, tick_price, null_data.at_ms, null_data.price, HORIZON // 2)
    leaky = null_data.x.copy()
    leaky[:, FEATURE_NAMES.index("spread")] = half
    data = Dataset(leaky, null_data.y, null_data.at_ms, null_data.price, null_data.session)
    folds, _ = walk_forward(data)
    accuracy, majority, _ = pooled(folds)
    assert accuracy > majority + 2 * null_bound(data, folds, majority), (accuracy, majority)


# -- a planted signal ----------------------------------------------------------------------------------


def test_a_planted_momentum_signal_beats_chance_clearly() -> None:
    """8 sessions of 1.5 h, plant 0.2 (about 6 ticks of drift per minute against a noise of about
    4): the walk-forward accuracy beats the majority rate by more than 10 points (3 SE of the null
    bound is about 6 points at this size), and the permutation importance puts the plant first.
    (A sign-of-ret_1m rule alone reaches ~+30 points; the 19-feature model gets less because it also
    fits session-specific features such as price levels: see the report to the lead.)"""
    ticks = session_ticks(8, seed=5, hours=1.5, plant=0.2)
    data = training_set(ticks, "WDOFUT", horizon_ms=HORIZON, tick_size=TICK,
                        config=FeatureConfig(emit_interval_ms=10_000))  # fmt: skip
    model, _ = model_module.train(data, "WDOFUT", horizon_ms=HORIZON, tick_size=TICK)
    folds = [model_module.Fold(**f) for f in model.info.folds]
    assert len(folds) == 7
    accuracy, majority, _ = pooled(folds)
    assert accuracy > majority + 0.10, (accuracy, majority)
    assert accuracy > majority + 2 * null_bound(data, folds, majority)
    # Found where it was planted: the last minute's return, not the (fair-coin) order flow.
    assert max(model.info.importance, key=model.info.importance.__getitem__) == "ret_1m", (
        model.info.importance
    )
    assert model.info.importance["ret_1m"] > 10 * max(model.info.importance["ofi_60s"], 0.001)


# -- the report's trading rule -----------------------------------------------------------------------


def test_equity_rule_and_costs() -> None:
    oos = pd.DataFrame(
        {
            "DOWN": [0.10, 0.70, 0.30, 0.20, 0.60],
            "FLAT": [0.20, 0.10, 0.40, 0.10, 0.00],
            "UP": [0.70, 0.20, 0.30, 0.70, 0.40],
            "move": [2.0, -1.5, 5.0, -0.5, 1.0],  # points over the horizon
        }
    )
    curve = equity(oos, threshold=0.6, multiplier=10.0, fee=1.25)
    # long, short, flat (nothing above 0.6), long, short
    assert curve["position"].tolist() == [1, -1, 0, 1, -1]
    # per trade: direction x move x 10 BRL/point - 2 sides x 1.25 BRL
    assert curve["pnl"].tolist() == [17.5, 12.5, 0.0, -7.5, -12.5]
    assert curve["equity"].tolist() == [17.5, 30.0, 30.0, 22.5, 10.0]


# -- the commands, as a user runs them ---------------------------------------------------------------


def _tickvault(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tickvault", *args],
        env=subprocess_env(env), cwd=cwd, capture_output=True, text=True, timeout=110,
    )  # fmt: skip


def test_train_and_report_commands_as_subprocesses(
    system_env: dict[str, str], store: Store, tmp_path: Path
) -> None:
    store.append_ticks(session_ticks(3, seed=9, hours=1.0, plant=0.2))
    env = {**system_env, "FEATURES_INTERVAL_MS": "10000"}
    model = tmp_path / "models" / "wdo.pkl"
    args = ["--horizon", "60", "--folds", "1", "--model", str(model)]
    trained = _tickvault("train", "WDOFUT", "--start", "2025-11-01", "--end", "2025-11-10", *args,
                         env=env, cwd=tmp_path)  # fmt: skip
    assert trained.returncode == 0, trained.stderr
    assert "2025-11-05: accuracy" in trained.stdout and "2025-11-04: accuracy" not in trained.stdout
    sidecar = json.loads(model.with_suffix(".json").read_text())
    assert sidecar["features"] == list(FEATURE_NAMES) and sidecar["labels"] == list(LABELS)
    assert (sidecar["train_start"], sidecar["train_end"], sidecar["sessions"]) == (
        "2025-11-03",
        "2025-11-05",
        3,
    )
    assert sidecar["horizon_ms"] == 60_000 and sidecar["tick_size"] == TICK
    (fold,) = sidecar["folds"]
    assert fold["train_sessions"] == ["2025-11-03", "2025-11-04"] and fold["test_session"] == "2025-11-05"
    assert fold["accuracy"] > fold["majority_rate"]  # the plant, seen through the real command
    oos = pd.read_parquet(model.with_suffix(".oos.parquet"))
    assert len(oos) == fold["n_test"] and set(oos["session"]) == {"2025-11-05"}

    html = tmp_path / "out" / "report.html"
    reported = _tickvault("report", "--model", str(model), "--output", str(html), "--fee", "0.5",
                          "--threshold", "0.5", env=env, cwd=tmp_path)  # fmt: skip
    assert reported.returncode == 0, reported.stderr
    text = html.read_text(encoding="utf-8")
    for section in ("Walk-forward metrics", "Confusion matrix", "Feature importance", "Equity curve",
                    "fee 0.5\\u002fcontract\\u002fside, multiplier 10.0", "2025-11-05"):  # fmt: skip
        assert section in text, section
    assert '<script src="http' not in text and "plotly" in text  # plotly.js inline: opens offline

    one_day = _tickvault("train", "WDOFUT", "--start", "2025-11-03", "--end", "2025-11-03T23:59:59-03:00",
                         "--model", str(tmp_path / "x.pkl"), env=env, cwd=tmp_path)  # fmt: skip
    assert one_day.returncode == 2 and "at least 2 sessions" in one_day.stderr, one_day.stderr
    assert not (tmp_path / "x.pkl").exists()
    missing = _tickvault("report", "--model", str(tmp_path / "none.pkl"), env=env, cwd=tmp_path)
    assert missing.returncode == 2 and "TICKVAULT_MODEL" in missing.stderr
