"""The in-memory mirror of the state file: every read is served from it, every change
is applied to it at once and queued for the writer thread.

The whole file is loaded once at :meth:`Store.open` (in a worker thread); from then
on the event loop never waits for the disk: :meth:`Store.put` and :meth:`Store.drop`
change the mirror and queue the change (:mod:`notebook_kernels_mixer.state.writer`),
and only :meth:`Store.flush` waits, boundedly, for the file. :class:`Store` is generic
over a schema's tables, so a new field or table needs no code here;
:class:`StateStore` adds, for the mixer's own tables
(:mod:`notebook_kernels_mixer.state.tables`), the names the rest of the mixer uses
(``kernels``, ``put_kernel``, …).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator, Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, TypeVar

from notebook_kernels_mixer.state import database, lock
from notebook_kernels_mixer.state.schema import RowT, Schema, Values
from notebook_kernels_mixer.state.tables import SCHEMA, KeptSession, KernelRow, SessionRow
from notebook_kernels_mixer.state.writer import Writer

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

log = logging.getLogger(__name__)

MEMORY = ":memory:"

V = TypeVar("V")
S = TypeVar("S", bound="Store")


class _Projection(Mapping[str, V]):
    """A read-only view of a table's rows by key, each seen through ``project``."""

    def __init__(self, rows: Mapping[str, Any], project: Callable[[Any], V]) -> None:
        self._rows = rows
        self._project = project

    def __getitem__(self, key: str) -> V:
        return self._project(self._rows[key])

    def __iter__(self) -> Iterator[str]:
        return iter(self._rows)

    def __len__(self) -> int:
        return len(self._rows)

    def __repr__(self) -> str:
        return repr(dict(self.items()))


class Store:
    """The in-memory mirror of a state file of ``schema``, and the thread that writes it."""

    def __init__(self, path: str, schema: Schema = SCHEMA) -> None:
        self.path = path
        self.schema = schema
        self._rows: dict[str, dict[str, Any]] = {table.name: {} for table in schema.tables}
        self._writer: Writer | None = None
        self._lock_fd: int | None = None

    @classmethod
    async def open(cls: type[S], path: str, schema: Schema = SCHEMA) -> S:
        """Load the state (disk work in a thread) and start the writer thread;
        :data:`MEMORY` keeps nothing."""
        store = cls(path, schema)
        if path == MEMORY:
            return store
        store.path, conn, store._lock_fd, mirror = await asyncio.to_thread(database.open_file, path, schema)
        for name, rows in mirror.items():
            store._rows[name].update(rows)
        store._writer = Writer(store.path, conn, schema.tables, asyncio.get_running_loop())
        store._writer.start()
        log.info("state file %s: %s", store.path, store._counts())
        return store

    def _counts(self) -> str:
        return ", ".join(f"{len(rows)} {name}" for name, rows in self._rows.items())

    # -- reads and changes (on the event loop; never wait for the disk) ------------------
    def rows(self, row_type: type[RowT]) -> Mapping[str, RowT]:
        """The rows of ``row_type``'s table by key (read-only, live)."""
        return MappingProxyType(self._rows[self.schema.table_of(row_type).name])

    def put(self, row: DataclassInstance) -> None:
        """Keep ``row`` (replacing the row of its key). A value the file cannot hold
        (:func:`~notebook_kernels_mixer.state.schema.storable`) is a ValueError here,
        before the mirror changes: callers check what clients and backends send first."""
        table = self.schema.table_of(type(row))
        rows = self._rows[table.name]
        key = table.key_of(row)
        if rows.get(key) != row:
            values = table.values(row)
            rows[key] = row
            self._queue(table.name, key, values)

    def drop(self, row_type: type[DataclassInstance], key: str) -> None:
        """Forget the row of ``key`` in ``row_type``'s table, if there is one."""
        name = self.schema.table_of(row_type).name
        if self._rows[name].pop(key, None) is not None:
            self._queue(name, key, None)

    def _queue(self, table: str, key: str, values: Values | None) -> None:
        if self._writer is not None:  # else in memory only (":memory:")
            self._writer.queue(table, key, values)

    # -- the file ------------------------------------------------------------------------
    @property
    def unflushed(self) -> int:
        """Changes queued but not yet committed (for status and tests)."""
        return 0 if self._writer is None else self._writer.unflushed

    def status(self) -> dict[str, object]:
        """For ``/mixer/api/status``: whether changes reach the file, and what failed."""
        if self._writer is not None:
            return self._writer.status()
        return {"path": self.path, "durable": False, "unflushed": 0, "problem": None,
                "last_error": None, "last_error_at": None, "dropped_changes": 0}

    async def flush(self, timeout: float | None = None) -> None:
        """Wait until every change queued so far is in the file, boundedly
        (:meth:`~notebook_kernels_mixer.state.writer.Writer.flush`); ``StateError`` if not."""
        if self._writer is not None:
            await self._writer.flush(timeout)

    async def close(self) -> None:
        """Commit what is queued, stop the writer and release the lock. Idempotent;
        afterwards the store still answers and changes, in memory only."""
        if self._writer is not None:
            await self._writer.close()
        lock_fd, self._lock_fd = self._lock_fd, None
        lock.release(lock_fd)


class StateStore(Store):
    """The mixer's state (:data:`~notebook_kernels_mixer.state.tables.SCHEMA`), read and
    changed by the names the rest of the mixer uses."""

    def __init__(self, path: str, schema: Schema = SCHEMA) -> None:
        super().__init__(path, schema)
        self.kernels: Mapping[str, str] = _Projection(self.rows(KernelRow), lambda r: r.backend)
        self.sessions: Mapping[str, tuple[str, str]] = _Projection(
            self.rows(SessionRow), lambda r: (r.backend, r.backend_id))
        self.kept: Mapping[str, KeptSession] = self.rows(KeptSession)

    def _counts(self) -> str:
        return (f"{len(self.kernels)} kernels, {len(self.sessions)} session aliases,"
                f" {len(self.kept)} kept sessions")

    def put_kernel(self, kernel_id: str, backend: str) -> None:
        self.put(KernelRow(id=kernel_id, backend=backend))

    def drop_kernel(self, kernel_id: str) -> None:
        self.drop(KernelRow, kernel_id)

    def put_session(self, client_id: str, backend: str, backend_id: str) -> None:
        self.put(SessionRow(client_id=client_id, backend=backend, backend_id=backend_id))

    def drop_session(self, client_id: str) -> None:
        self.drop(SessionRow, client_id)

    def put_kept(self, record: KeptSession) -> None:
        self.put(record)

    def drop_kept(self, session_id: str) -> None:
        self.drop(KeptSession, session_id)
