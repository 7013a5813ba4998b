"""The one reader of ``.npz`` archives that embeddings, saved fits and study results share."""

import zipfile

import numpy as np
import pytest

from dimalign.io.files import read_npz

ADVICE = "rerun the stage that writes it"


def read(path, required=("a",), optional=("b",)):
    return read_npz(path, required=required, optional=optional, description="an archive of arrays",
                    advice=ADVICE)


def test_npz_extra_arrays_ignored(tmp_path):
    path = tmp_path / "arrays.npz"
    np.savez(path, a=np.arange(3), b=np.ones(2), notes=np.array([{"x": 1}], dtype=object))

    arrays = read(path)

    assert sorted(arrays) == ["a", "b"]
    assert arrays["a"].tolist() == [0, 1, 2]
    assert arrays["b"].tolist() == [1.0, 1.0]


def test_npz_optional_array_absent(tmp_path):
    path = tmp_path / "arrays.npz"
    np.savez(path, a=np.arange(3))

    assert sorted(read(path)) == ["a"]


def test_npz_missing_arrays_named(tmp_path):
    path = tmp_path / "arrays.npz"
    np.savez(path, other=np.arange(3))

    with pytest.raises(ValueError) as error:
        read(path, required=("a", "c"))

    assert str(error.value) == (
        f"{path} has no arrays named 'a' and 'c' (found ['other']): {ADVICE}"
    )


@pytest.mark.parametrize(("content", "reason"), [
    ("empty", "the file is empty (0 bytes)"),
    ("npy", "it is a .npy file, not a .npz archive: give it a name ending in .npy"),
    ("text", "it is not a .npz archive, because it does not start with the zip signature"),
    ("objects", "its array 'a' contains Python objects, not numbers"),
])
def test_npz_unreadable_says_why(tmp_path, content, reason):
    path = tmp_path / "arrays.npz"
    if content == "empty":
        path.write_bytes(b"")
    elif content == "npy":
        with open(path, "wb") as handle:
            np.save(handle, np.ones(3))
    elif content == "text":
        path.write_text("0.5 0.25\n")
    else:
        np.savez(path, a=np.array([[1, 2]], dtype=object))

    with pytest.raises(ValueError) as error:
        read(path)

    if content == "npy":
        assert str(error.value) == f"{path} cannot be read as an archive of arrays: {reason}"
    else:
        assert str(error.value) == f"{path} cannot be read as an archive of arrays: {reason}; {ADVICE}"
    assert "allow_pickle" not in str(error.value)


def test_npz_cut_short_named(tmp_path):
    path = tmp_path / "arrays.npz"
    np.savez(path, a=np.arange(1000))
    path.write_bytes(path.read_bytes()[:100])

    with pytest.raises(ValueError) as error:
        read(path)

    message = str(error.value)
    assert message.startswith(f"{path} cannot be read as an archive of arrays (")
    assert message.endswith(f"), so the file is damaged: {ADVICE}")
    assert isinstance(error.value.__cause__, (zipfile.BadZipFile, EOFError, OSError, ValueError))


def test_npz_permission_error_unchanged(tmp_path, monkeypatch):
    path = tmp_path / "arrays.npz"
    np.savez(path, a=np.arange(3))

    def deny(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(np, "load", deny)
    with pytest.raises(PermissionError, match="Permission denied") as error:
        read(path)
    assert "damaged" not in str(error.value)


def test_npz_bad_compressed_data_named(tmp_path):
    """A compressed archive damaged inside an array raises zlib's error, which names no file."""
    path = tmp_path / "arrays.npz"
    np.savez_compressed(path, a=np.linspace(0, 1, 1000))
    data = bytearray(path.read_bytes())
    for position in range(200, 260):
        data[position] ^= 0xFF
    path.write_bytes(bytes(data))

    with pytest.raises(ValueError) as error:
        read(path)

    message = str(error.value)
    assert message.startswith(f"{path} cannot be read as an archive of arrays (")
    assert message.endswith(f"), so the file is damaged: {ADVICE}")
