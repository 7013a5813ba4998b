"""Every ``dimalign ...`` command line in README.md and docs/*.md uses the real parser.

The shell examples are not run (many fit for minutes or need files that are
not here). Each command in a fenced block other than Python or TOML is
checked against :func:`dimalign.cli.build_parser`. Its subcommand must
exist, and so must every long option it names. A literal value given to an
option with fixed choices must be one of them. Synopsis lines such as
``dimalign map FEATURES --embedding RUN -o OUT [--layer L]`` and inline code
spans such as ``dimalign label-app RUN --images DIR`` are checked the same
way, so the documentation cannot drift from the command line.
"""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from dimalign.cli import build_parser
from dimalign.labeling import commands as labeling_commands

REPO_ROOT = Path(__file__).resolve().parents[1]
DOC_FILES = [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]

# "dimalign" as a command: at the start of a line (after a "$ " prompt,
# environment assignments or a path such as .venv/bin/), or after "&&".
COMMAND = re.compile(r"(?:^|&&)\s*(?:\$\s+)?(?:[A-Z_]+=\S*\s+)*(?:\S*/)?dimalign\s+(?P<arguments>.*)")
# An inline code span that starts with "dimalign" and a lower-case subcommand, such as
# `dimalign label-app RUN --images DIR` (`dimalign COMMAND --help` is a placeholder).
INLINE_COMMAND = re.compile(r"`(?:\S*/)?dimalign\s+(?P<arguments>[a-z][^`]*)`")
LONG_OPTION = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")
# A literal choice value: lower-case words, possibly alternatives joined by "|".
CHOICE_VALUE = re.compile(r"[a-z][a-z0-9_]*(?:\|[a-z][a-z0-9_]*)*")


@dataclass(frozen=True)
class DocCommand:
    """One ``dimalign`` command line of a fenced block."""

    path: Path
    line: int  # 1-based line where the command starts
    arguments: str  # everything after "dimalign", continuation lines joined

    @property
    def name(self) -> str:
        return f"{self.path.name}:{self.line}"


def _fenced_lines(path: Path) -> list[tuple[int, str]]:
    """Return (line number, text) of every line inside fenced blocks other than Python or TOML."""
    lines = []
    language = None
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if line.startswith("```"):
            language = line[3:].strip() if language is None else None
            continue
        if language is not None and language not in ("python", "toml"):
            lines.append((number, line))
    return lines


def extract_commands(path: Path) -> list[DocCommand]:
    """Find the ``dimalign`` command lines of one Markdown file.

    A command goes on in the next line when its line ends with a backslash
    or the next line is indented, as in the synopses of the docs.
    """
    commands = []
    current: tuple[int, list[str]] | None = None
    previous_number = None
    for number, line in _fenced_lines(path):
        continues = (
            current is not None
            and previous_number == number - 1
            and (line[:1].isspace() or current[1][-1].rstrip().endswith("\\"))
        )
        previous_number = number
        if continues:
            current[1].append(line.strip())
        else:
            if current is not None:
                commands.append(_command(path, *current))
                current = None
            match = COMMAND.search(line)
            if match is not None:
                current = (number, [match.group("arguments")])
    if current is not None:
        commands.append(_command(path, *current))
    return commands


def _command(path: Path, start: int, lines: list[str]) -> DocCommand:
    # A comment ends its line, so "# folder from dimalign simulate" is no option.
    parts = [re.sub(r"(^|\s)#.*$", "", line).rstrip().removesuffix("\\").strip() for line in lines]
    return DocCommand(path, start, " ".join(part for part in parts if part))


def extract_inline_commands(path: Path) -> list[DocCommand]:
    """Find the ``dimalign`` commands in inline code spans outside fenced blocks."""
    commands = []
    in_fence = False
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if line.startswith("```"):
            in_fence = not in_fence
            continue
        if not in_fence:
            commands += [DocCommand(path, number, match.group("arguments")) for match in INLINE_COMMAND.finditer(line)]
    return commands


DOC_COMMANDS = [
    command for path in DOC_FILES for command in (*extract_commands(path), *extract_inline_commands(path))
]


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _options(parsers: list[argparse.ArgumentParser]) -> dict[str, argparse.Action]:
    return {option: action for parser in parsers for action in parser._actions for option in action.option_strings}


def resolve_parsers(arguments: list[str]) -> tuple[str, list[argparse.ArgumentParser]]:
    """Return the command name and the parsers whose options it accepts.

    ``label-app`` hands its arguments to parsers of its own, one per action
    (``setup``, ``serve``, ``export``). Its short form ``label-app RUN``
    takes the options of ``setup`` and ``serve`` together.
    """
    top = build_parser()
    positionals = [token for token in arguments if not token.startswith("-")]
    assert positionals, f"no subcommand in 'dimalign {' '.join(arguments)}'"
    command = positionals[0]
    commands = _subparsers(top)
    assert command in commands, f"unknown subcommand {command!r}; the parser has {sorted(commands)}"
    parser = commands[command]

    if command == "label-app":
        action = positionals[1] if len(positionals) > 1 else ""
        if action in labeling_commands.LABEL_APP_ACTIONS:
            return f"label-app {action}", [top, labeling_commands._action_parser(action)]
        # NOTE: the short form builds its parser inside the handler, so this union of
        # setup and serve is an approximation of it.
        short_form = [labeling_commands._action_parser(name) for name in ("setup", "serve")]
        return "label-app RUN", [top, *short_form]

    nested = _subparsers(parser)
    if nested:
        action = positionals[1] if len(positionals) > 1 else None
        assert action in nested, f"'dimalign {command}' needs one of {sorted(nested)}, got {action!r}"
        return f"{command} {action}", [top, nested[action]]
    return command, [top, parser]


def test_docs_contain_commands():
    names = {command.path.name for command in DOC_COMMANDS}
    assert {"README.md", "compare.md", "embedding.md", "interpret.md", "labeling.md"} <= names
    assert len(DOC_COMMANDS) >= 80


@pytest.mark.parametrize("command", DOC_COMMANDS, ids=lambda command: command.name)
def test_doc_command_matches_parser(command):
    tokens = command.arguments.split()
    name, parsers = resolve_parsers(tokens)
    options = _options(parsers)

    for option in LONG_OPTION.findall(command.arguments):
        assert option in options, f"{command.name}: 'dimalign {name}' has no option {option}"

    for index, token in enumerate(tokens[:-1]):
        option = token.strip("[](")
        action = options.get(option)
        if action is None or not action.choices:
            continue
        value = tokens[index + 1].strip("[]()")
        if not CHOICE_VALUE.fullmatch(value):
            continue  # a placeholder such as N or {raw,flatten,gap}
        for choice in value.split("|"):
            assert choice in action.choices, (
                f"{command.name}: {option} {choice!r} is not one of {sorted(action.choices)}"
            )


def test_unknown_option_detected():
    command = DocCommand(Path("example.md"), 1, "fit triplets.npy -o run --max-epoch 5")
    with pytest.raises(AssertionError, match="no option --max-epoch"):
        test_doc_command_matches_parser(command)


def test_unknown_choice_detected():
    command = DocCommand(Path("example.md"), 1, "grid run -o grids --layout percentiles")
    with pytest.raises(AssertionError, match="'percentiles' is not one of"):
        test_doc_command_matches_parser(command)
