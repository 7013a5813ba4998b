"""Object tables: ``objects.tsv`` fixes the row order of features and embeddings.

Columns: ``index`` (0-based row), ``object_id`` (a unique name, such as a THINGS
concept id or an image's relative path) and ``source`` (the file the row came
from, empty where there is none).
"""

from __future__ import annotations

import csv
import io
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from dimalign.io.files import read_utf8_text, write_text_atomic

OBJECT_TABLE_NAME = "objects.tsv"
COLUMNS = ("index", "object_id", "source")


@dataclass(frozen=True)
class ObjectTable:
    """Names of the objects in row order.

    Attributes:
        object_ids (tuple[str, ...]): One unique name per row.
        sources (tuple[str, ...]): The file of each row (``""`` where none).
    """

    object_ids: tuple[str, ...]
    sources: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        if not self.sources:
            object.__setattr__(self, "sources", ("",) * len(self.object_ids))
        if len(self.sources) != len(self.object_ids):
            raise ValueError(
                f"object table has {len(self.object_ids)} ids but {len(self.sources)} sources"
            )
        seen: dict[str, int] = {}
        for row, name in enumerate(self.object_ids):
            if name in seen:
                raise ValueError(
                    f"object id {name!r} appears twice (rows {seen[name]} and {row}); "
                    "object ids must be unique"
                )
            seen[name] = row

    def __len__(self) -> int:
        return len(self.object_ids)

    def __repr__(self) -> str:
        # A notebook shows the repr, and a table of all THINGS objects would
        # fill tens of thousands of characters.
        parts = [f"n_objects={len(self)}", f"object_ids={abbreviate_tuple(self.object_ids)}"]
        if any(self.sources):
            parts.append(f"sources={abbreviate_tuple(self.sources)}")
        return f"{type(self).__name__}({', '.join(parts)})"

    def index_of(self, names: Sequence[str]) -> list[int]:
        """Return the row of each name.

        Raises:
            KeyError: Listing every name that is not in the table.
        """
        lookup = {name: row for row, name in enumerate(self.object_ids)}
        missing = [name for name in names if name not in lookup]
        if missing:
            raise KeyError(f"{len(missing)} names not in the object table: {missing[:20]}")
        return [lookup[name] for name in names]

    @classmethod
    def from_ids(cls, object_ids: Sequence[str]) -> ObjectTable:
        """Build a table from names alone."""
        return cls(tuple(str(name) for name in object_ids))


def index_object_ids(value: object) -> tuple[str, ...] | None:
    """Return the index of a pandas DataFrame as object ids, or None where it names no rows.

    The default index ``0 .. n - 1`` of a DataFrame built from an array names
    nothing, and neither does any value that is not a DataFrame.

    Args:
        value (object): An embedding or feature matrix in any form.

    Returns:
        tuple[str, ...] | None: One id per row, as strings.
    """
    import pandas as pd

    if not isinstance(value, pd.DataFrame) or value.index.equals(pd.RangeIndex(len(value))):
        return None
    return tuple(str(name) for name in value.index)


def check_same_index(first: object, second: object, first_name: str, second_name: str) -> None:
    """Raise ``ValueError`` if two DataFrames have indexes that name their rows differently.

    Functions that pair rows by position (as scikit-learn does) call this.
    Two labelled indexes in different orders would pair one object's row with
    another's, so they are rejected rather than reordered. Arrays and the
    default index ``0 .. n - 1`` name no rows and always pass.

    Args:
        first (object): The first input, such as features.
        second (object): The second input, such as an embedding.
        first_name (str): How the message names ``first``, best the
            caller's argument name, so that the suggested ``.loc`` fix reads
            as code.
        second_name (str): How the message names ``second``.

    Raises:
        ValueError: Naming the count of objects in another order, or the
            objects found in only one index.
    """
    first_ids, second_ids = index_object_ids(first), index_object_ids(second)
    if first_ids is None or second_ids is None or first_ids == second_ids:
        return
    if first_name.isidentifier() and second_name.isidentifier():
        fix = f"for example {second_name}.loc[{first_name}.index]"
    else:
        fix = f"for example by reordering the rows of {second_name} to the index of {first_name}"
    if sorted(first_ids) == sorted(second_ids):
        raise ValueError(
            f"{first_name} and {second_name} are DataFrames whose indexes list the same "
            f"{len(first_ids)} objects in another order: align them first, {fix}"
        )
    first_set, second_set = set(first_ids), set(second_ids)
    only_first = [name for name in first_ids if name not in second_set]
    only_second = [name for name in second_ids if name not in first_set]
    parts = [
        f"{len(only_first)} only in {first_name}" + (f" (first {only_first[0]!r})" if only_first else ""),
        f"{len(only_second)} only in {second_name}" + (f" (first {only_second[0]!r})" if only_second else ""),
    ]
    raise ValueError(
        f"{first_name} and {second_name} are DataFrames whose indexes name other objects: "
        f"{', '.join(parts)}; pass two tables of the same objects, {fix}"
    )


def abbreviate_tuple(values: tuple[str, ...], edge: int = 3) -> str:
    """Format a tuple like its repr, with only the first and last ``edge`` items when it is longer.

    Args:
        values (tuple[str, ...]): The items.
        edge (int): Items shown at each end of a tuple longer than ``2 * edge``.

    Returns:
        str: Such as ``('a', 'b', 'c', ..., 'x', 'y', 'z')``.
    """
    if len(values) <= 2 * edge:
        return repr(values)
    shown = [repr(value) for value in values[:edge]] + ["..."] + [repr(value) for value in values[-edge:]]
    return f"({', '.join(shown)})"


def write_object_table(table: ObjectTable, path: str | os.PathLike) -> Path:
    """Write ``table`` as a TSV file with a header (atomically).

    Args:
        table (ObjectTable): The object ids and sources.
        path (str | os.PathLike): Destination file.

    Returns:
        Path: The destination.

    Raises:
        ValueError: If the table is empty or an object id is empty, because
            :func:`read_object_table` would reject the file.
    """
    if len(table) == 0:
        raise ValueError(f"{path}: the object table is empty; it must name at least one object")
    empty = [row for row, name in enumerate(table.object_ids) if not str(name)]
    if empty:
        raise ValueError(f"{path}: row {empty[0]} has an empty object id; every row must name its object")
    buffer = io.StringIO()
    writer = csv.writer(buffer, delimiter="\t", lineterminator="\n")
    writer.writerow(COLUMNS)
    for row, (name, source) in enumerate(zip(table.object_ids, table.sources)):
        writer.writerow((row, name, source))
    return write_text_atomic(path, buffer.getvalue())


def read_object_table(path: str | os.PathLike) -> ObjectTable:
    """Read an object table.

    Accepts a table whose first line names the columns (``object_id``
    required, ``index`` and ``source`` optional, others ignored), such as
    ``objects.tsv`` written by :func:`write_object_table`, or a plain text
    file with one name per line (such as THINGS ``unique_id.txt``). Tables
    are tab-separated, or comma-separated in a ``.csv`` file.

    Args:
        path (str | os.PathLike): The table or list file.

    Returns:
        ObjectTable: The object ids, and the sources where the table has them.

    Raises:
        FileNotFoundError: If the file does not exist.
        ValueError: If the path is a folder or another non-file, the file
            is not UTF-8 or lists no object, or the index column is not 0,
            1, 2, ... in order. Also if the header names object_id, index or
            source twice, or a table row has an empty or no object_id field,
            more non-empty fields than the header has columns, or a quote
            that is not closed. A file without an object_id column is an
            error when it looks like a table: a tab in a line, commas or
            semicolons in a ``.csv`` file, or object_id among other fields
            of the first line. So is a line that starts with ``#``, which
            would be read as a name, not a comment. A blank line before the last name or row is
            an error too, because every later object would move up one row.
    """
    path = Path(path)
    if path.exists() and not path.is_file():
        kind = "a folder" if path.is_dir() else "not a regular file"
        raise ValueError(
            f"object table {path} is {kind}: pass an objects.tsv or a file with one object name per line"
        )
    if not path.is_file():
        raise FileNotFoundError(
            f"object table {path} not found: pass an objects.tsv or a file with one object name per line"
        )
    text = read_utf8_text(path, advice="save the table as UTF-8 (or plain ASCII)", translate_newlines=True)
    # Lines end only at \n (read_text turns \r\n and \r into \n). str.splitlines()
    # would also split at NEL, form feed and other separators inside a name, and
    # so move every later object down one row.
    lines = text.split("\n")
    delimiter = "," if path.suffix.lower() == ".csv" else "\t"
    header = next(csv.reader([lines[0]], delimiter=delimiter)) if lines else []
    if "object_id" in header:
        return _read_table_with_header(path, text, header, delimiter)
    _reject_other_tables(path, lines, delimiter)
    names = [line.strip() for line in lines]
    while names and not names[-1]:
        names.pop()
    if "" in names:
        line_number = names.index("") + 1
        raise ValueError(
            f"{path}, line {line_number}: blank line in the object list. Each line names the object "
            "of one row, in order, so remove the blank line or write the missing name there."
        )
    if not names:
        raise ValueError(f"object table {path} is empty: it must name one object per line")
    return _table(path, names, [""] * len(names))


def _reject_other_tables(path: Path, lines: list[str], delimiter: str) -> None:
    """Reject a file without an object_id column that is a table rather than a list of names.

    Read as a list, such a table would give one object per line, its header
    line included, so every object would move down one row.
    """
    first_fields = re.split(r"[\s,;|]+", lines[0].strip())
    if len(first_fields) > 1 and "object_id" in first_fields:
        raise ValueError(
            f"{path}, line 1: {lines[0].strip()!r} looks like the header of a table with the "
            "column object_id, but tables are read tab-separated (comma-separated in a .csv "
            "file), so it would become the first object's name. Save the table tab-separated, "
            "or comma-separated with the suffix .csv"
        )
    for number, line in enumerate(lines, start=1):
        if line.lstrip().startswith("#"):
            # Numeric text tables skip # comments, so a user may expect the same here.
            raise ValueError(
                f"{path}, line {number}: {line.strip()!r} starts with #, but object tables have no "
                "comments, so it would become an object's name and move every later object down one "
                "row. Remove the line"
            )
        if delimiter == "," and ";" in line:
            # Spreadsheet programs in many locales write .csv files with semicolons.
            raise ValueError(
                f"{path}, line {number}: a table separated by semicolons, which would be read "
                "as a list of names with its header line as the first object. Save it "
                "comma-separated with an object_id column, or pass a list with one name per line"
            )
        if delimiter == "," and "," in line:
            raise ValueError(
                f"{path}, line {number}: a comma-separated table without an object_id column in "
                "its header line. Name the column of object names object_id (source, the image "
                "file, is optional), or pass a list with one name per line"
            )
        if "\t" in line:
            raise ValueError(
                f"{path}, line {number}: a tab in a list of object names. A list names one object "
                "per line; a table starts with a header line of tab-separated column names, "
                "such as 'index<TAB>object_id<TAB>source' (index and source are optional)"
            )


def _read_table_with_header(path: Path, text: str, header: list[str], delimiter: str) -> ObjectTable:
    """Read a table whose first line names its columns (``object_id`` required)."""
    columns = _header_columns(path, header)
    separated = "comma" if delimiter == "," else "tab"
    # The csv reader reads the file itself, so that a quoted field with a
    # line break (written by write_object_table) stays one field. strict
    # makes an unclosed quote an error, which would otherwise take every
    # later line into one name.
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)

    ids, sources = [], []
    blank_line = None
    last_line = 1
    try:
        next(reader)
        for row in reader:
            last_line = reader.line_num
            if not row:
                blank_line = blank_line or reader.line_num
                continue
            if blank_line is not None:
                raise ValueError(
                    f"{path}, line {blank_line}: blank line in the table. Each line names the "
                    "object of one row, in order, so remove the blank line or write the missing "
                    "object there"
                )
            _check_row(path, reader.line_num, row, header, columns, separated, len(ids))
            ids.append(row[columns["object_id"]])
            source_column = columns.get("source")
            has_source = source_column is not None and len(row) > source_column
            sources.append(row[source_column] if has_source else "")
    except csv.Error as error:
        raise ValueError(
            f"{path}, line {last_line + 1}: the quotes of a field are unbalanced ({error}). A "
            'field that starts with a quote (") must end with the closing quote, and a quote '
            'inside it is written as two quotes ("")'
        ) from error

    if not ids:
        raise ValueError(
            f"{path} lists no object: below its header line it needs one row per object"
        )
    return _table(path, ids, sources)


def _header_columns(path: Path, header: list[str]) -> dict[str, int]:
    """Return the position of each known column in ``header``, which may name each only once."""
    for name in COLUMNS:
        positions = [position + 1 for position, column in enumerate(header) if column == name]
        if len(positions) > 1:
            raise ValueError(
                f"{path}, line 1: the header names the column {name} twice (columns "
                f"{positions[0]} and {positions[1]}), so it is unclear which to read; rename or "
                "remove one of them"
            )
    return {name: header.index(name) for name in COLUMNS if name in header}


def _check_row(
    path: Path, line: int, row: list[str], header: list[str], columns: dict[str, int],
    separated: str, row_index: int,
) -> None:
    """Reject a table row whose fields do not line up with the header (``line`` counts from 1)."""
    if len(row) <= columns["object_id"]:
        raise ValueError(
            f"{path}, line {line}: no object_id field (the header puts it in column "
            f"{columns['object_id'] + 1}); give every row one {separated}-separated field per "
            "column"
        )
    example = '"New, York"' if separated == "comma" else '"New<TAB>York"'
    if any(field.strip() for field in row[len(header):]):
        # A name or source with a tab (or a comma in a .csv file) moves every
        # later field of its row one column to the right.
        raise ValueError(
            f"{path}, line {line}: {len(row)} fields, but the header names {len(header)} "
            f"columns; a field that contains a {separated} must be quoted, as in {example}"
        )
    if not row[columns["object_id"]].strip():
        raise ValueError(
            f"{path}, line {line}: empty object_id; every row names its object"
        )
    index = row[columns["index"]] if "index" in columns and len(row) > columns["index"] else ""
    if "index" in columns and index != str(row_index):
        raise ValueError(
            f"{path}, line {line}: index {index!r}, expected {row_index}; "
            "the index column must count rows from 0 without gaps"
        )


def _table(path: Path, ids: list[str], sources: list[str]) -> ObjectTable:
    """Build the table read from ``path``, naming the file when an id repeats."""
    try:
        return ObjectTable(tuple(ids), tuple(sources))
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from error


def find_image(images: Path, object_id: str, source: str = "") -> Path | None:
    """Find an object's image file.

    The candidates, in order: its ``source`` (relative to ``images`` or
    absolute), ``<images>/<object_id>.<jpg|jpeg|png>`` with the extension in
    any case (``cat.JPG``), and the first image by name in the folder
    ``<images>/<object_id>/`` (the THINGS layout), hidden files left out.

    Returns:
        Path | None: The image file, or None when no candidate exists.
    """
    if source:
        candidate = Path(source) if Path(source).is_absolute() else images / source
        if candidate.is_file():
            return candidate
    for suffix in (".jpg", ".jpeg", ".png"):
        candidate = images / f"{object_id}{suffix}"
        if candidate.is_file():
            return candidate
    upper_case = files_with_suffix_any_case(images / object_id, (".jpg", ".jpeg", ".png"))
    if upper_case:
        return upper_case[0]
    folder = images / object_id
    if folder.is_dir():
        # Hidden files are left out: macOS AppleDouble files (._photo.jpg) sort first and hold no image.
        found = sorted(
            path for path in folder.iterdir()
            if path.suffix.lower() in (".jpg", ".jpeg", ".png") and not path.name.startswith(".")
        )
        if found:
            return found[0]
    return None


def files_with_suffix_any_case(path: Path, suffixes: tuple[str, ...]) -> list[Path]:
    """Return the files named ``path`` plus one of ``suffixes`` in any case, sorted by name.

    Cameras and Windows tools write upper-case extensions (``IMG_0001.JPG``),
    which a look-up of ``<path>.jpg`` misses on a case-sensitive
    file system. The part before the extension must match exactly.

    Args:
        path (Path): The file path without the extension.
        suffixes (tuple[str, ...]): Lower-case extensions with their dot.
    """
    folder, stem = path.parent, path.name
    if not stem or not folder.is_dir():
        return []
    matches = []
    with os.scandir(folder) as entries:
        for entry in entries:
            name = entry.name
            if name.startswith(stem) and name[len(stem):].lower() in suffixes and entry.is_file():
                matches.append(folder / name)
    return sorted(matches)

