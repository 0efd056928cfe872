"""What the live flow does with a model: load the one `tickvault train` saved, check it covers a
symbol, and turn its probabilities into BUY, SELL or HOLD. Used by the in-process core flow and
the predictor workers alike.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Protocol

from tickvault.domain.events import Action

log = logging.getLogger("tickvault.model")


class Model(Protocol):
    name: str

    def predict_proba_one(self, values: dict[str, Any]) -> dict[str, float]: ...


def model_covers(model: Model, symbol: str) -> bool:
    """Whether `model` was trained for `symbol` (a model that names no symbols takes any). A WDO
    model fed WIN's features would still answer, with signals that mean nothing."""
    symbols = getattr(model, "symbols", None)
    return symbols is None or symbol in symbols


def load_model(path: Path) -> Model | None:
    """The model `tickvault train` saved at `path`, or None when there is none yet (features only).
    A file that exists but cannot be used is an error, not a silent "no predictions"."""
    if not path.exists():
        log.info("no model at %s: features only (train one with `tickvault train`)", path)
        return None
    from tickvault.ml.model import load  # scikit-learn is imported only when there is a model

    return load(path)


def decide(probabilities: dict[str, float], threshold: float) -> tuple[Action, float]:
    """BUY when P(UP) reaches `threshold`, SELL when P(DOWN) does, else HOLD; confidence is the
    probability behind the decision."""
    up, down = probabilities.get("UP", 0.0), probabilities.get("DOWN", 0.0)
    if up >= threshold and up >= down:
        return "BUY", up
    if down >= threshold:
        return "SELL", down
    return "HOLD", max(probabilities.values(), default=0.0)
