"""Time the exp that lets predict and score find ties among predict_proba's probabilities.

``predict`` and ``score`` take ``exp`` of the log-probabilities before they
look for the most probable pair, so that they see the ties that
``predict_proba`` shows. This script times that ``exp`` against the
log-probabilities themselves on the 131,552 real THINGS human triplets, for
the published 49-d and 66-d SPoSE and 42-d VICE embeddings in float32. It
also counts the rows with a tie for the maximum, in log-probabilities and in
probabilities.

Usage:
    python benchmarks/bench_predict_ties.py [--repeats 20]
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from dimalign.embedding.likelihood import choice_log_probabilities
from dimalign.io.runs import load_embedding

THINGS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "things"
EMBEDDINGS = ("spose_embedding_49d_sorted.txt", "spose_embedding_66d_sorted.txt", "vice_embedding_42d.npy")


def best_seconds(function, repeats: int) -> float:
    """Return the fastest of ``repeats`` runs of ``function``, in seconds."""
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        best = min(best, time.perf_counter() - started)
    return best


def tied_rows(values: torch.Tensor) -> int:
    """Count the rows in which two or three columns share the maximum."""
    at_max = values == values.max(dim=1, keepdim=True).values
    return int((at_max.sum(dim=1) > 1).sum())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20, help="timed runs of each step (default 20)")
    args = parser.parse_args()
    torch.set_num_threads(1)

    triplets = torch.as_tensor(np.loadtxt(THINGS / "human_triplets.txt", dtype=np.int64))
    for name in EMBEDDINGS:
        with warnings.catch_warnings():
            # The published SPoSE files contain tiny negative weights, which load_embedding sets to 0.
            warnings.simplefilter("ignore", UserWarning)
            embedding = torch.as_tensor(load_embedding(THINGS / name).embedding.astype(np.float32))
        log_proba = choice_log_probabilities(embedding, triplets)
        proba = log_proba.exp()
        log_seconds = best_seconds(lambda: choice_log_probabilities(embedding, triplets), args.repeats)
        exp_seconds = best_seconds(log_proba.exp, args.repeats)
        print(
            f"{name}: log-probabilities {log_seconds * 1e3:.1f} ms, exp {exp_seconds * 1e3:.2f} ms "
            f"({exp_seconds / log_seconds:.1%}); tied rows: {tied_rows(log_proba)} in log-probabilities, "
            f"{tied_rows(proba)} in probabilities, of {len(triplets)}"
        )


if __name__ == "__main__":
    main()
