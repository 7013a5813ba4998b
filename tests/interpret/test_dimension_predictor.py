"""DimensionPredictor: the image -> features -> ridge map chain."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from torchvision import transforms as T

from dimalign.features.layers import pool_tensor
from dimalign.interpret.predictor import DimensionPredictor, ImagePreprocessing


def test_predictor_matches_manual_chain(conv_model, ridge_coefficients):
    coef, intercept = ridge_coefficients
    predictor = DimensionPredictor(conv_model, "3", coef, intercept, pooling="gap")
    images = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))

    with torch.no_grad():
        features = conv_model(images).mean(dim=(2, 3)).double().numpy()
        predicted = predictor(images).double().numpy()

    assert predicted.shape == (2, 5)
    np.testing.assert_allclose(predicted, features @ coef + intercept, rtol=1e-5, atol=1e-5)


def test_predictor_stops_at_layer(conv_model, ridge_coefficients):
    coef, intercept = ridge_coefficients
    later_calls = []
    conv_model.append(nn.Identity())
    conv_model[4].register_forward_hook(lambda *args: later_calls.append(1))
    predictor = DimensionPredictor(conv_model, "3", coef, intercept, pooling="gap")

    predictor(torch.rand(1, 3, 8, 8))

    assert later_calls == []


def test_predictor_flatten_pooling(conv_model):
    coef = np.ones((6 * 4 * 4, 2))
    predictor = DimensionPredictor(conv_model, "3", coef, np.zeros(2), pooling="flatten")
    images = torch.rand(1, 3, 4, 4)

    with torch.no_grad():
        expected = conv_model(images).flatten().sum().item()
        predicted = predictor(images)

    assert predicted.shape == (1, 2)
    assert predicted[0, 0].item() == pytest.approx(expected, rel=1e-5)


def test_predictor_parameters_frozen_eval(conv_model, ridge_coefficients):
    coef, intercept = ridge_coefficients
    predictor = DimensionPredictor(conv_model, "3", coef, intercept, pooling="gap")

    predictor.train()

    assert all(not parameter.requires_grad for parameter in predictor.parameters())
    assert not predictor.training
    assert not predictor.model.training


def test_predictor_gradient_reaches_pixels(conv_model, ridge_coefficients):
    coef, intercept = ridge_coefficients
    predictor = DimensionPredictor(conv_model, "3", coef, intercept, pooling="gap")
    images = torch.rand(1, 3, 8, 8, requires_grad=True)

    predictor(images)[0, 2].backward()

    assert images.grad is not None
    assert images.grad.abs().sum() > 0


def test_predictor_unknown_layer_lists_close_names(conv_model, ridge_coefficients):
    coef, intercept = ridge_coefficients
    nested = nn.Sequential()
    nested.add_module("features", conv_model)

    with pytest.raises(ValueError, match="features.3"):
        DimensionPredictor(nested, "features.33", coef, intercept, pooling="gap")


def test_predictor_feature_count_mismatch(conv_model):
    predictor = DimensionPredictor(conv_model, "3", np.ones((7, 2)), np.zeros(2), pooling="gap")

    with pytest.raises(ValueError, match="gives 6 features, but the map expects 7"):
        predictor(torch.rand(1, 3, 8, 8))


def test_predictor_intercept_shape_checked(conv_model):
    with pytest.raises(ValueError, match="expected \\(2,\\)"):
        DimensionPredictor(conv_model, "3", np.ones((6, 2)), np.zeros(3))


def test_predictor_rejects_nan_coefficients(conv_model):
    coef = np.ones((6, 3))
    coef[2, 1] = np.nan
    intercept = np.array([0.0, 0.0, np.inf])

    with pytest.raises(ValueError, match=r"dimensions \[1, 2\] contain NaN or inf"):
        DimensionPredictor(conv_model, "3", coef, intercept, pooling="gap")


@pytest.mark.parametrize(
    ("images", "message"),
    [
        (torch.full((1, 3, 8, 8), 200, dtype=torch.uint8), "got torch.uint8; divide 8-bit images by 255"),
        (torch.full((1, 3, 8, 8), 200.0), r"values in \[200, 200\] but must be in \[0, 1\]"),
        (torch.full((1, 3, 8, 8), -0.5), r"values in \[-0.5, -0.5\]"),
        (torch.full((1, 3, 8, 8), float("nan")), "NaN or inf"),
    ],
)
def test_predictor_rejects_images_outside_unit_range(conv_model, ridge_coefficients, images, message):
    coef, intercept = ridge_coefficients
    predictor = DimensionPredictor(conv_model, "3", coef, intercept, pooling="gap")

    with pytest.raises(ValueError, match=message):
        predictor(images)


def test_predictor_single_image(conv_model, ridge_coefficients):
    coef, intercept = ridge_coefficients
    predictor = DimensionPredictor(conv_model, "3", coef, intercept, pooling="gap")
    image = torch.rand(3, 8, 8)

    with torch.no_grad():
        single = predictor(image)
        batch = predictor(image.unsqueeze(0))

    assert single.shape == (5,)
    torch.testing.assert_close(single, batch[0])


def test_preprocessing_split_reproduces_transform(conv_model, ridge_coefficients):
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    transform = T.Compose([T.Resize(20), T.CenterCrop(16), T.ToTensor(), T.Normalize(mean, std)])
    preprocessing = ImagePreprocessing.from_transform(transform)
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, size=(30, 40, 3), dtype=np.uint8))
    coef, intercept = ridge_coefficients
    predictor = DimensionPredictor(conv_model, "3", coef, intercept, pooling="gap", preprocessing=preprocessing)

    raw = preprocessing.to_tensor(image)
    with torch.no_grad():
        through_predictor = predictor(raw.unsqueeze(0))
        through_transform = conv_model(transform(image).unsqueeze(0)).mean(dim=(2, 3))
    expected = through_transform.double().numpy() @ coef + intercept

    assert preprocessing.input_size == (16, 16)
    assert preprocessing.mean == mean
    assert tuple(raw.shape) == (3, 16, 16)
    assert float(raw.min()) >= 0.0
    assert float(raw.max()) <= 1.0
    np.testing.assert_allclose(through_predictor.double().numpy(), expected, rtol=1e-5, atol=1e-5)


def test_predictor_resizes_to_input_size(conv_model, ridge_coefficients):
    coef, intercept = ridge_coefficients
    preprocessing = ImagePreprocessing(input_size=(8, 8))
    predictor = DimensionPredictor(conv_model, "3", coef, intercept, pooling="gap", preprocessing=preprocessing)
    constant = torch.full((1, 3, 32, 32), 0.3)

    with torch.no_grad():
        resized = predictor(constant)
        direct = predictor(torch.full((1, 3, 8, 8), 0.3))

    torch.testing.assert_close(resized, direct)


def test_preprocessing_rejects_unknown_tensor_step():
    transform = T.Compose([T.ToTensor(), T.RandomErasing()])

    with pytest.raises(ValueError, match="RandomErasing"):
        ImagePreprocessing.from_transform(transform)


def test_preprocessing_load_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.png"):
        ImagePreprocessing().load(tmp_path / "missing.png")


def test_load_rejects_elongated_image(tmp_path):
    from PIL import Image

    strip = tmp_path / "strip.png"
    Image.new("L", (20000, 4)).save(strip)

    with pytest.raises(ValueError, match=r"cannot read image .*strip.png: 20000 x 4 pixels, an aspect ratio of 5000:1"):
        ImagePreprocessing().load(strip)


def test_preprocessing_load_uses_extraction_decoding(tmp_path):
    from PIL import Image

    rgba = np.zeros((4, 6, 4), np.uint8)
    rgba[..., 3] = 0  # fully transparent
    cutout = tmp_path / "cutout.png"
    Image.fromarray(rgba, "RGBA").save(cutout)
    exif = Image.Exif()
    exif[0x0112] = 6
    sideways = tmp_path / "sideways.png"
    Image.new("RGB", (6, 4)).save(sideways, exif=exif)

    default = ImagePreprocessing()
    chosen = ImagePreprocessing(background=(0, 0, 0), exif_transpose=False)

    assert default.load(cutout).min().item() == 1.0
    assert chosen.load(cutout).max().item() == 0.0
    assert tuple(default.load(sideways).shape) == (3, 6, 4)
    assert tuple(chosen.load(sideways).shape) == (3, 4, 6)


def test_predictor_raw_pooling_needs_vectors(conv_model):
    predictor = DimensionPredictor(conv_model, "3", np.ones((6, 2)), np.zeros(2), pooling="raw")

    with pytest.raises(ValueError, match="not \\(batch, features\\)"):
        predictor(torch.rand(1, 3, 8, 8))


def test_predictor_reads_layer_input(ridge_coefficients):
    coef, intercept = ridge_coefficients
    model = nn.Sequential(nn.Conv2d(3, 6, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 2))
    predictor = DimensionPredictor(model, "3:input", coef, intercept, pooling="raw")
    images = torch.rand(2, 3, 8, 8)

    with torch.no_grad():
        expected = model[:3](images).double().numpy() @ coef + intercept
        predicted = predictor(images).double().numpy()

    np.testing.assert_allclose(predicted, expected, rtol=1e-5, atol=1e-5)


def test_predictor_pooling_matches_feature_extraction(conv_model, ridge_coefficients):
    coef, intercept = ridge_coefficients
    predictor = DimensionPredictor(conv_model, "3", coef, intercept, pooling="gap")
    images = torch.rand(2, 3, 8, 8)

    with torch.no_grad():
        features = pool_tensor(conv_model(images), "gap")
        torch.testing.assert_close(predictor.features(images), features)


def write_manifest_json(folder, manifest):
    import json

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "manifest.json").write_text(json.dumps(manifest))


def test_map_settings_layer_pooling(tmp_path):
    import numpy as np

    from dimalign.interpret.predictor import map_settings
    from dimalign.io.files import sha256_file

    features = tmp_path / "extract" / "features_blocks.3.npy"
    write_manifest_json(features.parent, {"step": "extract", "settings": {
        "model": "efficientnet_lite0", "weights": "pretrained", "seed": 0,
        "layers": ["blocks.3", "head"], "pools": ["gap", "raw"]}})
    np.save(features, np.ones((3, 2)))
    map_dir = tmp_path / "map"
    write_manifest_json(map_dir, {
        "step": "map", "settings": {"model_name": "efficientnet_lite0", "layer": "blocks.3"},
        "inputs": {"features": {"path": str(features), "sha256": sha256_file(features)}}})
    assert map_settings(map_dir)["pooling"] == "gap"

    # Extracted again (other content): the folder's settings may no longer be the map's.
    np.save(features, np.zeros((3, 2)))
    with pytest.raises(ValueError, match="changed since the map .* was fitted on them"):
        map_settings(map_dir)


def test_map_settings_prefer_the_recorded_features_source(tmp_path):
    from dimalign.interpret.predictor import map_settings

    map_dir = tmp_path / "map"
    source = {"model": "vgg16", "weights": "random", "seed": 7, "layer": "classifier.4", "pooling": "flatten"}
    write_manifest_json(map_dir, {
        "step": "map", "settings": {"model_name": "vgg16", "layer": "classifier.4", "features_source": source},
        "inputs": {"features": {"path": str(tmp_path / "moved" / "features.npy"), "sha256": "0" * 64}}})
    assert map_settings(map_dir) == {
        "model": "vgg16", "weights": "random", "weights_sha256": None, "seed": 7, "layer": "classifier.4",
        "pooling": "flatten", "background": (255, 255, 255), "exif_transpose": True}


def test_map_settings_carry_image_decoding(tmp_path):
    from dimalign.interpret.predictor import extraction_settings, map_settings

    extracted = {"model": "vgg16", "weights": "random", "seed": 7, "layer": "classifier.4",
                 "pooling": "flatten", "background": [0, 0, 0], "exif_transpose": False}
    source = extraction_settings(extracted, None)
    map_dir = tmp_path / "map"
    write_manifest_json(map_dir, {
        "step": "map", "settings": {"model_name": "vgg16", "layer": "classifier.4", "features_source": source},
        "inputs": {}})

    settings = map_settings(map_dir)

    assert settings["background"] == (0, 0, 0)
    assert settings["exif_transpose"] is False


def test_map_without_weights_rejected(tmp_path):
    """torchvision's default is random weights, so guessing would explain another network."""
    from dimalign.interpret.predictor import map_settings

    map_dir = tmp_path / "map"
    np.save(tmp_path / "features.npy", np.zeros((2, 3)))  # Features of no dimalign extract folder.
    write_manifest_json(map_dir, {
        "step": "map", "settings": {"model_name": "vgg16", "layer": "classifier.4"},
        "inputs": {"features": {"path": str(tmp_path / "features.npy"), "sha256": "0" * 64}}})
    with pytest.raises(ValueError, match=r"records neither the weights .* features_source"):
        map_settings(map_dir)


def test_map_with_moved_features_names_them(tmp_path):
    from dimalign.interpret.predictor import map_settings

    map_dir = tmp_path / "map"
    moved = tmp_path / "features" / "features.npy"
    write_manifest_json(map_dir, {
        "step": "map", "settings": {"model_name": "vgg16", "layer": "classifier.4"},
        "inputs": {"features": {"path": str(moved), "sha256": "0" * 64}}})

    with pytest.raises(ValueError, match=f"its features input {moved} no longer exists"):
        map_settings(map_dir)


def test_from_map_dir_rejects_the_archive_file(tmp_path):
    archive = tmp_path / "map" / "ridge_map.npz"
    archive.parent.mkdir()
    archive.write_bytes(b"")

    with pytest.raises(ValueError) as error:
        DimensionPredictor.from_map_dir(archive)

    assert f"is a file; pass the folder that 'dimalign map' wrote ({archive.parent})" in str(error.value)


def test_predictor_on_real_photo_matches_manual_pipeline(shared_data, conv_model, ridge_coefficients):
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    transform = T.Compose([
        T.Resize(20, interpolation=T.InterpolationMode.BICUBIC),
        T.CenterCrop(16),
        T.ToTensor(),
        T.Normalize(mean, std),
    ])
    preprocessing = ImagePreprocessing.from_transform(transform)
    coef, intercept = ridge_coefficients
    predictor = DimensionPredictor(conv_model, "3", coef, intercept, pooling="gap", preprocessing=preprocessing)
    path = shared_data / "images" / "parrot.jpg"

    # By hand: shorter side to 20 (the longer one truncated, as torchvision does),
    # centre crop 16 x 16, scale to [0, 1], normalise, GAP of layer "3", then the map.
    photo = Image.open(path).convert("RGB")
    width, height = photo.size
    short, long = min(width, height), max(width, height)
    size = (20, int(20 * long / short)) if width <= height else (int(20 * long / short), 20)
    photo = photo.resize(size, Image.Resampling.BICUBIC)
    left, top = round((photo.width - 16) / 2), round((photo.height - 16) / 2)
    pixels = np.asarray(photo.crop((left, top, left + 16, top + 16)), dtype=np.float32) / 255.0
    normalised = (pixels - np.array(mean, dtype=np.float32)) / np.array(std, dtype=np.float32)
    with torch.no_grad():
        activations = conv_model(torch.from_numpy(normalised).permute(2, 0, 1)[None])
    expected = activations.mean(dim=(2, 3)).double().numpy() @ coef + intercept

    image = preprocessing.load(path)
    with torch.no_grad():
        predicted = predictor(image).double().numpy()

    assert tuple(image.shape) == (3, 16, 16)
    np.testing.assert_allclose(image.permute(1, 2, 0).numpy(), pixels, atol=1e-6)
    np.testing.assert_allclose(predicted, expected[0], rtol=1e-5, atol=1e-5)


def test_map_settings_ignore_object_table_folder(tmp_path):
    """A map of plain features whose --objects lies in an extract folder gets no model from that folder."""
    from dimalign.cli import main
    from dimalign.interpret.predictor import map_settings
    from dimalign.io.objects import ObjectTable, write_object_table
    from dimalign.io.runs import EmbeddingResult, save_embedding

    ids = [f"image{index}.png" for index in range(6)]
    extract = tmp_path / "extract"
    write_manifest_json(extract, {"step": "extract", "settings": {
        "model": "efficientnet_lite0", "weights": "pretrained", "seed": 0, "layers": ["avgpool"],
        "pools": ["flatten"]}})
    write_object_table(ObjectTable.from_ids(ids), extract / "objects.tsv")
    rng = np.random.default_rng(0)
    np.save(tmp_path / "features.npy", rng.normal(size=(6, 4)))
    run = tmp_path / "run"
    save_embedding(EmbeddingResult(embedding=rng.gamma(1.0, 1.0, size=(6, 2))), run)
    write_object_table(ObjectTable.from_ids(ids), run / "objects.tsv")
    assert main(["-q", "map", str(tmp_path / "features.npy"), "--objects", str(extract / "objects.tsv"),
                 "--embedding", str(run), "-o", str(tmp_path / "map"), "--layer", "avgpool",
                 "--folds", "2"]) == 0

    with pytest.raises(ValueError, match="records neither the weights of the model behind its features"):
        map_settings(tmp_path / "map")


def test_map_settings_old_source_reads_extraction(tmp_path):
    """A features_source written before it recorded the decoding leaves it to the extraction."""
    from dimalign.features.recorded import recorded_decoding
    from dimalign.interpret.predictor import map_settings

    features = tmp_path / "extract" / "features.npy"
    write_manifest_json(features.parent, {"step": "extract", "settings": {
        "model": "vgg16", "weights": "random", "seed": 7, "layer": "classifier.4", "pooling": "flatten",
        "background": [0, 0, 0], "exif_transpose": False}})
    np.save(features, np.ones((3, 2)))
    source = {"model": "vgg16", "weights": "random", "seed": 7, "layer": "classifier.4", "pooling": "flatten"}
    map_dir = tmp_path / "map"
    write_manifest_json(map_dir, {
        "step": "map", "settings": {"model_name": "vgg16", "layer": "classifier.4", "features_source": source},
        "inputs": {"features": {"path": str(features), "sha256": "0" * 64}}})

    settings = map_settings(map_dir)
    recorded = recorded_decoding(map_dir)

    assert settings["background"] == (0, 0, 0)
    assert settings["exif_transpose"] is False
    assert (recorded.background, recorded.exif_transpose) == ((0, 0, 0), False)


def test_predictor_rejects_map_without_dimensions(conv_model):
    with pytest.raises(ValueError, match=r"coef has shape \(6, 0\): the map predicts no dimension"):
        DimensionPredictor(conv_model, "3", np.ones((6, 0)), np.zeros(0), pooling="gap")


def test_from_map_dir_rejects_map_without_dimensions(tmp_path):
    map_dir = tmp_path / "map"
    map_dir.mkdir()
    alphas = np.logspace(-2, 6, 5)
    np.savez(
        map_dir / "ridge_map.npz", coef=np.ones((6, 0)), intercept=np.zeros(0), alpha=np.zeros(0),
        cv_r2=np.zeros(0), cv_scores=np.zeros((5, 0)), fold_scores=np.zeros((3, 5, 0)), alphas=alphas,
        target_ndim=np.int64(2),
    )

    with pytest.raises(ValueError) as error:
        DimensionPredictor.from_map_dir(map_dir)

    assert str(error.value).startswith(f"{map_dir / 'ridge_map.npz'} maps 6 features to no dimension")


def test_from_map_dir_rejects_changed_weights(tmp_path):
    import hashlib

    import torchvision

    from dimalign.analysis.ridge import RidgeMap

    weights = tmp_path / "squeezenet.pt"
    torch.manual_seed(0)
    torch.save(torchvision.models.squeezenet1_1(weights=None).state_dict(), weights)
    extracted_sha256 = hashlib.sha256(weights.read_bytes()).hexdigest()
    ridge = RidgeMap(alphas=[1.0], cv=2).fit(np.random.default_rng(0).normal(size=(6, 512)),
                                             np.random.default_rng(1).normal(size=(6, 2)))
    source = {"model": "squeezenet1_1", "weights": str(weights), "seed": 0, "layer": "features.12",
              "pooling": "gap", "weights_sha256": extracted_sha256}
    ridge.save(tmp_path / "map", features_source=source)
    assert DimensionPredictor.from_map_dir(tmp_path / "map").n_dims == 2

    torch.manual_seed(1)
    torch.save(torchvision.models.squeezenet1_1(weights=None).state_dict(), weights)

    with pytest.raises(ValueError) as error:
        DimensionPredictor.from_map_dir(tmp_path / "map")

    assert f"the weights {weights} have changed since the features of the map" in str(error.value)
    assert f"(SHA-256 {extracted_sha256} then" in str(error.value)


def test_extraction_settings_keep_weights_checksum():
    from dimalign.features.recorded import extraction_settings

    settings = {"model": "vgg16", "weights": "w.pt", "weights_sha256": "ab" * 32, "layer": "x"}

    assert extraction_settings(settings, None)["weights_sha256"] == "ab" * 32


def squeezenet_map(tmp_path, weights, record_checksum):
    """Save squeezenet weights (seed 0) and a ridge map whose features name them, with their SHA-256 or none."""
    import hashlib

    import torchvision

    from dimalign.analysis.ridge import RidgeMap

    torch.manual_seed(0)
    torch.save(torchvision.models.squeezenet1_1(weights=None).state_dict(), weights)
    ridge = RidgeMap(alphas=[1.0], cv=2).fit(np.random.default_rng(0).normal(size=(6, 512)),
                                             np.random.default_rng(1).normal(size=(6, 2)))
    source = {"model": "squeezenet1_1", "weights": str(weights), "seed": 0, "layer": "features.12",
              "pooling": "gap"}
    if record_checksum:
        source["weights_sha256"] = hashlib.sha256(weights.read_bytes()).hexdigest()
    ridge.save(tmp_path / "map", features_source=source)
    return tmp_path / "map"


def test_from_map_dir_checks_given_model(tmp_path):
    import hashlib
    import shutil

    import torchvision

    from dimalign.features import load_model

    weights = tmp_path / "squeezenet.pt"
    map_dir = squeezenet_map(tmp_path, weights, record_checksum=True)
    sha256 = hashlib.sha256(weights.read_bytes()).hexdigest()
    moved = tmp_path / "moved" / "squeezenet.pt"
    moved.parent.mkdir()
    shutil.copy(weights, moved)
    other = tmp_path / "retrained.pt"
    torch.manual_seed(1)
    torch.save(torchvision.models.squeezenet1_1(weights=None).state_dict(), other)

    same = DimensionPredictor.from_map_dir(map_dir, model=load_model("squeezenet1_1", weights=moved))
    with pytest.raises(ValueError) as error:
        DimensionPredictor.from_map_dir(map_dir, model=load_model("squeezenet1_1", weights=other))

    with pytest.raises(ValueError, match="both a loaded model and weights="):
        DimensionPredictor.from_map_dir(map_dir, model=load_model("squeezenet1_1", weights=moved), weights=moved)

    assert same.n_dims == 2
    assert f"the weights {other} differ from the weights {weights} of the features" in str(error.value)
    assert f"(SHA-256 {sha256} then" in str(error.value)


def test_from_map_dir_notes_unrecorded_checksum(tmp_path, caplog):
    weights = tmp_path / "squeezenet.pt"
    map_dir = squeezenet_map(tmp_path, weights, record_checksum=False)

    with caplog.at_level("WARNING", logger="dimalign.interpret.predictor"):
        predictor = DimensionPredictor.from_map_dir(map_dir)

    assert predictor.n_dims == 2
    assert (f"the map {map_dir} does not record the SHA-256 of its weights ({weights}), so weights that "
            "changed since its features were extracted cannot be detected") in caplog.text


def test_gradcam_loads_moved_weights(tmp_path, capsys):
    import json

    from PIL import Image

    from dimalign.cli import main

    photos = tmp_path / "photos"
    photos.mkdir()
    weights = tmp_path / "squeezenet.pt"
    map_dir = squeezenet_map(tmp_path, weights, record_checksum=True)
    moved = tmp_path / "moved.pt"
    weights.rename(moved)
    Image.new("RGB", (40, 30), (200, 30, 30)).save(photos / "a.png")
    argv = ["gradcam", str(photos / "a.png"), "--map", str(map_dir), "--dim", "0"]

    missing = main([*argv, "-o", str(tmp_path / "missing")])
    missing_error = capsys.readouterr().err
    status = main([*argv, "--weights", str(moved), "-o", str(tmp_path / "out")])

    assert missing == 1
    assert f"weights file {weights} not found" in missing_error
    assert f"the map {map_dir} was fitted on features of these weights" in missing_error
    assert "pass their new place with --weights FILE" in missing_error
    assert status == 0
    assert (tmp_path / "out" / "a_gradcam.png").is_file()
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["settings"]["weights"] == str(moved)


def test_weights_rejected_for_random_map(tmp_path):
    from dimalign.analysis.ridge import RidgeMap

    weights = tmp_path / "squeezenet.pt"
    squeezenet_map(tmp_path, weights, record_checksum=False)
    ridge = RidgeMap(alphas=[1.0], cv=2).fit(np.random.default_rng(0).normal(size=(6, 512)),
                                             np.random.default_rng(1).normal(size=(6, 2)))
    source = {"model": "squeezenet1_1", "weights": "random", "seed": 3, "layer": "features.12",
              "pooling": "gap"}
    ridge.save(tmp_path / "random_map", features_source=source)

    with pytest.raises(ValueError) as error:
        DimensionPredictor.from_map_dir(tmp_path / "random_map", weights=weights)

    assert str(error.value) == (
        f"the map {tmp_path / 'random_map'} was fitted on features of the weights random (seed 3), "
        f"not of a weights file, so the weights {weights} cannot take their place; leave out --weights "
        "(Python: weights=)"
    )


def test_map_prints_result(tmp_path, capsys):
    from dimalign.cli import main
    from dimalign.io.runs import EmbeddingResult, save_embedding

    rng = np.random.default_rng(0)
    np.save(tmp_path / "features.npy", rng.normal(size=(8, 4)))
    save_embedding(EmbeddingResult(embedding=rng.gamma(1.0, 1.0, size=(8, 3))), tmp_path / "run")
    out = tmp_path / "map"
    for quiet in ([], ["-q"]):
        assert main([*quiet, "map", str(tmp_path / "features.npy"), "--embedding", str(tmp_path / "run"),
                     "-o", str(out), "--folds", "2"]) == 0

        outputs = json.loads((out / "manifest.json").read_text())["outputs"]
        nested, chosen = outputs["nested_cv_r2_median"], outputs["cv_r2_median"]
        assert capsys.readouterr().out.splitlines()[-1] == (
            f"wrote {out}: 3 dimensions, nested cross-validated R² median {nested:.3f}, "
            f"R² at the chosen penalties {chosen:.3f}"
        )


def test_given_model_of_other_name(tmp_path):
    from dimalign.features import load_model

    map_dir = squeezenet_map(tmp_path, tmp_path / "squeezenet.pt", record_checksum=True)

    with pytest.raises(ValueError) as error:
        DimensionPredictor.from_map_dir(map_dir, model=load_model("squeezenet1_0", weights="random"))

    assert str(error.value) == (
        f"the given model squeezenet1_0 is not the model squeezenet1_1 of the features of the map {map_dir}, "
        "so the predictor would explain another network; pass load_model('squeezenet1_1') with the "
        "weights of the features, or leave out the model"
    )


def test_given_model_without_checksum(tmp_path):
    from dimalign.features import load_model

    weights = tmp_path / "squeezenet.pt"
    map_dir = squeezenet_map(tmp_path, weights, record_checksum=True)

    with pytest.raises(ValueError) as error:
        DimensionPredictor.from_map_dir(map_dir, model=load_model("squeezenet1_1", weights="random"))

    assert str(error.value).startswith(
        f"the weights random-init(seed=0) differ from the weights {weights} of the features of the map {map_dir}"
    )


def test_given_model_other_random_seed(tmp_path):
    from dimalign.analysis.ridge import RidgeMap
    from dimalign.features import load_model

    ridge = RidgeMap(alphas=[1.0], cv=2).fit(np.random.default_rng(0).normal(size=(6, 512)),
                                             np.random.default_rng(1).normal(size=(6, 2)))
    source = {"model": "squeezenet1_1", "weights": "random", "seed": 3, "layer": "features.12",
              "pooling": "gap"}
    ridge.save(tmp_path / "map", features_source=source)

    same = DimensionPredictor.from_map_dir(tmp_path / "map", model=load_model("squeezenet1_1", "random", seed=3))
    with pytest.raises(ValueError) as error:
        DimensionPredictor.from_map_dir(tmp_path / "map", model=load_model("squeezenet1_1", "random", seed=4))

    assert same.n_dims == 2
    assert str(error.value).startswith(
        "the weights random-init(seed=4) differ from the weights random (seed 3) of the features of the map "
        f"{tmp_path / 'map'}"
    )


def test_given_model_packaged_for_file(tmp_path):
    from dimalign.features import load_model

    weights = tmp_path / "squeezenet.pt"
    map_dir = squeezenet_map(tmp_path, weights, record_checksum=False)
    source = json.loads((map_dir / "manifest.json").read_text())
    source["settings"]["features_source"].update(model="efficientnet_lite0", layer="head")
    (map_dir / "manifest.json").write_text(json.dumps(source))

    with pytest.raises(ValueError) as error:
        DimensionPredictor.from_map_dir(map_dir, model=load_model("efficientnet_lite0"))

    assert str(error.value).startswith(
        f"the weights pretrained differ from the weights {weights} of the features of the map {map_dir}"
    )


def test_map_settings_contradicting_model_name(tmp_path):
    from dimalign.interpret.predictor import map_settings

    map_dir = tmp_path / "map"
    source = {"model": "resnet18", "weights": "random", "seed": 0, "layer": "fc:input", "pooling": "flatten"}
    write_manifest_json(map_dir, {
        "step": "map", "settings": {"model_name": "efficientnet_lite0", "layer": "fc:input",
                                    "features_source": source},
        "inputs": {}})

    with pytest.raises(ValueError) as error:
        map_settings(map_dir)

    assert str(error.value) == (
        f"{map_dir / 'manifest.json'} names the model efficientnet_lite0, but its features come from the "
        "model resnet18, so gradcam, maximize and manipulate would explain another network; rerun "
        "dimalign map without --model-name (in a study config: model_name), or with the model of the features"
    )


def test_given_model_prefixed_name_accepted(tmp_path):
    """torchvision:squeezenet1_1 and squeezenet1_1 name the same network."""
    from dimalign.analysis.ridge import RidgeMap
    from dimalign.features import load_model

    ridge = RidgeMap(alphas=[1.0], cv=2).fit(np.random.default_rng(0).normal(size=(6, 512)),
                                             np.random.default_rng(1).normal(size=(6, 2)))
    source = {"model": "torchvision:squeezenet1_1", "weights": "random", "seed": 3, "layer": "features.12",
              "pooling": "gap"}
    ridge.save(tmp_path / "map", features_source=source)

    predictor = DimensionPredictor.from_map_dir(tmp_path / "map", model=load_model("squeezenet1_1", "random", seed=3))

    assert predictor.n_dims == 2


def test_map_settings_prefixed_model_name(tmp_path):
    from dimalign.interpret.predictor import map_settings

    map_dir = tmp_path / "map"
    source = {"model": "torchvision:resnet18", "weights": "random", "seed": 0, "layer": "fc:input",
              "pooling": "flatten"}
    write_manifest_json(map_dir, {
        "step": "map", "settings": {"model_name": "resnet18", "layer": "fc:input", "features_source": source},
        "inputs": {}})

    assert map_settings(map_dir)["model"] == "resnet18"
