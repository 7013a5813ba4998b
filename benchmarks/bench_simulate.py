"""Time unique-triplet sampling plus argmax choice simulation at THINGS scale.

Setting (the targets): 20,000,000 unique triplets over 24,102 objects, odd
one out by the argmax of dot-product similarity of 4,096-d features, in at
most 180 s and 6 GB peak resident memory. The features are random
non-negative float32 values written to a temporary memory-mapped ``.npy``
file (24,102 x 4,096, 395 MB) before the clock starts.

The measured run is a fresh Python process, so its peak RSS
(``resource.getrusage``, which counts memory-mapped pages that were read)
covers only the work: import, sampling, simulation and writing
``triplets.npy``.

References, measured in the same run on subsets and extrapolated linearly to
20,000,000 triplets (printed as extrapolations):

- plain loop: sampling by a Python set of sorted tuples, and for each triplet
  three ``np.dot`` calls on the rows read from the memory-mapped features;
- gather: dimalign's own ``method="gather"`` (rows gathered per batch, no Gram
  matrix), to show what the Gram matrix buys.

The plain loop also checks the product: on its subset it recomputes the odd
one out of the product's first triplets and prints the agreement.

Usage:
    python benchmarks/bench_simulate.py            # full size, a few minutes
    python benchmarks/bench_simulate.py --quick    # 2,000 objects, 1e6 triplets, 512-d
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

TARGET_SECONDS = 180.0
TARGET_RSS_GB = 6.0


def write_features(path: Path, n_objects: int, n_features: int, seed: int = 0) -> None:
    """Write random non-negative float32 features to a memory-mappable .npy file."""
    rng = np.random.default_rng(seed)
    features = np.lib.format.open_memmap(
        path, mode="w+", dtype=np.float32, shape=(n_objects, n_features)
    )
    for start in range(0, n_objects, 1024):
        stop = min(start + 1024, n_objects)
        features[start:stop] = rng.random((stop - start, n_features), dtype=np.float32)
    features.flush()
    del features


def run_product(features_path: Path, out_path: Path, n_triplets: int) -> dict:
    """Sample, simulate and save in this process, and return the times and peak RSS."""
    from dimalign.io.triplets import save_triplets
    from dimalign.triplets import sample_triplets, simulate_choices

    started = time.perf_counter()
    features = np.load(features_path, mmap_mode="r")
    triplets = sample_triplets(features.shape[0], n_triplets, random_state=0)
    sampled = time.perf_counter()
    result = simulate_choices(features, triplets, similarity="dot", rule="argmax", random_state=0)
    simulated = time.perf_counter()
    save_triplets(result.triplets, out_path)
    finished = time.perf_counter()

    # ru_maxrss is in kilobytes on Linux.
    peak_rss_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9
    return {
        "sample_s": sampled - started,
        "simulate_s": simulated - sampled,
        "save_s": finished - simulated,
        "total_s": finished - started,
        "peak_rss_gb": peak_rss_gb,
        "n_ties": result.n_ties,
        "method": result.method,
    }


def plain_sampling_seconds(n_objects: int, n_triplets: int, seed: int = 0) -> float:
    """Time sampling unique triplets one at a time into a Python set."""
    rng = np.random.default_rng(seed)
    seen: set[tuple[int, int, int]] = set()
    started = time.perf_counter()
    while len(seen) < n_triplets:
        triple = rng.choice(n_objects, size=3, replace=False)
        seen.add(tuple(sorted(int(index) for index in triple)))
    return time.perf_counter() - started


def plain_choices(features: np.ndarray, triplets: np.ndarray) -> tuple[np.ndarray, float]:
    """Return the odd one out of each triplet by a per-triplet loop, and the time taken."""
    odd = np.empty(len(triplets), dtype=np.int64)
    started = time.perf_counter()
    for row, (a, b, c) in enumerate(triplets.tolist()):
        x, y, z = features[a], features[b], features[c]
        similarities = (np.dot(x, y), np.dot(x, z), np.dot(y, z))
        odd[row] = (c, b, a)[int(np.argmax(similarities))]
    return odd, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="scaled-down run (seconds)")
    parser.add_argument("--plain-triplets", type=int, default=20_000,
                        help="triplets timed with the plain loop")
    parser.add_argument("--gather-triplets", type=int, default=100_000,
                        help="triplets timed with method='gather'")
    parser.add_argument(
        "--child", nargs=3, metavar=("FEATURES", "OUT", "N"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()

    if args.child:
        features_path, out_path, n_triplets = args.child
        print(json.dumps(run_product(Path(features_path), Path(out_path), int(n_triplets))))
        return

    if args.quick:
        n_objects, n_features, n_triplets = 2_000, 512, 1_000_000
    else:
        n_objects, n_features, n_triplets = 24_102, 4_096, 20_000_000
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, "
          f"Python {platform.python_version()}, numpy {np.__version__}")
    print(f"setting: {n_triplets:,} unique triplets, {n_objects:,} objects, "
          f"{n_features:,}-d float32 features, dot similarity, argmax")
    print(f"load average before: {' '.join(f'{load:.2f}' for load in os.getloadavg())}")

    with tempfile.TemporaryDirectory(prefix="bench_simulate_") as folder:
        features_path = Path(folder) / "features.npy"
        out_path = Path(folder) / "triplets.npy"
        write_features(features_path, n_objects, n_features)

        # The product, in a fresh process so that its peak RSS is its own.
        completed = subprocess.run(
            [sys.executable, __file__, "--child",
             str(features_path), str(out_path), str(n_triplets)],
            check=True, capture_output=True, text=True,
        )
        product = json.loads(completed.stdout.strip().splitlines()[-1])
        load_after = os.getloadavg()

        # The references, on subsets of the product's own triplets.
        features = np.load(features_path, mmap_mode="r")
        produced = np.load(out_path, mmap_mode="r")
        subset = np.asarray(produced[: args.plain_triplets])
        plain_odd, plain_seconds = plain_choices(features, subset)
        agreement = float(np.mean(plain_odd == subset[:, 2]))
        n_sample = min(args.plain_triplets * 10, n_triplets)
        plain_sample_seconds = plain_sampling_seconds(n_objects, n_sample)

        from dimalign.triplets import simulate_choices

        gather_subset = np.asarray(produced[: args.gather_triplets])
        started = time.perf_counter()
        simulate_choices(features, gather_subset, method="gather")
        gather_seconds = time.perf_counter() - started

    scale_plain = n_triplets / len(subset)
    plain_total = plain_seconds * scale_plain + plain_sample_seconds * n_triplets / n_sample
    gather_total = gather_seconds * n_triplets / len(gather_subset)

    print()
    print(f"product: {product['total_s']:.1f} s (sampling {product['sample_s']:.1f} s, simulation "
          f"{product['simulate_s']:.1f} s with the {product['method']} method, saving "
          f"{product['save_s']:.1f} s), peak RSS {product['peak_rss_gb']:.2f} GB, "
          f"{product['n_ties']} ties")
    print(f"  time / target ({TARGET_SECONDS:.0f} s): {product['total_s'] / TARGET_SECONDS:.2f}")
    rss_ratio = product["peak_rss_gb"] / TARGET_RSS_GB
    print(f"  peak RSS / target ({TARGET_RSS_GB:.0f} GB): {rss_ratio:.2f}")
    print(f"plain loop: {plain_total:,.0f} s extrapolated from {len(subset):,} choices "
          f"({plain_seconds:.1f} s) and {n_sample:,} sampled sets ({plain_sample_seconds:.1f} s)")
    print(f"  plain loop / product: {plain_total / product['total_s']:.0f}x")
    print(f"  plain loop agrees with the product's odd one out on {agreement:.2%} "
          f"of {len(subset):,} triplets")
    print(f"gather method: {gather_total:,.0f} s for the choices, extrapolated from "
          f"{len(gather_subset):,} triplets ({gather_seconds:.1f} s)")
    print(f"  gather / product simulation: {gather_total / product['simulate_s']:.0f}x")
    print(f"load average after the product run: {' '.join(f'{load:.2f}' for load in load_after)}")


if __name__ == "__main__":
    main()
