"""Triplet files: reading, converting, validating, summarising, splitting and writing.

The canonical layout is an integer array of shape ``(n_triplets, 3)`` with
0-based object indices. The first two columns are the pair judged most
similar and the last column is the odd one out. Files are ``.npy`` (int32 or
int64) or text (``.txt``, ``.tsv``, ``.csv``) with whitespace, tab or comma
delimiters and an optional header line.

:func:`load_triplets` converts other layouts into the canonical one: 1-based
indices, the odd one out in another column, the odd one out given as its
position 1..3 in a separate choice column, and extra columns such as subject
ids. Every conversion is logged at INFO level.

The number of objects always comes from the caller (``n_objects``) or from an
object table, never from the largest index in the file. A file that never
mentions the last objects would otherwise shrink the object set without
notice, and a 1-based file would look like a valid 0-based file with one
object more.
"""

from __future__ import annotations

import csv
import logging
import math
import numbers
import os
import re
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from dimalign._warnings import warn
from dimalign.io.files import atomic_path, count_of, load_npy, missing_file_error, recorded_step
from dimalign.io.objects import OBJECT_TABLE_NAME, ObjectTable, read_object_table

logger = logging.getLogger(__name__)

TRIPLET_SUFFIXES = (".npy", ".txt", ".tsv", ".csv")
TEXT_DELIMITERS = {".txt": " ", ".tsv": "\t", ".csv": ","}

# Names accepted for ``delimiter`` besides the characters themselves.
_DELIMITER_NAMES = {
    "tab": "\t",
    "\\t": "\t",
    "comma": ",",
    "semicolon": ";",
    " ": None,
    "space": None,
    "whitespace": None,
}

# Delimiters that detection does not try, but that an error message suggests.
_HINTED_DELIMITERS = {";": "semicolons", "|": "vertical bars"}

# Sorted object sets are encoded as a*m^2 + b*m + c, and a judgement as
# 3 * set code + the odd one's position in the sorted set. Both fit in int64
# while 3 * m^3 < 2^63, that is for m up to about 1.45 million objects.
_MAX_OBJECTS_FOR_CODES = 1_450_000

# How many offending rows an error message lists before it only counts them.
_MAX_LISTED = 10

RowLabel = Callable[[int], str]


# --------------------------------------------------------------------------- loading


def load_triplets(
    path: str | os.PathLike,
    n_objects: int | None = None,
    *,
    one_based: bool = False,
    odd_column: int = 2,
    choice_column: int | str | None = None,
    columns: Sequence[int | str] | None = None,
    delimiter: str | None = None,
    object_table: str | os.PathLike | ObjectTable | None = None,
) -> np.ndarray:
    """Load a triplet file, convert it to the canonical layout and validate it.

    Args:
        path (str | os.PathLike): A ``.npy``, ``.txt``, ``.tsv`` or ``.csv`` file,
            or a folder holding exactly one candidate triplet file (see
            :func:`find_triplet_file`).
        n_objects (int | None): Number of objects. Indices must lie in
            ``0 .. n_objects - 1`` after conversion.
        one_based (bool): The file counts objects from 1; subtract 1.
        odd_column (int): Position (0, 1 or 2) of the odd one out among the
            three object columns. The columns are reordered so it comes last.
        choice_column (int | str | None): A file column (0-based position, or a
            header name) giving the odd one's position 1, 2 or 3 among the three
            object columns. Excludes ``odd_column``.
        columns (Sequence[int | str] | None): The three object columns, as
            0-based file column positions or header names. Needed when the file
            has extra columns such as subject ids.
        delimiter (str | None): Column delimiter of a text file: a character, or
            ``"tab"``, ``"comma"``, ``"whitespace"``. Detected from the first data
            line when None (tab, then comma, else whitespace).
        object_table (str | os.PathLike | ObjectTable | None): An object table
            (``objects.tsv`` or a one-name-per-line file such as THINGS
            ``unique_id.txt``) whose length sets ``n_objects``.

    Returns:
        np.ndarray: int64 array of shape ``(n_triplets, 3)``, 0-based, the odd
        one out in the last column.

    Raises:
        FileNotFoundError: If ``path`` does not exist or a folder contains no
            candidate file.
        ValueError: If the number of objects is unknown or not a whole
            number, or a value is not an integer, out of range, negative, or
            repeated within a row. The message names the file, line or row,
            and the value.

    Example:
        >>> import tempfile
        >>> folder = Path(tempfile.mkdtemp())
        >>> _ = (folder / "trials.csv").write_text("1,2,3,3\\n")
        >>> load_triplets(folder / "trials.csv", 3, one_based=True, choice_column=3)
        array([[0, 1, 2]])
    """
    path = Path(path)
    if path.is_dir():
        folder = path
        path = find_triplet_file(folder)
        if object_table is None and (folder / OBJECT_TABLE_NAME).is_file():
            # Also with n_objects given, so that a count that contradicts the
            # folder's own table is an error rather than a silent mismatch.
            object_table = folder / OBJECT_TABLE_NAME
            logger.info("using the object table %s for the number of objects", object_table)
    elif not path.is_file():
        raise missing_file_error(path, "triplet file")
    n_objects = _resolve_n_objects(n_objects, object_table)

    if odd_column not in (0, 1, 2):
        raise ValueError(
            f"odd_column must be 0, 1 or 2 (a position among the three object columns), "
            f"got {odd_column}"
        )
    if choice_column is not None and odd_column != 2:
        raise ValueError(
            "give either odd_column (the odd one's column) or choice_column (a column "
            "with its position 1..3), not both"
        )

    try:
        objects, choices, row_label = _read_columns(path, columns, choice_column, delimiter)
    except UnicodeDecodeError as error:
        if error.object[:2] in (b"\xff\xfe", b"\xfe\xff"):
            # Excel's "Unicode text" export writes UTF-16 with this byte order mark.
            raise ValueError(
                f"{path} is UTF-16 text, not UTF-8: it starts with a UTF-16 byte order mark; "
                "save the file as UTF-8 (in Excel: CSV UTF-8) and import it again"
            ) from error
        raise ValueError(
            f"{path} is not UTF-8 text: byte 0x{error.object[error.start]:02x} at byte offset "
            f"{error.start} cannot be decoded; save the file as UTF-8 (or plain ASCII) and "
            "import it again"
        ) from error
    triplets = _convert(objects, choices, n_objects, one_based, odd_column, str(path), row_label)
    if len(triplets) == 0:
        warn(f"{path} contains no triplets", UserWarning)
    elif not one_based and triplets.min() > 0:
        _warn_if_one_based(path, triplets, n_objects)
    logger.info("loaded %d triplets over %d objects from %s", len(triplets), n_objects, path)
    return triplets


def _warn_if_one_based(path: Path, triplets: np.ndarray, n_objects: int) -> None:
    """Warn when a 0-based load that never names object 0 looks like a 1-based file.

    A 1-based file that never names its last object loads as 0-based without
    an error. In a sparse file, the objects named carry little evidence of
    the base, because the indices shifted by one are about as likely. So the
    warning needs a file where a 0-based reading is unlikely to leave out
    object 0. That is a file with at least as many triplets as objects, or
    one that names nearly every other object (all but 1 in 100 of them).
    Other files only get an INFO line.
    """
    # Every index lies in 1 .. n_objects - 1 here. The count avoids an array
    # of n_objects flags, which a mistyped huge n_objects would not fit.
    n_named = len(sorted_unique(triplets.ravel()))
    if len(triplets) >= n_objects:
        # Sampled uniformly, a 0-based file leaves object 0 out with
        # probability (1 - 3/n)^n_triplets, below 5% here.
        warn(
            f"{path} never names object 0 in {len(triplets)} triplets; if it counts objects "
            "from 1, load it as 1-based (CLI: dimalign import-triplets --one-based)",
            UserWarning,
        )
    elif n_objects - 1 - n_named <= (n_objects - 1) // 100:
        named = f"all {n_named}" if n_named == n_objects - 1 else f"{n_named} of the {n_objects - 1}"
        warn(
            f"{path} names {named} objects from 1 to {n_objects - 1} in {len(triplets)} triplets "
            "but never object 0; if it counts objects from 1, load it as 1-based "
            "(CLI: dimalign import-triplets --one-based)",
            UserWarning,
        )
    else:
        logger.info(
            "%s never names object 0; it is read as 0-based, the default. If it counts objects "
            "from 1, load it as 1-based (CLI: dimalign import-triplets --one-based)",
            path,
        )


def is_triplet_candidate(path: Path) -> bool:
    """Check whether a path is a file that :func:`find_triplet_file` would load from its folder."""
    return (
        path.is_file()
        and path.suffix.lower() in TRIPLET_SUFFIXES
        and (path.stem == "triplets" or path.name.startswith("train"))
    )


def find_triplet_file(folder: str | os.PathLike) -> Path:
    """Find the one triplet file in a folder.

    A candidate is a file with a triplet suffix (``.npy``, ``.txt``, ``.tsv``,
    ``.csv``) whose name starts with ``train`` or whose stem is ``triplets``,
    the names that ``dimalign simulate`` and ``dimalign import-triplets`` write.
    Validation files such as ``val.npy`` are no candidates.

    Raises:
        FileNotFoundError: If the folder contains no candidate.
        ValueError: If it contains more than one (the message lists them).
    """
    folder = Path(folder)
    candidates = sorted(entry for entry in folder.iterdir() if is_triplet_candidate(entry))
    if not candidates:
        step = recorded_step(folder)
        if step in ("extract", "features"):
            raise FileNotFoundError(
                f"no triplet file in {folder}: it was written by 'dimalign {step}' and contains DNN features, "
                f"not triplets. Simulate triplets from them with 'dimalign simulate {folder} -o FOLDER' and "
                "pass FOLDER instead"
            )
        if step is not None and step not in ("simulate", "import-triplets"):
            raise FileNotFoundError(
                f"no triplet file in {folder}: it was written by 'dimalign {step}' and contains no triplets. "
                "Pass a triplet file, or a folder written by 'dimalign simulate' or 'dimalign "
                "import-triplets', instead"
            )
        raise FileNotFoundError(
            f"no triplet file in {folder}: expected one file named train*.npy/.txt/.tsv/.csv "
            "or triplets.npy/.txt/.tsv/.csv; pass the file itself instead"
        )
    if len(candidates) > 1:
        names = ", ".join(candidate.name for candidate in candidates)
        raise ValueError(
            f"{folder} contains {len(candidates)} candidate triplet files ({names}); "
            "pass the file to load instead of the folder"
        )
    logger.info("loading %s from %s, its only train* or triplets.* file", candidates[0].name, folder)
    return candidates[0]


def _read_columns(
    path: Path,
    columns: Sequence[int | str] | None,
    choice_column: int | str | None,
    delimiter: str | None,
) -> tuple[np.ndarray, np.ndarray | None, RowLabel]:
    """Read the three object columns (as in the file) and the choice column, if any."""
    suffix = path.suffix.lower()
    if suffix == ".npy":
        table, row_label = _read_npy(path)
        object_indices, choice_index = _resolve_columns(
            table.shape[1], None, columns, choice_column, path
        )
    elif suffix in (".txt", ".tsv", ".csv"):
        requested = [*(columns or []), *([] if choice_column is None else [choice_column])]
        names = [
            column for column in requested
            if isinstance(column, str) and not column.strip().isdigit()
        ]
        layout = _inspect_text(path, delimiter, names)
        row_label = layout.row_label
        if layout.empty:
            return np.zeros((0, 3), dtype=np.int64), None, row_label
        n_columns = layout.n_columns
        if columns is None and n_columns == 4 + (choice_column is not None):
            n_columns -= _empty_final_column(layout, choice_column is not None)
        try:
            object_indices, choice_index = _resolve_columns(
                n_columns, layout.header, columns, choice_column, path
            )
        except ValueError as error:
            hint = layout.delimiter_hint()
            if not hint:
                raise
            raise ValueError(f"{str(error).rstrip('.')}. {hint}") from error
        used = object_indices + ([choice_index] if choice_index is not None else [])
        table = _parse_text(path, layout, used, has_choice=choice_index is not None)
        object_indices, choice_index = [0, 1, 2], (3 if choice_index is not None else None)
    else:
        raise ValueError(
            f"unsupported triplet file {path}: use one of {', '.join(TRIPLET_SUFFIXES)}"
        )
    choices = table[:, choice_index] if choice_index is not None else None
    return table[:, object_indices], choices, row_label


def _resolve_n_objects(
    n_objects: int | None, object_table: str | os.PathLike | ObjectTable | None
) -> int:
    if n_objects is not None:
        n_objects = _whole_count(n_objects)
    table_size = None
    table_name = "the object table"
    if object_table is not None:
        if not isinstance(object_table, ObjectTable):
            table_name = str(object_table)
            object_table = read_object_table(object_table)
        table_size = len(object_table)
    if n_objects is None and table_size is None:
        raise ValueError(
            "the number of objects is unknown: pass n_objects (CLI: --n-objects N) or an "
            "object table (CLI: --objects objects.tsv); it is never guessed from the largest index"
        )
    if n_objects is not None and table_size is not None and int(n_objects) != table_size:
        raise ValueError(
            f"n_objects is {n_objects} but {table_name} lists {table_size} objects; pass "
            "one of them, or a table with one name per object"
        )
    n_objects = int(n_objects if n_objects is not None else table_size)
    if n_objects < 3:
        raise ValueError(f"a triplet needs 3 distinct objects, but n_objects is {n_objects}")
    return n_objects


def _whole_count(n_objects: Any) -> int:
    """Return ``n_objects`` as an int, or raise ValueError where ``int()`` would truncate or parse text.

    Whole floats such as ``1854.0`` pass.
    """
    whole = isinstance(n_objects, numbers.Integral) or (
        isinstance(n_objects, numbers.Real) and math.isfinite(n_objects) and float(n_objects).is_integer()
    )
    if isinstance(n_objects, bool) or not whole:
        raise ValueError(f"n_objects must be a whole number, got {n_objects!r}")
    return int(n_objects)


def _read_npy(path: Path) -> tuple[np.ndarray, RowLabel]:
    array = load_npy(
        path,
        description="a triplet array",
        advice="save the triplets with numpy.save as an integer array",
    )
    if array.ndim != 2 or array.dtype.names:
        raise ValueError(f"{path}: triplets must be a 2-D array, {_describe_shape(array)}")

    def row_label(row: int) -> str:
        return f"row {row}"

    if array.dtype.kind == "u" and array.size and array.max() > np.iinfo(np.int64).max:
        row, column = np.argwhere(array > np.iinfo(np.int64).max)[0]
        raise ValueError(
            f"{path}, row {int(row)}, column {int(column)}: value {int(array[row, column])} is far "
            "beyond any object index; check the file"
        )
    if array.dtype.kind in "iu":
        return array.astype(np.int64, copy=False), row_label
    if array.dtype.kind == "f":
        return _integral_floats(array, str(path), row_label), row_label
    raise ValueError(f"{path}: triplets must be integers, got dtype {array.dtype}")


def _describe_shape(array: np.ndarray) -> str:
    """Describe the shape of an array that is no ``(n, 3)`` table, and how to save one."""
    advice = "save one triplet per row, as an integer array of shape (n, 3)"
    if array.dtype.names:
        return (
            f"got a structured array with the fields {', '.join(array.dtype.names)}; {advice} "
            "(numpy: numpy.column_stack([triplets[name] for name in triplets.dtype.names]))"
        )
    if array.ndim == 1 and array.size % 3 == 0:
        return f"got shape {array.shape}; {advice} (numpy: triplets.reshape(-1, 3))"
    return f"got shape {array.shape}; {advice}"


# A triplet file has three object columns and at most a choice column. Wider
# arrays with many non-integer numbers are most likely an embedding or features.
_MAX_TRIPLET_COLUMNS = 4
_TRIPLET_LAYOUT = "a triplet file has three integer object indices per row (four with a choice column)"


def _integral_floats(array: np.ndarray, source: str, row_label: RowLabel) -> np.ndarray:
    """Convert a float array whose values are all whole numbers to int64."""
    # Whole numbers beyond the int64 range would wrap around in the cast. The
    # limit is a float64 scalar because numpy casts a Python float to the
    # array's dtype, which overflows float16 with a warning.
    limit = np.float64(np.iinfo(np.int64).max)
    bad = ~np.isfinite(array) | (array != np.round(array)) | (np.abs(array) >= limit)
    if bad.any():
        row, column = np.argwhere(bad)[0]
        hint = ""
        # The threshold is a quarter of the values, because features after ReLU are about half
        # zeros, while one column of response times among six columns is a sixth.
        if array.ndim == 2 and array.shape[1] > _MAX_TRIPLET_COLUMNS and bad.mean() > 0.25:
            hint = (
                f". Its {array.shape[1]} columns of many non-integer numbers look like an embedding or a "
                f"feature matrix, not triplets: {_TRIPLET_LAYOUT}"
            )
        raise ValueError(
            f"{source}, {row_label(int(row))}, column {int(column)}: value "
            f"{float(array[row, column])} is not an integer object index "
            f"({int(bad.sum())} such values in all){hint}"
        )
    logger.info("%s: converted whole-number floats to integers", source)
    return array.astype(np.int64)


def _integer_objects(array: np.ndarray, source: str, row_label: RowLabel) -> np.ndarray:
    """Convert an object array of integers to int64.

    A DataFrame of pandas' nullable ``Int64`` columns gives such an array.
    A missing value (``pd.NA``, None), a bool, a float or a string is
    rejected, naming its row and column.
    """
    # Fast path: one check per distinct type instead of one Python call per value (0.38 s -> 0.02 s for
    # 131,552 rows here); the per-value checks below run only to name a bad value.
    types = set(map(type, array.ravel().tolist()))
    if all(issubclass(kind, numbers.Integral) and not issubclass(kind, (bool, np.bool_)) for kind in types):
        try:
            return array.astype(np.int64)
        except OverflowError:
            pass
    is_integer = np.vectorize(
        lambda value: isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_)), otypes=[bool]
    )
    bad = ~is_integer(array)
    if bad.any():
        row, column = (int(index) for index in np.argwhere(bad)[0])
        raise ValueError(
            f"{source}, {row_label(row)}, column {column}: value {array[row, column]!r} is not an integer "
            f"object index ({count_of(int(bad.sum()), 'such value')} in all): pass whole numbers, and drop "
            "the rows with missing values first (DataFrame.dropna())"
        )
    int64 = np.iinfo(np.int64)
    outside = np.vectorize(lambda value: not int64.min <= value <= int64.max, otypes=[bool])(array)
    if outside.any():
        row, column = (int(index) for index in np.argwhere(outside)[0])
        raise ValueError(
            f"{source}, {row_label(row)}, column {column}: object index {array[row, column]} is beyond the int64 "
            "range, so it is no row of an object table: check that the column contains object indices"
        )
    return array.astype(np.int64)


# --------------------------------------------------------------------------- text files


def _normalize_delimiter(delimiter: str | None) -> str | None:
    """Return the delimiter character of a delimiter or its name, or None for whitespace.

    Raises:
        ValueError: If ``delimiter`` is empty or longer than one character
            without being a known name.
    """
    if delimiter is None:
        return None
    normalized = _DELIMITER_NAMES.get(delimiter.lower(), delimiter)
    if normalized is not None and len(normalized) != 1:
        names = ", ".join(name for name in _DELIMITER_NAMES if name.strip())
        raise ValueError(
            f"delimiter {delimiter!r} is invalid: use one character such as ';', or one of the "
            f"names {names} (CLI: --delimiter)"
        )
    return normalized


def _split(line: str, delimiter: str | None) -> list[str]:
    if delimiter is None:
        return line.split()
    # The csv module removes the standard quoting that R and spreadsheet
    # programs write ("subj","i" or "Smith, J."), keeping a quoted delimiter.
    fields = next(csv.reader([line], delimiter=delimiter, skipinitialspace=True), [])
    return [field.strip() for field in fields]


def _is_number(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True


@dataclass
class _TextLayout:
    """Layout of a text triplet file, detected from its first content lines."""

    path: Path
    delimiter: str | None
    header: list[str] | None
    n_columns: int
    skip_lines: int  # lines before the first data line, header included
    empty: bool = False  # no content line at all
    first_line: str = ""  # the first content line, for the delimiter hint
    detected: bool = True  # the delimiter was detected, not given by the caller
    # The first line of each data record, once the slow path has parsed them.
    record_lines: list[int] | None = None
    # Every record has n_columns fields, the final one empty (a delimiter at
    # the end of each line), so the fast path may read the others alone.
    empty_final_column: bool = False
    # The columns before the empty final one, once numpy has read them while checking it.
    leading_columns: np.ndarray | None = None
    # The line whose number of fields n_columns is, for the error about another number.
    columns_source: str = "the first line"

    def delimiter_hint(self) -> str:
        """Suggest a delimiter when detection left the first line as one column."""
        if not self.detected or self.n_columns != 1:
            return ""
        for character, name in _HINTED_DELIMITERS.items():
            if character in self.first_line:
                return (
                    f"The first line {self.first_line!r} reads as one column, because only tab, "
                    f"comma and whitespace are detected. If {name} separate the columns, pass "
                    f"delimiter={character!r} (CLI: --delimiter '{character}')"
                )
        return ""

    def is_data(self, line_number: int, line: str) -> bool:
        stripped = line.strip()
        return line_number > self.skip_lines and bool(stripped) and not stripped.startswith("#")

    def row_label(self, row: int) -> str:
        """Return ``"line N"`` for data row ``row`` (0-based), reading the file again if needed."""
        if self.record_lines is not None and row < len(self.record_lines):
            return f"line {self.record_lines[row]}"
        seen = -1
        with open(self.path, encoding="utf-8-sig") as handle:
            for line_number, line in enumerate(handle, start=1):
                if self.is_data(line_number, line):
                    seen += 1
                    if seen == row:
                        return f"line {line_number}"
        return f"row {row}"


def _inspect_text(path: Path, delimiter: str | None, names: Sequence[str] = ()) -> _TextLayout:
    """Detect the delimiter and a header line from the first two content lines.

    Blank lines and lines starting with ``#`` are skipped everywhere. The first
    content line is a header when every field that is a number on the next
    content line is not a number on it (and there is at least one such
    field). So a column of subject names is no header, and neither is a first
    data row with one bad value such as ``0,1,NA``: that row fails to parse
    and the error names it. In a file of one content line, the line is a
    header when none of its fields is a number. The first content line is
    also a header when it contains every column name in ``names`` (the
    columns the caller chose by name), as above rows that have no number,
    such as PsychoPy's instruction rows. A UTF-8 byte-order mark, as
    spreadsheet programs write, is skipped. A first line such as ``sep=;``,
    which Excel reads and writes to name the delimiter, sets the delimiter and
    is skipped.
    """
    content: list[tuple[int, str]] = []
    with open(path, encoding="utf-8-sig") as handle:
        for line_number, line in enumerate(handle, start=1):
            stripped = line.strip()
            declared = _EXCEL_SEPARATOR.fullmatch(line.rstrip("\r\n"))
            if line_number == 1 and declared:
                delimiter = _declared_delimiter(path, declared.group(1), delimiter)
                continue
            if stripped and not stripped.startswith("#"):
                content.append((line_number, line))
                if len(content) == 2:
                    break
    if not content:
        return _TextLayout(path, None, None, 0, 0, empty=True)

    line_number, raw_line = content[0]
    if "\x00" in raw_line:
        raise ValueError(
            f"{path}, line {line_number}: contains NUL bytes, as UTF-16 text without a byte "
            "order mark does; save the file as UTF-8 (in Excel: CSV UTF-8) and import it again"
        )
    detected = delimiter is None
    if delimiter is None:
        # A candidate counts only outside a comment, and a '#' inside quotes starts none.
        for candidate in ("\t", ","):
            if candidate in _strip_comment(raw_line, candidate)[0]:
                delimiter = candidate
                break
        if delimiter == "\t" and any(_mixes_tabs_and_spaces(text) for _, text in content):
            delimiter = None
            logger.info("%s: tabs and spaces both separate numbers, so any whitespace is a delimiter", path)
        logger.debug("%s: detected delimiter %r", path, delimiter or "whitespace")
    else:
        delimiter = _normalize_delimiter(delimiter)
    line = _strip_comment(raw_line, delimiter)[0]
    first = [_is_number(token) for token in _split(line, delimiter)]
    if len(content) == 2:
        second_line = _strip_comment(content[1][1], delimiter)[0]
        if detected:
            _check_same_delimiter(path, (line_number, line), (content[1][0], second_line), delimiter)
        second = [_is_number(token) for token in _split(second_line, delimiter)]
        numeric_below = [a for a, b in zip(first, second) if b]
        is_header = bool(numeric_below) and not any(numeric_below)
    else:
        is_header = not any(first)
    if not is_header and names and set(names) <= set(_split(line, delimiter)):
        is_header = True
        logger.info("%s: line %d contains the column names %s", path, line_number, ", ".join(names))
    # Comments or blank lines above the first content line would make "the first line" name another line.
    columns_source = "the first line" if line_number == 1 else f"line {line_number}"
    if not is_header:
        return _TextLayout(
            path, delimiter, None, len(first), line_number - 1, first_line=line, detected=detected,
            columns_source=columns_source,
        )
    header = _split(line, delimiter)
    logger.info("%s: line %d is a header: %s", path, line_number, ", ".join(header))
    if len(content) == 2 and delimiter is not None:
        header, columns_source = _match_trailing_delimiter(
            path, header, content[1][0], second_line, delimiter, columns_source
        )
    return _TextLayout(
        path, delimiter, header, len(header), line_number, first_line=line, detected=detected,
        columns_source=columns_source,
    )


def _mixes_tabs_and_spaces(line: str) -> bool:
    """Return whether a line of numbers only separates some of them by spaces and others by tabs."""
    text = _strip_comment(line, None)[0].strip()
    fields = text.split("\t")
    return len(fields) > 1 and any(len(field.split()) > 1 for field in fields) and all(
        _is_number(token) for token in text.split()
    )


def _match_trailing_delimiter(
    path: Path, header: list[str], row_number: int, row: str, delimiter: str, header_source: str
) -> tuple[list[str], str]:
    """Match a header to the first data row where only one of them ends with a delimiter.

    A header that ends with a delimiter above rows that do not loses its
    empty final name. A header without one above a row that ends with one
    gets an empty final name, so that the empty final column is checked and
    left out as for a delimiter at the end of every line.

    Args:
        header_source (str): How error messages name the header line, such
            as ``"the first line"``.

    Returns:
        tuple[list[str], str]: The header names, and the line whose number of
        fields they match, for error messages.
    """
    fields = _split(row, delimiter)
    if header[-1] == "" and len(fields) == len(header) - 1:
        logger.info(
            "%s: the header ends with a delimiter and the first row does not, so its empty final "
            "name is left out", path,
        )
        return header[:-1], f"line {row_number}"
    if header[-1] != "" and len(fields) == len(header) + 1 and fields[-1] == "":
        return [*header, ""], f"line {row_number}"
    return header, header_source


def _check_same_delimiter(
    path: Path, first: tuple[int, str], second: tuple[int, str], delimiter: str | None
) -> None:
    """Raise ``ValueError`` if the second content line uses another delimiter than the first.

    A header written by one program above rows written by another (``i,j,k``
    above ``0;1;2``) would otherwise be read as data, and the error would
    name the header's first field instead of the delimiters. ``first`` and
    ``second`` are the line numbers and texts of the first two content lines.
    """
    (first_number, first_line), (second_number, second_line) = first, second
    n_fields = len(_split(first_line, delimiter))
    if len(_split(second_line, delimiter)) == n_fields:
        return
    for candidate in ("\t", ",", ";", "|"):
        if candidate != delimiter and candidate in second_line and candidate not in first_line:
            raise ValueError(
                f"{path}: line {first_number} separates its fields by "
                f"{_delimiter_name(delimiter)}, but line {second_number} by "
                f"{_delimiter_name(candidate)}. Use one delimiter in the whole file, then import "
                "it again"
            )


def _delimiter_name(delimiter: str | None) -> str:
    if delimiter is None:
        return "whitespace"
    return "tab" if delimiter == "\t" else repr(delimiter)


# Excel's first line naming the delimiter, such as ``sep=;``.
_EXCEL_SEPARATOR = re.compile(r"sep=(.)")


def _declared_delimiter(path: Path, declared: str, delimiter: str | None) -> str:
    """Return the delimiter of a ``sep=`` line, checked against the caller's ``delimiter``."""
    if delimiter is not None and _normalize_delimiter(delimiter) != _normalize_delimiter(declared):
        raise ValueError(
            f"{path}, line 1: 'sep={declared}' sets the delimiter {declared!r}, but the delimiter "
            f"{delimiter!r} was given; leave out the delimiter (CLI: --delimiter) to use "
            f"{declared!r}"
        )
    logger.info("%s: line 1 'sep=%s' sets the delimiter %r", path, declared, declared)
    return declared


def _load_integers(path: Path, layout: _TextLayout, **options: Any) -> np.ndarray:
    """Read the data lines of a text file with numpy's C parser as int64, shape ``(n_lines, n_fields)``.

    ``options`` go to ``np.loadtxt`` (``usecols``, ``converters``).

    Raises:
        ValueError: If a field is not an integer or a line has another number of fields.
    """
    with warnings.catch_warnings():
        # A header without data rows is an empty file, not worth a warning.
        warnings.filterwarnings("ignore", message=".*no data", category=UserWarning)
        return np.loadtxt(
            path, dtype=np.int64, delimiter=layout.delimiter, skiprows=layout.skip_lines, comments="#",
            ndmin=2, encoding="utf-8-sig", **options,
        )


def _parse_text(
    path: Path, layout: _TextLayout, used: list[int], has_choice: bool = False
) -> np.ndarray:
    """Read the columns ``used`` of a text file as int64, shape ``(n_rows, len(used))``.

    The first three of ``used`` are object columns. A fourth is the choice
    column when ``has_choice`` is set. The roles only shape the error messages.
    """
    if layout.empty:
        return np.zeros((0, len(used)), dtype=np.int64)
    if layout.leading_columns is not None:
        return layout.leading_columns[:, used]

    # Fast path: numpy's C parser for files of integers only. It reads every
    # column, so that it also rejects lines with a different number of columns.
    n_read = layout.n_columns - layout.empty_final_column
    try:
        # The final column is empty on every line, which int64 cannot parse.
        table = _load_integers(path, layout, usecols=range(n_read) if layout.empty_final_column else None)
        if table.shape[1] == n_read or len(table) == 0:
            return table.reshape(-1, n_read)[:, used]
    except ValueError:
        pass

    # A whitespace delimiter, such as a tab, at the end of a line is removed
    # with the line's final whitespace, but numpy reads one more empty column.
    if layout.delimiter is not None and layout.delimiter.isspace() and not layout.empty_final_column:
        table = _read_before_empty_column(layout, layout.n_columns + 1)
        if table is not None:
            return table[:, used]

    # Slow path: parse record by record so that an error can name the line.
    rows: list[list[int]] = []
    record_lines: list[int] = []
    n_converted = 0
    with open(path, encoding="utf-8-sig") as handle:
        records = _records(handle, layout)
        for line_number, last_line, tokens in records:
            if len(tokens) != layout.n_columns and _spaces_replace_tabs(layout, tokens):
                logger.info(
                    "%s: line %d separates numbers by spaces, but earlier lines by tabs, so any "
                    "whitespace is a delimiter", path, line_number,
                )
                return _parse_text(path, replace(layout, delimiter=None), used, has_choice)
            if len(tokens) != layout.n_columns:
                where, cause = f"line {line_number}", ""
                if last_line != line_number:
                    where = f"lines {line_number} to {last_line}"
                    cause = (
                        ", because a quoted field spans these lines; check for a quote that "
                        "is not closed"
                    )
                advice = _trailing_delimiter_mismatch(layout, tokens, line_number) or f"{cause}; check the delimiter"
                raise ValueError(
                    f"{path}, {where}: {len(tokens)} columns, expected {layout.n_columns} like "
                    f"{layout.columns_source}{advice}"
                )
            record_lines.append(line_number)
            values = []
            for position, column in enumerate(used):
                value, converted = _parse_integer(tokens[column])
                if value is None:
                    role = "choice" if has_choice and position == 3 else "object"
                    raise ValueError(
                        f"{path}, line {line_number}, column {column}: "
                        + _describe_bad_token(tokens[column], role, column, layout.header)
                        + _header_hint(layout, records, len(record_lines), tokens, used)
                    )
                n_converted += converted
                values.append(value)
            rows.append(values)
    layout.record_lines = record_lines
    if n_converted:
        logger.info(
            "%s: converted %d whole-number floats (such as 3.0) to integers", path, n_converted
        )
    if not rows:
        return np.zeros((0, len(used)), dtype=np.int64)
    return np.asarray(rows, dtype=np.int64)


def _spaces_replace_tabs(layout: _TextLayout, tokens: list[str]) -> bool:
    """Return whether a line with another number of tab-separated fields reads as the same numbers with whitespace.

    This holds only for a detected tab delimiter whose first content line has
    no field with spaces, so a tab-separated column of names such as
    ``subject a`` keeps the tab delimiter.
    """
    if not layout.detected or layout.delimiter != "\t":
        return False
    if len(layout.first_line.split()) != layout.n_columns:
        return False
    words = [word for token in tokens for word in token.split()]
    return len(words) == layout.n_columns and all(_is_number(word) for word in words)


def _trailing_delimiter_mismatch(layout: _TextLayout, tokens: list[str], line_number: int) -> str | None:
    """Describe a record that differs from the line of ``columns_source`` only by a delimiter at its end, or return None."""
    if layout.delimiter is None or layout.delimiter.isspace() or not tokens:
        return None
    reference = layout.header if layout.header is not None else _split(layout.first_line, layout.delimiter)
    reference_has_one = bool(reference) and reference[-1] == ""
    separator = "comma" if layout.delimiter == "," else repr(layout.delimiter)
    source = layout.columns_source
    if reference_has_one and len(tokens) == layout.n_columns - 1 and tokens[-1] != "":
        order = f"{source} ends with a {separator} and line {line_number} does not"
    elif not reference_has_one and len(tokens) == layout.n_columns + 1 and tokens[-1] == "":
        order = f"line {line_number} ends with a {separator} and {source} does not"
    else:
        return None
    return f", because {order}: end every line with a {separator}, or none"


def _empty_final_column(layout: _TextLayout, has_choice: bool) -> bool:
    """Return whether the final column of a delimited file is empty on every data line.

    A delimiter at the end of every line, as spreadsheets and some scripts
    write it, adds such a column. It contains no data, so leaving it out loses
    nothing. A column with a header name is no such column. ``has_choice``
    only shapes the error message.

    Raises:
        ValueError: If the final column is empty on some lines but not on
            others. The message names the first line of each kind.
    """
    if layout.delimiter is None or (layout.header is not None and layout.header[-1] != ""):
        return False
    last = layout.n_columns - 1
    leading_columns = _read_before_empty_column(layout, layout.n_columns)
    if leading_columns is not None:
        logger.info(
            "%s: the final column %d is empty on every line (each line ends with a delimiter), "
            "so it is left out", layout.path, last,
        )
        layout.empty_final_column = True
        layout.leading_columns = leading_columns
        return True
    first_empty = first_filled = None
    regular = True
    n_records = 0
    with open(layout.path, encoding="utf-8-sig") as handle:
        for line_number, _, tokens in _records(handle, layout):
            n_records += 1
            # Lines with another number of columns get their own error when parsed.
            if len(tokens) != layout.n_columns:
                regular = False
                continue
            if tokens[last] == "":
                first_empty = first_empty or line_number
            elif first_filled is None:
                first_filled = (line_number, tokens[last])
            if first_empty and first_filled:
                break
    if n_records == 0:
        # A header such as "i,j,k," above no rows: the caller reports the file as empty.
        return True
    if first_empty is None:
        return False
    if first_filled is not None:
        filled_line, value = first_filled
        chosen = "a, b, c" if has_choice else "0, 1, 2"
        raise ValueError(
            f"{layout.path}: the final column {last} is empty on line {first_empty} but contains "
            f"{value!r} on line {filled_line}, so it is a column of data, not a delimiter at the "
            f"end of each line. Choose the three object columns with columns=[{chosen}] "
            f"(CLI: dimalign import-triplets --columns {chosen.replace(', ', ',')}), or fill in "
            "the missing values"
        )
    logger.info(
        "%s: the final column %d is empty on every line (each line ends with a delimiter), "
        "so it is left out", layout.path, last,
    )
    layout.empty_final_column = regular
    return True


def _empty_field(text: str) -> int:
    """Convert a field of an empty final column for numpy, raising ``ValueError`` for one with a value."""
    if text.strip():
        raise ValueError(f"the final column contains {text!r}")
    return 0


def _read_before_empty_column(layout: _TextLayout, n_fields: int) -> np.ndarray | None:
    """Read the integer columns of a file whose lines all have ``n_fields`` fields, the final one empty.

    numpy's C parser checks the number of fields on every line, and a
    converter checks that the final field is empty or whitespace. One pass
    thus confirms what the record scan of :func:`_records` would, in a
    fraction of its time.

    Returns:
        np.ndarray | None: The first ``n_fields - 1`` columns as int64. None
        for any other file and for one without data lines, which the record
        scan then checks, naming the lines in its errors.
    """
    # A space delimiter merges with the spaces that skipinitialspace skips in the record scan.
    if layout.delimiter is None or layout.delimiter == " " or n_fields < 2:
        return None
    try:
        table = _load_integers(layout.path, layout, converters={n_fields - 1: _empty_field})
    except ValueError:
        return None
    if table.shape[1] != n_fields or len(table) == 0:
        return None
    return table[:, :-1]


def _header_hint(
    layout: _TextLayout,
    records: Iterator[tuple[int, int, list[str]]],
    n_records: int,
    tokens: list[str],
    used: list[int],
) -> str:
    """Suggest naming the columns when the first record, read as data, looks like a header.

    The header rule needs numbers on the line below; rows with empty trial
    columns (PsychoPy's instruction rows) have none. The first record looks
    like a header when it has no number and a later record has integers in
    all ``used`` columns. ``records`` yields the records after the first.
    """
    if layout.header is not None or n_records != 1 or any(map(_is_number, tokens)):
        return ""
    try:
        later_data = any(
            len(fields) == layout.n_columns
            and all(_parse_integer(fields[column])[0] is not None for column in used)
            for _, _, fields in records
        )
    except ValueError:  # a quote open at the end of the file; the first error comes first
        later_data = False
    if not later_data:
        return ""
    names = [tokens[column] for column in used[:3]]
    options = f"columns={names!r}"
    cli = f"--columns {','.join(names)}"
    if len(used) == 4:
        options += f", choice_column={tokens[used[3]]!r}"
        cli += f" --choice-column {tokens[used[3]]}"
    return f". If this line is a header, choose the columns by name: {options} (CLI: {cli})"


def _records(handle, layout: _TextLayout) -> Iterator[tuple[int, int, list[str]]]:
    """Yield the first line number, the last line number and the fields of each data record.

    A record is one line, except in a delimited file where a quoted field
    contains line breaks (free-text answers in MTurk batch results, say), as
    standard CSV allows. A ``#`` outside quotes starts a comment.

    Raises:
        ValueError: If a quote is still open at the end of the file, which
            would join all rows below it into one field.
    """
    if layout.delimiter is None:
        for line_number, line in enumerate(handle, start=1):
            if layout.is_data(line_number, line):
                yield line_number, line_number, _split(_strip_comment(line, None)[0], None)
        return

    consumed: list[int] = []
    quote_opened = 0  # line of a quoted field that is still open, or 0

    def data_lines() -> Iterator[str]:
        nonlocal quote_opened
        for line_number, line in enumerate(handle, start=1):
            # A blank or '#' line inside a quoted field is skipped like any other.
            if layout.is_data(line_number, line):
                consumed.append(line_number)
                text, open_after = _strip_comment(line, layout.delimiter, bool(quote_opened))
                quote_opened = (quote_opened or line_number) if open_after else 0
                yield text + "\n"

    # The reader pulls only the lines of the record it returns, so the line
    # numbers consumed since the previous record are this record's.
    reader = csv.reader(data_lines(), delimiter=layout.delimiter, skipinitialspace=True)
    n_before = 0
    for fields in reader:
        if quote_opened:
            raise ValueError(
                f"{layout.path}, line {quote_opened}: a quote opened here is not closed, so the "
                "rows below it would be read as one field; close or remove the quote"
            )
        yield consumed[n_before], consumed[-1], [field.strip() for field in fields]
        n_before = len(consumed)


def _strip_comment(line: str, delimiter: str | None, in_quotes: bool = False) -> tuple[str, bool]:
    """Remove the line break and a ``#`` comment from a line.

    In a delimited line, a ``#`` inside a quoted field is text. Quotes follow
    the csv module's rules with ``skipinitialspace``: a quote opens a field
    only at the field's start, and ``""`` inside quotes is a quote.

    Args:
        line (str): One line of the file.
        delimiter (str | None): The delimiter, or None for whitespace, where
            quotes have no meaning.
        in_quotes (bool): The line continues a quoted field of the line above.

    Returns:
        tuple[str, bool]: The text, and whether a quoted field is still open
        at its end.
    """
    text = line.rstrip("\r\n")
    if delimiter is None or '"' not in text:
        if in_quotes:
            return text, True
        return text.split("#", 1)[0].rstrip(), False

    state = "quoted" if in_quotes else "start"
    for position, character in enumerate(text):
        if state == "quoted":
            if character == '"':
                state = "quote in quoted"  # closes the field, or starts an escaped ""
            continue
        if state == "quote in quoted" and character == '"':
            state = "quoted"
            continue
        if character == "#":
            return text[:position].rstrip(), False
        if character == delimiter:
            state = "start"
        elif state == "start" and character == '"':
            state = "quoted"
        elif state == "start" and character == " ":
            pass
        else:
            state = "unquoted"
    if state == "quoted":
        return text, True
    return text.rstrip(), False


# Spellings of an empty cell in exports of R, pandas, jsPsych, PsychoPy and
# spreadsheets, compared in lower case.
_MISSING_TOKENS = {"", "na", "n/a", "nan", "null", "none"}


def _describe_bad_token(token: str, role: str, column: int, header: list[str] | None) -> str:
    """Describe a value of an object or choice column that is no integer, and the fix."""
    name = f"the {role} column {header[column]!r}" if header else f"the {role} column"
    if role == "choice":
        message = f"value {token!r} is not an integer choice (1, 2 or 3)"
    else:
        message = f"value {token!r} is not an integer object index"
    if token.strip().lower() in _MISSING_TOKENS:
        return (
            f"{message}: it is a missing value in {name}. Triplet files cannot contain missing "
            "values: remove the rows of trials without a complete answer from the file, "
            "then import it again"
        )
    if re.fullmatch(r"[+-]?\d+,\d+", token.strip()):
        return (
            f"{message}: it is written with a decimal comma, as spreadsheets in some locales "
            "write numbers. Format the column as whole numbers without decimals (or with a "
            "decimal point) and export the file again"
        )
    if role == "object" and not _is_number(token):
        return (
            f"{message}. Object columns hold indices (the 0-based row numbers of the object "
            "table, or 1-based with one_based=True), not object names: replace each name by "
            "its row number, or choose other object columns (CLI: --columns)"
        )
    return f"{message}; triplet files contain integer indices only"


def _parse_integer(token: str) -> tuple[int | None, int]:
    """Return the integer value of a token (or None) and 1 if it was written as a float.

    Python's own spellings such as ``1_000`` are no integers here, and neither
    is a value beyond the int64 range.
    """
    if "_" in token:
        return None, 0
    try:
        value, converted = int(token), 0
    except ValueError:
        try:
            number = float(token)
        except ValueError:
            return None, 0
        if not (np.isfinite(number) and number == round(number)):
            return None, 0
        value, converted = int(number), 1
    if abs(value) > _INT64_MAX:
        return None, 0
    return value, converted


# Looked up once, because np.iinfo builds a new object on every call, which
# took half of the time of _parse_integer on a 500,000-row file.
_INT64_MAX = int(np.iinfo(np.int64).max)


# --------------------------------------------------------------------------- conversion


def _resolve_columns(
    n_columns: int,
    header: list[str] | None,
    columns: Sequence[int | str] | None,
    choice_column: int | str | None,
    path: Path,
) -> tuple[list[int], int | None]:
    """Return the file positions of the three object columns and of the choice column."""

    def position(column: int | str, role: str) -> int:
        if isinstance(column, str) and not column.strip().isdigit():
            if header is None:
                raise ValueError(
                    f"{path} has no header line, so {role} {column!r} must be a column number"
                )
            if column not in header:
                raise ValueError(
                    f"{path}: no column named {column!r} (header: {', '.join(header)})"
                )
            return header.index(column)
        index = int(column)
        if not 0 <= index < n_columns:
            raise ValueError(
                f"{path} has {n_columns} columns (numbered from 0), so {role} {index} "
                "does not exist"
            )
        return index

    choice_index = None if choice_column is None else position(choice_column, "choice column")
    if columns is not None:
        if len(columns) != 3:
            raise ValueError(f"columns must name exactly three object columns, got {list(columns)}")
        object_indices = [position(column, "column") for column in columns]
    else:
        object_indices = [index for index in range(n_columns) if index != choice_index]
        if len(object_indices) != 3:
            names = f" (header: {', '.join(map(repr, header))})" if header else ""
            expected = "3" if choice_index is None else "4 with the choice column"
            hint = (
                ""
                if choice_index is not None
                else " If a column gives the odd one's position 1, 2 or 3, name it with "
                "choice_column (CLI: --choice-column)."
            )
            matrix_hint = ""
            # Raw trial files without a header have a few extra columns (subject, time), not ten.
            if header is None and n_columns >= 10:
                matrix_hint = (
                    f" {n_columns} columns without a header look like an embedding or a feature matrix, "
                    f"not triplets: {_TRIPLET_LAYOUT}. Otherwise, choose"
                )
            choose = matrix_hint or " Choose"
            raise ValueError(
                f"{path} has {count_of(n_columns, 'column')}{names}, "
                f"not {expected}.{choose} the three object columns by position or header name "
                f"with columns=[a, b, c] (CLI: dimalign import-triplets --columns a,b,c).{hint}"
            )
    if len(set(object_indices)) != 3:
        raise ValueError(
            f"{path}: the object columns {object_indices} repeat a column; name three different "
            "columns (CLI: --columns a,b,c)"
        )
    if choice_index in object_indices:
        raise ValueError(
            f"{path}: the choice column {choice_index} is also an object column (object columns "
            f"{object_indices}); name a choice column apart from the three object columns "
            "(CLI: --choice-column)"
        )
    if n_columns != 3 + (choice_index is not None) or object_indices != sorted(object_indices):
        logger.info(
            "%s: took the object columns %s of %d columns",
            path, ", ".join(str(index) for index in object_indices), n_columns,
        )
    return object_indices, choice_index


def _convert(
    objects: np.ndarray,
    choices: np.ndarray | None,
    n_objects: int,
    one_based: bool,
    odd_column: int,
    source: str,
    row_label: RowLabel,
) -> np.ndarray:
    base = 1 if one_based else 0
    _check_range(objects, n_objects, base, source, row_label)
    triplets = objects - base if one_based else objects.copy()
    if one_based:
        logger.info("%s: converted 1-based indices to 0-based", source)

    if choices is not None:
        bad = ~np.isin(choices, (1, 2, 3))
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise ValueError(
                f"{source}, {row_label(row)}: choice {int(choices[row])} is not 1, 2 or 3; "
                "the choice column gives the odd one's position among the three object "
                f"columns ({int(bad.sum())} invalid choices in all)"
                + _choice_layout_hint(objects, choices)
            )
        triplets = np.take_along_axis(triplets, _ODD_LAST[choices - 1], axis=1)
        logger.info(
            "%s: moved the odd one out named by the choice column to the last column", source
        )
    elif odd_column != 2:
        triplets = triplets[:, _ODD_LAST[odd_column]]
        logger.info(
            "%s: moved the odd one out from column %d to the last column", source, odd_column
        )

    _check_distinct(triplets, source, row_label)
    return np.ascontiguousarray(triplets, dtype=np.int64)


def _choice_layout_hint(objects: np.ndarray, choices: np.ndarray) -> str:
    """Name the layout of a choice column without positions 1..3, where it is clear.

    Args:
        objects (np.ndarray): The object columns as in the file, shape ``(n, 3)``.
        choices (np.ndarray): The choice column as in the file, shape ``(n,)``.
    """
    if np.isin(choices, (0, 1, 2)).all():
        return (
            ". But every choice is 0, 1 or 2, so the column seems to count the positions "
            "from 0 (as jsPsych numbers its buttons): add 1 to the column first"
        )
    if (objects == choices[:, None]).any(axis=1).all():
        return (
            ". But every choice is one of the row's three objects, so the column seems to name "
            "the odd object itself: replace it by that object's position 1, 2 or 3 among the "
            "object columns first"
        )
    return ""


# Row ``p`` reorders a triplet so that the item at position p comes last and
# the other two keep their order.
_ODD_LAST = np.array([[1, 2, 0], [0, 2, 1], [0, 1, 2]])


# --------------------------------------------------------------------------- validation


def validate_triplets(
    triplets: np.ndarray, n_objects: int | None, source: str = "triplets"
) -> np.ndarray:
    """Check a canonical triplet array and return it as int64.

    Args:
        triplets (np.ndarray): Array of shape ``(n_triplets, 3)``. Floats are
            accepted when every value is a whole number, and object arrays
            (such as a DataFrame of nullable ``Int64`` columns gives) when
            every value is an integer.
        n_objects (int | None): Number of objects; indices must lie in
            ``0 .. n_objects - 1``. None checks only that they are non-negative.
        source (str): Name used in error messages (a file name, for instance).

    Returns:
        np.ndarray: The triplets as a C-contiguous int64 array.

    Raises:
        ValueError: If the array is not ``(n, 3)``, contains a non-integer, a
            negative index, an index ``>= n_objects``, or a row that repeats an
            object. The message names the row and value.

    Example:
        >>> validate_triplets(np.array([[0, 1, 2]]), 3)
        array([[0, 1, 2]])
    """
    array = np.asarray(triplets)
    if array.ndim != 2 or array.shape[1] != 3:
        raise ValueError(f"{source}: triplets must have shape (n, 3), got {array.shape}")

    def row_label(row: int) -> str:
        return f"row {row}"

    if array.dtype.kind == "f":
        array = _integral_floats(array, source, row_label)
    elif array.dtype.kind == "O":
        array = _integer_objects(array, source, row_label)
    elif array.dtype.kind not in "iu":
        raise ValueError(f"{source}: triplets must be integers, got dtype {array.dtype}")
    if n_objects is None:
        # Without a bound, only int64 limits the indices. An initial value of
        # -1 would not fit an unsigned dtype, so empty arrays are handled apart.
        n_objects = int(array.max()) + 1 if array.size else 0
        if array.dtype.kind == "u":
            n_objects = min(n_objects, int(np.iinfo(np.int64).max))
    _check_range(array, int(n_objects), 0, source, row_label)
    _check_distinct(array, source, row_label)
    return np.ascontiguousarray(array, dtype=np.int64)


def _check_range(
    objects: np.ndarray, n_objects: int, base: int, source: str, row_label: RowLabel
) -> None:
    if objects.size == 0:
        return
    low, high = int(objects.min()), int(objects.max())
    if low >= base and high < n_objects + base:
        return

    kind = "1-based" if base else "0-based"
    if low < 0:
        row, column = (int(i) for i in np.argwhere(objects < 0)[0])
        raise ValueError(
            f"{source}, {row_label(row)}: negative object index {int(objects[row, column])}; "
            "indices count objects from 0 (or from 1 with one_based=True, "
            "CLI: dimalign import-triplets --one-based)"
        )
    if low < base:
        row = int(np.argwhere(objects < base)[0][0])
        raise ValueError(
            f"{source}, {row_label(row)}: index 0 in a 1-based load; the file looks 0-based, "
            "so load it without one_based=True (CLI: dimalign import-triplets without --one-based)"
        )
    bad = objects >= n_objects + base
    row, column = (int(i) for i in np.argwhere(bad)[0])
    message = (
        f"{source}, {row_label(row)}: object index {int(objects[row, column])} is out of range "
        f"for {n_objects} objects ({kind} indices run from {base} to {n_objects - 1 + base}); "
        f"{int(bad.any(axis=1).sum())} rows have such indices"
    )
    if base == 0 and low == 1 and high == n_objects:
        message += (
            f". The indices run from 1 to {n_objects}, so the file looks 1-based: "
            "load it with one_based=True (CLI: dimalign import-triplets --one-based)"
        )
    else:
        message += "; check n_objects (CLI: --n-objects or --objects)"
    raise ValueError(message)


def _check_distinct(triplets: np.ndarray, source: str, row_label: RowLabel) -> None:
    repeated = (
        (triplets[:, 0] == triplets[:, 1])
        | (triplets[:, 0] == triplets[:, 2])
        | (triplets[:, 1] == triplets[:, 2])
    )
    if repeated.any():
        rows = np.flatnonzero(repeated)
        listed = "; ".join(
            f"{row_label(int(row))}: {triplets[row].tolist()}" for row in rows[:3]
        )
        raise ValueError(
            f"{source}: a triplet needs three distinct objects, but {len(rows)} of "
            f"{len(triplets)} rows repeat an object ({listed})"
        )


# --------------------------------------------------------------------------- summaries


@dataclass
class TripletSummary:
    """Counts that describe a set of triplets.

    Attributes:
        n_triplets (int): Number of rows.
        n_objects (int): Number of objects the indices refer to.
        n_unique_sets (int): Number of distinct unordered object sets.
        n_duplicates (int): Rows that repeat an earlier judgement: the same
            object set with the same odd one out (the order of the pair does
            not matter).
        n_conflicting_sets (int): Object sets judged more than once with
            different odd ones out.
        unseen_objects (list[int]): Objects that appear in no triplet.
        min_count (int): Fewest triplets any object appears in.
        median_count (float): Median number of triplets per object.
        max_count (int): Most triplets any object appears in.
    """

    n_triplets: int
    n_objects: int
    n_unique_sets: int
    n_duplicates: int
    n_conflicting_sets: int
    unseen_objects: list[int] = field(default_factory=list)
    min_count: int = 0
    median_count: float = 0.0
    max_count: int = 0

    def lines(self) -> list[str]:
        """Return the summary as short sentences for a log."""
        unseen = self.unseen_objects
        listed = ", ".join(str(index) for index in unseen[:_MAX_LISTED])
        more = f" and {len(unseen) - _MAX_LISTED} more" if len(unseen) > _MAX_LISTED else ""
        return [
            f"{self.n_triplets} triplets over {self.n_objects} objects, "
            f"{self.n_unique_sets} distinct object sets",
            f"{self.n_duplicates} exact duplicates, {self.n_conflicting_sets} object sets "
            "with conflicting choices",
            f"triplets per object: min {self.min_count}, median {self.median_count:g}, "
            f"max {self.max_count}",
            f"{len(unseen)} objects never seen" + (f": {listed}{more}" if unseen else ""),
        ]

    def to_dict(self, max_listed: int = 100) -> dict[str, Any]:
        """Return the fields as a JSON-friendly dictionary.

        Args:
            max_listed (int): Maximum number of unseen objects listed. The
                count ``n_unseen_objects`` is always complete. The cap keeps a
                manifest small when most of a large object set is never sampled.
        """
        fields = asdict(self)
        fields["n_unseen_objects"] = len(self.unseen_objects)
        fields["unseen_objects"] = self.unseen_objects[:max_listed]
        return fields


def summarize_triplets(triplets: np.ndarray, n_objects: int) -> TripletSummary:
    """Count duplicates, conflicting choices and unseen objects.

    Args:
        triplets (np.ndarray): Canonical triplets, shape ``(n_triplets, 3)``.
        n_objects (int): Number of objects.

    Returns:
        TripletSummary: The counts.

    Raises:
        ValueError: If ``n_objects`` is not a whole number, or the triplets
            are invalid for :func:`validate_triplets`.

    Example:
        >>> summary = summarize_triplets(np.array([[0, 1, 2], [1, 0, 2], [0, 2, 1]]), 4)
        >>> summary.n_duplicates, summary.n_conflicting_sets, summary.unseen_objects
        (1, 1, [3])
    """
    n_objects = _whole_count(n_objects)
    triplets = validate_triplets(triplets, n_objects)
    counts = np.bincount(triplets.ravel(), minlength=n_objects)
    judgement_ids = _set_and_judgement_ids(triplets, n_objects)[1]

    unique_judgements = sorted_unique(judgement_ids)
    n_duplicates = len(triplets) - len(unique_judgements)
    # A judgement id is 3 x set id + the odd one's position, so the sorted
    # distinct judgements list their sets in order, each set once per
    # distinct odd one. A set listed two or more times has conflicting choices.
    judged_sets = unique_judgements // 3
    starts_set = np.ones(len(judged_sets), dtype=bool)
    starts_set[1:] = judged_sets[1:] != judged_sets[:-1]
    n_unique_sets = int(starts_set.sum())
    judgements_per_set = np.diff(np.append(np.flatnonzero(starts_set), len(judged_sets)))
    n_conflicting = int((judgements_per_set > 1).sum())

    return TripletSummary(
        n_triplets=len(triplets),
        n_objects=int(n_objects),
        n_unique_sets=int(n_unique_sets),
        n_duplicates=int(n_duplicates),
        n_conflicting_sets=n_conflicting,
        unseen_objects=np.flatnonzero(counts == 0).tolist(),
        min_count=int(counts.min()),
        median_count=float(np.median(counts)),
        max_count=int(counts.max()),
    )


def unseen_objects(train: np.ndarray, test: np.ndarray, n_objects: int | None = None) -> list[int]:
    """List the objects that appear in ``test`` but never in ``train``.

    An embedding learns nothing about such objects, so test triplets that
    contain them measure the prior, not the data.

    Args:
        train (np.ndarray): Training triplets, shape ``(n_train, 3)``.
        test (np.ndarray): Test triplets, shape ``(n_test, 3)``.
        n_objects (int | None): Number of objects; indices must be smaller.
            None accepts any non-negative index.

    Returns:
        list[int]: Sorted object indices.

    Raises:
        ValueError: If either array is not a valid triplet array (see
            :func:`validate_triplets`).

    Example:
        >>> unseen_objects(np.array([[0, 1, 2]]), np.array([[0, 1, 5]]))
        [5]
    """
    train = validate_triplets(train, n_objects, "training triplets").reshape(-1)
    test = validate_triplets(test, n_objects, "test triplets").reshape(-1)
    size = max(int(n_objects or 0), int(train.max(initial=-1)) + 1, int(test.max(initial=-1)) + 1)
    seen = np.zeros(size, dtype=bool)
    seen[train] = True
    in_test = np.zeros(size, dtype=bool)
    in_test[test] = True
    return np.flatnonzero(in_test & ~seen).tolist()


def sorted_unique(values: np.ndarray) -> np.ndarray:
    """Return the distinct values of a 1-D array in ascending order, like ``np.unique``.

    On 4.7 million random int64 values, numpy 2.4.6's ``np.unique`` took
    5.8 s and this sort with a comparison of neighbours 0.03 s (one CPU core).
    """
    ordered = np.sort(values)
    keep = np.ones(len(ordered), dtype=bool)
    keep[1:] = ordered[1:] != ordered[:-1]
    return ordered[keep]


def _set_and_judgement_ids(triplets: np.ndarray, n_objects: int) -> tuple[np.ndarray, np.ndarray]:
    """Return an id of each row's unordered object set and of its judgement.

    Two rows share a set id when they contain the same three objects, and a
    judgement id when they also have the same odd one out.
    """
    ordered = np.sort(triplets, axis=1)
    odd_position = (ordered == triplets[:, 2:3]).argmax(axis=1)
    if n_objects <= _MAX_OBJECTS_FOR_CODES:
        m = np.int64(n_objects)
        set_ids = (ordered[:, 0] * m + ordered[:, 1]) * m + ordered[:, 2]
    else:
        set_ids = np.unique(ordered, axis=0, return_inverse=True)[1].reshape(-1).astype(np.int64)
    return set_ids, set_ids * 3 + odd_position


# --------------------------------------------------------------------------- splitting


def split_triplets(
    triplets: np.ndarray,
    val_fraction: float = 0.1,
    random_state: int | np.random.Generator | None = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Split triplets into training and validation parts by unordered object set.

    All rows with the same three objects (whatever their order or choice) go
    to the same part, so no object set is in both. Sets are shuffled with the
    seed and moved to the validation part until it contains at least
    ``round(val_fraction * n)`` rows. When every set occurs once the
    validation part has exactly that size. Rows keep their input order within
    each part.

    Args:
        triplets (np.ndarray): Canonical triplets, shape ``(n_triplets, 3)``.
        val_fraction (float): Fraction of rows for validation, in ``[0, 1)``.
        random_state (int | np.random.Generator | None): Seed of the shuffle.

    Returns:
        tuple[np.ndarray, np.ndarray]: ``(train, val)``.

    Raises:
        ValueError: If ``val_fraction`` is not a number in ``[0, 1)``, the triplets are
            not valid (see :func:`validate_triplets`), or the split would
            leave no training rows.

    Example:
        >>> triplets = np.array([[0, 1, 2], [1, 2, 3], [2, 3, 0], [3, 0, 1]])
        >>> train, val = split_triplets(triplets, 0.25)
        >>> len(train), len(val)
        (3, 1)
    """
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, numbers.Real):
        raise ValueError(f"val_fraction must be a number in [0, 1), got {val_fraction!r}")
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    triplets = validate_triplets(triplets, None, "triplets to split")
    n_rows = len(triplets)
    target = int(round(val_fraction * n_rows))
    if target == 0:
        return triplets.copy(), triplets[:0].copy()

    n_objects = int(triplets.max()) + 1
    set_ids = _set_and_judgement_ids(triplets, n_objects)[0]
    unique_sets, inverse, rows_per_set = np.unique(set_ids, return_inverse=True, return_counts=True)
    rng = np.random.default_rng(random_state)
    order = rng.permutation(len(unique_sets))
    covered = np.cumsum(rows_per_set[order])
    n_val_sets = int(np.searchsorted(covered, target)) + 1
    is_val_set = np.zeros(len(unique_sets), dtype=bool)
    is_val_set[order[:n_val_sets]] = True
    is_val = is_val_set[inverse.reshape(-1)]

    train, val = triplets[~is_val], triplets[is_val]
    if len(unique_sets) == 1:
        objects = ", ".join(str(index) for index in sorted(triplets[0].tolist()))
        raise ValueError(
            f"all {n_rows} triplets judge the same object set {{{objects}}}, and the rows of a "
            "set stay on one side, so they cannot be split into training and validation "
            "triplets; check that this is the whole file, or use it without a split "
            "(CLI: leave out --split/--val-fraction)"
        )
    if len(train) == 0:
        raise ValueError(
            f"val_fraction {val_fraction} leaves no training triplets "
            f"({len(unique_sets)} object sets); use a smaller fraction"
        )
    if len(val) > 2 * target:
        # The last set moved may be judged many times, and the split never
        # breaks a set, so a few heavily repeated sets can overshoot the target.
        warn(
            f"the validation part contains {len(val)} of {n_rows} triplets "
            f"({100 * len(val) / n_rows:.0f}%) instead of about {target} "
            f"(val_fraction {val_fraction}), because the rows of an object set stay together "
            "and some sets are judged many times; try another seed, or a larger fraction",
            UserWarning,
        )
    logger.info(
        "split %d triplets into %d training and %d validation triplets (%d of %d object sets)",
        n_rows, len(train), len(val), n_val_sets, len(unique_sets),
    )
    return train, val


# --------------------------------------------------------------------------- writing


def save_triplets(triplets: np.ndarray, path: str | os.PathLike) -> Path:
    """Write triplets atomically, as ``.npy`` or as text chosen by the suffix.

    ``.npy`` files are int64. Text files have one triplet per line, without a
    header, separated by spaces (``.txt``), tabs (``.tsv``) or commas
    (``.csv``).

    Args:
        triplets (array-like): Integer array of shape ``(n_triplets, 3)``.
            Floats are accepted when every value is a whole number, as
            ``np.loadtxt`` returns them.
        path (str | os.PathLike): Destination file.

    Returns:
        Path: The destination.

    Raises:
        ValueError: If the array is not ``(n, 3)`` integers, has a negative
            index or a row that repeats an object, or the suffix is unknown.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in TRIPLET_SUFFIXES:
        raise ValueError(
            f"unsupported triplet file {path}: use one of {', '.join(TRIPLET_SUFFIXES)}"
        )
    # The checks of load_triplets without an object count, so that a file
    # written here can be read back.
    array = validate_triplets(triplets, None, source=str(path))
    with atomic_path(path) as temporary:
        if suffix == ".npy":
            np.save(temporary, array)
        else:
            np.savetxt(temporary, array, fmt="%d", delimiter=TEXT_DELIMITERS[suffix])
    logger.debug("wrote %d triplets to %s", len(array), path)
    return path


def parse_columns(text: str) -> list[int | str]:
    """Parse a comma-separated column list such as ``"1,2,3"`` or ``"a,b,c"``."""
    parts = [part.strip() for part in text.split(",")]
    return [int(part) if re.fullmatch(r"\d+", part) else part for part in parts]
