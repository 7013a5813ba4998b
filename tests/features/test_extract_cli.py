"""The dimalign extract and list-layers commands, and images -> features -> triplets -> VICE."""

from __future__ import annotations

import numpy as np
import pytest
from feature_helpers import write_random_images
from PIL import Image

from dimalign.cli import main
from dimalign.io.features import load_features
from dimalign.io.files import read_manifest

SKIMAGE_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "camera", "coins", "horse")


def test_list_layers_prints_module_names(capsys):
    assert main(["list-layers", "efficientnet_lite0", "--shapes"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "# default layer: avgpool"
    assert "stem.conv\tConv2dSame\t32 x 112 x 112" in lines
    assert "avgpool\tAdaptiveAvgPool2d\t1280 x 1 x 1" in lines
    assert "classifier\tLinear\t1000" in lines


def test_list_layers_marks_reused_modules(capsys):
    assert main(["list-layers", "resnet18", "--shapes"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "layer1.0.relu\tReLU\t64 x 56 x 56\tcalled 2 times per pass, not extractable" in lines
    assert "layer1.0.conv1\tConv2d\t64 x 56 x 56" in lines


def test_list_layers_of_vgg16(capsys):
    assert main(["list-layers", "vgg16"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "# default layer: classifier.4"
    assert "classifier.4\tReLU" in lines


def test_extract_unknown_model_is_cli_error(tmp_path, capsys):
    write_random_images(tmp_path / "images", 2)
    status = main(["extract", str(tmp_path / "images"), "-o", str(tmp_path / "out"),
                   "--model", "vgg61", "--random-init"])
    assert status == 1
    assert "dimalign extract: error: unknown model 'vgg61'" in capsys.readouterr().err


def test_extract_unreadable_image_names_it(tmp_path, capsys):
    folder = tmp_path / "images"
    write_random_images(folder, 2)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    status = main(["extract", str(folder), "-o", str(tmp_path / "out"), "--model",
                   "timm:test_efficientnet", "--random-init"])
    assert status == 1
    err = capsys.readouterr().err
    assert f"cannot read image {folder / 'broken.jpg'}" in err


def test_extract_layers_pools_and_h5(tmp_path, capsys):
    folder = tmp_path / "images"
    write_random_images(folder, 3, size=40)
    out = tmp_path / "out"
    status = main(["extract", str(folder), "-o", str(out), "--model", "efficientnet_lite0",
                   "--layer", "blocks.0", "blocks.15", "--layer", "avgpool",
                   "--pool", "gap", "gap", "flatten", "--format", "h5", "--batch-size", "2"])
    assert status == 0
    assert load_features(out, layer="blocks.0")[0].shape == (3, 16)
    assert load_features(out, layer="blocks.15")[0].shape == (3, 320)
    assert load_features(out, layer="avgpool")[0].shape == (3, 1280)
    settings = read_manifest(out)["settings"]
    assert settings["layers"] == ["blocks.0", "blocks.15", "avgpool"]
    assert settings["weights"] == "pretrained"
    assert "Normalize(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))" in settings["preprocessing"]


def write_skimage_photos(folder):
    import skimage.data

    folder.mkdir(parents=True)
    for name in SKIMAGE_PHOTOS:
        pixels = getattr(skimage.data, name)()
        if pixels.dtype == bool:  # horse is a binary silhouette
            pixels = pixels.astype(np.uint8) * 255
        Image.fromarray(pixels).save(folder / f"{name}.png")


@pytest.mark.slow
def test_photos_to_features_to_vice(tmp_path, shared_images):
    images = tmp_path / "images"
    (images / "photos").mkdir(parents=True)
    photo_names = sorted(path.name for path in shared_images.iterdir()
                         if path.suffix in (".png", ".jpg"))
    for name in photo_names:
        # Links keep the shared photos in place; the folder search reads linked files.
        (images / "photos" / name).symlink_to(shared_images / name)
    write_skimage_photos(images / "skimage")
    n_objects = len(photo_names) + len(SKIMAGE_PHOTOS)

    features_dir = tmp_path / "features"
    assert main(["extract", str(images), "-o", str(features_dir), "--model",
                 "efficientnet_lite0", "--batch-size", "8"]) == 0
    features, table = load_features(features_dir)
    assert features.shape == (n_objects, 1280)
    assert table.object_ids[0] == "photos/bird.png"
    assert table.object_ids[-1] == "skimage/rocket.png"

    triplets_dir = tmp_path / "triplets"
    assert main(["simulate", str(features_dir), "-o", str(triplets_dir), "--n-triplets", "400",
                 "--seed", "0"]) == 0
    triplet_files = sorted(path.name for path in triplets_dir.glob("*.npy"))
    assert triplet_files
    triplets = np.concatenate([np.load(triplets_dir / name) for name in triplet_files])
    assert triplets.shape == (400, 3)
    assert triplets.max() < n_objects

    run_dir = tmp_path / "run"
    assert main(["fit", str(triplets_dir), "--n-objects", str(n_objects), "-o", str(run_dir),
                 "--max-epochs", "5", "--n-dims", "10"]) == 0
    embedding = np.load(run_dir / "embedding.npz")
    first = embedding[embedding.files[0]]
    assert first.shape[0] == n_objects
    assert (run_dir / "manifest.json").is_file()


@pytest.mark.parametrize(
    ("options", "message"),
    [(["--seed", "3"], "--seed 3 only seeds --random-init"),
     (["--resume", "--overwrite"], "pass one")],
)
def test_extract_contradictory_options_fail(tmp_path, capsys, options, message):
    status = main(["extract", str(tmp_path), "-o", str(tmp_path / "out"), "--model", "efficientnet_lite0", *options])
    assert status == 1
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_simulate_zero_triplets_fails(tmp_path, capsys):
    np.save(tmp_path / "features.npy", np.ones((5, 2)))
    status = main(["simulate", str(tmp_path / "features.npy"), "-o", str(tmp_path / "out"), "--n-triplets", "0"])
    assert status == 1
    assert "--n-triplets 0 is invalid: use 1 or more" in capsys.readouterr().err
