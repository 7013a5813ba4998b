"""Feature files: ``[n_objects, n_features]`` float arrays in ``.npy`` or HDF5.

A feature folder (as written by ``dimalign extract``) contains ``features.npy``
(or ``features.h5`` with one dataset per layer) and ``objects.tsv``.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

import numpy as np

from dimalign.io.files import (
    check_fits_in_memory,
    describe_array_size,
    load_npy,
    load_text_table,
    looks_like_triplet_file,
    missing_file_error,
)
from dimalign.io.objects import OBJECT_TABLE_NAME, ObjectTable, read_object_table

logger = logging.getLogger(__name__)

FEATURE_SUFFIXES = (".npy", ".h5", ".hdf5", ".txt")

_MEMORY_ADVICE = "save the features as a .npy file, which is memory-mapped, on a machine with more memory"


def load_features(
    path: str | os.PathLike,
    *,
    layer: str | None = None,
    mmap: bool = True,
    read_table: bool = True,
) -> tuple[np.ndarray, ObjectTable | None]:
    """Load a feature matrix and its object table.

    Args:
        path (str | os.PathLike): A ``.npy``/``.h5``/``.txt`` file, or a folder with
            ``features.npy`` or ``features.h5`` (and ``objects.tsv``).
        layer (str | None): Dataset name inside an HDF5 file (needed when the
            file contains more than one), or the layer's ``.npy`` stem in a folder
            (``features_<layer>.npy``). NOTE: it is ignored for a single
            ``.npy``/``.txt`` file, and a folder without that file falls back
            to its ``features.npy``; :func:`check_layer_choice` rejects both
            cases when the layer must match.
        mmap (bool): Memory-map ``.npy`` files instead of reading them.
        read_table (bool): Read and check the ``objects.tsv`` next to the
            features. False returns None in its place, for a caller that
            names the objects from another table.

    Returns:
        tuple[np.ndarray, ObjectTable | None]: Features of shape
        ``(n_objects, n_features)`` and the object table, or None where the
        file has none next to it.

    Raises:
        FileNotFoundError: If nothing loadable is at ``path``.
        ValueError: If the file cannot be read as its suffix indicates, the
            array is not 2-D, or the table's length differs.
    """
    path = Path(path)
    table_path = None
    if path.is_dir():
        table_path = path / OBJECT_TABLE_NAME
        candidates = []
        if layer is not None:
            candidates.append(path / f"features_{_safe_layer(layer)}.npy")
        candidates += [path / "features.npy", path / "features.h5"]
        found = [candidate for candidate in candidates if candidate.is_file()]
        if not found:
            layers = sorted(entry.stem.removeprefix("features_") for entry in path.glob("features_*.npy"))
            hint = (
                f"; the folder holds one file per layer, so name the layer (--layer): {', '.join(layers)}"
                if layers else ""
            )
            if not layers and (path / "embedding.npz").is_file():
                hint = (
                    "; the folder is a run directory of 'dimalign fit', so to use its embedding as "
                    "features, save it as a .npy file: "
                    "numpy.save('embedding.npy', numpy.load('RUN/embedding.npz')['embedding'])"
                )
            raise FileNotFoundError(
                f"no features file in {path}: expected one of "
                f"{', '.join(candidate.name for candidate in candidates)}{hint}"
            )
        path = found[0]
    elif not path.is_file():
        raise missing_file_error(path, "features file")
    else:
        sibling = path.parent / OBJECT_TABLE_NAME
        table_path = sibling if sibling.is_file() else None

    suffix = path.suffix.lower()
    if suffix == ".npy":
        if not mmap:
            _check_npy_memory(path)
        features = load_npy(
            path,
            description="a features array",
            advice="write the features with numpy.save",
            mmap_mode="r" if mmap else None,
        )
    elif suffix in (".h5", ".hdf5"):
        features = _load_hdf5(path, layer)
    elif suffix == ".txt":
        features = load_text_table(path, None, description="a features table", advice=_MEMORY_ADVICE)
    else:
        advice = ""
        if suffix == ".npz":
            advice = (
                "; save one array of the .npz archive as a .npy file: "
                "numpy.save('features.npy', numpy.load('FILE.npz')['NAME'])"
            )
        elif suffix in (".pt", ".pth"):
            # A .pt file can contain any pickled object, so it is not read as features.
            advice = (
                "; save a tensor saved with torch.save as a .npy file: "
                "numpy.save('features.npy', torch.load('FILE').detach().cpu().numpy())"
            )
        raise ValueError(
            f"unsupported features file {path}: use one of {', '.join(FEATURE_SUFFIXES)}{advice}"
        )
    if features.ndim != 2:
        raise ValueError(
            f"{path}: features must be 2-D (n_objects, n_features), got shape {features.shape}"
        )
    # Only real numbers convert to float without loss; numpy drops imaginary parts with a warning.
    if features.dtype.kind not in "biuf":
        raise ValueError(
            f"{path}: features must be real numbers, got dtype {features.dtype}; save a float array"
        )

    _reject_triplet_file(path, features)

    if not read_table:
        table_path = None
    table = read_object_table(table_path) if table_path and table_path.is_file() else None
    if table is not None and len(table) != features.shape[0]:
        raise ValueError(
            f"{path} has {features.shape[0]} rows but {table_path} lists {len(table)} objects; "
            "the table must name the feature rows in order: correct it, or name the rows with "
            "another table (simulate and map: --objects)"
        )
    logger.info("loaded features %s of shape %s", path, features.shape)
    return features, table


def _reject_triplet_file(path: Path, features: np.ndarray) -> None:
    """Raise ``ValueError`` for a file that looks like odd-one-out triplets rather than features.

    Passing the human triplets where features belong (``dimalign simulate
    human_triplets.txt``) would otherwise run, with one "object" per triplet.
    """
    if not looks_like_triplet_file(path, features):
        return
    raise ValueError(
        f"{path} looks like a triplet file, not features: its {features.shape[0]} rows of 3 distinct whole "
        "numbers each are object indices of odd-one-out triplets. Features have one row per object and "
        "one column per feature, as 'dimalign extract' writes them. Fit triplets with 'dimalign fit' "
        "(convert other layouts with 'dimalign import-triplets' first). If these are features, save "
        "them as a float array with numpy.save"
    )


def check_layer_choice(path: str | os.PathLike, layer: str | None) -> None:
    """Reject a layer that ``path`` cannot supply, for commands that use the layer only to choose.

    :func:`load_features` ignores ``layer`` for a ``.npy``/``.txt`` file and
    falls back to ``features.npy`` in a folder. That suits ``dimalign map``,
    which also records the layer name, but a command whose layer option only
    selects the data must not read another layer without notice.

    Args:
        path (str | os.PathLike): The features file or folder.
        layer (str | None): The requested layer; None accepts any source.

    Raises:
        ValueError: If ``path`` is a single-layer ``.npy``/``.txt`` file, or a
            folder with neither ``features_<layer>.npy`` nor ``features.h5``
            whose manifest.json records another layer, or none, for its
            ``features.npy``.
    """
    if layer is None:
        return
    path = Path(path)
    if path.is_file() and path.suffix.lower() in (".npy", ".txt"):
        raise ValueError(
            f"{path} is a single-layer features file, so layer {layer!r} cannot be chosen "
            "in it: drop the layer option (CLI: --layer)"
        )
    if not path.is_dir() or not (path / "features.npy").is_file():
        return
    if (path / f"features_{_safe_layer(layer)}.npy").is_file() or (path / "features.h5").is_file():
        return

    # dimalign extract records the layer of a single-layer folder as settings.layer.
    from dimalign.io.files import MANIFEST_NAME, read_manifest

    recorded = None
    if (path / MANIFEST_NAME).is_file():
        recorded = read_manifest(path).get("settings", {}).get("layer")
    if recorded == layer:
        return
    contains = f"layer {recorded!r}" if recorded else "one layer"
    raise ValueError(
        f"{path} contains {contains} in features.npy and no features_{_safe_layer(layer)}.npy, "
        f"so layer {layer!r} cannot be chosen: drop the layer option (CLI: --layer) or pass "
        "a folder with that layer"
    )


def _safe_layer(layer: str) -> str:
    return layer.replace("/", "_")


def _load_hdf5(path: Path, layer: str | None) -> np.ndarray:
    import h5py

    try:
        handle = h5py.File(path, "r")
    except OSError as error:
        # Errors of the file system carry an errno and name the file already.
        if error.errno is not None:
            raise
        raise ValueError(
            f"{path} cannot be read as an HDF5 file ({error}): it is damaged or not HDF5; write "
            "the features again"
        ) from error
    with handle:
        names: list[str] = []
        handle.visititems(lambda name, item: names.append(name) if isinstance(item, h5py.Dataset) else None)
        if not names:
            raise ValueError(
                f"{path} contains no datasets, so it has no features: write the features of each "
                "layer as a dataset of shape (n_objects, n_features)"
            )
        if layer is None:
            if len(names) != 1:
                raise ValueError(f"{path} contains several datasets {names}: choose one with layer=NAME (CLI: --layer NAME)")
            layer = names[0]
        if layer not in handle:
            raise ValueError(
                f"dataset {layer!r} not found in {path}; it contains {names}: choose one of them with "
                "layer=NAME (CLI: --layer NAME)"
            )
        dataset = handle[layer]
        if not isinstance(dataset, h5py.Dataset):
            raise ValueError(
                f"{layer!r} in {path} is a group, not a dataset: choose one of the datasets {names} "
                "with layer=NAME (CLI: --layer NAME)"
            )
        check_fits_in_memory(
            dataset.size * dataset.dtype.itemsize,
            f"{path}: dataset {layer!r} needs {{size}} of memory as {describe_array_size(dataset.shape, dataset.dtype)}",
            _MEMORY_ADVICE,
        )
        try:
            return np.asarray(dataset)
        except OSError as error:
            # h5py raises OSError without an errno for data that fails to decompress or is cut short.
            if error.errno is not None:
                raise
            raise ValueError(
                f"{path}: dataset {layer!r} cannot be read ({error}), so the file is damaged: write the "
                "features again"
            ) from error


def _check_npy_memory(path: Path) -> None:
    """Raise ``ValueError`` if a ``.npy`` file read without memory mapping would not fit into memory.

    The shape and dtype come from the file's header. A header that cannot be
    read is left to :func:`load_npy`, which names the problem.
    """
    try:
        with open(path, "rb") as handle:
            version = np.lib.format.read_magic(handle)
            read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, _, dtype = read_header(handle)
    except (ValueError, OSError, EOFError):
        return
    check_fits_in_memory(
        math.prod(shape) * dtype.itemsize,
        f"{path} needs {{size}} of memory as {describe_array_size(shape, dtype)}",
        "pass mmap=True to read it memory-mapped, or run on a machine with more memory",
    )
