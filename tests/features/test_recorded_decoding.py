"""Tests of ``dimalign.features.recorded``: finding the decoding settings behind outputs."""

from pathlib import Path

import numpy as np
import pytest

from dimalign.features.recorded import Decoding, recorded_decoding
from dimalign.io.files import write_manifest


def _extraction(folder: Path, **settings) -> Path:
    folder.mkdir()
    np.save(folder / "features.npy", np.zeros((3, 2), dtype=np.float32))
    (folder / "objects.tsv").write_text("object_id\na\nb\nc\n", encoding="utf-8")
    write_manifest(folder, step="extract", settings={"model": "tiny", **settings})
    return folder


def test_fit_follows_triplets_to_extraction(tmp_path):
    extract_dir = _extraction(tmp_path / "extract", background=[0, 0, 0], exif_transpose=False)
    simulate_dir = tmp_path / "simulate"
    simulate_dir.mkdir()
    np.save(simulate_dir / "train.npy", np.zeros((1, 3), dtype=np.int64))
    write_manifest(simulate_dir, step="simulate", inputs={"features": extract_dir / "features.npy"})
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    write_manifest(run_dir, step="fit", inputs={"train": simulate_dir / "train.npy"})

    decoding = recorded_decoding(run_dir)

    assert (decoding.background, decoding.exif_transpose) == ((0, 0, 0), False)
    assert decoding.source == str((extract_dir / "manifest.json").resolve())


def test_object_table_input_not_followed(tmp_path):
    """An object table borrowed from an extraction of other images says nothing about the fit's pixels."""
    other = _extraction(tmp_path / "other_extract", background=[0, 0, 0], exif_transpose=False)
    triplet_dir = tmp_path / "triplets"
    triplet_dir.mkdir()
    np.save(triplet_dir / "train.npy", np.zeros((1, 3), dtype=np.int64))
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    write_manifest(run_dir, step="fit",
                   inputs={"train": triplet_dir / "train.npy", "objects": other / "objects.tsv"})

    assert recorded_decoding(run_dir) is None


def test_object_table_kept_out_of_conflict(tmp_path):
    ours = _extraction(tmp_path / "extract", background=[255, 255, 255], exif_transpose=True)
    other = _extraction(tmp_path / "other_extract", background=[0, 0, 0], exif_transpose=False)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    write_manifest(run_dir, step="fit",
                   inputs={"train": ours / "features.npy", "objects": other / "objects.tsv"})

    decoding = recorded_decoding(run_dir)

    assert decoding == Decoding((255, 255, 255), True, str((ours / "manifest.json").resolve()))


def test_search_bound_warns(tmp_path):
    """A chain longer than the search bound ends with a warning, not a silent default."""
    from dimalign.features import recorded

    previous = _extraction(tmp_path / "extract", background=[0, 0, 0], exif_transpose=False) / "features.npy"
    for step in range(recorded._MAX_MANIFESTS + 1):
        folder = tmp_path / f"step{step}"
        folder.mkdir()
        np.save(folder / "train.npy", np.zeros((1, 3), dtype=np.int64))
        write_manifest(folder, step="simulate", inputs={"features": previous})
        previous = folder / "train.npy"

    with pytest.warns(UserWarning) as caught:
        decoding = recorded_decoding(previous)

    assert decoding is None
    assert str(caught[0].message) == (
        f"stopped looking for the extraction behind {previous} after {recorded._MAX_MANIFESTS} manifests, so "
        "images are decoded with extract's defaults (white background, EXIF orientation applied): pass "
        "--background and --no-exif-transpose as the extraction used them"
    )
    assert caught[0].filename == __file__
