"""The stages of ``dimalign run``: what each needs, which settings it takes, what it writes.

Every stage function receives a :class:`StageContext` and writes into
``context.out_dir``, a temporary folder that the pipeline renames to the
stage's folder of the study directory once the function returns. Stage
functions call the library (never a subprocess) and return a small dict of
headline numbers for the manifest.

Stage folders:

- ``features/``: ``features.npy`` and ``objects.tsv``, one row per object
  (the mean over its images), plus the raw extraction in ``extract/``.
- ``human_fit/``, ``dnn_fit/``: run directories of ``dimalign fit`` plus the
  ``train.npy`` and ``val.npy`` triplets they were fitted and validated on.
- ``dnn_triplets/``: ``train.npy``, ``val.npy``, ``objects.tsv``.
- ``evaluate/``: ``human.json``, ``dnn.json`` (:func:`evaluate_embedding`
  metrics on the held-out triplets) and ``summary.json``.
- ``compare/``: the files of :func:`dimalign.analysis.compare.compare`, the
  similarity matrices ``human_similarity.npy`` and ``dnn_similarity.npy``
  (with ``similarity_objects.npy``, their rows); among the former,
  ``most_relevant_<side>.csv`` in the layout ``dimalign labels summarize
  --relevance`` reads.
- ``map/``: ``ridge_map.npz`` and ``ridge_map.csv``.
- ``report/``: ``report.html`` and ``figures/``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dimalign.io.files import atomic_path, now_iso, write_manifest, write_text_atomic
from dimalign.report import settings as specs

logger = logging.getLogger(__name__)

TRAIN_NAME = "train.npy"
VAL_NAME = "val.npy"


@dataclass
class StageContext:
    """Inputs of a stage function.

    Attributes:
        name (str): The stage.
        settings (dict[str, Any]): Checked settings; ``seed`` and ``device``
            already resolved from ``[study]`` where the stage left them unset.
        inputs (dict[str, Path]): The study inputs this stage uses.
        upstream (dict[str, Path]): Finished folders of the stages it reads.
        out_dir (Path): The temporary folder to write.
        study (dict[str, Any]): The ``[study]`` table.
        record (dict[str, Any]): The pipeline's record of the study (config
            file, overrides), for the report.
    """

    name: str
    settings: dict[str, Any]
    inputs: dict[str, Path]
    upstream: dict[str, Path]
    out_dir: Path
    study: dict[str, Any]
    record: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Stage:
    """A pipeline stage.

    Attributes:
        name (str): Stage name, also its table in the study file and its folder.
        help (str): One line on what it does.
        run (Callable[[StageContext], dict]): Does the work.
        spec (Callable[[Mapping], dict[str, Setting]]): The settings it takes,
            given the raw settings (fit stages depend on ``method``).
        upstream (Callable[[set[str], dict], list[str]]): The stages it reads,
            given the configured stage names and its checked settings.
        inputs (Callable[[set[str], dict], tuple[list[str], list[str]]]):
            Required and optional ``[inputs]`` keys.
        resumable (bool): Keep an interrupted temporary folder, so that a fit
            continues from its checkpoint.
        check (Callable[[dict, dict], None]): Checks at planning time what
            one setting alone cannot show (two settings together, the device,
            a count against the inputs), given the checked settings and the
            input paths. Raises ``ValueError``.
    """

    name: str
    help: str
    run: Callable[[StageContext], dict[str, Any]]
    spec: Callable[[Mapping[str, Any]], dict[str, specs.Setting]]
    upstream: Callable[[set[str], dict[str, Any]], list[str]]
    inputs: Callable[[set[str], dict[str, Any]], tuple[list[str], list[str]]]
    resumable: bool = False
    check: Callable[[dict[str, Any], dict[str, Path]], None] = lambda settings, inputs: _check_device(settings)


def _check_device(settings: Mapping[str, Any]) -> None:
    """Resolve the stage's device, so that ``cuda`` without a GPU fails before any stage runs."""
    if settings.get("device") is not None:
        from dimalign.device import resolve_device

        resolve_device(settings["device"])


# -- features from images --------------------------------------------------------


def run_features(context: StageContext) -> dict[str, Any]:
    """Extract DNN features of every image and average them per object."""
    from dimalign.features import extract_features
    from dimalign.features.datasets import ImageList, list_images
    from dimalign.io.features import load_features
    from dimalign.io.files import count_of
    from dimalign.io.objects import OBJECT_TABLE_NAME, read_object_table, write_object_table

    settings = context.settings
    objects = read_object_table(context.inputs["objects"])
    extract_dir = context.out_dir / "extract"
    # Only the images of the study's objects are extracted, so a folder of all THINGS images
    # costs the time of the objects' images alone. The averages do not depend on the others.
    all_images = list_images(context.inputs["images"])
    used_rows = sorted(row for rows in images_per_object(objects.object_ids, all_images.object_ids) for row in rows)
    if len(used_rows) < len(all_images):
        logger.info(
            "extracting the %s of the %s; left out %d images of no object",
            count_of(len(used_rows), "image"), count_of(len(objects), "object"), len(all_images) - len(used_rows),
        )
    images = ImageList(
        tuple(all_images.object_ids[row] for row in used_rows), tuple(all_images.paths[row] for row in used_rows),
        all_images.root,
    )
    # A weights file comes resolved from the study file's folder, with its fingerprint in the stage hash.
    weights = context.inputs.get("weights") or settings["weights"] or None
    extract_features(
        images, extract_dir, model=settings["model"],
        weights=weights, layers=[settings["layer"]] if settings["layer"] else None,
        pools=settings["pool"], batch_size=settings["batch_size"], device=settings["device"],
        background=settings["background"], exif_transpose=settings["exif_transpose"], overwrite=True,
    )
    image_features, image_table = load_features(extract_dir, mmap=False)
    rows_per_object = images_per_object(objects.object_ids, image_table.object_ids)
    features = np.stack([np.asarray(image_features[rows]).mean(axis=0) for rows in rows_per_object])
    with atomic_path(context.out_dir / "features.npy") as temporary:
        np.save(temporary, features.astype(np.float32))
    write_object_table(objects, context.out_dir / OBJECT_TABLE_NAME)
    counts = [len(rows) for rows in rows_per_object]
    logger.info(
        "averaged features of %d images into %d objects (%d to %d images each)",
        sum(counts), len(objects), min(counts), max(counts),
    )
    return {"n_objects": len(objects), "n_images": sum(counts), "n_features": int(features.shape[1])}


def check_features(settings: Mapping[str, Any], inputs: Mapping[str, Path]) -> None:
    """Check the settings and the images of every object, so that a bad one fails before any stage runs.

    The device, the background colour, the pooling of the default layer and
    an image for every object are checked. Listing the images costs little
    next to the extraction, which would otherwise fail only at its end.
    """
    from dimalign.features.datasets import list_images
    from dimalign.features.decode import parse_color
    from dimalign.io.objects import read_object_table

    _check_device(settings)
    try:
        parse_color(settings["background"])
    except ValueError as error:
        raise ValueError(f"features.background = {settings['background']!r} is invalid: {error}") from None
    # The default layer of every library model but EfficientNet-Lite0 is a vector per image (the input
    # of the last Linear layer, or VGG's classifier.4), which gap rejects at the first batch. A network
    # of your own names its default layer only when its function runs, so the first batch checks it.
    from dimalign.features.user_models import is_model_spec

    library_model = not is_model_spec(settings["model"])
    if (not settings["layer"] and settings["pool"] == "gap" and settings["model"] != "efficientnet_lite0"
            and library_model):
        raise ValueError(
            f'features.pool = "gap" does not fit the default layer of {settings["model"]}, the input of its '
            "last Linear layer (or VGG's classifier.4), which has one value per feature and no spatial axes "
            'to average: set features.pool = "flatten", or name a convolutional layer with features.layer'
        )
    if "images" in inputs and "objects" in inputs:
        images = list_images(inputs["images"])
        images_per_object(read_object_table(inputs["objects"]).object_ids, images.object_ids)


#: Suffixes that make ``load_model`` read a ``weights`` value as a file.
WEIGHTS_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt", ".safetensors")


def weights_file(value: str, resolve: Callable[[str], Path]) -> Path | None:
    """Return the weights file that ``features.weights`` names, or None for a weights name.

    The value names a file as :func:`dimalign.features.load_model` decides:
    a path with a folder part or a weights suffix, or an existing file. A
    relative path resolves like an input path (``resolve``), from the study
    file's folder, where ``load_model`` alone would start at the current
    directory.

    Raises:
        FileNotFoundError: If the value names a file that does not exist.
    """
    from dimalign.features.models import PRETRAINED, RANDOM

    if not value or value.lower() in PRETRAINED + RANDOM:
        return None
    path = resolve(value)
    if not ("/" in value or os.sep in value or Path(value).suffix in WEIGHTS_SUFFIXES or path.exists()):
        return None
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} not found: features.weights = {value!r}")
    return path


def images_per_object(object_ids: tuple[str, ...], image_ids: tuple[str, ...]) -> list[list[int]]:
    """Find the image rows of every object.

    An image belongs to object ``o`` when its relative path is ``o.<ext>`` or
    lies in the folder ``o/``.

    Raises:
        ValueError: Listing the objects without any image.

    Examples:
        >>> images_per_object(("cat", "dog"), ("cat.jpg", "dog/1.png", "dog/2.png"))
        [[0], [1, 2]]
    """
    rows: dict[str, list[int]] = {name: [] for name in object_ids}
    unused: set[str] = set()
    for row, image_id in enumerate(image_ids):
        parts = image_id.split("/")
        owner = parts[0] if len(parts) > 1 else Path(parts[0]).stem
        if owner in rows:
            rows[owner].append(row)
        else:
            unused.add(owner)
    missing = [name for name, found in rows.items() if not found]
    if missing:
        # The names of the unused images show a near miss, such as hot_dog for the id hotdog.
        unused_text = f". The images of no object are named {sorted(unused)[:20]}" if unused else ""
        raise ValueError(
            f"{len(missing)} objects have no image: {missing[:20]}; name images <object_id>.<ext> "
            f"or put them in a folder <object_id>/{unused_text}"
        )
    return [rows[name] for name in object_ids]


# -- fits ---------------------------------------------------------------------------


def build_estimator(settings: Mapping[str, Any], checkpoint_dir: Path):
    """Build VICE or SPoSE from a fit stage's checked settings."""
    from dimalign.embedding import SPoSE, VICE

    estimator = {"vice": VICE, "spose": SPoSE}[settings["method"]]
    parameters = {
        key: value for key, value in settings.items()
        if key in specs.estimator_settings(settings["method"])
    }
    return estimator(
        **parameters, random_state=settings["seed"], device=settings["device"],
        checkpoint_dir=str(checkpoint_dir), resume=True, verbose=True,
    )


def check_fit(settings: Mapping[str, Any], inputs: Mapping[str, Path]) -> None:
    """Check a fit stage's estimator settings as the estimator would at the start of ``fit``."""
    _check_device(settings)
    estimator = build_estimator(settings, Path("unused"))
    estimator._check_settings()
    estimator._dtype()


def _fit(context: StageContext, train: np.ndarray, val: np.ndarray, objects, inputs: dict) -> dict[str, Any]:
    from dimalign.embedding import fit_run
    from dimalign.io.files import read_manifest
    from dimalign.io.triplets import save_triplets
    from dimalign.parallel import limit_torch_threads

    save_triplets(train, context.out_dir / TRAIN_NAME)
    save_triplets(val, context.out_dir / VAL_NAME)
    estimator = build_estimator(context.settings, context.out_dir)
    # One torch thread, as in dimalign fit and every sweep worker: extra threads
    # gain little on these small per-batch operations and lose much on busy
    # cores, and one thread gives the same embedding per seed.
    with limit_torch_threads(1):
        fit_run(
            estimator, train, val if len(val) else None, context.out_dir,
            n_objects=len(objects), object_table=objects, inputs=inputs,
        )
    # fit_run has scored the held-out triplets already; scoring VICE again would
    # repeat its Monte Carlo posterior predictive.
    recorded = read_manifest(context.out_dir).get("outputs", {})
    outputs = {"n_dims": estimator.n_dims_, "n_epochs": estimator.n_epochs_, "n_train": len(train), "n_val": len(val)}
    if "val_accuracy" in recorded:
        outputs["val_accuracy"] = recorded["val_accuracy"]
    return outputs


def run_human_fit(context: StageContext) -> dict[str, Any]:
    """Fit an embedding to the human triplets, holding out a validation part."""
    from dimalign.io.objects import read_object_table
    from dimalign.io.triplets import load_triplets, split_triplets

    settings = context.settings
    objects = read_object_table(context.inputs["objects"])
    triplets = load_triplets(
        context.inputs["human_triplets"], len(objects),
        one_based=settings["one_based"], odd_column=settings["odd_column"],
    )
    _check_held_out_size("human_fit", settings["val_fraction"], len(triplets))
    train, val = split_triplets(triplets, settings["val_fraction"], random_state=settings["seed"])
    return _fit(context, train, val, objects, {"triplets": context.inputs["human_triplets"]})


def _check_held_out_size(stage: str, val_fraction: float, n_triplets: int) -> None:
    """Reject a val_fraction above 0 that holds out no triplet, or one that holds out all of them.

    split_triplets holds out round(val_fraction * n_triplets) rows, which is
    0 for a small fraction of few triplets and every row for a fraction close to 1.
    """
    n_held_out = round(val_fraction * n_triplets)
    if val_fraction > 0 and n_held_out == 0:
        raise ValueError(
            f"{stage}.val_fraction = {val_fraction} is invalid: it holds out no triplet, since round({val_fraction} x "
            f"{n_triplets:,} triplets) = 0; use at least {1 / n_triplets:.2g}, or 0 for no held-out part"
        )
    if n_held_out >= n_triplets:
        raise ValueError(
            f"{stage}.val_fraction = {val_fraction} is invalid: it holds out every triplet, since "
            f"round({val_fraction} x {n_triplets:,} triplets) = {n_held_out:,}, and leaves none for training; "
            f"use at most {math.floor((n_triplets - 1) / n_triplets * 10_000) / 10_000:g}"
        )


# -- a given human embedding ---------------------------------------------------------

#: Plan reason of human_fit when inputs.human_embedding replaces the fit.
EMBEDDING_REASON = "uses inputs.human_embedding, no fit"


def read_human_embedding(path: Path, objects_path: Path, objects, *, quiet: bool = False):
    """Read ``inputs.human_embedding`` and check it against the study's objects.

    Args:
        path (Path): An embedding file (one row per object, in the order of
            ``objects``) or a run folder of ``dimalign fit``.
        objects_path (Path): The object table file, for messages.
        objects (ObjectTable): The study's objects.
        quiet (bool): Hide the loading log line and the warning about
            negative weights within the tolerance, which are set to 0.

    Returns:
        EmbeddingResult: As :func:`dimalign.io.runs.load_embedding` returns it.

    Raises:
        ValueError: If a run folder's ``objects.tsv`` lists other objects.
            Also if the embedding has another number of rows than there are
            objects, no column, only zeros, or a NaN or inf value. Also for a
            row whose dot product with itself overflows float64, or a weight
            below the tolerance of :func:`dimalign.io.runs.load_embedding`.
    """
    from dimalign.io.objects import OBJECT_TABLE_NAME, read_object_table
    from dimalign.io.runs import EMBEDDING_NAME, _read_embedding_file, load_embedding, reject_negative_weights

    file = path
    if path.is_dir():
        table_path = path / OBJECT_TABLE_NAME
        if table_path.is_file():
            _check_same_object_table(read_object_table(table_path), table_path, objects, objects_path)
        file = path / EMBEDDING_NAME
    # The raw array gives the positions of bad values. A file that cannot be
    # read this way is left to load_embedding, whose errors name the problem.
    raw = None
    if file.is_file():
        try:
            raw = np.asarray(_read_embedding_file(file)[0], dtype=np.float64)
        except (OSError, EOFError, ValueError, TypeError):
            raw = None
    if raw is not None and raw.ndim == 2:
        source = f"inputs.human_embedding {file}"
        bad = np.argwhere(~np.isfinite(raw))
        if bad.size:
            row, column = bad[0]
            raise ValueError(
                f"{source}: NaN or inf at row {row}, column {column} ({len(bad)} values). An embedding needs "
                "a finite weight in every cell, so replace the file"
            )
        if raw.shape[0] != len(objects):
            raise ValueError(
                f"{source} has {raw.shape[0]} rows, but inputs.objects {objects_path} lists {len(objects)} "
                "objects. The embedding needs one row per object, in the order of inputs.objects"
            )
        reject_negative_weights(raw, source)
        _reject_unusable_weights(raw, source)
    if not quiet:
        return load_embedding(path)
    with warnings.catch_warnings(), _quiet_loading("dimalign.io.runs"):
        warnings.simplefilter("ignore")
        return load_embedding(path)


def _reject_unusable_weights(raw: np.ndarray, source: str) -> None:
    """Reject an embedding that no later stage can use, before the DNN stages run for minutes.

    compare rejects the same embeddings, but only after the DNN fit, and
    calls a file without columns a fit that pruned every dimension.
    """
    if raw.shape[1] == 0:
        raise ValueError(
            f"{source} has no columns, so it gives the objects no dimension: check that it is the right "
            "file, which needs one column per dimension"
        )
    if not raw.any():
        raise ValueError(
            f"{source}: every weight is 0, so all objects are equally similar and no stage can use it: "
            "check that it is the right file"
        )
    with np.errstate(over="ignore"):
        squared_norms = np.einsum("ij,ij->i", raw, raw)
    if not np.isfinite(squared_norms).all():
        row = int(np.flatnonzero(~np.isfinite(squared_norms))[0])
        raise ValueError(
            f"{source}: the dot product of row {row} with itself is beyond float64 (largest weight "
            f"{float(np.abs(raw).max()):.3g}), so its similarities are undefined: check that it is the "
            "right file, or divide its weights by a common factor"
        )


def _check_same_object_table(table, table_path: Path, objects, objects_path: Path) -> None:
    """Reject the object table of a run folder that differs from the study's objects."""
    if table.object_ids == objects.object_ids:
        return
    detail = f"it lists {len(table)} objects, inputs.objects {len(objects)}"
    for row, (found, expected) in enumerate(zip(table.object_ids, objects.object_ids)):
        if found != expected:
            detail = f"{detail}, and they first differ at row {row}: {found!r} instead of {expected!r}"
            break
    raise ValueError(
        f"inputs.human_embedding: {table_path} lists other objects than inputs.objects {objects_path} "
        f"({detail}). Give an embedding of the study's objects, in their order"
    )


def check_human_embedding(settings: Mapping[str, Any], inputs: Mapping[str, Path]) -> None:
    """Read the given human embedding, so that a bad one fails before any stage runs."""
    from dimalign.io.objects import read_object_table

    # The run warns about weights within the tolerance that it sets to 0, so planning keeps quiet about them.
    read_human_embedding(
        inputs["human_embedding"], inputs["objects"], read_object_table(inputs["objects"]), quiet=True
    )


def run_human_embedding(context: StageContext) -> dict[str, Any]:
    """Write the given human embedding as the human fit, with every human triplet to score it on.

    The folder has the layout of a fit (``embedding.npz``, ``objects.tsv``
    and ``val.npy``), so the stages that read the human fit read it
    unchanged. ``val.npy`` contains all of ``inputs.human_triplets``, and the
    manifest records ``held_out: false``, because a published embedding may
    have been trained on these triplets.
    """
    from dimalign.io.objects import OBJECT_TABLE_NAME, read_object_table, write_object_table
    from dimalign.io.runs import save_embedding
    from dimalign.io.triplets import load_triplets, save_triplets

    settings = context.settings
    objects = read_object_table(context.inputs["objects"])
    source = context.inputs["human_embedding"]
    embedding = read_human_embedding(source, context.inputs["objects"], objects)
    save_embedding(embedding, context.out_dir)
    write_object_table(objects, context.out_dir / OBJECT_TABLE_NAME)
    outputs: dict[str, Any] = {
        "n_dims": int(embedding.embedding.shape[1]), "n_epochs": None, "n_train": None, "held_out": False,
    }
    inputs = {"embedding": source, "objects": context.inputs["objects"]}
    triplets_path = context.inputs.get("human_triplets")
    if triplets_path is not None:
        triplets = load_triplets(
            triplets_path, len(objects), one_based=settings["one_based"], odd_column=settings["odd_column"],
        )
        save_triplets(triplets, context.out_dir / VAL_NAME)
        outputs["n_val"] = len(triplets)
        inputs["triplets"] = triplets_path
        logger.warning(
            "human_fit: the stages that score the human embedding %s use all %d triplets of %s, which are not "
            "held out: a published embedding may have been trained on them",
            source, len(triplets), triplets_path,
        )
    logger.info(
        "human_fit: using the given embedding %s (%d objects x %d dimensions) in place of a fit",
        source, *embedding.embedding.shape,
    )
    write_manifest(context.out_dir, step="human_embedding", inputs=inputs, settings=settings, outputs=outputs)
    return outputs


def human_triplets_held_out(run_dir: Path) -> bool:
    """Return whether the ``val.npy`` of a human_fit folder is held out, False for a given embedding."""
    from dimalign.io.files import read_manifest

    return read_manifest(run_dir).get("outputs", {}).get("held_out", True) is not False


def run_dnn_fit(context: StageContext) -> dict[str, Any]:
    """Fit an embedding to the simulated DNN triplets."""
    from dimalign.io.objects import OBJECT_TABLE_NAME, read_object_table
    from dimalign.io.triplets import load_triplets

    source = context.upstream["dnn_triplets"]
    objects = read_object_table(source / OBJECT_TABLE_NAME)
    train = load_triplets(source / TRAIN_NAME, len(objects))
    val = load_triplets(source / VAL_NAME, len(objects)) if (source / VAL_NAME).is_file() else train[:0]
    return _fit(context, train, val, objects, {"train": source / TRAIN_NAME, "val": source / VAL_NAME})


# -- DNN triplets ------------------------------------------------------------------


def features_source(context: StageContext) -> Path:
    """Return the DNN features: the ``features`` stage's output, else ``inputs.dnn_features``."""
    if "features" in context.upstream:
        return context.upstream["features"]
    return context.inputs["dnn_features"]


def load_aligned_features(path: Path, objects, layer: str) -> np.ndarray:
    """Load features and put their rows in the order of ``objects``.

    A feature file with an object table is matched by object id; one without
    must have one row per object, in the object table's order.

    Raises:
        ValueError: If the rows cannot be matched to the objects.
    """
    from dimalign.io.features import load_features

    features, table = load_features(path, layer=layer or None)
    _check_feature_rows(path, features.shape[0], table, objects)
    if table is not None:
        return np.asarray(features)[table.index_of(objects.object_ids)]
    return np.asarray(features)


def _check_feature_rows(path: Path, n_rows: int, table, objects) -> None:
    """Check that the feature rows can be matched to ``objects`` (see :func:`load_aligned_features`)."""
    if table is not None:
        missing = sorted(set(objects.object_ids) - set(table.object_ids))
        if missing:
            raise ValueError(
                f"{len(missing)} objects have no row in the features {path}: {missing[:20]}; "
                "the feature table's object ids must include every object of inputs.objects"
            )
    elif n_rows != len(objects):
        raise ValueError(
            f"the features {path} have {n_rows} rows but inputs.objects lists {len(objects)} "
            "objects; without an objects.tsv next to the features the rows must be the objects in order"
        )


def check_dnn_triplets(settings: Mapping[str, Any], inputs: Mapping[str, Path]) -> None:
    """Check the layer choice, the feature rows, the held-out size and ``n_triplets`` against the objects."""
    from dimalign.io.features import check_layer_choice, load_features
    from dimalign.io.objects import read_object_table
    from dimalign.triplets.sampling import count_triplets

    objects = read_object_table(inputs["objects"])
    features = inputs.get("dnn_features")
    if features is not None:
        check_layer_choice(features, settings["layer"] or None)
        if _memory_mapped(features):
            # Reading a .npy header is cheap (the data stay on disk), so the stage's own loading
            # errors (a layer to name, rows that do not match) show at planning.
            with _quiet_loading():
                loaded, table = load_features(features, layer=settings["layer"] or None)
            _check_feature_rows(features, loaded.shape[0], table, objects)
        elif features.is_file() and features.suffix.lower() == ".txt":
            _reject_triplet_text(features)
    _check_held_out_size("dnn_triplets", settings["val_fraction"], settings["n_triplets"])
    n_objects = len(objects)
    n_sets = count_triplets(n_objects)
    if settings["n_triplets"] > n_sets:
        raise ValueError(
            f"dnn_triplets.n_triplets = {settings['n_triplets']:,} is invalid: the {n_objects:,} objects of "
            f"inputs.objects form only {n_sets:,} distinct triplets; use at most {n_sets:,}"
        )


def _reject_triplet_text(path: Path, n_rows: int = 1000) -> None:
    """Reject a text feature input whose first rows look like triplets, as loading it would.

    The whole file is read only by the stage, which may run after a long
    human fit, so the first ``n_rows`` rows are checked at planning.
    """
    from dimalign.io.files import looks_like_triplet_file

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            head = np.loadtxt(path, dtype=np.float64, ndmin=2, max_rows=n_rows)
    except (ValueError, OSError):
        return  # the stage's own loading names the problem
    if looks_like_triplet_file(path, head):
        raise ValueError(
            f"{path} looks like a triplet file, not features: its first {head.shape[0]} rows are 3 distinct "
            "whole numbers each, object indices of odd-one-out triplets. Give human triplets as "
            "inputs.human_triplets, and features (one row per object) as inputs.dnn_features"
        )


def run_dnn_triplets(context: StageContext) -> dict[str, Any]:
    """Sample unique triplets and let the DNN features choose the odd one out."""
    from dimalign.io.objects import OBJECT_TABLE_NAME, read_object_table, write_object_table
    from dimalign.io.triplets import save_triplets, split_triplets
    from dimalign.triplets import sample_triplets, simulate_choices

    settings = context.settings
    started = now_iso()
    objects = read_object_table(context.inputs["objects"])
    source = features_source(context)
    features = load_aligned_features(source, objects, settings["layer"])
    sampled = sample_triplets(len(objects), settings["n_triplets"], random_state=settings["seed"])
    relu = None if settings["relu"] == "auto" else settings["relu"]
    result = simulate_choices(
        features, sampled, similarity=settings["similarity"], rule=settings["rule"],
        temperature=settings["temperature"], random_state=settings["seed"], relu=relu,
    )
    train, val = split_triplets(result.triplets, settings["val_fraction"], random_state=settings["seed"])
    save_triplets(train, context.out_dir / TRAIN_NAME)
    save_triplets(val, context.out_dir / VAL_NAME)
    write_object_table(objects, context.out_dir / OBJECT_TABLE_NAME)
    outputs = {**result.settings(), "n_train": len(train), "n_val": len(val)}
    write_manifest(
        context.out_dir, step="simulate", inputs={"features": source, "objects": context.inputs["objects"]},
        settings=settings, started=started, outputs=outputs,
    )
    return outputs


# -- evaluation ----------------------------------------------------------------------


def _load_val(run_dir: Path, n_objects: int) -> np.ndarray:
    from dimalign.io.triplets import load_triplets

    path = run_dir / VAL_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: the fit stage writes the held-out triplets there")
    triplets = load_triplets(path, n_objects)
    if len(triplets) == 0:
        raise ValueError(f"{path} contains no triplets: set val_fraction > 0 to evaluate on held-out triplets")
    return triplets


def check_evaluate(settings: Mapping[str, Any], inputs: Mapping[str, Path]) -> None:
    """Read the 48-object files of ``things_dir`` (a few kilobytes), so that a wrong folder fails before the fits."""
    from dimalign.analysis.things48 import load_things48

    _check_device(settings)
    if "things_dir" in inputs:
        load_things48(inputs["things_dir"])


def run_evaluate(context: StageContext) -> dict[str, Any]:
    """Score each fitted embedding on its held-out triplets, with the human noise ceiling."""
    from dimalign.analysis.evaluate import evaluate_embedding
    from dimalign.analysis.noise_ceiling import triplet_noise_ceiling
    from dimalign.analysis.similarity import odd_one_out_accuracy
    from dimalign.io.runs import load_embedding
    from dimalign.io.triplets import load_triplets

    started = now_iso()
    things_dir = context.inputs.get("things_dir")
    summary: dict[str, Any] = {}
    embeddings = {}
    for side in ("human", "dnn"):
        run_dir = context.upstream.get(f"{side}_fit")
        if run_dir is None:
            continue
        embedding = load_embedding(run_dir)
        embeddings[side] = embedding.embedding
        val = _load_val(run_dir, embedding.n_objects)
        metrics = evaluate_embedding(embedding, val, things_dir=things_dir, device=context.settings["device"])
        if side == "human" and not human_triplets_held_out(run_dir):
            metrics["held_out"] = False
            logger.warning(
                "evaluate: scored the given human embedding on all %d human triplets, which are not held out. "
                "A published embedding may have been trained on them, so its accuracy may be optimistic",
                len(val),
            )
        write_text_atomic(context.out_dir / f"{side}.json", json.dumps(metrics, indent=2) + "\n")
        summary[side] = metrics

    if "human" in embeddings:
        # The ceiling of the whole file, not only the held-out part: repeated sets are rare.
        human_dir = context.upstream["human_fit"]
        n_objects = embeddings["human"].shape[0]
        # The folder of a given embedding has no train.npy: its val.npy contains every human triplet.
        every = np.concatenate([
            load_triplets(human_dir / name, n_objects) for name in (TRAIN_NAME, VAL_NAME)
            if name == VAL_NAME or (human_dir / name).is_file()
        ])
        ceiling = triplet_noise_ceiling(every) if _has_repeats(every) else None
        summary["human_noise_ceiling"] = (
            None if ceiling is None
            else {"value": ceiling.value, "n_sets": ceiling.n_sets, "n_responses": ceiling.n_responses}
        )
    if set(embeddings) == {"human", "dnn"} and embeddings["human"].shape[0] == embeddings["dnn"].shape[0]:
        human_val = load_triplets(context.upstream["human_fit"] / VAL_NAME, embeddings["human"].shape[0])
        summary["dnn_embedding_on_human_val_accuracy"] = float(odd_one_out_accuracy(embeddings["dnn"], human_val))

    write_text_atomic(context.out_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
    inputs: dict[str, Path] = dict(context.upstream)
    if things_dir is not None:
        inputs["things_dir"] = things_dir
    write_manifest(context.out_dir, step="evaluate", inputs=inputs, settings=context.settings,
                   started=started, outputs=summary)
    return {
        f"{side}_{key}": summary[side][key]
        for side in embeddings for key in ("accuracy", "things48_r") if key in summary[side]
    }


def _has_repeats(triplets: np.ndarray) -> bool:
    sets = np.sort(triplets, axis=1)
    return np.unique(sets, axis=0).shape[0] < sets.shape[0]


# -- comparison ----------------------------------------------------------------------


class CachedSimilarity:
    """Similarity matrices computed once per embedding, then served by sub-block.

    :func:`dimalign.analysis.similarity.similarity_matrix` with ``objects=`` returns
    the rows and columns of the full matrix, so a cached full matrix serves
    any subset exactly. Embeddings not seen before are computed normally.
    """

    def __init__(self) -> None:
        self._matrices: dict[str, np.ndarray] = {}

    @staticmethod
    def _key(embedding: np.ndarray) -> str:
        array = np.ascontiguousarray(embedding, dtype=np.float64)
        return hashlib.sha256(array.tobytes() + str(array.shape).encode()).hexdigest()

    def add(self, embedding: np.ndarray, matrix: np.ndarray) -> None:
        """Remember the full similarity matrix of ``embedding``."""
        self._matrices[self._key(embedding)] = matrix

    def __call__(self, embedding: np.ndarray, objects=None, device: str = "cpu", **options) -> np.ndarray:
        from dimalign.analysis.similarity import similarity_matrix

        matrix = self._matrices.get(self._key(embedding))
        if matrix is None:
            return similarity_matrix(embedding, objects=objects, device=device, **options)
        if objects is None:
            return np.asarray(matrix, dtype=np.float64)
        rows = np.asarray(objects)
        return np.asarray(matrix[np.ix_(rows, rows)], dtype=np.float64)


def check_compare(settings: Mapping[str, Any], inputs: Mapping[str, Path]) -> None:
    """Check the object and triplet counts of the compare stage."""
    from dimalign.io.objects import read_object_table

    _check_device(settings)
    if "objects" in inputs:
        n_objects = len(read_object_table(inputs["objects"]))
        if settings["top_k"] > n_objects:
            raise ValueError(
                f"compare.top_k = {settings['top_k']} is invalid: inputs.objects lists {n_objects} objects, "
                f"so use at most {n_objects}"
            )
    similarity_objects = specs.check_count(
        "compare", "similarity_objects", settings["similarity_objects"], allow_zero=False
    )
    if similarity_objects is not None and similarity_objects < 3:
        raise ValueError(
            f"compare.similarity_objects = {similarity_objects} is invalid: use 'all' or at least 3"
        )
    specs.check_count("compare", "relevance_triplets", settings["relevance_triplets"], allow_zero=True)
    matrix_objects = specs.check_count("compare", "matrix_objects", settings["matrix_objects"], allow_zero=True)
    if matrix_objects is not None and 0 < matrix_objects < 3:
        raise ValueError(f"compare.matrix_objects = {matrix_objects} is invalid: use 0, 'all' or at least 3")


def run_compare(context: StageContext) -> dict[str, Any]:
    """Compare the human and the DNN embedding, saving their similarity matrices for the figures."""
    from dimalign.analysis.compare import compare
    from dimalign.analysis.similarity import similarity_matrix
    from dimalign.io.runs import load_embedding

    settings = context.settings
    human_dir, dnn_dir = context.upstream["human_fit"], context.upstream["dnn_fit"]
    human = load_embedding(human_dir)
    dnn = load_embedding(dnn_dir)
    _check_same_objects(human_dir, dnn_dir)
    n_objects = human.n_objects

    # Similarity matrices for the figure; "all" also serves every later RSA from the cache.
    cache = CachedSimilarity()
    matrices: dict[str, np.ndarray] = {}
    matrix_objects = specs.check_count(context.name, "matrix_objects", settings["matrix_objects"], allow_zero=True)
    if matrix_objects != 0:
        rows = _subset(n_objects, matrix_objects, settings["seed"])
        for side, result in (("human", human), ("dnn", dnn)):
            matrices[side] = similarity_matrix(
                result.embedding, objects=rows, device=settings["device"], dtype="float32"
            )
            if rows is None:
                cache.add(result.embedding, matrices[side])

    triplets = None
    n_relevance = specs.check_count(context.name, "relevance_triplets", settings["relevance_triplets"], allow_zero=True)
    if n_relevance != 0:
        triplets = _load_val(human_dir, n_objects)
        if not human_triplets_held_out(human_dir):
            logger.warning(
                "compare: the jackknife explains human triplets that are not held out, because the human "
                "embedding is the given inputs.human_embedding, which may have been trained on them"
            )
        if n_relevance is not None and n_relevance < len(triplets):
            triplets = triplets[:n_relevance]
        elif n_relevance is not None and n_relevance > len(triplets):
            logger.info(
                "compare.relevance_triplets = %d exceeds the %d held-out triplets: using every one",
                n_relevance, len(triplets),
            )
    similarity_objects = specs.check_count(
        context.name, "similarity_objects", settings["similarity_objects"], allow_zero=False
    )
    result = compare(
        human_dir, dnn_dir, context.out_dir, triplets=triplets, images=context.inputs.get("images"),
        n_bootstrap=settings["n_bootstrap"], random_state=settings["seed"], top_k=settings["top_k"],
        similarity_objects=similarity_objects, device=settings["device"],
        inputs={"human_val": human_dir / VAL_NAME} if triplets is not None else None, similarity=cache,
    )

    # Written after compare(), which clears the outputs of earlier comparisons
    # from its folder, these matrices included.
    for side, matrix in matrices.items():
        with atomic_path(context.out_dir / f"{side}_similarity.npy") as temporary:
            np.save(temporary, matrix.astype(np.float32))
    if matrices:
        with atomic_path(context.out_dir / "similarity_objects.npy") as temporary:
            np.save(temporary, np.arange(n_objects) if rows is None else rows)
    return {
        "rsa_r": result.rsa.r, "rsa_ci": [result.rsa.ci_low, result.rsa.ci_high],
        "n_dnn_dims_for_95_percent": result.cumulative.n_dims_for_share,
    }


def _check_same_objects(human_dir: Path, dnn_dir: Path) -> None:
    from dimalign.io.objects import OBJECT_TABLE_NAME, read_object_table

    human = read_object_table(human_dir / OBJECT_TABLE_NAME)
    dnn = read_object_table(dnn_dir / OBJECT_TABLE_NAME)
    if human.object_ids != dnn.object_ids:
        raise ValueError(
            f"{human_dir} and {dnn_dir} list different objects or another order; the study compares "
            "embeddings of the same objects (inputs.objects)"
        )


def _subset(n_objects: int, size: int | None, seed: int) -> np.ndarray | None:
    if size is not None and size >= n_objects:
        logger.info("compare.matrix_objects = %d covers all %d objects: using every object", size, n_objects)
    if size is None or size >= n_objects:
        return None
    if size < 3:
        raise ValueError(f"matrix_objects = {size} is invalid: use 0, 'all' or at least 3")
    return np.sort(np.random.default_rng(seed).choice(n_objects, size=size, replace=False))


# -- ridge map -----------------------------------------------------------------------


def check_map(settings: Mapping[str, Any], inputs: Mapping[str, Path]) -> None:
    """Check that the ridge penalties form a grid without repeats and that each fold gets objects."""
    from dimalign.io.features import load_features

    if settings["alpha_max"] < settings["alpha_min"]:
        raise ValueError(
            f"map.alpha_max = {settings['alpha_max']} is below map.alpha_min = {settings['alpha_min']}: "
            "the grid runs from alpha_min up to alpha_max"
        )
    if settings["alpha_max"] == settings["alpha_min"] and settings["n_alphas"] > 1:
        raise ValueError(
            f"map.alpha_min = map.alpha_max = {settings['alpha_min']} repeats one penalty "
            f"{settings['n_alphas']} times: set map.n_alphas = 1 for a single penalty, or raise "
            "map.alpha_max"
        )
    features = inputs.get("dnn_features")
    if features is not None and _memory_mapped(features):
        with _quiet_loading():
            n_objects = load_features(features, layer=settings["layer"] or None)[0].shape[0]
        # RidgeMap needs at least 2 held-out objects per fold, as R² of one object is undefined.
        if settings["folds"] > n_objects // 2:
            raise ValueError(
                f"map.folds = {settings['folds']} is invalid: the features have {n_objects} objects, "
                f"so use at most {n_objects // 2} folds (each held-out fold needs 2 objects)"
            )


@contextlib.contextmanager
def _quiet_loading(name: str = "dimalign.io.features") -> Iterator[None]:
    """Hide the INFO line of a loader (load_features by default) while planning reads a file."""
    feature_logger = logging.getLogger(name)
    previous = feature_logger.level
    feature_logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        feature_logger.setLevel(previous)


def _memory_mapped(features: Path) -> bool:
    """Return whether loading ``features`` reads only a .npy header (HDF5 and text are read whole)."""
    if features.is_dir():
        return not (features / "features.h5").is_file()
    return features.suffix.lower() == ".npy"


def run_map(context: StageContext) -> dict[str, Any]:
    """Fit cross-validated ridge maps from the DNN features to the target embedding's dimensions."""
    from dimalign.analysis.ridge import RidgeMap, write_ridge_table
    from dimalign.io.objects import OBJECT_TABLE_NAME, read_object_table
    from dimalign.io.runs import load_embedding

    settings = context.settings
    started = now_iso()
    run_dir = context.upstream[f"{settings['target']}_fit"]
    objects = read_object_table(run_dir / OBJECT_TABLE_NAME)
    source = features_source(context)
    features = load_aligned_features(source, objects, settings["layer"])
    embedding = load_embedding(run_dir)
    alphas = np.logspace(np.log10(settings["alpha_min"]), np.log10(settings["alpha_max"]), settings["n_alphas"])
    ridge = RidgeMap(
        alphas=alphas, cv=settings["folds"], shuffle=settings["shuffle"], random_state=settings["seed"],
        model_name=settings["model_name"] or None, layer=settings["layer"] or None,
    ).fit(np.asarray(features, dtype=np.float64), embedding.embedding)
    ridge.save(context.out_dir, inputs={"features": source, "embedding": embedding.path}, started=started)
    write_ridge_table(ridge, context.out_dir / "ridge_map.csv")
    nested = ridge.nested_cv_r2_
    return {
        "cv_r2_median": float(np.median(ridge.cv_r2_)),
        "nested_cv_r2_median": None if np.isnan(nested).any() else float(np.median(nested)),
        "n_dims": int(ridge.cv_r2_.size),
    }


# -- report --------------------------------------------------------------------------


def check_report(settings: Mapping[str, Any], inputs: Mapping[str, Path]) -> None:
    """Read the category matrix and the labels summary's tables, so that a bad one fails before the fits run."""
    from dimalign.io.objects import read_object_table
    from dimalign.report.results import check_labels_summary, read_category_matrix

    if "categories" in inputs and "objects" in inputs:
        read_category_matrix(inputs["categories"], len(read_object_table(inputs["objects"])))
    if "labels" in inputs:
        check_labels_summary(inputs["labels"], {"human": settings["labels_human"], "dnn": settings["labels_dnn"]})


def run_report(context: StageContext) -> dict[str, Any]:
    """Draw the figures and write the self-contained HTML report."""
    from dimalign.report.html import write_report
    from dimalign.report.results import StudyResults

    settings = context.settings
    study_dir = context.out_dir.parent
    results = StudyResults(
        study_dir, stage_dirs=context.upstream, categories=context.inputs.get("categories"),
        labels=context.inputs.get("labels"), images=context.inputs.get("images"),
        labels_names={"human": settings["labels_human"], "dnn": settings["labels_dnn"]},
        # Every stage the report reads has finished when it runs, although the
        # run's record gets its finish time only after the report.
        record={**context.record, "finished": context.record.get("finished") or now_iso()},
    )
    report = write_report(
        results, context.out_dir / "report.html", figures_dir=context.out_dir / "figures",
        # Planning already resolved the title by report_title.
        title=settings["title"],
        top_k=settings["top_k"], n_disagreements=settings["n_disagreements"], dpi=settings["dpi"],
    )
    write_manifest(
        context.out_dir, step="report",
        inputs={key: path for key, path in context.inputs.items()},
        settings=settings, outputs={"figures": report.figures, "skipped": report.skipped},
    )
    return {"figures": len(report.figures), "skipped_figures": len(report.skipped)}


# -- the registry ----------------------------------------------------------------------


def _none(configured: set[str], settings: dict[str, Any]) -> list[str]:
    return []


def _dnn_triplets_upstream(configured: set[str], settings: dict[str, Any]) -> list[str]:
    return ["features"] if "features" in configured else []


def _dnn_triplets_inputs(configured: set[str], settings: dict[str, Any]) -> tuple[list[str], list[str]]:
    # With a features stage the features come from its folder, not from [inputs].
    return (["objects"] if "features" in configured else ["dnn_features", "objects"]), []


def _evaluate_upstream(configured: set[str], settings: dict[str, Any]) -> list[str]:
    found = [name for name in ("human_fit", "dnn_fit") if name in configured]
    if not found:
        raise ValueError("stage evaluate needs human_fit or dnn_fit in the study file")
    return found


def _map_upstream(configured: set[str], settings: dict[str, Any]) -> list[str]:
    return [f"{settings['target']}_fit"] + (["features"] if "features" in configured else [])


def _map_inputs(configured: set[str], settings: dict[str, Any]) -> tuple[list[str], list[str]]:
    return ([], []) if "features" in configured else (["dnn_features"], [])


def _report_upstream(configured: set[str], settings: dict[str, Any]) -> list[str]:
    from dimalign.report.results import REPORT_SOURCES

    upstream = [name for name in STAGE_ORDER if name in configured and name != "report"]
    if not any(stage in upstream for stage, _ in REPORT_SOURCES):
        raise ValueError(
            "stage report needs a stage whose results it can show: add human_fit, dnn_fit or compare"
        )
    return upstream


def _fixed(required: list[str], optional: list[str] = ()):
    def inputs(configured: set[str], settings: dict[str, Any]) -> tuple[list[str], list[str]]:
        return list(required), list(optional)

    return inputs


def _after(*names: str):
    def upstream(configured: set[str], settings: dict[str, Any]) -> list[str]:
        return list(names)

    return upstream


def _table(spec: dict[str, specs.Setting]):
    def settings(raw: Mapping[str, Any]) -> dict[str, specs.Setting]:
        return spec

    return settings


STAGES: dict[str, Stage] = {
    stage.name: stage
    for stage in (
        Stage("features", "extract DNN features of the images and average them per object", run_features,
              _table(specs.FEATURES_SETTINGS), _none, _fixed(["images", "objects"]), check=check_features),
        Stage("human_fit", "fit VICE or SPoSE to the human triplets", run_human_fit,
              lambda raw: specs.fit_settings("human_fit", raw, load_triplets=True), _none,
              _fixed(["human_triplets", "objects"]), resumable=True, check=check_fit),
        Stage("dnn_triplets", "simulate odd-one-out choices from the DNN features", run_dnn_triplets,
              _table(specs.SIMULATE_SETTINGS), _dnn_triplets_upstream, _dnn_triplets_inputs,
              check=check_dnn_triplets),
        Stage("dnn_fit", "fit VICE or SPoSE to the DNN triplets", run_dnn_fit,
              lambda raw: specs.fit_settings("dnn_fit", raw, load_triplets=False), _after("dnn_triplets"),
              _fixed([]), resumable=True, check=check_fit),
        Stage("evaluate", "held-out accuracy, noise ceiling and 48-object correlation", run_evaluate,
              _table(specs.EVALUATE_SETTINGS), _evaluate_upstream, _fixed([], ["things_dir"]),
              check=check_evaluate),
        Stage("compare", "RSA, dimension matching, cumulative RSA and jackknife relevance", run_compare,
              _table(specs.COMPARE_SETTINGS), _after("human_fit", "dnn_fit"), _fixed([], ["images"]),
              check=check_compare),
        Stage("map", "ridge maps from the DNN features to embedding dimensions", run_map,
              _table(specs.MAP_SETTINGS), _map_upstream, _map_inputs, check=check_map),
        Stage("report", "figures and the self-contained HTML report", run_report,
              _table(specs.REPORT_SETTINGS), _report_upstream, _fixed([], ["categories", "labels", "images"]),
              check=check_report),
    )
}

#: Stages in the order they run.
STAGE_ORDER = tuple(STAGES)

#: The human_fit stage of a study that names inputs.human_embedding: it writes
#: the given embedding in place of a fit.
HUMAN_EMBEDDING_STAGE = Stage(
    "human_fit", "use the given human embedding (inputs.human_embedding) in place of a fit", run_human_embedding,
    _table(specs.EMBEDDING_TRIPLET_LOADING), _none, _fixed(["human_embedding", "objects"], ["human_triplets"]),
    check=check_human_embedding,
)


def stage_definition(name: str, uses_embedding: bool) -> Stage:
    """Return the definition of stage ``name``, given whether the study names inputs.human_embedding."""
    return HUMAN_EMBEDDING_STAGE if name == "human_fit" and uses_embedding else STAGES[name]


__all__ = [
    "HUMAN_EMBEDDING_STAGE", "STAGES", "STAGE_ORDER", "CachedSimilarity", "Stage", "StageContext",
    "images_per_object", "stage_definition",
]
