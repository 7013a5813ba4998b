"""The files of a saved fit: what ``save`` writes and ``VICE.load`` and ``SPoSE.load`` read.

A saved fit is a folder with ``config.toml`` (the estimator's name, every
setting and the fitted numbers), ``embedding.npz`` (the arrays of
:mod:`dimalign.io.runs`) and ``history.csv``. ``TripletEmbedding.save`` and
``dimalign fit`` write it with the helpers at the top of this module. The
reading functions below check that the three files exist, can be read and
belong together, and return their contents. They never repair a file.
"""

from __future__ import annotations

import csv
import inspect
import io
import math
import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dimalign._warnings import warn
from dimalign.embedding.checkpoint import CHECKPOINT_NAME
from dimalign.io.files import MANIFEST_NAME, read_manifest, read_npz, recorded_step, sha256_file
from dimalign.io.runs import EMBEDDING_NAME, _folder_without_embedding

CONFIG_NAME = "config.toml"
HISTORY_NAME = "history.csv"

#: Class names of the estimators, by the name that ``config.toml`` records.
ESTIMATOR_CLASSES = {"vice": "VICE", "spose": "SPoSE"}

_FITTED_NUMBERS = {"n_objects": int, "n_dims": int, "n_epochs": int, "converged": bool}
# The lowest value of each count that a fit records. A fit may keep no dimension.
_FITTED_MINIMUMS = {"n_objects": 1, "n_dims": 0, "n_epochs": 0}
# Arrays of parameters and their derived values, which a fit writes as finite floats.
_FLOAT_ARRAYS = ("embedding", "scales", "loc", "scale", "log_scale")
_LOAD_ELSEWHERE = "read the embedding alone with dimalign.io.runs.load_embedding"

# ---- writing ----------------------------------------------------------------
def reject_recorded_folder(run_dir: Path) -> None:
    """Raise ``FileExistsError`` if ``run_dir`` contains the ``manifest.json`` of a dimalign step.

    ``save`` writes no manifest, so the manifest of an earlier step would
    stay and list the checksums and object table of other files.
    ``fit_run`` removes the manifest of its run before it calls ``save``.

    Args:
        run_dir (Path): The folder that ``save`` is about to write into.

    Raises:
        FileExistsError: Naming the manifest and the step that wrote it.
    """
    manifest = run_dir / MANIFEST_NAME
    if not manifest.exists():
        return
    step = recorded_step(run_dir)
    kind = f"a 'dimalign {step}' output" if step is not None else "a dimalign output"
    raise FileExistsError(
        f"{manifest} belongs to {kind}. save writes no manifest, so this one would describe "
        "other files: save into another folder, or use dimalign.embedding.fit_run, which writes "
        "a run with its manifest"
    )


def toml_setting(value: Any) -> Any:
    """Return a setting as TOML stores it: None as "", a path or device as a string, a numpy scalar as a number.

    TOML has no null, and tomli_w rejects paths, torch devices and numpy
    scalars, which notebooks pass as settings.

    Args:
        value (Any): A value of ``get_params()``.

    Returns:
        Any: A value that ``tomli_w`` can write.
    """
    if value is None:
        return ""
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, torch.device):
        return str(value)
    if isinstance(value, np.generic):
        return value.item()
    return value


def history_to_csv(history: list[dict[str, float]]) -> str:
    """Format per-epoch records as CSV.

    Args:
        history (list[dict[str, float]]): Rows such as ``history_``.

    Returns:
        str: CSV text whose columns are the union of the keys, in first-seen
        order. A missing key or a NaN becomes an empty cell, and floats are
        written with ``repr`` so that they read back exactly.
    """
    columns: list[str] = []
    for row in history:
        columns += [key for key in row if key not in columns]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in history:
        writer.writerow({key: _format_number(row.get(key)) for key in columns})
    return buffer.getvalue()


def _format_number(value: Any) -> Any:
    if isinstance(value, float):
        return "" if math.isnan(value) else repr(value)
    return "" if value is None else value


# ---- reading ----------------------------------------------------------------


@dataclass
class SavedFit:
    """The contents of a saved fit's folder.

    Attributes:
        folder (Path): The folder.
        settings (dict[str, Any]): Constructor arguments, with ``None``
            where ``config.toml`` stores an empty string for a setting whose
            default is ``None``. A setting that the file lacks is left out,
            with a warning that names it.
        fitted (dict[str, Any]): ``n_objects``, ``n_dims`` (kept
            dimensions), ``n_epochs`` and ``converged``.
        arrays (dict[str, np.ndarray]): The arrays of ``embedding.npz``.
        history (list[dict[str, float]]): The rows of ``history.csv``; an
            empty cell leaves its key out of the row.
    """

    folder: Path
    settings: dict[str, Any]
    fitted: dict[str, Any]
    arrays: dict[str, np.ndarray]
    history: list[dict[str, float]]

    @property
    def embedding_path(self) -> Path:
        """Path of ``embedding.npz``."""
        return self.folder / EMBEDDING_NAME

    @property
    def config_path(self) -> Path:
        """Path of ``config.toml``."""
        return self.folder / CONFIG_NAME


def read_saved_fit(folder: str | Path, estimator: type) -> SavedFit:
    """Read the folder of a fit of ``estimator``, checking each file.

    Args:
        folder (str | Path): A folder written by ``save`` or ``dimalign fit``.
        estimator (type): The class that will load the fit, ``VICE`` or
            ``SPoSE``. Its ``_estimator_name`` must match ``config.toml``
            and its ``_saved_arrays`` name the arrays that must be present.

    Returns:
        SavedFit: The settings, fitted numbers, arrays and history.

    Raises:
        FileNotFoundError: If the folder, or one of its three files, is missing
            or a broken symbolic link.
        ValueError: If ``folder`` is a file or the output of another step,
            if a file is damaged, or if the fit belongs to the other
            estimator. :func:`check_arrays` compares the arrays with
            the settings once those are checked.
    """
    folder = Path(folder)
    _check_run_folder(folder, estimator.__name__)
    config = _read_config(folder / CONFIG_NAME, estimator)
    history = _read_history(folder / HISTORY_NAME)
    settings = _settings_for(estimator, config["settings"], folder / CONFIG_NAME)
    arrays = _read_arrays(folder / EMBEDDING_NAME, estimator._saved_arrays)
    return SavedFit(folder=folder, settings=settings, fitted=config["fitted"], arrays=arrays, history=history)


def _check_run_folder(folder: Path, class_name: str) -> None:
    """Raise if ``folder`` is not a folder with the three files of a saved fit."""
    writers = f"{class_name}.save or 'dimalign fit'"
    for path in (folder, folder / EMBEDDING_NAME, folder / CONFIG_NAME, folder / HISTORY_NAME):
        if path.is_symlink() and not path.exists():
            raise FileNotFoundError(
                f"{path} is a symbolic link to the missing {os.readlink(path)}: restore the target, or "
                "point the link to where it moved"
            )
    if not folder.exists():
        raise FileNotFoundError(f"{folder} not found: pass a folder that {writers} wrote")
    if not folder.is_dir():
        if folder.name in (EMBEDDING_NAME, CONFIG_NAME, HISTORY_NAME):
            raise ValueError(
                f"{folder} is a file, not a run folder: pass the folder that contains it, {folder.parent}"
            )
        raise ValueError(
            f"{folder} is a file, not the folder of a saved fit: read an embedding file with "
            "dimalign.io.runs.load_embedding, which returns its array without an estimator"
        )
    # A damaged manifest gives no step. The files themselves are checked below.
    step = recorded_step(folder)
    if step is not None and step != "fit":
        # Sweeps keep their runs in runs/seed_*, studies in human_fit and dnn_fit.
        runs = sorted(path.parent for pattern in ("*", "runs/*") for path in folder.glob(f"{pattern}/{EMBEDDING_NAME}"))
        advice = f"pass one of the runs inside it, such as {runs[0]}" if runs else f"pass a folder that {writers} wrote"
        raise ValueError(f"{folder} is the output of 'dimalign {step}', not a fitted embedding: {advice}")
    if not (folder / EMBEDDING_NAME).is_file():
        raise FileNotFoundError(_folder_without_embedding(folder, advice=f"pass a folder that {writers} wrote"))
    if not (folder / CONFIG_NAME).is_file():
        raise FileNotFoundError(
            f"{folder} has {EMBEDDING_NAME} but no {CONFIG_NAME}, so the settings of its fit are "
            f"unknown: {_LOAD_ELSEWHERE}"
        )
    if not (folder / HISTORY_NAME).is_file():
        raise FileNotFoundError(
            f"{folder / HISTORY_NAME} not found: the folder is incomplete, so save the estimator again"
        )


def _read_config(path: Path, estimator: type) -> dict[str, Any]:
    """Parse ``config.toml`` and check its three parts and the estimator's name."""
    try:
        config = tomllib.loads(path.read_text(encoding="utf-8"))
        problem = _config_problem(config)
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        problem = str(error)
    if problem is not None:
        raise ValueError(
            f"{path} cannot be read as the {CONFIG_NAME} of a saved fit ({problem}), so the file is "
            f"damaged: save the estimator again, or {_LOAD_ELSEWHERE}"
        )
    saved = ESTIMATOR_CLASSES[config["estimator"]]
    if config["estimator"] != estimator._estimator_name:
        raise ValueError(
            f"{path} contains a {saved} fit, not a {estimator.__name__} fit: load the folder with {saved}.load"
        )
    return config


def _config_problem(config: dict[str, Any]) -> str | None:
    """Describe what is missing or of the wrong type in a parsed ``config.toml``, or return None."""
    if config.get("estimator") not in ESTIMATOR_CLASSES:
        return f"estimator is {config.get('estimator')!r}, not one of {sorted(ESTIMATOR_CLASSES)}"
    for table in ("settings", "fitted"):
        if not isinstance(config.get(table), dict):
            return f"no [{table}] table"
    unknown = [key for key in config if key not in ("estimator", "settings", "fitted")]
    unknown += [f"fitted.{key}" for key in config["fitted"] if key not in _FITTED_NUMBERS]
    if unknown:
        return f"unknown key {unknown[0]!r}"
    for name, kind in _FITTED_NUMBERS.items():
        value = config["fitted"].get(name)
        # bool is a subclass of int, so an integer entry must not be a bool.
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            return f"fitted.{name} is {value!r}, not {'an integer' if kind is int else 'true or false'}"
        if kind is int and value < _FITTED_MINIMUMS[name]:
            return f"fitted.{name} is {value}, below {_FITTED_MINIMUMS[name]}"
    return None


def _settings_for(estimator: type, stored: dict[str, Any], path: Path) -> dict[str, Any]:
    """Turn the ``[settings]`` table into constructor arguments of ``estimator``.

    TOML has no null, so ``save`` writes ``None`` as an empty string. An
    empty string becomes ``None`` again where the setting's default is
    ``None``.
    """
    defaults = {
        name: parameter.default
        for name, parameter in inspect.signature(estimator.__init__).parameters.items()
        if name != "self"
    }
    settings = {}
    for name, value in stored.items():
        if name not in defaults:
            raise ValueError(
                f"{path} has the setting {name!r}, which {estimator.__name__} does not take: the file "
                "was written by another version of dimalign or edited; remove the setting"
            )
        settings[name] = None if value == "" and defaults[name] is None else value
    missing = sorted(name for name in defaults if name not in stored)
    if missing:
        values = ", ".join(f"{name}={defaults[name]!r}" for name in missing)
        warn(
            f"{path} lacks the settings {missing}, so they take their defaults ({values}): add them "
            "to [settings] if the fit used other values"
        )
    return settings


def _read_arrays(path: Path, required: tuple[str, ...]) -> dict[str, np.ndarray]:
    """Read the arrays of ``embedding.npz`` that a fit writes, and raise if one of ``required`` is missing."""
    return read_npz(
        path,
        required=required,
        optional=(*_FLOAT_ARRAYS, "kept_dims"),
        description=f"the {EMBEDDING_NAME} of a saved fit",
        advice="save the estimator again",
        missing_advice=(
            "the file is damaged or was written by another program: save the estimator again, or "
            f"{_LOAD_ELSEWHERE}"
        ),
    )


def check_arrays(saved: SavedFit, n_dims: int) -> None:
    """Raise ``ValueError`` if an array of ``embedding.npz`` differs from what a fit writes.

    The shapes must match the counts of ``config.toml``, the parameters
    must be finite floating point numbers, and ``kept_dims`` must name
    distinct columns of the unpruned parameters.

    Args:
        saved (SavedFit): The folder's contents.
        n_dims (int): The checked ``n_dims`` setting, the columns of the
            unpruned parameters.
    """
    _check_shapes(saved, n_dims)
    _check_values(saved)
    _check_kept_dims(saved, n_dims)


def _check_shapes(saved: SavedFit, n_dims: int) -> None:
    arrays, path = saved.arrays, saved.embedding_path
    n_objects, n_kept = saved.fitted["n_objects"], saved.fitted["n_dims"]
    full = (n_objects, n_dims)
    kept = (n_objects, n_kept)
    expected = {"embedding": kept, "scales": kept, "kept_dims": (n_kept,), "loc": full, "scale": full, "log_scale": full}
    for name, array in arrays.items():
        shape = expected.get(name)
        if shape is not None and array.shape != shape and shape == full and "n_dims" not in saved.settings:
            raise ValueError(
                f"{path} stores {name!r} of shape {array.shape}, but {saved.config_path} lacks the "
                f"n_dims setting, whose default is {n_dims}: add n_dims = {array.shape[-1]} to [settings]"
            )
        if shape is not None and array.shape != shape:
            raise ValueError(
                f"{path} stores {name!r} of shape {array.shape}, but {CONFIG_NAME} describes a fit of "
                f"{n_objects} objects and {n_dims} dimensions, {n_kept} of them kept, so the files do "
                "not belong together: save the estimator again"
            )


def _check_values(saved: SavedFit) -> None:
    """Raise ``ValueError`` for a float array of another type or with NaN or inf."""
    path = saved.embedding_path
    for name in _FLOAT_ARRAYS:
        array = saved.arrays.get(name)
        if array is None:
            continue
        if array.dtype.kind != "f":
            raise ValueError(
                f"{path} stores {name!r} of dtype {array.dtype}, not floating point numbers, so the "
                "file is damaged: save the estimator again"
            )
        invalid = np.argwhere(~np.isfinite(array))
        if invalid.size:
            row, column = invalid[0]
            raise ValueError(
                f"{path} stores {name!r} with {len(invalid)} NaN or infinite values, the first at row "
                f"{row}, column {column}, so the file is damaged: save the estimator again"
            )


def _check_kept_dims(saved: SavedFit, n_dims: int) -> None:
    path = saved.embedding_path
    kept_dims = saved.arrays["kept_dims"]
    if kept_dims.size and (kept_dims.dtype.kind not in "iu" or kept_dims.min() < 0 or kept_dims.max() >= n_dims):
        raise ValueError(
            f"{path} stores 'kept_dims' {kept_dims.tolist()}, which are not columns of a fit of "
            f"{n_dims} dimensions, so the file is damaged: save the estimator again"
        )
    if np.unique(kept_dims).size != kept_dims.size:
        raise ValueError(
            f"{path} stores 'kept_dims' {kept_dims.tolist()}, which repeat a column, so the file is "
            "damaged: save the estimator again"
        )


def warn_moved_checkpoint(saved: SavedFit) -> None:
    """Warn if the folder has a ``checkpoint.pt`` that its ``checkpoint_dir`` setting does not name.

    ``dimalign fit`` records its output folder as ``checkpoint_dir``, as
    given on the command line. After the folder is moved, or when a
    relative path is loaded from another working directory, ``fit`` with
    ``resume=True`` would find no checkpoint there and start a new fit.

    Args:
        saved (SavedFit): The folder's contents.
    """
    checkpoint_dir = saved.settings.get("checkpoint_dir")
    if not checkpoint_dir or not (saved.folder / CHECKPOINT_NAME).is_file():
        return
    if Path(checkpoint_dir).resolve() == saved.folder.resolve():
        return
    warn(
        f"{saved.config_path} sets checkpoint_dir to {checkpoint_dir}, not to this folder, so fit with "
        f"resume=True would not find its {CHECKPOINT_NAME}: call "
        f"set_params(checkpoint_dir={str(saved.folder)!r}) before fit to train on from it"
    )


def warn_edited_run(saved: SavedFit) -> None:
    """Warn if a file of a ``dimalign fit`` run differs from the checksum that its manifest records.

    Args:
        saved (SavedFit): The folder's contents.
    """
    if recorded_step(saved.folder) != "fit":
        return
    changed = changed_run_file(saved.folder)
    if changed:
        warn(f"{changed}: load uses the file as it is now")


def changed_run_file(run_dir: Path) -> str | None:
    """Describe the first result file of a finished run that differs from its manifest's checksum.

    ``fit_run`` records the SHA-256 of ``embedding.npz``, ``config.toml`` and
    ``objects.tsv`` in ``outputs.file_sha256`` of the run's ``manifest.json``.

    Returns:
        str | None: A sentence naming the file, or None when every recorded
        file matches. NOTE: runs whose manifest records no checksums (fitted
        before they were recorded, or written by hand) are not checked.
    """
    manifest_path = run_dir / MANIFEST_NAME
    recorded = read_manifest(run_dir).get("outputs", {}).get("file_sha256")
    if not isinstance(recorded, dict):
        return None
    for name, expected in recorded.items():
        # Only the file name is used, so a damaged manifest cannot point outside the run.
        path = run_dir / Path(str(name)).name
        if not path.is_file():
            return f"{path} is missing, but {manifest_path} records its sha256 {expected}"
        actual = sha256_file(path)
        if actual != expected:
            return (
                f"{path} does not match the sha256 that {manifest_path} records (recorded "
                f"{expected}, now {actual}), so it was replaced or damaged after the fit"
            )
    return None


def _read_history(path: Path) -> list[dict[str, float]]:
    """Read ``history.csv`` as ``history_`` rows: whole numbers as int, others as float, empty cells left out."""
    rows = []
    try:
        with path.open(encoding="utf-8", newline="") as file:
            for line, record in enumerate(csv.DictReader(file), start=2):
                if None in record or None in record.values():
                    raise ValueError(f"line {line} has a different number of cells than the header")
                try:
                    rows.append({key: _parse_number(value) for key, value in record.items() if value != ""})
                except ValueError as error:
                    raise ValueError(f"line {line}: {error}") from error
    except (UnicodeDecodeError, csv.Error, ValueError) as error:
        raise ValueError(
            f"{path} cannot be read as the {HISTORY_NAME} of a saved fit ({error}), so the file is "
            "damaged: save the estimator again"
        ) from error
    return rows


def _parse_number(text: str) -> int | float:
    # history_to_csv writes integers without a point and floats with repr, so
    # "3" was the int 3 and "3.0" the float 3.0.
    if text.lstrip("-").isdigit():
        return int(text)
    value = float(text)
    if math.isnan(value):
        # history_to_csv writes NaN as an empty cell.
        raise ValueError(f"invalid value {text!r}")
    return value
