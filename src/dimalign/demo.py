"""``dimalign demo``: the framework end to end on the real THINGS data.

1. Fit VICE to human odd-one-out judgements of the 1,854 THINGS objects.
2. Simulate odd-one-out choices from VGG-16-like features of the same
   objects and fit VICE to them. The simulated DNN observer keeps the pair
   with the largest dot product and picks the third object as odd one out.
3. Report for each the kept dimensions, the held-out accuracy and the
   correlation with the fully sampled 48-object human similarity matrix, and
   the RSA between the human and the DNN similarity matrices.

The demo shortens the fits (fewer epochs) so that it finishes in minutes on
a laptop CPU; it says so in its output, with the command for a full fit.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dimalign.cli import add_examples
from dimalign.io.files import (
    MANIFEST_NAME,
    check_output_dir,
    check_writable,
    exclusive_lock,
    now_iso,
    output_dir,
    read_manifest,
    write_manifest,
    write_text_atomic,
)

logger = logging.getLogger(__name__)

FEATURES_FILE = "vgg16_srf_factors_rank200.npy"

#: Minimum number of triplets of either observer: with a 10% validation share, both parts get some.
MIN_TRIPLETS = 100

#: Files and folders a demo writes into its output folder, removed by ``overwrite``.
DEMO_OUTPUTS = ("human", "dnn", "summary.json", MANIFEST_NAME)

#: Lock file that a running demo holds in its output folder, so that a second demo into it stops.
DEMO_LOCK_NAME = ".demo.lock"

#: Command-line option of each setting, for error messages.
_OPTIONS = {
    "max_epochs": "--max-epochs", "n_dims": "--n-dims", "n_dnn_triplets": "--dnn-triplets",
    "seed": "--seed", "device": "--device",
}


@dataclass
class DemoSettings:
    """Settings of the demo; the defaults keep it under 15 minutes on 2 CPU cores.

    Attributes:
        max_epochs (int): Epochs of each VICE fit (a full fit runs up to 1,000
            and stops when the kept dimensions are stable for 500).
        batch_size (int): Triplets per step; larger than the VICE default
            (256) so that an epoch takes about a quarter of the time.
        lr (float): Adam learning rate, raised with the batch size.
        n_dims (int): Initial VICE dimensions.
        n_dnn_triplets (int): Triplets simulated from the DNN features.
        val_fraction (float): Share of triplets held out for validation.
        seed (int): Seed of splits and sampling. The two VICE fits get seeds
            derived from it that differ from each other (see :func:`fit_seeds`).
        device (str): Torch device.
    """

    max_epochs: int = 300
    batch_size: int = 1024
    lr: float = 0.002
    n_dims: int = 150
    n_dnn_triplets: int = 131_552
    val_fraction: float = 0.1
    seed: int = 0
    device: str = "cpu"
    vice: dict[str, Any] = field(default_factory=dict)


@dataclass
class SideResult:
    """Numbers reported for one observer (human or DNN)."""

    n_train: int
    n_val: int
    n_dims: int
    n_epochs: int
    val_accuracy: float
    things48_r: float
    seconds: float


def check_settings(settings: DemoSettings) -> None:
    """Check the demo settings before any data is read.

    Raises:
        ValueError: Naming the setting, its command-line option and the value.
    """
    from dimalign.device import resolve_device
    from dimalign.embedding.base import MAX_EPOCHS, check_integer, check_real

    checks = (
        ("max_epochs", 1, MAX_EPOCHS), ("n_dims", 1, None), ("n_dnn_triplets", MIN_TRIPLETS, None),
        ("seed", 0, 2**63 - 1), ("batch_size", 1, None),
    )
    try:
        for name, low, high in checks:
            check_integer(name, getattr(settings, name), low, high)
        check_real("lr", settings.lr, 0, low_open=True)
        check_real("val_fraction", settings.val_fraction, 0, 1, low_open=True, high_open=True)
        resolve_device(settings.device)
    except ValueError as error:
        name = next((key for key in _OPTIONS if str(error).startswith(key)), None)
        if name is None and "device" in str(error):
            name = "device"
        if name is None:
            raise
        raise ValueError(f"{_OPTIONS[name]}: {error}") from error


def _check_out_dir(out_dir: Path, data_dir: Path, overwrite: bool) -> list[str]:
    """Check the output folder and return the earlier demo outputs that ``overwrite`` replaces."""
    if out_dir.is_symlink() and not out_dir.exists():
        raise FileExistsError(f"the output folder {out_dir} is a link to a missing folder; pass another -o")
    if out_dir.exists() and not out_dir.is_dir():
        raise FileExistsError(f"the output folder {out_dir} is a file; pass a folder as -o")
    resolved_out, resolved_data = out_dir.resolve(), data_dir.resolve()
    if resolved_data == resolved_out or resolved_out in resolved_data.parents:
        raise ValueError(
            f"the data folder {data_dir} lies inside the output folder {out_dir}; a failed or "
            "overwritten demo would delete the THINGS files. Pass separate folders"
        )
    check_output_dir(out_dir, "demo")
    # Without this check the demo reads every input before it fails on the first write.
    check_writable(out_dir, advice="pass another output folder (-o)")

    earlier = [name for name in DEMO_OUTPUTS if (out_dir / name).exists()]
    if not earlier:
        return []
    if not overwrite:
        raise FileExistsError(
            f"{out_dir} contains an earlier or unfinished demo ({', '.join(earlier)}); pass "
            "--overwrite (overwrite=True) to replace it, or choose another output folder"
        )
    if not (out_dir / MANIFEST_NAME).is_file():
        finished = [
            side for side in ("human", "dnn")
            if (out_dir / side / MANIFEST_NAME).is_file() and not _fitted_by_demo(out_dir / side)
        ]
        if finished:
            raise FileExistsError(
                f"{out_dir / finished[0]} contains a finished run that no demo manifest in {out_dir} "
                "lists, so --overwrite does not delete it; choose another output folder"
            )
        # The demo writes summary.json just before its manifest, so without the
        # manifest the file is most likely the user's.
        if (out_dir / "summary.json").exists():
            raise FileExistsError(
                f"{out_dir / 'summary.json'} exists, but {out_dir} contains no finished demo, so the "
                "file may be the only copy of its data and --overwrite does not delete it: move it "
                "away, or choose another output folder"
            )
    for side in ("human", "dnn"):
        _check_run_folder(out_dir / side)
    return earlier


def _fitted_by_demo(run_dir: Path) -> bool:
    """Return whether the manifest of ``run_dir`` records a ``dimalign demo`` command line.

    A demo killed (SIGKILL, or SIGHUP when its terminal closes) after one fit
    leaves that run without the demo's own manifest. Library calls record no
    command, so their runs count as foreign.
    """
    try:
        command = read_manifest(run_dir).get("command")
    except (OSError, ValueError):
        return False
    return isinstance(command, str) and command.split()[:2] == ["dimalign", "demo"]


def _check_run_folder(run_dir: Path) -> None:
    """Raise ``FileExistsError`` unless ``run_dir`` is missing or holds only a fit's files."""
    from dimalign.embedding.base import CONFIG_NAME, HISTORY_NAME
    from dimalign.embedding.checkpoint import CHECKPOINT_NAME
    from dimalign.embedding.runs import FIT_LOCK_NAME
    from dimalign.io.objects import OBJECT_TABLE_NAME
    from dimalign.io.runs import EMBEDDING_NAME

    if run_dir.is_symlink() or not run_dir.exists():
        return
    if not run_dir.is_dir():
        raise FileExistsError(
            f"{run_dir} is a file, but dimalign demo writes a run folder there, so --overwrite "
            "does not delete it: move it away, or choose another output folder"
        )
    fit_names = (
        CHECKPOINT_NAME, EMBEDDING_NAME, CONFIG_NAME, HISTORY_NAME, OBJECT_TABLE_NAME, MANIFEST_NAME,
    )
    # atomic_path names a temporary file .<stem>.<random>.tmp<suffix>, which a killed fit leaves.
    temporary = tuple(f".{Path(name).stem}." for name in fit_names)
    for path in sorted(run_dir.iterdir()):
        name = path.name
        if name in fit_names or name == FIT_LOCK_NAME:
            continue
        if name.startswith(temporary) and ".tmp" in name:
            continue
        raise FileExistsError(
            f"{path} was not written by dimalign demo, so --overwrite does not delete {run_dir}: "
            "move the file away, or choose another output folder"
        )


def _remove_outputs(out_dir: Path, names: list[str], kind: str = "earlier") -> None:
    """Remove the demo outputs ``names`` from ``out_dir``.

    ``kind`` ("earlier" or "unfinished") describes them in the log.
    """
    for name in names:
        path = out_dir / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    if names:
        logger.info("removed the %s demo outputs in %s: %s", kind, out_dir, ", ".join(names))


def run_demo(
    out_dir: str | os.PathLike,
    data_dir: str | os.PathLike | None = None,
    mirror: str | os.PathLike | None = None,
    settings: DemoSettings | None = None,
    download: bool = True,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Run the demo and write both runs and ``summary.json`` into ``out_dir``.

    If a step fails (Ctrl-C included), ``out_dir`` is removed again when this
    call created it. In a folder that existed, only the outputs that this call
    wrote are removed, and other files stay.

    Args:
        out_dir (str | os.PathLike): Output folder; receives ``human/`` and
            ``dnn/`` run directories, ``summary.json`` and ``manifest.json``.
        data_dir (str | os.PathLike | None): THINGS data directory; missing
            files are downloaded there from their pinned addresses (see
            :mod:`dimalign.io.things`). Default: the user cache.
        mirror (str | os.PathLike | None): A local directory with copies of the
            THINGS files, used before any download.
        settings (DemoSettings | None): Demo settings.
        download (bool): Download missing files; when False a missing file
            is an error.
        overwrite (bool): Replace the outputs of an earlier or unfinished
            demo in ``out_dir``. Without it such a folder is an error.

    Returns:
        dict[str, Any]: The summary written to ``summary.json``.

    Raises:
        ValueError: On invalid settings, a data folder inside ``out_dir``,
            more DNN triplets than the objects allow, or an empty human
            triplet file.
        FileExistsError: If ``out_dir`` is a file, contains another step's
            output, or contains an earlier demo and ``overwrite`` is False.
            With ``overwrite``, also if a file under a demo output name was
            not written by a demo (such as the user's ``human/notes.txt``).
    """
    from dimalign.analysis.things48 import load_things48
    from dimalign.io.objects import read_object_table
    from dimalign.io.things import default_data_dir
    from dimalign.triplets import count_triplets

    settings = settings or DemoSettings()
    started = now_iso()
    out_dir = Path(out_dir)
    check_settings(settings)
    checked_data_dir = Path(data_dir) if data_dir is not None else default_data_dir()
    _check_out_dir(out_dir, checked_data_dir, overwrite)

    # Inputs are fetched before the output folder exists, so a missing file leaves nothing behind.
    paths = _fetch_inputs(data_dir, mirror, download)
    things_dir = paths["unique_id"].parent
    objects = read_object_table(paths["unique_id"])
    things48 = load_things48(things_dir)
    if settings.n_dnn_triplets > count_triplets(len(objects)):
        raise ValueError(
            f"--dnn-triplets {settings.n_dnn_triplets} exceeds the {count_triplets(len(objects))} "
            f"unique triplets of {len(objects)} objects; pass a smaller number"
        )

    busy = (
        f"{out_dir} is in use by another dimalign demo, which holds {out_dir / DEMO_LOCK_NAME}: wait "
        "for it to finish, or choose another output folder"
    )
    # A folder that holds another demo's lock stays, even where both demos created it.
    lock = out_dir / DEMO_LOCK_NAME
    with output_dir(out_dir, keep_if_contains=(DEMO_LOCK_NAME,)), exclusive_lock(lock, busy):
        # Checked again under the lock, because another demo may have written here since.
        earlier = _check_out_dir(out_dir, checked_data_dir, overwrite)
        # Earlier outputs go only once every input is present.
        _remove_outputs(out_dir, earlier)
        try:
            return _run_observers(out_dir, paths, objects, things48, settings, started)
        except BaseException:
            # Under the lock, none of these names existed after the removal
            # above, so whatever exists now was written by this call. Left
            # behind, a finished human/ without the demo's manifest would make
            # a rerun with --overwrite refuse the folder.
            written = [name for name in DEMO_OUTPUTS if (out_dir / name).exists()]
            _remove_outputs(out_dir, written, "unfinished")
            raise


def _fetch_inputs(
    data_dir: str | os.PathLike | None, mirror: str | os.PathLike | None, download: bool
) -> dict[str, Path]:
    """Fetch the demo's THINGS files; without downloads, report every missing one in one error."""
    from dimalign.io.things import default_data_dir, fetch, find_human_triplets, missing_folder_note

    fetchers = {
        name: functools.partial(fetch, file_name, data_dir, mirror, download=download)
        for name, file_name in (
            ("unique_id", "unique_id.txt"), ("features", FEATURES_FILE),
            ("rdm48", "RDM48_triplet.mat"), ("words48", "words48.csv"),
        )
    }
    fetchers["human_triplets"] = functools.partial(
        find_human_triplets, data_dir, mirror, download=download
    )

    paths: dict[str, Path] = {}
    missing: list[str] = []
    for name, fetch_input in fetchers.items():
        try:
            paths[name] = fetch_input()
        except FileNotFoundError as error:
            if download:
                raise
            missing.append(str(error))
    # A mirror that is not a folder fails every file with one message.
    missing = list(dict.fromkeys(missing))
    if len(missing) == 1:
        raise FileNotFoundError(missing[0])
    if missing:
        # Each file's message notes a data folder that does not exist; the list notes it once.
        folder = Path(data_dir).expanduser() if data_dir is not None else default_data_dir()
        note = missing_folder_note(folder)
        listed = "".join(f"\n- {line.replace(note, '') if note else line}" for line in missing)
        raise FileNotFoundError(f"{len(missing)} input files of the demo are missing:{listed}{note}")
    return paths


def _run_observers(
    out_dir: Path, paths: dict[str, Path], objects: Any, things48: Any, settings: DemoSettings, started: str
) -> dict[str, Any]:
    """Fit both observers into ``out_dir``, compare them and write the summary and manifest."""
    from dimalign.analysis.rsa import rsa
    from dimalign.analysis.similarity import similarity_matrix
    from dimalign.analysis.things48 import things48_correlation
    from dimalign.io.triplets import load_triplets, split_triplets
    from dimalign.triplets import sample_triplets, simulate_choices

    n_objects = len(objects)

    # Human observer: the real judgements, split by object set.
    human = load_triplets(paths["human_triplets"], n_objects)
    if len(human) < MIN_TRIPLETS:
        raise ValueError(
            f"{paths['human_triplets']} contains {len(human)} triplets; the demo needs at least "
            f"{MIN_TRIPLETS}. Fetch the published file again (delete it from the data folder)"
        )
    human_train, human_val = split_triplets(human, settings.val_fraction, random_state=settings.seed)

    # DNN observer: unique random triplets, the most similar pair by dot
    # product of the (non-negative) features stays, the third is the odd one out.
    features = np.load(paths["features"])
    sampled = sample_triplets(n_objects, settings.n_dnn_triplets, random_state=settings.seed)
    simulated = simulate_choices(features, sampled, similarity="dot", rule="argmax", random_state=settings.seed)
    dnn_train, dnn_val = split_triplets(simulated.triplets, settings.val_fraction, random_state=settings.seed)

    results: dict[str, SideResult] = {}
    embeddings: dict[str, np.ndarray] = {}
    seeds = fit_seeds(settings.seed)
    for side, train, val in (("human", human_train, human_val), ("dnn", dnn_train, dnn_val)):
        logger.info("fitting VICE to %d %s triplets (%d held out)", len(train), side, len(val))
        side_started = time.perf_counter()
        model = _fit_side(train, val, out_dir / side, n_objects, objects, settings, paths, side, seeds[side])
        if model.n_dims_ == 0:
            _raise_no_dimensions(side, model.n_epochs_, len(train))
        embeddings[side] = model.embedding_
        results[side] = SideResult(
            n_train=len(train), n_val=len(val), n_dims=model.n_dims_, n_epochs=model.n_epochs_,
            val_accuracy=model.score(val),
            things48_r=things48_correlation(model.embedding_, data=things48, device=settings.device),
            seconds=time.perf_counter() - side_started,
        )

    human_similarity = similarity_matrix(embeddings["human"], device=settings.device)
    dnn_similarity = similarity_matrix(embeddings["dnn"], device=settings.device)
    summary = {
        "human": asdict(results["human"]),
        "dnn": asdict(results["dnn"]),
        "human_dnn_rsa_pearson": rsa(human_similarity, dnn_similarity, method="pearson"),
        "human_dnn_rsa_spearman": rsa(human_similarity, dnn_similarity, method="spearman"),
        "dnn_simulation_ties": int(simulated.n_ties),
        "fit_seeds": seeds,
        "settings": asdict(settings),
        "shortened": shortened_note(settings, paths["human_triplets"], paths["unique_id"]),
    }
    write_text_atomic(out_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
    write_manifest(out_dir, step="demo", inputs=paths, settings=asdict(settings), started=started, outputs=summary)
    return summary


def _raise_no_dimensions(side: str, n_epochs: int, n_train: int) -> None:
    """Raise ``ValueError`` for a fit that pruned every dimension, with the option that helps."""
    advice = (
        f"simulate more DNN triplets (--dnn-triplets, default {DemoSettings().n_dnn_triplets}) or fit longer "
        "(--max-epochs)"
        if side == "dnn"
        else "fit longer (--max-epochs)"
    )
    other = "human" if side == "dnn" else "DNN"
    raise ValueError(
        f"the {side} fit kept no dimension after {n_epochs} epochs on {n_train} triplets, so its predicted "
        f"similarities are constant and the comparison with the {other} fit is undefined: {advice}"
    )


def fit_seeds(seed: int) -> dict[str, int]:
    """Derive distinct seeds of the human and the DNN fit from the demo seed.

    With one seed, both fits would start from the same random embedding, and
    after a short fit the shared start alone makes the two similarity matrices
    correlate (r 0.84 after 3 epochs), which inflates the human-DNN RSA.

    Args:
        seed (int): The demo seed.

    Returns:
        dict[str, int]: ``{"human": ..., "dnn": ...}``, two different 32-bit seeds.
    """
    human, dnn = (int(child.generate_state(1)[0]) for child in np.random.SeedSequence(seed).spawn(2))
    return {"human": human, "dnn": dnn}


def _fit_side(train, val, run_dir, n_objects, objects, settings, paths, side, seed):
    from dimalign.embedding import VICE, fit_run
    from dimalign.parallel import limit_torch_threads

    model = VICE(
        n_dims=settings.n_dims, max_epochs=settings.max_epochs, batch_size=settings.batch_size,
        lr=settings.lr, random_state=seed,
        device=settings.device, eval_every=10, verbose=True, **settings.vice,
    )
    inputs = {"triplets": paths["human_triplets"]} if side == "human" else {"features": paths["features"]}
    # One torch thread, as in dimalign fit: extra threads gain little on these
    # small per-batch operations and lose much on busy cores.
    with limit_torch_threads(1):
        return fit_run(model, train, val, run_dir, n_objects=n_objects, object_table=objects, inputs=inputs)


def shortened_note(settings: DemoSettings, human_triplets: Path, objects: Path) -> str:
    """Say which settings the demo shortened and how to run a full-length fit of ``human_triplets``."""
    import shlex

    from dimalign.embedding import VICE

    command = shlex.join([
        "dimalign", "fit", str(human_triplets), "--objects", str(objects), "-o", "runs/human",
        "--max-epochs", "1000", "--stability-epochs", "500",
    ])
    full = VICE()
    defaults = DemoSettings()
    epochs = "1 epoch" if settings.max_epochs == 1 else f"{settings.max_epochs} epochs"
    # Settings that a user shortened on the command line, beyond the demo's own shortening.
    user_shortenings = []
    if settings.n_dims < full.n_dims:
        user_shortenings.append(f"Each fit starts from {settings.n_dims} dimensions.")
    if settings.n_dnn_triplets < defaults.n_dnn_triplets:
        user_shortenings.append(
            f"The DNN fit uses {settings.n_dnn_triplets:,} simulated DNN triplets instead of "
            f"{defaults.n_dnn_triplets:,}."
        )
    shortenings = "".join(f"{sentence} " for sentence in user_shortenings)
    return (
        f"Shortened for the demo: each VICE fit stops after {epochs}, with batch "
        f"{settings.batch_size} and learning rate {settings.lr}. {shortenings}A full fit "
        f"({full.n_dims} initial dimensions, batch {full.batch_size}, learning rate {full.lr}) runs up "
        f"to {full.max_epochs:,} epochs and stops once the number of kept dimensions is stable for "
        f"{full.stability_epochs}. "
        f"Full-length fit of the human triplets: {command}"
    )


def format_summary(summary: dict[str, Any]) -> str:
    """Format the demo summary as a short plain-text table."""
    lines = [
        f"{'':8} {'dims':>5} {'epochs':>6} {'held-out acc':>12} {'48-object r':>11} {'train/val':>15}",
    ]
    for side in ("human", "dnn"):
        result = summary[side]
        lines.append(
            f"{side:8} {result['n_dims']:5d} {result['n_epochs']:6d} {result['val_accuracy']:12.4f} "
            f"{result['things48_r']:11.3f} {result['n_train']:>8d}/{result['n_val']}"
        )
    lines.append(
        f"RSA between human and DNN similarity matrices: Pearson r = {summary['human_dnn_rsa_pearson']:.3f}, "
        f"Spearman rho = {summary['human_dnn_rsa_spearman']:.3f}"
    )
    lines.append(summary["shortened"])
    return "\n".join(lines)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``demo`` subcommand."""
    parser = subparsers.add_parser(
        "demo",
        help="fit VICE to human and to DNN triplets of the THINGS objects and compare them",
        description=(
            "Run the framework end to end on the real THINGS data: fit VICE to the human "
            "odd-one-out judgements of the 1,854 objects and to choices simulated from "
            "VGG-16-like features of the same objects, then report the kept dimensions, the "
            "held-out accuracy, the 48-object correlation and the human-DNN RSA. The fits are "
            "shortened (--max-epochs) so that the demo takes minutes on a CPU."
        ),
    )
    parser.add_argument(
        "--data-dir", type=Path, default=None,
        help="THINGS data directory (default: the user cache, $DIMALIGN_DATA or ~/.cache/dimalign/things); "
        "missing files are downloaded there",
    )
    parser.add_argument("--mirror", type=Path, default=None, help="local directory with copies of the THINGS files")
    parser.add_argument("--no-download", action="store_true", help="fail instead of downloading missing files")
    parser.add_argument("-o", "--out", type=Path, default=Path("dimalign-demo"), help="output folder (default dimalign-demo)")
    defaults = DemoSettings()
    parser.add_argument("--max-epochs", type=int, default=defaults.max_epochs, help=f"epochs per fit (default {defaults.max_epochs})")
    parser.add_argument("--n-dims", type=int, default=defaults.n_dims, help=f"initial dimensions (default {defaults.n_dims})")
    parser.add_argument(
        "--dnn-triplets", type=int, default=defaults.n_dnn_triplets,
        help=f"triplets simulated from the DNN features (default {defaults.n_dnn_triplets})",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda or auto")
    parser.add_argument(
        "--overwrite", action="store_true",
        help="replace the outputs of an earlier or unfinished demo in the output folder",
    )
    parser.set_defaults(handler=_run)
    add_examples(parser, "dimalign demo --data-dir THINGS_DIR -o demo-out")


def _run(args: argparse.Namespace) -> int:
    settings = DemoSettings(
        max_epochs=args.max_epochs, n_dims=args.n_dims, n_dnn_triplets=args.dnn_triplets,
        seed=args.seed, device=args.device,
    )
    summary = run_demo(
        args.out, data_dir=args.data_dir, mirror=args.mirror, settings=settings,
        download=not args.no_download, overwrite=args.overwrite,
    )
    print(format_summary(summary))
    print(f"runs written to {args.out}/human and {args.out}/dnn")
    return 0
