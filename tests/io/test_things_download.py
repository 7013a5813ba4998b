"""Tests of the THINGS registry and fetcher, with file:// URLs and a loopback HTTP server only."""

from __future__ import annotations

import functools
import hashlib
import http.server
import shutil
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from dimalign.io import things
from dimalign.io.files import sha256_file
from dimalign.io.things import (
    HUMAN_TRIPLETS,
    HUMAN_TRIPLETS_SUBSET,
    THINGS_FILES,
    ThingsFile,
    default_data_dir,
    fetch,
    fetch_all,
    find_human_triplets,
    verify_file,
)

CONTENT = b"0 1 2\n3 4 5\n" * 1000


@pytest.fixture(autouse=True)
def loopback_only(monkeypatch):
    """Fail any request that is not file:// or to 127.0.0.1, so no test reaches the network."""
    original = urllib.request.urlopen

    def guarded(url, *args, **kwargs):
        address = url if isinstance(url, str) else url.full_url
        parsed = urllib.parse.urlparse(address)
        if parsed.scheme != "file" and parsed.hostname != "127.0.0.1":
            raise AssertionError(f"a test tried to reach {address}")
        return original(url, *args, **kwargs)

    monkeypatch.setattr(things.urllib.request, "urlopen", guarded)


@pytest.fixture()
def source_file(tmp_path) -> Path:
    path = tmp_path / "served" / "triplets.txt"
    path.parent.mkdir()
    path.write_bytes(CONTENT)
    return path


@pytest.fixture()
def http_server(source_file):
    """Serve the folder of ``source_file`` on 127.0.0.1 at a free port."""
    handler = functools.partial(
        http.server.SimpleHTTPRequestHandler, directory=str(source_file.parent)
    )
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join()


def entry_for(url: str, content: bytes = CONTENT, name: str = "triplets.txt") -> ThingsFile:
    return ThingsFile(
        name=name, url=url, sha256=hashlib.sha256(content).hexdigest(), size=len(content)
    )


# -- the registry --------------------------------------------------------------


def test_registry_urls_are_pinned_raw_github():
    for name, entry in THINGS_FILES.items():
        assert entry.name == name
        assert entry.url.startswith("https://raw.githubusercontent.com/")
        commit = entry.url.split("/")[5]
        assert len(commit) == 40, f"{name}: {commit} is not a full commit hash"
        assert len(entry.sha256) == 64


def test_registry_matches_local_copies(things_dir):
    """Every registered file in the local data directory has the registered checksum."""
    local_names = [name for name in THINGS_FILES if (things_dir / name).is_file()]
    assert len(local_names) == len(THINGS_FILES) - 1  # all but the full triplet file

    paths = fetch_all(local_names, data_dir=things_dir, download=False)

    assert set(paths) == set(local_names)
    assert HUMAN_TRIPLETS not in local_names


def test_renamed_files_keep_published_names():
    assert THINGS_FILES["vice_embedding_42d.npy"].published_name == "final_embedding.npy"
    assert THINGS_FILES[HUMAN_TRIPLETS].published_name == HUMAN_TRIPLETS


def test_default_data_dir_from_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("DIMALIGN_DATA", str(tmp_path / "data"))
    assert default_data_dir() == tmp_path / "data"

    monkeypatch.delenv("DIMALIGN_DATA")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert default_data_dir() == tmp_path / "cache" / "dimalign" / "things"

    monkeypatch.delenv("XDG_CACHE_HOME")
    assert default_data_dir() == Path.home() / ".cache" / "dimalign" / "things"


# -- downloads -----------------------------------------------------------------


def test_download_from_file_url(source_file, tmp_path):
    data_dir = tmp_path / "data"

    path = fetch(entry_for(source_file.as_uri()), data_dir=data_dir)

    assert path == data_dir / "triplets.txt"
    assert path.read_bytes() == CONTENT
    assert sorted(p.name for p in data_dir.iterdir()) == ["triplets.txt"]


def test_download_from_loopback_server(http_server, tmp_path):
    data_dir = tmp_path / "data"

    path = fetch(entry_for(f"{http_server}/triplets.txt"), data_dir=data_dir)

    assert path.read_bytes() == CONTENT


def test_download_checksum_mismatch_leaves_nothing(http_server, tmp_path):
    data_dir = tmp_path / "data"
    wrong = entry_for(f"{http_server}/triplets.txt", content=CONTENT[:-1] + b"X")
    actual = hashlib.sha256(CONTENT).hexdigest()

    with pytest.raises(ValueError, match="checksum mismatch for triplets.txt") as error:
        fetch(wrong, data_dir=data_dir)

    assert wrong.sha256 in str(error.value)
    assert actual in str(error.value)
    assert list(data_dir.iterdir()) == []


def test_download_corrupted_file_leaves_nothing(source_file, tmp_path):
    entry = entry_for(source_file.as_uri())
    source_file.write_bytes(CONTENT[:-1] + b"X")  # corrupted after publication
    data_dir = tmp_path / "data"

    with pytest.raises(ValueError, match="partial file was removed"):
        fetch(entry, data_dir=data_dir)

    assert list(data_dir.iterdir()) == []


def test_download_http_error_leaves_nothing(http_server, tmp_path):
    data_dir = tmp_path / "data"

    with pytest.raises(RuntimeError, match="download of missing.txt .* failed: the server returned HTTP 404"):
        fetch(entry_for(f"{http_server}/missing.txt", name="missing.txt"), data_dir=data_dir)

    assert list(data_dir.iterdir()) == []


def test_download_stops_at_published_size(http_server, tmp_path):
    """A server that sends more than the file's size could fill the disk."""
    data_dir = tmp_path / "data"
    short = entry_for(f"{http_server}/triplets.txt", content=b"other bytes")

    with pytest.raises(ValueError, match=r"the server sent more than the 11 bytes of triplets.txt .* stopped after \d+ bytes"):
        fetch(short, data_dir=data_dir)

    assert list(data_dir.iterdir()) == []


@pytest.fixture()
def raw_server():
    """Serve one canned response per connection on 127.0.0.1: ``(bytes, delay between bytes)``."""
    import socket

    answer = {"data": b"", "delay": 0.0}
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    stop = threading.Event()

    def serve():
        while not stop.is_set():
            try:
                connection, _ = listener.accept()
            except TimeoutError:
                continue
            with connection:
                connection.recv(65536)
                for byte in answer["data"]:
                    if stop.is_set():
                        break
                    try:
                        connection.sendall(bytes([byte]))
                    except OSError:
                        break
                    stop.wait(answer["delay"])

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}", answer
    stop.set()
    thread.join()
    listener.close()


def test_download_of_trickling_server_times_out(raw_server, tmp_path, monkeypatch):
    url, answer = raw_server
    answer["data"] = b"HTTP/1.0 200 OK\r\n\r\n" + CONTENT[:200]
    answer["delay"] = 0.02
    monkeypatch.setattr(things, "MIN_DOWNLOAD_RATE", 10**9)

    started = time.monotonic()
    with pytest.raises(RuntimeError, match=r"download of triplets.txt from .* took longer than 1 s"):
        fetch(entry_for(f"{url}/triplets.txt", content=CONTENT[:200]), data_dir=tmp_path, timeout=1.0)

    # The server needs 4.4 s for its 219 bytes; the limit must stop it long before.
    assert time.monotonic() - started < 3.0
    assert list(tmp_path.iterdir()) == []


def test_download_of_malformed_response_names_file(raw_server, tmp_path):
    url, answer = raw_server
    answer["data"] = b"NOT HTTP AT ALL\r\n"

    with pytest.raises(RuntimeError, match="download of triplets.txt from .* failed: BadStatusLine") as caught:
        fetch(entry_for(f"{url}/triplets.txt"), data_dir=tmp_path, timeout=5.0)

    assert "\n" not in str(caught.value)
    assert "'NOT HTTP AT ALL\\r\\n'" in str(caught.value)

    assert list(tmp_path.iterdir()) == []


def test_unwritable_data_folder_is_named(tmp_path, monkeypatch):
    data_dir = tmp_path / "data"

    def denied(entry, target, timeout):
        raise PermissionError(13, "Permission denied", str(Path(target).with_name(".tmp")))

    monkeypatch.setattr(things, "download_file", denied)
    with pytest.raises(PermissionError, match=r"cannot write words48.csv into the THINGS data folder .*data \(Permission denied\); pass a writable data folder"):
        fetch("words48.csv", data_dir=data_dir)


def test_data_folder_that_cannot_be_created(tmp_path):
    (tmp_path / "afile").write_text("x")
    with pytest.raises(NotADirectoryError, match=r"cannot create the THINGS data folder .*afile/sub \(Not a directory\)"):
        fetch("words48.csv", data_dir=tmp_path / "afile" / "sub")


def test_data_folder_or_target_of_wrong_kind(tmp_path):
    (tmp_path / "afile").write_text("x")
    with pytest.raises(NotADirectoryError, match=r"the THINGS data folder .*afile is a file; pass a folder \(demo: --data-dir\)"):
        fetch("words48.csv", data_dir=tmp_path / "afile")

    (tmp_path / "data" / "words48.csv").mkdir(parents=True)
    with pytest.raises(ValueError, match="words48.csv is not a file; move it away"):
        fetch("words48.csv", data_dir=tmp_path / "data")


def test_download_disabled_raises(tmp_path):
    with pytest.raises(FileNotFoundError, match="labels_66.txt not found.*downloading is off"):
        fetch("labels_66.txt", data_dir=tmp_path, download=False)


def test_download_disabled_names_the_option(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"pass download=True \(CLI: leave out --no-download\)"):
        fetch("labels_66.txt", data_dir=tmp_path, download=False)


def test_download_disabled_names_published_name(tmp_path):
    """A renamed file may sit in a mirror under its published name, but the data folder needs the local one."""
    name = "vgg16_srf_factors_rank200.npy"
    published = THINGS_FILES[name].published_name
    with pytest.raises(FileNotFoundError, match=rf"into .* as {name} \(a mirror may also have it as {published}\)"):
        fetch(name, data_dir=tmp_path / "data", mirror=tmp_path, download=False)


def test_unknown_and_subset_names_rejected(tmp_path):
    with pytest.raises(KeyError, match="unknown THINGS file 'nothing.txt'"):
        fetch("nothing.txt", data_dir=tmp_path)
    with pytest.raises(KeyError, match="no published checksum|without a published checksum"):
        fetch(HUMAN_TRIPLETS_SUBSET, data_dir=tmp_path)


# -- local files and mirrors ---------------------------------------------------


def test_mirror_copy_is_verified(things_dir, tmp_path):
    data_dir = tmp_path / "data"

    path = fetch("words48.csv", data_dir=data_dir, mirror=things_dir, download=False)

    assert path == data_dir / "words48.csv"
    assert sha256_file(path) == THINGS_FILES["words48.csv"].sha256


def test_mirror_with_published_name(things_dir, tmp_path):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    shutil.copyfile(things_dir / "vice_embedding_42d.npy", mirror / "final_embedding.npy")

    path = fetch("vice_embedding_42d.npy", data_dir=tmp_path / "data", mirror=mirror, download=False)

    assert path.name == "vice_embedding_42d.npy"
    assert sha256_file(path) == THINGS_FILES["vice_embedding_42d.npy"].sha256


def test_corrupted_mirror_file_not_copied(things_dir, tmp_path):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / "words48.csv").write_text("Word,exclude\npizza,\n")
    data_dir = tmp_path / "data"

    with pytest.raises(ValueError, match="words48.csv has 20 bytes but the published.*Replace the mirror copy"):
        fetch("words48.csv", data_dir=data_dir, mirror=mirror, download=False)

    assert not data_dir.exists() or list(data_dir.iterdir()) == []


def test_local_file_mismatch_raises_unless_unverified(tmp_path):
    local = tmp_path / "labels_66.txt"
    local.write_text("edited labels\n")

    with pytest.raises(ValueError, match="labels_66.txt has 14 bytes"):
        fetch("labels_66.txt", data_dir=tmp_path)

    assert fetch("labels_66.txt", data_dir=tmp_path, verify=False) == local


def test_verify_file_same_size_wrong_digest(tmp_path):
    entry = entry_for("file:///unused", content=b"abcd")
    path = tmp_path / "file.txt"
    path.write_bytes(b"abce")

    with pytest.raises(ValueError, match=f"expected sha256 {entry.sha256}, got"):
        verify_file(path, entry)


def test_human_triplets_subset_accepted(things_dir, tmp_path):
    assert find_human_triplets(things_dir, download=False) == things_dir / HUMAN_TRIPLETS_SUBSET
    assert (
        find_human_triplets(tmp_path / "empty", mirror=things_dir, download=False)
        == things_dir / HUMAN_TRIPLETS_SUBSET
    )


def test_human_triplets_published_file_preferred(tmp_path, monkeypatch, source_file):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / HUMAN_TRIPLETS_SUBSET).write_bytes(CONTENT[:12])
    published = entry_for(source_file.as_uri(), name=HUMAN_TRIPLETS)
    monkeypatch.setitem(THINGS_FILES, HUMAN_TRIPLETS, published)
    fetch(HUMAN_TRIPLETS, data_dir=data_dir)

    assert find_human_triplets(data_dir, download=False) == data_dir / HUMAN_TRIPLETS


def test_human_triplets_local_subset_before_mirror(tmp_path, monkeypatch, source_file):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / HUMAN_TRIPLETS_SUBSET).write_bytes(CONTENT[:12])
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / HUMAN_TRIPLETS).write_bytes(CONTENT)
    published = entry_for(source_file.as_uri(), name=HUMAN_TRIPLETS)
    monkeypatch.setitem(THINGS_FILES, HUMAN_TRIPLETS, published)

    found = find_human_triplets(data_dir, mirror=mirror, download=False)

    assert found == data_dir / HUMAN_TRIPLETS_SUBSET
    assert not (data_dir / HUMAN_TRIPLETS).exists()


def test_human_triplets_not_found_names_both_files(tmp_path):
    """The message listed only the published name, although the subset name is searched too."""
    data_dir = tmp_path / "data"
    mirror = tmp_path / "mirror"
    mirror.mkdir()

    with pytest.raises(FileNotFoundError) as caught:
        find_human_triplets(data_dir, mirror=mirror, download=False)

    message = str(caught.value)
    for folder in (data_dir, mirror):
        assert str(folder / HUMAN_TRIPLETS) in message
        assert str(folder / HUMAN_TRIPLETS_SUBSET) in message
    assert "downloading is off" in message
    assert THINGS_FILES[HUMAN_TRIPLETS].url in message


def test_human_triplets_subset_of_wrong_kind_is_named(tmp_path):
    """A human_triplets.txt that is a folder or a dangling link was skipped without a word."""
    data_dir = tmp_path / "data"
    (data_dir / HUMAN_TRIPLETS_SUBSET).mkdir(parents=True)
    with pytest.raises(ValueError, match=rf"{HUMAN_TRIPLETS_SUBSET} is a folder, not a file"):
        find_human_triplets(data_dir, download=False)

    (data_dir / HUMAN_TRIPLETS_SUBSET).rmdir()
    (data_dir / HUMAN_TRIPLETS_SUBSET).symlink_to(tmp_path / "moved.txt")
    with pytest.raises(FileNotFoundError, match=rf"{HUMAN_TRIPLETS_SUBSET} is a link to the missing .*moved.txt"):
        find_human_triplets(data_dir, download=False)


def test_missing_mirror_folder_raises(things_dir, tmp_path):
    """A mistyped mirror was skipped, and the file was downloaded instead."""
    for mirror in (tmp_path / "no such folder", things_dir / "words48.csv"):
        with pytest.raises(FileNotFoundError, match=rf"the mirror folder {mirror} does not exist or is not a folder"):
            fetch("words48.csv", data_dir=tmp_path / "data", mirror=mirror)
        with pytest.raises(FileNotFoundError, match="the mirror folder .* does not exist"):
            find_human_triplets(tmp_path / "data", mirror=mirror)
    assert not (tmp_path / "data").exists()


def test_unreadable_local_file_is_named(tmp_path, monkeypatch):
    """An unreadable file gave only '[Errno 13] Permission denied: PATH' without what to do."""
    local = tmp_path / "labels_66.txt"
    local.write_bytes(b"x" * THINGS_FILES["labels_66.txt"].size)

    def denied(path, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(things, "sha256_file", denied)
    with pytest.raises(PermissionError, match=r"cannot read .*labels_66.txt to check its checksum \(Permission denied\): make it readable"):
        fetch("labels_66.txt", data_dir=tmp_path)


def test_download_redirect_loop_in_one_line(raw_server, tmp_path):
    """urllib's reason for a redirect loop spans three lines, which broke the one-line error."""
    url, answer = raw_server
    answer["data"] = b"HTTP/1.0 302 Found\r\nLocation: /triplets.txt\r\n\r\n"

    with pytest.raises(RuntimeError, match="failed: the server returned HTTP 302 .*infinite loop") as caught:
        fetch(entry_for(f"{url}/triplets.txt"), data_dir=tmp_path, timeout=5.0)

    assert "\n" not in str(caught.value)
    assert list(tmp_path.iterdir()) == []


def test_download_disabled_names_missing_data_folder(tmp_path):
    """A mistyped data folder produced only a list of missing files."""
    with pytest.raises(FileNotFoundError, match=r"the data folder .*no_such_folder does not exist"):
        fetch("labels_66.txt", data_dir=tmp_path / "no_such_folder", download=False)
    with pytest.raises(FileNotFoundError, match=r"the data folder .*no_such_folder does not exist"):
        find_human_triplets(tmp_path / "no_such_folder", download=False)


def test_read_only_data_folder_is_named(tmp_path, monkeypatch):
    """A data folder on a read-only file system gave the bare '[Errno 30] Read-only file system'."""
    import errno

    def read_only(entry, target, timeout):
        raise OSError(errno.EROFS, "Read-only file system", str(target))

    monkeypatch.setattr(things, "download_file", read_only)
    with pytest.raises(OSError, match=r"cannot write words48.csv into the THINGS data folder .*data \(Read-only file system\); pass a writable data folder"):
        fetch("words48.csv", data_dir=tmp_path / "data")


def test_download_cut_short_says_so(raw_server, tmp_path):
    """A connection closed early was reported as a checksum mismatch only."""
    url, answer = raw_server
    answer["data"] = f"HTTP/1.0 200 OK\r\nContent-Length: {len(CONTENT)}\r\n\r\n".encode() + CONTENT[:300]

    with pytest.raises(ValueError, match=rf"download of triplets.txt .* ended after 300 of {len(CONTENT)} bytes"):
        fetch(entry_for(f"{url}/triplets.txt"), data_dir=tmp_path, timeout=5.0)

    assert list(tmp_path.iterdir()) == []


def test_download_timeout_names_the_limit(raw_server, tmp_path):
    """A stalled server gave 'TimeoutError: timed out' without the number of seconds."""
    url, answer = raw_server
    answer["data"] = b"HTTP/1.0 200 OK\r\n\r\n" + CONTENT[:10]
    answer["delay"] = 3.0

    with pytest.raises(RuntimeError, match=r"download of triplets.txt from .* failed: no data for 0.5 s"):
        fetch(entry_for(f"{url}/triplets.txt"), data_dir=tmp_path, timeout=0.5)

    assert list(tmp_path.iterdir()) == []


def test_download_disabled_marks_mirror_folder_of_file_name(tmp_path):
    """A folder under the file's name in the mirror was listed as if nothing were there."""
    mirror = tmp_path / "mirror"
    (mirror / "words48.csv").mkdir(parents=True)

    with pytest.raises(FileNotFoundError, match=r"mirror/words48.csv \(a folder, not a file\)"):
        fetch("words48.csv", data_dir=tmp_path / "data", mirror=mirror, download=False)


def test_mirror_folder_of_file_name_logged(source_file, tmp_path, caplog):
    mirror = tmp_path / "mirror"
    (mirror / "triplets.txt").mkdir(parents=True)

    with caplog.at_level("WARNING", logger="dimalign.io.things"):
        path = fetch(entry_for(source_file.as_uri()), data_dir=tmp_path / "data", mirror=mirror)

    assert path.read_bytes() == CONTENT
    assert f"{mirror / 'triplets.txt'} is a folder, not a file, so the mirror copy is skipped" in caplog.text


# -- temporary files of interrupted downloads -------------------------------------


def test_download_removes_stale_temporary_files(source_file, tmp_path, caplog):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    stale = [data_dir / ".triplets.sg4i_eyi.tmp.txt", data_dir / ".words48.ab_12cd3.tmp.csv"]
    for path in stale:
        path.write_bytes(b"half a download")

    with caplog.at_level("INFO", logger="dimalign.io.things"):
        fetch(entry_for(source_file.as_uri()), data_dir=data_dir)

    assert sorted(p.name for p in data_dir.iterdir()) == ["triplets.txt"]
    removed = [record.getMessage() for record in caplog.records if record.getMessage().startswith("removed")]
    assert len(removed) == 2
    assert any(f"removed {stale[0]}, a temporary file (15 bytes) of an interrupted download" in line for line in removed)


def test_download_keeps_other_files(source_file, tmp_path):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    others = [
        ".triplets.notes.txt",  # no random part
        ".triplets.abc.tmp.txt",  # random part of another length
        "triplets.sg4i_eyi.tmp.txt",  # not hidden
        ".triplets.SG4I_EYI.tmp.txt",  # mkstemp uses lower case letters only
        ".mine.sg4i_eyi.tmp.txt",  # not the name of a THINGS file
        ".triplets.sg4i_eyi.tmp.csv",  # another suffix
    ]
    for name in others:
        (data_dir / name).write_text("the user's")
    (data_dir / ".triplets.abcd_123.tmp.txt").mkdir()
    (data_dir / ".triplets.linked00.tmp.txt").symlink_to(data_dir / ".triplets.notes.txt")

    fetch(entry_for(source_file.as_uri()), data_dir=data_dir)

    names = {p.name for p in data_dir.iterdir()}
    assert names == {*others, ".triplets.abcd_123.tmp.txt", ".triplets.linked00.tmp.txt", "triplets.txt"}
    assert all((data_dir / name).read_text() == "the user's" for name in others)


def test_download_keeps_temporary_file_in_use(source_file, tmp_path, caplog):
    import fcntl

    data_dir = tmp_path / "data"
    data_dir.mkdir()
    busy = data_dir / ".triplets.busy_123.tmp.txt"
    busy.write_bytes(b"another process writes here")
    with open(busy, "rb") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        with caplog.at_level("INFO", logger="dimalign.io.things"):
            fetch(entry_for(source_file.as_uri()), data_dir=data_dir)

    assert busy.read_bytes() == b"another process writes here"
    assert any(f"kept {busy}" in record.getMessage() for record in caplog.records)


def test_download_locks_its_temporary_file(source_file, tmp_path, monkeypatch):
    import fcntl

    data_dir = tmp_path / "data"
    seen = []
    original = things.urllib.request.urlopen

    def check_lock(url, *args, **kwargs):
        (temporary,) = data_dir.glob(".triplets.*.tmp.txt")
        with open(temporary, "rb") as handle, pytest.raises(BlockingIOError):
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        seen.append(temporary)
        return original(url, *args, **kwargs)

    monkeypatch.setattr(things.urllib.request, "urlopen", check_lock)
    fetch(entry_for(source_file.as_uri()), data_dir=data_dir)

    assert len(seen) == 1
    assert sorted(p.name for p in data_dir.iterdir()) == ["triplets.txt"]
