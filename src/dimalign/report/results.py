"""Reading the saved results of a study directory for the figures and the report.

:class:`StudyResults` finds each stage's folder (``human_fit``, ``dnn_fit``,
``evaluate``, ``compare``, ``map``) and reads its files. Nothing is
recomputed: a figure whose files are missing raises ``FileNotFoundError``
naming the file and the stage that writes it, and the report leaves that
figure out with a note.

THINGS categories: ``category_mat_manual.tsv`` has a header of 27 category
names and one 0/1 row per object. An object in several categories is
assigned to the first of them in header order (so a bird, also an animal, is
drawn with the animals). Objects in none form the block ``other``, last.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from dimalign.features.recorded import Decoding, recorded_decoding
from dimalign.io.files import MANIFEST_NAME, read_npz
from dimalign.io.objects import OBJECT_TABLE_NAME, ObjectTable, read_object_table

logger = logging.getLogger(__name__)

SIDES = ("human", "dnn")
SIDE_NAMES = {"human": "human", "dnn": "DNN"}
OTHER_CATEGORY = "other"

#: Folder of each kind of result inside a study directory.
DEFAULT_STAGE_DIRS = {
    "human_fit": "human_fit", "dnn_fit": "dnn_fit", "dnn_triplets": "dnn_triplets",
    "evaluate": "evaluate", "compare": "compare", "map": "map",
}


#: Stages whose manifests lead to the extraction of the DNN's features.
RECORDED_DECODING_STAGES = ("features", "dnn_triplets", "dnn_fit", "map")

#: Columns of ``compare/disagreements.csv`` that the disagreement figure reads.
DISAGREEMENT_COLUMNS = (
    "object_1", "object_2", "object_3", "human_odd_one_out", "dnn_odd_one_out", "human_dim", "dnn_dim",
    "human_drop", "dnn_drop", "p_human", "p_dnn_of_human_choice",
)


@dataclass(frozen=True)
class CategoryBlocks:
    """Objects ordered by category, for similarity matrix figures.

    Attributes:
        order (np.ndarray): Positions of the objects in display order.
        names (list[str]): Category of each block, in display order.
        starts (np.ndarray): First display position of each block.
        stops (np.ndarray): One past the last display position of each block.
    """

    order: np.ndarray
    names: list[str]
    starts: np.ndarray
    stops: np.ndarray


def read_category_matrix(path: str | os.PathLike, n_objects: int) -> tuple[list[str], np.ndarray]:
    """Read a category membership matrix such as THINGS ``category_mat_manual.tsv``.

    Args:
        path (str | os.PathLike): Tab-separated file: a header of category
            names, then one row of 0/1 per object in object-table order.
        n_objects (int): The number of objects the rows must match.

    Returns:
        tuple[list[str], np.ndarray]: Category names and a bool matrix of
        shape ``(n_objects, n_categories)``.

    Raises:
        ValueError: If the row count differs from ``n_objects`` or a value is not 0 or 1.
    """
    path = Path(path)
    try:
        table = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as error:
        raise ValueError(
            f"{path} cannot be read as a category matrix ({str(error).strip()}); it needs a tab-separated header of "
            "category names, then one row of 0/1 per object"
        ) from error
    if table.shape[0] != n_objects:
        raise ValueError(
            f"{path} has {table.shape[0]} rows but the study has {n_objects} objects; the category "
            "matrix needs one row per object in the order of the object table"
        )
    # Cells are read as text, so that one bad cell points to its own line
    # instead of turning its whole column into strings. Each cell is then read
    # as a number, so that 1.0 and numpy.savetxt's default 1.000000000000000000e+00
    # count as 1. True and False, as pandas writes bool columns, count as 1 and 0.
    text = table.apply(lambda column: column.str.strip())
    values = text.apply(pd.to_numeric, errors="coerce")
    values = values.mask(text == "True", 1.0).mask(text == "False", 0.0)
    valid = values.isin((0, 1)).to_numpy()
    if not valid.all():
        row, column = (int(index) for index in np.argwhere(~valid)[0])
        raise ValueError(
            f"{path}, line {row + 2}, column {table.columns[column]!r}: category membership "
            f"{table.iat[row, column]!r} is invalid; use 0 or 1"
        )
    return [str(name) for name in table.columns], values.to_numpy() == 1


def assign_categories(membership: np.ndarray) -> np.ndarray:
    """Return each object's first category (column index), or -1 for objects in none.

    Examples:
        >>> assign_categories(np.array([[0, 1, 1], [0, 0, 0], [1, 0, 0]], dtype=bool)).tolist()
        [1, -1, 0]
    """
    membership = np.asarray(membership, dtype=bool)
    first = np.argmax(membership, axis=1)
    return np.where(membership.any(axis=1), first, -1)


def category_blocks(assignment: np.ndarray, names: list[str]) -> CategoryBlocks:
    """Order objects by category (header order, ``other`` last), keeping object order within a block.

    Empty categories get no block.

    Examples:
        >>> blocks = category_blocks(np.array([1, -1, 0, 1]), ["a", "b"])
        >>> blocks.order.tolist(), blocks.names, blocks.starts.tolist(), blocks.stops.tolist()
        ([2, 0, 3, 1], ['a', 'b', 'other'], [0, 1, 3], [1, 3, 4])
    """
    assignment = np.asarray(assignment)
    keys = np.where(assignment < 0, len(names), assignment)
    order = np.argsort(keys, kind="stable")
    block_names, starts, stops = [], [], []
    position = 0
    for category in range(len(names) + 1):
        count = int(np.sum(keys == category))
        if count == 0:
            continue
        block_names.append(names[category] if category < len(names) else OTHER_CATEGORY)
        starts.append(position)
        stops.append(position + count)
        position += count
    return CategoryBlocks(order, block_names, np.array(starts, dtype=np.int64), np.array(stops, dtype=np.int64))


def _read_csv(
    path: Path, columns: tuple[str, ...] = (), *, numbers: tuple[str, ...] = (), integers: tuple[str, ...] = (),
    text: tuple[str, ...] = (),
) -> pd.DataFrame:
    """Read a result table, naming the file when it is empty, malformed or lacks one of ``columns``.

    Args:
        path (Path): The CSV file.
        columns (tuple[str, ...]): Columns the table must have.
        numbers (tuple[str, ...]): Columns (among ``columns``) whose cells must
            be numbers or empty; they are returned as floats.
        integers (tuple[str, ...]): Columns (among ``columns``) whose cells must
            all be whole numbers; they are returned as int64.
        text (tuple[str, ...]): Columns (among ``columns``) returned as the
            strings in the file, so that a name such as ``NA`` or ``None``
            stays a name instead of becoming a missing value.

    Raises:
        ValueError: Naming the file, and for a bad cell its line, column and value.
    """
    try:
        table = pd.read_csv(path)
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as error:
        raise ValueError(f"{path} cannot be read as a table ({error}); rerun the stage that writes it") from error
    missing = [column for column in columns if column not in table.columns]
    if missing:
        raise ValueError(
            f"{path} has no column {', '.join(missing)} (its columns: {', '.join(map(str, table.columns))}); "
            "rerun the stage that writes it"
        )
    if text:
        strings = pd.read_csv(path, usecols=list(text), dtype=str, keep_default_na=False)
        for column in text:
            table[column] = strings[column]
    for column, integer in [(name, False) for name in numbers] + [(name, True) for name in integers]:
        # One text cell turns a whole column into strings, which the figures would draw as categories.
        values = pd.to_numeric(table[column], errors="coerce")
        valid = values.notna() & (values % 1 == 0) if integer else values.notna() | table[column].isna()
        if not valid.all():
            row = int(np.flatnonzero(~valid.to_numpy())[0])
            cell = table[column].iloc[row]
            raise ValueError(
                f"{path}, line {row + 2}, column {column!r}: {'' if pd.isna(cell) else str(cell)!r} is invalid; "
                f"use {'an integer' if integer else 'a number'} (rerun the step that writes the file)"
            )
        table[column] = values.astype(np.int64) if integer else values.astype(np.float64)
    return table


#: Tables of a ``dimalign labels summarize`` folder that the report reads:
#: name -> (required columns, number columns, integer columns). Their
#: ``embedding`` column is read as text.
LABELS_TABLES: dict[str, tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]] = {
    "dimensions.csv": (("embedding", "dimension"), (), ("dimension",)),
    "shares.csv": (("embedding", "kind", "share"), ("share",), ()),
    "relevance_shares.csv": (("embedding", "kind", "share"), ("share",), ()),
}


def read_labels_table(labels_dir: Path, name: str) -> pd.DataFrame:
    """Read one table of a labels summary (see :data:`LABELS_TABLES`), checking its columns.

    Raises:
        ValueError: If the table is malformed, lacks a column, or has a bad cell.
    """
    columns, numbers, integers = LABELS_TABLES[name]
    return _read_csv(labels_dir / name, columns, numbers=numbers, integers=integers, text=("embedding",))


def check_labels_summary(labels_dir: Path, names: dict[str, str] | None = None) -> None:
    """Read the tables of a labels summary that exist, so that a bad one fails before anything is drawn.

    Args:
        labels_dir (Path): Output folder of ``dimalign labels summarize``.
        names (dict[str, str] | None): Name of each side's embedding in the
            summary; at least one of them must be labelled there.

    Raises:
        ValueError: If a table is invalid, or ``dimensions.csv`` labels none of ``names``.
    """
    for name in LABELS_TABLES:
        if (labels_dir / name).is_file():
            table = read_labels_table(labels_dir, name)
            if name == "dimensions.csv":
                _check_top_labels(labels_dir / name, table)
            if name == "dimensions.csv" and names:
                _check_labelled_names(labels_dir / name, table, names)


def _check_top_labels(path: Path, table: pd.DataFrame) -> None:
    """Raise ``ValueError`` for a ``top_labels`` cell that looks like JSON but is not valid, naming its line."""
    from dimalign.labeling.analysis import parse_top_labels

    if "top_labels" not in table.columns:
        return
    for row, cell in enumerate(table["top_labels"]):
        if pd.isna(cell):
            continue
        try:
            parse_top_labels(str(cell))
        except ValueError as error:
            raise ValueError(f"{path}, line {row + 2}: {error}") from None


def _check_labelled_names(path: Path, table: pd.DataFrame, names: dict[str, str]) -> None:
    # A name that matches nothing would leave every label out of the report without a word.
    embeddings = sorted({str(name) for name in table["embedding"]})
    if any(name in embeddings for name in names.values()):
        return
    raise ValueError(
        f"{path} labels no embedding named {' or '.join(repr(name) for name in names.values())} (its "
        f"embeddings: {', '.join(embeddings) or 'none'}); give the names that 'dimalign labels summarize' "
        "used, with report.labels_human and report.labels_dnn in the study file, or --labels-human and "
        "--labels-dnn of dimalign report"
    )


def _read_json(path: Path) -> dict[str, Any]:
    """Read a result record, naming the file when it is not a JSON object."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path} cannot be read as JSON ({error}); rerun the stage that writes it") from error
    if not isinstance(record, dict):
        raise ValueError(f"{path} is not a JSON object; rerun the stage that writes it")
    return record


def _read_array(path: Path, *, mmap: bool = False) -> np.ndarray:
    """Read a saved ``.npy`` array, naming the file when it is truncated or not a plain array."""
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (OSError, EOFError, ValueError) as error:
        raise ValueError(
            f"{path} cannot be read as an array ({error}); the file may be damaged, so rerun the stage "
            "that writes it"
        ) from error


def _read_archive(path: Path, names: list[str]) -> dict[str, np.ndarray]:
    """Read the arrays ``names`` of a saved ``.npz`` archive, naming the file when it is damaged or lacks one."""
    return read_npz(
        path, required=names, description="an archive of arrays", advice="rerun the stage that writes it"
    )


def _json_object(value: Any, path: Path, key: str) -> dict[str, Any]:
    """Return ``value`` if it is a JSON object, else raise naming the file and the key."""
    if not isinstance(value, dict):
        raise ValueError(
            f"{path}: {key} = {value!r} is invalid: expected a JSON object; rerun the stage that writes it"
        )
    return value


def _json_number(value: Any, path: Path, key: str, *, required: bool = False) -> float | int | None:
    """Return ``value`` if it is a number (or null, unless ``required``), else raise naming the file and the key."""
    if (value is None and not required) or (isinstance(value, (int, float)) and not isinstance(value, bool)):
        return value
    expected = "a number" if required else "a number or null"
    raise ValueError(f"{path}: {key} = {value!r} is invalid: expected {expected}; rerun the stage that writes it")


class StudyResults:
    """The saved results of a study directory.

    Args:
        study_dir (str | os.PathLike): The study directory.
        stage_dirs (dict[str, Path] | None): The folder of every stage to read.
            Other stages count as absent, so that the report of a study never
            shows an old folder of a stage the study no longer configures.
            None reads ``study_dir/<stage>`` for every stage.
        categories (path | None): Category matrix (see the module docstring).
        labels (path | None): Output folder of ``dimalign labels summarize``.
        images (path | None): Image folder: ``<object_id>.<ext>`` or the first
            image in ``<object_id>/``.
        labels_names (dict[str, str] | None): Name of each side's embedding in
            the labels summary (default: the fit folders' names).
        record (dict | None): The pipeline's record of the study; read from
            ``pipeline.json`` when None.
        decoding (Decoding | None): Background colour and EXIF handling of
            the images. None uses those recorded by the extraction behind the
            stages (see :attr:`decoding`).
    """

    def __init__(
        self,
        study_dir: str | os.PathLike,
        *,
        stage_dirs: dict[str, Path] | None = None,
        categories: str | os.PathLike | None = None,
        labels: str | os.PathLike | None = None,
        images: str | os.PathLike | None = None,
        labels_names: dict[str, str] | None = None,
        record: dict[str, Any] | None = None,
        decoding: Decoding | None = None,
    ) -> None:
        self.study_dir = Path(study_dir)
        if stage_dirs is None:
            self.stage_dirs = {name: self.study_dir / folder for name, folder in DEFAULT_STAGE_DIRS.items()}
        else:
            self.stage_dirs = {name: Path(path) for name, path in stage_dirs.items()}
        self.categories_path = Path(categories) if categories else None
        self.labels_dir = Path(labels) if labels else None
        self.images_dir = Path(images) if images else None
        self.labels_names = labels_names or {
            side: self.stage_dirs.get(f"{side}_fit", Path(f"{side}_fit")).name for side in SIDES
        }
        if record is None:
            record_path = self.study_dir / "pipeline.json"
            record = json.loads(record_path.read_text(encoding="utf-8")) if record_path.is_file() else {}
        self.record = record
        if decoding is not None:
            self.decoding = decoding
        # Files read by many figures (embeddings, matching, labels), read once.
        self._cache: dict[tuple[str, ...], Any] = {}

    # -- locating files ------------------------------------------------------------

    def path(self, stage: str, name: str) -> Path:
        """Return ``<stage folder>/<name>``.

        Raises:
            FileNotFoundError: Naming the file and the stage that writes it.
        """
        if stage not in self.stage_dirs:
            raise FileNotFoundError(f"{name} not found: the study has no {stage} stage")
        path = self.stage_dirs[stage] / name
        if not path.exists():
            raise FileNotFoundError(f"{path} not found: it is written by the {stage} stage")
        return path

    def has(self, stage: str, name: str) -> bool:
        """Return whether ``<stage folder>/<name>`` exists."""
        return stage in self.stage_dirs and (self.stage_dirs[stage] / name).exists()

    def sides(self) -> list[str]:
        """Return the sides (``human``, ``dnn``) that have a fitted embedding."""
        return [side for side in SIDES if self.has(f"{side}_fit", "embedding.npz")]

    # -- objects and categories ------------------------------------------------------

    @cached_property
    def objects(self) -> ObjectTable:
        """The object table of the fitted embeddings."""
        for stage in ("human_fit", "dnn_fit", "dnn_triplets"):
            if self.has(stage, OBJECT_TABLE_NAME):
                return read_object_table(self.path(stage, OBJECT_TABLE_NAME))
        raise FileNotFoundError(f"no {OBJECT_TABLE_NAME} in {self.study_dir}/human_fit or dnn_fit")

    def category_assignment(self) -> tuple[list[str], np.ndarray]:
        """Return the category names and each object's first category (-1 for none)."""
        if self.categories_path is None:
            raise FileNotFoundError("no category matrix given (inputs.categories)")
        names, membership = read_category_matrix(self.categories_path, len(self.objects))
        return names, assign_categories(membership)

    def image(self, object_index: int) -> Path | None:
        """Return the image of an object, or None without an image folder or image.

        As for ``dimalign grid`` and ``compare``, an object without a source
        is also looked up at ``<images>/<object_id>``, where ``dimalign
        extract`` object ids (relative image paths) point.
        """
        if self.images_dir is None:
            return None
        from dimalign.io.objects import find_image

        object_id = self.objects.object_ids[object_index]
        return find_image(self.images_dir, object_id, self.objects.sources[object_index] or object_id)

    @cached_property
    def decoding(self) -> Decoding:
        """The image decoding of the DNN's features, as the study's extraction recorded it.

        The manifests of the DNN stages lead to the ``features`` stage or to
        the ``dimalign extract`` folder of ``inputs.dnn_features``. Without
        an extraction the images are decoded with extract's defaults.
        """
        return self.decoding_recorded() or Decoding()

    def decoding_recorded(self) -> Decoding | None:
        """Return the image decoding that the study's extraction recorded, or None without one."""
        stages = [self.stage_dirs[name] for name in RECORDED_DECODING_STAGES if name in self.stage_dirs]
        return recorded_decoding(*stages)

    # -- fits ------------------------------------------------------------------------

    def embedding(self, side: str) -> np.ndarray:
        """Return the fitted embedding of ``side``, shape ``(n_objects, n_dims)``."""
        from dimalign.io.runs import load_embedding

        key = ("embedding", side)
        if key not in self._cache:
            self._cache[key] = load_embedding(self.path(f"{side}_fit", "embedding.npz")).embedding
        return self._cache[key]

    def history(self, side: str) -> pd.DataFrame:
        """Return the per-epoch training history of ``side``."""
        return _read_csv(
            self.path(f"{side}_fit", "history.csv"), ("epoch", "loss", "train_accuracy", "n_dims"),
            numbers=("loss", "train_accuracy"), integers=("epoch", "n_dims"),
        )

    def manifest(self, stage: str) -> dict[str, Any]:
        """Return a stage's ``manifest.json``."""
        return _read_json(self.path(stage, "manifest.json"))

    # -- evaluation and comparison ------------------------------------------------------

    def evaluation(self) -> dict[str, Any]:
        """Return ``evaluate/summary.json``."""
        return _read_json(self.path("evaluate", "summary.json"))

    def similarity(self, side: str) -> tuple[np.ndarray, np.ndarray]:
        """Return the saved similarity matrix of ``side`` and the object of each row."""
        path = self.path("compare", f"{side}_similarity.npy")
        matrix = _read_array(path, mmap=True)
        if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
            raise ValueError(
                f"{path} contains an array of shape {matrix.shape}, not a square similarity matrix; rerun the "
                "compare stage"
            )
        if self.has("compare", "similarity_objects.npy"):
            rows = _read_array(self.path("compare", "similarity_objects.npy"))
        else:
            rows = np.arange(matrix.shape[0])
        if rows.size != matrix.shape[0]:
            raise ValueError(
                f"{self.path('compare', 'similarity_objects.npy')} lists {rows.size} objects for a "
                f"{matrix.shape[0]} x {matrix.shape[1]} similarity matrix"
            )
        return np.asarray(matrix), rows

    def matching(self) -> pd.DataFrame:
        """Return ``compare/matching.csv`` (rank, method, human_dim, dnn_dim, r)."""
        key = ("matching",)
        if key not in self._cache:
            self._cache[key] = _read_csv(
                self.path("compare", "matching.csv"), ("method", "human_dim", "dnn_dim", "r"),
                numbers=("r",), integers=("human_dim", "dnn_dim"),
            )
        return self._cache[key]

    def cumulative(self) -> pd.DataFrame:
        """Return ``compare/cumulative_rsa.csv``."""
        return _read_csv(
            self.path("compare", "cumulative_rsa.csv"), ("n_dims", "r2"), numbers=("r2",), integers=("n_dims",)
        )

    def rsa(self) -> dict[str, Any]:
        """Return ``compare/rsa.json``, after checking the numbers that the figures and the summary read."""
        path = self.path("compare", "rsa.json")
        rsa = _read_json(path)
        for key in ("r", "ci_low", "ci_high", "ci_level", "n_dnn_dims_for_95_percent", "n_bootstrap",
                    "cumulative_full_r", "cumulative_full_r_ci_low", "cumulative_full_r_ci_high"):
            _json_number(rsa.get(key), path, key)
        if rsa.get("similarity_objects") != "all":
            _json_number(rsa.get("similarity_objects"), path, "similarity_objects")
        return rsa

    def relevance(self, side: str) -> pd.DataFrame:
        """Return ``compare/relevance_<side>.csv`` (dim, mean_drop, share_most_relevant)."""
        return _read_csv(
            self.path("compare", f"relevance_{side}.csv"), ("dim", "mean_drop", "share_most_relevant"),
            numbers=("mean_drop", "share_most_relevant"), integers=("dim",),
        )

    def human_embedding_given(self) -> bool:
        """Return whether the human_fit folder contains a given embedding (inputs.human_embedding), not a fit.

        Such a folder's ``val.npy`` contains every human triplet, none held out.
        """
        if not self.has("human_fit", "manifest.json"):
            return False
        return self.manifest("human_fit").get("step") == "human_embedding"

    def relevance_triplet_count(self) -> int | None:
        """Return the number of held-out human triplets the jackknife explained, or None without ``relevance_summary.json``."""
        if not self.has("compare", "relevance_summary.json"):
            return None
        path = self.path("compare", "relevance_summary.json")
        value = _json_number(_read_json(path).get("n_triplets"), path, "n_triplets")
        return None if value is None else int(value)

    def disagreements(self) -> pd.DataFrame:
        """Return ``compare/disagreements.csv``."""
        self.check_compare_wrote("disagreements.csv", "relevance_triplets", "explains no triplet", "--triplets")
        path = self.path("compare", "disagreements.csv")
        object_columns = ("object_1", "object_2", "object_3", "human_odd_one_out", "dnn_odd_one_out")
        table = _read_csv(
            path, DISAGREEMENT_COLUMNS, integers=(*object_columns, "human_dim", "dnn_dim"),
            numbers=("human_drop", "dnn_drop", "p_human", "p_dnn_of_human_choice"),
        )
        n_objects = len(self.objects)
        for column in object_columns:
            # A negative index would silently pick an object from the end of the table.
            outside = np.flatnonzero((table[column] < 0) | (table[column] >= n_objects))
            if outside.size:
                row = int(outside[0])
                raise ValueError(
                    f"{path}, line {row + 2}, column {column!r}: {table[column].iloc[row]} is invalid; use an "
                    f"object index from 0 to {n_objects - 1} (rerun the compare stage)"
                )
        return table

    def check_compare_wrote(self, name: str, key: str, effect: str, option: str) -> None:
        """Name the reason when ``compare/<name>`` is missing: a setting of 0, or an option not given.

        Args:
            name (str): The missing file.
            key (str): The count setting of the compare stage that skips the file at 0.
            effect (str): What the 0 does, for the message.
            option (str): The option of ``dimalign compare`` that writes the file.

        Raises:
            FileNotFoundError: If the file is missing and the compare stage ran
                with ``key = 0``, or ``dimalign compare`` ran without ``option``.
        """
        from dimalign.report.stage_records import read_stage_record

        if "compare" not in self.stage_dirs or self.has("compare", name):
            return
        folder = self.stage_dirs["compare"]
        record = read_stage_record(folder)
        if record is None and _manifest_step(folder / MANIFEST_NAME) == "compare":
            # Written by the dimalign compare command, not by a stage of dimalign run.
            raise FileNotFoundError(
                f"{folder / name} not found: dimalign compare writes it only with {option}; "
                "rerun the comparison with that option"
            )
        record = record or {}
        if record.get("settings", {}).get(key) == 0:
            raise FileNotFoundError(
                f"{self.stage_dirs['compare'] / name} not found: the compare stage ran with {key} = 0, "
                f"which {effect}; set compare.{key} to 'all' or a number"
            )

    def ridge_table(self) -> pd.DataFrame:
        """Return ``map/ridge_map.csv`` (dimension, alpha, cv_r2, and nested_cv_r2 from newer maps)."""
        return _read_csv(
            self.path("map", "ridge_map.csv"), ("dimension", "cv_r2"), numbers=("cv_r2",), integers=("dimension",)
        )

    def ridge_target(self) -> str:
        """Return the side (``human`` or ``dnn``) whose dimensions the map stage predicted; ``dnn`` without a record."""
        if not self.has("map", "manifest.json"):
            return "dnn"
        record = self.manifest("map").get("pipeline", {})
        return record.get("settings", {}).get("target", "dnn")

    def best_match(self, side: str, dim: int) -> dict[str, Any] | None:
        """Return the best match of a dimension on the other side, from ``matching.csv``.

        For a human dimension this is its pair in matching with replacement,
        which is its most correlated DNN dimension. For a DNN dimension it is
        its pair in the matching without replacement (greedy, else optimal).
        Where neither matching pairs it, it is the human dimension with the
        highest r among those that chose it with replacement.

        Returns:
            dict | None: ``other_side``, ``other_dim``, ``r``, ``method``; None
            when no pair names this dimension.
        """
        table = self.matching()
        column, other = ("human_dim", "dnn_dim") if side == "human" else ("dnn_dim", "human_dim")
        methods = ("with_replacement",) if side == "human" else ("greedy", "optimal", "with_replacement")
        for method in methods:
            rows = table[(table["method"] == method) & (table[column] == dim)]
            if len(rows):
                best = rows.sort_values("r", ascending=False).iloc[0]
                return {
                    "other_side": "dnn" if side == "human" else "human",
                    "other_dim": int(best[other]), "r": float(best["r"]), "method": method,
                }
        return None

    # -- labels -------------------------------------------------------------------------

    def label_table(self) -> pd.DataFrame | None:
        """Return the labels summary's ``dimensions.csv``, or None without labels."""
        if self.labels_dir is None or not (self.labels_dir / "dimensions.csv").is_file():
            return None
        key = ("labels",)
        if key not in self._cache:
            table = read_labels_table(self.labels_dir, "dimensions.csv")
            self._check_label_dimensions(table)
            self._cache[key] = table
        return self._cache[key]

    def _check_label_dimensions(self, table: pd.DataFrame) -> None:
        """Reject labels of a dimension that a fit does not have.

        Such labels come from another fit, whose dimensions are numbered
        differently, so the labels of the dimensions that do exist would be
        shown on the wrong ones.

        Raises:
            ValueError: Naming the file, its line, the embedding, the dimension and the fit's count.
        """
        for side in self.sides():
            n_dims = self.embedding(side).shape[1]
            rows = np.flatnonzero(
                (table["embedding"].astype(str) == self.labels_names[side]).to_numpy()
                & ((table["dimension"] < 0) | (table["dimension"] >= n_dims)).to_numpy()
            )
            if rows.size:
                row = int(rows[0])
                range_text = f"0 to {n_dims - 1}" if n_dims else "none"
                raise ValueError(
                    f"{self.labels_dir / 'dimensions.csv'}, line {row + 2}: embedding "
                    f"{self.labels_names[side]!r} dimension {int(table['dimension'].iloc[row])} does not exist: "
                    f"the {SIDE_NAMES[side]} fit has {n_dims} dimensions ({range_text}), so these labels come "
                    f"from another fit. Label this fit's dimensions and rerun 'dimalign labels summarize', or "
                    "give the summary of this fit"
                )

    def labels_of(self, side: str, dim: int) -> dict[str, Any] | None:
        """Return the label summary of one dimension (top labels, kind, word cloud path), or None."""
        table = self.label_table()
        if table is None:
            return None
        rows = table[(table["embedding"] == self.labels_names[side]) & (table["dimension"] == dim)]
        if not len(rows):
            return None
        row = rows.iloc[0]
        cloud = str(row.get("wordcloud", "") or "")
        cloud_path = self.labels_dir / cloud if cloud and cloud != "nan" else None
        top_labels = row.get("top_labels", "")
        top_labels = "" if pd.isna(top_labels) else str(top_labels)
        from dimalign.labeling.analysis import describe_top_labels

        try:
            top_labels = describe_top_labels(top_labels)
        except ValueError as error:
            raise ValueError(
                f"{self.labels_dir / 'dimensions.csv'}, embedding {self.labels_names[side]!r} dimension {dim}: "
                f"{error}"
            ) from None
        kind = row.get("resolved_kind", "")
        return {
            "top_labels": top_labels,
            "kind": "" if pd.isna(kind) else str(kind),
            "wordcloud": cloud_path if cloud_path is not None and cloud_path.is_file() else None,
        }

    def kind_shares(self) -> pd.DataFrame:
        """Return the share of visual, semantic, mixed ... dimensions per side (``shares.csv``)."""
        if self.labels_dir is None:
            raise FileNotFoundError("no labels summary given (--labels, or inputs.labels in the study file)")
        path = self.labels_dir / "shares.csv"
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: it is written by 'dimalign labels summarize'")
        return self._with_sides(read_labels_table(self.labels_dir, "shares.csv"))

    def choice_shares(self) -> pd.DataFrame:
        """Return the share of triplet choices driven most by each kind of dimension, per side.

        The shares come from the labels summary's ``relevance_shares.csv``.
        Without that file they are counted from the compare stage's most
        relevant dimension per triplet (``triplet_relevance.npz``) and the
        resolved kinds in ``dimensions.csv``.
        """
        if self.labels_dir is None:
            raise FileNotFoundError("no labels summary given (--labels, or inputs.labels in the study file)")
        path = self.labels_dir / "relevance_shares.csv"
        if path.is_file():
            return self._with_sides(read_labels_table(self.labels_dir, "relevance_shares.csv"))
        from dimalign.labeling.analysis import relevance_shares

        table = self.label_table()
        if table is None:
            raise FileNotFoundError(f"{self.labels_dir / 'dimensions.csv'} not found")
        if "resolved_kind" not in table.columns:
            raise ValueError(
                f"{self.labels_dir / 'dimensions.csv'} has no column resolved_kind (its columns: "
                f"{', '.join(map(str, table.columns))}), which the share of triplet choices per kind needs; "
                "rerun 'dimalign labels summarize'"
            )
        frames = []
        path = self.path("compare", "triplet_relevance.npz")
        most_relevant = _read_archive(path, [f"{side}_most_relevant" for side in SIDES])
        for side in SIDES:
            rows = table[table["embedding"] == self.labels_names[side]]
            if not len(rows):
                continue
            kinds = dict(zip(rows["dimension"].astype(int), rows["resolved_kind"].astype(str)))
            shares = relevance_shares(most_relevant[f"{side}_most_relevant"].tolist(), kinds)
            shares.insert(0, "embedding", self.labels_names[side])
            frames.append(shares)
        if not frames:
            raise FileNotFoundError(f"{self.labels_dir / 'dimensions.csv'} rates no dimension of this study")
        return self._with_sides(pd.concat(frames, ignore_index=True))

    def _with_sides(self, table: pd.DataFrame) -> pd.DataFrame:
        sides = {name: side for side, name in self.labels_names.items()}
        table = table.copy()
        table["side"] = [sides.get(name, name) for name in table["embedding"]]
        return table

    # -- headline numbers ------------------------------------------------------------------

    def headline(self) -> dict[str, Any]:
        """Collect the numbers of the report's summary table; missing results are left out.

        Raises:
            ValueError: If a saved value has the wrong type, naming the file and the key.
        """
        numbers: dict[str, Any] = {}
        for side in self.sides():
            path = self.path(f"{side}_fit", "manifest.json")
            fit = _json_object(_read_json(path).get("outputs", {}), path, "outputs")
            for key in ("n_dims", "n_epochs", "n_train"):
                numbers[f"{side}_{key}"] = _json_number(fit.get(key), path, f"outputs.{key}")
        if self.has("evaluate", "summary.json"):
            numbers.update(self._evaluation_numbers())
        if self.has("compare", "rsa.json"):
            rsa = self.rsa()
            numbers["rsa"] = {key: rsa.get(key) for key in ("r", "ci_low", "ci_high", "ci_level", "method")}
            numbers["n_dnn_dims_for_95_percent"] = rsa.get("n_dnn_dims_for_95_percent")
            numbers["share_undefined"] = undefined_share_reason(rsa)
            numbers["similarity_objects"] = rsa.get("similarity_objects")
        if self.has("map", "ridge_map.csv"):
            table = self.ridge_table()
            numbers["ridge_cv_r2_median"] = float(table["cv_r2"].median())
            # Maps written before nested cross-validation, or of too few objects, have none.
            if "nested_cv_r2" in table.columns:
                nested = pd.to_numeric(table["nested_cv_r2"], errors="coerce")
                if nested.notna().all():
                    numbers["ridge_nested_cv_r2_median"] = float(nested.median())
            numbers["ridge_target"] = self.ridge_target()
        return numbers

    def _evaluation_numbers(self) -> dict[str, Any]:
        """Collect the summary table's numbers from ``evaluate/summary.json``."""
        path = self.path("evaluate", "summary.json")
        evaluation = self.evaluation()
        numbers: dict[str, Any] = {}
        for side in SIDES:
            metrics = _json_object(evaluation.get(side, {}), path, side)
            for key in ("accuracy", "things48_r", "n_triplets"):
                if key in metrics:
                    numbers[f"{side}_{key}"] = _json_number(metrics[key], path, f"{side}.{key}")
            if "noise_ceiling" in metrics:
                numbers[f"{side}_noise_ceiling"] = {
                    name: _json_number(metrics.get(key), path, f"{side}.{key}", required=True)
                    for name, key in (("value", "noise_ceiling"), ("n_sets", "noise_ceiling_sets"),
                                      ("n_responses", "noise_ceiling_responses"))
                }
        ceiling = evaluation.get("human_noise_ceiling")
        if ceiling:
            ceiling = _json_object(ceiling, path, "human_noise_ceiling")
            numbers["human_noise_ceiling"] = {
                key: _json_number(ceiling.get(key), path, f"human_noise_ceiling.{key}", required=True)
                for key in ("value", "n_sets", "n_responses")
            }
        if self.human_embedding_given():
            numbers["human_embedding_given"] = True
        if "dnn_embedding_on_human_val_accuracy" in evaluation:
            key = "dnn_embedding_on_human_val_accuracy"
            numbers["dnn_on_human_accuracy"] = _json_number(evaluation[key], path, key)
        return numbers

    def setting_changes(self) -> list[dict[str, Any]]:
        """Return the ``--set`` changes behind the results shown (key, before, after, kind).

        Each stage folder records the changes of the run that wrote it, so a
        stage kept from an earlier run shows that run's values. The study and
        input changes come from ``pipeline.json`` and count only when the last
        run finished: a failed run's changes may never have been applied.
        """
        from dimalign.report.config import INPUTS_TABLE, STUDY_TABLE
        from dimalign.report.stage_records import read_stage_record

        changes: dict[str, dict[str, Any]] = {}
        if self.run_finished():
            for change in self.record.get("changes", []):
                if str(change.get("key", "")).split(".")[0] in (STUDY_TABLE, INPUTS_TABLE):
                    changes[change["key"]] = change
        for folder in self.stage_dirs.values():
            record = read_stage_record(folder) or {}
            for change in record.get("changes", []):
                changes[change["key"]] = change
        return list(changes.values())

    def run_finished(self) -> bool:
        """Return whether the last ``dimalign run`` finished (True for a study without a record)."""
        return not self.record or self.record.get("finished") is not None


def undefined_share_reason(rsa: dict[str, Any]) -> str | None:
    """Say why the share of the full DNN model's r² is undefined, or return None when it is defined.

    ``compare`` writes ``n_dnn_dims_for_95_percent = null`` when no prefix of
    DNN dimensions reaches 95% of the full model's r². It also writes null when
    that share means nothing, because the full model's r is not above 0 or its
    bootstrap interval contains 0 or could not be computed (the rule of
    :attr:`dimalign.analysis.matching.CumulativeRSA.share_defined`).

    Args:
        rsa (dict[str, Any]): The content of ``compare/rsa.json``. Files
            without the ``cumulative_full_r`` keys fall back to ``r``,
            ``ci_low`` and ``ci_high``.

    Returns:
        str | None: The reason, such as ``the full DNN model's r = -0.200 is not above 0``.

    Examples:
        >>> undefined_share_reason({"r": 0.5, "ci_low": 0.2, "ci_high": 0.7, "n_bootstrap": 100}) is None
        True
        >>> undefined_share_reason({"r": 0.1, "ci_low": -0.1, "ci_high": 0.3, "ci_level": 0.9, "n_bootstrap": 100})
        "the 90% interval [-0.100, 0.300] of the full DNN model's r contains 0"
    """
    r = rsa.get("cumulative_full_r", rsa.get("r"))
    low = rsa.get("cumulative_full_r_ci_low", rsa.get("ci_low"))
    high = rsa.get("cumulative_full_r_ci_high", rsa.get("ci_high"))
    if r is None:
        return "the full DNN model's r is undefined"
    if r <= 0:
        return f"the full DNN model's r = {r:.3f} is not above 0"
    # Without bootstrap samples compare has no interval, and the share is defined.
    if not rsa.get("n_bootstrap"):
        return None
    if low is None:
        return "no bootstrap sample of the full DNN model's r gave a correlation"
    if low <= 0:
        level = f"{100 * rsa['ci_level']:.0f}% " if rsa.get("ci_level") else ""
        high_text = "n/a" if high is None else f"{high:.3f}"
        return f"the {level}interval [{low:.3f}, {high_text}] of the full DNN model's r contains 0"
    return None


#: Files (stage, name) that give the report at least one figure or dimension.
#: The dimension browser draws the fitted embeddings, and the matching figure
#: needs only the comparison.
REPORT_SOURCES = (("human_fit", "embedding.npz"), ("dnn_fit", "embedding.npz"), ("compare", "matching.csv"))


def check_reportable(results: StudyResults) -> None:
    """Check that the study has something to report, before anything is written.

    Raises:
        FileNotFoundError: If none of :data:`REPORT_SOURCES` exists, naming
            the study directory and the files looked for.
    """
    if any(results.has(stage, name) for stage, name in REPORT_SOURCES):
        return
    expected = ", ".join(
        str(results.stage_dirs.get(stage, results.study_dir / stage) / name) for stage, name in REPORT_SOURCES
    )
    raise FileNotFoundError(
        f"study directory {results.study_dir} contains no results to report: expected at least one of "
        f"{expected}. Run 'dimalign run STUDY.toml -o {results.study_dir}' first, or pass the "
        "study directory that it wrote"
    )


def _manifest_step(path: Path) -> str | None:
    """Return the ``step`` that a ``manifest.json`` records, or None for a missing or unreadable one."""
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    step = manifest.get("step") if isinstance(manifest, dict) else None
    return step if isinstance(step, str) else None


__all__ = [
    "CategoryBlocks",
    "REPORT_SOURCES",
    "StudyResults",
    "assign_categories",
    "check_labels_summary",
    "check_reportable",
    "category_blocks",
    "read_category_matrix",
    "read_labels_table",
    "undefined_share_reason",
]

