"""Fixtures for the feature extraction tests: the real photos and a tiny model."""

from __future__ import annotations

from pathlib import Path

import pytest
from feature_helpers import make_tiny_model

from dimalign.features.models import LoadedModel

SHARED_IMAGES = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "images"


@pytest.fixture(scope="session")
def shared_images() -> Path:
    """The folder of real photographs shared with the project (read-only)."""
    assert SHARED_IMAGES.is_dir(), f"real test photos not found at {SHARED_IMAGES.resolve()}"
    return SHARED_IMAGES.resolve()


@pytest.fixture
def tiny_model() -> LoadedModel:
    return make_tiny_model()
