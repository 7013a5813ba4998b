"""Fitting the same triplets with many seeds.

:func:`sweep` fits one embedding per seed, each into its own run directory
``runs/seed_<seed>``, in parallel processes on this machine or on Ray (see
:mod:`dimalign.parallel`). Every worker uses one torch thread, so a seed gives
the same embedding whether it runs alone, in a local pool or on Ray.

:mod:`dimalign.analysis.selection` chooses the most reproducible run of a
sweep, using the checks of finished runs defined here.

Layout of a sweep directory::

    train.npy, val.npy   the triplets every seed is fitted to
    objects.tsv          the object table (when known)
    runs/seed_<seed>/    one run directory per seed (see dimalign.io.runs)
    sweep.csv            seed, run_dir, n_dims, val_accuracy, n_epochs, converged
    manifest.json

A sweep directory contains runs of one method, one set of estimator settings
and one set of triplets. Before it writes anything, :func:`sweep` compares every
run already in ``runs/`` (its ``manifest.json``, or its ``checkpoint.pt`` when
the run is unfinished) and the saved ``train.npy`` and ``val.npy`` with the
new request, and raises ``ValueError`` on the first difference.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import math
import numbers
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from dimalign.io.files import (
    MANIFEST_NAME,
    atomic_path,
    check_output_dir,
    now_iso,
    output_dir,
    read_manifest,
    report_leftover_stages,
    sha256_file,
    staged_outputs,
    write_manifest,
)
from dimalign.embedding.run_files import changed_run_file
from dimalign.io.objects import OBJECT_TABLE_NAME, ObjectTable, read_object_table, write_object_table
from dimalign.io.runs import EMBEDDING_NAME
from dimalign.parallel import ENGINES, limit_torch_threads, run_tasks

logger = logging.getLogger(__name__)

ESTIMATORS = ("vice", "spose")
SWEEP_TABLE_NAME = "sweep.csv"
RUNS_FOLDER = "runs"

# Settings that the sweep decides per seed, so callers must not pass them.
_PER_RUN_SETTINGS = ("random_state", "checkpoint_dir", "n_objects")

# Estimator parameters that may differ between a finished run and a sweep that
# reuses it. These are the per-run settings and ``resume``, which fit_seed sets
# when a checkpoint exists. The rest change where or how verbosely a fit runs,
# not its result. The number of objects is compared separately.
_UNCOMPARED_SETTINGS = frozenset(_PER_RUN_SETTINGS) | {
    "resume", "device", "verbose", "tensorboard", "checkpoint_every",
}

# The file that dimalign.embedding.checkpoint writes, named here so that this
# module does not import torch.
_CHECKPOINT_NAME = "checkpoint.pt"

# The lock file that a running fit holds (dimalign.embedding.runs.FIT_LOCK_NAME).
_FIT_LOCK_NAME = ".fit.lock"


def run_dir_name(seed: int) -> str:
    """Return the folder name of a seed's run, ``seed_<seed>``."""
    return f"seed_{seed}"


def fit_seed(
    *,
    method: str,
    settings: Mapping[str, Any],
    seed: int,
    train_path: str,
    val_path: str | None,
    out_dir: str,
    n_objects: int,
    objects_path: str | None = None,
) -> dict[str, Any]:
    """Fit one seed into its run directory (the task that :func:`sweep` runs in each worker).

    The fit runs with one torch thread. A run directory that already has its
    ``embedding.npz`` and ``manifest.json`` is left as it is and only read
    when its manifest records the same method, settings and triplets, and
    one with a checkpoint but no result resumes from it.

    Args:
        method (str): ``"vice"`` or ``"spose"``.
        settings (Mapping[str, Any]): Estimator settings except the seed.
        seed (int): ``random_state`` of the estimator.
        train_path (str): Training triplets (``.npy``).
        val_path (str | None): Validation triplets (``.npy``) or None.
        out_dir (str): The run directory.
        n_objects (int): Number of objects.
        objects_path (str | None): Object table to copy into the run directory.

    Returns:
        dict: seed, run_dir, n_dims, val_accuracy (NaN without validation
        triplets), n_epochs and converged.

    Raises:
        ValueError: If the run directory contains a finished run of another
            method, other settings, another number of objects or other
            triplets.
    """
    run_dir = Path(out_dir)
    if _is_finished(run_dir):
        data = _TripletChecksums(
            train_file=sha256_file(train_path),
            val_file=sha256_file(val_path) if val_path else None,
        )
        _raise_if_changed(run_dir)
        _raise_if_different(_finished_run_difference(run_dir, method, settings, n_objects, data))
        logger.info(
            "seed %d: %s is complete with the same settings and triplets, reusing it", seed, run_dir
        )
        return _run_record(seed, run_dir)

    from dimalign.embedding import fit_run

    estimator_class = _estimator_class(method)
    resume = (run_dir / _CHECKPOINT_NAME).is_file()
    estimator = estimator_class(**{**dict(settings), "resume": resume}, random_state=seed)
    train = np.load(train_path, allow_pickle=False)
    val = np.load(val_path, allow_pickle=False) if val_path else None
    table = read_object_table(objects_path) if objects_path else None
    inputs = {"train": train_path, **({"val": val_path} if val_path else {})}
    with limit_torch_threads(1):
        fit_run(estimator, train, val, run_dir, n_objects=n_objects, object_table=table, inputs=inputs)
    return _run_record(seed, run_dir)


def _run_record(seed: int, run_dir: Path) -> dict[str, Any]:
    outputs = read_manifest(run_dir).get("outputs", {})
    accuracy = outputs.get("val_accuracy")
    return {
        "seed": int(seed),
        "run_dir": str(run_dir.resolve()),
        "n_dims": int(outputs.get("n_dims", -1)),
        # A manifest writes a non-finite accuracy as null.
        "val_accuracy": math.nan if accuracy is None else float(accuracy),
        "n_epochs": int(outputs.get("n_epochs", -1)),
        "converged": bool(outputs.get("converged", False)),
    }


def sweep(
    train: np.ndarray,
    val: np.ndarray | None,
    out_dir: str | os.PathLike,
    *,
    seeds: Sequence[int],
    n_objects: int,
    method: str = "vice",
    settings: Mapping[str, Any] | None = None,
    object_table: ObjectTable | None = None,
    n_jobs: int = 1,
    engine: str = "local",
    address: str | None = None,
    inputs: Mapping[str, str | os.PathLike] | None = None,
) -> pd.DataFrame:
    """Fit one embedding per seed, each in its own run directory.

    Args:
        train (np.ndarray): Training triplets, shape ``(n_train, 3)``.
        val (np.ndarray | None): Validation triplets, shared by every seed.
        out_dir (str | os.PathLike): The sweep directory.
        seeds (Sequence[int]): One run per seed (Mahner et al. 2025 used 32).
        n_objects (int): Number of objects.
        method (str): ``"vice"`` or ``"spose"``.
        settings (Mapping[str, Any] | None): Estimator settings except
            ``random_state``, ``checkpoint_dir`` and ``n_objects``.
        object_table (ObjectTable | None): Names of the objects.
        n_jobs (int): Parallel workers (each with one torch thread).
        engine (str): ``"local"`` or ``"ray"`` (see :func:`dimalign.parallel.run_tasks`).
        address (str | None): Ray cluster address; None starts Ray locally.
        inputs (Mapping[str, path] | None): Source files to record in the manifest.

    Returns:
        pd.DataFrame: One row per seed, as written to ``sweep.csv``.

    Raises:
        ValueError: For an unknown method, repeated or invalid seeds
            (such as negative ones, or 1.5), settings the
            sweep sets itself, empty training or validation triplets, and when ``out_dir`` already contains runs or
            triplets that differ from this request in method, an estimator
            setting, the number of objects or the triplets. The message names
            the file and the first difference. Nothing in ``out_dir`` is
            changed in that case.
        RuntimeError: When a seed's fit fails (the message names the seed).
    """
    started = now_iso()
    seeds, settings, inputs = _checked_request(
        train, val, seeds=seeds, n_objects=n_objects, method=method, settings=settings,
        object_table=object_table, n_jobs=n_jobs, engine=engine, inputs=inputs,
    )

    out_dir = Path(out_dir)
    check_output_dir(out_dir, "sweep")
    _reject_sweep_paths_in_the_way(out_dir)
    report_leftover_stages(out_dir)
    train_bytes = _npy_bytes(train)
    val_bytes = _npy_bytes(val) if val is not None else None
    data = _TripletChecksums(
        train_file=_sha256_bytes(train_bytes),
        val_file=_sha256_bytes(val_bytes) if val_bytes is not None else None,
    )
    _check_existing_sweep(
        out_dir, method=method, settings=settings, n_objects=n_objects, train=train, data=data,
        object_table=object_table,
    )

    # A failed fit removes its own run folder unless it wrote a checkpoint, so a
    # sweep folder that this call created is kept only when a run in it remains.
    # In a folder that existed, the triplets and object table that this call
    # adds are removed on the same condition, so that they do not bind a
    # corrected rerun to the triplets of a sweep that fitted nothing.
    with (
        output_dir(out_dir, keep_if_contains=(f"{RUNS_FOLDER}/*",)),
        _added_files_removed_on_error(out_dir),
    ):
        # Shared inputs go to disk once, so that tasks carry paths instead of arrays.
        train_path = _write_bytes(out_dir / "train.npy", train_bytes)
        val_path = _write_bytes(out_dir / "val.npy", val_bytes) if val_bytes is not None else None
        objects_path = None
        if object_table is not None:
            objects_path = write_object_table(object_table, out_dir / OBJECT_TABLE_NAME)
        # A fit removes the folders it created when it fails or is stopped. If the
        # first worker created runs/, its cleanup would remove the runs of the others.
        (out_dir / RUNS_FOLDER).mkdir(exist_ok=True)

        tasks = [
            {
                "method": method,
                "settings": settings,
                "seed": seed,
                "train_path": str(train_path),
                "val_path": str(val_path) if val_path else None,
                "out_dir": str(out_dir / RUNS_FOLDER / run_dir_name(seed)),
                "n_objects": int(n_objects),
                "objects_path": str(objects_path) if objects_path else None,
            }
            for seed in seeds
        ]
        records = run_tasks(
            fit_seed, tasks, n_jobs=n_jobs, engine=engine, address=address,
            names=[f"seed {seed}" for seed in seeds],
        )

        # sweep.csv and manifest.json move in together, manifest last, so a
        # stop in between leaves both describing the earlier seeds.
        table = pd.DataFrame(records)
        with staged_outputs(out_dir) as stage:
            table.to_csv(stage / SWEEP_TABLE_NAME, index=False)
            write_manifest(
                stage,
                step="sweep",
                inputs={**inputs, "train": train_path, **({"val": val_path} if val_path else {})},
                settings={
                    "method": method, "estimator_settings": settings, "seeds": seeds,
                    "n_objects": n_objects, "n_jobs": n_jobs, "engine": engine,
                    "torch_threads_per_worker": 1,
                },
                started=started,
                outputs={"n_runs": len(records), "table": SWEEP_TABLE_NAME, "runs_folder": RUNS_FOLDER},
            )
    logger.info(
        "sweep of %d seeds done: %s to %s dimensions", len(records),
        int(table["n_dims"].min()), int(table["n_dims"].max()),
    )
    return table


def _checked_request(
    train: np.ndarray,
    val: np.ndarray | None,
    *,
    seeds: Sequence[int],
    n_objects: int,
    method: str,
    settings: Mapping[str, Any] | None,
    object_table: ObjectTable | None,
    n_jobs: int,
    engine: str,
    inputs: Mapping[str, str | os.PathLike] | None,
) -> tuple[list[int], dict[str, Any], dict[str, str | os.PathLike]]:
    """Check the arguments of :func:`sweep` before anything touches ``out_dir``.

    Returns:
        tuple[list[int], dict, dict]: The seeds as ints, and copies of
        ``settings`` and ``inputs`` (empty for None).

    Raises:
        ValueError: As listed in :func:`sweep`, except the checks against
            ``out_dir``.
    """
    settings = dict(settings or {})
    # A list, so that a one-pass iterable of seeds is still there after the check.
    seeds = list(seeds)
    for seed in seeds:
        # int() would quietly turn a seed of 1.5 into 1.
        if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
            raise ValueError(f"seeds must be integers, got {seed!r}")
    seeds = [int(seed) for seed in seeds]
    if method not in ESTIMATORS:
        raise ValueError(f"unknown method {method!r}: use one of {', '.join(ESTIMATORS)}")
    if not seeds:
        raise ValueError("no seeds given: pass at least one")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be distinct, got {seeds}")
    reserved = sorted(set(settings) & set(_PER_RUN_SETTINGS))
    if reserved:
        raise ValueError(f"settings {reserved} are set per run by the sweep: remove them")
    if object_table is not None and len(object_table) != n_objects:
        raise ValueError(f"the object table lists {len(object_table)} objects, but n_objects={n_objects}")
    inputs = dict(inputs or {})
    if len(train) == 0:
        source = f" in {inputs['train']}" if "train" in inputs else ""
        raise ValueError(f"the training triplets{source} are empty: pass a file with triplets")
    if val is not None and len(val) == 0 and "val" in inputs:
        raise ValueError(
            f"the validation file {inputs['val']} contains no triplets, so no held-out accuracy "
            "can be computed: pass a file with triplets (CLI: --val), or leave out --val"
        )
    if val is not None and len(val) == 0:
        raise ValueError(
            f"the validation split is empty (0 of {len(train)} triplets), so no held-out accuracy "
            "can be computed: fit without validation (val=None, CLI: --val-fraction 0) or give "
            "more triplets"
        )
    _check_run_settings(method, settings, n_jobs=n_jobs, engine=engine, seeds=seeds)
    return seeds, settings, inputs


@contextlib.contextmanager
def _added_files_removed_on_error(out_dir: Path) -> Iterator[None]:
    """Remove the shared files and ``runs/`` that the block adds to ``out_dir`` if it raises.

    They stay when a run remains in ``runs/`` (one with a checkpoint), which
    needs them to resume.
    """
    names = ("train.npy", "val.npy", OBJECT_TABLE_NAME, RUNS_FOLDER)
    added = [out_dir / name for name in names if not (out_dir / name).exists()]
    try:
        yield
    except BaseException:
        runs_folder = out_dir / RUNS_FOLDER
        if runs_folder.is_dir() and any(runs_folder.iterdir()):
            raise
        for path in added:
            if path.is_dir() and not path.is_symlink():
                with contextlib.suppress(OSError):
                    path.rmdir()
            else:
                path.unlink(missing_ok=True)
        logger.info("removed the triplets that this sweep wrote into %s, since no run remains", out_dir)
        raise


def _reject_sweep_paths_in_the_way(out_dir: Path) -> None:
    """Raise ``FileExistsError`` for a folder where the sweep writes a file, or a file where it needs ``runs/``.

    Without this check the sweep would fail after writing its triplets, or
    after every fit when it writes ``sweep.csv``.
    """
    for name in ("train.npy", "val.npy", OBJECT_TABLE_NAME, SWEEP_TABLE_NAME):
        path = out_dir / name
        if path.is_dir():
            raise FileExistsError(
                f"{path} is a folder, but sweep writes a file there: move it away, or choose another -o"
            )
    runs_folder = out_dir / RUNS_FOLDER
    if (runs_folder.exists() or runs_folder.is_symlink()) and not runs_folder.is_dir():
        raise FileExistsError(
            f"{runs_folder} is a file, but sweep writes its run directories into a folder there: "
            "move it away, or choose another -o"
        )


def _check_run_settings(
    method: str, settings: Mapping[str, Any], *, n_jobs: int, engine: str, seeds: Sequence[int]
) -> None:
    """Raise ``ValueError`` for settings or seeds that would fail only inside the workers.

    There the error would come after the triplets are written and earlier seeds are fitted.
    """
    from dimalign.device import resolve_device

    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}: use one of {', '.join(ENGINES)}")
    if n_jobs < 1:
        raise ValueError(f"n_jobs={n_jobs} is invalid: use 1 or more")
    estimator = _estimator_class(method)(**settings)
    resolve_device(estimator.device)
    estimator._check_settings()
    estimator._dtype()
    for seed in seeds:
        try:
            estimator.set_params(random_state=seed)._check_settings()
        except ValueError as error:
            raise ValueError(f"seed {seed} is invalid: {error}") from error


def _npy_bytes(array: np.ndarray) -> bytes:
    """Serialize triplets as the ``.npy`` file that the sweep saves, to hash it before writing."""
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array, dtype=np.int64), allow_pickle=False)
    return buffer.getvalue()


def _write_bytes(path: Path, content: bytes) -> Path:
    with atomic_path(path) as temporary:
        temporary.write_bytes(content)
    return path


def _sha256_bytes(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()


def _checkpoint_digest(triplets: np.ndarray) -> str:
    """Return the digest that a checkpoint stores for the training triplets (``data_sha256``)."""
    import torch

    from dimalign.embedding.base import triplet_digest

    return triplet_digest(torch.as_tensor(np.ascontiguousarray(triplets, dtype=np.int64)))


def _digest_text(sha256: str | None) -> str:
    return f"sha256 {sha256}" if sha256 else "none"


# -- reuse checks -------------------------------------------------------------


@dataclass(frozen=True)
class _TripletChecksums:
    """SHA-256 digests of the triplets of a sweep.

    Attributes:
        train_file (str): Of the ``train.npy`` file, as run manifests record it.
        val_file (str | None): Of the ``val.npy`` file, None without validation triplets.
    """

    train_file: str
    val_file: str | None


def _estimator_class(method: str) -> type:
    from dimalign.embedding import SPoSE, VICE

    return {"vice": VICE, "spose": SPoSE}[method]


def _being_fitted(run_dir: Path) -> bool:
    """Return whether a fit holds the lock of ``run_dir``, such as a resumed fit of a finished run.

    Such a run keeps its earlier ``embedding.npz`` and ``manifest.json`` until
    the fit ends and replaces them. A lock file that a killed fit left is not
    held, so that run counts as not being fitted.

    NOTE: the probe takes the lock for a moment, so a fit that starts in that
    moment fails as if another fit were running. ``fcntl`` exists on POSIX
    systems only; elsewhere no run counts as being fitted.
    """
    lock_path = run_dir / _FIT_LOCK_NAME
    if not lock_path.is_file():
        return False
    try:
        import fcntl
    except ImportError:
        return False
    try:
        descriptor = os.open(lock_path, os.O_RDONLY)
    except FileNotFoundError:
        # The fit ended and removed its lock file meanwhile.
        return False
    try:
        fcntl.flock(descriptor, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(descriptor)
    return False


def _is_finished(run_dir: Path) -> bool:
    return (run_dir / EMBEDDING_NAME).is_file() and (run_dir / MANIFEST_NAME).is_file()


def _recorded_form(value: Any) -> Any:
    """Convert a setting to the JSON value that ``write_manifest`` stores for it."""
    return json.loads(json.dumps(value, default=_json_default))


def _json_default(value: Any) -> Any:
    # write_manifest also turns numpy and torch scalars into numbers and other
    # objects into strings.
    if hasattr(value, "item") and callable(value.item):
        return value.item()
    return str(value)


def _compared_settings(method: str, settings: Mapping[str, Any]) -> dict[str, Any]:
    """Return the estimator parameters (defaults included) that a reused run must share."""
    params = _estimator_class(method)(**dict(settings)).get_params()
    return {
        name: _recorded_form(value)
        for name, value in params.items()
        if name not in _UNCOMPARED_SETTINGS
    }


def _setting_difference(
    where: Path, recorded: Mapping[str, Any], expected: Mapping[str, Any], names: Sequence[str]
) -> str | None:
    missing = object()
    for name in names:
        old = recorded.get(name, missing)
        old = missing if old is missing else _recorded_form(old)
        if old != expected[name]:
            recorded_text = f"no {name}" if old is missing else f"{name}={old!r}"
            return f"{where} records {recorded_text}, but this sweep sets {name}={expected[name]!r}"
    return None


def _finished_run_difference(
    run_dir: Path, method: str, settings: Mapping[str, Any], n_objects: int, data: _TripletChecksums
) -> str | None:
    """Compare a finished run's ``manifest.json`` and embedding with the request.

    Returns:
        str | None: The first difference, as a sentence naming the file, or
        None when the run can be reused.
    """
    where = run_dir / MANIFEST_NAME
    manifest = read_manifest(run_dir)
    recorded = manifest.get("settings", {})
    estimator_name = _estimator_class(method).__name__
    if recorded.get("estimator") != estimator_name:
        return (
            f"{where} records estimator {recorded.get('estimator')!r}, but this sweep uses "
            f"{estimator_name} (method={method!r})"
        )

    expected = _compared_settings(method, settings)
    difference = _setting_difference(where, recorded, expected, list(expected))
    if difference:
        return difference

    with np.load(run_dir / EMBEDDING_NAME, allow_pickle=False) as archive:
        n_rows = int(archive["embedding"].shape[0])
    if n_rows != n_objects:
        return (
            f"{run_dir / EMBEDDING_NAME} has {n_rows} objects, but this sweep has "
            f"n_objects={n_objects}"
        )

    inputs = manifest.get("inputs", {})
    train_sha256 = inputs.get("train", {}).get("sha256")
    if train_sha256 != data.train_file:
        return (
            f"{where} records other training triplets (recorded {_digest_text(train_sha256)}, "
            f"this sweep's {_digest_text(data.train_file)})"
        )
    val_sha256 = inputs.get("val", {}).get("sha256")
    if val_sha256 != data.val_file:
        return (
            f"{where} records other validation triplets (recorded {_digest_text(val_sha256)}, "
            f"this sweep's {_digest_text(data.val_file)})"
        )
    return None


def _raise_if_changed(run_dir: Path) -> None:
    """Raise ``ValueError`` if a result file of a finished run in a sweep changed after its fit."""
    changed = changed_run_file(run_dir)
    if changed:
        raise ValueError(
            f"{changed}. Restore the file, or remove {run_dir} to fit that seed again"
        )


def _checkpoint_difference(
    run_dir: Path, method: str, settings: Mapping[str, Any], n_objects: int, train_digest: str
) -> str | None:
    """Compare an unfinished run's ``checkpoint.pt`` with the request, as resuming it would.

    The checkpoint records only the settings that change what a fit computes,
    so settings such as ``max_epochs`` may differ and the run resumes with the
    new value. The validation triplets are compared through the saved
    ``val.npy`` by :func:`_saved_triplets_difference`, because checkpoints of
    older versions record no checksum of them.

    Args:
        train_digest (str): :func:`_checkpoint_digest` of the training triplets.
    """
    from dimalign.embedding.checkpoint import load_checkpoint

    where = run_dir / _CHECKPOINT_NAME
    state = load_checkpoint(run_dir)
    if state["estimator"] != method:
        return (
            f"{where} records method={state['estimator']!r}, but this sweep uses method={method!r}"
        )

    expected = _compared_settings(method, settings)
    recorded = state.get("config", {})
    names = [name for name in expected if name in recorded]
    difference = _setting_difference(where, recorded, expected, names)
    if difference:
        return difference

    if state.get("n_objects") != n_objects:
        return (
            f"{where} records n_objects={state.get('n_objects')!r}, but this sweep has "
            f"n_objects={n_objects}"
        )
    if state.get("data_sha256") != train_digest:
        return (
            f"{where} was trained on other training triplets (recorded data_sha256 "
            f"{state.get('data_sha256')}, this sweep's {train_digest})"
        )
    return None


def _saved_triplets_difference(out_dir: Path, data: _TripletChecksums) -> str | None:
    """Compare the ``train.npy`` and ``val.npy`` of an earlier sweep with the request."""
    train_path = out_dir / "train.npy"
    if not train_path.is_file():
        return None
    train_sha256 = sha256_file(train_path)
    if train_sha256 != data.train_file:
        return (
            f"{train_path} contains other training triplets (saved {_digest_text(train_sha256)}, "
            f"this sweep's {_digest_text(data.train_file)})"
        )
    val_path = out_dir / "val.npy"
    val_sha256 = sha256_file(val_path) if val_path.is_file() else None
    if val_sha256 != data.val_file:
        return (
            f"{val_path} does not match this sweep's validation triplets (saved "
            f"{_digest_text(val_sha256)}, this sweep's {_digest_text(data.val_file)})"
        )
    return None


def _raise_if_different(difference: str | None) -> None:
    if difference:
        raise ValueError(
            f"{difference}. A sweep directory contains runs of one method, one set of settings, "
            "one set of triplets and one object table, so choose a new output directory for this "
            "sweep, or rerun with the same method, settings, triplets and objects to reuse the "
            "finished runs."
        )


def _check_existing_sweep(
    out_dir: Path,
    *,
    method: str,
    settings: Mapping[str, Any],
    n_objects: int,
    train: np.ndarray,
    data: _TripletChecksums,
    object_table: ObjectTable | None = None,
) -> None:
    """Raise ``ValueError`` if ``out_dir`` contains runs, triplets or object names that differ from the request.

    Every ``runs/seed_*`` directory is checked, not only those of the
    requested seeds, because :func:`dimalign.analysis.selection.find_runs`
    selects among all of them.

    Raises:
        ValueError: On the first difference, naming the file and the setting or data.
    """
    run_dirs = sorted((out_dir / RUNS_FOLDER).glob("seed_*"))
    train_digest = None
    n_checked = 0
    for run_dir in run_dirs:
        if _is_finished(run_dir):
            _raise_if_changed(run_dir)
            difference = _finished_run_difference(run_dir, method, settings, n_objects, data)
        elif (run_dir / _CHECKPOINT_NAME).is_file():
            train_digest = train_digest or _checkpoint_digest(train)
            difference = _checkpoint_difference(run_dir, method, settings, n_objects, train_digest)
        else:
            continue
        _raise_if_different(difference)
        n_checked += 1
    _raise_if_different(_saved_triplets_difference(out_dir, data))
    _raise_if_different(_object_table_difference(out_dir, object_table))
    if n_checked:
        logger.info(
            "%s: %d existing runs match this sweep's method, settings and triplets",
            out_dir, n_checked,
        )


def _object_table_difference(out_dir: Path, object_table: ObjectTable | None) -> str | None:
    """Compare the sweep's saved object names with the requested ones (None when either is absent)."""
    path = out_dir / OBJECT_TABLE_NAME
    if object_table is None or not path.is_file():
        return None
    saved = list(read_object_table(path).object_ids)
    requested = list(object_table.object_ids)
    if saved == requested:
        return None
    if len(saved) != len(requested):
        return f"{path} lists {len(saved)} objects, but this sweep's object table lists {len(requested)}"
    row = next(index for index, (old, new) in enumerate(zip(saved, requested)) if old != new)
    return (
        f"{path} names object {row} {saved[row]!r}, but this sweep's object table names it "
        f"{requested[row]!r}"
    )


# The selection of a run moved to dimalign.analysis.selection, which imports
# this module. Code written for earlier versions imports those names from here,
# so they resolve on first use: an import at the top would be circular.
_MOVED_TO_SELECTION = frozenset({"Selection", "find_runs", "select_run"})


def __getattr__(name: str) -> Any:
    """Return a name of :mod:`dimalign.analysis.selection` that this module used to define."""
    if name in _MOVED_TO_SELECTION:
        import dimalign.analysis.selection as selection

        return getattr(selection, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "ESTIMATORS",
    "fit_seed",
    "run_dir_name",
    "sweep",
]
