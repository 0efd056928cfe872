"""`tickvault train`, `report`, `backtest` and `backfill`: the model learned, judged and fed."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Annotated

import typer

from tickvault.app.commands.support import Opt, errors, flags, open_store, settings_of, stop_on_sigterm
from tickvault.errors import ConfigError


def train(
    ctx: typer.Context,
    symbol: Annotated[str, typer.Argument(help="Symbol to predict, e.g. WDOFUT")],
    start: Annotated[str, Opt(help="First day of history to learn from (ISO 8601, a date, '-30d')")],
    end: Annotated[str, Opt(help="Inclusive end, same forms as --start")] = "now",
    horizon: Annotated[float, Opt(help="Seconds ahead the label looks", min=1.0)] = 60.0,
    folds: Annotated[
        int | None, Opt(help="Walk-forward folds (default: every session after the first)", min=1)
    ] = None,
    model: Annotated[Path | None, Opt(help="Where to save (default: TICKVAULT_MODEL)")] = None,
) -> None:
    """Train the direction model on stored history, evaluate it walk-forward, save it."""
    from tickvault.app.components.core_flow import feature_config
    from tickvault.app.queries import training_data
    from tickvault.domain.events import validate_symbol
    from tickvault.domain.instruments import instrument_for
    from tickvault.ml.model import save
    from tickvault.ml.model import train as fit_model

    with errors():
        settings = settings_of(ctx)
        validate_symbol(symbol)
        path, horizon_ms = model or settings.model_file, int(horizon * 1000)
        symbols = list(dict.fromkeys((symbol, *settings.symbols)))
        with open_store(settings, "train") as (store, _):
            data = training_data(
                store, symbol, symbols, start, end, horizon_ms=horizon_ms, config=feature_config(settings)
            )
        trained, oos = fit_model(
            data, symbol, horizon_ms=horizon_ms, tick_size=instrument_for(symbol).tick_size, folds=folds
        )
        save(trained, path)
        oos.to_parquet(path.with_suffix(".oos.parquet"))
        for fold in trained.info.folds:
            print(f"{fold['test_session']}: accuracy {fold['accuracy']:.3f}"
                  f" (majority {fold['majority_rate']:.3f}) on {fold['n_test']} rows")  # fmt: skip
        print(f"model={path} sessions={trained.info.sessions} rows={trained.info.rows}")


def report(
    ctx: typer.Context,
    model: Annotated[Path | None, Opt(help="Model saved by `train` (default: TICKVAULT_MODEL)")] = None,
    output: Annotated[Path, Opt(help="HTML file to write")] = Path("report.html"),
    fee: Annotated[float, Opt(help="Fee in BRL per contract per side", min=0.0)] = 1.0,
    multiplier: Annotated[float | None, Opt(help="BRL per point (default: the symbol's)", min=0.0)] = None,
    threshold: Annotated[float | None, Opt(help="Probability to act (default: SIGNAL_THRESHOLD)")] = None,
) -> None:
    """Write an HTML report of a trained model: metrics, confusion matrix, importance, equity curve."""
    import pandas as pd

    from tickvault.ml.model import load
    from tickvault.ml.report import write_report

    with errors():
        settings = settings_of(ctx)
        path = model or settings.model_file
        trained = load(path)
        oos_path = path.with_suffix(".oos.parquet")
        if not oos_path.exists():
            raise ConfigError(
                "--model", str(path), f"has no out-of-sample predictions ({oos_path.name}); retrain it"
            )
        written = write_report(
            trained.info, pd.read_parquet(oos_path), output, fee=fee, multiplier=multiplier,
            threshold=threshold if threshold is not None else settings.signal_threshold,
        )  # fmt: skip
        print(f"report={written}")


def backtest(
    ctx: typer.Context,
    symbol: Annotated[str, typer.Argument(help="Symbol(s) to replay, e.g. WDOFUT or WDOFUT,WINFUT")],
    start: Annotated[str, Opt(help="ISO 8601 with offset, a date (B3 day) or e.g. '-2d'")],
    end: Annotated[str, Opt(help="Inclusive end, same forms as --start")],
    model: Annotated[Path | None, Opt(help="Model saved by `train` (default: TICKVAULT_MODEL)")] = None,
    namespace: Annotated[
        str | None, Opt(help="Where the replay's output goes (default: backtest-<UTC time>); must be new")
    ] = None,
    output: Annotated[Path, Opt(help="HTML file to write")] = Path("report.html"),
    fee: Annotated[float, Opt(help="Fee in BRL per contract per side", min=0.0)] = 1.0,
) -> None:
    """Replay a recorded range through the live pipeline with a model, into a namespace, and write
    the report of its predictions and signals: hit rate, confusion matrix, equity after costs."""
    from tickvault.app.backtest import RUN_SETTINGS, default_namespace, run_backtest
    from tickvault.domain.timeparse import to_ms_bounds

    with errors():
        start_ms, end_ms = to_ms_bounds(start, end)
        settings = settings_of(
            ctx, symbols=symbol, namespace=namespace or default_namespace(), model_path=model, **RUN_SETTINGS
        )
        stop = threading.Event()
        stop_on_sigterm(stop)
        with open_store(settings, "backtest") as (store, _):
            result = run_backtest(settings, store, start_ms, end_ms, output=output, fee=fee, stop=stop)
        print(result.summary())


# -- backfill ----------------------------------------------------------------------------------------


@flags("symbols", "seed")
def backfill(
    ctx: typer.Context,
    days: Annotated[int, Opt(help="How many past B3 sessions per symbol", min=1, max=250)] = 3,
    before: Annotated[str | None, Opt(help="Sessions before this date (default: today in B3 time)")] = None,
) -> None:
    """Fill history with simulated past sessions (for training and history-aware features on a new
    installation); days that already hold ticks are left alone."""
    from tickvault.domain.events import B3_TZ
    from tickvault.domain.timeparse import parse_time
    from tickvault.sources.backfill import backfill as fill

    with errors():
        settings = settings_of(ctx)
        end = parse_time(before, field="--before").astimezone(B3_TZ).date() if before is not None else None
        with open_store(settings, "backfill") as (store, _):
            result = fill(store, settings.symbols, days, before=end, seed=settings.seed)
        for (symbol, day), count in sorted(result.written.items()):
            print(f"{symbol} {day}: {count} simulated ticks")
        for symbol, day in result.skipped:
            print(f"{symbol} {day}: already has ticks, left as it is")
        print(f"written={result.ticks} sessions={len(result.written)} skipped={len(result.skipped)}")
