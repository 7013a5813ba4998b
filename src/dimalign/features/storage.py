"""Feature arrays on disk while an extraction runs, its progress file, and the final files.

While running, ``OUT/.partial/`` contains the memory-mapped ``.npy`` files (or the
HDF5 file) with one row per image in the image list, and ``progress.json`` with
the rows already written. ``image_stamps.npy`` contains the size and modification
time of each image when it was read. Each batch is written to these arrays, they are
flushed, and only then ``progress.json`` is replaced atomically, so a row listed
as finished is on disk even if the process is killed right after.

At the end every output file is first written inside ``.partial/``: the
arrays (copied without the rows of skipped images where there are any),
``objects.tsv``, ``skipped.tsv`` and ``manifest.json``. ``progress.json`` then
lists the moves into ``OUT`` with the inode, size and modification time of
each file, and only after that do the files move by ``os.replace`` (atomic
on POSIX), ``manifest.json`` last. A rename keeps those three values, so a
run stopped between two moves is completed by the next ``--resume``
(:func:`move_into_place`), which recognises the files already moved without
reading them.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dimalign.io.files import MANIFEST_NAME, write_text_atomic

logger = logging.getLogger(__name__)

WORK_DIR_NAME = ".partial"
PROGRESS_NAME = "progress.json"
STAMPS_NAME = "image_stamps.npy"
FORMATS = ("npy", "h5")
DTYPES = ("float32", "float16")
COPY_CHUNK_ROWS = 1024


def feature_file_names(layers: Sequence[str], fmt: str) -> dict[str, str]:
    """Return the final file of each layer.

    ``features.npy`` for one layer, ``features_<layer>.npy`` for several (the
    names :func:`dimalign.io.features.load_features` looks for), or one
    ``features.h5`` with a dataset per layer.

    Args:
        layers (Sequence[str]): The requested layer names.
        fmt (str): ``npy`` or ``h5``.

    Returns:
        dict[str, str]: File name by layer.

    Raises:
        ValueError: For another format.
    """
    if fmt == "h5":
        return {layer: "features.h5" for layer in layers}
    if fmt != "npy":
        raise ValueError(f"invalid format {fmt!r}: use {' or '.join(FORMATS)}")
    if len(layers) == 1:
        return {layers[0]: "features.npy"}
    return {layer: f"features_{layer.replace('/', '_')}.npy" for layer in layers}


@dataclass
class Progress:
    """State of an unfinished extraction.

    Attributes:
        fingerprint (dict): Settings and image list checksum that a resumed run must match.
        n_images (int): Rows in the working arrays.
        shapes (dict[str, list[int]]): Feature shape of each layer (without the row axis).
        finished (np.ndarray): Boolean ``(n_images,)``, True where the row is written.
        skipped (dict[int, str]): Row -> reason for the unreadable images seen so far.
        started (str): Start time of the first run.
        replaces (list[str]): Files of an earlier extraction in the output
            folder that ``overwrite`` replaces, deleted when this one finishes.
        finishing (list[dict] | None): Once every output file is written in
            the working folder, the moves into the output folder (see
            :func:`move_into_place`); None before.
    """

    fingerprint: dict
    n_images: int
    shapes: dict[str, list[int]] = field(default_factory=dict)
    finished: np.ndarray = None  # type: ignore[assignment]
    skipped: dict[int, str] = field(default_factory=dict)
    started: str = ""
    replaces: list[str] = field(default_factory=list)
    finishing: list[dict] | None = None

    def __post_init__(self) -> None:
        if self.finished is None:
            self.finished = np.zeros(self.n_images, dtype=bool)

    def to_json(self) -> str:
        """Serialise, storing finished rows as ``[start, stop)`` intervals."""
        return json.dumps({
            "fingerprint": self.fingerprint,
            "n_images": self.n_images,
            "shapes": self.shapes,
            "finished": rows_to_intervals(self.finished),
            "skipped": [[row, reason] for row, reason in sorted(self.skipped.items())],
            "started": self.started,
            "replaces": self.replaces,
            "finishing": self.finishing,
        }, indent=1) + "\n"

    def save(self, work_dir: Path) -> None:
        """Replace ``progress.json`` atomically."""
        write_text_atomic(work_dir / PROGRESS_NAME, self.to_json())

    @classmethod
    def load(cls, work_dir: Path) -> Progress:
        """Read ``progress.json``.

        Raises:
            ValueError: If the file is not a progress file.
        """
        path = work_dir / PROGRESS_NAME
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            finished = np.zeros(int(data["n_images"]), dtype=bool)
            for start, stop in data["finished"]:
                finished[start:stop] = True
            return cls(data["fingerprint"], int(data["n_images"]), dict(data["shapes"]), finished,
                       {int(row): reason for row, reason in data["skipped"]}, data["started"],
                       [str(name) for name in data.get("replaces", [])],
                       _check_moves(data.get("finishing")))
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise ValueError(
                f"cannot read the progress file {path} ({error}); delete {work_dir} to start over"
            ) from error


def open_image_stamps(work_dir: Path, n_images: int) -> tuple[np.ndarray, bool]:
    """Open the ``(n_images, 2)`` int64 array of image stamps for writing, creating it if missing.

    Row ``i`` contains the size in bytes and the modification time in ns of
    image ``i`` when it was read (see :func:`dimalign.features.datasets.image_stamp`),
    so that a resumed run can tell which finished images were replaced since.

    Returns:
        tuple[np.ndarray, bool]: The memory-mapped array, and whether it existed.

    Raises:
        ValueError: If the existing file is not such an array.
    """
    path = work_dir / STAMPS_NAME
    if not path.is_file():
        return np.lib.format.open_memmap(path, mode="w+", dtype=np.int64, shape=(n_images, 2)), False
    try:
        stamps = np.load(path, mmap_mode="r+", allow_pickle=False)
    except (OSError, ValueError) as error:
        raise ValueError(f"cannot read the image stamps {path} ({error}); delete {work_dir} to "
                         "start over") from error
    if stamps.shape != (n_images, 2) or stamps.dtype != np.int64:
        raise ValueError(f"the image stamps {path} have shape {stamps.shape} and type {stamps.dtype}, "
                         f"expected ({n_images}, 2) and int64; delete {work_dir} to start over")
    return stamps, True


def rows_to_intervals(mask: np.ndarray) -> list[list[int]]:
    """Turn a boolean row mask into sorted ``[start, stop)`` intervals of True rows.

    Args:
        mask (np.ndarray): Boolean, shape ``(n_rows,)``.

    Returns:
        list[list[int]]: ``[start, stop)`` per run of True rows.

    Example:
        >>> rows_to_intervals(np.array([True, True, False, True]))
        [[0, 2], [3, 4]]
    """
    padded = np.concatenate([[False], mask, [False]]).astype(np.int8)
    edges = np.flatnonzero(np.diff(padded))
    return [[int(start), int(stop)] for start, stop in zip(edges[::2], edges[1::2])]


class FeatureArrays:
    """The working arrays of every layer, as memory-mapped ``.npy`` files or one HDF5 file.

    Args:
        work_dir (Path): The ``.partial`` folder.
        names (Mapping[str, str]): Final file name of each layer.
        fmt (str): ``npy`` or ``h5``.
        dtype (str): ``float32`` or ``float16``.
    """

    def __init__(self, work_dir: Path, names: Mapping[str, str], fmt: str, dtype: str) -> None:
        self.work_dir = work_dir
        self.names = dict(names)
        self.fmt = fmt
        self.dtype = np.dtype(dtype)
        self.arrays: dict[str, np.ndarray] = {}
        self._h5 = None

    def open(self, n_rows: int, shapes: Mapping[str, Sequence[int]], create: bool) -> None:
        """Create the arrays (``create=True``) or reopen them for writing."""
        if self.fmt == "h5":
            import h5py

            path = self.work_dir / "features.h5"
            if not create and not path.is_file():
                raise ValueError(f"unfinished features file {path} is missing; pass "
                                 "--overwrite to start over")
            self._h5 = h5py.File(path, "w" if create else "r+")
            for layer, shape in shapes.items():
                full = (n_rows, *shape)
                if create:
                    chunk_rows = max(1, min(n_rows, (1 << 20) // max(1, int(np.prod(shape)) * 4)))
                    self.arrays[layer] = self._h5.create_dataset(
                        layer, shape=full, dtype=self.dtype, chunks=(chunk_rows, *shape))
                else:
                    self.arrays[layer] = self._h5[layer]
                    self._check_shape(layer, self.arrays[layer].shape, full)
            return
        for layer, shape in shapes.items():
            path = self.work_dir / self.names[layer]
            full = (n_rows, *shape)
            if create:
                self.arrays[layer] = np.lib.format.open_memmap(path, mode="w+", dtype=self.dtype,
                                                               shape=full)
            else:
                if not path.is_file():
                    raise ValueError(f"unfinished features file {path} is missing; pass "
                                     "--overwrite to start over")
                self.arrays[layer] = np.load(path, mmap_mode="r+")
                self._check_shape(layer, self.arrays[layer].shape, full)

    def _check_shape(self, layer: str, found: tuple, expected: tuple) -> None:
        if tuple(found) != tuple(expected):
            raise ValueError(
                f"unfinished features of layer {layer} in {self.work_dir} have shape "
                f"{tuple(found)}, expected {tuple(expected)}; delete {self.work_dir} to start over"
            )

    def write(self, rows: Sequence[int], values: Mapping[str, np.ndarray]) -> None:
        """Write ``values[layer]`` (``(len(rows), ...)``) into the given rows."""
        rows = np.asarray(rows, dtype=np.int64)
        for layer, array in values.items():
            if self.fmt == "h5":
                # h5py needs increasing indices, and the loader yields rows in increasing order.
                self.arrays[layer][rows] = array.astype(self.dtype, copy=False)
            else:
                self.arrays[layer][rows] = array

    def flush(self) -> None:
        """Make every write so far durable before the progress file claims it.

        NOTE: unlike a memory-mapped ``.npy``, an HDF5 file killed in the middle
        of a write can be left unreadable; resuming it then fails and only
        ``--overwrite`` starts over.
        """
        if self._h5 is not None:
            self._h5.flush()
        else:
            for array in self.arrays.values():
                array.flush()

    def close(self) -> None:
        """Close the files (idempotent)."""
        if self._h5 is not None:
            self._h5.close()
            self._h5 = None
        self.arrays = {}

    def stage_final(self, keep: np.ndarray) -> dict[str, Path]:
        """Close the arrays, keeping only the rows where ``keep`` is True, and return their files.

        The files stay in the working folder: where every row is kept, they are
        the working arrays themselves, otherwise compacted copies.

        Returns:
            dict[str, Path]: File of each layer in the working folder.
        """
        self.flush()
        kept_rows = np.flatnonzero(keep)
        compact = len(kept_rows) != len(keep)
        if self.fmt == "h5":
            source = self._compact_h5(kept_rows) if compact else self.work_dir / "features.h5"
            layers = list(self.arrays)
            self.close()
            return {layer: source for layer in layers}

        sources = {}
        for layer, array in self.arrays.items():
            source = self.work_dir / self.names[layer]
            if compact:
                source = self.work_dir / f"compact.{self.names[layer]}"
                out = np.lib.format.open_memmap(source, mode="w+", dtype=array.dtype,
                                                shape=(len(kept_rows), *array.shape[1:]))
                _copy_rows(array, out, kept_rows)
                out.flush()
                del out
            sources[layer] = source
        self.close()
        return sources

    def _compact_h5(self, kept_rows: np.ndarray) -> Path:
        """Copy the kept rows of every dataset into a new HDF5 file and return its path."""
        import h5py

        compacted = self.work_dir / "features.compact.h5"
        with h5py.File(compacted, "w") as target:
            for layer, dataset in self.arrays.items():
                shape = (len(kept_rows), *dataset.shape[1:])
                chunks = (max(1, min(dataset.chunks[0], len(kept_rows))), *dataset.chunks[1:])
                out = target.create_dataset(layer, shape=shape, dtype=dataset.dtype, chunks=chunks)
                _copy_rows(dataset, out, kept_rows)
        return compacted


def _copy_rows(source, target, rows: np.ndarray) -> None:
    """Copy ``source[rows]`` into ``target`` in chunks, so the array never sits in memory whole."""
    for start in range(0, len(rows), COPY_CHUNK_ROWS):
        chunk = rows[start:start + COPY_CHUNK_ROWS]
        target[start:start + len(chunk)] = source[chunk]


def file_stamp(path: Path) -> dict[str, int]:
    """Return the inode, size in bytes and modification time in ns of a file.

    A rename keeps all three, while rewriting the file changes its
    modification time and a different file has another inode.

    Args:
        path (Path): The file.

    Returns:
        dict[str, int]: ``inode``, ``bytes`` and ``mtime_ns``.
    """
    stat = path.stat()
    return {"inode": stat.st_ino, "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def plan_moves(work_dir: Path, targets: Mapping[str, str]) -> list[dict]:
    """Describe the moves of staged files into the output folder, ``manifest.json`` last.

    Args:
        work_dir (Path): The ``.partial`` folder containing the staged files.
        targets (Mapping[str, str]): File name in ``work_dir`` -> file name in the output folder.

    Returns:
        list[dict]: ``{"source", "target", "stamp"}`` per file, where ``stamp``
        is its :func:`file_stamp`, in the order :func:`move_into_place` needs.
    """
    order = sorted(targets, key=lambda source: (targets[source] == MANIFEST_NAME, targets[source]))
    return [{"source": source, "target": targets[source], "stamp": file_stamp(work_dir / source)}
            for source in order]


def move_into_place(work_dir: Path, out_dir: Path, moves: Sequence[Mapping],
                    replaces: Sequence[str]) -> None:
    """Move the staged files of a finished extraction into ``out_dir`` and remove ``work_dir``.

    The files of an earlier extraction listed in ``replaces`` that no move
    replaces are deleted before the last move, which is ``manifest.json``, so
    the folder is consistent once the manifest is there. After a stop at
    any point, calling it again with the same arguments (read back from
    ``progress.json``) completes the work. A file that is no longer in
    ``work_dir`` counts as moved when the file at its target has the
    recorded :func:`file_stamp`.

    Args:
        work_dir (Path): The ``.partial`` folder.
        out_dir (Path): The feature folder.
        moves (Sequence[Mapping]): The moves from :func:`plan_moves`.
        replaces (Sequence[str]): File names in ``out_dir`` of the extraction being overwritten.

    Raises:
        ValueError: If a staged file is neither in ``work_dir`` nor, unchanged, in ``out_dir``.
    """
    for move in moves[:-1]:
        _move_staged(work_dir, out_dir, move)
    targets = {move["target"] for move in moves}
    for name in replaces:
        path = out_dir / name
        if name not in targets and path.is_file():
            logger.info("removing %s of the overwritten extraction", path)
            path.unlink()
    if moves:
        _move_staged(work_dir, out_dir, moves[-1])
    remove_work_dir(work_dir)


def _move_staged(work_dir: Path, out_dir: Path, move: Mapping) -> None:
    source = work_dir / move["source"]
    target = out_dir / move["target"]
    if source.is_file():
        _rename(source, target)
        return
    if target.is_file() and file_stamp(target) == dict(move["stamp"]):
        return
    raise ValueError(
        f"cannot complete the extraction in {out_dir}, which stopped while moving its files into "
        f"place: {source} is missing, and {target} is missing or not the file moved there (its "
        "inode, size or modification time differ); pass --overwrite to extract again"
    )


def _rename(source: Path, target: Path) -> None:
    os.replace(source, target)


def _check_moves(moves: object) -> list[dict] | None:
    """Return the ``finishing`` entry of a progress file, raising ValueError if it is malformed."""
    if moves is None:
        return None
    if not isinstance(moves, list) or not all(
            isinstance(move, dict) and isinstance(move.get("source"), str)
            and isinstance(move.get("target"), str) and isinstance(move.get("stamp"), dict)
            for move in moves):
        raise ValueError("its finishing entry is not a list of moves")
    # Only file names are used, so a damaged file cannot point outside the two folders.
    return [{**move, "source": Path(move["source"]).name, "target": Path(move["target"]).name}
            for move in moves]


def remove_work_dir(work_dir: Path) -> None:
    """Delete the ``.partial`` folder of a finished or abandoned extraction."""
    if work_dir.exists():
        shutil.rmtree(work_dir)
