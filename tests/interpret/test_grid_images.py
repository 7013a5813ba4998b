"""Image grids of dimensions: composites, missing files, and the grid command."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageDraw

from dimalign.cli import main
from dimalign.interpret.grid_images import BORDER_COLOUR, GridCell, _font, compose_grid, image_paths
from dimalign.interpret.grids import percentile_grid, top_objects
from dimalign.io.objects import ObjectTable, write_object_table
from dimalign.io.runs import EmbeddingResult, save_embedding


def solid(colour: tuple[int, int, int], size: tuple[int, int] = (20, 10)) -> Image.Image:
    return Image.new("RGB", size, colour)


def test_compose_grid_layout():
    cells = [GridCell(solid((255, 0, 0)), "a"), GridCell(solid((0, 0, 255)), "b"), GridCell(solid((0, 255, 0)), "c")]

    grid = compose_grid(cells, 2, cell_size=40, border=1, padding=4, font_size=11)

    # width = padding + n_cols * (cell + 2 border + padding); height adds a caption of font + 6 per row.
    assert grid.size == (4 + 2 * (42 + 4), 4 + 2 * (42 + 17 + 4))
    assert grid.getpixel((4, 4)) == BORDER_COLOUR
    assert grid.getpixel((4 + 1 + 20, 4 + 1 + 20)) == (255, 0, 0)
    assert grid.getpixel((4 + 46 + 1 + 20, 4 + 1 + 20)) == (0, 0, 255)
    # A 20 x 10 picture is padded to the square with white above and below.
    assert grid.getpixel((4 + 1 + 20, 4 + 1 + 2)) == (255, 255, 255)


def test_compose_grid_title_adds_bar():
    cells = [GridCell(solid((0, 0, 0)), "x")]

    plain = compose_grid(cells, 1, cell_size=30)
    titled = compose_grid(cells, 1, cell_size=30, title="dimension 0")

    assert titled.size[1] == plain.size[1] + 11 + 14


def test_image_paths_lists_every_missing_file(tmp_path):
    solid((1, 2, 3)).save(tmp_path / "present.png")
    table = ObjectTable(("a", "b", "c"), ("present.png", "gone1.png", "gone2.png"))

    with pytest.raises(FileNotFoundError, match="2 objects have no image") as caught:
        image_paths(table, tmp_path, [0, 1, 2])

    assert str(caught.value).endswith(": gone1.png, gone2.png")


def test_grid_without_images_names_current_folder(colour_objects, tmp_path, capsys, monkeypatch):
    _, run_dir, _ = colour_objects
    monkeypatch.chdir(tmp_path)

    status = main(["grid", str(run_dir), "-o", str(tmp_path / "grids"), "--dims", "0"])

    assert status == 1
    error = capsys.readouterr().err
    assert (f"objects have no image under the current folder {tmp_path}, where images are looked for "
            "without --images: pass the image folder with --images DIR (looked for the source column") in error
    assert not (tmp_path / "grids").exists()


def test_image_paths_finds_images_like_compare(tmp_path):
    # A source, a file named after the object id, <id>.<ext>, and the first image of <id>/.
    solid((1, 2, 3)).save(tmp_path / "source.png")
    solid((1, 2, 3)).save(tmp_path / "listed.jpg")
    solid((1, 2, 3)).save(tmp_path / "cat.png")
    (tmp_path / "dog").mkdir()
    solid((1, 2, 3)).save(tmp_path / "dog" / "b.png")
    solid((1, 2, 3)).save(tmp_path / "dog" / "a.png")
    table = ObjectTable(("x", "listed.jpg", "cat", "dog"), ("source.png", "", "", ""))

    paths = image_paths(table, tmp_path, [0, 1, 2, 3])

    assert [paths[row].relative_to(tmp_path).as_posix() for row in range(4)] == [
        "source.png", "listed.jpg", "cat.png", "dog/a.png",
    ]


@pytest.fixture
def colour_objects(tmp_path):
    """32 one-colour images, an object table and a 2-dimensional embedding run folder."""
    rng = np.random.default_rng(0)
    image_dir = tmp_path / "images"
    image_dir.mkdir()
    sources = []
    for index in range(32):
        name = f"object{index:02d}.png"
        solid(tuple(int(value) for value in rng.integers(0, 256, 3)), (24, 24)).save(image_dir / name)
        sources.append(name)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    embedding = np.stack([np.linspace(0.0, 3.1, 32), rng.uniform(0.0, 1.0, 32)], axis=1)
    save_embedding(EmbeddingResult(embedding=embedding), run_dir)
    write_object_table(ObjectTable(tuple(f"object{i}" for i in range(32)), tuple(sources)), run_dir / "objects.tsv")
    return image_dir, run_dir, embedding


def test_grid_command_percentile_layout(colour_objects, tmp_path):
    image_dir, run_dir, embedding = colour_objects
    out = tmp_path / "grids"

    status = main(["grid", str(run_dir), "--images", str(image_dir), "-o", str(out), "--layout", "percentile", "--cell-size", "32"])

    table = pd.read_csv(out / "grid.csv")
    assert status == 0
    assert sorted(path.name for path in out.glob("*.png")) == ["dim000_percentile.png", "dim001_percentile.png"]
    for dim in (0, 1):
        shown = table[table["dimension"] == dim].sort_values("position")["row"].to_numpy()
        np.testing.assert_array_equal(shown, percentile_grid(embedding[:, dim]).ravel())
    assert (out / "manifest.json").is_file()


def test_grid_command_top_layout_pixels(colour_objects, tmp_path):
    image_dir, run_dir, embedding = colour_objects
    out = tmp_path / "grids"

    status = main(["grid", str(run_dir), "--objects", str(run_dir / "objects.tsv"), "--images", str(image_dir),
                   "-o", str(out), "--top-k", "4", "--dims", "1", "--cell-size", "32"])

    best = int(top_objects(embedding[:, 1], 4)[0])
    expected = Image.open(image_dir / f"object{best:02d}.png").getpixel((0, 0))
    grid = Image.open(out / "dim001_top.png")
    # Title bar (11 + 14 px) and padding (4 px), then the first cell's 1 px border.
    assert status == 0
    assert grid.getpixel((4 + 1 + 16, 25 + 4 + 1 + 16)) == expected
    assert len(pd.read_csv(out / "grid.csv")) == 4


def test_grid_command_missing_images(colour_objects, tmp_path, capsys):
    image_dir, run_dir, _ = colour_objects
    for name in ("object31.png", "object30.png"):
        (image_dir / name).unlink()

    status = main(["grid", str(run_dir), "--images", str(image_dir), "-o", str(tmp_path / "grids"), "--dims", "0"])

    error = capsys.readouterr().err
    assert status == 1
    assert "object31.png" in error
    assert "object30.png" in error


def test_grid_command_table_length_mismatch(colour_objects, tmp_path, capsys):
    image_dir, run_dir, _ = colour_objects
    short = tmp_path / "short.tsv"
    write_object_table(ObjectTable(("only",), ("object00.png",)), short)

    status = main(["grid", str(run_dir), "--objects", str(short), "--images", str(image_dir), "-o", str(tmp_path / "g")])

    assert status == 1
    assert "lists 1 objects" in capsys.readouterr().err


def test_compose_grid_widens_for_long_title():
    cells = [GridCell(solid((0, 0, 0)), "x")]

    grid = compose_grid(cells, 1, cell_size=20, title="a title much wider than one small cell of the grid")

    assert grid.size[0] > 4 + 22 + 4


def test_grid_command_dimension_out_of_range(colour_objects, tmp_path, capsys):
    image_dir, run_dir, _ = colour_objects

    status = main(["grid", str(run_dir), "--images", str(image_dir), "-o", str(tmp_path / "grids"),
                   "--dims", "99"])

    error = capsys.readouterr().err
    assert status == 1
    assert f"the embedding {run_dir} has 2 dimensions" in error
    assert "map" not in error


def one_object_run(tmp_path, picture_path):
    """A run folder of one object with weight 1 whose image is ``picture_path``."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    save_embedding(EmbeddingResult(embedding=np.ones((1, 1))), run_dir)
    write_object_table(ObjectTable(("object",), (str(picture_path),)), run_dir / "objects.tsv")
    return run_dir


def first_cell_pixel(grid_file, x: int, y: int) -> tuple[int, int, int]:
    # Title bar (11 + 14 px) and padding (4 px), then the first cell's 1 px border.
    return Image.open(grid_file).getpixel((4 + 1 + x, 25 + 4 + 1 + y))


def test_grid_command_applies_exif_orientation(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    halves = np.zeros((32, 32, 3), dtype=np.uint8)
    halves[:, :16] = (255, 0, 0)
    halves[:, 16:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 3  # Stored upside down: viewers rotate by 180 degrees.
    Image.fromarray(halves).save(photos / "photo.jpg", exif=exif, quality=95)
    out = tmp_path / "grids"

    status = main(["grid", str(one_object_run(tmp_path, photos / "photo.jpg")), "--top-k", "1",
                   "--cell-size", "32", "-o", str(out)])

    red, green, blue = first_cell_pixel(out / "dim000_top.png", 4, 16)
    assert status == 0
    assert blue > 200
    assert red < 60


def test_grid_command_puts_transparency_on_white(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.new("RGBA", (32, 32), (0, 0, 0, 0)).save(photos / "clear.png")
    out = tmp_path / "grids"

    status = main(["grid", str(one_object_run(tmp_path, photos / "clear.png")), "--top-k", "1",
                   "--cell-size", "32", "-o", str(out)])

    assert status == 0
    assert first_cell_pixel(out / "dim000_top.png", 16, 16) == (255, 255, 255)


def test_grid_command_damaged_image_writes_nothing(colour_objects, tmp_path, capsys):
    image_dir, run_dir, _ = colour_objects
    damaged = image_dir / "object31.png"
    damaged.write_bytes(damaged.read_bytes()[:60])
    out = tmp_path / "grids"

    status = main(["grid", str(run_dir), "--images", str(image_dir), "-o", str(out), "--dims", "0"])

    error = capsys.readouterr().err
    assert status == 1
    assert f"cannot be read; replace or re-export them: {damaged}: " in error
    assert not out.exists()


def test_grid_command_top_k_above_object_count(colour_objects, tmp_path, capsys):
    image_dir, run_dir, _ = colour_objects

    status = main(["grid", str(run_dir), "--images", str(image_dir), "-o", str(tmp_path / "grids"),
                   "--top-k", "33"])

    assert status == 1
    assert f"--top-k 33 is invalid: the embedding {run_dir} has 32 objects" in capsys.readouterr().err


def test_grid_top_layout_narrow_for_few_objects(colour_objects, tmp_path):
    image_dir, run_dir, _ = colour_objects
    out = tmp_path / "grids"

    main(["grid", str(run_dir), "--images", str(image_dir), "-o", str(out), "--top-k", "2", "--dims", "0",
          "--cell-size", "64"])

    # Six columns of 64 + 2 border pixels and 4 pixels of padding take 424 pixels. Two columns
    # take 144, which the title widens.
    assert Image.open(out / "dim000_top.png").size[0] < 4 + 6 * (66 + 4)


def test_grid_command_embedding_without_dimensions(tmp_path, capsys):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    save_embedding(EmbeddingResult(embedding=np.zeros((3, 0))), run_dir)
    write_object_table(ObjectTable(("a", "b", "c"), ("a.png", "b.png", "c.png")), run_dir / "objects.tsv")
    out = tmp_path / "grids"

    status = main(["grid", str(run_dir), "--top-k", "2", "-o", str(out)])

    assert status == 1
    assert "has no dimensions" in capsys.readouterr().err
    assert not out.exists()


def test_grid_zero_weights_are_logged(colour_objects, tmp_path, caplog):
    from dimalign.interpret.grid_images import dimension_grid

    image_dir, _, embedding = colour_objects
    sparse = embedding.copy()
    sparse[2:, 0] = 0.0  # Row 0 has weight 0 already, so only row 1 stays positive.
    paths = {row: image_dir / f"object{row:02d}.png" for row in range(32)}

    with caplog.at_level("WARNING", logger="dimalign.interpret.grid_images"):
        _, rows = dimension_grid(sparse, 0, paths, top_k=4, cell_size=16)

    assert rows.tolist() == [1, 0, 2, 3]
    assert "dimension 0: 3 of the 4 objects in its top grid have weight 0" in caplog.text


def test_grid_cli_too_few_objects_names_top_layout(tmp_path, capsys):
    save_embedding(EmbeddingResult(np.arange(16.0).reshape(8, 2)), tmp_path / "run")
    write_object_table(ObjectTable.from_ids([f"object{index}" for index in range(8)]), tmp_path / "run" / "objects.tsv")

    status = main(["grid", str(tmp_path / "run"), "-o", str(tmp_path / "grids"), "--layout", "percentile"])

    assert status == 1
    assert ("the percentile layout has 30 cells but there are only 8 objects: use the top layout "
            "(CLI: --layout top --top-k 8)") in capsys.readouterr().err


@pytest.mark.parametrize("existing", ["grid.csv", "dim001_top.png"])
def test_grid_keeps_user_file(colour_objects, tmp_path, capsys, existing):
    # An existing folder without a manifest may hold the user's own files;
    # a grid or table of the same name must not replace them.
    image_dir, run_dir, _ = colour_objects
    out = tmp_path / "mine"
    out.mkdir()
    (out / existing).write_text("my notes")

    status = main(["grid", str(run_dir), "--images", str(image_dir), "-o", str(out), "--cell-size", "16"])

    assert status == 1
    assert f"{out / existing} exists" in capsys.readouterr().err
    assert sorted(path.name for path in out.iterdir()) == [existing]
    assert (out / existing).read_text() == "my notes"


def test_failed_grid_keeps_file_added_meanwhile(colour_objects, tmp_path, stop_second_call):
    import dimalign.interpret.grid_images as grid_module

    image_dir, run_dir, _ = colour_objects
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("kept")
    stop_second_call(grid_module, "dimension_grid", RuntimeError("stopped"), out / "other.txt")

    status = main(["grid", str(run_dir), "--images", str(image_dir), "-o", str(out), "--cell-size", "16"])

    assert status == 1
    assert sorted(path.name for path in out.iterdir()) == ["notes.txt", "other.txt"]
    assert (out / "other.txt").read_text() == "written by another program during the run"


def test_grid_last_log_line_names_output(colour_objects, tmp_path, capsys):
    image_dir, run_dir, _ = colour_objects
    out = tmp_path / "grids"

    status = main(["grid", str(run_dir), "--images", str(image_dir), "-o", str(out), "--cell-size", "16"])

    last_line = capsys.readouterr().err.strip().splitlines()[-1]
    assert status == 0
    assert last_line.endswith(f" to {out}")
    assert ".partial-" not in last_line


def test_grid_prints_result_line(colour_objects, tmp_path, capsys):
    image_dir, run_dir, _ = colour_objects
    for quiet in ([], ["-q"]):
        out = tmp_path / f"grids{''.join(quiet)}"

        status = main([*quiet, "grid", str(run_dir), "--images", str(image_dir), "-o", str(out),
                       "--cell-size", "16", "--layout", "top", "--dims", "1"])

        assert status == 0
        assert capsys.readouterr().out.splitlines()[-1] == f"wrote {out}: 1 top grid"


def test_top_objects_match_argsort_with_ties():
    weights = np.array([0.2, 0.9, 0.5, 0.9, 0.0, 0.5, 0.9])

    top = top_objects(weights, 5)

    # Equal weights keep their row order, so the lower index comes first.
    np.testing.assert_array_equal(top, [1, 3, 6, 2, 5])
    np.testing.assert_array_equal(top, np.lexsort((np.arange(weights.size), -weights))[:5])


def test_percentile_grid_rows_near_percentiles():
    weights = np.random.default_rng(3).gamma(1.0, size=200)

    grid = percentile_grid(weights, n_cols=3, percentiles=(90.0, 50.0))

    np.testing.assert_array_equal(grid[0], np.argsort(-weights, kind="stable")[:3])
    for row, percentile in zip(grid[1:], (90.0, 50.0)):
        distance = np.abs(weights - np.percentile(weights, percentile))
        assert set(row) == set(np.argsort(distance, kind="stable")[:3])
        assert (np.diff(weights[row]) <= 0).all()
    assert len(set(grid.ravel())) == grid.size


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_grids_reject_non_finite_weights(bad):
    weights = np.arange(40.0)
    weights[5] = bad

    with pytest.raises(ValueError, match=r"objects \[5\] have NaN or inf weights"):
        top_objects(weights, 3)
    with pytest.raises(ValueError, match=r"objects \[5\] have NaN or inf weights"):
        percentile_grid(weights)


def test_grid_uses_recorded_background(tmp_path, record_extraction):
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.new("RGBA", (32, 32), (0, 0, 0, 0)).save(photos / "clear.png")
    run_dir = one_object_run(tmp_path, photos / "clear.png")
    record_extraction(run_dir, background=[0, 128, 0], exif_transpose=True)
    out = tmp_path / "grids"

    status = main(["grid", str(run_dir), "--top-k", "1", "--cell-size", "32", "-o", str(out)])

    assert status == 0
    assert first_cell_pixel(out / "dim000_top.png", 16, 16) == (0, 128, 0)


def test_grid_background_option(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.new("RGBA", (32, 32), (0, 0, 0, 0)).save(photos / "clear.png")
    out = tmp_path / "grids"

    status = main(["grid", str(one_object_run(tmp_path, photos / "clear.png")), "--top-k", "1",
                   "--cell-size", "32", "-o", str(out), "--background", "0,0,255"])

    assert status == 0
    assert first_cell_pixel(out / "dim000_top.png", 16, 16) == (0, 0, 255)


def test_grid_uses_recorded_exif_setting(tmp_path, record_extraction):
    photos = tmp_path / "photos"
    photos.mkdir()
    halves = np.zeros((32, 32, 3), dtype=np.uint8)
    halves[:, :16] = (255, 0, 0)
    halves[:, 16:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 3
    Image.fromarray(halves).save(photos / "photo.jpg", exif=exif, quality=95)
    run_dir = one_object_run(tmp_path, photos / "photo.jpg")
    record_extraction(run_dir, background=[255, 255, 255], exif_transpose=False)
    out = tmp_path / "grids"

    status = main(["grid", str(run_dir), "--top-k", "1", "--cell-size", "32", "-o", str(out)])

    red, green, blue = first_cell_pixel(out / "dim000_top.png", 4, 16)
    assert status == 0
    assert red > 200
    assert blue < 60


def test_grid_conflicting_background_rejected(tmp_path, capsys, record_extraction):
    Image.new("RGBA", (32, 32), (0, 0, 0, 0)).save(tmp_path / "clear.png")
    run_dir = one_object_run(tmp_path, tmp_path / "clear.png")
    extract_dir = record_extraction(run_dir, background=[0, 0, 0], exif_transpose=True)
    out = tmp_path / "grids"

    status = main(["grid", str(run_dir), "--top-k", "1", "-o", str(out), "--background", "white"])

    error = capsys.readouterr().err
    assert status != 0
    assert "--background white (RGB 255,255,255)" in error
    assert "background 0,0,0" in error
    assert str((extract_dir / "manifest.json").resolve()) in error
    assert not out.exists()


def test_grid_conflicting_exif_rejected(tmp_path, capsys, record_extraction):
    Image.new("RGB", (32, 32)).save(tmp_path / "photo.png")
    run_dir = one_object_run(tmp_path, tmp_path / "photo.png")
    record_extraction(run_dir, background=[255, 255, 255], exif_transpose=True)

    status = main(["grid", str(run_dir), "--top-k", "1", "-o", str(tmp_path / "grids"), "--no-exif-transpose"])

    error = capsys.readouterr().err
    assert status != 0
    assert "--no-exif-transpose contradicts" in error
    assert "exif_transpose true" in error


def test_compose_grid_captions_do_not_overlap():
    caption = "0.2176 -> 0.2200 (+0.0023)"
    cells = [GridCell(solid((0, 0, 0)), caption), GridCell(solid((0, 0, 0)), caption)]

    grid = compose_grid(cells, 2, cell_size=32, border=1, padding=4, font_size=11)

    text_width = ImageDraw.Draw(grid).textlength(caption, font=_font(11))
    assert grid.size[0] >= 4 + 2 * (text_width + 4)
    # The gap between the two columns stays white over the caption band too.
    gap_left = 4 + (grid.size[0] - 4) // 2 - 4
    band = grid.crop((gap_left, 4 + 34, gap_left + 4, 4 + 34 + 17))
    assert {tuple(pixel) for pixel in np.asarray(band).reshape(-1, 3)} == {(255, 255, 255)}


def test_grid_rejects_output_in_image_folder(colour_objects, capsys):
    image_dir, run_dir, _ = colour_objects
    before = sorted(path.name for path in image_dir.iterdir())

    status = main(["grid", str(run_dir), "--images", str(image_dir), "-o", str(image_dir), "--dims", "0"])

    assert status == 1
    assert "overlaps the input" in capsys.readouterr().err
    assert sorted(path.name for path in image_dir.iterdir()) == before


def test_grid_captions_name_percentile_rows():
    from dimalign.interpret.grid_images import grid_captions

    weights = np.linspace(0.0, 2.9, 30)
    chosen = percentile_grid(weights)

    captions = grid_captions(weights, chosen)

    assert captions[:6] == [f"{weights[row]:.3f}" for row in chosen[0]]
    assert captions[6] == f"p98 {weights[chosen[1, 0]]:.3f}"
    assert captions[29] == f"p80 {weights[chosen[4, 5]]:.3f}"
    assert grid_captions(weights, top_objects(weights, 3)) == ["2.900", "2.800", "2.700"]


def test_grid_rejects_output_below_images(colour_objects, capsys):
    image_dir, run_dir, _ = colour_objects
    out = image_dir / "grids"

    status = main(["grid", str(run_dir), "--images", str(image_dir), "-o", str(out), "--dims", "0"])

    assert status == 1
    assert f"the output folder {out} overlaps the input {image_dir}" in capsys.readouterr().err
    assert not out.exists()


def test_grid_output_in_current_folder(colour_objects, tmp_path, monkeypatch):
    image_dir, run_dir, _ = colour_objects
    table = ObjectTable(tuple(f"object{i}" for i in range(32)), tuple(f"images/object{i:02d}.png" for i in range(32)))
    write_object_table(table, run_dir / "objects.tsv")
    monkeypatch.chdir(tmp_path)

    status = main(["grid", "run", "--top-k", "1", "--dims", "0", "-o", "grids"])

    assert status == 0
    assert (tmp_path / "grids" / "dim000_top.png").is_file()


def test_grid_captions_own_percentiles():
    from dimalign.interpret.grid_images import grid_captions

    weights = np.linspace(0.0, 2.9, 30)
    chosen = percentile_grid(weights, percentiles=(99, 50))

    captions = grid_captions(weights, chosen, percentiles=(99, 50))
    with pytest.raises(ValueError) as error:
        grid_captions(weights, chosen)

    assert captions[6] == f"p99 {weights[chosen[1, 0]]:.3f}"
    assert captions[17] == f"p50 {weights[chosen[2, 5]]:.3f}"
    assert str(error.value) == (
        "the grid has 2 percentile rows but 4 percentiles are given (98, 95, 90, 80); "
        "pass the percentiles that chose the grid"
    )


def test_grid_title_draws_cyrillic(caplog):
    from dimalign.interpret.grid_images import _missing_glyphs, _title_font

    with caplog.at_level("WARNING", logger="dimalign.interpret.grid_images"):
        cyrillic = _title_font("фото.png", 14)
        chinese = _title_font("猫.png", 14)

    assert _missing_glyphs("фото.png", _font(14)) == "отф"
    assert _missing_glyphs("фото.png", cyrillic) == ""
    assert _missing_glyphs("猫.png", chinese) == "猫"
    assert "the title '猫.png' contains characters that no available font draws (猫)" in caplog.text
    assert "фото" not in caplog.text


def test_grid_rejects_output_below_shown_images(colour_objects, tmp_path, capsys, monkeypatch):
    image_dir, run_dir, _ = colour_objects
    table = ObjectTable(tuple(f"object{i}" for i in range(32)),
                        tuple(str(image_dir / f"object{i:02d}.png") for i in range(32)))
    write_object_table(table, run_dir / "objects.tsv")
    monkeypatch.chdir(tmp_path)
    out = image_dir / "grids"

    status = main(["grid", "run", "--top-k", "1", "--dims", "0", "-o", str(out)])

    assert status == 1
    assert f"error: the output folder {out} lies inside {image_dir}, the folder of the input image" in (
        capsys.readouterr().err
    )
    assert not out.exists()
