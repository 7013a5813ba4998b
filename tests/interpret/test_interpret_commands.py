"""Command handlers of gradcam, maximize, manipulate and grid on a tiny model, without loading a DNN."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from dimalign.cli import main
from dimalign.interpret.commands import collect_images, unique_names
from dimalign.interpret.predictor import DimensionPredictor, ImagePreprocessing


@pytest.fixture
def tiny_predictor(monkeypatch, make_conv_model, ridge_coefficients):
    """Make every command build the tiny conv model's predictor instead of the map's DNN."""
    coef, intercept = ridge_coefficients
    predictor = DimensionPredictor(
        make_conv_model(), "3", coef, intercept, pooling="gap",
        preprocessing=ImagePreprocessing(input_size=(16, 16)),
    )
    monkeypatch.setattr(DimensionPredictor, "from_map_dir", classmethod(lambda cls, *args, **kwargs: predictor))
    return predictor


def write_photo(path: Path, colour: tuple[int, int, int], size: tuple[int, int] = (20, 16)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)
    return path


def test_unique_names_never_repeat():
    paths = [Path("d1/a.jpg"), Path("d2/a.jpg"), Path("d1/a-2.jpg"), Path("d3/A.png")]

    names = unique_names(paths)

    assert names == ["a", "a-2", "a-2-2", "A-3"]


def test_gradcam_same_stems_keep_every_map(tiny_predictor, tmp_path):
    first = write_photo(tmp_path / "d1" / "a.jpg", (200, 30, 30))
    second = write_photo(tmp_path / "d2" / "a.jpg", (30, 200, 30))
    third = write_photo(tmp_path / "d1" / "a-2.jpg", (30, 30, 200))
    out = tmp_path / "gradcam"

    status = main(["gradcam", str(first), str(second), str(third), "--map", str(tmp_path), "--dim", "0",
                   "--layer", "2", "-o", str(out)])

    table = pd.read_csv(out / "gradcam.csv")
    assert status == 0
    assert table["heatmap"].tolist() == ["a_dim0_heatmap.png", "a-2_dim0_heatmap.png", "a-2-2_dim0_heatmap.png"]
    assert all((out / name).is_file() for name in table["overlay"])


def test_manipulate_rejects_default_and_explicit_edit(tiny_predictor, tmp_path, capsys):
    photo = write_photo(tmp_path / "photos" / "a.jpg", (200, 30, 30))
    out = tmp_path / "manipulate"

    status = main(["manipulate", str(photo), "--map", str(tmp_path), "--edits", "hue", "blur:3", "hue:90",
                   "-o", str(out)])

    assert status == 1
    assert "the edits list hue:90 more than once" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--steps", "-1"], "--steps -1 is invalid"),
        (["--n-init", "2", "--n-images", "3"], "--n-images 3 is invalid: use a number in [1, 2]"),
        (["--image-size", "1"], "--image-size 1 is invalid"),
        (["--seed", str(2**64)], f"--seed {2**64} is invalid"),
        (["--seed", "-1"], "--seed -1 is invalid: use an integer from 0 to 2**64 - 1"),
        (["--steps", str(10**400)], "is invalid: use a number in [0, 9.22337e+18]"),
        (["--image-size", "100000"], "--image-size 100000 is invalid: use a number in [2, 4096]"),
        (["--n-init", "5000"], "--n-init 5000 is invalid: use a number in [1, 1024]"),
        (["--generator", "my_gan:build", "--image-size", "32"],
         "--image-size 32 sets the size of the built-in generator's images"),
    ],
)
def test_maximize_checks_counts_and_seed_first(monkeypatch, tmp_path, capsys, options, message):
    def fail(*args, **kwargs):
        raise AssertionError("the map was loaded before the options were checked")

    monkeypatch.setattr(DimensionPredictor, "from_map_dir", fail)
    out = tmp_path / "maximize"

    status = main(["maximize", "--map", str(tmp_path), "--dim", "0", "-o", str(out), *options])

    assert status == 1
    assert message in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize(
    ("masks", "message"),
    [("missing", "mask folder {masks} is not found"),
     ("empty", "the mask folder {masks} has no mask for any of the 1 images"),
     ("shared", "mask {masks}/a.png matches 2 images with the stem 'a'")],
)
def test_manipulate_checks_mask_folder_first(monkeypatch, tmp_path, capsys, masks, message):
    def fail(*args, **kwargs):
        raise AssertionError("the map was loaded before the mask folder was checked")

    monkeypatch.setattr(DimensionPredictor, "from_map_dir", fail)
    photos = [write_photo(tmp_path / "photos" / "a.png", (200, 30, 30))]
    mask_dir = tmp_path / masks
    if masks != "missing":
        mask_dir.mkdir()
    if masks == "shared":
        photos.append(write_photo(tmp_path / "more" / "a.png", (30, 200, 30)))
        write_photo(mask_dir / "a.png", (255, 255, 255))
    out = tmp_path / "manipulate"

    status = main(["manipulate", *map(str, photos), "--map", str(tmp_path), "--masks", str(mask_dir),
                   "-o", str(out)])

    assert status == 1
    assert message.format(masks=mask_dir) in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize(
    ("argv", "message"),
    [(["grid", "embedding.txt", "--cell-size", str(10**400)], "--cell-size 1000"),
     (["grid", "embedding.txt", "--cell-size", "100000"], "--cell-size 100000 is invalid: use a number in [1, 4096]"),
     (["manipulate", "photo.png", "--map", "map", "--figure-rows", str(10**400)], "--figure-rows 1000")],
)
def test_huge_integer_options_rejected(tmp_path, capsys, argv, message):
    out = tmp_path / "out"

    status = main([*argv, "-o", str(out)])

    assert status == 1
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_maximize_command_writes_images(tiny_predictor, tmp_path):
    out = tmp_path / "maximize"

    status = main(["maximize", "--map", str(tmp_path), "--dim", "1", "--steps", "2", "--n-init", "2",
                   "--n-images", "1", "--image-size", "8", "-o", str(out)])

    table = pd.read_csv(out / "maximize.csv")
    assert status == 0
    assert table["file"].tolist() == ["dim1_image0.png"]
    assert Image.open(out / "dim1_image0.png").size == (8, 8)


def test_manipulate_mask_of_shared_stem_is_an_error(tiny_predictor, tmp_path, capsys):
    first = write_photo(tmp_path / "d1" / "a.jpg", (200, 30, 30))
    second = write_photo(tmp_path / "d2" / "a.jpg", (30, 200, 30))
    write_photo(tmp_path / "masks" / "a.png", (255, 255, 255))
    out = tmp_path / "manipulate"

    status = main(["manipulate", str(first), str(second), "--map", str(tmp_path), "--masks", str(tmp_path / "masks"),
                   "--edits", "silhouette", "-o", str(out)])

    assert status == 1
    assert "matches 2 images with the stem 'a'" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize(
    ("command", "out_name"),
    [("gradcam", "photos"), ("gradcam", "photos/pictures"), ("manipulate", "."), ("manipulate", "masks")],
)
def test_output_overlapping_inputs_rejected(tiny_predictor, tmp_path, capsys, command, out_name):
    photo = write_photo(tmp_path / "photos" / "a.png", (200, 30, 30))
    write_photo(tmp_path / "photos" / "a_input.png", (30, 200, 30))
    (tmp_path / "masks").mkdir()
    options = ["--dim", "0"] if command == "gradcam" else ["--masks", str(tmp_path / "masks")]
    before = photo.with_name("a_input.png").read_bytes()

    status = main([command, str(tmp_path / "photos"), "--map", str(tmp_path), *options,
                   "-o", str(tmp_path / out_name)])

    assert status == 1
    assert "overlaps the input" in capsys.readouterr().err
    assert photo.with_name("a_input.png").read_bytes() == before


def test_interrupted_run_removes_its_files_from_existing_folder(tiny_predictor, tmp_path, stop_second_call):
    import dimalign.interpret.gradcam as gradcam_module

    photos = [write_photo(tmp_path / "photos" / f"{name}.png", (200, 30, 30)) for name in ("a", "b")]
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("kept")
    stop_second_call(gradcam_module, "dimension_gradcam", KeyboardInterrupt())

    status = main(["gradcam", *map(str, photos), "--map", str(tmp_path), "--dim", "0", "--layer", "2",
                   "-o", str(out)])

    assert status == 130
    assert sorted(path.name for path in out.iterdir()) == ["notes.txt"]
    assert (out / "notes.txt").read_text() == "kept"


def test_gradcam_zero_map_warning_names_image(tiny_predictor, tmp_path, capsys):
    photo = write_photo(tmp_path / "photos" / "flat.png", (128, 128, 128), size=(1, 1))
    # A uniform 1 x 2 input gives the same activations at both positions of layer 0, whose
    # padding is symmetric, so the map is zero.
    tiny_predictor.preprocessing.input_size = (1, 2)
    out = tmp_path / "gradcam"

    main(["gradcam", str(photo), "--map", str(tmp_path), "--dim", "0", "--layer", "0", "-o", str(out)])

    assert f"{photo}: Grad-CAM of dimension 0 at layer '0' is zero everywhere:" in capsys.readouterr().err


def test_gradcam_empty_layer_name_rejected(tiny_predictor, tmp_path, capsys):
    photo = write_photo(tmp_path / "photos" / "a.png", (200, 30, 30))

    status = main(["gradcam", str(photo), "--map", str(tmp_path), "--dim", "0", "--layer", "",
                   "-o", str(tmp_path / "gradcam")])

    assert status == 1
    assert "layer '' not found" in capsys.readouterr().err


def test_collect_images_rejects_image_given_twice(tmp_path):
    photo = write_photo(tmp_path / "photos" / "a.png", (200, 30, 30))

    with pytest.raises(ValueError, match=f"image {photo} is given twice"):
        collect_images([tmp_path / "photos", photo])


def test_collect_images_keeps_two_links_to_one_photo(tmp_path):
    photo = write_photo(tmp_path / "a.png", (200, 30, 30))
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "b.png").symlink_to(photo)
    (tmp_path / "photos" / "c.png").symlink_to(photo)

    paths = collect_images([tmp_path / "photos"])

    assert paths == [tmp_path / "photos" / "b.png", tmp_path / "photos" / "c.png"]
    assert unique_names(paths) == ["b", "c"]


def test_collect_images_rejects_folder_given_through_link(tmp_path):
    write_photo(tmp_path / "photos" / "a.png", (200, 30, 30))
    (tmp_path / "linked").symlink_to(tmp_path / "photos")

    with pytest.raises(ValueError, match="is given twice"):
        collect_images([tmp_path / "photos", tmp_path / "linked"])


def test_manipulate_mask_folder_without_matching_masks(tiny_predictor, tmp_path, capsys):
    photo = write_photo(tmp_path / "photos" / "a.jpg", (200, 30, 30))
    write_photo(tmp_path / "masks" / "a.jpg", (255, 255, 255))
    out = tmp_path / "manipulate"

    status = main(["manipulate", str(photo), "--map", str(tmp_path), "--masks", str(tmp_path / "masks"),
                   "--edits", "silhouette", "-o", str(out)])

    assert status == 1
    assert f"has no mask for any of the 1 images (looked for {tmp_path / 'masks' / 'a.png'}" in capsys.readouterr().err
    assert not out.exists()


def test_gradcam_holds_one_image_at_a_time(tiny_predictor, tmp_path, monkeypatch):
    import weakref

    import dimalign.interpret.gradcam as gradcam_module

    photos = [write_photo(tmp_path / "photos" / f"{index}.png", (40 * index, 30, 30)) for index in range(3)]
    loaded: list[weakref.ref] = []
    load = ImagePreprocessing.load
    compute = gradcam_module.dimension_gradcam
    alive_during_gradcam = []

    def load_and_track(self, path):
        image = load(self, path)
        loaded.append(weakref.ref(image))
        return image

    def count_alive(*args, **kwargs):
        alive_during_gradcam.append(sum(reference() is not None for reference in loaded))
        return compute(*args, **kwargs)

    monkeypatch.setattr(ImagePreprocessing, "load", load_and_track)
    monkeypatch.setattr(gradcam_module, "dimension_gradcam", count_alive)

    status = main(["gradcam", *map(str, photos), "--map", str(tmp_path), "--dim", "0", "--layer", "2",
                   "-o", str(tmp_path / "gradcam")])

    assert status == 0
    assert alive_during_gradcam == [1, 1, 1]


def test_manipulate_rejects_zero_one_mask(tiny_predictor, tmp_path, capsys):
    photo = write_photo(tmp_path / "photos" / "a.jpg", (200, 30, 30))
    boolean = np.zeros((16, 20), dtype=np.uint8)
    boolean[4:12, 5:15] = 1
    (tmp_path / "masks").mkdir()
    Image.fromarray(boolean).save(tmp_path / "masks" / "a.png")
    out = tmp_path / "manipulate"

    status = main(["manipulate", str(photo), "--map", str(tmp_path), "--masks", str(tmp_path / "masks"),
                   "--edits", "silhouette", "-o", str(out)])

    assert status == 1
    assert "has only the values 0 and 1" in capsys.readouterr().err
    assert not out.exists()


def test_manifest_records_image_checksums(tiny_predictor, tmp_path):
    import hashlib
    import json

    photo = write_photo(tmp_path / "photos" / "a.png", (200, 30, 30))
    mask = write_photo(tmp_path / "masks" / "a.png", (255, 255, 255))
    argv = [str(photo), "--map", str(tmp_path)]

    main(["gradcam", *argv, "--dim", "0", "--layer", "2", "-o", str(tmp_path / "gradcam")])
    main(["manipulate", *argv, "--masks", str(tmp_path / "masks"), "--edits", "silhouette",
          "-o", str(tmp_path / "manipulate")])

    gradcam_inputs = json.loads((tmp_path / "gradcam" / "manifest.json").read_text())["inputs"]
    manipulate_inputs = json.loads((tmp_path / "manipulate" / "manifest.json").read_text())["inputs"]
    assert gradcam_inputs["image a"]["sha256"] == hashlib.sha256(photo.read_bytes()).hexdigest()
    assert manipulate_inputs["image a"]["sha256"] == hashlib.sha256(photo.read_bytes()).hexdigest()
    assert manipulate_inputs["mask a"]["sha256"] == hashlib.sha256(mask.read_bytes()).hexdigest()


def test_manipulate_streams_images_with_same_table(tiny_predictor, tmp_path, monkeypatch):
    import weakref

    import dimalign.interpret.manipulate as manipulate_module

    colours = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (120, 120, 20)]
    photos = [write_photo(tmp_path / "photos" / f"{index}.png", colour) for index, colour in enumerate(colours)]
    edits = ["grayscale", "hue:180", "brightness:0.5"]
    expected = manipulate_module.manipulate_images(
        tiny_predictor, {str(index): tiny_predictor.preprocessing.load(photo) for index, photo in enumerate(photos)},
        edits,
    ).table
    loaded: list[weakref.ref] = []
    load = ImagePreprocessing.load
    compute = manipulate_module.manipulate_images
    alive_during_edits = []

    def load_and_track(self, path):
        image = load(self, path)
        loaded.append(weakref.ref(image))
        return image

    def count_alive(*args, **kwargs):
        alive_during_edits.append(sum(reference() is not None for reference in loaded))
        return compute(*args, **kwargs)

    monkeypatch.setattr(ImagePreprocessing, "load", load_and_track)
    monkeypatch.setattr(manipulate_module, "manipulate_images", count_alive)
    out = tmp_path / "manipulate"

    status = main(["manipulate", str(tmp_path / "photos"), "--map", str(tmp_path), "--edits", *edits,
                   "--figure-rows", "1", "-o", str(out)])

    table = pd.read_csv(out / "manipulations.csv")
    assert status == 0
    # The image kept for the figure and the one being edited; never all four.
    assert max(alive_during_edits) <= 2
    np.testing.assert_allclose(table["change"], expected["change"], rtol=1e-6, atol=1e-9)
    assert table["image"].tolist() == [str(photo) for photo in photos for _ in range(3 * 5)]
    assert (out / "largest_changes.png").stat().st_size > 0


def test_figure_images_keep_ties_and_drop_smaller():
    from types import SimpleNamespace

    from dimalign.interpret.commands import _FigureImages

    def result(name, changes):
        table = pd.DataFrame({"edit": ["blur"] * len(changes), "parameter": [1.0] * len(changes),
                              "change": changes})
        return SimpleNamespace(table=table, edited={name: {"blur:1": name}})

    kept = _FigureImages(1)
    kept.offer("a", "image a", result("a", [0.5, -2.0]))
    kept.offer("b", "image b", result("b", [2.0]))
    kept.offer("c", "image c", result("c", [1.0]))

    assert sorted(kept.originals) == ["a", "b"]
    assert kept.edited["b"] == {"blur:1": "b"}


def test_failed_gradcam_keeps_file_added_meanwhile(tiny_predictor, tmp_path, stop_second_call):
    import dimalign.interpret.gradcam as gradcam_module

    photos = [write_photo(tmp_path / "photos" / f"{name}.png", (200, 30, 30)) for name in ("a", "b")]
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("kept")
    stop_second_call(gradcam_module, "dimension_gradcam", RuntimeError("stopped"), out / "other.txt")

    status = main(["gradcam", *map(str, photos), "--map", str(tmp_path), "--dim", "0", "--layer", "2",
                   "-o", str(out)])

    assert status == 1
    assert sorted(path.name for path in out.iterdir()) == ["notes.txt", "other.txt"]
    assert (out / "other.txt").read_text() == "written by another program during the run"


def test_gradcam_output_folder_shows_no_partial_files(tiny_predictor, tmp_path, monkeypatch):
    import dimalign.interpret.gradcam as gradcam_module

    photos = [write_photo(tmp_path / "photos" / f"{name}.png", (200, 30, 30)) for name in ("a", "b")]
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("kept")
    compute = gradcam_module.dimension_gradcam
    seen_during_run = []

    def record_folder(*args, **kwargs):
        seen_during_run.append(sorted(path.name for path in out.iterdir()))
        return compute(*args, **kwargs)

    monkeypatch.setattr(gradcam_module, "dimension_gradcam", record_folder)

    status = main(["gradcam", *map(str, photos), "--map", str(tmp_path), "--dim", "0", "--layer", "2",
                   "-o", str(out)])

    assert status == 0
    # A run killed with SIGKILL leaves only the hidden folder, which the next run reports.
    assert len(seen_during_run) == 2
    for names in seen_during_run:
        assert names[0].startswith(".partial-")
        assert names[1:] == ["notes.txt"]
    assert not list(out.glob(".partial-*"))
    assert (out / "b_dim0_overlay.png").is_file()


def test_output_file_added_meanwhile_is_not_replaced(tiny_predictor, tmp_path, monkeypatch, capsys):
    import dimalign.interpret.gradcam as gradcam_module

    photo = write_photo(tmp_path / "photos" / "a.png", (200, 30, 30))
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("kept")
    compute = gradcam_module.dimension_gradcam

    def another_program_writes_table(*args, **kwargs):
        (out / "gradcam.csv").write_text("the user's table")
        return compute(*args, **kwargs)

    monkeypatch.setattr(gradcam_module, "dimension_gradcam", another_program_writes_table)

    status = main(["gradcam", str(photo), "--map", str(tmp_path), "--dim", "0", "--layer", "2",
                   "-o", str(out)])

    assert status == 1
    assert f"{out / 'gradcam.csv'} exists" in capsys.readouterr().err
    assert sorted(path.name for path in out.iterdir()) == ["gradcam.csv", "notes.txt"]
    assert (out / "gradcam.csv").read_text() == "the user's table"


@pytest.mark.parametrize(
    ("command", "options", "existing", "work"),
    [("gradcam", ["PHOTO", "--dim", "0", "--layer", "2"], "a_dim0_heatmap.png",
      "dimalign.interpret.gradcam.dimension_gradcam"),
     ("maximize", ["--dim", "1", "--n-init", "2", "--n-images", "2"], "dim1_image1.png",
      "dimalign.interpret.maximize.maximize_dimension"),
     ("maximize", ["--dim", "1"], "dim1_images.png", "dimalign.interpret.maximize.maximize_dimension"),
     ("manipulate", ["PHOTO", "--edits", "blur:2"], "edited/a__blur_2.png",
      "dimalign.interpret.manipulate.manipulate_images"),
     ("manipulate", ["PHOTO", "--edits", "silhouette"], "masks/a.png",
      "dimalign.interpret.manipulate.manipulate_images")],
)
def test_user_picture_rejected_before_work(tiny_predictor, tmp_path, monkeypatch, capsys,
                                           command, options, existing, work):
    def fail(*args, **kwargs):
        raise AssertionError("the work started before the output names were checked")

    monkeypatch.setattr(work, fail)
    photo = write_photo(tmp_path / "photos" / "a.png", (200, 30, 30))
    out = tmp_path / "out"
    (out / existing).parent.mkdir(parents=True)
    (out / existing).write_text("my picture")
    options = [str(photo) if option == "PHOTO" else option for option in options]

    status = main([command, *options, "--map", str(tmp_path), "-o", str(out)])

    assert status == 1
    assert f"{out / existing} exists" in capsys.readouterr().err
    assert (out / existing).read_text() == "my picture"
    assert sorted(path.relative_to(out).as_posix() for path in out.rglob("*") if path.is_file()) == [existing]


def test_manipulate_writes_subfolders_into_output(tiny_predictor, tmp_path):
    photo = write_photo(tmp_path / "photos" / "a.png", (200, 30, 30))
    out = tmp_path / "out"

    status = main(["manipulate", str(photo), "--map", str(tmp_path), "--edits", "silhouette", "-o", str(out)])

    assert status == 0
    assert (out / "edited" / "a__original.png").is_file()
    assert (out / "edited" / "a__silhouette.png").is_file()
    assert (out / "masks" / "a.png").is_file()
    assert not list(out.glob(".partial-*"))


def test_interpret_last_log_line_names_output(tiny_predictor, tmp_path, capsys):
    photo = write_photo(tmp_path / "photos" / "a.png", (200, 30, 30))
    runs = {
        "gradcam": [str(photo), "--dim", "0", "--layer", "2"],
        "maximize": ["--dim", "1", "--steps", "1", "--n-init", "1", "--n-images", "1", "--image-size", "8"],
        "manipulate": [str(photo), "--edits", "blur:2"],
    }
    for command, options in runs.items():
        out = tmp_path / command

        status = main([command, *options, "--map", str(tmp_path), "-o", str(out)])

        last_line = capsys.readouterr().err.strip().splitlines()[-1]
        assert status == 0
        assert last_line.endswith(f" to {out}")
        assert ".partial-" not in last_line


def test_interpret_prints_result_line(tiny_predictor, tmp_path, capsys):
    photo = write_photo(tmp_path / "photos" / "a.png", (200, 30, 30))
    runs = {
        "gradcam": [str(photo), "--dim", "0", "1", "--layer", "2"],
        "maximize": ["--dim", "1", "--steps", "1", "--n-init", "2", "--n-images", "2", "--image-size", "8"],
        "manipulate": [str(photo), "--edits", "blur:2"],
    }
    for quiet in ([], ["-q"]):
        for command, options in runs.items():
            out = tmp_path / f"{command}{''.join(quiet)}"

            status = main([*quiet, command, *options, "--map", str(tmp_path), "-o", str(out)])

            assert status == 0
            if command == "gradcam":
                expected = f"wrote {out}: 2 Grad-CAM maps for 1 image"
            elif command == "maximize":
                expected = f"wrote {out}: 2 images for 1 dimension"
            else:
                n_rows = len(pd.read_csv(out / "manipulations.csv"))
                expected = f"wrote {out}: {n_rows} rows for 1 image and 1 edit"
            assert capsys.readouterr().out.splitlines()[-1] == expected


def test_leftover_hidden_folder_is_reported(tiny_predictor, tmp_path, capsys):
    photo = write_photo(tmp_path / "photos" / "a.png", (200, 30, 30))
    out = tmp_path / "out"
    leftover = out / ".partial-abc123"
    leftover.mkdir(parents=True)
    (leftover / "a_input.png").write_bytes(b"\0" * 100)

    status = main(["gradcam", str(photo), "--map", str(tmp_path), "--dim", "0", "--layer", "2",
                   "-o", str(out)])

    assert status == 0
    assert f"{leftover} (100 bytes) is the hidden folder of an interrupted dimalign run" in capsys.readouterr().err
    assert leftover.is_dir()


def test_failed_run_keeps_new_folder_with_other_files(tiny_predictor, tmp_path, monkeypatch, capsys):
    # The run created the folder, but another program wrote into it meanwhile.
    import dimalign.interpret.gradcam as gradcam_module

    photo = write_photo(tmp_path / "photos" / "a.png", (200, 30, 30))
    out = tmp_path / "new" / "out"

    def fail_after_another_program_writes(*args, **kwargs):
        (out / "other.txt").write_text("written by another program during the run")
        raise RuntimeError("stopped")

    monkeypatch.setattr(gradcam_module, "dimension_gradcam", fail_after_another_program_writes)

    status = main(["gradcam", str(photo), "--map", str(tmp_path), "--dim", "0", "--layer", "2",
                   "-o", str(out)])

    assert status == 1
    assert sorted(path.name for path in out.iterdir()) == ["other.txt"]
    assert (out / "other.txt").read_text() == "written by another program during the run"
    assert f"{out} is kept after the error because it contains files that this run did not write" \
        in capsys.readouterr().err


def test_failed_run_removes_folder_it_created(tiny_predictor, tmp_path, monkeypatch):
    import dimalign.interpret.gradcam as gradcam_module

    photo = write_photo(tmp_path / "photos" / "a.png", (200, 30, 30))

    def fail(*args, **kwargs):
        raise RuntimeError("stopped")

    monkeypatch.setattr(gradcam_module, "dimension_gradcam", fail)

    status = main(["gradcam", str(photo), "--map", str(tmp_path), "--dim", "0", "--layer", "2",
                   "-o", str(tmp_path / "new" / "out")])

    assert status == 1
    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize("command", ["gradcam", "maximize", "manipulate", "grid"])
def test_help_says_output_folder_is_new(command):
    import argparse

    from dimalign.cli import build_parser

    parser = build_parser()
    commands = next(action for action in parser._actions if isinstance(action, argparse._SubParsersAction))
    out_option = next(action for action in commands.choices[command]._actions if "--out" in action.option_strings)
    # A rerun into an earlier run's folder is an error, so the help must not read as "any folder".
    assert "without an earlier run of this command" in out_option.help


def test_maximize_help_states_relu_in_loss():
    import argparse

    from dimalign.cli import build_parser

    parser = build_parser()
    commands = next(action for action in parser._actions if isinstance(action, argparse._SubParsersAction))
    description = " ".join(commands.choices["maximize"].description.split())
    # The specificity term compares the dimensions after ReLU (maximize.py), as the help of --beta states.
    assert "log_softmax(relu(y))_j" in description
    assert "log_softmax(y)_j" not in description


def read_test_mask(tmp_path, mask_image):
    """Save ``mask_image`` as the mask of a 16 x 16 photo and read it as manipulate does."""
    from dimalign.interpret.commands import _read_mask

    photo = write_photo(tmp_path / "photo.png", (200, 30, 30), (16, 16))
    mask_image.save(tmp_path / "mask.png")
    return _read_mask(tmp_path / "mask.png", photo, ImagePreprocessing(input_size=(16, 16))).numpy()


@pytest.mark.parametrize("mode", ["RGBA", "LA"])
def test_mask_alpha_is_foreground(tmp_path, mode):
    pixels = np.zeros((16, 16, 4), dtype=np.uint8)
    pixels[4:12, 2:10, 3] = 255
    mask = Image.fromarray(pixels, "RGBA").convert(mode)

    foreground = read_test_mask(tmp_path, mask)

    expected = np.zeros((16, 16), dtype=bool)
    expected[4:12, 2:10] = True
    np.testing.assert_array_equal(foreground, expected)


def test_mask_palette_transparency_is_foreground(tmp_path):
    pixels = np.zeros((16, 16), dtype=np.uint8)
    pixels[4:12, 2:10] = 1
    mask = Image.fromarray(pixels, "L").convert("P")
    mask.info["transparency"] = 0

    foreground = read_test_mask(tmp_path, mask)

    expected = np.zeros((16, 16), dtype=bool)
    expected[4:12, 2:10] = True
    np.testing.assert_array_equal(foreground, expected)


def test_mask_opaque_alpha_uses_brightness(tmp_path):
    pixels = np.zeros((16, 16, 4), dtype=np.uint8)
    pixels[..., 3] = 255
    pixels[0:8, :, :3] = 255
    foreground = read_test_mask(tmp_path, Image.fromarray(pixels, "RGBA"))

    expected = np.zeros((16, 16), dtype=bool)
    expected[0:8] = True
    np.testing.assert_array_equal(foreground, expected)


def test_mask_sixteen_bit_scaled(tmp_path):
    values = np.full((16, 16), 20000, dtype=np.uint16)  # 31 % of white: background
    values[:, 8:] = 50000  # 76 % of white: the object

    foreground = read_test_mask(tmp_path, Image.fromarray(values))

    expected = np.zeros((16, 16), dtype=bool)
    expected[:, 8:] = True
    np.testing.assert_array_equal(foreground, expected)


def test_manipulate_background_option(tiny_predictor, tmp_path):
    photo = tmp_path / "photos" / "a.png"
    photo.parent.mkdir()
    Image.new("RGBA", (16, 16), (255, 0, 0, 0)).save(photo)
    out = tmp_path / "manipulate"

    status = main(["manipulate", str(photo), "--map", str(tmp_path), "--edits", "grayscale",
                   "--background", "0,128,0", "-o", str(out)])

    assert status == 0
    assert Image.open(out / "edited" / "a__original.png").getpixel((8, 8)) == (0, 128, 0)


def test_gradcam_conflicting_background_rejected(tiny_predictor, tmp_path, capsys):
    from dimalign.io.files import write_manifest

    photo = write_photo(tmp_path / "photos" / "a.png", (200, 30, 30))
    write_manifest(tmp_path, step="map", settings={"features_source": {"background": [0, 0, 0], "exif_transpose": True}})
    out = tmp_path / "gradcam"

    status = main(["gradcam", str(photo), "--map", str(tmp_path), "--dim", "0", "--layer", "2",
                   "--background", "white", "-o", str(out)])

    error = capsys.readouterr().err
    assert status != 0
    assert "contradicts the background 0,0,0" in error
    assert not out.exists()


def test_manifests_record_image_decoding(tiny_predictor, tmp_path):
    import json

    photo = write_photo(tmp_path / "photos" / "a.png", (200, 30, 30))
    argv = [str(photo), "--map", str(tmp_path), "--background", "0,128,0", "--no-exif-transpose"]

    main(["gradcam", *argv, "--dim", "0", "--layer", "2", "-o", str(tmp_path / "gradcam")])
    main(["manipulate", *argv, "--edits", "grayscale", "-o", str(tmp_path / "manipulate")])

    for command in ("gradcam", "manipulate"):
        settings = json.loads((tmp_path / command / "manifest.json").read_text())["settings"]
        assert settings["background"] == [0, 128, 0]
        assert settings["exif_transpose"] is False


def test_gradcam_command_writes_figure(tiny_predictor, tmp_path):
    photo = write_photo(tmp_path / "photos" / "a.png", (200, 30, 30))
    out = tmp_path / "gradcam"

    status = main(["gradcam", str(photo), "--map", str(tmp_path), "--dim", "0", "2", "--layer", "2",
                   "-o", str(out)])

    table = pd.read_csv(out / "gradcam.csv")
    assert status == 0
    assert table["figure"].tolist() == ["a_gradcam.png", "a_gradcam.png"]
    assert Image.open(out / "a_gradcam.png").size[0] > 0


def test_manipulate_rejects_photo_as_own_mask(tiny_predictor, tmp_path, capsys):
    photo = write_photo(tmp_path / "photos" / "a.png", (200, 30, 30))
    out = tmp_path / "manipulate"

    status = main(["manipulate", str(photo), "--map", str(tmp_path), "--masks", str(photo.parent),
                   "--edits", "silhouette", "-o", str(out)])

    assert status == 1
    assert f"mask {photo} is the image {photo} itself" in capsys.readouterr().err
    assert not out.exists()


def test_output_beside_symlinked_photo_rejected(tiny_predictor, tmp_path, capsys):
    target = write_photo(tmp_path / "elsewhere" / "a.png", (200, 30, 30))
    link = tmp_path / "photos" / "a.png"
    link.parent.mkdir()
    link.symlink_to(target)

    status = main(["gradcam", str(link), "--map", str(tmp_path), "--dim", "0", "--layer", "2",
                   "-o", str(link.parent)])

    assert status == 1
    assert f"the output folder {link.parent} overlaps the input {link}" in capsys.readouterr().err
    assert sorted(path.name for path in link.parent.iterdir()) == ["a.png"]


def test_gradcam_rejects_overlong_image_name(tiny_predictor, tmp_path, capsys):
    photo = write_photo(tmp_path / "photos" / f"{'a' * 240}.png", (200, 30, 30))
    out = tmp_path / "gradcam"

    status = main(["gradcam", str(photo), "--map", str(tmp_path), "--dim", "0", "--layer", "2",
                   "-o", str(out)])

    assert status == 1
    assert (f"the output file {'a' * 240}_dim0_heatmap.png for the image {photo} would have a name of "
            "257 bytes, more than the 255 that file systems allow; rename the image to at most 238 "
            "bytes before its suffix") in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize(("command", "out_name"), [("gradcam", "photos/gradcam"), ("manipulate", "photos/out"),
                                                   ("manipulate", "photos/deeper/out")])
def test_output_inside_photo_folder_rejected(tiny_predictor, tmp_path, capsys, command, out_name):
    photo = write_photo(tmp_path / "photos" / "a.png", (200, 30, 30))
    options = ["--dim", "0", "--layer", "2"] if command == "gradcam" else ["--edits", "grayscale"]
    out = tmp_path / out_name

    status = main([command, str(photo), "--map", str(tmp_path), *options, "-o", str(out)])

    assert status == 1
    assert capsys.readouterr().err.endswith(
        f"error: the output folder {out} lies inside {photo.parent}, the folder of the input image {photo}, "
        f"so a later dimalign extract or {command} of that folder would read its pictures as images; "
        f"choose an output folder outside {photo.parent}\n"
    )
    assert sorted(path.name for path in (tmp_path / "photos").iterdir()) == ["a.png"]


def test_output_beside_photo_folder_accepted(tiny_predictor, tmp_path):
    photo = write_photo(tmp_path / "photos" / "a.png", (200, 30, 30))

    status = main(["gradcam", str(photo), "--map", str(tmp_path), "--dim", "0", "--layer", "2",
                   "-o", str(tmp_path / "gradcam")])

    assert status == 0
    assert (tmp_path / "gradcam" / "a_gradcam.png").is_file()


def test_gradcam_heatmap_on_crop(monkeypatch, tmp_path):
    from torch import nn
    from torchvision import transforms as T

    # A 1 x 1 convolution that passes the red channel, so Grad-CAM is the red channel, min-max scaled.
    model = nn.Sequential(nn.Conv2d(3, 1, 1, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([1.0, 0.0, 0.0]).reshape(1, 3, 1, 1))
    predictor = DimensionPredictor(
        model, "0", np.ones((1, 1)), np.zeros(1), pooling="gap",
        preprocessing=ImagePreprocessing(pil_steps=T.CenterCrop((16, 16)), input_size=(16, 16)),
    )
    monkeypatch.setattr(DimensionPredictor, "from_map_dir", classmethod(lambda cls, *args, **kwargs: predictor))
    # 40 x 16 pixels: the centre crop keeps columns 12 to 27. Red lies at columns 0-3, which the
    # crop drops, and at columns 20-23 of rows 4-7, which are columns 8-11 of the crop.
    pixels = np.zeros((16, 40, 3), dtype=np.uint8)
    pixels[:, :4, 0] = 255
    pixels[4:8, 20:24, 0] = 255
    pixels[:, 12:28, 1] = 100
    photo = tmp_path / "photos" / "wide.png"
    photo.parent.mkdir()
    Image.fromarray(pixels).save(photo)
    out = tmp_path / "gradcam"

    status = main(["gradcam", str(photo), "--map", str(tmp_path), "--dim", "0", "-o", str(out)])

    seen = np.asarray(Image.open(out / "wide_input.png"))
    heatmap = np.asarray(Image.open(out / "wide_dim0_heatmap.png"))
    hot = np.zeros((16, 16), dtype=bool)
    hot[4:8, 8:12] = True
    assert status == 0
    np.testing.assert_array_equal(seen, pixels[:, 12:28])
    assert heatmap.shape == (16, 16, 3)
    assert {tuple(pixel) for pixel in heatmap[hot]} == {tuple(heatmap[5, 9])}
    assert {tuple(pixel) for pixel in heatmap[~hot]} == {tuple(heatmap[0, 0])}
    assert heatmap[5, 9, 0] > heatmap[5, 9, 2]
    assert heatmap[0, 0, 2] > heatmap[0, 0, 0]


@pytest.mark.parametrize("command", ["gradcam", "manipulate"])
def test_non_image_file_named(tiny_predictor, tmp_path, capsys, command):
    write_photo(tmp_path / "photos" / "a.png", (200, 30, 30))
    fake = tmp_path / "photos" / "b.jpg"
    fake.write_text("not an image")
    options = ["--dim", "0", "--layer", "2"] if command == "gradcam" else ["--edits", "grayscale"]
    out = tmp_path / "out"

    status = main([command, str(tmp_path / "photos"), "--map", str(tmp_path), *options, "-o", str(out)])

    assert status == 1
    assert capsys.readouterr().err.endswith(
        f"error: cannot read image {fake}: not an image file Pillow can read; replace the file "
        "or leave it out of the inputs\n"
    )
    assert not out.exists()


def test_masks_inside_image_folder_rejected(tiny_predictor, tmp_path, capsys):
    write_photo(tmp_path / "photos" / "a.png", (200, 30, 30))
    masks = tmp_path / "photos" / "masks"
    write_photo(masks / "a.png", (255, 255, 255))
    out = tmp_path / "out"

    status = main(["manipulate", str(tmp_path / "photos"), "--map", str(tmp_path), "--masks", str(masks),
                   "--edits", "silhouette", "-o", str(out)])

    assert status == 1
    assert capsys.readouterr().err.endswith(
        f"error: the mask folder {masks} lies inside the image folder {tmp_path / 'photos'}, so its masks "
        f"would be read as photos too; move the masks out of {tmp_path / 'photos'}\n"
    )
    assert not out.exists()


@pytest.mark.parametrize("command", ["gradcam", "manipulate"])
def test_output_beside_link_target_rejected(tiny_predictor, tmp_path, capsys, command):
    target = write_photo(tmp_path / "elsewhere" / "a.png", (200, 30, 30))
    link = tmp_path / "photos" / "a.png"
    link.parent.mkdir()
    link.symlink_to(target)
    options = ["--dim", "0", "--layer", "2"] if command == "gradcam" else ["--edits", "grayscale"]
    out = target.parent / "out"

    status = main([command, str(link.parent), "--map", str(tmp_path), *options, "-o", str(out)])

    assert status == 1
    assert f"error: the output folder {out} lies inside {target.parent}, the folder of the input image " in (
        capsys.readouterr().err
    )
    assert not out.exists()
