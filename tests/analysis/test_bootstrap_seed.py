"""The seed of bootstrap_rsa, which the compare manifest records."""

from __future__ import annotations

import numpy as np
import pytest

from dimalign.analysis import bootstrap_rsa


def test_bootstrap_negative_seed_named():
    a = np.random.default_rng(0).random((6, 6))

    with pytest.raises(ValueError, match=r"^random_state=-1 is invalid: use 0 or more$"):
        bootstrap_rsa(a + a.T, a @ a.T, n_bootstrap=5, random_state=-1)
