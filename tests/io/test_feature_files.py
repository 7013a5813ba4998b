"""Feature files: checking a requested layer with check_layer_choice."""

from __future__ import annotations

import json

import numpy as np
import pytest

from dimalign.io.features import check_layer_choice, load_features


def test_single_layer_file_rejects_layer(tmp_path):
    np.save(tmp_path / "features.npy", np.ones((4, 2)))

    with pytest.raises(ValueError, match="layer 'foo' cannot be chosen"):
        check_layer_choice(tmp_path / "features.npy", "foo")
    with pytest.raises(ValueError, match="layer 'foo' cannot be chosen"):
        check_layer_choice(tmp_path, "foo")


def test_single_layer_folder_accepts_its_layer(tmp_path):
    np.save(tmp_path / "features.npy", np.ones((4, 2)))
    (tmp_path / "manifest.json").write_text(
        json.dumps({"step": "extract", "settings": {"layer": "fc"}}), encoding="utf-8"
    )

    check_layer_choice(tmp_path, "fc")

    with pytest.raises(ValueError, match="contains layer 'fc'"):
        check_layer_choice(tmp_path, "foo")


def test_layer_folder_without_layer_lists_the_layers(tmp_path):
    from dimalign.io.features import load_features

    for layer in ("features_30", "classifier_4"):
        np.save(tmp_path / f"features_{layer}.npy", np.ones((3, 2)))
    with pytest.raises(FileNotFoundError, match=r"name the layer \(--layer\): classifier_4, features_30"):
        load_features(tmp_path)
    assert load_features(tmp_path, layer="classifier_4")[0].shape == (3, 2)


def test_complex_features_rejected(tmp_path):
    np.save(tmp_path / "features.npy", np.ones((3, 2)) * 1j)

    with pytest.raises(ValueError, match="features must be real numbers, got dtype complex128"):
        load_features(tmp_path / "features.npy")


def test_unreadable_features_file_is_not_called_damaged(tmp_path, monkeypatch):
    path = tmp_path / "features.npy"
    np.save(path, np.ones((4, 2)))

    def deny(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(np, "load", deny)
    with pytest.raises(PermissionError, match="Permission denied") as caught:
        load_features(path)
    assert "damaged" not in str(caught.value)


def test_text_named_npy_features_give_no_pickle_advice(tmp_path):
    (tmp_path / "features.npy").write_text("0.5 1.5\n")

    with pytest.raises(ValueError, match="features.npy cannot be read as a features array: it is not a .npy file") as caught:
        load_features(tmp_path / "features.npy")
    assert "allow_pickle" not in str(caught.value)


def test_human_triplets_rejected_as_features(things_dir):
    with pytest.raises(ValueError) as caught:
        load_features(things_dir / "human_triplets.txt")
    message = str(caught.value)
    assert "human_triplets.txt looks like a triplet file, not features" in message
    assert "131552 rows of 3 distinct whole numbers" in message
    assert "'dimalign fit'" in message
    assert "dimalign import-triplets" in message


def test_triplet_npy_rejected_as_features(tmp_path):
    np.save(tmp_path / "train.npy", np.array([[0, 1, 2], [3, 1, 0]], dtype=np.int64))

    with pytest.raises(ValueError, match=r"train.npy looks like a triplet file, not features: its 2 rows"):
        load_features(tmp_path / "train.npy")


def test_whole_number_features_as_float_npy_load(tmp_path):
    features = np.array([[0.0, 1.0, 2.0], [3.0, 1.0, 0.0]])
    np.save(tmp_path / "features.npy", features)

    loaded, table = load_features(tmp_path / "features.npy")

    np.testing.assert_array_equal(loaded, features)
    assert table is None


def test_feature_text_with_repeated_values_loads(tmp_path):
    # Rows with a repeated value cannot be triplets, so the file is features.
    (tmp_path / "features.txt").write_text("0 1 2\n3 3 0\n", encoding="utf-8")

    loaded, _ = load_features(tmp_path / "features.txt")

    np.testing.assert_array_equal(loaded, [[0, 1, 2], [3, 3, 0]])


def test_simulate_rejects_human_triplets(tmp_path, things_dir):
    from dimalign.cli import main

    status = main(["simulate", str(things_dir / "human_triplets.txt"), "-o", str(tmp_path / "out"), "--n-triplets", "100"])

    assert status == 1
    assert not (tmp_path / "out").exists()


def test_text_features_with_byte_order_mark(tmp_path):
    (tmp_path / "features.txt").write_bytes(b"\xef\xbb\xbf0.5 0.25\r\n0 1.5\r\n")

    loaded, _ = load_features(tmp_path / "features.txt")

    np.testing.assert_array_equal(loaded, [[0.5, 0.25], [0, 1.5]])


def test_gzip_text_features_say_compressed(tmp_path):
    import gzip

    (tmp_path / "features.txt").write_bytes(gzip.compress(b"0.5 0.25\n0 1.5\n"))

    with pytest.raises(ValueError) as error:
        load_features(tmp_path / "features.txt")

    assert str(error.value) == (
        f"{tmp_path / 'features.txt'} cannot be read as a features table: it is gzip-compressed, "
        "not text: decompress it first (gunzip)"
    )


def test_empty_text_features_without_warning(tmp_path, recwarn):
    (tmp_path / "features.txt").write_text("# no features\n", encoding="utf-8")

    loaded, _ = load_features(tmp_path / "features.txt")

    assert loaded.shape[0] == 0
    assert not [warning for warning in recwarn if "no data" in str(warning.message)]


def test_hdf5_without_datasets_says_none(tmp_path):
    import h5py

    with h5py.File(tmp_path / "features.h5", "w") as handle:
        handle.create_group("empty")

    with pytest.raises(ValueError) as error:
        load_features(tmp_path / "features.h5")

    assert str(error.value) == (
        f"{tmp_path / 'features.h5'} contains no datasets, so it has no features: write the "
        "features of each layer as a dataset of shape (n_objects, n_features)"
    )


@pytest.mark.parametrize("content", ["cut", "text"])
def test_damaged_hdf5_features_named(tmp_path, content):
    import h5py

    path = tmp_path / "features.h5"
    with h5py.File(path, "w") as handle:
        handle["fc"] = np.ones((4, 2))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if content == "cut" else b"0.5 0.25\n0 1.5\n")

    with pytest.raises(ValueError) as error:
        load_features(path)

    message = str(error.value)
    assert message.startswith(f"{path} cannot be read as an HDF5 file (")
    assert message.endswith("): it is damaged or not HDF5; write the features again")


def test_damaged_hdf5_dataset_named(tmp_path):
    """Damaged compressed data fails only when the dataset is read, after the file opened."""
    import h5py

    path = tmp_path / "features.h5"
    with h5py.File(path, "w") as handle:
        handle.create_dataset("fc", data=np.linspace(0, 1, 100_000).reshape(2000, 50), chunks=(100, 50),
                              compression="gzip")
    data = bytearray(path.read_bytes())
    for position in range(len(data) // 2, len(data) // 2 + 2000):
        data[position] ^= 0xFF
    path.write_bytes(bytes(data))

    with pytest.raises(ValueError) as error:
        load_features(path)

    message = str(error.value)
    assert message.startswith(f"{path}: dataset 'fc' cannot be read (")
    assert message.endswith("), so the file is damaged: write the features again")


def test_hdf5_group_as_layer_rejected(tmp_path):
    import h5py

    with h5py.File(tmp_path / "features.h5", "w") as handle:
        handle.create_group("block1")["conv"] = np.ones((4, 2))

    with pytest.raises(ValueError) as error:
        load_features(tmp_path / "features.h5", layer="block1")

    assert str(error.value) == (
        f"'block1' in {tmp_path / 'features.h5'} is a group, not a dataset: choose one of the "
        "datasets ['block1/conv'] with layer=NAME (CLI: --layer NAME)"
    )
    assert load_features(tmp_path / "features.h5", layer="block1/conv")[0].shape == (4, 2)


def test_features_link_loop_named(tmp_path):
    (tmp_path / "features.npy").symlink_to(tmp_path / "features.npy")

    with pytest.raises(OSError) as error:
        load_features(tmp_path / "features.npy")

    assert str(error.value) == (
        f"features file {tmp_path / 'features.npy'} cannot be opened: it is a loop of symbolic links"
    )


def test_short_feature_table_gives_advice(tmp_path):
    np.save(tmp_path / "features.npy", np.ones((4, 2)))
    (tmp_path / "objects.tsv").write_text("a\nb\n", encoding="utf-8")

    with pytest.raises(ValueError) as error:
        load_features(tmp_path)

    assert str(error.value) == (
        f"{tmp_path / 'features.npy'} has 4 rows but {tmp_path / 'objects.tsv'} lists 2 objects; "
        "the table must name the feature rows in order: correct it, or name the rows with another "
        "table (simulate and map: --objects)"
    )


def test_list_of_names_not_called_header(things_dir):
    with pytest.raises(ValueError) as error:
        load_features(things_dir / "unique_id.txt")

    assert str(error.value) == (
        f"{things_dir / 'unique_id.txt'} cannot be read as a features table: line 1 ('aardvark') and "
        "line 2 ('abacus') contain no numbers, so the file is not a table of numbers: check that it is "
        "the right file"
    )


def test_mat_file_as_features_named(tmp_path, things_dir):
    import shutil

    shutil.copy(things_dir / "RDM48_triplet.mat", tmp_path / "features.txt")

    with pytest.raises(ValueError) as error:
        load_features(tmp_path / "features.txt")

    assert str(error.value) == (
        f"{tmp_path / 'features.txt'} cannot be read as a features table: it is a MATLAB file, not "
        "text: read it with scipy.io.loadmat and save the array with numpy.save as a .npy file"
    )


def test_run_directory_as_features_named(tmp_path):
    from dimalign.io.runs import EmbeddingResult, save_embedding

    save_embedding(EmbeddingResult(embedding=np.ones((4, 2))), tmp_path)

    with pytest.raises(FileNotFoundError) as error:
        load_features(tmp_path)

    assert str(error.value) == (
        f"no features file in {tmp_path}: expected one of features.npy, features.h5; the folder is a run "
        "directory of 'dimalign fit', so to use its embedding as features, save it as a .npy file: "
        "numpy.save('embedding.npy', numpy.load('RUN/embedding.npz')['embedding'])"
    )


def test_npz_features_say_how_to_convert(tmp_path):
    np.savez(tmp_path / "weights.npz", embedding=np.ones((4, 2)))

    with pytest.raises(ValueError) as error:
        load_features(tmp_path / "weights.npz")

    assert str(error.value) == (
        f"unsupported features file {tmp_path / 'weights.npz'}: use one of .npy, .h5, .hdf5, .txt; "
        "save one array of the .npz archive as a .npy file: "
        "numpy.save('features.npy', numpy.load('FILE.npz')['NAME'])"
    )


@pytest.mark.parametrize("text", [
    "1 2 \t\r\n3 4 \t\r\n",
    "1\t2 \n3 \t 4",
    "1 2\n3 4\n\n \n\t\n",
])
def test_text_features_export_artefacts_load(tmp_path, text):
    (tmp_path / "features.txt").write_bytes(text.encode())

    features, _ = load_features(tmp_path / "features.txt")

    assert features.tolist() == [[1.0, 2.0], [3.0, 4.0]]


def test_text_features_beyond_memory_rejected(tmp_path, monkeypatch):
    from dimalign.io import files

    path = tmp_path / "features.txt"
    path.write_text("1 2 3 4\n" * 1000)
    monkeypatch.setattr(files, "available_memory_bytes", lambda: 10_000)

    def never(*args, **kwargs):
        raise AssertionError("the file was parsed before the memory check")

    monkeypatch.setattr(np, "loadtxt", never)
    with pytest.raises(ValueError) as error:
        load_features(path)

    assert str(error.value) == (
        f"{path} needs about 32.0 kB of memory as an array of 1000 rows and 4 columns of float64 (an "
        "estimate from the file size and its first lines), but 10.0 kB is available: save the "
        "features as a .npy file, which is memory-mapped, on a machine with more memory"
    )


def test_short_first_line_estimate_loads(tmp_path, monkeypatch):
    """A first row of zeros, shorter than the others, does not inflate the memory estimate."""
    from dimalign.io import files

    path = tmp_path / "features.txt"
    path.write_text("0 0 0 0\n" + "0.123456789 0.123456789 0.123456789 0.123456789\n" * 999)
    # The array needs 32.0 kB. The first line alone gives 6,000 rows, 192 kB.
    monkeypatch.setattr(files, "available_memory_bytes", lambda: 40_000)

    features, _ = load_features(path)

    assert features.shape == (1000, 4)


def test_text_estimate_reads_later_lines(tmp_path, monkeypatch):
    from dimalign.io import files

    path = tmp_path / "features.txt"
    path.write_text("# features\n" + "0 0 0 0\n" + "0.123456789 0.123456789 0.123456789 0.123456789\n" * 999)
    monkeypatch.setattr(files, "available_memory_bytes", lambda: 10_000)

    with pytest.raises(ValueError) as error:
        load_features(path)

    assert str(error.value).startswith(
        f"{path} needs about 32.0 kB of memory as an array of 1000 rows and 4 columns of float64 (an "
        "estimate from the file size and its first lines), but 10.0 kB is available"
    )


def test_hdf5_features_beyond_memory_rejected(tmp_path, monkeypatch):
    import h5py

    from dimalign.io import files

    path = tmp_path / "features.h5"
    with h5py.File(path, "w") as handle:
        handle["fc"] = np.ones((1000, 4), dtype=np.float32)
    monkeypatch.setattr(files, "available_memory_bytes", lambda: 10_000)

    with pytest.raises(ValueError) as error:
        load_features(path)

    assert str(error.value) == (
        f"{path}: dataset 'fc' needs 16.0 kB of memory as an array of 1000 rows and 4 columns of "
        "float32, but 10.0 kB is available: save the features as a .npy file, which is "
        "memory-mapped, on a machine with more memory"
    )


def test_hdf5_features_within_memory_load(tmp_path, monkeypatch):
    import h5py

    from dimalign.io import files

    path = tmp_path / "features.h5"
    with h5py.File(path, "w") as handle:
        handle["fc"] = np.arange(8, dtype=np.float32).reshape(4, 2)
    monkeypatch.setattr(files, "available_memory_bytes", lambda: 10_000)

    features, _ = load_features(path)

    assert features.tolist() == [[0.0, 1.0], [2.0, 3.0], [4.0, 5.0], [6.0, 7.0]]


def test_hdf5_unknown_layer_says_what_to_do(tmp_path):
    import h5py

    path = tmp_path / "features.h5"
    with h5py.File(path, "w") as handle:
        handle["fc6"] = np.ones((3, 2))
        handle["fc7"] = np.ones((3, 2))

    with pytest.raises(ValueError) as error:
        load_features(path, layer="fc8")

    assert str(error.value) == (
        f"dataset 'fc8' not found in {path}; it contains ['fc6', 'fc7']: choose one of them with "
        "layer=NAME (CLI: --layer NAME)"
    )


def test_npy_read_whole_beyond_memory_rejected(tmp_path, monkeypatch):
    from dimalign.io import files

    path = tmp_path / "features.npy"
    np.save(path, np.ones((1000, 4)))
    monkeypatch.setattr(files, "available_memory_bytes", lambda: 10_000)

    with pytest.raises(ValueError) as error:
        load_features(path, mmap=False)

    assert str(error.value) == (
        f"{path} needs 32.0 kB of memory as an array of 1000 rows and 4 columns of float64, but 10.0 kB "
        "is available: pass mmap=True to read it memory-mapped, or run on a machine with more memory"
    )
    features, _ = load_features(path)
    assert features.shape == (1000, 4)


def test_comma_text_features_name_separator(tmp_path):
    """A .txt file is read as separated by spaces, also when its lines end with a comma."""
    path = tmp_path / "features.txt"
    path.write_text("1,2,\n3,4,\n")

    with pytest.raises(ValueError) as error:
        load_features(path)

    assert str(error.value) == (
        f"{path} cannot be read as a features table: line 1 separates its values by commas, but the "
        "values of this file are read as separated by spaces: save it with spaces between values"
    )


@pytest.mark.parametrize("suffix", [".pt", ".pth"])
def test_torch_features_say_how_to_convert(tmp_path, suffix):
    import torch

    torch.save(torch.ones(4, 2), tmp_path / f"features{suffix}")

    with pytest.raises(ValueError) as error:
        load_features(tmp_path / f"features{suffix}")

    assert str(error.value) == (
        f"unsupported features file {tmp_path / f'features{suffix}'}: use one of .npy, .h5, .hdf5, .txt; "
        "save a tensor saved with torch.save as a .npy file: "
        "numpy.save('features.npy', torch.load('FILE').detach().cpu().numpy())"
    )
