"""``dimalign fit``: fit VICE or SPoSE to a triplet file and write a run directory."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``fit`` subcommand."""
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
    parser.add_argument("--batch-size", type=int, default=256, help="triplets per step (default 256)")
    parser.add_argument("--lr", type=float, default=0.001, help="Adam learning rate (default 0.001)")
    parser.add_argument("--prior", choices=("mixture", "authors"), default="mixture", help="VICE prior (default mixture)")
    parser.add_argument("--pi", type=float, default=0.5, help="VICE spike weight (default 0.5)")
    parser.add_argument("--spike", type=float, default=0.25, help="VICE spike sd (default 0.25)")
    parser.add_argument("--slab", type=float, default=2.0, help="VICE slab sd (default 2.0)")
    parser.add_argument("--mc-samples", type=int, default=20, help="VICE samples in the posterior predictive (default 20)")
    parser.add_argument("--l1", type=float, default=0.008, help="SPoSE L1 weight (default 0.008)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda or auto")
    parser.add_argument("--checkpoint-every", type=int, default=50, help="epochs between checkpoints (default 50)")
    parser.add_argument("--resume", action="store_true", help="continue from checkpoint.pt in the run directory")
    parser.add_argument("--tensorboard", action="store_true", help="write TensorBoard event files")
    parser.set_defaults(handler=run_fit)


def add_training_data_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the training-data options shared by ``fit`` and ``sweep``."""
    parser.add_argument(
        "triplets",
        type=Path,
        help="training triplets: a file (.npy/.txt/.tsv/.csv, 0-based, odd one out last) or a "
        "folder from 'dimalign simulate' (train.npy and val.npy, or one triplet file)",
    )
    objects = parser.add_mutually_exclusive_group()
    objects.add_argument("--n-objects", type=int, help="number of objects")
    objects.add_argument("--objects", type=Path, help="object table (objects.tsv or one name per line)")
    parser.add_argument("--val", type=Path, help="validation triplets (default: split from the training file)")
    parser.add_argument(
        "--val-fraction", type=float, default=0.1,
        help="fraction of object sets held out for validation when --val is not given (default 0.1; 0 for none)",
    )


def load_training_data(
    args: argparse.Namespace, split_seed: int
) -> tuple[np.ndarray, np.ndarray | None, int, object, dict]:
    """Load training and validation triplets, the number of objects and the object table.

    Args:
        args (argparse.Namespace): Options added by :func:`add_training_data_arguments`.
        split_seed (int): Seed of the validation split when ``--val`` is not given.

    Returns:
        tuple: ``(train, val, n_objects, object_table, inputs)``; ``val`` is None
        when nothing is held out, ``inputs`` names the files read.
    """
    from dimalign.io.objects import OBJECT_TABLE_NAME, read_object_table
    from dimalign.io.triplets import load_triplets, split_triplets

    table = read_object_table(args.objects) if args.objects else None
    source = args.triplets
    if table is None and args.n_objects is None and source.is_dir() and (source / OBJECT_TABLE_NAME).is_file():
        table = read_object_table(source / OBJECT_TABLE_NAME)
    n_objects = args.n_objects
    if n_objects is None and table is not None:
        n_objects = len(table)
    if n_objects is None:
        raise ValueError("the number of objects is unknown: pass --n-objects N or --objects objects.tsv")

    inputs = {}
    val = None
    if source.is_dir() and (source / "train.npy").is_file():
        train_path = source / "train.npy"
        train = load_triplets(train_path, n_objects)
        if args.val is None and (source / "val.npy").is_file():
            args.val = source / "val.npy"
    else:
        train_path = source
        train = load_triplets(source, n_objects)
    inputs["train"] = train_path
    if args.val is not None:
        val = load_triplets(args.val, n_objects)
        inputs["val"] = args.val
    elif args.val_fraction > 0:
        train, val = split_triplets(train, val_fraction=args.val_fraction, random_state=split_seed)
        logger.info("split %d training and %d validation triplets (seed %d)", len(train), len(val), split_seed)
    if args.objects:
        inputs["objects"] = args.objects
    return train, val, n_objects, table, inputs


def build_estimator(args: argparse.Namespace):
    """Build the VICE or SPoSE estimator from command-line options."""
    from dimalign.embedding import SPoSE, VICE

    common = {
        "batch_size": args.batch_size, "lr": args.lr, "random_state": args.seed, "device": args.device,
        "checkpoint_every": args.checkpoint_every, "resume": args.resume,
        "tensorboard": args.tensorboard, "verbose": True,
    }
    for name in ("n_dims", "max_epochs", "stability_epochs"):
        value = getattr(args, name)
        if value is not None:
            common[name] = value
    if args.method == "spose":
        return SPoSE(l1=args.l1, **common)
    return VICE(
        prior=args.prior, pi=args.pi, spike=args.spike, slab=args.slab, mc_samples=args.mc_samples, **common
    )


def run_fit(args: argparse.Namespace) -> int:
    """Handle ``dimalign fit``."""
    from dimalign.embedding import fit_run
    from dimalign.io.files import check_output_dir

    check_output_dir(args.out, "fit")
    train, val, n_objects, table, inputs = load_training_data(args, split_seed=args.seed)
    estimator = build_estimator(args)
    fit_run(estimator, train, val, args.out, n_objects=n_objects, object_table=table, inputs=inputs)
    return 0
