"""Grad-CAM of one embedding dimension, against a manual backward pass."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dimalign.interpret.gradcam import colorize, default_gradcam_layer, dimension_gradcam, overlay
from dimalign.interpret.predictor import DimensionPredictor


def manual_gradcam(predictor: DimensionPredictor, images: torch.Tensor, dim: int, layer: nn.Module) -> torch.Tensor:
    """Grad-CAM by hand: w_c = mean_hw dy/dA_c, cam = relu(sum_c w_c A_c), min-max scaled."""
    captured = []
    handle = layer.register_forward_hook(lambda module, args, output: captured.append(output))
    inputs = images.clone().requires_grad_(True)
    try:
        output = predictor(inputs)
    finally:
        handle.remove()
    activations = captured[0]
    (gradients,) = torch.autograd.grad(output[:, dim].sum(), activations)

    weights = gradients.mean(dim=(2, 3))
    cam = F.relu((weights[:, :, None, None] * activations).sum(dim=1))
    cam = cam - cam.amin(dim=(1, 2), keepdim=True)
    cam = cam / cam.amax(dim=(1, 2), keepdim=True)
    return cam.detach()


@pytest.fixture
def predictor(conv_model, ridge_coefficients):
    coef, intercept = ridge_coefficients
    return DimensionPredictor(conv_model, "3", coef, intercept, pooling="gap")


def test_gradcam_matches_manual_backward(predictor):
    images = torch.rand(3, 3, 8, 8, generator=torch.Generator().manual_seed(2))

    maps = dimension_gradcam(predictor, images, 3, "2")
    expected = manual_gradcam(predictor, images, 3, predictor.model[2]).numpy()

    assert maps.shape == (3, 8, 8)
    assert maps.dtype == np.float32
    assert (expected.max(axis=(1, 2)) == 1.0).all()
    np.testing.assert_allclose(maps, expected, atol=1e-5)


def test_gradcam_upsampled_to_image(ridge_coefficients, make_conv_model):
    coef, intercept = ridge_coefficients
    predictor = DimensionPredictor(make_conv_model(stride=2), "3", coef, intercept, pooling="gap")
    images = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(3))

    maps = dimension_gradcam(predictor, images, 1, "2")
    small = manual_gradcam(predictor, images, 1, predictor.model[2])
    expected = F.interpolate(small[:, None], size=(16, 16), mode="bilinear", align_corners=False)[:, 0]
    # The upsampled map is min-max scaled once more, so its minimum is 0 again.
    expected = expected - expected.amin(dim=(1, 2), keepdim=True)
    expected = expected / expected.amax(dim=(1, 2), keepdim=True)

    assert maps.shape == (2, 16, 16)
    np.testing.assert_allclose(maps, expected.numpy(), atol=1e-5)


def test_gradcam_single_image(predictor):
    image = torch.rand(3, 8, 8, generator=torch.Generator().manual_seed(4))

    cam = dimension_gradcam(predictor, image, 0, "2")

    assert cam.shape == (8, 8)


def test_gradcam_dimension_out_of_range(predictor):
    with pytest.raises(ValueError, match="predicts 5 dimensions"):
        dimension_gradcam(predictor, torch.rand(1, 3, 8, 8), 7, "2")


def test_gradcam_negative_dimension(predictor):
    with pytest.raises(ValueError, match="predicts 5 dimensions"):
        dimension_gradcam(predictor, torch.rand(1, 3, 8, 8), -1, "2")


def test_gradcam_rejects_feature_vector_layer(ridge_coefficients, make_conv_model):
    coef, intercept = ridge_coefficients
    model = nn.Sequential(make_conv_model(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 6))
    predictor = DimensionPredictor(model, "3", coef, intercept, pooling="raw")

    with pytest.raises(ValueError, match=r"\(batch, channels, height, width\).*reshape_transform"):
        dimension_gradcam(predictor, torch.rand(1, 3, 8, 8), 0, "3")


def test_gradcam_rejects_one_by_one_map(ridge_coefficients, make_conv_model):
    coef, intercept = ridge_coefficients
    model = nn.Sequential(make_conv_model(), nn.AdaptiveAvgPool2d(1))
    predictor = DimensionPredictor(model, "1", coef, intercept, pooling="gap")

    with pytest.raises(ValueError, match="1x1 map"):
        dimension_gradcam(predictor, torch.rand(1, 3, 8, 8), 0, "1")


def test_gradcam_rejects_layer_after_features(ridge_coefficients, make_conv_model):
    coef, intercept = ridge_coefficients
    model = make_conv_model()
    predictor = DimensionPredictor(model, "2", coef, intercept, pooling="gap")

    with pytest.raises(ValueError, match="did not run before the feature layer"):
        dimension_gradcam(predictor, torch.rand(1, 3, 8, 8), 0, "3")


def test_gradcam_reshape_transform_for_tokens(ridge_coefficients, make_conv_model):
    coef, intercept = ridge_coefficients

    class Tokens(nn.Module):
        def forward(self, x):
            return x.flatten(2).transpose(1, 2)  # (B, h*w, C)

    def to_map(tokens):
        return tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], 8, 8)

    class Untokens(nn.Module):
        def forward(self, x):
            return to_map(x)

    model = nn.Sequential(make_conv_model(), Tokens(), Untokens())
    predictor = DimensionPredictor(model, "2", coef, intercept, pooling="gap")

    with pytest.raises(ValueError, match="reshape_transform"):
        dimension_gradcam(predictor, torch.rand(1, 3, 8, 8), 0, "1")
    cam = dimension_gradcam(predictor, torch.rand(3, 8, 8), 0, "1", reshape_transform=to_map)

    assert cam.shape == (8, 8)


def test_gradcam_constant_activations_zero_map(ridge_coefficients):
    coef, intercept = ridge_coefficients
    constant = torch.full((1, 3, 8, 8), 0.5)
    # 1x1 convolutions keep a constant image constant (no border effects of padding).
    pointwise = nn.Sequential(nn.Conv2d(3, 6, 1), nn.ReLU())
    predictor = DimensionPredictor(pointwise, "1", coef, intercept, pooling="gap")

    with pytest.warns(UserWarning, match="zero everywhere"):
        cam = dimension_gradcam(predictor, constant, 2, "0")

    assert np.isfinite(cam).all()
    assert (cam == 0.0).all()


def test_gradcam_float16_gives_float32(ridge_coefficients, make_conv_model):
    coef, intercept = ridge_coefficients
    model = make_conv_model().half()
    predictor = DimensionPredictor(model, "3", coef.astype(np.float16), intercept, pooling="gap")
    images = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(5))

    maps = dimension_gradcam(predictor, images, 3, "2")

    assert predictor.dtype == torch.float16
    assert maps.dtype == np.float32
    assert float(maps.min()) >= 0.0
    assert float(maps.max()) <= 1.0
    assert np.isfinite(maps).all()


def test_overlay_blends_heatmap():
    image = np.zeros((4, 4, 3), dtype=np.float32)
    cam = np.ones((4, 4), dtype=np.float32)

    blended = overlay(image, cam, alpha=1.0)

    np.testing.assert_array_equal(blended, colorize(cam))
    assert blended.dtype == np.uint8


def test_default_layer_is_last_spatial_map(ridge_coefficients, make_conv_model):
    coef, intercept = ridge_coefficients
    model = nn.Sequential(make_conv_model(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    predictor = DimensionPredictor(model, "2", coef, intercept, pooling="raw")

    assert default_gradcam_layer(predictor, torch.rand(3, 8, 8)) == "0"


def test_gradcam_layer_before_inplace_relu(ridge_coefficients):
    coef, intercept = ridge_coefficients
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(4, 6, 3, padding=1))
    predictor = DimensionPredictor(model, "2", coef, intercept, pooling="gap")
    images = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(6))

    maps = dimension_gradcam(predictor, images, 1, "0")

    assert maps.shape == (2, 8, 8)
    assert np.isfinite(maps).all()
    assert float(maps.max()) <= 1.0


def test_gradcam_rejects_layer_input(predictor):
    with pytest.raises(ValueError, match="output, not its input"):
        dimension_gradcam(predictor, torch.rand(1, 3, 8, 8), 0, "2:input")


def test_gradcam_batch_equals_single_images(predictor):
    images = torch.rand(3, 3, 8, 8, generator=torch.Generator().manual_seed(7))

    maps = dimension_gradcam(predictor, images, 3, "2")

    for index, image in enumerate(images):
        np.testing.assert_allclose(dimension_gradcam(predictor, image, 3, "2"), maps[index], atol=1e-5)


def test_gradcam_negated_dimension_follows_its_gradient(ridge_coefficients, make_conv_model):
    """A dimension with the opposite sign keeps the locations that raise it, not the original's."""
    coef, intercept = ridge_coefficients
    negated = DimensionPredictor(make_conv_model(), "3", -coef, -intercept, pooling="gap")
    images = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(8))

    maps = dimension_gradcam(negated, images, 3, "2")
    expected = manual_gradcam(negated, images, 3, negated.model[2]).numpy()

    np.testing.assert_allclose(maps, expected, atol=1e-5)


def test_gradcam_zero_coefficients_zero_map(ridge_coefficients, make_conv_model):
    coef, intercept = ridge_coefficients
    coef = coef.copy()
    coef[:, 4] = 0.0
    predictor = DimensionPredictor(make_conv_model(), "3", coef, intercept, pooling="gap")
    images = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(9))

    with pytest.warns(UserWarning, match=r"dimension 4 .* zero everywhere for images \[0, 1\]"):
        maps = dimension_gradcam(predictor, images, 4, "2")

    assert maps.shape == (2, 8, 8)
    assert (maps == 0.0).all()


def test_gradcam_earlier_layer_matches_manual(predictor):
    images = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(10))

    maps = dimension_gradcam(predictor, images, 0, "0")
    expected = manual_gradcam(predictor, images, 0, predictor.model[0]).numpy()

    np.testing.assert_allclose(maps, expected, atol=1e-5)


class SharedReluBlock(nn.Module):
    """Two convolutions that share one ReLU module, as the blocks of torchvision's ResNet do."""

    def __init__(self) -> None:
        super().__init__()
        with torch.random.fork_rng():
            torch.manual_seed(0)
            self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
            self.conv2 = nn.Conv2d(6, 6, 3, padding=1)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.conv2(self.relu(self.conv1(x))))


def test_gradcam_rejects_layer_that_runs_twice(ridge_coefficients):
    coef, intercept = ridge_coefficients
    predictor = DimensionPredictor(SharedReluBlock(), None, coef, intercept, pooling="gap")

    with pytest.raises(ValueError, match=r"layer 'relu' runs more than once in one forward pass"):
        dimension_gradcam(predictor, torch.rand(2, 3, 8, 8), 3, "relu")


def test_default_layer_skips_layer_that_runs_twice(ridge_coefficients):
    coef, intercept = ridge_coefficients
    predictor = DimensionPredictor(SharedReluBlock(), None, coef, intercept, pooling="gap")

    assert default_gradcam_layer(predictor, torch.rand(3, 8, 8)) == "conv2"


def test_plot_gradcam_panels_and_colour_bar():
    from dimalign.interpret.grid_images import BACKGROUND_COLOUR
    from dimalign.interpret.gradcam import plot_gradcam

    image = torch.zeros(3, 8, 8)
    maps = {0: np.zeros((8, 8), np.float32), 3: np.ones((8, 8), np.float32)}

    figure = plot_gradcam(image, maps, {0: 0.25, 3: -1.5}, layer="head", title="parrot.png", alpha=1.0)

    pixels = np.asarray(figure)
    # Overlays with alpha 1 show the colormap's ends: dark blue for 0 and dark red for 1.
    blue, red = (tuple(colorize(np.array([[value]]))[0, 0]) for value in (0.0, 1.0))
    colours = {tuple(pixel) for pixel in pixels.reshape(-1, 3)}
    assert blue in colours
    assert red in colours
    # The colour bar spans the width under the grid and runs from blue to red.
    bar_row = next(row for row in range(pixels.shape[0] - 1, 0, -1)
                   if tuple(pixels[row, 4]) == blue and tuple(pixels[row, -5]) == red)
    assert bar_row > pixels.shape[0] - 40
    assert tuple(pixels[-1, 0]) == BACKGROUND_COLOUR


def test_gradcam_figure_labels_apart():
    from PIL import ImageDraw

    from dimalign.interpret.gradcam import plot_gradcam
    from dimalign.interpret.grid_images import _font

    image = np.full((16, 16, 3), 0.5, dtype=np.float32)
    cam = np.zeros((16, 16), dtype=np.float32)

    figure = plot_gradcam(image, {0: cam}, {0: 0.5}, layer="3")

    measure = ImageDraw.Draw(figure)
    left = measure.textlength("0: least evidence in the map", font=_font(11))
    right = measure.textlength("1: most evidence in the map", font=_font(11))
    gap = figure.size[0] - 4 - right - (4 + left)
    assert gap >= 8
    # The band between the two labels stays white.
    band = np.asarray(figure)[-15:, int(np.ceil(4 + left)):int(figure.size[0] - 4 - right)]
    assert {tuple(pixel) for pixel in band.reshape(-1, 3)} == {(255, 255, 255)}
