"""The work folders of ``dimalign run``: moving finished stages into place and cleaning up after interrupted runs.

A stage writes into ``study/.<stage>.partial-<hash>``, and a finished partial
folder replaces ``study/<stage>``. The old stage folder is first renamed to
``study/.<stage>.old-<process id>`` and removed once the new one is in place.
A folder with files that were edited after the stage wrote them is never
deleted: it is kept as ``study/<stage>.edited-<n>``. A run removes the
leftovers of interrupted runs at its start, except partial folders that it
reuses.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from dimalign.io.files import MANIFEST_NAME, count_of
from dimalign.report.stage_records import (
    edited_files,
    list_names,
    listed_files,
    read_stage_record,
    stage_files,
    unwritten_files,
    unwritten_files_error,
)
from dimalign.report.stages import STAGE_ORDER, STAGES

if TYPE_CHECKING:
    from dimalign.report.pipeline import PlannedStage, StudyPlan

# The messages use the logger of dimalign.report.pipeline, so that all of ``dimalign run`` logs under one name.
logger = logging.getLogger("dimalign.report.pipeline")


def keep_edited(folder: Path, stage_name: str, edited: list[str], *, reused: bool, outcome: str) -> Path:
    """Rename a leftover or replaced stage folder with edited files to ``<stage>.edited-<n>`` and warn.

    The new name is visible and outside the names that the cleanup removes,
    so the edited files stay until the user deletes them. ``outcome`` ends the
    warning, such as ", and stage compare runs again".
    """
    edited_folder = _edited_name(folder.parent, stage_name)
    os.rename(folder, edited_folder)
    logger.warning(
        "%s, so the run does not %s it: the folder is kept as %s%s",
        _describe_edited(folder, stage_name, edited), "reuse or delete" if reused else "delete",
        edited_folder, outcome,
    )
    return edited_folder


def _edited_name(study_dir: Path, stage_name: str, used_names: set[Path] | None = None) -> Path:
    """Return ``<stage>.edited-<n>`` in the study directory with the first number that no entry uses.

    ``used_names`` adds paths that count as used, such as names a dry run has already given.
    """
    used_names = used_names or set()
    number = 1
    candidate = study_dir / f"{stage_name}.edited-{number}"
    while os.path.lexists(candidate) or candidate in used_names:
        number += 1
        candidate = study_dir / f"{stage_name}.edited-{number}"
    return candidate


def _describe_edited(folder: Path, stage_name: str, edited: list[str]) -> str:
    """Start the warning about a stage folder whose files ``edited`` differ from its stage record."""
    return (
        f"{folder} contains output of stage {stage_name} in which {count_of(len(edited), 'file')} changed after the stage wrote it "
        f"({list_names(edited)}: its size or SHA-256 differs from the stage record)"
    )


def warn_edited_leftovers(study_dir: Path) -> None:
    """Log, for a dry run, each leftover folder with edited files that a run would keep as ``<stage>.edited-<n>``.

    A run keeps every such folder (see :func:`remove_stale_folders`), because
    a partial folder with edited files is never reused either.
    """
    if not study_dir.is_dir():
        return
    used_names: set[Path] = set()
    for entry in sorted(study_dir.iterdir()):
        if _LEFTOVER_PATTERN.fullmatch(entry.name) is None or entry.is_symlink() or not entry.is_dir():
            continue
        stage_name = entry.name[1:].split(".")[0]
        edited = edited_files(entry)
        if edited:
            edited_folder = _edited_name(study_dir, stage_name, used_names)
            used_names.add(edited_folder)
            description = _describe_edited(entry, stage_name, edited)
            logger.warning("%s, so a run would keep the folder as %s", description, edited_folder)


def partial_folder(study_dir: Path, stage: PlannedStage) -> Path:
    """Return the partial folder that ``stage`` writes before it is moved into place."""
    return study_dir / f".{stage.name}.partial-{stage.hash[:16]}"


def finished_work(work_dir: Path, stage: PlannedStage) -> bool:
    """Return whether ``work_dir`` contains the finished output of ``stage`` that was never moved into place.

    That is a partial folder whose stage record has the stage's current hash
    and lists exactly the files in the folder.
    """
    if work_dir.is_symlink() or not work_dir.is_dir():
        return False
    record = read_stage_record(work_dir)
    if record is None or record["hash"] != stage.hash:
        return False
    files = listed_files(work_dir)
    return files is not None and sorted(files) == stage_files(work_dir)


def reusable_work(plan: StudyPlan, stage: PlannedStage) -> Path | None:
    """Return the partial folder whose finished output a run of ``stage`` moves into place, or None.

    The output is reused only when it is what the stage would write again.
    So a stage forced by ``--from``, or one whose upstream stage runs in
    this run and may write other output under the same hash, runs again.
    """
    if stage.action != "run" or stage.forced:
        return None
    if any(plan.stage(name).action == "run" for name in stage.upstream):
        return None
    # NOTE: the hash covers the content of the inputs but of upstream stages only their
    # hashes. An upstream stage folder whose record has no file digests (an older dimalign)
    # is therefore trusted after a hand edit, just as a skipped stage is kept. A record of an
    # older dimalign that fingerprinted an input folder by its listing also misses an edit
    # that keeps the sizes and modification times.
    work_dir = partial_folder(plan.study_dir, stage)
    if not finished_work(work_dir, stage) or edited_files(work_dir):
        return None
    return work_dir


def replace_folder(work_dir: Path, final: Path, stage_name: str) -> None:
    """Move a finished stage folder into place; the old folder goes only after the rename.

    The old folder is checked for files that its stage did not write after
    it has been renamed to a hidden name. A file that a user adds to it while
    the stage runs is thus found and never deleted with the old folder.

    Raises:
        FileExistsError: If the old folder, or a hidden folder
            ``.<stage>.old-<process id>`` that is already there, contains
            files that the stage did not write, or if the new folder cannot
            be moved into place. The old folder is then back in place, and
            ``work_dir`` keeps the finished output for the next run.
    """
    old = None
    edited: list[str] = []
    if final.exists():
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        if old.exists():
            _reject_files_in_old_folder(old, work_dir, stage_name)
            remove_tree(old, "left by an interrupted run")
        os.rename(final, old)
        try:
            unknown, old_record = unwritten_files(old, rewritten=work_dir)
            edited = edited_files(old, error_path=final)
        except BaseException:
            _move_back(old, final, stage_name)
            raise
        if unknown:
            _move_back(old, final, stage_name)
            raise unwritten_files_error(final, stage_name, unknown, old_record, finished_output=work_dir)
    try:
        os.rename(work_dir, final)
    except OSError as error:
        if old is not None and not final.exists():
            _move_back(old, final, stage_name)
        raise FileExistsError(
            f"cannot move the finished output of stage {stage_name} from {work_dir} to {final} ({error}): "
            f"if you created {final} during the run, move it out of the study, then run the study again. "
            f"The next run moves the finished output into place without running stage {stage_name} again"
        ) from error
    if old is None:
        return
    if edited:
        keep_edited(old, stage_name, edited, reused=False,
                     outcome=f", and the new output of stage {stage_name} is in {final}")
        return
    # NOTE: a program whose working directory lies in the old folder can
    # still write there after the check, and such a file is deleted here.
    remove_tree_or_warn(old, f"the previous output of stage {stage_name}")


def _reject_files_in_old_folder(old: Path, work_dir: Path, stage_name: str) -> None:
    """Raise ``FileExistsError`` if ``old`` contains files that its stage did not write.

    ``old`` has the name of the old folder of this process. The leftover
    cleanup at the start of the run removes such folders, so this one
    appeared during the run. Its files are compared with the list
    in the record of ``work_dir``, the stage's finished output, as the
    cleanup does for an old folder whose record lists no files.
    """
    unknown, old_record = unwritten_files(old, rewritten=work_dir)
    if unknown:
        # A folder without any record is not from an older dimalign, so the error does not say so.
        old_record = old_record and read_stage_record(old) is not None
        raise unwritten_files_error(old, stage_name, unknown, old_record, finished_output=work_dir)


def _move_back(old: Path, final: Path, stage_name: str) -> None:
    """Rename the previous output of a stage from its hidden name back to ``final``."""
    try:
        os.rename(old, final)
    except OSError as error:
        raise FileExistsError(
            f"could not move the previous output of stage {stage_name} back from {old} to {final} ({error}): "
            f"move {final} out of the study and {old} to {final}, then run the study again"
        ) from error


def _remove_record_last(path: Path) -> None:
    """Delete a stage folder, removing its top-level ``manifest.json`` only after every other entry.

    A run killed during the deletion thus leaves the stage record, and the
    next run can tell the stage's files from files of the user's.

    Raises:
        OSError: For the first entry that cannot be removed; ``filename`` names it.
    """
    for child in sorted(path.iterdir()):
        if child.name == MANIFEST_NAME:
            continue
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()
    shutil.rmtree(path)


def remove_tree_or_warn(path: Path, description: str) -> None:
    """Delete a work folder of the pipeline, logging a warning instead of raising if it cannot be removed.

    A folder that no longer exists, as when the user moved the study during
    the run, needs no removal and no warning.
    """
    if not path.exists() and not path.is_symlink():
        return
    try:
        _remove_record_last(path)
    except OSError as error:
        logger.warning(
            "could not remove %s, %s (%s): make it writable (chmod -R u+rwX %s) or delete it, "
            "because the next run stops until it is removed", path, description, error, path,
        )


def remove_tree(path: Path, description: str) -> None:
    """Delete a work folder of the pipeline, raising an error that names what could not be removed.

    ``description`` describes the folder, such as "left by an interrupted run".
    """

    try:
        _remove_record_last(path)
    except OSError as error:
        reason = error.strerror or str(error)
        raise OSError(
            f"could not remove {path}, {description} ({reason}: {error.filename or path}): make it writable "
            f"(chmod -R u+rwX {path}) or delete it, then run the study again"
        ) from error


#: Names of the work folders of :func:`dimalign.report.pipeline._run_stage` and :func:`replace_folder`:
#: ``.<stage>.partial-<16 hex digits of the hash>`` and ``.<stage>.old-<process id>``.
_LEFTOVER_PATTERN = re.compile(
    rf"\.(?:{'|'.join(re.escape(name) for name in STAGE_ORDER)})\.(?:partial-[0-9a-f]{{16}}|old-\d+)"
)


def remove_stale_folders(study_dir: Path, plan: StudyPlan) -> None:
    """Delete leftovers of interrupted runs, except partial folders with the current hash that the run reuses.

    The run reuses a fit's unfinished partial folder to resume from its
    checkpoint, and the partial folder of any stage that runs when it
    contains that stage's finished output (see :func:`reusable_work`). Only names that this module gives its work folders
    count, so a hidden folder of the user's such as ``.notes.old-2024`` stays.

    Raises:
        FileExistsError: If a leftover contains files that its stage did not
            write, such as an old folder that could not be moved back.
        OSError: If a leftover cannot be removed.
    """
    keep = set()
    for stage in plan.stages:
        work_dir = partial_folder(study_dir, stage)
        if reusable_work(plan, stage) is not None:
            keep.add(work_dir.name)
        elif STAGES[stage.name].resumable and not finished_work(work_dir, stage):
            # A fit would resume from the last checkpoint of finished output and
            # return that output again, although the run does not reuse it.
            keep.add(work_dir.name)
    # Old folders come first, because one whose record lists no files is compared with the
    # partial folder of its stage, which this loop may remove.
    entries = sorted(study_dir.iterdir(), key=lambda entry: (".partial-" in entry.name, entry.name))
    for entry in entries:
        stale = _LEFTOVER_PATTERN.fullmatch(entry.name) is not None
        if not stale or not entry.is_dir():
            continue
        if entry.is_symlink():
            # The run never writes a link, and reusing one would put a link in place of the stage
            # folder. Removing the link leaves the folder that it points to, and its files, in place.
            logger.info("removing the symbolic link %s, left by an interrupted run", entry)
            entry.unlink()
            continue
        if entry.name in keep:
            continue
        stage_name = entry.name[1:].split(".")[0]
        edited = edited_files(entry)
        if edited:
            partial = ".partial-" in entry.name
            runs = stage_name in plan.to_run
            keep_edited(entry, stage_name, edited, reused=partial,
                         outcome=f", and stage {stage_name} runs again" if partial and runs else "")
            continue
        _reject_files_in_leftover(entry, stage_name, plan)
        logger.info("removing %s, left by an interrupted run", entry)
        remove_tree(entry, "left by an interrupted run")


def _reject_files_in_leftover(entry: Path, stage_name: str, plan: StudyPlan) -> None:
    """Raise ``FileExistsError`` if a leftover folder contains files that its stage did not write.

    An old folder whose record lists no files (from an older dimalign) is
    compared with the output that replaced it (see :func:`_find_replacement`).
    Without that output, the user's files cannot be distinguished from the
    stage's, so the folder stays and an error names it. An old folder
    without any record is checked by :func:`_reject_unrecorded_old_folder`.
    """
    if ".old-" in entry.name and read_stage_record(entry) is None:
        _reject_unrecorded_old_folder(entry, stage_name, plan)
        return
    rewritten = _find_replacement(plan, stage_name) if ".old-" in entry.name else None
    unknown, old_record = unwritten_files(entry, rewritten=rewritten)
    if unknown:
        raise unwritten_files_error(entry, stage_name, unknown, old_record)
    if old_record and rewritten is None and ".old-" in entry.name and read_stage_record(entry) is not None:
        raise FileExistsError(
            f"{entry} contains the previous output of stage {stage_name}, left by an interrupted run, and "
            "its record, from an older dimalign, lists no files, so files of yours in it cannot be "
            "distinguished from the stage's: move any files of yours out of it, delete it, then run the "
            "study again"
        )


def _reject_unrecorded_old_folder(entry: Path, stage_name: str, plan: StudyPlan) -> None:
    """Raise ``FileExistsError`` unless an old folder without a stage record is provably the stage's output.

    The run deletes an old folder with its ``manifest.json`` last, so a run
    killed during the deletion leaves the record. A folder without one comes
    from a dimalign that deleted in another order, or from the user. It is
    deleted only when it contains no files (empty folders do not count), or
    when the record of the output that replaced it (see
    :func:`_find_replacement`) lists every file in it.
    """
    files = [name for name in stage_files(entry) if not name.endswith("/")]
    if not files:
        return
    basis = _find_replacement(plan, stage_name)
    if basis is None:
        raise FileExistsError(
            f"{entry} has no stage record, and no stage record of stage {stage_name} lists its files, so "
            "dimalign run cannot tell whether it left this folder: move your files out of it, delete it, "
            "then run the study again"
        )
    unknown = sorted(set(files) - set(listed_files(basis) or []))
    if unknown:
        listed = list_names(unknown)
        raise FileExistsError(
            f"{entry} has no stage record, so dimalign run cannot tell whether it left this folder, and it "
            f"contains {count_of(len(unknown), 'file')} that the stage record in {basis} does not list ({listed}): move your files "
            "out of it, delete it, then run the study again"
        )


def _find_replacement(plan: StudyPlan, stage_name: str) -> Path | None:
    """Return the folder with the output that replaced an old folder of ``stage_name``, or None.

    A run killed before it moved the new output into place leaves it in the
    stage's finished partial folder. A run killed after the move leaves it
    in the stage folder, whose record lists its files.
    """
    if stage_name in {stage.name for stage in plan.stages}:
        work_dir = partial_folder(plan.study_dir, plan.stage(stage_name))
        if finished_work(work_dir, plan.stage(stage_name)):
            return work_dir
    final = plan.study_dir / stage_name
    return final if listed_files(final) is not None else None
