"""Opening the state file: lock it, check it is a state file, migrate it, read it
whole; a file that is not a usable state database is moved aside.

A file that is not a readable state database (garbage, another schema, a newer
version, missing columns, damaged pages) is moved aside with a warning, kept for
inspection, and the mixer starts empty: the backends still hold the kernels, only
what the mixer alone knew is lost. A disk that fails (full, I/O error, read-only) is
not taken for corruption (:func:`load`). Runs in a worker thread, never on the loop.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import time
from typing import Any

from notebook_kernels_mixer.state import lock
from notebook_kernels_mixer.state.errors import StateError, io_error
from notebook_kernels_mixer.state.schema import Schema, Table

log = logging.getLogger(__name__)

BUSY_TIMEOUT_MS = 1000  # another process holding the write lock (e.g. a sqlite3 shell)

#: table name -> key -> row (an instance of the table's row type)
Mirror = dict[str, dict[str, Any]]


def open_file(path: str, schema: Schema) -> tuple[str, sqlite3.Connection, int | None, Mirror]:
    """Lock, then load the file (see :func:`load`): its absolute path, the connection,
    the lock's descriptor and every row."""
    path = os.path.abspath(os.path.expanduser(path))
    advice = "choose another --state-file (or :memory: to keep nothing)"
    try:
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        lock.check_directory(os.path.dirname(path))
        lock_fd = lock.acquire(path)
    except OSError as exc:
        raise StateError(f"cannot lock the state file {path}: {exc}; {advice}") from exc
    try:
        conn, mirror = load(path, schema)
    except (OSError, sqlite3.Error) as exc:
        lock.release(lock_fd)
        if io_error(exc):
            advice = ("the file is left as it is: free space or fix the disk and start again,"
                      " or start with --state-file :memory: to keep nothing")
        raise StateError(f"cannot use the state file {path}: {exc}; {advice}") from exc
    except BaseException:
        lock.release(lock_fd)
        raise
    return path, conn, lock_fd, mirror


def load(path: str, schema: Schema) -> tuple[sqlite3.Connection, Mirror]:
    """Open the file, moving it aside once if its contents are unusable.

    An I/O error (disk full, "disk I/O error", read-only, ENOSPC/EIO) is not
    corruption: it is raised with the file left as it is, and the mixer exits with a
    message saying so. Running on from memory instead would hide the kept sessions and
    the moved sessions' ids that the file holds (clients would take them for lost and
    start new kernels, orphaned at the next restart that can read the file again) and
    would quietly keep nothing of what happens meanwhile: a failing disk at start is for
    the user to fix (or to choose ``--state-file :memory:`` knowingly).
    """
    lock.own_files(path)
    try:
        return connect(path, schema)
    except sqlite3.DatabaseError as exc:
        if io_error(exc):
            raise
        move_aside(path, exc)
    lock.own_files(path)
    return connect(path, schema)


def connect(path: str, schema: Schema) -> tuple[sqlite3.Connection, Mirror]:
    """Open, check, migrate and read the file; a sqlite3.DatabaseError that is not an
    I/O error (:func:`io_error`) means it is not a usable state file. Nothing is
    written before the file is known to be ours."""
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        check = conn.execute("PRAGMA quick_check").fetchone()[0]
        if check != "ok":
            raise sqlite3.DatabaseError(f"integrity check failed: {check}")
        version = schema_version(conn, schema)
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise sqlite3.DatabaseError(f"cannot switch to WAL (journal_mode={mode})")
        conn.execute("PRAGMA synchronous=NORMAL")
        migrate(conn, schema, version)
        return conn, {table.name: read(conn, table) for table in schema.tables}
    except BaseException:
        conn.close()
        raise


def schema_version(conn: sqlite3.Connection, schema: Schema) -> int:
    """The file's schema version; 0 for a new, empty database."""
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if not tables:
        return 0
    if "schema_version" not in tables:
        raise sqlite3.DatabaseError(f"not a mixer state file (tables: {', '.join(sorted(tables))})")
    rows = conn.execute("SELECT version FROM schema_version").fetchall()
    if len(rows) != 1 or not isinstance(rows[0][0], int):
        raise sqlite3.DatabaseError(f"bad schema_version table: {rows[:3]!r}")
    version: int = rows[0][0]
    if version > schema.version:
        raise sqlite3.DatabaseError(f"schema version {version} is newer than this mixer's ({schema.version})")
    if version == schema.version:
        lacking = missing_columns(conn, schema)
        if lacking:
            raise sqlite3.DatabaseError(f"table {lacking[0]} lacks columns {lacking[1]}")
    return version


def missing_columns(conn: sqlite3.Connection, schema: Schema) -> tuple[str, list[str]] | None:
    """The first table that lacks a declared column, and the columns it lacks."""
    for table in schema.tables:
        have = {r[1] for r in conn.execute(f"PRAGMA table_info({table.name})")}
        if not have.issuperset(table.columns):
            return table.name, sorted(set(table.columns) - have)
    return None


def migrate(conn: sqlite3.Connection, schema: Schema, version: int) -> None:
    """Apply each migration after ``version`` in its own transaction. The last must
    leave every declared column: a row type's field without its migration line is the
    mixer's bug, not a bad file, so the file is left as it was (not moved aside)."""
    for target in range(version + 1, schema.version + 1):
        conn.execute("BEGIN IMMEDIATE")
        try:
            if target == 1:
                conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
            for statement in schema.statements(target):
                conn.execute(statement)
            if target == schema.version and (lacking := missing_columns(conn, schema)):
                raise StateError(f"the mixer's migration {target} leaves table {lacking[0]} without"
                                 f" the declared columns {lacking[1]}: a migration line is missing")
            conn.execute("DELETE FROM schema_version")
            conn.execute("INSERT INTO schema_version (version) VALUES (?)", (target,))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise


def read(conn: sqlite3.Connection, table: Table[Any]) -> dict[str, Any]:
    """Every row of ``table``, by key, built from its columns by name."""
    rows: dict[str, Any] = {}
    for values in conn.execute(table.select_sql).fetchall():
        if not all(isinstance(v, str) for v in values):
            raise sqlite3.DatabaseError(f"bad row in {table.name}: {values!r}")
        row = table.row_of(dict(zip(table.columns, values, strict=True)))
        rows[table.key_of(row)] = row
    return rows


def move_aside(path: str, reason: Exception) -> None:
    """Keep the unusable file (and its WAL) for inspection under a new name, 0600."""
    stamp = time.strftime("%Y%m%dT%H%M%S")
    aside = f"{path}.corrupt-{stamp}"
    for n in range(1, 1000):
        if not os.path.lexists(aside):
            break
        aside = f"{path}.corrupt-{stamp}-{n}"
    try:
        os.replace(path, aside)
        os.chmod(aside, lock.FILE_MODE)
        if os.path.lexists(path + "-wal") and os.lstat(path + "-wal").st_size:
            os.replace(path + "-wal", aside + "-wal")
            os.chmod(aside + "-wal", lock.FILE_MODE)
        for name in (path + "-wal", path + "-shm"):  # empty, or an index of the old file
            with contextlib.suppress(FileNotFoundError):
                os.remove(name)
    except OSError as exc:
        raise StateError(
            f"the state file {path} is unusable ({reason}) and cannot be moved aside ({exc});"
            " remove it, or start the mixer with --state-file :memory:"
        ) from exc
    log.warning(
        "state file %s is unusable (%s); moved it to %s and starting with an empty state",
        path, reason, aside,
    )
