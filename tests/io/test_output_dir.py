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


def test_output_dir_removes_added_files_on_error(tmp_path):
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / "earlier.txt").write_text("kept")
    with pytest.raises(RuntimeError):
        with output_dir(folder, remove_added=True):
            (folder / "earlier.txt").write_text("rewritten")
            (folder / "new").mkdir()
            (folder / "new" / "picture.png").write_bytes(b"x")
            raise RuntimeError("stopped")
    assert sorted(entry.name for entry in folder.rglob("*")) == ["earlier.txt"]
    assert (folder / "earlier.txt").read_text() == "rewritten"
