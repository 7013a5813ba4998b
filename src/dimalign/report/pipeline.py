"""``dimalign run``: run a whole study from one TOML file, skipping stages whose inputs are unchanged.

Each stage writes its own folder of the study directory (``study/human_fit``,
``study/compare``, ...). Its ``manifest.json`` gets a ``pipeline`` record
with the stage's hash: the SHA-256 of

- the stage's checked settings (defaults filled in),
- a fingerprint of every study input it reads (the SHA-256 of a file, or
  of a folder's files with their paths, sizes and SHA-256 digests),
- the hashes of the stages it reads.

A stage runs when its folder has no record ("new"), when its settings,
inputs or upstream hashes differ from the record, or when a file that the
record lists with its size and SHA-256 was edited or deleted. It also runs when a stage
it reads runs in the same call, and when ``--from`` names it or a stage it
depends on. Otherwise it is skipped.

A stage writes into ``study/.<stage>.partial-<hash>`` and the folder is
renamed to ``study/<stage>`` only when the stage has finished, so an
interrupted stage never looks finished. A fit stage keeps its partial folder
when interrupted, and the next run with the same hash resumes the fit from
its checkpoint.

This module plans and runs the stages. The input fingerprints are in
:mod:`~dimalign.report.fingerprints`, the stage records and the checks of
stage folders in :mod:`~dimalign.report.stage_records`, and the partial,
old and edited folders in :mod:`~dimalign.report.stage_folders`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shlex
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dimalign.io.files import (
    MANIFEST_NAME,
    acquire_lock,
    check_output_dir,
    now_iso,
    read_manifest,
    release_lock,
    sha256_file,
    write_manifest,
    write_text_atomic,
)
from dimalign.report.config import (
    INPUT_KINDS,
    INPUTS_TABLE,
    STUDY_TABLE,
    StudyConfig,
    config_value,
    format_toml_value,
    load_config,
)
from dimalign.report.fingerprints import FingerprintCache, input_fingerprints
from dimalign.report.settings import check_settings
from dimalign.report.stage_folders import (
    finished_work,
    partial_folder,
    remove_stale_folders,
    remove_tree,
    remove_tree_or_warn,
    replace_folder,
    reusable_work,
    warn_edited_leftovers,
)
from dimalign.report.stage_records import (
    file_digests,
    output_changes,
    read_stage_record,
    reject_unwritten_files,
    stage_files,
)
from dimalign.report.stages import (
    EMBEDDING_REASON,
    STAGE_ORDER,
    STAGES,
    Stage,
    StageContext,
    stage_definition,
    weights_file,
)

logger = logging.getLogger(__name__)

#: Changes when the meaning of a stage hash changes, so that old records rerun.
PIPELINE_FORMAT = 1

#: The study directory's record of the last run: config file, overrides, plan.
STUDY_RECORD_NAME = "pipeline.json"

_LOCK_NAME = ".pipeline.lock"


@dataclass
class SettingChange:
    """A ``--set`` value compared with the study file.

    Attributes:
        key (str): ``section.key``.
        before (Any): The value in the file, else the default (None where neither exists).
        after (Any): The value set.
        kind (str): ``shortened`` (a smaller number), ``changed`` or ``added``.
    """

    key: str
    before: Any
    after: Any
    kind: str

    def describe(self) -> str:
        """Return a line such as ``human_fit.max_epochs: 1000 -> 3 (shortened)``, with TOML values."""
        return f"{self.key}: {format_toml_value(self.before)} -> {format_toml_value(self.after)} ({self.kind})"

    def to_dict(self) -> dict[str, Any]:
        """Return the change as JSON-ready data."""
        return {"key": self.key, "before": self.before, "after": self.after, "kind": self.kind}


@dataclass
class PlannedStage:
    """One stage of a plan.

    Attributes:
        name (str): The stage.
        settings (dict[str, Any]): Checked settings.
        upstream (list[str]): Stages it reads.
        upstream_hashes (dict[str, str]): Their hashes.
        inputs (dict[str, Path]): Study inputs it reads.
        fingerprints (dict[str, str]): Fingerprint of each input.
        hash (str): The stage hash (see the module docstring).
        action (str): ``run`` or ``skip``.
        reasons (list[str]): Why it runs, or ``unchanged``.
        changes (list[SettingChange]): ``--set`` values of this stage.
        seconds (float | None): Time the stage took, once run.
        forced (bool): ``--from`` names the stage or a stage that it reads.
    """

    name: str
    settings: dict[str, Any]
    upstream: list[str]
    upstream_hashes: dict[str, str]
    inputs: dict[str, Path]
    fingerprints: dict[str, str]
    hash: str
    action: str = "run"
    reasons: list[str] = field(default_factory=list)
    changes: list[SettingChange] = field(default_factory=list)
    seconds: float | None = None
    forced: bool = False


@dataclass
class StudyPlan:
    """The plan of ``dimalign run`` for a study, with the time of each stage once run.

    Attributes:
        config (StudyConfig): The configuration.
        study_dir (Path): The study directory.
        stages (list[PlannedStage]): Configured stages in run order.
        changes (list[SettingChange]): Every ``--set`` value.
    """

    config: StudyConfig
    study_dir: Path
    stages: list[PlannedStage]
    changes: list[SettingChange]

    def stage(self, name: str) -> PlannedStage:
        """Return the planned stage ``name``."""
        for stage in self.stages:
            if stage.name == name:
                return stage
        raise KeyError(f"stage {name!r} is not in this plan: {', '.join(s.name for s in self.stages)}")

    @property
    def to_run(self) -> list[str]:
        """Names of the stages that run."""
        return [stage.name for stage in self.stages if stage.action == "run"]

    def format(self) -> str:
        """Format the plan as a table: stage, action, reason."""
        width = max(len(stage.name) for stage in self.stages) if self.stages else 5
        lines = [f"{'stage':<{width}}  action  reason"]
        for stage in self.stages:
            seconds = f" ({stage.seconds:.1f} s)" if stage.seconds is not None else ""
            lines.append(f"{stage.name:<{width}}  {stage.action:<6}  {'; '.join(stage.reasons)}{seconds}")
        return "\n".join(lines)

    def format_changes(self) -> str:
        """List the ``--set`` values, marking the shortened ones; empty without any."""
        if not self.changes:
            return ""
        shortened = [change for change in self.changes if change.kind == "shortened"]
        lines = [f"settings changed from {self.config.path} with --set"
                 f" ({len(shortened)} shortened for a quick run):"]
        lines += [f"  {change.describe()}" for change in self.changes]
        return "\n".join(lines)


# -- planning ---------------------------------------------------------------------


def plan_study(
    config: StudyConfig, study_dir: str | os.PathLike, *, from_stage: str | None = None
) -> StudyPlan:
    """Check a study configuration and decide which stages run.

    Args:
        config (StudyConfig): From :func:`dimalign.report.config.load_config`.
        study_dir (str | os.PathLike): The study directory (need not exist).
        from_stage (str | None): Rerun this stage and every stage that reads it,
            directly or through others.

    Returns:
        StudyPlan: Every configured stage with its action and reasons.

    Raises:
        ValueError: For an unknown stage or setting, an invalid value, a stage
            whose upstream stage is not configured, a required input that
            the study file does not name, or a named pipe, socket or device
            inside a folder input.
        FileNotFoundError: For an input path that does not exist, naming the
            file and its key.
        OSError: For a file of a folder input or of a finished stage folder
            that cannot be read, because the plan hashes both.
    """
    return _plan_study(config, Path(study_dir), from_stage, FingerprintCache())


def _plan_study(
    config: StudyConfig, study_dir: Path, from_stage: str | None, fingerprints: FingerprintCache
) -> StudyPlan:
    unknown = [name for name in config.stages if name not in STAGES]
    if unknown:
        raise ValueError(
            f"unknown stage{'s' if len(unknown) > 1 else ''} {', '.join(unknown)} in {config.path}; "
            f"valid stages: {', '.join(STAGE_ORDER)} (and the tables [{STUDY_TABLE}] and [{INPUTS_TABLE}])"
        )
    if not config.stages:
        raise ValueError(f"{config.path} configures no stage; add tables such as [human_fit]")
    configured = set(config.stages)
    uses_embedding = _uses_embedding(config)
    if uses_embedding:
        # The given embedding takes the place of the human fit, with or without a [human_fit] table.
        configured.add("human_fit")
    if from_stage is not None and from_stage not in configured:
        listed = ", ".join(name for name in STAGE_ORDER if name in configured)
        if from_stage not in STAGES:
            raise ValueError(f"--from {from_stage}: unknown stage; stages of this study: {listed}")
        raise ValueError(f"--from {from_stage}: {config.path} does not configure that stage; its stages: {listed}")

    planned: dict[str, PlannedStage] = {}
    for name in STAGE_ORDER:
        if name not in configured:
            continue
        planned[name] = _plan_stage(config, name, configured, planned, fingerprints, study_dir)

    _check_held_out_readers(config, planned)
    if uses_embedding:
        _check_embedding_readers(config, planned)
    _decide(planned, study_dir, from_stage)
    if uses_embedding:
        planned["human_fit"].reasons.append(EMBEDDING_REASON)
    changes = [change for stage in planned.values() for change in stage.changes]
    changes = _study_changes(config) + changes
    return StudyPlan(config, study_dir, list(planned.values()), changes)


def _check_held_out_readers(config: StudyConfig, planned: dict[str, PlannedStage]) -> None:
    """Reject a study whose evaluate or compare stage reads held-out triplets that a 0 fraction leaves empty."""
    sources = {"human_fit": ("human_fit", "val_fraction"), "dnn_fit": ("dnn_triplets", "val_fraction")}
    readers = []
    if "evaluate" in planned:
        readers += [("evaluate", fit) for fit in planned["evaluate"].upstream]
    if "compare" in planned and planned["compare"].settings["relevance_triplets"] != 0:
        readers.append(("compare (relevance_triplets)", "human_fit"))
    for reader, fit in readers:
        stage, key = sources[fit]
        # A given human embedding has no held-out part, so its human_fit has no val_fraction.
        if stage in planned and planned[stage].settings.get(key) == 0:
            raise ValueError(
                f"{stage}.{key} = 0 ({config.origin(stage, key)}) leaves no held-out triplets, but stage "
                f"{reader} scores the held-out triplets of {fit}; set {stage}.{key} above 0"
                + (" or compare.relevance_triplets = 0" if reader.startswith("compare") else "")
            )


def _uses_embedding(config: StudyConfig) -> bool:
    """Return whether the study names inputs.human_embedding, which replaces the human fit."""
    return config.inputs.get("human_embedding") not in (None, "")


def _check_embedding_readers(config: StudyConfig, planned: dict[str, PlannedStage]) -> None:
    """Reject the stages that score a given human embedding on human triplets when the study names none.

    Raises:
        ValueError: For ``evaluate``, or ``compare`` with a jackknife
            (``relevance_triplets`` other than 0), without inputs.human_triplets.
    """
    if config.input_path("human_triplets") is not None:
        return
    if "evaluate" in planned and "human_fit" in planned["evaluate"].upstream:
        raise ValueError(
            f"stage evaluate scores the human embedding on inputs.human_triplets, which {config.path} does "
            "not name next to inputs.human_embedding. Add human_triplets = \"...\" under [inputs], or remove "
            "the [evaluate] table"
        )
    if "compare" in planned and planned["compare"].settings["relevance_triplets"] != 0:
        raise ValueError(
            f"the jackknife of stage compare explains inputs.human_triplets, which {config.path} does not "
            "name next to inputs.human_embedding. Add human_triplets = \"...\" under [inputs], or set "
            "compare.relevance_triplets = 0"
        )


def _check_embedding_settings(config: StudyConfig, definition: Stage) -> None:
    """Reject settings of [human_fit] that a given human embedding leaves unused."""
    allowed = set(definition.spec({}))
    unused = sorted(set(config.stages.get("human_fit", {})) - allowed)
    if unused:
        raise ValueError(
            f"inputs.human_embedding ({config.origin(INPUTS_TABLE, 'human_embedding')}) replaces the human "
            f"fit, but [human_fit] sets {', '.join(f'human_fit.{key}' for key in unused)} "
            f"({config.origin('human_fit', unused[0])}). Remove these settings, or remove "
            f"inputs.human_embedding to fit the human triplets. With a given embedding, [human_fit] may set "
            f"only {' and '.join(sorted(allowed))}, which say how to read inputs.human_triplets"
        )


def _plan_stage(
    config: StudyConfig, name: str, configured: set[str], planned: dict[str, PlannedStage],
    fingerprints: FingerprintCache, study_dir: Path,
) -> PlannedStage:
    stage = stage_definition(name, _uses_embedding(config))
    if stage is not STAGES[name]:
        _check_embedding_settings(config, stage)
    raw = config.stages.get(name, {})
    spec = stage.spec(raw)
    settings = check_settings(name, raw, spec, origin=lambda key: config.origin(name, key))
    for key in ("seed", "device"):
        if key in settings and settings[key] is None:
            settings[key] = config.study[key]
    if name == "report":
        from dimalign.report.html import report_title

        # The report shows the title and the study file, so a change to either reruns it.
        settings["title"] = report_title(settings["title"], config.study["name"])
        settings["study_file"] = str(config.path)

    upstream = stage.upstream(configured, settings)
    for dependency in upstream:
        if dependency not in configured:
            raise ValueError(
                f"stage {name} reads the output of stage {dependency}, which {config.path} does not "
                f"configure; add a [{dependency}] table"
            )

    inputs = _stage_inputs(config, name, configured, settings, stage)

    # The checks also see the object table where the stage itself reads it
    # only through its upstream stages, so that a count can be compared with
    # the number of objects. It stays out of the stage's fingerprints.
    check_inputs = dict(inputs)
    objects = config.input_path("objects")
    if "objects" not in check_inputs and objects is not None and objects.is_file():
        check_inputs["objects"] = objects
    try:
        stage.check(settings, check_inputs)
    except (ValueError, FileNotFoundError) as error:
        # The library's messages name command-line options such as --layer, so the
        # note adds the stage and the study file, which identify the table to change.
        raise type(error)(f"{error} (stage {name} of {config.path}{_set_note(config, name)})") from error

    stage_fingerprints = input_fingerprints(inputs, read_stage_record(study_dir / name), fingerprints)
    upstream_hashes = {dependency: planned[dependency].hash for dependency in upstream}
    digest = stage_hash(name, settings, stage_fingerprints, upstream_hashes)
    changes = [_setting_change(config, name, key, value, spec) for key, value in _overrides_of(config, name)]
    changes = [change for change in changes if change.before != change.after]
    return PlannedStage(name, settings, upstream, upstream_hashes, inputs, stage_fingerprints, digest, changes=changes)


def _stage_inputs(
    config: StudyConfig, name: str, configured: set[str], settings: dict[str, Any], stage: Stage | None = None,
) -> dict[str, Path]:
    """Return the study inputs that stage ``name`` reads, by key, with the weights file of the features stage.

    Raises:
        ValueError: For a required input that the study file does not name,
            or an input of the wrong kind (a file for a folder, or a device).
        FileNotFoundError: For an input path or weights file that does not exist.
    """
    stage = stage or STAGES[name]
    required, optional = stage.inputs(configured, settings)
    inputs: dict[str, Path] = {}
    for key in required + optional:
        path = config.input_path(key)
        if path is None:
            if key in required:
                raise ValueError(
                    f"stage {name} needs inputs.{key} ({_input_help(key)}); add {key} = \"...\" "
                    f"under [inputs] in {config.path}"
                )
            continue
        _check_input_path(config, name, key, path)
        inputs[key] = path

    if name == "features":
        # A weights file is an input too: its content, not only its name, decides the features.
        try:
            weights = weights_file(settings["weights"], lambda value: config.resolve_path(value, name, "weights"))
        except FileNotFoundError as error:
            raise FileNotFoundError(
                f"{error} ({config.origin(name, 'weights')}; relative paths start at "
                f"{Path.cwd() if (name, 'weights') in config.cli_values else config.base_dir})"
            ) from error
        if weights is not None:
            inputs["weights"] = weights
        from dimalign.features.user_models import find_module_file, is_model_spec

        if is_model_spec(settings["model"]):
            # The module of a network of your own builds it, so its content decides the features too.
            module_file = find_module_file(settings["model"])
            if module_file is not None:
                inputs["model_module"] = module_file
    return inputs


def _check_input_path(config: StudyConfig, name: str, key: str, path: Path) -> None:
    """Check that the path of ``inputs.<key>`` exists and is the kind of entry that the input needs.

    Raises:
        FileNotFoundError: If ``path`` does not exist, naming where the value was set.
        ValueError: If ``path`` is a file where a folder is expected, or the
            other way round, or neither a regular file nor a folder.
    """
    if not path.exists():
        if (INPUTS_TABLE, key) in config.cli_values:
            origin = "set with --set (relative paths start at the current directory)"
        elif "${data_dir}" in config.inputs[key] and (STUDY_TABLE, "data_dir") in config.cli_values:
            origin = (
                f"in {config.path}, with study.data_dir = {config.study['data_dir']!r} set with --set "
                "(relative to the current directory)"
            )
        else:
            origin = f"in {config.path} (relative paths start at {config.base_dir})"
        raise FileNotFoundError(
            f"input file {path} not found: inputs.{key} = {config.inputs[key]!r} {origin}, "
            f"needed by stage {name}"
        )
    kind = INPUT_KINDS.get(key, "either")
    wrong_kind = {
        "file": not path.is_file(), "folder": not path.is_dir(),
        # A device, pipe or socket could pass as either and then block or read as empty.
        "either": not (path.is_file() or path.is_dir()),
    }[kind]
    if wrong_kind:
        if path.is_dir():
            found = "a folder"
        elif path.is_file():
            found = "a file"
        else:
            found = "neither a regular file nor a folder"
        raise ValueError(
            f"inputs.{key} = {config.inputs[key]!r} ({config.origin(INPUTS_TABLE, key)}) must be a "
            f"{'file or a folder' if kind == 'either' else kind}, but {path} is {found}; "
            f"inputs.{key} is the {_input_help(key)}"
        )


def _set_note(config: StudyConfig, section: str) -> str:
    keys = [f"{section}.{key}" for key, _ in _overrides_of(config, section)]
    return f", with --set {', '.join(keys)}" if keys else ""


#: Settings that change where or how a stage runs, not what it writes: a
#: change to them alone does not rerun the stage.
UNHASHED_SETTINGS = frozenset({"device", "checkpoint_every"})

#: Settings that studies recorded before they existed, with their defaults. At
#: the default they are left out of the hash, so that an older study does not rerun.
ADDED_SETTING_DEFAULTS = {"background": "white", "exif_transpose": True}


def _hashed(settings: dict[str, Any]) -> dict[str, Any]:
    return {
        key: value for key, value in settings.items()
        if key not in UNHASHED_SETTINGS
        and not (key in ADDED_SETTING_DEFAULTS and value == ADDED_SETTING_DEFAULTS[key])
    }


def stage_hash(
    name: str, settings: dict[str, Any], fingerprints: dict[str, str], upstream: dict[str, str]
) -> str:
    """Return the SHA-256 that identifies a stage's work (see the module docstring)."""
    payload = {
        "format": PIPELINE_FORMAT, "stage": name, "settings": _hashed(settings),
        "inputs": fingerprints, "upstream": upstream,
    }
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _input_help(key: str) -> str:
    from dimalign.report.config import INPUT_KEYS

    return INPUT_KEYS.get(key, key)


def _overrides_of(config: StudyConfig, section: str) -> list[tuple[str, Any]]:
    values: dict[str, Any] = {}
    for override in config.overrides:
        if override.section == section:
            values[override.key] = override.value
    return list(values.items())


#: Settings whose smaller values mean less work: a smaller value set with --set is "shortened".
SIZE_SETTINGS = frozenset({
    "max_epochs", "stability_epochs", "n_dims", "mc_samples", "n_triplets", "n_bootstrap",
    "similarity_objects", "matrix_objects", "relevance_triplets", "n_alphas", "folds", "top_k",
    "n_disagreements", "dpi",
})


def _setting_change(config: StudyConfig, section: str, key: str, value: Any, spec: dict) -> SettingChange:
    before = config_value(config, section, key)
    kind = "changed"
    if before is None:
        setting = spec.get(key)
        before = setting.default if setting is not None else None
        kind = "added" if before is None else kind
    # "all" is the largest count of a count setting.
    if key in SIZE_SETTINGS and _is_number(value) and (before == "all" or (_is_number(before) and value < before)):
        kind = "shortened"
    return SettingChange(f"{section}.{key}", before, value, kind)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _study_changes(config: StudyConfig) -> list[SettingChange]:
    changes = []
    for section in (STUDY_TABLE, INPUTS_TABLE):
        for key, value in _overrides_of(config, section):
            before = config_value(config, section, key)
            changes.append(SettingChange(f"{section}.{key}", before, value, "added" if before is None else "changed"))
    return changes


def _decide(planned: dict[str, PlannedStage], study_dir: Path, from_stage: str | None) -> None:
    """Set the action and reasons of every planned stage, in run order."""
    forced: set[str] = set()
    for name, stage in planned.items():
        if name == from_stage or any(dependency in forced for dependency in stage.upstream):
            forced.add(name)
        record = read_stage_record(study_dir / name)
        reasons = []
        if name == from_stage:
            reasons.append(f"forced by --from {from_stage}")
        elif name in forced:
            reasons.append(f"reads a stage forced by --from {from_stage}")
        if record is None:
            reasons.append("new")
        else:
            reasons += _differences(stage, record)
            reasons += output_changes(study_dir / name)
        rerunning = [dependency for dependency in stage.upstream if planned[dependency].action == "run"]
        if rerunning and not reasons:
            reasons.append(f"upstream reran: {', '.join(rerunning)}")
        if not reasons and record.get("hash") != stage.hash:
            reasons.append("pipeline format changed")
        stage.action = "run" if reasons else "skip"
        stage.reasons = reasons or ["unchanged"]
        stage.forced = name in forced


def _differences(stage: PlannedStage, record: dict[str, Any]) -> list[str]:
    reasons = []
    old_settings, new_settings = _hashed(record.get("settings", {})), _hashed(stage.settings)
    changed_keys, removed_keys = _setting_differences(old_settings, new_settings)
    changed = _describe_settings(old_settings, new_settings, changed_keys, removed_keys, repr)
    if changed:
        reasons.append(f"settings changed: {', '.join(changed)}")
    old_inputs = record.get("inputs", {})
    changed_inputs = [
        key for key, fingerprint in stage.fingerprints.items()
        if old_inputs.get(key, {}).get("fingerprint") != fingerprint
    ] + [key for key in old_inputs if key not in stage.fingerprints]
    if changed_inputs:
        reasons.append(f"input changed: {', '.join(sorted(set(changed_inputs)))}")
    old_upstream = record.get("upstream", {})
    changed_upstream = [
        name for name in stage.upstream
        if name in old_upstream and old_upstream[name] != stage.upstream_hashes[name]
    ]
    if changed_upstream:
        reasons.append(f"upstream changed: {', '.join(changed_upstream)}")
    # A stage added to or removed from the study file changes what the
    # report (or evaluate) reads, although no hash it read before differs.
    added = [name for name in stage.upstream if name not in old_upstream]
    if added:
        reasons.append(f"upstream added: {', '.join(added)}")
    removed = [name for name in old_upstream if name not in stage.upstream]
    if removed:
        reasons.append(f"upstream removed: {', '.join(removed)}")
    return reasons


def _setting_differences(old: dict[str, Any], new: dict[str, Any]) -> tuple[list[str], list[str]]:
    """Return the keys of ``new`` whose value differs from ``old``, and the keys of ``old`` missing from ``new``."""
    changed = [key for key, value in new.items() if old.get(key) != value]
    removed = [key for key in old if key not in new]
    return changed, removed


def _describe_settings(
    old: dict[str, Any], new: dict[str, Any], changed: list[str], removed: list[str],
    format_value: Callable[[Any], str],
) -> list[str]:
    """Describe each changed setting as ``key old -> new`` and each removed one as ``key removed``."""
    return [f"{key} {format_value(old.get(key))} -> {format_value(new[key])}" for key in changed] + [
        f"{key} removed" for key in removed
    ]


# -- running ------------------------------------------------------------------------


def run_study(
    config: StudyConfig | str | os.PathLike,
    study_dir: str | os.PathLike,
    *,
    overrides: Sequence[str] = (),
    from_stage: str | None = None,
    dry_run: bool = False,
) -> StudyPlan:
    """Plan a study and run the stages that need it.

    Args:
        config (StudyConfig | path): A loaded configuration or the TOML file.
        study_dir (str | os.PathLike): The study directory (created).
        overrides (Sequence[str]): ``SECTION.KEY=VALUE`` values, when ``config`` is a path.
        from_stage (str | None): Rerun this stage and everything that reads it.
        dry_run (bool): Only plan; write nothing.

    Returns:
        StudyPlan: The plan, with ``seconds`` set for the stages that ran.

    Raises:
        RuntimeError: If another ``dimalign run`` has locked the study directory.
    """
    if not isinstance(config, StudyConfig):
        config = load_config(config, list(overrides))
    study_dir = Path(study_dir)
    # The inputs are read once per run: a change after this point is not seen,
    # as a change while a stage reads them is not.
    fingerprints = FingerprintCache()
    plan = _plan_study(config, study_dir, from_stage, fingerprints)
    check_study_dir(plan)
    if dry_run:
        if not _warn_other_study_file(plan, dry_run=True):
            _warn_changed_settings(plan, dry_run=True)
        warn_edited_leftovers(study_dir)
        return plan

    created = not study_dir.exists()
    study_dir.mkdir(parents=True, exist_ok=True)
    try:
        with _study_lock(study_dir):
            # Plan again under the lock: a run that finished meanwhile may have
            # written stages that the first plan saw missing or outdated.
            plan = _plan_study(config, study_dir, from_stage, fingerprints)
            check_study_dir(plan)
            if not _warn_other_study_file(plan):
                _warn_changed_settings(plan)
            remove_stale_folders(study_dir, plan)
            record = _study_record(plan, started=now_iso())
            _write_study_record(study_dir, record)
            for stage in plan.stages:
                if stage.action == "skip":
                    logger.info("stage %s: unchanged, skipped", stage.name)
                    continue
                _run_planned_stage(plan, stage, record)
            record = _study_record(plan, started=record["started"], finished=now_iso())
            _write_study_record(study_dir, record)
    except BaseException:
        if created:
            _remove_empty_study(study_dir)
        raise
    return plan


def _run_planned_stage(plan: StudyPlan, stage: PlannedStage, record: dict[str, Any]) -> None:
    """Run one stage of the plan, logging its start, its time and, on failure, what the study keeps."""
    logger.info("stage %s: running (%s)", stage.name, "; ".join(stage.reasons))
    started = time.perf_counter()
    try:
        _run_stage(plan, stage, record)
    except (KeyboardInterrupt, SystemExit):
        _report_interruption(plan, stage)
        raise
    except Exception as error:
        if not plan.study_dir.is_dir():
            # The stage's own error, such as a missing upstream folder, would hide the cause.
            raise FileNotFoundError(
                f"the study directory {plan.study_dir} was moved or deleted while stage {stage.name} "
                "ran: run the study again with -o set to its new path, where the stages that "
                "finished before are kept"
            ) from error
        logger.error(
            "stage %s failed; the stages before it are kept, and the next run starts there. "
            "Where the message below suggests command-line options, change the matching "
            "setting of [%s] or [inputs] in %s instead",
            stage.name, stage.name, plan.config.path,
        )
        raise
    stage.seconds = time.perf_counter() - started
    # The stage's own log lines name its temporary folder, so the final one is named here.
    logger.info("stage %s: finished in %.1f s, output in %s", stage.name, stage.seconds,
                plan.study_dir / stage.name)


def _report_interruption(plan: StudyPlan, stage: PlannedStage) -> None:
    """Log what a stage stopped by Ctrl-C or a signal leaves, and what the next run does with it."""
    final = plan.study_dir / stage.name
    previous = f"{final} still contains its previous output" if final.is_dir() else f"{final} was not written"
    work_dir = partial_folder(plan.study_dir, stage)
    if finished_work(work_dir, stage):
        kept = (
            f"Its finished output is kept in {work_dir}, and the next run moves it into place without running "
            f"stage {stage.name} again"
        )
    elif work_dir.is_dir():
        kept = (
            f"The unfinished fit is kept in {work_dir}, and the next run with the same settings of stage "
            f"{stage.name} continues it from its last checkpoint"
        )
    else:
        kept = f"Its partial output is deleted, and the next run with the same options runs stage {stage.name} again"
    logger.warning(
        "stage %s was stopped before it finished: %s, and the stages before it are finished. %s",
        stage.name, previous, kept,
    )


def _remove_empty_study(study_dir: Path) -> None:
    """Remove a study directory that this run created when nothing but its record is in it.

    A run whose first stage fails would otherwise leave a folder with only
    ``pipeline.json``, which later looks like a study to ``dimalign run``.
    """
    try:
        entries = {entry.name for entry in study_dir.iterdir()}
        if entries <= {STUDY_RECORD_NAME}:
            (study_dir / STUDY_RECORD_NAME).unlink(missing_ok=True)
            study_dir.rmdir()
    except OSError as error:
        logger.warning("could not remove the empty study folder %s: %s", study_dir, error)


def _warn_other_study_file(plan: StudyPlan, *, dry_run: bool = False) -> bool:
    """Warn before a run replaces stages that another study file wrote, as when two studies share ``-o``.

    With ``dry_run``, the warning names the stages that a run would replace.

    Returns:
        bool: Whether it warned.
    """
    path = plan.study_dir / STUDY_RECORD_NAME
    if not is_study_record(path):
        return False
    previous = json.loads(path.read_text(encoding="utf-8")).get("config")
    if previous == str(plan.config.path):
        return False
    replaced = [
        stage.name for stage in plan.stages
        if stage.action == "run" and read_stage_record(plan.study_dir / stage.name) is not None
    ]
    if replaced and dry_run:
        logger.warning(
            "%s was last run with the study file %s, and a run with %s would replace its stages %s; "
            "to keep them, pass another -o",
            plan.study_dir, previous, plan.config.path, ", ".join(replaced),
        )
    elif replaced:
        logger.warning(
            "%s was last run with the study file %s, and this run with %s replaces its stages %s "
            "as each finishes; to keep them, stop this run and pass another -o",
            plan.study_dir, previous, plan.config.path, ", ".join(replaced),
        )
    return bool(replaced)


def _warn_changed_settings(plan: StudyPlan, *, dry_run: bool = False) -> None:
    """Warn before a run redoes stages that an earlier run finished with other settings.

    The common case is a run without the ``--set`` values of an earlier quick
    run, which plans the full fits of the study file. The warning gives each
    setting as ``old -> new``, the stage's earlier time and, for a fit, an
    estimate of the new time. Where the old values came from ``--set``, it
    lists the options that keep the stages. Settings given with ``--set`` in
    this run are left out.
    """
    described, earlier_options = [], []
    for stage in plan.stages:
        record = read_stage_record(plan.study_dir / stage.name)
        if stage.action != "run" or record is None:
            continue
        old_settings, new_settings = _hashed(record.get("settings", {})), _hashed(stage.settings)
        changed, removed = _setting_differences(old_settings, new_settings)
        # A value given with --set in this run is what the user requests, so it is not warned about.
        requested = {key for key, _ in _overrides_of(plan.config, stage.name)}
        changed = [key for key in changed if key not in requested]
        if not changed and not removed:
            continue
        differences = _describe_settings(old_settings, new_settings, changed, removed, format_toml_value)
        described.append(f"{stage.name} ({', '.join(differences)}{_earlier_cost(record, new_settings)})")
        for change in record.get("changes", []):
            section, _, key = change["key"].partition(".")
            if section == stage.name and key in changed + removed:
                earlier_options.append(f"--set {shlex.quote(change['key'] + '=' + format_toml_value(change['after']))}")

    if not described:
        return
    count = f"{len(described)} stage{'s' if len(described) > 1 else ''}"
    these = "those stages" if len(described) > 1 else "that stage"
    message = (
        f"{'a run would redo' if dry_run else 'this run redoes'} {count} that an earlier run finished with "
        f"other settings: {', '.join(described)}"
    )
    if earlier_options:
        stop = "" if dry_run else "stop this run and "
        message += (
            f". The earlier values were set with --set: to keep {these}, {stop}give them again "
            f"({' '.join(earlier_options)})"
        )
    logger.warning("%s", message)


def _earlier_cost(record: dict[str, Any], new_settings: dict[str, Any]) -> str:
    """Return ``; it took 4.0 s`` from a stage record, with an estimate from the time per epoch for a fit.

    The estimate scales the earlier time by ``max_epochs``, so it ignores
    other settings, such as ``n_dims``, that change the time of an epoch.
    """
    seconds = record.get("seconds")
    if not _is_number(seconds):
        return ""
    cost = f"; it took {_format_duration(seconds)}"
    outputs = record.get("outputs")
    n_epochs = outputs.get("n_epochs") if isinstance(outputs, dict) else None
    max_epochs = new_settings.get("max_epochs")
    if _is_number(n_epochs) and n_epochs > 0 and _is_number(max_epochs) and max_epochs != n_epochs:
        estimate = seconds / n_epochs * max_epochs
        epochs = f"{n_epochs} epoch{'s' if n_epochs != 1 else ''}"
        cost += f" for {epochs}, so up to about {_format_duration(estimate)} for {max_epochs}"
    return cost


def _format_duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def check_study_dir(plan: StudyPlan) -> None:
    """Check that ``dimalign run`` may write the study directory, before anything is written.

    Raises:
        FileExistsError: If the study directory is a file or the output of
            another dimalign step, or if a stage that runs would replace a
            folder that no ``dimalign run`` wrote (its files would be lost).
        ValueError: If the study directory lies inside a folder input, whose
            fingerprint the study's own files would then change on every run,
            or if inputs.human_embedding lies inside the study directory.
    """
    study_dir = plan.study_dir
    existing = next((parent for parent in (study_dir, *study_dir.parents) if parent.exists()), None)
    if existing is not None and not existing.is_dir():
        raise FileExistsError(f"cannot write the study to {study_dir}: {existing} is a file, not a folder")
    check_output_dir(study_dir, "run")
    record = study_dir / STUDY_RECORD_NAME
    if record.exists() and not is_study_record(record):
        # The run writes its own record there; a file of that name from another
        # tool, or one that no longer parses, would be lost.
        raise FileExistsError(
            f"{record} is not the record of a dimalign run (it is not a JSON object with 'config' and "
            "'stages'), and the run would replace it; move the file away or choose another study directory"
        )
    resolved = study_dir.resolve()
    for parent in resolved.parents:
        if is_study_record(parent / STUDY_RECORD_NAME):
            raise ValueError(
                f"the study directory {study_dir} lies inside the study {parent}, whose next run "
                "may replace it with a stage folder; choose an output folder outside it"
            )
    embedding = plan.config.input_path("human_embedding")
    if embedding is not None and embedding.resolve().is_relative_to(resolved):
        # Such as the human_fit folder of an earlier run, which the stage would replace with a copy of itself.
        raise ValueError(
            f"inputs.human_embedding = {embedding} lies inside the study directory {study_dir}, whose "
            "human_fit stage would replace it; copy the embedding out of the study and name the copy"
        )
    for stage in plan.stages:
        for key, path in stage.inputs.items():
            if path.is_dir() and resolved.is_relative_to(path.resolve()):
                raise ValueError(
                    f"the study directory {study_dir} lies inside inputs.{key} = {path}: its own files "
                    "would count as changed input on every run; choose an output folder outside it"
                )
        _check_stage_folder(plan, stage)


def _check_stage_folder(plan: StudyPlan, stage: PlannedStage) -> None:
    """Raise ``FileExistsError`` for a stage folder that is a file or that a run must not replace."""
    folder = plan.study_dir / stage.name
    if stage.action == "run" and folder.is_symlink():
        raise FileExistsError(
            f"{folder} is a symbolic link to {os.readlink(folder)}, and stage {stage.name} replaces its "
            "folder as a whole when it runs again, so the new output would not go there: move the folder "
            f"to {folder} in place of the link, then run the study again"
        )
    if folder.exists() and not folder.is_dir():
        raise FileExistsError(
            f"{folder} is a file, but stage {stage.name} writes a folder of that name; move the "
            "file away or choose another study directory"
        )
    if stage.action == "run" and folder.is_dir() and read_stage_record(folder) is None and any(folder.iterdir()):
        raise FileExistsError(
            f"{folder} has no readable pipeline record in its manifest.json, so dimalign run did "
            f"not write it (or its record is damaged), and stage {stage.name} would replace it; "
            "move the folder away or choose another study directory"
        )
    if stage.action == "run" and folder.is_dir():
        reject_unwritten_files(folder, stage.name, finished_output=reusable_work(plan, stage))


def is_study_record(path: Path) -> bool:
    """Return whether ``path`` is the ``pipeline.json`` of a study, not a file of another tool of that name.

    Raises:
        OSError: If ``path`` is a file that cannot be read, since the
            folder might then be a study that a command would overwrite.
    """
    if not path.is_file():
        return False
    try:
        text = path.read_bytes()
    except OSError as error:
        raise OSError(
            f"cannot read {path} ({error.strerror}), so it is unknown whether {path.parent} is a study "
            f"of dimalign run: make the file readable (chmod u+r {path}), then run the command again"
        ) from error
    try:
        record = json.loads(text.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(record, dict) and isinstance(record.get("stages"), list) and "config" in record


def check_outside_study_folders(out_dir: str | os.PathLike, step: str) -> None:
    """Reject an output folder that ``dimalign run`` owns, before a single command writes there.

    ``dimalign run`` writes each stage into a hidden work folder and then
    replaces ``STUDY/<stage>`` with it, so a single command's output in a
    stage folder would be lost on the next run. That run would also stop,
    because the folder then has no stage record. A stage record that a single
    command replaced would make the study lose track of that stage.

    Args:
        out_dir (str | os.PathLike): The output folder of ``step`` (it need not exist).
        step (str): The dimalign command that is about to write there, such as ``"compare"``.

    Raises:
        FileExistsError: If ``out_dir`` is a study directory, is named like a
            stage and lies in a study directory, or has a ``manifest.json``
            with a stage record of ``dimalign run``.
    """
    out_dir = Path(out_dir)
    resolved = out_dir.resolve()
    if is_study_record(resolved / STUDY_RECORD_NAME):
        raise FileExistsError(
            f"{out_dir} is the directory of a study of dimalign run (it contains {STUDY_RECORD_NAME}): "
            f"choose an output folder for dimalign {step} outside the study"
        )
    if resolved.name in STAGES and is_study_record(resolved.parent / STUDY_RECORD_NAME):
        advice = f"choose an output folder outside the study for dimalign {step}"
        if resolved.name == step:
            advice += f", or pass --from {step} to dimalign run to redo the study's stage"
        raise FileExistsError(
            f"{out_dir} is the folder of stage {resolved.name} of the study {resolved.parent}, which "
            f"dimalign run writes and replaces as a whole: {advice}"
        )
    manifest = out_dir / MANIFEST_NAME
    if manifest.is_file():
        record = read_manifest(out_dir).get("pipeline")
        if isinstance(record, dict):
            stage = record.get("stage", "unknown")
            raise FileExistsError(
                f"{manifest} contains the stage record of dimalign run (stage {stage}), which dimalign "
                f"{step} would replace: choose another output folder"
            )


def _run_stage(plan: StudyPlan, stage: PlannedStage, record: dict[str, Any]) -> None:
    from dimalign.embedding.checkpoint import CHECKPOINT_NAME

    definition = stage_definition(stage.name, _uses_embedding(plan.config))
    study_dir = plan.study_dir
    work_dir = partial_folder(study_dir, stage)
    if reusable_work(plan, stage) is not None:
        logger.info(
            "stage %s: moving the finished output in %s into place, which an earlier run could not move",
            stage.name, work_dir,
        )
        replace_folder(work_dir, study_dir / stage.name, stage.name)
        return
    if work_dir.exists() and not definition.resumable:
        remove_tree(work_dir, "left by an interrupted run")
    work_dir.mkdir(parents=True, exist_ok=True)
    context = StageContext(
        name=stage.name, settings=dict(stage.settings), inputs=dict(stage.inputs),
        upstream={name: study_dir / name for name in stage.upstream}, out_dir=work_dir,
        study=dict(plan.config.study), record=record,
    )
    started_iso = now_iso()
    started = time.perf_counter()
    try:
        outputs = definition.run(context)
    except BaseException:
        # Only a checkpoint lets the next run resume; a fit that failed before
        # its first one leaves nothing worth keeping.
        if not (definition.resumable and (work_dir / CHECKPOINT_NAME).is_file()):
            remove_tree_or_warn(work_dir, f"the output of the failed stage {stage.name}")
        raise
    _write_stage_record(work_dir, stage, outputs, started_iso, time.perf_counter() - started)
    replace_folder(work_dir, study_dir / stage.name, stage.name)


def _write_stage_record(
    work_dir: Path, stage: PlannedStage, outputs: dict[str, Any], started: str, seconds: float
) -> None:
    """Add the ``pipeline`` record to the stage's manifest (writing a manifest when the stage wrote none)."""
    path = work_dir / MANIFEST_NAME
    if not path.is_file():
        write_manifest(work_dir, step=stage.name, inputs=stage.inputs, settings=stage.settings,
                       started=started, outputs=outputs)
    manifest = json.loads(path.read_text(encoding="utf-8"))
    manifest["pipeline"] = {
        "stage": stage.name,
        "hash": stage.hash,
        "format": PIPELINE_FORMAT,
        "settings": stage.settings,
        "inputs": {
            key: {"path": str(value), "fingerprint": stage.fingerprints[key]} for key, value in stage.inputs.items()
        },
        "upstream": stage.upstream_hashes,
        "changes": [change.to_dict() for change in stage.changes],
        "outputs": outputs,
        "started": started,
        "finished": now_iso(),
        "seconds": round(seconds, 3),
        # The files of the stage, so that a rerun can tell files added or edited later.
        "files": stage_files(work_dir),
        "file_digests": file_digests(work_dir),
    }
    write_text_atomic(path, json.dumps(manifest, indent=2, default=str) + "\n")


@contextlib.contextmanager
def _study_lock(study_dir: Path) -> Iterator[None]:
    """Hold an exclusive lock on the study directory; the system releases it if the process dies.

    NOTE: ``fcntl`` locks exist on POSIX systems only, so ``dimalign run`` does not run on Windows.

    Raises:
        RuntimeError: If another ``dimalign run`` holds the lock.
        OSError: If the lock file cannot be created or the study directory
            cannot be written, such as a read-only one. The message names
            the fix.
    """
    busy = f"another dimalign run is using {study_dir}; wait for it to finish"
    lock_path = study_dir / _LOCK_NAME
    try:
        descriptor = acquire_lock(lock_path, busy)
    except OSError as error:
        raise OSError(
            f"cannot create the lock file {lock_path} ({error.strerror}): make the study directory writable "
            f"(chmod u+rwx {study_dir}) or choose another one with -o, then run the study again"
        ) from error
    # A killed run leaves its lock file behind, and that file opens in a read-only
    # study directory too. The run would then fail on its first write, and the
    # removal of the lock file would fail after it and hide that error.
    try:
        with tempfile.TemporaryFile(dir=study_dir):
            pass
    except OSError as error:
        os.close(descriptor)
        raise OSError(
            f"cannot write the study directory {study_dir} ({error.strerror}): make it writable "
            f"(chmod u+rwx {study_dir}) or choose another one with -o, then run the study again"
        ) from error
    try:
        yield
    finally:
        release_lock(lock_path, descriptor)


def _study_record(plan: StudyPlan, *, started: str, finished: str | None = None) -> dict[str, Any]:
    return {
        "config": str(plan.config.path),
        "config_sha256": plan.config.sha256 or sha256_file(plan.config.path),
        "study": plan.config.study,
        "inputs": {key: str(plan.config.input_path(key)) for key in plan.config.inputs},
        "changes": [change.to_dict() for change in plan.changes],
        "started": started,
        "finished": finished,
        "stages": [
            {"name": stage.name, "action": stage.action, "reasons": stage.reasons, "hash": stage.hash,
             "seconds": stage.seconds}
            for stage in plan.stages
        ],
    }


def _write_study_record(study_dir: Path, record: dict[str, Any]) -> None:
    write_text_atomic(study_dir / STUDY_RECORD_NAME, json.dumps(record, indent=2, default=str) + "\n")


def default_study_dir(config_path: str | os.PathLike) -> Path:
    """Return the default study directory: the config file's stem in the current directory."""
    return Path.cwd() / Path(config_path).stem


__all__ = [
    "PIPELINE_FORMAT",
    "STUDY_RECORD_NAME",
    "PlannedStage",
    "SettingChange",
    "StudyPlan",
    "check_outside_study_folders",
    "default_study_dir",
    "is_study_record",
    "plan_study",
    "run_study",
    "stage_hash",
]
