"""Unique-triplet sampling and odd-one-out simulation from features.

>>> import numpy as np
>>> from dimalign.triplets import sample_triplets, simulate_choices
>>> features = np.random.default_rng(0).random((10, 4))
>>> result = simulate_choices(features, sample_triplets(10, 50))
>>> result.triplets.shape, result.n_ties
((50, 3), 0)
"""

from dimalign.triplets.sampling import (
    count_triplets,
    rank_triplets,
    sample_triplets,
    unrank_triplets,
)
from dimalign.triplets.simulate import SimulationResult, simulate_choices

__all__ = [
    "SimulationResult",
    "count_triplets",
    "rank_triplets",
    "sample_triplets",
    "simulate_choices",
    "unrank_triplets",
]
