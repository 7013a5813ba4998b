import os
from pathlib import Path

import pytest

from dimalign.io.files import output_dir


def test_output_dir_creates_folder(tmp_path):
    with output_dir(tmp_path / "a" / "b") as folder:
        assert folder.is_dir()
    assert (tmp_path / "a" / "b").is_dir()


def test_output_dir_removes_created_folders_on_error(tmp_path):
    with pytest.raises(RuntimeError):
        with output_dir(tmp_path / "a" / "b") as folder:
            (folder / "partial.csv").write_text("x")
            raise RuntimeError("failed")
    assert not (tmp_path / "a").exists()
    assert tmp_path.is_dir()


def test_output_dir_removes_folder_on_keyboard_interrupt(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        with output_dir(tmp_path / "out"):
            raise KeyboardInterrupt
    assert not (tmp_path / "out").exists()


def test_output_dir_keeps_existing_folder_on_error(tmp_path):
    existing = tmp_path / "out"
    existing.mkdir()
    (existing / "old.txt").write_text("old")
    with pytest.raises(RuntimeError):
        with output_dir(existing):
            raise RuntimeError("failed")
    assert (existing / "old.txt").read_text() == "old"


def test_output_dir_keeps_folder_with_named_file(tmp_path):
    with pytest.raises(RuntimeError):
        with output_dir(tmp_path / "run", keep_if_contains=("checkpoint.pt",)) as folder:
            (folder / "checkpoint.pt").write_bytes(b"state")
            raise RuntimeError("failed")
    assert (tmp_path / "run" / "checkpoint.pt").is_file()


def test_atomic_write_error_names_final_file(tmp_path):
    """The temporary name means nothing to the user, who asked for the final one."""
    from dimalign.io.files import write_text_atomic

    (tmp_path / "table.csv").mkdir()
    with pytest.raises(IsADirectoryError, match=r"Is a directory: '.*table.csv'$"):
        write_text_atomic(tmp_path / "table.csv", "x")
    assert [path.name for path in tmp_path.iterdir()] == ["table.csv"]


def test_atomic_write_to_full_disk_names_final_file(tmp_path):
    """A failed write raises an OSError without a file name, so the final file is named."""
    from dimalign.io.files import atomic_path

    with pytest.raises(OSError, match=r"\[Errno 28\] No space left on device: '.*table.csv'$"):
        with atomic_path(tmp_path / "table.csv"):
            raise OSError(28, "No space left on device")
    assert list(tmp_path.iterdir()) == []


def test_atomic_write_without_overwrite_keeps_new_file(tmp_path):
    """A file created while the block ran stays, and the temporary file is removed."""
    from dimalign.io.files import atomic_path

    target = tmp_path / "study.db"
    with pytest.raises(FileExistsError, match=r"File exists: '.*study.db'$"):
        with atomic_path(target, overwrite=False) as temporary:
            temporary.write_text("new")
            target.write_text("created meanwhile")
    assert target.read_text() == "created meanwhile"
    assert list(tmp_path.iterdir()) == [target]

    other = tmp_path / "other.db"
    with atomic_path(other, overwrite=False) as temporary:
        temporary.write_text("new")
    assert other.read_text() == "new"
    assert sorted(tmp_path.iterdir()) == [other, target]


def test_atomic_write_under_a_file_names_that_file(tmp_path):
    """The cause is the file in the way, so the message must name it, not the target."""
    from dimalign.io.files import write_text_atomic

    (tmp_path / "plain").write_text("x")
    with pytest.raises(FileExistsError, match=r"File exists: '.*plain'$"):
        write_text_atomic(tmp_path / "plain" / "table.csv", "x")


def test_output_folder_that_is_a_file_is_rejected(tmp_path):
    from dimalign.io.files import check_output_dir

    (tmp_path / "out").write_text("x")
    with pytest.raises(FileExistsError, match="the output folder .*out is a file; choose a folder for dimalign select"):
        check_output_dir(tmp_path / "out", "select")


def test_output_folder_under_a_file_is_rejected(tmp_path):
    from dimalign.io.files import check_output_dir

    (tmp_path / "afile").write_text("x")
    with pytest.raises(FileExistsError, match=r"afile is a file, so the output folder .*afile/sub/run cannot be created"):
        check_output_dir(tmp_path / "afile" / "sub" / "run", "fit")


def test_output_folder_with_foreign_manifest_is_rejected(tmp_path):
    """A manifest.json of another program names no dimalign step."""
    from dimalign.io.files import check_output_dir

    (tmp_path / "manifest.json").write_text('{"name": "my web app", "icons": []}')
    with pytest.raises(FileExistsError) as error:
        check_output_dir(tmp_path, "import-triplets")

    message = str(error.value)
    assert "dimalign None" not in message
    assert f"{tmp_path / 'manifest.json'} is not the manifest of a dimalign step" in message
    assert "choose another output folder" in message


def _earlier_output(out):
    (out / "top_objects").mkdir(parents=True)
    (out / "top_objects" / "pair0.png").write_text("earlier pair0")
    (out / "top_objects" / "notes.txt").write_text("the user's notes")
    (out / "rsa.json").write_text("earlier rsa")
    (out / "manifest.json").write_text("earlier manifest")


def _stage_new_output(stage):
    (stage / "top_objects").mkdir()
    (stage / "top_objects" / "pair0.png").write_text("new pair0")
    (stage / "top_objects" / "pair1.png").write_text("new pair1")
    (stage / "rsa.json").write_text("new rsa")
    (stage / "manifest.json").write_text("new manifest")


def test_staged_outputs_replace_files_in_subfolders(tmp_path):
    from dimalign.io.files import staged_outputs

    out = tmp_path / "out"
    _earlier_output(out)

    with staged_outputs(out) as stage:
        _stage_new_output(stage)

    assert sorted(path.relative_to(out).as_posix() for path in out.rglob("*")) == [
        "manifest.json", "rsa.json", "top_objects", "top_objects/notes.txt",
        "top_objects/pair0.png", "top_objects/pair1.png",
    ]
    assert (out / "top_objects" / "pair0.png").read_text() == "new pair0"
    assert (out / "top_objects" / "notes.txt").read_text() == "the user's notes"
    assert (out / "manifest.json").read_text() == "new manifest"


def test_staged_outputs_log_the_move(tmp_path, caplog):
    # Commands log each file as written into the hidden folder, so the final
    # place must be logged too.
    import logging

    from dimalign.io.files import staged_outputs

    out = tmp_path / "out"
    _earlier_output(out)

    with caplog.at_level(logging.INFO, logger="dimalign.io.files"):
        with staged_outputs(out) as stage:
            _stage_new_output(stage)

    assert f"moved the 4 files written in {stage} into {out}" in caplog.text


@pytest.mark.parametrize("fail_at", ["block", "move"])
def test_staged_outputs_put_the_earlier_output_back(tmp_path, monkeypatch, fail_at):
    # A failure in the block or half way through the moves leaves the earlier
    # output whole, subfolders included, and no hidden folder.
    import dimalign.io.files as files

    out = tmp_path / "out"
    _earlier_output(out)
    before = {path.relative_to(out).as_posix(): path.read_text() for path in out.rglob("*") if path.is_file()}
    if fail_at == "move":
        real_replace, calls = os.replace, []

        def failing_replace(source, target):
            calls.append(target)
            if len(calls) == 4:
                raise OSError("disk full")
            real_replace(source, target)

        monkeypatch.setattr(files.os, "replace", failing_replace)

    with pytest.raises((OSError, RuntimeError)):
        with files.staged_outputs(out) as stage:
            _stage_new_output(stage)
            if fail_at == "block":
                raise RuntimeError("stopped")
    monkeypatch.undo()

    after = {path.relative_to(out).as_posix(): path.read_text() for path in out.rglob("*") if path.is_file()}
    assert after == before
    assert not list(out.glob(".partial-*"))


def test_staged_outputs_retire_stale_files(tmp_path):
    from dimalign.io.files import staged_outputs

    out = tmp_path / "out"
    _earlier_output(out)
    (out / "relevance.csv").write_text("earlier relevance")

    with staged_outputs(out, retire=["relevance.csv", "top_objects/pair*.png"]) as stage:
        (stage / "rsa.json").write_text("new rsa")
        (stage / "manifest.json").write_text("new manifest")

    assert sorted(path.relative_to(out).as_posix() for path in out.rglob("*")) == [
        "manifest.json", "rsa.json", "top_objects", "top_objects/notes.txt",
    ]


def test_staged_outputs_failed_retire_keeps_file(tmp_path, monkeypatch):
    # A move aside of a stale file that fails leaves that file where it was.
    import dimalign.io.files as files

    out = tmp_path / "out"
    _earlier_output(out)
    (out / "relevance.csv").write_text("earlier relevance")
    before = {path.relative_to(out).as_posix(): path.read_text() for path in out.rglob("*") if path.is_file()}
    real_replace = os.replace

    def failing_replace(source, target):
        if Path(source).name == "relevance.csv":
            raise OSError("disk full")
        real_replace(source, target)

    monkeypatch.setattr(files.os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        with files.staged_outputs(out, retire=["relevance.csv"]) as stage:
            (stage / "rsa.json").write_text("new rsa")
    monkeypatch.undo()

    after = {path.relative_to(out).as_posix(): path.read_text() for path in out.rglob("*") if path.is_file()}
    assert after == before


def test_staged_outputs_stop_during_cleanup_removes_stage(tmp_path, monkeypatch):
    # Ctrl-C while the hidden folder is removed, after the new manifest is in
    # place, leaves the new output whole and no hidden folder.
    import shutil

    import dimalign.io.files as files

    out = tmp_path / "out"
    _earlier_output(out)
    real_rmtree, calls = shutil.rmtree, []

    def interrupted_rmtree(path, *args, **kwargs):
        calls.append(path)
        if len(calls) == 1:
            real_rmtree(Path(path) / ".earlier")
            raise KeyboardInterrupt
        real_rmtree(path, *args, **kwargs)

    monkeypatch.setattr(files.shutil, "rmtree", interrupted_rmtree)
    with pytest.raises(KeyboardInterrupt):
        with files.staged_outputs(out) as stage:
            _stage_new_output(stage)
    monkeypatch.undo()

    assert (out / "manifest.json").read_text() == "new manifest"
    assert (out / "top_objects" / "pair1.png").read_text() == "new pair1"
    assert not list(out.glob(".partial-*"))


@pytest.mark.parametrize("existing", ["top_objects/pair1.png", "manifest.json", "rsa.json/"])
def test_staged_outputs_without_overwrite_keep_existing(tmp_path, existing):
    # A file (or folder) of the user's at the name of a new output stops the
    # moves, and the new files moved so far are taken out again.
    from dimalign.io.files import staged_outputs

    out = tmp_path / "out"
    (out / existing).parent.mkdir(parents=True)
    if existing.endswith("/"):
        (out / existing).mkdir()
    else:
        (out / existing).write_text("the user's file")
    (out / "notes.txt").write_text("the user's notes")
    before = sorted(path.relative_to(out).as_posix() for path in out.rglob("*"))

    with pytest.raises(FileExistsError, match=f"{out / existing.rstrip('/')} exists"):
        with staged_outputs(out, overwrite=False) as stage:
            _stage_new_output(stage)

    assert sorted(path.relative_to(out).as_posix() for path in out.rglob("*")) == before
    if not existing.endswith("/"):
        assert (out / existing).read_text() == "the user's file"


def test_staged_outputs_without_overwrite_move_new_files(tmp_path):
    from dimalign.io.files import staged_outputs

    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("the user's notes")

    with staged_outputs(out, overwrite=False) as stage:
        _stage_new_output(stage)

    assert sorted(path.relative_to(out).as_posix() for path in out.rglob("*")) == [
        "manifest.json", "notes.txt", "rsa.json", "top_objects", "top_objects/pair0.png",
        "top_objects/pair1.png",
    ]


def test_output_dir_keeping_contents_removes_only_empty_folders(tmp_path):
    with pytest.raises(RuntimeError):
        with output_dir(tmp_path / "a" / "b", remove_contents=False) as folder:
            raise RuntimeError("stopped")
    assert not (tmp_path / "a").exists()

    with pytest.raises(RuntimeError):
        with output_dir(tmp_path / "c" / "d", remove_contents=False) as folder:
            (folder / "other.txt").write_text("another program's file")
            raise RuntimeError("stopped")
    assert (folder / "other.txt").read_text() == "another program's file"


def test_staged_outputs_create_the_folder(tmp_path):
    from dimalign.io.files import staged_outputs

    out = tmp_path / "new" / "out"
    with staged_outputs(out) as stage:
        (stage / "manifest.json").write_text("new manifest")

    assert sorted(path.name for path in out.iterdir()) == ["manifest.json"]


def test_failed_staged_outputs_remove_only_empty_new_folders(tmp_path):
    from dimalign.io.files import staged_outputs

    kept, removed = tmp_path / "kept" / "out", tmp_path / "removed" / "out"
    for out in (kept, removed):
        with pytest.raises(RuntimeError), staged_outputs(out) as stage:
            (stage / "manifest.json").write_text("new manifest")
            if out == kept:
                (out / "other.txt").write_text("written by another program")
            raise RuntimeError("stopped")

    assert sorted(path.name for path in kept.iterdir()) == ["other.txt"]
    assert not (tmp_path / "removed").exists()
