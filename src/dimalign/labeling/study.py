"""A labelling study: which dimensions and images it shows, who took part, and what they answered.

:func:`create_study` turns an embedding, its object table and an image folder
into a study database. For every chosen dimension it stores the 5 x 6
percentile grid that participants see (row 0 the six highest-weighted objects,
rows 1-4 the objects nearest the 98th, 95th, 90th and 80th percentile of the
weights) and the dimension's top objects for the semantic check. The database
is self-contained: serving and summarising a study need neither the run
directory nor the object table again, only the image folder.

:class:`Study` is the data access used by the web app, the export and the
analyses. Each answer is written in one transaction that is committed before
the call returns.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import csv
import dataclasses
import datetime as _dt
import enum
import errno
import functools
import hashlib
import io
import json
import logging
import os
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

import dimalign
from dimalign.io.files import (
    abbreviate,
    atomic_path,
    is_same_file,
    now_iso,
    output_dir,
    sha256_file,
    write_text_atomic,
)
from dimalign.features.recorded import Decoding, recorded_decoding
from dimalign.io.objects import OBJECT_TABLE_NAME, files_with_suffix_any_case, read_object_table
from dimalign.io.runs import EMBEDDING_NAME, load_embedding
from dimalign.labeling import db
from dimalign.labeling.answers import Answer

logger = logging.getLogger(__name__)

#: File suffixes served as images (lower case). The app serves TIFF files
#: decoded, because most browsers do not show TIFF.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".gif", ".webp", ".bmp", ".tif", ".tiff")

#: Number of top objects per dimension stored for the semantic check.
N_TOP_OBJECTS = 20

if TYPE_CHECKING:
    import PIL.Image

#: The EXIF tag of the orientation (1: stored upright, 2 to 8: flipped or rotated).
EXIF_ORIENTATION_TAG = 0x0112

#: Image formats (Pillow's names) and modes that the app serves as they are
#: when they are still, opaque and upright (see :func:`browser_shows_otherwise`).
BROWSER_FORMATS = ("JPEG", "PNG", "GIF", "WEBP", "BMP")
BROWSER_MODES = ("RGB", "L", "P", "1")

#: The maximum length, in pixels, of the longer side of an image that the
#: app serves decoded. A grid cell is at most 128 CSS pixels wide, which is 384 pixels on a
#: screen of 3 device pixels per CSS pixel. On one CPU core, a noisy
#: 4000 x 3000 test photo took 27 MB and 2.3 s as a full-size PNG, and
#: 0.24 MB and 0.4 s at this side.
SERVED_IMAGE_SIDE = 512

#: Name of the study database that the short form ``dimalign label-app RUN`` keeps in the run directory.
RUN_STUDY_NAME = db.RUN_STUDY_NAME


@dataclass(frozen=True)
class QuestionSet:
    """The questions asked for every dimension, and the allowed answers.

    Attributes:
        name (str): Name used on the command line (``--questions``).
        max_labels (int): Maximum number of labels per dimension.
        max_label_length (int): Maximum length of a trimmed label, in the UTF-16
            code units that the text field's ``maxlength`` counts.
        kinds (tuple[tuple[str, str], ...]): ``(value, text shown)`` for the
            question whether a dimension is visual or semantic.
        interpretability (tuple[tuple[str, str], ...]): ``(value, text shown)``
            for the question how many concepts a dimension expresses.
    """

    name: str
    max_labels: int
    max_label_length: int
    kinds: tuple[tuple[str, str], ...]
    interpretability: tuple[tuple[str, str], ...]

    @property
    def kind_values(self) -> tuple[str, ...]:
        """The allowed values of ``kind``."""
        return tuple(value for value, _ in self.kinds)

    @property
    def interpretability_values(self) -> tuple[str, ...]:
        """The allowed values of ``interpretability``."""
        return tuple(value for value, _ in self.interpretability)

    def to_json(self) -> str:
        """Serialise for the study table."""
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> QuestionSet:
        """Read a question set written by :meth:`to_json`."""
        raw = json.loads(text)
        return cls(
            name=raw["name"],
            max_labels=int(raw["max_labels"]),
            max_label_length=int(raw["max_label_length"]),
            kinds=tuple((value, label) for value, label in raw["kinds"]),
            interpretability=tuple((value, label) for value, label in raw["interpretability"]),
        )


#: The questions of Mahner et al. (2025): up to five free labels, whether the
#: dimension is visual, semantic, a mix of both or unclear, and whether it
#: expresses one concept, several concepts or none that can be named.
DEFAULT_QUESTIONS = QuestionSet(
    name="default",
    max_labels=5,
    max_label_length=100,
    kinds=(
        ("visual", "visual (colour, shape, texture, ...)"),
        ("semantic", "semantic (meaning, category, function, ...)"),
        ("mixed", "mixed visual-semantic"),
        ("unclear", "unclear"),
    ),
    interpretability=(
        ("one", "one concept"),
        ("several", "several concepts"),
        ("none", "not interpretable"),
    ),
)

QUESTION_SETS = {DEFAULT_QUESTIONS.name: DEFAULT_QUESTIONS}


class NotFoundError(LookupError):
    """A participant, dimension or object that is not part of the study."""


class StudyClosedError(RuntimeError):
    """A new participant tried to join a study that is closed to new participants."""


class SessionEndedError(RuntimeError):
    """A request of a participant session that *Stop* has ended (see :meth:`Study.end_sessions`)."""


#: Key of the study setting that records when the study was closed to new
#: participants. The key is absent while the study is open.
CLOSED_AT_SETTING = "closed_at"


@dataclass(frozen=True)
class Participant:
    """A participant who consented.

    Attributes:
        participant_id (int): Row id, used in URLs (not secret: the session
            cookie and the participant code guard access).
        order (tuple[int, ...]): The dimensions in the order this participant sees them.
        order_seed (int): Seed of ``np.random.default_rng`` that produced ``order``.
        consented_at (str): ISO time of consent.
        session_version (int): Version of the participant's sessions. A
            session cookie is valid only with this version, and *Stop*
            increments it (see :meth:`Study.end_sessions`).
    """

    participant_id: int
    order: tuple[int, ...]
    order_seed: int
    consented_at: str
    session_version: int = 0


def hash_code(code: str) -> str:
    """Return the SHA-256 hex digest under which a participant code is stored.

    Codes are random 128-bit tokens, so an unsalted hash is enough to keep
    them out of the database file in clear text.
    """
    return hashlib.sha256(code.encode("utf-8")).hexdigest()


def new_participant_code() -> str:
    """Draw a random participant code (22 URL-safe characters, 128 random bits)."""
    return secrets.token_urlsafe(16)


# ---------------------------------------------------------------------------
# Study setup


def parse_dimensions(spec: str | Sequence[int] | None, n_dims: int) -> list[int]:
    """Parse ``--dims`` (``"all"``, ``"0,1,2"`` or ``"0-9"``) into sorted dimension indices.

    Raises:
        ValueError: If an index or range bound is not an integer in
            ``0..n_dims-1``, a range runs backwards, an index appears twice,
            or no dimension is selected (such as ``"all"`` with ``n_dims`` 0).
    """
    values: list[int]
    if spec is None or (isinstance(spec, str) and spec.strip().lower() == "all"):
        values = list(range(n_dims))
    elif isinstance(spec, str):
        values = []
        for part in spec.split(","):
            part = part.strip()
            if not part:
                continue
            try:
                if "-" in part:
                    first, last = (int(bound) for bound in part.split("-", 1))
                else:
                    first = last = int(part)
            except ValueError:
                raise ValueError(
                    f"invalid dimension {part!r} in --dims {spec!r}: use 'all', a comma-separated "
                    "list such as 0,1,2 or a range such as 0-9"
                ) from None
            # Bounds are checked before a range is expanded, so a typo such as
            # 0-99999999999 fails at once instead of filling the memory.
            if not (0 <= first < n_dims and 0 <= last < n_dims):
                raise ValueError(
                    f"dimension {part!r} in --dims {spec!r} does not exist: the embedding has "
                    f"dimensions 0..{n_dims - 1}"
                )
            if first > last:
                raise ValueError(
                    f"invalid range {part!r} in --dims {spec!r}: write the smaller dimension first, "
                    f"such as {last}-{first}"
                )
            values.extend(range(first, last + 1))
    else:
        values = [int(value) for value in spec]
    if not values:
        raise ValueError(f"--dims {spec!r} selects no dimension")
    outside = [value for value in values if not 0 <= value < n_dims]
    if outside:
        raise ValueError(f"dimensions {outside} do not exist: the embedding has dimensions 0..{n_dims - 1}")
    if len(set(values)) != len(values):
        raise ValueError(f"--dims {spec!r} lists a dimension twice")
    return sorted(values)


def find_object_table(run: str | os.PathLike) -> Path | None:
    """Return the object table that belongs to an embedding, or None.

    A run directory has ``objects.tsv`` inside it, and an embedding file may
    have one next to it.
    """
    run = Path(run)
    candidate = run / OBJECT_TABLE_NAME if run.is_dir() else run.parent / OBJECT_TABLE_NAME
    return candidate if candidate.is_file() else None


def resolve_image(images_dir: Path, object_id: str, source: str) -> str:
    """Find the image of one object and return its path relative to ``images_dir``.

    The object table's ``source`` column is used when it is not empty.
    Otherwise the image is looked up by ``object_id``: the file
    ``<images>/<object_id>``, then ``<images>/<object_id>.<suffix>`` for an
    image suffix in lower case and then in any case (``cat.JPG``), then the
    first image (by name, hidden files left out) in the folder
    ``<images>/<object_id>/``, which is how the THINGS image set is laid out.

    Raises:
        ValueError: If the path leaves ``images_dir`` (``..``, an absolute
            path outside it, or a symbolic link pointing outside) or is not an
            image file. An absolute path inside ``images_dir`` is accepted.
        FileNotFoundError: If no image is found, or the path to look up is
            too long for a file name (such as an object id over 255 bytes).
    """
    try:
        return _resolve_image(images_dir, object_id, source)
    except OSError as error:
        # FileNotFoundError raised for a missing image has no errno and is re-raised as it is.
        if error.errno != errno.ENAMETOOLONG:
            raise
        where = f"source {source[:60]!r}" if source else "object id"
        raise FileNotFoundError(
            f"the image of object {abbreviate(object_id)!r} ({len(object_id.encode())} bytes) cannot be looked up because "
            f"its {where} is too long for a file name ({error.strerror}): give the image in the object "
            "table's source column, with a shorter file name"
        ) from None


def _resolve_image(images_dir: Path, object_id: str, source: str) -> str:
    root = images_dir.resolve()
    if source:
        candidates = [Path(source)]
    else:
        candidates = [Path(object_id)] + [Path(object_id + suffix) for suffix in IMAGE_SUFFIXES]
        if _inside(root, (root / object_id).parent):
            candidates += [
                path.relative_to(root) for path in files_with_suffix_any_case(root / object_id, IMAGE_SUFFIXES)
            ]
        folder = root / object_id
        if _inside(root, folder) and folder.is_dir():
            candidates += sorted(
                path.relative_to(root)
                for path in folder.iterdir()
                # macOS AppleDouble files (._photo.jpg) sort first and hold no image.
                if path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")
            )

    for candidate in candidates:
        # dimalign extract writes absolute sources, so one inside the folder is taken relative to it.
        if candidate.is_absolute() and _inside(root, candidate):
            candidate = candidate.resolve().relative_to(root)
        if candidate.is_absolute() or ".." in candidate.parts:
            raise ValueError(
                f"image path {str(candidate)!r} of object {object_id!r} leaves the image folder: "
                f"sources must be paths inside --images ({root})"
            )
        full = (root / candidate).resolve()
        if not _inside(root, full):
            raise ValueError(
                f"image {str(candidate)!r} of object {object_id!r} resolves to {full}, outside the "
                f"image folder {root}"
            )
        if full.is_file():
            if full.suffix.lower() not in IMAGE_SUFFIXES:
                raise ValueError(
                    f"{full} (object {object_id!r}) is not an image: use one of {', '.join(IMAGE_SUFFIXES)}"
                )
            return full.relative_to(root).as_posix()
    raise FileNotFoundError(
        f"no image for object {object_id!r} in {root} (tried {', '.join(map(str, candidates[:4]))}): "
        "give the image in the object table's source column"
    )


def _inside(root: Path, path: Path) -> bool:
    try:
        path.resolve().relative_to(root)
    except ValueError:
        return False
    return True


def create_study(
    db_path: str | os.PathLike,
    run: str | os.PathLike,
    images: str | os.PathLike,
    *,
    objects: str | os.PathLike | None = None,
    dims: str | Sequence[int] | None = "all",
    questions: str = "default",
    n_cols: int = 6,
    percentiles: Sequence[float] = (98.0, 95.0, 90.0, 80.0),
    decoding: Decoding | None = None,
) -> Path:
    """Create a study database for labelling the dimensions of an embedding.

    The database is built under a temporary name and renamed at the end, so a
    failed setup leaves nothing behind.

    Args:
        db_path (str | os.PathLike): The new SQLite file; must not exist.
        run (str | os.PathLike): A run directory or embedding file (see
            :func:`dimalign.io.runs.load_embedding`).
        images (str | os.PathLike): Folder the images are served from.
        objects (str | os.PathLike | None): Object table mapping embedding rows
            to images; by default the ``objects.tsv`` of the run.
        dims (str | Sequence[int] | None): Dimensions to label (``"all"``,
            ``"0,1,2"`` or indices).
        questions (str): Name of a question set in :data:`QUESTION_SETS`.
        n_cols (int): Images per grid row.
        percentiles (Sequence[float]): Percentiles of grid rows 1, 2, ...
        decoding (Decoding | None): Background colour and EXIF handling of
            the images. None uses those recorded by the extraction behind
            ``run`` (see :func:`dimalign.features.recorded.recorded_decoding`),
            else ``dimalign extract``'s defaults.

    Returns:
        Path: The study database.

    Raises:
        FileExistsError: If ``db_path`` exists (also if another process
            creates it while setup runs), is a symbolic link to nothing, or SQLite side files
            (``-wal``, ``-shm``, ``-journal``) of an earlier database exist next to it. A lone
            ``-shm`` file is removed instead, unless another process uses it (see
            :func:`dimalign.labeling.db.remove_unused_shared_memory_file`).
        IsADirectoryError: If ``db_path`` is a folder.
        FileNotFoundError: If the run, the image folder, the object table or an
            image of a grid object is missing.
        ValueError: If the embedding has no dimensions, the object table's
            length differs from the embedding's rows, a dimension or question set is unknown, an image path
            leaves the image folder, or a grid image cannot be decoded.
    """
    from dimalign.interpret.grids import percentile_grid, top_objects

    db_path = Path(db_path)
    images_dir = Path(images)
    if db_path.is_dir():
        raise IsADirectoryError(
            f"study database {db_path} is a folder: give a file name, such as {db_path / 'study.db'}"
        )
    if db_path.exists() or db_path.is_symlink():
        raise _existing_file_error(db_path)
    side_files = db.existing_side_files(db_path)
    # Alone, the shared-memory index contains no answers, so it is removed
    # just before the study is written, unless a process still uses it.
    lone_shared_memory = [path.name for path in side_files] == [db_path.name + "-shm"]
    if side_files and not lone_shared_memory:
        raise FileExistsError(
            f"SQLite files of an earlier database at {db_path} exist: {', '.join(map(str, side_files))}. "
            "SQLite would replay their participants and answers into the new study. If you still have "
            f"that study, put it back at {db_path} and open it once (such as with `dimalign label-app "
            "export`) to merge them. Otherwise move them away, or choose another file name."
        )
    if not images_dir.is_dir():
        raise FileNotFoundError(f"image folder {images_dir} not found")
    if questions not in QUESTION_SETS:
        raise ValueError(f"unknown question set {questions!r}: choose one of {sorted(QUESTION_SETS)}")
    question_set = QUESTION_SETS[questions]

    result = load_embedding(run)
    embedding = result.embedding
    table_path = Path(objects) if objects is not None else find_object_table(run)
    if table_path is None:
        raise FileNotFoundError(
            f"the embedding {run} has no {OBJECT_TABLE_NAME} next to it: give the object table "
            "that maps its rows to images with --objects FILE"
        )
    if not table_path.is_file():
        raise FileNotFoundError(f"object table {table_path} not found")
    table = read_object_table(table_path)
    if len(table) != embedding.shape[0]:
        raise ValueError(
            f"object table {table_path} lists {len(table)} objects but the embedding {run} has "
            f"{embedding.shape[0]} rows: use the table the embedding was trained with"
        )
    if embedding.shape[1] == 0:
        raise ValueError(
            f"the embedding {run} has 0 dimensions (shape {embedding.shape}): a study needs an "
            "embedding with at least one dimension"
        )
    dimensions = parse_dimensions(dims, embedding.shape[1])

    grids = {
        dim: percentile_grid(embedding[:, dim], n_cols=n_cols, percentiles=percentiles)
        for dim in dimensions
    }
    n_top = min(N_TOP_OBJECTS, embedding.shape[0])
    tops = {dim: top_objects(embedding[:, dim], n_top) for dim in dimensions}
    grid_objects = sorted({int(index) for grid in grids.values() for index in grid.ravel()})
    image_paths = {
        index: resolve_image(images_dir, table.object_ids[index], table.sources[index])
        for index in grid_objects
    }

    if decoding is None:
        decoding = recorded_decoding(run) or Decoding()
    decoded = _check_images_decode(images_dir, image_paths, decoding)
    image_checksums = _image_checksums(images_dir, image_paths)

    embedding_file = result.path if result.path is not None else Path(run)
    settings = {
        "embedding_name": _embedding_name(Path(run)),
        "run": str(Path(run).resolve()),
        "embedding_sha256": sha256_file(embedding_file),
        "object_table": str(table_path.resolve()),
        "images_dir": str(images_dir.resolve()),
        "questions": question_set.to_json(),
        "dimensions": json.dumps(dimensions),
        "n_embedding_dims": str(embedding.shape[1]),
        "grid_percentiles": json.dumps([float(value) for value in percentiles]),
        "image_decoding": json.dumps(decoding.to_json()),
        "decoded_images": json.dumps(decoded),
        "secret_key": secrets.token_hex(32),
        "created_at": now_iso(),
    }
    if lone_shared_memory and os.path.lexists(db_path.with_name(db_path.name + "-shm")):
        db.remove_unused_shared_memory_file(db_path)
    try:
        _write_study(db_path, settings, table.object_ids, image_paths, image_checksums, grids, tops)
    except (OSError, sqlite3.OperationalError) as error:
        if isinstance(error, FileExistsError) and os.path.lexists(db_path):
            # Another process, such as a second setup, created the file while this one ran.
            raise _existing_file_error(db_path) from None
        # The temporary file's name would only confuse, so the message names db_path.
        reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
        message = f"cannot write the study database {db_path} ({reason}): choose a folder you can write to"
        raise (type(error) if isinstance(error, OSError) else OSError)(message) from error
    logger.info(
        "created study %s: %d dimensions of %s, %d images from %s",
        db_path, len(dimensions), run, len(grid_objects), images_dir,
    )
    return db_path


def _check_images_decode(images_dir: Path, image_paths: dict[int, str], decoding: Decoding) -> list[int]:
    """Decode every grid image once, so that participants never see a broken image.

    The app serves most files as they are, and the browser shows a truncated,
    empty or mislabelled file as a broken image. Pillow decoding the file is
    the check, as ``dimalign extract`` decodes it with ``decoding``. Animated
    images are accepted with a warning, because the app shows only their
    first frame, as a still PNG.

    Returns:
        list[int]: The objects whose files the browser would show otherwise
        than the DNN saw them (see :func:`browser_shows_otherwise`), which
        the app serves decoded.

    Raises:
        ValueError: Naming every file that cannot be decoded and the reason.
    """
    from dimalign.features.decode import ImageReadError, load_rgb

    from PIL import Image

    root = images_dir.resolve()
    start = time.perf_counter()
    failures = []
    animated = []
    decoded = []
    for index, relative in image_paths.items():
        try:
            load_rgb(root / relative, decoding.background, decoding.exif_transpose)
        except ImageReadError as error:
            failures.append(f"{error.path} ({error.reason})")
            continue
        with Image.open(root / relative) as opened:
            if getattr(opened, "is_animated", False):
                animated.append(str(root / relative))
            if browser_shows_otherwise(opened):
                decoded.append(int(index))
    if animated:
        # Feature extraction and the app use only the first frame, but a person who opens the file sees all.
        logger.warning(
            "%d grid images have several frames, and the app shows only the first frame, which "
            "dimalign extract used, as a still PNG: %s%s; save the first frame as a still image "
            "if participants should see the file itself",
            len(animated), ", ".join(animated[:10]), " ..." if len(animated) > 10 else "",
        )
    if failures:
        raise ValueError(
            f"{len(failures)} grid images cannot be decoded, so participants would see broken images: "
            + "; ".join(failures[:10]) + (" ..." if len(failures) > 10 else "")
            + ". Replace these files, or point their objects to other images in the object table"
        )
    logger.info("decoded %d grid images in %s in %.1f s", len(image_paths), root, time.perf_counter() - start)
    if decoded:
        logger.info(
            "%d grid images have transparency, several frames, an EXIF orientation, a colour profile "
            "(ICC, or PNG gamma or primaries), or a format or colour mode that browsers show their own "
            "way, so the app serves them decoded as the DNN saw them", len(decoded),
        )
    return sorted(decoded)


def browser_shows_otherwise(image: PIL.Image.Image) -> bool:
    """Return whether a browser may show an opened image file otherwise than ``load_rgb`` decodes it.

    Only a still JPEG, PNG, GIF, WebP or BMP file with 8-bit RGB, gray or
    palette colours shows the same pixels everywhere. It must also have no
    transparency, no EXIF rotation, no embedded ICC colour profile and, for
    PNG, no gAMA or cHRM chunk other than sRGB's. A browser puts the
    page's colour under transparent pixels, plays animations, converts CMYK
    and 16-bit colours its own way, and may apply an EXIF orientation or not
    (browsers differ for PNG). Most browsers show no TIFF at all. A browser
    also converts the colours of a file with an ICC profile, such as Display
    P3 or Adobe RGB, from that profile to the screen's colours, while
    ``load_rgb`` ignores the profile. A profile that maps colours as sRGB
    does (see :func:`icc_profile_is_srgb`) shows the file as without one.
    """
    if image.format not in BROWSER_FORMATS or image.mode not in BROWSER_MODES:
        return True
    if "transparency" in image.info or getattr(image, "n_frames", 1) > 1:
        return True
    profile = image.info.get("icc_profile")
    if profile and not icc_profile_is_srgb(bytes(profile)):
        return True
    if image.format == "PNG" and _png_colour_space_differs(image.info):
        return True
    return image.getexif().get(EXIF_ORIENTATION_TAG) not in (None, 1)


#: The largest difference, in 8-bit levels, between a test colour and the same
#: colour converted from an ICC profile to sRGB, for which the profile counts as
#: sRGB. On these colours, the sRGB IEC61966-2.1 profile that cameras embed
#: differs from Pillow's sRGB profile by at most 1 level (measured with Pillow 13.0).
SRGB_PROFILE_TOLERANCE = 2

#: Levels of each channel of the test colours of :func:`icc_profile_is_srgb` (6 x 6 x 6 colours).
_PROFILE_TEST_LEVELS = (0, 51, 102, 153, 204, 255)


@functools.lru_cache(maxsize=64)
def icc_profile_is_srgb(profile: bytes) -> bool:
    """Check whether an RGB ICC profile maps colours as sRGB does, so a browser shows its image as without it.

    216 test colours are converted from ``profile`` to Pillow's sRGB profile
    with relative colorimetric intent. The profile counts as sRGB when no
    channel changes by more than :data:`SRGB_PROFILE_TOLERANCE` levels. A
    profile that LittleCMS cannot read or apply to RGB colours, such as a gray
    or CMYK profile, does not count. Results are cached by the profile's bytes,
    because most photos of a folder embed the same profile.
    """
    from PIL import Image, ImageCms

    levels = np.asarray(_PROFILE_TEST_LEVELS, dtype=np.uint8)
    colours = np.stack(np.meshgrid(levels, levels, levels, indexing="ij"), axis=-1).reshape(len(levels), -1, 3)
    try:
        converted = ImageCms.profileToProfile(
            Image.fromarray(colours, mode="RGB"), ImageCms.ImageCmsProfile(io.BytesIO(profile)),
            ImageCms.createProfile("sRGB"), renderingIntent=ImageCms.Intent.RELATIVE_COLORIMETRIC,
            outputMode="RGB",
        )
    except (ImageCms.PyCMSError, OSError, ValueError):
        return False
    difference = np.abs(np.asarray(converted, dtype=np.int16) - colours.astype(np.int16))
    return int(difference.max()) <= SRGB_PROFILE_TOLERANCE


#: The PNG gAMA value of sRGB (about 1 / 2.2, stored as 45455) and its cHRM
#: values: the x and y of the D65 white point and of the BT.709 red, green and blue.
SRGB_PNG_GAMMA = 0.45455
SRGB_PNG_CHROMATICITY = (0.3127, 0.329, 0.64, 0.33, 0.3, 0.6, 0.15, 0.06)


def _png_colour_space_differs(info: dict[str, Any]) -> bool:
    """Check whether a PNG's gAMA or cHRM chunk (Pillow's ``gamma`` and ``chromaticity``) differs from sRGB.

    Browsers convert a PNG's colours by these chunks, and Pillow ignores
    them. An sRGB chunk (``srgb``) takes precedence over both, so a PNG with
    one shows as sRGB.
    """
    if "srgb" in info:
        return False
    gamma = info.get("gamma")
    if gamma is not None and abs(float(gamma) - SRGB_PNG_GAMMA) > 0.0005:
        return True
    chromaticity = info.get("chromaticity")
    if chromaticity is not None:
        values = [float(value) for value in chromaticity]
        return any(abs(value - srgb) > 0.0005 for value, srgb in zip(values, SRGB_PNG_CHROMATICITY))
    return False


#: Bytes of encoded images that :func:`decoded_image` keeps in memory. Every
#: participant's browser requests each grid image. Decoding a synthetic
#: 12-megapixel JPEG with an EXIF orientation, shrinking it and encoding it
#: took 0.6 s on one core of a 2-core development machine (an estimate for
#: other hardware).
DECODED_CACHE_BYTES = 256 * 2**20


class ServedForm(enum.Enum):
    """The form in which the app sends an image file (see :meth:`Study.served_form`).

    Attributes:
        FILE: The file as it is.
        DECODED: Decoded by ``load_rgb``, because a browser may show the file
            otherwise, and shrunk where it is large.
        SHRUNK: Decoded and shrunk, because the file is larger than
            :data:`SERVED_IMAGE_SIDE`. Its decoding gives the pixels that a
            browser shows, so the file itself is sent where it is no larger.
    """

    FILE = "file"
    DECODED = "decoded"
    SHRUNK = "shrunk"


@dataclass(frozen=True)
class ServedImage:
    """An image file decoded by ``load_rgb``, shrunk and encoded, as the app sends it.

    Attributes:
        data (bytes): The encoded file, without ICC profile or EXIF data.
        mimetype (str): ``image/webp`` or ``image/jpeg``.
        etag (str | None): HTTP entity tag of this version of the file, the
            same as :func:`decoded_image_etag` returns for it. None where the
            file could not be read before decoding.
    """

    data: bytes
    mimetype: str
    etag: str | None


_decoded_cache: collections.OrderedDict[tuple[Any, ...], ServedImage] = collections.OrderedDict()
#: Decodings in progress by cache key. Requests for a key that is being
#: decoded wait for its result, so each version of a file is decoded once.
_decodings_in_progress: dict[tuple[Any, ...], concurrent.futures.Future[ServedImage]] = {}
_decoded_cache_lock = threading.Lock()

#: The maximum number of files that :func:`decoded_image` decodes at once.
#: Decoding, shrinking and encoding a synthetic 12-megapixel JPEG raised the
#: peak memory of the process by 93 MB (Pillow 13.0). A study that starts with
#: 50 participants, whose browsers request 30 grid images each over several
#: connections, would otherwise decode hundreds of files at once. More decodes
#: than CPU cores do not finish sooner.
MAX_CONCURRENT_DECODES = min(8, os.cpu_count() or 1)
_decode_slots = threading.BoundedSemaphore(MAX_CONCURRENT_DECODES)

#: The maximum number of pixels, summed over files, that :func:`decoded_image`
#: decodes at once: 12 megapixels (a camera photo) per decode of
#: :data:`MAX_CONCURRENT_DECODES`. Setup accepts a 121-megapixel PNG, which
#: is below twice Pillow's decompression bomb limit. Decoding and shrinking
#: one took 3.1 s and raised the peak memory of the process by 930 MB
#: (Pillow 13.0, one core of a 2-core development machine).
#: A pixel of an image with transparency or 16-bit values counts
#: :data:`HEAVY_PIXEL_WEIGHT` times (see :func:`decode_pixels`).
MAX_DECODE_PIXELS = MAX_CONCURRENT_DECODES * 12_000_000

#: How many RGB pixels one pixel of an image with transparency or 16-bit
#: values counts in :data:`MAX_DECODE_PIXELS`. Decoding and shrinking a
#: 4000 x 3000 noise PNG raised the peak memory by about 46 MB in RGB, 275 MB
#: in RGBA and 321 MB in 16-bit gray (Pillow 13.0, same machine). The reason
#: is that ``to_rgb`` converts alpha and 16-bit values through full-size copies.
HEAVY_PIXEL_WEIGHT = 7


def decode_pixels(image: Any) -> int:
    """Return the pixels that decoding an opened image reserves in :data:`MAX_DECODE_PIXELS`.

    Args:
        image (PIL.Image.Image): An image opened by Pillow; only its header is read.

    Returns:
        int: Width times height, times :data:`HEAVY_PIXEL_WEIGHT` for a mode
        with alpha, 16 or 32 bits per value, or a transparent colour.
    """
    pixels = image.size[0] * image.size[1]
    light = image.mode in ("1", "L", "P", "RGB", "CMYK", "YCbCr") and "transparency" not in image.info
    return pixels if light else pixels * HEAVY_PIXEL_WEIGHT


class PixelBudget:
    """A number of pixels that concurrent decodes reserve, so that large images decode few at a time.

    An image with more pixels than the whole budget reserves all of it and
    decodes alone. NOTE: waiting is not first come, first served, so a large
    image may wait while smaller ones keep arriving.
    """

    def __init__(self, pixels: int) -> None:
        self.pixels = pixels
        self._available = pixels
        self._condition = threading.Condition()

    @contextlib.contextmanager
    def reserve(self, pixels: int) -> Iterator[None]:
        """Wait until ``pixels`` are free, and hold them while the ``with`` block runs."""
        pixels = min(max(pixels, 0), self.pixels)
        with self._condition:
            self._condition.wait_for(lambda: self._available >= pixels)
            self._available -= pixels
        try:
            yield
        finally:
            with self._condition:
                self._available += pixels
                self._condition.notify_all()


_decode_pixels = PixelBudget(MAX_DECODE_PIXELS)


def decoded_image(path: str | os.PathLike, decoding: Decoding) -> ServedImage:
    """Decode an image file by ``load_rgb`` with ``decoding``, shrink it and encode it for the app.

    An image larger than :data:`SERVED_IMAGE_SIDE` is shrunk to fit a square
    of that side, keeping its aspect ratio (see :func:`_decode_and_encode`
    for the format). The result is cached by path, file size, modification
    and change time, inode and decoding, up to :data:`DECODED_CACHE_BYTES`,
    the least recently used leaving first. A file that changes on disk is
    decoded again, and a decoding during which it changed is not cached.
    Concurrent calls for the same key decode the file once and all return
    that result or raise its error. The cache lock is not held while
    decoding, so other images are served meanwhile. At most
    :data:`MAX_CONCURRENT_DECODES` files and :data:`MAX_DECODE_PIXELS`
    pixels are decoded at once, and the other calls wait.

    Raises:
        ImageReadError: If the file is missing or cannot be decoded. The
            error is not cached, so the next call tries again.
    """
    try:
        stat = os.stat(path)
    except OSError:
        stat = None
    if stat is None:
        # load_rgb raises the ImageReadError that describes a missing or unreadable file.
        data, mimetype = _decode_and_encode(path, decoding)
        return ServedImage(data, mimetype, None)
    key = _decoded_key(path, stat, decoding)

    with _decoded_cache_lock:
        cached = _decoded_cache.get(key)
        if cached is not None:
            _decoded_cache.move_to_end(key)
            return cached
        pending = _decodings_in_progress.get(key)
        decodes_here = pending is None
        if decodes_here:
            pending = concurrent.futures.Future()
            _decodings_in_progress[key] = pending
    if not decodes_here:
        return pending.result()

    try:
        # The size comes from the file's header, read once per file version. A
        # file that setup listed to serve decoded is read here on its first request.
        pixels = _check_image_file(path)[0].pixels
        # Pixels come first, so a decode that waits for pixel room takes no slot
        # that a smaller decode could use. This line is the only place that takes
        # either limit, and a decode holding a slot waits for nothing, so they cannot deadlock.
        with _decode_pixels.reserve(pixels), _decode_slots:
            data, mimetype = _decode_and_encode(path, decoding)
        served = ServedImage(data, mimetype, _etag_of_key(key))
        # A file that changed while it was decoded may have given the pixels of its new version.
        unchanged = image_file_version(path) == _file_version(stat)
    except BaseException as error:
        # Requests that wait for this key, and later ones, must not wait for a result that never comes.
        with _decoded_cache_lock:
            del _decodings_in_progress[key]
        pending.set_exception(error)
        raise

    with _decoded_cache_lock:
        del _decodings_in_progress[key]
        if unchanged:
            _decoded_cache[key] = served
        total = sum(len(value.data) for value in _decoded_cache.values())
        while total > DECODED_CACHE_BYTES and len(_decoded_cache) > 1:
            _, dropped = _decoded_cache.popitem(last=False)
            total -= len(dropped.data)
    pending.set_result(served)
    return served


def decoded_image_etag(path: str | os.PathLike, decoding: Decoding) -> str | None:
    """Return the ETag that :func:`decoded_image` gives the file now, without opening it, or None if it is missing.

    The tag is computed from the file's metadata alone, so the app returns
    304 Not Modified to a request that already has this version, and
    decodes nothing.
    """
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return _etag_of_key(_decoded_key(path, stat, decoding))


def image_file_etag(path: str | os.PathLike, stat: os.stat_result | None = None) -> str | None:
    """Return the ETag of an image file sent as it is, or None if the file is missing.

    Werkzeug's own tag (version 3.1) covers only the modification time, size and path, so
    a copy that keeps the time and length (cp -p of a BMP of equal pixel
    size) would get the old tag. This one also covers the inode and change
    time (see :func:`_file_version`). ``stat`` is the file's status where
    the caller has it, such as from the file it opened.
    """
    if stat is None:
        try:
            stat = os.stat(path)
        except OSError:
            return None
    return _etag_of_key(("file", os.fspath(path), *_file_version(stat)))


def image_file_mimetype(path: str | os.PathLike) -> str | None:
    """Return the MIME type of an image file's format (see :data:`FILE_MIMETYPES`), cached per file version.

    The type comes from the file's content, not its suffix, so a PNG file
    named ``.jpg`` is ``image/png``. None where Pillow cannot open the file
    or its format is not one that the app sends as it is.
    """
    return _check_image_file(path)[0].mimetype


def _decoded_key(
    path: str | os.PathLike, stat: os.stat_result, decoding: Decoding
) -> tuple[Any, ...]:
    """Return the cache key of a decoded file: its path, version (see :func:`_file_version`) and decoding."""
    return (os.fspath(path), *_file_version(stat), decoding.background, decoding.exif_transpose)


def _etag_of_key(key: tuple[Any, ...]) -> str:
    """Return 32 hex digits of a SHA-256 hash of a cache key, the dimalign version and the encoding settings.

    A new dimalign version may decode or encode otherwise, so it changes
    every tag. The hash keeps the path and inode out of the response.
    """
    settings = (SERVED_IMAGE_SIDE, sorted(WEBP_OPTIONS.items()), sorted(JPEG_OPTIONS.items()))
    text = f"dimalign decoded image\0{dimalign.__version__}\0{key!r}\0{settings!r}"
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


def _file_version(stat: os.stat_result) -> tuple[int, int, int, int]:
    """Return the size, modification time, inode and change time of a file, which tell apart its versions.

    A copy that keeps the modification time (cp -p, rsync -a) may also have
    the same length, as BMP files of equal pixel size do. The inode and the
    change time, which no copy keeps, tell it apart.
    """
    return (stat.st_size, stat.st_mtime_ns, stat.st_ino, stat.st_ctime_ns)


#: SHA-256 checksums of image files by path: the file version and the checksum.
_checksum_cache: dict[str, tuple[tuple[int, int, int, int], str]] = {}
_checksum_lock = threading.Lock()


def image_file_version(path: str | os.PathLike) -> tuple[int, int, int, int] | None:
    """Return the version of a file (see :func:`_file_version`), or None for a file that cannot be read."""
    try:
        return _file_version(os.stat(path))
    except OSError:
        return None


def _file_checksum(path: str | os.PathLike) -> str | None:
    """Return the SHA-256 of a file, computed once per file version.

    The result is None for a file that cannot be read, and for a file whose
    version changed while it was read, whose bytes may mix two versions.
    """
    try:
        return _versioned_checksum(path)
    except OSError:
        return None


def _versioned_checksum(path: str | os.PathLike) -> str | None:
    """Return the SHA-256 of a file, computed once per file version, or None if the file changed while read.

    Raises:
        OSError: If the file cannot be read.
    """
    key = os.fspath(path)
    version = _file_version(os.stat(path))
    with _checksum_lock:
        cached = _checksum_cache.get(key)
    if cached is not None and cached[0] == version:
        return cached[1]
    checksum = sha256_file(path)
    if _file_version(os.stat(path)) != version:
        return None
    with _checksum_lock:
        _checksum_cache[key] = (version, checksum)
    return checksum


@dataclass(frozen=True)
class _FileCheck:
    """Facts about an image file that decide how the app serves it.

    Attributes:
        shown_otherwise (bool): Whether a browser may show the file otherwise
            than ``load_rgb`` decodes it (see :func:`browser_shows_otherwise`).
        longer_side (int): Length of the image's longer side in pixels, or 0
            where Pillow cannot open the file.
        pixels (int): The pixels that decoding the file reserves (see
            :func:`decode_pixels`), or 0 where Pillow cannot open the file.
        lossy (bool): Whether the file stores its pixels with lossy
            compression (see :func:`_is_lossy_encoding`).
        mimetype (str | None): MIME type of the file's format as Pillow
            reads it (see :data:`FILE_MIMETYPES`), or None where Pillow
            cannot open the file or the format has no entry there.
    """

    shown_otherwise: bool
    longer_side: int
    pixels: int = 0
    lossy: bool = False
    mimetype: str | None = None


#: MIME types of the image formats that the app may send as they are, by
#: Pillow's format name. An MPO file, as some cameras write, starts with a
#: complete JPEG image, which browsers show.
FILE_MIMETYPES = {
    "JPEG": "image/jpeg",
    "MPO": "image/jpeg",
    "PNG": "image/png",
    "GIF": "image/gif",
    "WEBP": "image/webp",
    "BMP": "image/bmp",
    "TIFF": "image/tiff",
}


#: Results of :func:`_check_image_file` by path: the file version and the result.
_file_check_cache: dict[str, tuple[tuple[int, int, int, int], _FileCheck]] = {}
_file_check_lock = threading.Lock()


def _check_image_file(path: str | os.PathLike) -> tuple[_FileCheck, bool]:
    """Check whether a browser may show an image file otherwise than ``load_rgb`` decodes it.

    The check also reads the file's size and whether its encoding is lossy
    from its header.

    This is :func:`browser_shows_otherwise` for a file, cached by path and
    file version (size, modification and change time, inode), so a file
    that changes is checked again. Pillow 13 reads a whole PNG file to look
    for an ``eXIf`` chunk after the pixel data, which took about 10 ms for a
    300 KB PNG photo on a 2-core development machine. A file that Pillow
    cannot open counts as shown otherwise, so the app decodes it, which
    reports the error. That result is cached only where the content is at
    fault, not for an error of the system such as too many open files.

    Returns:
        tuple[_FileCheck, bool]: The result, and whether the file was checked
        now (False where the result came from the cache or the file cannot
        be opened).
    """
    from PIL import Image

    key = os.fspath(path)
    try:
        version = _file_version(os.stat(path))
    except OSError:
        # Decoding reports the missing or unreadable file.
        return _FileCheck(shown_otherwise=True, longer_side=0), False
    with _file_check_lock:
        cached = _file_check_cache.get(key)
    if cached is not None and cached[0] == version:
        return cached[1], False
    checked_now = True
    try:
        with Image.open(path) as opened:
            result = _FileCheck(
                browser_shows_otherwise(opened), max(opened.size), decode_pixels(opened),
                _is_lossy_encoding(opened, path), FILE_MIMETYPES.get(opened.format or ""),
            )
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        # The errors that load_rgb reports as an ImageReadError, such as the
        # ValueError of a PNG text chunk that inflates past Pillow's limit.
        # UnidentifiedImageError is an OSError.
        result = _FileCheck(shown_otherwise=True, longer_side=0)
        if isinstance(error, OSError) and error.errno is not None:
            # An error of the system, such as too many open files, may pass, so
            # the file is checked again on its next request.
            return result, False
        checked_now = False
    with _file_check_lock:
        _file_check_cache[key] = (version, result)
    return result, checked_now


#: Pillow's options of the WebP files that the app serves decoded. Lossless
#: WebP keeps every pixel, as PNG does, and Chrome, Edge, Firefox and Safari
#: (from version 14, released in 2020) show it. The 8 shared photos, shrunk to
#: 512 pixels, took 2.04 MB and 57 ms per photo with these options. With
#: Pillow's defaults (quality 80, method 4) they took 1.97 MB and 226 ms, and
#: as PNG 2.56 MB and 76 ms (Pillow 13.0, libwebp 1.6, one core of a 2-core
#: development machine).
WEBP_OPTIONS = {"lossless": True, "quality": 25, "method": 1}

#: Pillow's options of the JPEG files that the app serves for lossy files
#: (see :func:`_is_lossy_encoding`) larger than :data:`SERVED_IMAGE_SIDE`. Quality 95 without chroma
#: subsampling (4:4:4) stores colour at full resolution. On the 8 shared
#: photos and 4 synthetic 12-megapixel camera JPEGs, all shrunk to 512
#: pixels, it took 1.21 MB against 3.04 MB as lossless WebP. It changed
#: 1.3 levels per channel on average and 22 at most, and a photo's 99.9th
#: percentile was at most 11 levels. Quality 90 took 0.84 MB but changed up
#: to 40 levels, and quality 90 with 4:2:0 subsampling up to 106 levels
#: (Pillow 13.0 with libjpeg-turbo). The 8 shared photos, enlarged to 2000
#: pixels with noise and saved as lossy WebP of quality 85, took 0.78 MB
#: shrunk to 512 pixels, against 1.95 MB as lossless WebP and 0.49 MB as
#: lossy WebP of quality 95. Lossy WebP stores colour at half resolution
#: (4:2:0), which changed up to 65 levels, against 19 for this JPEG (libwebp 1.6).
JPEG_OPTIONS = {"quality": 95, "subsampling": 0}


def _is_lossy_encoding(image: PIL.Image.Image, path: str | os.PathLike) -> bool:
    """Check whether an opened image file is lossy: a JPEG, lossy WebP or JPEG-compressed TIFF."""
    if image.format in ("JPEG", "MPO"):
        return True
    if image.format == "TIFF":
        return image.info.get("compression") in ("jpeg", "tiff_jpeg")
    if image.format == "WEBP":
        return _webp_image_chunk(path) == b"VP8 "
    return False


def _webp_image_chunk(path: str | os.PathLike) -> bytes | None:
    """Return the type of the first image chunk of a WebP file: ``VP8 `` (lossy) or ``VP8L`` (lossless).

    The chunks follow the RIFF header. An extended file (``VP8X``) may put
    an ``ALPH`` or other chunks first, and an animation nests the chunks of
    each frame in an ``ANMF`` chunk after a 16-byte frame header. The result
    is None for a file that cannot be read or has no image chunk.
    """
    try:
        with open(path, "rb") as file:
            header = file.read(12)
            if header[:4] != b"RIFF" or header[8:12] != b"WEBP":
                return None
            while len(chunk_header := file.read(8)) == 8:
                kind, size = chunk_header[:4], int.from_bytes(chunk_header[4:], "little")
                if kind in (b"VP8 ", b"VP8L"):
                    return kind
                if kind == b"ANMF":
                    file.seek(16, os.SEEK_CUR)
                else:
                    # RIFF pads a chunk of odd size with one byte.
                    file.seek(size + size % 2, os.SEEK_CUR)
    except OSError:
        return None
    return None


def _decode_and_encode(path: str | os.PathLike, decoding: Decoding) -> tuple[bytes, str]:
    """Decode an image file by ``load_rgb``, shrink it to :data:`SERVED_IMAGE_SIDE` and encode it.

    The file is encoded as a JPEG (see :data:`JPEG_OPTIONS`) if it is larger
    than :data:`SERVED_IMAGE_SIDE` and lossy (a JPEG, lossy WebP or
    JPEG-compressed TIFF, see :func:`_is_lossy_encoding`), and as lossless
    WebP (see :data:`WEBP_OPTIONS`) otherwise. A large lossy file is
    usually a photo whose pixels lost detail already, and shrinking averages
    them. Its JPEG is about 2.5 times smaller than lossless WebP and differs
    from the shrunk pixels by about 1 level. ``load_rgb`` puts transparent
    pixels on the background colour, so no alpha is lost. A PNG, GIF, BMP,
    lossless WebP or TIFF may be a drawing with sharp edges, where JPEG
    artefacts show, and a small image is sent at its own size, so both keep
    every pixel.

    Returns:
        tuple[bytes, str]: The encoded file and its MIME type.

    Raises:
        ImageReadError: If ``load_rgb`` cannot decode the file.
    """
    from dimalign.features.decode import load_rgb

    image = load_rgb(path, decoding.background, decoding.exif_transpose)
    as_jpeg = max(image.size) > SERVED_IMAGE_SIDE and _check_image_file(path)[0].lossy
    image.thumbnail((SERVED_IMAGE_SIDE, SERVED_IMAGE_SIDE))
    # Pillow 13 writes the ICC profile, EXIF and XMP data that image.info
    # names into the new file, and a browser would apply the profile that
    # load_rgb ignored. Without a profile, browsers show the values as sRGB.
    image.info = {}
    buffer = io.BytesIO()
    if as_jpeg:
        image.save(buffer, format="JPEG", **JPEG_OPTIONS)
        return buffer.getvalue(), "image/jpeg"
    image.save(buffer, format="WEBP", **WEBP_OPTIONS)
    return buffer.getvalue(), "image/webp"


def _image_checksums(images_dir: Path, image_paths: dict[int, str]) -> dict[int, str]:
    """Return the SHA-256 hex digest of each grid image, by object index, and log the time taken."""
    root = images_dir.resolve()
    start = time.perf_counter()
    checksums = {index: sha256_file(root / relative) for index, relative in image_paths.items()}
    logger.info(
        "computed the SHA-256 of %d images in %s in %.1f s", len(checksums), root, time.perf_counter() - start
    )
    return checksums


def _existing_file_error(db_path: Path) -> FileExistsError:
    """Describe the file that exists where setup would write a study: a study, another database or file."""
    if not db_path.exists():
        return FileExistsError(
            f"{db_path} is a symbolic link to {os.readlink(db_path)}, which does not exist: remove the link, "
            "or choose another file name"
        )
    problem = db.study_file_problem(db_path)
    if problem is None:
        return FileExistsError(f"study database {db_path} exists: serve it, or choose another file name")
    if not problem.startswith(db.NOT_SQLITE):
        problem = f"not a study database ({problem})"
    return FileExistsError(
        f"{db_path} exists and is {problem}: choose another file name, because setup never "
        "overwrites a file"
    )


def _write_study(
    db_path: Path,
    settings: dict[str, str],
    object_ids: Sequence[str],
    image_paths: dict[int, str],
    image_checksums: dict[int, str],
    grids: dict[int, np.ndarray],
    tops: dict[int, np.ndarray],
) -> None:
    """Write a new study database under a temporary name and rename it to ``db_path``.

    Raises:
        FileExistsError: If ``db_path`` was created while the study was written.
    """
    with atomic_path(db_path, overwrite=False) as temporary:
        connection = db.open_database(temporary, create=True)
        try:
            with db.transaction(connection):
                connection.executemany("INSERT INTO study (key, value) VALUES (?, ?)", settings.items())
                connection.executemany(
                    "INSERT INTO objects (object_index, object_id, image_path, image_sha256) VALUES (?, ?, ?, ?)",
                    (
                        (index, name, image_paths.get(index), image_checksums.get(index))
                        for index, name in enumerate(object_ids)
                    ),
                )
                connection.executemany(
                    "INSERT INTO dimensions (dimension, grid_json, top_objects_json) VALUES (?, ?, ?)",
                    (
                        (dim, json.dumps(grids[dim].tolist()), json.dumps(tops[dim].tolist()))
                        for dim in grids
                    ),
                )
        finally:
            # Closing the last connection checkpoints the WAL into the main
            # file, so the rename moves a complete database.
            connection.close()


def _embedding_name(run: Path) -> str:
    if run.is_dir() or run.name == EMBEDDING_NAME:
        return (run if run.is_dir() else run.parent).resolve().name
    return run.stem


# ---------------------------------------------------------------------------
# Data access


class Study:
    """Data access to one study database.

    Args:
        path (str | os.PathLike): The study database.
        connection (sqlite3.Connection | None): An open connection from
            :func:`dimalign.labeling.db.connect` to use instead of opening one
            (the web app opens one per request). When None, the database is
            opened and migrated to the latest schema.
        images_dir (str | os.PathLike | None): Folder to read the images from
            instead of the absolute folder stored at setup, such as after the
            images were moved to another machine. The database is not changed.

    Raises:
        FileNotFoundError: If the database does not exist.
        ValueError: If the file is not a study database, or its settings
            ``questions``, ``dimensions`` or ``n_embedding_dims`` are invalid,
            such as after an edit by hand. The message names the setting and value.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        connection: sqlite3.Connection | None = None,
        images_dir: str | os.PathLike | None = None,
    ) -> None:
        self.path = Path(path)
        self.connection = connection if connection is not None else db.open_database(self.path)
        try:
            self._read_settings(images_dir)
        except BaseException:
            if connection is None:
                self.connection.close()
            raise

    def _read_settings(self, images_dir: str | os.PathLike | None) -> None:
        # Read as bytes, as the answers are: see _ANSWER_TEXT_COLUMNS.
        rows = self.connection.execute("SELECT key, CAST(value AS BLOB) AS value FROM study").fetchall()
        self.settings: dict[str, str] = {}
        for row in rows:
            try:
                self.settings[row["key"]] = row["value"].decode("utf-8")
            except UnicodeDecodeError as error:
                raise ValueError(
                    f"the study setting {row['key']} in {self.path} is not valid UTF-8 ({error.reason} at "
                    f"byte {error.start} of {row['value'][:60]!r}). Setup never writes such a value, so it was "
                    "changed later, such as by an edit by hand: restore it, or set up the study again"
                ) from None
        if "dimensions" not in self.settings:
            raise ValueError(
                f"{self.path} is not a study database (no study settings): create one with "
                "`dimalign label-app setup`"
            )
        self.questions = self._read_question_set()
        #: Dimensions of the embedding, None for a study set up before it was stored.
        self.n_embedding_dims = self._read_embedding_dimension_count()
        self.dimensions: tuple[int, ...] = self._read_dimensions()
        self.images_dir = Path(images_dir if images_dir is not None else self.settings["images_dir"])
        self.decoding, self.decoded_images = self._read_image_decoding()

    def _read_image_decoding(self) -> tuple[Decoding, frozenset[int]]:
        """Return the image decoding and the objects served decoded (a study set up before they were stored: none)."""
        if "image_decoding" not in self.settings:
            return Decoding(), frozenset()
        recorded = self._read_json_setting("image_decoding")
        decoded = self._read_json_setting("decoded_images")
        try:
            decoding = Decoding(tuple(int(value) for value in recorded["background"]),  # type: ignore[arg-type]
                                bool(recorded["exif_transpose"]))
            return decoding, frozenset(int(index) for index in decoded)
        except (KeyError, TypeError, ValueError):
            raise self._setting_error("image_decoding", "is not valid") from None

    def _setting_error(self, key: str, problem: str) -> ValueError:
        return ValueError(
            f"the study setting {key} in {self.path} {problem}: {abbreviate(self.settings.get(key, ''))!r}. "
            "Setup never writes such a value, so it was changed later, such as by an edit by hand: restore "
            "it, or set up the study again"
        )

    def _read_json_setting(self, key: str) -> Any:
        try:
            return json.loads(self.settings[key])
        except json.JSONDecodeError as error:
            raise self._setting_error(key, f"is not valid JSON ({error})") from None

    def _read_question_set(self) -> QuestionSet:
        self._read_json_setting("questions")
        try:
            return QuestionSet.from_json(self.settings["questions"])
        except (KeyError, TypeError, ValueError) as error:
            problem = f"is not a question set ({type(error).__name__}: {error})"
            raise self._setting_error("questions", problem) from None

    def _read_embedding_dimension_count(self) -> int | None:
        text = self.settings.get("n_embedding_dims")
        if text is None:
            return None
        try:
            count = int(text)
        except ValueError:
            count = 0
        if count < 1:
            raise self._setting_error("n_embedding_dims", "is not a whole number of 1 or more")
        return count

    def _read_dimensions(self) -> tuple[int, ...]:
        dimensions = self._read_json_setting("dimensions")
        # bool is a subclass of int, but true in the list is no dimension.
        valid = isinstance(dimensions, list) and all(
            type(dimension) is int and dimension >= 0 for dimension in dimensions
        )
        if not valid or len(set(dimensions)) != len(dimensions):
            problem = "is not a JSON list of distinct dimension numbers of 0 or more"
            raise self._setting_error("dimensions", problem)
        if self.n_embedding_dims is not None:
            outside = [dimension for dimension in dimensions if dimension >= self.n_embedding_dims]
            if outside:
                raise self._setting_error(
                    "dimensions",
                    f"lists dimension {outside[0]}, but the embedding has {self.n_embedding_dims} dimensions "
                    f"(numbered 0 to {self.n_embedding_dims - 1})",
                )
        return tuple(dimensions)

    def close(self) -> None:
        """Close the connection."""
        self.connection.close()

    def __enter__(self) -> Study:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    @property
    def embedding_name(self) -> str:
        """Name of the labelled embedding (its run directory or file stem)."""
        return self.settings.get("embedding_name", self.path.stem)

    # Dimensions and images -------------------------------------------------

    def grid(self, dimension: int) -> np.ndarray:
        """Return the object indices of a dimension's grid, shape ``(n_rows, n_cols)``.

        Raises:
            NotFoundError: If the dimension is not part of the study.
            ValueError: If the stored grid is not a list of equally long rows
                of object indices of the study, such as after an edit by hand.
        """
        return self._dimension_objects(dimension, "grid_json", ndim=2)

    def top_objects(self, dimension: int) -> np.ndarray:
        """Return a dimension's top objects, largest weight first, shape ``(n_top,)``.

        Raises:
            NotFoundError: If the dimension is not part of the study.
            ValueError: If the stored list is not a list of object indices of
                the study, such as after an edit by hand.
        """
        return self._dimension_objects(dimension, "top_objects_json", ndim=1)

    def _dimension_objects(self, dimension: int, column: str, *, ndim: int) -> np.ndarray:
        """Read and check a dimension's object indices from ``column`` of the dimensions table."""
        row = self.connection.execute(
            f"SELECT {column} FROM dimensions WHERE dimension = ?", (int(dimension),)
        ).fetchone()
        if row is None:
            raise NotFoundError(f"dimension {dimension} is not part of the study {self.path}")
        n_objects = self.connection.execute("SELECT COUNT(*) FROM objects").fetchone()[0]
        text = row[column]
        where = f"dimension {dimension} in {self.path}: its {column}"
        advice = "setup never writes such a value, so restore it, or set up the study again"
        try:
            value = json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(f"{where} is not valid JSON ({error}): {abbreviate(text)!r}: {advice}") from None

        rows = value if ndim == 2 and isinstance(value, list) else [value]
        # bool is a subclass of int, but true is no object index.
        valid = (
            all(isinstance(items, list) and items for items in rows)
            and len({len(items) for items in rows}) == 1
            and all(type(index) is int and 0 <= index < n_objects for items in rows for index in items)
        )
        if not valid:
            shape = "equally long rows of object indices" if ndim == 2 else "object indices"
            raise ValueError(
                f"{where} is not a JSON list of {shape} from 0 to {n_objects - 1}: {abbreviate(text)!r}: {advice}"
            )
        return np.asarray(value, dtype=np.int64)

    def object_ids(self) -> list[str]:
        """Return every object id of the embedding in row order."""
        rows = self.connection.execute("SELECT object_id FROM objects ORDER BY object_index").fetchall()
        return [row["object_id"] for row in rows]

    def image_file(self, object_index: int) -> Path:
        """Return the image file of an object shown in some grid.

        The stored relative path is resolved again and must still lie inside
        the image folder, so a symbolic link added after setup cannot reach
        other files.

        Raises:
            NotFoundError: If the object has no image in the study, the file
                is gone, or it resolves outside the image folder.
        """
        row = self.connection.execute(
            "SELECT image_path FROM objects WHERE object_index = ?", (int(object_index),)
        ).fetchone()
        if row is None or not row["image_path"]:
            raise NotFoundError(f"object {object_index} has no image in the study")
        return self._resolve_image_path(object_index, row["image_path"], self.images_dir.resolve())

    @staticmethod
    def _resolve_image_path(object_index: int, stored: str, root: Path) -> Path:
        """Resolve an object's stored image path inside the resolved image folder ``root`` (see :meth:`image_file`)."""
        relative = Path(stored)
        full = (root / relative).resolve()
        escapes = relative.is_absolute() or ".." in relative.parts or not full.is_relative_to(root)
        if escapes or not full.is_file():
            raise NotFoundError(f"image {stored!r} of object {object_index} is not in {root}")
        return full

    def check_images(self) -> None:
        """Check that the image folder contains the image of every grid object, as it was at setup.

        Each image's SHA-256 is compared with the checksum stored at setup,
        so a folder with other pictures under the same names is rejected.
        Every grid image is read once, and the time it takes is logged. A
        study set up by an older dimalign stores no checksums, and its
        images are only checked to exist, with a warning.

        Raises:
            FileNotFoundError: If the folder or any image is missing. The
                message names the folder, the number of missing images and
                the first few, and how to point to a moved folder.
            ValueError: If any image differs from the one at setup. The
                message names the number of such images and the first few.
        """
        hint = (
            "if the images were moved, such as to another machine, give their folder with "
            "`dimalign label-app serve STUDY.db --images DIR`"
        )
        if not self.images_dir.is_dir():
            raise FileNotFoundError(f"image folder {self.images_dir} of the study {self.path} not found: {hint}")
        rows = self.connection.execute(
            "SELECT object_index, image_path, image_sha256 FROM objects WHERE image_path IS NOT NULL "
            "ORDER BY object_index"
        ).fetchall()
        missing = []
        files = []
        root = self.images_dir.resolve()
        for row in rows:
            try:
                files.append((row, self._resolve_image_path(row["object_index"], row["image_path"], root)))
            except NotFoundError:
                missing.append(row["image_path"])
        if missing:
            raise FileNotFoundError(
                f"{len(missing)} of the study's images are missing from {self.images_dir.resolve()}, such "
                f"as {', '.join(missing[:3])}: {hint}, or restore the missing files"
            )
        self._check_image_checksums(files)

    def image_checksums(self) -> dict[int, str | None]:
        """Return the SHA-256 stored at setup of each object with an image, None where setup stored none."""
        rows = self.connection.execute(
            "SELECT object_index, image_sha256 FROM objects WHERE image_path IS NOT NULL"
        ).fetchall()
        return {int(row["object_index"]): row["image_sha256"] for row in rows}

    def image_differs_from_setup(self, object_index: int, path: Path) -> bool:
        """Check whether an object's image file differs from the file at setup, by the SHA-256 stored then.

        The start checks every file (see :meth:`check_images`), and this check
        finds a file replaced while the app runs, or a symbolic link pointed
        at another file. The checksum is computed once per file version (see
        :func:`_file_version`). False in a study without checksums, and for a
        file that cannot be read, whose decoding then reports the error.
        """
        stored = self.image_checksum(object_index)
        if stored is None:
            return False
        checksum = _file_checksum(path)
        return checksum is not None and checksum != stored

    def image_checksum(self, object_index: int) -> str | None:
        """Return the SHA-256 of an object's image stored at setup, or None where setup stored none."""
        row = self.connection.execute(
            "SELECT image_sha256 FROM objects WHERE object_index = ?", (int(object_index),)
        ).fetchone()
        if row is None or not row["image_sha256"]:
            return None
        return row["image_sha256"]

    def served_form(self, object_index: int, path: Path) -> ServedForm:
        """Decide how the app sends an object's image file ``path``.

        The form is :attr:`ServedForm.DECODED` for the objects that setup
        stored in the setting ``decoded_images`` and for a file that
        :func:`browser_shows_otherwise` finds now. It is
        :attr:`ServedForm.SHRUNK` for any other file whose longer side exceeds
        :data:`SERVED_IMAGE_SIDE`, and :attr:`ServedForm.FILE` for the rest. The rules may have
        grown since setup, such as by embedded ICC colour profiles, and a
        file may have been replaced after the server started. The check of a
        file is cached by its version (see :func:`_check_image_file`), so it
        runs on the first request of each file, not at start-up.

        A study set up before the decoding settings were stored does not know
        how the DNN decoded the images, so it serves a file that a browser may
        show otherwise as it is. It still shrinks a large file that a browser
        shows as ``load_rgb`` decodes it. Such a file has no transparency and
        no EXIF rotation, so every decoding setting gives the same pixels.
        """
        if "image_decoding" not in self.settings:
            check, _ = _check_image_file(path)
            if not check.shown_otherwise and check.longer_side > SERVED_IMAGE_SIDE:
                return ServedForm.SHRUNK
            return ServedForm.FILE
        if int(object_index) in self.decoded_images:
            return ServedForm.DECODED
        check, checked_now = _check_image_file(path)
        if check.shown_otherwise and checked_now:
            logger.info(
                "the image %s of object %d, which the study lists to serve as a file, is served decoded, "
                "because a browser may show it otherwise than the DNN saw it, such as by an embedded ICC "
                "colour profile or a change of the file after setup", path, object_index,
            )
        if check.shown_otherwise:
            return ServedForm.DECODED
        if check.longer_side > SERVED_IMAGE_SIDE:
            return ServedForm.SHRUNK
        return ServedForm.FILE

    def _check_image_checksums(self, files: list[tuple[sqlite3.Row, Path]]) -> None:
        """Compare each image file with the SHA-256 stored at setup (see :meth:`check_images`)."""
        root = self.images_dir.resolve()
        stored = [(row, path) for row, path in files if row["image_sha256"]]
        if len(stored) < len(files):
            logger.warning(
                "the study %s stores no checksums of its images (%d of %d lack one), as a study set up by "
                "an older dimalign, so the images in %s are only checked to exist, not to be the pictures "
                "of setup: check that its grids show the intended pictures",
                self.path, len(files) - len(stored), len(files), root,
            )
        if not stored:
            return
        start = time.perf_counter()
        # _versioned_checksum keeps each checksum, so the first request of an unchanged file reads it no more.
        changed = [row["image_path"] for row, path in stored if _versioned_checksum(path) != row["image_sha256"]]
        logger.info(
            "checked the SHA-256 of %d images in %s in %.1f s", len(stored), root, time.perf_counter() - start
        )
        if changed:
            raise ValueError(
                f"{len(changed)} of the study's images in {root} differ from the images at setup (their "
                f"sha256 checksums differ), such as {', '.join(changed[:3])}: the folder holds other "
                "pictures under the same names, so participants would see grids other than those set up. "
                "Give the image folder the study was set up with, or set up a new study with these images"
            )

    # Participants ------------------------------------------------------------

    @property
    def closed_at(self) -> str | None:
        """ISO time at which the study was closed to new participants, or None while it is open.

        The value is read when the study is opened, so the web app, which
        opens the study for each request, applies a change at the next request.
        """
        return self.settings.get(CLOSED_AT_SETTING)

    def set_closed(self, closed: bool) -> bool:
        """Close the study to new participants, or reopen it, and commit the change.

        Participants who already consented can go on answering, stop and
        resume while the study is closed. Only :meth:`add_participant_once`
        checks the setting, so only new participants are rejected.

        Args:
            closed (bool): True closes the study, False reopens it.

        Returns:
            bool: Whether this call changed the setting. Closing a closed
            study keeps its first closing time.

        Raises:
            PermissionError: If the database file is read-only, naming it.
            sqlite3.OperationalError: If another connection holds the write
                lock for longer than the connection's busy timeout, naming the file.
        """
        try:
            changed, closed_at = self._write_closed(closed)
        except sqlite3.OperationalError as error:
            if "locked" in str(error) or "busy" in str(error):
                raise sqlite3.OperationalError(
                    f"cannot write the study database {self.path}, because another program holds its write "
                    f"lock ({error}): close programs that have the study open with unsaved changes, such as "
                    "an SQLite browser, then run the command again"
                ) from error
            if "readonly" not in str(error):
                raise
            raise PermissionError(
                f"cannot write the study database {self.path} ({error}): make the file writable, then "
                "run the command again"
            ) from error
        if closed_at is None:
            self.settings.pop(CLOSED_AT_SETTING, None)
        else:
            self.settings[CLOSED_AT_SETTING] = closed_at
        if changed:
            logger.info("%s %s to new participants", "closed" if closed else "reopened", self.path)
        return changed

    def _write_closed(self, closed: bool) -> tuple[bool, str | None]:
        """Write or delete the closing time; return whether it changed and the time now stored."""
        with db.transaction(self.connection):
            closed_at = self._read_closed_at()
            if closed and closed_at is None:
                closed_at = now_iso()
                self.connection.execute(
                    "INSERT INTO study (key, value) VALUES (?, ?)", (CLOSED_AT_SETTING, closed_at)
                )
                changed = True
            elif not closed and closed_at is not None:
                self.connection.execute("DELETE FROM study WHERE key = ?", (CLOSED_AT_SETTING,))
                closed_at = None
                changed = True
            else:
                changed = False
        return changed, closed_at

    def _read_closed_at(self) -> str | None:
        row = self.connection.execute(
            "SELECT CAST(value AS BLOB) AS value FROM study WHERE key = ?", (CLOSED_AT_SETTING,)
        ).fetchone()
        return None if row is None else row["value"].decode("utf-8")

    def add_participant(self, order_seed: int | None = None) -> tuple[Participant, str]:
        """Register a participant who consented and return it with its secret code.

        Args:
            order_seed (int | None): Seed for the random dimension order; a
                fresh random seed when None. The seed is stored with the order.

        Returns:
            tuple[Participant, str]: The participant and the code with which it
            resumes. Only the code's hash is stored, so it cannot be shown again later.

        Raises:
            StudyClosedError: If the study is closed to new participants.
        """
        code = new_participant_code()
        participant, _ = self.add_participant_once(code, order_seed)
        return participant, code

    def add_participant_once(self, code: str, order_seed: int | None = None) -> tuple[Participant, bool]:
        """Register a participant with a given code, unless one already has that code.

        The web app draws the code when it shows the consent form, so a form
        submitted twice (a double click) registers one participant, and the
        second request gets the participant of the first.

        Args:
            code (str): The participant's secret code, from :func:`new_participant_code`.
            order_seed (int | None): Seed for the random dimension order of a
                new participant; a fresh random seed when None.

        Returns:
            tuple[Participant, bool]: The participant with this code, and
            whether this call registered it.

        Raises:
            StudyClosedError: If no participant has this code and the study is
                closed to new participants (see :meth:`set_closed`). Nothing is
                written then.
        """
        if order_seed is None:
            order_seed = secrets.randbits(62)
        order = [int(dim) for dim in np.random.default_rng(order_seed).permutation(self.dimensions)]
        consented_at = now_iso()
        # BEGIN IMMEDIATE holds the write lock from the look-up to the insert,
        # so two requests with the same code cannot both insert.
        with db.transaction(self.connection):
            existing = self.connection.execute(
                _SELECT_PARTICIPANTS + " WHERE code_sha256 = ?", (hash_code(code),)
            ).fetchone()
            # The setting is read inside the transaction, so a participant
            # whose consent arrives after the study was closed is not added.
            if existing is None and self._read_closed_at() is not None:
                raise StudyClosedError(f"the study {self.path} is closed to new participants")
            if existing is None:
                cursor = self.connection.execute(
                    "INSERT INTO participants (code_sha256, order_seed, order_json, consented_at) "
                    "VALUES (?, ?, ?, ?)",
                    (hash_code(code), int(order_seed), json.dumps(order), consented_at),
                )
                participant_id = int(cursor.lastrowid)
        if existing is not None:
            return self._decode_participant(existing), False
        logger.info("participant %d consented; %d dimensions in random order", participant_id, len(order))
        return Participant(participant_id, tuple(order), int(order_seed), consented_at), True

    def participant(self, participant_id: int) -> Participant:
        """Return a participant by id.

        Raises:
            NotFoundError: If no participant has this id.
        """
        row = self.connection.execute(
            _SELECT_PARTICIPANTS + " WHERE participant_id = ?", (int(participant_id),)
        ).fetchone()
        if row is None:
            raise NotFoundError(f"participant {participant_id} not found")
        return self._decode_participant(row)

    def participant_by_code(self, code: str) -> Participant:
        """Return the participant with this code.

        Raises:
            NotFoundError: If no participant has this code.
        """
        row = self.connection.execute(
            _SELECT_PARTICIPANTS + " WHERE code_sha256 = ?", (hash_code(code.strip()),)
        ).fetchone()
        if row is None:
            raise NotFoundError("no participant has this code")
        return self._decode_participant(row)

    def code_matches(self, participant_id: int, code: str) -> bool:
        """Check whether ``code`` is the code of participant ``participant_id``."""
        row = self.connection.execute(
            "SELECT code_sha256 FROM participants WHERE participant_id = ?", (int(participant_id),)
        ).fetchone()
        return row is not None and secrets.compare_digest(row["code_sha256"], hash_code(code))

    def session_matches(self, participant_id: int, code: str, session_version: int) -> bool:
        """Check a session: ``code`` is the participant's code and ``session_version`` its current version."""
        row = self.connection.execute(
            "SELECT code_sha256, session_version FROM participants WHERE participant_id = ?",
            (int(participant_id),),
        ).fetchone()
        if row is None or not secrets.compare_digest(row["code_sha256"], hash_code(code)):
            return False
        return int(row["session_version"]) == int(session_version)

    def end_sessions(self, participant_id: int) -> int:
        """End every session of a participant by incrementing its session version, and commit.

        Sessions that carry an older version, such as a copy of the session
        cookie in another browser, are then rejected. Resuming with the
        participant code starts a session with the new version.

        Returns:
            int: The new session version.

        Raises:
            NotFoundError: If no participant has this id.
        """
        with db.transaction(self.connection):
            self.connection.execute(
                "UPDATE participants SET session_version = session_version + 1, sessions_ended_at = ? "
                "WHERE participant_id = ?",
                (now_iso(), int(participant_id)),
            )
            row = self.connection.execute(
                "SELECT session_version FROM participants WHERE participant_id = ?", (int(participant_id),)
            ).fetchone()
        if row is None:
            raise NotFoundError(f"participant {participant_id} not found")
        return int(row["session_version"])

    def participants(self) -> list[Participant]:
        """Return every participant, in the order they consented."""
        rows = self.connection.execute(_SELECT_PARTICIPANTS + " ORDER BY participant_id").fetchall()
        return [self._decode_participant(row) for row in rows]

    # Answers -----------------------------------------------------------------

    def seconds_since_sessions_ended(self, participant_id: int) -> float | None:
        """Return the seconds since :meth:`end_sessions` last ran for a participant, or None if it never ran.

        Raises:
            ValueError: If the stored time is not an ISO 8601 time, such as after an edit by hand.
        """
        row = self.connection.execute(
            "SELECT sessions_ended_at FROM participants WHERE participant_id = ?", (int(participant_id),)
        ).fetchone()
        if row is None or row["sessions_ended_at"] is None:
            return None
        text = str(row["sessions_ended_at"])
        try:
            ended = _dt.datetime.fromisoformat(text)
        except ValueError:
            raise ValueError(
                f"participant {participant_id} in {self.path}: its sessions_ended_at {abbreviate(text)!r} is "
                "not an ISO 8601 time: correct that row, because the app stores the time of the last Stop there"
            ) from None
        if ended.tzinfo is None:
            # SQLite's datetime() writes UTC without an offset.
            ended = ended.replace(tzinfo=_dt.timezone.utc)
        return (_dt.datetime.now(_dt.timezone.utc) - ended).total_seconds()

    def save_answer(
        self, participant_id: int, dimension: int, answer: Answer, *, session_version: int | None = None
    ) -> None:
        """Store (or replace) a participant's answer for a dimension and commit it.

        The answer and a row in the append-only history are written in one
        transaction, committed before this returns.

        Args:
            participant_id (int): The participant.
            dimension (int): A dimension in the participant's order.
            answer (Answer): The validated answer.
            session_version (int | None): The session version of the request
                that sent the answer. It is compared with the participant's
                inside the write transaction, so an answer that arrives while
                *Stop* ends the session is not saved. None skips the check.

        Raises:
            NotFoundError: If the participant or the dimension does not exist;
                nothing is written then.
            SessionEndedError: If ``session_version`` is not the participant's
                current one; nothing is written then.
        """
        participant = self.participant(participant_id)
        if int(dimension) not in participant.order:
            raise NotFoundError(f"dimension {dimension} is not part of the study {self.path}")
        labels_json = json.dumps(list(answer.labels), ensure_ascii=False)
        now = now_iso()
        with db.transaction(self.connection):
            if session_version is not None:
                current = self.connection.execute(
                    "SELECT session_version FROM participants WHERE participant_id = ?", (int(participant_id),)
                ).fetchone()["session_version"]
                if int(current) != int(session_version):
                    raise SessionEndedError(
                        f"the session of participant {participant_id} has ended (session version "
                        f"{session_version}, current {current}): the answer to dimension {dimension} was not saved"
                    )
            self.connection.execute(
                "INSERT INTO answers (participant_id, dimension, labels_json, kind, interpretability, "
                "answered_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (participant_id, dimension) DO UPDATE SET labels_json = excluded.labels_json, "
                "kind = excluded.kind, interpretability = excluded.interpretability, "
                "updated_at = excluded.updated_at",
                (participant_id, int(dimension), labels_json, answer.kind, answer.interpretability, now, now),
            )
            self.connection.execute(
                "INSERT INTO answer_history (participant_id, dimension, labels_json, kind, "
                "interpretability, submitted_at) VALUES (?, ?, ?, ?, ?, ?)",
                (participant_id, int(dimension), labels_json, answer.kind, answer.interpretability, now),
            )

    def answer(self, participant_id: int, dimension: int) -> Answer | None:
        """Return a participant's answer for a dimension, or None if not answered.

        Raises:
            ValueError: If the stored answer is invalid (see :meth:`answers`).
        """
        row = self.connection.execute(
            _SELECT_ANSWERS + " WHERE participant_id = ? AND dimension = ?",
            (int(participant_id), int(dimension)),
        ).fetchone()
        if row is None:
            return None
        answer = self._decode_answer(row)
        return Answer(labels=tuple(answer["labels"]), kind=answer["kind"],
                      interpretability=answer["interpretability"])

    def answers(self, participant_id: int | None = None) -> list[dict[str, Any]]:
        """Return answers as dictionaries, ordered by participant and dimension.

        Args:
            participant_id (int | None): Only this participant's answers; all when None.

        Returns:
            list[dict]: Keys ``participant_id``, ``dimension``, ``labels``
            (list of str), ``kind``, ``interpretability``, ``answered_at``, ``updated_at``.

        Raises:
            ValueError: If a stored answer has text that is not UTF-8, or
                ``labels_json`` that is not a JSON list of strings, as after
                an edit by hand. The app never stores such an answer. The
                message names the participant, dimension and value.
        """
        query = _SELECT_ANSWERS
        parameters: tuple[Any, ...] = ()
        if participant_id is not None:
            query += " WHERE participant_id = ?"
            parameters = (int(participant_id),)
        rows = self.connection.execute(query + " ORDER BY participant_id, dimension", parameters).fetchall()
        return [self._decode_answer(row) for row in rows]

    def _decode_participant(self, row: sqlite3.Row) -> Participant:
        """Build a participant from a row of :data:`_SELECT_PARTICIPANTS` (text columns as bytes).

        Raises:
            ValueError: If a text column is not UTF-8 or ``order_json`` is
                not a JSON list of whole numbers, naming the participant.
        """
        where = f"participant {row['participant_id']} in {self.path}"
        advice = "correct that row, because the app stores the order as a JSON list of the study's dimensions"
        text: dict[str, str] = {}
        for column in _PARTICIPANT_TEXT_COLUMNS:
            try:
                text[column] = row[column].decode("utf-8")
            except UnicodeDecodeError as error:
                raise ValueError(
                    f"{where}: its {column} is not valid UTF-8 ({error.reason} at byte {error.start} of "
                    f"{row[column][:60]!r}): {advice}"
                ) from None
        try:
            order = json.loads(text["order_json"])
        except json.JSONDecodeError as error:
            raise ValueError(
                f"{where}: its order_json is not valid JSON ({error}): "
                f"{abbreviate(text['order_json'])!r}: {advice}"
            ) from None
        if not isinstance(order, list) or not all(type(dimension) is int for dimension in order):
            raise ValueError(
                f"{where}: its order_json is not a JSON list of dimension numbers: "
                f"{abbreviate(text['order_json'])!r}: {advice}"
            )
        return Participant(
            participant_id=int(row["participant_id"]),
            order=tuple(order),
            order_seed=int(row["order_seed"]),
            consented_at=text["consented_at"],
            session_version=int(row["session_version"]),
        )

    def _decode_answer(self, row: sqlite3.Row) -> dict[str, Any]:
        """Decode an answer row of :data:`_SELECT_ANSWERS`, whose text columns arrive as bytes."""
        where = (
            f"the answer of participant {row['participant_id']} to dimension {row['dimension']} in {self.path}"
        )
        advice = "correct or delete that row, because the app never stores such a value"
        answer: dict[str, Any] = {"participant_id": row["participant_id"], "dimension": row["dimension"]}
        for column in _ANSWER_TEXT_COLUMNS:
            raw = row[column]
            try:
                answer[column] = raw.decode("utf-8")
            except UnicodeDecodeError as error:
                raise ValueError(
                    f"{where}: its {column} is not valid UTF-8 ({error.reason} at byte {error.start} of "
                    f"{raw[:60]!r}): {advice}"
                ) from None

        text = answer.pop("labels_json")
        try:
            labels = json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(
                f"{where}: its labels_json is not valid JSON ({error}): {abbreviate(text)!r}: {advice}"
            ) from None
        if not isinstance(labels, list) or not all(isinstance(label, str) for label in labels):
            raise ValueError(
                f"{where}: its labels_json is not a JSON list of strings: {abbreviate(text)!r}: {advice}"
            )
        for label in labels:
            surrogates = [character for character in label if "\ud800" <= character <= "\udfff"]
            if surrogates:
                raise ValueError(
                    f"{where}: its labels_json contains a lone surrogate (U+{ord(surrogates[0]):04X}), which "
                    f"UTF-8 cannot encode, in the label {abbreviate(label)!r}: {advice}"
                )
        answer["labels"] = labels
        return answer

    def answered_dimensions(self, participant_id: int) -> set[int]:
        """Return the dimensions a participant has answered."""
        rows = self.connection.execute(
            "SELECT dimension FROM answers WHERE participant_id = ?", (int(participant_id),)
        ).fetchall()
        return {int(row["dimension"]) for row in rows}

    def next_dimension(self, participant: Participant) -> int | None:
        """Return the first dimension in the participant's order without an answer, or None."""
        answered = self.answered_dimensions(participant.participant_id)
        for dimension in participant.order:
            if dimension not in answered:
                return dimension
        return None

    def export_answers(self, path: str | os.PathLike, *, overwrite: bool = False) -> int:
        """Write every answer to a CSV file (atomically) and return the number of rows.

        Columns: ``participant_id``, ``dimension``, ``position`` (1-based place
        in the participant's order), ``label_1`` .. ``label_<max_labels>``,
        ``kind``, ``interpretability``, ``answered_at``, ``updated_at``.
        Participant codes are not exported.

        Args:
            path (str | os.PathLike): The CSV file. Missing folders above it
                are created, and the creation is logged.
            overwrite (bool): Replace an existing file.

        Raises:
            ValueError: If ``path`` is the study database or one of its
                SQLite side files (``-wal``, ``-shm``, ``-journal``), even with ``overwrite``.
            IsADirectoryError: If ``path`` is a folder.
            NotADirectoryError: If a folder above ``path`` is a file.
            FileExistsError: If ``path`` exists and ``overwrite`` is False.
        """
        path = Path(path)
        self._check_export_path(path, overwrite=overwrite)
        text, n_rows = self.answers_csv()
        folder_missing = not path.parent.exists()
        # output_dir removes the folders it created again if the write fails.
        with output_dir(path.parent, remove_contents=False):
            write_text_atomic(path, text)
        if folder_missing:
            logger.info("created the folder %s for the export file %s", path.parent, path)
        logger.info("exported %d answers of %s to %s", n_rows, self.path, path)
        return n_rows

    def _study_files(self) -> list[Path]:
        """Return the study file and its SQLite side files, under the given and the resolved name.

        SQLite resolves symbolic links before it derives the names of the
        ``-wal``, ``-shm`` and ``-journal`` files, so a study opened through a
        link keeps its side files next to the file the link points to.
        """
        names = [self.path, Path(os.path.realpath(self.path))]
        files = []
        for name in names:
            files += [name] + [name.with_name(name.name + suffix) for suffix in db.SIDE_FILE_SUFFIXES]
        return files

    def _check_export_path(self, path: Path, *, overwrite: bool) -> None:
        for study_file in self._study_files():
            if is_same_file(path, study_file):
                raise ValueError(
                    f"the export file {path} is the study database or one of its SQLite files "
                    f"({study_file}): write the answers to another file, such as answers.csv"
                )
        if path.is_dir():
            raise IsADirectoryError(
                f"the export file {path} is a folder: give a file name, such as {path / 'answers.csv'}"
            )
        existing = next((folder for folder in path.parents if folder.exists()), None)
        if existing is not None and not existing.is_dir():
            raise NotADirectoryError(
                f"the export file {path} cannot be created, because {existing} is a file, not a folder: "
                "choose another path for the export file"
            )
        if path.exists() and not overwrite:
            raise FileExistsError(
                f"the export file {path} exists: add --overwrite to replace it, or choose another file name"
            )

    def answers_csv(self) -> tuple[str, int]:
        """Return every answer as CSV text (see :meth:`export_answers`) and the number of rows.

        Participants and answers are read in one read transaction (unless
        the connection is already in one), so an answer that a running server
        saves in between cannot name a participant missing from the orders.

        Raises:
            ValueError: If a stored row is invalid (see :meth:`answers`), or an
                answer's dimension is missing from its participant's order.
        """
        own_transaction = not self.connection.in_transaction
        if own_transaction:
            self.connection.execute("BEGIN")
        try:
            return self._answers_csv()
        finally:
            if own_transaction:
                self.connection.execute("COMMIT")

    def _answers_csv(self) -> tuple[str, int]:
        orders = {participant.participant_id: participant.order for participant in self.participants()}
        label_columns = [f"label_{number}" for number in range(1, self.questions.max_labels + 1)]
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(
            ["participant_id", "dimension", "position", *label_columns, "kind", "interpretability",
             "answered_at", "updated_at"]
        )
        answers = self.answers()
        for answer in answers:
            labels = list(answer["labels"]) + [""] * (len(label_columns) - len(answer["labels"]))
            order = orders.get(answer["participant_id"])
            if order is None:
                raise ValueError(
                    f"{self.path} has an answer of participant {answer['participant_id']} to dimension "
                    f"{answer['dimension']}, but no such participant: correct or delete that answer"
                )
            if answer["dimension"] not in order:
                raise ValueError(
                    f"participant {answer['participant_id']} in {self.path} answered dimension "
                    f"{answer['dimension']}, which its order_json {json.dumps(list(order))} lacks: correct "
                    "that row, because the app stores the order as a permutation of the study's dimensions"
                )
            position = order.index(answer["dimension"]) + 1
            writer.writerow(
                [answer["participant_id"], answer["dimension"], position, *labels, answer["kind"],
                 answer["interpretability"], answer["answered_at"], answer["updated_at"]]
            )
        return buffer.getvalue(), len(answers)


#: Text columns of the participants table that :data:`_SELECT_PARTICIPANTS`
#: reads as bytes, as :data:`_SELECT_ANSWERS` does for the answers.
_PARTICIPANT_TEXT_COLUMNS = ("order_json", "consented_at")

_SELECT_PARTICIPANTS = "SELECT participant_id, order_seed, session_version, " + ", ".join(
    f"CAST({column} AS BLOB) AS {column}" for column in _PARTICIPANT_TEXT_COLUMNS
) + " FROM participants"

#: Text columns of the answers table. :data:`_SELECT_ANSWERS` reads them as
#: bytes, because SQLite stores whatever bytes an edit by hand wrote, and
#: Python's sqlite3 raises on non-UTF-8 text without naming the row.
_ANSWER_TEXT_COLUMNS = ("labels_json", "kind", "interpretability", "answered_at", "updated_at")

_SELECT_ANSWERS = "SELECT participant_id, dimension, " + ", ".join(
    f"CAST({column} AS BLOB) AS {column}" for column in _ANSWER_TEXT_COLUMNS
) + " FROM answers"


def open_or_create_run_study(
    run: str | os.PathLike,
    images: str | os.PathLike,
    *,
    objects: str | os.PathLike | None = None,
    dims: str | Sequence[int] | None = None,
    questions: str | None = None,
    decoding: Decoding | None = None,
) -> Path:
    """Return the study database kept in a run directory, creating it on first use.

    Used by the short form ``dimalign label-app RUN --images DIR``. An
    existing study is reused (so participants can resume) when the run's
    embedding file still exists unchanged and every option given matches the
    study. An option left at None is not compared.

    Args:
        run (str | os.PathLike): The run directory.
        images (str | os.PathLike): Folder the images are served from.
        objects (str | os.PathLike | None): Object table; by default the run's.
        dims (str | Sequence[int] | None): Dimensions to label; all when None
            and the study is new.
        questions (str | None): Question set; ``"default"`` when None and the study is new.
        decoding (Decoding | None): Image decoding; as :func:`create_study`
            finds it when None and the study is new.

    Raises:
        ValueError: If ``run`` is not a directory, or the existing study was
            made from another embedding, image folder, object table,
            dimensions or question set (the message names both values).
        FileNotFoundError: If the study exists but the run's embedding file is missing.
    """
    run = Path(run)
    if not run.is_dir():
        raise ValueError(
            f"{run} is not a run directory: use `dimalign label-app setup STUDY.db --run {run} ...` "
            "to keep the study database elsewhere"
        )
    db_path = run / RUN_STUDY_NAME
    if not db_path.exists():
        return create_study(
            db_path, run, images, objects=objects, dims=dims, questions=questions or DEFAULT_QUESTIONS.name,
            decoding=decoding,
        )

    embedding_file = run / EMBEDDING_NAME
    if not embedding_file.is_file():
        raise FileNotFoundError(
            f"the study {db_path} was made from {embedding_file}, which is missing: restore the "
            "embedding, or serve the study with `dimalign label-app serve`"
        )
    with Study(db_path) as study:
        mismatches = _run_study_mismatches(study, embedding_file, images, objects, dims, questions)
        if decoding is not None and decoding.to_json() != study.decoding.to_json():
            mismatches.append(
                f"the study decodes images with {study.decoding.describe()}, the request with {decoding.describe()}"
            )
        images_differ = Path(study.settings["images_dir"]) != Path(images).resolve()
    if mismatches:
        # --images is required in the short form, so it cannot be dropped
        # like the other options; serve --images uses a moved folder.
        moved_hint = (
            f". If the images were moved to {Path(images).resolve()}, serve the study from there with "
            f"`dimalign label-app serve {db_path} --images {images}`"
            if images_differ else ""
        )
        raise ValueError(
            f"the existing study {db_path} does not match this request ({'; '.join(mismatches)}): "
            "drop the differing options to serve it as it is, move it away to start a new study, "
            f"or set up one with `dimalign label-app setup`{moved_hint}"
        )
    logger.info("reusing study %s", db_path)
    return db_path


def _run_study_mismatches(
    study: Study,
    embedding_file: Path,
    images: str | os.PathLike,
    objects: str | os.PathLike | None,
    dims: str | Sequence[int] | None,
    questions: str | None,
) -> list[str]:
    """Describe each difference between an existing study and the options of a request."""
    mismatches = []
    if study.settings.get("embedding_sha256") != sha256_file(embedding_file):
        mismatches.append(f"{embedding_file} changed since the study was set up")
    if Path(study.settings["images_dir"]) != Path(images).resolve():
        mismatches.append(
            f"the study shows images from {study.settings['images_dir']}, the request from "
            f"{Path(images).resolve()}"
        )
    if objects is not None and study.settings.get("object_table") != str(Path(objects).resolve()):
        mismatches.append(
            f"the study uses the object table {study.settings.get('object_table')}, the request "
            f"{Path(objects).resolve()}"
        )
    if dims is not None:
        requested = parse_dimensions(dims, load_embedding(embedding_file).n_dims)
        if requested != list(study.dimensions):
            mismatches.append(
                f"the study has dimensions {_describe_dimensions(study.dimensions)}, the request "
                f"{_describe_dimensions(requested)}"
            )
    if questions is not None and questions != study.questions.name:
        mismatches.append(f"the study asks the questions {study.questions.name!r}, the request {questions!r}")
    return mismatches


def _describe_dimensions(dimensions: Sequence[int]) -> str:
    dimensions = list(dimensions)
    if len(dimensions) > 1 and dimensions == list(range(dimensions[0], dimensions[-1] + 1)):
        return f"{dimensions[0]}-{dimensions[-1]}"
    return ",".join(str(dimension) for dimension in dimensions)


def iter_dimension_answers(study: Study) -> Iterable[tuple[int, list[dict[str, Any]]]]:
    """Yield each study dimension with the answers given for it (possibly none)."""
    by_dimension: dict[int, list[dict[str, Any]]] = {dim: [] for dim in study.dimensions}
    for answer in study.answers():
        by_dimension.setdefault(answer["dimension"], []).append(answer)
    yield from by_dimension.items()
