"""The SQLite database of a labelling study: connection settings and schema migrations.

A study lives in one SQLite file. ``schema_version`` records the last applied
migration, and :data:`MIGRATIONS` lists every migration in order, so a study
created by an older dimalign is upgraded in place when it is opened.

Every connection runs in WAL mode (readers never block the writer, and a
commit is durable once ``COMMIT`` returns because ``synchronous=FULL`` syncs
the write-ahead log) with foreign keys on, so an answer can only name a
participant and a dimension that exist.
"""

from __future__ import annotations

import errno
import logging
import os
import sqlite3
import stat
from pathlib import Path

logger = logging.getLogger(__name__)

#: Seconds a connection waits for another connection's write lock before it
#: raises ``sqlite3.OperationalError: database is locked``.
BUSY_TIMEOUT_S = 30.0

# Each migration is (version, description, SQL script). Append new ones at the
# end with the next version number; never edit one that has been released.
MIGRATIONS: tuple[tuple[int, str, str], ...] = (
    (
        1,
        "study settings, objects, dimensions, participants and answers",
        """
        CREATE TABLE study (
            key TEXT PRIMARY KEY,
            value TEXT NOT NULL
        );
        CREATE TABLE objects (
            object_index INTEGER PRIMARY KEY,
            object_id TEXT NOT NULL UNIQUE,
            image_path TEXT
        );
        CREATE TABLE dimensions (
            dimension INTEGER PRIMARY KEY,
            grid_json TEXT NOT NULL,
            top_objects_json TEXT NOT NULL
        );
        CREATE TABLE participants (
            participant_id INTEGER PRIMARY KEY AUTOINCREMENT,
            code_sha256 TEXT NOT NULL UNIQUE,
            order_seed INTEGER NOT NULL,
            order_json TEXT NOT NULL,
            consented_at TEXT NOT NULL
        );
        CREATE TABLE answers (
            participant_id INTEGER NOT NULL REFERENCES participants (participant_id),
            dimension INTEGER NOT NULL REFERENCES dimensions (dimension),
            labels_json TEXT NOT NULL,
            kind TEXT NOT NULL,
            interpretability TEXT NOT NULL,
            answered_at TEXT NOT NULL,
            updated_at TEXT NOT NULL,
            PRIMARY KEY (participant_id, dimension)
        );
        """,
    ),
    (
        2,
        "append-only answer history, so that an edited answer keeps its earlier versions",
        """
        CREATE TABLE answer_history (
            history_id INTEGER PRIMARY KEY AUTOINCREMENT,
            participant_id INTEGER NOT NULL REFERENCES participants (participant_id),
            dimension INTEGER NOT NULL REFERENCES dimensions (dimension),
            labels_json TEXT NOT NULL,
            kind TEXT NOT NULL,
            interpretability TEXT NOT NULL,
            submitted_at TEXT NOT NULL
        );
        CREATE INDEX answers_by_dimension ON answers (dimension);
        CREATE INDEX answer_history_by_participant ON answer_history (participant_id, dimension);
        """,
    ),
    (
        3,
        "SHA-256 checksum of each grid image, so that serving from another image folder is checked",
        """
        ALTER TABLE objects ADD COLUMN image_sha256 TEXT;
        """,
    ),
    (
        4,
        "session version of each participant, so that Stop ends every copy of the session cookie",
        """
        ALTER TABLE participants ADD COLUMN session_version INTEGER NOT NULL DEFAULT 0;
        ALTER TABLE participants ADD COLUMN sessions_ended_at TEXT;
        """,
    ),
)

LATEST_VERSION = MIGRATIONS[-1][0]


def connect(path: str | os.PathLike, *, create: bool = False) -> sqlite3.Connection:
    """Open a study database with the settings every study connection uses.

    An existing study is opened with SQLite's URI ``mode=rw``, which never
    creates a file, and its tables are checked before any setting that writes
    to the file (WAL mode) is applied. So a file that is not a study is left
    exactly as it was, and a study moved away while a server runs is reported
    as missing instead of being created again, empty, at the old path.

    The connection is in autocommit mode (``isolation_level=None``): callers
    open transactions explicitly with :func:`transaction`.

    Args:
        path (str | os.PathLike): The SQLite file.
        create (bool): Create the file if it is missing. A new or empty
            database (no tables) is accepted then, as well as a study.

    Returns:
        sqlite3.Connection: With ``row_factory = sqlite3.Row``.

    Raises:
        FileNotFoundError: If ``path`` is missing and ``create`` is False.
        IsADirectoryError: If ``path`` is a folder.
        ValueError: If ``path`` is not an SQLite database, or a database
            without the study tables and their first rows (an empty
            database is accepted if ``create`` is True).
    """
    path = Path(path)
    if path.is_dir() and (path / RUN_STUDY_NAME).is_file():
        raise IsADirectoryError(
            f"study database {path} is a folder, not a file: the short form `dimalign label-app RUN` "
            f"keeps its study in {path / RUN_STUDY_NAME}, so give that file"
        )
    if path.is_dir():
        raise IsADirectoryError(
            f"study database {path} is a folder, not a file: give the study database file that "
            "`dimalign label-app setup` created"
        )
    if create:
        connection = sqlite3.connect(
            os.fspath(path), timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
        )
    else:
        if not path.is_file():
            raise FileNotFoundError(
                f"study database {path} not found: create it with `dimalign label-app setup {path} "
                "--run RUN --images DIR`"
            )
        connection = sqlite3.connect(
            path.resolve().as_uri() + "?mode=rw", uri=True, timeout=BUSY_TIMEOUT_S,
            isolation_level=None, check_same_thread=False,
        )
    try:
        _check_study_tables(connection, path, allow_empty=create)
    except sqlite3.OperationalError as error:
        connection.close()
        if str(error) != "unable to open database file":
            raise
        # A study in WAL mode whose -shm file is missing cannot be read
        # without creating that file, so a read-only folder fails here.
        raise PermissionError(
            f"cannot open the study database {path} ({error}): SQLite writes the files {path.name}-wal "
            f"and {path.name}-shm next to it, so make the folder {path.parent} writable, or copy the "
            "study into a writable folder"
        ) from error
    except BaseException:
        connection.close()
        raise
    connection.row_factory = sqlite3.Row
    connection.execute("PRAGMA foreign_keys = ON")
    mode = connection.execute("PRAGMA journal_mode = WAL").fetchone()[0]
    if mode.lower() != "wal":
        logger.warning(
            "%s: SQLite did not enable WAL mode (journal_mode=%s), so writes block reads", path, mode
        )
    connection.execute("PRAGMA synchronous = FULL")
    return connection


#: Name of the study database that the short form ``dimalign label-app RUN`` keeps in the run directory.
RUN_STUDY_NAME = "labels.db"

#: Tables that every study has, from the first schema version on.
STUDY_TABLES = ("schema_version", "study")


#: Start of the problem that :func:`_study_problem` reports for a file SQLite cannot read.
NOT_SQLITE = "not an SQLite database"


def _check_study_tables(connection: sqlite3.Connection, path: Path, *, allow_empty: bool) -> None:
    """Raise ValueError unless the database is a study (or has no table, with ``allow_empty``).

    Only reads, so a file that fails the check is not changed.
    """
    problem = _study_problem(connection, allow_empty=allow_empty)
    if problem is None:
        return
    if problem.startswith(NOT_SQLITE):
        raise ValueError(f"{path} is {problem}: give the study database that `dimalign label-app setup` created")
    raise ValueError(
        f"{path} is not a study database ({problem}): give the study database that "
        "`dimalign label-app setup` created"
    )


def _study_problem(connection: sqlite3.Connection, *, allow_empty: bool = False) -> str | None:
    """Describe why a database is not a study, or return None if it is one.

    A study has the tables ``schema_version``, with at least one applied
    migration, and ``study``. :func:`migrate` creates both and records the
    first migration before setup renames the file into place, so a study
    never lacks them. :class:`dimalign.labeling.study.Study` checks the
    settings in ``study``.
    """
    try:
        rows = connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
    except sqlite3.DatabaseError as error:
        # SQLite reads the file header on the first query, so a text file or
        # a damaged database fails here with "file is not a database".
        # OperationalError (such as a locked file) is a subclass and is re-raised.
        if isinstance(error, sqlite3.OperationalError):
            raise
        return f"{NOT_SQLITE} ({error})"
    tables = sorted(row[0] for row in rows)
    if not tables and allow_empty:
        return None
    missing = [table for table in STUDY_TABLES if table not in tables]
    if missing:
        found = f"its tables are {tables}" if tables else "it has no tables"
        return f"{found}, but a study has {list(STUDY_TABLES)}"
    for table, needed in (("schema_version", {"version"}), ("study", {"key", "value"})):
        columns = {row[1] for row in connection.execute(f"PRAGMA table_info({table})").fetchall()}
        if not needed <= columns:
            return f"its {table} table has the columns {sorted(columns)}, but a study's has {sorted(needed)}"
    if connection.execute("SELECT COUNT(*) FROM schema_version").fetchone()[0] == 0:
        return "its schema_version table lists no migration"
    return None


def study_file_problem(path: str | os.PathLike) -> str | None:
    """Describe why an existing file is not a study, or return None if it is one.

    The file is opened read-only, so nothing is written to it.
    """
    path = Path(path)
    connection = sqlite3.connect(path.resolve().as_uri() + "?mode=ro", uri=True, timeout=BUSY_TIMEOUT_S)
    try:
        return _study_problem(connection)
    finally:
        connection.close()


#: Suffixes of the files SQLite keeps next to a database: the write-ahead log,
#: its shared-memory index and the rollback journal.
SIDE_FILE_SUFFIXES = ("-wal", "-shm", "-journal")


def existing_side_files(path: str | os.PathLike) -> list[Path]:
    """Return the SQLite side files (``-wal``, ``-shm``, ``-journal``) that exist next to ``path``.

    SQLite opens these files by name whenever it opens ``path``, so a
    write-ahead log that an earlier database at this path left behind is
    replayed into whatever database is opened there next.
    """
    path = Path(path)
    candidates = [path.with_name(path.name + suffix) for suffix in SIDE_FILE_SUFFIXES]
    return [candidate for candidate in candidates if os.path.lexists(candidate)]


#: Byte of a ``-shm`` file on which every SQLite connection that has the file
#: open holds a shared POSIX record lock (``fcntl`` F_SETLK). Measured with
#: SQLite 3.40.1 on Linux: another process cannot take an exclusive lock on
#: byte 128 while a connection is open, and can on bytes 0 and 120.
SHM_IN_USE_LOCK_BYTE = 128


def remove_unused_shared_memory_file(path: str | os.PathLike) -> None:
    """Remove the ``-shm`` file next to ``path`` unless a process uses it.

    The ``-shm`` file is the index of the write-ahead log. SQLite rebuilds
    it from the ``-wal`` file, so without one it contains no answers. But
    while another process has a database at ``path`` open, such as a server
    of a study that was deleted while it ran, SQLite would share the index
    with that process. So the file is removed only while this process holds
    an exclusive lock on :data:`SHM_IN_USE_LOCK_BYTE`, which fails while any
    other process has it open through SQLite.

    NOTE: POSIX record locks belong to a process, so a connection that this
    same process has open is not detected, and closing the descriptor here
    releases that connection's locks on the file. Call this only for a path
    that this process does not have open.

    Raises:
        FileExistsError: If another process uses the file, it is not a
            regular file (such as a symbolic link), it cannot be opened or
            locked, or ``fcntl`` is unavailable (Windows). The message says what to do.
    """
    path = Path(path)
    shared_memory = path.with_name(path.name + "-shm")
    what_it_is = (
        f"{shared_memory} is the shared-memory index of an earlier SQLite database at {path}. It "
        "contains no answers, but SQLite would reuse it for the new study"
    )
    try:
        import fcntl
    except ModuleNotFoundError:
        raise FileExistsError(
            f"{what_it_is}, and without fcntl (POSIX only) setup cannot check that no process uses it: "
            "move it away, or choose another file name"
        ) from None
    try:
        # O_NOFOLLOW keeps a symbolic link and its target as they are, and
        # O_NONBLOCK keeps a FIFO from blocking the open.
        descriptor = os.open(shared_memory, os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as error:
        reason = "it is a symbolic link" if error.errno == errno.ELOOP else error.strerror
        raise FileExistsError(f"{what_it_is}, and it cannot be removed safely ({reason}): move it away, "
                              "or choose another file name") from None
    try:
        if not stat.S_ISREG(os.fstat(descriptor).st_mode):
            raise FileExistsError(f"{what_it_is}, and it is not a regular file: move it away, or choose "
                                  "another file name")
        try:
            fcntl.lockf(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, SHM_IN_USE_LOCK_BYTE, os.SEEK_SET)
        except OSError as error:
            if error.errno not in (errno.EACCES, errno.EAGAIN):
                raise FileExistsError(f"{what_it_is}, and it cannot be locked ({error.strerror}): move it "
                                      "away, or choose another file name") from None
            raise FileExistsError(
                f"{shared_memory} is in use by another process that has an SQLite database at {path} open, "
                "such as a server of a study that was deleted or moved while it ran: stop that process "
                "and run setup again, or choose another file name"
            ) from None
        # Another process may have replaced the file since it was opened.
        if not os.path.samestat(os.fstat(descriptor), os.stat(shared_memory, follow_symlinks=False)):
            raise FileExistsError(f"{shared_memory} was replaced while setup checked it: run setup again")
        os.unlink(shared_memory)
    finally:
        # Closing releases the lock, after the file is gone.
        os.close(descriptor)
    logger.warning(
        "removed %s, the shared-memory index of an earlier SQLite database at %s: no process used it "
        "and, without a -wal file, it contained no answers", shared_memory, path,
    )


class transaction:
    """Context manager for one write transaction (``BEGIN IMMEDIATE`` ... ``COMMIT``).

    ``BEGIN IMMEDIATE`` takes the write lock at the start, so two concurrent
    writers queue on the busy timeout instead of failing halfway. The block's
    changes are committed when it exits normally and rolled back when it raises.
    """

    def __init__(self, connection: sqlite3.Connection) -> None:
        self.connection = connection

    def __enter__(self) -> sqlite3.Connection:
        self.connection.execute("BEGIN IMMEDIATE")
        return self.connection

    def __exit__(self, exc_type, exc, traceback) -> None:
        if exc_type is None:
            self.connection.execute("COMMIT")
        elif self.connection.in_transaction:
            # After some errors, such as a full disk (SQLITE_FULL), SQLite has
            # already rolled the transaction back, and a ROLLBACK would raise
            # "no transaction is active" in place of the error that caused it.
            self.connection.execute("ROLLBACK")


def schema_version(connection: sqlite3.Connection) -> int:
    """Return the last applied migration, 0 for an empty database."""
    exists = connection.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'"
    ).fetchone()
    if not exists:
        return 0
    row = connection.execute("SELECT MAX(version) FROM schema_version").fetchone()
    return int(row[0] or 0)


def migrate(connection: sqlite3.Connection, target: int = LATEST_VERSION) -> int:
    """Apply the migrations after the database's version up to ``target``.

    Each migration runs in its own transaction together with its
    ``schema_version`` row, so a failed migration leaves the previous version
    intact. The version is read again inside that transaction, so when two
    processes open an older study at the same time, each migration is
    applied once.

    Args:
        connection (sqlite3.Connection): From :func:`connect`.
        target (int): The version to reach (the latest by default).

    Returns:
        int: The schema version after migrating.

    Raises:
        ValueError: If the database was written by a newer dimalign (its version
            is above every known migration) or ``target`` is unknown.
        PermissionError: If a migration is needed but the file is read-only,
            naming the file and both versions.
    """
    known = {version for version, _, _ in MIGRATIONS}
    if target not in known:
        raise ValueError(f"unknown schema version {target}: known versions are {sorted(known)}")
    with transaction(connection):
        connection.execute(
            "CREATE TABLE IF NOT EXISTS schema_version ("
            "version INTEGER PRIMARY KEY, description TEXT NOT NULL, applied_at TEXT NOT NULL)"
        )
    current = schema_version(connection)
    if current > LATEST_VERSION:
        raise ValueError(
            f"the study database {_database_file(connection)} has schema version {current}, but "
            f"this dimalign knows versions up to {LATEST_VERSION}: upgrade dimalign to open it"
        )

    try:
        return _apply_migrations(connection, current, target)
    except sqlite3.OperationalError as error:
        if "readonly" not in str(error):
            raise
        # Every command opens a study through here, also export, which writes
        # nothing else. So a read-only study of an older dimalign cannot be read.
        raise PermissionError(
            f"cannot update the study database {_database_file(connection)} from schema version {current} "
            f"to {target} ({error}): it was written by an older dimalign, so make the file writable, or "
            "work on a writable copy, then run the command again"
        ) from error


def _apply_migrations(connection: sqlite3.Connection, current: int, target: int) -> int:
    """Apply the migrations after version ``current`` up to ``target`` (see :func:`migrate`)."""
    for version, description, script in MIGRATIONS:
        if version <= current or version > target:
            continue
        with transaction(connection):
            # Another process that opened the study at the same time may have
            # applied this migration after migrate() read the version. The
            # write lock of this transaction keeps it from doing so now.
            if schema_version(connection) >= version:
                current = version
                continue
            # executescript() would commit the open transaction first, so the
            # statements run one by one inside it.
            for statement in _split_statements(script):
                connection.execute(statement)
            connection.execute(
                "INSERT INTO schema_version (version, description, applied_at) "
                "VALUES (?, ?, strftime('%Y-%m-%dT%H:%M:%SZ', 'now'))",
                (version, description),
            )
        logger.info("applied study schema migration %d: %s", version, description)
        current = version
    return current


def _database_file(connection: sqlite3.Connection) -> str:
    """Return the file of the connection's main database, as SQLite opened it."""
    for row in connection.execute("PRAGMA database_list").fetchall():
        if row[1] == "main":
            return row[2] or "(in memory)"
    return "(unknown)"


def _split_statements(script: str) -> list[str]:
    # The migration scripts contain no semicolons inside literals, so a plain
    # split is exact; sqlite3.complete_statement guards that assumption.
    statements = [part.strip() for part in script.split(";") if part.strip()]
    for statement in statements:
        if not sqlite3.complete_statement(statement + ";"):
            raise ValueError(f"incomplete SQL statement in a migration: {statement[:80]!r}")
    return statements


def open_database(path: str | os.PathLike, *, create: bool = False) -> sqlite3.Connection:
    """Connect to a study database and bring its schema up to date.

    Args:
        path (str | os.PathLike): The study's SQLite file.
        create (bool): Allow creating a new file; otherwise a missing file raises.

    Raises:
        FileNotFoundError: If ``path`` does not exist and ``create`` is False.
        ValueError: If ``path`` is not a study database (see :func:`connect`),
            or a study written by a newer dimalign.
    """
    connection = connect(path, create=create)
    try:
        migrate(connection)
    except BaseException:
        connection.close()
        raise
    return connection
