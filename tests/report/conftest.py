"""Fixtures of the report tests: a tiny study run once through the whole pipeline."""

from __future__ import annotations

from pathlib import Path

import pytest
from report_helpers import write_labels, write_study


@pytest.fixture(scope="session")
def tiny_study(tmp_path_factory) -> Path:
    """A finished tiny study with images and a report; returns the study directory (do not modify it)."""
    from dimalign.report.pipeline import run_study

    root = tmp_path_factory.mktemp("tiny-study")
    config = write_study(root, images=True)
    study_dir = root / "study"
    run_study(config, study_dir)
    return study_dir


@pytest.fixture(scope="session")
def tiny_labels(tiny_study: Path) -> Path:
    """A labels summary of every dimension of the tiny study (no relevance_shares.csv)."""
    from dimalign.io.runs import load_embedding

    dims = {name: load_embedding(tiny_study / name).n_dims for name in ("human_fit", "dnn_fit")}
    return write_labels(tiny_study.parent / "labels", dims)


@pytest.fixture()
def tiny_results(tiny_study: Path, tiny_labels: Path):
    """StudyResults of the tiny study with categories, images and labels."""
    from dimalign.report.results import StudyResults

    data = tiny_study.parent / "data"
    return StudyResults(
        tiny_study, categories=data / "categories.tsv", labels=tiny_labels, images=data / "images",
    )
