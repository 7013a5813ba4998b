"""The ``dimalign import-triplets`` and ``dimalign simulate`` subcommands."""

from __future__ import annotations

import argparse
import logging
import math
from operator import attrgetter
from pathlib import Path

from dimalign.cli import add_examples, declare_output_folder
from dimalign.memory import available_memory_bytes, format_bytes

logger = logging.getLogger(__name__)

# Steps whose output folders this module writes, and so may check for stale files.
_TRIPLET_STEPS = ("import-triplets", "simulate")


def _positive_int(text: str) -> int:
    """Parse a command-line integer that must be at least 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is invalid: use an integer of at least 1")
    return value


def _seed(text: str) -> int:
    """Parse a command-line seed, which numpy's SeedSequence needs to be at least 0."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is invalid: use an integer of at least 0"
        ) from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} is invalid: use an integer of at least 0")
    return value


def _validation_fraction(text: str) -> float:
    """Parse a command-line validation fraction, which must lie in [0, 1)."""
    value = float(text)
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(
            f"{value} is invalid: use a fraction of at least 0 and below 1, such as 0.1"
        )
    return value


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``import-triplets`` and ``simulate`` to the ``dimalign`` command."""
    _register_import(subparsers)
    _register_simulate(subparsers)


def _register_import(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "import-triplets",
        help="convert a triplet file into the canonical layout and validate it",
        description="Read odd-one-out judgements (.npy, .txt, .tsv, .csv), convert them to "
        "0-based indices with the odd one out in the last column, check them, log a "
        "summary, and write the canonical file(s) with manifest.json.",
    )
    parser.add_argument(
        "input", metavar="INPUT",
        help="triplet file, or a folder with one triplet file. An objects.tsv next to the file or "
        "in the folder gives the objects, unless --objects is given",
    )
    parser.add_argument(
        "-o", "--out", required=True,
        help="output .npy/.txt/.tsv/.csv file (its folder gets manifest.json), or an output "
        "folder (triplets.npy; train.npy and val.npy with --split)",
    )

    objects = parser.add_mutually_exclusive_group()
    objects.add_argument("--n-objects", type=int, help="number of objects")
    objects.add_argument(
        "--objects", metavar="TABLE",
        help="object table (objects.tsv, or one name per line like THINGS unique_id.txt) "
        "whose length is the number of objects",
    )

    parser.add_argument("--one-based", action="store_true", help="the file counts objects from 1")
    odd = parser.add_mutually_exclusive_group()
    odd.add_argument(
        # No default here: argparse treats an explicit default value as absent
        # when it checks a mutually exclusive group.
        "--odd-column", type=int, choices=(0, 1, 2),
        help="position of the odd one out among the three object columns (default: 2, the last)",
    )
    odd.add_argument(
        "--choice-column", metavar="COLUMN",
        help="file column (number from 0, or header name) giving the odd one's position "
        "1, 2 or 3 among the object columns",
    )
    parser.add_argument(
        "--columns", metavar="A,B,C",
        help="the three object columns, as numbers from 0 or header names (needed when the "
        "file has extra columns such as subject ids)",
    )
    parser.add_argument(
        "--delimiter",
        help="column delimiter of a text file: a character, tab, comma or whitespace "
        "(default: detected from the first line)",
    )

    parser.add_argument(
        "--split", "--val-fraction", dest="split", type=_validation_fraction, metavar="FRACTION",
        help="also split into train.npy and val.npy with this validation fraction, keeping "
        "all repeats of an object set on one side (--val-fraction, as in simulate and fit, "
        "is the same option)",
    )
    parser.add_argument("--seed", type=_seed, help="seed of --split (default: 0)")
    parser.set_defaults(handler=run_import)
    add_examples(parser, "dimalign import-triplets human_triplets.txt --objects unique_id.txt --split 0.1 -o triplets")
    declare_output_folder(parser, "import-triplets", _import_folder)


def _register_simulate(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "simulate",
        help="sample unique triplets and simulate odd-one-out choices from features",
        description="Sample unique object triplets and let the features choose the odd one "
        "out: the pair with the largest similarity stays (argmax), or a pair is drawn with "
        "softmax probabilities. Writes triplets.npy (or train.npy and val.npy), objects.tsv "
        "and manifest.json.",
    )
    parser.add_argument(
        "features", metavar="FEATURES",
        help="feature file (.npy, .h5, .txt) or feature folder from dimalign extract",
    )
    parser.add_argument("-o", "--out", "--out-dir", dest="out_dir", required=True, help="output folder")
    parser.add_argument(
        "--n-triplets", type=int, required=True, help="number of triplets to sample"
    )

    parser.add_argument(
        "--similarity", choices=("dot", "cosine", "euclidean"), default="dot",
        help="pair similarity: dot product (default), cosine, or negative Euclidean distance",
    )
    parser.add_argument(
        "--relu", action=argparse.BooleanOptionalAction, default=None,
        help="set negative features to 0 first (default: on for dot, off otherwise)",
    )
    parser.add_argument(
        "--rule", choices=("argmax", "softmax"), default="argmax",
        help="argmax (default): the pair with the maximum similarity stays (ties broken at random); "
        "softmax: draw the pair with probability proportional to exp(similarity / temperature)",
    )
    parser.add_argument(
        "--temperature", type=float,
        help="softmax temperature in similarity units (default: 1.0; only with --rule softmax)",
    )
    parser.add_argument(
        "--objects", metavar="TABLE",
        help="object table (objects.tsv, or one name per line) naming the feature rows in order; "
        "written to objects.tsv (default: the features' own table, else object_0, object_1, ...)",
    )

    parser.add_argument("--seed", type=_seed, default=0, help="seed of sampling, choices and split (default: 0)")
    parser.add_argument(
        "--replace", action="store_true",
        help="sample triplets independently, so object sets may repeat",
    )
    parser.add_argument(
        "--layer", help="layer of a feature folder or HDF5 file with several layers"
    )
    parser.add_argument(
        "--val-fraction", type=_validation_fraction,
        help="split into train.npy and val.npy with this validation fraction, above 0 and below 1",
    )

    parser.add_argument(
        "--method", choices=("auto", "gram", "gather"), default="auto",
        help="gram: precompute all pair similarities (n_objects^2 floats); gather: read "
        "feature rows per triplet; auto (default) picks by memory and cost",
    )
    parser.add_argument(
        "--batch-size", type=_positive_int, help="triplets per batch (default: automatic)"
    )
    parser.set_defaults(handler=run_simulate)
    add_examples(parser, "dimalign simulate features/ -o dnn_triplets/ --n-triplets 100000 --val-fraction 0.1")
    declare_output_folder(parser, "simulate", attrgetter("out_dir"))


# --------------------------------------------------------------------------- import-triplets


def _import_folder(args: argparse.Namespace) -> Path:
    """Return the folder that ``dimalign import-triplets`` writes: ``-o``, or the folder of an ``-o`` file."""
    from dimalign.io.triplets import TRIPLET_SUFFIXES

    out = Path(args.out)
    return out.parent if out.suffix.lower() in TRIPLET_SUFFIXES else out


def run_import(args: argparse.Namespace) -> int:
    """Handle ``dimalign import-triplets``."""
    from dimalign.io.files import (
        check_output_dir,
        check_writable,
        now_iso,
        report_leftover_stages,
        staged_outputs,
        write_manifest,
    )
    from dimalign.io.objects import OBJECT_TABLE_NAME, read_object_table, write_object_table
    from dimalign.io.triplets import (
        TRIPLET_SUFFIXES,
        find_triplet_file,
        load_triplets,
        parse_columns,
        save_triplets,
        split_triplets,
        summarize_triplets,
    )

    started = now_iso()
    if args.seed is not None and args.split is None:
        raise ValueError("--seed sets the seed of --split: give --split too, or leave out --seed")
    seed = 0 if args.seed is None else args.seed
    odd_column = 2 if args.odd_column is None else args.odd_column
    out = Path(args.out)
    as_file = out.suffix.lower() in TRIPLET_SUFFIXES
    if as_file and args.split is not None:
        raise ValueError(
            f"--split/--val-fraction writes train.npy and val.npy: give an output folder, not {out}"
        )
    if as_file and out.name == OBJECT_TABLE_NAME:
        raise ValueError(
            f"-o {out}: {OBJECT_TABLE_NAME} is the name of the object table, and commands that "
            f"read the folder {out.parent} would take the triplets for it; choose another name, "
            "such as triplets.tsv"
        )
    out_dir = out.parent if as_file else out
    check_output_dir(out_dir, "import-triplets")
    check_writable(out_dir)
    report_leftover_stages(out_dir)
    if args.split is not None:
        planned = {"train.npy", "val.npy"}
    else:
        planned = {out.name if as_file else "triplets.npy"}
    if not as_file:
        planned.add("objects.tsv")
    check_stale_outputs(out_dir, planned)

    source = Path(args.input)
    objects_path = Path(args.objects) if args.objects else None
    input_is_folder = source.is_dir()
    if input_is_folder:
        source = find_triplet_file(source)
    # As in dimalign fit, a triplet file reads the objects.tsv next to it,
    # and a folder reads its own, unless --objects names a table.
    beside_path = source.parent / OBJECT_TABLE_NAME
    beside = objects_path is None and beside_path.is_file()
    if beside:
        objects_path = beside_path
    if args.delimiter is not None and source.suffix.lower() == ".npy":
        raise ValueError(f"--delimiter applies to text files, but {source} is a .npy file: leave it out")
    targets = [out] if as_file else [out_dir / name for name in sorted(planned)]
    if not beside:
        table_label = "--objects table"
    elif input_is_folder:
        table_label = "object table of the input folder"
    else:
        table_label = "object table next to the triplet file"
    # A user's own objects.tsv in the output folder is named as such by
    # check_unowned_outputs, so the table next to a triplet file is checked after it.
    table_beside_file = beside and not input_is_folder
    _reject_overwritten_inputs(
        targets, {"triplet file": source, table_label: None if table_beside_file else objects_path}
    )
    check_unowned_outputs(out_dir, {target.name for target in targets}, "import-triplets")
    if table_beside_file:
        _reject_overwritten_inputs(targets, {table_label: objects_path})
    if beside:
        logger.info(
            "using the object table %s, which lies next to the triplets, for the objects; pass "
            "--objects to use another table", objects_path,
        )
    elif objects_path is not None:
        logger.info("using the object table %s (--objects) for the objects", objects_path)
    table = _read_import_table(objects_path, beside) if objects_path else None
    if table is not None and args.n_objects is not None and len(table) != args.n_objects:
        # Only the objects.tsv next to the triplets meets --n-objects here:
        # argparse rejects --objects together with --n-objects.
        raise ValueError(
            f"--n-objects {args.n_objects} disagrees with {objects_path}, which lists "
            f"{len(table)} objects: leave out --n-objects to use that table, or import the "
            f"triplet file {source} itself with --objects naming {args.n_objects} objects"
        )
    if table is None and args.n_objects is not None:
        check_import_memory(args.n_objects)
    try:
        triplets = load_triplets(
            source,
            args.n_objects,
            one_based=args.one_based,
            odd_column=odd_column,
            choice_column=args.choice_column,
            columns=parse_columns(args.columns) if args.columns else None,
            delimiter=args.delimiter,
            object_table=table,
        )
    except ValueError as error:
        if not beside or "out of range" not in str(error):
            raise
        raise ValueError(
            f"{error}. The {len(table)} objects come from {objects_path}, which dimalign import-triplets "
            "reads because it lies next to the triplets: pass the table that the triplets index with "
            "--objects, or move this one away"
        ) from error
    n_objects = len(table) if table is not None else args.n_objects
    try:
        # Both hold a value per object: 8-byte counts, and names such as object_123.
        summary = summarize_triplets(triplets, n_objects)
        object_table = None if as_file else table or _generated_table(n_objects)
    except MemoryError as error:
        raise ValueError(
            f"{n_objects:,} objects need more memory than is available "
            f"({str(error) or 'no details'}); "
            "check --n-objects, which is the number of objects in the study (the rows of its "
            "object table)"
        ) from error
    for line in summary.lines():
        logger.info("%s", line)

    if args.split is not None and not len(triplets):
        raise ValueError(
            f"{source} contains no triplets, so --split/--val-fraction {args.split} holds out "
            "none: check that it is the file of judgements"
        )
    if not len(triplets):
        # Every command that reads triplets rejects an empty file, so writing one only moves the error.
        raise ValueError(
            f"{source} contains no triplets, so there is nothing to import: check that it is the file of "
            "judgements"
        )
    if args.split is not None:
        check_split_sizes("--split/--val-fraction", args.split, len(triplets), "--split")
    inputs = {"triplets": source}
    if objects_path:
        inputs["objects"] = objects_path
    settings = {
        "n_objects": n_objects,
        "one_based": args.one_based,
        "odd_column": odd_column,
        "choice_column": args.choice_column,
        "columns": args.columns,
        "delimiter": args.delimiter,
        "split": args.split,
        "seed": seed,
    }

    # A failed or interrupted run removes what it wrote and puts back the
    # files of an earlier run, so that no folder with train.npy but no
    # val.npy or manifest.json passes for a whole one.
    written = {}
    with staged_outputs(out_dir) as stage:
        if args.split is not None:
            train, val = split_triplets(triplets, args.split, random_state=seed)
            written["train"] = save_triplets(train, stage / "train.npy")
            written["val"] = save_triplets(val, stage / "val.npy")
        else:
            name = out.name if as_file else "triplets.npy"
            written["triplets"] = save_triplets(triplets, stage / name)
        if not as_file:
            written["objects"] = write_object_table(object_table, stage / "objects.tsv")
        outputs = {
            "files": {name: path.name for name, path in written.items()},
            **summary.to_dict(),
        }
        if args.split is not None:
            outputs.update(n_train=len(train), n_val=len(val))
        write_manifest(stage, step="import-triplets", inputs=inputs, settings=settings,
                       started=started, outputs=outputs)
    for path in written.values():
        print(out_dir / path.name)
    return 0


def _read_import_table(path: Path, beside: bool):
    """Read the object table of ``import-triplets``, saying why it is read when it lies next to the triplets."""
    from dimalign.io.objects import read_object_table

    try:
        return read_object_table(path)
    except ValueError as error:
        if not beside:
            raise
        raise ValueError(
            f"{error} (dimalign import-triplets reads {path} because it lies next to the triplets: "
            "fix it, or pass the right table with --objects)"
        ) from error


def _reject_overwritten_inputs(targets: list[Path], inputs: dict[str, Path | None]) -> None:
    """Raise ``ValueError`` when an output file would replace an input, whatever the path spelling."""
    from dimalign.io.files import is_same_file

    for target in targets:
        for label, input_path in inputs.items():
            if input_path is not None and is_same_file(target, input_path):
                raise ValueError(
                    f"the output {target} is the {label} {input_path}, which would be overwritten; "
                    "choose another output"
                )


# --------------------------------------------------------------------------- simulate


def run_simulate(args: argparse.Namespace) -> int:
    """Handle ``dimalign simulate``."""
    import numpy as np

    from dimalign.io.features import check_layer_choice, load_features
    from dimalign.io.files import (
        check_output_dir,
        check_writable,
        now_iso,
        report_leftover_stages,
        staged_outputs,
        write_manifest,
    )
    from dimalign.io.objects import write_object_table
    from dimalign.io.triplets import TRIPLET_SUFFIXES, save_triplets, split_triplets
    from dimalign.triplets import count_triplets, sample_triplets, simulate_choices

    check_simulate_options(args)
    check_layer_choice(args.features, args.layer)
    started = now_iso()
    out_dir = Path(args.out_dir)
    if out_dir.suffix.lower() in TRIPLET_SUFFIXES and not out_dir.is_dir():
        raise ValueError(
            f"-o {out_dir} looks like a file name, but simulate writes an output folder "
            f"(triplets.npy or train.npy and val.npy, objects.tsv, manifest.json); give a folder "
            f"such as {out_dir.with_suffix('')}"
        )
    check_output_dir(out_dir, "simulate")
    check_writable(out_dir)
    report_leftover_stages(out_dir)
    planned = {"train.npy", "val.npy"} if args.val_fraction is not None else {"triplets.npy"}
    check_stale_outputs(out_dir, planned | {"objects.tsv"})
    _reject_overwritten_inputs(
        [out_dir / name for name in sorted(planned | {"objects.tsv"})],
        {"features file": _features_file(Path(args.features), args.layer),
         "--objects table": Path(args.objects) if args.objects else None},
    )
    check_unowned_outputs(out_dir, planned | {"objects.tsv"}, "simulate")
    # The features' own table is read here rather than by load_features, so
    # that --objects replaces one that disagrees with the features.
    features = load_features(args.features, layer=args.layer, read_table=False)[0]
    features_file = _features_file(Path(args.features), args.layer)
    n_objects = int(features.shape[0])
    if n_objects < 3:
        raise ValueError(
            f"{features_file} has {n_objects} rows (objects), but a triplet needs 3 objects; "
            "pass features with one row per object"
        )
    if features.shape[1] == 0:
        raise ValueError(
            f"{features_file} has no feature columns (shape {features.shape}), so every choice would "
            "be a tie broken at random: pass features with at least one column"
        )
    features_table = None
    if args.objects:
        table = _read_simulate_objects(Path(args.objects), n_objects, args.features)
    else:
        features_table = _read_features_table(features_file, n_objects)
        table = features_table
    if args.replace or args.n_triplets <= count_triplets(n_objects):
        # Otherwise sample_triplets names the number of distinct triplets at once.
        check_simulate_memory(args.n_triplets, features, args.method)

    # Independent streams for sampling, choices and split, all from --seed.
    sample_seed, choice_seed, split_seed = np.random.SeedSequence(args.seed).spawn(3)
    triplets = sample_triplets(
        n_objects,
        args.n_triplets,
        random_state=np.random.default_rng(sample_seed),
        replace=args.replace,
    )
    try:
        result = simulate_choices(
            features,
            triplets,
            similarity=args.similarity,
            rule=args.rule,
            temperature=1.0 if args.temperature is None else args.temperature,
            random_state=np.random.default_rng(choice_seed),
            batch_size=args.batch_size,
            relu=args.relu,
            method=args.method,
        )
    except ValueError as error:
        # The options were checked above, so the error is about the feature
        # values (NaN, inf or a zero norm), whose message lacks the file.
        raise ValueError(f"{features_file}: {error}") from error
    del triplets

    if table is None:
        table = _generated_table(n_objects)
        logger.info(
            "the features have no object table; named the objects object_0 .. object_%d. Pass --objects "
            "TABLE (one id per line in row order) to name them, so that compare can match them to another "
            "embedding's objects, such as THINGS ids",
            n_objects - 1,
        )
    inputs = {"features": _features_file(Path(args.features), args.layer)}
    if args.objects:
        inputs["objects"] = Path(args.objects)
    elif features_table is not None:
        # load_features reads the objects.tsv next to the features file, also
        # when it was given as a file rather than as its folder.
        inputs["objects"] = inputs["features"].parent / "objects.tsv"
    settings = {
        "n_objects": n_objects,
        "n_features": int(features.shape[1]),
        "n_triplets": args.n_triplets,
        "similarity": args.similarity,
        "relu": result.relu,
        "rule": args.rule,
        "temperature": result.temperature,
        "seed": args.seed,
        "replace": args.replace,
        "layer": args.layer,
        "val_fraction": args.val_fraction,
        "method": result.method,
    }

    # A failed or interrupted run removes what it wrote and puts back the
    # files of an earlier run, so that no folder with train.npy but no
    # val.npy or manifest.json passes for a whole one.
    written = {}
    with staged_outputs(out_dir) as stage:
        if args.val_fraction is not None:
            train, val = split_triplets(
                result.triplets, args.val_fraction, random_state=np.random.default_rng(split_seed)
            )
            written["train"] = save_triplets(train, stage / "train.npy")
            written["val"] = save_triplets(val, stage / "val.npy")
        else:
            written["triplets"] = save_triplets(result.triplets, stage / "triplets.npy")
        written["objects"] = write_object_table(table, stage / "objects.tsv")
        outputs = {
            "files": {name: path.name for name, path in written.items()},
            "n_ties": result.n_ties,
        }
        if args.val_fraction is not None:
            outputs.update(n_train=len(train), n_val=len(val))
        write_manifest(stage, step="simulate", inputs=inputs, settings=settings,
                       started=started, outputs=outputs)
    for path in written.values():
        print(out_dir / path.name)
    return 0


def check_simulate_options(args: argparse.Namespace) -> None:
    """Reject ``simulate`` options that contradict each other, before any work.

    Raises:
        ValueError: Naming both options.
    """
    if args.temperature is not None and args.rule != "softmax":
        raise ValueError(
            f"--temperature {args.temperature} has no effect with --rule {args.rule}: "
            "drop --temperature, or pass --rule softmax"
        )
    if args.temperature is not None and not (math.isfinite(args.temperature) and args.temperature > 0):
        raise ValueError(f"--temperature {args.temperature} is invalid: use a finite number above 0")
    if args.n_triplets < 1:
        raise ValueError(f"--n-triplets {args.n_triplets} is invalid: use 1 or more")
    if args.val_fraction is not None:
        check_split_sizes("--val-fraction", args.val_fraction, args.n_triplets, "--val-fraction")


# Peak memory of simulate per triplet, an estimate. With 4,000,000 triplets of
# 1,854 objects (numpy 2.4, --val-fraction 0.1), tracemalloc measured about 37
# bytes to sample (the int64 ranks and the (n, 3) int64 rows). Choosing took 57
# more while the sampled rows were kept, and splitting 80 more while the
# chosen rows were kept. The peak resident size of the command was 118 bytes
# per triplet.
_SIMULATE_BYTES_PER_TRIPLET = 120


def check_simulate_memory(n_triplets: int, features, method: str) -> None:
    """Reject a ``simulate`` run whose estimated memory exceeds the available memory.

    A count far too high would otherwise fail only after minutes of work, or
    get the process (or another one) killed by the out-of-memory killer.

    Args:
        n_triplets (int): The requested number of triplets.
        features (np.ndarray): The feature matrix, for the size of a Gram matrix.
        method (str): ``"auto"``, ``"gram"`` or ``"gather"``.

    Raises:
        ValueError: Giving the estimate, the available memory and what to lower.
    """
    from dimalign.triplets.simulate import gram_matrix_bytes

    needed = _SIMULATE_BYTES_PER_TRIPLET * n_triplets
    parts = (
        f"about {_SIMULATE_BYTES_PER_TRIPLET} bytes per triplet to sample, choose and split them"
    )
    gram_bytes = gram_matrix_bytes(features, n_triplets, method)
    if gram_bytes:
        needed += gram_bytes
        parts += f", plus the {format_bytes(gram_bytes)} Gram matrix"
    available = available_memory_bytes()
    if available is None:
        logger.debug("available memory unknown; simulate needs about %s", format_bytes(needed))
        return
    if needed > available:
        raise ValueError(
            f"--n-triplets {n_triplets:,} needs about {format_bytes(needed)} of memory (an "
            f"estimate: {parts}), but {format_bytes(available)} is available: lower "
            "--n-triplets, or run on a machine with more free memory"
        )
    logger.info(
        "simulate needs about %s of memory (%s available)",
        format_bytes(needed), format_bytes(available),
    )


# Peak memory of import-triplets per object of --n-objects, an estimate: 2
# triplets of 10,000,000 objects peaked at 1.87 GB resident (numpy 2.4), that
# is 182 bytes per object. The counts per object, the list of unseen objects
# and the generated names object_0, object_1, ... take most of it.
_IMPORT_BYTES_PER_OBJECT = 200


def check_import_memory(n_objects: int) -> None:
    """Reject an ``import-triplets`` object count whose memory estimate exceeds the free memory.

    A mistyped ``--n-objects`` (extra zeros) otherwise fills the memory with
    per-object arrays and lists, until the out-of-memory killer ends this or
    another process.

    Args:
        n_objects (int): The ``--n-objects`` value.

    Raises:
        ValueError: Giving the estimate, the available memory and what to check.
    """
    needed = _IMPORT_BYTES_PER_OBJECT * n_objects
    available = available_memory_bytes()
    if available is not None and needed > available:
        raise ValueError(
            f"{n_objects:,} objects need about {format_bytes(needed)} of memory (an estimate: "
            f"about {_IMPORT_BYTES_PER_OBJECT} bytes per object for the counts, the unseen "
            f"objects and their names), but {format_bytes(available)} is available: check "
            "--n-objects, which is the number of objects in the study (the rows of its object "
            "table)"
        )


def check_split_sizes(option: str, fraction: float, n_triplets: int, omit: str) -> None:
    """Reject a validation fraction that leaves the validation or the training part empty.

    :func:`dimalign.io.triplets.split_triplets` holds out at least
    ``round(fraction x n_triplets)`` rows, and ``dimalign fit`` rejects an
    empty ``val.npy`` or ``train.npy``.

    Args:
        option (str): The option as the user may have typed it, for the message.
        fraction (float): The validation fraction, in [0, 1).
        n_triplets (int): Number of triplets to split, at least 1.
        omit (str): The option to leave out for a single ``triplets.npy``.

    Raises:
        ValueError: Naming the option, the rounding and a fraction that works.
    """
    if n_triplets == 1:
        raise ValueError(
            f"{option} {fraction}: 1 triplet cannot be split into a training and a validation "
            f"part; leave out {omit} to write triplets.npy"
        )
    held_out = round(fraction * n_triplets)
    if held_out == 0:
        raise ValueError(
            f"{option} {fraction} holds out no triplet, since round({fraction} x {n_triplets:,} "
            f"triplets) = 0: use at least {1 / n_triplets:.2g}, or leave out {omit} to write "
            "triplets.npy"
        )
    if held_out >= n_triplets:
        raise ValueError(
            f"{option} {fraction} leaves no training triplet, since round({fraction} x "
            f"{n_triplets:,} triplets) = {held_out:,}: use a smaller fraction or more triplets"
        )


def check_stale_outputs(out_dir: Path, planned: set[str]) -> None:
    """Reject a folder whose earlier triplet output has files this run would not replace.

    An earlier ``import-triplets`` or ``simulate`` run into ``out_dir`` listed
    its files in manifest.json. A file of that list which this run does not
    write (such as train.npy of an earlier ``--split`` run) would stay next to
    the new files, and ``dimalign fit`` would read it. The files are not
    deleted, because they may be the only copy.

    Args:
        out_dir (Path): The output folder (it need not exist).
        planned (set[str]): Names of the files this run writes into ``out_dir``.

    Raises:
        FileExistsError: Naming the stale files.
    """
    step, previous = _earlier_outputs(out_dir)
    stale = sorted(name for name in previous - planned if (out_dir / name).is_file())
    if stale:
        raise FileExistsError(
            f"{out_dir} contains {', '.join(stale)} from an earlier dimalign {step} "
            "run, which this run would not replace, so later steps could read the old "
            "triplets; choose another output folder, or remove those files yourself"
        )


def check_unowned_outputs(out_dir: Path, planned: set[str], step: str) -> None:
    """Reject an output file that exists but was not written by an earlier run of ``step``.

    The output folder may be the input folder or any folder of the user's, so a
    ``triplets.npy`` or ``objects.tsv`` there can be the only copy of the data.
    A file listed in the folder's ``manifest.json`` by an earlier run of the
    same step is replaced, which makes a rerun into the same folder work.

    Args:
        out_dir (Path): The output folder (it need not exist).
        planned (set[str]): Names of the files this run writes into ``out_dir``.
        step (str): The running step, for the message.

    Raises:
        FileExistsError: Naming the first such file.
    """
    previous = _earlier_outputs(out_dir)[1]
    for name in sorted(planned - previous):
        path = out_dir / name
        if path.exists() or path.is_symlink():
            raise FileExistsError(
                f"{path} exists and was not written by an earlier dimalign {step} run into "
                f"{out_dir}, so it may be the only copy of its data: move it away, or choose "
                "another output folder"
            )


def _earlier_outputs(out_dir: Path) -> tuple[str | None, set[str]]:
    """Return the step of an earlier triplet run into ``out_dir`` and the files it wrote."""
    from dimalign.io.files import MANIFEST_NAME, read_manifest

    if not (out_dir / MANIFEST_NAME).is_file():
        return None, set()
    manifest = read_manifest(out_dir)
    step = manifest.get("step")
    if step not in _TRIPLET_STEPS:
        return None, set()
    outputs = manifest.get("outputs", {})
    files = outputs.get("files", {}) if isinstance(outputs, dict) else None
    if not isinstance(files, dict) or not all(isinstance(name, str) for name in files.values()):
        # Without the list, the files of the folder cannot be distinguished from the user's.
        raise ValueError(
            f"{out_dir / MANIFEST_NAME} does not list the files of the earlier dimalign {step} "
            f"run as outputs.files, a mapping to file names (found {files!r}); the folder's "
            "record is damaged: choose another output folder, or remove that run's files and "
            "its manifest.json yourself"
        )
    return step, set(files.values())


def _read_simulate_objects(path: Path, n_objects: int, features: str):
    """Read the ``--objects`` table of ``simulate`` and check it has one name per feature row."""
    from dimalign.io.objects import read_object_table

    table = read_object_table(path)
    if len(table) != n_objects:
        raise ValueError(
            f"--objects {path} lists {len(table)} objects but the features {features} have "
            f"{n_objects} rows; pass an object table with one name per feature row, in row order"
        )
    return table


def _read_features_table(features_file: Path, n_objects: int):
    """Read the ``objects.tsv`` next to a features file, if any, and check its length."""
    from dimalign.io.objects import OBJECT_TABLE_NAME, read_object_table

    path = features_file.parent / OBJECT_TABLE_NAME
    if not path.is_file():
        return None
    table = read_object_table(path)
    if len(table) != n_objects:
        raise ValueError(
            f"{features_file} has {n_objects} rows but {path} lists {len(table)} objects; the "
            "table must name the feature rows in order: correct it, or name the rows with "
            "another table (--objects)"
        )
    return table


def _generated_table(n_objects: int):
    from dimalign.io.objects import ObjectTable

    return ObjectTable.from_ids([f"object_{index}" for index in range(n_objects)])


def _features_file(path: Path, layer: str | None) -> Path:
    """Return the file that ``load_features`` reads for ``path`` (for its checksum)."""
    if not path.is_dir():
        return path
    names = ["features.npy", "features.h5"]
    if layer:
        names.insert(0, f"features_{layer.replace('/', '_')}.npy")
    for name in names:
        if (path / name).is_file():
            return path / name
    return path
