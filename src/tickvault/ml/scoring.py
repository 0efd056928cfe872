"""A model's live output judged against what the market did next (`tickvault backtest`).

Each prediction the live flow made is labelled as training labels a row (`model.label_moves`: the
move from its price to the last trade at or before t + horizon, one tick either way FLAT; a horizon
that runs past the session's last trade among the replayed ticks leaves it unlabelled, and it is not
scored). On the labelled ones:

- accuracy and the confusion matrix: the most probable class against the label (ties go to the first
  of DOWN, FLAT, UP, as in the walk-forward evaluation);
- hit rate: the share of BUY and SELL signals whose label went their way (BUY and UP, SELL and DOWN);
- equity: each BUY or SELL signal one contract held for the horizon (`pnl`), in BRL after fees, with
  the symbol's B3 multiplier, summed in time order.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from tickvault.domain.events import B3_TZ
from tickvault.ml.model import LABELS, future_move, label_moves

POSITION = {"BUY": 1, "SELL": -1, "HOLD": 0}


def pnl(position: np.ndarray, move: np.ndarray, *, multiplier: float, fee: float) -> np.ndarray:
    """BRL per trade: direction x move in points x the multiplier, less the fee per side twice."""
    out: np.ndarray = position * move * multiplier - np.abs(position) * 2 * fee
    return out


@dataclass(frozen=True)
class SymbolRun:
    """What one symbol's replay produced and what it replayed, as columns."""

    symbol: str
    tick_ms: np.ndarray  # the replayed trades (edits left out), in time order
    tick_price: np.ndarray
    at_ms: np.ndarray  # one row per prediction, in the order they were made
    price: np.ndarray  # the price the features saw at that moment
    probabilities: np.ndarray  # (rows, 3): DOWN, FLAT, UP
    actions: np.ndarray  # BUY, SELL or HOLD: the signal made with the prediction


def scored_rows(
    run: SymbolRun, *, horizon_ms: int, tick_size: float, multiplier: float, fee: float
) -> pd.DataFrame:
    """The labelled predictions of one symbol, indexed by B3 time: symbol, DOWN, FLAT, UP, label,
    predicted, action, move, position, pnl."""
    if len(run.at_ms) and len(run.tick_ms):
        labels = label_moves(run.tick_ms, run.tick_price, run.at_ms, run.price, horizon_ms, tick_size)
        move = future_move(run.tick_ms, run.tick_price, run.at_ms, run.price, horizon_ms)
    else:
        labels, move = np.full(len(run.at_ms), -1), np.zeros(len(run.at_ms))
    keep = labels >= 0
    position = np.array([POSITION[a] for a in run.actions[keep]], dtype=np.int64)
    frame = pd.DataFrame(run.probabilities[keep], columns=list(LABELS))
    frame.insert(0, "symbol", run.symbol)
    frame["label"] = labels[keep]
    frame["predicted"] = run.probabilities[keep].argmax(axis=1)
    frame["action"] = run.actions[keep]
    frame["move"] = move[keep]
    frame["position"] = position
    frame["pnl"] = pnl(position, move[keep], multiplier=multiplier, fee=fee)
    frame.index = pd.to_datetime(run.at_ms[keep], unit="ms", utc=True).tz_convert(B3_TZ)
    return frame


@dataclass(frozen=True)
class Score:
    predictions: int  # made, labelled or not
    labelled: int
    accuracy: float  # NaN when nothing is labelled
    confusion: list[list[int]]  # rows true, columns predicted; DOWN, FLAT, UP
    trades: int  # BUY and SELL signals among the labelled
    hit_rate: float  # NaN without a trade
    equity: float  # BRL after costs, the sum of every trade's pnl


def score(rows: pd.DataFrame, predictions: int) -> Score:
    """The numbers of the scored rows (one symbol's or several symbols' together)."""
    label, predicted = rows["label"].to_numpy(int), rows["predicted"].to_numpy(int)
    confusion = np.zeros((3, 3), dtype=np.int64)
    np.add.at(confusion, (label, predicted), 1)
    position = rows["position"].to_numpy(int)
    traded = position != 0
    right = (position == 1) & (label == 2) | (position == -1) & (label == 0)
    return Score(
        predictions=predictions,
        labelled=len(rows),
        accuracy=float(np.mean(label == predicted)) if len(rows) else float("nan"),
        confusion=confusion.tolist(),
        trades=int(traded.sum()),
        hit_rate=float(right.sum() / traded.sum()) if traded.any() else float("nan"),
        equity=float(rows["pnl"].sum()),
    )


def in_time_order(parts: list[pd.DataFrame]) -> pd.DataFrame:
    """Several symbols' scored rows as one, by time (ties in the order given); with `equity`, the
    running sum of pnl."""
    rows = pd.concat(parts) if parts else pd.DataFrame(columns=["symbol", *LABELS, "pnl"])
    rows = rows.sort_index(kind="stable")
    rows["equity"] = rows["pnl"].to_numpy(float).cumsum()
    return rows
