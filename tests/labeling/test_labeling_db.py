"""Study database: migrations, WAL mode and transactions."""

from __future__ import annotations

import sqlite3

import pytest

from dimalign.labeling import db


def table_names(connection):
    rows = connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
    return {row[0] for row in rows}


def test_fresh_database_migrates_to_latest(tmp_path):
    connection = db.open_database(tmp_path / "study.db", create=True)
    assert db.schema_version(connection) == db.LATEST_VERSION
    versions = [row[0] for row in connection.execute("SELECT version FROM schema_version ORDER BY version")]
    assert versions == [version for version, _, _ in db.MIGRATIONS]
    assert {"study", "objects", "dimensions", "participants", "answers", "answer_history"} <= table_names(connection)
    assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert connection.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    connection.close()


def test_missing_database_not_created(tmp_path):
    with pytest.raises(FileNotFoundError, match="label-app setup"):
        db.open_database(tmp_path / "missing.db")
    assert not (tmp_path / "missing.db").exists()


def test_version_1_upgraded_keeping_rows(tmp_path):
    path = tmp_path / "old.db"
    connection = db.connect(path, create=True)
    assert db.migrate(connection, target=1) == 1
    assert "answer_history" not in table_names(connection)
    connection.execute("INSERT INTO study (key, value) VALUES ('dimensions', '[0]')")
    connection.close()

    connection = db.open_database(path)
    assert db.schema_version(connection) == db.LATEST_VERSION
    assert "answer_history" in table_names(connection)
    assert connection.execute("SELECT value FROM study WHERE key = 'dimensions'").fetchone()[0] == "[0]"
    connection.close()


def test_newer_schema_rejected(tmp_path):
    path = tmp_path / "future.db"
    connection = db.open_database(path, create=True)
    connection.execute("INSERT INTO schema_version VALUES (999, 'from the future', 'now')")
    connection.close()
    with pytest.raises(ValueError, match="schema version 999"):
        db.open_database(path)


def test_failed_transaction_rolled_back(tmp_path):
    connection = db.open_database(tmp_path / "study.db", create=True)
    with pytest.raises(sqlite3.IntegrityError):
        with db.transaction(connection):
            connection.execute("INSERT INTO study (key, value) VALUES ('a', '1')")
            connection.execute("INSERT INTO study (key, value) VALUES ('a', '2')")
    assert connection.execute("SELECT COUNT(*) FROM study").fetchone()[0] == 0
    connection.close()


def test_full_database_error_not_masked(tmp_path):
    # SQLite rolls the whole transaction back itself when the disk is full,
    # so a second ROLLBACK would fail and hide the cause from the log.
    connection = db.open_database(tmp_path / "study.db", create=True)
    pages = connection.execute("PRAGMA page_count").fetchone()[0]
    connection.execute(f"PRAGMA max_page_count = {pages + 1}")
    with pytest.raises(sqlite3.OperationalError, match="database or disk is full"):
        with db.transaction(connection):
            for number in range(100):
                connection.execute("INSERT INTO study (key, value) VALUES (?, ?)", (str(number), "x" * 3000))
    assert not connection.in_transaction
    assert connection.execute("SELECT COUNT(*) FROM study").fetchone()[0] == 0
    connection.close()


def test_answer_for_unknown_ids_violates_foreign_key(tmp_path):
    connection = db.open_database(tmp_path / "study.db", create=True)
    with pytest.raises(sqlite3.IntegrityError, match="FOREIGN KEY"):
        with db.transaction(connection):
            connection.execute(
                "INSERT INTO answers VALUES (1, 0, '[\"a\"]', 'visual', 'one', 'now', 'now')"
            )
    connection.close()


def test_newer_schema_error_names_file(tmp_path):
    path = tmp_path / "future.db"
    connection = db.open_database(path, create=True)
    connection.execute("INSERT INTO schema_version VALUES (7, 'from the future', 'now')")
    connection.close()
    with pytest.raises(ValueError, match=f"the study database {path} has schema version 7"):
        db.open_database(path)


def write_users_database(path):
    """Write an SQLite file that is not a study, in the default rollback-journal mode."""
    connection = sqlite3.connect(path)
    connection.execute("CREATE TABLE users (name TEXT)")
    connection.execute("INSERT INTO users VALUES ('ada')")
    connection.commit()
    connection.close()


def test_other_database_left_unchanged(tmp_path):
    path = tmp_path / "users.db"
    write_users_database(path)
    before = path.read_bytes()
    with pytest.raises(ValueError, match=r"users.db is not a study database \(its tables are \['users'\]"):
        db.open_database(path)
    assert path.read_bytes() == before
    assert sorted(item.name for item in tmp_path.iterdir()) == ["users.db"]


def test_empty_file_left_unchanged(tmp_path):
    path = tmp_path / "empty.db"
    path.write_bytes(b"")
    with pytest.raises(ValueError, match="empty.db is not a study database \\(it has no tables"):
        db.open_database(path)
    assert path.read_bytes() == b""
    assert sorted(item.name for item in tmp_path.iterdir()) == ["empty.db"]


def test_text_file_named_in_error(tmp_path):
    path = tmp_path / "text.db"
    path.write_text("hello\n")
    with pytest.raises(ValueError, match=f"{path} is not an SQLite database \\(file is not a database\\)"):
        db.open_database(path)
    assert path.read_text() == "hello\n"


def test_connect_never_creates_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.db not found"):
        db.connect(tmp_path / "missing.db")
    assert list(tmp_path.iterdir()) == []


def test_empty_study_tables_left_unchanged(tmp_path):
    path = tmp_path / "hollow.db"
    connection = sqlite3.connect(path)
    connection.execute("CREATE TABLE study (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    connection.execute("CREATE TABLE schema_version (version INTEGER PRIMARY KEY, description TEXT, applied_at TEXT)")
    connection.commit()
    connection.close()
    before = path.read_bytes()
    with pytest.raises(ValueError) as raised:
        db.open_database(path)
    assert str(raised.value) == (
        f"{path} is not a study database (its schema_version table lists no migration): give the study "
        "database that `dimalign label-app setup` created"
    )
    assert path.read_bytes() == before
    assert sorted(item.name for item in tmp_path.iterdir()) == ["hollow.db"]


def test_folder_named_as_folder(tmp_path):
    folder = tmp_path / "dir.db"
    folder.mkdir()
    with pytest.raises(IsADirectoryError) as raised:
        db.open_database(folder)
    assert str(raised.value) == (
        f"study database {folder} is a folder, not a file: give the study database file that "
        "`dimalign label-app setup` created"
    )


def test_concurrent_migration_applies_once(tmp_path):
    # Two servers started together both find the study at the previous
    # version. The second must not apply a migration that the first applied
    # after the second read the version.
    path = tmp_path / "study.db"
    connection = db.connect(path, create=True)
    db.migrate(connection, target=db.LATEST_VERSION - 1)
    connection.close()
    first = db.connect(path)
    second = db.connect(path)
    begins = []

    def migrate_first_in_between(statement):
        # SQLite calls this before the statement takes its lock, so the
        # first connection migrates after the second read the version.
        if statement == "BEGIN IMMEDIATE":
            begins.append(statement)
            if len(begins) == 2:
                db.migrate(first)

    second.set_trace_callback(migrate_first_in_between)
    assert db.migrate(second) == db.LATEST_VERSION
    second.set_trace_callback(None)

    assert len(begins) >= 2
    versions = [row[0] for row in second.execute("SELECT version FROM schema_version ORDER BY version")]
    assert versions == [version for version, _, _ in db.MIGRATIONS]
    first.close()
    second.close()
