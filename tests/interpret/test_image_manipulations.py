"""Image edits and the predicted change of every dimension."""

from __future__ import annotations

import colorsys

import numpy as np
import pytest
import torch

from dimalign.interpret.manipulate import (
    TABLE_COLUMNS,
    Edit,
    estimate_foreground,
    gaussian_blur,
    hsv_to_rgb,
    manipulate_images,
    occlude,
    otsu_threshold,
    parse_edit,
    plot_largest_changes,
    replace_background,
    rgb_to_hsv,
    rotate_hue,
    scale_brightness,
    scale_contrast,
    scale_saturation,
    silhouette,
    to_grayscale,
)
from dimalign.interpret.predictor import DimensionPredictor


@pytest.fixture
def predictor(conv_model, ridge_coefficients):
    coef, intercept = ridge_coefficients
    return DimensionPredictor(conv_model, "3", coef, intercept, pooling="gap")


@pytest.fixture
def colour_image() -> torch.Tensor:
    return torch.rand(3, 12, 12, generator=torch.Generator().manual_seed(0))


def test_grayscale_of_gray_image_changes_nothing(predictor):
    values = torch.rand(1, 12, 12, generator=torch.Generator().manual_seed(1))
    gray = values.expand(3, 12, 12).clone()

    result = manipulate_images(predictor, {"gray": gray}, ["grayscale"])

    assert torch.equal(to_grayscale(gray), gray)
    assert result.table["change"].abs().max() <= 1e-6


def test_hue_rotation_by_360_changes_nothing(predictor, colour_image):
    result = manipulate_images(predictor, {"colour": colour_image}, ["hue:360"])

    torch.testing.assert_close(rotate_hue(colour_image, 360.0), colour_image, atol=1e-6, rtol=0)
    assert result.table["change"].abs().max() <= 1e-4


def test_hue_rotation_turns_red_to_green_and_blue():
    red = torch.zeros(3, 2, 2)
    red[0] = 1.0

    green = rotate_hue(red, 120.0)
    blue = rotate_hue(red, -120.0)

    torch.testing.assert_close(green[:, 0, 0], torch.tensor([0.0, 1.0, 0.0]), atol=1e-6, rtol=0)
    torch.testing.assert_close(blue[:, 0, 0], torch.tensor([0.0, 0.0, 1.0]), atol=1e-6, rtol=0)


def test_rgb_to_hsv_matches_colorsys(colour_image):
    hsv = rgb_to_hsv(colour_image)

    pixels = colour_image.permute(1, 2, 0).reshape(-1, 3).double().numpy()
    expected = np.array([colorsys.rgb_to_hsv(*pixel) for pixel in pixels])
    np.testing.assert_allclose(hsv.permute(1, 2, 0).reshape(-1, 3).numpy(), expected, atol=1e-6)
    torch.testing.assert_close(hsv_to_rgb(hsv), colour_image, atol=1e-6, rtol=0)


def test_grayscale_uses_bt601_weights():
    pixel = torch.tensor([0.2, 0.6, 1.0]).view(3, 1, 1)

    gray = to_grayscale(pixel)

    expected = 0.299 * 0.2 + 0.587 * 0.6 + 0.114 * 1.0
    torch.testing.assert_close(gray.flatten(), torch.full((3,), expected), atol=1e-7, rtol=0)


def test_saturation_zero_is_grayscale(colour_image):
    torch.testing.assert_close(scale_saturation(colour_image, 0.0), to_grayscale(colour_image))


def test_saturation_and_brightness_one_are_identity(colour_image):
    torch.testing.assert_close(scale_saturation(colour_image, 1.0), colour_image, atol=1e-7, rtol=0)
    assert torch.equal(scale_brightness(colour_image, 1.0), colour_image)


def test_brightness_halves_and_clips():
    image = torch.tensor([0.2, 0.8, 1.0]).view(3, 1, 1)

    torch.testing.assert_close(scale_brightness(image, 0.5).flatten(), torch.tensor([0.1, 0.4, 0.5]))
    torch.testing.assert_close(scale_brightness(image, 2.0).flatten(), torch.tensor([0.4, 1.0, 1.0]))


def test_contrast_zero_is_flat_mean_luma(colour_image):
    flat = scale_contrast(colour_image, 0.0)

    expected = to_grayscale(colour_image).mean()
    torch.testing.assert_close(flat, torch.full_like(colour_image, expected.item()), atol=1e-6, rtol=0)


def test_blur_keeps_constant_image_and_small_images():
    constant = torch.full((3, 5, 5), 0.25)

    torch.testing.assert_close(gaussian_blur(constant, 4.0), constant)
    assert torch.equal(gaussian_blur(constant, 0.0), constant)


def test_blur_huge_sigma_is_box_average():
    image = torch.linspace(0.0, 1.0, 3 * 6 * 5).reshape(3, 6, 5)

    blurred = gaussian_blur(image, 1e308)

    # Weights exp(-x^2 / (2 sigma^2)) are all 1 for both sigmas, over the largest kernel (9 pixels).
    torch.testing.assert_close(blurred, gaussian_blur(image, 1e9), atol=0, rtol=0)
    assert torch.isfinite(blurred).all()


@pytest.mark.parametrize("sigma", [1e-320, 1e-45, 0.049])
def test_blur_tiny_sigma_is_identity(sigma):
    image = torch.rand(3, 8, 8, generator=torch.Generator().manual_seed(3))

    assert torch.equal(gaussian_blur(image, sigma), image)


def test_blur_smooths_an_impulse():
    impulse = torch.zeros(3, 21, 21)
    impulse[:, 10, 10] = 1.0

    blurred = gaussian_blur(impulse, 2.0)

    assert blurred[0, 10, 10] < 0.1
    assert blurred[0].sum().item() == pytest.approx(1.0, abs=1e-5)


def square_scene() -> tuple[torch.Tensor, torch.Tensor]:
    """A red square on a blue background with a little noise, and its true mask."""
    noise = torch.rand(3, 96, 96, generator=torch.Generator().manual_seed(3)) * 0.05
    image = torch.zeros(3, 96, 96)
    image[2] = 0.8
    truth = torch.zeros(96, 96, dtype=torch.bool)
    truth[28:68, 32:72] = True
    image[:, truth] = torch.tensor([0.9, 0.1, 0.1])[:, None]
    return (image + noise).clamp(0, 1), truth


def test_estimate_foreground_finds_square():
    image, truth = square_scene()

    mask = estimate_foreground(image)

    intersection = (mask & truth).sum().item()
    union = (mask | truth).sum().item()
    assert mask.dtype == torch.bool
    assert intersection / union > 0.95
    assert mask[32:64, 36:68].all()
    assert not mask[:20].any()


def test_estimate_foreground_uniform_image_warns():
    with pytest.warns(UserWarning, match="no foreground"):
        mask = estimate_foreground(torch.full((3, 10, 10), 0.3))

    assert not mask.any()


def test_manipulation_foreground_warning_names_image(predictor):
    with pytest.warns(UserWarning, match="^image flat: no foreground found"):
        manipulate_images(predictor, {"flat": torch.full((3, 12, 12), 0.3)}, ["silhouette"])


def test_otsu_threshold_splits_two_groups():
    values = np.concatenate([np.full(50, 1.0), np.full(30, 5.0)])

    threshold = otsu_threshold(values)

    assert 1.0 <= threshold < 5.0


def test_background_and_silhouette_use_mask():
    image, truth = square_scene()

    replaced = replace_background(image, truth, 0.5)
    shape = silhouette(image, truth)

    assert torch.equal(replaced[:, truth], image[:, truth])
    assert (replaced[:, ~truth] == 0.5).all()
    assert (shape[:, truth] == 0.0).all()
    assert (shape[:, ~truth] == 1.0).all()


def test_mask_size_mismatch():
    with pytest.raises(ValueError, match="does not match the image size"):
        replace_background(torch.zeros(3, 4, 4), torch.ones(5, 5, dtype=torch.bool))


def test_occlude_centre_box():
    image = torch.ones(3, 10, 8)

    occluded = occlude(image, 0.5, fill=0.0)

    assert (occluded[:, 2:7, 2:6] == 0.0).all()
    assert occluded.sum().item() == 3 * (80 - 5 * 4)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("grayscale", Edit("grayscale", None)), ("hue:45", Edit("hue", 45.0)), ("blur", Edit("blur", 3.0))],
)
def test_parse_edit(text, expected):
    assert parse_edit(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [("sepia", "unknown edit"), ("hue:abc", "not a number"), ("grayscale:2", "takes no parameter"), ("hue:nan", "finite"),
     ("hue:", "no value after the colon"), ("silhouette:", "no value after the colon")],
)
def test_parse_edit_errors(text, message):
    with pytest.raises(ValueError, match=message):
        parse_edit(text)


@pytest.mark.parametrize(
    ("text", "message"),
    [("grayscale:", "edit 'grayscale:' has no value after the colon: write 'grayscale', which takes no value"),
     ("hue:", "edit 'hue:' has no value after the colon: write 'hue' (default 90) or hue:VALUE")],
)
def test_parse_edit_empty_value_message(text, message):
    with pytest.raises(ValueError) as error:
        parse_edit(text)

    assert str(error.value) == message


@pytest.mark.parametrize("name", ["saturation", "brightness", "contrast"])
def test_parse_edit_factor_beyond_float32(name):
    assert parse_edit(f"{name}:3e38") == Edit(name, 3e38)
    with pytest.raises(ValueError, match=rf"edit '{name}:1e39': the .* must be in \[0, 3.40282e\+38\]"):
        parse_edit(f"{name}:1e39")


@pytest.mark.filterwarnings("ignore:image .* no foreground found")
def test_manipulation_table_contents(predictor, colour_image):
    image_b = torch.rand(3, 10, 14, generator=torch.Generator().manual_seed(9))
    edits = ["grayscale", "blur:1", "background:0.5"]

    result = manipulate_images(predictor, {"a": colour_image, "b": image_b}, edits)
    table = result.table

    assert list(table.columns) == list(TABLE_COLUMNS)
    assert len(table) == 2 * 3 * 5
    np.testing.assert_allclose(table["change"], table["after"] - table["before"])
    with torch.no_grad():
        before_a = predictor(colour_image).double().numpy()
    first = table[(table["image"] == "a") & (table["edit"] == "blur")]
    np.testing.assert_allclose(first["before"], before_a, rtol=1e-6)
    assert first["parameter"].tolist() == [1.0] * 5
    assert set(result.edited["b"]) == {"grayscale", "blur:1", "background:0.5"}
    assert set(result.masks) == {"a", "b"}


def test_manipulation_uses_given_mask(predictor, colour_image):
    mask = torch.zeros(12, 12, dtype=torch.bool)
    mask[3:9, 3:9] = True

    result = manipulate_images(predictor, {"a": colour_image}, ["silhouette"], masks={"a": mask})

    assert torch.equal(result.masks["a"], mask)
    assert (result.edited["a"]["silhouette"][:, mask] == 0.0).all()


def test_plot_largest_changes(predictor, colour_image, tmp_path):
    result = manipulate_images(predictor, {"a": colour_image}, ["grayscale", "hue:180", "occlude"])

    figure = plot_largest_changes(result, {"a": colour_image}, n_rows=2, n_dims=3)
    figure.savefig(tmp_path / "changes.png")

    assert len(figure.axes) == 6
    assert (tmp_path / "changes.png").stat().st_size > 0


@pytest.mark.parametrize(
    ("edit", "label"),
    [(Edit("hue", 90.0), "hue:90"), (Edit("blur", 1.0000001), "blur:1.0000001"), (Edit("blur", 1e-7), "blur:1e-07")],
)
def test_edit_label_keeps_parameter(edit, label):
    assert edit.label == label
    assert parse_edit(edit.label) == edit


@pytest.mark.parametrize("edits", [["hue", "grayscale", "hue:90"], ["blur:3", "blur:3.0"]])
def test_manipulation_rejects_same_edit_twice(predictor, colour_image, edits):
    with pytest.raises(ValueError, match="more than once"):
        manipulate_images(predictor, {"a": colour_image}, edits)


def test_manipulation_rows_follow_their_edit(predictor, colour_image):
    edits = ["grayscale", "blur:1", "blur:1.0000001"]

    table = manipulate_images(predictor, {"a": colour_image}, edits).table

    with torch.no_grad():
        blurred = predictor(gaussian_blur(colour_image, 1.0000001)).double().numpy()
    rows = table[(table["edit"] == "blur") & (table["parameter"] == 1.0000001)]
    np.testing.assert_allclose(rows["after"], blurred, rtol=1e-6)
    assert len(table) == 3 * 5


def test_manipulation_rejects_mask_of_unknown_image(predictor, colour_image):
    mask = torch.ones(12, 12, dtype=torch.bool)

    with pytest.raises(ValueError, match="masks are given for parot, which are not among the image names"):
        manipulate_images(predictor, {"parrot": colour_image}, ["silhouette"], masks={"parot": mask})


def test_manipulation_change_equals_independent_predictions(predictor, colour_image):
    edits = {
        "hue:-90": rotate_hue(colour_image, -90.0),
        "contrast:1.5": scale_contrast(colour_image, 1.5),
        "blur:2": gaussian_blur(colour_image, 2.0),
        "occlude:0.25": occlude(colour_image, 0.25),
    }

    table = manipulate_images(predictor, {"a": colour_image}, list(edits)).table

    with torch.no_grad():
        before = predictor(colour_image).double().numpy()
        for label, edited in edits.items():
            name, parameter = label.split(":")
            rows = table[(table["edit"] == name) & (table["parameter"] == float(parameter))]
            expected = predictor(edited).double().numpy() - before
            assert rows["dimension"].tolist() == list(range(5))
            np.testing.assert_allclose(rows["change"], expected, atol=1e-6)


def test_manipulation_neutral_edits_change_nothing(predictor, colour_image):
    neutral = ["hue:0", "saturation:1", "brightness:1", "contrast:1", "blur:0", "occlude:0"]

    table = manipulate_images(predictor, {"a": colour_image}, neutral).table

    for label in neutral:
        name, parameter = label.split(":")
        rows = table[(table["edit"] == name) & (table["parameter"] == float(parameter))]
        assert len(rows) == 5, label
        np.testing.assert_allclose(rows["change"], 0.0, atol=1e-6, err_msg=label)


def test_manipulation_mask_size_names_image(predictor, colour_image):
    masks = {"photo": torch.ones(5, 4, dtype=torch.bool)}

    with pytest.raises(ValueError) as error:
        manipulate_images(predictor, {"photo": colour_image}, ["background"], masks=masks)

    height, width = colour_image.shape[-2:]
    assert str(error.value).startswith(
        f"the mask of image photo has shape (5, 4), but the image is {height} x {width} pixels"
    )


def test_plot_change_tick_labels_do_not_overlap(colour_image):
    import pandas as pd
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from dimalign.interpret.manipulate import ManipulationResult

    changes = [-0.00085, -0.0006, -0.0001, 0.0002, 0.00105]
    table = pd.DataFrame({
        "image": "a", "edit": "blur", "parameter": 3.0, "dimension": range(5),
        "before": 0.5, "after": [0.5 + change for change in changes], "change": changes,
    })
    result = ManipulationResult(table=table, edited={"a": {"blur:3": colour_image}}, masks={})

    figure = plot_largest_changes(result, {"a": colour_image}, n_rows=1, n_dims=5)

    renderer = FigureCanvasAgg(figure).get_renderer()
    figure.draw(renderer)
    labels = [label for label in figure.axes[2].get_xticklabels() if label.get_text()]
    boxes = sorted((label.get_window_extent(renderer) for label in labels), key=lambda box: box.x0)
    assert len(boxes) >= 2
    for left, right in zip(boxes, boxes[1:]):
        assert left.x1 < right.x0, [label.get_text() for label in labels]


def test_plot_change_axis_names_difference(predictor, colour_image):
    result = manipulate_images(predictor, {"a": colour_image}, ["grayscale"])

    figure = plot_largest_changes(result, {"a": colour_image}, n_rows=1, n_dims=2)

    assert figure.axes[2].get_xlabel() == "predicted change (edited - original)"
