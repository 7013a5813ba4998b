"""Time the nested cross-validation of RidgeMap against a fit without it.

Data: the 1,854 x 4,096 VGG-16-like features of ``bench_ridge.py`` and the 49
dimensions of the published SPoSE embedding, with the default penalty grid
(50 values) and 3 unshuffled folds. The fit without nested cross-validation
replaces ``RidgeMap._nested_scores`` by a stub that returns NaN, which is the
work the map did before the nested score existed. The two fits alternate, so
that load from other jobs affects both alike.

Usage:
    python benchmarks/bench_ridge_nested.py [--data ../shared/data] [--repeats 3]
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import numpy as np
from bench_ridge import SHARED_DATA, build_data

from dimalign.analysis.ridge import RidgeMap


def _without_nested(self, X, Y, alphas, splits, fold_scores):
    return np.full((self.cv, Y.shape[1]), np.nan), np.full(Y.shape[1], np.nan)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data", type=Path, default=SHARED_DATA,
        help="folder with things/ (default: ../shared/data beside the repository)",
    )
    parser.add_argument("--repeats", type=int, default=3, help="fits of each kind")
    args = parser.parse_args()

    features, _ = build_data(args.data)
    targets = np.loadtxt(args.data / "things" / "spose_embedding_49d_sorted.txt")
    print(f"features {features.shape}, targets {targets.shape}, 50 penalties, 3 folds")

    nested_method = RidgeMap._nested_scores
    times: dict[str, list[float]] = {"without nested": [], "with nested": []}
    warnings.simplefilter("ignore")  # grid-edge warnings of some dimensions
    for _ in range(args.repeats):
        for name, method in (("without nested", _without_nested), ("with nested", nested_method)):
            RidgeMap._nested_scores = method
            start = time.perf_counter()
            ridge = RidgeMap(cv=3).fit(features, targets)
            times[name].append(time.perf_counter() - start)
    RidgeMap._nested_scores = nested_method

    for name, values in times.items():
        print(f"{name}: median {np.median(values):.1f} s over {len(values)} fits {np.round(values, 1).tolist()}")
    print(f"ratio of medians: {np.median(times['with nested']) / np.median(times['without nested']):.2f}")
    gap = ridge.cv_r2_ - ridge.nested_cv_r2_
    print(
        f"cv_r2 median {np.median(ridge.cv_r2_):.4f}; nested_cv_r2 median {np.median(ridge.nested_cv_r2_):.4f} "
        f"(min {ridge.nested_cv_r2_.min():.4f}, max {ridge.nested_cv_r2_.max():.4f}); "
        f"gap mean {gap.mean():.4f}, max {gap.max():.4f}"
    )


if __name__ == "__main__":
    main()
