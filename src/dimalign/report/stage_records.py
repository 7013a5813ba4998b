"""Stage records of ``dimalign run`` and the checks of stage folders against them.

A finished stage folder has a ``pipeline`` record in its ``manifest.json``.
The record lists the files that the stage wrote, with the size and SHA-256
of each regular file. A run compares a folder with its record to find
files that were edited or deleted after the stage wrote them, and files
that the stage did not write, which a rerun must not delete.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dimalign.io.files import MANIFEST_NAME, sha256_file
from dimalign.report.fingerprints import walk_error_handler

# The messages use the logger of dimalign.report.pipeline, so that all of ``dimalign run`` logs under one name.
logger = logging.getLogger("dimalign.report.pipeline")


def output_changes(folder: Path) -> list[str]:
    """Name the files of a finished stage folder that differ from its stage record or are missing.

    A stage whose output was edited by hand runs again, so that its readers
    get what the stage writes. The rerun keeps the edited folder (see
    :func:`dimalign.report.stage_folders.keep_edited`). A record without file digests yields no reason.
    """
    reasons = []
    edited = edited_files(folder)
    if edited:
        reasons.append(f"output edited: {list_names(edited)}")
    missing = _missing_files(folder)
    if missing:
        reasons.append(f"output missing: {list_names(missing)}")
    return reasons


def list_names(names: list[str]) -> str:
    """Join up to five file names, counting the rest."""
    return ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")


def read_stage_record(stage_dir: Path) -> dict[str, Any] | None:
    """Return the ``pipeline`` record of a finished stage folder, or None."""
    path = stage_dir / MANIFEST_NAME
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as error:
        logger.warning("%s is not UTF-8 (%s), so its stage counts as unfinished", path, error)
        return None
    except (OSError, json.JSONDecodeError) as error:
        logger.warning("%s is unreadable (%s), so its stage counts as unfinished", path, error)
        return None
    record = manifest.get("pipeline") if isinstance(manifest, dict) else None
    if not isinstance(record, dict):
        return None
    problem = _stage_record_problem(record)
    if problem:
        logger.warning("%s has an invalid pipeline record: %s, so its stage counts as unfinished", path, problem)
        return None
    return record


#: Keys of one ``--set`` change in a stage record or ``pipeline.json``.
CHANGE_KEYS = ("key", "before", "after", "kind")


def change_entry_problem(changes: list) -> str:
    """Describe the first entry of a ``changes`` list that is not a ``--set`` change, or return ''."""
    for number, change in enumerate(changes, start=1):
        if not (isinstance(change, dict) and all(key in change for key in CHANGE_KEYS)
                and isinstance(change["key"], str)):
            return f"entry {number} of 'changes' must be a JSON object with the keys {', '.join(CHANGE_KEYS)}"
    return ""


def _stage_record_problem(record: dict[str, Any]) -> str:
    """Describe the first field of a stage's pipeline record that has the wrong type, or return ''."""
    if not isinstance(record.get("hash"), str):
        return "'hash' must be a JSON string"
    for key in ("settings", "inputs"):
        if not isinstance(record.get(key, {}), dict):
            return f"{key!r} must be a JSON object"
    upstream = record.get("upstream", {})
    if not (isinstance(upstream, dict) and all(isinstance(value, str) for value in upstream.values())):
        return "'upstream' must be a JSON object of stage hashes"
    if not all(isinstance(value, dict) for value in record.get("inputs", {}).values()):
        return "each entry of 'inputs' must be a JSON object with a path and a fingerprint"
    changes = record.get("changes", [])
    if not isinstance(changes, list):
        return "'changes' must be a JSON array"
    files = record.get("files", [])
    if not (isinstance(files, list) and all(isinstance(name, str) for name in files)):
        return "'files' must be a JSON array of strings"
    digests = record.get("file_digests", {})
    if not (isinstance(digests, dict) and all(
        isinstance(value, dict) and isinstance(value.get("size"), int) and isinstance(value.get("sha256"), str)
        for value in digests.values()
    )):
        return "'file_digests' must be a JSON object of {\"size\": integer, \"sha256\": string} objects"
    return change_entry_problem(changes)


def stage_mismatches(study_dir: str | os.PathLike, stages: Sequence[str]) -> list[str]:
    """Find stage folders that were computed from other upstream results than those in the study.

    A stage's record contains the hash of every stage it read. When a later run
    replaced one of those (and then failed or left the reader out), the
    reader's results no longer belong to the folder beside it.

    Args:
        study_dir (str | os.PathLike): The study directory.
        stages (Sequence[str]): The stage folders to check.

    Returns:
        list[str]: One sentence per mismatch, empty when the folders agree.
    """
    study_dir = Path(study_dir)
    records = {name: read_stage_record(study_dir / name) for name in stages}
    problems = []
    for name, record in records.items():
        if record is None:
            continue
        for dependency, expected in record.get("upstream", {}).items():
            found = records.get(dependency) or read_stage_record(study_dir / dependency)
            if found is None and (study_dir / dependency).is_dir():
                problems.append(
                    f"{name} was computed from {dependency}, but {study_dir / dependency} has no readable "
                    f"pipeline record in its {MANIFEST_NAME}"
                )
            elif found is None:
                problems.append(f"{name} was computed from {dependency}, but {study_dir / dependency} is missing")
            elif found.get("hash") != expected:
                problems.append(
                    f"{name} was computed from another {dependency} than the one in {study_dir / dependency}"
                )
    return problems


#: Files that file managers write into folders a user opens (macOS Finder, Windows Explorer).
#: They contain no data of the user's, so a rerun may delete them.
FILE_MANAGER_FILES = (".DS_Store", "Thumbs.db", "desktop.ini")


def stage_files(folder: Path) -> list[str]:
    """List the entries below a stage folder as sorted POSIX paths relative to it.

    The entries are files, symbolic links (not followed) and empty folders,
    which get a final ``/``. File manager files (:data:`FILE_MANAGER_FILES`
    and macOS ``._`` files) are left out.
    """
    entries = []
    for directory, folders, files in os.walk(folder, onerror=walk_error_handler(folder, "the study")):
        base = Path(directory)
        # os.walk lists a symbolic link to a folder among the folders without entering it.
        links = [name for name in folders if (base / name).is_symlink()]
        for name in files + links:
            if name not in FILE_MANAGER_FILES and not name.startswith("._"):
                entries.append((base / name).relative_to(folder).as_posix())
        if not folders and not files and base != folder:
            entries.append(base.relative_to(folder).as_posix() + "/")
    return sorted(entries)


def listed_files(folder: Path) -> list[str] | None:
    """Return the files that the stage record of ``folder`` lists, or None without such a list."""
    record = read_stage_record(folder)
    files = record.get("files") if record is not None else None
    return files if isinstance(files, list) else None


#: SHA-256 digests of stage files by (device, inode, size, mtime_ns, ctime_ns), see :func:`_stage_file_sha256`.
_STAGE_FILE_DIGESTS: dict[tuple[int, ...], str] = {}
_MAX_CACHED_DIGESTS = 100_000


def _stage_file_sha256(path: Path) -> str:
    """Return the SHA-256 of a file of a stage folder, read once while the file stays unchanged.

    A run checks a stage folder in each of its two plans and again when it
    replaces the folder. The cache key is the file's device, inode, size,
    modification time and status change time (``st_ctime_ns``). Every write,
    and every ``os.utime`` that sets the old modification time back, sets
    the status change time to the current time, so the key changes with any
    edit. A renamed folder keeps the key of its files.

    NOTE: on a file system whose status change time has a coarse resolution,
    an edit that keeps size and modification time within one tick of it
    would be missed while this process runs. Ext4 (with 256-byte inodes),
    XFS and Btrfs store nanoseconds.
    """
    info = path.stat()
    identity = (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)
    if identity not in _STAGE_FILE_DIGESTS:
        if len(_STAGE_FILE_DIGESTS) >= _MAX_CACHED_DIGESTS:
            _STAGE_FILE_DIGESTS.clear()
        _STAGE_FILE_DIGESTS[identity] = sha256_file(path)
    return _STAGE_FILE_DIGESTS[identity]


def file_digests(folder: Path) -> dict[str, dict[str, Any]]:
    """Return the size and SHA-256 of each regular file of a stage folder, by its path relative to the folder.

    The top-level ``manifest.json`` is left out, because the stage record
    that contains these digests is written into it afterwards.
    """
    digests = {}
    for name in stage_files(folder):
        path = folder / name
        if name == MANIFEST_NAME or name.endswith("/") or path.is_symlink() or not path.is_file():
            continue
        digests[name] = {"size": path.stat().st_size, "sha256": _stage_file_sha256(path)}
    return digests


def edited_files(folder: Path, error_path: Path | None = None) -> list[str]:
    """List the files of a stage folder whose size or SHA-256 differs from its stage record.

    A record written before the digests existed has none, so nothing counts
    as edited there. :func:`_missing_files` lists the missing files.
    ``error_path`` is the path that an error names for ``folder``, such as the
    stage folder for its old folder, which is moved back after the error.
    """
    digests = _recorded_digests(folder)
    edited = []
    for name, expected in sorted(digests.items()):
        path = folder / name
        if not os.path.lexists(path):
            continue
        if path.is_symlink() or not path.is_file():
            # The stage wrote a regular file, so a link or folder in its place is an edit.
            edited.append(name)
            continue
        try:
            if path.stat().st_size != expected["size"] or _stage_file_sha256(path) != expected["sha256"]:
                edited.append(name)
        except FileNotFoundError:
            # The run that holds the study's lock can move the folder during a dry run's check.
            continue
        except OSError as error:
            named = (error_path or folder) / name
            raise OSError(
                f"cannot read {named} ({error.strerror}), so it is unknown whether it changed after the "
                f"stage wrote it: make it readable (chmod u+r {named}) or move it out of {error_path or folder}, "
                "then run the study again"
            ) from error
    return edited


def _missing_files(folder: Path) -> list[str]:
    """List the files with a digest in the stage record of ``folder`` that no longer exist there.

    A fit's ``checkpoint.pt`` is left out: no later stage reads it, so a user
    may delete it to save disk space without making the fit run again.
    """
    from dimalign.embedding.checkpoint import CHECKPOINT_NAME

    return sorted(
        name for name in _recorded_digests(folder)
        if name != CHECKPOINT_NAME and not os.path.lexists(folder / name)
    )


def _recorded_digests(folder: Path) -> dict[str, dict[str, Any]]:
    """Return the ``file_digests`` of the stage record of ``folder``, empty without a record or digests."""
    record = read_stage_record(folder)
    return record.get("file_digests", {}) if record is not None else {}


def unwritten_files(folder: Path, rewritten: Path | None = None) -> tuple[list[str], bool]:
    """List the files of a stage folder that its stage did not write.

    A rerun replaces the stage folder as a whole, so such files (notes or
    plots of the user's) would be lost. The stage record lists the files that
    the stage wrote. A record written before the list existed has none, so
    its folder is compared with the list in the record of ``rewritten``, the
    stage's new folder, once the stage has run again. Before that, such a
    folder passes.

    Returns:
        tuple[list[str], bool]: The files as from :func:`stage_files`, and
        whether the record is one without a list of files.
    """
    written = listed_files(folder)
    old_record = written is None
    if old_record:
        written = listed_files(rewritten) if rewritten is not None else None
        if written is None:
            return [], True
    return sorted(set(stage_files(folder)) - set(written)), old_record


def unwritten_files_error(
    folder: Path, stage_name: str, unknown: list[str], old_record: bool, finished_output: Path | None = None
) -> FileExistsError:
    """Build the error for files in ``folder`` that stage ``stage_name`` did not write.

    ``finished_output`` is the partial folder with the stage's finished output, which
    the next run moves into place without running the stage again.
    """
    listed = list_names(unknown)
    noun, pronoun = ("file", "the file") if len(unknown) == 1 else ("files", "these files")
    if old_record:
        written_by = (
            f"that the new run of stage {stage_name} did not write ({listed}), and its record, from "
            "an older dimalign, lists no files"
        )
    else:
        written_by = f"that stage {stage_name} did not write ({listed})"
    message = (
        f"{folder} contains {len(unknown)} {noun} {written_by}, "
        "and the stage replaces its folder as a whole when it runs again: move "
        f"{pronoun} out of the folder, then run the study again"
    )
    if finished_output is not None:
        message += (
            f". The finished output of this run is kept in {finished_output}, and the next run moves it into "
            f"place without running stage {stage_name} again"
        )
    return FileExistsError(message)



def reject_unwritten_files(folder: Path, stage_name: str, finished_output: Path | None = None) -> None:
    """Raise ``FileExistsError`` if a stage folder contains files that its stage did not write."""
    unknown, old_record = unwritten_files(folder)
    if unknown:
        raise unwritten_files_error(folder, stage_name, unknown, old_record, finished_output)
