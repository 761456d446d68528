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
mixer starts empty; a second mixer on the same file is refused (``<file>.lock`` held
with ``flock``, released by the kernel when its owner dies, even by ``kill -9``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import sqlite3
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
def _acquire_lock(path: str) -> int | None:
    """Hold ``<path>.lock`` exclusively for the life of the store. The descriptor is not
    inherited by child processes (PEP 446), so only this process's death releases it."""
    if fcntl is None:
        return None
    lock_path = path + ".lock"
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
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
    """Open, check, migrate and read the file; any sqlite3.DatabaseError means it is not
    a usable state file. Nothing is written before the file is known to be ours."""
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
    """Keep the unusable file (and its WAL) for inspection under a new name."""
    stamp = time.strftime("%Y%m%dT%H%M%S")
    aside = f"{path}.corrupt-{stamp}"
    for n in range(1, 1000):
        if not os.path.lexists(aside):
            break
        aside = f"{path}.corrupt-{stamp}-{n}"
    try:
        os.replace(path, aside)
        if os.path.lexists(path + "-wal"):
            os.replace(path + "-wal", aside + "-wal")
        with contextlib.suppress(FileNotFoundError):
            os.remove(path + "-shm")
    except OSError as exc:
        raise StateError(
            f"the state file {path} is unusable ({reason}) and cannot be moved aside ({exc});"
            " remove it, or start the mixer with --state-file :memory:"
        ) from exc
    log.warning(
        "state file %s is unusable (%s); moved it to %s and starting with an empty state",
        path, reason, aside,
    )


def _open_file(path: str) -> tuple[str, sqlite3.Connection, int | None, tuple[dict[str, Any], ...]]:
    """Lock, then load the file, moving it aside once if it is not a usable database."""
    path = os.path.abspath(os.path.expanduser(path))
    advice = "choose another --state-file (or :memory: to keep nothing)"
    try:
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        lock_fd = _acquire_lock(path)
    except OSError as exc:
        raise StateError(f"cannot lock the state file {path}: {exc}; {advice}") from exc
    try:
        if not os.path.lexists(path):  # sqlite would create it readable by everyone
            os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
        try:
            conn, mirror = _connect(path)
        except sqlite3.DatabaseError as exc:
            _move_aside(path, exc)
            conn, mirror = _connect(path)
    except (OSError, sqlite3.Error) as exc:
        _unlock(lock_fd)
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

    async def flush(self) -> None:
        """Wait until every change queued so far is committed to the file."""
        if self._loop is None:
            return
        with self._cond:
            if self._committed >= self._queued:
                return
            if self._stopped:
                raise StateError(self._unflushed_message())
            future: asyncio.Future[None] = self._loop.create_future()
            self._waiters.append((self._queued, future))
        await future

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
    def put_kernel(self, kernel_id: str, backend: str) -> None:
        if self._kernels.get(kernel_id) != backend:
            self._kernels[kernel_id] = backend
            self._queue("kernels", kernel_id, (kernel_id, backend))

    def drop_kernel(self, kernel_id: str) -> None:
        if self._kernels.pop(kernel_id, None) is not None:
            self._queue("kernels", kernel_id, None)

    def put_session(self, client_id: str, backend: str, backend_id: str) -> None:
        if self._sessions.get(client_id) != (backend, backend_id):
            self._sessions[client_id] = (backend, backend_id)
            self._queue("sessions", client_id, (client_id, backend, backend_id))

    def drop_session(self, client_id: str) -> None:
        if self._sessions.pop(client_id, None) is not None:
            self._queue("sessions", client_id, None)

    def put_kept(self, record: KeptSession) -> None:
        if self._kept.get(record.id) != record:
            self._kept[record.id] = record
            self._queue("kept", record.id, dataclasses.astuple(record))

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
        """Commit whatever is queued, batch after batch; retry a failed batch with a
        growing delay (a full disk may clear); give up only when closing."""
        assert self._conn is not None
        delay = 0.0
        try:
            while True:
                with self._cond:
                    self._cond.wait_for(lambda: self._pending or self._closing)
                    batch, self._pending = self._pending, {}
                    seq, closing = self._queued, self._closing
                if not batch:
                    break
                error = self._write(batch)
                if error is None:
                    delay = 0.0
                    self._committed_up_to(seq)
                    continue
                with self._cond:
                    batch.update(self._pending)  # newer changes win over the failed ones
                    self._pending = batch
                if closing:
                    log.error("state file %s: %s; giving up: %s", self.path, error, self._unflushed_message())
                    break
                delay = min(max(delay * 2, 0.05), _MAX_RETRY_DELAY)
                log.warning("state file %s: write failed (%s); retrying in %.2f s", self.path, error, delay)
                with self._cond:
                    self._cond.wait_for(lambda: self._closing, timeout=delay)
        finally:
            self._conn.close()
            self._stop_waiters()

    def _write(self, batch: Batch) -> sqlite3.Error | None:
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
        except sqlite3.Error as exc:
            if self._conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    self._conn.execute("ROLLBACK")
            return exc
        return None

    def _committed_up_to(self, seq: int) -> None:
        with self._cond:
            self._committed = max(self._committed, seq)
            done = [f for s, f in self._waiters if s <= self._committed]
            self._waiters = [(s, f) for s, f in self._waiters if s > self._committed]
        for future in done:
            self._resolve(future, None)

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
