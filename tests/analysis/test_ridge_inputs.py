"""RidgeMap fits the same map from the array layouts that a scikit-learn user may pass."""

from __future__ import annotations

import re

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


@pytest.mark.parametrize("shuffle", ["yes", 1, None])
def test_ridge_rejects_invalid_shuffle(shuffle):
    X, Y = linear_data()
    with pytest.raises(ValueError, match=rf"^shuffle={shuffle!r} is invalid: use True or False$"):
        RidgeMap(alphas=ALPHAS, shuffle=shuffle).fit(X, Y)


def test_ridge_accepts_numpy_bool_shuffle():
    X, Y = linear_data()
    ridge = RidgeMap(alphas=ALPHAS, shuffle=np.bool_(True), random_state=7).fit(X, Y)
    reference = RidgeMap(alphas=ALPHAS, shuffle=True, random_state=7).fit(X, Y)
    np.testing.assert_array_equal(ridge.fold_scores_, reference.fold_scores_)


@pytest.mark.parametrize("seed", [-1, 2**32])
def test_ridge_rejects_seed_out_of_range(seed):
    X, Y = linear_data()
    with pytest.raises(ValueError, match=rf"^random_state={seed} is invalid with shuffle=True: use an integer "
                                         r"from 0 to 2\*\*32 - 1"):
        RidgeMap(alphas=ALPHAS, shuffle=True, random_state=seed).fit(X, Y)


def test_ridge_rejects_non_numeric_alpha():
    X, Y = linear_data()
    with pytest.raises(ValueError, match=r"^alphas must be numbers, got \[1, 'a'\]"):
        RidgeMap(alphas=[1, "a"]).fit(X, Y)


@pytest.mark.parametrize(("name", "value"), [("model_name", ["vgg16"]), ("layer", 4)])
def test_ridge_rejects_non_string_names(tmp_path, name, value):
    X, Y = linear_data()
    with pytest.raises(ValueError, match="^" + re.escape(f"{name}={value!r} is invalid: pass a string or None")):
        RidgeMap(alphas=ALPHAS, **{name: value}).fit(X, Y)


def test_ridge_docstring_lists_fitted_attributes():
    X, Y = linear_data()
    ridge = RidgeMap(alphas=ALPHAS).fit(X, Y)
    fitted = sorted(name for name in vars(ridge) if name.endswith("_") and not name.startswith("_"))
    for name in fitted:
        assert f"    {name} (" in RidgeMap.__doc__, name
