"""Fitting the same triplets with many seeds, and choosing the most reproducible run.

:func:`sweep` fits one embedding per seed, each into its own run directory
``runs/seed_<seed>``, in parallel processes on this machine or on Ray (see
:mod:`dimalign.parallel`). Every worker uses one torch thread, so a seed gives
the same embedding whether it runs alone, in a local pool or on Ray.

:func:`select_run` scores every run of a sweep by the split-half
reproducibility of its dimensions across the other runs
(:mod:`dimalign.analysis.reproducibility`) and picks the run with the highest
mean. It writes ``runs.csv``, ``dimensions.csv``, ``selected.txt`` and
``manifest.json``.

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
import os
import shutil
import warnings
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
    check_unowned_files,
    check_writable,
    now_iso,
    output_dir,
    read_manifest,
    report_leftover_stages,
    sha256_file,
    staged_outputs,
    write_manifest,
)
from dimalign.io.objects import OBJECT_TABLE_NAME, ObjectTable, read_object_table, write_object_table
from dimalign.io.runs import EMBEDDING_NAME, load_embedding
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

# The settings file that TripletEmbedding.save writes (dimalign.embedding.base.CONFIG_NAME).
_CONFIG_NAME = "config.toml"

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
            (such as negative ones), settings the
            sweep sets itself, empty training or validation triplets, and when ``out_dir`` already contains runs or
            triplets that differ from this request in method, an estimator
            setting, the number of objects or the triplets. The message names
            the file and the first difference. Nothing in ``out_dir`` is
            changed in that case.
        RuntimeError: When a seed's fit fails (the message names the seed).
    """
    started = now_iso()
    settings = dict(settings or {})
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


def _changed_file(run_dir: Path) -> str | None:
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


def _raise_if_changed(run_dir: Path) -> None:
    """Raise ``ValueError`` if a result file of a finished run in a sweep changed after its fit."""
    changed = _changed_file(run_dir)
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
    requested seeds, because :func:`find_runs` selects among all of them.

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


# -- selection ----------------------------------------------------------------


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

    Runs whose manifest records another estimator, another estimator
    setting, another number of objects or other triplets than the sweep's
    ``manifest.json`` and its ``train.npy``/``val.npy`` (the checks of a
    rerun of ``dimalign sweep``) are excluded, such as a run copied in from
    another sweep. So are runs whose ``embedding.npz``, ``config.toml`` or
    ``objects.tsv`` no longer matches the checksum that the run's own
    manifest records.

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
        warnings.warn(
            f"{runs_folder}: skipped {len(skipped)} runs that are not finished: {', '.join(skipped[:20])}. "
            f"{advice_text[0].upper()}{advice_text[1:]}",
            UserWarning,
            stacklevel=2,
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
    its own ``manifest.json`` (see :func:`_changed_file`), or when it differs
    from the sweep's ``manifest.json``. Without the sweep's manifest (a sweep
    stopped before its end writes none), only the file checksums are checked,
    with a warning.
    """
    manifest_path = sweep_dir / MANIFEST_NAME
    manifest = read_manifest(sweep_dir) if manifest_path.is_file() else {}
    recorded = manifest.get("settings", {})
    comparable = manifest.get("step") == "sweep" and recorded.get("method") in ESTIMATORS
    if not comparable:
        warnings.warn(
            f"{sweep_dir} has no manifest.json of dimalign sweep, so the settings and triplets of "
            f"its {len(runs)} runs are not compared: rerun 'dimalign sweep' into it with the same "
            "settings to write one",
            UserWarning,
            stacklevel=3,
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
        difference = _changed_file(run_dir)
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
        warnings.warn(
            f"{sweep_dir / RUNS_FOLDER}: excluded {len(excluded)} runs that differ from the sweep's "
            f"{MANIFEST_NAME} or whose files changed after the fit, so they are not scored: "
            f"{'; '.join(excluded[:20])}. Move runs of other sweeps out of it, and restore or "
            "remove the changed ones (a rerun of 'dimalign sweep' fits a removed seed again)",
            UserWarning,
            stacklevel=3,
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
    best = result.best_run
    runs["selected"] = np.arange(len(rows)) == best
    dimensions = pd.DataFrame(
        [
            {"run_dir": rows[run]["run_dir"], "seed": rows[run]["seed"], "dim": dim, "reproducibility": float(score)}
            for run, scores in enumerate(result.dim_scores)
            for dim, score in enumerate(scores)
        ],
        columns=["run_dir", "seed", "dim", "reproducibility"],
    ).astype({"seed": "Int64"})

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

    The files are compared with the checksums of the run's manifest (see :func:`_changed_file`).
    """
    for path in run_dirs:
        folder = path if path.is_dir() else path.parent
        if _being_fitted(folder):
            raise ValueError(
                f"run {path} is being written by a fit, which holds {folder / _FIT_LOCK_NAME} and "
                "replaces its files when it ends: wait for the fit to finish, or leave the run out"
            )
        folder = _run_folder(path)
        changed = _changed_file(folder) if folder is not None else None
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
        warnings.warn(
            f"runs {uncompared[:20]} have no manifest.json of dimalign fit, so their settings and "
            "triplets are not compared with those of the other runs: make sure that they differ "
            "in the seed only",
            UserWarning,
            stacklevel=3,
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
    "ESTIMATORS",
    "Selection",
    "find_runs",
    "fit_seed",
    "run_dir_name",
    "select_run",
    "sweep",
]
