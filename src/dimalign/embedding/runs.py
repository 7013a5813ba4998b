"""Fit an estimator and write a complete run directory."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from dimalign.embedding.base import CONFIG_NAME, HISTORY_NAME, TENSORBOARD_DIR_NAME, TripletEmbedding
from dimalign.embedding.checkpoint import CHECKPOINT_NAME
from dimalign.io.files import (
    MANIFEST_NAME,
    check_unowned_files,
    exclusive_lock,
    now_iso,
    output_dir,
    report_leftover_stages,
    sha256_file,
    staged_outputs,
    write_manifest,
)
from dimalign.io.objects import OBJECT_TABLE_NAME, ObjectTable, read_object_table, write_object_table
from dimalign.io.runs import EMBEDDING_NAME

logger = logging.getLogger(__name__)

#: Lock file that a running fit holds in its run directory.
FIT_LOCK_NAME = ".fit.lock"

#: The files of a run whose SHA-256 the run's ``manifest.json`` records in
#: ``outputs.file_sha256`` (``objects.tsv`` only when the run has one).
RESULT_FILES = (EMBEDDING_NAME, CONFIG_NAME, OBJECT_TABLE_NAME)


def fit_run(
    estimator: TripletEmbedding,
    train: np.ndarray,
    val: np.ndarray | None,
    out_dir: str | os.PathLike,
    *,
    n_objects: int,
    object_table: ObjectTable | None = None,
    inputs: Mapping[str, str | os.PathLike] | None = None,
    split: Mapping[str, Any] | None = None,
) -> TripletEmbedding:
    """Fit ``estimator`` with checkpoints in ``out_dir`` and write the run directory.

    The directory receives ``objects.tsv`` (when an object table is given)
    before training, ``checkpoint.pt`` during training, then
    ``embedding.npz``, ``config.toml``, ``history.csv`` and ``manifest.json``
    with the held-out accuracy. The last four files are written into a hidden
    folder and moved into ``out_dir`` together, so that a failure or a signal
    while they are written leaves the files of an earlier fit whole. If the
    fit fails, a run directory that this call created is removed again,
    unless it already contains ``checkpoint.pt``. Without a checkpoint, an
    ``objects.tsv`` that this call wrote is removed too.

    Args:
        estimator (TripletEmbedding): A VICE or SPoSE instance. Its
            ``checkpoint_dir`` is set to ``out_dir``.
        train (np.ndarray): Training triplets, shape ``(n_train, 3)``.
        val (np.ndarray | None): Validation triplets.
        out_dir (str | os.PathLike): The run directory.
        n_objects (int): Number of objects.
        object_table (ObjectTable | None): Names of the objects in row order.
        inputs (Mapping[str, path] | None): Input files recorded with checksums.
        split (Mapping[str, Any] | None): How the validation triplets were
            made, such as ``{"val_fraction": 0.1, "split_seed": 0}``, recorded
            with the settings.

    Returns:
        TripletEmbedding: The fitted estimator.

    Raises:
        FileExistsError: If ``out_dir`` contains ``embedding.npz`` but no
            ``checkpoint.pt``, or a checkpoint while ``resume`` is False. Also
            if a file name of the run is a folder (or ``tensorboard`` a file
            while ``tensorboard`` is True), or if ``config.toml`` or
            ``history.csv`` exist in a folder without an earlier fit, or an
            ``objects.tsv`` of other objects than ``object_table`` exists
            without a checkpoint, or any ``objects.tsv`` exists without a
            checkpoint while ``object_table`` is None.
        RuntimeError: If another fit is writing to ``out_dir``.
        ValueError: If ``out_dir`` contains a checkpoint and an
            ``objects.tsv`` of other objects than ``object_table``.
    """
    started = now_iso()
    out_dir = Path(out_dir)
    if object_table is not None and len(object_table) != n_objects:
        raise ValueError(f"the object table lists {len(object_table)} objects, but n_objects={n_objects}")
    _reject_folders_at_file_names(out_dir)
    tensorboard_dir = out_dir / TENSORBOARD_DIR_NAME
    if getattr(estimator, "tensorboard", False) and tensorboard_dir.exists() and not tensorboard_dir.is_dir():
        raise FileExistsError(
            f"{tensorboard_dir} is a file, but --tensorboard writes its event files into a folder "
            "of that name: move the file away, or choose another run directory"
        )
    _reject_result_without_checkpoint(out_dir)
    if not (out_dir / CHECKPOINT_NAME).is_file():
        # A fit writes config.toml and history.csv only after its last
        # checkpoint, so without one they are not a fit's: they may be the
        # user's only copy. objects.tsv is checked once the fit's own table
        # is known, because a table of the same objects may stay.
        check_unowned_files(out_dir, [CONFIG_NAME, HISTORY_NAME], "fit")
        if object_table is None and (out_dir / OBJECT_TABLE_NAME).exists():
            raise FileExistsError(
                f"{out_dir / OBJECT_TABLE_NAME} exists, but this fit has no object table, so "
                f"readers of the run would take that file for the names of its {n_objects} rows: "
                "pass it with --objects if it names the objects the triplets index, or move it "
                "away, or choose another run directory"
            )
    busy = (
        f"{out_dir} is in use by another fit, which holds {out_dir / FIT_LOCK_NAME}: wait for it "
        "to finish (then pass --resume to continue it) or choose another run directory"
    )
    # A folder created here is removed if the fit fails, unless a checkpoint
    # was written that a rerun with resume=True can continue from. A fit
    # removes its lock file when it ends (unless killed by SIGKILL), so a fit
    # that finds the folder busy leaves it to the other, even where both
    # created it.
    with output_dir(out_dir, keep_if_contains=(CHECKPOINT_NAME, FIT_LOCK_NAME)):
        with exclusive_lock(out_dir / FIT_LOCK_NAME, busy):
            _remove_temporary_files(out_dir)
            report_leftover_stages(out_dir)
            _fit_and_save(estimator, train, val, out_dir, n_objects, object_table, inputs, split, started)
    return estimator


def _remove_temporary_files(out_dir: Path) -> None:
    """Remove the temporary files of atomic writes that a killed fit left in ``out_dir``.

    :func:`dimalign.io.files.atomic_path` writes ``.<stem>.<random>.tmp<suffix>``
    next to each file and removes it unless the process is killed (SIGKILL,
    a power cut). The caller holds the run's lock, so no other fit is writing them.
    """
    names = (CHECKPOINT_NAME, EMBEDDING_NAME, CONFIG_NAME, HISTORY_NAME, OBJECT_TABLE_NAME, MANIFEST_NAME)
    leftovers = [
        path
        for name in names
        for path in out_dir.glob(f".{Path(name).stem}.*.tmp{Path(name).suffix}")
        if path.is_file()
    ]
    for path in leftovers:
        path.unlink()
    if leftovers:
        logger.info(
            "removed %d temporary files that an interrupted fit left in %s: %s",
            len(leftovers), out_dir, ", ".join(sorted(path.name for path in leftovers)),
        )


def _reject_folders_at_file_names(out_dir: Path) -> None:
    """Raise ``FileExistsError`` if a file that the fit writes in ``out_dir`` is a folder.

    Checked before training, because otherwise the write fails only after the
    epochs up to the first checkpoint, or after the whole fit.
    """
    names = (CHECKPOINT_NAME, EMBEDDING_NAME, CONFIG_NAME, HISTORY_NAME, OBJECT_TABLE_NAME, FIT_LOCK_NAME)
    for name in names:
        path = out_dir / name
        if path.is_dir():
            raise FileExistsError(
                f"{path} is a folder, but dimalign fit writes a file of that name in the run "
                "directory: move the folder away, or choose another run directory"
            )


def _reject_result_without_checkpoint(out_dir: Path) -> None:
    """Raise ``FileExistsError`` if ``out_dir`` contains a fitted embedding that no checkpoint can resume.

    With ``checkpoint.pt`` present, :meth:`TripletEmbedding.fit` decides:
    it resumes when asked and raises otherwise. Without one, a new fit
    would start from scratch and replace the earlier result.
    """
    embedding = out_dir / EMBEDDING_NAME
    if embedding.is_file() and not (out_dir / CHECKPOINT_NAME).is_file():
        raise FileExistsError(
            f"{out_dir} contains a fitted embedding ({EMBEDDING_NAME}) but no {CHECKPOINT_NAME} to "
            f"resume it from, so a new fit would replace that result: choose another run "
            f"directory, or remove {embedding} to fit there from scratch"
        )


def _raise_if_other_objects(path: Path, object_table: ObjectTable, *, resumable: bool) -> None:
    """Raise if the object table at ``path`` names other objects than ``object_table``.

    With a checkpoint (``resumable``), the checkpoint ties the embedding's
    rows to the triplets' indices, and the table names those rows, so a
    resume with another table would relabel them. Without one, the table is
    not from a fit, which removes its table when it fails before its first
    checkpoint, so writing this fit's table would replace the user's file.

    Raises:
        ValueError: With a checkpoint, if the saved table names other objects.
        FileExistsError: Without one, if ``path`` exists and is not a
            readable table of the same objects.
    """
    if not path.exists():
        return
    if not resumable:
        try:
            saved = read_object_table(path).object_ids
        except ValueError as error:
            raise FileExistsError(
                f"{path} is not an object table that dimalign fit can read ({error}), and no "
                f"{CHECKPOINT_NAME} of a fit lies next to it, so the fit would replace a file it "
                "did not write: move the file away, or choose another run directory"
            ) from error
        if saved == object_table.object_ids:
            return
        raise FileExistsError(
            f"{path} {_table_difference(saved, object_table)}, and no {CHECKPOINT_NAME} of a fit "
            "lies next to it, so the fit would replace a table it did not write: move the file "
            "away, or choose another run directory"
        )
    saved = read_object_table(path).object_ids
    if saved == object_table.object_ids:
        return
    raise ValueError(
        f"{path} {_table_difference(saved, object_table)}: the run was fitted with other objects; "
        "resume with the object table it was fitted with, or choose another run directory"
    )


def _table_difference(saved: list[str], object_table: ObjectTable) -> str:
    """Describe the first difference between saved object ids and ``object_table``."""
    if len(saved) != len(object_table):
        return f"lists {len(saved)} objects, this fit's object table {len(object_table)}"
    row = next(row for row, (old, new) in enumerate(zip(saved, object_table.object_ids)) if old != new)
    return f"names row {row} {saved[row]!r}, this fit's object table {object_table.object_ids[row]!r}"


def _lists_objects(path: Path, object_table: ObjectTable) -> bool:
    """Return whether ``path`` is a readable object table of the same ids, in the same order."""
    if not path.is_file():
        return False
    try:
        return read_object_table(path).object_ids == object_table.object_ids
    except ValueError:
        return False


def _fit_and_save(
    estimator: TripletEmbedding,
    train: np.ndarray,
    val: np.ndarray | None,
    out_dir: Path,
    n_objects: int,
    object_table: ObjectTable | None,
    inputs: Mapping[str, str | os.PathLike] | None,
    split: Mapping[str, Any] | None,
    started: str,
) -> None:
    estimator.set_params(checkpoint_dir=str(out_dir))
    table_path = out_dir / OBJECT_TABLE_NAME
    wrote_table = False
    if object_table is not None:
        # Written before the fit, so that a resume can check its objects
        # against it. A fit that fails before its first checkpoint removes
        # the table again (below). So a table of other objects without a
        # checkpoint was not written by a fit, and it may be the user's only copy.
        _raise_if_other_objects(
            table_path, object_table, resumable=(out_dir / CHECKPOINT_NAME).is_file()
        )
        # A table of the same objects stays as it is: it may be the input
        # table itself, whose columns beyond index, object_id and source a
        # rewrite would drop.
        if not _lists_objects(table_path, object_table):
            write_object_table(object_table, table_path)
            wrote_table = True
    try:
        estimator.fit(train, val, n_objects=n_objects)
    except BaseException:
        if wrote_table and not (out_dir / CHECKPOINT_NAME).is_file():
            table_path.unlink(missing_ok=True)
        raise
    # The results are written into a hidden folder and moved into out_dir
    # when all of them are written, manifest.json last. An error or a signal
    # (Ctrl-C, SIGTERM) before the last move puts the files of an earlier
    # fit back, so out_dir never mixes the files of two fits. A run without
    # an earlier fit then contains only its checkpoint, which a resume continues.
    with staged_outputs(out_dir) as stage:
        estimator.save(stage)
        _write_fit_manifest(estimator, train, val, out_dir, stage, n_objects, inputs, split, started)


def _write_fit_manifest(
    estimator: TripletEmbedding,
    train: np.ndarray,
    val: np.ndarray | None,
    out_dir: Path,
    stage: Path,
    n_objects: int,
    inputs: Mapping[str, str | os.PathLike] | None,
    split: Mapping[str, Any] | None,
    started: str,
) -> None:
    """Write the ``manifest.json`` of a saved fit into ``stage``, with its held-out accuracy and file checksums.

    The result files are in ``stage``, except ``objects.tsv``, which the fit
    wrote into ``out_dir`` before training.
    """
    result_paths = {
        name: stage / name if (stage / name).is_file() else out_dir / name for name in RESULT_FILES
    }
    outputs: dict[str, Any] = {
        "n_dims": estimator.n_dims_,
        "n_epochs": estimator.n_epochs_,
        "converged": estimator.converged_,
        "n_train": int(len(train)),
        # Checksums of the result files, so that a reader such as dimalign
        # select can tell a file that was replaced after the fit.
        "file_sha256": {name: sha256_file(path) for name, path in result_paths.items() if path.is_file()},
    }
    if val is not None:
        outputs["val_accuracy"] = estimator.score(val)
        outputs["n_val"] = int(len(val))
        logger.info(
            "%s: %d dimensions, held-out accuracy %.4f on %d triplets",
            out_dir, estimator.n_dims_, outputs["val_accuracy"], len(val),
        )
    write_manifest(
        stage, step="fit", inputs=inputs, started=started,
        settings={
            "estimator": type(estimator).__name__, **estimator.get_params(), "n_objects": n_objects,
            **({"validation_split": dict(split)} if split else {}),
        },
        outputs=outputs,
    )
