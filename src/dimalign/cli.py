"""The ``dimalign`` command: one subcommand per pipeline step.

The CLI is thin. Each step's module under ``dimalign.<stage>.commands`` (or
similar) defines ``register(subparsers)``, which adds its subcommands with a
``handler(args) -> int`` set through ``set_defaults``. The handlers parse
options, call the library and write files. A command that writes an output
folder names it with :func:`declare_output_folder`, and :func:`main` checks
that folder before the handler runs.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import os
import select
import signal
import sqlite3
import sys
import threading
import warnings
from collections.abc import Callable, Iterator, Sequence
from operator import attrgetter
from typing import Any

from dimalign import __version__

logger = logging.getLogger("dimalign")

# Modules that register subcommands, in the order of the pipeline.
COMMAND_MODULES = (
    "dimalign.features.commands",  # extract, list-layers
    "dimalign.triplets.commands",  # import-triplets, simulate
    "dimalign.embedding.commands",  # fit
    "dimalign.analysis.commands",  # evaluate, sweep, select, compare, map
    "dimalign.interpret.commands",  # gradcam, maximize, manipulate, grid
    "dimalign.labeling.commands",  # label-app, labels
    "dimalign.report.commands",  # report, run
    "dimalign.demo",  # demo
)


# The end of ``dimalign --help``: a first session with the THINGS files, as in README.md.
FIRST_SESSION = """\
A first session: hold out 10% of the human THINGS judgements, fit VICE to the
rest for 20 epochs (a first look, far from converged), and score the fit on
the held-out triplets and the 48-object check:

  dimalign import-triplets human_triplets.txt --objects unique_id.txt --split 0.1 -o triplets
  dimalign fit triplets -o run --max-epochs 20
  dimalign evaluate run --triplets triplets/val.npy --things-dir THINGS_DIR

THINGS_DIR is the folder with the THINGS files (RDM48_triplet.mat, words48.csv,
unique_id.txt). Run 'dimalign COMMAND --help' for the options and examples of a command.
The guides are README.md and docs/ in the dimalign repository.
"""


class _CommandParser(argparse.ArgumentParser):
    """The top-level parser, which adds ``-v`` and ``-q`` after a subcommand to those before it.

    A subcommand's parser fills a namespace of its own, whose values replace
    the top-level ones, so its ``-v`` is stored apart and added here: ``-v fit
    ... -v`` counts 2, as ``-vv`` does.
    """

    def parse_known_args(self, args=None, namespace=None):
        namespace, extras = super().parse_known_args(args, namespace)
        namespace.verbose += vars(namespace).pop("verbose_after_command", 0)
        namespace.quiet = namespace.quiet or vars(namespace).pop("quiet_after_command", False)
        return namespace, extras


class _SubcommandParser(argparse.ArgumentParser):
    """A subcommand's parser, whose errors name the multiple-value option that may have read a positional argument.

    An option with several values, such as ``extract --layer``, takes every
    value that follows it. ``--layer classifier.4 photos/`` therefore reads
    ``photos/`` as a second layer, and argparse alone reports only that IMAGES
    is missing. With choices, as in ``--pool gap photos/``, argparse reports
    only that ``photos/`` is an invalid choice.
    """

    def parse_known_args(self, args=None, namespace=None):
        self._arguments = list(sys.argv[1:] if args is None else args)
        self._invalid_value = None
        return super().parse_known_args(args, namespace)

    def format_help(self):
        # Added after argparse's text, because argparse rewraps an epilog into one paragraph.
        examples = getattr(self, "examples", ())
        if not examples:
            return super().format_help()
        return super().format_help() + "\nexamples:\n" + "".join(f"  {example}\n" for example in examples)

    # The two methods below keep the invalid value for error(), which receives only the text of argparse's message.

    def _get_value(self, action, arg_string):
        try:
            return super()._get_value(action, arg_string)
        except argparse.ArgumentError:
            self._invalid_value = (action, arg_string)
            raise

    def _check_value(self, action, value):
        try:
            super()._check_value(action, value)
        except argparse.ArgumentError:
            self._invalid_value = (action, value)
            raise

    def error(self, message):
        if message.startswith("the following arguments are required: "):
            message += self._multiple_value_hint(message.split(": ", 1)[1].split(", "))
        elif getattr(self, "_invalid_value", None) is not None:
            message += self._invalid_choice_hint(*self._invalid_value)
        super().error(message)

    def _option_values(self, action: argparse.Action) -> list[tuple[int, str, list[str]]]:
        """Return ``(position, option, values)`` for each occurrence of ``action``'s options in the arguments.

        The values are the arguments that follow the option up to the next one
        that starts with ``-``.
        """
        arguments = getattr(self, "_arguments", [])
        occurrences = []
        for position, argument in enumerate(arguments):
            if argument not in action.option_strings:
                continue
            values = []
            for value in arguments[position + 1:]:
                if value.startswith("-"):
                    break
                values.append(value)
            occurrences.append((position, argument, values))
        return occurrences

    def _multiple_value_hint(self, missing_names: list[str]) -> str:
        """Return the advice for missing positional arguments that the last multiple-value option before them read."""
        positionals = [
            action.metavar or action.dest for action in self._actions if not action.option_strings
        ]
        missing = [name for name in missing_names if name in positionals]

        # The last occurrence counts, because only the last of repeated options reads the values at the end.
        candidates = [
            (position, option, action, values)
            for action in self._actions
            if action.nargs in ("+", "*")
            for position, option, values in self._option_values(action)
        ]
        if not missing or not candidates:
            return ""

        _, option, action, values = max(candidates, key=lambda candidate: candidate[0])
        # With one value the option read no second one, so the argument was left out instead.
        if len(values) < 2:
            return ""

        names = " and ".join(missing)
        # The first value of an option with choices is valid, so it makes a better example than the metavar.
        if action.choices:
            value = values[0]
        else:
            value = action.metavar if isinstance(action.metavar, str) else action.dest.upper()
        return (
            f". {option} takes all the values that follow it, so it may have read {names} as one of "
            f"its values: {_one_value_advice(option, action, f'put {names} before {option}', value)}"
        )

    def _invalid_choice_hint(self, action: argparse.Action, invalid: str) -> str:
        """Return the advice for an invalid value that a multiple-value option read after a valid one."""
        if action.nargs not in ("+", "*"):
            return ""
        positionals = [action.metavar or action.dest for action in self._actions if not action.option_strings]
        for _, option, values in self._option_values(action):
            # A first value that is invalid is a typo, not a positional argument read by the option.
            if invalid not in values[1:] or not positionals:
                continue
            reorder = f"if {invalid!r} is {' or '.join(positionals)}, put it before {option}"
            return (
                f". {option} takes all the values that follow it, so it read {invalid!r} as one of its "
                f"values: {_one_value_advice(option, action, reorder, values[0])}"
            )
        return ""


def _one_value_advice(option: str, action: argparse.Action, reorder: str, value: str) -> str:
    """Return the ways to end a multiple-value option: ``reorder``, or one value given with ``=``.

    One value with ``=`` is offered only for an option that collects its
    repeats (``extend`` or ``append``). A repeated ``--dim=0 --dim=3`` of a
    plain option keeps only its last value, so its values end with ``--`` instead.
    """
    if not isinstance(action, (argparse._ExtendAction, argparse._AppendAction)):
        return f"{reorder}, or end the values of {option} with --"
    return f"{reorder}, or give {option} one value with = ({option}={value})"


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser with every available subcommand."""
    parser = _CommandParser(
        prog="dimalign",
        description="Interpretable dimensions of object similarity in humans and DNNs.",
        epilog=FIRST_SESSION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"dimalign {__version__}")
    add_logging_options(parser, default_verbose=0, default_quiet=False)
    subparsers = parser.add_subparsers(
        dest="command", metavar="COMMAND", parser_class=_SubcommandParser
    )
    for module_name in COMMAND_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as error:
            # A step whose module is not written yet is left out; a missing
            # third-party package inside an existing module is a real error.
            if error.name != module_name:
                raise
            continue
        module.register(subparsers)
    _add_logging_options_to_commands(subparsers)
    return parser


def add_logging_options(
    parser: argparse.ArgumentParser, default_verbose: Any, default_quiet: Any, dest_suffix: str = ""
) -> None:
    """Add ``-v/--verbose`` and ``-q/--quiet``, stored as ``verbose`` and ``quiet`` + suffix."""
    parser.add_argument(
        "-v", "--verbose", action="count", default=default_verbose, dest=f"verbose{dest_suffix}",
        help="more log output (-vv for debug)",
    )
    parser.add_argument(
        "-q", "--quiet", action="store_true", default=default_quiet, dest=f"quiet{dest_suffix}",
        help="only warnings and errors",
    )


def _add_logging_options_to_commands(subparsers: argparse._SubParsersAction) -> None:
    """Let ``-v`` and ``-q`` also follow a subcommand, as in ``dimalign fit ... -q``.

    They are stored as ``verbose_after_command`` and ``quiet_after_command``
    without defaults, and :class:`_CommandParser` adds them to the options
    given before the subcommand. ``label-app`` passes
    everything after its first argument to its own parsers, so it keeps the
    options before the subcommand only.
    """
    for name, command_parser in subparsers.choices.items():
        if name == "label-app":
            continue
        nested = [action for action in command_parser._actions if isinstance(action, argparse._SubParsersAction)]
        if nested:
            _add_logging_options_to_commands(nested[0])
        else:
            add_logging_options(
                command_parser, argparse.SUPPRESS, argparse.SUPPRESS, dest_suffix="_after_command"
            )


def add_examples(parser: argparse.ArgumentParser, *examples: str) -> None:
    """Set the command lines that end a subcommand's ``--help``, under ``examples:``.

    Args:
        parser (argparse.ArgumentParser): The subcommand's parser.
        *examples (str): Whole command lines, such as ``"dimalign fit triplets -o run"``.
    """
    parser.examples = examples


def written_line(path: str | os.PathLike, summary: str) -> str:
    """Return the final line of a command that writes output: ``wrote PATH: SUMMARY``.

    Args:
        path (str | os.PathLike): The file or folder that the command wrote.
        summary (str): The main numbers of the result, such as ``"3 Grad-CAM maps for 1 image"``.
    """
    return f"wrote {path}: {summary}"


def print_written(path: str | os.PathLike, summary: str) -> None:
    """Print :func:`written_line` on standard output, where scripts read it.

    It bypasses the log, so ``-q`` keeps it. Call it after the output is in
    place, so that the line always comes with exit status 0.
    """
    print(written_line(path, summary), flush=True)


def declare_output_folder(
    parser: argparse.ArgumentParser,
    step: str,
    folder: Callable[[argparse.Namespace], str | os.PathLike | None] = attrgetter("out"),
) -> None:
    """Mark a command as one that writes an output folder, which :func:`main` checks before the command runs.

    :func:`main` rejects a folder that ``dimalign run`` owns (see
    :func:`dimalign.report.pipeline.check_outside_study_folders`) before the
    handler reads an input, loads a model or fits. The stages of
    ``dimalign run`` call the library, not these handlers, so their hidden
    work folders are not checked here.

    Args:
        parser (argparse.ArgumentParser): The command's parser.
        step (str): The command as typed, for messages, such as ``"labels summarize"``.
        folder (Callable[[argparse.Namespace], str | os.PathLike | None]): Returns
            the folder that the command writes, from its parsed arguments, or
            None where it writes none (``evaluate`` without ``-o``). The default
            reads ``args.out``.
    """
    parser.set_defaults(output_folder=(step, folder))


def check_output_folder(args: argparse.Namespace) -> None:
    """Reject the output folder of a command marked by :func:`declare_output_folder` if ``dimalign run`` owns it.

    Raises:
        FileExistsError: If the folder is a study directory, a stage folder
            of one, or a folder with a stage record of ``dimalign run``.
    """
    declared = getattr(args, "output_folder", None)
    if declared is None:
        return
    step, folder = declared
    out_dir = folder(args)
    if out_dir is None:
        return
    from dimalign.report.pipeline import check_outside_study_folders

    check_outside_study_folders(out_dir, step)


def configure_logging(verbose: int = 0, quiet: bool = False) -> None:
    """Send dimalign's log records to standard error with a short format."""
    level = logging.INFO
    if quiet:
        level = logging.WARNING
    elif verbose > 1:
        level = logging.DEBUG
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
    root = logging.getLogger("dimalign")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False


class Terminated(SystemExit):
    """Raised in the main thread when the process receives SIGTERM or SIGHUP."""


def _exit_on_sigterm(signum: int, frame: Any) -> None:
    raise Terminated(128 + signum)


@contextlib.contextmanager
def sigterm_as_exit() -> Iterator[None]:
    """Turn SIGTERM and SIGHUP into ``SystemExit`` inside the block.

    Python ends on SIGTERM (what ``timeout`` and ``kill`` send) and on SIGHUP
    (what a closed terminal sends) without unwinding, so cleanup such as
    removing an unfinished output folder would not run. A SIGHUP that is
    ignored already, as under ``nohup``, stays ignored. Outside the main
    thread the handlers cannot be set, and the block runs unchanged.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signal.SIGTERM: signal.signal(signal.SIGTERM, _exit_on_sigterm)}
    # Windows has no SIGHUP.
    hangup = getattr(signal, "SIGHUP", None)
    if hangup is not None and signal.getsignal(hangup) is not signal.SIG_IGN:
        previous[hangup] = signal.signal(hangup, _exit_on_sigterm)
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


@contextlib.contextmanager
def warnings_to_log() -> Iterator[None]:
    """Show Python warnings as WARNING lines of the ``dimalign`` log inside the block.

    The library warns with ``warnings.warn`` so that notebooks show doubtful
    results; on the command line those warnings get the log's format, and
    ``-q`` keeps them.
    """
    previous = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None) -> None:
        if issubclass(category, (UserWarning, RuntimeWarning)) and not issubclass(category, DeprecationWarning):
            logger.warning("%s", message)
        else:
            logger.warning("%s: %s (%s:%d)", category.__name__, message, filename, lineno)

    warnings.showwarning = show
    try:
        yield
    finally:
        warnings.showwarning = previous


def _stdout_closed() -> bool:
    """Return whether standard output is a pipe whose reader has gone.

    A failed write may already have dropped the buffered text, so the pipe
    itself is asked: its write end reports POLLERR once the read end closed.
    """
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        events = poller.poll(0)
    except (AttributeError, OSError, ValueError):
        # No poll() (Windows) or no file descriptor behind sys.stdout.
        return False
    return any(event & select.POLLERR for _, event in events)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``dimalign`` command line and return its exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(args.verbose, args.quiet)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    from dimalign.io.files import recording_command_line

    command_line = ["dimalign", *(sys.argv[1:] if argv is None else argv)]
    try:
        with sigterm_as_exit(), warnings_to_log(), recording_command_line(command_line):
            check_output_folder(args)
            return int(args.handler(args) or 0)
    except (KeyboardInterrupt, Terminated) as error:
        signal_name = signal.Signals(int(error.code) - 128).name if isinstance(error, Terminated) else "Ctrl-C"
        print(f"dimalign {args.command}: stopped by {signal_name}", file=sys.stderr)
        return int(error.code) if isinstance(error, Terminated) else 130
    except MemoryError as error:
        # numpy raises it when one array is too large to allocate (a count setting
        # far too high, say), so the process still has the memory to report it.
        logger.debug("command failed", exc_info=True)
        print(
            f"dimalign {args.command}: error: out of memory ({error}); lower the settings that size the "
            "work, such as counts of triplets, samples or dimensions",
            file=sys.stderr,
        )
        return 1
    except BrokenPipeError as error:
        if not _stdout_closed():
            print(f"dimalign {args.command}: error: {error}", file=sys.stderr)
            return 1
        # The reader of standard output went away (``dimalign evaluate ... | head``).
        # Point stdout at /dev/null so that the interpreter's final flush stays quiet.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except (
        # OSError covers the file system's refusals (permissions, a full or
        # read-only disk, a file where a folder belongs), which the user fixes.
        # sqlite3.Error covers a labelling study's database that is locked or damaged.
        ValueError, OSError, KeyError, RuntimeError, sqlite3.Error,
    ) as error:
        logger.debug("command failed", exc_info=True)
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        print(f"dimalign {args.command}: error: {message}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
