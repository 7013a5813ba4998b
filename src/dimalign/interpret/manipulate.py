"""Causal image manipulations: controlled edits and the predicted change in every dimension.

If a dimension means "red", turning an image gray should lower it; if it
means "round", occluding the object's outline should. Each edit here changes
one property of an image given as a float RGB tensor ``(..., 3, H, W)`` in
``[0, 1]``, and :func:`manipulation_table` records the predicted embedding
before and after. Edits:

- ``grayscale``: ITU-R BT.601 luma, ``0.299 R + 0.587 G + 0.114 B``.
- ``hue:DEGREES``: rotation of the HSV hue, modulo 360 degrees.
- ``saturation:FACTOR``: blend with the grayscale image (0 gives gray).
- ``brightness:FACTOR``: multiplication of every channel.
- ``contrast:FACTOR``: blend with the image's mean luma (0 gives flat gray).
- ``blur:SIGMA``: Gaussian blur with standard deviation SIGMA pixels.
- ``background:GRAY``: everything outside the foreground mask set to GRAY.
- ``occlude:FRACTION``: a centred mid-gray rectangle covering FRACTION of the
  height and of the width.
- ``silhouette``: the foreground mask alone, black on white (shape without
  colour or texture).

The background and silhouette edits use a given mask, or
:func:`estimate_foreground` where none is given.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from dimalign._warnings import warn
from dimalign.interpret.edits import DEFAULT_EDITS, EDIT_SPECS
from dimalign.interpret.predictor import DimensionPredictor

if TYPE_CHECKING:
    import pandas as pd

logger = logging.getLogger(__name__)

# ITU-R BT.601 luma weights; they sum to 1, so gray pixels keep their value.
_LUMA_WEIGHTS = (0.299, 0.587, 0.114)

TABLE_COLUMNS = ("image", "edit", "parameter", "dimension", "before", "after", "change")


def _check_images(images: torch.Tensor) -> None:
    if images.ndim < 3 or images.shape[-3] != 3:
        raise ValueError(f"images must have shape (..., 3, H, W), got {tuple(images.shape)}")


def luma(images: torch.Tensor) -> torch.Tensor:
    """Return the BT.601 luma ``(..., 1, H, W)`` of RGB images ``(..., 3, H, W)``.

    Written as ``R + 0.587 (G - R) + 0.114 (B - R)``, which equals
    ``0.299 R + 0.587 G + 0.114 B`` because the weights sum to 1, and which
    returns a gray pixel's value exactly (no rounding of ``0.299 v + ...``).
    """
    _check_images(images)
    red, green, blue = images.unbind(dim=-3)
    value = red + _LUMA_WEIGHTS[1] * (green - red) + _LUMA_WEIGHTS[2] * (blue - red)
    return value.unsqueeze(-3)


def to_grayscale(images: torch.Tensor) -> torch.Tensor:
    """Replace every channel by the luma; already gray images are returned unchanged."""
    return luma(images).expand_as(images).clone()


def rgb_to_hsv(images: torch.Tensor) -> torch.Tensor:
    """Convert RGB ``(..., 3, H, W)`` in ``[0, 1]`` to HSV with hue in ``[0, 1)``."""
    _check_images(images)
    red, green, blue = images.unbind(dim=-3)
    value, _ = images.max(dim=-3)
    minimum, _ = images.min(dim=-3)
    delta = value - minimum
    saturation = torch.where(value > 0, delta / torch.where(value > 0, value, torch.ones_like(value)), torch.zeros_like(value))
    safe_delta = torch.where(delta > 0, delta, torch.ones_like(delta))
    # Hue in sixths of the circle, from the channel that is largest.
    hue_red = torch.remainder((green - blue) / safe_delta, 6.0)
    hue_green = (blue - red) / safe_delta + 2.0
    hue_blue = (red - green) / safe_delta + 4.0
    hue = torch.where(value == red, hue_red, torch.where(value == green, hue_green, hue_blue))
    hue = torch.where(delta > 0, hue / 6.0, torch.zeros_like(hue))
    return torch.stack([torch.remainder(hue, 1.0), saturation, value], dim=-3)


def hsv_to_rgb(images: torch.Tensor) -> torch.Tensor:
    """Convert HSV ``(..., 3, H, W)`` (hue in ``[0, 1)``) back to RGB."""
    hue, saturation, value = images.unbind(dim=-3)
    sixths = hue * 6.0
    sector = torch.floor(sixths)
    fraction = sixths - sector
    sector = torch.remainder(sector, 6.0)
    p = value * (1.0 - saturation)
    q = value * (1.0 - saturation * fraction)
    t = value * (1.0 - saturation * (1.0 - fraction))
    # (R, G, B) for the sectors 0..5 of the hue circle.
    choices = [(value, t, p), (q, value, p), (p, value, t), (p, q, value), (t, p, value), (value, p, q)]
    red, green, blue = torch.zeros_like(value), torch.zeros_like(value), torch.zeros_like(value)
    for index, (r, g, b) in enumerate(choices):
        selected = sector == index
        red = torch.where(selected, r, red)
        green = torch.where(selected, g, green)
        blue = torch.where(selected, b, blue)
    return torch.stack([red, green, blue], dim=-3)


def rotate_hue(images: torch.Tensor, degrees: float) -> torch.Tensor:
    """Rotate the HSV hue by ``degrees`` (saturation and value unchanged).

    The angle is reduced modulo 360 in double precision first, so a full
    turn shifts the hue by exactly 0 and only the RGB -> HSV -> RGB round
    trip (float32 error around 1e-7) remains.
    """
    shift = math.fmod(float(degrees), 360.0) / 360.0
    hsv = rgb_to_hsv(images)
    hue = torch.remainder(hsv[..., 0, :, :] + shift, 1.0)
    rotated = torch.stack([hue, hsv[..., 1, :, :], hsv[..., 2, :, :]], dim=-3)
    return hsv_to_rgb(rotated).clamp(0.0, 1.0)


def scale_saturation(images: torch.Tensor, factor: float) -> torch.Tensor:
    """Blend with the grayscale image: ``gray + factor * (image - gray)``, clipped to [0, 1]."""
    gray = luma(images)
    return (gray + factor * (images - gray)).clamp(0.0, 1.0)


def scale_brightness(images: torch.Tensor, factor: float) -> torch.Tensor:
    """Multiply every channel by ``factor``, clipped to [0, 1]."""
    _check_images(images)
    return (images * factor).clamp(0.0, 1.0)


def scale_contrast(images: torch.Tensor, factor: float) -> torch.Tensor:
    """Blend with the mean luma of each image: ``mean + factor * (image - mean)``, clipped."""
    mean = luma(images).mean(dim=(-3, -2, -1), keepdim=True)
    return (mean + factor * (images - mean)).clamp(0.0, 1.0)


def gaussian_blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """Blur with a Gaussian of standard deviation ``sigma`` pixels (reflected borders).

    The kernel spans ``2 * ceil(3 sigma) + 1`` pixels, shortened where the
    image is smaller than that; ``sigma < 0.05`` returns a copy, which is
    what the float32 kernel gives there.
    """
    from torchvision.transforms import functional as TF

    _check_images(images)
    if sigma < 0:
        raise ValueError(f"blur sigma must be >= 0, got {sigma}")
    # Below sigma = 0.069 the weight of a neighbour, exp(-1 / (2 sigma^2)), is under the smallest
    # float32 number, so the kernel is exactly (0, 1, 0) in float32. torchvision would compute it
    # with sigma itself in float32, where a sigma under 1.4e-45 becomes 0 and the kernel NaN.
    if sigma < 0.05:
        return images.clone()
    # 2 * min(H, W) - 1 is odd, as gaussian_blur requires. Comparing before
    # math.ceil keeps a huge sigma (3 * 1e308 is inf) from overflowing.
    largest = 2 * min(images.shape[-2:]) - 1
    kernel_size = largest if 3.0 * sigma >= largest else min(2 * math.ceil(3.0 * sigma) + 1, largest)
    return TF.gaussian_blur(images, kernel_size=[kernel_size, kernel_size], sigma=[sigma, sigma])


def estimate_foreground(
    image: torch.Tensor,
    *,
    border: float = 0.05,
    centre_sigma: float = 0.35,
    n_iterations: int = 3,
    n_components: int = 3,
    random_state: int = 0,
) -> torch.Tensor:
    """Estimate the foreground of a photo of one object, without a trained model.

    1. Smooth the image slightly (Gaussian, sigma 1 pixel).
    2. Initial mask: the median colour of a frame of ``border`` of the image
       size is taken as the background colour. Each pixel's score is its RGB
       distance from that colour times a centre prior
       ``p = exp(-r^2 / (2 centre_sigma^2))``, with ``r`` in image heights and
       widths from the centre. Otsu's threshold splits the scores.
    3. Refine ``n_iterations`` times: fit a Gaussian mixture of
       ``n_components`` to the colours inside and outside the mask, add the
       log-likelihood ratio of each pixel's colour to the prior log-odds
       ``log(p / (1 - p))`` (``p`` clipped to [0.05, 0.95]), smooth the sum
       (Gaussian, sigma 2 pixels) and keep the pixels above 0. This is
       GrabCut's colour model without its graph cut.
    4. Open the mask (2 iterations), fill holes, keep the largest region.

    It works for an object in front of a background of other colours and
    fails where they share colours or the scene is cluttered; pass a mask there.

    Args:
        image (torch.Tensor): RGB ``(3, H, W)`` in ``[0, 1]``.
        border (float): Width of the frame, as a fraction of the smaller side.
        centre_sigma (float): Width of the centre prior.
        n_iterations (int): Colour-model refinements.
        n_components (int): Gaussians per colour model.
        random_state (int): Seeds the pixel subsample and the mixtures.

    Returns:
        torch.Tensor: bool mask ``(H, W)``, True on the object.

    Warns:
        UserWarning: When no foreground is found (a uniform image).
    """
    from scipy import ndimage

    if image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f"image must have shape (3, H, W), got {tuple(image.shape)}")
    height, width = image.shape[1:]
    pixels = image.detach().double().cpu().permute(1, 2, 0).numpy()
    pixels = ndimage.gaussian_filter(pixels, sigma=(1.0, 1.0, 0.0), mode="reflect")

    frame = max(1, round(border * min(height, width)))
    frame_pixels = np.concatenate([
        pixels[:frame].reshape(-1, 3),
        pixels[-frame:].reshape(-1, 3),
        pixels[:, :frame].reshape(-1, 3),
        pixels[:, -frame:].reshape(-1, 3),
    ])
    background = np.median(frame_pixels, axis=0)
    distance = np.linalg.norm(pixels - background, axis=-1)
    rows = (np.arange(height) + 0.5) / height - 0.5
    cols = (np.arange(width) + 0.5) / width - 0.5
    prior = np.exp(-(rows[:, None] ** 2 + cols[None, :] ** 2) / (2.0 * centre_sigma**2))
    score = distance * prior
    mask = score > otsu_threshold(score)

    prior = np.clip(prior, 0.05, 0.95)
    log_odds = np.log(prior) - np.log1p(-prior)
    rng = np.random.default_rng(random_state)
    for _ in range(n_iterations):
        log_ratio = _colour_log_ratio(pixels.reshape(-1, 3), mask.ravel(), n_components, rng, random_state)
        if log_ratio is None:
            break
        evidence = np.clip(log_ratio.reshape(height, width), -20.0, 20.0) + log_odds
        mask = ndimage.gaussian_filter(evidence, sigma=2.0) > 0

    mask = ndimage.binary_opening(mask, iterations=2)
    mask = ndimage.binary_fill_holes(mask)
    labels, n_regions = ndimage.label(mask)
    if n_regions == 0:
        message = "no foreground found: the image is uniform or the object has the background's colours; pass a mask instead"
        warn(message, UserWarning)
        return torch.zeros(height, width, dtype=torch.bool)
    sizes = ndimage.sum_labels(mask, labels, index=np.arange(1, n_regions + 1))
    return torch.from_numpy(labels == (1 + int(np.argmax(sizes))))


def _colour_log_ratio(
    colours: np.ndarray, inside: np.ndarray, n_components: int, rng: np.random.Generator, seed: int
) -> np.ndarray | None:
    """Return log p(colour | inside) - log p(colour | outside) from two Gaussian mixtures, or None."""
    from sklearn.mixture import GaussianMixture

    # A mixture needs a few samples per component; 4,000 per side keep the fit fast.
    minimum = 10 * n_components
    if inside.sum() < minimum or (~inside).sum() < minimum:
        return None
    scores = []
    for part in (inside, ~inside):
        rows = np.flatnonzero(part)
        rows = rng.choice(rows, size=min(rows.size, 4000), replace=False)
        mixture = GaussianMixture(n_components, covariance_type="full", reg_covar=1e-4, random_state=seed)
        scores.append(mixture.fit(colours[rows]).score_samples(colours))
    return scores[0] - scores[1]


def otsu_threshold(values: np.ndarray, n_bins: int = 256) -> float:
    """Return Otsu's threshold: the cut that maximises the between-class variance of a histogram.

    Returns the maximum for constant input (so ``values > threshold`` is empty).
    """
    values = np.asarray(values, dtype=np.float64).ravel()
    low, high = float(values.min()), float(values.max())
    if high <= low:
        return high
    counts, edges = np.histogram(values, bins=n_bins, range=(low, high))
    centres = (edges[:-1] + edges[1:]) / 2.0
    weight_below = np.cumsum(counts)
    weight_above = weight_below[-1] - weight_below
    sum_below = np.cumsum(counts * centres)
    mean_below = sum_below / np.maximum(weight_below, 1)
    mean_above = (sum_below[-1] - sum_below) / np.maximum(weight_above, 1)
    between = weight_below * weight_above * (mean_below - mean_above) ** 2
    # The cut after bin i separates bins 0..i from i+1..; the last bin has no upper class.
    return float(edges[1 + int(np.argmax(between[:-1]))])


def replace_background(images: torch.Tensor, mask: torch.Tensor, gray: float = 0.5) -> torch.Tensor:
    """Set every pixel outside ``mask`` (``(H, W)``, True on the object) to ``gray``."""
    _check_images(images)
    if not 0.0 <= gray <= 1.0:
        raise ValueError(f"background gray level must be in [0, 1], got {gray}")
    keep = _as_mask(mask, images)
    return torch.where(keep, images, torch.full_like(images, float(gray)))


def occlude(images: torch.Tensor, fraction: float = 0.5, fill: float = 0.5) -> torch.Tensor:
    """Cover a centred rectangle of ``fraction`` of the height and width with ``fill``."""
    _check_images(images)
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"occlusion fraction must be in [0, 1], got {fraction}")
    height, width = images.shape[-2:]
    box_height, box_width = round(fraction * height), round(fraction * width)
    top, left = (height - box_height) // 2, (width - box_width) // 2
    occluded = images.clone()
    occluded[..., top : top + box_height, left : left + box_width] = fill
    return occluded


def silhouette(images: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Keep only the shape: black where ``mask`` is True, white elsewhere, in every channel."""
    _check_images(images)
    keep = _as_mask(mask, images)
    return torch.where(keep, torch.zeros_like(images), torch.ones_like(images))


def _as_mask(mask: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    mask = torch.as_tensor(mask, device=images.device)
    if tuple(mask.shape) != tuple(images.shape[-2:]):
        raise ValueError(
            f"mask of shape {tuple(mask.shape)} does not match the image size {tuple(images.shape[-2:])}"
        )
    return (mask > 0.5 if mask.is_floating_point() else mask.bool()).expand_as(images)


_EDIT_FUNCTIONS: dict[str, Callable[..., torch.Tensor]] = {
    "grayscale": lambda images, _: to_grayscale(images),
    "hue": rotate_hue,
    "saturation": scale_saturation,
    "brightness": scale_brightness,
    "contrast": scale_contrast,
    "blur": gaussian_blur,
    "background": lambda images, gray, mask: replace_background(images, mask, gray),
    "occlude": occlude,
    "silhouette": lambda images, _, mask: silhouette(images, mask),
}


@dataclass(frozen=True)
class Edit:
    """One edit with its parameter, written ``name`` or ``name:value`` (``hue:90``).

    Attributes:
        name (str): The kind of edit, a key of ``EDIT_SPECS``.
        parameter (float | None): Its value, or None for an edit that takes none.
    """

    name: str
    parameter: float | None = None

    @property
    def label(self) -> str:
        """``name`` or ``name:value`` as the edit is written on the command line.

        The value is written short (``hue:90``) where that gives the same
        number back, and in full otherwise (``blur:1.0000001``), so that two
        different edits never share a label, an output file or a table row.
        """
        if self.parameter is None:
            return self.name
        short = f"{self.parameter:g}"
        return f"{self.name}:{short if float(short) == self.parameter else repr(float(self.parameter))}"

    @property
    def uses_mask(self) -> bool:
        """Whether the edit needs a foreground mask."""
        return EDIT_SPECS[self.name].uses_mask

    def apply(self, images: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Apply the edit to ``images`` ``(..., 3, H, W)``; masked edits need ``mask``."""
        function = _EDIT_FUNCTIONS[self.name]
        if self.uses_mask:
            if mask is None:
                raise ValueError(f"edit {self.label!r} needs a foreground mask")
            return function(images, self.parameter, mask)
        return function(images, self.parameter)


def parse_edit(text: str) -> Edit:
    """Parse ``"name"`` or ``"name:value"`` into an :class:`Edit` (default parameter if omitted).

    Args:
        text (str): The edit as written on the command line, such as ``"hue:90"``.

    Returns:
        Edit: The edit, with the default parameter of its kind when ``text``
        gives no value.

    Raises:
        ValueError: For an unknown edit or a value that is not a number.
    """
    name, colon, value = text.strip().partition(":")
    if name not in EDIT_SPECS:
        raise ValueError(f"unknown edit {text!r}: use one of {', '.join(EDIT_SPECS)}")
    kind = EDIT_SPECS[name]
    if colon and not value.strip():
        if kind.default is None:
            raise ValueError(f"edit {text!r} has no value after the colon: write {name!r}, which takes no value")
        raise ValueError(
            f"edit {text!r} has no value after the colon: write {name!r} (default {kind.default:g}) or {name}:VALUE"
        )
    if not value:
        return Edit(name, kind.default)
    if kind.default is None:
        raise ValueError(f"edit {name!r} takes no parameter, got {text!r}")
    try:
        parameter = float(value)
    except ValueError as error:
        raise ValueError(f"edit {text!r}: {value!r} is not a number ({kind.help})") from error
    if not math.isfinite(parameter):
        raise ValueError(f"edit {text!r}: the parameter must be finite")
    low, high = _EDIT_RANGES.get(name, (-math.inf, math.inf))
    if not low <= parameter <= high:
        raise ValueError(f"edit {text!r}: the {kind.help} must be in [{low:g}, {high:g}]")
    return Edit(name, parameter)


# Allowed parameters of the edits whose functions reject others. A factor above
# float32's maximum (3.4e38) becomes inf in float32 images, and inf * 0 is NaN at every
# pixel where the factor multiplies 0 (black pixels for brightness, gray ones for
# saturation), so factors stop there.
_FLOAT32_MAX = float(torch.finfo(torch.float32).max)
_EDIT_RANGES = {
    "background": (0.0, 1.0), "occlude": (0.0, 1.0), "blur": (0.0, math.inf),
    "saturation": (0.0, _FLOAT32_MAX), "brightness": (0.0, _FLOAT32_MAX), "contrast": (0.0, _FLOAT32_MAX),
}


def check_distinct_edits(edits: Sequence[Edit]) -> list[Edit]:
    """Return ``edits`` if no two of them are the same edit.

    ``hue`` and ``hue:90`` are written differently but are one edit, whose
    rows and files would be written twice.

    Raises:
        ValueError: Naming the repeated edit.
    """
    repeated = sorted({edit.label for edit in edits if edits.count(edit) > 1})
    if repeated:
        raise ValueError(
            f"the edits list {', '.join(repeated)} more than once (a name alone means its default "
            "value): give each edit once"
        )
    return list(edits)


@dataclass
class ManipulationResult:
    """Predicted change of every dimension under every edit.

    Attributes:
        table (pd.DataFrame): Long format with columns :data:`TABLE_COLUMNS`,
            one row per image, edit and dimension.
        edited (dict[str, dict[str, torch.Tensor]]): Per image name, the
            edited image ``(3, H, W)`` of each edit label.
        masks (dict[str, torch.Tensor]): The foreground mask used per image
            (only for images that a masked edit needed).
    """

    table: pd.DataFrame
    edited: dict[str, dict[str, torch.Tensor]]
    masks: dict[str, torch.Tensor]


def manipulate_images(
    predictor: DimensionPredictor,
    images: Mapping[str, torch.Tensor],
    edits: Sequence[Edit | str] = DEFAULT_EDITS,
    *,
    masks: Mapping[str, torch.Tensor] | None = None,
) -> ManipulationResult:
    """Apply each edit to each image and predict every dimension before and after.

    Args:
        predictor (DimensionPredictor): Image -> embedding chain.
        images (Mapping[str, torch.Tensor]): Name -> RGB ``(3, H, W)`` in ``[0, 1]``.
        edits (Sequence[Edit | str]): Edits or their text form (``"hue:90"``).
        masks (Mapping[str, torch.Tensor] | None): Name -> foreground mask
            ``(H, W)`` for the masked edits; images without one get
            :func:`estimate_foreground`.

    Returns:
        ManipulationResult: The table and the edited images.

    Raises:
        ValueError: If an edit is unknown or repeated, or a mask's name is
            not among the images or its shape is not the image's ``(H, W)``.
    """
    edits = check_distinct_edits([edit if isinstance(edit, Edit) else parse_edit(edit) for edit in edits])
    if not edits:
        raise ValueError("no edits given")
    masks = dict(masks or {})
    unknown = sorted(set(masks) - set(images), key=str)
    if unknown:
        raise ValueError(
            f"masks are given for {', '.join(map(str, unknown[:10]))}, which are not among the image "
            f"names ({', '.join(map(str, list(images)[:10]))}); key each mask by its image's name"
        )
    for name, mask in masks.items():
        # Checked for every image first, so that no edit runs before a wrong mask stops the call.
        height, width = images[name].shape[-2:]
        if tuple(np.shape(mask)) != (height, width):
            raise ValueError(
                f"the mask of image {name} has shape {tuple(np.shape(mask))}, but the image is {height} x "
                f"{width} pixels; give a mask of shape ({height}, {width}), True or 1 on the object"
            )
    rows: list[dict[str, Any]] = []
    edited: dict[str, dict[str, torch.Tensor]] = {}
    used_masks: dict[str, torch.Tensor] = {}
    for name, image in images.items():
        _check_images(image)
        mask = None
        if any(edit.uses_mask for edit in edits):
            mask = masks[name] if name in masks else _estimate_named_foreground(name, image)
            used_masks[name] = mask
        versions = {edit.label: edit.apply(image, mask) for edit in edits}
        batch = torch.stack([image, *versions.values()])
        with torch.no_grad():
            prediction = predictor(batch).double().cpu().numpy()
        before = prediction[0]
        for edit, after in zip(edits, prediction[1:]):
            for dim in range(predictor.n_dims):
                rows.append({
                    "image": name,
                    "edit": edit.name,
                    "parameter": np.nan if edit.parameter is None else edit.parameter,
                    "dimension": dim,
                    "before": before[dim],
                    "after": after[dim],
                    "change": after[dim] - before[dim],
                })
        edited[name] = versions
        largest_change = np.abs(prediction[1:] - before).max(axis=1)
        strongest = int(np.argmax(largest_change))
        logger.info(
            "%s: %d edits; largest change %.4f from %s",
            name, len(edits), largest_change[strongest], edits[strongest].label,
        )
    import pandas as pd

    table = pd.DataFrame(rows, columns=list(TABLE_COLUMNS))
    return ManipulationResult(table=table, edited=edited, masks=used_masks)


def _estimate_named_foreground(name: str, image: torch.Tensor) -> torch.Tensor:
    """Run :func:`estimate_foreground` and repeat its warnings with the image's name, which it does not know."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        mask = estimate_foreground(image)
    for warning in caught:
        warn(f"image {name}: {warning.message}", warning.category)
    return mask


def edit_label(row: Mapping[str, Any]) -> str:
    """Return the text form (``hue:90``) of a table row's edit."""
    parameter = row["parameter"]
    if parameter is None or (isinstance(parameter, float) and math.isnan(parameter)):
        return str(row["edit"])
    return Edit(str(row["edit"]), float(parameter)).label


def plot_largest_changes(
    result: ManipulationResult,
    originals: Mapping[str, torch.Tensor],
    *,
    n_rows: int = 6,
    n_dims: int = 5,
) -> Any:
    """Draw the edits with the largest predicted changes.

    Each row shows one (image, edit) pair, chosen by its largest absolute
    change over the dimensions: the original, the edited image and a bar
    chart of the ``n_dims`` dimensions that changed most.

    Returns:
        matplotlib.figure.Figure: Not attached to pyplot, so nothing global changes.
    """
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    table = result.table.assign(label=[edit_label(row) for _, row in result.table.iterrows()])
    table["magnitude"] = table["change"].abs()
    pairs = (
        table.groupby(["image", "label"], sort=False)["magnitude"].max()
        .sort_values(ascending=False, kind="stable").head(n_rows)
    )
    figure = Figure(figsize=(10, 2.6 * max(1, len(pairs))), layout="constrained")
    axes = figure.subplots(max(1, len(pairs)), 3, squeeze=False, width_ratios=[1, 1, 1.6])
    for row_axes, (image_name, label) in zip(axes, pairs.index):
        original, edited = originals[image_name], result.edited[image_name][label]
        for axis, picture, title in ((row_axes[0], original, image_name), (row_axes[1], edited, label)):
            axis.imshow(picture.detach().float().cpu().permute(1, 2, 0).clamp(0, 1).numpy())
            axis.set_title(title, fontsize=9)
            axis.axis("off")
        changes = table[(table["image"] == image_name) & (table["label"] == label)]
        changes = changes.sort_values("magnitude", ascending=False, kind="stable").head(n_dims)[::-1]
        colours = ["tab:red" if value < 0 else "tab:blue" for value in changes["change"]]
        row_axes[2].barh([f"dim {dim}" for dim in changes["dimension"]], changes["change"], color=colours)
        row_axes[2].axvline(0.0, color="black", linewidth=0.8)
        row_axes[2].set_xlabel("predicted change (edited - original)", fontsize=8)
        # Changes such as -0.00075 give long tick labels, which run together at the default spacing.
        row_axes[2].xaxis.set_major_locator(MaxNLocator(nbins=4))
        row_axes[2].tick_params(labelsize=8)
    return figure
