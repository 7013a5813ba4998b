"""Subcommands ``sweep``, ``select``, ``compare`` and ``map``.

Each handler parses its options, calls the library in
:mod:`dimalign.analysis.sweep`, :mod:`dimalign.analysis.selection`,
:mod:`dimalign.analysis.compare` or :mod:`dimalign.analysis.ridge`, and
writes files.
"""

from __future__ import annotations

import argparse
import logging
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from dimalign.cli import add_examples, declare_output_folder, print_written
from dimalign.features.recorded import add_decoding_options, recorded_decoding, resolve_decoding
from dimalign.embedding.commands import (
    add_training_data_arguments,
    check_method_options,
    load_training_data,
)
from dimalign.io.files import count_of

if TYPE_CHECKING:
    from dimalign.analysis.ridge import RidgeMap
    from dimalign.io.objects import ObjectTable

logger = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``sweep``, ``select``, ``compare`` and ``map`` subcommands."""
    _register_sweep(subparsers)
    _register_select(subparsers)
    _register_compare(subparsers)
    _register_map(subparsers)


# -- sweep --------------------------------------------------------------------


def _register_sweep(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "sweep",
        help="fit the same triplets with many seeds, in parallel",
        description=(
            "Fit one VICE (or SPoSE) embedding per seed into OUT/runs/seed_<seed>, in parallel "
            "local processes (one torch thread each) or on a Ray cluster. A seed gives the same "
            "embedding whichever engine runs it. A rerun reuses finished runs of the same "
            "settings and triplets and stops with an error on any difference."
        ),
    )
    add_training_data_arguments(parser)
    parser.add_argument("-o", "--out", type=Path, required=True, help="sweep directory to write")

    seeds = parser.add_mutually_exclusive_group()
    seeds.add_argument("--seeds", type=int, default=32, help="number of seeds, 0..N-1 from --first-seed (default 32)")
    seeds.add_argument("--seed-list", type=int, nargs="+", help="explicit seeds")
    parser.add_argument("--first-seed", type=int, default=0, help="first seed for --seeds (default 0)")
    parser.add_argument("--n-jobs", type=int, default=1, help="parallel workers (default 1)")
    parser.add_argument("--engine", choices=("local", "ray"), default="local", help="local processes (default) or Ray")
    parser.add_argument("--address", help="Ray cluster address ('auto' or ray://host:port); default starts Ray locally")

    parser.add_argument("--method", choices=("vice", "spose"), default="vice", help="estimator (default vice)")
    parser.add_argument("--n-dims", type=int, help="initial dimensions (default 150 for VICE, 100 for SPoSE)")
    parser.add_argument("--max-epochs", type=int, help="maximum epochs (default 1000 VICE, 500 SPoSE)")
    parser.add_argument("--stability-epochs", type=int, help="stop after this many epochs without a change in kept dimensions (default 500)")
    parser.add_argument("--min-objects", type=int, help="keep a dimension when more than this many objects weight it (default 5)")
    parser.add_argument("--batch-size", type=int, help="triplets per step (default 256)")
    parser.add_argument("--lr", type=float, help="Adam learning rate (default 0.001)")
    parser.add_argument("--mc-samples", type=int, help="VICE samples in the posterior predictive (default 20)")
    parser.add_argument("--prior", choices=("mixture", "authors"), help="VICE prior (default mixture)")
    parser.add_argument("--pi", type=float, help="VICE spike weight (default 0.5)")
    parser.add_argument("--spike", type=float, help="VICE spike sd (default 0.25)")
    parser.add_argument("--slab", type=float, help="VICE slab sd (default 2.0)")
    parser.add_argument("--beta", type=float, help="VICE weight of the complexity term (log q - log p) in the loss (default 1.0)")
    parser.add_argument("--l1", type=float, help="SPoSE L1 weight (default 0.008)")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda or auto, for every worker")
    parser.set_defaults(handler=run_sweep)
    add_examples(parser, "dimalign sweep triplets -o sweep --seed-list 0 1 --max-epochs 100")
    declare_output_folder(parser, "sweep")


def _estimator_settings(args: argparse.Namespace) -> dict:
    settings = {"device": args.device}
    names = ["n_dims", "max_epochs", "stability_epochs", "min_objects", "batch_size", "lr"]
    vice_only = ["mc_samples", "prior", "pi", "spike", "slab", "beta"]
    names += vice_only if args.method == "vice" else ["l1"]
    for name in names:
        value = getattr(args, name)
        if value is not None:
            settings[name] = value
    return settings


def run_sweep(args: argparse.Namespace) -> int:
    """Handle ``dimalign sweep``."""
    from dimalign.analysis.commands import empty_triplets_rejected_later
    from dimalign.analysis.sweep import sweep

    # Before the triplets are read, and with the option names that dimalign fit uses.
    check_method_options(args)
    # sweep() rejects an empty training or validation file with an error that names it.
    with empty_triplets_rejected_later():
        train, val, n_objects, table, inputs, _ = load_training_data(args)
    seeds = args.seed_list if args.seed_list else list(range(args.first_seed, args.first_seed + args.seeds))
    table_out = sweep(
        train, val, args.out, seeds=seeds, n_objects=n_objects, method=args.method,
        settings=_estimator_settings(args), object_table=table, n_jobs=args.n_jobs,
        engine=args.engine, address=args.address, inputs=inputs,
    )
    logger.info("wrote %d runs to %s", len(table_out), args.out)
    low, high = int(table_out["n_dims"].min()), int(table_out["n_dims"].max())
    dimensions = count_of(high, "dimension") if low == high else f"{low} to {high} dimensions"
    print_written(args.out, f"{count_of(len(table_out), 'run')}, {dimensions}")
    return 0


# -- select -------------------------------------------------------------------


def _register_select(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "select",
        help="choose the most reproducible run of a sweep",
        description=(
            "Score every run by the split-half reproducibility of its dimensions across the "
            "other runs and choose the highest. Writes runs.csv, dimensions.csv, selected.txt "
            "and manifest.json."
        ),
    )
    parser.add_argument("runs", type=Path, nargs="+", help="a sweep directory, or two or more run directories or embedding files")
    parser.add_argument(
        "-o", "--out", type=Path,
        help="output directory (default SWEEP/selection; required for runs given by path)",
    )
    parser.add_argument("--split", choices=("odd_even", "random"), default="odd_even", help="how to halve the objects (default odd_even)")
    parser.add_argument("--seed", type=int, help="seed of --split random (default 0)")
    parser.add_argument("--copy", action="store_true", help="also copy the chosen run to OUT/selected_run")
    parser.set_defaults(handler=run_select)
    add_examples(parser, "dimalign select sweep")
    declare_output_folder(parser, "select", _selection_folder)


def _selection_folder(args: argparse.Namespace) -> Path | None:
    """Return the folder that ``dimalign select`` writes: ``-o``, else ``SWEEP/selection`` for one sweep directory."""
    if args.out is not None:
        return args.out
    return args.runs[0] / "selection" if len(args.runs) == 1 else None


def run_select(args: argparse.Namespace) -> int:
    """Handle ``dimalign select``."""
    from dimalign.analysis.selection import find_runs, select_run
    from dimalign.analysis.sweep import RUNS_FOLDER

    if args.seed is not None and args.split != "random":
        raise ValueError(f"--seed {args.seed} only seeds --split random: drop it, or add --split random")
    if args.seed is not None and args.seed < 0:
        raise ValueError(f"--seed {args.seed} is invalid: use 0 or more")
    val = None
    if len(args.runs) == 1 and (args.runs[0] / RUNS_FOLDER).is_dir():
        sweep_dir = args.runs[0]
        run_dirs = find_runs(sweep_dir)
        out = args.out or sweep_dir / "selection"
        if (sweep_dir / "val.npy").is_file():
            from dimalign.io.files import load_npy

            val = load_npy(
                sweep_dir / "val.npy", description="the sweep's validation triplets",
                advice="restore the val.npy that the sweep was fitted to, which its runs' "
                "manifest.json files record by sha256",
            )
    else:
        if len(args.runs) < 2 and args.runs[0].name == RUNS_FOLDER and any(args.runs[0].glob("seed_*")):
            raise ValueError(
                f"{args.runs[0]} is the runs folder of a sweep: pass the sweep directory "
                f"{args.runs[0].parent}"
            )
        if len(args.runs) < 2:
            raise ValueError(
                f"{args.runs[0]} is not a sweep directory (no {RUNS_FOLDER}/ inside): "
                "pass a sweep directory or at least two run directories"
            )
        if args.out is None:
            raise ValueError("pass -o OUT when selecting among run directories")
        run_dirs, out = args.runs, args.out
    selection = select_run(
        run_dirs, out, split=args.split, random_state=args.seed or 0, val=val, copy_selected=args.copy
    )
    logger.info("selected %s; details in %s", selection.selected_run, out)
    selected = selection.runs[selection.runs["selected"]].iloc[0]
    print_written(out, (
        f"selected {selection.selected_run}, reproducibility {selected['reproducibility']:.3f}, "
        f"{count_of(int(selected['n_dims']), 'dimension')}"
    ))
    return 0


# -- compare ------------------------------------------------------------------


def _register_compare(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "compare",
        help="compare a human and a DNN embedding (RSA, matching, cumulative RSA, jackknife)",
        description=(
            "Compare two embeddings of the same objects: human-DNN RSA with a bootstrap "
            "interval, dimension matching, cumulative RSA, top objects per matched pair and, "
            "with --triplets, the jackknife relevance of dimensions."
        ),
    )
    parser.add_argument("human", type=Path, help="human run directory or embedding file")
    parser.add_argument("dnn", type=Path, help="DNN run directory or embedding file")
    parser.add_argument("-o", "--out", type=Path, required=True, help="output directory")
    parser.add_argument(
        "--objects", type=Path,
        help="object table (objects.tsv, or one name per line) naming the rows of each input without "
        "a table of its own: a run directory without objects.tsv, or an embedding file without an "
        "objects.tsv next to it. When both inputs have tables, it replaces the objects.tsv next to a "
        "plain embedding file. A run's own objects.tsv always stays. docs/compare.md lists every case",
    )
    parser.add_argument(
        "--shared-objects", action="store_true",
        help="compare only the objects that both object tables list, such as the THINGS objects among "
        "a DNN's photos, and leave out the others (default: the two sets must be equal)",
    )
    parser.add_argument(
        "--triplets", type=Path,
        help="triplet file (0-based indices in the human row order), such as held-out human triplets: "
        "each model's choice on them is explained by the dimension whose removal lowers its "
        "probability most (jackknife relevance)",
    )
    parser.add_argument("--images", type=Path, help="image folder for top-object grids")
    add_decoding_options(parser, "the extraction behind the embeddings")
    parser.add_argument("--bootstrap", type=int, default=1000, help="bootstrap samples of the RSA (default 1000)")
    parser.add_argument(
        "--rsa-method", choices=("pearson", "spearman"), default="pearson",
        help="correlation of the RSA, its bootstrap, the cumulative RSA and --reference-rsm: Pearson's r "
        "(default) or Spearman's rho, whose bootstrap is much slower",
    )
    parser.add_argument(
        "--chance-permutations", type=int, default=10,
        help="row permutations of the DNN embedding whose matched correlations give the chance level "
        "in matching_chance.csv (default 10, 0 to skip)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the bootstrap, object subset and permutations (default 0)")
    parser.add_argument("--top-k", type=int, default=10, help="objects per list of each matched pair (default 10)")
    parser.add_argument(
        "--similarity-objects", type=int,
        help="compute similarities and RSA on a random subset of this many objects (default all)",
    )
    parser.add_argument(
        "--cumulative-objects", type=int,
        help="random subset of objects for the cumulative RSA alone (default: as --similarity-objects)",
    )
    parser.add_argument("--reference-rsm", type=Path, help="ground-truth similarity matrix (.npy, square)")
    parser.add_argument("--reference-objects", type=Path, help="object table of --reference-rsm")
    parser.add_argument("--save-similarity", action="store_true", help="also write both similarity matrices (.npy)")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda or auto")
    parser.set_defaults(handler=run_compare)
    add_examples(
        parser,
        "dimalign compare runs/human runs/dnn -o compare --triplets human_triplets.txt",
        "dimalign compare spose_embedding_49d_sorted.txt runs/my_dnn -o compare --objects unique_id.txt "
        "--shared-objects",
    )
    declare_output_folder(parser, "compare")


def run_compare(args: argparse.Namespace) -> int:
    """Handle ``dimalign compare``."""
    from dimalign.analysis.compare import compare
    from dimalign.io.objects import read_object_table
    from dimalign.io.runs import load_embedding

    # The image settings are checked first, because they fail fast and the embeddings may be large.
    decoding = None
    if args.images is not None:
        decoding = resolve_decoding(args.background, args.exif_transpose, recorded_decoding(args.human, args.dnn))
    elif args.background is not None or args.exif_transpose is not None:
        raise ValueError(
            "--background and --no-exif-transpose set how the images of the top-object grids are "
            "decoded, and there are no grids without --images: pass --images or leave them out"
        )
    objects = read_object_table(args.objects) if args.objects else None
    inputs = {"objects": args.objects} if args.objects else {}
    reference = None
    if (args.reference_rsm is None) != (args.reference_objects is None):
        raise ValueError("pass --reference-rsm and --reference-objects together")
    if args.reference_rsm is not None:
        # Checked before the embeddings are read, so that a bad file fails first and is named.
        from dimalign.analysis.compare import check_reference_matrix

        reference_table = read_object_table(args.reference_objects)
        matrix = check_reference_matrix(
            _load_reference_matrix(args.reference_rsm), reference_table, source=args.reference_rsm
        )
        reference = (matrix, reference_table)
        inputs.update(reference_rsm=args.reference_rsm, reference_objects=args.reference_objects)
    triplets = None
    triplet_objects = None
    if args.triplets is not None:
        from dimalign.analysis.commands import reject_split_folder
        from dimalign.io.objects import OBJECT_TABLE_NAME

        reject_split_folder(args.triplets, "explain")
        # The triplets of a folder from simulate or import-triplets, and its val.npy, index
        # the rows of the folder's own table, which compare matches to the human rows by id.
        folder = args.triplets if args.triplets.is_dir() else args.triplets.parent
        if (folder / OBJECT_TABLE_NAME).is_file():
            triplet_objects = folder / OBJECT_TABLE_NAME
            inputs["triplet_objects"] = triplet_objects
            logger.info("the indices of --triplets %s are rows of %s", args.triplets, triplet_objects)
        if triplet_objects is not None:
            from dimalign.io.triplets import load_triplets

            triplets = load_triplets(args.triplets, object_table=triplet_objects)
        else:
            # Only the number of rows is needed here. compare() reads the file again
            # and gives its warnings (such as negative weights set to 0) then.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                n_human_objects = load_embedding(args.human).n_objects
            triplets = _load_compare_triplets(args.triplets, n_human_objects)
        if triplets.shape[0] == 0:
            raise ValueError(
                f"--triplets {args.triplets} contains no triplets, so there is no choice to explain: "
                "pass a file with at least one triplet, or leave out --triplets"
            )
        inputs["triplets"] = args.triplets
    result = compare(
        args.human, args.dnn, args.out, objects=objects, triplets=triplets, triplet_objects=triplet_objects,
        images=args.images,
        decoding=decoding,
        n_bootstrap=args.bootstrap, random_state=args.seed, top_k=args.top_k,
        similarity_objects=args.similarity_objects, cumulative_objects=args.cumulative_objects,
        reference=reference,
        save_similarity=args.save_similarity, device=args.device, inputs=inputs,
        shared_objects=args.shared_objects, chance_permutations=args.chance_permutations,
        rsa_method=args.rsa_method,
    )
    # The pairs of the matching that compare() reports in its log line.
    primary = result.matchings.get("greedy", result.matchings["with_replacement"])
    print_written(args.out, (
        f"human-DNN RSA {'r' if args.rsa_method == 'pearson' else 'Spearman rho'} {result.rsa.r:.3f}, {count_of(primary.correlations.size, 'matched dimension pair')}"
    ))
    return 0


def _load_reference_matrix(path: Path) -> np.ndarray:
    """Read the ``--reference-rsm`` file, a ``.npy`` array saved without pickling."""
    if not path.is_file():
        raise FileNotFoundError(f"--reference-rsm file {path} not found: pass a .npy similarity matrix")
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as error:
        # numpy's own message suggests allow_pickle=True, which would run code from the file.
        raise ValueError(
            f"--reference-rsm file {path} is not a .npy array of numbers: save the square "
            "similarity matrix with numpy.save (a text matrix can be read with numpy.loadtxt first)"
        ) from error


# Object indices up to this bound pass the first read of a --triplets file, so
# that an index beyond the compared objects gets an error in compare's terms.
_UNBOUNDED_OBJECTS = 2**62


def _load_compare_triplets(path: Path, n_objects: int) -> np.ndarray:
    """Load the ``--triplets`` file, whose indices refer to the rows of the human embedding.

    Raises:
        ValueError: From :func:`dimalign.io.triplets.load_triplets`, except
            that an index of ``n_objects`` or more is reported with the
            compared embeddings' number of objects instead of the load options
            of other commands.
    """
    from dimalign.io.triplets import load_triplets

    try:
        return load_triplets(path, n_objects)
    except ValueError as error:
        try:
            unbounded = load_triplets(path, _UNBOUNDED_OBJECTS)
        except ValueError:
            raise error from None
        rows = np.flatnonzero((unbounded >= n_objects).any(axis=1))
        if not rows.size:
            raise
        raise ValueError(
            f"--triplets {path}, row {int(rows[0])}: object index {int(unbounded[rows[0]].max())} is out "
            f"of range for the {n_objects} objects of the human embedding (indices 0 to "
            f"{n_objects - 1}); {rows.size} {'row has' if rows.size == 1 else 'rows have'} such "
            "indices. The triplets must index the rows of the human input"
        ) from error


# -- map ----------------------------------------------------------------------

# Each penalty of the grid costs one cross-validated fit of every dimension, so
# a grid of more penalties than this is a typing error (an N of 1e9 would also
# allocate 8 GB before any fit).
MAX_ALPHAS = 1000
MAX_SEED = 2**32 - 1


def _register_map(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "map",
        help="fit cross-validated ridge maps from DNN features to embedding dimensions",
        description=(
            "Fit one ridge regression per embedding dimension from a layer's features, with the "
            "penalty chosen by k-fold cross-validation. Writes ridge_map.npz, ridge_map.csv "
            "(penalty and cross-validated R² per dimension) and manifest.json. Feature and "
            "embedding rows are matched by object id through the objects.tsv of each input (in "
            "its folder, or beside its file), which both inputs or neither must have. Without "
            "tables, rows are matched by position."
        ),
    )
    parser.add_argument("features", type=Path, help="feature folder (from 'dimalign extract') or file")
    parser.add_argument("--embedding", type=Path, required=True, help="run directory or embedding file")
    parser.add_argument("-o", "--out", type=Path, required=True, help="output directory")
    parser.add_argument("--layer", help="layer inside a multi-layer feature file or folder")
    parser.add_argument(
        "--objects", type=Path, metavar="TABLE",
        help="object table naming the feature rows in order (objects.tsv, or one name per line like THINGS "
             "unique_id.txt), in place of an objects.tsv next to the features",
    )
    alphas = parser.add_mutually_exclusive_group()
    alphas.add_argument("--alphas", type=float, nargs="+", help="penalty grid, each value once; one value fits every dimension with it (default 50 values from 1e-2 to 1e6)")
    alphas.add_argument(
        "--alpha-range", type=float, nargs=3, metavar=("LOW", "HIGH", "N"),
        help="N penalties from LOW to HIGH, evenly spaced in log10",
    )
    parser.add_argument("--folds", type=int, default=3, help="cross-validation folds, at most half the objects (default 3)")
    parser.add_argument("--shuffle", action="store_true", help="shuffle objects before splitting into folds")
    parser.add_argument("--seed", type=int, help="seed of --shuffle (default 0)")
    parser.add_argument("--model-name", help="DNN name to record (default: from the features' manifest)")
    parser.set_defaults(handler=run_map)
    add_examples(parser, "dimalign map features/ --embedding run/ -o map/")
    declare_output_folder(parser, "map")


def run_map(args: argparse.Namespace) -> int:
    """Handle ``dimalign map``."""
    from dimalign.analysis.compare import align_objects, find_object_table
    from dimalign.analysis.ridge import DEFAULT_ALPHAS, RIDGE_MAP_NAME, RidgeMap, write_ridge_table
    from dimalign.features.recorded import same_model_name
    from dimalign.io.features import load_features
    from dimalign.io.files import (
        check_output_dir,
        check_unowned_files,
        now_iso,
        read_manifest,
        report_leftover_stages,
        staged_outputs,
    )
    from dimalign.io.objects import OBJECT_TABLE_NAME, read_object_table
    from dimalign.io.runs import load_embedding

    started = now_iso()
    if args.seed is not None and not args.shuffle:
        raise ValueError(f"--seed {args.seed} only seeds --shuffle: drop it, or add --shuffle")
    # KFold seeds numpy's RandomState, which takes 0 to 2**32 - 1.
    if args.seed is not None and not 0 <= args.seed <= MAX_SEED:
        raise ValueError(f"--seed {args.seed} is invalid: use an integer from 0 to {MAX_SEED}")
    check_output_dir(args.out, "map")
    check_unowned_files(args.out, [RIDGE_MAP_NAME, "ridge_map.csv"], "map")
    report_leftover_stages(args.out)
    # The grid is checked before the features and the embedding are read.
    if args.alpha_range is not None:
        low, high, count = args.alpha_range
        if not (0 < low <= high < np.inf and 1 <= count <= MAX_ALPHAS and float(count).is_integer()):
            raise ValueError(
                f"--alpha-range {low:g} {high:g} {count:g} is invalid: use LOW HIGH N with "
                f"0 < LOW <= HIGH, both finite, and a whole N from 1 to {MAX_ALPHAS}"
            )
        alphas = np.logspace(np.log10(low), np.log10(high), int(count))
        repeated = _repeated_penalty(alphas)
        if repeated is not None:
            raise ValueError(
                f"--alpha-range {low:g} {high:g} {count:g} repeats the penalty {repeated:g}: use N = 1 "
                "for a single penalty, or a HIGH further above LOW"
            )
    else:
        alphas = np.asarray(args.alphas) if args.alphas else DEFAULT_ALPHAS
        invalid = alphas[~(np.isfinite(alphas) & (alphas > 0))]
        if invalid.size:
            raise ValueError(
                f"--alphas {float(invalid[0]):g} is invalid: every ridge penalty must be a finite "
                "positive number, such as --alphas 0.01 0.1 1 10"
            )
        repeated = _repeated_penalty(alphas)
        if repeated is not None:
            listed = " ".join(f"{value:g}" for value in alphas)
            raise ValueError(
                f"--alphas {listed} repeats the penalty {repeated:g}: list each penalty once"
            )
    objects_table = read_object_table(args.objects) if args.objects is not None else None
    # The embedding is checked before the features, which may be large.
    _reject_feature_folder_as_embedding(args.embedding)
    embedding = load_embedding(args.embedding)
    if embedding.n_dims == 0:
        raise ValueError(
            f"the embedding {args.embedding} has no dimension (the fit pruned them all), so there is "
            "nothing to map: pass --embedding with a run that kept at least one dimension"
        )
    embedding_table = find_object_table(args.embedding)
    if embedding_table is not None and len(embedding_table) != embedding.n_objects:
        table_path = (args.embedding if args.embedding.is_dir() else args.embedding.parent) / OBJECT_TABLE_NAME
        raise ValueError(
            f"the object table {table_path} lists {len(embedding_table)} objects, but the embedding "
            f"{embedding.path} has {embedding.n_objects} rows: it must name every row of the "
            "embedding, in order; copy the objects.tsv of the fit that wrote the embedding"
        )
    feature_manifest = {}
    feature_dir = args.features if args.features.is_dir() else args.features.parent
    try:
        feature_manifest = read_manifest(feature_dir)
    except FileNotFoundError:
        pass
    feature_settings = feature_manifest.get("settings", {})
    recorded_model = feature_settings.get("model")
    if args.model_name and recorded_model and not same_model_name(args.model_name, recorded_model):
        # The interpreters rebuild the network named in the map, so a wrong name explains another network.
        raise ValueError(
            f"--model-name {args.model_name} contradicts the model {recorded_model} that "
            f"{feature_dir / 'manifest.json'} records for the features, so gradcam, maximize and manipulate "
            f"would explain another network; leave out --model-name, or map features of {args.model_name}"
        )
    layer = _extracted_layer(args.features, feature_manifest, args.layer)
    _check_layer_file(args.features, layer)
    features, feature_table = load_features(args.features, layer=layer, read_table=objects_table is None)
    feature_file = _feature_file(args.features, layer)
    if objects_table is not None:
        if len(objects_table) != features.shape[0]:
            raise ValueError(
                f"--objects {args.objects} lists {len(objects_table)} objects but the features {feature_file} "
                f"have {features.shape[0]} rows; pass an object table with one name per feature row, in row order"
            )
        logger.info("the feature rows are named by --objects %s", args.objects)
        feature_table = objects_table
    _check_tables_on_both_sides(args.features, feature_table, args.embedding, embedding_table)
    order = np.arange(features.shape[0])
    if feature_table is not None and embedding_table is not None:
        order = np.asarray(align_objects(
            embedding_table, feature_table, names=("embedding", "features"),
            advice="map features and an embedding of the same objects",
        ))
        features = features[order]
    elif features.shape[0] != embedding.n_objects:
        raise ValueError(
            f"the features {feature_file} have {features.shape[0]} rows and the embedding "
            f"{embedding.path} {embedding.n_objects}; "
            "without object tables on both sides the rows must be the same objects in the same order"
        )
    features = np.asarray(features, dtype=np.float64)
    _check_feature_values(feature_file, features, order, feature_table)
    from dimalign.interpret.predictor import extraction_settings

    source = extraction_settings(feature_settings, layer)
    ridge = RidgeMap(
        alphas=alphas, cv=args.folds, shuffle=args.shuffle, random_state=args.seed or 0,
        model_name=args.model_name or source["model"], layer=source["layer"],
    ).fit(features, embedding.embedding)

    inputs = {"features": feature_file, "embedding": embedding.path}
    if args.objects is not None:
        inputs["objects"] = args.objects
    # The three files are written into a hidden folder and moved into place
    # together, so a failure (or Ctrl-C while the inputs are hashed) leaves
    # neither a map without a manifest nor a new map under an earlier manifest.
    with staged_outputs(Path(args.out)) as stage:
        ridge.save(stage, inputs=inputs, started=started,
                   features_source=source if source["model"] else None)
        write_ridge_table(ridge, stage / "ridge_map.csv")
    print_written(args.out, f"{count_of(ridge.cv_r2_.size, 'dimension')}, {_ridge_summary(ridge)}")
    return 0


def _ridge_summary(ridge: RidgeMap) -> str:
    """Describe the median nested R² first, then the optimistic R² at the chosen penalties."""
    chosen = f"R² at the chosen penalties {float(np.median(ridge.cv_r2_)):.3f}"
    if np.isnan(ridge.nested_cv_r2_).any():
        return f"nested cross-validated R² not computed (too few objects for inner folds), {chosen}"
    return f"nested cross-validated R² median {float(np.median(ridge.nested_cv_r2_)):.3f}, {chosen}"


def _repeated_penalty(alphas: np.ndarray) -> float | None:
    """Return the first penalty that appears more than once in ``alphas``, or None."""
    values, counts = np.unique(alphas, return_counts=True)
    repeats = values[counts > 1]
    return float(repeats[0]) if repeats.size else None


def _check_tables_on_both_sides(features_path: Path, feature_table: ObjectTable | None,
                                embedding_path: Path, embedding_table: ObjectTable | None) -> None:
    """Reject an object table on one side only, as ``compare`` does.

    Rows would then be matched by position, and an order that only the one
    table records (the sorted image names of ``dimalign extract``, say) would
    pair features and dimensions of different objects without any error.
    """
    from dimalign.io.objects import OBJECT_TABLE_NAME

    def folder(path: Path) -> Path:
        return path if path.is_dir() else path.parent

    if feature_table is not None and embedding_table is None:
        raise ValueError(
            f"the features have an object table ({folder(features_path) / OBJECT_TABLE_NAME}) but the "
            f"embedding {embedding_path} has none, so its rows cannot be matched to the features by "
            f"object id: put an objects.tsv that names the embedding rows in {folder(embedding_path)}"
        )
    if embedding_table is not None and feature_table is None:
        raise ValueError(
            f"the embedding has an object table ({folder(embedding_path) / OBJECT_TABLE_NAME}) but the "
            f"features {features_path} have none, so their rows cannot be matched to the embedding by "
            f"object id: pass the table that names the feature rows with --objects, or put it as "
            f"objects.tsv in {folder(features_path)}"
        )


def _reject_feature_folder_as_embedding(path: Path) -> None:
    """Reject an ``--embedding`` inside a ``dimalign extract`` folder (the inputs swapped).

    A features ``.npy`` file loads as an embedding of as many dimensions as it
    has features, so swapped inputs would otherwise fit a map without error.
    """
    from dimalign.io.files import MANIFEST_NAME, read_manifest

    folder = path if path.is_dir() else path.parent
    if (folder / MANIFEST_NAME).is_file() and read_manifest(folder).get("step") == "extract":
        raise ValueError(
            f"--embedding {path} is in the output folder of dimalign extract, so it contains "
            "features, not an embedding: pass the features as FEATURES and a fit run or an "
            "embedding file as --embedding"
        )


def _extracted_layer(path: Path, manifest: dict, layer: str | None) -> str | None:
    """Return the layer of the features at ``path`` by its ``dimalign extract`` manifest.

    :func:`load_features` reads ``features.npy`` of a single-layer folder and
    any ``.npy`` file given by name, whatever the value of ``layer``, so without these
    checks the map would record a layer whose features it was not fitted on.

    Args:
        path (Path): The features folder or file.
        manifest (dict): The manifest next to the features (empty if none).
        layer (str | None): The requested layer (``--layer``).

    Returns:
        str | None: ``layer``, or the layer of a feature file named in the
        manifest when ``layer`` is None.

    Raises:
        ValueError: If the manifest does not list ``layer``, or lists another
            layer for the ``.npy`` file ``path``.
    """
    if manifest.get("step") != "extract":
        return layer
    recorded = manifest.get("settings", {}).get("layers")
    if layer is not None and isinstance(recorded, list) and layer not in recorded:
        raise ValueError(
            f"the features {path} contain layer(s) {', '.join(map(str, recorded))} (from the manifest.json "
            f"of dimalign extract), not {layer!r}: pass one of them with --layer, or drop --layer"
        )
    files = manifest.get("outputs", {}).get("files")
    if not path.is_file() or not isinstance(files, dict):
        return layer
    in_file = [name for name, file_name in files.items() if file_name == path.name]
    if len(in_file) != 1:
        return layer
    if layer is not None and layer != in_file[0]:
        raise ValueError(
            f"the features {path} are layer {in_file[0]!r} (from the manifest.json of dimalign "
            f"extract), not {layer!r}: pass --layer {in_file[0]}, or the folder with --layer {layer}"
        )
    return in_file[0]


def _check_layer_file(path: Path, layer: str | None) -> None:
    """Reject a ``--layer`` without its file in a folder that has the files of other layers.

    :func:`load_features` then falls back to ``features.npy``, which suits a
    single-layer folder, but here a mistyped layer would map another
    layer's features and record them under the mistyped name.
    """
    if layer is None or not path.is_dir():
        return
    expected_file = f"features_{layer.replace('/', '_')}.npy"
    others = sorted(candidate.name for candidate in path.glob("features_*.npy"))
    if (path / expected_file).is_file() or not others:
        return
    raise ValueError(
        f"{path} has no {expected_file} for --layer {layer}, but has {', '.join(others)}: pass the layer of "
        "one of them with --layer"
    )


def _check_feature_values(path: Path, features: np.ndarray, order: np.ndarray,
                          table: ObjectTable | None) -> None:
    """Reject features without columns, with NaN or inf, or too large to standardise, naming ``path``.

    Args:
        path (Path): The feature file, for the message.
        features (np.ndarray): The features in the embedding's row order.
        order (np.ndarray): The row of ``path`` behind each row of ``features``.
        table (ObjectTable | None): The object table of ``path``, if any.
    """
    if features.shape[1] == 0:
        raise ValueError(
            f"the features {path} have no column (shape {features.shape}): pass features with at "
            "least one column"
        )
    bad = np.sort(order[~np.isfinite(features).all(axis=1)])
    if bad.size:
        rows = bad[:10].tolist()
        named = f" ({', '.join(table.object_ids[row] for row in rows)})" if table is not None else ""
        raise ValueError(
            f"the features {path} contain NaN or inf in {bad.size} rows, first rows {rows}{named}: "
            "extract them again with --dtype float32 if they were float16, or remove those objects "
            "from the features and the embedding"
        )
    from dimalign.analysis.ridge import feature_overflow_problem

    problem = feature_overflow_problem(features)
    if problem is not None:
        raise ValueError(f"the features {path}: {problem}")


def _feature_file(path: Path, layer: str | None) -> Path:
    """Return the feature file inside a folder, whose checksum the manifest records."""
    if path.is_file():
        return path
    candidates = ([path / f"features_{layer.replace('/', '_')}.npy"] if layer else []) + [
        path / "features.npy", path / "features.h5",
    ]
    return next((candidate for candidate in candidates if candidate.is_file()), path)
