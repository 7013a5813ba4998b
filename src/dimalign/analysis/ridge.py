"""Ridge mapping from a DNN layer's features to the dimensions of an embedding.

:class:`RidgeMap` fits one ridge regression per embedding dimension. The
penalty of each dimension is chosen by k-fold cross-validation over a grid,
and the features are standardised (centred, divided by their standard
deviation) inside each fold with statistics of the training part only, as
``Pipeline(StandardScaler(), Ridge(alpha))`` does in scikit-learn.

All dimensions and all penalties of a fold come from one singular value
decomposition. With the standardised training features ``Z = U S V^T`` and
centred targets ``y``, the ridge solution for penalty ``alpha`` is
``w(alpha) = V diag(s / (s^2 + alpha)) U^T y``, so one SVD per fold replaces
one fit per (penalty, dimension) pair. ``U`` (or ``V``) and ``s^2`` are taken
from the eigendecomposition of the smaller Gram matrix (``Z Z^T`` or
``Z^T Z``), which is faster than a direct SVD of ``Z`` (see
:class:`_SpectralRidge`).

The cross-validated R² of a penalty is the mean over folds of the R² on each
held-out fold (the test fold's own mean is the baseline). This is the score
that scikit-learn's ``GridSearchCV(..., scoring="r2")`` maximises, so the
chosen penalties and scores agree with it.
"""

from __future__ import annotations

import logging
import os
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.exceptions import NotFittedError
from sklearn.model_selection import KFold

from dimalign._warnings import warn
from dimalign.io.files import atomic_path, check_output_dir, read_manifest, staged_outputs, write_manifest
from dimalign.io.objects import check_same_index

logger = logging.getLogger(__name__)

RIDGE_MAP_NAME = "ridge_map.npz"

#: Default penalty grid: 50 values from 1e-2 to 1e6, evenly spaced in log10.
DEFAULT_ALPHAS = np.logspace(-2, 6, 50)


def _resolve_target(y: Any, old_y: Any, method: str) -> Any:
    """Return the target of ``RidgeMap.<method>`` from ``y`` or its deprecated name ``Y``.

    Raises:
        TypeError: If both are given, or neither is.
    """
    if old_y is None:
        if y is None:
            raise TypeError(
                f"RidgeMap.{method}() is missing the target y: pass the embedding as the "
                f"second argument, as in RidgeMap().{method}(X, y)"
            )
        return y
    if y is not None:
        raise TypeError(f"RidgeMap.{method}() got both y and Y: pass only y (Y is its deprecated name)")
    warn(
        f"RidgeMap.{method}(Y=...) is deprecated: pass y= (the scikit-learn name of the target) "
        "or pass the target as the second argument",
        FutureWarning,
    )
    return old_y


def validate_alphas(alphas: Sequence[float] | np.ndarray) -> np.ndarray:
    """Check a penalty grid and return it as a float64 array.

    Raises:
        ValueError: If the grid is empty, not 1-D, contains a value that is not
            a number or not a finite positive number, or contains a value more than once (the
            error names the first such value).
    """
    try:
        grid = np.asarray(alphas, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise ValueError(
            f"alphas must be numbers, got {alphas!r}: pass a grid of positive penalties such as "
            "numpy.logspace(-2, 6, 50)"
        ) from error
    if grid.ndim != 1 or grid.size == 0:
        raise ValueError(f"alphas must be a non-empty 1-D sequence, got shape {grid.shape}")
    invalid = grid[~(np.isfinite(grid) & (grid > 0))]
    if invalid.size:
        raise ValueError(
            f"ridge penalty {float(invalid[0])} is invalid: every alpha must be a finite "
            "positive number (use a grid such as numpy.logspace(-2, 6, 50))"
        )
    # A repeated penalty is both the smallest and the largest value of a grid
    # such as [1, 1], so both grid-edge warnings would fire for it.
    values, counts = np.unique(grid, return_counts=True)
    if (counts > 1).any():
        repeated = np.flatnonzero(counts > 1)[0]
        raise ValueError(
            f"the ridge penalty {float(values[repeated]):g} appears {int(counts[repeated])} times in "
            "the grid: list each penalty once (numpy.unique removes repeats)"
        )
    return grid


class RidgeMap(RegressorMixin, BaseEstimator):
    """Cross-validated ridge regression from features to every embedding dimension.

    The class follows the scikit-learn estimator contract: ``__init__`` only
    stores its arguments, ``get_params``/``set_params`` come from
    ``sklearn.base.BaseEstimator`` (so ``sklearn.base.clone`` works), ``fit``
    returns ``self``, and ``predict`` before ``fit`` raises
    ``sklearn.exceptions.NotFittedError``. ``sklearn.base.is_regressor``
    returns True for it.

    Args:
        alphas (Sequence[float] | None): Penalty grid. Every value must be
            positive and listed once. None uses :data:`DEFAULT_ALPHAS`.
        cv (int): Number of folds (scikit-learn ``KFold``).
        shuffle (bool): Shuffle the objects before splitting them into folds.
        random_state (int | None): Seed of the shuffle, an integer when
            ``shuffle`` is set; unused (and may be None) without it.
        model_name (str | None): Name of the DNN, recorded by :meth:`save`.
        layer (str | None): Layer of the features, recorded by :meth:`save`.

    Attributes:
        alpha_ (np.ndarray): Chosen penalty per dimension, shape ``(n_dims,)``.
        cv_r2_ (np.ndarray): Cross-validated R² at the chosen penalty, shape
            ``(n_dims,)``: the mean over folds of the held-out R². The same
            folds choose the penalty, so this is optimistic, as
            ``GridSearchCV.best_score_`` is.
        nested_cv_r2_ (np.ndarray): Nested cross-validated R², shape
            ``(n_dims,)``: held-out R² that the choice of penalty does not
            inflate. Each outer fold is scored at the penalty that ``cv``
            inner folds of its training part choose. It is NaN when an outer
            training part has fewer than ``2 * cv`` objects.
        nested_alpha_ (np.ndarray): Penalty chosen by the inner folds of each
            outer fold, shape ``(cv, n_dims)``.
        cv_scores_ (np.ndarray): Cross-validated R² for every penalty, shape
            ``(n_alphas, n_dims)``: the mean of ``fold_scores_`` over folds.
        fold_scores_ (np.ndarray): Held-out R² of every fold, penalty and
            dimension, shape ``(cv, n_alphas, n_dims)``.
        alphas_ (np.ndarray): The penalty grid that was searched, float64,
            shape ``(n_alphas,)``: ``alphas``, or :data:`DEFAULT_ALPHAS` for None.
        coef_ (np.ndarray): Coefficients in the raw feature space, shape
            ``(n_features, n_dims)``, so that ``Y = X @ coef_ + intercept_``.
        intercept_ (np.ndarray): Shape ``(n_dims,)``.
        n_features_in_ (int): Number of feature columns seen in ``fit``.
        target_ndim_ (int): 1 when ``fit`` got a 1-D target, so that
            ``predict`` returns shape ``(n_objects,)``, else 2. Maps saved
            before this was recorded load with 2.

    Examples:
        >>> rng = np.random.default_rng(0)
        >>> X = rng.normal(size=(30, 5))
        >>> Y = X[:, :2] * [1.0, -2.0] + rng.normal(scale=0.5, size=(30, 2))
        >>> ridge = RidgeMap(alphas=np.logspace(-2, 3, 6)).fit(X, Y)
        >>> ridge.coef_.shape, ridge.alpha_.tolist()
        ((5, 2), [1.0, 1.0])
    """

    def __init__(
        self,
        alphas: Sequence[float] | np.ndarray | None = None,
        cv: int = 3,
        *,
        shuffle: bool = False,
        random_state: int | None = 0,
        model_name: str | None = None,
        layer: str | None = None,
    ) -> None:
        self.alphas = alphas
        self.cv = cv
        self.shuffle = shuffle
        self.random_state = random_state
        self.model_name = model_name
        self.layer = layer

    # -- fitting -------------------------------------------------------------

    def fit(self, X: np.ndarray, y: np.ndarray | None = None, *, Y: np.ndarray | None = None) -> RidgeMap:
        """Choose a penalty per dimension by cross-validation, then refit on all objects.

        Args:
            X (np.ndarray): Features, shape ``(n_objects, n_features)``.
            y (np.ndarray): Embedding, shape ``(n_objects, n_dims)`` (or 1-D for one dimension).
            Y (np.ndarray | None): Deprecated name of ``y``, accepted as a
                keyword only.

        Returns:
            RidgeMap: self.

        Raises:
            ValueError: If the shapes disagree, ``X`` has no column, the data
                contain NaN or inf, a penalty is not positive, a held-out
                fold would have fewer than 2 objects (``cv > n_objects // 2``),
                or ``X`` and ``Y`` are DataFrames whose indexes differ (rows
                are paired by position, so they must be aligned first). Also
                if ``shuffle`` is not a bool, ``random_state`` is not an
                integer from 0 to 2**32 - 1 with ``shuffle``, or
                ``model_name`` or ``layer`` is neither a string nor None.
            TypeError: If both ``y`` and ``Y`` are given, or neither is.

        Warns:
            FutureWarning: If the target is passed as ``Y=``.
            UserWarning: If a dimension's chosen penalty is the smallest or the
                largest of a grid of at least 2 penalties, so the best penalty
                may lie outside it, or a dimension or every feature is constant
                over the objects. A single penalty is logged once instead.
        """
        Y = _resolve_target(y, Y, "fit")
        alphas = validate_alphas(DEFAULT_ALPHAS if self.alphas is None else self.alphas)
        target_ndim = np.ndim(Y)
        X, Y = self._check_data(X, Y)
        n_objects = X.shape[0]
        if isinstance(self.cv, bool) or not isinstance(self.cv, (int, np.integer)):
            raise ValueError(f"the number of folds cv={self.cv!r} is invalid: use an integer of at least 2")
        self._check_settings()
        # R² is undefined on a held-out fold of one object (scikit-learn's
        # r2_score returns NaN), and KFold's smallest fold has n // cv objects.
        if n_objects < 4:
            raise ValueError(
                f"{n_objects} objects are too few for cross-validation: map at least 4 objects, "
                "so that 2 folds hold out at least 2 objects each"
            )
        if not 2 <= self.cv <= n_objects // 2:
            raise ValueError(
                f"{int(self.cv)} cross-validation folds are invalid for {n_objects} objects: the number "
                f"of folds (cv, CLI: --folds) must be at least 2 and at most {n_objects // 2}, so that "
                "every held-out fold has at least 2 objects"
            )

        if not np.ptp(X, axis=0).any():
            warn(
                f"every one of the {X.shape[1]} feature columns has the same value for every object, "
                "so the map predicts each dimension's mean and its R^2 is at most 0; check the "
                "features (a layer of dead units, or images that failed to load as blank)",
                UserWarning,
            )
        constant = np.flatnonzero(np.ptp(Y, axis=0) == 0)
        if constant.size:
            warn(
                f"dimension(s) {constant.tolist()} have the same value for every object, so their "
                "cross-validated R^2 follows scikit-learn's convention (1 for an exact fit) and says "
                "nothing about the features",
                UserWarning,
            )

        # Cross-validated R² of every (penalty, dimension) pair, one SVD per fold.
        folds = KFold(
            n_splits=int(self.cv),
            shuffle=bool(self.shuffle),
            random_state=self.random_state if self.shuffle else None,
        )
        splits = list(folds.split(X))
        fold_scores = np.empty((self.cv, alphas.size, Y.shape[1]))
        for fold, (train, test) in enumerate(splits):
            fold_scores[fold] = _score_fold(X[train], Y[train], X[test], Y[test], alphas)
        self.fold_scores_ = fold_scores
        self.cv_scores_ = fold_scores.mean(axis=0)

        # The first maximum in grid order wins ties, as in GridSearchCV.
        best = np.argmax(self.cv_scores_, axis=0)
        self.alpha_ = alphas[best]
        # The folds that choose the penalty also score it, as GridSearchCV's
        # best_score_ does, so cv_r2_ is optimistic. nested_cv_r2_ is not.
        self.cv_r2_ = self.cv_scores_[best, np.arange(Y.shape[1])]
        self.nested_alpha_, self.nested_cv_r2_ = self._nested_scores(X, Y, alphas, splits, fold_scores)
        if alphas.size == 1:
            logger.info(
                "a single ridge penalty (%g) was given, so no penalty is chosen by cross-validation: "
                "every dimension uses it", float(alphas[0]),
            )
        else:
            self._warn_at_grid_edge(alphas, best)

        # Refit on all objects with each dimension's own penalty.
        self.coef_, self.intercept_ = _fit_raw_coefficients(X, Y, self.alpha_)
        self.n_features_in_ = X.shape[1]
        self.alphas_ = alphas
        self.target_ndim_ = int(target_ndim)
        logger.info(
            "ridge map: %d objects x %d features -> %d dimensions, %d penalties, %d folds; "
            "nested cross-validated R² median %.3f (min %.3f, max %.3f), "
            "R² at the chosen penalties (optimistic) median %.3f",
            n_objects, X.shape[1], Y.shape[1], alphas.size, self.cv,
            float(np.median(self.nested_cv_r2_)), float(self.nested_cv_r2_.min()),
            float(self.nested_cv_r2_.max()), float(np.median(self.cv_r2_)),
        )
        return self

    def _check_settings(self) -> None:
        """Raise ValueError for a ``shuffle``, ``random_state``, ``model_name`` or ``layer`` that fit cannot use."""
        if not isinstance(self.shuffle, (bool, np.bool_)):
            raise ValueError(f"shuffle={self.shuffle!r} is invalid: use True or False")
        # A shuffle from the global generator (None) or a generator object
        # cannot be recorded in the manifest or repeated.
        if self.shuffle and (isinstance(self.random_state, bool)
                             or not isinstance(self.random_state, (int, np.integer))):
            raise ValueError(
                f"random_state={self.random_state!r} is invalid with shuffle=True: pass an integer "
                "seed, so that the folds can be recorded and repeated"
            )
        # KFold seeds numpy's legacy RandomState, which accepts 0 to 2**32 - 1.
        if self.shuffle and not 0 <= self.random_state < 2**32:
            raise ValueError(
                f"random_state={self.random_state} is invalid with shuffle=True: use an integer from "
                "0 to 2**32 - 1"
            )
        # save() records both in the manifest as the names of the DNN and its layer.
        for name in ("model_name", "layer"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise ValueError(f"{name}={value!r} is invalid: pass a string or None")

    def _nested_scores(
        self,
        X: np.ndarray,
        Y: np.ndarray,
        alphas: np.ndarray,
        splits: list[tuple[np.ndarray, np.ndarray]],
        fold_scores: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Score each outer fold at the penalties that inner folds of its training part choose.

        The inner split is ``KFold`` with the same number of folds, shuffle
        and seed, applied to each outer training part. The held-out R² of the
        outer fold at every penalty is already in ``fold_scores``, so only the
        inner folds are fitted here. ``cross_validate(GridSearchCV(...))`` gives
        the same numbers (a test checks it), but its grid search alone was
        about 1,500 times slower on 1,854 x 4,096 features (docs/benchmarks.md).

        Returns:
            tuple[np.ndarray, np.ndarray]: The inner choice of penalty, shape
            ``(cv, n_dims)``, and the nested cross-validated R², shape
            ``(n_dims,)``: the mean over outer folds of the held-out R².
        """
        n_dims = Y.shape[1]
        inner = KFold(
            n_splits=int(self.cv),
            shuffle=bool(self.shuffle),
            random_state=self.random_state if self.shuffle else None,
        )
        smallest_train = min(train.size for train, _ in splits)
        if self.cv > smallest_train // 2:
            logger.warning(
                "the nested cross-validated R² is NaN: an outer training part of %d objects is too "
                "small for %d inner folds of at least 2 objects; map more objects or use fewer folds",
                smallest_train, self.cv,
            )
            return np.full((self.cv, n_dims), np.nan), np.full(n_dims, np.nan)

        nested_alpha = np.empty((self.cv, n_dims))
        outer_scores = np.empty((self.cv, n_dims))
        for fold, (train, _) in enumerate(splits):
            X_train, Y_train = X[train], Y[train]
            inner_scores = np.zeros((alphas.size, n_dims))
            for inner_train, inner_test in inner.split(X_train):
                inner_scores += _score_fold(
                    X_train[inner_train], Y_train[inner_train],
                    X_train[inner_test], Y_train[inner_test], alphas,
                )
            # The first maximum in grid order wins ties, as in GridSearchCV.
            inner_best = np.argmax(inner_scores / self.cv, axis=0)
            nested_alpha[fold] = alphas[inner_best]
            outer_scores[fold] = fold_scores[fold, inner_best, np.arange(n_dims)]
        return nested_alpha, outer_scores.mean(axis=0)

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Predict the embedding of new objects.

        The predictions are the raw output of the linear map and can be below
        0, although VICE and SPoSE embeddings are non-negative. :meth:`score`
        uses them as they are. The functions that take dot products of an
        embedding, such as ``odd_one_out_accuracy`` and ``similarity_matrix``,
        reject weights below -0.01, so apply ReLU first, as VICE and SPoSE do:
        ``numpy.maximum(ridge.predict(X), 0)``.

        Args:
            X (np.ndarray): Features, shape ``(n_objects, n_features)``, raw (unscaled).

        Returns:
            np.ndarray: Predictions, shape ``(n_objects, n_dims)``, or
            ``(n_objects,)`` when the map was fitted to a 1-D target (as
            scikit-learn regressors do).

        Raises:
            NotFittedError: If :meth:`fit` has not run.
            ValueError: If ``X`` has another number of features, or NaN or inf.
        """
        self._check_fitted()
        X = _as_real_array(X, "X")
        if X.ndim != 2 or X.shape[1] != self.coef_.shape[0]:
            raise ValueError(
                f"X must have shape (n_objects, {self.coef_.shape[0]}), got {X.shape}"
            )
        bad_rows = np.flatnonzero(~np.isfinite(X).all(axis=1))
        if bad_rows.size:
            raise ValueError(
                f"X rows {bad_rows[:20].tolist()} contain NaN or inf ({bad_rows.size} rows), so their "
                "predictions would be NaN: remove those objects or replace the values"
            )
        predictions = X @ self.coef_ + self.intercept_
        return predictions[:, 0] if self.target_ndim_ == 1 else predictions

    def score(
        self,
        X: np.ndarray,
        y: np.ndarray | None = None,
        sample_weight: np.ndarray | None = None,
        *,
        Y: np.ndarray | None = None,
    ) -> float:
        """Return the mean over dimensions of the R² of the predictions for ``X``.

        This is ``sklearn.metrics.r2_score(y, self.predict(X))`` with uniform
        weights over the dimensions, the score that scikit-learn regressors
        report, so ``cross_val_score`` and ``GridSearchCV`` use it by default.
        The baseline of each dimension's R² is the mean of ``y`` itself, not
        of the training data.

        Args:
            X (np.ndarray): Features, shape ``(n_objects, n_features)``.
            y (np.ndarray): True embedding, shape ``(n_objects, n_dims)``, or
                ``(n_objects,)`` for a map fitted to a 1-D target.
            sample_weight (np.ndarray | None): Weight of each object, shape
                ``(n_objects,)``, as in scikit-learn's ``score``.
            Y (np.ndarray | None): Deprecated name of ``y``, accepted as a
                keyword only.

        Returns:
            float: Mean R², at most 1 (1 for an exact prediction).

        Raises:
            TypeError: If both ``y`` and ``Y`` are given, or neither is.

        Warns:
            FutureWarning: If the target is passed as ``Y=``.
        """
        from sklearn.metrics import r2_score

        y = _resolve_target(y, Y, "score")
        check_same_index(X, y, "X", "y")
        return float(r2_score(y, self.predict(X), sample_weight=sample_weight))

    # -- saving --------------------------------------------------------------

    def save(
        self,
        out_dir: str | os.PathLike,
        *,
        inputs: Mapping[str, str | os.PathLike] | None = None,
        started: str | None = None,
        features_source: Mapping[str, Any] | None = None,
    ) -> Path:
        """Write ``ridge_map.npz`` and ``manifest.json`` into ``out_dir``.

        It returns the folder, as ``VICE.save`` and ``SPoSE.save`` do. The
        folder is what :meth:`load` and
        :meth:`dimalign.interpret.predictor.DimensionPredictor.from_map_dir`
        take. :meth:`load` also accepts the path of ``ridge_map.npz`` itself.

        Args:
            out_dir (str | os.PathLike): Output directory (created if missing).
            inputs (Mapping[str, path] | None): Input files to record with their
                SHA-256 checksums, such as ``{"features": ..., "embedding": ...}``.
            started (str | None): ISO start time for the manifest.
            features_source (Mapping[str, Any] | None): The model, weights,
                seed, layer and pooling that produced the features, recorded so
                that the map alone rebuilds its image-to-dimension predictor.

        Returns:
            Path: ``out_dir``.

        Raises:
            NotFittedError: Before :meth:`fit`.
            FileExistsError: If ``out_dir`` contains the output of another
                dimalign step, or it or a parent folder is a file.
        """
        self._check_fitted()
        # The settings are built before anything is written, so that an
        # invalid one leaves no ridge_map.npz without a manifest.
        settings = {**self._recorded_params(),
                    **({"features_source": dict(features_source)} if features_source else {})}
        out_dir = Path(out_dir)
        check_output_dir(out_dir, "map")
        # Both files are written into a hidden folder and moved into out_dir together, so a
        # failure while hashing an input leaves no new map beside an earlier manifest.
        with staged_outputs(out_dir) as stage:
            self._write_files(stage, inputs=inputs, settings=settings, started=started)
        return out_dir

    def _write_files(
        self, folder: Path, *, inputs: Mapping[str, str | os.PathLike] | None, settings: dict[str, Any],
        started: str | None,
    ) -> None:
        """Write ``ridge_map.npz`` and ``manifest.json`` into ``folder``."""
        with atomic_path(folder / RIDGE_MAP_NAME) as temporary:
            np.savez(
                temporary,
                coef=self.coef_,
                intercept=self.intercept_,
                alpha=self.alpha_,
                cv_r2=self.cv_r2_,
                nested_cv_r2=self.nested_cv_r2_,
                nested_alpha=self.nested_alpha_,
                cv_scores=self.cv_scores_,
                fold_scores=self.fold_scores_,
                alphas=self.alphas_,
                target_ndim=np.int64(self.target_ndim_),
            )
        write_manifest(
            folder,
            step="map",
            inputs=inputs,
            settings=settings,
            started=started,
            outputs={
                "n_features": int(self.coef_.shape[0]),
                "n_dims": int(self.coef_.shape[1]),
                "cv_r2_median": float(np.median(self.cv_r2_)),
                "cv_r2_min": float(self.cv_r2_.min()),
                "cv_r2_max": float(self.cv_r2_.max()),
                **_nested_summary(self.nested_cv_r2_),
                "files": [RIDGE_MAP_NAME],
            },
        )

    @classmethod
    def load(cls, path: str | os.PathLike) -> RidgeMap:
        """Load a fitted map written by :meth:`save`.

        Args:
            path (str | os.PathLike): The output directory or its ``ridge_map.npz``.

        Raises:
            FileNotFoundError: If there is no ``ridge_map.npz``.
            ValueError: If it or the manifest is damaged.
        """
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"map {path} not found: pass the output folder of 'dimalign map'")
        directory = path if path.is_dir() else path.parent
        archive_path = directory / RIDGE_MAP_NAME
        if not archive_path.is_file():
            raise FileNotFoundError(f"{archive_path} not found: is {directory} a 'dimalign map' output?")
        try:
            settings: dict[str, Any] = read_manifest(directory).get("settings", {})
        except FileNotFoundError:
            settings = {}
        try:
            ridge = cls._from_archive(archive_path, settings)
        except (ValueError, OSError, KeyError, EOFError, zipfile.BadZipFile) as error:
            raise ValueError(
                f"{archive_path} cannot be read as a ridge map: it is damaged or not written by "
                "'dimalign map'; rerun the map"
            ) from error
        coef = np.asarray(ridge.coef_).reshape(ridge.n_features_in_, -1)
        intercept = np.asarray(ridge.intercept_).reshape(-1)
        bad = np.flatnonzero(~np.isfinite(coef).all(axis=0) | ~np.isfinite(intercept))
        if bad.size:
            raise ValueError(
                f"{archive_path}: the coefficients or intercepts of dimensions {bad[:20].tolist()} "
                "contain NaN or inf, so every prediction of them would be NaN; rerun the map"
            )
        return ridge

    @classmethod
    def _from_archive(cls, archive_path: Path, settings: dict[str, Any]) -> RidgeMap:
        # The file is opened here because np.load leaves its own handle open
        # when the archive turns out damaged (numpy 2.4, a ResourceWarning).
        with open(archive_path, "rb") as handle, np.load(handle, allow_pickle=False) as archive:
            ridge = cls(
                alphas=archive["alphas"],
                cv=int(settings.get("cv", archive["fold_scores"].shape[0])),
                shuffle=bool(settings.get("shuffle", False)),
                random_state=settings.get("random_state", 0),
                model_name=settings.get("model_name"),
                layer=settings.get("layer"),
            )
            ridge.coef_ = archive["coef"]
            ridge.intercept_ = archive["intercept"]
            ridge.alpha_ = archive["alpha"]
            ridge.cv_r2_ = archive["cv_r2"]
            ridge.cv_scores_ = archive["cv_scores"]
            # Maps saved before nested cross-validation existed have no nested score.
            n_dims = archive["cv_r2"].shape[0]
            ridge.nested_cv_r2_ = (archive["nested_cv_r2"] if "nested_cv_r2" in archive.files
                                   else np.full(n_dims, np.nan))
            ridge.nested_alpha_ = (archive["nested_alpha"] if "nested_alpha" in archive.files
                                   else np.full((archive["fold_scores"].shape[0], n_dims), np.nan))
            ridge.fold_scores_ = archive["fold_scores"]
            ridge.alphas_ = archive["alphas"]
            ridge.target_ndim_ = int(archive["target_ndim"]) if "target_ndim" in archive.files else 2
        ridge.n_features_in_ = int(ridge.coef_.shape[0])
        return ridge

    def _recorded_params(self) -> dict[str, Any]:
        """Return the settings as JSON values for the manifest, with the grid as a list."""
        alphas = DEFAULT_ALPHAS if self.alphas is None else self.alphas
        return {
            "alphas": [float(value) for value in np.asarray(alphas, dtype=np.float64)],
            "cv": int(self.cv),
            "shuffle": bool(self.shuffle),
            # fit accepts only integer seeds with shuffle; without it the seed is unused.
            "random_state": (int(self.random_state) if isinstance(self.random_state, (int, np.integer))
                             else None),
            "model_name": self.model_name,
            "layer": self.layer,
        }

    # -- helpers -------------------------------------------------------------

    def _check_data(self, X: np.ndarray, Y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        check_same_index(X, Y, "X", "Y")
        X = _as_real_array(X, "X")
        Y = _as_real_array(Y, "Y")
        if Y.ndim == 1:
            Y = Y[:, None]
        if X.ndim != 2 or Y.ndim != 2:
            raise ValueError(f"X and Y must be 2-D, got shapes {X.shape} and {Y.shape}")
        if Y.shape[1] == 0:
            raise ValueError(
                f"Y has no column (shape {Y.shape}), so there is no dimension to map: pass an "
                "embedding with at least one dimension"
            )
        if X.shape[1] == 0:
            raise ValueError(
                f"X has no column (shape {X.shape}), so there is no feature to map from: pass "
                "features with at least one column"
            )
        if X.shape[0] != Y.shape[0]:
            raise ValueError(
                f"X has {X.shape[0]} rows but Y has {Y.shape[0]}: both need one row per object"
            )
        for name, array in (("X", X), ("Y", Y)):
            bad_rows = np.flatnonzero(~np.isfinite(array).all(axis=1))
            if bad_rows.size:
                raise ValueError(
                    f"{name} rows {bad_rows[:20].tolist()} contain NaN or inf ({bad_rows.size} rows): "
                    "remove those objects or replace the values before fitting"
                )
        problem = feature_overflow_problem(X)
        if problem is not None:
            raise ValueError(f"X: {problem}")
        return X, Y

    def _warn_at_grid_edge(self, alphas: np.ndarray, best: np.ndarray) -> None:
        low, high = np.argmin(alphas), np.argmax(alphas)
        edges = (
            (low, "smallest", "below", "lower", "map.alpha_min"),
            (high, "largest", "above", "raise", "map.alpha_max"),
        )
        for edge, label, side, verb, study_key in edges:
            dims = np.flatnonzero(best == edge)
            if dims.size:
                warn(
                    f"the chosen ridge penalty of {dims.size} dimension(s) "
                    f"({dims[:20].tolist()}) is the {label} value of the grid "
                    f"({alphas[edge]:g}), so the best penalty may lie {side} the grid: {verb} its "
                    f"{label} value (RidgeMap alphas=; CLI: dimalign map --alphas or --alpha-range "
                    f"LOW HIGH N; study file: {study_key})",
                    UserWarning,
                )

    def _check_fitted(self) -> None:
        if not hasattr(self, "coef_"):
            raise NotFittedError("this RidgeMap is not fitted yet: call fit(X, y) first")


def _as_real_array(values: Any, name: str) -> np.ndarray:
    """Return ``values`` as a dense float64 array, rejecting sparse and complex input.

    ``np.asarray(..., dtype=np.float64)`` would drop imaginary parts with only
    a ComplexWarning, and turns a SciPy sparse matrix into a 0-D object array.
    """
    import scipy.sparse

    if scipy.sparse.issparse(values):
        raise ValueError(f"{name} is a sparse matrix: pass a dense array ({name}.toarray())")
    array = np.asarray(values)
    if np.iscomplexobj(array):
        raise ValueError(f"{name} has complex values: pass real numbers")
    # C order, because BLAS rounds differently on Fortran-ordered data such as a DataFrame's.
    return np.ascontiguousarray(array, dtype=np.float64)


# -- the linear algebra -------------------------------------------------------


def feature_overflow_problem(X: np.ndarray) -> str | None:
    """Describe the feature columns whose standardisation overflows float64, or return None.

    Such columns (deviations above about 1.3e154 / sqrt(n_objects)) would make the scale infinite
    and the eigendecomposition fail with a message about ill-conditioning.

    Args:
        X (np.ndarray): Finite float64 features, shape ``(n_objects, n_features)``.
    """
    with np.errstate(over="ignore", invalid="ignore"):
        squares = ((X - X.mean(axis=0)) ** 2).sum(axis=0)
    columns = np.flatnonzero(~np.isfinite(squares))
    if not columns.size:
        return None
    return (
        f"the squared deviations of feature columns {columns[:20].tolist()} overflow float64 (largest "
        f"absolute value {float(np.abs(X).max()):.3g}); divide the features by a constant. Each feature is "
        "standardised, so the cross-validated R² stays the same"
    )


def standardise(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return the mean and the scale that ``StandardScaler`` would learn from ``X``.

    The scale is the population standard deviation. Columns whose variance is
    within the rounding error of the two-pass variance
    (``var <= n eps var + (n |mean| eps)^2``) count as constant and get scale 1,
    so they are centred but not blown up.
    """
    mean = X.mean(axis=0)
    variance = ((X - mean) ** 2).mean(axis=0)
    n_objects = X.shape[0]
    eps = np.finfo(np.float64).eps
    constant = variance <= n_objects * eps * variance + (n_objects * mean * eps) ** 2
    scale = np.sqrt(variance)
    scale[constant] = 1.0
    return mean, scale


class _SpectralRidge:
    """One eigendecomposition of a standardised training set, reused for every penalty.

    With the SVD ``Z = U S V^T`` of the standardised features, the ridge
    prediction for new rows ``Z_new`` is
    ``Z_new V diag(s / (s^2 + alpha)) U^T y = Z_new Z^T U diag(1 / (s^2 + alpha)) U^T y``.
    ``U`` and ``s^2`` are the eigenvectors and eigenvalues of the Gram matrix
    ``Z Z^T`` (``n_objects x n_objects``), and when there are fewer features
    than objects the same is true of ``V`` and ``Z^T Z``. The smaller Gram
    matrix is decomposed: for 1,236 x 4,096 features this takes about 3 s
    with ``torch.linalg.eigh``, against about 20 s for LAPACK's ``gesdd`` SVD
    of ``Z`` through SciPy (2-core x86_64 CPU). Eigenvalues below zero from
    rounding are set to zero.

    Attributes:
        mean, scale (np.ndarray): The standardisation, shape ``(n_features,)``.
        y_mean (np.ndarray): Target means, shape ``(n_dims,)``.
        eigenvalues (torch.Tensor): ``s^2``, shape ``(rank,)``.
        projected_targets (torch.Tensor): ``U^T y_c`` (or ``V^T Z^T y_c``), shape ``(rank, n_dims)``.
    """

    def __init__(self, X: np.ndarray, Y: np.ndarray) -> None:
        self.mean, self.scale = standardise(X)
        self.y_mean = Y.mean(axis=0)
        Z = torch.from_numpy((X - self.mean) / self.scale)
        centred = torch.from_numpy(Y - self.y_mean)
        self.dual = Z.shape[0] <= Z.shape[1]
        if self.dual:
            eigenvalues, vectors = torch.linalg.eigh(Z @ Z.T)
            self.projected_targets = vectors.T @ centred
        else:
            eigenvalues, vectors = torch.linalg.eigh(Z.T @ Z)
            self.projected_targets = vectors.T @ (Z.T @ centred)
        self.eigenvalues = eigenvalues.clamp_min(0.0)
        # Eigenvalues within rounding of zero belong to directions that the
        # features do not span (centring alone removes one). Their targets
        # U^T y are rounding noise too, and a tiny alpha would multiply that
        # noise by up to 1 / alpha, so they are left out, as a pseudo-inverse
        # does. The tolerance has the form of numpy.linalg.matrix_rank's,
        # max * max(n, p) * eps, but applied to s^2 itself: eigh of the Gram
        # matrix leaves its eigenvalues with absolute errors of about that size.
        tolerance = float(self.eigenvalues.max()) * max(Z.shape) * np.finfo(np.float64).eps
        self.kept = self.eigenvalues > tolerance
        self.vectors = vectors
        self.Z = Z

    def project(self, X_new: np.ndarray) -> torch.Tensor:
        """Map raw features to the eigenbasis, shape ``(n_new, rank)``."""
        Z_new = torch.from_numpy((X_new - self.mean) / self.scale)
        if self.dual:
            return (Z_new @ self.Z.T) @ self.vectors
        return Z_new @ self.vectors

    def filters(self, alphas: np.ndarray) -> torch.Tensor:
        """``1 / (s^2 + alpha)`` for every penalty, 0 for left-out directions, shape ``(n_alphas, rank)``."""
        filters = 1.0 / (self.eigenvalues[None, :] + torch.from_numpy(np.asarray(alphas))[:, None])
        return torch.where(self.kept[None, :], filters, torch.zeros((), dtype=filters.dtype))

    def standardised_coefficients(self, alpha_per_dim: np.ndarray) -> np.ndarray:
        """Coefficients on the standardised features, shape ``(n_features, n_dims)``."""
        filters = self.filters(alpha_per_dim).T
        weights = filters * self.projected_targets
        if self.dual:
            return (self.Z.T @ (self.vectors @ weights)).numpy()
        return (self.vectors @ weights).numpy()


def _score_fold(
    X_train: np.ndarray,
    Y_train: np.ndarray,
    X_test: np.ndarray,
    Y_test: np.ndarray,
    alphas: np.ndarray,
    max_elements: int = 1 << 24,
) -> np.ndarray:
    """Held-out R² of every penalty and dimension for one fold, shape ``(n_alphas, n_dims)``."""
    spectral = _SpectralRidge(X_train, Y_train)
    projected_test = spectral.project(X_test)  # (n_test, rank)
    filters = spectral.filters(alphas)  # (n_alphas, rank)
    residual_target = torch.from_numpy(Y_test - spectral.y_mean)
    total = ((Y_test - Y_test.mean(axis=0)) ** 2).sum(axis=0)

    # One matrix product per chunk of penalties: columns are (penalty, dimension) pairs.
    n_test, rank = projected_test.shape
    n_dims = Y_train.shape[1]
    chunk = max(1, max_elements // max(n_test * n_dims, rank * n_dims, 1))
    scores = np.empty((alphas.size, n_dims))
    for start in range(0, alphas.size, chunk):
        block = filters[start : start + chunk]
        weights = (block[:, :, None] * spectral.projected_targets[None]).permute(1, 0, 2)
        predictions = projected_test @ weights.reshape(rank, -1)
        predictions = predictions.reshape(n_test, block.shape[0], n_dims)
        residual = ((residual_target[:, None, :] - predictions) ** 2).sum(dim=0).numpy()
        scores[start : start + block.shape[0]] = _r2_from_sums(residual, total)
    return scores


def _r2_from_sums(residual: np.ndarray, total: np.ndarray) -> np.ndarray:
    """R² = 1 - SS_res / SS_tot, with scikit-learn's values for a constant target.

    A constant held-out target has SS_tot = 0: its R² is 1 for a perfect
    prediction and 0 otherwise (``r2_score(force_finite=True)``).
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        r2 = 1.0 - residual / total
    constant = np.broadcast_to(total == 0, r2.shape)
    return np.where(constant, np.where(residual == 0, 1.0, 0.0), r2)


def _fit_raw_coefficients(
    X: np.ndarray, Y: np.ndarray, alpha_per_dim: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Fit on all objects and fold the scaler into raw-space coefficients and intercepts."""
    spectral = _SpectralRidge(X, Y)
    coef_standardised = spectral.standardised_coefficients(alpha_per_dim)

    # y = ((x - mean) / scale) @ w + y_mean = x @ (w / scale) + (y_mean - mean @ (w / scale)).
    coef = coef_standardised / spectral.scale[:, None]
    intercept = spectral.y_mean - spectral.mean @ coef
    return coef, intercept


def _nested_summary(nested_cv_r2: np.ndarray) -> dict[str, float | None]:
    """Median, min and max of the nested R² for the manifest, None where it is NaN (not valid JSON)."""
    if nested_cv_r2.size == 0 or np.isnan(nested_cv_r2).any():
        return {"nested_cv_r2_median": None, "nested_cv_r2_min": None, "nested_cv_r2_max": None}
    return {
        "nested_cv_r2_median": float(np.median(nested_cv_r2)),
        "nested_cv_r2_min": float(nested_cv_r2.min()),
        "nested_cv_r2_max": float(nested_cv_r2.max()),
    }


def write_ridge_table(ridge: RidgeMap, path: str | os.PathLike) -> Path:
    """Write one row per dimension (dimension, alpha, cv_r2, nested_cv_r2) as CSV, atomically.

    ``cv_r2`` is the R² at the chosen penalty on the folds that chose it
    (optimistic), and ``nested_cv_r2`` the nested score (``nan``
    when the map has none).
    """
    ridge._check_fitted()
    lines = ["dimension,alpha,cv_r2,nested_cv_r2"]
    for dim, (alpha, r2, nested) in enumerate(zip(ridge.alpha_, ridge.cv_r2_, ridge.nested_cv_r2_)):
        lines.append(f"{dim},{alpha:.10g},{r2:.10g},{nested:.10g}")
    with atomic_path(path) as temporary:
        temporary.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return Path(path)


__all__ = [
    "DEFAULT_ALPHAS",
    "RIDGE_MAP_NAME",
    "RidgeMap",
    "standardise",
    "validate_alphas",
    "write_ridge_table",
]
