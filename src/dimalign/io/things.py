"""Published THINGS resources: a registry with pinned URLs and checksums, and a fetcher.

Every registered file is the original bytes of a file in a public GitHub
repository, pinned to a commit, so its SHA-256 never changes. :func:`fetch`
looks for a file in this order:

1. the data directory (``data_dir``, default :func:`default_data_dir`);
2. a mirror directory (``mirror``), copied into the data directory;
3. the pinned URL, downloaded into the data directory (``download=True``).

A file found locally or in the mirror is checked against its SHA-256 unless
``verify=False``, and a mismatch raises ``ValueError``. A download goes to a
temporary file, is checked, and is renamed into place only when the checksum
matches, so a failed or corrupted download leaves nothing behind. A download
killed with SIGKILL leaves its temporary file. The next download or mirror
copy into the folder removes such files, unless another process holds a lock
on them (see :func:`remove_stale_temporary_files`).

Some files are stored under a more descriptive local name than the published
one (for example ``vice_embedding_42d.npy`` for VICE's ``final_embedding.npy``).
The mirror may hold either name. The human test triplets are registered under
their published name ``behavior_triplets_test10.txt``. A local file
``human_triplets.txt``, a subset of those rows, has no published checksum and
is only used by :func:`find_human_triplets`.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import http.client
import logging
import os
import re
import shutil
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from dimalign.io.files import atomic_path, sha256_file

logger = logging.getLogger(__name__)

DATA_DIR_VARIABLE = "DIMALIGN_DATA"
RAW_GITHUB = "https://raw.githubusercontent.com"

HUMAN_TRIPLETS = "behavior_triplets_test10.txt"
"""Published name of the held-out human triplets (146,168 rows, 0-based, odd one out last)."""

HUMAN_TRIPLETS_SUBSET = "human_triplets.txt"
"""Local name of a subset of :data:`HUMAN_TRIPLETS` rows, accepted by :func:`find_human_triplets`."""


@dataclass(frozen=True)
class ThingsFile:
    """A published file with its pinned address and checksum.

    Attributes:
        name (str): Local file name in the data directory.
        url (str): Download address.
        sha256 (str): SHA-256 hex digest of the file.
        size (int | None): Size in bytes, checked before the digest when known.
        description (str): What the file contains.
    """

    name: str
    url: str
    sha256: str
    size: int | None = None
    description: str = ""

    @property
    def published_name(self) -> str:
        """File name at the end of the URL (may differ from :attr:`name`)."""
        return PurePosixPath(self.url.split("?", 1)[0]).name


def _github(
    name: str, repository: str, commit: str, path: str, size: int, sha256: str, description: str
) -> ThingsFile:
    return ThingsFile(
        name=name,
        url=f"{RAW_GITHUB}/{repository}/{commit}/{path}",
        sha256=sha256,
        size=size,
        description=description,
    )


_GPT3 = ("ViCCo-Group/semantic_features_gpt_3", "3b132af668bc61706b944dcfd6b01672d3a49c34")
_VICE = ("LukasMut/VICE", "5f80103ef4c9eb29477c4cadb1c9c54476d59e97")
_GPT_BEHAVIOR = ("florianmahner/gpt-behavior", "4a8bd2fe526a7ba0b568e3b3569e6338100a8abd")
_PERTURBATIONS = ("marrenj/cvpr_perturbations", "9820d612f66d3c2386e22159e1a6f841974efeb7")
_OBJECT_DIMENSIONS = ("florianmahner/object-dimensions", "696d940aa1d975dcea916e45996b8382472fdef5")
_PYSRF = ("florianmahner/pysrf", "0fc24ac06c56f76f06968976fc5615343cdf453e")
_THINGS_DATA = ("ViCCo-Group/THINGS-data", "5e0eccac51eac78b57045f5b90b4f53814f56c32")

_PYSRF_FACTORS = (
    "tests/checks/vgg16_similarity/linear_kernel_rank_curve/embeddings/rank_200_repeat_0_fold_0.npy"
)

THINGS_FILES: dict[str, ThingsFile] = {
    entry.name: entry
    for entry in (
        _github(
            "spose_embedding_49d_sorted.txt", *_GPT3, "data/things/spose_embedding_49d_sorted.txt",
            2273072, "b934fac338b803c5f87f60dfe1da90de8d62bacc346e74346a8428aa10cbe175",
            "human SPoSE embedding, 1,854 x 49 (Hebart et al. 2020)",
        ),
        _github(
            "spose_embedding_66d_sorted.txt", *_GPT3, "data/things/spose_embedding_66d_sorted.txt",
            3303874, "6a485922fe22c10b2eb920140198488451d44ac6de0c6be5e8ee8eec8a2007cc",
            "human SPoSE embedding, 1,854 x 66 (Hebart et al. 2020)",
        ),
        _github(
            "labels_49.mat", *_GPT3, "data/things/labels_49.mat",
            1123, "18f997190e922b9c131b72f97efc21045325bc08d4bb0917f572ea343032bf5c",
            "labels of the 49 SPoSE dimensions (MATLAB)",
        ),
        _github(
            "labels_66.txt", *_GPT3, "data/things/labels_66.txt",
            1264, "396f333a38d629a503f894b0ee7929af0ed073bc59a3c0d86ec5e88de713f808",
            "labels of the 66 SPoSE dimensions, one per line",
        ),
        _github(
            "unique_id.txt", *_GPT3, "data/things/unique_id.txt",
            15201, "e2e59d02197e89776034938e7a73940a0823cacac4b6084b56b1d8959816ff76",
            "the 1,854 THINGS concept ids, the row order of every THINGS file",
        ),
        _github(
            "words.csv", *_GPT3, "data/things/words.csv",
            40856, "794dd3a9ad2e23e005f34e0c8f78fb4c19410bb9c9a21869c84bc9c1f371e8d5",
            "concept id, word, category and display label of each concept",
        ),
        _github(
            "vice_embedding_42d.npy", *_VICE, "embeddings/things/final_embedding.npy",
            311600, "6c596ec9fe6e135e3fd32207d4d1d5eb004e3cef3810d5cb40474b1996d5392f",
            "human VICE embedding, float32 1,854 x 42 (Muttenthaler et al. 2022)",
        ),
        _github(
            "things_concepts.tsv", *_VICE, "data/files/things_concepts.tsv",
            497467, "f6eb4ec6fcad61e50a746bee820f98d1595fe655e9e210a9a407e9a17fd8cee4",
            "THINGS concept metadata (WordNet ids, frequencies, categories, definitions)",
        ),
        _github(
            HUMAN_TRIPLETS, *_GPT_BEHAVIOR, "data/behavior_triplets_test10.txt",
            1930206, "3d99c59ba4793d7ccee4e3dccfce926a9ab9af5b515d30fb8a5e5541dc440617",
            "held-out human odd-one-out triplets (Hebart et al. 2020)",
        ),
        _github(
            "words48.csv", *_GPT_BEHAVIOR, "data/words48.csv",
            504, "585ca371369512f8adb1b7838010bc3ea80255910da93ea611f3458a28724521",
            "names of the 48 objects of the fully sampled RDM",
        ),
        _github(
            "RDM48_triplet.mat", *_PERTURBATIONS, "data/RDM48_triplet.mat",
            8294, "c08e207821fdba8d85e2d1018d89ca9a79afd106cc7db20506a69678528f094b",
            "fully sampled human 48 x 48 dissimilarity matrix (MATLAB)",
        ),
        _github(
            "category_mat_manual.tsv", *_OBJECT_DIMENSIONS, "data/misc/category_mat_manual.tsv",
            100398, "9f4f9a4626f23064dad9a7547ffa1e3a0a6b1fe23281d74cb394ee0367f53af4",
            "membership of each concept in 27 superordinate categories",
        ),
        _github(
            "vgg16_srf_factors_rank200.npy", *_PYSRF, _PYSRF_FACTORS,
            2966528, "7e64766ecbd8a0f1ce5aa358e6a5f65cdf449b0bc06bc72357f1d54e8c4afa46",
            "non-negative rank-200 factors of VGG-16 penultimate-layer similarity, 1,854 x 200",
        ),
        _github(
            "Categories_final_20200131.tsv", *_THINGS_DATA, "MRI/data/Categories_final_20200131.tsv",
            254965, "968d45a1a2fb8def83b33661031a1c473a61a8fe208c8c0af3474784c6bbcd95",
            "membership of each concept in 53 categories",
        ),
        _github(
            "animacy.csv", *_THINGS_DATA, "MRI/data/animacy.csv",
            393727, "e5163a8d68a2704cf0d14e8b5c002963e180aba79e76d13653bcba854e8cf644",
            "animacy ratings of the concepts",
        ),
        _github(
            "size_fixed.csv", *_THINGS_DATA, "MRI/data/size_fixed.csv",
            409039, "6a14e7f359e2698231b49210aeb5e4a6878f1337aa19529b04220bac172ea042",
            "real-world size ratings of the concepts",
        ),
    )
}
"""The registered files by local name."""


def default_data_dir() -> Path:
    """Return the directory for THINGS files.

    ``$DIMALIGN_DATA`` when set, else ``$XDG_CACHE_HOME/dimalign/things``, else
    ``~/.cache/dimalign/things``. The directory is not created here.
    """
    configured = os.environ.get(DATA_DIR_VARIABLE)
    if configured:
        return Path(configured).expanduser()
    cache_home = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache_home).expanduser() / "dimalign" / "things"


def _resolve_entry(name: str | ThingsFile) -> ThingsFile:
    if isinstance(name, ThingsFile):
        return name
    if name in THINGS_FILES:
        return THINGS_FILES[name]
    if name == HUMAN_TRIPLETS_SUBSET:
        raise KeyError(
            f"{name!r} is a local subset of {HUMAN_TRIPLETS!r} without a published checksum, so "
            f"it cannot be fetched. Use find_human_triplets() or fetch({HUMAN_TRIPLETS!r})."
        )
    raise KeyError(f"unknown THINGS file {name!r}. Registered files: {sorted(THINGS_FILES)}")


_LOCAL_REMEDY = (
    "Delete the file so that it is fetched again (from Python, verify=False uses it as it is)."
)
_MIRROR_REMEDY = (
    "Replace the mirror copy with the published file (from Python, verify=False uses it as it is)."
)
#: Slowest transfer rate a download may keep, in bytes per second, on top of
#: the ``timeout`` allowance. 16 KiB/s still fetches the largest file (about
#: 3 MB) in a few minutes, and a server that sends less is treated as stalled.
MIN_DOWNLOAD_RATE = 16 * 1024


def verify_file(path: str | os.PathLike, entry: ThingsFile, remedy: str = _LOCAL_REMEDY) -> None:
    """Check a file's size and SHA-256 against the registry entry.

    Args:
        path (path): The file to check.
        entry (ThingsFile): The published size and digest.
        remedy (str): The last sentence of the error message: the action to take.

    Raises:
        ValueError: Naming the file, the expected and the actual value.
        PermissionError: If the file cannot be read.
    """
    path = Path(path)
    if entry.size is not None and path.stat().st_size != entry.size:
        raise ValueError(
            f"{path} has {path.stat().st_size} bytes but the published {entry.name} has "
            f"{entry.size} (sha256 {entry.sha256}). {remedy}"
        )
    try:
        actual = sha256_file(path)
    except PermissionError as error:
        raise PermissionError(
            f"cannot read {path} to check its checksum ({error.strerror}): make it readable "
            "(chmod u+r), or move it away so that the file is fetched from elsewhere"
        ) from error
    if actual != entry.sha256:
        raise ValueError(
            f"checksum mismatch for {path}: expected sha256 {entry.sha256}, got {actual}. "
            f"{remedy}"
        )


def _mirror_folder(mirror: str | os.PathLike | None) -> Path | None:
    """Return the mirror as a path, raising if it is given but is not a folder.

    A mistyped mirror would otherwise be skipped, and the files downloaded.
    """
    if mirror is None:
        return None
    folder = Path(mirror).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(
            f"the mirror folder {folder} does not exist or is not a folder; pass the folder that "
            "holds the copies of the THINGS files (demo: --mirror), or leave the mirror out"
        )
    return folder


def _describe_paths(paths: Iterable[Path]) -> str:
    """List ``paths`` for a not-found message, marking folders and links whose target is missing."""
    described = []
    for path in paths:
        if path.is_symlink() and not path.exists():
            described.append(f"{path} (a link to the missing {os.readlink(path)})")
        elif path.is_dir():
            described.append(f"{path} (a folder, not a file)")
        else:
            described.append(str(path))
    return ", ".join(described)


def missing_folder_note(data_dir: Path) -> str:
    """Return the sentence (with a leading space) that notes a missing ``data_dir`` in an error.

    A data folder that does not exist is often a typo. The result is empty
    when the folder exists.
    """
    return "" if data_dir.exists() else f" Note that the data folder {data_dir} does not exist."


# -- temporary files ------------------------------------------------------------


def _temporary_name_pattern(name: str) -> re.Pattern[str]:
    """Match the temporary names that :func:`dimalign.io.files.atomic_path` gives ``name``.

    ``atomic_path`` calls ``tempfile.mkstemp(prefix=".<stem>.", suffix=".tmp<suffix>")``,
    whose random part is 8 characters of ``a-z``, ``0-9`` and ``_`` in CPython.
    """
    final = PurePosixPath(name)
    return re.compile(rf"\.{re.escape(final.stem)}\.[a-z0-9_]{{8}}\.tmp{re.escape(final.suffix)}")


@contextlib.contextmanager
def _locked_temporary(target: Path) -> Iterator[Path]:
    """Yield the temporary file of ``target`` from ``atomic_path``, locked until it is renamed.

    The ``fcntl.flock`` lock shows :func:`remove_stale_temporary_files` in
    another process that the file is in use. The system releases it when the
    process ends, even by SIGKILL. A file that such a cleanup removed between
    its creation and the lock is created again under the same name.
    """
    import fcntl

    descriptor = None
    try:
        with atomic_path(target) as temporary:
            while True:
                descriptor = os.open(temporary, os.O_RDWR | os.O_CREAT, 0o666)
                fcntl.flock(descriptor, fcntl.LOCK_EX)
                try:
                    current = os.stat(temporary)
                except FileNotFoundError:
                    current = None
                if current is not None and os.path.samestat(os.fstat(descriptor), current):
                    break
                os.close(descriptor)
                descriptor = None
            yield temporary
    finally:
        if descriptor is not None:
            os.close(descriptor)


def remove_stale_temporary_files(data_dir: Path, names: Iterable[str]) -> list[Path]:
    """Remove the temporary files that interrupted downloads or copies of ``names`` left.

    Only regular files whose name is a temporary name of one of ``names`` (as
    :func:`dimalign.io.files.atomic_path` forms it) count. Such a file is
    removed unless another process holds its lock, because a running download
    or copy of this module locks its temporary file (:func:`_locked_temporary`).

    NOTE: A download of a dimalign version without that lock holds none, so
    its temporary file counts as stale while it runs. ``fcntl`` locks exist
    on POSIX systems only.

    Args:
        data_dir (Path): The THINGS data folder.
        names (Iterable[str]): Local file names whose temporary files count.

    Returns:
        list[Path]: The removed files.
    """
    import fcntl

    patterns = [_temporary_name_pattern(name) for name in dict.fromkeys(names)]
    removed = []
    for path in sorted(data_dir.iterdir()):
        if not any(pattern.fullmatch(path.name) for pattern in patterns):
            continue
        if path.is_symlink() or not path.is_file():
            continue
        try:
            descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        except FileNotFoundError:
            continue  # renamed or removed by the process that wrote it
        try:
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                logger.info("kept %s: another process holds its lock, so it is still being written", path)
                continue
            size = os.fstat(descriptor).st_size
            path.unlink(missing_ok=True)
        finally:
            os.close(descriptor)
        logger.info(
            "removed %s, a temporary file (%d bytes) of an interrupted download or copy that no "
            "running process holds", path, size,
        )
        removed.append(path)
    return removed


def _copy_from_mirror(entry: ThingsFile, mirror: Path, target: Path, verify: bool) -> Path | None:
    """Copy the entry from a mirror directory, under its local or published name."""
    for candidate_name in dict.fromkeys((entry.name, entry.published_name)):
        candidate = mirror / candidate_name
        if candidate.is_dir():
            logger.warning("%s is a folder, not a file, so the mirror copy is skipped", candidate)
        if not candidate.is_file():
            continue
        if verify:
            verify_file(candidate, entry, remedy=_MIRROR_REMEDY)
        with _locked_temporary(target) as temporary:
            shutil.copyfile(candidate, temporary)
        logger.info("copied %s from the mirror %s to %s", entry.name, candidate, target)
        return target
    return None


def download_file(entry: ThingsFile, target: str | os.PathLike, timeout: float = 60.0) -> Path:
    """Download a registered file to ``target`` and verify it before renaming it into place.

    The bytes go to a temporary file in the target directory and are hashed
    while they arrive. The temporary file is removed on any error. A server
    that sends more bytes than the published size is cut off at once. The
    whole download must finish within ``timeout`` seconds plus the time the
    published size takes at :data:`MIN_DOWNLOAD_RATE` (10 times ``timeout``
    when the size is not registered), so a server that trickles data fails
    too.

    Args:
        entry (ThingsFile): The registered file.
        target (str | os.PathLike): Destination path.
        timeout (float): Seconds to wait for each network read.

    Returns:
        Path: ``target``.

    Raises:
        RuntimeError: If the download fails (network error, HTTP error,
            malformed response, timeout).
        ValueError: If the size or the SHA-256 of the received bytes is wrong.
    """
    target = Path(target)
    digest = hashlib.sha256()
    received = 0
    allowed = timeout + entry.size / MIN_DOWNLOAD_RATE if entry.size is not None else 10 * timeout
    deadline = time.monotonic() + allowed
    logger.info("downloading %s from %s", entry.name, entry.url)
    with _locked_temporary(target) as temporary:
        try:
            with urllib.request.urlopen(entry.url, timeout=timeout) as response, open(
                temporary, "wb"
            ) as handle:
                # read1 returns what has arrived instead of waiting for a full
                # 64 KiB, so the deadline is checked while a slow server sends.
                for chunk in iter(lambda: response.read1(1 << 16), b""):
                    digest.update(chunk)
                    handle.write(chunk)
                    received += len(chunk)
                    if entry.size is not None and received > entry.size:
                        raise ValueError(
                            f"the server sent more than the {entry.size} bytes of {entry.name} "
                            f"({entry.url}); stopped after {received} bytes and removed the "
                            "partial file. Retry later, or use a verified mirror copy."
                        )
                    if time.monotonic() > deadline:
                        raise RuntimeError(
                            f"download of {entry.name} from {entry.url} took longer than "
                            f"{allowed:.0f} s ({received} bytes received); the server is too slow. "
                            "Retry later, or copy the file into a directory and pass it as mirror"
                        )
        except urllib.error.HTTPError as error:
            # urllib's reason for a redirect loop spans several lines.
            reason = " ".join(str(error.reason).split())
            raise RuntimeError(
                f"download of {entry.name} from {entry.url} failed: the server returned HTTP "
                f"{error.code} ({reason}). Retry later, or copy the file into a directory "
                "and pass it as mirror"
            ) from error
        except (urllib.error.URLError, TimeoutError, ConnectionError, http.client.HTTPException) as error:
            # urlopen wraps a timeout while sending the request in URLError,
            # and raises it bare while reading.
            reason = getattr(error, "reason", None)
            if isinstance(error, TimeoutError) or isinstance(reason, TimeoutError):
                raise RuntimeError(
                    f"download of {entry.name} from {entry.url} failed: no data for {timeout:g} s "
                    "(timed out). Check the network connection and retry, or copy the file into a "
                    "directory and pass it as mirror"
                ) from error
            # repr() keeps a server's raw bytes (line breaks, escapes) out of the terminal.
            detail = repr(str(error)) if isinstance(error, http.client.HTTPException) else str(error)
            raise RuntimeError(
                f"download of {entry.name} from {entry.url} failed: {type(error).__name__}: {detail}. "
                "Check the network connection, or copy the file into a directory and pass it as mirror"
            ) from error

        if entry.size is not None and received < entry.size:
            raise ValueError(
                f"the download of {entry.name} from {entry.url} ended after {received} of "
                f"{entry.size} bytes (the server closed the connection early). The partial file was "
                "removed. Retry, or use a verified mirror copy."
            )
        actual = digest.hexdigest()
        if actual != entry.sha256 or (entry.size is not None and received != entry.size):
            expected_size = f" ({entry.size} bytes)" if entry.size is not None else ""
            raise ValueError(
                f"checksum mismatch for {entry.name} downloaded from {entry.url}: expected "
                f"sha256 {entry.sha256}{expected_size}, got {actual} ({received} bytes). "
                "The partial file was removed. Retry, or use a verified mirror copy."
            )
    logger.info("downloaded %s (%d bytes, sha256 verified) to %s", entry.name, received, target)
    return target


def fetch(
    name: str | ThingsFile,
    data_dir: str | os.PathLike | None = None,
    mirror: str | os.PathLike | None = None,
    download: bool = True,
    verify: bool = True,
    timeout: float = 60.0,
) -> Path:
    """Return the path of a THINGS file, copying or downloading it when needed.

    Args:
        name (str | ThingsFile): A key of :data:`THINGS_FILES` (local file
            name) or a custom entry.
        data_dir (path | None): Where the file lives or is stored;
            :func:`default_data_dir` when None.
        mirror (path | None): A directory with copies of the files under their
            local or published names, used before the network.
        download (bool): Download from the pinned URL when the file is neither
            in ``data_dir`` nor in the mirror.
        verify (bool): Check the SHA-256 of a local or mirror file (downloads
            are always checked).
        timeout (float): Network timeout in seconds.

    Returns:
        Path: The file in ``data_dir``.

    Raises:
        KeyError: For an unknown name.
        ValueError: If a local, mirror or downloaded file fails its checksum.
        FileNotFoundError: If the file is missing and ``download`` is False,
            or ``mirror`` is given but is not a folder.
        RuntimeError: If the download fails.
        OSError: If the data directory cannot be written (``PermissionError``
            where access is denied), naming it.
    """
    entry = _resolve_entry(name)
    data_dir = Path(data_dir).expanduser() if data_dir is not None else default_data_dir()
    mirror = _mirror_folder(mirror)
    target = data_dir / entry.name
    if data_dir.exists() and not data_dir.is_dir():
        raise NotADirectoryError(
            f"the THINGS data folder {data_dir} is a file; pass a folder (demo: --data-dir)"
        )
    if target.exists() and not target.is_file():
        raise ValueError(f"{target} is not a file; move it away so that {entry.name} can be stored there")

    if target.is_file():
        if verify:
            verify_file(target, entry)
        logger.debug("using %s", target)
        return target

    names = list(dict.fromkeys((entry.name, entry.published_name)))
    if not download and (mirror is None or not any((mirror / name).is_file() for name in names)):
        looked_in = [target]
        if mirror is not None:
            looked_in += [mirror / name for name in names]
        published = f" (a mirror may also have it as {entry.published_name})" if len(names) > 1 else ""
        raise FileNotFoundError(
            f"THINGS file {entry.name} not found (looked in {_describe_paths(looked_in)}) and "
            f"downloading is off. To download it, pass download=True (CLI: leave out --no-download), "
            f"or copy it from {entry.url} into {data_dir} as "
            f"{entry.name}{published}.{missing_folder_note(data_dir)}"
        )

    try:
        data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise type(error)(
            f"cannot create the THINGS data folder {data_dir} ({error.strerror}); "
            "pass a folder you can write to (demo: --data-dir)"
        ) from error
    try:
        remove_stale_temporary_files(data_dir, [*THINGS_FILES, entry.name])
        if mirror is not None:
            copied = _copy_from_mirror(entry, mirror, target, verify)
            if copied is not None:
                return copied
        return download_file(entry, target, timeout=timeout)
    except OSError as error:
        unwritable = isinstance(error, PermissionError) or error.errno == errno.EROFS
        in_mirror = mirror is not None and str(error.filename).startswith(str(mirror))
        if not unwritable or error.filename is None or in_mirror:
            raise
        raise type(error)(
            f"cannot write {entry.name} into the THINGS data folder {data_dir} "
            f"({error.strerror}); pass a writable data folder (demo: --data-dir)"
        ) from error


def fetch_all(
    names: Iterable[str] | None = None,
    data_dir: str | os.PathLike | None = None,
    mirror: str | os.PathLike | None = None,
    download: bool = True,
    verify: bool = True,
) -> dict[str, Path]:
    """Fetch several files (all registered ones by default) with :func:`fetch`."""
    selected = list(THINGS_FILES) if names is None else list(names)
    return {
        name: fetch(name, data_dir=data_dir, mirror=mirror, download=download, verify=verify)
        for name in selected
    }


def find_human_triplets(
    data_dir: str | os.PathLike | None = None,
    mirror: str | os.PathLike | None = None,
    download: bool = True,
    verify: bool = True,
) -> Path:
    """Return a file of held-out human THINGS triplets.

    The search order is: the published :data:`HUMAN_TRIPLETS` in ``data_dir``
    (verified), a :data:`HUMAN_TRIPLETS_SUBSET` file in ``data_dir``, the
    published file in the mirror (verified and copied), a subset file in the
    mirror, and finally a download of the published file. A subset file is
    used in place and unverified, because it has no published checksum.

    Both files share the format: rows ``i j k``, 0-based, odd one out last.

    Raises:
        FileNotFoundError: If neither file is found and ``download`` is False
            (naming every path searched), if ``mirror`` is not a folder, or if a
            subset file is a link to a missing file.
        ValueError: If a subset path is a folder or another non-file, or a
            published file fails its checksum.
        RuntimeError: If the download fails.
    """
    data_dir = Path(data_dir).expanduser() if data_dir is not None else default_data_dir()
    mirror = _mirror_folder(mirror)
    if (data_dir / HUMAN_TRIPLETS).is_file():
        return fetch(HUMAN_TRIPLETS, data_dir=data_dir, download=False, verify=verify)
    if _is_subset_file(data_dir / HUMAN_TRIPLETS_SUBSET):
        return _use_subset(data_dir / HUMAN_TRIPLETS_SUBSET)
    if mirror is not None:
        if (mirror / HUMAN_TRIPLETS).is_file():
            return fetch(HUMAN_TRIPLETS, data_dir=data_dir, mirror=mirror, verify=verify)
        if _is_subset_file(mirror / HUMAN_TRIPLETS_SUBSET):
            return _use_subset(mirror / HUMAN_TRIPLETS_SUBSET)
    if not download:
        entry = THINGS_FILES[HUMAN_TRIPLETS]
        folders = [data_dir] if mirror is None else [data_dir, mirror]
        looked_in = [folder / name for folder in folders for name in (HUMAN_TRIPLETS, HUMAN_TRIPLETS_SUBSET)]
        raise FileNotFoundError(
            f"human THINGS triplets not found (looked in {_describe_paths(looked_in)}) and downloading "
            f"is off. To download {HUMAN_TRIPLETS}, pass download=True (CLI: leave out --no-download), "
            f"or copy it from {entry.url} into {data_dir} (a subset of its rows may be stored there "
            f"as {HUMAN_TRIPLETS_SUBSET}).{missing_folder_note(data_dir)}"
        )
    return fetch(HUMAN_TRIPLETS, data_dir=data_dir, mirror=mirror, download=download, verify=verify)


def _is_subset_file(path: Path) -> bool:
    """Return whether ``path`` is a file, raising if something else is there under the subset name."""
    if path.is_file():
        return True
    if path.is_symlink() and not path.exists():
        raise FileNotFoundError(
            f"{path} is a link to the missing {os.readlink(path)}; restore the link's target, or "
            "delete the link so that the published triplets are used"
        )
    if path.exists():
        kind = "a folder" if path.is_dir() else "not a regular file"
        raise ValueError(f"{path} is {kind}, not a file of triplets; move it away")
    return False


def _use_subset(path: Path) -> Path:
    logger.info("using %s, a subset of the published %s (no checksum)", path, HUMAN_TRIPLETS)
    return path
