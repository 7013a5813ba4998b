"""Choosing the most reproducible run of a sweep.

:func:`find_runs` lists the finished runs of a sweep directory that
:func:`dimalign.analysis.sweep.sweep` wrote, leaving out those that a rerun of
the sweep would reject.

:func:`select_run` scores every run of a sweep by the split-half
reproducibility of its dimensions across the other runs
(:mod:`dimalign.analysis.reproducibility`) and picks the run with the highest
mean. It writes ``runs.csv``, ``dimensions.csv``, ``selected.txt`` and
``manifest.json``.

The checks of a finished run against the sweep's settings and triplets, and
of its files against their recorded checksums, are those of
:mod:`dimalign.analysis.sweep`, imported from there.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from dimalign._warnings import warn
from dimalign.analysis.sweep import (
    _CHECKPOINT_NAME,
    _FIT_LOCK_NAME,
    _UNCOMPARED_SETTINGS,
    ESTIMATORS,
    RUNS_FOLDER,
    _being_fitted,
    _digest_text,
    _finished_run_difference,
    _is_finished,
    _TripletChecksums,
)
from dimalign.embedding.run_files import changed_run_file
from dimalign.io.files import (
    MANIFEST_NAME,
    check_output_dir,
    check_unowned_files,
    check_writable,
    now_iso,
    read_manifest,
    report_leftover_stages,
    sha256_file,
    staged_outputs,
    write_manifest,
)
from dimalign.io.objects import OBJECT_TABLE_NAME
from dimalign.io.runs import EMBEDDING_NAME, load_embedding

logger = logging.getLogger(__name__)

# The settings file that TripletEmbedding.save writes (dimalign.embedding.base.CONFIG_NAME).
_CONFIG_NAME = "config.toml"


@dataclass
class Selection:
    """The outcome of :func:`select_run`.

    Attributes:
        runs (pd.DataFrame): One row per run: seed, run_dir, n_dims,
            val_accuracy, point_val_accuracy, reproducibility, selected.
        selected_run (Path): Directory of the chosen run.
        selected_seed (int | None): Its seed (None when unknown).
    """

    runs: pd.DataFrame
    selected_run: Path
    selected_seed: int | None


def find_runs(sweep_dir: str | os.PathLike) -> list[Path]:
    """List the finished runs of a sweep by seed.

    A run is finished when its ``runs/seed_*`` folder has both
    ``embedding.npz`` and ``manifest.json``, which ``fit_run`` writes after the fit.

    A run is excluded, with a warning, when its manifest records another
    estimator, estimator setting, number of objects or triplets than the
    sweep's ``manifest.json`` and its ``train.npy``/``val.npy``. These are
    the checks of a rerun of ``dimalign sweep``, and they catch a run copied
    in from another sweep. A run whose ``embedding.npz``, ``config.toml`` or
    ``objects.tsv`` no longer matches the checksum in its own manifest is
    excluded too.

    Args:
        sweep_dir (str | os.PathLike): The sweep directory, with ``runs/seed_*``.

    Returns:
        list[Path]: The run folders, by seed (folders without a seed in
        their name last, by name).

    Raises:
        FileNotFoundError: If the sweep has fewer than two finished runs.
        ValueError: If two runs record the same seed (naming both).

    Warns:
        UserWarning: Naming the ``seed_*`` folders that are skipped because
            they are unfinished (only a checkpoint) or incomplete, and those
            excluded with the first difference of each.
    """
    runs_folder = Path(sweep_dir) / RUNS_FOLDER
    candidates = sorted(
        (path for path in runs_folder.glob("seed_*") if path.is_dir()),
        key=lambda path: (_seed_of(path) is None, _seed_of(path) or 0, path.name),
    )
    runs = [path for path in candidates if _is_finished(path) and not _being_fitted(path)]
    skipped = [f"{path.name} ({_unfinished_reason(path)})" for path in candidates if path not in runs]
    if skipped:
        # A sweep rerun stops at a run whose .fit.lock is held, so those runs need a wait instead.
        n_writing = sum(_being_fitted(path) for path in candidates if path not in runs)
        advice = []
        if n_writing:
            advice.append(f"wait for the fits that are writing {n_writing} of them to end")
        if n_writing < len(skipped):
            others = "the others" if n_writing else "them"
            advice.append(f"rerun 'dimalign sweep' with the same settings to finish {others}")
        advice_text = ", and ".join(advice)
        warn(
            f"{runs_folder}: skipped {len(skipped)} runs that are not finished: {', '.join(skipped[:20])}. "
            f"{advice_text[0].upper()}{advice_text[1:]}",
            UserWarning,
        )
    finished = runs
    runs = _runs_of_this_sweep(Path(sweep_dir), finished)
    _check_distinct_seeds(runs)
    n_excluded = len(finished) - len(runs)
    excluded = (
        f" It also has {n_excluded} finished runs that differ from "
        f"{Path(sweep_dir) / MANIFEST_NAME} or whose files changed after the fit (see the "
        "warning); move those that belong to another sweep out, and restore or remove the changed ones."
        if n_excluded else ""
    )
    unfinished = (
        f" It also has {len(skipped)} unfinished run{'s' if len(skipped) != 1 else ''} (see the warning), "
        "which count once they are finished."
        if skipped else ""
    )
    if len(runs) == 1:
        raise FileNotFoundError(
            f"{runs_folder} has 1 finished run of this sweep ({runs[0].name}), but selection compares "
            "runs and needs at least two: rerun 'dimalign sweep' into the same folder with more seeds "
            f"(finished runs are reused).{excluded}{unfinished}"
        )
    if not runs and n_excluded:
        raise FileNotFoundError(
            f"{runs_folder} has no finished run of this sweep, but selection needs at least two."
            f"{excluded}{unfinished}"
        )
    if not runs:
        raise FileNotFoundError(
            f"{runs_folder} has no finished run (seed_*/embedding.npz with manifest.json): "
            f"selection needs at least two; run 'dimalign sweep' first.{unfinished}"
        )
    return runs


def _runs_of_this_sweep(sweep_dir: Path, runs: list[Path]) -> list[Path]:
    """Return the unchanged runs whose settings and triplets match the sweep's, warning about the others.

    A run is excluded when a result file no longer matches the checksum of
    its own ``manifest.json`` (see :func:`changed_run_file`), or when it differs
    from the sweep's ``manifest.json``. Without the sweep's manifest (a sweep
    stopped before its end writes none), only the file checksums are checked,
    with a warning.
    """
    manifest_path = sweep_dir / MANIFEST_NAME
    manifest = read_manifest(sweep_dir) if manifest_path.is_file() else {}
    recorded = manifest.get("settings", {})
    comparable = manifest.get("step") == "sweep" and recorded.get("method") in ESTIMATORS
    if not comparable:
        warn(
            f"{sweep_dir} has no manifest.json of dimalign sweep, so the settings and triplets of "
            f"its {len(runs)} runs are not compared: rerun 'dimalign sweep' into it with the same "
            "settings to write one",
            UserWarning,
        )
    else:
        train_path, val_path = sweep_dir / "train.npy", sweep_dir / "val.npy"
        recorded_train = manifest.get("inputs", {}).get("train", {}).get("sha256")
        data = _TripletChecksums(
            train_file=sha256_file(train_path) if train_path.is_file() else recorded_train,
            val_file=sha256_file(val_path) if val_path.is_file() else None,
        )

    included, excluded = [], []
    for run_dir in runs:
        difference = changed_run_file(run_dir)
        if difference is None and comparable:
            difference = _finished_run_difference(
                run_dir, recorded["method"], recorded.get("estimator_settings", {}),
                int(recorded["n_objects"]), data,
            )
        if difference is None:
            included.append(run_dir)
        else:
            excluded.append(f"{run_dir.name}: {difference}")
    if excluded:
        warn(
            f"{sweep_dir / RUNS_FOLDER}: excluded {len(excluded)} runs that differ from the sweep's "
            f"{MANIFEST_NAME} or whose files changed after the fit, so they are not scored: "
            f"{'; '.join(excluded[:20])}. Move runs of other sweeps out of it, and restore or "
            "remove the changed ones (a rerun of 'dimalign sweep' fits a removed seed again)",
            UserWarning,
        )
    return included


def _check_distinct_seeds(runs: Sequence[Path]) -> None:
    """Raise ``ValueError`` when two runs record the same seed: the same fit twice would reproduce itself."""
    first_with_seed: dict[int, Path] = {}
    for run_dir in runs:
        seed = _recorded_seed(run_dir)
        if seed is None:
            continue
        if seed in first_with_seed:
            raise ValueError(
                f"runs {first_with_seed[seed]} and {run_dir} both record seed {seed}, so one is a "
                "copy or a refit of the other and would count as a perfect reproduction: keep one of them"
            )
        first_with_seed[seed] = run_dir


def _unfinished_reason(run_dir: Path) -> str:
    if _being_fitted(run_dir):
        return f"a fit is writing it, {_FIT_LOCK_NAME} is locked"
    if (run_dir / EMBEDDING_NAME).is_file():
        return f"{EMBEDDING_NAME} without {MANIFEST_NAME}"
    if (run_dir / _CHECKPOINT_NAME).is_file():
        return f"only {_CHECKPOINT_NAME}, unfinished"
    return f"no {EMBEDDING_NAME}"


def _seed_of(run_dir: Path) -> int | None:
    suffix = run_dir.name.removeprefix("seed_")
    return int(suffix) if suffix.lstrip("-").isdigit() else None


def select_run(
    run_dirs: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    *,
    split: str = "odd_even",
    random_state: int = 0,
    val: np.ndarray | None = None,
    copy_selected: bool = False,
) -> Selection:
    """Choose the run whose dimensions the other runs reproduce best.

    Args:
        run_dirs (Sequence[path]): At least two distinct run directories (or
            embedding files) of the same objects. Runs that carry an
            ``objects.tsv`` are aligned to the first run's object order by id.
        out_dir (str | os.PathLike): Where ``runs.csv``, ``dimensions.csv``,
            ``selected.txt`` and ``manifest.json`` go. A folder that contains
            the output of another step is rejected.
        split (str): ``"odd_even"`` or ``"random"`` object halves.
        random_state (int): Seed of a random split.
        val (np.ndarray | None): Validation triplets. Every run's
            ``point_val_accuracy`` is the odd-one-out accuracy of its
            posterior means on them (argmax of the dot products, ties split
            the credit). Without them the column is NaN. ``val_accuracy`` is
            what the run's manifest records, as in ``sweep.csv``.
        copy_selected (bool): Also copy the chosen run directory to
            ``out_dir/selected_run`` (a real copy, no symbolic link). Without
            it, a copy left by an earlier selection is removed.

    Returns:
        Selection: The runs table and the chosen run.

    Raises:
        FileExistsError: If ``out_dir`` contains the output of another step
            or is a run directory, if a folder in it is named like an output
            file, or if, without an earlier selection in it, a file or folder
            in it has an output name.
        FileNotFoundError: If a run is missing or has no ``embedding.npz``.
        ValueError: If ``out_dir`` is inside a run, a run is inside
            ``out_dir/selected_run``, ``copy_selected`` is set for an
            embedding file, or a run is a sweep directory. Also if a fit is
            writing a run, or a result file of a run no longer matches the
            checksum in its manifest. Also if two fit manifests record other
            settings or triplets, a run is given twice, or two runs record
            the same seed or have the same weights. Also if the runs have
            different numbers of objects, or their object tables list
            different objects. The messages name the runs.
    """
    from dimalign.analysis.reproducibility import reproducibility

    started = now_iso()
    out_dir = Path(out_dir)
    _check_select_output(out_dir)
    run_dirs = [Path(path) for path in run_dirs]
    _check_selectable_runs(run_dirs, out_dir, copy_selected=copy_selected)
    embeddings = _aligned_embeddings(run_dirs)
    _check_distinct_embeddings(run_dirs, embeddings)
    result = reproducibility(
        embeddings, split=split, random_state=random_state, names=[str(path) for path in run_dirs]
    )

    rows, runs, dimensions = _selection_tables(run_dirs, embeddings, result, val)
    best = result.best_run

    # The outputs go into a hidden folder inside out_dir and replace those of
    # an earlier selection only when all are written, manifest.json last. A
    # failed or interrupted rerun thus leaves the earlier selection whole. The
    # files of an earlier copy of the chosen run go aside with the replaced
    # ones, so no file of another run stays in selected_run/. A folder that
    # this call creates is removed again if writing fails, unless another
    # program wrote into it meanwhile.
    selected_run = run_dirs[best].resolve()
    copy_target = out_dir / SELECTED_COPY_NAME
    with staged_outputs(out_dir, retire=_SELECT_RETIRED) as stage:
        for name, frame in (("runs.csv", runs), ("dimensions.csv", dimensions)):
            frame.to_csv(stage / name, index=False)
        (stage / "selected.txt").write_text(f"{selected_run}\n", encoding="utf-8")
        if copy_selected:
            _copy_run(selected_run, stage / SELECTED_COPY_NAME)
        write_manifest(
            stage,
            step="select",
            inputs={
                f"run_{index}": path / EMBEDDING_NAME if path.is_dir() else path
                for index, path in enumerate(run_dirs)
            },
            settings={
                "split": result.split,
                "criterion": "highest mean split-half reproducibility",
                "val_accuracy": RECORDED_ACCURACY_DEFINITION,
                "point_val_accuracy": POINT_ACCURACY_DEFINITION if val is not None else None,
            },
            started=started,
            outputs={
                "selected_run": selected_run,
                "selected_seed": rows[best]["seed"],
                "selected_reproducibility": rows[best]["reproducibility"],
                "selected_n_dims": rows[best]["n_dims"],
                "selected_copy": copy_target if copy_selected else None,
                "n_runs": len(rows),
            },
        )
    _remove_empty_folders(copy_target, keep_like=selected_run if copy_selected else None)
    accuracy = rows[best]["point_val_accuracy"]
    logger.info(
        "selected %s: reproducibility %.3f, %d dimensions%s",
        selected_run, rows[best]["reproducibility"], rows[best]["n_dims"],
        "" if math.isnan(accuracy) else f", held-out accuracy of the posterior means {accuracy:.4f}",
    )
    return Selection(runs=runs, selected_run=selected_run, selected_seed=rows[best]["seed"])


SELECTED_COPY_NAME = "selected_run"


def _selection_tables(
    run_dirs: Sequence[Path], embeddings: Sequence[np.ndarray], result: Any, val: np.ndarray | None
) -> tuple[list[dict[str, Any]], pd.DataFrame, pd.DataFrame]:
    """Build the rows of ``runs.csv`` and ``dimensions.csv``.

    Args:
        run_dirs (Sequence[Path]): The runs, in the order of ``embeddings``.
        embeddings (Sequence[np.ndarray]): Each run's weights, shape ``(n_objects, n_dims_r)``.
        result (ReproducibilityResult): The scores of the runs.
        val (np.ndarray | None): Validation triplets for ``point_val_accuracy``.

    Returns:
        tuple[list[dict], pd.DataFrame, pd.DataFrame]: One dict per run, the
        runs table with its ``selected`` column, and one row per dimension.
    """
    rows = []
    for index, (path, embedding) in enumerate(zip(run_dirs, embeddings)):
        rows.append(
            {
                "seed": _recorded_seed(path),
                "run_dir": str(path.resolve()),
                "n_dims": int(embedding.shape[1]),
                "val_accuracy": _recorded_accuracy(path),
                "point_val_accuracy": _point_estimate_accuracy(embedding, val),
                "reproducibility": float(result.run_scores[index]),
            }
        )
    # Int64 keeps whole seeds (0, not 0.0) next to an unknown one, written as an empty field.
    runs = pd.DataFrame(rows).astype({"seed": "Int64"})
    runs["selected"] = np.arange(len(rows)) == result.best_run
    dimensions = pd.DataFrame(
        [
            {"run_dir": rows[run]["run_dir"], "seed": rows[run]["seed"], "dim": dim, "reproducibility": float(score)}
            for run, scores in enumerate(result.dim_scores)
            for dim, score in enumerate(scores)
        ],
        columns=["run_dir", "seed", "dim", "reproducibility"],
    ).astype({"seed": "Int64"})
    return rows, runs, dimensions


def _check_select_output(out_dir: Path) -> None:
    """Reject an output folder that select must not write into, before any work."""
    check_output_dir(out_dir, "select")
    # Outside an earlier selection, a file of an output name may be the user's only copy.
    check_unowned_files(out_dir, [*SELECT_OUTPUTS, SELECTED_COPY_NAME], "select")
    _reject_select_paths_in_the_way(out_dir)
    check_writable(out_dir)
    report_leftover_stages(out_dir)


def _check_selectable_runs(run_dirs: Sequence[Path], out_dir: Path, *, copy_selected: bool) -> None:
    """Reject runs that are missing, overlap the outputs, changed, or differ in more than the seed."""
    _check_runs_exist(run_dirs)
    _reject_runs_among_outputs(run_dirs, out_dir, copy_selected=copy_selected)
    _check_distinct_runs(run_dirs)
    _check_unchanged_runs(run_dirs)
    _check_runs_fitted_alike(run_dirs)
    _check_distinct_seeds(run_dirs)

#: The files that select writes into its output folder, besides ``manifest.json``.
SELECT_OUTPUTS = ("runs.csv", "dimensions.csv", "selected.txt")

# An earlier copy of a chosen run is moved aside with the replaced outputs
# (and so deleted), unless the new copy has a file of the same name.
_SELECT_RETIRED = (f"{SELECTED_COPY_NAME}/**/*",)

#: Definition of the ``val_accuracy`` column of ``sweep.csv`` and ``runs.csv``.
RECORDED_ACCURACY_DEFINITION = (
    "held-out accuracy that the run's manifest records (estimator.score on the validation "
    "triplets; for VICE the posterior predictive); NaN when not recorded"
)

#: Definition of the ``point_val_accuracy`` column of ``runs.csv``, the same for every run.
POINT_ACCURACY_DEFINITION = (
    "odd-one-out accuracy of the posterior means on the sweep's val.npy "
    "(argmax of the dot products, ties split the credit)"
)


def _reject_select_paths_in_the_way(out_dir: Path) -> None:
    """Raise ``FileExistsError`` where something in ``out_dir`` would block the final moves.

    A folder named like an output file, or a file named ``selected_run``,
    would otherwise stop the selection after all its work. A run directory
    without a manifest (an unfinished run) is rejected too, because its fit
    would later replace the selection's manifest when it resumes.
    """
    for name in (_CHECKPOINT_NAME, EMBEDDING_NAME, _FIT_LOCK_NAME):
        if (out_dir / name).exists():
            raise FileExistsError(
                f"{out_dir} contains {name}, so it is a run directory: choose an output folder "
                "outside the runs"
            )
    for name in [*SELECT_OUTPUTS, MANIFEST_NAME]:
        path = out_dir / name
        if path.is_dir():
            raise FileExistsError(
                f"{path} is a folder, but select writes a file there: move it away, or choose another -o"
            )
    copy_target = out_dir / SELECTED_COPY_NAME
    if copy_target.is_symlink() or (copy_target.exists() and not copy_target.is_dir()):
        raise FileExistsError(
            f"{copy_target} is not a folder, but select keeps its copy of the chosen run in a "
            "folder there: move it away, or choose another -o"
        )


def _run_folder(path: Path) -> Path | None:
    """Return the run directory of a run given by path (a folder, or its ``embedding.npz``), if it has a manifest."""
    folder = _run_directory(path)
    if folder is None or not (folder / MANIFEST_NAME).is_file():
        return None
    return folder


def _run_directory(path: Path) -> Path | None:
    """Return ``path`` if it is a folder, its folder if it is an ``embedding.npz``, else None."""
    if path.is_dir():
        return path
    if path.name == EMBEDDING_NAME:
        return path.parent
    return None


def _check_unchanged_runs(run_dirs: Sequence[Path]) -> None:
    """Raise ``ValueError`` if a fit is writing a run, or a result file changed after its fit.

    The files are compared with the checksums of the run's manifest (see :func:`changed_run_file`).
    """
    for path in run_dirs:
        folder = path if path.is_dir() else path.parent
        if _being_fitted(folder):
            raise ValueError(
                f"run {path} is being written by a fit, which holds {folder / _FIT_LOCK_NAME} and "
                "replaces its files when it ends: wait for the fit to finish, or leave the run out"
            )
        folder = _run_folder(path)
        changed = changed_run_file(folder) if folder is not None else None
        if changed:
            raise ValueError(
                f"run {path}: {changed}. Its scores would not describe the fitted run: restore the "
                "file or fit the run again, or leave the run out"
            )


def _fit_manifest(path: Path) -> dict[str, Any] | None:
    """Return the ``manifest.json`` of ``dimalign fit`` (or a sweep's fit) of a run given by path, else None."""
    folder = _run_folder(path)
    if folder is None:
        return None
    manifest = read_manifest(folder)
    if manifest.get("step") != "fit" or not isinstance(manifest.get("settings"), dict):
        return None
    return manifest


def _fit_difference(first: Mapping[str, Any], other: Mapping[str, Any]) -> tuple[str, str] | None:
    """Return how two fit manifests differ, as the first manifest's and the other's values, or None.

    Compared are the estimator, every estimator setting except those in
    ``_UNCOMPARED_SETTINGS`` (the seed, the device, logging, the number of
    objects), the validation split and the checksums of the triplets. The
    objects are compared later, through the embeddings and object tables.
    """
    first_settings, other_settings = first["settings"], other["settings"]
    missing = object()
    names = sorted((set(first_settings) | set(other_settings)) - _UNCOMPARED_SETTINGS)
    # The estimator goes first, because its settings differ with it.
    for name in sorted(names, key=lambda name: name != "estimator"):
        first_value = first_settings.get(name, missing)
        other_value = other_settings.get(name, missing)
        if first_value != other_value:
            return tuple(
                f"no {name}" if value is missing else f"{name}={value!r}"
                for value in (first_value, other_value)
            )
    for key, label in (("train", "training"), ("val", "validation")):
        first_sha256 = first.get("inputs", {}).get(key, {}).get("sha256")
        other_sha256 = other.get("inputs", {}).get(key, {}).get("sha256")
        if first_sha256 != other_sha256:
            return (
                f"{label} triplets {_digest_text(first_sha256)}",
                f"other {label} triplets ({_digest_text(other_sha256)})",
            )
    return None


def _check_runs_fitted_alike(run_dirs: Sequence[Path]) -> None:
    """Raise ``ValueError`` if two runs record other settings or triplets in their fit manifests.

    Reproducibility across seeds is meaningful only among fits that differ
    in the seed alone. Every run with a ``manifest.json`` of ``dimalign fit``
    is compared with the first such run. Runs without one (embedding files,
    runs written by other programs) cannot be compared and are named in a warning.
    """
    manifests = [_fit_manifest(path) for path in run_dirs]
    uncompared = [str(path) for path, manifest in zip(run_dirs, manifests) if manifest is None]
    if uncompared:
        warn(
            f"runs {uncompared[:20]} have no manifest.json of dimalign fit, so their settings and "
            "triplets are not compared with those of the other runs: make sure that they differ "
            "in the seed only",
            UserWarning,
        )
    compared = [(path, manifest) for path, manifest in zip(run_dirs, manifests) if manifest is not None]
    if not compared:
        return
    first_path, first_manifest = compared[0]
    for path, manifest in compared[1:]:
        difference = _fit_difference(first_manifest, manifest)
        if difference is None:
            continue
        raise ValueError(
            f"runs {first_path} and {path} were fitted differently: "
            f"{_run_folder(first_path) / MANIFEST_NAME} records {difference[0]}, "
            f"{_run_folder(path) / MANIFEST_NAME} records {difference[1]}. Reproducibility "
            "compares runs that differ in the seed only: select among runs of one sweep, or "
            "leave out the runs fitted otherwise"
        )


def _check_runs_exist(run_dirs: Sequence[Path]) -> None:
    """Raise for a run path that is missing, a sweep directory, or a folder without ``embedding.npz``.

    Raises:
        FileNotFoundError: If a path does not exist, or names a folder
            without ``embedding.npz`` (an unfinished run).
        ValueError: If a path is a sweep directory.
    """
    for path in run_dirs:
        if not path.exists():
            raise FileNotFoundError(f"run {path} not found: pass run directories or embedding files")
        if not path.is_dir() or (path / EMBEDDING_NAME).is_file():
            continue
        if (path / RUNS_FOLDER).is_dir():
            raise ValueError(
                f"{path} is a sweep directory, not a run: select one sweep at a time (dimalign "
                f"select {path}), or pass run directories such as {path / RUNS_FOLDER / 'seed_0'}"
            )
        raise FileNotFoundError(
            f"run {path} has no {EMBEDDING_NAME} ({_unfinished_reason(path)}): pass finished run "
            "directories or embedding files"
        )


def _reject_runs_among_outputs(run_dirs: Sequence[Path], out_dir: Path, *, copy_selected: bool) -> None:
    """Raise ``ValueError`` where the outputs and the runs overlap, before any work.

    An output folder inside a run would receive a copy of that run, which
    contains the output folder, and so on until the path is too long. A run
    inside ``out_dir/selected_run`` would be replaced or removed by the new
    selection. ``copy_selected`` copies run directories only.
    """
    out_resolved = out_dir.resolve()
    copy_resolved = (out_dir / SELECTED_COPY_NAME).resolve()
    for path in run_dirs:
        resolved = path.resolve()
        if path.is_dir() and (out_resolved == resolved or resolved in out_resolved.parents):
            raise ValueError(
                f"the output folder {out_dir} is inside the run {path}: choose an output folder "
                "outside the runs"
            )
        if resolved == copy_resolved or copy_resolved in resolved.parents:
            raise ValueError(
                f"run {path} is in {out_dir / SELECTED_COPY_NAME}, the copy of the chosen run that "
                "select replaces or removes: pass the run it was copied from (see "
                f"{out_dir / 'selected.txt'}), or copy it elsewhere first"
            )
        if copy_selected and not path.is_dir():
            raise ValueError(
                f"--copy copies a run directory, but {path} is a file: pass run directories, or "
                "select without --copy"
            )


def _check_distinct_runs(run_dirs: Sequence[Path]) -> None:
    resolved: dict[Path, Path] = {}
    for path in run_dirs:
        # A run directory and its embedding.npz are the same run.
        target = (path / EMBEDDING_NAME if path.is_dir() else path).resolve()
        if target in resolved:
            raise ValueError(
                f"run {path} is given twice (also as {resolved[target]}): a run would reproduce "
                "itself perfectly, so pass distinct runs"
            )
        resolved[target] = path


def _aligned_embeddings(run_dirs: Sequence[Path]) -> list[np.ndarray]:
    """Load every run and put its rows in the object order of the first run.

    Runs with an ``objects.tsv`` (in the run directory or next to the
    embedding file) are matched by object id. Without any table, the runs
    must have the same number of rows, taken as the same objects in the same order.
    """
    from dimalign.analysis.compare import align_objects, find_object_table

    embeddings = [load_embedding(path).embedding for path in run_dirs]
    tables = [find_object_table(path) for path in run_dirs]
    with_table = [path for path, table in zip(run_dirs, tables) if table is not None]
    if with_table and len(with_table) < len(run_dirs):
        without = [str(path) for path, table in zip(run_dirs, tables) if table is None]
        raise ValueError(
            f"runs {without[:5]} have no {OBJECT_TABLE_NAME}, but {with_table[0]} has one, so their "
            "rows cannot be matched by object: select among runs that all carry an object table, or none"
        )
    if not with_table:
        shapes = {str(path): embedding.shape for path, embedding in zip(run_dirs, embeddings)}
        if len({shape[0] for shape in shapes.values()}) > 1:
            raise ValueError(
                f"the runs describe different numbers of objects: {shapes}. Select among runs "
                "fitted to the same objects"
            )
        return embeddings

    for path, table, embedding in zip(run_dirs, tables, embeddings):
        if len(table) != embedding.shape[0]:
            raise ValueError(
                f"the object table of run {path} lists {len(table)} objects, but its embedding has "
                f"{embedding.shape[0]} rows"
            )
    aligned = [embeddings[0]]
    for path, table, embedding in zip(run_dirs[1:], tables[1:], embeddings[1:]):
        order = align_objects(
            tables[0], table, names=(f"run {run_dirs[0]}", f"run {path}"),
            advice="select among runs fitted to the same objects",
        )
        aligned.append(embedding[order])
        if not np.array_equal(order, np.arange(order.size)):
            logger.info("reordered the rows of %s to the object order of %s", path, run_dirs[0])
    return aligned


def _check_distinct_embeddings(run_dirs: Sequence[Path], embeddings: Sequence[np.ndarray]) -> None:
    """Raise ``ValueError`` if two runs have the same weights, such as a run and an export of it.

    A copy reproduces its run perfectly and would lift the scores of both.
    Two fits with different seeds practically never give bitwise equal
    weights. Runs without dimensions are equal to each other and not compared.
    """
    first_with_weights: dict[bytes, int] = {}
    for index, embedding in enumerate(embeddings):
        if embedding.shape[1] == 0:
            continue
        key = hashlib.sha256(np.ascontiguousarray(embedding, dtype=np.float64).tobytes()).digest()
        key += str(embedding.shape).encode()
        if key in first_with_weights:
            raise ValueError(
                f"runs {run_dirs[first_with_weights[key]]} and {run_dirs[index]} have identical "
                "embeddings, so one is a copy of the other and would count as a perfect "
                "reproduction: keep one of them"
            )
        first_with_weights[key] = index


def _point_estimate_accuracy(embedding: np.ndarray, val: np.ndarray | None) -> float:
    if val is None:
        return math.nan
    from dimalign.analysis.similarity import odd_one_out_accuracy

    return float(odd_one_out_accuracy(embedding, val))


def _recorded_accuracy(path: Path) -> float:
    """Return the held-out accuracy that the run's manifest records (VICE: posterior predictive), else NaN."""
    folder = _run_folder(path)
    if folder is not None:
        recorded = read_manifest(folder).get("outputs", {}).get("val_accuracy")
        if recorded is not None:
            return float(recorded)
    return math.nan


def _recorded_seed(path: Path) -> int | None:
    """Return the ``random_state`` that a run records in ``manifest.json`` or ``config.toml``, else None.

    The folder name is not used, because a run can be copied or renamed.
    """
    import tomllib

    folder = _run_directory(path)
    if folder is None:
        return None
    seed = None
    if (folder / MANIFEST_NAME).is_file():
        seed = read_manifest(folder).get("settings", {}).get("random_state")
    config = folder / _CONFIG_NAME
    if seed is None and config.is_file():
        try:
            seed = tomllib.loads(config.read_text(encoding="utf-8")).get("settings", {}).get("random_state")
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
            raise ValueError(f"{config} is not a valid TOML file ({error}): refit the run") from error
    # config.toml writes an unset random_state as "".
    if isinstance(seed, bool) or not isinstance(seed, int):
        return None
    return seed


def _copy_run(source: Path, target: Path) -> None:
    """Copy a run directory to ``target``, a new path inside the hidden output folder.

    Raises:
        OSError: If a file cannot be copied (such as a symbolic link whose
            target is missing), naming the first such file. The partial copy
            is left to the removal of the hidden folder.
    """
    try:
        shutil.copytree(source, target, symlinks=False)
    except shutil.Error as error:
        # shutil.Error carries a list of (source, destination, reason) per failed file.
        failures = error.args[0] if error.args and isinstance(error.args[0], list) else []
        first = failures[0] if failures else (str(source), str(target), str(error))
        raise OSError(
            f"cannot copy the chosen run {source}: {len(failures) or 1} files failed, the first "
            f"{first[0]} ({first[2]}). Fix or remove that file (a symbolic link to a missing file "
            "cannot be copied), or select without --copy"
        ) from error


def _remove_empty_folders(folder: Path, keep_like: Path | None = None) -> None:
    """Remove the empty folders that the files of an earlier copy of a run leave in ``folder``.

    Args:
        folder (Path): The copy, which is removed too when it is left empty.
        keep_like (Path | None): The run that ``folder`` now copies. Its
            empty folders stay empty in the copy, and ``folder`` itself stays.
    """
    if not folder.is_dir() or folder.is_symlink():
        return
    for path in sorted(folder.rglob("*"), reverse=True):
        if not path.is_dir() or path.is_symlink():
            continue
        if keep_like is not None and (keep_like / path.relative_to(folder)).is_dir():
            continue
        with contextlib.suppress(OSError):
            path.rmdir()
    if keep_like is None:
        with contextlib.suppress(OSError):
            folder.rmdir()


__all__ = [
    "Selection",
    "find_runs",
    "select_run",
]
