"""The ``dimalign evaluate`` subcommand, and the hook for the other analysis subcommands.

``sweep``, ``select``, ``compare`` and ``map`` live in
:mod:`dimalign.analysis.compare_commands`. :func:`register` adds them when that
module exists, so the CLI lists one module for the whole analysis stage.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import shlex
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dimalign._warnings import warn
from dimalign.cli import add_examples, declare_output_folder

if TYPE_CHECKING:
    from dimalign.io.objects import ObjectTable

logger = logging.getLogger(__name__)

_COMPARE_MODULE = "dimalign.analysis.compare_commands"


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``evaluate`` (and the subcommands of ``compare_commands``) to ``dimalign``."""
    _register_evaluate(subparsers)

    import importlib

    try:
        compare_commands = importlib.import_module(_COMPARE_MODULE)
    except ModuleNotFoundError as error:
        # The module may not exist yet, but a missing package inside it is a real error.
        if error.name != _COMPARE_MODULE:
            raise
        return
    compare_commands.register(subparsers)


def _register_evaluate(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="score an embedding on triplets (accuracy, NLL, 48-object check, noise ceiling)",
        description="Score an embedding on odd-one-out triplets: accuracy of the largest dot "
        "product (ties split the credit), mean negative log-likelihood of the softmax choice "
        "model, the correlation with the 48-object human RDM when --things-dir is given and the "
        "embedding covers the 1,854 THINGS concepts, and the noise ceiling when some object "
        "sets were judged more than once. Writes metrics.json and manifest.json with -o.",
    )
    parser.add_argument(
        "embedding",
        metavar="EMBEDDING",
        help="run directory (embedding.npz inside), .npz, .npy or text file (n_objects x n_dims)",
    )
    parser.add_argument(
        "--triplets",
        required=True,
        metavar="FILE",
        help="triplet file in the canonical layout (0-based, odd one out last). Convert other "
        "layouts with 'dimalign import-triplets' first",
    )
    objects = parser.add_mutually_exclusive_group()
    objects.add_argument(
        "--n-objects",
        type=int,
        help="number of objects the triplets refer to, checked against the embedding's rows "
        "(default: the embedding's rows)",
    )
    objects.add_argument(
        "--objects",
        metavar="TABLE",
        help="object table (objects.tsv, or one name per line like THINGS unique_id.txt) naming "
        "the embedding's rows; its length must equal the rows, and the 48-object check finds its "
        "objects by these ids (default: a run directory's own objects.tsv)",
    )
    parser.add_argument(
        "--things-dir",
        metavar="DIR",
        help="THINGS data directory with RDM48_triplet.mat, words48.csv and unique_id.txt, "
        "for the 48-object check",
    )
    parser.add_argument(
        "--device",
        default="cpu",
        help="torch device for the similarity computation: cpu, cuda or auto (default: cpu)",
    )
    parser.add_argument(
        "-o",
        "--out",
        metavar="OUTDIR",
        help="also write metrics.json and manifest.json into this directory (the metrics are "
        "always printed to standard output as one JSON object)",
    )
    parser.set_defaults(handler=run_evaluate)
    add_examples(parser, "dimalign evaluate run --triplets triplets/val.npy --things-dir THINGS_DIR")
    declare_output_folder(parser, "evaluate")


def run_evaluate(args: argparse.Namespace) -> int:
    """Handle ``dimalign evaluate``."""
    from dimalign.analysis.evaluate import evaluate_embedding, format_metrics
    from dimalign.device import resolve_device
    from dimalign.io.files import (
        check_output_dir,
        check_unowned_files,
        check_writable,
        now_iso,
        replace_non_finite,
        report_leftover_stages,
        staged_outputs,
        write_json_atomic,
        write_manifest,
    )
    from dimalign.io.objects import read_object_table
    from dimalign.io.runs import load_embedding
    from dimalign.io.triplets import load_triplets

    started = now_iso()
    # Check the device even when no similarity matrix is computed, so that a
    # wrong --device fails here instead of being recorded in the manifest.
    resolve_device(args.device)
    if args.out:
        check_output_dir(args.out, "evaluate")
        check_writable(Path(args.out))
        check_unowned_files(args.out, ["metrics.json"], "evaluate")
        report_leftover_stages(Path(args.out))
        metrics_path = Path(args.out) / "metrics.json"
        if metrics_path.is_dir():
            # Otherwise the write fails only after scoring, with a bare "Is a directory".
            raise FileExistsError(
                f"{metrics_path} is a folder, but dimalign evaluate writes a file of that name: "
                "move the folder away, or choose another output folder"
            )
    _reject_unfinished_run(Path(args.embedding))
    result = load_embedding(args.embedding)
    n_rows = result.n_objects
    if n_rows < 3:
        raise ValueError(
            f"the embedding {result.path} has {n_rows} rows (objects), but a triplet needs 3 distinct "
            "objects: pass an embedding with one row per object"
        )
    table, table_path = _object_table(args)

    n_objects = n_rows
    if args.n_objects is not None:
        n_objects = args.n_objects
    elif table is not None:
        n_objects = len(table)
    if n_objects != n_rows:
        source = f" (the length of {table_path})" if args.n_objects is None else ""
        raise ValueError(
            f"the embedding {result.path} has {n_rows} objects but the triplets are declared "
            f"for {n_objects}{source}. Evaluate an embedding with triplets of the same objects."
        )

    reject_split_folder(Path(args.triplets), "score")
    _check_triplet_table(Path(args.triplets), result.path, n_rows, table, table_path)
    _warn_about_training_triplets(Path(args.embedding), Path(args.triplets))
    with empty_triplets_rejected_later():
        triplets = load_triplets(args.triplets, n_objects)
    if len(triplets) == 0:
        raise ValueError(
            f"{args.triplets} contains no triplets, so accuracy and likelihood are undefined: "
            "pass a file with at least one triplet"
        )
    metrics = evaluate_embedding(
        result, triplets, things_dir=args.things_dir, device=args.device,
        object_ids=list(table.object_ids) if table is not None else None,
    )
    logger.info("evaluated %s: %s", result.path, format_metrics(metrics))

    if args.out:
        out_dir = Path(args.out)
        inputs = {"embedding": result.path, "triplets": args.triplets}
        if table_path is not None:
            inputs["objects"] = table_path
        if "things48_r" in metrics:
            from dimalign.analysis.things48 import CONCEPTS_FILE, RDM_FILE, WORDS_FILE

            for name in (RDM_FILE, WORDS_FILE, CONCEPTS_FILE):
                inputs[name] = Path(args.things_dir) / name
        # Both files are written into a hidden folder and moved in together,
        # so a failed write leaves the folder as it was (or removes it).
        with staged_outputs(out_dir) as stage:
            write_json_atomic(stage / "metrics.json", metrics)
            write_manifest(
                stage,
                step="evaluate",
                inputs=inputs,
                settings={"n_objects": n_objects, "things_dir": args.things_dir, "device": args.device},
                started=started,
                outputs=metrics,
            )
        logger.info("wrote %s and %s", out_dir / "metrics.json", out_dir / "manifest.json")

    # The result also goes to standard output, so that -q (which hides the log
    # line above) still shows it and a script can read it. It is printed after
    # the files are written, so that printed metrics always come with exit
    # status 0. JSON has no NaN, so a metric that is not finite (an NLL whose
    # dot products overflowed) is null.
    print(json.dumps(replace_non_finite(metrics), allow_nan=False))
    return 0


def _check_triplet_table(
    triplets: Path, embedding: Path, n_rows: int, table: ObjectTable | None, table_path: Path | None
) -> None:
    """Check the ``objects.tsv`` next to the triplets (or in their folder) against the embedding.

    ``dimalign fit`` reads that table for the objects that the triplets index,
    so ``evaluate`` reads it too. A table of another length is an error,
    because the triplets then index other objects than the embedding's rows.
    Other ids in the same number are only logged as a warning, since one of
    the two tables may only number the objects (``object_0``, ...).

    Raises:
        ValueError: Naming the table, its length and the embedding's rows.
    """
    from dimalign.io.files import is_same_file
    from dimalign.io.objects import OBJECT_TABLE_NAME, read_object_table

    triplet_table_path = (triplets if triplets.is_dir() else triplets.parent) / OBJECT_TABLE_NAME
    if not triplet_table_path.is_file():
        return
    if table_path is not None and is_same_file(triplet_table_path, table_path):
        return
    try:
        triplet_table = read_object_table(triplet_table_path)
    except ValueError as error:
        raise ValueError(
            f"{error} (dimalign evaluate reads {triplet_table_path} because it lies next to the "
            "triplets: fix it, or move it away if it does not belong to them)"
        ) from error
    described = f"{triplet_table_path}, the object table of the triplets {triplets},"
    if len(triplet_table) != n_rows:
        raise ValueError(
            f"{described} lists {len(triplet_table)} objects, but the embedding {embedding} has "
            f"{n_rows} rows, so the triplets index other objects: score the embedding on triplets "
            "of its own objects, or move the table away if it does not belong to the triplets"
        )
    logger.info("checked %s against the embedding's rows", triplet_table_path)
    if table is None or tuple(table.object_ids) == tuple(triplet_table.object_ids):
        return
    row = next(
        row for row, (ours, theirs) in enumerate(zip(triplet_table.object_ids, table.object_ids))
        if ours != theirs
    )
    logger.warning(
        "%s names row %d %r, but %s names the embedding's row %d %r: if both tables are right, the "
        "triplets index other objects than the embedding's rows",
        described, row, triplet_table.object_ids[row], table_path, row, table.object_ids[row],
    )


def _object_count_option(inputs: dict[str, Any], settings: dict[str, Any]) -> str:
    """Return the import-triplets option that gives the fit's number of objects, quoted for a shell.

    import-triplets never takes the count from the largest index, so the
    suggested command needs the object table that the fit read or its count.
    """
    table = inputs.get("objects")
    if isinstance(table, dict) and table.get("path"):
        return f" --objects {shlex.quote(str(table['path']))}"
    n_objects = settings.get("n_objects")
    if isinstance(n_objects, int):
        return f" --n-objects {n_objects}"
    return " --n-objects N"


def _warn_about_training_triplets(run: Path, triplet_path: Path) -> None:
    """Warn when ``--triplets`` is the file that a run of ``dimalign fit`` trained on.

    Scoring the training triplets (or the whole file that the fit split)
    gives an accuracy well above the held-out one. The file is recognised by
    the SHA-256 that the run's manifest records for its training input, or of
    the ``train.npy`` in the run folder (which ``dimalign run`` writes).
    """
    from dimalign.io.files import read_manifest, sha256_file

    if not (run.is_dir() and triplet_path.is_file()):
        return
    try:
        manifest = read_manifest(run)
    except (FileNotFoundError, ValueError):
        return
    if manifest.get("step") != "fit":
        return
    digest = sha256_file(triplet_path)
    # Parts of a hand-edited or damaged manifest that are not JSON objects are skipped.
    inputs = manifest.get("inputs")
    inputs = inputs if isinstance(inputs, dict) else {}
    training = [inputs.get("train"), inputs.get("triplets")]
    if not any(isinstance(entry, dict) and entry.get("sha256") == digest for entry in training):
        if not ((run / "train.npy").is_file() and sha256_file(run / "train.npy") == digest):
            return
        training = []
    settings = manifest.get("settings")
    settings = settings if isinstance(settings, dict) else {}
    split = settings.get("validation_split")
    fraction = split.get("val_fraction") if isinstance(split, dict) else None
    seed = split.get("split_seed") if isinstance(split, dict) else None
    if training and _is_number(fraction) and _is_number(seed):
        warn(
            f"--triplets {triplet_path} is the file that {run} was fitted to, and the fit held out only "
            f"{fraction:.0%} of its triplets and trained on the rest, so the accuracy is not held out. "
            f"To score the held-out triplets, write them with 'dimalign import-triplets "
            f"{shlex.quote(str(triplet_path))}"
            f"{_object_count_option(inputs, settings)} --split {fraction:g} --seed {seed} -o FOLDER' and "
            "pass FOLDER/val.npy"
        )
        return
    held_out = None
    if (run / "val.npy").is_file():
        held_out = run / "val.npy"
    elif isinstance(inputs.get("val"), dict):
        held_out = inputs["val"].get("path")
    advice = "pass triplets that the fit did not train on"
    if held_out:
        advice = f"pass the held-out triplets, {held_out}"
    warn(
        f"--triplets {triplet_path} contains the training triplets of {run}, so the accuracy is not held "
        f"out: {advice}"
    )


def _is_number(value: Any) -> bool:
    """Return whether a manifest value is a number, which JSON ``true`` and ``false`` are not."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _reject_unfinished_run(path: Path) -> None:
    """Raise ``FileNotFoundError`` for a run directory whose fit stopped before writing ``embedding.npz``."""
    from dimalign.embedding.checkpoint import CHECKPOINT_NAME
    from dimalign.io.runs import EMBEDDING_NAME

    if path.is_dir() and not (path / EMBEDDING_NAME).exists() and (path / CHECKPOINT_NAME).is_file():
        raise FileNotFoundError(
            f"{path} contains {CHECKPOINT_NAME} but no {EMBEDDING_NAME}, so its fit has not finished: "
            f"finish it with 'dimalign fit ... --resume -o {path}' and the same triplets and settings, "
            "then evaluate it"
        )


def reject_split_folder(path: Path, purpose: str, option: str = "--triplets") -> None:
    """Reject a triplet folder that contains ``val.npy`` next to the file a folder loads.

    A folder loads its one ``train*`` or ``triplets`` file, as ``dimalign fit``
    needs, so a command meant for held-out triplets would silently use the
    training ones. A folder without such a file gets the loader's own error.

    Args:
        path (Path): The folder (any other path passes).
        purpose (str): What the command does with the triplets, such as ``"score"``.
        option (str): The option that named ``path``, for the message.

    Raises:
        ValueError: Naming the file the folder would load and its ``val.npy``.
    """
    from dimalign.io.triplets import find_triplet_file

    if not (path.is_dir() and (path / "val.npy").is_file()):
        return
    try:
        loaded = find_triplet_file(path)
    except (FileNotFoundError, ValueError):
        return
    raise ValueError(
        f"{option} {path} is a folder, which loads {loaded.name}, the training triplets of a split, "
        f"not the held-out {path / 'val.npy'}: pass the triplet file to {purpose} itself, such as "
        f"{path / 'val.npy'}"
    )


@contextlib.contextmanager
def empty_triplets_rejected_later() -> Iterator[None]:
    """Silence the warning of ``load_triplets`` about an empty file, for a caller that then raises.

    The command's own error names the file and what to do, so the warning
    would only repeat it in the log.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".* contains no triplets$", category=UserWarning)
        yield


def _object_table(args: argparse.Namespace) -> tuple[ObjectTable | None, Path | None]:
    """Return the object table of the evaluated rows and its path, or (None, None).

    ``--objects`` names the table. Without it a run directory's own
    ``objects.tsv`` is used. A plain embedding file uses only ``--objects``,
    because an ``objects.tsv`` in its folder may belong to another file. A
    run's ``objects.tsv`` that lists other ids or another order than
    ``--objects`` is an error.
    """
    from dimalign.io.objects import OBJECT_TABLE_NAME, read_object_table

    location = Path(args.embedding)
    own_path = location / OBJECT_TABLE_NAME
    own = read_object_table(own_path) if location.is_dir() and own_path.is_file() else None
    if not args.objects:
        return own, (own_path if own is not None else None)
    requested = read_object_table(args.objects)
    if own is not None and tuple(own.object_ids) != tuple(requested.object_ids):
        raise ValueError(
            f"--objects {args.objects} differs from {own_path}, the object table of the run "
            f"{location}: a run's rows follow its own objects.tsv, so leave out --objects or pass "
            "that table"
        )
    return requested, Path(args.objects)
