"""Atomic writes, checksums, the ``manifest.json`` of every output directory, and readers of input files.

The readers are shared: :func:`read_npz` reads ``.npz`` archives,
:func:`load_npy` ``.npy`` files and :func:`load_text_table` text tables of
numbers.
"""

from __future__ import annotations

import codecs
import contextlib
import datetime as _dt
import errno
import hashlib
import json
import logging
import math
import numbers
import os
import platform
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from dimalign.memory import available_memory_bytes, format_bytes

logger = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.json"

# The running ``dimalign`` command line, which manifests record. dimalign.cli.main
# sets it while a command runs. Library calls (a notebook, a sweep worker) leave
# it None, because their sys.argv names the Python process, not a command.
_command_line: str | None = None


@contextlib.contextmanager
def recording_command_line(argv: Sequence[str]) -> Iterator[None]:
    """Record ``argv`` (shell-quoted) as the ``command`` of manifests written inside the block."""
    import shlex

    global _command_line
    previous = _command_line
    _command_line = shlex.join(argv)
    try:
        yield
    finally:
        _command_line = previous

_VERSIONED_PACKAGES = ("dimalign", "numpy", "scipy", "scikit-learn", "torch", "torchvision")


def without_umask(mode: int) -> int:
    """Return ``mode`` minus the process umask: what ``open`` or ``mkdir`` would give.

    Example:
        >>> without_umask(0o666) & 0o600
        384
    """
    # The umask can only be read by setting it, so it is set back at once.
    umask = os.umask(0)
    os.umask(umask)
    return mode & ~umask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary path next to ``path`` and rename it to ``path`` on success.

    A reader never sees a half-written file: the temporary file is removed if
    the block raises, and the rename is atomic on POSIX file systems.

    Args:
        path (str | os.PathLike): The final file name.
        overwrite (bool): Replace a file at ``path``. When False, the
            temporary file is hard-linked to ``path``, which fails if
            ``path`` exists, even if another process created it while the
            block ran.

    Yields:
        Path: A temporary name in the same directory, with the same suffix (so
        writers that pick a format by suffix, like ``np.save``, still work).

    Raises:
        FileExistsError: If ``overwrite`` is False and ``path`` exists at the
            end of the block; the temporary file is removed.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    try:
        handle, temporary = tempfile.mkstemp(
            prefix=f".{final.stem}.", suffix=f".tmp{final.suffix}", dir=final.parent
        )
    except OSError as error:
        raise _naming(error, final) from error
    os.close(handle)
    temporary_path = Path(temporary)
    # mkstemp creates the file readable by its owner only; give the final file
    # the permissions an ordinary open() would (0o666 minus the umask).
    os.chmod(temporary_path, without_umask(0o666))
    try:
        try:
            yield temporary_path
        except OSError as error:
            # The temporary file that the error may name is removed below.
            renamed = _naming(error, final)
            if renamed is error:
                raise
            raise renamed from error
        try:
            if overwrite:
                os.replace(temporary_path, final)
            else:
                _link_new(temporary_path, final)
        except OSError as error:
            raise _naming(error, final) from error
    finally:
        if temporary_path.exists():
            temporary_path.unlink()


def _link_new(temporary: Path, final: Path) -> None:
    """Give ``temporary`` the name ``final`` unless ``final`` exists, in one atomic step where possible."""
    try:
        os.link(temporary, final)
    except OSError as error:
        # Some file systems (such as FAT or some network mounts) have no hard
        # links. There the check and the rename are two steps.
        if error.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK):
            raise
        if os.path.lexists(final):
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(final)) from None
        os.replace(temporary, final)


def _naming(error: OSError, final: Path) -> OSError:
    """Return ``error`` naming the file the user asked for where it named the temporary one or none.

    A failed ``write`` (a full disk) raises an ``OSError`` without a file name.
    """
    temporary_prefix = f".{final.stem}."
    if error.errno is None:
        return error
    if error.filename is not None and not Path(str(error.filename)).name.startswith(temporary_prefix):
        return error
    return type(error)(error.errno, error.strerror, str(final))


@contextlib.contextmanager
def output_dir(
    path: str | os.PathLike, *, keep_if_contains: Sequence[str] = (), remove_contents: bool = True
) -> Iterator[Path]:
    """Create an output folder for a block and remove it again if the block raises.

    Only folders that this call creates are removed: the first missing folder
    on ``path`` and everything below it. A folder that existed before is left
    as it is, with whatever the block wrote into it. Any exception counts,
    Ctrl-C (``KeyboardInterrupt``) included. A signal that Python does not
    turn into an exception ends the process without cleanup. The ``dimalign``
    command line turns SIGTERM (sent by ``timeout`` and ``kill``) and SIGHUP
    (a closed terminal) into one (:func:`dimalign.cli.sigterm_as_exit`), while
    SIGKILL leaves the folder.

    Args:
        path (str | os.PathLike): The output folder.
        keep_if_contains (Sequence[str]): File names or glob patterns
            relative to ``path``, such as ``"runs/*"``. If the block raises
            after writing a matching file or folder, the folder is kept (for
            example a training checkpoint that a rerun can resume from).
        remove_contents (bool): Delete the created folders with everything
            in them. When False, only created folders that are empty after
            the block are removed, for blocks that remove their own files
            (such as :func:`staged_outputs`), so that the files of another
            program writing there at the same time stay.

    Yields:
        Path: ``path``, which exists inside the block.
    """
    folder = Path(path)
    created = None
    for candidate in (folder, *folder.parents):
        if candidate.exists():
            break
        created = candidate
    folder.mkdir(parents=True, exist_ok=True)
    try:
        yield folder
    except BaseException:
        if created is not None and not remove_contents:
            _remove_empty_folders(folder, created)
        elif created is not None:
            found = [pattern for pattern in keep_if_contains if any(folder.glob(pattern))]
            if found:
                logger.warning("%s is kept after the error because it contains %s", folder, ", ".join(found))
            else:
                logger.info("removing %s, which this command created, after the error", created)
                shutil.rmtree(created, ignore_errors=True)
        raise


def _remove_empty_folders(folder: Path, created: Path) -> None:
    """Remove ``folder`` and its parents up to ``created`` while they are empty."""
    for candidate in (folder, *folder.parents):
        try:
            candidate.rmdir()
        except OSError as error:
            if error.errno in (errno.ENOTEMPTY, errno.EEXIST):
                logger.warning(
                    "%s is kept after the error because it contains files that this run did not write",
                    candidate,
                )
            else:
                logger.warning("failed to remove %s, which this command created, after the error: %s", candidate, error)
            return
        if candidate == created:
            logger.info("removed %s, which this command created, after the error", created)
            return


#: Prefix of the hidden folder that :func:`staged_outputs` writes into.
STAGE_PREFIX = ".partial-"
# Subfolder of the hidden folder for the files of an earlier run that the new ones replace.
_EARLIER_FOLDER = ".earlier"


@contextlib.contextmanager
def staged_outputs(
    out_dir: Path, *, retire: Sequence[str] = (), overwrite: bool = True
) -> Iterator[Path]:
    """Yield a hidden folder in ``out_dir`` for the outputs, and move them to ``out_dir`` after.

    ``out_dir`` is created when missing. If the block raises, the folders
    created here are removed again when they are empty, so that files that
    another program wrote there meanwhile stay (see :func:`output_dir`).
    The files themselves are handled as :func:`_staged_files` describes.

    Args:
        out_dir (Path): The output folder.
        retire (Sequence[str]): See :func:`_staged_files`.
        overwrite (bool): See :func:`_staged_files`.

    Yields:
        Path: The hidden folder.
    """
    with output_dir(out_dir, remove_contents=False), _staged_files(
        Path(out_dir), retire=retire, overwrite=overwrite
    ) as stage:
        yield stage


@contextlib.contextmanager
def _staged_files(out_dir: Path, *, retire: Sequence[str], overwrite: bool) -> Iterator[Path]:
    """Yield a hidden folder in ``out_dir`` for the outputs, and move them to ``out_dir`` after.

    The files of an earlier run into the same folder are replaced only once
    every new file is written. They are moved aside into the hidden folder
    first, the earlier ``manifest.json`` before the other files, and the new
    ``manifest.json`` comes last. Earlier files that match a ``retire``
    pattern and have no new counterpart are moved aside too, right after the
    earlier manifest. Files in subfolders are moved one by one, so other
    files in an existing subfolder stay. If the block or a move raises (an
    error, Ctrl-C, SIGTERM, SIGHUP), the earlier files are put back and the hidden
    folder is removed: the folder holds the earlier output whole, and files
    that other programs added meanwhile stay. A signal after the last move
    stops the caller with the new output in place. Only SIGKILL, or a second
    signal during a cleanup, leaves the hidden folder (see
    :func:`report_leftover_stages`).

    Args:
        out_dir (Path): The output folder, which must exist.
        retire (Sequence[str]): Glob patterns, relative to ``out_dir``, of the
            files that an earlier run may have written and that must not stay
            next to the new output (for example ``top_objects/pair_*.png``).
        overwrite (bool): Replace the files of an earlier run. When False, a
            file or folder at the name of a new output (``manifest.json``
            included) raises ``FileExistsError`` instead, and the new files
            moved so far are removed again. Use it for folders that may
            contain the user's files, after checking the output names
            before the work: it also keeps a file created meanwhile.

    Yields:
        Path: The hidden folder.

    Raises:
        FileExistsError: If ``overwrite`` is False and a new output's name
            is taken, naming that path.
    """
    stage = Path(tempfile.mkdtemp(prefix=STAGE_PREFIX, dir=out_dir))
    earlier = stage / _EARLIER_FOLDER
    moved: list[Path] = []
    created: list[Path] = []
    stale: list[Path] = []
    try:
        yield stage
        names = sorted(
            (path.relative_to(stage) for path in stage.rglob("*") if not path.is_dir() or path.is_symlink()),
            key=lambda name: (name == Path(MANIFEST_NAME), name.parts),
        )
        stale += sorted(
            {
                path.relative_to(out_dir)
                for pattern in retire
                for path in out_dir.glob(pattern)
                if path.is_file() or path.is_symlink()
            }
            - {*names, Path(MANIFEST_NAME)}
        )
        earlier.mkdir()
        if overwrite and (out_dir / MANIFEST_NAME).is_file():
            os.replace(out_dir / MANIFEST_NAME, earlier / MANIFEST_NAME)
        for name in [*stale, *names]:
            target = out_dir / name
            # NOTE: a file created between this check and the move below is still replaced.
            if not overwrite and name not in stale and (target.exists() or target.is_symlink()):
                raise FileExistsError(
                    f"{target} exists and is not replaced by the new output of that name, because it "
                    "may be the only copy of its data: move it away or choose another output folder, "
                    "then run the command again"
                )
            for folder in reversed(target.parents):
                if folder != out_dir and out_dir in folder.parents and not folder.exists():
                    folder.mkdir()
                    created.append(folder)
            # A name is listed before its files move, so that a signal between
            # two moves finds it in the list when the earlier files go back.
            moved.append(name)
            # Only files go aside: a folder in the way makes the move below
            # fail, rather than being deleted with the hidden folder.
            if name != Path(MANIFEST_NAME) and (target.is_file() or target.is_symlink()):
                (earlier / name).parent.mkdir(parents=True, exist_ok=True)
                os.replace(target, earlier / name)
            if name not in stale:
                os.replace(stage / name, target)
    except BaseException:
        _put_back(stage, out_dir, moved, created, set(stale))
        raise
    # The new output is complete here. A signal during this removal stops the
    # command, but the hidden folder must not stay with half the earlier files.
    try:
        shutil.rmtree(stage)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    logger.info("moved the %d files written in %s into %s", len(moved) - len(stale), stage, out_dir)
    if stale:
        logger.info(
            "removed %d files of an earlier run from %s that the new output does not replace: %s",
            len(stale), out_dir, ", ".join(name.as_posix() for name in stale),
        )


def _put_back(stage: Path, out_dir: Path, moved: list[Path], created: list[Path], stale: set[Path]) -> None:
    """Undo the moves of :func:`staged_outputs` and remove its hidden folder.

    A name in ``moved`` whose earlier file is not in the hidden folder had no
    earlier file, or the stop came before its move aside. Its file in
    ``out_dir`` is new, and removed, only when it is no ``stale`` name and
    has left the hidden folder.
    """
    earlier = stage / _EARLIER_FOLDER
    for name in dict.fromkeys([*reversed(moved), Path(MANIFEST_NAME)]):
        if (earlier / name).exists() or (earlier / name).is_symlink():
            os.replace(earlier / name, out_dir / name)
        elif name in moved and name not in stale and not (stage / name).exists():
            (out_dir / name).unlink(missing_ok=True)
    for folder in reversed(created):
        with contextlib.suppress(OSError):
            folder.rmdir()
    shutil.rmtree(stage, ignore_errors=True)


def check_writable(out_dir: Path, advice: str = "choose another output folder") -> None:
    """Reject an output folder that cannot be written, before any work.

    Commands that write their outputs only at the end would otherwise fail
    on a read-only folder after all the work.
    NOTE: ``os.access`` can pass where a write still fails (such as on some
    network file systems); the write then raises the system's error.

    Args:
        out_dir (Path): The output folder (it need not exist).
        advice (str): What to do, for the end of the message.

    Raises:
        PermissionError: Naming the folder, or its nearest existing parent
            when the folder does not exist yet.
    """
    existing = next(folder for folder in (out_dir, *out_dir.parents) if folder.exists())
    if not os.access(existing, os.W_OK | os.X_OK):
        raise PermissionError(
            f"cannot write into {existing} (no write permission, or a read-only file system), "
            f"so the output folder {out_dir} cannot be written; {advice}"
        )


def report_leftover_stages(out_dir: Path) -> None:
    """Warn about hidden folders of :func:`staged_outputs` that an earlier run left in ``out_dir``.

    A run killed with SIGKILL (or by the out-of-memory killer) leaves its
    hidden folder with half-written files, which may be large. They are not
    deleted here, because another run into the same folder may be writing
    them right now.

    Args:
        out_dir (Path): The output folder (it need not exist).
    """
    if not out_dir.is_dir():
        return
    for stage in sorted(out_dir.glob(f"{STAGE_PREFIX}*")):
        if not stage.is_dir() or stage.is_symlink():
            continue
        size = sum(path.stat().st_size for path in stage.rglob("*") if path.is_file())
        logger.warning(
            "%s (%s bytes) is the hidden folder of an interrupted dimalign run into %s. Delete "
            "it unless such a run is still in progress. If files of an earlier run are missing "
            "from %s, they are in its %s subfolder",
            stage, f"{size:,}", out_dir, out_dir, _EARLIER_FOLDER,
        )


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary file.

    Args:
        path (str | os.PathLike): Destination.
        text (str): Content, written as UTF-8.

    Returns:
        Path: The destination path.
    """
    with atomic_path(path) as temporary:
        temporary.write_text(text, encoding="utf-8")
    return Path(path)


def replace_non_finite(value: Any) -> Any:
    """Replace every NaN and infinity in nested dicts, lists and tuples by None.

    JSON has no NaN or infinity, and ``JSON.parse`` in a browser rejects the
    ``NaN`` that :func:`json.dumps` writes by default, so they become ``null``.

    Args:
        value (Any): A number, or a mapping or sequence of values at any depth.

    Returns:
        Any: A copy with non-finite floats (Python and NumPy) as None. Tuples
        become lists, and other values are returned unchanged.
    """
    if isinstance(value, Mapping):
        return {key: replace_non_finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [replace_non_finite(item) for item in value]
    is_float = isinstance(value, numbers.Real) and not isinstance(value, numbers.Integral)
    if is_float and not math.isfinite(value):
        return None
    return value


def write_json_atomic(
    path: str | os.PathLike,
    data: Any,
    *,
    indent: int | None = 2,
    default: Callable[[Any], Any] | None = None,
) -> Path:
    """Write ``data`` as strict JSON to ``path`` through a temporary file.

    NaN and infinities are written as ``null`` (see :func:`replace_non_finite`).

    Args:
        path (str | os.PathLike): Destination.
        data (Any): JSON-serialisable data.
        indent (int | None): Indentation passed to :func:`json.dumps`.
        default (Callable | None): Converter for objects that :mod:`json`
            cannot serialise, passed to :func:`json.dumps`.

    Returns:
        Path: The destination path.

    Raises:
        ValueError: If ``default`` returns a non-finite float, which has no
            JSON form. The destination is then left unchanged.
        TypeError: If ``data`` contains an object that cannot be serialised.
    """
    text = json.dumps(replace_non_finite(data), indent=indent, allow_nan=False, default=default)
    return write_text_atomic(path, text + "\n")


def sha256_file(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
    """Compute the SHA-256 hex digest of a file, reading it in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()


def package_versions(extra: tuple[str, ...] = ()) -> dict[str, str]:
    """Return the installed versions of the packages that shape a result."""
    versions = {"python": platform.python_version()}
    for name in _VERSIONED_PACKAGES + tuple(extra):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def now_iso() -> str:
    """Return the current UTC time in ISO 8601 with seconds."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(key): _jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(item) for item in value]
    if isinstance(value, Path):
        return str(value)
    # numpy arrays and torch tensors have item() too, but it raises for more than one element.
    if getattr(value, "ndim", 0) > 0 and callable(getattr(value, "tolist", None)):
        return _jsonable(value.tolist())
    if hasattr(value, "item") and callable(value.item):  # numpy and torch scalars, 0-d arrays
        return value.item()
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def write_manifest(
    out_dir: str | os.PathLike,
    *,
    step: str,
    inputs: Mapping[str, str | os.PathLike] | None = None,
    settings: Mapping[str, Any] | None = None,
    started: str | None = None,
    outputs: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``manifest.json`` so that a result can be traced to its inputs.

    Args:
        out_dir (str | os.PathLike): The output directory.
        step (str): Pipeline step that wrote the directory (``"fit"``, ``"extract"``...).
        inputs (Mapping[str, path] | None): Named input files; each is recorded
            with its absolute path, size and SHA-256. Directories are recorded
            by path only.
        settings (Mapping[str, Any] | None): Every setting of the step.
        started (str | None): ISO start time; the end time is now.
        outputs (Mapping[str, Any] | None): Headline results worth recording.

    Returns:
        Path: The manifest file.
    """
    recorded_inputs = {}
    for name, raw_path in (inputs or {}).items():
        path = Path(raw_path)
        entry: dict[str, Any] = {"path": str(path.resolve())}
        if path.is_file():
            entry["bytes"] = path.stat().st_size
            entry["sha256"] = sha256_file(path)
        recorded_inputs[name] = entry
    manifest = {
        "step": step,
        "command": _command_line,
        "started": started or now_iso(),
        "finished": now_iso(),
        "inputs": recorded_inputs,
        "settings": _jsonable(dict(settings or {})),
        "outputs": _jsonable(dict(outputs or {})),
        "versions": package_versions(),
    }
    target = Path(out_dir) / MANIFEST_NAME
    return write_json_atomic(target, manifest)


def check_unowned_files(out_dir: str | os.PathLike, names: Sequence[str], step: str) -> None:
    """Reject output files that exist in a folder without an earlier output of ``step``.

    A rerun of ``step`` into its own folder replaces its files. In any other
    folder, a file with the name of an output (a ``metrics.json`` of the
    user's, say) may be the only copy of its data, so it is not replaced.
    Call it before any work, together with :func:`check_output_dir`.

    Args:
        out_dir (str | os.PathLike): The output folder (it need not exist).
        names (Sequence[str]): The files the step writes, relative to ``out_dir``.
        step (str): The step that is about to write there.

    Raises:
        FileExistsError: Naming the first such file.
    """
    out_dir = Path(out_dir)
    if (out_dir / MANIFEST_NAME).is_file() and read_manifest(out_dir).get("step") == step:
        return
    for name in names:
        path = out_dir / name
        if path.exists() or path.is_symlink():
            raise FileExistsError(
                f"{path} exists, but {out_dir} contains no earlier dimalign {step} output, so the file "
                "may be the only copy of its data: move it away, or choose another output folder"
            )


def check_output_dir(out_dir: str | os.PathLike, step: str) -> None:
    """Reject an output folder whose ``manifest.json`` belongs to another step.

    Call it before writing anything, so that the record of an earlier step
    (a fit, a simulation) is never replaced by the output of another one.

    Args:
        out_dir (str | os.PathLike): The output folder (it need not exist).
        step (str): The step that is about to write there.

    Raises:
        FileExistsError: If the folder contains the manifest of another step,
            or the path or one of its parents is a file.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise FileExistsError(f"the output folder {out_dir} is a file; choose a folder for dimalign {step}")
    for parent in out_dir.parents:
        if parent.exists() and not parent.is_dir():
            raise FileExistsError(
                f"{parent} is a file, so the output folder {out_dir} cannot be created inside it; "
                f"choose another folder for dimalign {step}"
            )
    manifest = out_dir / MANIFEST_NAME
    if manifest.exists() and not manifest.is_file():
        raise FileExistsError(
            f"{manifest} is not a file, but dimalign {step} writes its record there; move it "
            "away, or choose another output folder"
        )
    if manifest.is_file():
        previous = read_manifest(out_dir).get("step")
        if not isinstance(previous, str):
            raise FileExistsError(
                f"{out_dir / MANIFEST_NAME} is not the manifest of a dimalign step (it names no "
                "step), so it may belong to another program; choose another output folder so "
                "that it is not replaced"
            )
        if previous != step:
            raise FileExistsError(
                f"{out_dir} already contains the output of dimalign {previous}; choose another "
                "output folder so that its manifest.json is not replaced"
            )


def read_manifest(out_dir: str | os.PathLike) -> dict[str, Any]:
    """Read the ``manifest.json`` of an output directory.

    Raises:
        FileNotFoundError: If the directory has no manifest.
        ValueError: If the manifest is not valid JSON or not a JSON object (naming the file).
    """
    path = Path(out_dir) / MANIFEST_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: is {out_dir} a dimalign output directory?")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(
            f"{path} is not valid JSON ({error}); the folder's record is damaged: rerun the step "
            "that wrote it"
        ) from error
    if not isinstance(manifest, dict):
        raise ValueError(
            f"{path} contains a JSON {type(manifest).__name__}, not an object; the folder's record "
            "is damaged: rerun the step that wrote it"
        )
    return manifest


def recorded_step(folder: str | os.PathLike) -> str | None:
    """Return the step that a folder's ``manifest.json`` records, or None without a readable one.

    Args:
        folder (str | os.PathLike): A folder that may contain a manifest.

    Returns:
        str | None: The ``step`` entry, such as ``"fit"``. None if the
        folder has no manifest, or the manifest is damaged or names no step.
    """
    if not (Path(folder) / MANIFEST_NAME).is_file():
        return None
    try:
        step = read_manifest(folder).get("step")
    except (OSError, ValueError):
        return None
    return step if isinstance(step, str) else None


# Maximum number of characters of an unreadable value that an error quotes.
_SHOWN_VALUE_LENGTH = 40


def _other_separator(field: str, delimiter: str | None) -> str | None:
    """Return the name of another separator that splits ``field`` into numbers, or None.

    A ``.csv`` file written with spaces or semicolons has no commas, so each
    of its lines is read as a single value that is not a number.
    """
    candidates = {None: "spaces", ";": "semicolons", ",": "commas", "\t": "tabs"}
    for separator, name in candidates.items():
        if separator == delimiter:
            continue
        parts = field.split(separator) if separator else field.split()
        # A separator at the end of the line leaves an empty last part.
        if separator and len(parts) > 1 and not parts[-1].strip():
            parts.pop()
        if len(parts) < 2:
            continue
        try:
            [float(part) for part in parts]
        except ValueError:
            continue
        return name
    return None


def looks_like_triplet_file(path: str | os.PathLike, array: np.ndarray) -> bool:
    """Return whether an array read from ``path`` looks like odd-one-out triplets.

    A triplet file has three columns of distinct non-negative whole numbers in
    every row: an integer array (such as the ``.npy`` that ``import-triplets``
    writes), or a text file, which is read as floats. Float arrays of binary
    files (``.npy``, ``.npz``, HDF5) never count, so real features or
    embeddings of that shape can be loaded once saved as a float array.
    """
    import numpy as np

    if array.ndim != 2 or array.shape[1] != 3 or array.shape[0] == 0:
        return False
    text = Path(path).suffix.lower() in (".txt", ".tsv", ".csv")
    if not text and array.dtype.kind not in "iu":
        return False
    if array.dtype.kind not in "iuf":
        return False
    values = np.asarray(array)
    if values.dtype.kind == "f" and not (np.isfinite(values).all() and np.array_equal(values, np.round(values))):
        return False
    if values.min() < 0:
        return False
    distinct = (values[:, 0] != values[:, 1]) & (values[:, 0] != values[:, 2]) & (values[:, 1] != values[:, 2])
    return bool(distinct.all())


def _empty_value_problem(number: int, column: int, n_fields: int, delimiter: str, separators: str) -> str:
    """Describe the empty value in ``column`` of line ``number``, left by separators at the end or a doubled one."""
    separator = {",": "comma", "\t": "tab"}.get(delimiter, repr(delimiter))
    if column == n_fields:
        # One separator at the end of every line is left out before this check, so this line ends with several.
        return (
            f"line {number} ends with more than one {separator}, which leaves its last value empty: end "
            f"each line with one {separator} at most"
        )
    if column == 1:
        return f"line {number} starts with a {separator}, which leaves its first value empty: delete that {separator}"
    return f"line {number} has an empty value in column {column}, between two {separators}: fill in the value"


def _decimal_comma_value(line: str) -> str | None:
    """Return the first value with a comma, or None unless every value of ``line`` has a decimal comma form.

    Values are taken as separated by spaces, tabs or semicolons, as spreadsheet
    programs of locales with a decimal comma write them (``0,5;0,25``).
    """
    values = [value for value in re.split(r"[\s;]+", line) if value]
    if not values or any(value.count(",") > 1 for value in values):
        return None
    if not all(_is_number(value.replace(",", ".")) for value in values):
        return None
    return next((value for value in values if "," in value), None)


def _is_number(field: str) -> bool:
    try:
        float(field)
    except ValueError:
        return False
    return True


def count_of(count: int, noun: str) -> str:
    """Return ``count`` and ``noun``, with an ``s`` added unless ``count`` is 1, for a message.

    Example:
        >>> count_of(3, "image"), count_of(1, "DNN dimension")
        ('3 images', '1 DNN dimension')
    """
    return f"{count} {noun}{'' if count == 1 else 's'}"


def abbreviate(text: str, limit: int = 60) -> str:
    """Shorten ``text`` to its first ``limit`` characters and ``...`` for a message.

    Example:
        >>> abbreviate("abcdef", 3)
        'abc...'
    """
    return text if len(text) <= limit else text[:limit] + "..."


# Start of binary files that are given where a text table belongs, and the advice for each.
_BINARY_SIGNATURES = (
    (b"\x1f\x8b", "it is gzip-compressed, not text: decompress it first (gunzip)"),
    (b"\x89HDF\r\n\x1a\n", "it is an HDF5 file, not text: save the array with numpy.save as a .npy file"),
    (b"PK\x03\x04", "it is a zip archive (such as a .npz file), not text: give an .npz file a name ending in .npz"),
    (b"\x93NUMPY", "it is a .npy file, not text: give it a name ending in .npy"),
    (b"MATLAB", "it is a MATLAB file, not text: read it with scipy.io.loadmat and save the array with "
                "numpy.save as a .npy file"),
)

# Bytes of a text file that are decoded at a time to find the first one that is not UTF-8.
_DECODE_CHUNK_BYTES = 1 << 20


def _binary_file_problem(path: str | os.PathLike) -> str | None:
    """Describe why the file at ``path`` is not UTF-8 text, or return None when it is.

    A ``.gz`` file is not reported as compressed, because ``numpy.loadtxt``
    (numpy 2.4) decompresses a file whose name ends in ``.gz``.
    """

    with open(path, "rb") as handle:
        start = handle.read(8)
        for signature, problem in _BINARY_SIGNATURES:
            if start.startswith(signature) and not (signature == b"\x1f\x8b" and Path(path).suffix.lower() == ".gz"):
                return problem
        handle.seek(0)
        decoder = codecs.getincrementaldecoder("utf-8")()
        offset = 0
        while True:
            chunk = handle.read(_DECODE_CHUNK_BYTES)
            nul = chunk.find(b"\x00")
            if nul >= 0:
                return (
                    f"it contains NUL bytes (the first at offset {offset + nul}), as UTF-16 text and "
                    "binary files do: save it as UTF-8 text"
                )
            try:
                # The empty read at the end of the file is decoded as final, so that a
                # character cut off by the end of the file counts as invalid.
                decoder.decode(chunk, final=not chunk)
            except UnicodeDecodeError as error:
                # The decoder may hold back up to 3 bytes of an unfinished character from the last chunk.
                position = offset + error.start - len(error.object) + len(chunk)
                return f"it is not UTF-8 text (byte {error.object[error.start]:#04x} at offset {position}): save it as UTF-8"
            if not chunk:
                return None
            offset += len(chunk)


def text_table_problem(path: str | os.PathLike, delimiter: str | None = None, drop_trailing: bool = False) -> str:
    """Describe the first line of a text table of numbers that numpy cannot read.

    numpy's messages count rows from 0 or 1 depending on the error and skip
    comment lines, so the line is found again here, counted as an editor does.

    Args:
        path (str | os.PathLike): The table.
        delimiter (str | None): The separator given to :func:`numpy.loadtxt`:
            ``","``, a tab, or None for any whitespace.
        drop_trailing (bool): Every line ends with ``delimiter``, which is
            left out before the values are checked.
    """
    separators = {None: "spaces", ",": "commas", "\t": "tabs"}.get(delimiter, repr(delimiter))
    not_text = _binary_file_problem(path)
    if not_text is not None:
        return not_text
    n_values = None
    # The first line without numbers, as (line number, its quoted values), until the next line shows
    # whether it is a header or the file has no numbers at all (a list of names, say).
    header: tuple[int, str] | None = None
    with open(path, encoding="utf-8-sig", errors="replace") as lines:
        for number, line in enumerate(lines, start=1):
            content = line.split("#", 1)[0]
            if not content.strip():
                continue
            if drop_trailing and delimiter is not None:
                content = _without_trailing_separator(content, delimiter)[0]
            fields = content.split(delimiter) if delimiter else content.split()
            has_numbers = any(_is_number(field) or _other_separator(field, delimiter) for field in fields)
            if n_values is None and not has_numbers:
                names = ", ".join(repr(abbreviate(field.strip(), _SHOWN_VALUE_LENGTH)) for field in fields[:5])
                names += ", ..." if len(fields) > 5 else ""
                if header is None:
                    header = (number, names)
                    continue
                return (
                    f"line {header[0]} ({header[1]}) and line {number} ({names}) contain no numbers, so "
                    "the file is not a table of numbers: check that it is the right file"
                )
            if header is not None:
                break
            for column, field in enumerate(fields, start=1):
                try:
                    float(field)
                except ValueError:
                    if delimiter is not None and not field.strip():
                        return _empty_value_problem(number, column, len(fields), delimiter, separators)
                    comma_value = _decimal_comma_value(content)
                    if comma_value is not None:
                        return (
                            f"line {number} has the value {comma_value!r}, whose comma is a decimal comma "
                            "or separates two values: write numbers with a decimal point (0.5) and "
                            f"separate the values by {separators}"
                        )
                    other = _other_separator(field, delimiter)
                    if other is not None and delimiter is None:
                        return (
                            f"line {number} separates its values by {other}, but the values of this "
                            "file are read as separated by spaces: save it with spaces between values"
                        )
                    if other is not None:
                        return (
                            f"line {number} separates its values by {other}, but the values of a "
                            f"{Path(path).suffix.lower()} file are separated by {separators}: save it "
                            f"with {separators}, or under a name ending in .txt (values separated by spaces)"
                        )
                    return f"line {number} has the value {abbreviate(field.strip(), _SHOWN_VALUE_LENGTH)!r}, which is not a number"
            if n_values is None:
                n_values = len(fields)
            elif len(fields) != n_values:
                return (
                    f"line {number} has {len(fields)} values, earlier lines {n_values}; every "
                    f"line needs one value per column, separated by {separators}"
                )
    if header is not None:
        return (
            f"line {header[0]} is a header ({header[1]}), but the file must contain numbers only: "
            "delete that line"
        )
    return f"it is not a table of numbers separated by {separators}"


def load_text_table(path: str | os.PathLike, delimiter: str | None, *, description: str, advice: str) -> Any:
    """Read a text table of numbers as a float64 array, after checking that it fits into memory.

    Blank lines, lines of whitespace, ``#`` comments, Windows line ends and
    a final line without a line end are accepted. A separator at the end of
    every line, as spreadsheet exports write it, is left out. A comma at the
    end of some lines only is an error that names a line of each kind,
    because the table would have an empty final column on some lines. A tab
    at the end of a line is whitespace there, so it may end some lines only.
    The memory is estimated from the file size and the first lines before
    the file is parsed.

    Args:
        path (str | os.PathLike): The table.
        delimiter (str | None): ``","``, a tab, or None for any whitespace.
        description (str): What the file should be, such as ``"a features
            table"``, for the message.
        advice (str): What to do when the table does not fit into memory.

    Returns:
        np.ndarray: The values, 2-D, with no rows for a file without data.

    Raises:
        ValueError: If the table would not fit into the available memory,
            or a line cannot be read, naming the line and what to do.
    """
    import numpy as np

    _check_text_table_memory(Path(path), delimiter, advice)
    try:
        return _loadtxt(path, delimiter)
    except ValueError as error:
        first_error = error
    drop_trailing = False
    if delimiter is not None:
        with_separator, without_separator = _trailing_separator_lines(path, delimiter)
        separator = {",": "comma", "\t": "tab"}.get(delimiter, repr(delimiter))
        # A tab at a line's end is whitespace there, as in the triplet reader, so it may end some lines only.
        if with_separator is not None and without_separator is not None and not delimiter.isspace():
            if with_separator < without_separator:
                problem = f"line {without_separator} does not end with a {separator}, but line {with_separator} does"
            else:
                problem = f"line {with_separator} ends with a {separator}, but line {without_separator} does not"
            raise ValueError(
                f"{path} cannot be read as {description}: {problem}: end every line with a {separator}, or none"
            ) from first_error
        drop_trailing = with_separator is not None
        try:
            with open(path, encoding="utf-8-sig") as handle:
                return _loadtxt(_cleaned_lines(handle, delimiter, drop_trailing), delimiter)
        except ValueError:
            pass
    problem = text_table_problem(path, delimiter, drop_trailing)
    raise ValueError(f"{path} cannot be read as {description}: {problem}") from first_error


def _loadtxt(source: Any, delimiter: str | None) -> Any:
    import warnings

    import numpy as np

    with warnings.catch_warnings():
        # An empty file: the caller's check of the row count names it.
        warnings.filterwarnings("ignore", message="loadtxt: input contained no data", category=UserWarning)
        # utf-8-sig drops the byte order mark that spreadsheet programs write.
        return np.loadtxt(source, dtype=np.float64, ndmin=2, delimiter=delimiter, encoding="utf-8-sig")


def _without_trailing_separator(content: str, delimiter: str) -> tuple[str, bool]:
    """Return a line without its line end and a separator at its end, and whether it had one."""
    # Whitespace other than the separator itself may follow it, such as "0.5, \r\n".
    trimmed = content.rstrip("".join(character for character in " \t\r\n\f\v" if character != delimiter))
    if trimmed.endswith(delimiter):
        return trimmed[: -len(delimiter)], True
    return trimmed, False


def _trailing_separator_lines(path: str | os.PathLike, delimiter: str) -> tuple[int | None, int | None]:
    """Return the first content line that ends with ``delimiter`` and the first that does not, or None."""
    with_separator = without_separator = None
    with open(path, encoding="utf-8-sig", errors="replace") as lines:
        for number, line in enumerate(lines, start=1):
            content = line.split("#", 1)[0]
            if not content.strip():
                continue
            if _without_trailing_separator(content, delimiter)[1]:
                with_separator = with_separator or number
            else:
                without_separator = without_separator or number
            if with_separator and without_separator:
                break
    return with_separator, without_separator


def _cleaned_lines(lines: Iterator[str], delimiter: str, drop_trailing: bool) -> Iterator[str]:
    """Yield the lines of a text table with blank lines emptied and, if asked, the separator at their end left out."""
    for line in lines:
        content, hash_sign, comment = line.partition("#")
        if not content.strip():
            # numpy skips empty lines, but reads a line of spaces as one empty value.
            yield hash_sign + comment.rstrip("\r\n") + "\n"
            continue
        content = _without_trailing_separator(content, delimiter)[0] if drop_trailing else content.rstrip("\r\n")
        yield content + hash_sign + comment.rstrip("\r\n") + "\n"


# Lines, and bytes of one line, that the memory estimate of a text table reads to find its first
# line of values, and then lines and bytes in all that it reads to measure the mean line length.
_MAX_SCANNED_LINES = 1000
_MAX_SCANNED_LINE_BYTES = 1 << 20
_MAX_SCANNED_BYTES = 16 << 20


def _check_text_table_memory(path: Path, delimiter: str | None, advice: str) -> None:
    """Raise ``ValueError`` if a text table would not fit into memory as float64, estimated from its first lines.

    The columns come from the first line of values. The rows come from the
    file size and the mean length of up to 1,000 lines from there, because
    a short first row (of zeros, say) would inflate a count from it alone.
    """
    skipped_bytes = 0
    with open(path, "rb") as handle:
        # A binary file may have no line end for gigabytes, so at most 1 MiB of a line is read.
        for _ in range(_MAX_SCANNED_LINES):
            raw_line = handle.readline(_MAX_SCANNED_LINE_BYTES)
            if not raw_line:
                return
            text = _table_content(raw_line)
            if text.strip():
                break
            skipped_bytes += len(raw_line)
        else:
            return
        scanned_bytes, n_scanned = len(raw_line), 1
        # A line cut at 1 MiB would be counted as several lines, so the scan stops before one.
        complete = raw_line.endswith(b"\n")
        while complete and n_scanned < _MAX_SCANNED_LINES and scanned_bytes < _MAX_SCANNED_BYTES:
            line = handle.readline(_MAX_SCANNED_LINE_BYTES)
            if not line or len(line) == _MAX_SCANNED_LINE_BYTES and not line.endswith(b"\n"):
                break
            scanned_bytes += len(line)
            n_scanned += bool(_table_content(line).strip())
    if delimiter is None:
        n_columns = len(text.split())
    else:
        n_columns = len(_without_trailing_separator(text, delimiter)[0].split(delimiter))
    n_rows = max(1, round((path.stat().st_size - skipped_bytes) * n_scanned / scanned_bytes))
    check_fits_in_memory(
        8 * n_rows * n_columns,
        f"{path} needs about {{size}} of memory as {describe_array_size((n_rows, n_columns), 'float64')} (an "
        "estimate from the file size and its first lines)",
        advice,
    )


def _table_content(raw_line: bytes) -> str:
    """Return a line of a text table without a byte order mark and a ``#`` comment."""
    return raw_line.decode("utf-8", errors="replace").lstrip("\ufeff").split("#", 1)[0]


def describe_array_size(shape: Sequence[int], dtype: Any) -> str:
    """Describe an array by its shape and dtype for a message, such as ``an array of 3 rows and 2 columns of float32``."""
    if len(shape) == 2:
        return f"an array of {shape[0]} rows and {shape[1]} columns of {dtype}"
    return f"an array of shape {tuple(shape)} of {dtype}"


def check_fits_in_memory(n_bytes: int, subject: str, advice: str) -> None:
    """Raise ``ValueError`` if ``n_bytes`` exceed the memory available to new allocations.

    Nothing is checked where the available memory is unknown (see
    :func:`dimalign.memory.available_memory_bytes`).

    Args:
        n_bytes (int): The bytes that the read would allocate.
        subject (str): The start of the message, with ``{size}`` where
            ``n_bytes`` goes, such as ``"features.h5 needs {size} of memory"``.
        advice (str): What to do, for the end of the message.

    Raises:
        ValueError: Giving the size, the available memory and ``advice``.
    """
    available = available_memory_bytes()
    if available is None:
        logger.debug("available memory unknown; the read needs %s", format_bytes(n_bytes))
        return
    if n_bytes > available:
        raise ValueError(
            f"{subject.replace('{size}', format_bytes(n_bytes))}, but {format_bytes(available)} is available: {advice}"
        )


def read_utf8_text(path: str | os.PathLike, *, advice: str, description: str = "",
                   translate_newlines: bool = False) -> str:
    """Read a UTF-8 text file, without a byte order mark, naming the first byte that is not UTF-8.

    Spreadsheet programs and some Windows editors write a byte order mark,
    which would otherwise start the first name or hide a header.

    Args:
        path (str | os.PathLike): The file.
        advice (str): What to do about a file that is not UTF-8, for the message.
        description (str): What the file is, such as ``"object names file "``,
            put before its path in the message.
        translate_newlines (bool): Turn ``\\r\\n`` and ``\\r`` into ``\\n``, as
            :meth:`pathlib.Path.read_text` does.

    Returns:
        str: The text.

    Raises:
        ValueError: If the file is not UTF-8, naming the byte and its offset.
    """
    data = Path(path).read_bytes()
    # The byte order mark is removed here, not by the utf-8-sig codec, because that
    # codec counts error offsets from after the mark and the message gives file offsets.
    bom = codecs.BOM_UTF8 if data.startswith(codecs.BOM_UTF8) else b""
    try:
        text = data[len(bom):].decode("utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(
            f"{description}{path} is not UTF-8 text (byte {error.object[error.start]:#04x} at offset "
            f"{len(bom) + error.start}): {advice}"
        ) from None
    if translate_newlines:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    return text


def load_npy(
    path: str | os.PathLike, *, description: str, advice: str, mmap_mode: str | None = None
) -> Any:
    """Load a ``.npy`` array without pickles, raising an error that names the problem of the file.

    numpy's own messages suggest loading a text file or a pickle "unsafely"
    with ``allow_pickle=True``, and an empty file raises ``EOFError``. Errors
    of the file system (permission denied, say) are raised unchanged, because
    they name the file and the cause already.

    Args:
        path (str | os.PathLike): The ``.npy`` file.
        description (str): What the file should contain, such as ``"a features
            array"``, for the message.
        advice (str): What to do, such as ``"write the features with numpy.save"``.
        mmap_mode (str | None): Passed to :func:`numpy.load`.

    Returns:
        np.ndarray: The array (a ``numpy.memmap`` with ``mmap_mode``).

    Raises:
        ValueError: If the file is empty, a ``.npz`` archive, no ``.npy`` file,
            an array of Python objects, or cut short.
        OSError: If the file cannot be opened or read.
    """
    import numpy as np

    def unreadable(reason: str) -> ValueError:
        return ValueError(f"{path} cannot be read as {description}: {reason}; {advice}")

    try:
        loaded = np.load(path, mmap_mode=mmap_mode, allow_pickle=False)
    except EOFError as error:
        raise unreadable("the file is empty (0 bytes)") from error
    except ValueError as error:
        magic = np.lib.format.MAGIC_PREFIX
        with open(path, "rb") as handle:
            start = handle.read(len(magic))
        if start != magic:
            reason = (
                "it is not a .npy file, because it does not start with the .npy signature "
                "(it may be text or a pickle)"
            )
        elif "object" in str(error).lower():
            reason = "it contains Python objects, not numbers"
        else:
            reason = f"it is damaged or cut short ({error})"
        raise unreadable(reason) from error
    if not isinstance(loaded, np.ndarray):
        # A .npz archive under a .npy name loads as an NpzFile.
        names = ", ".join(loaded.files)
        loaded.close()
        raise unreadable(f"it is a .npz archive (arrays: {names}), not a .npy file")
    return loaded


def read_npz(
    path: str | os.PathLike,
    *,
    required: Sequence[str],
    optional: Sequence[str] = (),
    description: str,
    advice: str,
    missing_advice: str | None = None,
) -> dict[str, Any]:
    """Read the named arrays of a ``.npz`` archive without pickles, naming the problem of a bad file.

    Only ``required`` and ``optional`` arrays are read, so extra arrays that
    another program added, even pickled ones, are ignored. Values are not
    checked here: each caller checks the dtype, shape and NaN of its arrays.
    Errors of the file system (permission denied, say) are raised unchanged,
    because they name the file and the cause already.

    Args:
        path (str | os.PathLike): The ``.npz`` file.
        required (Sequence[str]): Arrays that must be present.
        optional (Sequence[str]): Arrays that are read when present.
        description (str): What the file should be, such as ``"an
            embedding"``, for the message.
        advice (str): What to do about a damaged or wrong file, such as
            ``"rerun the stage that writes it"``.
        missing_advice (str | None): What to do about a missing array.
            None uses ``advice``.

    Returns:
        dict[str, np.ndarray]: The present arrays of ``required`` and
        ``optional``, by name.

    Raises:
        ValueError: If the file is empty, a ``.npy`` file, no zip archive,
            damaged or cut short, lacks a required array, or stores one of
            the read arrays as Python objects.
        OSError: If the file cannot be opened or read.
    """
    import zipfile
    import zlib

    import numpy as np

    def unreadable(reason: str) -> ValueError:
        return ValueError(f"{path} cannot be read as {description}: {reason}")

    with open(path, "rb") as handle:
        start = handle.read(len(np.lib.format.MAGIC_PREFIX))
    if not start:
        raise unreadable(f"the file is empty (0 bytes); {advice}")
    if start == np.lib.format.MAGIC_PREFIX:
        # numpy.load returns a plain array for it, not an archive.
        raise unreadable("it is a .npy file, not a .npz archive: give it a name ending in .npy")
    if not start.startswith(b"PK"):
        # numpy.load would read it as a pickle, and its message suggests allow_pickle=True.
        raise unreadable(f"it is not a .npz archive, because it does not start with the zip signature; {advice}")
    arrays = {}
    found: list[str] = []
    name = None
    try:
        with np.load(path, allow_pickle=False) as archive:
            found = archive.files
            if all(wanted in found for wanted in required):
                for name in dict.fromkeys([*required, *optional]):
                    if name in found:
                        arrays[name] = archive[name]
    except ValueError as error:
        if name is not None and "object" in str(error).lower():
            raise unreadable(f"its array {name!r} contains Python objects, not numbers; {advice}") from error
        raise ValueError(f"{path} cannot be read as {description} ({error}), so the file is damaged: {advice}") from error
    except (OSError, EOFError, zipfile.BadZipFile, zlib.error) as error:
        if isinstance(error, OSError) and error.errno is not None:
            raise
        raise ValueError(f"{path} cannot be read as {description} ({error}), so the file is damaged: {advice}") from error
    missing = [wanted for wanted in required if wanted not in found]
    if missing:
        names = " and ".join(repr(wanted) for wanted in missing)
        kind = "array" if len(missing) == 1 else "arrays"
        raise ValueError(f"{path} has no {kind} named {names} (found {found}): {missing_advice or advice}")
    return arrays


def missing_file_error(path: Path, description: str) -> OSError:
    """Return the error for a ``path`` that is no file, naming a broken symbolic link as the cause.

    Args:
        path (Path): The path that ``Path.is_file`` rejected.
        description (str): What the file is, such as ``"embedding"``, put before the path.

    Returns:
        OSError: A ``FileNotFoundError``, or an ``OSError`` for a loop of links.
    """
    if path.is_symlink():
        try:
            path.stat()
        except OSError as error:
            if error.errno == errno.ELOOP:
                return OSError(f"{description} {path} cannot be opened: it is a loop of symbolic links")
            if error.errno == errno.ENOENT:
                return FileNotFoundError(
                    f"{description} {path} not found: it is a symbolic link to {os.readlink(path)}, "
                    "which does not exist"
                )
    return FileNotFoundError(f"{description} {path} not found")


def is_same_file(first: str | os.PathLike, second: str | os.PathLike) -> bool:
    """Return whether two paths name the same file, through links, relative paths or hard links.

    Paths whose resolved names are equal count as the same even when the file
    does not exist yet, such as a SQLite ``-wal`` file before the first write.

    Example:
        >>> is_same_file("/tmp/a.txt", "/tmp/../tmp/a.txt")
        True
    """
    if os.path.realpath(first) == os.path.realpath(second):
        return True
    return Path(first).exists() and Path(second).exists() and os.path.samefile(first, second)


def acquire_lock(lock_path: str | os.PathLike, busy_message: str) -> int:
    """Take an exclusive ``fcntl`` lock on ``lock_path`` and return its file descriptor.

    The system releases the lock if the process dies. :func:`release_lock`
    removes the file before it unlocks, so a process that locked the removed
    file checks that its file is still the one at ``lock_path`` and tries
    again otherwise. NOTE: ``fcntl`` locks exist on POSIX systems only.

    Args:
        lock_path (str | os.PathLike): The lock file, created when missing.
        busy_message (str): Message of the error when another process holds the lock.

    Returns:
        int: The descriptor to pass to :func:`release_lock`.

    Raises:
        RuntimeError: With ``busy_message`` when another process holds the lock.
        OSError: If the lock file cannot be created.
    """
    import fcntl

    while True:
        descriptor = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(descriptor)
            raise RuntimeError(busy_message) from None
        try:
            current = os.stat(lock_path)
        except FileNotFoundError:
            current = None
        if current is not None and os.path.samestat(os.fstat(descriptor), current):
            return descriptor
        os.close(descriptor)


def release_lock(lock_path: str | os.PathLike, descriptor: int) -> None:
    """Remove the lock file of :func:`acquire_lock`, then release the lock."""
    Path(lock_path).unlink(missing_ok=True)
    os.close(descriptor)


@contextlib.contextmanager
def exclusive_lock(lock_path: str | os.PathLike, busy_message: str) -> Iterator[None]:
    """Hold the lock of :func:`acquire_lock` for the block."""
    descriptor = acquire_lock(lock_path, busy_message)
    try:
        yield
    finally:
        release_lock(lock_path, descriptor)
