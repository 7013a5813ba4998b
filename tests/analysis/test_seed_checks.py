"""Seeds of the analyses, which their outputs record so that a result can be repeated."""

from __future__ import annotations

import re

import numpy as np
import pytest

from dimalign.analysis import bootstrap_rsa
from dimalign.analysis.reproducibility import split_halves


def test_bootstrap_negative_seed_named():
    a = np.random.default_rng(0).random((6, 6))

    with pytest.raises(ValueError, match=r"^random_state=-1 is invalid: use 0 or more$"):
        bootstrap_rsa(a + a.T, a @ a.T, n_bootstrap=5, random_state=-1)


@pytest.mark.parametrize(("random_state", "message"), [
    (None, "random_state must be an integer, got None"),
    (-1, "random_state must be at least 0, got -1"),
    (1.5, "random_state must be an integer, got 1.5"),
])
def test_random_split_needs_seed(random_state, message):
    """The reproducibility output records the seed of a random split, so the seed must repeat it."""
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        split_halves(10, "random", random_state=random_state)

    assert [half.tolist() for half in split_halves(10, "odd_even", random_state=None)] == [
        [0, 2, 4, 6, 8], [1, 3, 5, 7, 9],
    ]
