"""The trading model: training set from history, walk-forward evaluation, the saved model file.

- Training rows are the Features events a replay of the stored ticks emits (`features.backfill`), so
  the model trains on exactly what the live engine will compute.
- Label: direction of the move from the last price at t to the last trade price at or before
  t + horizon, in the same session. A move of at most one tick either way (bid-ask bounce) is FLAT;
  more is UP or DOWN. Rows whose horizon runs past the session's last trade are dropped: a label never
  uses another session.
- Walk-forward: sessions in time order; each fold trains on every session before its test session
  and tests on that one session. Never the reverse.
- `volatility_regime_30d` is ordinal (LOW < NORMAL < HIGH, UNKNOWN missing); None is NaN, which the
  gradient-boosted trees route as they learned.
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import pickle
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import sklearn
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.inspection import permutation_importance
from sklearn.metrics import balanced_accuracy_score, confusion_matrix, log_loss

from tickvault.analytics.features import (
    FEATURE_NAMES,
    BookProvider,
    FeatureConfig,
    FeatureEngine,
    HistoryProvider,
    backfill,
)
from tickvault.domain.events import B3_TZ, Features, Tick
from tickvault.errors import ConfigError
from tickvault.ml.compiled_forest import CompiledForest

log = logging.getLogger("tickvault.model")

LABELS = ("DOWN", "FLAT", "UP")
_REGIME_ORDER = {"LOW_VOL": 0.0, "NORMAL_VOL": 1.0, "HIGH_VOL": 2.0}
FORMAT = 1


def feature_row(
    values: dict[str, Any], out: np.ndarray | None = None, names: Sequence[str] = FEATURE_NAMES
) -> np.ndarray:
    """The model's input row: `values` of `names` (a model's own features), in that order."""
    row = np.empty(len(names)) if out is None else out
    for i, name in enumerate(names):
        v = values.get(name)
        if isinstance(v, str):
            row[i] = _REGIME_ORDER.get(v, np.nan)
        else:
            row[i] = np.nan if v is None else v
    return row


def label_moves(
    tick_ms: np.ndarray,
    tick_price: np.ndarray,
    at_ms: np.ndarray,
    at_price: np.ndarray,
    horizon_ms: int,
    tick_size: float,
) -> np.ndarray:
    """Labels (0 DOWN, 1 FLAT, 2 UP; -1 unlabelled) for rows at `at_ms` with price `at_price`, from
    one symbol's ticks in time order."""
    day = (pd.to_datetime(tick_ms, unit="ms", utc=True).tz_convert(B3_TZ).normalize()).asi8
    row_day = (pd.to_datetime(at_ms, unit="ms", utc=True).tz_convert(B3_TZ).normalize()).asi8
    last_of_day = pd.Series(tick_ms).groupby(day).max()
    session_end = last_of_day.reindex(row_day).to_numpy()
    target = at_ms + horizon_ms
    move = future_move(tick_ms, tick_price, at_ms, at_price, horizon_ms)
    labels = np.where(move > tick_size * 1.000001, 2, np.where(move < -tick_size * 1.000001, 0, 1))
    return np.where(np.isfinite(session_end) & (target <= session_end), labels, -1)


def future_move(
    tick_ms: np.ndarray, tick_price: np.ndarray, at_ms: np.ndarray, at_price: np.ndarray, horizon_ms: int
) -> np.ndarray:
    """Last trade price at or before t + horizon, minus the price at t."""
    idx = np.searchsorted(tick_ms, at_ms + horizon_ms, side="right") - 1
    moves: np.ndarray = tick_price[np.clip(idx, 0, None)] - at_price
    return moves


@dataclass
class Dataset:
    x: np.ndarray
    y: np.ndarray
    at_ms: np.ndarray
    price: np.ndarray
    session: np.ndarray  # B3 day of each row, as datetime64[D]
    move: np.ndarray | None = None  # price change over the horizon (points), for equity curves


def training_set(
    ticks: Iterable[Tick],
    symbol: str,
    *,
    horizon_ms: int,
    tick_size: float,
    config: FeatureConfig | None = None,
    history: HistoryProvider | None = None,
    symbols: Iterable[str] | None = None,
    book: BookProvider | None = None,
) -> Dataset:
    """Replay `ticks` (every configured symbol, time order) through a fresh engine; rows of `symbol`.
    `book`: the stored book's features (else the book features are None, as live without a book)."""
    ticks = list(ticks)
    engine = FeatureEngine(symbols or sorted({t.symbol for t in ticks}), config, history=history)
    rows: list[Features] = [f for f in backfill(engine, ticks, book=book) if f.symbol == symbol]
    mine = [t for t in ticks if t.symbol == symbol and not t.is_edit]
    tick_ms = np.array([t.timestamp_ms for t in mine], dtype=np.int64)
    tick_price = np.array([t.price for t in mine])
    at_ms = np.array([f.timestamp_ms for f in rows], dtype=np.int64)
    price = np.array([f.values["price"] for f in rows], dtype=np.float64)
    y = (
        label_moves(tick_ms, tick_price, at_ms, price, horizon_ms, tick_size)
        if len(rows)
        else np.empty(0, int)
    )
    keep = y >= 0
    x = np.array([feature_row(f.values) for f in rows]).reshape(len(rows), len(FEATURE_NAMES))
    session = pd.to_datetime(at_ms, unit="ms", utc=True).tz_convert(B3_TZ).normalize().date
    move = future_move(tick_ms, tick_price, at_ms, price, horizon_ms) if len(rows) else np.empty(0)
    days = np.array(session, dtype="datetime64[D]")
    return Dataset(x[keep], y[keep], at_ms[keep], price[keep], days[keep], move[keep])


ITERATIONS = 200  # boosting rounds (x3 trees: one per class)


def fit(x: np.ndarray, y: np.ndarray) -> HistGradientBoostingClassifier:
    clf = HistGradientBoostingClassifier(
        max_iter=ITERATIONS, learning_rate=0.05, early_stopping=False, random_state=0
    )
    x = x.copy()
    x[:, np.all(np.isnan(x), axis=0)] = 0.0  # a feature never seen (no book data): constant, never split on
    return clf.fit(x, y)


@dataclass
class Fold:
    train_sessions: list[str]
    test_session: str
    n_train: int
    n_test: int
    accuracy: float
    balanced_accuracy: float
    majority_rate: float  # accuracy of always answering the training set's most frequent class
    log_loss: float
    confusion: list[list[int]]


def walk_forward(
    data: Dataset,
    folds: int | None = None,
    *,
    fitted: dict[str, HistGradientBoostingClassifier] | None = None,
) -> tuple[list[Fold], pd.DataFrame]:
    """Each fold trains on all sessions before its test session; returns the folds and the
    out-of-sample probabilities (columns DOWN/FLAT/UP, label, price, session) indexed by time.
    `fitted`, if given, receives each fold's classifier by test session."""
    sessions = sorted(set(data.session.tolist()))
    if len(sessions) < 2:
        raise ConfigError(
            "--start/--end", f"{len(sessions)} session(s)", "walk-forward needs at least 2 sessions"
        )
    if folds is not None and folds < 1:
        raise ConfigError("--folds", folds, "must be at least 1")
    # the first session is never a test: nothing before it to learn from
    tests = sessions[1:] if folds is None else sessions[1:][-folds:]
    out_folds, oos = [], []
    for test in tests:
        train = data.session < np.datetime64(test)
        here = data.session == np.datetime64(test)
        if len(set(data.y[train].tolist())) < 2 or not here.any():
            continue
        clf = fit(data.x[train], data.y[train])
        if fitted is not None:
            fitted[str(test)] = clf
        proba = _full_proba(clf, data.x[here])
        predicted = proba.argmax(axis=1)
        majority = np.bincount(data.y[train], minlength=3).argmax()
        out_folds.append(
            Fold(
                train_sessions=[str(s) for s in sessions if s < test], test_session=str(test),
                n_train=int(train.sum()), n_test=int(here.sum()),
                accuracy=float(np.mean(predicted == data.y[here])),
                balanced_accuracy=float(balanced_accuracy_score(data.y[here], predicted)),
                majority_rate=float(np.mean(data.y[here] == majority)),
                log_loss=float(log_loss(data.y[here], proba, labels=[0, 1, 2])),
                confusion=confusion_matrix(data.y[here], predicted, labels=[0, 1, 2]).tolist(),
            )
        )  # fmt: skip
        frame = pd.DataFrame(proba, columns=list(LABELS))
        frame["label"], frame["price"], frame["session"] = data.y[here], data.price[here], str(test)
        frame["move"] = data.move[here] if data.move is not None else np.nan
        frame.index = pd.to_datetime(data.at_ms[here], unit="ms", utc=True).tz_convert(B3_TZ)
        oos.append(frame)
    return out_folds, (
        pd.concat(oos) if oos else pd.DataFrame(columns=[*LABELS, "label", "price", "session"])
    )


def _full_proba(clf: HistGradientBoostingClassifier, x: np.ndarray) -> np.ndarray:
    """Probabilities for all three labels, even when training saw only some of them."""
    proba = np.zeros((len(x), 3))
    proba[:, clf.classes_.astype(int)] = clf.predict_proba(x)
    return proba


@dataclass
class ModelInfo:
    symbol: str
    features: list[str]
    labels: list[str]
    horizon_ms: int
    tick_size: float
    train_start: str
    train_end: str
    sessions: int
    rows: int
    folds: list[dict[str, Any]] = field(default_factory=list)
    importance: dict[str, float] = field(default_factory=dict)  # permutation importance, last fold
    format: int = FORMAT
    tickvault_version: str = ""  # the version that trained it ("" before it was recorded)
    sklearn_version: str = ""  # a pickled estimator is only safe to load with the same scikit-learn


class TrainedModel:
    """A fitted classifier with what it was trained on; `predict_proba_one` is the live path."""

    def __init__(self, clf: HistGradientBoostingClassifier, info: ModelInfo) -> None:
        self.clf = clf
        self.info = info
        self.name = f"hgb-{info.symbol}-{info.train_end}"
        self.symbols = (info.symbol,)  # what it learnt; another symbol's features are not its input
        self._forest = CompiledForest(clf)
        # its own inputs, in its own order: a model trained before a feature was added still predicts
        self._names = tuple(info.features)
        if getattr(clf, "n_features_in_", len(self._names)) != len(self._names):
            raise ValueError(
                f"the estimator takes {clf.n_features_in_} inputs, the model names {len(self._names)}"
            )
        self._row = np.empty(len(self._names))
        self._classes = [LABELS[int(c)] for c in clf.classes_]

    def predict_proba_one(self, values: dict[str, Any]) -> dict[str, float]:
        proba = self._forest.predict_proba(feature_row(values, self._row, self._names))
        out = dict.fromkeys(LABELS, 0.0)
        out.update(zip(self._classes, proba.tolist(), strict=True))
        return out


def train(
    data: Dataset, symbol: str, *, horizon_ms: int, tick_size: float, folds: int | None = None
) -> tuple[TrainedModel, pd.DataFrame]:
    """Walk-forward evaluation, permutation importance on the last fold, then the final model fitted
    on every session. Returns the model and the out-of-sample predictions."""
    fitted: dict[str, HistGradientBoostingClassifier] = {}
    evaluated, oos = walk_forward(data, folds, fitted=fitted)
    sessions = sorted(set(data.session.tolist()))
    last = data.session == np.datetime64(sessions[-1])
    # the last fold already learnt from every session before the last one: the same fit, not again
    fold_clf = fitted.get(str(sessions[-1]))
    if fold_clf is None:  # the last session was not a fold (--folds, or one label only before it)
        fold_clf = fit(data.x[~last], data.y[~last])
    # a sample is as good as all rows for ranking features, and a day of 1 s rows is 34k
    share = min(1.0, 10_000 / max(1, int(last.sum())))
    found = permutation_importance(
        fold_clf, data.x[last], data.y[last], n_repeats=3, random_state=0, max_samples=share
    )
    importance = {name: float(v) for name, v in zip(FEATURE_NAMES, found.importances_mean, strict=True)}
    clf = fit(data.x, data.y)
    info = ModelInfo(
        symbol=symbol, features=list(FEATURE_NAMES), labels=list(LABELS), horizon_ms=horizon_ms,
        tick_size=tick_size, train_start=str(sessions[0]), train_end=str(sessions[-1]),
        sessions=len(sessions), rows=len(data.y), folds=[asdict(f) for f in evaluated], importance=importance,
        tickvault_version=_tickvault_version(), sklearn_version=sklearn.__version__,
    )  # fmt: skip
    return TrainedModel(clf, info), oos


def save(model: TrainedModel, path: Path) -> None:
    """The model (pickle) and a JSON sidecar anyone can read (features, range, metrics)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(pickle.dumps({"format": FORMAT, "clf": model.clf, "info": asdict(model.info)}))
    tmp.replace(path)
    path.with_suffix(".json").write_text(json.dumps(asdict(model.info), indent=2, default=str))


def _tickvault_version() -> str:
    try:
        return importlib.metadata.version("tickvault")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree without installing
        return "unknown"


def load(path: Path) -> TrainedModel:
    """Load a model saved by `save`; refuses one trained on a feature this engine does not compute
    (one trained on fewer, before features were added, reads its own), and any file that is not a
    model (a clear ConfigError, whatever is wrong inside it)."""
    try:
        payload = pickle.loads(path.read_bytes())  # noqa: S301 - our own file, written by save()
        info = ModelInfo(**payload["info"])
    except Exception as exc:  # noqa: BLE001 - unpickling a foreign file can raise almost anything
        raise ConfigError("TICKVAULT_MODEL", str(path), f"is not a tickvault model file ({exc!r})") from None
    unknown = [name for name in info.features if name not in FEATURE_NAMES]
    if unknown or not info.features:
        raise ConfigError(
            "TICKVAULT_MODEL",
            str(path),
            f"was trained on other features than this tickvault computes ({', '.join(unknown)}); retrain it",
        )
    if info.sklearn_version and info.sklearn_version != sklearn.__version__:
        log.warning("model %s was trained with scikit-learn %s, this is %s; retrain if predictions look off",
                    path, info.sklearn_version, sklearn.__version__)  # fmt: skip
    try:
        return TrainedModel(payload["clf"], info)
    except Exception as exc:  # noqa: BLE001 - a payload that is not the fitted model we saved
        raise ConfigError("TICKVAULT_MODEL", str(path), f"holds no usable model ({exc!r})") from None
