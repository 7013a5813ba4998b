"""``dimalign run`` (a whole study from a TOML file) and ``dimalign report`` (the HTML report)."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from dimalign.cli import add_examples, print_written
from dimalign.features.recorded import add_decoding_options, resolve_decoding
from dimalign.io.files import count_of

if TYPE_CHECKING:
    from dimalign.report.results import StudyResults

logger = logging.getLogger(__name__)

#: Suffixes of an existing file that ``dimalign report -o`` may replace.
REPORT_SUFFIXES = (".html", ".htm")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``run`` and ``report`` subcommands."""
    _register_run(subparsers)
    _register_report(subparsers)


def _register_run(subparsers: argparse._SubParsersAction) -> None:
    from dimalign.report.stages import STAGE_ORDER

    parser = subparsers.add_parser(
        "run",
        help="run a study from a TOML file: fits, evaluation, comparison and the report",
        description=(
            "Run every stage of a study file whose settings or inputs changed since the last run, "
            "each into its own folder of the study directory, and skip the others. "
            f"Stages, in order: {', '.join(STAGE_ORDER)}."
        ),
    )
    parser.add_argument("config", type=Path, help="study file (TOML), such as examples/things_study.toml")
    parser.add_argument(
        "-o", "--out", type=Path,
        help="study directory (default: the study file's name without .toml, in the current directory)",
    )
    parser.add_argument("--dry-run", action="store_true", help="list what would run and why, and write nothing")
    parser.add_argument("--from", dest="from_stage", metavar="STAGE", help="rerun STAGE and every stage that reads it")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
        help="override a setting of the study file, the value read as TOML (repeatable), "
        "such as --set human_fit.max_epochs=3",
    )
    parser.set_defaults(handler=run_command)
    add_examples(
        parser, "dimalign run examples/things_study.toml -o things-study --dry-run",
        "dimalign run examples/things_study.toml -o things-study --set human_fit.max_epochs=3",
    )


def run_command(args: argparse.Namespace) -> int:
    """Handle ``dimalign run``."""
    from dimalign.report.config import load_config
    from dimalign.report.pipeline import default_study_dir, run_study

    config = load_config(args.config, args.overrides)
    study_dir = args.out if args.out is not None else default_study_dir(args.config)
    plan = run_study(config, study_dir, from_stage=args.from_stage, dry_run=args.dry_run)
    changes = plan.format_changes()
    if changes:
        print(changes)
    print(plan.format())
    if args.dry_run:
        print(f"dry run: nothing was written to {study_dir}")
        return 0
    report = study_dir / "report" / "report.html"
    # A report folder left by an earlier run of a study that has since dropped [report] is not current.
    current = report.is_file() and any(stage.name == "report" for stage in plan.stages)
    print(f"study written to {study_dir}" + (f"; report: {report}" if current else ""))
    return 0


def _register_report(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "report",
        help="write the self-contained HTML report of a study directory",
        description=(
            "Draw the figures of a study directory from its saved results and write one HTML file "
            "with the figures, a summary table and a dimension browser. The file makes no network "
            "request. Inputs that a 'dimalign run' study recorded (categories, labels, images) are "
            "used unless given here."
        ),
    )
    parser.add_argument("study_dir", type=Path, help="study directory (from 'dimalign run')")
    parser.add_argument("-o", "--out", type=Path, required=True, help="HTML file to write")
    parser.add_argument(
        "--figures-dir", type=Path,
        help="folder for the PNG and SVG figures (default: <out stem>_figures next to the HTML file, "
        "such as report_figures for -o report.html)",
    )
    parser.add_argument("--categories", type=Path, help="category matrix (THINGS category_mat_manual.tsv; default: the study's "
                        "inputs.categories, where it still exists)")
    parser.add_argument("--labels", type=Path, help="output folder of 'dimalign labels summarize' (default: the study's "
                        "inputs.labels, where it still exists)")
    parser.add_argument(
        "--images", type=Path,
        help="image folder: an object's image is its source column, <object_id>, <object_id>.<ext> or "
             "the first image in <object_id>/ (default: the study's inputs.images, where it still exists)",
    )
    add_decoding_options(parser, "the study's extraction")
    parser.add_argument(
        "--labels-human", metavar="NAME",
        help="name of the human embedding in the labels summary (default: report.labels_human of the "
        "study's last run, else human_fit)",
    )
    parser.add_argument(
        "--labels-dnn", metavar="NAME",
        help="name of the DNN embedding in the labels summary (default: report.labels_dnn of the "
        "study's last run, else dnn_fit)",
    )
    parser.add_argument(
        "--title",
        help="report title (default: report.title of the study's last run, else study.name, else "
        "'dimalign study')",
    )
    parser.add_argument("--top-k", type=int, default=8, help="top objects per dimension (default 8)")
    parser.add_argument(
        "--dpi", type=int, default=110, help="resolution of the PNG figures in dots per inch, 1 to 600 (default 110)"
    )
    parser.set_defaults(handler=report_command)
    add_examples(parser, "dimalign report things-study -o things-report.html")


def report_command(args: argparse.Namespace) -> int:
    """Handle ``dimalign report``."""
    from dimalign.report.html import write_report
    from dimalign.report.pipeline import STUDY_RECORD_NAME, is_study_record
    from dimalign.report.results import StudyResults, check_labels_summary, check_reportable
    from dimalign.report.stages import STAGES

    if args.study_dir.is_file():
        raise NotADirectoryError(f"study directory {args.study_dir} is a file: give the folder that 'dimalign run' wrote")
    if not args.study_dir.is_dir():
        raise FileNotFoundError(f"study directory {args.study_dir} not found")
    # Another tool's pipeline.json in the parent folder does not make this a stage folder.
    if args.study_dir.name in STAGES and is_study_record(args.study_dir.parent / STUDY_RECORD_NAME):
        raise ValueError(
            f"{args.study_dir} is the {args.study_dir.name} stage folder of a study: give the study "
            f"directory {args.study_dir.parent}"
        )
    _check_report_options(args)
    record = _read_study_record(args.study_dir)
    recorded = record.get("inputs", {})

    def chosen(value: Path | None, key: str) -> Path | None:
        if value is not None:
            return value
        path = recorded.get(key)
        if not path:
            return None
        if not Path(path).exists():
            # Documented: the report goes on without it, such as after the study was moved.
            logger.warning(
                "%s records inputs.%s = %s, which no longer exists, so the report goes without it; "
                "pass --%s to use it", args.study_dir / STUDY_RECORD_NAME, key, path, key,
            )
            return None
        path = Path(path)
        expected_kind = "file" if key == "categories" else "folder"
        if path.is_file() != (expected_kind == "file"):
            raise ValueError(
                f"{args.study_dir / STUDY_RECORD_NAME} records inputs.{key} = {path}, which is now a "
                f"{'folder' if path.is_dir() else 'file'}, not a {expected_kind}; pass --{key} with the right "
                f"{expected_kind}, or rerun 'dimalign run' with a corrected study file"
            )
        return path

    stage_dirs = _recorded_stage_dirs(args.study_dir, record)
    results = StudyResults(
        args.study_dir, stage_dirs=stage_dirs, categories=chosen(args.categories, "categories"),
        labels=chosen(args.labels, "labels"), images=chosen(args.images, "images"), record=record,
        labels_names=_labels_names(args, stage_dirs),
    )
    if args.background is not None or args.exif_transpose is not None:
        if results.images_dir is None:
            raise ValueError(
                "--background and --no-exif-transpose set how the report decodes images, and this "
                "report has none: pass --images or leave them out"
            )
        results.decoding = resolve_decoding(args.background, args.exif_transpose, results.decoding_recorded())
    check_reportable(results)
    if results.labels_dir is not None:
        check_labels_summary(results.labels_dir, results.labels_names)
    title = args.title or _recorded_title(args.study_dir, record)
    report = write_report(
        results, args.out, figures_dir=args.figures_dir, title=title, top_k=args.top_k, dpi=args.dpi,
    )
    # The figures left out come first, so that the last line is the result line, as for every command.
    for stem, reason in report.skipped.items():
        print(f"  left out {stem}: {reason}")
    print_written(report.path, f"{count_of(len(report.figures), 'figure')}, {count_of(report.n_dimensions, 'dimension')}")
    return 0


def _recorded_title(study_dir: Path, record: dict) -> str:
    """Return the title that the study's last run gave its report, by the rule that ``dimalign run`` uses.

    The report stage records the title it chose (``report.title``, else
    ``study.name``, else :data:`dimalign.report.html.DEFAULT_TITLE`). It is
    used when the last run had a report stage, so that a report stage since
    removed from the study file does not set the title.
    """
    from dimalign.report.html import report_title
    from dimalign.report.stage_records import read_stage_record

    planned = [stage.get("name") for stage in record.get("stages", []) if isinstance(stage, dict)]
    recorded = None
    if "report" in planned or not record:
        recorded = (read_stage_record(study_dir / "report") or {}).get("settings", {}).get("title")
        recorded = recorded if isinstance(recorded, str) else None
    study = record.get("study", {})
    return report_title(recorded, study.get("name") if isinstance(study, dict) else None)


def _labels_names(args: argparse.Namespace, stage_dirs: dict[str, Path] | None) -> dict[str, str]:
    """Return each side's embedding name in the labels summary.

    An option wins. Without one, the setting that the study's report stage
    last ran with is used, so this report finds the labels that the pipeline's
    report found. The name of the fit's folder comes last.
    """
    from dimalign.report.stage_records import read_stage_record

    settings = (read_stage_record(args.study_dir / "report") or {}).get("settings", {})
    names = {}
    for side, option in (("human", args.labels_human), ("dnn", args.labels_dnn)):
        folder = (stage_dirs or {}).get(f"{side}_fit", args.study_dir / f"{side}_fit")
        names[side] = option or settings.get(f"labels_{side}") or folder.name
    return names


def _check_report_options(args: argparse.Namespace) -> None:
    """Check the options of ``dimalign report`` before anything is read or written."""
    from dimalign.report.stages import STAGE_ORDER

    from dimalign.report.html import MAX_DPI

    for name in ("top_k", "dpi"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} {getattr(args, name)} is invalid: use 1 or more")
    if args.dpi > MAX_DPI:
        raise ValueError(f"--dpi {args.dpi} is invalid: use at most {MAX_DPI}")
    for option, path, kind in (("--categories", args.categories, "file"), ("--labels", args.labels, "folder"),
                               ("--images", args.images, "folder")):
        if path is None:
            continue
        if not path.exists():
            raise FileNotFoundError(f"{option} {path}: {kind} not found")
        if (kind == "file") != path.is_file():
            raise ValueError(f"{option} {path} is {'a folder' if path.is_dir() else 'a file'}: give a {kind}")
    figures_dir = args.figures_dir or args.out.with_name(f"{args.out.stem}_figures")
    for option, path in (("-o", args.out), ("--figures-dir", figures_dir)):
        existing = next((parent for parent in path.parents if parent.exists()), None)
        if existing is not None and not existing.is_dir():
            raise NotADirectoryError(f"{option} {path}: {existing} is a file, not a folder")
        for stage in STAGE_ORDER:
            folder = (args.study_dir / stage).resolve()
            if path.resolve().is_relative_to(folder):
                raise ValueError(
                    f"{option} {path} lies inside the stage folder {args.study_dir / stage}, whose "
                    "results it could replace, or which the next dimalign run replaces; write the "
                    f"report elsewhere, such as {args.study_dir / 'report.html'}"
                )
    if args.out.is_file() and args.out.suffix.lower() not in REPORT_SUFFIXES:
        # -o replaces the file, so a slip such as -o STUDY/pipeline.json would
        # lose the study record and -o study.toml the study file.
        raise FileExistsError(
            f"-o {args.out} is an existing file that is not an HTML report, and writing the report "
            "would replace it; give a new file or an .html file, such as "
            f"{args.out.with_suffix('.html')}"
        )
    if figures_dir.exists() and not figures_dir.is_dir():
        raise FileExistsError(f"the figures folder {figures_dir} is a file: remove it or pass --figures-dir")


def _read_study_record(study_dir: Path) -> dict:
    """Read ``pipeline.json`` of a study directory ({} when there is none)."""
    path = study_dir / "pipeline.json"
    if not path.is_file():
        return {}
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(
            f"{path} is not a readable study record ({error}); rerun 'dimalign run' to rewrite it, "
            "or remove it to report the stage folders as they are"
        ) from error
    if not isinstance(record, dict):
        raise ValueError(f"{path} is not a study record: expected a JSON object")
    for key, kind in (("stages", list), ("inputs", dict), ("study", dict), ("changes", list)):
        if not isinstance(record.get(key, kind()), kind):
            raise ValueError(
                f"{path} is not a study record: {key!r} must be a JSON {'array' if kind is list else 'object'}; "
                "rerun 'dimalign run' to rewrite it, or remove it to report the stage folders as they are"
            )
    problem = _study_record_problem(record)
    if problem:
        raise ValueError(
            f"{path} is not a study record: {problem}; rerun 'dimalign run' to rewrite it, or remove it to "
            "report the stage folders as they are"
        )
    return record


def _study_record_problem(record: dict) -> str:
    """Describe the first entry of a study record that the report cannot use, or return ''."""
    from dimalign.report.stage_records import change_entry_problem

    for number, stage in enumerate(record.get("stages", []), start=1):
        if not (isinstance(stage, dict) and isinstance(stage.get("name"), str)):
            return f"entry {number} of 'stages' must be a JSON object with a string 'name'"
    name = record.get("study", {}).get("name", "")
    if not isinstance(name, str):
        return f"'study.name' must be a JSON string, not {name!r}"
    for key, value in record.get("inputs", {}).items():
        if not isinstance(value, str):
            return f"'inputs.{key}' must be a JSON string (a path), not {value!r}"
    return change_entry_problem(record.get("changes", []))


def _recorded_stage_dirs(study_dir: Path, record: dict) -> dict[str, Path] | None:
    """Return the folders of the stages of the last run, after checking that they belong together.

    Without a study record every stage folder is read (None). With one, only
    the stages that the last ``dimalign run`` planned are read, so that a
    folder of a stage since removed from the study file is left out.

    Raises:
        ValueError: If a stage folder was computed from other upstream results
            than the folders beside it (a later run replaced them and failed),
            or, in a study with a record, if a stage folder of the last run has
            no pipeline record (another command wrote into it).
    """
    from dimalign.report.stage_records import read_stage_record, stage_mismatches
    from dimalign.report.results import DEFAULT_STAGE_DIRS

    planned = [stage.get("name") for stage in record.get("stages", []) if isinstance(stage, dict)]
    # Without a record, every stage folder present is read, and checked the same way.
    names = [name for name in (planned or DEFAULT_STAGE_DIRS) if name in DEFAULT_STAGE_DIRS]
    problems = stage_mismatches(study_dir, [name for name in names if (study_dir / name).is_dir()])
    if problems:
        raise ValueError(
            f"the stage folders of {study_dir} come from different runs: {'; '.join(problems)}. "
            "Rerun 'dimalign run' with the study file to bring every stage up to date"
        )
    for name in names if planned else ():
        folder = study_dir / DEFAULT_STAGE_DIRS[name]
        # Every stage of a run writes a record, so a folder without one contains
        # another command's output (such as 'dimalign compare -o STUDY/compare' on
        # other embeddings), which the report would mix with the other stages.
        if folder.is_dir() and read_stage_record(folder) is None:
            raise ValueError(
                f"{folder} has no pipeline record in its manifest.json, so the last "
                f"'dimalign run' of {study_dir} did not write it, and another command may have "
                "replaced its files. Move the folder away and rerun 'dimalign run' with the study "
                "file to write the stage again"
            )
    if not planned:
        return None
    if record.get("finished") is None:
        logger.warning(
            "the last dimalign run of %s did not finish; the report shows the stages it had finished",
            study_dir,
        )
    return {name: study_dir / DEFAULT_STAGE_DIRS[name] for name in names}
