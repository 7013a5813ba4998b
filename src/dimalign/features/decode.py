"""Image decoding: any file Pillow reads -> an RGB image, by fixed colour rules.

This module needs only Pillow and numpy, so commands that show images
without extracting features (the label app, the report) decode them as
``dimalign extract`` does without loading torch. The rules are listed in
:mod:`dimalign.features.datasets`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageColor, ImageFile, ImageOps, UnidentifiedImageError

ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
FLOAT_IMAGE_REASON = (
    "32-bit float image (mode F) with no fixed value range, so it cannot become 8-bit RGB; "
    "save it with 8-bit channels, scaled as intended"
)

# Pillow 13 reads HEIC/HEIF only with the pillow-heif plugin, which dimalign does not install.
HEIF_SUFFIXES = (".heic", ".heif")
HEIF_REASON = (
    "HEIC/HEIF image, which Pillow cannot read without the pillow-heif plugin: convert it to JPEG "
    "or PNG (for example with heif-convert) and use the converted file"
)


class ImageReadError(Exception):
    """An image file that cannot be decoded, with its ``path`` and the ``reason``.

    Args:
        path (str): The image file.
        reason (str): Why it cannot be decoded.
    """

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


def parse_color(color: str | Sequence[int]) -> tuple[int, int, int]:
    """Parse a background colour: a name (``white``), ``#rrggbb``, ``r,g,b`` or a tuple.

    An alpha value (``#rrggbbaa``, ``r,g,b,a``) is accepted only when it is 255.

    Args:
        color (str | Sequence[int]): The colour as the CLI or a caller gives it.

    Returns:
        tuple[int, int, int]: Red, green and blue in ``0 .. 255``.

    Raises:
        ValueError: If the colour is not understood or is not opaque.
    """
    if not isinstance(color, str):
        values = tuple(int(value) for value in color)
    elif "," in color:
        try:
            values = tuple(int(value) for value in color.split(","))
        except ValueError:
            values = ()
    else:
        try:
            values = ImageColor.getrgb(color)
        except ValueError:
            values = ()
    if len(values) == 4 and values[3] != 255:
        raise ValueError(
            f"invalid background colour {color!r}: the colour under transparent pixels must be opaque, "
            "so give it without alpha, such as a name, #rrggbb or r,g,b"
        )
    values = tuple(values)[:3] if len(values) == 4 else values
    if len(values) != 3 or not all(0 <= value <= 255 for value in values):
        raise ValueError(
            f"invalid background colour {color!r}: use a name such as white, #rrggbb or r,g,b "
            "with values 0-255"
        )
    return values  # type: ignore[return-value]


def to_rgb(image: Image.Image, background: tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
    """Convert a decoded image of any mode to RGB by the module's colour rules.

    Args:
        image (Image.Image): A decoded image.
        background (tuple[int, int, int]): RGB colour under transparent pixels.

    Returns:
        Image.Image: The image in mode ``RGB``.

    Raises:
        ValueError: For a 32-bit float image (mode ``F``), whose value range is unknown.
    """
    transparent = _colour_key_pixels(image)
    if transparent is not None:
        pixels = np.array(to_rgb(_without_colour_key(image)))
        pixels[transparent] = background
        return Image.fromarray(pixels, mode="RGB")
    if image.mode == "RGB":
        return image
    if image.mode == "F":
        # Pillow's convert("RGB") truncates floats to 0-255, which turns an
        # image scaled to [0, 1] black without notice.
        raise ValueError(FLOAT_IMAGE_REASON)
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    elif image.mode in ALPHA_MODES:
        image = image.convert("RGBA")
    elif image.mode in SIXTEEN_BIT_MODES:
        # 65535 / 257 = 255, so the full 16-bit range maps onto the 8-bit one.
        values = np.asarray(image, dtype=np.float64) / 257.0
        image = Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8), mode="L")
    if image.mode == "RGBA":
        canvas = Image.new("RGBA", image.size, background + (255,))
        return Image.alpha_composite(canvas, image).convert("RGB")
    return image.convert("RGB")


def _colour_key_pixels(image: Image.Image) -> np.ndarray | None:
    """Return the pixels of the transparent colour (a PNG ``tRNS`` key), or None for an image without one.

    An RGB, grayscale or 16-bit grayscale PNG can name one colour as
    transparent, which Pillow stores as ``info["transparency"]``. Palette
    images keep theirs in the palette and are converted to RGBA instead.
    """
    key = image.info.get("transparency")
    if key is None or image.mode not in ("RGB", "L", *SIXTEEN_BIT_MODES) or isinstance(key, bytes):
        return None
    values = np.asarray(image)
    if image.mode == "RGB":
        return np.all(values == np.asarray(key), axis=-1)
    return values == key


def _without_colour_key(image: Image.Image) -> Image.Image:
    """Return a copy of ``image`` without its transparent colour, so that it converts as an opaque image."""
    opaque = image.copy()
    opaque.info.pop("transparency", None)
    return opaque


# The shorter side that model preprocessing typically resizes to (224 to 256
# for ImageNet models), used to estimate the size of a resized image.
TYPICAL_RESIZE_SIDE = 256


def elongation_reason(image: Image.Image) -> str | None:
    """Return why an image is too elongated to resize, or None when it is not.

    Preprocessing resizes the shorter side to about 256 pixels, so a strip of
    20000 x 4 pixels (a PNG of under 1 KB) would become 1,280,000 x 256 pixels. Such an
    image is rejected when the resized one would exceed Pillow's
    ``PIL.Image.MAX_IMAGE_PIXELS``, the limit it sets on decoded images.

    NOTE: The model's own resize is not read: a model that resizes to more
    than 256 pixels needs more memory for an accepted strip than estimated.

    Args:
        image (Image.Image): A decoded image.

    Returns:
        str | None: The reason, naming the size and what to do.
    """
    width, height = image.size
    shorter, longer = min(width, height), max(width, height)
    limit = Image.MAX_IMAGE_PIXELS
    if shorter == 0 or limit is None:
        return None
    resized = longer / shorter * TYPICAL_RESIZE_SIDE**2
    if resized <= limit:
        return None
    return (
        f"{width} x {height} pixels, an aspect ratio of {longer / shorter:.0f}:1: resizing its shorter "
        f"side to about {TYPICAL_RESIZE_SIDE} pixels would make an image of about {resized:,.0f} pixels, "
        f"more than Pillow's limit for one image (PIL.Image.MAX_IMAGE_PIXELS, {limit:,}); crop or pad "
        "the image to a less elongated shape"
    )


def load_rgb(path: str | os.PathLike, background: tuple[int, int, int] = (255, 255, 255),
             exif_transpose: bool = True) -> Image.Image:
    """Decode an image file completely and convert it to RGB.

    A file with several frames gives its first frame, as
    :func:`load_first_frame` describes.

    Args:
        path (str | os.PathLike): The image file.
        background (tuple[int, int, int]): Colour under transparent pixels.
        exif_transpose (bool): Rotate or flip by the EXIF orientation tag, as
            image viewers show the photo.

    Returns:
        Image.Image: An RGB image.

    Raises:
        ImageReadError: If the file is missing, empty, truncated or not an image.
    """
    return load_first_frame(path, background, exif_transpose)[0]


def load_first_frame(path: str | os.PathLike, background: tuple[int, int, int] = (255, 255, 255),
                     exif_transpose: bool = True) -> tuple[Image.Image, bool]:
    """Decode the first frame of an image file completely, convert it to RGB and report animation.

    An animated GIF, APNG or WebP, or a multi-page TIFF, has several frames.
    Only the first is decoded, so callers that use the image for features
    should tell the user (``dimalign extract`` logs such files).

    An embedded ICC colour profile is ignored, as torchvision's default
    image loader ignores it: the stored colour values are returned as they
    are. The returned image may still carry the profile in
    ``image.info["icc_profile"]``, so a caller that saves it for display
    should drop the profile.

    Args:
        path (str | os.PathLike): The image file.
        background (tuple[int, int, int]): Colour under transparent pixels.
        exif_transpose (bool): Rotate or flip by the EXIF orientation tag, as
            image viewers show the photo.

    Returns:
        tuple[Image.Image, bool]: The RGB image of the first frame, and
        whether the file has more than one frame.

    Raises:
        ImageReadError: If the file is missing, empty, truncated or not an image.
    """
    path = str(path)
    try:
        if os.path.getsize(path) == 0:
            raise ImageReadError(path, "empty file (0 bytes)")
        with Image.open(path) as opened:
            # load() decodes every pixel, so a truncated file fails here and not later.
            _load_strictly(opened)
            if opened.mode == "F":
                raise ImageReadError(path, FLOAT_IMAGE_REASON)
            image = ImageOps.exif_transpose(opened) if exif_transpose else opened.copy()
            # Pillow's is_animated reads the frame count (or, for GIF, seeks to frame 1)
            # after the copy, so the copy keeps frame 0.
            animated = bool(getattr(opened, "is_animated", False))
    except ImageReadError:
        raise
    except FileNotFoundError:
        raise ImageReadError(path, "file not found") from None
    except UnidentifiedImageError:
        if os.path.splitext(path)[1].lower() in HEIF_SUFFIXES:
            raise ImageReadError(path, HEIF_REASON) from None
        raise ImageReadError(path, "not an image file Pillow can read") from None
    except Image.DecompressionBombError as error:
        reason = (
            f"more pixels than Pillow decodes ({error}); downscale the image. Python callers "
            f"can raise PIL.Image.MAX_IMAGE_PIXELS (now {Image.MAX_IMAGE_PIXELS}, and Pillow "
            "rejects images over twice that) for files they trust"
        )
        raise ImageReadError(path, reason) from None
    except (OSError, ValueError, SyntaxError) as error:
        reason = f"cannot decode image ({type(error).__name__}: {error})"
        raise ImageReadError(path, reason) from None
    return to_rgb(image, background), animated


def _load_strictly(image: Image.Image) -> None:
    """Decode every pixel, failing on a truncated file even where that is switched off.

    Training code often sets ``PIL.ImageFile.LOAD_TRUNCATED_IMAGES = True``
    for the whole process, and then Pillow fills the missing part of a
    truncated file with gray. The flag is cleared for this load and restored.
    NOTE: another thread that decodes images at the same moment also finds the flag cleared.
    """
    previous = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        image.load()
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = previous
