"""Subcommands ``dimalign label-app`` (set up, serve, export, close a study) and ``dimalign labels``."""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
from pathlib import Path

from dimalign.cli import add_examples, declare_output_folder, print_written
from dimalign.features.recorded import Decoding, add_decoding_options, recorded_decoding, resolve_decoding
from dimalign.io.files import count_of

logger = logging.getLogger(__name__)

LABEL_APP_ACTIONS = ("setup", "serve", "export", "close", "reopen")

#: ``-o`` value with which ``label-app export`` writes the CSV to standard output.
STANDARD_OUTPUT = "-"

#: Environment variable that fixes the admin token instead of a random one per start.
ADMIN_TOKEN_VARIABLE = "DIMALIGN_ADMIN_TOKEN"

_LABEL_APP_EPILOG = """\
forms:
  dimalign label-app setup STUDY.db --run RUN --images DIR [--objects objects.tsv]
                           [--dims all] [--questions default]
  dimalign label-app serve STUDY.db [--images DIR] [--host 127.0.0.1] [--port 8000]
  dimalign label-app export STUDY.db -o answers.csv [--overwrite]
  dimalign label-app close STUDY.db
  dimalign label-app reopen STUDY.db
  dimalign label-app RUN --images DIR [--objects ...] [--dims ...] [--host ...] [--port ...]

The last form keeps the study database in RUN/labels.db (created on first use,
reused afterwards so participants can resume) and serves it. Run
`dimalign label-app setup --help` (and so on) for the options of each form.
The admin page's token is printed at start; set DIMALIGN_ADMIN_TOKEN to fix it.
`close` stops new participants from joining, also while a server runs, and
participants already in the study can finish. `reopen` undoes it.
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``label-app`` and ``labels`` to the ``dimalign`` parser."""
    label_app = subparsers.add_parser(
        "label-app",
        help="set up, serve and export a web study that labels and rates dimensions",
        description="A web app in which participants label and rate the dimensions of an embedding.",
        usage="dimalign label-app {setup,serve,export,close,reopen} ... | dimalign label-app RUN --images DIR ...",
        epilog=_LABEL_APP_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    label_app.add_argument(
        "target", metavar="setup|serve|export|close|reopen|RUN", help="an action, or a run directory to serve"
    )
    label_app.add_argument("arguments", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    label_app.set_defaults(handler=_run_label_app)

    labels = subparsers.add_parser("labels", help="summarise the labels and ratings of labelling studies")
    actions = labels.add_subparsers(dest="labels_action", metavar="ACTION", required=True)
    summarize = actions.add_parser(
        "summarize",
        help="word clouds, rater agreement and shares of visual and semantic dimensions",
        description="Summarise one or more studies (one per embedding) into OUTDIR.",
    )
    summarize.add_argument("studies", nargs="+", type=Path, metavar="STUDY.db", help="study databases")
    summarize.add_argument("-o", "--out", required=True, type=Path, metavar="OUTDIR", help="output directory")
    summarize.add_argument(
        "--relevance", action="append", type=Path, default=[], metavar="RELEVANCE.csv",
        help="jackknife relevance CSV (columns triplet_index, most_relevant_dim), such as "
        "most_relevant_human.csv or most_relevant_dnn.csv written by `dimalign compare --triplets`; "
        "give one per study, in the same order",
    )
    summarize.add_argument(
        "--raters", metavar="A,B[,C]",
        help="participant ids of the two raters and the optional tie-breaker (default: the first three "
        "participants who answered every dimension)",
    )
    summarize.add_argument("--semantic", action="store_true", help="also run the automatic semantic check")
    summarize.add_argument(
        "--object-names", type=Path, metavar="FILE",
        help="with --semantic: object names, a CSV with id and word columns (THINGS words.csv) "
        "or one name per line (default: derived from the object ids)",
    )
    summarize.add_argument(
        "--semantic-k", type=_at_least(2),
        help="with --semantic: top objects per dimension compared, 2 to the 20 stored per dimension "
        "(default 10)",
    )
    summarize.add_argument(
        "--n-random", type=_n_random,
        help="with --semantic: random object subsets in the semantic baseline, 2 to 100000 (default 1000)",
    )
    summarize.add_argument(
        "--seed", type=_at_least(0), default=0,
        help="seed of the word clouds and the semantic baseline, 0 or more (default 0)",
    )
    summarize.add_argument(
        "--embedding-names", metavar="NAME[,NAME...]",
        help="name of each study's embedding in the summary, in the order of the studies (default: the "
        "run folder or embedding file the study was set up from); needed when two names are equal",
    )
    summarize.set_defaults(handler=_run_summarize)
    add_examples(summarize, "dimalign labels summarize study.db -o labels-summary")
    declare_output_folder(summarize, "labels summarize")

    names = actions.add_parser(
        "names", help="print published dimension labels (text or MATLAB file), checked against an embedding"
    )
    names.add_argument("labels_file", type=Path, metavar="LABELS", help="labels_66.txt, labels_49.mat, ...")
    names.add_argument("--embedding", type=Path, help="embedding whose dimension count the labels must match")
    names.set_defaults(handler=_run_names)
    add_examples(names, "dimalign labels names labels_66.txt --embedding runs/human")


# ---------------------------------------------------------------------------
# label-app


def _action_parser(action: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"dimalign label-app {action}")
    if action == "setup":
        parser.description = "Create a study database for labelling the dimensions of an embedding."
        parser.add_argument("study", type=Path, metavar="STUDY.db", help="the new study database")
        _add_study_options(parser, run_required=True)
    elif action == "serve":
        parser.description = "Serve a study to participants until interrupted (Ctrl-C)."
        parser.add_argument("study", type=Path, metavar="STUDY.db", help="study database from `setup`")
        parser.add_argument(
            "--images", type=Path, metavar="DIR",
            help="folder to serve the images from instead of the one given at setup, such as after "
            "moving the study to another machine (the stored folder is not changed)",
        )
        _add_server_options(parser)
    elif action == "close":
        parser.description = (
            "Close a study to new participants. Participants already in it can finish, and a running "
            "server applies the change at the next request."
        )
        parser.add_argument("study", type=Path, metavar="STUDY.db", help="study database")
    elif action == "reopen":
        parser.description = "Reopen a closed study to new participants."
        parser.add_argument("study", type=Path, metavar="STUDY.db", help="study database")
    else:
        parser.description = "Write every answer of a study to a CSV file."
        parser.add_argument("study", type=Path, metavar="STUDY.db", help="study database")
        parser.add_argument(
            "-o", "--out", required=True, metavar="answers.csv",
            help="CSV file to write (missing folders are created), or - for standard output; "
            "write ./- for a file named -",
        )
        parser.add_argument("--overwrite", action="store_true", help="replace an existing CSV file")
    return parser


def _add_study_options(parser: argparse.ArgumentParser, *, run_required: bool) -> None:
    # The short form (no --run) reuses an existing study, so there an omitted
    # --dims or --questions means "as the study has it" and is None.
    if run_required:
        parser.add_argument("--run", required=True, type=Path, help="run directory or embedding file")
    parser.add_argument(
        "--images", required=True, type=Path, metavar="DIR", help="folder the images are served from"
    )
    parser.add_argument(
        "--objects", type=Path, metavar="objects.tsv",
        help="object table whose source column gives each row's image, relative to --images "
        "(default: the objects.tsv of the run)",
    )
    parser.add_argument(
        "--dims", default="all" if run_required else None,
        help="dimensions to label: all, 0,1,2 or 0-9 (default all"
        + ("" if run_required else "; an existing study keeps its dimensions") + ")",
    )
    parser.add_argument(
        "--questions", default="default" if run_required else None,
        help="question set (default: default, the only set: up to five labels, whether the "
        "dimension is visual, semantic, mixed or unclear, and how many concepts it expresses)",
    )
    add_decoding_options(parser, "the extraction behind the run")


def _at_least(minimum: int, maximum: int | None = None):
    """Return an argparse type that parses an integer of at least ``minimum`` and at most ``maximum``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid integer {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"invalid value {value}: use {minimum} or more")
        if maximum is not None and value > maximum:
            raise argparse.ArgumentTypeError(f"invalid value {value}: use at most {maximum}")
        return value

    return parse


def _n_random(text: str) -> int:
    """Parse ``--n-random`` for argparse: 2 to ``semantic.MAX_N_RANDOM``."""
    # Imported here because the semantic module loads pandas, which every
    # other dimalign command would then pay for at start.
    from dimalign.labeling.semantic import MAX_N_RANDOM

    return _at_least(2, maximum=MAX_N_RANDOM)(text)


def _port(text: str) -> int:
    """Parse a TCP port number for argparse."""
    try:
        port = int(text)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"invalid port {text!r}: use 0 to 65535 (0 picks a free port)")
    return port


def _add_server_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--host", default="127.0.0.1",
        help="address to bind (default 127.0.0.1, this machine only; other addresses expose the "
        "study unencrypted)",
    )
    parser.add_argument(
        "--port", type=_port, default=8000, help="TCP port, 0 to 65535 (default 8000; 0 picks a free port)"
    )


def _run_label_app(args: argparse.Namespace) -> int:
    if args.target in LABEL_APP_ACTIONS:
        options = _action_parser(args.target).parse_args(args.arguments)
        if args.target == "setup":
            return _setup(options)
        if args.target == "serve":
            return _serve(options.study, options.host, options.port, options.images)
        if args.target in ("close", "reopen"):
            return _set_closed(options.study, closed=args.target == "close")
        return _export(options)

    parser = argparse.ArgumentParser(
        prog="dimalign label-app RUN",
        description="Set up (on first use) and serve a study kept in RUN/labels.db.",
    )
    parser.add_argument("run", type=Path, metavar="RUN", help="run directory")
    _add_study_options(parser, run_required=False)
    _add_server_options(parser)
    options = parser.parse_args([args.target, *args.arguments])
    from dimalign.labeling.study import open_or_create_run_study

    study = open_or_create_run_study(
        options.run, options.images, objects=options.objects, dims=options.dims, questions=options.questions,
        decoding=_decoding(options) if options.background is not None or options.exif_transpose is not None else None,
    )
    return _serve(study, options.host, options.port)


def _setup(options: argparse.Namespace) -> int:
    from dimalign.labeling.study import Study, create_study

    path = create_study(
        options.study, options.run, options.images, objects=options.objects, dims=options.dims,
        questions=options.questions, decoding=_decoding(options),
    )
    with Study(path) as study:
        n_dims = len(study.dimensions)
    dimensions = "dimension" if n_dims == 1 else "dimensions"
    print(f"created {path} with {n_dims} {dimensions}; serve it with: dimalign label-app serve {path}")
    return 0


def _decoding(options: argparse.Namespace) -> Decoding:
    """Return the image decoding of ``--background`` and ``--no-exif-transpose`` and the run's extraction."""
    return resolve_decoding(options.background, options.exif_transpose, recorded_decoding(options.run))


def _serve(study: Path, host: str, port: int, images: Path | None = None) -> int:
    from dimalign.labeling.app import check_admin_token, serve, server_url

    admin_token = os.environ.get(ADMIN_TOKEN_VARIABLE) or None
    if admin_token is not None:
        try:
            check_admin_token(admin_token)
        except ValueError as error:
            raise ValueError(f"{ADMIN_TOKEN_VARIABLE}: {error}") from None

    def announce(server) -> None:
        address = server_url(host, server.server_port)
        # The operator needs the token to open the admin page; it goes to
        # standard output only, never to the log.
        print(f"serving {study} at {address}/", flush=True)
        print(f"admin page: {address}/admin?token={server.app.config['ADMIN_TOKEN']}", flush=True)
        print("press Ctrl-C to stop", flush=True)

    serve(study, host, port, admin_token=admin_token, images_dir=images, on_ready=announce)
    return 0


def _set_closed(path: Path, *, closed: bool) -> int:
    from dimalign.labeling.study import Study

    with Study(path) as study:
        closed_before = study.closed_at
        changed = study.set_closed(closed)
    if closed and changed:
        print(f"closed {path} to new participants, and participants already in it can finish. "
              f"Reopen it with: dimalign label-app reopen {path}")
    elif closed:
        print(f"{path} was already closed to new participants (since {closed_before})")
    elif changed:
        print(f"reopened {path} to new participants")
    else:
        print(f"{path} was already open to new participants")
    return 0


def _export(options: argparse.Namespace) -> int:
    from dimalign.labeling.study import Study

    with Study(options.study) as study:
        if options.out == STANDARD_OUTPUT:
            # The CSV is built in full before the first byte is written, so
            # an invalid row leaves standard output empty.
            text, n_rows = study.answers_csv()
            sys.stdout.write(text)
            sys.stdout.flush()
            logger.info("wrote %s of %s to standard output", count_of(n_rows, "answer"), options.study)
            return 0
        n_rows = study.export_answers(options.out, overwrite=options.overwrite)
    print_written(options.out, count_of(n_rows, "answer"))
    return 0


# ---------------------------------------------------------------------------
# labels


def _parse_raters(text: str | None) -> list[int] | None:
    if text is None:
        return None
    parts = [part.strip() for part in text.split(",")]
    # An empty part such as in 1,,2 is an error too, because it is likely a
    # lost id. int() alone would also read "1_0" as 10 and full-width digits as ASCII ones.
    if not all(re.fullmatch(r"[0-9]+", part) for part in parts):
        raise ValueError(
            f"invalid --raters {text!r}: give two or three participant ids such as 1,2 or 1,2,3"
        )
    return [int(part) for part in parts]


def _run_summarize(args: argparse.Namespace) -> int:
    from dimalign.labeling.summary import summarize

    headline = summarize(
        args.studies, args.out, relevance=args.relevance, raters=_parse_raters(args.raters),
        semantic=args.semantic, object_names=args.object_names, semantic_k=args.semantic_k,
        n_random=args.n_random, random_state=args.seed,
        embedding_names=args.embedding_names.split(",") if args.embedding_names else None,
    )
    for embedding, shares in headline["shares"].items():
        described = ", ".join(f"{kind} {100 * share:.0f}%" for kind, share in shares.items())
        print(f"{embedding}: {described}")
    print_written(Path(args.out) / "summary.html", count_of(len(headline["embeddings"]), "embedding"))
    return 0


def _run_names(args: argparse.Namespace) -> int:
    from dimalign.labeling.human_labels import load_dimension_labels

    n_dims = None
    if args.embedding is not None:
        from dimalign.io.runs import load_embedding

        n_dims = load_embedding(args.embedding).n_dims
    for index, label in enumerate(load_dimension_labels(args.labels_file, n_dims)):
        sys.stdout.write(f"{index}\t{label}\n")
    return 0
