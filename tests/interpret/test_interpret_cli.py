"""End to end on real photos with EfficientNet-Lite0: features -> triplets -> VICE -> map -> pictures."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from dimalign.cli import main

pytestmark = pytest.mark.slow

# Colour photographs and gray images from skimage.data that ship with the package (no download).
SKIMAGE_IMAGES = (
    "astronaut", "coffee", "chelsea", "rocket", "colorwheel", "immunohistochemistry",
    "hubble_deep_field", "camera", "coins", "clock", "brick", "stereo_motorcycle",
)


def run_cli(*argv: object) -> None:
    status = main([str(value) for value in argv])
    assert status == 0, f"dimalign {argv[0]} exited with {status}"


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory, shared_data):
    """Twenty photos through extract, simulate, fit and map, as a user would run them."""
    import skimage.data

    root = tmp_path_factory.mktemp("interpret_pipeline")
    images = root / "images"
    images.mkdir()
    for path in sorted((shared_data / "images").glob("*.*")):
        if path.suffix.lower() in (".png", ".jpg"):
            Image.open(path).convert("RGB").save(images / f"{path.stem}.png")
    for name in SKIMAGE_IMAGES:
        array = getattr(skimage.data, name)()
        array = array[0] if isinstance(array, tuple) else array
        Image.fromarray(array).convert("RGB").save(images / f"skimage_{name}.png")

    run_cli("extract", images, "-o", root / "features", "--model", "efficientnet_lite0")
    run_cli("simulate", root / "features", "-o", root / "triplets", "--n-triplets", 1000, "--val-fraction", 0.1)
    run_cli(
        "fit", root / "triplets", "-o", root / "run", "--n-dims", 10, "--max-epochs", 40,
        "--stability-epochs", 20, "--batch-size", 64, "--mc-samples", 5, "--lr", 0.01,
    )
    # 20 objects leave some penalties at the grid's edge. The command logs that
    # warning as a line of its log instead of raising a Python warning.
    run_cli("map", root / "features", "--embedding", root / "run", "-o", root / "map",
            "--alpha-range", 0.01, 10000, 13)
    return SimpleNamespace(root=root, images=images, map_dir=root / "map", run_dir=root / "run")


def test_predictor_reproduces_mapped_features(pipeline):
    from dimalign.analysis.ridge import RidgeMap
    from dimalign.interpret.predictor import DimensionPredictor
    from dimalign.io.features import load_features

    predictor = DimensionPredictor.from_map_dir(pipeline.map_dir)
    features, table = load_features(pipeline.root / "features")
    ridge = RidgeMap.load(pipeline.map_dir)
    rows = table.index_of(["cat.png", "owl.png", "skimage_camera.png"])

    images = torch.stack([predictor.preprocessing.load(pipeline.images / name) for name in ("cat.png", "owl.png", "skimage_camera.png")])
    with torch.no_grad():
        predicted = predictor(images).double().numpy()

    assert predictor.layer == "avgpool"
    assert predictor.input_size == (224, 224)
    np.testing.assert_allclose(predicted, ridge.predict(np.asarray(features)[rows]), atol=1e-4)


def test_gradcam_cli_writes_maps(pipeline, tmp_path):
    out = tmp_path / "gradcam"

    run_cli("gradcam", pipeline.images / "parrot.png", "--map", pipeline.map_dir, "--dim", 0, "-o", out)

    table = pd.read_csv(out / "gradcam.csv")
    heatmap = Image.open(out / "parrot_dim0_heatmap.png")
    overlay = Image.open(out / "parrot_dim0_overlay.png")
    assert heatmap.size == (224, 224)
    assert heatmap.mode == "RGB"
    assert overlay.size == (224, 224)
    assert (out / "parrot_input.png").is_file()
    assert table["dimension"].tolist() == [0]
    assert (out / "manifest.json").is_file()


def test_maximize_cli_raises_dimension(pipeline, tmp_path):
    out = tmp_path / "maximize"

    run_cli("maximize", "--map", pipeline.map_dir, "--dim", 0, "--steps", 3, "--n-init", 2,
            "--n-images", 1, "-o", out)

    table = pd.read_csv(out / "maximize.csv")
    assert len(table) == 1
    assert (table["after"] > table["before"]).all()
    assert Image.open(out / "dim0_image0.png").size == (224, 224)
    assert (out / "dim0_images.png").is_file()


def test_maximize_caption_shows_small_change():
    """A change of 0.0012 must not read as '0.10 -> 0.10' under the image."""
    from dimalign.interpret.commands import value_change_caption

    assert value_change_caption(0.101313, 0.102539) == "0.1013 -> 0.1025 (+0.0012)"
    assert value_change_caption(12.5, 9.3) == "12.5 -> 9.3 (-3.2)"
    assert value_change_caption(0.5, 0.5) == "0.5 -> 0.5 (+0)"


def test_manipulate_cli_table(pipeline, tmp_path):
    out = tmp_path / "manipulate"
    masks = tmp_path / "masks"
    masks.mkdir()
    width, height = Image.open(pipeline.images / "sunflower.png").size
    mask = Image.new("L", (width, height), 0)
    mask.paste(255, (width // 4, height // 4, 3 * width // 4, 3 * height // 4))
    mask.save(masks / "sunflower.png")

    run_cli("manipulate", pipeline.images / "sunflower.png", pipeline.images / "skimage_camera.png",
            "--map", pipeline.map_dir, "--edits", "grayscale", "hue:360", "blur:2", "background:0.5",
            "--masks", masks, "-o", out)

    table = pd.read_csv(out / "manipulations.csv")
    n_dims = table["dimension"].nunique()
    camera = table[table["image"].str.endswith("skimage_camera.png")]
    background = np.asarray(Image.open(out / "edited" / "sunflower__background_0.5.png"))
    assert len(table) == 2 * 4 * n_dims
    assert (background[:20] == 128).all()
    assert sorted(path.name for path in (out / "masks").iterdir()) == ["skimage_camera.png"]
    assert camera[camera["edit"] == "grayscale"]["change"].abs().max() <= 1e-5
    assert table[table["edit"] == "hue"]["change"].abs().max() <= 1e-4
    assert table[table["edit"] == "blur"]["change"].abs().max() > 1e-3
    assert Image.open(out / "largest_changes.png").size[0] > 0
    assert (out / "edited" / "sunflower__blur_2.png").is_file()


def test_grid_cli_top_layout(pipeline, tmp_path):
    out = tmp_path / "grid"

    run_cli("grid", pipeline.run_dir, "--images", pipeline.images, "-o", out, "--top-k", 6)

    table = pd.read_csv(out / "grid.csv")
    n_dims = table["dimension"].nunique()
    assert len(list(out.glob("dim*_top.png"))) == n_dims
    assert len(table) == 6 * n_dims
    assert Path(out / "manifest.json").is_file()


def test_gradcam_cli_dimension_out_of_range(pipeline, tmp_path, capsys):
    from dimalign.analysis.ridge import RidgeMap

    n_dims = RidgeMap.load(pipeline.map_dir).coef_.shape[1]

    status = main(["gradcam", str(pipeline.images / "owl.png"), "--map", str(pipeline.map_dir),
                   "--dim", str(n_dims), "-o", str(tmp_path / "gradcam")])

    assert status == 1
    assert f"predicts {n_dims} dimensions" in capsys.readouterr().err


def test_gradcam_cli_pooled_layer_rejected(pipeline, tmp_path, capsys):
    status = main(["gradcam", str(pipeline.images / "owl.png"), "--map", str(pipeline.map_dir),
                   "--dim", "0", "--layer", "avgpool", "-o", str(tmp_path / "gradcam")])

    assert status == 1
    assert "1x1 map" in capsys.readouterr().err
    # The input image written before the layer failed goes with the folder.
    assert not (tmp_path / "gradcam").exists()


@pytest.mark.parametrize(
    "argv",
    [["gradcam", "IMG", "--dim", "0", "--alpha", "nan"],
     ["gradcam", "IMG", "--dim", "0", "0"],
     ["maximize", "--dim", "0", "--tv-weight", "inf"],
     ["maximize", "--dim", "0", "--image-size", "0"],
     ["manipulate", "IMG", "--figure-rows", "0"],
     ["manipulate", "IMG", "--edits", "background:2"],
     ["manipulate", "IMG", "--edits", "grayscale", "grayscale"]],
    ids=lambda argv: " ".join(argv[1:]),
)
def test_interpret_out_of_range_options_fail_first(pipeline, tmp_path, capsys, argv):
    argv = [str(pipeline.images / "owl.png") if value == "IMG" else value for value in argv]
    status = main([*argv, "--map", str(pipeline.map_dir), "-o", str(tmp_path / "out")])
    assert status == 1
    error = capsys.readouterr().err
    assert "is invalid" in error or "more than once" in error or "must be in" in error
    assert not (tmp_path / "out").exists()


def test_manipulate_checks_masks(pipeline, tmp_path, capsys):
    photo = pipeline.images / "owl.png"
    width, height = Image.open(photo).size
    cases = {
        "small": Image.new("L", (10, 10), 255),
        "text": None,
        "black": Image.new("L", (width, height), 0),
    }
    for case, mask in cases.items():
        folder = tmp_path / case
        folder.mkdir()
        if mask is None:
            (folder / "owl.png").write_text("not an image")
        else:
            mask.save(folder / "owl.png")

    argv = ["manipulate", str(photo), "--map", str(pipeline.map_dir), "--edits", "silhouette"]
    assert main([*argv, "--masks", str(tmp_path / "small"), "-o", str(tmp_path / "o1")]) == 1
    assert f"is 10 x 10 pixels but the image {photo} is {width} x {height}" in capsys.readouterr().err
    assert main([*argv, "--masks", str(tmp_path / "text"), "-o", str(tmp_path / "o2")]) == 1
    assert "cannot be read as an image" in capsys.readouterr().err
    # The command line logs to standard error.
    assert main([*argv, "--masks", str(tmp_path / "black"), "-o", str(tmp_path / "o3")]) == 0
    assert "has no foreground" in capsys.readouterr().err


def test_grid_rejects_zero_cell_size_and_repeated_dims(pipeline, tmp_path, capsys):
    base = ["grid", str(pipeline.run_dir), "--images", str(pipeline.images), "-o", str(tmp_path / "g")]
    assert main([*base, "--cell-size", "0"]) == 1
    assert "--cell-size 0 is invalid" in capsys.readouterr().err
    assert main([*base, "--dims", "1", "1"]) == 1
    assert "--dims lists 1 more than once" in capsys.readouterr().err


def test_gradcam_keeps_user_file(pipeline, tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "owl_input.png").write_text("not a picture of this run")
    status = main(["gradcam", str(pipeline.images / "owl.png"), "--map", str(pipeline.map_dir),
                   "--dim", "0", "-o", str(out)])
    assert status == 1
    assert f"{out / 'owl_input.png'} exists" in capsys.readouterr().err
    assert sorted(path.name for path in out.iterdir()) == ["owl_input.png"]
    assert (out / "owl_input.png").read_text() == "not a picture of this run"


def test_rerun_into_earlier_output_is_rejected(pipeline, tmp_path, capsys):
    out = tmp_path / "gradcam"
    run_cli("gradcam", pipeline.images / "owl.png", "--map", pipeline.map_dir, "--dim", 0, "-o", out)
    before = sorted(path.name for path in out.iterdir())
    status = main(["gradcam", str(pipeline.images / "cat.png"), "--map", str(pipeline.map_dir),
                   "--dim", "1", "-o", str(out)])
    assert status == 1
    assert "contains the output of an earlier dimalign gradcam run" in capsys.readouterr().err
    assert sorted(path.name for path in out.iterdir()) == before
