"""Tests of the cross-validated ridge map against scikit-learn."""

from __future__ import annotations

import json
import logging
import warnings

import numpy as np
import pytest
from sklearn.linear_model import Ridge
from sklearn.metrics import r2_score
from sklearn.model_selection import GridSearchCV, KFold, cross_validate
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from dimalign.analysis.ridge import RidgeMap, standardise, validate_alphas

ALPHAS = np.logspace(-3, 5, 17)


def make_linear_data(n_objects=20, n_features=200, noise=1.0, seed=0):
    """Low-rank features with a known linear map to three targets plus Gaussian noise."""
    rng = np.random.default_rng(seed)
    factors = rng.normal(size=(n_objects, 4))
    loadings = rng.normal(size=(4, n_features)) * rng.uniform(0.5, 3.0, size=n_features)
    X = factors @ loadings + 0.5 * rng.normal(size=(n_objects, n_features))
    weights = rng.normal(size=(n_features, 3)) / np.sqrt(n_features)
    Y = X @ weights + noise * rng.normal(size=(n_objects, 3))
    return X, Y


def manual_cv_r2(X, Y, alpha, dim, n_splits=3):
    """Mean held-out R² over KFold splits with a scikit-learn scaler and ridge."""
    scores = []
    for train, test in KFold(n_splits).split(X):
        scaler = StandardScaler().fit(X[train])
        model = Ridge(alpha=alpha).fit(scaler.transform(X[train]), Y[train, dim])
        scores.append(r2_score(Y[test, dim], model.predict(scaler.transform(X[test]))))
    return float(np.mean(scores))


def test_ridge_reports_cross_validated_r2():
    X, Y = make_linear_data()
    ridge = RidgeMap(alphas=ALPHAS, cv=3).fit(X, Y)
    training_r2 = r2_score(Y, ridge.predict(X), multioutput="raw_values")

    for dim in range(3):
        assert ridge.cv_r2_[dim] < training_r2[dim]
        expected = manual_cv_r2(X, Y, ridge.alpha_[dim], dim)
        assert ridge.cv_r2_[dim] == pytest.approx(expected, abs=1e-6)


def test_ridge_matches_gridsearchcv():
    X, Y = make_linear_data(n_objects=60, n_features=40, noise=1.0, seed=3)
    ridge = RidgeMap(alphas=ALPHAS, cv=3).fit(X, Y)

    for dim in range(Y.shape[1]):
        search = GridSearchCV(
            Pipeline([("scale", StandardScaler()), ("ridge", Ridge())]),
            {"ridge__alpha": ALPHAS},
            cv=KFold(3),
            scoring="r2",
        ).fit(X, Y[:, dim])
        assert ridge.alpha_[dim] == search.best_params_["ridge__alpha"]
        assert ridge.cv_r2_[dim] == pytest.approx(search.best_score_, abs=1e-6)
        np.testing.assert_allclose(
            ridge.cv_scores_[:, dim], search.cv_results_["mean_test_score"], atol=1e-6
        )


def test_ridge_matches_gridsearchcv_shuffled():
    X, Y = make_linear_data(n_objects=45, n_features=30, noise=1.0, seed=4)
    ridge = RidgeMap(alphas=ALPHAS, cv=3, shuffle=True, random_state=7).fit(X, Y)
    search = GridSearchCV(
        Pipeline([("scale", StandardScaler()), ("ridge", Ridge())]),
        {"ridge__alpha": ALPHAS},
        cv=KFold(3, shuffle=True, random_state=7),
        scoring="r2",
    ).fit(X, Y[:, 1])

    assert ridge.alpha_[1] == search.best_params_["ridge__alpha"]
    assert ridge.cv_r2_[1] == pytest.approx(search.best_score_, abs=1e-6)


@pytest.mark.parametrize("shuffle", [False, True])
def test_nested_r2_matches_sklearn(shuffle):
    X, Y = make_linear_data(n_objects=60, n_features=40, noise=1.0, seed=3)
    ridge = RidgeMap(alphas=ALPHAS, cv=3, shuffle=shuffle, random_state=7).fit(X, Y)
    folds = KFold(3, shuffle=shuffle, random_state=7 if shuffle else None)

    for dim in range(Y.shape[1]):
        search = GridSearchCV(
            Pipeline([("scale", StandardScaler()), ("ridge", Ridge())]),
            {"ridge__alpha": ALPHAS},
            cv=folds,
            scoring="r2",
        )
        nested = cross_validate(
            search, X, Y[:, dim], cv=folds, scoring="r2", return_estimator=True
        )
        inner_alphas = [fitted.best_params_["ridge__alpha"] for fitted in nested["estimator"]]
        np.testing.assert_array_equal(ridge.nested_alpha_[:, dim], inner_alphas)
        assert ridge.nested_cv_r2_[dim] == pytest.approx(nested["test_score"].mean(), abs=1e-6)


def test_nested_r2_not_above_cv_r2():
    X, Y = make_linear_data(n_objects=60, n_features=40, noise=1.0, seed=3)
    ridge = RidgeMap(alphas=ALPHAS, cv=3).fit(X, Y)

    # The outer folds' best penalty scores at least as well as any other on them.
    assert (ridge.nested_cv_r2_ <= ridge.cv_r2_ + 1e-12).all()


def test_nested_r2_nan_when_too_few(caplog):
    X, Y = make_linear_data(n_objects=10)
    with caplog.at_level(logging.WARNING, logger="dimalign.analysis.ridge"):
        ridge = RidgeMap(alphas=ALPHAS, cv=5).fit(X, Y)

    assert np.isnan(ridge.nested_cv_r2_).all()
    assert ridge.nested_alpha_.shape == (5, 3)
    assert "training part of 8 objects is too small for 5 inner folds" in caplog.text
    assert np.isfinite(ridge.cv_r2_).all()


def test_ridge_coefficients_in_raw_space():
    X, Y = make_linear_data(n_objects=50, n_features=30, seed=5)
    X = X + 10.0  # a feature offset that the folded-in scaler must absorb
    ridge = RidgeMap(alphas=ALPHAS).fit(X, Y)

    for dim in range(3):
        pipeline = Pipeline([("scale", StandardScaler()), ("ridge", Ridge(alpha=ridge.alpha_[dim]))])
        pipeline.fit(X, Y[:, dim])
        np.testing.assert_allclose(ridge.predict(X)[:, dim], pipeline.predict(X), atol=1e-8)
    np.testing.assert_allclose(ridge.predict(X), X @ ridge.coef_ + ridge.intercept_)
    assert ridge.coef_.shape == (30, 3)
    assert ridge.intercept_.shape == (3,)


def test_ridge_warns_at_grid_edge():
    X, Y = make_linear_data(n_objects=60, n_features=40, noise=1.0, seed=3)
    # Heavy noise wants a large penalty: a grid that stops at 1e-1 must warn.
    grid = np.logspace(-4, -1, 4)
    with pytest.warns(UserWarning, match="largest value of the grid"):
        RidgeMap(alphas=grid).fit(X, Y)


def test_ridge_no_warning_inside_grid():
    X, Y = make_linear_data()
    ridge = RidgeMap(alphas=np.logspace(-3, 8, 23))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ridge.fit(X, Y)
    assert ridge.alpha_.min() > 1e-3
    assert ridge.alpha_.max() < 1e8


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf")])
def test_ridge_rejects_invalid_penalty(bad):
    X, Y = make_linear_data()
    with pytest.raises(ValueError, match="penalty"):
        RidgeMap(alphas=[1.0, bad]).fit(X, Y)


def test_validate_alphas_names_value():
    with pytest.raises(ValueError, match=r"0\.0"):
        validate_alphas([1.0, 0.0])


def test_validate_alphas_rejects_repeated_penalty():
    with pytest.raises(ValueError, match=r"the ridge penalty 1 appears 2 times in the grid: list each penalty once"):
        validate_alphas([1.0, 10.0, 1.0])


def test_ridge_single_penalty_says_so_once(caplog):
    X, Y = make_linear_data()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with caplog.at_level(logging.INFO, logger="dimalign.analysis.ridge"):
            ridge = RidgeMap(alphas=[1.0]).fit(X, Y)

    notes = [record.getMessage() for record in caplog.records if "single ridge penalty" in record.getMessage()]
    assert notes == [
        "a single ridge penalty (1) was given, so no penalty is chosen by cross-validation: "
        "every dimension uses it"
    ]
    assert ridge.alpha_.tolist() == [1.0] * Y.shape[1]


def test_ridge_rejects_mismatched_rows():
    X, Y = make_linear_data()
    with pytest.raises(ValueError, match="20 rows but Y has 19"):
        RidgeMap().fit(X, Y[:19])


def test_standardise_constant_column():
    X = np.column_stack([np.full(10, 3.0), np.arange(10.0)])
    mean, scale = standardise(X)
    assert scale[0] == 1.0
    assert mean[0] == 3.0
    np.testing.assert_allclose(scale[1], np.arange(10.0).std())


def test_ridge_save_load_round_trip(tmp_path):
    X, Y = make_linear_data()
    features = tmp_path / "features.npy"
    np.save(features, X)
    ridge = RidgeMap(alphas=ALPHAS, model_name="vgg16", layer="classifier.4").fit(X, Y)
    ridge.save(tmp_path / "map", inputs={"features": features})

    loaded = RidgeMap.load(tmp_path / "map")
    np.testing.assert_array_equal(loaded.coef_, ridge.coef_)
    np.testing.assert_array_equal(loaded.alpha_, ridge.alpha_)
    np.testing.assert_array_equal(loaded.predict(X), ridge.predict(X))
    assert loaded.layer == "classifier.4"
    assert loaded.model_name == "vgg16"

    manifest = json.loads((tmp_path / "map" / "manifest.json").read_text())
    assert manifest["settings"]["model_name"] == "vgg16"
    assert manifest["settings"]["layer"] == "classifier.4"
    assert len(manifest["inputs"]["features"]["sha256"]) == 64


def test_nested_r2_saved_and_loaded(tmp_path):
    X, Y = make_linear_data()
    ridge = RidgeMap(alphas=ALPHAS).fit(X, Y)
    ridge.save(tmp_path / "map")

    loaded = RidgeMap.load(tmp_path / "map")
    np.testing.assert_array_equal(loaded.nested_cv_r2_, ridge.nested_cv_r2_)
    np.testing.assert_array_equal(loaded.nested_alpha_, ridge.nested_alpha_)
    outputs = json.loads((tmp_path / "map" / "manifest.json").read_text())["outputs"]
    assert outputs["nested_cv_r2_median"] == float(np.median(ridge.nested_cv_r2_))


def test_old_map_loads_nan_nested(tmp_path):
    X, Y = make_linear_data()
    RidgeMap(alphas=ALPHAS).fit(X, Y).save(tmp_path / "map")
    archive_path = tmp_path / "map" / "ridge_map.npz"
    with np.load(archive_path) as archive:
        arrays = {name: archive[name] for name in archive.files
                  if name not in ("nested_cv_r2", "nested_alpha")}
    np.savez(archive_path, **arrays)

    loaded = RidgeMap.load(tmp_path / "map")
    assert loaded.nested_cv_r2_.shape == (3,)
    assert np.isnan(loaded.nested_cv_r2_).all()
    assert loaded.nested_alpha_.shape == (3, 3)


def test_ridge_load_truncated_archive(tmp_path):
    X, Y = make_linear_data()
    RidgeMap(alphas=ALPHAS).fit(X, Y).save(tmp_path / "map")
    archive = tmp_path / "map" / "ridge_map.npz"
    archive.write_bytes(archive.read_bytes()[:100])

    with pytest.raises(ValueError, match="ridge_map.npz cannot be read as a ridge map"):
        RidgeMap.load(tmp_path / "map")


def test_ridge_load_rejects_nan_coefficients(tmp_path):
    X, Y = make_linear_data()
    RidgeMap(alphas=ALPHAS).fit(X, Y).save(tmp_path / "map")
    archive = tmp_path / "map" / "ridge_map.npz"
    arrays = dict(np.load(archive))
    arrays["coef"][0, 1] = np.nan
    np.savez(archive, **arrays)

    with pytest.raises(ValueError, match=r"dimensions \[1\] contain NaN or inf"):
        RidgeMap.load(tmp_path / "map")


def test_negative_penalty_message_is_plain_number():
    with pytest.raises(ValueError) as error:
        validate_alphas(np.array([1.0, -1.0]))

    assert "ridge penalty -1.0 is invalid" in str(error.value)
    assert "np.float64" not in str(error.value)


def test_one_fold_names_folds_option():
    X, Y = np.ones((10, 2)), np.ones((10, 1))

    with pytest.raises(ValueError) as error:
        RidgeMap(alphas=ALPHAS, cv=1).fit(X, Y)

    assert "--folds" in str(error.value)
    assert "at least 2" in str(error.value)
    assert "cv=1" not in str(error.value)


def test_constant_dimension_warns():
    X, Y = make_linear_data()
    Y[:, 1] = 1.0
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        RidgeMap(alphas=ALPHAS, cv=3).fit(X, Y)
    assert any("dimension(s) [1] have the same value for every object" in str(item.message) for item in caught)


def test_ridge_map_follows_estimator_contract():
    from sklearn.base import clone
    from sklearn.exceptions import NotFittedError

    alphas = ALPHAS.copy()
    ridge = RidgeMap(alphas=alphas, cv=4, layer="fc")
    assert ridge.get_params()["alphas"] is alphas
    assert ridge.get_params(deep=False)["cv"] == 4
    assert ridge.set_params(cv=5) is ridge
    assert ridge.cv == 5

    copy = clone(ridge)
    assert copy.get_params()["cv"] == 5
    assert copy.get_params()["layer"] == "fc"
    np.testing.assert_array_equal(copy.alphas, alphas)
    with pytest.raises(NotFittedError, match="not fitted yet"):
        copy.predict(np.ones((2, 3)))

    X, Y = make_linear_data()
    fitted = clone(ridge).fit(X, Y)
    direct = RidgeMap(alphas=alphas, cv=5).fit(X, Y)
    np.testing.assert_array_equal(fitted.alpha_, direct.alpha_)


def test_ridge_score_is_mean_r2():
    X, Y = make_linear_data(n_objects=60, n_features=40, noise=1.0, seed=3)
    ridge = RidgeMap(alphas=ALPHAS, cv=3).fit(X[:45], Y[:45])
    per_dim = r2_score(Y[45:], ridge.predict(X[45:]), multioutput="raw_values")
    assert ridge.score(X[45:], Y[45:]) == pytest.approx(float(per_dim.mean()), abs=1e-15)
    weights = np.linspace(0.5, 2.0, 15)
    weighted = r2_score(Y[45:], ridge.predict(X[45:]), sample_weight=weights)
    assert ridge.score(X[45:], Y[45:], sample_weight=weights) == pytest.approx(weighted, abs=1e-15)


def test_ridge_works_in_cross_val_score():
    from sklearn.model_selection import cross_val_score

    X, Y = make_linear_data(n_objects=60, n_features=40, noise=1.0, seed=3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        scores = cross_val_score(RidgeMap(alphas=ALPHAS), X, Y, cv=3)
    expected = []
    for train, test in KFold(3).split(X):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            fitted = RidgeMap(alphas=ALPHAS).fit(X[train], Y[train])
        expected.append(r2_score(Y[test], fitted.predict(X[test])))
    np.testing.assert_allclose(scores, expected, rtol=0, atol=1e-12)


def test_ridge_one_dimensional_target(tmp_path):
    X, Y = make_linear_data(n_objects=50, n_features=40, noise=1.0, seed=3)
    ridge = RidgeMap(alphas=ALPHAS).fit(X, Y[:, 0])
    assert ridge.predict(X).shape == (50,)
    assert ridge.coef_.shape == (40, 1)
    ridge.save(tmp_path / "map")
    assert RidgeMap.load(tmp_path / "map").predict(X).shape == (50,)
    assert RidgeMap(alphas=ALPHAS).fit(X, Y[:, :1]).predict(X).shape == (50, 1)


def test_ridge_rejects_target_without_columns():
    X, _ = make_linear_data(n_objects=20, n_features=5)
    with pytest.raises(ValueError, match=r"Y has no column \(shape \(20, 0\)\)"):
        RidgeMap(alphas=ALPHAS).fit(X, np.zeros((20, 0)))


def test_ridge_rejects_single_object_folds():
    X, Y = make_linear_data(n_objects=10)

    with pytest.raises(ValueError) as error:
        RidgeMap(alphas=ALPHAS, cv=6).fit(X, Y)

    assert "6 cross-validation folds are invalid for 10 objects" in str(error.value)
    assert "at most 5" in str(error.value)
    assert RidgeMap(alphas=ALPHAS, cv=5).fit(X, Y).fold_scores_.shape == (5, ALPHAS.size, 3)


def test_ridge_rejects_too_few_objects():
    with pytest.raises(ValueError) as error:
        RidgeMap(alphas=ALPHAS, cv=2).fit(np.arange(6.0).reshape(3, 2), np.arange(3.0))

    assert "3 objects are too few for cross-validation: map at least 4 objects" in str(error.value)


def test_ridge_rejects_features_without_columns():
    with pytest.raises(ValueError) as error:
        RidgeMap(alphas=ALPHAS).fit(np.zeros((10, 0)), np.ones((10, 2)))

    assert "X has no column (shape (10, 0))" in str(error.value)


def test_ridge_nan_message_counts_rows():
    X, Y = make_linear_data()
    X[[3, 7], 0] = np.nan

    with pytest.raises(ValueError) as error:
        RidgeMap(alphas=ALPHAS).fit(X, Y)

    assert "X rows [3, 7] contain NaN or inf (2 rows)" in str(error.value)


def test_ridge_rejects_overflowing_features():
    X, Y = make_linear_data()
    X[4, 2] = 1e300

    with pytest.raises(ValueError) as error:
        RidgeMap(alphas=ALPHAS).fit(X, Y)

    assert str(error.value) == (
        "X: the squared deviations of feature columns [2] overflow float64 (largest absolute value "
        "1e+300); divide the features by a constant. Each feature is standardised, so the "
        "cross-validated R² stays the same"
    )


def test_ridge_predict_rejects_nan():
    X, Y = make_linear_data()
    ridge = RidgeMap(alphas=ALPHAS).fit(X, Y)
    X[5, 3] = np.inf

    with pytest.raises(ValueError, match=r"X rows \[5\] contain NaN or inf \(1 rows\), so their predictions"):
        ridge.predict(X)


def test_ridge_shuffle_needs_integer_seed():
    X, Y = make_linear_data()

    with pytest.raises(ValueError, match="random_state=None is invalid with shuffle=True: pass an integer seed"):
        RidgeMap(alphas=ALPHAS, shuffle=True, random_state=None).fit(X, Y)


def test_ridge_without_shuffle_saves_none_seed(tmp_path):
    X, Y = make_linear_data()
    ridge = RidgeMap(alphas=ALPHAS, random_state=None).fit(X, Y)

    ridge.save(tmp_path / "map")

    assert json.loads((tmp_path / "map" / "manifest.json").read_text())["settings"]["random_state"] is None
    assert RidgeMap.load(tmp_path / "map").random_state is None


def test_ridge_tiny_penalty_matches_sklearn():
    # More features than objects: the centred Gram matrix has an eigenvalue at
    # rounding level, which a penalty of 1e-30 must not amplify.
    rng = np.random.default_rng(0)
    X = rng.normal(size=(30, 100))
    Y = X[:, :3] @ rng.normal(size=(3, 2)) + 0.1 * rng.normal(size=(30, 2))

    ridge = RidgeMap(alphas=[1e-30], cv=3).fit(X, Y)

    for dim in range(2):
        assert ridge.cv_r2_[dim] == pytest.approx(manual_cv_r2(X, Y, 1e-30, dim), abs=1e-8)
    pipeline = Pipeline([("scale", StandardScaler()), ("ridge", Ridge(alpha=1e-30))]).fit(X, Y)
    np.testing.assert_allclose(ridge.predict(X), pipeline.predict(X), atol=1e-8)


def test_constant_features_warn():
    _, Y = make_linear_data()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ridge = RidgeMap(alphas=ALPHAS, cv=3).fit(np.ones((20, 5)), Y)
    assert any("every one of the 5 feature columns has the same value for every object" in str(item.message)
               for item in caught)
    np.testing.assert_allclose(ridge.predict(np.ones((2, 5))), np.tile(Y.mean(axis=0), (2, 1)))


def test_ridge_rejects_complex_and_sparse_input():
    import scipy.sparse

    X, Y = make_linear_data()
    with pytest.raises(ValueError, match="X has complex values: pass real numbers"):
        RidgeMap(alphas=ALPHAS).fit(X + 1j, Y)
    with pytest.raises(ValueError, match=r"X is a sparse matrix: pass a dense array \(X.toarray\(\)\)"):
        RidgeMap(alphas=ALPHAS).fit(scipy.sparse.csr_matrix(X), Y)
    ridge = RidgeMap(alphas=ALPHAS).fit(X, Y)
    with pytest.raises(ValueError, match="X has complex values"):
        ridge.predict(X + 1j)


def test_ridge_rejects_dataframes_in_other_order():
    """scikit-learn pairs rows by position, so labelled rows in two orders would pair wrong objects."""
    import pandas as pd

    rng = np.random.default_rng(0)
    names = [f"object{row}" for row in range(12)]
    X = pd.DataFrame(rng.random((12, 3)), index=names)
    Y = pd.DataFrame(rng.random((12, 2)), index=names)
    ridge = RidgeMap(alphas=[1.0, 10.0], cv=2)

    with pytest.raises(ValueError, match=r"^X and Y are DataFrames whose indexes list the same 12 objects in "
                                         r"another order: align them first, for example Y.loc\[X.index\]$"):
        ridge.fit(X, Y.iloc[::-1])
    with pytest.raises(ValueError, match=r"^X and Y are DataFrames whose indexes name other objects: 1 only in "
                                         r"X \(first 'object0'\), 1 only in Y \(first 'other'\)"):
        ridge.fit(X, Y.rename(index={"object0": "other"}))
    fitted = ridge.fit(X, Y)
    with pytest.raises(ValueError, match="same 12 objects in another order"):
        fitted.score(X, Y.iloc[::-1])
    np.testing.assert_array_equal(fitted.cv_r2_, RidgeMap(alphas=[1.0, 10.0], cv=2).fit(X.values, Y.values).cv_r2_)


def test_ridge_is_fitted_regressor():
    from sklearn.base import is_regressor
    from sklearn.exceptions import NotFittedError
    from sklearn.utils.validation import check_is_fitted

    ridge = RidgeMap(alphas=ALPHAS)
    assert is_regressor(ridge)
    assert ridge.__sklearn_tags__().target_tags.required
    with pytest.raises(NotFittedError):
        check_is_fitted(ridge)

    X, Y = make_linear_data()
    check_is_fitted(ridge.fit(X, Y))


def test_ridge_save_returns_folder(tmp_path):
    """save returns the folder, as VICE.save does, which load and DimensionPredictor.from_map_dir take."""
    X, Y = make_linear_data()
    ridge = RidgeMap(alphas=ALPHAS).fit(X, Y)

    saved = ridge.save(tmp_path / "map")

    assert saved == tmp_path / "map"
    assert saved.is_dir()
    np.testing.assert_array_equal(RidgeMap.load(saved).predict(X), ridge.predict(X))
    # The path of the archive itself loads too.
    np.testing.assert_array_equal(RidgeMap.load(saved / "ridge_map.npz").predict(X), ridge.predict(X))


def test_ridge_fit_takes_y_keyword():
    X, Y = make_linear_data(n_objects=12, n_features=6, seed=5)
    by_keyword = RidgeMap(alphas=ALPHAS).fit(X, y=Y)
    by_position = RidgeMap(alphas=ALPHAS).fit(X, Y)
    np.testing.assert_array_equal(by_keyword.coef_, by_position.coef_)
    np.testing.assert_array_equal(by_keyword.alpha_, by_position.alpha_)


def test_ridge_old_Y_keyword_warns():
    X, Y = make_linear_data(n_objects=12, n_features=6, seed=5)
    expected = RidgeMap(alphas=ALPHAS).fit(X, Y)

    with pytest.warns(FutureWarning, match=r"RidgeMap\.fit\(Y=\.\.\.\) is deprecated: pass y=") as caught:
        ridge = RidgeMap(alphas=ALPHAS).fit(X, Y=Y)
    # The warning names the caller's line, not a line of dimalign.
    assert [item.filename for item in caught if item.category is FutureWarning] == [__file__]
    np.testing.assert_array_equal(ridge.coef_, expected.coef_)

    with pytest.warns(FutureWarning, match=r"RidgeMap\.score\(Y=\.\.\.\) is deprecated: pass y="):
        old_score = expected.score(X, Y=Y)
    assert old_score == expected.score(X, y=Y)
    assert old_score == expected.score(X, Y)


def test_ridge_rejects_y_and_Y():
    X, Y = make_linear_data(n_objects=12, n_features=6, seed=5)
    ridge = RidgeMap(alphas=ALPHAS)
    with pytest.raises(TypeError, match=r"RidgeMap\.fit\(\) got both y and Y: pass only y"):
        ridge.fit(X, Y, Y=Y)
    with pytest.raises(TypeError, match=r"RidgeMap\.fit\(\) got both y and Y: pass only y"):
        ridge.fit(X, y=Y, Y=Y)
    assert not hasattr(ridge, "coef_")

    fitted = RidgeMap(alphas=ALPHAS).fit(X, Y)
    with pytest.raises(TypeError, match=r"RidgeMap\.score\(\) got both y and Y: pass only y"):
        fitted.score(X, Y, Y=Y)


def test_ridge_fit_without_target_raises():
    X, _ = make_linear_data(n_objects=12, n_features=6, seed=5)
    with pytest.raises(TypeError, match=r"RidgeMap\.fit\(\) is missing the target y"):
        RidgeMap(alphas=ALPHAS).fit(X)


def test_ridge_signatures_follow_sklearn():
    import inspect

    for method in (RidgeMap.fit, RidgeMap.score):
        parameters = list(inspect.signature(method).parameters)
        assert parameters[:3] == ["self", "X", "y"]
    # Y is an old name of the target, not metadata that sklearn would route.
    assert "Y" not in RidgeMap().get_metadata_routing().fit.requests
    assert "Y" not in RidgeMap().get_metadata_routing().score.requests


def test_ridge_clone_in_cross_val_score():
    from sklearn.base import clone
    from sklearn.model_selection import cross_val_score

    X, Y = make_linear_data(n_objects=24, n_features=6, noise=0.5, seed=5)
    ridge = clone(RidgeMap(alphas=ALPHAS, cv=2))
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        scores = cross_val_score(ridge, X, Y, cv=3)

    expected = []
    for train, test in KFold(3).split(X):
        fitted = RidgeMap(alphas=ALPHAS, cv=2).fit(X[train], Y[train])
        expected.append(fitted.score(X[test], Y[test]))
    assert scores.shape == (3,)
    np.testing.assert_allclose(scores, expected, rtol=0, atol=1e-12)


def test_grid_edge_warning_names_options():
    """The warning names the end of the grid to move and the option that moves it."""
    X, Y = make_linear_data(n_objects=60, n_features=40, noise=1.0, seed=3)
    grid = np.logspace(-4, -1, 4)

    with pytest.warns(UserWarning) as records:
        ridge = RidgeMap(alphas=grid).fit(X, Y)

    dims = np.flatnonzero(ridge.alpha_ == 0.1).tolist()
    assert [str(record.message) for record in records] == [
        f"the chosen ridge penalty of {len(dims)} dimension(s) ({dims}) is the largest value of the grid "
        "(0.1), so the best penalty may lie above the grid: raise its largest value (RidgeMap alphas=; "
        "CLI: dimalign map --alphas or --alpha-range LOW HIGH N; study file: map.alpha_max)"
    ]


def test_ridge_save_failure_keeps_earlier_map(tmp_path, monkeypatch):
    """A failure while hashing an input leaves the earlier map and manifest as they were."""
    import dimalign.io.files as files_module

    X, Y = make_linear_data()
    features = tmp_path / "features.npy"
    np.save(features, X)
    RidgeMap(alphas=ALPHAS).fit(X, Y).save(tmp_path / "map", inputs={"features": features})
    earlier = {path.name: path.read_bytes() for path in (tmp_path / "map").iterdir()}

    def unreadable(path, *args, **kwargs):
        raise PermissionError(f"[Errno 13] Permission denied: '{path}'")

    monkeypatch.setattr(files_module, "sha256_file", unreadable)
    with pytest.raises(PermissionError):
        RidgeMap(alphas=ALPHAS).fit(X, 2 * Y).save(tmp_path / "map", inputs={"features": features})

    assert {path.name: path.read_bytes() for path in (tmp_path / "map").iterdir()} == earlier
