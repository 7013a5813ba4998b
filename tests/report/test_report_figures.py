"""Figures drawn from the saved results of the tiny study, checked by content (axes, lines, patches, images)."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from matplotlib.lines import Line2D
from report_helpers import N_OBJECTS

from dimalign.report import figures
from dimalign.report.results import (
    StudyResults,
    assign_categories,
    category_blocks,
    read_category_matrix,
)

pytestmark = pytest.mark.filterwarnings("ignore:the chosen ridge penalty")


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def data_lines(axis) -> list[Line2D]:
    """Lines that carry data: neither axhline nor axvline (whose data spans the axes in axes units)."""
    return [line for line in axis.get_lines() if line.get_transform() == axis.transData]


def written(out_dir, stem) -> bool:
    return (out_dir / f"{stem}.png").stat().st_size > 0 and (out_dir / f"{stem}.svg").stat().st_size > 0


# -- categories -----------------------------------------------------------------------


def test_first_category_wins_and_none_is_other():
    membership = np.array([[1, 1, 0], [0, 0, 0], [0, 1, 0], [0, 0, 1], [1, 0, 1]], dtype=bool)
    assert assign_categories(membership).tolist() == [0, -1, 1, 2, 0]
    blocks = category_blocks(assign_categories(membership), ["a", "b", "c"])
    assert blocks.order.tolist() == [0, 4, 2, 3, 1]
    assert blocks.names == ["a", "b", "c", "other"]
    assert blocks.starts.tolist() == [0, 2, 3, 4]
    assert blocks.stops.tolist() == [2, 3, 4, 5]


def test_things_categories_by_first_membership(things_dir):
    names, membership = read_category_matrix(things_dir / "category_mat_manual.tsv", 1854)
    assert len(names) == 27
    blocks = category_blocks(assign_categories(membership), names)
    sizes = dict(zip(blocks.names, (blocks.stops - blocks.starts).tolist()))
    # Counted from the file: 559 concepts are in no category. All 27 birds are also
    # animals, and "animal" comes first in the header, so "bird" gets no block.
    assert sizes["other"] == 559
    assert sizes["animal"] == 177
    assert sizes["food"] == 238
    assert "bird" not in sizes
    assert blocks.names[-1] == "other"
    assert sum(sizes.values()) == 1854


def test_category_rows_must_match_objects(tmp_path):
    path = tmp_path / "categories.tsv"
    path.write_text("a\tb\n1\t0\n0\t1\n")
    with pytest.raises(ValueError, match=r"has 2 rows but the study has 3 objects"):
        read_category_matrix(path, 3)
    path.write_text("a\tb\n1\t0\n0\t2\n")
    with pytest.raises(ValueError, match=r"line 3, column 'b': category membership '2' is invalid; use 0 or 1"):
        read_category_matrix(path, 2)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        # One word in a numeric column used to turn the whole column into text
        # and blame the first line.
        ("a\tb\n1\t0\n0\t1\n1\tyes\n", r"line 4, column 'b': category membership 'yes' is invalid"),
        ("a\tb\n1\t0\n0\t\n1\t0\n", r"line 3, column 'b': category membership '' is invalid"),
        ("a\tb\n1\t0\n0\t0.5\n1\t0\n", r"line 3, column 'b': category membership '0.5' is invalid"),
        ("a\tb\n1\t0\n0\tnan\n1\t0\n", r"line 3, column 'b': category membership 'nan' is invalid"),
        ("a\tb\n1\t0\n0\t1\t1\n1\t0\n", r"cannot be read as a category matrix \(Error tokenizing data"),
        ("", r"cannot be read as a category matrix \(No columns to parse from file\)"),
    ],
)
def test_category_matrix_errors_name_line(tmp_path, text, message):
    path = tmp_path / "categories.tsv"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        read_category_matrix(path, 3)



@pytest.mark.parametrize(
    "text",
    [
        "a\tb\n1\t0\n0\t1\n1\t1\n",
        # numpy.savetxt's default format, and pandas' output of float and bool columns.
        "a\tb\n1.000000000000000000e+00\t0.000000000000000000e+00\n0.000000000000000000e+00\t"
        "1.000000000000000000e+00\n1.000000000000000000e+00\t1.000000000000000000e+00\n",
        "a\tb\n1.0\t0.0\n0.0\t1.0\n1.0\t1.0\n",
        "a\tb\nTrue\tFalse\nFalse\tTrue\nTrue\tTrue\n",
    ],
)
def test_category_matrix_reads_numbers_and_bools(tmp_path, text):
    path = tmp_path / "categories.tsv"
    path.write_text(text)
    names, membership = read_category_matrix(path, 3)
    assert names == ["a", "b"]
    assert membership.dtype == bool
    assert membership.tolist() == [[True, False], [False, True], [True, True]]


# -- the figures ------------------------------------------------------------------------


def test_similarity_matrices_sorted_by_category(tiny_results, tmp_path):
    figure = figures.plot_similarity_matrices(tiny_results, tmp_path)
    axes = [axis for axis in figure.get_axes() if axis.get_label() != "<colorbar>"]
    assert len(axes) == 2
    assert [axis.get_title() for axis in axes] == [
        f"human similarity ({N_OBJECTS} objects)", f"DNN similarity ({N_OBJECTS} objects)",
    ]
    # Helper categories: i % 3 in (0, 1) animal (the birds first belong to animal),
    # i % 6 == 2 tool, i % 6 == 5 none: blocks of 16, 4 and 4 objects.
    for axis in axes:
        assert [label.get_text() for label in axis.get_yticklabels()] == ["animal", "tool", "other"]
        assert axis.get_yticks().tolist() == [7.5, 17.5, 21.5]
        assert len(axis.get_lines()) == 4  # 2 boundaries, each as a horizontal and a vertical line
        assert len(axis.get_images()) == 1
        assert axis.get_images()[0].get_array().shape == (N_OBJECTS, N_OBJECTS)
    assert written(tmp_path, "similarity_matrices")


def test_similarity_matrices_have_colour_bars(tiny_results, tmp_path):
    figure = figures.plot_similarity_matrices(tiny_results, tmp_path)

    bars = [axis for axis in figure.get_axes() if axis.get_label() == "<colorbar>"]
    images = [axis.get_images()[0] for axis in figure.get_axes() if axis.get_images()]
    assert len(bars) == 2
    for bar, image in zip(bars, images):
        assert bar.get_ylabel() == "p(pair chosen as most similar)"
        low, high = bar.get_ylim()
        assert (low, high) == pytest.approx(image.get_clim())


def test_similarity_matrix_rows_follow_blocks(tiny_results, tmp_path):
    figure = figures.plot_similarity_matrices(tiny_results, tmp_path)
    shown = figure.get_axes()[0].get_images()[0].get_array()
    matrix, _ = tiny_results.similarity("human")
    animals = [index for index in range(N_OBJECTS) if index % 3 in (0, 1)]
    others = [index for index in range(N_OBJECTS) if index % 6 == 5]
    assert shown[0, 1] == pytest.approx(matrix[animals[0], animals[1]], rel=1e-6)
    assert shown[20, 23] == pytest.approx(matrix[others[0], others[3]], rel=1e-6)


def test_similarity_without_categories_keeps_order(tiny_study, tmp_path):
    figure = figures.plot_similarity_matrices(StudyResults(tiny_study), tmp_path)
    for axis in [axis for axis in figure.get_axes() if axis.get_label() != "<colorbar>"]:
        assert axis.get_yticks().tolist() == []
        assert axis.get_lines() == []


def test_matching_and_cumulative_rsa(tiny_results, tmp_path):
    figure = figures.plot_matching(tiny_results, tmp_path)
    left, right = figure.get_axes()
    matching = tiny_results.matching()
    methods = list(dict.fromkeys(matching["method"]))
    assert [text.get_text() for text in left.get_legend().get_texts()] == [
        figures.MATCHING_LABELS[method] for method in methods
    ]
    lines = data_lines(left)
    assert len(lines) == len(methods)
    for line, method in zip(lines, methods):
        expected = np.sort(matching.loc[matching["method"] == method, "r"].to_numpy())[::-1]
        np.testing.assert_allclose(line.get_ydata(), expected)
    cumulative = tiny_results.cumulative()
    (curve,) = data_lines(right)
    np.testing.assert_allclose(curve.get_ydata(), cumulative["r2"])
    full_r2 = tiny_results.rsa()["r"] ** 2
    # The cumulative curve ends at the full model.
    assert cumulative["r2"].iloc[-1] == pytest.approx(full_r2)
    # The tiny study's 3-epoch fits leave 0 inside the interval of the full r,
    # so a share of its r² means nothing: no 95% mark, and the legend gives the reason.
    rsa = tiny_results.rsa()
    assert rsa["cumulative_full_r_ci_low"] <= 0
    assert len(right.get_lines()) == 1
    legend = [" ".join(text.get_text().split()) for text in right.get_legend().get_texts()]
    # Unmatched DNN dimensions follow the matched ones on the curve.
    assert legend[0] == "first k DNN dimensions, in matched order"
    assert legend[1] == (
        f"no 95% mark: the 95% interval [{rsa['cumulative_full_r_ci_low']:.3f}, "
        f"{rsa['cumulative_full_r_ci_high']:.3f}] of the full DNN model's r contains 0"
    )
    assert right.get_title() == "Cumulative RSA with the human similarity"
    assert written(tmp_path, "matching")


@pytest.mark.parametrize("n_for_95", [None, 2])
def test_cumulative_rsa_marks_95_percent(tiny_study, tmp_path, n_for_95):
    import json
    import shutil

    study = tmp_path / "study"
    shutil.copytree(tiny_study, study, ignore=shutil.ignore_patterns("report"))
    path = study / "compare" / "rsa.json"
    rsa = json.loads(path.read_text())
    # As for a full r whose interval lies above 0.
    rsa.update({"r": 0.4, "cumulative_full_r": 0.4, "ci_low": 0.2, "cumulative_full_r_ci_low": 0.2,
                "n_dnn_dims_for_95_percent": n_for_95})
    path.write_text(json.dumps(rsa))

    figure = figures.plot_matching(StudyResults(study), tmp_path)
    right = figure.get_axes()[1]
    assert right.get_lines()[1].get_ydata()[0] == pytest.approx(0.95 * 0.4**2)
    assert len(right.get_lines()) == 2 + (n_for_95 is not None)
    legend = [text.get_text() for text in right.get_legend().get_texts()]
    assert legend[1] == f"95% of the full model's r² = {0.4**2:.3f}"
    if n_for_95 is not None:
        assert right.get_lines()[2].get_xdata()[0] == n_for_95


def test_training_curves_per_epoch(tiny_results, tmp_path):
    figure = figures.plot_training_curves(tiny_results, tmp_path)
    loss, accuracy, dims = figure.get_axes()
    assert [axis.get_title() for axis in (loss, accuracy, dims)] == [
        "Training loss", "Odd-one-out accuracy", "Kept dimensions",
    ]
    assert len(loss.get_lines()) == 2
    assert len(accuracy.get_lines()) == 4
    assert len(dims.get_lines()) == 2
    history = tiny_results.history("human")
    np.testing.assert_allclose(loss.get_lines()[0].get_ydata(), history["loss"])
    assert loss.get_lines()[0].get_xdata().tolist() == [1, 2, 3]
    # Epochs and kept dimensions are counts, so their ticks are whole numbers.
    figure.canvas.draw()
    for axis in (loss, accuracy, dims):
        assert all(float(tick).is_integer() for tick in axis.get_xticks())
    assert all(float(tick).is_integer() for tick in dims.get_yticks())
    assert written(tmp_path, "training_curves")


def test_dimension_with_images_and_word_cloud(tiny_results, tmp_path):
    figure = figures.plot_dimension(tiny_results, "human", 0, tmp_path, top_k=4)
    axes = figure.get_axes()
    assert len(axes) == 5  # four object images and the word cloud
    assert all(len(axis.get_images()) == 1 for axis in axes)
    weights = tiny_results.embedding("human")[:, 0]
    top = np.argsort(-weights, kind="stable")[:4]
    assert [axis.get_title() for axis in axes[:4]] == [tiny_results.objects.object_ids[row][:18] for row in top]
    assert [axis.get_xlabel() for axis in axes[:4]] == [f"weight {weights[row]:.2f}" for row in top]
    assert axes[4].get_title() == "labels"
    title = figure._suptitle.get_text()
    assert title.startswith("human dimension 0 (label 0 (2); round </script> (1))")
    match = tiny_results.best_match("human", 0)
    assert f"best DNN match: dimension {match['other_dim']}, r = {match['r']:.2f}" in title
    assert written(tmp_path, "dimension_human_000")


def test_dimension_without_images_shows_bars(tiny_study, tmp_path):
    results = StudyResults(tiny_study)
    figure = figures.plot_dimension(results, "dnn", 1, tmp_path, top_k=5, stem="dnn_one")
    (axis,) = figure.get_axes()
    assert len(axis.patches) == 5
    weights = results.embedding("dnn")[:, 1]
    top = np.argsort(-weights, kind="stable")[:5]
    assert [label.get_text() for label in axis.get_yticklabels()] == [results.objects.object_ids[row] for row in top]
    assert [patch.get_width() for patch in axis.patches] == pytest.approx(weights[top].tolist())
    assert written(tmp_path, "dnn_one")


def test_dimension_out_of_range(tiny_results, tmp_path):
    with pytest.raises(ValueError, match="human dimension 99 does not exist"):
        figures.plot_dimension(tiny_results, "human", 99, tmp_path)


def test_kind_shares_of_dimensions_and_choices(tiny_results, tmp_path):
    figure = figures.plot_kind_shares(tiny_results, tmp_path)
    dims_axis, choices_axis = figure.get_axes()
    shares = pd.read_csv(tiny_results.labels_dir / "shares.csv")
    assert len(dims_axis.patches) == int((shares["share"] > 0).sum())
    assert [label.get_text() for label in dims_axis.get_yticklabels()] == ["human", "DNN"]
    for axis in (dims_axis, choices_axis):
        for position in (0, 1):
            widths = [patch.get_width() for patch in axis.patches if patch.get_y() < position < patch.get_y() + 1]
            assert sum(widths) == pytest.approx(1.0)
    assert choices_axis.get_title() == "Kinds of dimensions: share of triplet choices"
    assert written(tmp_path, "kind_shares")


def test_kind_shares_need_labels(tiny_study, tmp_path):
    with pytest.raises(FileNotFoundError, match="inputs.labels"):
        figures.plot_kind_shares(StudyResults(tiny_study), tmp_path)


def test_disagreements_frame_each_choice(tiny_results, tmp_path):
    table = tiny_results.disagreements().head(3)
    figure = figures.plot_disagreements(tiny_results, tmp_path, n_triplets=3)
    axes = figure.get_axes()
    assert len(axes) == 3 * 4
    for row_number, row in enumerate(table.itertuples()):
        row_axes = axes[4 * row_number: 4 * row_number + 4]
        objects = [row.object_1, row.object_2, row.object_3]
        for axis, obj in zip(row_axes[:3], objects):
            assert len(axis.get_images()) == 1
            visible = axis.spines["top"].get_visible()
            assert visible == (obj in (row.human_odd_one_out, row.dnn_odd_one_out))
            if obj == row.human_odd_one_out:
                assert axis.spines["top"].get_edgecolor()[:3] == pytest.approx((0x1F / 255, 0x6F / 255, 0xB4 / 255))
        text = row_axes[3].texts[0].get_text()
        assert f"human: dim {row.human_dim}" in text
        assert f"DNN: dim {row.dnn_dim}" in text
    assert written(tmp_path, "disagreements")


def test_missing_result_names_stage(tmp_path):
    results = StudyResults(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"matching.csv not found: it is written by the compare stage"):
        figures.plot_matching(results, tmp_path)
    with pytest.raises(FileNotFoundError, match=r"history.csv not found: it is written by the human_fit stage"):
        figures.plot_training_curves(results, tmp_path)


def test_unlisted_stage_counts_as_absent(tiny_study, tmp_path):
    results = StudyResults(tiny_study, stage_dirs={name: tiny_study / name for name in ("human_fit", "dnn_fit")})
    assert (tiny_study / "compare" / "matching.csv").is_file()
    assert not results.has("compare", "matching.csv")
    with pytest.raises(FileNotFoundError, match=r"matching.csv not found: the study has no compare stage"):
        figures.plot_matching(results, tmp_path)
    assert results.sides() == ["human", "dnn"]


def test_dollar_signs_drawn_as_written(tiny_study, tmp_path):
    import shutil

    from dimalign.io.objects import ObjectTable, read_object_table, write_object_table

    study = tmp_path / "study"
    for name in ("human_fit", "dnn_fit", "compare"):
        shutil.copytree(tiny_study / name, study / name)
    table = read_object_table(study / "human_fit" / "objects.tsv")
    names = list(table.object_ids)
    names[:2] = ["$\\frac$", "price $5 or $10"]
    for name in ("human_fit", "dnn_fit"):
        write_object_table(ObjectTable(tuple(names), table.sources), study / name / "objects.tsv")
    results = StudyResults(study)

    figure = figures.plot_dimension(results, "human", 0, tmp_path / "figures", top_k=N_OBJECTS)
    (axis,) = figure.get_axes()
    labels = axis.get_yticklabels()
    assert sorted(label.get_text() for label in labels) == sorted(names)
    assert not any(label.get_parse_math() for label in labels)
    assert written(tmp_path / "figures", "dimension_human_000")
    figures.plot_disagreements(results, tmp_path / "figures", n_triplets=20)
    assert written(tmp_path / "figures", "disagreements")


def test_labels_without_resolved_kind(tiny_study, tmp_path):
    labels = tmp_path / "labels"
    labels.mkdir()
    pd.DataFrame([
        {"embedding": "human_fit", "dimension": 0, "top_labels": "round (2)", "resolved_kind": None},
        {"embedding": "human_fit", "dimension": 1, "top_labels": None, "resolved_kind": "visual"},
    ]).to_csv(labels / "dimensions.csv", index=False)
    results = StudyResults(tiny_study, labels=labels)
    assert results.labels_of("human", 0) == {"top_labels": "round (2)", "kind": "", "wordcloud": None}
    assert results.labels_of("human", 1) == {"top_labels": "", "kind": "visual", "wordcloud": None}
    assert results.labels_of("dnn", 0) is None


def test_truncated_image_names_file(tiny_study, tmp_path):
    import shutil

    images = tmp_path / "images"
    shutil.copytree(tiny_study.parent / "data" / "images", images)
    broken = images / "object03.png"
    broken.write_bytes(broken.read_bytes()[:60])
    results = StudyResults(tiny_study, images=images)
    with pytest.raises(ValueError, match=rf"{broken} cannot be read as an image \(.*\); replace or remove it"):
        figures.plot_dimension(results, "human", 0, tmp_path / "figures", top_k=N_OBJECTS)


def test_disagreements_without_jackknife_name_setting(tiny_study, tmp_path):
    import json
    import shutil

    study = tmp_path / "study"
    shutil.copytree(tiny_study / "compare", study / "compare")
    (study / "compare" / "disagreements.csv").unlink()
    results = StudyResults(study)
    with pytest.raises(FileNotFoundError, match=r"disagreements.csv not found: it is written by the compare stage"):
        figures.plot_disagreements(results, tmp_path)

    # As written by a compare stage that ran with relevance_triplets = 0.
    manifest = json.loads((study / "compare" / "manifest.json").read_text())
    manifest["pipeline"]["settings"]["relevance_triplets"] = 0
    manifest["pipeline"]["settings"]["matrix_objects"] = 0
    (study / "compare" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(FileNotFoundError, match=r"the compare stage ran with relevance_triplets = 0, which "
                       r"explains no triplet; set compare.relevance_triplets to 'all' or a number"):
        figures.plot_disagreements(StudyResults(study), tmp_path)
    for side in ("human", "dnn"):
        (study / "compare" / f"{side}_similarity.npy").unlink()
    with pytest.raises(FileNotFoundError, match=r"human_similarity.npy not found: the compare stage ran with "
                       r"matrix_objects = 0, which saves no similarity matrix"):
        figures.plot_similarity_matrices(StudyResults(study), tmp_path)


def test_missing_glyphs_warned_once_per_figure(tmp_path):
    """matplotlib warns once per glyph and file; object names in Japanese gave dozens of lines."""
    import warnings

    figure, axis = plt.subplots()
    axis.set_title("あい あ")
    axis.plot([0, 1], [0, 1])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        figures.save_figure(figure, tmp_path, "names")
    plt.close(figure)

    messages = [str(warning.message) for warning in caught]
    assert len(messages) == 1
    assert messages[0].startswith("names: the figure font has no glyph for 'あい', so these characters show as boxes")


# -- object images decoded as dimalign extract decodes them ------------------------------


def shown_pixels(path, decoding=None) -> np.ndarray:
    """Draw an object image on a fresh axis and return the pixels that the axis shows."""
    _, axis = plt.subplots()
    figures._show_image(axis, path, decoding)
    (shown,) = axis.get_images()
    return np.asarray(shown.get_array())


def test_object_image_applies_exif_orientation(tmp_path):
    from PIL import Image

    upright = np.zeros((20, 40, 3), np.uint8)
    upright[:, :20] = (255, 0, 0)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display", as phones store portrait photos
    photo = tmp_path / "phone.png"
    Image.fromarray(upright).transpose(Image.Transpose.ROTATE_90).save(photo, exif=exif)

    pixels = shown_pixels(photo)

    assert pixels.shape == (20, 40, 3)
    assert tuple(pixels[10, 5]) == (255, 0, 0)
    assert tuple(pixels[10, 35]) == (0, 0, 0)


def test_object_image_transparency_on_white(tmp_path):
    from PIL import Image

    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[:, :4] = (0, 0, 255, 255)
    path = tmp_path / "cutout.png"
    Image.fromarray(rgba, "RGBA").save(path)

    pixels = shown_pixels(path)

    assert tuple(pixels[0, 0]) == (0, 0, 255)
    assert tuple(pixels[0, 7]) == (255, 255, 255)


def test_object_image_given_background(tmp_path):
    from PIL import Image

    from dimalign.features.recorded import Decoding

    path = tmp_path / "clear.png"
    Image.new("RGBA", (8, 8), (0, 0, 0, 0)).save(path)

    pixels = shown_pixels(path, Decoding((0, 128, 0)))

    assert tuple(pixels[0, 0]) == (0, 128, 0)


def test_object_image_16_bit_gray_scaled(tmp_path):
    from PIL import Image

    gray = np.array([[0, 257 * 100], [257 * 200, 65535]], np.uint16)
    path = tmp_path / "scan.png"
    Image.fromarray(gray).save(path)

    pixels = shown_pixels(path)

    assert pixels[:, :, 0].tolist() == [[0, 100], [200, 255]]


def test_object_image_over_pixel_limit_names_file(tmp_path, monkeypatch):
    from PIL import Image

    path = tmp_path / "huge.png"
    Image.new("RGB", (64, 64)).save(path)
    # Pillow raises DecompressionBombError above twice MAX_IMAGE_PIXELS.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)

    with pytest.raises(ValueError, match=rf"{path} cannot be read as an image \(more pixels than Pillow decodes"):
        shown_pixels(path)


def test_object_image_found_by_relative_path_id(tmp_path):
    from PIL import Image

    from dimalign.io.objects import ObjectTable, write_object_table

    # An object table whose ids are image paths and whose source column is empty.
    (tmp_path / "study" / "human_fit").mkdir(parents=True)
    write_object_table(ObjectTable(("photos/IMG_0001.JPG",), ("",)),
                       tmp_path / "study" / "human_fit" / "objects.tsv")
    (tmp_path / "images" / "photos").mkdir(parents=True)
    Image.new("RGB", (4, 4)).save(tmp_path / "images" / "photos" / "IMG_0001.JPG", format="JPEG")

    results = StudyResults(tmp_path / "study", images=tmp_path / "images")

    assert results.image(0) == tmp_path / "images" / "photos" / "IMG_0001.JPG"


def test_dimension_with_missing_images_warns(tiny_study, tmp_path, caplog):
    import logging

    empty = tmp_path / "images"
    empty.mkdir()
    results = StudyResults(tiny_study, images=empty)

    with caplog.at_level(logging.WARNING, logger="dimalign.report.figures"):
        figure = figures.plot_dimension(results, "dnn", 1, tmp_path, top_k=5, stem="dnn_one")

    (axis,) = figure.get_axes()
    assert len(axis.patches) == 5
    assert f"5 of the 5 top objects of DNN dimension 1 have no image under {empty}" in caplog.text


def test_labels_of_reads_json_top_labels(tiny_study, tmp_path):
    labels = tmp_path / "labels"
    labels.mkdir()
    pd.DataFrame([
        {"embedding": "human_fit", "dimension": 0, "resolved_kind": "visual",
         "top_labels": '[{"label": "red; round", "count": 2}, {"label": "NA", "count": 1}]'},
        {"embedding": "human_fit", "dimension": 1, "resolved_kind": "visual", "top_labels": "[]"},
    ]).to_csv(labels / "dimensions.csv", index=False)
    results = StudyResults(tiny_study, labels=labels)

    assert results.labels_of("human", 0) == {"top_labels": "red; round (2); NA (1)", "kind": "visual", "wordcloud": None}
    assert results.labels_of("human", 1) == {"top_labels": "", "kind": "visual", "wordcloud": None}


def test_invalid_top_labels_fail_check(tmp_path):
    """A bad top_labels cell stops the report before it draws, not at the dimension's figure."""
    from dimalign.report.results import check_labels_summary

    labels = tmp_path / "labels"
    labels.mkdir()
    pd.DataFrame([
        {"embedding": "human_fit", "dimension": 0, "top_labels": "red (3); round (2)"},
        {"embedding": "human_fit", "dimension": 1, "top_labels": '[{"label": "red"}]'},
    ]).to_csv(labels / "dimensions.csv", index=False)

    with pytest.raises(ValueError) as error:
        check_labels_summary(labels, {"human": "human_fit"})

    assert str(error.value).startswith(
        f"{labels / 'dimensions.csv'}, line 3: invalid top_labels value '[{{\"label\": \"red\"}}]': the entry "
    )


def test_report_figures_keep_caller_backend(tiny_study, tmp_path):
    # A notebook's inline backend must survive the report figures, so they may not call matplotlib.use.
    import subprocess
    import sys

    script = """
import sys
import matplotlib
matplotlib.use("pdf")
import matplotlib.pyplot as plt
from dimalign.report import figures
figure = figures.plot_training_curves(sys.argv[1], sys.argv[2])
print(matplotlib.get_backend(), len(plt.get_fignums()))
"""
    result = subprocess.run(
        [sys.executable, "-c", script, str(tiny_study), str(tmp_path)], capture_output=True, text=True, check=True
    )

    assert result.stdout.split() == ["pdf", "0"]
    assert (tmp_path / "training_curves.png").is_file()


def test_command_compare_names_missing_option(tmp_path):
    import json

    from dimalign.analysis.compare import compare

    rng = np.random.default_rng(0)
    study = tmp_path / "study"
    compare(rng.gamma(1.0, size=(12, 3)), rng.gamma(1.0, size=(12, 4)), study / "compare", n_bootstrap=0, top_k=2)
    assert json.loads((study / "compare" / "manifest.json").read_text())["step"] == "compare"
    results = StudyResults(study)
    with pytest.raises(FileNotFoundError) as error:
        figures.plot_similarity_matrices(results, tmp_path)
    assert str(error.value) == (
        f"{study / 'compare' / 'human_similarity.npy'} not found: dimalign compare writes it only with "
        "--save-similarity; rerun the comparison with that option"
    )
    with pytest.raises(FileNotFoundError) as error:
        results.disagreements()
    assert str(error.value) == (
        f"{study / 'compare' / 'disagreements.csv'} not found: dimalign compare writes it only with "
        "--triplets; rerun the comparison with that option"
    )
