"""Shared fixtures of the triplet sampling and simulation tests."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def things_dir() -> Path:
    """The real THINGS files in ../shared/data/things."""
    path = REPO_ROOT.parent / "shared" / "data" / "things"
    assert path.is_dir(), f"real THINGS data missing at {path}"
    return path
