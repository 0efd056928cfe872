"""`tickvault report`: one self-contained HTML file about a trained model (plotly.js inline, so it
opens offline): walk-forward metrics, confusion matrix, permutation importance, and the equity curve
of a simple rule on the out-of-sample predictions, after costs. `tickvault backtest` writes the same
kind of page about a replayed range (`write_backtest_report`: hit rate, confusion matrix, equity).

The rule: long one contract when P(UP) >= threshold, short when P(DOWN) >= threshold, else flat;
each position is held for the model's horizon. P&L per trade = direction x move in points x the
contract multiplier (BRL per point, from `domain.instruments`: WDO 10, DOL 50, WIN 0.2, IND 1) - fee
per contract per side x 2. Trades
overlap when predictions come faster than the horizon; each is counted on its own (a signal's
quality, not a portfolio).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.io import to_html

from tickvault.domain.instruments import instrument_for
from tickvault.ml.model import LABELS, ModelInfo
from tickvault.ml.scoring import Score, pnl


def equity(oos: pd.DataFrame, *, threshold: float, multiplier: float, fee: float) -> pd.DataFrame:
    """Per out-of-sample row: position taken, P&L after costs, cumulative equity (BRL)."""
    up, down = oos["UP"].to_numpy(float), oos["DOWN"].to_numpy(float)
    position = np.where((up >= threshold) & (up >= down), 1, np.where(down >= threshold, -1, 0))
    made = pnl(position, oos["move"].to_numpy(float), multiplier=multiplier, fee=fee)
    return pd.DataFrame({"position": position, "pnl": made, "equity": np.cumsum(made)}, index=oos.index)


def write_report(
    info: ModelInfo,
    oos: pd.DataFrame,
    path: Path,
    *,
    threshold: float,
    fee: float,
    multiplier: float | None = None,
) -> Path:
    mult = multiplier if multiplier is not None else instrument_for(info.symbol).multiplier
    curve = equity(oos, threshold=threshold, multiplier=mult, fee=fee)
    folds = pd.DataFrame(info.folds)
    parts = [f"<h1>tickvault model report: {info.symbol}</h1>",
             f"<p>Trained {info.train_start} to {info.train_end}: {info.sessions} sessions,"
             f" {info.rows:,} rows;"
             f" horizon {info.horizon_ms / 1000:g} s; dead band one tick ({info.tick_size:g}).</p>",
             "<h2>Walk-forward metrics</h2>"]  # fmt: skip
    if len(folds):
        table = folds[
            [
                "test_session",
                "n_train",
                "n_test",
                "accuracy",
                "majority_rate",
                "balanced_accuracy",
                "log_loss",
            ]
        ]
        parts.append(table.to_html(index=False, float_format=lambda v: f"{v:.4f}"))
        confusion = np.sum([np.array(c) for c in folds["confusion"]], axis=0)
    else:
        parts.append("<p>No fold could be evaluated.</p>")
        confusion = np.zeros((3, 3), dtype=int)
    parts += ["<h2>Confusion matrix</h2>", _confusion(confusion, "all folds", include_plotlyjs="inline")]
    ranked = sorted(info.importance.items(), key=lambda kv: kv[1])
    bars = go.Figure(go.Bar(x=[v for _, v in ranked], y=[k for k, _ in ranked], orientation="h"))
    bars.update_layout(title="Permutation importance on the last test session (accuracy drop)", height=560)
    parts += ["<h2>Feature importance</h2>", to_html(bars, full_html=False, include_plotlyjs=False)]
    trades = int(np.abs(curve["position"]).sum())
    title = f"Equity after costs (BRL): threshold {threshold}, fee {fee}/contract/side, multiplier {mult}"
    final = float(curve["equity"].iloc[-1]) if len(curve) else 0.0
    parts += ["<h2>Equity curve (out of sample)</h2>",
              f"<p>{trades:,} trades, final equity {final:,.2f} BRL.</p>",
              _equity(curve["equity"], title)]  # fmt: skip
    return _page("tickvault report", parts, path)


def write_backtest_report(
    about: str, by_symbol: dict[str, Score], total: Score, rows: pd.DataFrame, path: Path, *, fee: float
) -> Path:
    """The page of a backtest: `about` (what was replayed, with which model), hit rate and accuracy
    per symbol and in all, the confusion matrix and the equity curve of every symbol's trades in time
    order (`rows`: `scoring.in_time_order`)."""
    table = pd.DataFrame(
        [
            {
                "symbol": name,
                "predictions": s.predictions,
                "labelled": s.labelled,
                "accuracy": s.accuracy,
                "trades (BUY/SELL)": s.trades,
                "hit rate": s.hit_rate,
                "equity (BRL)": s.equity,
            }  # fmt: skip
            for name, s in [*by_symbol.items(), *([("all", total)] if len(by_symbol) > 1 else [])]
        ]
    )
    mults = ", ".join(f"{name} {instrument_for(name).multiplier:g}" for name in by_symbol)
    title = f"Equity after costs (BRL): fee {fee}/contract/side, multiplier {mults}"
    parts = ["<h1>tickvault backtest</h1>", f"<p>{about}</p>", "<h2>Hit rate</h2>",
             table.to_html(index=False, float_format=lambda v: f"{v:.4f}", na_rep="n/a"),
             "<h2>Confusion matrix</h2>",
             _confusion(np.array(total.confusion), "labelled predictions", include_plotlyjs="inline"),
             "<h2>Equity curve</h2>",
             f"<p>{total.trades:,} trades, final equity {total.equity:,.2f} BRL.</p>",
             _equity(rows["equity"], title)]  # fmt: skip
    return _page("tickvault backtest", parts, path)


def _confusion(confusion: np.ndarray, of: str, *, include_plotlyjs: bool | str) -> str:
    heat = go.Figure(
        go.Heatmap(z=confusion, x=list(LABELS), y=list(LABELS), text=confusion, texttemplate="%{text}")
    )
    heat.update_layout(title=f"Confusion matrix ({of}): rows true, columns predicted", height=420)
    return str(to_html(heat, full_html=False, include_plotlyjs=include_plotlyjs))


def _equity(equity: pd.Series, title: str) -> str:
    line = go.Figure(go.Scatter(x=equity.index, y=equity, mode="lines"))
    line.update_layout(title=title, height=420)
    return str(to_html(line, full_html=False, include_plotlyjs=False))


def _page(title: str, parts: list[str], path: Path) -> Path:
    html = f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title></head><body>"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(html + "\n".join(parts) + "</body></html>", encoding="utf-8")
    return path
