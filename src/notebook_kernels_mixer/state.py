"""The mixer's durable state: what it must remember across a restart, even ``kill -9``.

The backends are the source of truth for kernels and sessions, but three things exist
only in the mixer (issue 10 item 4):

* **kernel ownership** (kernel id -> backend name), so a restarted mixer routes a known
  kernel without asking every backend;
* **session aliases** (client-visible session id -> backend name and that backend's
  session id): a session moved to another backend keeps the id the client knows
  (SPEC §4), and no backend knows that id;
* **kept sessions**: the notebook sessions the mixer itself keeps for gateway backends,
  which have no sessions API.

Where: one SQLite file per mixer port, by default ``mixer-state-{port}.sqlite`` in
Jupyter's runtime directory (:func:`default_state_path`); ``":memory:"`` keeps nothing.

How: the whole state is loaded once into an in-memory mirror at :meth:`StateStore.open`
and every read is served from it. ``put_*``/``drop_*`` change the mirror at once and
queue the change; one writer thread, which owns the SQLite connection, commits
whatever is queued in one transaction as soon as there is work, so the event loop never
waits for the disk and a change reaches the file within milliseconds. WAL with
``synchronous=NORMAL`` makes a commit survive a crash of the process (it is in the
operating system's cache); only a power cut may lose the last moments. Queued changes
to the same key are coalesced, so a burst costs one row write per key.

A file that is not a readable state database is moved aside with a warning and the
mixer starts empty; a disk that fails (full, I/O error, read-only) is not taken for
corruption (:func:`_load`). A second mixer on the same file is refused (``<file>.lock``
held with ``flock``, released by the kernel when its owner dies, even by ``kill -9``).

Every file is the user's own and ``0600`` whatever the umask: the database, its
``-wal``/``-shm`` and the lock are created (or checked) here with ``O_NOFOLLOW`` before
SQLite opens them, and a directory where another user could swap them is refused
(:func:`_check_directory`).

The writer never stops before :meth:`StateStore.close`: a write the disk refuses is
retried, a value SQLite cannot hold is dropped alone (values are checked on the way in,
:func:`storable`, so that is a last resort); either is logged and shown in
:meth:`StateStore.status`. Every wait for the writer is bounded (:meth:`StateStore.flush`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import logging
import os
import sqlite3
import stat
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

try:
    import fcntl
except ImportError:  # Windows: no flock; a second mixer is not detected there.
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

MEMORY = ":memory:"
SCHEMA_VERSION = 1
BUSY_TIMEOUT_MS = 1000  # another process holding the write lock (e.g. a sqlite3 shell)
_MAX_RETRY_DELAY = 2.0
FLUSH_TIMEOUT = 10.0  # seconds a request waits for its change to reach the disk
MAX_VALUE_CHARS = 4096  # longest id, name or path kept (PATH_MAX on Linux)
_FILE_MODE = 0o600
_OPEN_FLAGS = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)

# SQLite's primary result codes for a failing disk or system, not a bad file: PERM,
# BUSY, LOCKED, NOMEM, READONLY, INTERRUPT, IOERR, FULL, CANTOPEN, PROTOCOL, NOLFS, AUTH.
_IO_CODES = frozenset({3, 5, 6, 7, 8, 9, 10, 13, 14, 15, 22, 23})
_CORRUPT_CODES = frozenset({11, 26})  # CORRUPT, NOTADB

# Migration N brings a file from version N-1 to N. Never edit a released migration:
# add the next one, so an older file is upgraded in place at open.
_MIGRATIONS: dict[int, tuple[str, ...]] = {
    1: (
        "CREATE TABLE schema_version (version INTEGER NOT NULL)",
        "CREATE TABLE kernels (id TEXT PRIMARY KEY, backend TEXT NOT NULL)",
        "CREATE TABLE sessions (client_id TEXT PRIMARY KEY, backend TEXT NOT NULL,"
        " backend_id TEXT NOT NULL)",
        "CREATE TABLE kept (id TEXT PRIMARY KEY, backend TEXT NOT NULL, path TEXT NOT NULL,"
        " name TEXT NOT NULL, type TEXT NOT NULL, kernel_id TEXT NOT NULL)",
    ),
}

# table -> (columns, key column); the key is always the first column.
_TABLES: dict[str, tuple[str, ...]] = {
    "kernels": ("id", "backend"),
    "sessions": ("client_id", "backend", "backend_id"),
    "kept": ("id", "backend", "path", "name", "type", "kernel_id"),
}

Row = tuple[str, ...]
# (table, key) -> the row to write, or None to delete it.
Batch = dict[tuple[str, str], Row | None]


class StateError(Exception):
    """The state file cannot be used; the message says which file and what to do."""


@dataclass(frozen=True)
class KeptSession:
    """A notebook session the mixer keeps for a gateway backend (no sessions API)."""

    id: str
    backend: str
    path: str
    name: str
    type: str
    kernel_id: str


def storable(value: object) -> bool:
    """A value the state file keeps: a string of at most :data:`MAX_VALUE_CHARS`
    characters that is Unicode text: no lone surrogate such as U+DCFF, which stdlib json
    decodes from the JSON escape ``\\udcff`` but which UTF-8 (and so SQLite) cannot hold."""
    if not isinstance(value, str) or len(value) > MAX_VALUE_CHARS:
        return False
    if value.isascii():
        return True
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _checked(row: Row) -> Row:
    if not all(storable(v) for v in row):
        raise ValueError(f"the state file keeps only strings of at most {MAX_VALUE_CHARS} "
                         "characters that are encodable as UTF-8")
    return row


def _code(exc: BaseException) -> int | None:
    code = getattr(exc, "sqlite_errorcode", None)  # Python 3.11+
    return code & 0xFF if isinstance(code, int) else None


def _io_error(exc: BaseException) -> bool:
    """The disk or the system failed (full, I/O error, read-only, locked), not the
    file's contents: the file must not be taken for corrupt, and a retry may succeed."""
    if isinstance(exc, (OSError, MemoryError)):
        return True
    if not isinstance(exc, sqlite3.Error):
        return False
    code = _code(exc)
    if code is not None:
        return code in _IO_CODES
    return isinstance(exc, sqlite3.OperationalError) and not str(exc).startswith("no such")


def _contention(exc: BaseException) -> bool:
    """Another connection holds the file (BUSY, LOCKED): soon over, unlike a full disk."""
    code = _code(exc)
    if code is not None:
        return code in (5, 6)
    return isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc)


def _retried(exc: BaseException) -> bool:
    """A failed write worth retrying as a whole: nothing a single value did."""
    if _io_error(exc):
        return True
    code = _code(exc)
    return code in _CORRUPT_CODES if code is not None else type(exc) is sqlite3.DatabaseError


def _describe(exc: BaseException) -> str:
    """An error for logs and status, without the values (paths may be private): SQLite
    and the OS name no bound value in their messages; anything else by its type."""
    if isinstance(exc, (sqlite3.Error, OSError)):
        return f"{type(exc).__name__}: {exc}"
    return f"{type(exc).__name__} (a value the state file cannot hold)"


def default_state_path(port: int) -> str:
    """Jupyter's runtime directory (where servers keep their own runtime files), one
    file per mixer port so mixers on different ports never share state."""
    return os.path.join(_jupyter_runtime_dir(), f"mixer-state-{port}.sqlite")


def _jupyter_runtime_dir() -> str:
    if os.environ.get("JUPYTER_RUNTIME_DIR"):
        return os.environ["JUPYTER_RUNTIME_DIR"]
    try:
        from jupyter_core.paths import jupyter_runtime_dir
    except ImportError:  # the mixer does not need Jupyter installed: same rule by hand
        return os.path.join(_jupyter_data_dir(), "runtime")
    return jupyter_runtime_dir()


def _jupyter_data_dir() -> str:
    """jupyter_core.paths.jupyter_data_dir without platformdirs."""
    if os.environ.get("JUPYTER_DATA_DIR"):
        return os.environ["JUPYTER_DATA_DIR"]
    home = os.path.expanduser("~")
    if sys.platform == "darwin":
        return os.path.join(home, "Library", "Jupyter")
    if sys.platform == "win32":
        appdata = os.environ.get("APPDATA")
        return os.path.join(appdata, "jupyter") if appdata else os.path.join(home, ".jupyter", "data")
    xdg = os.environ.get("XDG_DATA_HOME") or os.path.join(home, ".local", "share")
    return os.path.join(xdg, "jupyter")


# -- opening the file (runs in a worker thread) ------------------------------------------
def _check_directory(directory: str) -> None:
    """Refuse a directory where another user could swap the state files for links to
    theirs (or to a victim's): one writable by group or others, unless it is sticky
    (like /tmp: only a file's owner may then remove or rename it, and every state file
    is checked to be ours, :func:`_own`), or one that belongs to another user."""
    if not hasattr(os, "geteuid"):
        return  # Windows: no such permissions
    st = os.stat(directory)
    advice = "or choose another --state-file"
    if st.st_uid not in (os.geteuid(), 0):
        raise StateError(f"the state directory {directory} belongs to another user"
                         f" (uid {st.st_uid}), who could replace the state files; {advice}")
    if st.st_mode & 0o022 and not st.st_mode & stat.S_ISVTX:
        raise StateError(
            f"the state directory {directory} is writable by other users (mode"
            f" {stat.S_IMODE(st.st_mode):04o}, not sticky): they could replace the state files;"
            f" make it private (chmod go-w {directory}) {advice}")


def _own(path: str) -> int:
    """Open (creating, mode 0600) a state file that must be this user's own regular
    file: never through a symbolic link, never a hard link to another file."""
    try:
        fd = os.open(path, _OPEN_FLAGS, _FILE_MODE)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise StateError(f"{path} is a symbolic link; the mixer does not follow it"
                             " (remove it, or choose another --state-file)") from None
        raise
    try:
        st = os.fstat(fd)
        mine = not hasattr(os, "geteuid") or st.st_uid == os.geteuid()
        if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1 or not mine:
            raise StateError(f"{path} is not a regular file of this user's own (uid {st.st_uid},"
                             f" {st.st_nlink} links); remove it, or choose another --state-file")
        if stat.S_IMODE(st.st_mode) != _FILE_MODE and hasattr(os, "fchmod"):
            os.fchmod(fd, _FILE_MODE)  # whatever the umask, or an older mixer, made it
    except BaseException:
        os.close(fd)
        raise
    return fd


def _own_files(path: str) -> None:
    """The database and its ``-wal``/``-shm``, created 0600 before SQLite opens them
    (SQLite creates a database with the umask's mode, and then gives its -wal/-shm the
    database's mode) and checked to be ours."""
    for name in (path, path + "-wal", path + "-shm"):
        os.close(_own(name))


def _acquire_lock(path: str) -> int | None:
    """Hold ``<path>.lock`` exclusively for the life of the store. The descriptor is not
    inherited by child processes (O_CLOEXEC), so only this process's death releases it."""
    if fcntl is None:
        return None
    lock_path = path + ".lock"
    fd = _own(lock_path)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
        os.close(fd)
        by = f" by process {holder}" if holder.isdigit() else ""
        raise StateError(
            f"the state file {path} is in use by another mixer ({lock_path} is locked{by});"
            " stop that mixer, or give this one another --state-file or --port"
        ) from None
    except BaseException:
        os.close(fd)
        raise
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)
    return fd


def _connect(path: str) -> tuple[sqlite3.Connection, tuple[dict[str, Any], ...]]:
    """Open, check, migrate and read the file; a sqlite3.DatabaseError that is not an
    I/O error (:func:`_io_error`) means it is not a usable state file. Nothing is
    written before the file is known to be ours."""
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        check = conn.execute("PRAGMA quick_check").fetchone()[0]
        if check != "ok":
            raise sqlite3.DatabaseError(f"integrity check failed: {check}")
        version = _schema_version(conn)
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise sqlite3.DatabaseError(f"cannot switch to WAL (journal_mode={mode})")
        conn.execute("PRAGMA synchronous=NORMAL")
        _migrate(conn, version)
        return conn, _read_all(conn)
    except BaseException:
        conn.close()
        raise


def _schema_version(conn: sqlite3.Connection) -> int:
    """The file's schema version; 0 for a new, empty database."""
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if not tables:
        return 0
    if "schema_version" not in tables:
        raise sqlite3.DatabaseError(f"not a mixer state file (tables: {', '.join(sorted(tables))})")
    rows = conn.execute("SELECT version FROM schema_version").fetchall()
    if len(rows) != 1 or not isinstance(rows[0][0], int):
        raise sqlite3.DatabaseError(f"bad schema_version table: {rows[:3]!r}")
    version = rows[0][0]
    if version > SCHEMA_VERSION:
        raise sqlite3.DatabaseError(f"schema version {version} is newer than this mixer's ({SCHEMA_VERSION})")
    if version == SCHEMA_VERSION:
        for table, columns in _TABLES.items():
            have = {r[1] for r in conn.execute(f"PRAGMA table_info({table})")}
            if not have.issuperset(columns):
                raise sqlite3.DatabaseError(f"table {table} lacks columns {sorted(set(columns) - have)}")
    return version


def _migrate(conn: sqlite3.Connection, version: int) -> None:
    """Apply each migration after ``version`` in its own transaction."""
    for target in range(version + 1, SCHEMA_VERSION + 1):
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in _MIGRATIONS[target]:
                conn.execute(statement)
            conn.execute("DELETE FROM schema_version")
            conn.execute("INSERT INTO schema_version (version) VALUES (?)", (target,))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise


def _read_all(conn: sqlite3.Connection) -> tuple[dict[str, Any], ...]:
    kernels: dict[str, str] = {}
    sessions: dict[str, tuple[str, str]] = {}
    kept: dict[str, KeptSession] = {}
    for row in _select(conn, "kernels"):
        kernels[row[0]] = row[1]
    for row in _select(conn, "sessions"):
        sessions[row[0]] = (row[1], row[2])
    for row in _select(conn, "kept"):
        kept[row[0]] = KeptSession(*row)
    return kernels, sessions, kept


def _select(conn: sqlite3.Connection, table: str) -> list[Row]:
    rows = conn.execute(f"SELECT {', '.join(_TABLES[table])} FROM {table}").fetchall()
    for row in rows:
        if not all(isinstance(v, str) for v in row):
            raise sqlite3.DatabaseError(f"bad row in {table}: {row!r}")
    return rows


def _move_aside(path: str, reason: Exception) -> None:
    """Keep the unusable file (and its WAL) for inspection under a new name, 0600."""
    stamp = time.strftime("%Y%m%dT%H%M%S")
    aside = f"{path}.corrupt-{stamp}"
    for n in range(1, 1000):
        if not os.path.lexists(aside):
            break
        aside = f"{path}.corrupt-{stamp}-{n}"
    try:
        os.replace(path, aside)
        os.chmod(aside, _FILE_MODE)
        if os.path.lexists(path + "-wal") and os.lstat(path + "-wal").st_size:
            os.replace(path + "-wal", aside + "-wal")
            os.chmod(aside + "-wal", _FILE_MODE)
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


def _load(path: str) -> tuple[sqlite3.Connection, tuple[dict[str, Any], ...]]:
    """Open the file, moving it aside once if its contents are unusable.

    An I/O error (disk full, "disk I/O error", read-only, ENOSPC/EIO) is not
    corruption: it is raised with the file left as it is, and the mixer exits with a
    message saying so. Running on from memory instead would hide the kept sessions and
    the moved sessions' ids that the file holds (clients would take them for lost and
    start new kernels, orphaned at the next restart that can read the file again) and
    would quietly keep nothing of what happens meanwhile: a failing disk at start is for
    the user to fix (or to choose ``--state-file :memory:`` knowingly).
    """
    _own_files(path)
    try:
        return _connect(path)
    except sqlite3.DatabaseError as exc:
        if _io_error(exc):
            raise
        _move_aside(path, exc)
    _own_files(path)
    return _connect(path)


def _open_file(path: str) -> tuple[str, sqlite3.Connection, int | None, tuple[dict[str, Any], ...]]:
    """Lock, then load the file (see :func:`_load`)."""
    path = os.path.abspath(os.path.expanduser(path))
    advice = "choose another --state-file (or :memory: to keep nothing)"
    try:
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        _check_directory(os.path.dirname(path))
        lock_fd = _acquire_lock(path)
    except OSError as exc:
        raise StateError(f"cannot lock the state file {path}: {exc}; {advice}") from exc
    try:
        conn, mirror = _load(path)
    except (OSError, sqlite3.Error) as exc:
        _unlock(lock_fd)
        if _io_error(exc):
            advice = ("the file is left as it is: free space or fix the disk and start again,"
                      " or start with --state-file :memory: to keep nothing")
        raise StateError(f"cannot use the state file {path}: {exc}; {advice}") from exc
    except BaseException:
        _unlock(lock_fd)
        raise
    return path, conn, lock_fd, mirror


def _unlock(lock_fd: int | None) -> None:
    if lock_fd is not None:
        os.close(lock_fd)  # closing the only descriptor releases the flock


# -- the store ---------------------------------------------------------------------------
class StateStore:
    """The in-memory mirror of the state file, and the thread that writes it."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._kernels: dict[str, str] = {}
        self._sessions: dict[str, tuple[str, str]] = {}
        self._kept: dict[str, KeptSession] = {}
        self.kernels: Mapping[str, str] = MappingProxyType(self._kernels)
        self.sessions: Mapping[str, tuple[str, str]] = MappingProxyType(self._sessions)
        self.kept: Mapping[str, KeptSession] = MappingProxyType(self._kept)
        self._conn: sqlite3.Connection | None = None
        self._lock_fd: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._cond = threading.Condition()
        # Guarded by _cond: queued changes, count of changes queued / committed, and the
        # flush() futures waiting for a count.
        self._pending: Batch = {}
        self._queued = 0
        self._committed = 0
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._closing = False
        self._stopped = False
        # Also guarded by _cond: what failed (status), and changes dropped for good.
        self._problem: str | None = None  # the current failure; None once a write succeeds
        self._last_error: tuple[float, str] | None = None  # (wall time, error), kept
        self._dropped = 0

    @classmethod
    async def open(cls, path: str) -> StateStore:
        """Load the state (disk work in a thread) and start the writer thread."""
        if path == MEMORY:
            return cls(path)
        store = cls(path)
        store.path, conn, store._lock_fd, mirror = await asyncio.to_thread(_open_file, path)
        store._kernels.update(mirror[0])
        store._sessions.update(mirror[1])
        store._kept.update(mirror[2])
        store._conn = conn
        store._loop = asyncio.get_running_loop()
        store._thread = threading.Thread(target=store._writer, name="mixer-state-writer", daemon=True)
        store._thread.start()
        log.info(
            "state file %s: %d kernels, %d session aliases, %d kept sessions",
            store.path, len(store._kernels), len(store._sessions), len(store._kept),
        )
        return store

    @property
    def unflushed(self) -> int:
        """Changes queued but not yet committed (for status and tests)."""
        with self._cond:
            return self._queued - self._committed

    def status(self) -> dict[str, object]:
        """For ``/mixer/api/status``: whether changes reach the file, and what failed."""
        with self._cond:
            at, error = self._last_error or (None, None)
            return {
                "path": self.path,
                "durable": self._conn is not None and not self._stopped,
                "unflushed": self._queued - self._committed,
                "problem": self._problem,
                "last_error": error,
                "last_error_at": at,
                "dropped_changes": self._dropped,
            }

    async def flush(self, timeout: float | None = None) -> None:
        """Wait until every change queued so far is committed to the file, at most
        ``timeout`` seconds (:data:`FLUSH_TIMEOUT`). ``StateError`` when it is not: the
        write failed (the change stays queued and is retried), the store is closed, or
        the time is up. Nothing waits for the disk without a bound."""
        if self._loop is None:
            return
        with self._cond:
            if self._committed >= self._queued:
                return
            if self._stopped:
                raise StateError(self._unflushed_message())
            waiter = (self._queued, self._loop.create_future())
            self._waiters.append(waiter)
        limit = FLUSH_TIMEOUT if timeout is None else timeout
        try:
            await asyncio.wait_for(waiter[1], limit)
        except asyncio.TimeoutError:
            with self._cond:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)
                problem = f" ({self._problem})" if self._problem else ""
            raise StateError(f"a change was not written to the state file {self.path} within"
                             f" {limit:g} s{problem}") from None

    def _unflushed_message(self) -> str:
        return f"{self._queued - self._committed} changes were not written to {self.path}"

    async def close(self) -> None:
        """Commit what is queued, stop the writer and release the lock. Idempotent;
        afterwards the store still answers and changes, in memory only."""
        thread, self._thread = self._thread, None
        if thread is not None:
            with self._cond:
                self._closing = True
                self._cond.notify()
            await asyncio.to_thread(thread.join)
        lock_fd, self._lock_fd = self._lock_fd, None
        _unlock(lock_fd)

    # -- changes (called on the event loop; never wait for the disk) ----------------------
    # A value the file cannot hold (:func:`storable`) is a ValueError here, before the
    # mirror changes: callers check what clients and backends send first.
    def put_kernel(self, kernel_id: str, backend: str) -> None:
        if self._kernels.get(kernel_id) != backend:
            row = _checked((kernel_id, backend))
            self._kernels[kernel_id] = backend
            self._queue("kernels", kernel_id, row)

    def drop_kernel(self, kernel_id: str) -> None:
        if self._kernels.pop(kernel_id, None) is not None:
            self._queue("kernels", kernel_id, None)

    def put_session(self, client_id: str, backend: str, backend_id: str) -> None:
        if self._sessions.get(client_id) != (backend, backend_id):
            row = _checked((client_id, backend, backend_id))
            self._sessions[client_id] = (backend, backend_id)
            self._queue("sessions", client_id, row)

    def drop_session(self, client_id: str) -> None:
        if self._sessions.pop(client_id, None) is not None:
            self._queue("sessions", client_id, None)

    def put_kept(self, record: KeptSession) -> None:
        if self._kept.get(record.id) != record:
            row = _checked(dataclasses.astuple(record))
            self._kept[record.id] = record
            self._queue("kept", record.id, row)

    def drop_kept(self, session_id: str) -> None:
        if self._kept.pop(session_id, None) is not None:
            self._queue("kept", session_id, None)

    def _queue(self, table: str, key: str, row: Row | None) -> None:
        with self._cond:
            if self._conn is None or self._stopped:
                return  # in memory only (":memory:" or closed)
            self._pending[(table, key)] = row  # coalesce: the last change of a key wins
            self._queued += 1
            self._cond.notify()

    # -- the writer thread ---------------------------------------------------------------
    def _writer(self) -> None:
        """Commit whatever is queued, batch after batch, until closing; no error ends it
        before (:meth:`_round`)."""
        assert self._conn is not None
        delay = 0.0
        try:
            while (delay := self._round(delay)) >= 0:
                pass
        finally:
            with contextlib.suppress(Exception):
                self._conn.close()
            self._stop_waiters()

    def _round(self, delay: float) -> float:
        """Commit what is queued; the delay before the next try, or -1 to stop. A failed
        batch is retried with a growing delay (a full disk may clear); its waiters are
        told at once (unless another connection merely holds the file), so a request
        need not wait for the disk to come back."""
        with self._cond:
            self._cond.wait_for(lambda: self._pending or self._closing)
            batch, self._pending = self._pending, {}
            seq, closing = self._queued, self._closing
        if not batch:
            return -1.0
        try:
            error = self._commit(batch, seq)
        except Exception as exc:  # a bug in the bookkeeping must not stop the writer either
            log.exception("state file %s: unexpected error in the writer", self.path)
            error = exc
        if error is None:
            return 0.0
        with self._cond:
            batch.update(self._pending)  # newer changes win over the failed ones
            self._pending = batch
        if not _contention(error):  # a full disk: tell the waiters now, not at their timeout
            self._settle_waiters(seq, error)
        if closing:
            log.error("state file %s: %s; giving up: %s", self.path, _describe(error),
                      self._unflushed_message())
            return -1.0
        delay = min(max(delay * 2, 0.05), _MAX_RETRY_DELAY)
        self._report(error, "write failed", retry=delay)
        with self._cond:
            self._cond.wait_for(lambda: self._closing, timeout=delay)
        return delay

    def _commit(self, batch: Batch, seq: int) -> Exception | None:
        """Write ``batch``. A row that no transaction of its own can write (a value
        SQLite refuses) is dropped and reported, so one bad value never holds up the
        others. Returns an error worth retrying; ``batch`` then holds what is left."""
        error = self._write(batch)
        dropped: Exception | None = None
        if error is not None and not _retried(error):
            for key in list(batch):
                error = self._write({key: batch[key]})
                if error is not None and _retried(error):
                    return error
                if error is not None:
                    dropped = error
                    self._report(error, f"a change of table {key[0]} dropped", dropped=True)
                del batch[key]
            error = None
        if error is not None:
            return error
        with self._cond:
            self._problem = None
        self._settle_waiters(seq, dropped, committed=True)
        return None

    def _report(self, error: Exception, what: str, *, retry: float | None = None,
                dropped: bool = False) -> None:
        """Log a failure (never a value: paths may be private) and keep it for status."""
        text = f"{what}: {_describe(error)}"
        with self._cond:
            self._problem = text
            self._last_error = (time.time(), text)
            self._dropped += dropped
        if retry is None:
            log.error("state file %s: %s", self.path, text)
        else:
            log.warning("state file %s: %s; retrying in %.2f s", self.path, text, retry)

    def _write(self, batch: Batch) -> Exception | None:
        """One transaction for the whole batch; the error if it was rolled back."""
        assert self._conn is not None
        puts: dict[str, list[Row]] = {table: [] for table in _TABLES}
        drops: dict[str, list[tuple[str]]] = {table: [] for table in _TABLES}
        for (table, key), row in batch.items():
            if row is None:
                drops[table].append((key,))
            else:
                puts[table].append(row)
        try:
            self._conn.execute("BEGIN IMMEDIATE")
            for table, columns in _TABLES.items():
                marks = ", ".join("?" * len(columns))
                self._conn.executemany(f"DELETE FROM {table} WHERE {columns[0]} = ?", drops[table])
                self._conn.executemany(
                    f"INSERT OR REPLACE INTO {table} ({', '.join(columns)}) VALUES ({marks})", puts[table]
                )
            self._conn.execute("COMMIT")
        except Exception as exc:  # any: a value SQLite cannot bind fails outside sqlite3.Error
            with contextlib.suppress(Exception):
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
            return exc
        return None

    def _settle_waiters(self, seq: int, error: Exception | None, *, committed: bool = False) -> None:
        """Resolve the flush() waiters for changes up to ``seq``: done, or failed."""
        with self._cond:
            if committed:
                self._committed = max(self._committed, seq)
            done = [f for s, f in self._waiters if s <= seq]
            self._waiters = [(s, f) for s, f in self._waiters if s > seq]
        failure = None if error is None else StateError(
            f"a change could not be written to the state file {self.path}: {_describe(error)}")
        for future in done:
            self._resolve(future, failure)

    def _stop_waiters(self) -> None:
        with self._cond:
            self._stopped = True
            waiters, self._waiters = self._waiters, []
            message = self._unflushed_message()
        for _, future in waiters:
            self._resolve(future, StateError(message))

    def _resolve(self, future: asyncio.Future[None], error: Exception | None) -> None:
        def settle() -> None:
            if future.done():
                return  # cancelled by its waiter
            if error is None:
                future.set_result(None)
            else:
                future.set_exception(error)

        assert self._loop is not None
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
            self._loop.call_soon_threadsafe(settle)
