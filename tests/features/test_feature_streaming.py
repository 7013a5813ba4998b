"""Streaming extraction to memory-mapped files, resume, formats and the manifest."""

from __future__ import annotations

import json
import logging

import h5py
import numpy as np
import pytest
from feature_helpers import make_tiny_model, write_random_images
from PIL import Image

from dimalign.features.datasets import find_images, load_rgb
from dimalign.features.extract import LOCK_NAME, compute_features, extract_features
from dimalign.features.storage import WORK_DIR_NAME, Progress, rows_to_intervals
from dimalign.io.features import load_features
from dimalign.io.files import acquire_lock, read_manifest, release_lock


class Interrupt(Exception):
    """Raised from the batch callback to simulate a killed extraction."""


def interrupt_after(batch_number: int):
    def on_batch(number, rows):
        if number == batch_number:
            raise Interrupt(f"stopped after batch {number}")
    return on_batch


@pytest.fixture
def twenty_images(tmp_path):
    folder = tmp_path / "images"
    write_random_images(folder, 20)
    return folder


def test_ten_batches_equal_in_memory(twenty_images, tmp_path, tiny_model):
    result = extract_features(twenty_images, tmp_path / "out", tiny_model, layers=["0", "4:input"],
                              pools=["gap", "flatten"], batch_size=2)
    expected = compute_features(tiny_model, find_images(twenty_images), layers=["0", "4:input"],
                                pools=["gap", "flatten"], batch_size=2)

    assert result.complete
    assert result.n_rows == 20
    conv, table = load_features(tmp_path / "out", layer="0")
    pooled, _ = load_features(tmp_path / "out", layer="4:input")
    assert isinstance(conv, np.memmap)
    assert conv.shape == (20, 4)
    assert np.array_equal(conv, expected["0"])
    assert np.array_equal(pooled, expected["4:input"])
    assert table.object_ids == tuple(f"img{index:02d}.png" for index in range(20))
    assert sorted(path.name for path in (tmp_path / "out").iterdir()) == [
        "features_0.npy", "features_4:input.npy", "manifest.json", "objects.tsv"]


def test_interrupted_run_resumes_to_same_file(twenty_images, tmp_path, tiny_model):
    reference = tmp_path / "reference"
    extract_features(twenty_images, reference, tiny_model, layers=["0"], pools="gap", batch_size=2)

    out = tmp_path / "out"
    with pytest.raises(Interrupt):
        extract_features(twenty_images, out, tiny_model, layers=["0"], pools="gap", batch_size=2,
                         on_batch=interrupt_after(5))
    progress = Progress.load(out / WORK_DIR_NAME)
    assert rows_to_intervals(progress.finished) == [[0, 10]]
    assert not (out / "features.npy").exists()

    resumed_rows = []
    result = extract_features(twenty_images, out, tiny_model, layers=["0"], pools="gap",
                              batch_size=2, resume=True,
                              on_batch=lambda number, rows: resumed_rows.extend(rows))
    assert result.complete
    assert resumed_rows == list(range(10, 20))
    assert (out / "features.npy").read_bytes() == (reference / "features.npy").read_bytes()
    assert (out / "objects.tsv").read_text() == (reference / "objects.tsv").read_text()
    assert not (out / WORK_DIR_NAME).exists()


def test_max_batches_then_resume_with_other_batch_size(twenty_images, tmp_path, tiny_model):
    reference = tmp_path / "reference"
    extract_features(twenty_images, reference, tiny_model, layers=["0"], pools="gap", batch_size=2)

    out = tmp_path / "out"
    first = extract_features(twenty_images, out, tiny_model, layers=["0"], pools="gap",
                             batch_size=2, max_batches=5)
    assert not first.complete
    assert first.n_rows == 10
    second = extract_features(twenty_images, out, tiny_model, layers=["0"], pools="gap",
                              batch_size=3, resume=True)
    assert second.complete
    features, _ = load_features(out)
    expected, _ = load_features(reference)
    # Batch composition can change float rounding in the last bits.
    np.testing.assert_allclose(features, expected, rtol=1e-6, atol=1e-7)


def test_resume_rejects_changed_settings(twenty_images, tmp_path, tiny_model):
    out = tmp_path / "out"
    extract_features(twenty_images, out, tiny_model, layers=["0"], pools="gap", batch_size=2,
                     max_batches=2)
    with pytest.raises(ValueError, match=r"settings differ \(pools: was \['gap'\], now \['raw'\]"):
        extract_features(twenty_images, out, tiny_model, layers=["0"], pools="raw", resume=True)

    (twenty_images / "img03.png").rename(twenty_images / "renamed.png")
    with pytest.raises(ValueError, match="image_list_sha256"):
        extract_features(twenty_images, out, tiny_model, layers=["0"], pools="gap", resume=True)

    other_weights = make_tiny_model(seed=1)
    other_weights.weights_id = "file:/elsewhere/weights.pth"
    with pytest.raises(ValueError, match="weights_id"):
        extract_features(twenty_images, out, other_weights, layers=["0"], pools="gap",
                         resume=True)


def test_unfinished_folder_needs_resume_or_overwrite(twenty_images, tmp_path, tiny_model):
    out = tmp_path / "out"
    extract_features(twenty_images, out, tiny_model, layers=["0"], pools="gap", max_batches=1,
                     batch_size=4)
    with pytest.raises(FileExistsError, match="pass --resume"):
        extract_features(twenty_images, out, tiny_model, layers=["0"], pools="gap")
    result = extract_features(twenty_images, out, tiny_model, layers=["0"], pools="raw",
                              overwrite=True)
    assert result.complete
    # raw keeps the conv map's shape, so the file is read with np.load, not load_features.
    assert np.load(out / "features.npy").shape == (20, 4, 8, 8)


def test_failed_overwrite_keeps_old_features(twenty_images, tmp_path, tiny_model):
    out = tmp_path / "out"
    extract_features(twenty_images, out, tiny_model, layers=["0"], pools="gap")
    old = {name: (out / name).read_bytes() for name in ("features.npy", "objects.tsv", "manifest.json")}

    # Layer 4 (Linear) gives vectors, so gap fails on the first batch.
    with pytest.raises(ValueError, match="layer 4: gap needs an output"):
        extract_features(twenty_images, out, tiny_model, layers=["4"], pools="gap", overwrite=True)

    assert sorted(path.name for path in out.iterdir()) == sorted(old)
    for name, content in old.items():
        assert (out / name).read_bytes() == content


def test_overwrite_removes_files_of_old_layers(twenty_images, tmp_path, tiny_model):
    (twenty_images / "img03.png").write_bytes(b"")
    out = tmp_path / "out"
    extract_features(twenty_images, out, tiny_model, layers=["0", "4"], pools="gap flatten".split(),
                     on_error="skip")
    assert (out / "features_0.npy").is_file()
    assert (out / "skipped.tsv").is_file()
    (twenty_images / "img03.png").unlink()

    extract_features(twenty_images, out, tiny_model, layers=["4"], overwrite=True)

    assert sorted(path.name for path in out.iterdir()) == ["features.npy", "manifest.json", "objects.tsv"]
    assert np.load(out / "features.npy").shape == (19, 2)


def test_fresh_extraction_keeps_other_files(twenty_images, tmp_path, tiny_model):
    out = tmp_path / "out"
    out.mkdir()
    np.save(out / "features_mine.npy", np.arange(3))
    (out / "skipped.tsv").write_text("my notes\n")

    extract_features(twenty_images, out, tiny_model, layers=["0"], pools="gap")

    np.testing.assert_array_equal(np.load(out / "features_mine.npy"), np.arange(3))
    assert (out / "skipped.tsv").read_text() == "my notes\n"


def test_interrupted_overwrite_resumes_and_removes_old_layers(twenty_images, tmp_path, tiny_model):
    out = tmp_path / "out"
    extract_features(twenty_images, out, tiny_model, layers=["0", "4"], pools=["gap", "flatten"])
    with pytest.raises(Interrupt):
        extract_features(twenty_images, out, tiny_model, layers=["4"], overwrite=True, batch_size=4,
                         on_batch=interrupt_after(2))
    # The old features stay readable while the overwrite is unfinished.
    assert load_features(out, layer="0")[0].shape == (20, 4)

    extract_features(twenty_images, out, tiny_model, layers=["4"], batch_size=4, resume=True)

    assert sorted(path.name for path in out.iterdir()) == ["features.npy", "manifest.json", "objects.tsv"]


def test_second_extraction_into_busy_folder_fails(twenty_images, tmp_path, tiny_model):
    out = tmp_path / "out"
    out.mkdir()
    # A lock taken through another file descriptor conflicts like one of another process.
    descriptor = acquire_lock(out / LOCK_NAME, "held by the test")
    try:
        with pytest.raises(RuntimeError, match=f"{out} is in use by another dimalign extract"):
            extract_features(twenty_images, out, tiny_model, layers=["0"], pools="gap", resume=True)
        assert not (out / WORK_DIR_NAME).exists()
    finally:
        release_lock(out / LOCK_NAME, descriptor)

    assert extract_features(twenty_images, out, tiny_model, layers=["0"], pools="gap").complete
    assert not (out / LOCK_NAME).exists()


def test_all_images_unreadable_leaves_nothing(tmp_path, tiny_model):
    folder = tmp_path / "images"
    folder.mkdir()
    (folder / "a.png").write_bytes(b"not a png")
    (folder / "b.png").write_bytes(b"")
    out = tmp_path / "out"

    with pytest.raises(ValueError) as error:
        extract_features(folder, out, tiny_model, layers=["0"], pools="gap", on_error="skip")

    assert str(error.value) == (f"none of the 2 images could be read (first: {folder / 'a.png'}: not an "
                                "image file Pillow can read); fix or replace them and rerun")
    assert not out.exists()
    write_random_images(folder, 1)
    assert extract_features(folder, out, tiny_model, layers=["0"], pools="gap", on_error="skip").n_rows == 1


def test_empty_image_list_rejected(tmp_path, tiny_model):
    from dimalign.features.datasets import ImageList

    with pytest.raises(ValueError, match="the image list of photos is empty: pass at least one image"):
        extract_features(ImageList((), (), "photos"), tmp_path / "out", tiny_model)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("as_files", [True, False])
def test_compute_features_rejects_batch_size_zero(twenty_images, tiny_model, as_files):
    images = find_images(twenty_images)
    if not as_files:
        images = [load_rgb(path) for path in images.paths]

    with pytest.raises(ValueError, match="invalid batch size 0: use 1 or more"):
        compute_features(tiny_model, images, batch_size=0)


@pytest.mark.parametrize("num_workers", [-1, 10**30])
def test_invalid_workers_rejected(twenty_images, tmp_path, tiny_model, num_workers):
    with pytest.raises(ValueError, match=f"invalid number of workers {num_workers}: use 0 .* up to sys.maxsize"):
        extract_features(twenty_images, tmp_path / "out", tiny_model, num_workers=num_workers)
    assert not (tmp_path / "out").exists()


def test_finished_folder_not_overwritten(twenty_images, tmp_path, tiny_model):
    out = tmp_path / "out"
    extract_features(twenty_images, out, tiny_model, layers=["0"], pools="gap")
    with pytest.raises(FileExistsError, match="already contains features"):
        extract_features(twenty_images, out, tiny_model, layers=["0"], pools="gap")
    again = extract_features(twenty_images, out, tiny_model, layers=["0"], pools="gap", resume=True)
    assert again.complete
    assert again.n_rows == 20


def test_skip_then_stop_keeps_finished_batches(twenty_images, tmp_path, tiny_model):
    (twenty_images / "img07.png").write_bytes(b"")
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=r"img07\.png: empty file"):
        extract_features(twenty_images, out, tiny_model, layers=["0"], pools="gap", batch_size=2)
    assert rows_to_intervals(Progress.load(out / WORK_DIR_NAME).finished) == [[0, 6]]

    result = extract_features(twenty_images, out, tiny_model, layers=["0"], pools="gap",
                              batch_size=2, on_error="skip", resume=True)
    features, table = load_features(out)
    assert features.shape == (19, 4)
    assert "img07.png" not in table.object_ids
    assert result.skipped == [(str(twenty_images / "img07.png"), "empty file (0 bytes)")]
    photos = [load_rgb(twenty_images / name) for name in table.object_ids]
    expected = compute_features(tiny_model, photos, layers=["0"], pools="gap", batch_size=2)
    np.testing.assert_allclose(features, expected["0"], rtol=1e-6, atol=1e-7)


def test_h5_format_and_float16(twenty_images, tmp_path, tiny_model):
    out = tmp_path / "out"
    extract_features(twenty_images, out, tiny_model, layers=["0", "4:input"],
                     pools=["gap", "flatten"], fmt="h5", dtype="float16", batch_size=8)
    expected = compute_features(tiny_model, find_images(twenty_images), layers=["0", "4:input"],
                                pools=["gap", "flatten"], batch_size=8)
    with h5py.File(out / "features.h5", "r") as handle:
        assert sorted(handle) == ["0", "4:input"]
        assert handle["0"].dtype == np.float16
    features, table = load_features(out, layer="0")
    assert features.shape == (20, 4)
    assert len(table) == 20
    np.testing.assert_array_equal(features, expected["0"].astype(np.float16))


def test_manifest_records_model_and_checksums(twenty_images, tmp_path, tiny_model):
    out = tmp_path / "out"
    extract_features(twenty_images, out, tiny_model, layers=["0"], pools="gap")
    manifest = read_manifest(out)
    settings = manifest["settings"]
    assert manifest["step"] == "extract"
    assert settings["model"] == "tiny"
    assert settings["weights_id"] == "random-init(seed=0)"
    assert settings["layer"] == "0"
    assert settings["pooling"] == "gap"
    assert settings["image_list_sha256"] == find_images(twenty_images).checksum()
    assert "Resize(size=(8, 8)" in settings["preprocessing"]
    assert settings["package_versions"]["torch"]
    assert manifest["outputs"]["shapes"] == {"0": [20, 4]}
    json.dumps(manifest)


@pytest.mark.parametrize("fmt", ["npy", "h5"])
def test_skip_interrupt_resume_compacts_rows(twenty_images, tmp_path, tiny_model, fmt):
    for name in ("img00.png", "img13.png"):
        (twenty_images / name).write_bytes(b"")
    reference = tmp_path / "reference"
    extract_features(twenty_images, reference, tiny_model, layers=["0", "4:input"],
                     pools=["gap", "flatten"], on_error="skip", batch_size=4, fmt=fmt)

    out = tmp_path / "out"
    with pytest.raises(Interrupt):
        extract_features(twenty_images, out, tiny_model, layers=["0", "4:input"],
                         pools=["gap", "flatten"], on_error="skip", batch_size=4, fmt=fmt,
                         on_batch=interrupt_after(2))
    result = extract_features(twenty_images, out, tiny_model, layers=["0", "4:input"],
                              pools=["gap", "flatten"], on_error="skip", batch_size=4, fmt=fmt,
                              resume=True)

    assert [path.rsplit("/", 1)[-1] for path, _ in result.skipped] == ["img00.png", "img13.png"]
    for layer, width in (("0", 4), ("4:input", 4)):
        features, table = load_features(out, layer=layer)
        expected, expected_table = load_features(reference, layer=layer)
        assert features.shape == (18, width)
        assert np.array_equal(np.asarray(features), np.asarray(expected))
        assert table == expected_table
    assert (out / "skipped.tsv").read_text() == (reference / "skipped.tsv").read_text()
    assert "img13.png" not in table.object_ids


def test_worker_processes_give_same_features(twenty_images, tmp_path, tiny_model):
    extract_features(twenty_images, tmp_path / "main", tiny_model, layers=["0"], pools="gap",
                     batch_size=4)
    extract_features(twenty_images, tmp_path / "workers", tiny_model, layers=["0"], pools="gap",
                     batch_size=4, num_workers=2)
    main_features = (tmp_path / "main" / "features.npy").read_bytes()
    assert (tmp_path / "workers" / "features.npy").read_bytes() == main_features


def test_failure_before_any_batch_leaves_nothing(twenty_images, tmp_path, tiny_model):
    (twenty_images / "000_broken.png").write_bytes(b"not a png")
    out = tmp_path / "out"
    with pytest.raises(ValueError, match="000_broken.png"):
        extract_features(twenty_images, out, tiny_model, layers=["0"], pools="gap", batch_size=4)
    # Nothing finished, so nothing is left to resume, and a corrected rerun starts cleanly.
    assert not out.exists()
    (twenty_images / "000_broken.png").unlink()
    assert extract_features(twenty_images, out, tiny_model, layers=["0"], pools="gap").complete


def test_names_equal_after_normalisation_fail_before_the_model(tmp_path):
    import unicodedata

    from PIL import Image

    folder = tmp_path / "images"
    folder.mkdir()
    for form in ("NFC", "NFD"):
        Image.new("RGB", (4, 4)).save(folder / unicodedata.normalize(form, "café.png"))
    if len(list(folder.iterdir())) < 2:
        pytest.skip("this file system stores only one normalisation of a name")
    with pytest.raises(ValueError, match="get the same object id 'café.png'"):
        find_images(folder)


@pytest.mark.parametrize(
    ("options", "message"),
    [({"background": "nocolour"}, "invalid background colour 'nocolour'"),
     ({"fmt": "zarr"}, "invalid format 'zarr': use npy or h5")],
)
def test_invalid_options_fail_before_the_model(twenty_images, tmp_path, monkeypatch, options, message):
    import dimalign.features.extract as extract_module

    def fail(*args, **kwargs):
        raise AssertionError("the model was loaded before the options were checked")

    monkeypatch.setattr(extract_module, "load_model", fail)
    out = tmp_path / "out"

    with pytest.raises(ValueError, match=message):
        extract_features(twenty_images, out, "efficientnet_lite0", **options)

    assert not out.exists()


def test_huge_batch_size_rejected(twenty_images, tmp_path, tiny_model):
    out = tmp_path / "out"

    with pytest.raises(ValueError, match=f"invalid batch size {10**30}: use 1 or more, up to sys.maxsize"):
        extract_features(twenty_images, out, tiny_model, layers=["0"], batch_size=10**30)

    assert not out.exists()


def test_overwrite_keeps_files_the_manifest_does_not_list(twenty_images, tmp_path, tiny_model):
    out = tmp_path / "out"
    extract_features(twenty_images, out, tiny_model, layers=["0", "4"], pools=["gap", "flatten"])
    backup = np.load(out / "features_0.npy")
    np.save(out / "features_backup.npy", backup)

    extract_features(twenty_images, out, tiny_model, layers=["4"], overwrite=True)

    assert sorted(path.name for path in out.iterdir()) == [
        "features.npy", "features_backup.npy", "manifest.json", "objects.tsv"]
    np.testing.assert_array_equal(np.load(out / "features_backup.npy"), backup)


def test_overwrite_without_manifest_keeps_other_files(twenty_images, tmp_path, tiny_model):
    out = tmp_path / "out"
    out.mkdir()
    np.save(out / "features_mine.npy", np.arange(3))
    (out / "skipped.tsv").write_text("my notes\n")

    extract_features(twenty_images, out, tiny_model, layers=["0", "4"], pools=["gap", "flatten"],
                     overwrite=True)

    np.testing.assert_array_equal(np.load(out / "features_mine.npy"), np.arange(3))
    assert (out / "skipped.tsv").read_text() == "my notes\n"


def test_failure_removes_created_parent_folders(twenty_images, tmp_path, tiny_model):
    out = tmp_path / "new" / "nested" / "out"

    # Layer 4 (Linear) gives vectors, so gap fails on the first batch.
    with pytest.raises(ValueError, match="layer 4: gap needs an output"):
        extract_features(twenty_images, out, tiny_model, layers=["4"], pools="gap")

    assert not (tmp_path / "new").exists()


def test_stop_before_manifest_resumes(twenty_images, tmp_path, tiny_model, monkeypatch):
    import dimalign.features.extract as extract_module

    reference = tmp_path / "reference"
    extract_features(twenty_images, reference, tiny_model, layers=["0"], pools="gap", batch_size=4)
    out = tmp_path / "out"

    def killed(*args, **kwargs):
        raise Interrupt("killed before the manifest was written")

    with monkeypatch.context() as patch:
        patch.setattr(extract_module, "write_manifest", killed)
        with pytest.raises(Interrupt):
            extract_features(twenty_images, out, tiny_model, layers=["0"], pools="gap", batch_size=4)
    with pytest.raises(FileExistsError, match="pass --resume"):
        extract_features(twenty_images, out, tiny_model, layers=["0"], pools="gap", batch_size=4)

    result = extract_features(twenty_images, out, tiny_model, layers=["0"], pools="gap",
                              batch_size=4, resume=True)

    assert result.complete
    assert result.n_rows == 20
    assert (out / "features.npy").read_bytes() == (reference / "features.npy").read_bytes()
    assert (out / "objects.tsv").read_text() == (reference / "objects.tsv").read_text()
    assert read_manifest(out)["outputs"]["n_rows"] == 20
    assert sorted(path.name for path in out.iterdir()) == ["features.npy", "manifest.json", "objects.tsv"]


def stop_after_renames(monkeypatch, count):
    """Make the storage module's renames raise Interrupt after ``count`` succeed."""
    import dimalign.features.storage as storage_module

    done = []
    rename = storage_module._rename

    def counted(source, target):
        if len(done) == count:
            raise Interrupt(f"killed after {count} moves")
        done.append(target)
        rename(source, target)

    monkeypatch.setattr(storage_module, "_rename", counted)


@pytest.mark.parametrize("moved", [0, 1, 2, 3, 4])
def test_stop_between_moves_resumes(twenty_images, tmp_path, tiny_model, monkeypatch, moved):
    import dimalign.features.storage as storage_module

    options = {"layers": ["0", "4"], "pools": ["gap", "flatten"], "batch_size": 4}
    reference = tmp_path / "reference"
    extract_features(twenty_images, reference, tiny_model, **options)
    out = tmp_path / "out"

    with monkeypatch.context() as patch:
        if moved < 4:
            stop_after_renames(patch, moved)
        else:
            # All four files moved, then the stop comes before .partial is deleted.
            def killed(work_dir):
                raise Interrupt("killed before removing the working folder")
            patch.setattr(storage_module, "remove_work_dir", killed)
        with pytest.raises(Interrupt):
            extract_features(twenty_images, out, tiny_model, **options)
    assert Progress.load(out / WORK_DIR_NAME).finishing is not None

    result = extract_features(twenty_images, out, tiny_model, resume=True, **options)

    assert result.complete
    assert result.n_rows == 20
    names = ["features_0.npy", "features_4.npy", "manifest.json", "objects.tsv"]
    assert sorted(path.name for path in out.iterdir()) == names
    for name in names[:2] + names[3:]:
        assert (out / name).read_bytes() == (reference / name).read_bytes()
    assert read_manifest(out)["outputs"]["files"] == {"0": "features_0.npy", "4": "features_4.npy"}


def test_stopped_overwrite_removes_old_layers_on_resume(twenty_images, tmp_path, tiny_model, monkeypatch):
    out = tmp_path / "out"
    extract_features(twenty_images, out, tiny_model, layers=["0", "4"], pools=["gap", "flatten"])
    with monkeypatch.context() as patch:
        stop_after_renames(patch, 1)
        with pytest.raises(Interrupt):
            extract_features(twenty_images, out, tiny_model, layers=["4"], overwrite=True)

    extract_features(twenty_images, out, tiny_model, layers=["4"], resume=True)

    assert sorted(path.name for path in out.iterdir()) == ["features.npy", "manifest.json", "objects.tsv"]
    assert read_manifest(out)["outputs"]["files"] == {"4": "features.npy"}
    assert np.load(out / "features.npy").shape == (20, 2)


def test_resume_rejects_changed_moved_file(twenty_images, tmp_path, tiny_model, monkeypatch):
    out = tmp_path / "out"
    with monkeypatch.context() as patch:
        stop_after_renames(patch, 1)
        with pytest.raises(Interrupt):
            extract_features(twenty_images, out, tiny_model, layers=["0"], pools="gap")
    # The feature file moved first; another program replaces it before the resume.
    np.save(out / "features.npy", np.zeros((20, 4), dtype=np.float32))

    with pytest.raises(ValueError, match=r"features\.npy is missing or not the file moved there .* "
                                         "pass --overwrite to extract again"):
        extract_features(twenty_images, out, tiny_model, layers=["0"], pools="gap", resume=True)

    assert not (out / "manifest.json").exists()
    assert extract_features(twenty_images, out, tiny_model, layers=["0"], pools="gap",
                            overwrite=True).complete
    assert sorted(path.name for path in out.iterdir()) == ["features.npy", "manifest.json", "objects.tsv"]


def test_resume_reextracts_replaced_image(twenty_images, tmp_path, tiny_model, caplog):
    out = tmp_path / "out"
    extract_features(twenty_images, out, tiny_model, layers=["0"], pools="gap", batch_size=4,
                     max_batches=2)
    # Another picture under the same name, 16 x 16 instead of 12 x 12, so its size differs.
    write_random_images(tmp_path / "new", 3, size=16, seed=7)
    (tmp_path / "new" / "img02.png").replace(twenty_images / "img02.png")

    resumed_rows = []
    with caplog.at_level("WARNING"):
        extract_features(twenty_images, out, tiny_model, layers=["0"], pools="gap", batch_size=4,
                         resume=True, on_batch=lambda number, rows: resumed_rows.extend(rows))

    assert resumed_rows == [2, *range(8, 20)]
    assert f"{twenty_images / 'img02.png'}" in caplog.text
    assert "changed since the stopped run" in caplog.text
    features, _ = load_features(out)
    expected = compute_features(tiny_model, find_images(twenty_images), layers=["0"], pools="gap",
                                batch_size=4)
    np.testing.assert_allclose(features, expected["0"], rtol=1e-6, atol=1e-7)


def test_resume_without_image_stamps_warns(twenty_images, tmp_path, tiny_model, caplog):
    out = tmp_path / "out"
    extract_features(twenty_images, out, tiny_model, layers=["0"], pools="gap", batch_size=4,
                     max_batches=2)
    # A run of an older version wrote no image stamps.
    (out / WORK_DIR_NAME / "image_stamps.npy").unlink()

    resumed_rows = []
    with caplog.at_level("WARNING"):
        result = extract_features(twenty_images, out, tiny_model, layers=["0"], pools="gap",
                                  batch_size=4, resume=True,
                                  on_batch=lambda number, rows: resumed_rows.extend(rows))

    assert result.complete
    assert resumed_rows == list(range(8, 20))
    assert "records no image sizes and times, so images replaced since are not detected" in caplog.text


def test_resume_rereads_deleted_listed_image(twenty_images, tmp_path, tiny_model):
    list_file = tmp_path / "images.txt"
    list_file.write_text("".join(f"images/img{index:02d}.png\n" for index in range(20)))
    out = tmp_path / "out"
    extract_features(list_file, out, tiny_model, layers=["0"], pools="gap", batch_size=4, max_batches=2)
    (twenty_images / "img05.png").unlink()

    with pytest.raises(ValueError, match=r"cannot read image .*img05\.png: file not found"):
        extract_features(list_file, out, tiny_model, layers=["0"], pools="gap", batch_size=4, resume=True)

    progress = Progress.load(out / WORK_DIR_NAME)
    assert not progress.finished[5]
    assert progress.finished[[0, 1, 2, 3, 4, 6, 7]].all()


@pytest.mark.parametrize(
    ("images", "message"),
    [(["photo.png"], r"images\[0\] is a str, not a PIL image: pass PIL images, or an ImageList of files \(list_images\)"),
     ([np.zeros((4, 4, 3))], r"images\[0\] is a ndarray, not a PIL image")],
)
def test_compute_features_names_an_image_of_another_type(images, message):
    with pytest.raises(TypeError, match=message):
        compute_features(make_tiny_model(), images)


@pytest.mark.parametrize("batch_size", [1.5, "2", True])
def test_compute_features_rejects_non_integer_batch_size(batch_size):
    with pytest.raises(ValueError, match=rf"invalid batch size {batch_size!r}: use an integer of 1 or more"):
        compute_features(make_tiny_model(), [solid_image()], batch_size=batch_size)


def solid_image():
    from PIL import Image

    return Image.new("RGB", (9, 9), (10, 20, 30))


def write_animated_gif(path, seed, n_frames=3):
    """Write a GIF of ``n_frames`` random 12 x 12 frames and return its frames as Pillow decodes them, in RGB."""
    rng = np.random.default_rng(seed)
    frames = [Image.fromarray(rng.integers(0, 256, size=(12, 12, 3), dtype=np.uint8)) for _ in range(n_frames)]
    frames[0].save(path, save_all=True, append_images=frames[1:])
    decoded = []
    with Image.open(path) as saved:
        assert saved.n_frames == n_frames
        for index in range(n_frames):
            saved.seek(index)
            decoded.append(saved.convert("RGB"))
    return decoded


def test_animated_images_logged_once(tmp_path, tiny_model, caplog):
    folder = tmp_path / "images"
    write_random_images(folder, 3)
    frames_a = write_animated_gif(folder / "anim_a.gif", seed=1)
    write_animated_gif(folder / "anim_b.gif", seed=2, n_frames=2)
    write_animated_gif(folder / "still.gif", seed=3, n_frames=1)

    with caplog.at_level(logging.INFO, logger="dimalign"):
        result = extract_features(folder, tmp_path / "out", tiny_model, layers=["4:input"],
                                  extensions=[".png", ".gif"], batch_size=2)

    assert result.n_rows == 6
    messages = [record.getMessage() for record in caplog.records if "several frames" in record.getMessage()]
    assert messages == [
        f"2 of 6 image files have several frames (such as an animated GIF, APNG or WebP), and their "
        f"features come from the first frame only: {folder / 'anim_a.gif'}, {folder / 'anim_b.gif'}"
    ]
    assert all(record.levelno == logging.INFO for record in caplog.records if "several frames" in record.getMessage())
    features, table = load_features(tmp_path / "out", layer="4:input")
    expected = compute_features(tiny_model, frames_a, layers=["4:input"])["4:input"]
    row = features[table.object_ids.index("anim_a.gif")]
    # A batch of another size may change the last digit of float32 sums.
    np.testing.assert_allclose(row, expected[0], rtol=0, atol=1e-6)
    assert np.abs(row - expected[1]).max() > 1e-3


def test_animated_log_names_five(tmp_path, tiny_model, caplog):
    folder = tmp_path / "images"
    folder.mkdir()
    for index in range(7):
        write_animated_gif(folder / f"anim{index}.gif", seed=index, n_frames=2)

    with caplog.at_level(logging.INFO, logger="dimalign"):
        compute_features(tiny_model, find_images(folder, extensions=[".gif"]), layers=["4:input"])

    messages = [record.getMessage() for record in caplog.records if "several frames" in record.getMessage()]
    named = ", ".join(str(folder / f"anim{index}.gif") for index in range(5))
    assert messages == [
        f"7 of 7 image files have several frames (such as an animated GIF, APNG or WebP), and their "
        f"features come from the first frame only: {named} and 2 more"
    ]
