"""The compiled forest gives scikit-learn's probabilities for one row, NaNs included."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.ensemble import HistGradientBoostingClassifier

from tickvault.ml.compiled_forest import CompiledForest


@pytest.mark.parametrize("classes", [2, 3])
def test_compiled_forest_equals_predict_proba(classes: int) -> None:
    rng = np.random.default_rng(classes)
    x = rng.normal(size=(2000, 8))
    x[rng.random(x.shape) < 0.1] = np.nan  # missing values go where training sent them
    y = (np.nan_to_num(x[:, 0]) + np.nan_to_num(x[:, 1]) * 0.5 > 0).astype(int)
    if classes == 3:
        y = y + (np.nan_to_num(x[:, 2]) > 1)
    clf = HistGradientBoostingClassifier(max_iter=60, random_state=0).fit(x, y)
    forest = CompiledForest(clf)
    rows = rng.normal(size=(300, 8))
    rows[rng.random(rows.shape) < 0.2] = np.nan
    expected = clf.predict_proba(rows)
    got = np.array([forest.predict_proba(r) for r in rows])
    np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-12)
    assert forest.classes == [str(c) for c in clf.classes_]
