import numpy as np
import pytest

from dimalign.io.runs import EmbeddingResult, load_embedding, save_embedding


def test_published_spose_tiny_negatives_set_to_zero(things_dir):
    with pytest.warns(UserWarning, match="set 68 negative weights"):
        result = load_embedding(things_dir / "spose_embedding_49d_sorted.txt")
    assert result.embedding.shape == (1854, 49)
    assert result.embedding.min() == 0.0


def test_clearly_negative_weight_rejected(tmp_path):
    path = tmp_path / "bad.npy"
    np.save(path, np.array([[0.5, 0.1], [0.2, -0.3]]))
    with pytest.raises(ValueError, match=r"lowest -0.3 at row 1, dimension 1"):
        load_embedding(path)


def test_nan_row_rejected(tmp_path):
    path = tmp_path / "nan.npy"
    np.save(path, np.array([[0.5, 0.1], [np.nan, 0.3]]))
    with pytest.raises(ValueError, match=r"rows \[1\] contain NaN or inf \(1 of 2 rows\)") as error:
        load_embedding(path)
    assert "fit again with a lower --lr" in str(error.value)


def test_run_directory_round_trip(tmp_path):
    result = EmbeddingResult(
        embedding=np.array([[1.0, 0.0], [0.5, 2.0]]), kept_dims=np.array([3, 1]),
        loc=np.zeros((2, 4)), scale=np.ones((2, 4)),
    )
    save_embedding(result, tmp_path)
    loaded = load_embedding(tmp_path)
    assert np.array_equal(loaded.embedding, result.embedding)
    assert loaded.kept_dims.tolist() == [3, 1]
    assert loaded.scale.shape == (2, 4)


def test_log_scale_round_trip_keeps_float32(tmp_path):
    """VICE.load needs log_scale exactly as the fit had it, in the fit's float type."""
    log_scale = np.array([[-3.1, -0.2], [-1.7, -5.9]], dtype=np.float32)
    save_embedding(EmbeddingResult(embedding=np.ones((2, 1)), log_scale=log_scale), tmp_path)

    loaded = load_embedding(tmp_path)

    assert loaded.log_scale.dtype == np.float32
    np.testing.assert_array_equal(loaded.log_scale, log_scale)


@pytest.mark.parametrize(
    ("text", "message"),
    [("# weights\n1 2 3\n4 5\n", "line 3 has 2 values, earlier lines 3"),
     ("1 2\n3 x\n", "line 2 has the value 'x', which is not a number")],
)
def test_bad_text_embedding_names_the_line(tmp_path, text, message):
    """Line numbers count as an editor does, comment lines included."""
    (tmp_path / "spose.txt").write_text(text)
    with pytest.raises(ValueError, match=f"spose.txt cannot be read as a text embedding: {message}"):
        load_embedding(tmp_path / "spose.txt")


@pytest.mark.parametrize(("name", "text"), [
    ("weights.csv", "0.5,0.25\n0,1.5\n"),
    ("weights.tsv", "0.5\t0.25\n0\t1.5\n"),
    ("weights.txt", "0.5 0.25\n0 1.5\n"),
])
def test_text_embedding_separators_follow_suffix(tmp_path, name, text):
    (tmp_path / name).write_text(text)
    np.testing.assert_array_equal(load_embedding(tmp_path / name).embedding, [[0.5, 0.25], [0, 1.5]])


def test_bad_csv_embedding_names_the_line(tmp_path):
    (tmp_path / "weights.csv").write_text("0.5,0.25\n0,1.5,2\n")
    with pytest.raises(ValueError, match="line 2 has 3 values, earlier lines 2; every line needs one "
                                         "value per column, separated by commas"):
        load_embedding(tmp_path / "weights.csv")


def test_damaged_embedding_and_feature_files_name_the_file(tmp_path):
    from dimalign.io.features import load_features

    for name in ("embedding.npz", "embedding.npy"):
        (tmp_path / name).write_text("garbage")
        with pytest.raises(ValueError, match=f"{name} cannot be read as an embedding") as caught:
            load_embedding(tmp_path / name)
        assert "allow_pickle" not in str(caught.value)
    (tmp_path / "features.npy").write_text("garbage")
    with pytest.raises(ValueError, match="features.npy cannot be read as a features array"):
        load_features(tmp_path / "features.npy")


@pytest.mark.parametrize("name", ["empty.npy", "empty.txt"])
def test_embedding_without_rows_rejected(tmp_path, recwarn, name):
    path = tmp_path / name
    if name.endswith(".npy"):
        np.save(path, np.zeros((0, 4)))
    else:
        path.write_text("# no weights\n")

    with pytest.raises(ValueError, match=f"{name}: the embedding has no rows"):
        load_embedding(path)
    assert not [warning for warning in recwarn if "no data" in str(warning.message)]


@pytest.mark.parametrize(("name", "text", "found", "expected"), [
    ("weights.csv", "0.5 0.25 0.125\n0 1.5 2\n", "spaces", "commas"),
    ("weights.csv", "0.5;0.25\n0;1.5\n", "semicolons", "commas"),
    ("weights.tsv", "0.5,0.25\n0,1.5\n", "commas", "tabs"),
])
def test_text_embedding_with_other_separator_says_so(tmp_path, name, text, found, expected):
    """A whole line read as one value would otherwise be quoted back as 'not a number'."""
    (tmp_path / name).write_text(text)
    with pytest.raises(ValueError, match=f"line 1 separates its values by {found}, but the values of a "
                                         f"{name[-4:]} file are separated by {expected}") as error:
        load_embedding(tmp_path / name)
    assert "not a number" not in str(error.value)


def test_text_embedding_error_shortens_long_value(tmp_path):
    (tmp_path / "weights.txt").write_text("0.5 " + "x" * 500 + "\n")
    with pytest.raises(ValueError, match=r"line 1 has the value 'x{20,60}\.\.\.', which is not a number") as error:
        load_embedding(tmp_path / "weights.txt")
    assert len(str(error.value)) < 300


def test_abbreviate_shared_by_messages(tmp_path):
    """One function shortens the quoted values of file and study messages, with the same texts as before."""
    from dimalign.io.files import abbreviate
    from dimalign.labeling import analysis, study, summary

    assert abbreviate("x" * 60) == "x" * 60
    assert abbreviate("x" * 61) == "x" * 60 + "..."
    assert abbreviate("abcdef", 3) == "abc..."
    assert study.abbreviate is abbreviate
    assert summary.abbreviate is abbreviate
    assert analysis.abbreviate is abbreviate
    (tmp_path / "weights.txt").write_text("0.5 " + "y" * 41 + "\n")
    with pytest.raises(ValueError, match=f"^{tmp_path / 'weights.txt'} cannot be read as a text embedding: line 1 "
                                         f"has the value '{'y' * 40}\\.\\.\\.', which is not a number"):
        load_embedding(tmp_path / "weights.txt")


def test_text_embedding_with_commas_in_txt_says_so(tmp_path):
    (tmp_path / "weights.txt").write_text("0.5,0.25\n0,1.5\n")
    with pytest.raises(ValueError, match="line 1 separates its values by commas, but the values of this "
                                         "file are read as separated by spaces"):
        load_embedding(tmp_path / "weights.txt")


def test_run_directory_round_trip_keeps_float64_weights(tmp_path):
    """Weights of a float64 fit must come back unchanged, not rounded to float32."""
    embedding = np.array([[0.1, 1 / 3], [2.0 + 1e-12, 0.0]])
    save_embedding(EmbeddingResult(embedding=embedding), tmp_path)
    np.testing.assert_array_equal(load_embedding(tmp_path).embedding, embedding)


@pytest.mark.parametrize(
    ("embedding", "message"),
    [(np.array([[0.5, np.nan], [0.1, 0.2]]), r"embedding.npz: rows \[0\] contain NaN or inf"),
     (np.array([0.5, 0.1]), r"embedding.npz: an embedding must be 2-D \(n_objects, n_dims\), got \(2,\)")],
)
def test_save_rejects_embedding_that_load_would_reject(tmp_path, embedding, message):
    with pytest.raises(ValueError, match=message):
        save_embedding(EmbeddingResult(embedding=embedding), tmp_path)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("name", "text", "line"), [
    ("weights.csv", "dim_0,dim_1\n0.5,0.25\n0,1.5\n", 1),
    ("weights.txt", "# fitted weights\ndim_0 dim_1\n0.5 0.25\n", 2),
])
def test_text_embedding_header_line_named(tmp_path, name, text, line):
    (tmp_path / name).write_text(text)

    with pytest.raises(ValueError) as error:
        load_embedding(tmp_path / name)

    assert str(error.value) == (
        f"{tmp_path / name} cannot be read as a text embedding: line {line} is a header "
        "('dim_0', 'dim_1'), but the file must contain numbers only: delete that line"
    )


def test_folder_without_embedding_named(tmp_path):
    with pytest.raises(FileNotFoundError) as error:
        load_embedding(tmp_path)

    assert str(error.value) == (
        f"{tmp_path} is a folder without embedding.npz, so it is not a run directory of 'dimalign fit': "
        "pass a run directory or an embedding file (.npz, .npy, .txt, .csv or .tsv)"
    )


def test_triplet_folder_as_embedding_named(tmp_path):
    np.save(tmp_path / "train.npy", np.array([[0, 1, 2]]))
    np.save(tmp_path / "val.npy", np.array([[2, 1, 0]]))

    with pytest.raises(FileNotFoundError) as error:
        load_embedding(tmp_path)

    assert str(error.value) == (
        f"{tmp_path} is a folder without embedding.npz, so it is not a run directory of 'dimalign fit': "
        "it contains triplets (train.npy), which 'dimalign fit' turns into an embedding"
    )


def test_missing_embedding_file_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"^embedding .*missing.npy not found$"):
        load_embedding(tmp_path / "missing.npy")


def test_human_triplets_rejected_as_embedding(things_dir):
    with pytest.raises(ValueError) as error:
        load_embedding(things_dir / "human_triplets.txt")

    assert str(error.value) == (
        f"{things_dir / 'human_triplets.txt'} looks like a triplet file, not an embedding: its 131552 rows "
        "of 3 distinct whole numbers each are object indices of odd-one-out triplets. An embedding has one "
        "row per object and one column per dimension, as 'dimalign fit' writes it. If these are embedding "
        "weights, save them as a float array with numpy.save"
    )


def test_float_embedding_of_whole_numbers_loads(tmp_path):
    np.save(tmp_path / "weights.npy", np.array([[0.0, 1.0, 2.0], [3.0, 1.0, 0.0]]))

    np.testing.assert_array_equal(load_embedding(tmp_path / "weights.npy").embedding, [[0, 1, 2], [3, 1, 0]])


def test_unfinished_run_as_embedding_named(tmp_path):
    (tmp_path / "checkpoint.pt").write_bytes(b"")

    with pytest.raises(FileNotFoundError) as error:
        load_embedding(tmp_path)

    assert str(error.value) == (
        f"{tmp_path} is a folder without embedding.npz, so it is not a run directory of 'dimalign fit': "
        "it contains checkpoint.pt, so its fit has not finished. Finish it with 'dimalign fit ... --resume' "
        "and the same triplets and settings"
    )


@pytest.mark.parametrize(("name", "text"), [
    ("weights.txt", "0.5 0.25\r\n0 1.5\r\n"),
    ("weights.csv", "0.5,0.25\n0,1.5\n"),
])
def test_text_embedding_with_byte_order_mark(tmp_path, name, text):
    """Spreadsheet programs and Windows editors start UTF-8 text with a byte order mark."""
    (tmp_path / name).write_bytes(b"\xef\xbb\xbf" + text.encode("utf-8"))

    np.testing.assert_array_equal(load_embedding(tmp_path / name).embedding, [[0.5, 0.25], [0, 1.5]])


def test_gzip_text_embedding_says_compressed(tmp_path):
    import gzip

    (tmp_path / "weights.txt").write_bytes(gzip.compress(b"0.5 0.25\n0 1.5\n"))

    with pytest.raises(ValueError) as error:
        load_embedding(tmp_path / "weights.txt")

    assert str(error.value) == (
        f"{tmp_path / 'weights.txt'} cannot be read as a text embedding: it is gzip-compressed, "
        "not text: decompress it first (gunzip)"
    )


def test_hdf5_embedding_not_called_header(tmp_path):
    import h5py

    with h5py.File(tmp_path / "weights.h5", "w") as handle:
        handle["embedding"] = np.ones((3, 2))

    with pytest.raises(ValueError) as error:
        load_embedding(tmp_path / "weights.h5")

    assert str(error.value) == (
        f"{tmp_path / 'weights.h5'} cannot be read as a text embedding: it is an HDF5 file, not "
        "text: save the array with numpy.save as a .npy file"
    )


def test_latin1_text_embedding_names_byte(tmp_path):
    (tmp_path / "weights.txt").write_bytes("# Gr\xf6\xdfe\n0.5 0.25\n".encode("latin-1"))

    with pytest.raises(ValueError) as error:
        load_embedding(tmp_path / "weights.txt")

    assert str(error.value) == (
        f"{tmp_path / 'weights.txt'} cannot be read as a text embedding: it is not UTF-8 text "
        "(byte 0xf6 at offset 4): save it as UTF-8"
    )


def test_text_embedding_cut_in_a_character(tmp_path):
    # 0xc3 starts a two-byte character that the end of the file cuts off.
    (tmp_path / "weights.txt").write_bytes(b"0.5 0.25\n0 1.5\xc3")

    with pytest.raises(ValueError) as error:
        load_embedding(tmp_path / "weights.txt")

    assert str(error.value) == (
        f"{tmp_path / 'weights.txt'} cannot be read as a text embedding: it is not UTF-8 text "
        "(byte 0xc3 at offset 14): save it as UTF-8"
    )


def test_utf16_text_embedding_names_encoding(tmp_path):
    (tmp_path / "weights.txt").write_bytes("0.5 0.25\n0 1.5\n".encode("utf-16-le"))

    with pytest.raises(ValueError) as error:
        load_embedding(tmp_path / "weights.txt")

    assert str(error.value) == (
        f"{tmp_path / 'weights.txt'} cannot be read as a text embedding: it contains NUL bytes "
        "(the first at offset 1), as UTF-16 text and binary files do: save it as UTF-8 text"
    )


@pytest.mark.parametrize(("content", "reason"), [
    ("empty", "the file is empty (0 bytes)"),
    ("objects", "it contains Python objects, not numbers"),
    ("cut", "it is damaged or cut short"),
])
def test_unreadable_npy_embedding_says_why(tmp_path, content, reason):
    path = tmp_path / "weights.npy"
    if content == "empty":
        path.write_bytes(b"")
    elif content == "objects":
        np.save(path, np.array([[0.5, 0.25], [0, 1.5]], dtype=object), allow_pickle=True)
    else:
        np.save(path, np.ones((20, 4)))
        path.write_bytes(path.read_bytes()[:200])

    with pytest.raises(ValueError) as error:
        load_embedding(path)

    message = str(error.value)
    assert message.startswith(f"{path} cannot be read as an embedding: {reason}")
    assert message.endswith("; save the weights with numpy.save")
    assert "allow_pickle" not in message


@pytest.mark.parametrize("name", ["weights.npy", "weights.npz"])
def test_unreadable_embedding_not_called_damaged(tmp_path, monkeypatch, name):
    path = tmp_path / name
    np.save(path, np.ones((4, 2))) if name.endswith(".npy") else np.savez(path, embedding=np.ones((4, 2)))

    def deny(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(np, "load", deny)
    with pytest.raises(PermissionError, match="Permission denied") as caught:
        load_embedding(path)
    assert "damaged" not in str(caught.value)


def test_npz_without_embedding_array_says_how(tmp_path):
    np.savez(tmp_path / "weights.npz", np.ones((3, 2)))

    with pytest.raises(ValueError) as error:
        load_embedding(tmp_path / "weights.npz")

    assert str(error.value) == (
        f"{tmp_path / 'weights.npz'} has no array named 'embedding' (found ['arr_0']): save the "
        "weights under that name, numpy.savez(path, embedding=weights), or as a .npy file"
    )


def test_embedding_link_loop_named(tmp_path):
    (tmp_path / "first.npy").symlink_to(tmp_path / "second.npy")
    (tmp_path / "second.npy").symlink_to(tmp_path / "first.npy")

    with pytest.raises(OSError) as error:
        load_embedding(tmp_path / "first.npy")

    assert str(error.value) == (
        f"embedding {tmp_path / 'first.npy'} cannot be opened: it is a loop of symbolic links"
    )


def test_embedding_dangling_link_named(tmp_path):
    (tmp_path / "weights.npy").symlink_to(tmp_path / "moved.npy")

    with pytest.raises(FileNotFoundError) as error:
        load_embedding(tmp_path / "weights.npy")

    assert str(error.value) == (
        f"embedding {tmp_path / 'weights.npy'} not found: it is a symbolic link to "
        f"{tmp_path / 'moved.npy'}, which does not exist"
    )


@pytest.mark.parametrize(("name", "text", "value", "separators"), [
    ("weights.txt", "0,5 0,25\n0 1,5\n", "0,5", "spaces"),
    ("weights.csv", "0,5;0,25\n0;1,5\n", "0,5", "commas"),
])
def test_decimal_commas_not_called_separators(tmp_path, name, text, value, separators):
    """Replacing decimal commas by separators, as a message about separators suggests, would split each value."""
    (tmp_path / name).write_text(text)

    with pytest.raises(ValueError) as error:
        load_embedding(tmp_path / name)

    assert str(error.value) == (
        f"{tmp_path / name} cannot be read as a text embedding: line 1 has the value '{value}', "
        "whose comma is a decimal comma or separates two values: write numbers with a decimal "
        f"point (0.5) and separate the values by {separators}"
    )


@pytest.mark.parametrize(("content", "reason"), [
    ("npy", "it is a .npy file, not a .npz archive: give it a name ending in .npy"),
    ("empty", "the file is empty (0 bytes); save the weights as a float array with "
              "numpy.savez(path, embedding=weights)"),
    ("text", "it is not a .npz archive, because it does not start with the zip signature; save the "
             "weights as a float array with numpy.savez(path, embedding=weights)"),
    ("objects", "its array 'embedding' contains Python objects, not numbers; save the weights as a "
                "float array with numpy.savez(path, embedding=weights)"),
])
def test_unreadable_npz_embedding_says_why(tmp_path, content, reason):
    path = tmp_path / "weights.npz"
    if content == "npy":
        with open(path, "wb") as handle:
            np.save(handle, np.ones((3, 2)))
    elif content == "empty":
        path.write_bytes(b"")
    elif content == "text":
        path.write_text("0.5 0.25\n")
    else:
        np.savez(path, embedding=np.array([[1, 2], [3, 4]], dtype=object))

    with pytest.raises(ValueError) as error:
        load_embedding(path)

    assert str(error.value) == f"{path} cannot be read as an embedding: {reason}"


@pytest.mark.parametrize(("name", "text", "problem"), [
    ("weights.csv", "0.5,0.25,\n0,1.5\n", "line 2 does not end with a comma, but line 1 does: end "
                                           "every line with a comma, or none"),
    ("weights.csv", "0.5,0.25\r\n0,1.5,\r\n", "line 2 ends with a comma, but line 1 does not: end every "
                                                "line with a comma, or none"),
    ("weights.csv", "0.5,0.25,,\n0,1.5,,\n", "line 1 ends with more than one comma, which leaves its last "
                                                "value empty: end each line with one comma at most"),
    ("weights.csv", "0.5,0.25\n0,,1.5\n", "line 2 has an empty value in column 2, between two commas: "
                                          "fill in the value"),
    ("weights.csv", ",0.5,0.25\n", "line 1 starts with a comma, which leaves its first value empty: "
                                    "delete that comma"),
])
def test_empty_text_value_named(tmp_path, name, text, problem):
    (tmp_path / name).write_text(text)

    with pytest.raises(ValueError) as error:
        load_embedding(tmp_path / name)

    assert str(error.value) == f"{tmp_path / name} cannot be read as a text embedding: {problem}"


@pytest.mark.parametrize(("name", "text"), [
    ("weights.csv", "0.5,0.25,\n0,1.5,\n"),
    ("weights.csv", "0.5,0.25,\r\n0,1.5,\r\n"),
    ("weights.tsv", "0.5\t0.25\t\r\n0\t1.5\t\r\n"),
    ("weights.tsv", "0.5\t0.25\r\n0\t1.5\t\r\n"),
    ("weights.csv", "0.5,0.25,\n0,1.5,"),
    ("weights.csv", "0.5,0.25\n0,1.5\n\n \n\t\n"),
    ("weights.csv", "0.5,0.25,\r\n0,1.5,\r\n\r\n"),
    ("weights.txt", "0.5\t 0.25 \r\n0 \t1.5\t\r\n"),
])
def test_text_embedding_export_artefacts_load(tmp_path, name, text):
    """A separator at the end of every line, Windows line ends and blank final lines lose no value."""
    (tmp_path / name).write_bytes(text.encode())

    result = load_embedding(tmp_path / name)

    assert result.embedding.tolist() == [[0.5, 0.25], [0.0, 1.5]]


def test_text_embedding_beyond_memory_rejected(tmp_path, monkeypatch):
    from dimalign.io import files

    path = tmp_path / "weights.csv"
    path.write_text("0.5,0.25\n" * 100)
    monkeypatch.setattr(files, "available_memory_bytes", lambda: 1000)

    with pytest.raises(ValueError) as error:
        load_embedding(path)

    assert str(error.value) == (
        f"{path} needs about 1.6 kB of memory as an array of 100 rows and 2 columns of float64 (an "
        "estimate from the file size and its first lines), but 1.0 kB is available: free memory, or "
        "run on a machine with more"
    )
