"""Image datasets: which files become rows, in which order, and how they are decoded.

Rules (also in docs/features.md):

* A folder is searched recursively. A file is an image when its extension,
  compared case-insensitively, is in ``extensions`` (default ``.jpg .jpeg .png
  .bmp .webp``). Hidden entries, whose name or any parent folder's name below the
  root starts with ``.``, are ignored. Linked folders are not followed, so a link
  loop cannot make the search endless, but linked files are read.
* Rows are sorted by relative POSIX path, component by component. Components
  are compared casefolded first and then by their original code points, after
  Unicode NFC normalisation. The order therefore depends neither on the file
  system's listing order nor on the locale: ``a.jpg``, ``B.jpg``, ``b.jpg``,
  ``sub/a.jpg``, ``sub-2.jpg``.
* A list file is a text file with one path per line, relative to the list
  file's folder or absolute. Blank lines and lines starting with ``#`` are
  ignored. The list keeps its own order and is not filtered by extension.
* Object ids are the NFC-normalised relative POSIX paths (for a list file, the
  path as written); sources are absolute paths.
* Decoding: EXIF orientation is applied (optional). Palette images with a
  transparent colour become RGBA. Alpha (RGBA, LA, PA) is composited onto a
  background colour, white by default. 16-bit grayscale is scaled to 8 bits by
  dividing by 257. Grayscale is replicated into three channels. 32-bit float
  images (mode ``F``) are rejected. Every other mode goes through Pillow's
  ``convert("RGB")``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image

# The decoding names are re-exported here, where callers have imported them from.
from dimalign.features.decode import (  # noqa: F401
    ALPHA_MODES,
    FLOAT_IMAGE_REASON,
    SIXTEEN_BIT_MODES,
    ImageReadError,
    elongation_reason,
    load_first_frame,
    load_rgb,
    parse_color,
    to_rgb,
)
from dimalign.io.objects import ObjectTable, abbreviate_tuple

logger = logging.getLogger(__name__)

DEFAULT_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


@dataclass(frozen=True)
class ImageList:
    """The image files of an extraction, in row order.

    Attributes:
        object_ids (tuple[str, ...]): Relative POSIX path of each image (the row name).
        paths (tuple[str, ...]): Absolute path of each image.
        root (str): The folder or list file the images came from.
    """

    object_ids: tuple[str, ...]
    paths: tuple[str, ...]
    root: str

    def __post_init__(self) -> None:
        # Checked here, not when objects.tsv is written after the last batch.
        if len(self.object_ids) != len(self.paths):
            raise ValueError(f"ImageList has {len(self.object_ids)} object ids but {len(self.paths)} "
                             "paths: give one path per object id")
        first_row: dict[str, int] = {}
        for row, object_id in enumerate(self.object_ids):
            if object_id in first_row:
                raise ValueError(f"ImageList object id {object_id!r} appears twice (rows "
                                 f"{first_row[object_id]} and {row}): object ids must be unique")
            first_row[object_id] = row

    def __len__(self) -> int:
        return len(self.object_ids)

    def __repr__(self) -> str:
        # A notebook shows the repr, and a folder of thousands of images would fill a screen.
        return (
            f"{type(self).__name__}(n_images={len(self)}, object_ids={abbreviate_tuple(self.object_ids)}, "
            f"paths={abbreviate_tuple(self.paths)}, root={self.root!r})"
        )

    def checksum(self) -> str:
        """Return the SHA-256 of the object ids in row order, one per line in UTF-8.

        Moving the folder keeps the checksum, while renaming, adding, removing or
        reordering files changes it.
        """
        digest = hashlib.sha256()
        for object_id in self.object_ids:
            digest.update(object_id.encode("utf-8") + b"\n")
        return digest.hexdigest()

    def object_table(self, rows: Sequence[int] | None = None) -> ObjectTable:
        """Return the object table of ``rows`` (all rows by default).

        Args:
            rows (Sequence[int] | None): Image indices, in the order of the
                table; None takes every image.

        Returns:
            ObjectTable: The object ids and image paths of those rows.
        """
        rows = range(len(self)) if rows is None else rows
        return ObjectTable(tuple(self.object_ids[row] for row in rows),
                           tuple(self.paths[row] for row in rows))


def sort_key(relative_path: str) -> tuple[tuple[str, str], ...]:
    """Return the key that orders relative POSIX paths (see the module docstring)."""
    normalised = unicodedata.normalize("NFC", relative_path)
    return tuple((part.casefold(), part) for part in normalised.split("/"))


def normalise_extensions(extensions: Sequence[str]) -> tuple[str, ...]:
    """Lower-case extensions and give each a leading dot (``"JPG"`` -> ``".jpg"``).

    Args:
        extensions (Sequence[str]): Extensions with or without the dot.

    Returns:
        tuple[str, ...]: Each extension once, in the given order.

    Raises:
        ValueError: For an empty extension or a lone dot.
    """
    normalised = []
    for extension in extensions:
        extension = extension.strip().lower()
        if not extension or extension == ".":
            raise ValueError(f"invalid image extension {extension!r}: use a form like .jpg")
        normalised.append(extension if extension.startswith(".") else f".{extension}")
    return tuple(dict.fromkeys(normalised))


def find_images(root: str | os.PathLike,
                extensions: Sequence[str] = DEFAULT_EXTENSIONS) -> ImageList:
    """List the images below a folder, recursively and in the documented order.

    Args:
        root (str | os.PathLike): The folder.
        extensions (Sequence[str]): File extensions to keep, matched case-insensitively.

    Returns:
        ImageList: Every non-hidden image file, sorted by :func:`sort_key`.

    Raises:
        FileNotFoundError: If ``root`` is not a folder or contains no image.
    """
    root_path = Path(root)
    if not root_path.is_dir():
        raise FileNotFoundError(f"image folder {root_path} not found")
    allowed = normalise_extensions(extensions)

    relative_paths = []
    for folder, subfolders, files in os.walk(root_path):
        # Pruning in place stops os.walk from entering hidden folders.
        subfolders[:] = [name for name in subfolders if not name.startswith(".")]
        for name in subfolders:
            linked = Path(folder) / name
            if linked.is_symlink():
                logger.warning("left out the linked folder %s (-> %s), because linked folders are not "
                               "followed; list its images in a list file to include them",
                               linked, os.readlink(linked))
        for name in files:
            if name.startswith(".") or os.path.splitext(name)[1].lower() not in allowed:
                continue
            full = Path(folder) / name
            if not _is_utf8(str(full)):
                raise ValueError(
                    f"the image path {os.fsencode(full)!r} is not valid UTF-8, so it cannot be an "
                    "object id in objects.tsv: rename the file or folder with UTF-8 names (for "
                    "example with convmv -f latin1 -t utf8)"
                )
            if full.is_file():
                relative_paths.append(full.relative_to(root_path).as_posix())
            elif full.is_symlink():
                logger.warning("%s is a link to a missing file (%s): left out", full, os.readlink(full))
    if not relative_paths:
        raise FileNotFoundError(
            f"no images with extensions {' '.join(allowed)} in {root_path}; "
            "pass --extensions to match other files"
        )

    relative_paths.sort(key=sort_key)
    absolute_root = os.path.abspath(root_path)
    object_ids = tuple(unicodedata.normalize("NFC", path) for path in relative_paths)
    paths = tuple(os.path.join(absolute_root, *path.split("/")) for path in relative_paths)
    first_row: dict[str, int] = {}
    for row, object_id in enumerate(object_ids):
        if object_id in first_row:
            raise ValueError(
                f"the images {paths[first_row[object_id]]!r} and {paths[row]!r} get the same object "
                f"id {object_id!r}: their names differ only in Unicode normalisation (NFC); rename one"
            )
        first_row[object_id] = row
    logger.info("found %d images in %s", len(object_ids), root_path)
    return ImageList(object_ids, paths, str(root_path))


def _is_utf8(name: str) -> bool:
    """Return whether a path from ``os.walk`` decodes as UTF-8.

    Python decodes undecodable bytes of POSIX file names to lone surrogates
    (PEP 383), which cannot be encoded as UTF-8.
    """
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def read_image_list(list_file: str | os.PathLike) -> ImageList:
    """Read a text file with one image path per line, keeping the file's order.

    Relative paths are resolved against the list file's folder. Blank lines and
    lines starting with ``#`` are ignored.

    Args:
        list_file (str | os.PathLike): The text file.

    Returns:
        ImageList: The image files in the file's order.

    Raises:
        FileNotFoundError: If the list file is missing or empty.
        ValueError: If a path appears twice, also spelled differently (rows
            must be unique).
    """
    list_path = Path(list_file)
    if not list_path.is_file():
        raise FileNotFoundError(f"image list file {list_path} not found")
    base = os.path.abspath(list_path.parent)

    object_ids: list[str] = []
    paths: list[str] = []
    first_line: dict[str, int] = {}
    first_line_of_path: dict[str, int] = {}
    # utf-8-sig drops the byte order mark that Windows editors put first,
    # which would otherwise become part of the first path.
    for line_number, line in enumerate(list_path.read_text(encoding="utf-8-sig").splitlines(), 1):
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        object_id = unicodedata.normalize("NFC", Path(entry).as_posix())
        if object_id in first_line:
            raise ValueError(
                f"{list_path}, line {line_number}: {entry!r} repeats line "
                f"{first_line[object_id]}; list each image once"
            )
        path = os.path.normpath(os.path.join(base, entry))
        if path in first_line_of_path:
            # Two spellings of one file (sub/../a.jpg and a.jpg) would make one image two objects.
            raise ValueError(
                f"{list_path}, line {line_number}: {entry!r} is the file {path} of line "
                f"{first_line_of_path[path]} again; list each image once"
            )
        first_line[object_id] = line_number
        first_line_of_path[path] = line_number
        object_ids.append(object_id)
        paths.append(path)
    if not object_ids:
        raise FileNotFoundError(f"image list file {list_path} lists no images")
    logger.info("read %d image paths from %s", len(object_ids), list_path)
    return ImageList(tuple(object_ids), tuple(paths), str(list_path))


def list_images(source: str | os.PathLike,
                extensions: Sequence[str] = DEFAULT_EXTENSIONS) -> ImageList:
    """List images from a folder (:func:`find_images`) or a list file (:func:`read_image_list`).

    Args:
        source (str | os.PathLike): A folder, searched recursively, or a text
            file with one image path per line.
        extensions (Sequence[str]): File suffixes that count as images in a folder.

    Returns:
        ImageList: The image files in row order.

    Raises:
        FileNotFoundError: If ``source`` does not exist.
        ValueError: If ``source`` is an image file rather than a folder or a list.
    """
    path = Path(source)
    if path.is_dir():
        return find_images(source, extensions)
    if not path.exists():
        raise FileNotFoundError(
            f"{path} not found: pass a folder of images or a text file that lists one image per line"
        )
    if path.suffix.lower() in normalise_extensions(extensions):
        raise ValueError(
            f"{path} is an image, not a folder of images or a list file: put it in a folder "
            "(alone if need be) and pass the folder"
        )
    try:
        return read_image_list(source)
    except UnicodeDecodeError as error:
        raise ValueError(
            f"{path} is not a text list of image paths (byte {error.start} is not UTF-8): pass a "
            "folder of images or a text file that lists one image per line"
        ) from error



#: Stamp of an image whose file could not be examined before it was read; it matches no file.
UNKNOWN_STAMP = (-1, -1)


def image_stamp(path: str | os.PathLike) -> tuple[int, int]:
    """Return the size in bytes and the modification time in ns of a file.

    Args:
        path (str | os.PathLike): The file.

    Returns:
        tuple[int, int]: ``(st_size, st_mtime_ns)``.

    Raises:
        OSError: If the file cannot be examined.
    """
    stat = os.stat(path)
    return stat.st_size, stat.st_mtime_ns


class ImageDataset(torch.utils.data.Dataset):
    """Decoded, preprocessed images of an :class:`ImageList`.

    An item is ``(row, tensor, None, stamp, animated)`` or, for a file that
    cannot be read, ``(row, None, reason, stamp, False)``, where ``stamp`` is
    the file's :func:`image_stamp` taken before reading it
    (:data:`UNKNOWN_STAMP` if that failed). ``animated`` is True for a file
    with several frames, of which only the first is used. Reporting instead of raising lets the caller stop or skip,
    also across DataLoader worker processes.

    Args:
        images (ImageList): The files.
        transform (Callable): PIL RGB image -> tensor (the model's preprocessing).
        rows (Sequence[int] | None): Rows to serve, in order (all by default).
        background (tuple[int, int, int]): Colour under transparent pixels.
        exif_transpose (bool): Apply the EXIF orientation tag.
    """

    def __init__(self, images: ImageList, transform: Callable[[Image.Image], torch.Tensor],
                 rows: Sequence[int] | None = None,
                 background: tuple[int, int, int] = (255, 255, 255),
                 exif_transpose: bool = True) -> None:
        self.images = images
        self.transform = transform
        self.rows = list(range(len(images))) if rows is None else list(rows)
        self.background = background
        self.exif_transpose = exif_transpose

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, item: int) -> tuple[int, torch.Tensor | None, str | None, tuple[int, int], bool]:
        row = self.rows[item]
        path = self.images.paths[row]
        # The stamp comes before the read, so a file replaced between the two
        # is recorded with the old stamp and read again on resume. The other
        # order could record the new file's stamp next to the old picture's features.
        try:
            stamp = image_stamp(path)
        except OSError:
            stamp = UNKNOWN_STAMP
        try:
            image, animated = load_first_frame(path, self.background, self.exif_transpose)
        except ImageReadError as error:
            return row, None, error.reason, stamp, False
        reason = elongation_reason(image)
        if reason is not None:
            return row, None, reason, stamp, False
        return row, self.transform(image), None, stamp, animated


@dataclass
class ImageBatch:
    """A collated batch: the readable images' rows and tensors, and the failures.

    Attributes:
        rows (list[int]): Rows of the readable images, in batch order.
        pixels (torch.Tensor | None): ``(len(rows), 3, H, W)``, None if no image was readable.
        failures (list[tuple[int, str]]): ``(row, reason)`` of each unreadable file.
        stamps (list[tuple[int, int]]): :func:`image_stamp` of each readable image, as ``rows``.
        animated (list[int]): Rows of the readable images with several
            frames, whose pixels are those of the first frame.
    """

    rows: list[int]
    pixels: torch.Tensor | None
    failures: list[tuple[int, str]]
    stamps: list[tuple[int, int]] = field(default_factory=list)
    animated: list[int] = field(default_factory=list)

    def pin_memory(self) -> ImageBatch:
        """Return the batch with its pixels in page-locked memory (DataLoader ``pin_memory``)."""
        pixels = self.pixels.pin_memory() if self.pixels is not None else None
        return ImageBatch(self.rows, pixels, self.failures, self.stamps, self.animated)


def collate_images(
    items: Sequence[tuple[int, torch.Tensor | None, str | None, tuple[int, int], bool]],
) -> ImageBatch:
    """Stack the readable items of a batch and set the unreadable ones aside.

    Args:
        items (Sequence[tuple]): ``(row, pixels, reason, stamp, animated)``
            per image, as :class:`ImageDataset` yields them. ``pixels`` is None and
            ``reason`` gives the cause for an image that could not be read.

    Returns:
        ImageBatch: The rows, pixels ``(n_readable, 3, H, W)`` (None when no
        image was readable), stamps and animated rows of the readable
        images, and ``(row, reason)`` per unreadable one.
    """
    readable = [item for item in items if item[1] is not None]
    rows = [row for row, _, _, _, _ in readable]
    pixels = torch.stack([tensor for _, tensor, _, _, _ in readable]) if readable else None
    failures = [(row, reason) for row, tensor, reason, _, _ in items if tensor is None]
    stamps = [stamp for _, _, _, stamp, _ in readable]
    animated = [row for row, _, _, _, is_animated in readable if is_animated]
    return ImageBatch(rows, pixels, failures, stamps, animated)
