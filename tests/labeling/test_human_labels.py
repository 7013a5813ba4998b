"""Published labels of the human SPoSE dimensions."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.io import savemat

from dimalign.labeling.human_labels import load_dimension_labels


def test_labels_66_match_embedding(shared_data):
    # Read with numpy: the published file has a few tiny negative weights that load_embedding rejects.
    n_dims = np.loadtxt(shared_data / "things" / "spose_embedding_66d_sorted.txt", max_rows=1).size
    labels = load_dimension_labels(shared_data / "things" / "labels_66.txt", n_dims)
    assert len(labels) == 66
    assert labels[:3] == ["metallic/artificial", "food-related", "animal-related"]
    assert all(label == label.strip() and label for label in labels)


def test_labels_49_from_mat_file(shared_data):
    labels = load_dimension_labels(shared_data / "things" / "labels_49.mat", 49)
    assert len(labels) == 49
    assert labels[0] == "made of metal / artificial / hard"
    assert labels[2] == "animal-related / organic"


def test_count_mismatch_names_both_numbers(shared_data):
    with pytest.raises(ValueError, match="has 66 labels but the embedding has 49 dimensions"):
        load_dimension_labels(shared_data / "things" / "labels_66.txt", 49)
    with pytest.raises(ValueError, match="has 49 labels but the embedding has 66 dimensions"):
        load_dimension_labels(shared_data / "things" / "labels_49.mat", 66)


def test_empty_label_rejected(tmp_path):
    (tmp_path / "labels.txt").write_text("red\n\nround\n\n\n")
    with pytest.raises(ValueError, match=r"labels \[2\] \(1-based\) are empty"):
        load_dimension_labels(tmp_path / "labels.txt")


def test_mat_char_matrix_and_other_names(tmp_path):
    savemat(tmp_path / "names.mat", {"dimension_names": np.array(["red  ", "round"])})
    assert load_dimension_labels(tmp_path / "names.mat", 2) == ["red", "round"]
    savemat(tmp_path / "two.mat", {"a": np.array(["x"]), "b": np.array(["y"])})
    with pytest.raises(ValueError, match="no variable named 'labels'"):
        load_dimension_labels(tmp_path / "two.mat")


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        load_dimension_labels(tmp_path / "nothing.txt")


def test_non_utf8_labels_named(tmp_path):
    path = tmp_path / "labels.txt"
    path.write_bytes(b"red\n\xffblue\n")
    with pytest.raises(ValueError, match=f"{path} is not UTF-8 text \\(byte 0xff at offset 4\\)"):
        load_dimension_labels(path)


def test_text_labels_with_byte_order_mark(tmp_path):
    path = tmp_path / "labels.txt"
    path.write_bytes("\ufeffred\nround\n".encode())
    assert load_dimension_labels(path) == ["red", "round"]


@pytest.mark.parametrize(
    ("text", "line", "code"),
    [("red\tblue\nround\n", 1, "U+0009"), ("red\nro\x00und\n", 2, "U+0000"), ("red\x85blue\nround\n", 1, "U+0085")],
)
def test_text_labels_with_control_characters_rejected(tmp_path, text, line, code):
    # A tab or line break inside a label would break the index<TAB>label output of `labels names`.
    path = tmp_path / "labels.txt"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ValueError) as raised:
        load_dimension_labels(path)
    assert f"{path}: label {line} (1-based) contains the control character {code}" in str(raised.value)


@pytest.mark.parametrize("text", ["", "\n\n", "\ufeff"])
def test_file_without_labels_rejected(tmp_path, text):
    path = tmp_path / "labels.txt"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ValueError, match=f"{path} contains no labels: give one label per dimension"):
        load_dimension_labels(path)


@pytest.mark.parametrize("cut", [None, 200])
def test_damaged_mat_file_named(tmp_path, shared_data, cut):
    path = tmp_path / "labels.mat"
    if cut is None:
        path.write_bytes(b"not a MATLAB file")
    else:
        path.write_bytes((shared_data / "things" / "labels_49.mat").read_bytes()[:cut])
    with pytest.raises(ValueError) as raised:
        load_dimension_labels(path)
    assert f"{path} is not a readable MATLAB file" in str(raised.value)


def test_mat_file_without_variables_named(tmp_path):
    path = tmp_path / "labels.mat"
    savemat(path, {})
    with pytest.raises(ValueError) as raised:
        load_dimension_labels(path)
    assert str(raised.value) == f"{path} contains no variables: save the labels as the variable 'labels'"


def test_mat_cell_matrix_rejected(tmp_path):
    path = tmp_path / "labels.mat"
    savemat(path, {"labels": np.array([["a", "bb"], ["c", "d"]], dtype=object)})
    with pytest.raises(ValueError) as raised:
        load_dimension_labels(path)
    assert f"{path}: the labels are a 2 x 2 cell array, but one label per dimension needs a vector" in str(
        raised.value
    )
