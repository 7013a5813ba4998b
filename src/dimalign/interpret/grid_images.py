"""Image grids of embedding dimensions: the objects each dimension weights most, as pictures.

Two layouts per dimension (see :mod:`dimalign.interpret.grids` for the
choice of objects):

- ``top``: the ``top_k`` objects with the largest weights, in rows of six.
- ``percentile``: the 5 x 6 labelling layout, the top six objects followed
  by rows of objects near the 98th, 95th, 90th and 80th percentile, whose
  captions name the percentile (``p98 0.418``).

Each cell shows the object's image scaled to fit a square with a thin
border, and a caption with the object's weight; a title bar names the
dimension.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont, ImageOps

from dimalign.features.recorded import Decoding
from dimalign.interpret.grids import DEFAULT_PERCENTILES, percentile_grid, top_objects
from dimalign.io.objects import ObjectTable, find_image

logger = logging.getLogger(__name__)

LAYOUTS = ("top", "percentile")
BORDER_COLOUR = (160, 160, 160)
BACKGROUND_COLOUR = (255, 255, 255)
TEXT_COLOUR = (20, 20, 20)


@dataclass
class GridCell:
    """One picture of a grid with its caption.

    Attributes:
        image (PIL.Image.Image): The picture.
        caption (str): The text drawn with it.
    """

    image: Image.Image
    caption: str


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has only the fixed-size bitmap font.
        return ImageFont.load_default()


#: A private-use code point that standard fonts do not draw. A font draws it as its
#: missing-glyph box, which shows how that font draws other missing characters.
_NO_GLYPH = "\U0010fffd"


def _missing_glyphs(text: str, font: ImageFont.ImageFont | ImageFont.FreeTypeFont) -> str:
    """Return the distinct characters of ``text`` that ``font`` draws as its missing-glyph box, sorted.

    A character counts as missing where its bounding box and advance equal
    those of :data:`_NO_GLYPH`.
    """
    box = (font.getbbox(_NO_GLYPH), font.getlength(_NO_GLYPH))
    missing = {
        character for character in text
        if not character.isspace() and (font.getbbox(character), font.getlength(character)) == box
    }
    return "".join(sorted(missing))


def _title_font(title: str, size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """Return a font of ``size`` pixels that draws every character of ``title``, where one is available.

    Pillow's default font draws Latin letters only. A title with other
    letters, such as a file name in Cyrillic or Greek, gets matplotlib's
    DejaVu Sans, which draws those too. Characters that neither font draws,
    such as Chinese, show as boxes, and a warning names them.
    """
    from matplotlib import font_manager

    font = _font(size)
    missing = _missing_glyphs(title, font)
    if not missing:
        return font
    dejavu_path = font_manager.findfont(font_manager.FontProperties(family="DejaVu Sans"))
    dejavu = ImageFont.truetype(dejavu_path, size)
    if len(_missing_glyphs(title, dejavu)) < len(missing):
        font = dejavu
        missing = _missing_glyphs(title, dejavu)
    if missing:
        logger.warning(
            "the title %r contains characters that no available font draws (%s), so they show as boxes",
            title, missing,
        )
    return font


def compose_grid(
    cells: Sequence[GridCell],
    n_cols: int,
    *,
    title: str = "",
    cell_size: int = 128,
    border: int = 1,
    padding: int = 4,
    font_size: int = 11,
) -> Image.Image:
    """Lay out pictures in rows of ``n_cols`` with thin borders and captions.

    Args:
        cells (Sequence[GridCell]): Pictures in reading order.
        n_cols (int): Cells per row.
        title (str): Text of the title bar ("" for none).
        cell_size (int): Side of each picture's square in pixels; pictures
            keep their aspect ratio and are padded with white. A column is
            wider where its longest caption needs the space.
        border (int): Border width in pixels.
        padding (int): Space between cells in pixels.
        font_size (int): Caption font size in pixels.

    Returns:
        Image.Image: An RGB image.
    """
    if not cells:
        raise ValueError("a grid needs at least one cell")
    if n_cols < 1:
        raise ValueError(f"n_cols must be >= 1, got {n_cols}")
    font = _font(font_size)
    title_font = _title_font(title, font_size + 3)
    caption_height = font_size + 6
    title_height = font_size + 14 if title else 0
    n_rows = -(-len(cells) // n_cols)
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    picture_width = cell_size + 2 * border
    # Columns are widened to the longest caption, which small pictures would
    # otherwise let run into the captions of the neighbouring cells.
    caption_width = max(measure.textlength(cell.caption, font=font) for cell in cells)
    cell_width = max(picture_width, int(np.ceil(caption_width)))
    cell_height = cell_size + 2 * border + caption_height
    width = padding + n_cols * (cell_width + padding)
    height = title_height + padding + n_rows * (cell_height + padding)
    if title:
        # A grid of few cells is widened so that the title is not cut off.
        title_width = measure.textlength(title, font=title_font)
        width = max(width, int(np.ceil(title_width)) + 2 * padding)

    canvas = Image.new("RGB", (width, height), BACKGROUND_COLOUR)
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((padding, padding), title, fill=TEXT_COLOUR, font=title_font)
    for index, cell in enumerate(cells):
        row, col = divmod(index, n_cols)
        column_left = padding + col * (cell_width + padding)
        left = column_left + (cell_width - picture_width) // 2
        top = title_height + padding + row * (cell_height + padding)
        picture = ImageOps.pad(cell.image.convert("RGB"), (cell_size, cell_size), color=BACKGROUND_COLOUR)
        draw.rectangle(
            (left, top, left + picture_width - 1, top + cell_size + 2 * border - 1), fill=BORDER_COLOUR
        )
        canvas.paste(picture, (left + border, top + border))
        draw.text(
            (column_left + cell_width / 2, top + cell_size + 2 * border + caption_height / 2),
            cell.caption, fill=TEXT_COLOUR, font=font, anchor="mm",
        )
    return canvas


def grid_objects(weights: np.ndarray, layout: str, top_k: int = 12) -> np.ndarray:
    """Return the object indices of one dimension's grid, shape ``(n_rows, n_cols)`` or ``(top_k,)``.

    Raises:
        ValueError: For an unknown layout or too few objects.
    """
    if layout == "top":
        return top_objects(weights, top_k)
    if layout == "percentile":
        n_cells = 6 * (1 + len(DEFAULT_PERCENTILES))
        if np.size(weights) < n_cells:
            raise ValueError(
                f"the percentile layout has {n_cells} cells but there are only {np.size(weights)} "
                f"objects: use the top layout (CLI: --layout top --top-k {np.size(weights)})"
            )
        return percentile_grid(weights)
    raise ValueError(f"invalid layout {layout!r}: use {' or '.join(LAYOUTS)}")


def image_paths(table: ObjectTable, image_dir: str | os.PathLike, rows: Sequence[int]) -> dict[int, Path]:
    """Resolve the image file of each row, as :func:`dimalign.io.objects.find_image` does.

    A row's ``source`` (relative to ``image_dir``) comes first, then
    ``<object_id>.<ext>`` and the folder ``<object_id>/``. A row without a
    source is also tried at ``<image_dir>/<object_id>``, the path of an object
    table that lists image files.

    Raises:
        FileNotFoundError: Listing every object without an image.
    """
    image_dir = Path(image_dir)
    paths = {
        int(row): find_image(image_dir, table.object_ids[row], table.sources[row] or table.object_ids[row])
        for row in rows
    }
    missing = [table.sources[row] or table.object_ids[row] for row, path in paths.items() if path is None]
    if missing:
        # "." is the default of dimalign grid --images, so the message names the option a user left out.
        where = str(image_dir)
        if image_dir == Path("."):
            where = (
                f"the current folder {Path.cwd()}, where images are looked for without --images: pass the "
                "image folder with --images DIR"
            )
        raise FileNotFoundError(
            f"{len(missing)} objects have no image under {where} (looked for the source column, "
            f"<object_id>.jpg/.jpeg/.png and <object_id>/): {', '.join(missing[:50])}"
            + (" ..." if len(missing) > 50 else "")
        )
    return paths


def read_picture(path: str | os.PathLike, decoding: Decoding | None = None) -> Image.Image:
    """Decode an image file as ``dimalign extract`` does with the settings ``decoding``.

    Args:
        path (str | os.PathLike): The image file.
        decoding (Decoding | None): Background colour and EXIF handling
            (None: extract's defaults, white and EXIF orientation applied).

    Raises:
        ValueError: If the file cannot be decoded, naming it and the reason.
    """
    from dimalign.features.decode import ImageReadError, load_rgb

    decoding = decoding or Decoding()
    try:
        return load_rgb(path, decoding.background, decoding.exif_transpose)
    except ImageReadError as error:
        raise ValueError(f"cannot read image {error.path}: {error.reason}") from error


def load_grid_images(paths: dict[int, Path], cell_size: int,
                     decoding: Decoding | None = None) -> dict[int, Image.Image]:
    """Decode every image that the grids need, shrunk to fit a ``cell_size`` square.

    ``decoding`` sets the background colour and EXIF handling, as for :func:`read_picture`.

    All files are read before any grid is drawn, so a damaged file stops the
    command before it writes anything. Shrinking keeps the memory of many
    large photos small.

    Raises:
        ValueError: Listing every file that cannot be decoded.
    """
    pictures: dict[int, Image.Image] = {}
    failures: list[str] = []
    for row, path in paths.items():
        try:
            picture = read_picture(path, decoding)
        except ValueError as error:
            failures.append(str(error).removeprefix("cannot read image "))
            continue
        pictures[row] = ImageOps.contain(picture, (cell_size, cell_size)) if max(picture.size) > cell_size else picture
    if failures:
        raise ValueError(
            f"{len(failures)} images of the grids cannot be read; replace or re-export them: "
            + "; ".join(failures[:20]) + (" ..." if len(failures) > 20 else "")
        )
    return pictures


def dimension_grid(
    embedding: np.ndarray,
    dim: int,
    paths: dict[int, Path | Image.Image],
    *,
    layout: str = "top",
    top_k: int = 12,
    n_cols: int = 6,
    cell_size: int = 128,
) -> tuple[Image.Image, np.ndarray]:
    """Draw one dimension's grid.

    Args:
        embedding (np.ndarray): ``(n_objects, n_dims)``.
        dim (int): 0-based dimension.
        paths (dict[int, Path | Image.Image]): Image file of each object row
            needed, or its picture as :func:`load_grid_images` returns it.
        layout (str): ``top`` or ``percentile``.
        top_k (int): Objects of the ``top`` layout.
        n_cols (int): Cells per row of the ``top`` layout (the percentile
            layout always has 6).
        cell_size (int): Side of each picture in pixels.

    Returns:
        tuple[Image.Image, np.ndarray]: The grid and the object rows shown, in reading order.
    """
    weights = embedding[:, dim]
    chosen = grid_objects(weights, layout, top_k)
    n_positive = int((weights[chosen.ravel()] > 0).sum())
    if n_positive < chosen.size:
        # Ties at weight 0 are broken by row order, so those cells show arbitrary objects.
        logger.warning(
            "dimension %d: %d of the %d objects in its %s grid have weight 0 and are shown in row order",
            dim, chosen.size - n_positive, chosen.size, layout,
        )
    columns = chosen.shape[1] if chosen.ndim == 2 else min(n_cols, chosen.size)
    rows = chosen.ravel()
    cells = []
    for row, caption in zip(rows, grid_captions(weights, chosen)):
        picture = paths[int(row)]
        if not isinstance(picture, Image.Image):
            picture = read_picture(picture)
        cells.append(GridCell(picture, caption))
    title = f"dimension {dim} ({layout}): max weight {weights.max():.3f}"
    return compose_grid(cells, columns, title=title, cell_size=cell_size), rows


def grid_captions(
    weights: np.ndarray, chosen: np.ndarray, percentiles: Sequence[float] = DEFAULT_PERCENTILES
) -> list[str]:
    """Return the caption of each cell of a grid, in reading order: the object's weight.

    In the percentile layout (``chosen`` of shape ``(rows, columns)``), the
    cells after the top row also name the percentile of their row,
    such as ``p98 0.418``, because nothing else in the picture shows it.

    Args:
        weights (np.ndarray): The dimension's weight of every object.
        chosen (np.ndarray): Object rows of the grid, 1-D for the top layout.
        percentiles (Sequence[float]): The percentiles that
            :func:`~dimalign.interpret.grids.percentile_grid` chose the rows
            after the first by.

    Raises:
        ValueError: If a 2-D ``chosen`` has another number of rows after the
            first than ``percentiles`` has values.
    """
    captions = [f"{weights[row]:.3f}" for row in chosen.ravel()]
    if chosen.ndim == 2:
        n_rows, n_cols = chosen.shape
        if n_rows - 1 != len(percentiles):
            listed = ", ".join(f"{percentile:g}" for percentile in percentiles)
            raise ValueError(
                f"the grid has {n_rows - 1} percentile rows but {len(percentiles)} percentiles are given "
                f"({listed}); pass the percentiles that chose the grid"
            )
        for index in range(n_cols, len(captions)):
            percentile = percentiles[index // n_cols - 1]
            captions[index] = f"p{percentile:g} {captions[index]}"
    return captions


def needed_rows(embedding: np.ndarray, dims: Sequence[int], layout: str, top_k: int) -> list[int]:
    """Return the sorted object rows that the grids of ``dims`` show."""
    rows: set[int] = set()
    for dim in dims:
        rows.update(int(row) for row in grid_objects(embedding[:, dim], layout, top_k).ravel())
    return sorted(rows)
