"""Fixtures shared by every test stage."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]

if os.environ.get("PYTEST_XDIST_WORKER"):
    # pytest-xdist runs one worker per core (-n auto), so more than one torch thread
    # per worker would make the workers wait on each other. Subprocesses inherit OMP_NUM_THREADS.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real data directory ``../shared/data`` next to the repository."""
    if not SHARED_DATA.is_dir():
        pytest.fail(
            f"real test data not found at {SHARED_DATA}: the tests read THINGS files and "
            "images from ../shared/data relative to the repository root"
        )
    return SHARED_DATA


@pytest.fixture(scope="session")
def things_dir(shared_data: Path) -> Path:
    """The real THINGS files in ``../shared/data/things``."""
    path = shared_data / "things"
    if not path.is_dir():
        pytest.fail(f"THINGS data directory {path} not found")
    return path


@pytest.fixture(autouse=True)
def restore_dimalign_logging():
    """Undo the logging set-up of ``dimalign.cli.main`` after each test.

    ``main`` gives the ``dimalign`` logger its own handler and stops
    propagation, which would hide later log records from pytest's ``caplog``.
    """
    import logging

    logger = logging.getLogger("dimalign")
    saved = (logger.handlers[:], logger.level, logger.propagate)
    yield
    logger.handlers[:], logger.level, logger.propagate = saved[0], saved[1], saved[2]


@pytest.fixture
def unwritable_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty folder that ``os.access`` reports as not writable.

    The tests run as root, for whom a folder's permission bits do not stop
    writes, so the check that commands make before their work is fooled instead.
    """
    import os

    folder = tmp_path / "locked"
    folder.mkdir()
    access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode, **kw: Path(path) != folder and access(path, mode))
    return folder


@pytest.fixture
def record_extraction(tmp_path: Path):
    """Return ``record(run_dir, **settings)``: record run_dir as a fit of triplets simulated from an extraction.

    The manifests are written by ``write_manifest``, as ``extract``,
    ``simulate`` and ``fit`` write them, into ``tmp_path/extract``
    and ``tmp_path/simulate``. ``record`` returns the extraction folder.
    """
    import numpy as np

    from dimalign.io.files import write_manifest

    def record(run_dir: Path, **settings) -> Path:
        extract_dir = tmp_path / "extract"
        extract_dir.mkdir()
        np.save(extract_dir / "features.npy", np.zeros((1, 2), dtype=np.float32))
        write_manifest(extract_dir, step="extract", settings={"model": "tiny", **settings})
        simulate_dir = tmp_path / "simulate"
        simulate_dir.mkdir()
        np.save(simulate_dir / "train.npy", np.zeros((1, 3), dtype=np.int64))
        write_manifest(simulate_dir, step="simulate", inputs={"features": extract_dir / "features.npy"})
        write_manifest(run_dir, step="fit", inputs={"train": simulate_dir / "train.npy"})
        return extract_dir

    return record
