"""Tests of the search for the decoding settings that an extraction recorded."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from dimalign.features.recorded import Decoding, recorded_decoding
from dimalign.io.files import write_manifest


def write_manifest_json(folder, manifest):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    return folder / "manifest.json"


@pytest.mark.parametrize(
    ("manifest", "key"),
    [
        ({"step": "extract", "settings": "white"}, "settings"),
        ({"step": "fit", "settings": [1, 2]}, "settings"),
        ({"step": "map", "settings": {"features_source": "vgg16"}}, "settings.features_source"),
        ({"step": "fit", "inputs": ["features.npy"]}, "inputs"),
        ({"step": "fit", "inputs": {"triplets": {"sha256": "ab"}}}, "inputs.triplets"),
        ({"step": "fit", "inputs": {"triplets": 5}}, "inputs.triplets"),
        ({"step": "extract", "settings": {"background": 5}}, "settings.background"),
        ({"step": "extract", "settings": {"background": True}}, "settings.background"),
        ({"step": "extract", "settings": {"background": [1.5, 2, 3]}}, "settings.background"),
        ({"step": "extract", "settings": {"exif_transpose": "false"}}, "settings.exif_transpose"),
    ],
)
def test_damaged_manifest_named(tmp_path, manifest, key):
    path = write_manifest_json(tmp_path / "out", manifest)

    with pytest.raises(ValueError) as error:
        recorded_decoding(tmp_path / "out")

    message = str(error.value)
    assert message.startswith(f"{path.resolve()}: {key} ")
    assert message.endswith(" is invalid; rerun the step that wrote it")


def test_relative_input_read_from_manifest_folder(tmp_path, monkeypatch):
    write_manifest_json(tmp_path / "study" / "extract", {"step": "extract", "settings": {"background": [0, 0, 0]}})
    write_manifest_json(tmp_path / "study" / "fit", {"step": "fit", "inputs": {"features": "../extract/features.npy"}})
    monkeypatch.chdir(tmp_path)

    decoding = recorded_decoding(tmp_path / "study" / "fit")

    assert decoding == Decoding((0, 0, 0), True, str((tmp_path / "study" / "extract" / "manifest.json").resolve()))


def test_cyclic_inputs_end_search(tmp_path):
    write_manifest_json(tmp_path / "a", {"step": "fit", "inputs": {"b": str(tmp_path / "b" / "x.npy")}})
    write_manifest_json(tmp_path / "b", {"step": "fit", "inputs": {"a": str(tmp_path / "a" / "x.npy")}})

    assert recorded_decoding(tmp_path / "a") is None


def test_missing_input_logged(tmp_path, caplog):
    gone = tmp_path / "moved" / "features.npy"
    path = write_manifest_json(tmp_path / "fit", {"step": "fit", "inputs": {"features": str(gone)}})

    with caplog.at_level(logging.WARNING, logger="dimalign.features.recorded"):
        assert recorded_decoding(tmp_path / "fit") is None

    assert caplog.messages == [
        f"no image decoding settings found behind {tmp_path / 'fit'}: the input {gone} listed in "
        f"{path.resolve()} no longer exists. The defaults of dimalign extract apply unless --background "
        "or --no-exif-transpose is given, so move the input back if its extraction used other settings"
    ]


@pytest.mark.parametrize(
    ("manifest", "key"),
    [
        ({"step": "map", "settings": "ridge"}, "settings"),
        ({"step": "map", "settings": {"features_source": "vgg16"}}, "settings.features_source"),
        ({"step": "map", "settings": {"layer": "fc7"}, "inputs": ["features.npy"]}, "inputs"),
    ],
)
def test_damaged_map_manifest_named(tmp_path, manifest, key):
    from dimalign.features.recorded import map_settings

    path = write_manifest_json(tmp_path / "map", manifest)

    with pytest.raises(ValueError) as error:
        map_settings(tmp_path / "map")

    assert str(error.value).startswith(f"{path}: {key} ")
    assert str(error.value).endswith(" is invalid; rerun the step that wrote it")


def test_symlink_loop_input_logged(tmp_path, caplog):
    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    looped = tmp_path / "a" / "features.npy"
    write_manifest_json(tmp_path / "fit", {"step": "fit", "inputs": {"features": str(looped)}})

    with caplog.at_level(logging.WARNING, logger="dimalign.features.recorded"):
        assert recorded_decoding(tmp_path / "fit") is None

    assert f"the input {looped} listed in" in caplog.text


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
