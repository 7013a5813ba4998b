"""Embedding results: run directories and plain embedding files.

A run directory written by ``dimalign fit`` holds:

- ``embedding.npz`` with ``embedding`` (pruned, non-negative posterior means,
  ``(n_objects, n_kept)``), ``scales`` (their posterior standard deviations,
  same shape; absent for SPoSE), ``kept_dims`` (indices of the kept dimensions
  in the unpruned parameters, sorted by decreasing mean weight so column 0 is
  the strongest), ``loc`` and ``scale`` (the unpruned parameters,
  ``(n_objects, n_dims)``) and, for VICE, ``log_scale`` (the parameter whose
  ``exp`` is ``scale``, in the fit's float type, which ``VICE.load`` needs to
  reproduce the posterior predictive exactly);
- ``config.toml`` (every setting), ``history.csv``, ``checkpoint.pt``,
  ``manifest.json`` and optional TensorBoard event files.
"""

from __future__ import annotations

import logging
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dimalign._warnings import warn
from dimalign.io.files import (
    atomic_path,
    load_npy,
    load_text_table,
    looks_like_triplet_file,
    missing_file_error,
    read_npz,
)

logger = logging.getLogger(__name__)

EMBEDDING_NAME = "embedding.npz"

#: Arrays of ``embedding.npz`` besides ``embedding``, each stored when present.
OPTIONAL_ARRAYS = ("scales", "kept_dims", "loc", "scale", "log_scale")


@dataclass
class EmbeddingResult:
    """An embedding and what is known about it.

    Attributes:
        embedding (np.ndarray): Non-negative weights, shape ``(n_objects, n_dims)``.
        scales (np.ndarray | None): Posterior standard deviations, same shape.
        kept_dims (np.ndarray | None): Columns of the unpruned parameters kept.
        loc (np.ndarray | None): Unpruned posterior means (before ReLU).
        scale (np.ndarray | None): Unpruned posterior standard deviations.
        path (Path | None): Where it was loaded from.
        log_scale (np.ndarray | None): The VICE parameter behind ``scale``,
            in the fit's float type. ``exp`` of it in that type equals
            ``scale``, but the log of ``scale`` need not equal it.
    """

    embedding: np.ndarray
    scales: np.ndarray | None = None
    kept_dims: np.ndarray | None = None
    loc: np.ndarray | None = None
    scale: np.ndarray | None = None
    path: Path | None = None
    log_scale: np.ndarray | None = None

    @property
    def n_objects(self) -> int:
        """Number of objects (rows)."""
        return int(self.embedding.shape[0])

    @property
    def n_dims(self) -> int:
        """Number of kept dimensions (columns)."""
        return int(self.embedding.shape[1])


def embedding_weights(value: Any, source: str = "the embedding") -> Any:
    """Return the weights of a fitted VICE or SPoSE or of an :class:`EmbeddingResult`.

    The analysis functions take these as well as arrays. A fitted estimator
    gives its ``embedding_``: for VICE the posterior means, whose accuracy
    differs from the posterior predictive of ``VICE.score``.

    Args:
        value (Any): An estimator, an :class:`EmbeddingResult`, or anything
            else, such as an array, a DataFrame or a tensor.
        source (str): How errors name ``value``.

    Returns:
        Any: ``embedding_`` of an estimator, ``embedding`` of a result, and
        any other value unchanged, for the caller to convert and check.

    Raises:
        NotFittedError: For an estimator before ``fit``.
        ValueError: For a path, because the analysis functions read no files.
    """
    if isinstance(value, EmbeddingResult):
        return value.embedding
    if isinstance(value, (str, os.PathLike)):
        raise ValueError(
            f"{source} must be an array of shape (n_objects, n_dims), got the path {str(value)!r}: "
            "load it first, with dimalign.io.runs.load_embedding(path).embedding"
        )
    if hasattr(value, "get_params"):
        if not hasattr(value, "embedding_"):
            from sklearn.exceptions import NotFittedError

            raise NotFittedError(f"{source}, a {type(value).__name__}, is not fitted yet: call fit first")
        return value.embedding_
    return value


def save_embedding(result: EmbeddingResult, run_dir: str | os.PathLike) -> Path:
    """Write ``embedding.npz`` into ``run_dir`` atomically and return its path.

    The weights keep their float type (float64 for other types), so that
    :func:`load_embedding` returns them unchanged.

    Args:
        result (EmbeddingResult): The embedding and its optional arrays.
        run_dir (str | os.PathLike): An existing folder.

    Returns:
        Path: The written ``embedding.npz``.

    Raises:
        ValueError: If the embedding is not a 2-D array of real numbers
            with at least one row, or contains NaN or inf, because
            :func:`load_embedding` would reject the file.
    """
    target = Path(run_dir) / EMBEDDING_NAME
    embedding = np.asarray(result.embedding)
    _check_embedding_values(embedding, str(target))
    if embedding.dtype.kind != "f":
        embedding = embedding.astype(np.float64)
    arrays = {"embedding": embedding}
    for name in OPTIONAL_ARRAYS:
        value = getattr(result, name)
        if value is not None:
            arrays[name] = np.asarray(value)
    with atomic_path(target) as temporary:
        np.savez(temporary, **arrays)
    return target


#: Negative weights down to this value are rounding noise in published
#: embeddings (SPoSE 49d has 68 weights between -0.0013 and 0, 66d has 46).
NEGATIVE_TOLERANCE = 0.01


def _read_embedding_file(path: Path) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Read the embedding array of an ``.npz``, ``.npy`` or text file, with the extra ``.npz`` arrays."""
    suffix = path.suffix.lower()
    if suffix == ".npz":
        arrays = read_npz(
            path,
            required=("embedding",),
            optional=OPTIONAL_ARRAYS,
            description="an embedding",
            advice="save the weights as a float array with numpy.savez(path, embedding=weights)",
            missing_advice=(
                "save the weights under that name, numpy.savez(path, embedding=weights), or as a .npy file"
            ),
        )
        return arrays.pop("embedding"), arrays
    if suffix == ".npy":
        return load_npy(path, description="an embedding", advice="save the weights with numpy.save"), {}
    delimiter = {".csv": ",", ".tsv": "\t"}.get(suffix)
    embedding = load_text_table(
        path, delimiter, description="a text embedding", advice="free memory, or run on a machine with more"
    )
    return embedding, {}


def _folder_without_embedding(folder: Path, advice: str | None = None) -> str:
    """Describe a folder given as an embedding that has no ``embedding.npz``, and what to pass instead.

    ``advice`` replaces the closing advice for a folder that matches none of
    the known kinds. None advises a run directory or an embedding file.
    """
    problem = f"{folder} is a folder without {EMBEDDING_NAME}, so it is not a run directory of 'dimalign fit'"
    if (folder / "checkpoint.pt").is_file():
        return (
            f"{problem}: it contains checkpoint.pt, so its fit has not finished. Finish it with "
            "'dimalign fit ... --resume' and the same triplets and settings"
        )
    runs = [name for name in ("human_fit", "dnn_fit") if (folder / name / EMBEDDING_NAME).is_file()]
    if runs:
        return f"{problem}: it is a study directory, so pass one of its runs, {' or '.join(str(folder / run) for run in runs)}"
    seeds = sorted((folder / "runs").glob(f"seed_*/{EMBEDDING_NAME}"))
    if seeds:
        return (
            f"{problem}: it is a sweep, so pass one of its runs, such as {seeds[0].parent}, or the run "
            "that 'dimalign select' chose"
        )
    from dimalign.io.triplets import is_triplet_candidate

    triplet_files = sorted(entry.name for entry in folder.iterdir() if is_triplet_candidate(entry))
    if triplet_files:
        return f"{problem}: it contains triplets ({triplet_files[0]}), which 'dimalign fit' turns into an embedding"
    if any(folder.glob("features*.npy")) or (folder / "features.h5").is_file():
        return (
            f"{problem}: it contains the features of 'dimalign extract', which 'dimalign simulate' "
            "and 'dimalign fit' turn into an embedding"
        )
    if advice is None:
        advice = "pass a run directory or an embedding file (.npz, .npy, .txt, .csv or .tsv)"
    return f"{problem}: {advice}"


def load_embedding(path: str | os.PathLike, negative_tolerance: float = NEGATIVE_TOLERANCE) -> EmbeddingResult:
    """Load an embedding from a run directory or a file.

    Args:
        path (str | os.PathLike): A run directory (``embedding.npz`` inside), an
            ``.npz`` with an ``embedding`` array, a ``.npy`` file, a ``.csv``
            (commas) or ``.tsv`` (tabs) file without a header, or another
            whitespace-separated text file (such as the published SPoSE
            embeddings), each ``(n_objects, n_dims)``.
        negative_tolerance (float): Weights down to ``-negative_tolerance``
            are set to 0 with a warning; lower ones are an error.

    Returns:
        EmbeddingResult: With ``embedding`` as float64.

    Raises:
        FileNotFoundError: If nothing is at ``path``.
        OSError: If the file system rejects the read, such as permission denied.
        ValueError: If the file cannot be read as its suffix indicates, is empty or
            damaged, or if the array is not 2-D, has no rows, contains NaN or inf, or has a weight
            below ``-negative_tolerance`` (embeddings here are non-negative;
            apply ReLU first). Negative weights within the tolerance are set
            to 0 with a warning that gives their number and minimum.
    """
    path = Path(path)
    if path.is_dir():
        if not (path / EMBEDDING_NAME).is_file():
            raise FileNotFoundError(_folder_without_embedding(path))
        path = path / EMBEDDING_NAME
    if not path.is_file():
        raise missing_file_error(path, "embedding")
    try:
        embedding, extras = _read_embedding_file(path)
    except (OSError, EOFError, zipfile.BadZipFile) as error:
        # Errors of the file system (permission denied, say) carry an errno and name the file already.
        if isinstance(error, OSError) and error.errno is not None:
            raise
        raise ValueError(f"{path} cannot be read as an embedding ({error}); the file may be damaged") from error
    except ValueError as error:
        if str(path) in str(error):
            raise
        # numpy's own message about pickled data would suggest loading the file unsafely.
        raise ValueError(
            f"{path} cannot be read as an embedding: it is not a numpy .npy/.npz file of numbers, "
            "or it is damaged"
        ) from error
    if looks_like_triplet_file(path, embedding):
        # Such a file would pass as an embedding of one "object" per triplet.
        raise ValueError(
            f"{path} looks like a triplet file, not an embedding: its {embedding.shape[0]} rows of 3 distinct "
            "whole numbers each are object indices of odd-one-out triplets. An embedding has one row per "
            "object and one column per dimension, as 'dimalign fit' writes it. If these are embedding "
            "weights, save them as a float array with numpy.save"
        )
    embedding = check_embedding(embedding, str(path), negative_tolerance)
    logger.info("loaded embedding %s: %d objects x %d dimensions", path, *embedding.shape)
    return EmbeddingResult(embedding=embedding, path=path, **extras)


def check_embedding(
    embedding: np.ndarray, source: str, negative_tolerance: float = NEGATIVE_TOLERANCE
) -> np.ndarray:
    """Check an embedding array and return it as float64 with tiny negative weights set to 0.

    Args:
        embedding (array-like): Shape ``(n_objects, n_dims)``.
        source (str): The file or object that errors and warnings name.
        negative_tolerance (float): Weights down to ``-negative_tolerance``
            are set to 0 with a warning; lower ones are an error.

    Raises:
        ValueError: If the array does not contain real numbers, is not 2-D,
            has no rows, contains NaN or inf, or has a weight below
            ``-negative_tolerance``.
    """
    embedding = _check_embedding_values(np.asarray(embedding), source)
    reject_negative_weights(embedding, source, negative_tolerance)
    negative = embedding < 0
    if negative.any():
        minimum = float(embedding.min())
        warn(
            f"{source}: set {int(negative.sum())} negative weights (lowest {minimum:.3g}, within the "
            f"tolerance {negative_tolerance}) to 0",
        )
        embedding = np.where(negative, 0.0, embedding)
    return embedding


def reject_negative_weights(
    embedding: np.ndarray, source: str, negative_tolerance: float = NEGATIVE_TOLERANCE
) -> None:
    """Raise ``ValueError`` if a weight of ``embedding`` is below ``-negative_tolerance``.

    The embeddings of VICE and SPoSE are non-negative, and similarities are
    dot products of their rows. Negative weights, such as ridge predictions
    below 0, would change those dot products, so they are rejected instead
    of being used. Weights down to ``-negative_tolerance`` are rounding noise
    of published files and are left to the caller.

    Args:
        embedding (np.ndarray): A float array ``(n_objects, n_dims)``. NaN
            counts as no negative weight.
        source (str): How the error names the embedding.
        negative_tolerance (float): The lowest weight that is accepted is
            ``-negative_tolerance``.

    Raises:
        ValueError: Naming the number of negative weights and the position of the lowest.
    """
    # NaN compares False here, so it is left to the callers' NaN checks.
    if not (embedding < -negative_tolerance).any():
        return
    minimum = float(np.nanmin(embedding))
    row, column = np.argwhere(embedding == minimum)[0]
    raise ValueError(
        f"{source}: {int((embedding < 0).sum())} negative weights, the lowest {minimum:.6g} at row {row}, "
        f"dimension {column}; embeddings must be non-negative: apply ReLU first, as VICE and SPoSE do "
        "(numpy.maximum(weights, 0))"
    )


def _check_embedding_values(embedding: np.ndarray, source: str) -> np.ndarray:
    """Return the embedding as float64, or raise ValueError for a wrong type, shape or a non-finite value."""
    # A cast to float drops the imaginary part of complex numbers (with only a
    # ComplexWarning), and fails on text without naming the source.
    # Object arrays, such as nested lists of mixed numbers, are left to the cast.
    if embedding.dtype.kind not in "biufO":
        raise ValueError(
            f"{source}: an embedding must contain real numbers, got dtype {embedding.dtype}; "
            "pass a float array"
        )
    embedding = np.asarray(embedding, dtype=np.float64)
    if embedding.ndim != 2:
        raise ValueError(f"{source}: an embedding must be 2-D (n_objects, n_dims), got {embedding.shape}")
    if embedding.shape[0] == 0:
        raise ValueError(
            f"{source}: the embedding has no rows (shape {embedding.shape}), but it needs one row "
            "per object"
        )
    bad_rows = np.flatnonzero(~np.isfinite(embedding).all(axis=1))
    if bad_rows.size:
        raise ValueError(
            f"{source}: rows {bad_rows[:20].tolist()} contain NaN or inf ({bad_rows.size} of "
            f"{embedding.shape[0]} rows), and every score of them would be NaN; if the file comes "
            "from a fit that diverged, fit again with a lower --lr, otherwise replace the file"
        )
    return embedding


def as_embedding_result(
    value: str | os.PathLike | EmbeddingResult | np.ndarray | Any,
    source: str = "the embedding",
) -> EmbeddingResult:
    """Turn a path, an array or a fitted VICE or SPoSE estimator into an :class:`EmbeddingResult`.

    Args:
        value (str | os.PathLike | EmbeddingResult | np.ndarray | estimator): A
            run directory or embedding file (read by :func:`load_embedding`),
            an :class:`EmbeddingResult` (returned as it is), a fitted
            estimator with an ``embedding_`` attribute, or an array of shape
            ``(n_objects, n_dims)``.
        source (str): How errors name an array or estimator, which has no path.

    Returns:
        EmbeddingResult: ``value`` itself when it is one; otherwise the
            embedding as float64, checked by :func:`check_embedding`.

    Raises:
        NotFittedError: For an estimator before ``fit``.
        ValueError: For an array that :func:`check_embedding` rejects, or
            an :class:`EmbeddingResult` with a weight below ``-NEGATIVE_TOLERANCE``.
    """
    if isinstance(value, EmbeddingResult):
        # A result built in code has not passed load_embedding's check.
        reject_negative_weights(np.asarray(value.embedding), source)
        return value
    if isinstance(value, (str, os.PathLike)):
        return load_embedding(value)
    if hasattr(value, "get_params"):
        if not hasattr(value, "embedding_"):
            from sklearn.exceptions import NotFittedError

            raise NotFittedError(f"{source}, a {type(value).__name__}, is not fitted yet: call fit first")
        return EmbeddingResult(
            embedding=check_embedding(value.embedding_, source),
            scales=getattr(value, "scales_", None),
            kept_dims=getattr(value, "kept_dims_", None),
        )
    return EmbeddingResult(embedding=check_embedding(value, source))
