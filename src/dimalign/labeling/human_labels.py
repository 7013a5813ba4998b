"""Published names of the human SPoSE dimensions.

Hebart et al. (2020) labelled every dimension of their human embeddings: the
66-dimensional one in a text file with one label per line, and the
49-dimensional one in a MATLAB file whose ``labels`` variable is a
``(49, 1)`` cell array of strings. Line ``i`` (cell ``i``) names column ``i``
of the sorted embedding (``spose_embedding_*_sorted.txt``).
"""

from __future__ import annotations

import logging
import os
import unicodedata
from pathlib import Path

import numpy as np

from dimalign.io.files import read_utf8_text

logger = logging.getLogger(__name__)


def load_dimension_labels(path: str | os.PathLike, n_dims: int | None = None) -> list[str]:
    """Load one label per embedding dimension.

    Args:
        path (str | os.PathLike): A UTF-8 text file with one label per line
            (a byte order mark and trailing blank lines are ignored) or a MATLAB ``.mat`` file with a
            cell array of strings (the variable ``labels``, or the only variable).
        n_dims (int | None): The embedding's number of dimensions; when given,
            the number of labels must equal it.

    Returns:
        list[str]: The labels, stripped, in dimension order.

    Raises:
        FileNotFoundError: If ``path`` does not exist.
        ValueError: If the file contains no labels, a text file is not
            UTF-8, a label is empty or contains a control character (such as
            a tab or NUL), the MATLAB file cannot be read, has no usable
            variable or holds a cell matrix rather than a vector, or the count
            differs from ``n_dims`` (the message names both).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"dimension labels {path} not found")
    if path.suffix.lower() == ".mat":
        labels = _labels_from_mat(path)
    else:
        # Lines end only at \n (with an optional \r before it): str.splitlines()
        # would also split at NEL, form feed and other separators and so shift
        # every later label to the wrong dimension.
        text = read_utf8_text(path, advice="save the labels as UTF-8", translate_newlines=True)
        lines = [line.removesuffix("\r") for line in text.split("\n")]
        while lines and not lines[-1].strip():
            lines.pop()
        labels = [line.strip() for line in lines]
    if not labels:
        raise ValueError(f"{path} contains no labels: give one label per dimension, in dimension order")

    for number, label in enumerate(labels, start=1):
        control = next((character for character in label if unicodedata.category(character) == "Cc"), None)
        if control is not None:
            raise ValueError(
                f"{path}: label {number} (1-based) contains the control character U+{ord(control):04X}, "
                f"which would break the index<TAB>label output: remove it from {label!r}"
            )
    empty = [number for number, label in enumerate(labels, start=1) if not label]
    if empty:
        raise ValueError(f"{path}: labels {empty[:10]} (1-based) are empty; every dimension needs a label")
    if n_dims is not None and len(labels) != int(n_dims):
        raise ValueError(
            f"{path} has {len(labels)} labels but the embedding has {int(n_dims)} dimensions: "
            "use the label file that belongs to this embedding"
        )
    logger.info("loaded %d dimension labels from %s", len(labels), path)
    return labels


def _labels_from_mat(path: Path) -> list[str]:
    from scipy.io import loadmat
    from scipy.io.matlab import MatReadError

    try:
        variables = loadmat(path)
    except PermissionError:
        raise
    except (MatReadError, ValueError, OSError) as error:
        # scipy raises MatReadError for a wrong header and a bare OSError
        # ("could not read bytes") for a file cut short, without the path.
        raise ValueError(
            f"{path} is not a readable MATLAB file ({type(error).__name__}: {error}): save the labels again, "
            "such as with MATLAB's save or scipy.io.savemat"
        ) from None
    contents = {key: value for key, value in variables.items() if not key.startswith("__")}
    if "labels" in contents:
        array = contents["labels"]
    elif len(contents) == 1:
        array = next(iter(contents.values()))
    elif not contents:
        raise ValueError(f"{path} contains no variables: save the labels as the variable 'labels'")
    else:
        raise ValueError(
            f"{path} has no variable named 'labels' and several others ({sorted(contents)}): "
            "save the labels as 'labels'"
        )
    array = np.asarray(array)
    if array.dtype == object and sum(size > 1 for size in array.shape) > 1:
        # Reading a matrix column by column would assign its cells to dimensions in an arbitrary order.
        raise ValueError(
            f"{path}: the labels are a {' x '.join(map(str, array.shape))} cell array, but one label per "
            "dimension needs a vector (n x 1 or 1 x n): save one label per dimension"
        )
    if array.dtype.kind == "U":
        # A char matrix: one label per row, padded with spaces.
        rows = array if array.ndim == 1 else ["".join(row) for row in array]
        return [str(row).strip() for row in rows]
    if array.dtype != object:
        raise ValueError(f"{path}: expected a cell array of strings, got an array of {array.dtype}")
    labels = []
    for cell in array.ravel(order="F"):
        values = np.asarray(cell).ravel()
        if values.size != 1 or values.dtype.kind != "U":
            raise ValueError(f"{path}: a cell of the labels contains {values!r}, not one string")
        labels.append(str(values[0]))
    return labels
