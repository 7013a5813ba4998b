"""Grad-CAM for one embedding dimension: where in an image the dimension's evidence lies.

Grad-CAM (Selvaraju et al., ICCV 2017) weights each channel ``c`` of a
convolutional layer's output ``A`` by the spatial mean of the gradient of
the target ``y``: ``w_c = mean_{h,w} dy/dA_c[h, w]``. The map is the positive
part of the weighted sum, ``relu(sum_c w_c A_c)``. Here
the target is one predicted embedding dimension of
:class:`~dimalign.interpret.predictor.DimensionPredictor`, treated as a
regression output. The computation is pytorch-grad-cam's ``GradCAM`` with a
target that selects the dimension. Each map is min-max scaled to ``[0, 1]``
per image, so 0 is the location with the least evidence, and upsampled to
the image size.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from dimalign._warnings import warn
from dimalign.interpret.predictor import DimensionPredictor, find_layer

logger = logging.getLogger(__name__)


class DimensionTarget:
    """Grad-CAM target: the value of one output dimension (a regression target).

    Args:
        dim (int): Column of the predictor's output.
    """

    def __init__(self, dim: int) -> None:
        self.dim = int(dim)

    def __call__(self, model_output: torch.Tensor) -> torch.Tensor:
        return model_output[..., self.dim]


def check_dimension(dim: int, n_dims: int) -> int:
    """Return ``dim`` if it is a valid 0-based dimension index of ``n_dims``.

    Raises:
        ValueError: Naming the number of dimensions.
    """
    if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)):
        raise ValueError(f"dimension index must be an integer, got {dim!r}")
    if not 0 <= int(dim) < n_dims:
        raise ValueError(
            f"dimension {dim} is out of range: the map predicts {n_dims} dimensions "
            f"(0-based indices 0..{n_dims - 1})"
        )
    return int(dim)


def dimension_gradcam(
    predictor: DimensionPredictor,
    images: torch.Tensor,
    dim: int,
    layer: str,
    *,
    reshape_transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> np.ndarray:
    """Compute the Grad-CAM map of one embedding dimension.

    Args:
        predictor (DimensionPredictor): Image -> embedding chain.
        images (torch.Tensor): RGB in ``[0, 1]``, ``(B, 3, H, W)`` or ``(3, H, W)``.
        dim (int): 0-based dimension index.
        layer (str): Name of a layer of ``predictor.model`` whose output is a
            spatial map ``(B, C, h, w)`` with ``h * w > 1``, reached at or
            before the predictor's feature layer.
        reshape_transform (Callable | None): Turns the layer output into
            ``(B, C, h, w)`` (for transformer tokens, for example).

    Returns:
        np.ndarray: float32 maps in ``[0, 1]``, shape ``(B, H, W)`` (or
        ``(H, W)`` for one image), at the resolution of ``images``.

    Raises:
        ValueError: If ``dim`` is out of range, the layer output is not a
            spatial map, or the layer does not run exactly once before the
            feature layer.
        RuntimeError: If the gradients are not finite (overflow in float16).

    Warns:
        UserWarning: When a map is zero everywhere (constant activations, or
            no location with positive evidence for the dimension).
    """
    from pytorch_grad_cam import GradCAM

    dim = check_dimension(dim, predictor.n_dims)
    single = images.ndim == 3
    if single:
        images = images.unsqueeze(0)
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must have shape (batch, 3, H, W), got {tuple(images.shape)}")
    if layer.endswith(":input"):
        raise ValueError(
            f"Grad-CAM reads a layer's output, not its input ({layer!r}); name the module "
            "whose output is the spatial map"
        )
    target_layer = find_layer(predictor.model, layer)
    reached: list[bool] = []

    def start_graph_at_layer(module: nn.Module, args: Any, output: Any) -> torch.Tensor:
        if reached:
            # pytorch-grad-cam (1.5.7) pairs the first call's activations with the last call's
            # gradients, so the map would belong to neither call.
            raise ValueError(
                f"layer {layer!r} runs more than once in one forward pass (a module used twice, "
                "like the ReLU of a torchvision ResNet block), so its output is no single map; "
                "choose a layer that runs once, such as a convolution or the enclosing block"
            )
        _check_spatial_output(output, layer, reshape_transform)
        reached.append(True)
        # The predictor's parameters are frozen, so the graph starts here: the
        # backward pass skips every layer before this one, and dy/dA is the
        # same as with a graph from the input. The clone is not a leaf, so an
        # in-place operation after the layer (ReLU(inplace=True)) still works.
        return output.detach().requires_grad_(True).clone()

    # Registered before GradCAM's hooks, which therefore see the returned tensor.
    handle = target_layer.register_forward_hook(start_graph_at_layer)
    cam = GradCAM(model=predictor, target_layers=[target_layer], reshape_transform=reshape_transform)
    try:
        maps = cam(input_tensor=images.detach().to(predictor.device), targets=[DimensionTarget(dim)] * len(images))
    except RuntimeError as error:
        if reached:
            raise
        raise ValueError(
            f"layer {layer!r} did not run before the feature layer {predictor.layer!r}; "
            "Grad-CAM needs a convolutional layer at or before the feature layer"
        ) from error
    finally:
        handle.remove()
        # Not a `with` block: GradCAM.__exit__ swallows IndexError.
        cam.activations_and_grads.release()

    maps = np.asarray(maps, dtype=np.float32)
    if not np.isfinite(maps).all():
        hint = (
            "check the model's activations for NaN or inf" if predictor.dtype in (torch.float32, torch.float64)
            else f"gradients may have overflowed in {predictor.dtype}: run the predictor in float32"
        )
        raise RuntimeError(f"Grad-CAM of dimension {dim} at layer {layer!r} is not finite; {hint}")
    maps = np.clip(maps, 0.0, 1.0)
    zero = [index for index, values in enumerate(maps) if values.max() <= 0.0]
    if zero:
        image_positions = "" if single else f" for images {zero}"
        message = (
            f"Grad-CAM of dimension {dim} at layer {layer!r} is zero everywhere{image_positions}: the layer's "
            "activations are constant over space or no location increases the dimension"
        )
        warn(message, UserWarning)
    logger.info("Grad-CAM of dimension %d at layer %s for %d images", dim, layer, len(maps))
    return maps[0] if single else maps


def default_gradcam_layer(predictor: DimensionPredictor, image: torch.Tensor) -> str:
    """Return the last module with a spatial output ``(B, C, h, w)``, ``h * w > 1``, before the features.

    This is the usual Grad-CAM choice: the deepest convolutional map, where
    the features are most abstract and still have a location. Modules that
    run more than once in the forward pass (a shared ReLU) are skipped,
    because :func:`dimension_gradcam` rejects them.

    Args:
        predictor (DimensionPredictor): Image -> embedding chain.
        image (torch.Tensor): One RGB image ``(3, H, W)`` in ``[0, 1]`` to trace.

    Raises:
        ValueError: If no module before the feature layer has a spatial output.
    """
    finished: list[tuple[str, Any]] = []
    handles = []
    for name, module in predictor.model.named_modules():
        if name:
            handles.append(module.register_forward_hook(
                lambda module, args, output, name=name: finished.append((name, output))
            ))
    try:
        with torch.no_grad():
            predictor(image.unsqueeze(0) if image.ndim == 3 else image[:1])
    finally:
        for handle in handles:
            handle.remove()
    calls = Counter(name for name, _ in finished)
    spatial = [
        name for name, output in finished
        if calls[name] == 1
        and isinstance(output, torch.Tensor)
        and output.ndim == 4
        and output.shape[2] * output.shape[3] > 1
    ]
    if not spatial:
        raise ValueError(
            f"no layer before the feature layer {predictor.layer!r} has a spatial output "
            "(batch, channels, height, width); name one with --layer"
        )
    return spatial[-1]


def _check_spatial_output(
    output: Any,
    layer: str,
    reshape_transform: Callable[[torch.Tensor], torch.Tensor] | None,
) -> None:
    """Reject a layer output without a usable spatial map."""
    needed = (
        "Grad-CAM needs a convolutional layer with (batch, channels, height, width) output, "
        "or a reshape_transform that turns the layer output into that shape"
    )
    if not isinstance(output, torch.Tensor):
        raise ValueError(f"layer {layer!r} returns {type(output).__name__}, not a tensor; {needed}")
    shape = tuple((reshape_transform(output) if reshape_transform is not None else output).shape)
    if len(shape) != 4:
        raise ValueError(f"layer {layer!r} gives output of shape {shape} without a spatial map; {needed}")
    if shape[2] * shape[3] <= 1:
        raise ValueError(
            f"layer {layer!r} gives output of shape {shape}, a {shape[2]}x{shape[3]} map with no "
            "spatial extent; choose an earlier convolutional layer"
        )


def colorize(cam: np.ndarray, colormap: str = "jet") -> np.ndarray:
    """Map a ``[0, 1]`` Grad-CAM map ``(H, W)`` to an RGB uint8 image ``(H, W, 3)``."""
    from matplotlib import colormaps

    rgba = colormaps[colormap](np.clip(cam, 0.0, 1.0))
    return np.round(rgba[..., :3] * 255.0).astype(np.uint8)


def overlay(image: torch.Tensor | np.ndarray, cam: np.ndarray, *, alpha: float = 0.5, colormap: str = "jet") -> np.ndarray:
    """Blend the coloured map over the image.

    Args:
        image (torch.Tensor | np.ndarray): RGB in ``[0, 1]``, a tensor
            ``(3, H, W)`` or an array ``(H, W, 3)``.
        cam (np.ndarray): Map ``(H, W)`` in ``[0, 1]``.
        alpha (float): Weight of the heat map (0 shows only the image).
        colormap (str): A matplotlib colormap name.

    Returns:
        np.ndarray: uint8 RGB ``(H, W, 3)``.
    """
    if isinstance(image, torch.Tensor):
        image = image.detach().float().cpu().permute(1, 2, 0).numpy()
    image = np.asarray(image, dtype=np.float32)
    if image.shape[:2] != cam.shape:
        raise ValueError(f"image of shape {image.shape} and map of shape {cam.shape} differ in size")
    heat = colorize(cam, colormap).astype(np.float32) / 255.0
    blended = (1.0 - alpha) * np.clip(image, 0.0, 1.0) + alpha * heat
    return np.round(blended * 255.0).astype(np.uint8)


def plot_gradcam(
    image: torch.Tensor | np.ndarray,
    maps: dict[int, np.ndarray],
    predictions: dict[int, float],
    *,
    layer: str,
    title: str = "",
    alpha: float = 0.5,
    colormap: str = "jet",
    n_cols: int = 6,
) -> Any:
    """Draw an image beside the Grad-CAM overlay of each dimension, above a labelled colour bar.

    The figure is drawn with Pillow, not matplotlib, because it is written
    once per image. On a 2-core CPU, Pillow took 0.09 s for a figure of two
    224-pixel overlays and matplotlib 0.6 s, as long as the Grad-CAM work.

    Args:
        image (torch.Tensor | np.ndarray): RGB in ``[0, 1]``, a tensor
            ``(3, H, W)`` or an array ``(H, W, 3)``.
        maps (dict[int, np.ndarray]): Dimension -> its map ``(H, W)`` in ``[0, 1]``.
        predictions (dict[int, float]): Dimension -> its predicted value for the image.
        layer (str): The Grad-CAM layer, named in the title.
        title (str): Text before the layer in the title, such as the image's file name.
        alpha (float): Weight of the heat map in the overlays.
        colormap (str): A matplotlib colormap name.
        n_cols (int): Panels per row.

    Returns:
        PIL.Image.Image: An RGB image.
    """
    from PIL import Image, ImageDraw

    from dimalign.interpret.grid_images import BACKGROUND_COLOUR, TEXT_COLOUR, GridCell, _font, compose_grid

    if isinstance(image, torch.Tensor):
        image = image.detach().float().cpu().permute(1, 2, 0).numpy()
    image = np.clip(np.asarray(image, dtype=np.float32), 0.0, 1.0)
    cells = [GridCell(Image.fromarray(np.round(image * 255.0).astype(np.uint8)), "input")]
    for dim, cam in maps.items():
        caption = f"dimension {dim}: predicted {predictions[dim]:.4g}"
        cells.append(GridCell(Image.fromarray(overlay(image, cam, alpha=alpha, colormap=colormap)), caption))
    heading = f"{title}: Grad-CAM at layer {layer}" if title else f"Grad-CAM at layer {layer}"
    grid = compose_grid(cells, min(n_cols, len(cells)), title=heading, cell_size=max(image.shape[:2]))

    # The colour bar runs under the grid, with the meaning of both ends.
    padding, bar_height, font = 4, 12, _font(11)
    labels = ("0: least evidence in the map", "1: most evidence in the map")
    # A grid of one small image and one overlay is narrower than the two labels, which would overlap.
    measure = ImageDraw.Draw(grid)
    labels_width = sum(measure.textlength(label, font=font) for label in labels) + 4 * padding
    width = max(grid.size[0], int(np.ceil(labels_width)) + 2 * padding)
    bar_width = width - 2 * padding
    ramp = colorize(np.broadcast_to(np.linspace(0.0, 1.0, bar_width), (bar_height, bar_width)), colormap)
    figure = Image.new("RGB", (width, grid.size[1] + bar_height + 11 + 3 * padding), BACKGROUND_COLOUR)
    figure.paste(grid, (0, 0))
    figure.paste(Image.fromarray(ramp), (padding, grid.size[1]))
    draw = ImageDraw.Draw(figure)
    text_top = grid.size[1] + bar_height + padding
    draw.text((padding, text_top), labels[0], fill=TEXT_COLOUR, font=font)
    draw.text((width - padding, text_top), labels[1], fill=TEXT_COLOUR, font=font, anchor="ra")
    return figure
