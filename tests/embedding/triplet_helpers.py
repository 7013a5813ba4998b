"""Triplets shared by the embedding tests."""

from __future__ import annotations

import numpy as np

#: Objects of the small fits in these tests.
N_OBJECTS = 12


def random_triplets(n_objects: int = N_OBJECTS, n_triplets: int = 120, seed: int = 0) -> np.ndarray:
    """Return ``n_triplets`` rows of three distinct random objects, the last being the odd one out."""
    rng = np.random.default_rng(seed)
    return np.array([rng.choice(n_objects, 3, replace=False) for _ in range(n_triplets)])
