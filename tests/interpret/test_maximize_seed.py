"""The random_state of maximize_dimension, which seeds its starting latents."""

from __future__ import annotations

import re

import pytest

from dimalign.interpret.maximize import maximize_dimension
from dimalign.interpret.predictor import DimensionPredictor


@pytest.fixture
def predictor(conv_model, ridge_coefficients):
    coef, intercept = ridge_coefficients
    return DimensionPredictor(conv_model, "3", coef, intercept, pooling="gap")


@pytest.mark.parametrize(("random_state", "message"), [
    (1.5, "random_state must be an integer, got 1.5"),
    (None, "random_state must be an integer, got None"),
    (True, "random_state must be an integer, got True"),
    (-1, "random_state must be at least 0, got -1"),
])
def test_maximize_random_state_checked(predictor, random_state, message):
    """int() would cut a float seed, so that 1.5 and 1 gave the same images."""
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        maximize_dimension(predictor, 1, steps=0, n_init=2, n_images=1, image_size=16, random_state=random_state)
