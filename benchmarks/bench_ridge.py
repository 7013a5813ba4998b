"""Time RidgeMap against scikit-learn's GridSearchCV over ridge per dimension.

Data (real THINGS resources, 1,854 objects):

- features: the non-negative VGG-16-like factors ``vgg16_srf_factors_rank200.npy``
  (1,854 x 200) projected up to 4,096 columns with a fixed Gaussian matrix
  (seed 0) plus Gaussian noise (standard deviation 0.1 of the projected
  features' overall standard deviation). They stand in for a 4,096-d VGG-16
  layer, which cannot be downloaded here.
- targets: the 66 dimensions of the published SPoSE embedding plus the first
  4 dimensions of the published VICE 42-d embedding (70 dimensions).

Both sides use the same 200 penalties (``logspace(-2, 6, 200)``) and the same
three unshuffled folds. scikit-learn fits ``Pipeline(StandardScaler, Ridge)``
once per (penalty, fold) for each dimension, which takes minutes per
dimension, so it runs on the first ``--sklearn-dims`` dimensions and its time is
extrapolated linearly to all 70 (each dimension is an independent search).

Usage:
    python benchmarks/bench_ridge.py [--data ../shared/data] [--sklearn-dims 2]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from sklearn.linear_model import Ridge
from sklearn.model_selection import GridSearchCV, KFold
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from dimalign.analysis.ridge import RidgeMap

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def build_data(data_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """Return the 1,854 x 4,096 features and the 1,854 x 70 targets."""
    factors = np.load(data_dir / "things" / "vgg16_srf_factors_rank200.npy")
    rng = np.random.default_rng(0)
    projection = rng.normal(size=(factors.shape[1], 4096)) / np.sqrt(factors.shape[1])
    projected = factors @ projection
    features = projected + 0.1 * projected.std() * rng.normal(size=projected.shape)

    spose = np.loadtxt(data_dir / "things" / "spose_embedding_66d_sorted.txt")
    vice = np.load(data_dir / "things" / "vice_embedding_42d.npy").astype(np.float64)
    targets = np.column_stack([spose, vice[:, :4]])
    return features, targets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data", type=Path, default=SHARED_DATA,
        help="folder with things/ (default: ../shared/data beside the repository)",
    )
    parser.add_argument("--sklearn-dims", type=int, default=2, help="dimensions timed with scikit-learn")
    parser.add_argument("--n-alphas", type=int, default=200, help="number of penalties")
    args = parser.parse_args()

    features, targets = build_data(args.data)
    alphas = np.logspace(-2, 6, args.n_alphas)
    print(f"features {features.shape}, targets {targets.shape}, {alphas.size} penalties, 3 folds")

    start = time.perf_counter()
    ridge = RidgeMap(alphas=alphas, cv=3).fit(features, targets)
    ours = time.perf_counter() - start
    print(f"RidgeMap, all {targets.shape[1]} dimensions: {ours:.1f} s")

    max_difference = 0.0
    same_alpha = 0
    start = time.perf_counter()
    for dim in range(args.sklearn_dims):
        search = GridSearchCV(
            Pipeline([("scale", StandardScaler()), ("ridge", Ridge())]),
            {"ridge__alpha": alphas},
            cv=KFold(3),
            scoring="r2",
        ).fit(features, targets[:, dim])
        same_alpha += int(search.best_params_["ridge__alpha"] == ridge.alpha_[dim])
        max_difference = max(max_difference, abs(search.best_score_ - ridge.cv_r2_[dim]))
        difference_all = np.abs(search.cv_results_["mean_test_score"] - ridge.cv_scores_[:, dim]).max()
        max_difference = max(max_difference, float(difference_all))
    measured = time.perf_counter() - start
    extrapolated = measured / args.sklearn_dims * targets.shape[1]
    print(
        f"scikit-learn GridSearchCV, {args.sklearn_dims} dimensions: {measured:.1f} s "
        f"-> {extrapolated:.0f} s for {targets.shape[1]} (linear extrapolation)"
    )
    print(f"same penalty chosen: {same_alpha}/{args.sklearn_dims} dimensions")
    print(f"max |R² difference| over all penalties of the timed dimensions: {max_difference:.2e}")
    print(f"speed-up: {extrapolated / ours:.0f}x")
    print(f"RidgeMap cross-validated R²: median {np.median(ridge.cv_r2_):.3f}, "
          f"min {ridge.cv_r2_.min():.3f}, max {ridge.cv_r2_.max():.3f}")


if __name__ == "__main__":
    main()
