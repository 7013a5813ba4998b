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
