"""Time the model-predicted similarity matrix of 1,854 objects against a row-by-row reference.

Product: ``dimalign.analysis.similarity.similarity_matrix``, which sums each
unordered triple {i, j, k} once (n³/6 triples) in cubic blocks with torch.

Reference: a straightforward numpy implementation that, for each object i,
computes the max-shifted softmax probability for every (j, k) pair (an n x n
array) and averages over k. It evaluates all n³ ordered triples with three
exponentials each. Running it for all 1,854 rows takes minutes, so it runs on
the first ``--reference-rows`` rows and its time is extrapolated linearly to
all rows (every row does the same work). The reference rows also check that
both implementations agree.

Embedding: the published 49-d SPoSE embedding of the THINGS concepts, or a
random non-negative embedding with ``--random-dims``.

Usage:
    python benchmarks/bench_similarity.py [--data ../shared/data] [--reference-rows 16]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import torch

from dimalign.analysis.similarity import similarity_matrix

TARGET_SECONDS = 5.0

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def reference_rows(embedding: np.ndarray, rows: range) -> np.ndarray:
    """Compute rows of S with a plain numpy loop over i (max shift per triple)."""
    logits = embedding @ embedding.T
    n_objects = logits.shape[0]
    result = np.empty((len(rows), n_objects))
    for position, i in enumerate(rows):
        s_ij = logits[i][:, None]  # varies with j
        s_ik = logits[i][None, :]  # varies with k
        peak = np.maximum(np.maximum(s_ij, s_ik), logits)
        numerator = np.exp(s_ij - peak)
        probability = numerator / (numerator + np.exp(s_ik - peak) + np.exp(logits - peak))
        probability[:, i] = 0.0
        np.fill_diagonal(probability, 0.0)
        result[position] = probability.sum(axis=1) / (n_objects - 2)
        result[position, i] = 1.0
    return result


def timed(function, *args, **kwargs):
    start = time.perf_counter()
    value = function(*args, **kwargs)
    return value, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data", type=Path, default=SHARED_DATA,
        help="folder with things/ (default: ../shared/data beside the repository)",
    )
    parser.add_argument("--reference-rows", type=int, default=16, help="rows timed with the reference")
    parser.add_argument("--random-dims", type=int, help="use a random 1,854 x D embedding instead")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of the product")
    args = parser.parse_args()

    if args.random_dims:
        rng = np.random.default_rng(0)
        embedding = rng.gamma(0.5, 0.3, size=(1854, args.random_dims))
        source = f"random gamma embedding 1854 x {args.random_dims} (seed 0)"
    else:
        embedding = np.loadtxt(args.data / "things" / "spose_embedding_49d_sorted.txt")
        source = "SPoSE 49-d (1854 x 49)"
    n_objects = embedding.shape[0]

    print(f"embedding: {source}")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average {os.getloadavg()}")

    rows = range(args.reference_rows)
    expected, reference_seconds = timed(reference_rows, embedding, rows)
    reference_total = reference_seconds * n_objects / len(rows)
    print(
        f"reference (numpy, row by row): {reference_seconds:.2f} s for {len(rows)} rows, "
        f"extrapolated {reference_total:.1f} s for {n_objects} rows"
    )

    for dtype in ("float64", "float32"):
        times = []
        for _ in range(args.repeats):
            result, seconds = timed(similarity_matrix, embedding, dtype=dtype)
            times.append(seconds)
        best = min(times)
        difference = float(np.abs(result[: len(rows)].astype(np.float64) - expected).max())
        print(
            f"similarity_matrix {dtype}: best {best:.2f} s of {args.repeats} "
            f"({', '.join(f'{t:.2f}' for t in times)}); "
            f"reference / product = {reference_total / best:.1f}x; "
            f"target {TARGET_SECONDS:.0f} s / product = {TARGET_SECONDS / best:.2f}x; "
            f"max |difference| on the reference rows = {difference:.1e}"
        )


if __name__ == "__main__":
    main()
