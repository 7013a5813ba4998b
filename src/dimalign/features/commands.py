"""The ``dimalign extract`` and ``dimalign list-layers`` subcommands."""

from __future__ import annotations

import argparse
from operator import attrgetter

from dimalign.cli import add_examples, declare_output_folder

DEFAULT_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``extract`` and ``list-layers`` to the ``dimalign`` command."""
    extract = subparsers.add_parser(
        "extract",
        help="extract DNN features of images into a feature folder",
        description="Run every image of a folder (recursively) or a list file through a "
                    "model and write the features of the chosen layers, one row per image, "
                    "with objects.tsv naming the image of each row and manifest.json.",
    )
    extract.add_argument("images", metavar="IMAGES",
                         help="folder of images (searched recursively) or a text file with "
                              "one image path per line")
    extract.add_argument("-o", "--out", "--out-dir", dest="out_dir", required=True, help="feature folder to write")
    extract.add_argument("--model", required=True,
                         help="efficientnet_lite0, a torchvision classification model "
                              "(vgg16, resnet50, ...), timm:NAME, or module:function for a "
                              "network of your own (a function that returns a LoadedModel)")
    _add_weights_options(extract)
    extract.add_argument("--layer", action="extend", nargs="+", dest="layers", metavar="LAYER",
                         help="module name to read (repeatable; NAME:input reads the module's "
                              "input); default: the model's penultimate layer")
    extract.add_argument("--pool", action="extend", nargs="+", dest="pools",
                         choices=("raw", "flatten", "gap"), metavar="{raw,flatten,gap}",
                         help="pooling, one for all layers or one per layer: raw keeps the "
                              "output shape, flatten gives one row per image, gap averages "
                              "over spatial positions (default: flatten)")
    extract.add_argument("--batch-size", type=int, default=32, help="images per forward pass (default 32)")
    extract.add_argument("--num-workers", type=int, default=0,
                         help="processes decoding images (default 0: decode in the main process)")
    extract.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N or auto")
    extract.add_argument("--dtype", choices=("float32", "float16"), default="float32",
                         help="float type of the feature files (default float32)")
    extract.add_argument("--on-error", choices=("stop", "skip"), default="stop",
                         help="for an unreadable image: stop with an error naming it, or skip "
                              "it and list it in skipped.tsv (default stop)")
    extract.add_argument("--extensions", nargs="+", default=list(DEFAULT_EXTENSIONS),
                         metavar="EXT",
                         help="image file extensions in a folder, case-insensitive "
                              f"(default: {' '.join(DEFAULT_EXTENSIONS)})")
    extract.add_argument("--background", default="white",
                         help="colour under transparent pixels: a name, #rrggbb or r,g,b (default white)")
    extract.add_argument("--no-exif-transpose", dest="exif_transpose", action="store_false",
                         help="ignore the EXIF orientation tag of photos")
    extract.add_argument("--format", choices=("npy", "h5"), default="npy", dest="fmt",
                         help="npy: memory-mapped features.npy (features_<layer>.npy for "
                              "several layers; the default); h5: features.h5 with one dataset per layer")
    extract.add_argument("--resume", action="store_true",
                         help="continue an interrupted extraction in OUT_DIR")
    extract.add_argument("--overwrite", action="store_true",
                         help="replace features already in OUT_DIR")
    extract.set_defaults(handler=run_extract)
    add_examples(
        extract, "dimalign extract photos/ -o features/ --model efficientnet_lite0",
        "dimalign extract photos/ -o vgg16_blocks/ --model vgg16 --layer features.16 features.30 --pool gap",
    )
    declare_output_folder(extract, "extract", attrgetter("out_dir"))

    layers = subparsers.add_parser(
        "list-layers",
        help="print the layer names of a model",
        description="Print every module name of a model (the names --layer accepts) with its "
                    "type, and with --shapes its output shape for one image.",
    )
    layers.add_argument("model", metavar="MODEL",
                        help="efficientnet_lite0, a torchvision model name, timm:NAME or "
                             "module:function")
    layers.add_argument("--shapes", action="store_true",
                        help="also print each layer's output shape (runs one blank image) and "
                             "mark modules called more than once per forward pass")
    layers.set_defaults(handler=run_list_layers)
    add_examples(layers, "dimalign list-layers vgg16 --shapes")


def _add_weights_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--pretrained", dest="weights", action="store_const", const="pretrained",
                       help="published weights (default; torchvision and timm download them)")
    group.add_argument("--random-init", dest="weights", action="store_const", const="random",
                       help="random initialisation, seeded by --seed")
    group.add_argument("--weights", dest="weights", metavar="PATH_OR_NAME",
                       help="a local state dict file, or a torchvision weights name such as "
                            "IMAGENET1K_V1")
    parser.set_defaults(weights="pretrained")
    parser.add_argument("--seed", type=int, help="seed of --random-init (default 0)")


def run_extract(args: argparse.Namespace) -> int:
    """Handle ``dimalign extract``."""
    from dimalign.features.extract import extract_features

    if args.seed is not None and args.weights != "random":
        raise ValueError(f"--seed {args.seed} only seeds --random-init: drop it, or add --random-init")
    if args.resume and args.overwrite:
        raise ValueError("--resume continues the extraction in OUT_DIR and --overwrite replaces it: pass one")
    result = extract_features(
        args.images, args.out_dir, args.model, weights=args.weights, layers=args.layers,
        pools=args.pools or "flatten", batch_size=args.batch_size, num_workers=args.num_workers,
        device=args.device, dtype=args.dtype, on_error=args.on_error, extensions=args.extensions,
        background=args.background, exif_transpose=args.exif_transpose, fmt=args.fmt,
        resume=args.resume, overwrite=args.overwrite, seed=args.seed or 0,
    )
    for layer, path in result.files.items():
        print(f"{layer}\t{path}")
    if result.skipped:
        print(f"skipped {len(result.skipped)} unreadable images, listed in "
              f"{result.out_dir / 'skipped.tsv'}")
    return 0


def run_list_layers(args: argparse.Namespace) -> int:
    """Handle ``dimalign list-layers``."""
    import torch
    from PIL import Image

    from dimalign.features.layers import count_calls, layer_shapes, list_layers
    from dimalign.features.models import load_model

    from dimalign.features.user_models import is_model_spec

    # Layer names do not depend on the weights, so nothing is downloaded. A
    # network of your own comes with the weights that its function sets.
    loaded = load_model(args.model, weights=None if is_model_spec(args.model) else "random")
    shapes, calls = {}, {}
    if args.shapes:
        blank = Image.new("RGB", (256, 256), (128, 128, 128))
        pixels = torch.stack([loaded.transform(blank)])
        shapes = layer_shapes(loaded.model, pixels)
        calls = count_calls(loaded.model, pixels)
    default = loaded.default_layer or "none (the model has no Linear layer): name one with --layer"
    print(f"# default layer: {default}")
    for name, type_name in list_layers(loaded.model):
        shape = shapes.get(name)
        columns = [name, type_name] + ([" x ".join(map(str, shape))] if shape else [])
        if calls.get(name, 0) > 1:
            # extract rejects such a module, and the shape is that of its first call.
            columns.append(f"called {calls[name]} times per pass, not extractable")
        print("\t".join(columns))
    return 0
