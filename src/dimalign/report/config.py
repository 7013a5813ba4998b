"""Study configuration files for ``dimalign run``: reading, ``--set`` overrides and paths.

A study file is TOML with three kinds of tables::

    [study]          name, data_dir, seed, device
    [inputs]         named input files and folders
    [human_fit]      one table per stage, holding that stage's settings
    ...

Paths: a relative path resolves from the folder of the configuration file,
and ``${data_dir}`` inside a path is replaced by ``study.data_dir`` (itself
relative to the configuration file's folder). A path given with ``--set`` on
the command line resolves from the current directory instead, as shells do.
"""

from __future__ import annotations

import copy
import hashlib
import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: Tables that are not stages.
STUDY_TABLE = "study"
INPUTS_TABLE = "inputs"

#: Settings of the ``[study]`` table, with their defaults and meaning.
STUDY_SETTINGS: dict[str, tuple[Any, str]] = {
    "name": ("", "title of the study, shown in the report"),
    "data_dir": ("", "folder substituted for ${data_dir} in input paths"),
    "seed": (0, "seed of every stage that has no seed of its own"),
    "device": ("cpu", "torch device of every stage that has no device of its own: cpu, cuda or auto"),
}

#: Input keys a study may name in ``[inputs]``, with their meaning.
INPUT_KEYS: dict[str, str] = {
    "objects": "object table: objects.tsv or one name per line (THINGS unique_id.txt)",
    "human_triplets": "human odd-one-out triplets (0-based, odd one out last unless human_fit says otherwise)",
    "human_embedding": "human embedding used in place of a human fit: a .npy/.txt file with one row per object, "
    "or a run folder of 'dimalign fit'",
    "dnn_features": "DNN features: a .npy/.h5/.txt file or a feature folder from 'dimalign extract'",
    "images": "image folder: <object_id>.<ext> or <object_id>/<first image>",
    "things_dir": "THINGS data folder with RDM48_triplet.mat, words48.csv and unique_id.txt (48-object check)",
    "categories": "category matrix: a header of category names, then one 0/1 row per object (category_mat_manual.tsv)",
    "labels": "output folder of 'dimalign labels summarize' (word clouds, kinds of dimensions)",
}

#: Kind of each input on disk: a file, a folder, or either.
INPUT_KINDS: dict[str, str] = {
    "objects": "file", "human_triplets": "file", "human_embedding": "either", "dnn_features": "either",
    "images": "folder", "things_dir": "folder", "categories": "file", "labels": "folder",
}

_DATA_DIR_PATTERN = re.compile(r"\$\{data_dir\}")


@dataclass(frozen=True)
class Override:
    """One ``--set SECTION.KEY=VALUE`` from the command line.

    Attributes:
        section (str): ``study``, ``inputs`` or a stage name.
        key (str): The setting.
        value (Any): The value parsed as TOML (a plain string when it is not TOML).
        text (str): The argument as typed.
    """

    section: str
    key: str
    value: Any
    text: str


@dataclass
class StudyConfig:
    """A study file after overrides.

    Attributes:
        path (Path): The configuration file.
        base_dir (Path): The folder relative paths resolve from.
        study (dict[str, Any]): The ``[study]`` table with defaults filled in.
        inputs (dict[str, str]): The ``[inputs]`` table as written.
        stages (dict[str, dict[str, Any]]): Settings per stage, in file order.
        overrides (list[Override]): The ``--set`` values applied.
        original (dict[str, Any]): The file's content before overrides.
        cli_values (set[tuple[str, str]]): ``(section, key)`` pairs set on the
            command line (their paths resolve from the current directory).
        sha256 (str): SHA-256 of the file's bytes as read, so that an edit
            during a long run does not change what the run records.
    """

    path: Path
    base_dir: Path
    study: dict[str, Any]
    inputs: dict[str, str]
    stages: dict[str, dict[str, Any]]
    overrides: list[Override] = field(default_factory=list)
    original: dict[str, Any] = field(default_factory=dict)
    cli_values: set[tuple[str, str]] = field(default_factory=set)
    sha256: str = ""

    def resolve_path(self, value: str, section: str, key: str) -> Path:
        """Resolve a path value of ``section.key`` (see the module docstring)."""
        text = str(value)
        if _DATA_DIR_PATTERN.search(text):
            data_dir = self.study.get("data_dir", "")
            if not data_dir:
                raise ValueError(
                    f"{section}.{key} = {text!r} in {self.path} uses ${{data_dir}}, but "
                    "[study] sets no data_dir; add data_dir = \"...\" under [study]"
                )
            text = _DATA_DIR_PATTERN.sub(
                str(self.resolve_path(data_dir, STUDY_TABLE, "data_dir")).replace("\\", "/"), text
            )
        path = Path(os.path.expanduser(text))
        if path.is_absolute():
            return path
        base = Path.cwd() if (section, key) in self.cli_values else self.base_dir
        return (base / path).resolve()

    def origin(self, section: str, key: str) -> str:
        """Say where ``section.key`` was set: ``set with --set`` or ``in <study file>``."""
        return "set with --set" if (section, key) in self.cli_values else f"in {self.path}"

    def input_path(self, key: str) -> Path | None:
        """Return the resolved path of ``inputs.key``, or None when the study names none."""
        value = self.inputs.get(key)
        if value in (None, ""):
            return None
        return self.resolve_path(value, INPUTS_TABLE, key)


def parse_override(text: str) -> Override:
    """Parse ``SECTION.KEY=VALUE``, reading VALUE as a TOML value.

    ``3`` is an integer, ``0.5`` a float, ``true`` a boolean, ``[1, 2]`` a
    list and ``"abc"`` a string. A value that is not valid TOML, such as
    ``cuda`` without quotes, is taken as a plain string.

    Raises:
        ValueError: If the text lacks ``=`` or the key is not ``SECTION.KEY``.

    Examples:
        >>> parse_override("human_fit.max_epochs=3").value
        3
        >>> parse_override("study.device=cuda").value
        'cuda'
    """
    name, separator, raw_value = text.partition("=")
    if not separator:
        raise ValueError(f"--set {text!r} is invalid: use SECTION.KEY=VALUE, such as human_fit.max_epochs=3")
    parts = [part.strip() for part in name.split(".")]
    if len(parts) != 2 or not all(parts):
        raise ValueError(
            f"--set {text!r} is invalid: the key must be SECTION.KEY (a stage, 'study' or 'inputs', "
            "then a setting), such as dnn_triplets.n_triplets=20000"
        )
    raw_value = raw_value.strip()
    try:
        value = tomllib.loads(f"value = {raw_value}")["value"]
    except tomllib.TOMLDecodeError:
        value = raw_value
    return Override(parts[0], parts[1], value, text)


def load_config(path: str | os.PathLike, overrides: list[str] | tuple[str, ...] = ()) -> StudyConfig:
    """Read a study file and apply ``--set`` overrides.

    Only the layout is checked here (tables and their types, the ``[study]``
    and ``[inputs]`` keys). Stage names and settings are checked by
    :func:`dimalign.report.pipeline.plan_study` against the stage definitions.

    Args:
        path (str | os.PathLike): The TOML file.
        overrides (Sequence[str]): ``SECTION.KEY=VALUE`` strings, applied in order.

    Returns:
        StudyConfig: The configuration.

    Raises:
        FileNotFoundError: If the file does not exist.
        IsADirectoryError: If the path is a folder.
        ValueError: On text that is not UTF-8, invalid TOML, a table of the wrong type, an unknown
            ``[study]`` or ``[inputs]`` key, a ``data_dir`` that contains
            ``${data_dir}``, or an override of a table that the file does not have.
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"study file {path} is a folder: give the TOML file, such as {path / 'study.toml'}")
    if not path.is_file():
        raise FileNotFoundError(f"study file {path} not found")
    try:
        # utf-8-sig drops the byte order mark that some Windows editors write
        # before UTF-8 text, which tomllib would reject as an invalid statement.
        data = path.read_bytes()
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise ValueError(
            f"{path} is not UTF-8 text (byte {error.object[error.start]:#04x} at offset {error.start}); "
            "save the study file as UTF-8"
        ) from error
    try:
        content = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ValueError(f"{path} is not valid TOML: {error}") from error

    for name, value in content.items():
        if not isinstance(value, dict):
            raise ValueError(
                f"{path}: top-level key {name!r} must be a table ([{name}]); put study-wide "
                "settings under [study] and inputs under [inputs]"
            )
    original = copy.deepcopy(content)
    study = dict(content.pop(STUDY_TABLE, {}))
    inputs = dict(content.pop(INPUTS_TABLE, {}))
    stages = {name: dict(settings) for name, settings in content.items()}
    config = StudyConfig(
        path=path.resolve(), base_dir=path.resolve().parent, study=study, inputs=inputs,
        stages=stages, original=original, sha256=hashlib.sha256(data).hexdigest(),
    )
    for text in overrides:
        _apply_override(config, parse_override(text))

    _check_keys(config, config.study, STUDY_SETTINGS, STUDY_TABLE)
    _check_keys(config, config.inputs, INPUT_KEYS, INPUTS_TABLE)
    for key, value in config.inputs.items():
        if not isinstance(value, str):
            raise ValueError(f"inputs.{key} in {path} must be a path string, got {value!r}")
    for key, (default, _) in STUDY_SETTINGS.items():
        config.study.setdefault(key, default)
    _check_study_types(config)
    return config


def _apply_override(config: StudyConfig, override: Override) -> None:
    if override.section == STUDY_TABLE:
        table = config.study
    elif override.section == INPUTS_TABLE:
        table = config.inputs
    elif override.section in config.stages:
        table = config.stages[override.section]
    else:
        sections = [STUDY_TABLE, INPUTS_TABLE, *config.stages]
        if override.section == "human_fit" and config.inputs.get("human_embedding") not in (None, ""):
            advice = (
                "the study takes its human embedding from inputs.human_embedding and fits none; "
                "to fit one, remove inputs.human_embedding and add a [human_fit] table"
            )
        else:
            advice = f"add a [{override.section}] table to the file to run that stage"
        raise ValueError(
            f"--set {override.text!r}: {config.path} has no stage {override.section!r}; "
            f"sections in this file: {', '.join(sections)} ({advice})"
        )
    table[override.key] = override.value
    config.overrides.append(override)
    config.cli_values.add((override.section, override.key))


def _check_keys(config: StudyConfig, table: dict[str, Any], valid: dict[str, Any], section: str) -> None:
    unknown = sorted(set(table) - set(valid))
    if unknown:
        raise ValueError(
            f"unknown key{'s' if len(unknown) > 1 else ''} {', '.join(unknown)} in [{section}] "
            f"({config.origin(section, unknown[0])}); valid keys: {', '.join(valid)}"
        )


def _check_study_types(config: StudyConfig) -> None:
    for key, (default, _) in STUDY_SETTINGS.items():
        value = config.study[key]
        if isinstance(value, bool) or not isinstance(value, type(default)):
            raise ValueError(
                f"study.{key} = {value!r} ({config.origin(STUDY_TABLE, key)}) is invalid: "
                f"expected {_TYPE_NAMES[type(default)]}"
            )
    if _DATA_DIR_PATTERN.search(config.study["data_dir"]):
        # resolve_path would substitute data_dir into itself without end.
        raise ValueError(
            f"study.data_dir = {config.study['data_dir']!r} ({config.origin(STUDY_TABLE, 'data_dir')}) is "
            "invalid: it cannot contain ${data_dir} itself; give the folder's path"
        )
    if config.study["seed"] < 0:
        raise ValueError(
            f"study.seed = {config.study['seed']} ({config.origin(STUDY_TABLE, 'seed')}) is invalid: "
            "use 0 or more"
        )
    from dimalign.device import resolve_device

    try:
        resolve_device(config.study["device"])
    except ValueError as error:
        raise ValueError(f"study.device ({config.origin(STUDY_TABLE, 'device')}): {error}") from error


_TYPE_NAMES = {str: "a string", int: "an integer"}


def config_value(config: StudyConfig, section: str, key: str) -> Any:
    """Return the value of ``section.key`` in the file before overrides, or None when absent."""
    return config.original.get(section, {}).get(key)


def format_toml_value(value: Any) -> str:
    """Write a setting's value as the study file would, such as ``true``, ``"cuda"`` or ``[1, 2]``.

    TOML has no null, so None (a setting without a value in the file and
    without a default) is written ``not set``.

    Examples:
        >>> format_toml_value(False), format_toml_value("cuda"), format_toml_value([1, 0.5])
        ('false', '"cuda"', '[1, 0.5]')
    """
    import tomli_w

    if value is None:
        return "not set"
    # tomli_w writes arrays over several lines and a dict as a table, so both are built here.
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(format_toml_value(item) for item in value) + "]"
    if isinstance(value, dict):
        items = (f"{_format_toml_key(key)} = {format_toml_value(item)}" for key, item in value.items())
        return "{" + ", ".join(items) + "}"
    return tomli_w.dumps({"value": value}).removeprefix("value = ").rstrip("\n")


def _format_toml_key(key: str) -> str:
    """Write a key bare when TOML allows it, else as a quoted string."""
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else format_toml_value(key)


__all__ = [
    "INPUT_KEYS",
    "STUDY_SETTINGS",
    "Override",
    "StudyConfig",
    "config_value",
    "format_toml_value",
    "load_config",
    "parse_override",
]
