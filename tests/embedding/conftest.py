"""Fixtures shared by the embedding tests."""

from __future__ import annotations

import pytest

from dimalign.embedding import SPoSE, VICE


@pytest.fixture
def no_parameter_allocation(monkeypatch):
    """Make a fit fail at once if it reaches the allocation of its parameters."""
    def fail(self, n_objects, generator):
        raise AssertionError("the fit allocated its parameters")

    for estimator in (VICE, SPoSE):
        monkeypatch.setattr(estimator, "_init_parameters", fail)
