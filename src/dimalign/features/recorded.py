"""Image decoding settings that ``dimalign extract`` and ``dimalign map`` record, and the search for them.

An extraction records its ``background`` (colour under transparent pixels)
and ``exif_transpose`` in its ``manifest.json``, and a map copies them into
its ``features_source``. Commands that draw images for a person (``grid``,
``compare``, ``report``, ``label-app setup``) look for these settings
through the manifests of their inputs, so that a figure shows the pixels
that the DNN saw. This module does not import torch.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dimalign._warnings import warn

logger = logging.getLogger(__name__)

#: The defaults of ``dimalign extract``: white under transparent pixels, EXIF orientation applied.
DEFAULT_BACKGROUND = (255, 255, 255)

# The maximum number of manifests that one search reads. A fit of simulated triplets reaches
# its extraction in three, so the bound only stops a search through very many inputs, with a warning.
_MAX_MANIFESTS = 64


@dataclass(frozen=True)
class Decoding:
    """The decoding of image files: the colour under transparent pixels and the EXIF handling.

    Attributes:
        background (tuple[int, int, int]): RGB colour under transparent pixels.
        exif_transpose (bool): Whether the EXIF orientation tag is applied.
        source (str | None): The manifest that recorded these settings, or
            None for settings that no extraction recorded.
    """

    background: tuple[int, int, int] = DEFAULT_BACKGROUND
    exif_transpose: bool = True
    source: str | None = None

    def describe(self) -> str:
        """Return the settings as extract's options, such as ``--background 0,0,0 --no-exif-transpose``."""
        words = [f"--background {','.join(str(value) for value in self.background)}"]
        if not self.exif_transpose:
            words.append("--no-exif-transpose")
        return " ".join(words)

    def to_json(self) -> dict[str, Any]:
        """Return the settings for a manifest: ``background`` as a list and ``exif_transpose``."""
        return {"background": list(self.background), "exif_transpose": self.exif_transpose}


def add_decoding_options(parser: argparse.ArgumentParser, recorded: str) -> None:
    """Add ``--background`` and ``--no-exif-transpose``, with the meaning of ``dimalign extract``'s.

    Both default to None, so that :func:`resolve_decoding` can tell an
    explicit option from the recorded setting.

    Args:
        parser (argparse.ArgumentParser): The command's parser.
        recorded (str): Where the command finds the extraction's settings,
            for the help text (such as "the extraction behind the embedding").
    """
    parser.add_argument(
        "--background", default=None,
        help="colour under transparent pixels, as in 'dimalign extract': a name, #rrggbb or r,g,b "
        f"(default: the setting recorded by {recorded}, else white)",
    )
    parser.add_argument(
        "--no-exif-transpose", dest="exif_transpose", action="store_const", const=False, default=None,
        help="ignore the EXIF orientation tag of photos, as in 'dimalign extract' (default: the "
        f"setting recorded by {recorded}, else apply it)",
    )


def resolve_decoding(background: str | None, exif_transpose: bool | None,
                     recorded: Decoding | None) -> Decoding:
    """Combine the options of a command with the settings an extraction recorded.

    Args:
        background (str | None): ``--background``, or None when not given.
        exif_transpose (bool | None): False for ``--no-exif-transpose``, None when not given.
        recorded (Decoding | None): The recorded settings, or None when no
            extraction recorded any.

    Returns:
        Decoding: The recorded settings, changed by the options only where
        nothing was recorded.

    Raises:
        ValueError: If an option contradicts the recorded setting, naming both
            values and the manifest, or the colour is invalid.
    """
    from dimalign.features.decode import parse_color

    colour = parse_color(background) if background is not None else None
    if recorded is None:
        return Decoding(
            colour if colour is not None else DEFAULT_BACKGROUND,
            exif_transpose if exif_transpose is not None else True,
        )
    if colour is not None and colour != recorded.background:
        raise ValueError(
            f"--background {background} (RGB {','.join(map(str, colour))}) contradicts the background "
            f"{','.join(map(str, recorded.background))} that {recorded.source} records for the "
            "extraction, so the images would not show what the DNN saw; omit --background to use "
            "the recorded colour"
        )
    if exif_transpose is not None and exif_transpose != recorded.exif_transpose:
        raise ValueError(
            f"--no-exif-transpose contradicts {recorded.source}, which records that the extraction "
            "applied the EXIF orientation (exif_transpose true), so the images would not show what "
            "the DNN saw; omit --no-exif-transpose"
        )
    return recorded


def recorded_decoding(*paths: str | os.PathLike | None) -> Decoding | None:
    """Find the decoding settings of the extraction behind dimalign outputs.

    Starting from the folder of each path, the inputs listed in each
    ``manifest.json`` are followed until a ``dimalign extract`` folder or a
    ``dimalign map`` folder that copied its settings is found. A fit of
    simulated triplets leads there through the simulation's features input.
    An extraction written before the settings were recorded gets extract's
    defaults.

    Args:
        *paths (path | None): Output files or folders (None is skipped).

    Returns:
        Decoding | None: The settings with the manifest that recorded them,
        or None when no extraction is found.

    Raises:
        ValueError: If two extractions behind the paths record different
            settings, naming both manifests.
    """
    from dimalign.io.files import MANIFEST_NAME, read_manifest

    queue = deque(Path(path) for path in paths if path is not None)
    seen: set[Path] = set()
    found: list[Decoding] = []
    missing: list[tuple[Path, str]] = []
    while queue and len(seen) < _MAX_MANIFESTS:
        path = queue.popleft()
        folder = path if path.is_dir() else path.parent
        try:
            folder = folder.resolve()
        except (OSError, RuntimeError):
            # Python before 3.13 raises RuntimeError for a symbolic link loop.
            continue
        if folder in seen or not (folder / MANIFEST_NAME).is_file():
            continue
        seen.add(folder)
        manifest = read_manifest(folder)
        source = str(folder / MANIFEST_NAME)
        settings = _checked(manifest.get("settings", {}), dict, source, "settings")
        key = "settings"
        features_source = _checked(settings.get("features_source") or {}, dict, source, "settings.features_source")
        # "features" is the stage of dimalign run that extracts features from its images.
        if manifest.get("step") in ("extract", "features"):
            settings = extraction_settings(settings, None)
        elif "background" in features_source:
            # A map copies the extraction's settings into its features_source.
            settings, key = features_source, "settings.features_source"
        else:
            for input_path in _input_paths(manifest, folder, source):
                queue.append(input_path)
                if not input_path.exists():
                    missing.append((input_path, source))
            continue
        background = _recorded_colour(settings.get("background"), source, f"{key}.background")
        exif_transpose = _checked(settings.get("exif_transpose"), (bool, type(None)), source, f"{key}.exif_transpose")
        found.append(Decoding(background, exif_transpose is not False, source))
    if not found and missing:
        # A folder moved or deleted since the output was written breaks the search silently otherwise.
        gone, listed_in = missing[0]
        logger.warning(
            "no image decoding settings found behind %s: the input %s listed in %s no longer exists. "
            "The defaults of dimalign extract apply unless --background or --no-exif-transpose is given, "
            "so move the input back if its extraction used other settings",
            ", ".join(str(path) for path in paths if path is not None), gone, listed_in,
        )
    distinct = {(entry.background, entry.exif_transpose): entry for entry in found}
    if len(distinct) > 1:
        first, second = list(distinct.values())[:2]
        raise ValueError(
            f"the inputs come from extractions with different image decoding: {first.source} records "
            f"{first.describe()} and {second.source} records {second.describe()}; use inputs of one extraction"
        )
    if not found and queue and len(seen) >= _MAX_MANIFESTS:
        named = ", ".join(str(path) for path in paths if path is not None)
        warn(
            f"stopped looking for the extraction behind {named} after {_MAX_MANIFESTS} manifests, so images "
            "are decoded with extract's defaults (white background, EXIF orientation applied): pass "
            "--background and --no-exif-transpose as the extraction used them"
        )
    return found[0] if found else None


#: Settings of a ``module:function`` network: the path and SHA-256 of its module file.
MODULE_KEYS = ("model_module_file", "model_module_sha256")


def extraction_settings(settings: dict[str, Any], layer: str | None) -> dict[str, Any]:
    """Return the model, weights and their checksum, seed, layer, pooling and decoding of an extracted layer.

    For a ``module:function`` network, also the :data:`MODULE_KEYS` that the extraction recorded.

    A single-layer extraction records ``layer`` and ``pooling``. One of
    several layers records the lists ``layers`` and ``pools``, from which the
    pooling of ``layer`` is taken.
    """
    layers = list(settings.get("layers") or [])
    pools = list(settings.get("pools") or [])
    layer = layer or settings.get("layer") or (layers[0] if len(layers) == 1 else None)
    pooling = settings.get("pooling")
    if layer in layers and len(pools) == len(layers):
        pooling = pools[layers.index(layer)]
    extracted = {
        "model": settings.get("model"), "weights": settings.get("weights"), "seed": settings.get("seed"),
        "weights_sha256": settings.get("weights_sha256"), "layer": layer, "pooling": pooling,
        "background": settings.get("background"), "exif_transpose": settings.get("exif_transpose"),
    }
    # Only a module:function network records its module file, which later commands check.
    for key in MODULE_KEYS:
        if settings.get(key) is not None:
            extracted[key] = settings[key]
    return extracted


def _input_entries(manifest: dict[str, Any], folder: Path, source: str) -> list[tuple[Any, Path]]:
    """Return the data inputs of the manifest ``source`` in ``folder`` as (entry, path) pairs.

    A relative path is read from ``folder``. The object table (``objects``) is
    left out: it names rows only, and it may lie in the folder of another
    step, such as an extraction of other features.

    Raises:
        ValueError: If ``inputs`` is not a JSON object or an entry has no path.
    """
    entries = []
    for name, entry in _checked(manifest.get("inputs", {}), dict, source, "inputs").items():
        if name == "objects":
            continue
        path = entry.get("path") if isinstance(entry, dict) else entry
        if not isinstance(path, str) or not path:
            raise _damaged(source, f"inputs.{name}", entry)
        entries.append((entry, folder / path))
    return entries


def _input_paths(manifest: dict[str, Any], folder: Path, source: str) -> list[Path]:
    """Return the paths of a manifest's data inputs (see :func:`_input_entries`)."""
    return [path for _, path in _input_entries(manifest, folder, source)]


def _recorded_colour(value: Any, source: str, key: str) -> tuple[int, int, int]:
    """Parse a recorded background: a list of three integers or a colour string, white when absent."""
    from dimalign.features.decode import parse_color

    if value is None or value == "":
        return DEFAULT_BACKGROUND
    integers = isinstance(value, list) and all(isinstance(item, int) and not isinstance(item, bool) for item in value)
    if not (isinstance(value, str) or integers):
        raise _damaged(source, key, value)
    try:
        return parse_color(value)
    except ValueError:
        raise _damaged(source, key, value) from None


def _checked(value: Any, kind: type | tuple[type, ...], source: str, key: str) -> Any:
    """Return ``value`` if it is of ``kind``, else raise the error of a damaged manifest."""
    if not isinstance(value, kind):
        raise _damaged(source, key, value)
    return value


def _damaged(source: str, key: str, value: Any) -> ValueError:
    shown = json.dumps(value, default=str)
    shown = shown if len(shown) <= 60 else shown[:57] + "..."
    return ValueError(f"{source}: {key} = {shown} is invalid; rerun the step that wrote it")


def _extraction_sources(map_dir: str | os.PathLike, manifest: dict[str, Any]) -> list[dict[str, Any]]:
    """Return the model settings of the ``dimalign extract`` folders among a map's inputs.

    Raises:
        ValueError: If such a folder's features no longer have the SHA-256
            that the map recorded.
    """
    from dimalign.io.files import MANIFEST_NAME, read_manifest, sha256_file

    layer = manifest.get("settings", {}).get("layer")
    sources = []
    for entry, path in _input_entries(manifest, Path(map_dir), str(Path(map_dir) / MANIFEST_NAME)):
        folder = path if path.is_dir() else path.parent
        if not (folder / MANIFEST_NAME).is_file() or folder == Path(map_dir):
            continue
        upstream = read_manifest(folder)
        if upstream.get("step") != "extract":
            continue
        recorded = entry.get("sha256") if isinstance(entry, dict) else None
        if recorded and path.is_file() and sha256_file(path) != recorded:
            raise ValueError(
                f"the features {path} changed since the map {map_dir} was fitted on them "
                f"(sha256 {recorded} then, another now), so the model settings in "
                f"{folder / MANIFEST_NAME} may not be those of the map; rerun 'dimalign map'"
            )
        sources.append(extraction_settings(upstream.get("settings", {}), layer))
    return sources


def same_model_name(first: str, second: str) -> bool:
    """Return whether two model names name one network, such as ``resnet18`` and ``torchvision:resnet18``.

    Args:
        first (str): A model name as :func:`dimalign.features.load_model` takes it.
        second (str): Another one.

    Returns:
        bool: True when both give the same library and bare model name.
    """
    if first == second:
        return True
    # The import loads torch, so it waits until the names differ.
    from dimalign.features.models import split_model_name

    try:
        return split_model_name(first) == split_model_name(second)
    except ValueError:
        return False


def map_settings(map_dir: str | os.PathLike) -> dict[str, Any]:
    """Find the model, weights, seed, layer and pooling behind a ridge map.

    ``dimalign map`` records them in its ``manifest.json`` (``features_source``,
    with ``model_name`` and ``layer``). A map written without them, from
    features of no ``dimalign extract`` folder or by an older version, falls
    back to the manifest of the feature folder that the map lists among its
    inputs. That folder must still hold the features the map was fitted on
    (same SHA-256), since it may have been extracted again with other weights.

    Args:
        map_dir (str | os.PathLike): The output folder of ``dimalign map``.

    Returns:
        dict: Keys ``model``, ``weights``, ``weights_sha256``, ``seed``,
        ``layer``, ``pooling``, ``background`` and ``exif_transpose``
        (``weights_sha256`` is None where no checksum was recorded,
        ``pooling`` defaults to ``flatten``, ``seed`` to 0, ``background``
        to white and ``exif_transpose`` to True), and for a
        ``module:function`` network also ``model_module_file`` and
        ``model_module_sha256``.

    Raises:
        FileNotFoundError: If the map has no manifest.
        ValueError: If no manifest names the layer, the map records no
            weights and no extract folder of its features, or the features
            behind a fallback changed since the map was fitted.
    """
    from dimalign.io.files import MANIFEST_NAME, read_manifest

    manifest = read_manifest(map_dir)
    source = str(Path(map_dir) / MANIFEST_NAME)
    own = _checked(manifest.get("settings", {}), dict, source, "settings")
    _checked(own.get("features_source") or {}, dict, source, "settings.features_source")
    _checked(manifest.get("inputs", {}), dict, source, "inputs")
    sources = [own]
    if own.get("features_source"):
        sources.append(own["features_source"])
    else:
        extracted = _extraction_sources(map_dir, manifest)
        if not extracted:
            missing = [path for path in _input_paths(manifest, Path(map_dir), source) if not path.exists()]
            if missing:
                raise ValueError(
                    f"{Path(map_dir) / MANIFEST_NAME} records no features_source, and its features "
                    f"input {missing[0]} no longer exists, so the model behind the map is unknown; "
                    "move the feature folder back or rerun 'dimalign map'"
                )
            # Guessing would be silent and wrong: torchvision's default is
            # random weights, so the predictor would explain another network.
            raise ValueError(
                f"{Path(map_dir) / MANIFEST_NAME} records neither the weights of the model behind its "
                "features (features_source) nor a dimalign extract folder of them; save the map "
                "with RidgeMap.save(..., features_source={'model': ..., 'weights': ..., "
                "'seed': ..., 'layer': ..., 'pooling': ...}) or rerun 'dimalign map' on a "
                "folder written by 'dimalign extract'"
            )
        sources += extracted

    named_model = own.get("model_name")
    features_model = next((entry.get("model") for entry in sources[1:] if entry.get("model")), None)
    if named_model and features_model and not same_model_name(named_model, features_model):
        # The predictor would load the named network and explain features it never produced.
        raise ValueError(
            f"{Path(map_dir) / MANIFEST_NAME} names the model {named_model}, but its features come from the "
            f"model {features_model}, so gradcam, maximize and manipulate would explain another network; "
            "rerun dimalign map without --model-name (in a study config: model_name), or with the model "
            "of the features"
        )

    def first(*keys: str) -> Any:
        for source in sources:
            for key in keys:
                if source.get(key) not in (None, ""):
                    return source[key]
        return None

    layer = first("layer")
    if not layer:
        raise ValueError(
            f"neither {Path(map_dir) / MANIFEST_NAME} nor its features input names the feature "
            "layer; rerun `dimalign map` on a features folder written by `dimalign extract`"
        )
    seed = first("seed")
    background, exif_transpose = first("background"), first("exif_transpose")
    if own.get("features_source") and "background" not in own["features_source"]:
        # Maps written before features_source recorded the decoding: the
        # extraction among the map's inputs records it, as recorded_decoding
        # finds it for the grid and the report.
        decoding = recorded_decoding(map_dir) or Decoding()
        background, exif_transpose = decoding.background, decoding.exif_transpose
    settings = {
        "model": first("model", "model_name"),
        "weights": first("weights"),
        "weights_sha256": first("weights_sha256"),
        "seed": 0 if seed is None else int(seed),
        "layer": layer,
        "pooling": first("pooling", "pool") or "flatten",
        # Without a recorded setting, the defaults of dimalign extract.
        "background": tuple(background or DEFAULT_BACKGROUND),
        "exif_transpose": exif_transpose is not False,
    }
    for key in MODULE_KEYS:
        if first(key) is not None:
            settings[key] = first(key)
    return settings
