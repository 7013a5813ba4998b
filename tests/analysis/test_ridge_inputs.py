"""RidgeMap fits the same map from the array layouts that a scikit-learn user may pass."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import r2_score

from dimalign.analysis.ridge import RidgeMap

ALPHAS = np.logspace(-2, 4, 7)


def linear_data():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(40, 6))
    Y = X[:, :2] @ np.array([[1.0, 0.5], [-2.0, 1.0]]) + rng.normal(scale=3.0, size=(40, 2))
    return X, Y


def read_only(array: np.ndarray) -> np.ndarray:
    copy = array.copy()
    copy.setflags(write=False)
    return copy


@pytest.mark.parametrize(
    "convert",
    [lambda a: a.tolist(), pd.DataFrame, torch.as_tensor, np.asfortranarray, read_only,
     lambda a: np.ascontiguousarray(a[::-1])[::-1]],
    ids=["list", "DataFrame", "tensor", "Fortran", "read-only", "negative-stride"],
)
def test_ridge_layouts_fit_alike(convert):
    X, Y = linear_data()
    X_before, Y_before = X.copy(), Y.copy()
    reference = RidgeMap(alphas=ALPHAS).fit(X, Y)

    ridge = RidgeMap(alphas=ALPHAS).fit(convert(X), convert(Y))

    np.testing.assert_array_equal(ridge.alpha_, reference.alpha_)
    np.testing.assert_array_equal(ridge.cv_scores_, reference.cv_scores_)
    np.testing.assert_array_equal(ridge.coef_, reference.coef_)
    np.testing.assert_array_equal(ridge.intercept_, reference.intercept_)
    np.testing.assert_array_equal(ridge.predict(convert(X)), reference.predict(X))
    # r2_score itself sums a Fortran-ordered y in another order, as for any scikit-learn regressor.
    assert ridge.score(convert(X), convert(Y)) == r2_score(convert(Y), reference.predict(X))
    np.testing.assert_array_equal(X, X_before)
    np.testing.assert_array_equal(Y, Y_before)


def test_ridge_not_fitted_message():
    """The message names fit's current signature, not the deprecated name Y of the target."""
    from sklearn.exceptions import NotFittedError

    X, _ = linear_data()

    with pytest.raises(NotFittedError, match=r"^this RidgeMap is not fitted yet: call fit\(X, y\) first$"):
        RidgeMap().predict(X)
