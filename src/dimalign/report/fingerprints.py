"""Fingerprints of the study inputs that ``dimalign run`` reads, for the stage hashes.

A file's fingerprint is its SHA-256. A folder's fingerprint covers the
relative path, size and SHA-256 of every non-hidden file below it. Studies
recorded by an older dimalign fingerprinted a folder by its listing of
paths, sizes and modification times, and such a fingerprint is kept while
the listing is unchanged.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from dimalign.io.files import sha256_file


def walk_error_handler(top: Path, owner: str) -> Callable[[OSError], None]:
    """Return an ``os.walk`` error handler that raises for ``top`` or a folder below it that cannot be read.

    ``os.walk`` skips such a folder by default, so a check would miss the
    files in it, and a rerun could delete them. A folder that no longer
    exists, such as one that the run holding the study's lock renamed during
    the check, is skipped, because it has no files to miss.
    """

    def fail(error: OSError) -> None:
        if isinstance(error, FileNotFoundError):
            return
        where = "" if Path(error.filename) == top else f", a folder inside {top}"
        raise PermissionError(
            f"cannot read {error.filename}{where} ({error.strerror}): make it readable "
            f"(chmod -R u+rwX {error.filename}) or move it out of {owner}, then run the study again",
        ) from error

    return fail


class FingerprintCache:
    """Fingerprints of input files and folders, each computed once per run."""

    def __init__(self) -> None:
        self._values: dict[Path, str] = {}

    def __call__(self, path: Path) -> str:
        if path not in self._values:
            self._values[path] = fingerprint(path)
        return self._values[path]


def _input_files(path: Path) -> Iterator[tuple[str, Path]]:
    """Yield the relative POSIX path and the path of every non-hidden file below a folder, sorted."""
    for folder, subfolders, files in os.walk(path, onerror=walk_error_handler(path, "the input folder")):
        subfolders[:] = sorted(name for name in subfolders if not name.startswith("."))
        for name in sorted(files):
            if not name.startswith("."):
                full = Path(folder) / name
                yield full.relative_to(path).as_posix(), full


def fingerprint(path: Path) -> str:
    """Return the SHA-256 of a file, or ``content:`` and the SHA-256 of a folder's files.

    A folder's digest covers the relative path, size and SHA-256 of every
    non-hidden file below it, so any change to a file's content shows, and
    a copy of the folder has the same fingerprint. A symbolic link to a file
    counts as that file. A symbolic link to a folder is not entered, because
    ``os.walk`` and the image loader of ``dimalign extract`` do not enter it
    either. So a change inside a linked folder does not change the
    fingerprint. Every file is read on each call, because a cache keyed by size and modification time would
    miss an edit that keeps both.
    """
    if path.is_file():
        return sha256_file(path)
    digest = hashlib.sha256()
    for relative, full in _input_files(path):
        size, content = _hash_input_file(path, full)
        digest.update(f"{relative}\0{size}\0{content}\n".encode())
    return "content:" + digest.hexdigest()


def _hash_input_file(folder: Path, full: Path) -> tuple[int, str]:
    """Return the size and SHA-256 of a file inside the input folder ``folder``, following a symbolic link.

    Raises:
        FileNotFoundError: If the file is a broken link or was removed during the walk.
        ValueError: If it is a named pipe, socket or device, whose read could block forever.
        OSError: If it cannot be read.
    """
    if full.is_symlink() and not full.exists():
        raise FileNotFoundError(
            f"{full}, a file inside the input folder {folder}, is a symbolic link to the missing "
            f"{os.readlink(full)}: restore the target or remove the link, then run the study again"
        )
    try:
        info = full.stat()
        if not stat.S_ISREG(info.st_mode):
            raise ValueError(
                f"{full}, a file inside the input folder {folder}, is not a regular file (a named pipe, "
                "socket or device), so the run cannot hash it: move it out of the folder, then run the "
                "study again"
            )
        return info.st_size, sha256_file(full)
    except FileNotFoundError as error:
        raise FileNotFoundError(
            f"{full}, a file inside the input folder {folder}, was removed or renamed while the run hashed "
            "the folder: run the study again once the folder no longer changes"
        ) from error
    except OSError as error:
        raise OSError(
            f"cannot read {full}, a file inside the input folder {folder} ({error.strerror}): make it "
            f"readable (chmod u+r {full}) or move it out of the folder, then run the study again"
        ) from error


def folder_listing(path: Path) -> str:
    """Return ``listing:`` and the SHA-256 of a folder's listing, the folder fingerprint of older records.

    The listing contains every non-hidden file below the folder with its
    relative path, size and modification time in nanoseconds.
    """
    digest = hashlib.sha256()
    for relative, full in _input_files(path):
        info = full.stat()
        digest.update(f"{relative}\0{info.st_size}\0{info.st_mtime_ns}\n".encode())
    return "listing:" + digest.hexdigest()


def input_fingerprints(
    inputs: dict[str, Path], previous: dict[str, Any] | None, fingerprints: FingerprintCache
) -> dict[str, str]:
    """Return the fingerprint of each input, keeping a matching folder listing of an older record.

    A stage recorded by a dimalign that fingerprinted folders by their
    listing keeps that fingerprint while the listing is unchanged, so that
    its stage hash stays the same and the stage does not rerun. Once the
    stage runs again, its record gets the content fingerprint.
    """
    recorded = previous.get("inputs", {}) if previous is not None else {}
    values = {}
    for key, path in inputs.items():
        old = recorded.get(key, {}).get("fingerprint")
        if path.is_dir() and isinstance(old, str) and old.startswith("listing:") and old == _listing_or_none(path):
            values[key] = old
        else:
            values[key] = fingerprints(path)
    return values


def _listing_or_none(path: Path) -> str | None:
    """Return :func:`folder_listing` of ``path``, or None when a file in it cannot be listed.

    The content fingerprint, computed instead, then raises the error that
    names the file, such as a broken symbolic link.
    """
    try:
        return folder_listing(path)
    except FileNotFoundError:
        return None
