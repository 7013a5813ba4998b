"""``dimalign gradcam``, ``maximize``, ``manipulate`` and ``grid``: pictures that explain dimensions.

The first three build the image -> DNN -> ridge map -> dimension predictor
from the output folder of ``dimalign map``; ``grid`` needs only an
embedding and the images of its objects. Each command writes PNG images, a
CSV table and ``manifest.json`` into its output folder. Dimensions are
0-based column indices of the embedding.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import sys
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from dimalign.cli import add_examples, declare_output_folder, print_written
from dimalign.features.recorded import add_decoding_options, recorded_decoding, resolve_decoding
from dimalign.io.files import count_of

logger = logging.getLogger(__name__)

# Upper limits of image sizes and counts, so that a typing error is an error
# instead of an allocation of many gigabytes: one float32 RGB image of side
# 4096 takes 200 MB, and maximize keeps n_init of them with their gradients.
MAX_IMAGE_SIDE = 4096
MAX_N_INIT = 1024


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``gradcam``, ``maximize``, ``manipulate`` and ``grid`` subcommands."""
    _register_gradcam(subparsers)
    _register_maximize(subparsers)
    _register_manipulate(subparsers)
    _register_grid(subparsers)


# An earlier run's pictures of other images or dimensions would stay beside the new ones.
_OUT_HELP = "output folder: a new one, or one without an earlier run of this command"


def _add_map_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--map", type=Path, required=True, dest="map_dir",
        help="output folder of 'dimalign map' (ridge_map.npz and manifest.json)",
    )
    parser.add_argument("-o", "--out", type=Path, required=True, help=_OUT_HELP)
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda or auto")
    parser.add_argument(
        "--weights", type=Path,
        help="weights file to load in place of the one the map's extraction names, such as that file "
        "moved elsewhere; its SHA-256 must match the recorded one",
    )


def _register_gradcam(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "gradcam",
        help="Grad-CAM heat maps of embedding dimensions on images",
        description=(
            "Show where in each image the evidence for a dimension lies: Grad-CAM of the "
            "predicted dimension at a convolutional layer, as a heat map PNG and an overlay "
            "PNG per image and dimension."
        ),
    )
    parser.add_argument("images", nargs="+", type=Path, help="image files or folders of images")
    _add_map_options(parser)
    parser.add_argument("--dim", type=int, nargs="+", required=True, help="0-based dimension indices")
    parser.add_argument(
        "--layer",
        help="layer of the model for Grad-CAM, with output (batch, channels, height, width) "
        "(default: the last such layer before the map's feature layer)",
    )
    parser.add_argument("--alpha", type=float, default=0.5, help="heat map weight in the overlay (default 0.5)")
    add_decoding_options(parser, "the map's extraction")
    parser.set_defaults(handler=run_gradcam)
    add_examples(parser, "dimalign gradcam photos/parrot.jpg --map map/ --dim 0 3 -o gradcam/")
    declare_output_folder(parser, "gradcam")


def _register_maximize(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "maximize",
        help="generate images that maximise embedding dimensions",
        description=(
            "Optimise a generator's latent code so that the generated images drive a "
            "dimension up (loss = -alpha * y_j - beta * log_softmax(relu(y))_j + tv_weight * TV). "
            "Writes the images and the dimension's value before and after."
        ),
    )
    _add_map_options(parser)
    parser.add_argument("--dim", type=int, nargs="+", required=True, help="0-based dimension indices")
    parser.add_argument(
        "--generator",
        help="module:function returning a torch module that maps latents (B, latent_dim) to "
        "images (B, 3, H, W) in [0, 1] (default: the built-in Fourier generator)",
    )
    parser.add_argument("--steps", type=int, default=50, help="Adam steps (default 50)")
    parser.add_argument("--n-init", type=int, default=16, help="random starting latents (default 16)")
    parser.add_argument("--n-images", type=int, default=4, help="images per dimension (default 4)")
    parser.add_argument("--alpha", type=float, default=1.0, help="weight of the dimension's value (default 1)")
    parser.add_argument("--beta", type=float, default=1.0, help="weight of its log-softmax over the ReLU of all dimensions (default 1)")
    parser.add_argument("--tv-weight", type=float, default=0.1, help="weight of total variation (default 0.1)")
    parser.add_argument("--lr", type=float, default=0.05, help="Adam learning rate (default 0.05)")
    parser.add_argument("--image-size", type=int, help="side of the built-in generator's images in pixels (default: the model's input size)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.set_defaults(handler=run_maximize)
    add_examples(parser, "dimalign maximize --map map/ --dim 0 -o maximize/")
    declare_output_folder(parser, "maximize")


def _register_manipulate(subparsers: argparse._SubParsersAction) -> None:
    from dimalign.interpret.edits import DEFAULT_EDITS, EDIT_SPECS

    kinds = ", ".join(
        f"{name}" + ("" if spec.default is None else f":X ({spec.help}, default {spec.default:g})")
        for name, spec in EDIT_SPECS.items()
    )
    parser = subparsers.add_parser(
        "manipulate",
        help="predicted change of every dimension under controlled image edits",
        description=(
            "Apply controlled edits to images and record the predicted value of every "
            "dimension before and after, with the edited images and a figure of the largest "
            f"changes. Edits: {kinds}."
        ),
    )
    parser.add_argument("images", nargs="+", type=Path, help="image files or folders of images")
    _add_map_options(parser)
    parser.add_argument(
        "--edits", nargs="+", default=list(DEFAULT_EDITS),
        help=f"edits as NAME or NAME:VALUE (default: {' '.join(DEFAULT_EDITS)})",
    )
    parser.add_argument(
        "--masks", type=Path,
        help="folder of foreground masks named like the images (STEM.png, white = object); "
        "images without one get an estimated mask",
    )
    parser.add_argument("--figure-rows", type=int, default=6, help="edits shown in the figure (default 6)")
    add_decoding_options(parser, "the map's extraction")
    parser.set_defaults(handler=run_manipulate)
    add_examples(parser, "dimalign manipulate photos/ --map map/ -o manipulate/")
    declare_output_folder(parser, "manipulate")


def _register_grid(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "grid",
        help="image grids of the objects each dimension weights most",
        description=(
            "Draw one image grid per dimension: the top-k objects by weight (layout top) or "
            "the 5 x 6 labelling layout of top and percentile rows (layout percentile)."
        ),
    )
    parser.add_argument("embedding", type=Path, help="run folder of 'dimalign fit' or an embedding file")
    parser.add_argument(
        "--objects", type=Path,
        help="object table (objects.tsv) naming each row's image in its source column "
        "(default: objects.tsv in the run folder)",
    )
    parser.add_argument(
        "--images", type=Path, default=Path("."),
        help="folder that the sources are relative to (default: the current folder)",
    )
    parser.add_argument("-o", "--out", type=Path, required=True, help=_OUT_HELP)
    parser.add_argument("--top-k", type=int, default=12, help="objects in the top layout (default 12)")
    parser.add_argument("--layout", choices=("top", "percentile"), default="top", help="grid layout (default top)")
    parser.add_argument("--dims", type=int, nargs="+", help="0-based dimensions to draw (default: all)")
    parser.add_argument("--cell-size", type=int, default=128, help="side of each picture in pixels (default 128)")
    add_decoding_options(parser, "the extraction behind the embedding")
    parser.set_defaults(handler=run_grid)
    add_examples(parser, "dimalign grid run/ -o grids/ --layout percentile")
    declare_output_folder(parser, "grid")


# -- shared helpers ------------------------------------------------------------


def collect_images(sources: Sequence[Path]) -> list[Path]:
    """Expand folders into their image files (recursively, in the extractor's order).

    Raises:
        FileNotFoundError: If a path does not exist or a folder contains no image.
        ValueError: If an image is given twice, directly or through a folder,
            which would repeat its rows and pictures.
    """
    from dimalign.features.datasets import find_images

    paths: list[Path] = []
    for source in sources:
        if source.is_dir():
            paths += [Path(path) for path in find_images(source).paths]
        elif source.is_file():
            paths.append(source)
        else:
            raise FileNotFoundError(f"image {source} not found")
    seen: dict[Path, Path] = {}
    for path in paths:
        # Only the folder is resolved: two linked files with their own names
        # are two images, as in dimalign extract, while one file reached
        # through two spellings or a linked folder is the same image.
        location = path.absolute().parent.resolve() / path.name
        if location in seen:
            raise ValueError(
                f"image {path} is given twice (also as {seen[location]}); list each image or folder once"
            )
        seen[location] = path
    return paths


def unique_names(paths: Sequence[Path]) -> list[str]:
    """Name each image by its file stem, adding ``-2``, ``-3`` ... where names repeat.

    The names become output file names, so no two may be equal, also when
    compared case-insensitively as on macOS and Windows file systems. A
    suffixed name such as ``a-2`` can equal the stem of another image, so
    the suffix grows until the name is free.
    """
    names: list[str] = []
    used_names: set[str] = set()
    for path in paths:
        stem = "".join(character if character.isalnum() or character in "-_." else "_" for character in path.stem)
        name, number = stem, 1
        while name.casefold() in used_names:
            number += 1
            name = f"{stem}-{number}"
        used_names.add(name.casefold())
        names.append(name)
    return names


def save_png(image: Any, path: Path) -> Path:
    """Write a PIL image, an ``(H, W, 3)`` uint8 array or a ``(3, H, W)`` tensor in [0, 1] as PNG, atomically.

    Raises:
        FileExistsError: If ``path`` exists, which inside the hidden folder
            of a run means that the run named two outputs alike.
    """
    import numpy as np
    import torch
    from PIL import Image

    from dimalign.io.files import atomic_path

    if isinstance(image, torch.Tensor):
        array = image.detach().float().cpu().clamp(0, 1).permute(1, 2, 0).numpy()
        image = np.round(array * 255.0).astype(np.uint8)
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    with atomic_path(path, overwrite=False) as temporary:
        image.save(temporary, format="PNG")
    return path


def save_csv(table: Any, path: Path) -> Path:
    """Write a pandas table as CSV, atomically, raising ``FileExistsError`` if ``path`` exists."""
    from dimalign.io.files import atomic_path

    with atomic_path(path, overwrite=False) as temporary:
        table.to_csv(temporary, index=False)
    return path


def _map_inputs(map_dir: Path, files: dict[str, Path] | None = None) -> dict[str, Path]:
    """Return the manifest inputs: the ridge map and ``files`` (name -> path), recorded with SHA-256."""
    from dimalign.analysis.ridge import RIDGE_MAP_NAME

    return {"ridge_map": map_dir / RIDGE_MAP_NAME, **(files or {})}


# -- handlers --------------------------------------------------------------------


def _check_output_folder(out_dir: Path, step: str, fixed_names: Sequence[str]) -> None:
    """Run the checks of the output folder that need no input, and report leftover hidden folders.

    Each command writes into a hidden folder inside ``out_dir`` and moves the
    files into ``out_dir`` at the end (:func:`dimalign.io.files.staged_outputs`).
    """
    from dimalign.io.files import check_output_dir, check_writable, report_leftover_stages

    check_output_dir(out_dir, step)
    check_writable(out_dir)
    report_leftover_stages(out_dir)
    _check_no_earlier_run(out_dir, step, fixed_names)


@contextlib.contextmanager
def _staged_output_folder(out_dir: Path) -> Iterator[Path]:
    """Yield the hidden folder that a command writes into, and move its files into ``out_dir`` after.

    ``out_dir`` is created when missing. If the block raises, the files of
    this run are removed, and so is ``out_dir`` if this run created it and
    no other program has written into it meanwhile. A file at the name of an
    output is not replaced (see :func:`dimalign.io.files.staged_outputs`).
    """
    from dimalign.io.files import staged_outputs

    with staged_outputs(out_dir, overwrite=False) as stage:
        yield stage


def _check_no_earlier_run(out_dir: Path, step: str, fixed_names: Sequence[str]) -> None:
    """Reject a folder with an earlier run of ``step``, or with a file named like one of its outputs.

    An earlier run's pictures for other images or dimensions would stay beside
    the new ones. ``fixed_names`` are the outputs named the same in every run,
    such as the table. They are checked here, before any input is read. Each
    handler checks the names of its pictures before the work starts, once the
    images and dimensions are read.
    """
    if (out_dir / "manifest.json").is_file():
        raise FileExistsError(
            f"{out_dir} contains the output of an earlier dimalign {step} run, whose files for other "
            "images or dimensions would stay beside the new ones; choose a new output folder, or "
            "delete this one first"
        )
    from dimalign.io.files import check_unowned_files

    # Without a manifest, the folder contains no earlier output of this step.
    check_unowned_files(out_dir, fixed_names, step)


def _check_output_outside_inputs(out_dir: Path, inputs: Sequence[Path], step: str) -> None:
    """Reject an output folder that overlaps the input images or masks.

    Output files such as ``NAME_input.png`` could replace an input of that
    name, and the next run over the input folder would read the pictures of
    this run as photos. For an image file, the folder that contains it
    counts as an input folder, because ``dimalign extract`` of that folder
    searches its subfolders too.

    Raises:
        ValueError: Naming the output folder and the input.
    """
    out = out_dir.resolve()
    image_folders: dict[Path, Path] = {}
    for source in inputs:
        locations = {source.resolve()}
        if source.is_symlink():
            # A link to a photo is an input both where the link lies and where its target lies.
            locations.add(source.absolute().parent.resolve() / source.name)
        inside_input = source.is_dir() and any(out == place or place in out.parents for place in locations)
        if inside_input or any(out in place.parents for place in locations):
            raise ValueError(
                f"the output folder {out_dir} overlaps the input {source}, so dimalign {step} could "
                "replace inputs with its pictures; choose an output folder outside the inputs"
            )
        if source.is_file():
            for place in locations:
                image_folders.setdefault(place.parent, source)
    for folder, source in sorted(image_folders.items()):
        if out == folder or folder in out.parents:
            raise ValueError(
                f"the output folder {out_dir} lies inside {folder}, the folder of the input image {source}, "
                f"so a later dimalign extract or {step} of that folder would read its pictures as images; "
                f"choose an output folder outside {folder}"
            )


#: The maximum length in bytes of a file name on common file systems (ext4, APFS, NTFS).
MAX_FILE_NAME_BYTES = 255


def _check_file_name_lengths(
    paths: Sequence[Path], names: Sequence[str], files_of: Callable[[str], list[str]]
) -> None:
    """Reject an image whose output files would have names longer than :data:`MAX_FILE_NAME_BYTES`.

    Args:
        paths (Sequence[Path]): The images.
        names (Sequence[str]): Their unique names (see :func:`unique_names`).
        files_of (Callable[[str], list[str]]): The names of the files written for the image of a name.

    Raises:
        ValueError: Naming the longest such file, its image and the length to rename the image to.
    """
    for path, name in zip(paths, names):
        longest = max(files_of(name), key=lambda file: len(file.encode("utf-8")))
        length = len(longest.encode("utf-8"))
        if length > MAX_FILE_NAME_BYTES:
            suffix = length - len(name.encode("utf-8"))
            raise ValueError(
                f"the output file {longest} for the image {path} would have a name of {length} bytes, "
                f"more than the {MAX_FILE_NAME_BYTES} that file systems allow; rename the image to at "
                f"most {MAX_FILE_NAME_BYTES - suffix} bytes before its suffix"
            )


def _check_options(args: argparse.Namespace, rules: dict[str, tuple[float, float]]) -> None:
    """Reject option values outside ``[low, high]`` (NaN included), naming the option."""
    for name, (low, high) in rules.items():
        value = getattr(args, name)
        if value is None:
            continue
        if isinstance(value, int):
            # math.isfinite converts an int to float and overflows above about 1e308, and torch
            # and Pillow take counts and sizes as C integers, so sys.maxsize bounds every count.
            high = min(high, sys.maxsize)
            valid = low <= value <= high
        else:
            valid = math.isfinite(value) and low <= value <= high
        if not valid:
            raise ValueError(
                f"--{name.replace('_', '-')} {value} is invalid: use a number in [{low:g}, {high:g}]"
            )


def _distinct(values: list, option: str) -> list:
    """Reject a value given twice, which would repeat rows and files."""
    repeated = sorted({value for value in values if values.count(value) > 1}, key=str)
    if repeated:
        raise ValueError(f"{option} lists {', '.join(map(str, repeated))} more than once: give each once")
    return values


def run_gradcam(args: argparse.Namespace) -> int:
    """Handle ``dimalign gradcam``."""
    import pandas as pd
    import torch

    from dimalign.interpret.gradcam import (
        check_dimension,
        colorize,
        default_gradcam_layer,
        dimension_gradcam,
        overlay,
        plot_gradcam,
    )
    from dimalign.interpret.predictor import DimensionPredictor
    from dimalign.io.files import check_unowned_files, now_iso, write_manifest

    started = now_iso()
    _check_output_folder(args.out, "gradcam", ["gradcam.csv"])
    _check_output_outside_inputs(args.out, args.images, "gradcam")
    _check_options(args, {"alpha": (0.0, 1.0)})
    _distinct(args.dim, "--dim")
    paths = collect_images(args.images)
    # Links found inside the folders point to images whose folders are inputs too.
    _check_output_outside_inputs(args.out, paths, "gradcam")
    names = unique_names(paths)
    predictor = DimensionPredictor.from_map_dir(args.map_dir, device=args.device, weights=args.weights)
    _apply_decoding_options(predictor, args)
    dims = [check_dimension(dim, predictor.n_dims) for dim in args.dim]
    pictures = [f"{name}_input.png" for name in names] + [_gradcam_figure_file(name) for name in names]
    for name in names:
        pictures += [_gradcam_file(name, dim, kind) for dim in dims for kind in ("heatmap", "overlay")]
    _check_file_name_lengths(paths, names, lambda name: [
        f"{name}_input.png", _gradcam_figure_file(name),
        *(_gradcam_file(name, dim, kind) for dim in dims for kind in ("heatmap", "overlay")),
    ])
    check_unowned_files(args.out, pictures, "gradcam")
    # Decoding every image once before the Grad-CAM work stops at a damaged file early. The
    # images are then decoded again one at a time, because all 26,107 THINGS photos as float
    # tensors take 16 GB (224 x 224 x 3 x 4 bytes = 0.6 MB each).
    for path in paths:
        predictor.preprocessing.load(path)
    first_image = predictor.preprocessing.load(paths[0])
    layer = args.layer if args.layer is not None else default_gradcam_layer(predictor, first_image)
    del first_image
    logger.info("Grad-CAM at layer %s for %d images and dimensions %s", layer, len(paths), dims)

    rows = []
    with _staged_output_folder(args.out) as stage:
        for path, name in zip(paths, names):
            image = predictor.preprocessing.load(path)
            save_png(image, stage / f"{name}_input.png")
            with torch.no_grad():
                prediction = predictor(image).double().cpu().numpy()
            figure_file = _gradcam_figure_file(name)
            maps = {}
            for dim in dims:
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    cam = dimension_gradcam(predictor, image, dim, layer)
                for warning in caught:
                    # The library cannot name the file, so the log line does.
                    logger.warning("%s: %s", path, warning.message)
                heatmap_file = save_png(colorize(cam), stage / _gradcam_file(name, dim, "heatmap"))
                overlay_file = save_png(
                    overlay(image, cam, alpha=args.alpha), stage / _gradcam_file(name, dim, "overlay")
                )
                maps[dim] = cam
                rows.append({
                    "image": str(path), "dimension": dim, "predicted": prediction[dim],
                    "heatmap": heatmap_file.name, "overlay": overlay_file.name, "figure": figure_file,
                })
            figure = plot_gradcam(
                image, maps, {dim: float(prediction[dim]) for dim in dims},
                layer=layer, title=path.name, alpha=args.alpha,
            )
            save_png(figure, stage / figure_file)
        save_csv(pd.DataFrame(rows), stage / "gradcam.csv")
        write_manifest(
            stage, step="gradcam",
            inputs=_map_inputs(args.map_dir, {f"image {name}": path for name, path in zip(names, paths)}),
            settings={"map": args.map_dir, "weights": args.weights,
                      "images": [str(path) for path in paths], "dims": dims, "layer": layer,
                      "alpha": args.alpha, "device": args.device,
                      **_decoding_settings(predictor)},
            started=started, outputs={"n_maps": len(rows), "table": "gradcam.csv"},
        )
    logger.info("wrote %d Grad-CAM maps to %s", len(rows), args.out)
    print_written(args.out, f"{count_of(len(rows), 'Grad-CAM map')} for {count_of(len(paths), 'image')}")
    return 0


def _gradcam_figure_file(name: str) -> str:
    """Return the name of the figure of image ``name`` with the overlays of every dimension."""
    return f"{name}_gradcam.png"


def _gradcam_file(name: str, dim: int, kind: str) -> str:
    """Return the name of the ``kind`` (heatmap or overlay) picture of image ``name`` and dimension ``dim``."""
    return f"{name}_dim{dim}_{kind}.png"


def value_change_caption(before: float, after: float) -> str:
    """Return the caption of a maximised image: the dimension's value before and after, and the change.

    Four significant digits and the change itself keep a small gain visible,
    which two decimals would round away (0.1013 -> 0.1025 read as 0.10 -> 0.10).
    """
    return f"{before:.4g} -> {after:.4g} ({after - before:+.2g})"


def run_maximize(args: argparse.Namespace) -> int:
    """Handle ``dimalign maximize``."""
    import pandas as pd

    from dimalign.interpret.generators import load_generator
    from dimalign.interpret.grid_images import GridCell, compose_grid
    from dimalign.interpret.gradcam import check_dimension
    from dimalign.interpret.maximize import maximize_dimension
    from dimalign.interpret.predictor import DimensionPredictor
    from dimalign.io.files import check_unowned_files, now_iso, write_manifest

    started = now_iso()
    _check_output_folder(args.out, "maximize", ["maximize.csv"])
    _check_options(args, {
        "alpha": (0.0, math.inf), "beta": (0.0, math.inf), "tv_weight": (0.0, math.inf),
        "lr": (1e-12, math.inf), "image_size": (2, MAX_IMAGE_SIDE), "steps": (0, math.inf),
        "n_init": (1, MAX_N_INIT), "n_images": (1, args.n_init),
    })
    # torch.Generator.manual_seed (torch 2.14) raises a bare overflow error from 2**64 on, and
    # maximize_dimension rejects a negative seed, but only after the map has loaded.
    if not 0 <= args.seed < 2**64:
        raise ValueError(f"--seed {args.seed} is invalid: use an integer from 0 to 2**64 - 1")
    if args.generator and args.image_size is not None:
        raise ValueError(
            f"--image-size {args.image_size} sets the size of the built-in generator's images, but "
            f"--generator {args.generator} sets its own size; leave --image-size out"
        )
    _distinct(args.dim, "--dim")
    predictor = DimensionPredictor.from_map_dir(args.map_dir, device=args.device, weights=args.weights)
    dims = [check_dimension(dim, predictor.n_dims) for dim in args.dim]
    check_unowned_files(args.out, [
        *(f"dim{dim}_image{index}.png" for dim in dims for index in range(args.n_images)),
        *(f"dim{dim}_images.png" for dim in dims),
    ], "maximize")

    rows = []
    with _staged_output_folder(args.out) as stage:
        for dim in dims:
            generator = load_generator(args.generator) if args.generator else None
            result = maximize_dimension(
                predictor, dim, generator=generator, steps=args.steps, n_init=args.n_init,
                n_images=args.n_images, alpha=args.alpha, beta=args.beta, tv_weight=args.tv_weight,
                learning_rate=args.lr, image_size=args.image_size, random_state=args.seed,
            )
            cells = []
            for index, image in enumerate(result.images):
                file = save_png(image, stage / f"dim{dim}_image{index}.png")
                before, after = float(result.before[index]), float(result.after[index])
                rows.append({"dimension": dim, "image": index, "file": file.name,
                             "before": before, "after": after, "change": after - before})
                cells.append(GridCell(_tensor_to_pil(image), value_change_caption(before, after)))
            strip = compose_grid(
                cells, len(cells), title=f"dimension {dim}: maximised images (value before -> after, change)",
                cell_size=max(result.images.shape[-2:]),
            )
            save_png(strip, stage / f"dim{dim}_images.png")
        save_csv(pd.DataFrame(rows), stage / "maximize.csv")
        write_manifest(
            stage, step="maximize", inputs=_map_inputs(args.map_dir),
            settings={"map": args.map_dir, "weights": args.weights, "dims": dims,
                      "generator": args.generator or "builtin:fourier",
                      "steps": args.steps, "n_init": args.n_init, "n_images": args.n_images,
                      "alpha": args.alpha, "beta": args.beta, "tv_weight": args.tv_weight,
                      "lr": args.lr, "image_size": args.image_size, "seed": args.seed, "device": args.device},
            started=started,
            outputs={"n_images": len(rows), "table": "maximize.csv",
                     "n_increased": sum(row["change"] > 0 for row in rows)},
        )
    logger.info("wrote %d images for %d dimensions to %s", len(rows), len(dims), args.out)
    print_written(args.out, f"{count_of(len(rows), 'image')} for {count_of(len(dims), 'dimension')}")
    return 0


def _apply_decoding_options(predictor: Any, args: argparse.Namespace) -> None:
    """Check ``--background`` and ``--no-exif-transpose`` against the map's extraction, or apply them without one.

    ``from_map_dir`` already decodes as the extraction recorded, and with
    extract's defaults for a map whose extraction recorded nothing. Only then
    do the options change the decoding.

    Raises:
        ValueError: If an option contradicts the recorded setting.
    """
    from dataclasses import replace

    if args.background is None and args.exif_transpose is None:
        return
    decoding = resolve_decoding(args.background, args.exif_transpose, recorded_decoding(args.map_dir))
    predictor.preprocessing = replace(
        predictor.preprocessing, background=decoding.background, exif_transpose=decoding.exif_transpose
    )


def _decoding_settings(predictor: Any) -> dict[str, Any]:
    """Return the image decoding that the predictor used, for the manifest: ``background`` and ``exif_transpose``."""
    preprocessing = predictor.preprocessing
    return {"background": list(preprocessing.background), "exif_transpose": preprocessing.exif_transpose}


def _tensor_to_pil(image: Any) -> Any:
    import numpy as np
    from PIL import Image

    array = image.detach().float().cpu().clamp(0, 1).permute(1, 2, 0).numpy()
    return Image.fromarray(np.round(array * 255.0).astype(np.uint8))


def _read_mask(path: Path, photo: Path, preprocessing: Any) -> Any:
    """Read a mask image of the photo's size and bring it through the same PIL steps as the photo.

    A mask with transparency whose alpha varies (a cut-out object) is its
    alpha channel. Any other mask is its brightness, white on the object.

    Raises:
        ValueError: If the mask cannot be decoded, holds only the values 0
            and 1, or its size (after EXIF orientation) differs from the photo's.
    """
    from PIL import Image, ImageOps

    from dimalign.features.decode import load_rgb

    try:
        with Image.open(path) as opened:
            # The mask is oriented as the photo is, by the extraction's EXIF setting.
            oriented = ImageOps.exif_transpose(opened) if preprocessing.exif_transpose else opened
            gray = _mask_values(oriented)
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        raise ValueError(f"mask {path} cannot be read as an image ({error}); save it as a PNG") from error
    if gray.getextrema() == (0, 1):
        # A boolean array saved as uint8 gives 0 and 1, which read as black everywhere.
        raise ValueError(
            f"mask {path} has only the values 0 and 1, so no pixel is white; save it with 255 on "
            "the object, for example Image.fromarray(mask.astype(np.uint8) * 255)"
        )
    mask = gray.convert("RGB")
    photo_size = load_rgb(photo, exif_transpose=preprocessing.exif_transpose).size
    if mask.size != photo_size:
        raise ValueError(
            f"mask {path} is {mask.size[0]} x {mask.size[1]} pixels but the image {photo} is "
            f"{photo_size[0]} x {photo_size[1]}; give the mask the photo's size"
        )
    foreground = preprocessing.to_tensor(mask)[0] > 0.5
    if not bool(foreground.any()):
        logger.warning(
            "mask %s has no foreground (no pixel brighter than half white), so background and "
            "silhouette edits treat the whole image as background", path,
        )
    return foreground


def _mask_values(image: Any) -> Any:
    """Return the mask values of an opened mask as a mode ``L`` image: its varying alpha, else its brightness."""
    from dimalign.features.decode import ALPHA_MODES, SIXTEEN_BIT_MODES, to_rgb

    if image.mode in ALPHA_MODES or "transparency" in image.info:
        alpha = image.convert("RGBA").getchannel("A")
        low, high = alpha.getextrema()
        if low != high:
            return alpha
    if image.mode in SIXTEEN_BIT_MODES:
        # Pillow's convert("L") clips 16-bit values at 255 instead of scaling them.
        return to_rgb(image).convert("L")
    return image.convert("L")


def _find_masks(mask_dir: Path, paths: Sequence[Path], names: Sequence[str]) -> dict[str, Path]:
    """Return the mask file ``mask_dir/STEM.png`` of each image that has one, keyed by the image's name.

    Only file names are checked here, so that a wrong ``--masks`` fails before the model loads.

    Raises:
        FileNotFoundError: If ``mask_dir`` is not a folder or has a mask for none of the images.
        ValueError: If a mask's stem belongs to several of the images, or a
            mask file is one of the images.
    """
    if not mask_dir.is_dir():
        kind = "a file, not a folder" if mask_dir.exists() else "not found"
        raise FileNotFoundError(f"mask folder {mask_dir} is {kind}: pass a folder of STEM.png masks")
    photos_of_stem: dict[str, list[Path]] = {}
    for path in paths:
        photos_of_stem.setdefault(path.stem, []).append(path)

    photo_files = {path.resolve(): path for path in paths}
    mask_files: dict[str, Path] = {}
    for name, path in zip(names, paths):
        mask_path = mask_dir / f"{path.stem}.png"
        if not mask_path.is_file():
            logger.info("no mask %s for %s: estimating one", mask_path, path)
            continue
        if mask_path.resolve() in photo_files:
            # A photo read as a mask gives the thresholded photo, with no error later.
            raise ValueError(
                f"mask {mask_path} is the image {photo_files[mask_path.resolve()]} itself, so --masks "
                f"{mask_dir} is a folder of photos; pass a folder that contains only the masks"
            )
        if len(photos_of_stem[path.stem]) > 1:
            raise ValueError(
                f"mask {mask_path} matches {len(photos_of_stem[path.stem])} images with the stem "
                f"{path.stem!r} ({', '.join(map(str, photos_of_stem[path.stem][:5]))}), so it is "
                "unclear which one it belongs to; give the images distinct file names"
            )
        mask_files[name] = mask_path

    if not mask_files:
        raise FileNotFoundError(
            f"the mask folder {mask_dir} has no mask for any of the {len(paths)} images (looked for "
            f"{mask_dir / (paths[0].stem + '.png')} and the like); masks must be PNG files named "
            "like the photos"
        )
    if len(mask_files) < len(paths):
        logger.warning(
            "%d of %d images have no mask in %s and get an estimated one",
            len(paths) - len(mask_files), len(paths), mask_dir,
        )
    return mask_files


def _check_masks_outside_images(mask_dir: Path, sources: Sequence[Path]) -> None:
    """Reject a mask folder inside an image folder, whose search for photos would also find the masks.

    Raises:
        ValueError: Naming the mask folder and the image folder.
    """
    masks = mask_dir.resolve()
    for source in sources:
        if source.is_dir() and source.resolve() in masks.parents:
            raise ValueError(
                f"the mask folder {mask_dir} lies inside the image folder {source}, so its masks would be "
                f"read as photos too; move the masks out of {source}"
            )


def run_manipulate(args: argparse.Namespace) -> int:
    """Handle ``dimalign manipulate``."""
    import pandas as pd

    from dimalign.interpret.manipulate import (
        ManipulationResult,
        check_distinct_edits,
        manipulate_images,
        parse_edit,
        plot_largest_changes,
    )
    from dimalign.interpret.predictor import DimensionPredictor
    from dimalign.io.files import (
        atomic_path,
        check_unowned_files,
        now_iso,
        write_manifest,
    )

    started = now_iso()
    _check_output_folder(args.out, "manipulate", ["manipulations.csv", "largest_changes.png"])
    _check_output_outside_inputs(args.out, [*args.images, *([args.masks] if args.masks else [])], "manipulate")
    _check_options(args, {"figure_rows": (1, math.inf)})
    edits = check_distinct_edits([parse_edit(text) for text in args.edits])
    if args.masks is not None:
        _check_masks_outside_images(args.masks, args.images)
    paths = collect_images(args.images)
    _check_output_outside_inputs(args.out, paths, "manipulate")
    names = unique_names(paths)
    mask_files = _find_masks(args.masks, paths, names) if args.masks is not None else {}
    labels = ["original", *(edit.label for edit in edits)]
    pictures = [_edited_file(name, label) for name in names for label in labels]
    if any(edit.uses_mask for edit in edits):
        # manipulate_images estimates the masks of the images without one, and they are written.
        pictures += [f"masks/{name}.png" for name in names if name not in mask_files]
    _check_file_name_lengths(paths, names, lambda name: [
        f"{name}.png", *(Path(_edited_file(name, label)).name for label in labels),
    ])
    check_unowned_files(args.out, pictures, "manipulate")
    predictor = DimensionPredictor.from_map_dir(args.map_dir, device=args.device, weights=args.weights)
    _apply_decoding_options(predictor, args)
    # Decode every image once so that a damaged file stops the run before any work. The
    # loop below decodes them again one at a time, so memory does not grow with their number.
    for path in paths:
        predictor.preprocessing.load(path)
    masks = {
        name: _read_mask(mask_files[name], path, predictor.preprocessing)
        for name, path in zip(names, paths) if name in mask_files
    }

    with _staged_output_folder(args.out) as stage:
        figure_images = _FigureImages(args.figure_rows)
        tables, estimated = [], []
        for name, path in zip(names, paths):
            image = predictor.preprocessing.load(path)
            given_mask = {name: masks[name]} if name in masks else None
            result = manipulate_images(predictor, {name: image}, edits, masks=given_mask)
            save_png(image, stage / _edited_file(name, "original"))
            for label, edited in result.edited[name].items():
                save_png(edited, stage / _edited_file(name, label))
            if name in result.masks and name not in masks:
                mask = result.masks[name]
                save_png(mask.expand(3, *mask.shape).float(), stage / "masks" / f"{name}.png")
                estimated.append(name)
            tables.append(result.table)
            figure_images.offer(name, image, result)
        table = pd.concat(tables, ignore_index=True)
        figure_result = ManipulationResult(table=table, edited=figure_images.edited, masks={})
        figure = plot_largest_changes(figure_result, figure_images.originals, n_rows=args.figure_rows)
        table["image"] = table["image"].map({name: str(path) for name, path in zip(names, paths)})
        save_csv(table, stage / "manipulations.csv")
        with atomic_path(stage / "largest_changes.png", overwrite=False) as temporary:
            figure.savefig(temporary, dpi=100)
        write_manifest(
            stage, step="manipulate",
            inputs=_map_inputs(args.map_dir, {
                **{f"image {name}": path for name, path in zip(names, paths)},
                **{f"mask {name}": path for name, path in mask_files.items()},
            }),
            settings={"map": args.map_dir, "weights": args.weights, "images": [str(path) for path in paths],
                      "edits": [edit.label for edit in edits], "masks": args.masks,
                      "estimated_masks": sorted(estimated), "device": args.device,
                      **_decoding_settings(predictor)},
            started=started,
            outputs={"table": "manipulations.csv", "figure": "largest_changes.png",
                     "max_abs_change": float(table["change"].abs().max())},
        )
    logger.info("wrote %d rows for %d images and %d edits to %s", len(table), len(paths), len(edits), args.out)
    print_written(args.out, (
        f"{count_of(len(table), 'row')} for {count_of(len(paths), 'image')} and {count_of(len(edits), 'edit')}"
    ))
    return 0


def _edited_file(name: str, label: str) -> str:
    """Return the path, relative to the output folder, of image ``name`` after edit ``label``.

    The label ``"original"`` names the unedited image.
    """
    return f"edited/{name}__{label.replace(':', '_')}.png"


class _FigureImages:
    """The images that the figure of the largest changes may show, kept while manipulate runs.

    The figure shows the ``n_rows`` (image, edit) pairs with the largest
    absolute change. Only images with a pair at or above the ``n_rows``-th
    largest change seen so far can be among them, because that threshold
    only grows, so the rest are dropped. Ties are kept, so the final choice
    of :func:`plot_largest_changes` always finds its images here.
    """

    def __init__(self, n_rows: int) -> None:
        self.n_rows = n_rows
        self.magnitudes: list[tuple[float, str]] = []
        self.originals: dict[str, Any] = {}
        self.edited: dict[str, dict[str, Any]] = {}

    def offer(self, name: str, image: Any, result: Any) -> None:
        """Keep ``image`` and its edits if one of its pairs may be shown, then drop what cannot."""
        pair_magnitudes = result.table.assign(magnitude=result.table["change"].abs()).groupby(
            ["edit", "parameter"], dropna=False, sort=False)["magnitude"].max()
        self.magnitudes += [(float(value), name) for value in pair_magnitudes]
        self.magnitudes.sort(key=lambda entry: entry[0], reverse=True)
        threshold = self.magnitudes[min(self.n_rows, len(self.magnitudes)) - 1][0]
        self.magnitudes = [entry for entry in self.magnitudes if entry[0] >= threshold]
        self.originals[name] = image
        self.edited[name] = result.edited[name]
        keep = {entry[1] for entry in self.magnitudes}
        for dropped in set(self.originals) - keep:
            del self.originals[dropped], self.edited[dropped]


def run_grid(args: argparse.Namespace) -> int:
    """Handle ``dimalign grid``."""
    import pandas as pd

    from dimalign.interpret.grid_images import dimension_grid, image_paths, load_grid_images, needed_rows
    from dimalign.io.files import check_unowned_files, now_iso, write_manifest
    from dimalign.io.objects import OBJECT_TABLE_NAME, read_object_table
    from dimalign.io.runs import load_embedding

    started = now_iso()
    _check_output_folder(args.out, "grid", ["grid.csv"])
    _check_options(args, {"cell_size": (1, MAX_IMAGE_SIDE)})
    if args.dims:
        _distinct(args.dims, "--dims")
    result = load_embedding(args.embedding)
    objects_path = args.objects
    if objects_path is None:
        candidate = (args.embedding if args.embedding.is_dir() else args.embedding.parent) / OBJECT_TABLE_NAME
        if not candidate.is_file():
            raise FileNotFoundError(f"no {OBJECT_TABLE_NAME} next to {args.embedding}; pass --objects")
        objects_path = candidate
    table = read_object_table(objects_path)
    if len(table) != result.n_objects:
        raise ValueError(
            f"{objects_path} lists {len(table)} objects but the embedding {args.embedding} has "
            f"{result.n_objects} rows; use the object table of this embedding"
        )
    if result.n_dims == 0:
        raise ValueError(f"the embedding {args.embedding} has no dimensions, so there is nothing to draw")
    dims = [
        _check_embedding_dimension(dim, result.n_dims, args.embedding)
        for dim in (args.dims or range(result.n_dims))
    ]
    if args.layout == "top" and not 1 <= args.top_k <= result.n_objects:
        raise ValueError(
            f"--top-k {args.top_k} is invalid: the embedding {args.embedding} has {result.n_objects} "
            f"objects, so use 1..{result.n_objects}"
        )
    check_unowned_files(args.out, [f"dim{dim:03d}_{args.layout}.png" for dim in dims], "grid")
    decoding = resolve_decoding(args.background, args.exif_transpose, recorded_decoding(args.embedding))
    paths = image_paths(table, args.images, needed_rows(result.embedding, dims, args.layout, args.top_k))
    # A later dimalign extract of the image folder, which searches subfolders too, would read the
    # grids as photos. The current folder, the default of --images, does not count, because the
    # images may lie in one of its subfolders and the grids in another.
    inputs = sorted(set(paths.values()))
    image_dir = args.images.resolve()
    if image_dir != Path.cwd().resolve():
        inputs.append(args.images)
    _check_output_outside_inputs(args.out, inputs, "grid")
    pictures = load_grid_images(paths, args.cell_size, decoding)

    rows = []
    with _staged_output_folder(args.out) as stage:
        for dim in dims:
            grid, grid_rows = dimension_grid(
                result.embedding, dim, pictures, layout=args.layout, top_k=args.top_k, cell_size=args.cell_size
            )
            file = save_png(grid, stage / f"dim{dim:03d}_{args.layout}.png")
            for position, row in enumerate(grid_rows):
                rows.append({"dimension": dim, "position": position, "row": int(row),
                             "object_id": table.object_ids[row], "weight": float(result.embedding[row, dim]),
                             "file": file.name})
        save_csv(pd.DataFrame(rows), stage / "grid.csv")
        write_manifest(
            stage, step="grid", inputs={"embedding": result.path, "objects": objects_path},
            settings={"layout": args.layout, "top_k": args.top_k, "dims": dims, "images": args.images,
                      "cell_size": args.cell_size, **decoding.to_json(),
                      "decoding_source": decoding.source},
            started=started, outputs={"n_grids": len(dims), "table": "grid.csv"},
        )
    logger.info("wrote %d %s grids to %s", len(dims), args.layout, args.out)
    print_written(args.out, count_of(len(dims), f"{args.layout} grid"))
    return 0


def _check_embedding_dimension(dim: int, n_dims: int, embedding: Path) -> int:
    """Return ``dim`` if it is a 0-based dimension index of the embedding ``grid`` draws.

    Raises:
        ValueError: Naming the embedding and its number of dimensions.
    """
    if not 0 <= dim < n_dims:
        raise ValueError(
            f"dimension {dim} is out of range: the embedding {embedding} has {n_dims} "
            f"dimensions (0-based indices 0..{n_dims - 1}); pass --dims within that range"
        )
    return dim
