"""The random_state argument of sample_triplets and simulate_choices."""

from __future__ import annotations

import re

import numpy as np
import pytest

from dimalign.triplets import sample_triplets, simulate_choices


def simulate(random_state):
    features = np.random.default_rng(0).random((10, 3))
    triplets = sample_triplets(10, 50, random_state=0)
    return simulate_choices(features, triplets, rule="softmax", random_state=random_state).triplets


CALLS = {
    "sample_triplets": lambda random_state: sample_triplets(10, 50, random_state=random_state),
    "simulate_choices": simulate,
}


@pytest.mark.parametrize("call", CALLS.values(), ids=CALLS.keys())
@pytest.mark.parametrize("random_state", [-1, 1.5, True, "0", np.float64(2.0)], ids=repr)
def test_invalid_random_state_named(call, random_state):
    expected = (
        "random_state must be a seed (an integer of at least 0), a numpy.random.Generator or None, "
        f"got {random_state!r}"
    )
    with pytest.raises(ValueError, match=f"^{re.escape(expected)}$"):
        call(random_state)


@pytest.mark.parametrize("call", CALLS.values(), ids=CALLS.keys())
def test_valid_random_states_accepted(call):
    np.testing.assert_array_equal(call(3), call(np.int64(3)))
    np.testing.assert_array_equal(call(3), call(np.random.default_rng(3)))
    np.testing.assert_array_equal(call(3), call(np.random.SeedSequence(3)))
    assert not np.array_equal(call(None), call(None))
