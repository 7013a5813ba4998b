"""``dimalign fit``: fit VICE or SPoSE to a triplet file and write a run directory."""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from dimalign.cli import add_examples, declare_output_folder, written_line
from dimalign.io.files import count_of

if TYPE_CHECKING:
    # Imported for the annotation only: the CLI imports torch when a command runs.
    from dimalign.embedding.base import TripletEmbedding

logger = logging.getLogger(__name__)

# Default share of object sets held out when neither --val nor --val-fraction is given.
DEFAULT_VAL_FRACTION = 0.1

# Estimator options of one method, as (option, attribute) pairs. The other method ignores them.
VICE_ONLY_OPTIONS = (
    ("--prior", "prior"), ("--pi", "pi"), ("--spike", "spike"), ("--slab", "slab"),
    ("--beta", "beta"), ("--mc-samples", "mc_samples"),
)
SPOSE_ONLY_OPTIONS = (("--l1", "l1"),)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``fit`` subcommand.

    Args:
        subparsers (argparse._SubParsersAction): The subcommands of ``dimalign``.
    """
    parser = subparsers.add_parser(
        "fit",
        help="fit a sparse non-negative embedding (VICE or SPoSE) to triplets",
        description=(
            "Fit VICE (default) or SPoSE to odd-one-out triplets and write a run directory "
            "with embedding.npz, config.toml, history.csv, checkpoint.pt and manifest.json."
        ),
    )
    add_training_data_arguments(parser)
    parser.add_argument("-o", "--out", type=Path, required=True, help="run directory to write")
    parser.add_argument("--method", choices=("vice", "spose"), default="vice", help="estimator (default vice)")
    parser.add_argument("--n-dims", type=int, help="initial dimensions (default 150 for VICE, 100 for SPoSE)")
    parser.add_argument("--max-epochs", type=int, help="maximum epochs (default 1000 VICE, 500 SPoSE)")
    parser.add_argument("--stability-epochs", type=int, help="stop after this many epochs without a change in kept dimensions (default 500)")
    parser.add_argument(
        "--min-objects", type=int,
        help="keep a dimension when more than this many objects weight it (VICE: significantly "
        "above 0; SPoSE: above 0.1) (default 5; lower it for a few dozen objects)",
    )
    parser.add_argument("--batch-size", type=int, default=256, help="triplets per step (default 256)")
    parser.add_argument("--lr", type=float, default=0.001, help="Adam learning rate (default 0.001)")
    # These options default to None so that one given with the other method is
    # detected. The estimator classes hold the defaults named in the help.
    parser.add_argument("--prior", choices=("mixture", "authors"), help="VICE prior (default mixture)")
    parser.add_argument("--pi", type=float, help="VICE spike weight (default 0.5)")
    parser.add_argument("--spike", type=float, help="VICE spike sd (default 0.25)")
    parser.add_argument("--slab", type=float, help="VICE slab sd (default 2.0)")
    parser.add_argument(
        "--beta", type=float,
        help="VICE weight of the complexity term (log q - log p) in the loss (default 1.0)",
    )
    parser.add_argument("--mc-samples", type=int, help="VICE samples in the posterior predictive (default 20)")
    parser.add_argument("--l1", type=float, help="SPoSE L1 weight (default 0.008)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda or auto")
    parser.add_argument(
        "--threads", type=_thread_count, default=1,
        help="torch CPU threads, at most the number of CPUs (default 1, as in 'dimalign sweep', "
        "which gives the same embedding for a seed; more threads help only on free cores, see "
        "docs/embedding.md)",
    )
    parser.add_argument("--checkpoint-every", type=int, default=50, help="epochs between checkpoints (default 50)")
    parser.add_argument("--resume", action="store_true", help="continue from checkpoint.pt in the run directory")
    parser.add_argument("--tensorboard", action="store_true", help="write TensorBoard event files")
    parser.set_defaults(handler=run_fit)
    add_examples(
        parser, "dimalign fit triplets -o run --max-epochs 20",
        "dimalign fit train.npy --val val.npy --n-objects 1854 -o runs/spose --method spose",
    )
    declare_output_folder(parser, "fit")


def _thread_count(text: str) -> int:
    # argparse names the type function in its own message about a ValueError.
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer: use 1 or more") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is invalid: use 1 or more")
    # More threads than CPUs only wait on each other. On a 2-CPU machine, one
    # epoch on the human THINGS triplets took 4 s with 1 thread and 55 s with
    # 1,000, and 100,000 threads crashed the process for lack of memory.
    n_cpus = os.cpu_count()
    if n_cpus is not None and value > n_cpus:
        raise argparse.ArgumentTypeError(
            f"{value} is invalid: this machine has {n_cpus} CPUs, so use 1 to {n_cpus}"
        )
    return value


def add_training_data_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the training-data options shared by ``fit`` and ``sweep``.

    Args:
        parser (argparse.ArgumentParser): The parser of the subcommand.
    """
    parser.add_argument(
        "triplets",
        type=Path,
        help="training triplets: a file (.npy/.txt/.tsv/.csv, 0-based, odd one out last) or a "
        "folder from 'dimalign import-triplets' or 'dimalign simulate' (train.npy and val.npy, "
        "or one triplet file). An objects.tsv in the folder or next to the file gives the "
        "number of objects",
    )
    objects = parser.add_mutually_exclusive_group()
    objects.add_argument("--n-objects", type=int, help="number of objects")
    objects.add_argument("--objects", type=Path, help="object table (objects.tsv or one name per line)")
    parser.add_argument("--val", type=Path, help="validation triplets (default: split from the training file)")
    parser.add_argument(
        "--val-fraction", type=float,
        help="fraction of object sets held out for validation when --val is not given "
        f"(default {DEFAULT_VAL_FRACTION}; 0 for none)",
    )
    parser.add_argument(
        "--split-seed", type=int, default=0,
        help="seed of the validation split (default 0), apart from --seed so that fits with "
        "other seeds are validated on the same triplets",
    )


def load_training_data(
    args: argparse.Namespace,
) -> tuple[np.ndarray, np.ndarray | None, int, object, dict, dict | None]:
    """Load training and validation triplets, the number of objects and the object table.

    Args:
        args (argparse.Namespace): Options added by :func:`add_training_data_arguments`.

    Returns:
        tuple: ``(train, val, n_objects, object_table, inputs, split)``. ``val``
        is None when nothing is held out, ``inputs`` names the files read, and
        ``split`` is ``{"val_fraction", "split_seed"}`` when the validation
        triplets were split off here (None otherwise).

    Raises:
        FileNotFoundError: If the triplet path does not exist, or is a folder
            without a triplet file.
        ValueError: If ``--val-fraction`` is given together with validation
            triplets (``--val``, or val.npy in the training folder), lies
            outside ``[0, 1)``, or would leave the training or the validation
            triplets empty.
    """
    from dimalign.io.triplets import find_triplet_file, load_triplets

    source = args.triplets
    # Found first, so that a mistyped path is named as such rather than
    # reported as an unknown number of objects.
    if not source.exists():
        raise FileNotFoundError(f"triplet file or folder {source} not found: check the path")
    train_path = find_triplet_file(source) if source.is_dir() else source

    table, table_path, neighbour_table, n_objects = _objects_of_training_data(args, source)

    check_validation_options(args)
    inputs = {}
    if source.is_dir() and args.val is None and (source / "val.npy").is_file():
        args.val = source / "val.npy"
    elif source.is_dir() and args.val is None:
        _warn_about_unread_held_out_files(source, train_path, getattr(args, "command", None) or "the fit")
    try:
        train = load_triplets(train_path, n_objects)
    except ValueError as error:
        if not neighbour_table or "out of range" not in str(error):
            raise
        raise ValueError(
            f"{error}. The {n_objects} objects come from {table_path}, which dimalign fit reads because it "
            "lies next to the triplets: pass the table that the triplets index with --objects, or move "
            "this one away"
        ) from error
    inputs["train"] = train_path
    train, val, split = _validation_triplets(args, train, train_path, n_objects, inputs)
    if table_path is not None:
        inputs["objects"] = table_path
    return train, val, n_objects, table, inputs, split


def _objects_of_training_data(args: argparse.Namespace, source: Path) -> tuple[object, Path | None, bool, int]:
    """Return the object table, its path, whether it lies next to the triplets, and the object count.

    The table is ``--objects``, else the ``objects.tsv`` next to the
    triplets (or in their folder). The count is ``--n-objects``, else the
    length of the table.

    Raises:
        ValueError: If the table next to the triplets cannot be read, if
            ``--n-objects`` disagrees with the table, or if neither gives
            the number of objects.
    """
    from dimalign.io.objects import OBJECT_TABLE_NAME, read_object_table

    table = read_object_table(args.objects) if args.objects else None
    table_path = args.objects
    # A triplet file reads the objects.tsv next to it, as a folder reads its own.
    folder_table_path = (source if source.is_dir() else source.parent) / OBJECT_TABLE_NAME
    neighbour_table = table is None and folder_table_path.is_file()
    if neighbour_table:
        table_path = folder_table_path
        try:
            table = read_object_table(table_path)
        except ValueError as error:
            raise ValueError(
                f"{error} (dimalign fit reads {table_path} because it lies next to the triplets: "
                "fix it, or pass the right table with --objects)"
            ) from error
        logger.info(
            "using the object table %s, which lies next to the triplets, for the objects; pass "
            "--objects to use another table", table_path,
        )
    elif table is not None and folder_table_path.is_file():
        _warn_if_tables_differ(table, args.objects, folder_table_path)
    n_objects = args.n_objects
    if n_objects is not None and table is not None and n_objects != len(table):
        raise ValueError(
            f"--n-objects {n_objects} disagrees with {table_path}, which lists {len(table)} objects; "
            "leave out --n-objects or pass the object table that the triplets index"
        )
    if n_objects is None and table is not None:
        n_objects = len(table)
    if n_objects is None:
        raise ValueError("the number of objects is unknown: pass --n-objects N or --objects objects.tsv")
    return table, table_path, neighbour_table, n_objects


def _validation_triplets(
    args: argparse.Namespace, train: np.ndarray, train_path: Path, n_objects: int, inputs: dict
) -> tuple[np.ndarray, np.ndarray | None, dict | None]:
    """Return the training triplets, the validation triplets and the split, adding ``--val`` to ``inputs``.

    The validation triplets come from ``--val``, else from a seeded split of
    ``--val-fraction`` of the training triplets, else there are none.
    """
    from dimalign.analysis.commands import reject_split_folder
    from dimalign.io.triplets import load_triplets, split_triplets

    val = None
    split = None
    if args.val is not None:
        reject_split_folder(args.val, "validate on", option="--val")
        val = load_triplets(args.val, n_objects)
        inputs["val"] = args.val
        if np.array_equal(train, val):
            logger.warning(
                "the validation triplets of %s are the training triplets of %s, so the held-out "
                "accuracy that fit records is the training accuracy: pass triplets that the fit "
                "does not train on, or leave out --val to hold out a share (--val-fraction)",
                args.val, train_path,
            )
    elif (val_fraction := _val_fraction(args)) > 0:
        check_split_fraction(args, val_fraction, len(train), train_path)
        train, val = split_triplets(train, val_fraction=val_fraction, random_state=args.split_seed)
        split = {"val_fraction": val_fraction, "split_seed": args.split_seed}
    return train, val, split


def _warn_about_unread_held_out_files(folder: Path, train_path: Path, command: str) -> None:
    """Log a warning naming triplet files of ``folder`` that look held out but are not read.

    A folder supplies its one ``train*`` or ``triplets.*`` file and ``val.npy``.
    In other layouts, such as ``train_90.npy`` next to ``test_10.npy``, the
    fit would validate on a split of the training file while the user
    believes that the test file is used.
    """
    from dimalign.io.triplets import TRIPLET_SUFFIXES

    unread = sorted(
        entry for entry in folder.iterdir()
        if entry.is_file()
        and entry.suffix.lower() in TRIPLET_SUFFIXES
        and entry.name.lower().startswith(("test", "val"))
        and entry != train_path
    )
    if unread:
        names = ", ".join(entry.name for entry in unread)
        logger.warning(
            "%s also contains %s, which %s does not read: a folder supplies only its training file "
            "(%s) and val.npy. Pass --val %s to validate on that file instead of a split of the "
            "training file",
            folder, names, command, train_path.name, unread[0],
        )


def _warn_if_tables_differ(requested, requested_path: Path, folder_table_path: Path) -> None:
    """Log a warning when ``--objects`` names the rows otherwise than the triplets' objects.tsv.

    ``--objects`` is used, as asked, because it may name rows that the folder
    only numbers (``object_0``, ...). Where both are real names, a difference
    relabels the rows of the run, so it is not passed over in silence. A
    folder table that cannot be read is not compared, since ``--objects``
    may be given in its place.

    Raises:
        ValueError: If the two tables list different numbers of objects.
    """
    from dimalign.io.objects import read_object_table

    try:
        folder_table = read_object_table(folder_table_path)
    except ValueError as error:
        logger.info("not comparing --objects with %s, which cannot be read: %s", folder_table_path, error)
        return
    if tuple(requested.object_ids) == tuple(folder_table.object_ids):
        return
    if len(requested) != len(folder_table):
        # Tables of other lengths cannot name the same rows.
        raise ValueError(
            f"--objects {requested_path} lists {len(requested)} objects, but {folder_table_path} "
            f"lists {len(folder_table)}, so the triplets index another object set: leave out "
            "--objects to use the table next to the triplets, or pass a table of the same objects"
        )
    row = next(
        row for row, (new, old) in enumerate(zip(requested.object_ids, folder_table.object_ids)) if new != old
    )
    difference = (
        f"names row {row} {requested.object_ids[row]!r}, but {folder_table_path} names it "
        f"{folder_table.object_ids[row]!r}"
    )
    logger.warning(
        "--objects %s %s: the run's rows are named by --objects. If the folder's table is right, "
        "leave out --objects",
        requested_path, difference,
    )


def check_validation_options(args: argparse.Namespace) -> None:
    """Reject a ``--val-fraction`` that would be ignored or is out of range.

    Args:
        args (argparse.Namespace): The parsed options of ``fit`` or ``sweep``.

    Raises:
        ValueError: Naming both options, or the invalid fraction.
    """
    if args.val_fraction is None:
        return
    if not 0.0 <= args.val_fraction < 1.0:
        raise ValueError(
            f"--val-fraction {args.val_fraction} is invalid: use a fraction of at least 0 and "
            "below 1, such as 0.1"
        )
    if args.val is not None:
        raise ValueError(
            f"--val {args.val} and --val-fraction {args.val_fraction} both set the validation "
            "triplets: pass only one of them"
        )
    folder_val = args.triplets / "val.npy"
    if args.triplets.is_dir() and folder_val.is_file():
        raise ValueError(
            f"{args.triplets} contains validation triplets ({folder_val}), so --val-fraction "
            f"{args.val_fraction} would be ignored: drop --val-fraction, or pass the training "
            "file itself to split it"
        )


def _val_fraction(args: argparse.Namespace) -> float:
    return DEFAULT_VAL_FRACTION if args.val_fraction is None else args.val_fraction


def check_method_options(args: argparse.Namespace) -> None:
    """Reject estimator options that the chosen ``--method`` ignores.

    Args:
        args (argparse.Namespace): The parsed options of ``fit`` or ``sweep``.

    Raises:
        ValueError: Naming the option and the method.
    """
    other = SPOSE_ONLY_OPTIONS if args.method == "vice" else VICE_ONLY_OPTIONS
    other_method = "spose" if args.method == "vice" else "vice"
    misplaced = [option for option, attribute in other if getattr(args, attribute) is not None]
    if misplaced:
        verb = "applies" if len(misplaced) == 1 else "apply"
        raise ValueError(
            f"{', '.join(misplaced)} {verb} only to --method {other_method}, but --method is "
            f"{args.method}: drop {', '.join(misplaced)} or pass --method {other_method}"
        )


def build_estimator(args: argparse.Namespace) -> TripletEmbedding:
    """Build the VICE or SPoSE estimator from command-line options.

    Args:
        args (argparse.Namespace): The parsed options of ``fit`` or ``sweep``.

    Returns:
        TripletEmbedding: An unfitted estimator. Options left at None take
        the estimator's defaults.
    """
    from dimalign.embedding import SPoSE, VICE

    common = {
        "batch_size": args.batch_size, "lr": args.lr, "random_state": args.seed, "device": args.device,
        "checkpoint_every": args.checkpoint_every, "resume": args.resume,
        "tensorboard": args.tensorboard, "verbose": True,
    }
    for name in ("n_dims", "max_epochs", "stability_epochs", "min_objects"):
        value = getattr(args, name)
        if value is not None:
            common[name] = value
    if args.method == "spose":
        names = [attribute for _, attribute in SPOSE_ONLY_OPTIONS]
        estimator_class = SPoSE
    else:
        names = [attribute for _, attribute in VICE_ONLY_OPTIONS]
        estimator_class = VICE
    specific = {name: getattr(args, name) for name in names if getattr(args, name) is not None}
    return estimator_class(**specific, **common)


def run_fit(args: argparse.Namespace) -> int:
    """Handle ``dimalign fit``.

    Args:
        args (argparse.Namespace): The parsed options of ``fit``.

    Returns:
        int: The exit status, 0.
    """
    from dimalign.analysis.commands import empty_triplets_rejected_later
    from dimalign.embedding import fit_run
    from dimalign.io.files import check_output_dir, check_writable
    from dimalign.parallel import limit_torch_threads

    check_method_options(args)
    check_validation_options(args)
    check_output_dir(args.out, "fit")
    # Without an object table, nothing is written before the first checkpoint.
    check_writable(args.out)
    # check_fit_triplets below rejects an empty file with an error that names it.
    val_given = args.val is not None
    with empty_triplets_rejected_later():
        train, val, n_objects, table, inputs, split = load_training_data(args)
    check_fit_triplets(train, val, inputs, val_given)
    estimator = build_estimator(args)
    if estimator.stability_epochs >= estimator.max_epochs:
        # The count of epochs with unchanged dimensions stays below the epoch number.
        # A run shortened with --max-epochs alone is common and meant, so it is only noted.
        level = logging.WARNING if args.stability_epochs is not None else logging.INFO
        logger.log(
            level,
            "--stability-epochs %d is not below --max-epochs %d, so the fit cannot stop before epoch "
            "%d: lower --stability-epochs below --max-epochs to let it stop once the kept dimensions "
            "stay the same", estimator.stability_epochs, estimator.max_epochs, estimator.max_epochs,
        )
    # Intra-op threads slow the small per-batch operations of VICE and SPoSE
    # down on a CPU, and one thread also fixes the order of reductions.
    with limit_torch_threads(args.threads):
        fit_run(estimator, train, val, args.out, n_objects=n_objects, object_table=table, inputs=inputs, split=split)
    print(fit_summary(args.out))
    return 0


def fit_summary(out_dir: Path) -> str:
    """Return the line that ``dimalign fit`` prints, from the outputs in the run's ``manifest.json``.

    Args:
        out_dir (Path): A finished run directory.

    Returns:
        str: The run directory, the kept dimensions, the epochs and the
        held-out accuracy, such as ``wrote run: 12 dimensions kept after 20
        epochs (reached max_epochs), held-out accuracy 0.4512 on 300
        triplets``.
    """
    from dimalign.io.files import read_manifest

    outputs = read_manifest(out_dir)["outputs"]
    n_epochs = outputs["n_epochs"]
    epochs = count_of(n_epochs, "epoch")
    reason = "converged" if outputs["converged"] else "reached max_epochs"
    if "val_accuracy" in outputs:
        validation = f"held-out accuracy {outputs['val_accuracy']:.4f} on {outputs['n_val']} triplets"
    else:
        validation = "no validation triplets"
    return written_line(out_dir, f"{outputs['n_dims']} dimensions kept after {epochs} ({reason}), {validation}")


def check_fit_triplets(train: np.ndarray, val: np.ndarray | None, inputs: dict, val_given: bool) -> None:
    """Reject an empty training or validation file of ``dimalign fit``, naming it.

    The estimators reject empty triplets too, but without the file behind them.
    Args:
        train (np.ndarray): The training triplets.
        val (np.ndarray | None): The validation triplets, if any.
        inputs (dict): The input files, with ``"train"`` and, with validation
            triplets, ``"val"``.
        val_given (bool): Whether the validation triplets come from
            ``--val``, not from the ``val.npy`` of a training folder.

    Raises:
        ValueError: Naming the file, with what to do.
    """
    if len(train) == 0:
        raise ValueError(f"{inputs['train']} contains no triplets: check that it is the file of judgements")
    if val is not None and len(val) == 0:
        if val_given:
            without = "leave out --val and pass --val-fraction 0"
        else:
            without = f"pass the training file {inputs['train']} with --val-fraction 0"
        raise ValueError(
            f"the validation file {inputs['val']} contains no triplets, so no held-out accuracy can be "
            f"computed: pass a validation file with triplets (--val), or {without} to fit without "
            "validation"
        )


def check_split_fraction(args: argparse.Namespace, fraction: float, n_triplets: int, source: Path) -> None:
    """Reject a ``--val-fraction`` that leaves the validation or the training triplets empty.

    :func:`dimalign.io.triplets.split_triplets` holds out ``round(fraction x
    n)`` of the ``n`` triplets, so the rounding can leave either side empty.
    An empty file (``n = 0``) is left to the caller, which names it.

    Args:
        args (argparse.Namespace): The parsed options, for the option names.
        fraction (float): The validation fraction.
        n_triplets (int): The number of triplets to split.
        source (Path): The file that errors name.

    Raises:
        ValueError: Naming the fraction, the file and the rounding, with what to do.
    """
    if n_triplets == 0:
        return
    option = f"--val-fraction {fraction}" + (" (the default)" if args.val_fraction is None else "")
    if n_triplets == 1:
        raise ValueError(
            f"{source} contains 1 triplet, which cannot be split into training and validation "
            "triplets: pass --val-fraction 0 to fit without validation"
        )
    held_out = round(fraction * n_triplets)
    if held_out == 0:
        raise ValueError(
            f"{option} holds out no triplet of {source}, since round({fraction} x {n_triplets:,} "
            f"triplets) = 0: use at least {1 / n_triplets:.2g}, or --val-fraction 0 to fit "
            "without validation"
        )
    if held_out >= n_triplets:
        raise ValueError(
            f"{option} leaves no training triplet of {source}, since round({fraction} x "
            f"{n_triplets:,} triplets) = {held_out:,}: use a smaller fraction or more triplets"
        )
