"""The ``dimalign`` command line parser."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import numpy as np
import pytest


def test_parser_builds_without_torch():
    # Building the parser (every --help) must not load torch, because importing
    # it takes over a second. Commands import it when they run.
    code = "import sys; from dimalign.cli import build_parser; build_parser(); print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


@pytest.mark.parametrize("stop", ["SIGTERM", "SIGHUP"])
def test_stop_signal_removes_unfinished_output(tmp_path, stop):
    # timeout and kill send SIGTERM, and closing the terminal sends SIGHUP;
    # the folder the command created must go.
    out = tmp_path / "out"
    code = (
        "import sys, time\n"
        "from dimalign.cli import sigterm_as_exit\n"
        "from dimalign.io.files import output_dir\n"
        "with sigterm_as_exit(), output_dir(sys.argv[1]) as folder:\n"
        "    (folder / 'part.csv').write_text('x')\n"
        "    print('ready', flush=True)\n"
        "    time.sleep(60)\n"
    )
    # A test run under nohup ignores SIGHUP, and the child would inherit that.
    process = subprocess.Popen([sys.executable, "-c", code, str(out)], stdout=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(getattr(signal, stop), signal.SIG_DFL))
    assert process.stdout.readline().strip() == "ready"
    process.send_signal(getattr(signal, stop))

    assert process.wait(timeout=30) == 128 + getattr(signal, stop)
    assert not out.exists()


def test_ignored_sighup_stays_ignored(tmp_path):
    """Under nohup, SIGHUP is ignored before the command starts, and the command must keep running."""
    code = (
        "import os, signal\n"
        "signal.signal(signal.SIGHUP, signal.SIG_IGN)\n"
        "from dimalign.cli import sigterm_as_exit\n"
        "with sigterm_as_exit():\n"
        "    os.kill(os.getpid(), signal.SIGHUP)\n"
        "    print('still running', flush=True)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)

    assert result.returncode == 0
    assert result.stdout == "still running\n"


def test_interrupt_prints_one_line(monkeypatch, capsys):
    from dimalign import cli
    from dimalign.report import commands

    def interrupted(args):
        raise KeyboardInterrupt

    def terminated(args):
        raise cli.Terminated(128 + signal.SIGTERM)

    monkeypatch.setattr(commands, "run_command", interrupted)
    assert cli.main(["run", "study.toml"]) == 130
    assert capsys.readouterr().err == "dimalign run: stopped by Ctrl-C\n"
    monkeypatch.setattr(commands, "run_command", terminated)
    assert cli.main(["run", "study.toml"]) == 128 + signal.SIGTERM
    assert capsys.readouterr().err == "dimalign run: stopped by SIGTERM\n"

    def hung_up(args):
        raise cli.Terminated(128 + signal.SIGHUP)

    monkeypatch.setattr(commands, "run_command", hung_up)
    assert cli.main(["run", "study.toml"]) == 128 + signal.SIGHUP
    assert capsys.readouterr().err == "dimalign run: stopped by SIGHUP\n"


def test_memory_error_is_one_line(monkeypatch, capsys):
    from dimalign import cli
    from dimalign.report import commands

    def too_large(args):
        np.empty((10**15, 24))

    monkeypatch.setattr(commands, "run_command", too_large)
    assert cli.main(["run", "study.toml"]) == 1
    error = capsys.readouterr().err
    assert error.startswith("dimalign run: error: out of memory (Unable to allocate")
    assert "Traceback" not in error


def test_library_warnings_become_log_lines(tmp_path, capsys):
    """Warnings meant for notebooks appear on the command line in the log's format, also with -q."""
    import numpy as np

    from dimalign.cli import main

    one_based = np.array([[1, 2, 3], [3, 4, 1], [2, 4, 3], [1, 4, 2], [2, 3, 4]])
    np.save(tmp_path / "one_based.npy", one_based)
    status = main(["-q", "import-triplets", str(tmp_path / "one_based.npy"), "-o",
                   str(tmp_path / "out.npy"), "--n-objects", "5"])
    stderr = capsys.readouterr().err
    assert status == 0
    assert "WARNING dimalign: " in stderr
    assert "one_based.npy never names object 0 in 5 triplets" in stderr
    assert "UserWarning" not in stderr


def test_permission_error_is_one_line(tmp_path, capsys, monkeypatch):
    """An unwritable data or output folder is the user's to fix, so no traceback."""
    from dimalign.cli import main
    from dimalign.io import things

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(tmp_path / "data" / ".unique_id.tmp"))

    monkeypatch.setattr(things, "download_file", denied)
    status = main(["demo", "--data-dir", str(tmp_path / "data"), "-o", str(tmp_path / "out")])
    stderr = capsys.readouterr().err
    assert status == 1
    assert "dimalign demo: error: cannot write unique_id.txt into the THINGS data folder" in stderr
    assert "Traceback" not in stderr


def test_python_m_dimalign_runs_cli():
    """``python -m dimalign`` is the same command as the ``dimalign`` script."""
    result = subprocess.run(
        [sys.executable, "-m", "dimalign", "--version"], capture_output=True, text=True
    )
    from dimalign import __version__

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"dimalign {__version__}"


def test_manifest_records_dimalign_command(tmp_path):
    """The manifest names the dimalign command, not the Python process that ran it."""
    import json

    from dimalign.cli import main
    from dimalign.io.files import write_manifest

    source = tmp_path / "raw file.txt"
    source.write_text("0 1 2\n", encoding="utf-8")
    out = tmp_path / "out"

    assert main(["import-triplets", str(source), "--n-objects", "3", "-o", str(out)]) == 0

    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["command"] == f"dimalign import-triplets '{source}' --n-objects 3 -o {out}"
    # A library call outside the command, as from a notebook, records none.
    write_manifest(tmp_path / "library", step="test")
    assert json.loads((tmp_path / "library" / "manifest.json").read_text())["command"] is None


def test_help_texts_have_no_rst_markup():
    """Help is plain text, so docstring markup such as ``name`` must not leak into it."""
    import argparse

    from dimalign.cli import build_parser

    parser = build_parser()
    commands = next(action for action in parser._actions if isinstance(action, argparse._SubParsersAction))
    for name, subparser in commands.choices.items():
        assert "``" not in subparser.format_help(), name


@pytest.mark.parametrize(
    "argv, quiet, verbose",
    [
        (["fit", "train.npy", "-o", "run"], False, 0),
        (["-q", "fit", "train.npy", "-o", "run"], True, 0),
        (["fit", "train.npy", "-o", "run", "-q"], True, 0),
        (["-v", "fit", "train.npy", "-o", "run"], False, 1),
        (["fit", "train.npy", "-o", "run", "-vv"], False, 2),
        (["labels", "names", "labels.txt", "-q"], True, 0),
        # The counts before and after the command add up, as -vv.
        (["-v", "fit", "train.npy", "-o", "run", "-v"], False, 2),
        (["-q", "fit", "train.npy", "-o", "run", "-v"], True, 1),
        (["-v", "labels", "names", "labels.txt", "-v"], False, 2),
    ],
)
def test_logging_options_before_or_after_command(argv, quiet, verbose):
    from dimalign.cli import build_parser

    args = build_parser().parse_args(argv)

    assert args.quiet is quiet
    assert args.verbose == verbose
    assert not hasattr(args, "verbose_after_command")
    assert not hasattr(args, "quiet_after_command")


@pytest.mark.parametrize("command", [["extract", "images", "--model", "vgg16"], ["simulate", "features.npy", "--n-triplets", "10"]])
@pytest.mark.parametrize("spelling", ["-o", "--out", "--out-dir"])
def test_output_folder_option_spellings(command, spelling):
    """extract and simulate take --out like every other command, and keep --out-dir."""
    from dimalign.cli import build_parser

    args = build_parser().parse_args([*command, spelling, "result"])

    assert args.out_dir == "result"


def test_closed_standard_output_ends_quietly(tmp_path):
    """``dimalign evaluate ... | head`` whose reader has gone exits 141 without an error line."""
    np.save(tmp_path / "embedding.npy", np.random.default_rng(0).random((6, 2)))
    np.save(tmp_path / "triplets.npy", np.array([[0, 1, 2], [3, 4, 5]]))
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        finished = subprocess.run(
            [sys.executable, "-m", "dimalign", "-q", "evaluate", str(tmp_path / "embedding.npy"),
             "--triplets", str(tmp_path / "triplets.npy"), "--n-objects", "6"],
            stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=120,
        )
    finally:
        os.close(write_end)

    assert finished.returncode == 141
    assert "Broken pipe" not in finished.stderr
    assert "Exception ignored" not in finished.stderr


def test_database_error_is_one_line(monkeypatch, capsys):
    """A locked or damaged study database is the user's to fix, so no traceback."""
    import sqlite3

    from dimalign import cli
    from dimalign.labeling import summary

    def locked(*args, **kwargs):
        raise sqlite3.OperationalError("database is locked")

    monkeypatch.setattr(summary, "summarize", locked)
    status = cli.main(["labels", "summarize", "study.sqlite", "-o", "out"])
    stderr = capsys.readouterr().err
    assert status == 1
    assert "dimalign labels: error: database is locked" in stderr
    assert "Traceback" not in stderr


# Every command that writes an output folder, with inputs that do not exist:
# the study check runs before a command reads its inputs, loads a model or fits.
OUTPUT_COMMANDS = {
    "fit": ["fit", "triplets.npy", "--n-objects", "12"],
    "evaluate": ["evaluate", "embedding.npy", "--triplets", "triplets.npy", "--n-objects", "12"],
    "extract": ["extract", "images", "--model", "vgg16"],
    "select": ["select", "sweep"],
    "sweep": ["sweep", "triplets.npy", "--n-objects", "12"],
    "simulate": ["simulate", "features.npy", "--n-triplets", "10"],
    "import-triplets": ["import-triplets", "triplets.txt", "--n-objects", "12"],
    "gradcam": ["gradcam", "image.jpg", "--map", "map", "--dim", "0"],
    "maximize": ["maximize", "--map", "map", "--dim", "0"],
    "manipulate": ["manipulate", "image.jpg", "--map", "map"],
    "grid": ["grid", "embedding.npy"],
    "compare": ["compare", "human.npy", "dnn.npy"],
    "map": ["map", "features", "--embedding", "run"],
    "labels summarize": ["labels", "summarize", "study.db"],
}


def write_study_with_fit(study):
    """Write a study directory of dimalign run with a finished human_fit stage; return the stage folder."""
    import json

    (study / "human_fit").mkdir(parents=True)
    (study / "pipeline.json").write_text(json.dumps({"config": "study.toml", "stages": []}))
    manifest = {"step": "fit", "pipeline": {"stage": "human_fit", "hash": "abc"}}
    (study / "human_fit" / "manifest.json").write_text(json.dumps(manifest))
    return study / "human_fit"


@pytest.mark.parametrize("command", OUTPUT_COMMANDS)
def test_command_rejects_study_stage_folder(tmp_path, monkeypatch, capsys, command):
    from dimalign.cli import main

    monkeypatch.chdir(tmp_path)
    stage = write_study_with_fit(tmp_path / "study")
    before = (stage / "manifest.json").read_text()

    code = main([*OUTPUT_COMMANDS[command], "-o", str(stage)])

    assert code == 1
    error = capsys.readouterr().err
    assert f"dimalign {command.split()[0]}: error: " in error
    assert f"{stage} is the folder of stage human_fit of the study {tmp_path / 'study'}" in error
    assert f"choose an output folder outside the study for dimalign {command}" in error
    assert (stage / "manifest.json").read_text() == before
    assert sorted(path.name for path in stage.iterdir()) == ["manifest.json"]


@pytest.mark.parametrize("command", ["fit", "compare"])
def test_command_rejects_study_directory(tmp_path, monkeypatch, capsys, command):
    from dimalign.cli import main

    monkeypatch.chdir(tmp_path)
    study = write_study_with_fit(tmp_path / "study").parent

    code = main([*OUTPUT_COMMANDS[command], "-o", str(study)])

    assert code == 1
    assert f"{study} is the directory of a study of dimalign run" in capsys.readouterr().err
    assert sorted(path.name for path in study.iterdir()) == ["human_fit", "pipeline.json"]


def test_import_triplets_rejects_file_in_stage_folder(tmp_path, monkeypatch, capsys):
    """-o FILE writes manifest.json into the file's folder, so that folder is checked."""
    from dimalign.cli import main

    monkeypatch.chdir(tmp_path)
    stage = write_study_with_fit(tmp_path / "study")

    code = main([*OUTPUT_COMMANDS["import-triplets"], "-o", str(stage / "triplets.npy")])

    assert code == 1
    assert f"{stage} is the folder of stage human_fit of the study" in capsys.readouterr().err
    assert sorted(path.name for path in stage.iterdir()) == ["manifest.json"]


def test_select_checks_default_output_folder(tmp_path, monkeypatch, capsys):
    """select without -o writes SWEEP/selection, which is checked like an -o folder."""
    import json

    from dimalign.cli import main

    monkeypatch.chdir(tmp_path)
    copied = tmp_path / "sweep" / "selection"
    copied.mkdir(parents=True)
    (copied / "manifest.json").write_text(json.dumps({"step": "select", "pipeline": {"stage": "map"}}))

    code = main(["select", str(tmp_path / "sweep")])

    assert code == 1
    assert f"{copied / 'manifest.json'} contains the stage record of dimalign run" in capsys.readouterr().err


def _command_options():
    """Yield (command, action, parser) for every option of every subcommand, nested ones included."""
    import argparse

    from dimalign.cli import build_parser

    def walk(parser, command):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, subparser in action.choices.items():
                    yield from walk(subparser, f"{command} {name}".strip())
            elif action.option_strings:
                yield command, action, parser

    yield from walk(build_parser(), "")


def test_help_shows_option_defaults():
    """Each option that takes a value and has a default names it in its help."""
    import argparse

    missing = []
    for command, action, parser in _command_options():
        if action.nargs == 0 or action.default in (None, argparse.SUPPRESS, []) or action.required:
            continue
        # A group of options that share one value names its default once, as extract's --pretrained does.
        sharing = [other for other in parser._actions if other.dest == action.dest]
        if not any("default" in (other.help or "") for other in sharing):
            missing.append(f"{command} {action.option_strings[-1]} (default {action.default!r})")

    assert missing == []


def test_sweep_help_names_fit_defaults():
    """sweep passes its estimator options on to the estimator, so its help gives the defaults that fit's help gives."""
    import re

    helps = {}
    for command, action, _ in _command_options():
        if command in ("fit", "sweep"):
            helps[command, action.option_strings[-1]] = action.help or ""
    estimator_options = [
        "--n-dims", "--max-epochs", "--stability-epochs", "--min-objects", "--batch-size", "--lr",
        "--mc-samples", "--prior", "--pi", "--spike", "--slab", "--beta", "--l1",
    ]

    for option in estimator_options:
        fit_default = re.search(r"default [^);]+", helps["fit", option])
        assert fit_default is not None, option
        assert fit_default.group(0) in helps["sweep", option], option


def test_missing_images_names_greedy_option(capsys):
    """IMAGES after --layer is read as a layer, and the error names --layer as the option that read it."""
    from dimalign.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["extract", "--model", "vgg16", "-o", "features", "--layer", "classifier.4", "photos/"])

    assert exit_info.value.code == 2
    last_line = capsys.readouterr().err.splitlines()[-1]
    assert last_line == (
        "dimalign extract: error: the following arguments are required: IMAGES. "
        "--layer takes all the values that follow it, so it may have read IMAGES as one of its values: "
        "put IMAGES before --layer, or give --layer one value with = (--layer=LAYER)"
    )


def test_missing_argument_without_greedy_option(capsys):
    """Without an option that takes several values, the message is argparse's own."""
    from dimalign.cli import main

    expected = "dimalign extract: error: the following arguments are required: IMAGES"
    # --layer with one value read nothing else, so IMAGES was left out.
    for layer_options in (["--layer=classifier.4"], ["--layer", "classifier.4"]):
        with pytest.raises(SystemExit):
            main(["extract", "--model", "vgg16", "-o", "features", *layer_options])

        assert capsys.readouterr().err.splitlines()[-1] == expected


def test_pool_reads_images_names_option(capsys):
    """IMAGES after --pool is read as a pooling, and the invalid-choice error shows how to write the command."""
    from dimalign.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["extract", "--model", "vgg16", "-o", "features", "--pool", "gap", "photos/"])

    assert exit_info.value.code == 2
    last_line = capsys.readouterr().err.splitlines()[-1]
    assert last_line == (
        "dimalign extract: error: argument --pool: invalid choice: 'photos/' "
        "(choose from 'raw', 'flatten', 'gap'). "
        "--pool takes all the values that follow it, so it read 'photos/' as one of its values: "
        "if 'photos/' is IMAGES, put it before --pool, or give --pool one value with = (--pool=gap)"
    )


def test_missing_images_after_pool(capsys):
    """IMAGES missing after --pool gives the first pooling as the example, not the list of choices."""
    from dimalign.cli import main

    with pytest.raises(SystemExit):
        main(["extract", "--model", "vgg16", "-o", "features", "--pool", "gap", "raw"])

    assert capsys.readouterr().err.splitlines()[-1] == (
        "dimalign extract: error: the following arguments are required: IMAGES. "
        "--pool takes all the values that follow it, so it may have read IMAGES as one of its values: "
        "put IMAGES before --pool, or give --pool one value with = (--pool=gap)"
    )


def test_dim_reads_image_names_option(capsys):
    """An image after gradcam --dim fails as an integer, and the error names --dim as the option that read it."""
    from dimalign.cli import main

    with pytest.raises(SystemExit):
        main(["gradcam", "--map", "map", "-o", "out", "--dim", "0", "3", "photo.jpg"])

    assert capsys.readouterr().err.splitlines()[-1] == (
        "dimalign gradcam: error: argument --dim: invalid int value: 'photo.jpg'. "
        "--dim takes all the values that follow it, so it read 'photo.jpg' as one of its values: "
        "if 'photo.jpg' is images, put it before --dim, or end the values of --dim with --"
    )


def test_invalid_first_pool_keeps_message(capsys):
    """A mistyped first value of --pool read nothing else, so the message is argparse's own."""
    from dimalign.cli import main

    with pytest.raises(SystemExit):
        main(["extract", "photos/", "--model", "vgg16", "-o", "features", "--pool", "gapp"])

    assert capsys.readouterr().err.splitlines()[-1] == (
        "dimalign extract: error: argument --pool: invalid choice: 'gapp' (choose from 'raw', 'flatten', 'gap')"
    )


def test_every_command_help_has_example():
    """Each subcommand's --help ends with examples that name the subcommand and parse."""
    import argparse
    import shlex

    from dimalign.cli import build_parser

    parser = build_parser()
    commands = sorted({command for command, _, _ in _command_options() if command})
    without = []
    for command in commands:
        if command == "label-app":
            # Its help lists the forms of its actions, each with its own --help.
            continue
        subparser = _subparser(parser, command.split())
        if any(isinstance(action, argparse._SubParsersAction) for action in subparser._actions):
            # A group such as "labels" has no work of its own, and its subcommands are checked.
            continue
        lines = subparser.format_help().splitlines()
        if "examples:" not in lines:
            without.append(command)
            continue
        examples = [line.strip() for line in lines[lines.index("examples:") + 1:] if line.strip()]
        assert examples, command
        for example in examples:
            words = shlex.split(example)
            assert words[: 1 + len(command.split())] == ["dimalign", *command.split()], example
            args = parser.parse_args(words[1:])
            assert args.handler is not None, example

    assert without == []


def _subparser(parser, names):
    import argparse

    for name in names:
        action = next(action for action in parser._actions if isinstance(action, argparse._SubParsersAction))
        parser = action.choices[name]
    return parser


def test_main_help_examples_parse():
    """The first session that ``dimalign --help`` shows uses real subcommands and options."""
    import shlex

    from dimalign.cli import build_parser

    parser = build_parser()
    examples = [line.strip() for line in (parser.epilog or "").splitlines() if line.strip().startswith("dimalign ")]

    assert [shlex.split(line)[1] for line in examples] == ["import-triplets", "fit", "evaluate"]
    for line in examples:
        args = parser.parse_args(shlex.split(line)[1:])
        assert args.command == shlex.split(line)[1], line
    assert "dimalign COMMAND --help" in parser.format_help()
