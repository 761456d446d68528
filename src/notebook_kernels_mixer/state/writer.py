"""The write-behind writer: one thread that owns the SQLite connection and commits
whatever changes are queued, so the event loop never waits for the disk.

Generic over the tables of a :class:`~notebook_kernels_mixer.state.schema.Schema`: a
change is ``(table, key) -> values by column`` (or None to delete the row), and the
writer knows nothing of what a row means. Queued changes to the same key are
coalesced, so a burst costs one row write per key; each round commits everything
queued in one transaction, as soon as there is work, so a change reaches the file
within milliseconds. WAL with ``synchronous=NORMAL`` makes a commit survive a crash of
the process (it is in the operating system's cache); only a power cut may lose the
last moments.

The writer never stops before :meth:`Writer.close`: a write the disk refuses is
retried with a growing delay, a value SQLite cannot hold is dropped alone (values are
checked on the way in, so that is a last resort); either is logged (never a value:
paths may be private) and shown in :meth:`Writer.status`. Every wait for the writer is
bounded (:meth:`Writer.flush`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import threading
import time
from collections.abc import Sequence
from typing import Any

from notebook_kernels_mixer.state.errors import StateError, contention, describe, retried
from notebook_kernels_mixer.state.schema import Table, Values

log = logging.getLogger(__name__)

FLUSH_TIMEOUT = 10.0  # seconds a request waits for its change to reach the disk
MAX_RETRY_DELAY = 2.0

#: (table, key) -> the row to write, or None to delete it.
Batch = dict[tuple[str, str], Values | None]


class Writer:
    """The thread that writes queued changes to one state file."""

    def __init__(self, path: str, conn: sqlite3.Connection, tables: Sequence[Table[Any]],
                 loop: asyncio.AbstractEventLoop) -> None:
        self.path = path
        self._conn = conn
        self._tables = {table.name: table for table in tables}
        self._loop = loop
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

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="mixer-state-writer", daemon=True)
        self._thread.start()

    # -- the event loop's side (never waits for the disk, but in flush and close) ---------
    def queue(self, table: str, key: str, values: Values | None) -> None:
        """Queue a row to write (``values``) or delete (None); nothing once stopped."""
        with self._cond:
            if self._stopped:
                return  # closed: in memory only
            self._pending[(table, key)] = values  # coalesce: the last change of a key wins
            self._queued += 1
            self._cond.notify()

    @property
    def unflushed(self) -> int:
        """Changes queued but not yet committed."""
        with self._cond:
            return self._queued - self._committed

    def status(self) -> dict[str, object]:
        """Whether changes reach the file, and what failed."""
        with self._cond:
            at, error = self._last_error or (None, None)
            return {
                "path": self.path,
                "durable": not self._stopped,
                "unflushed": self._queued - self._committed,
                "problem": self._problem,
                "last_error": error,
                "last_error_at": at,
                "dropped_changes": self._dropped,
            }

    async def flush(self, timeout: float | None = None) -> None:
        """Wait until every change queued so far is committed to the file, at most
        ``timeout`` seconds (:data:`FLUSH_TIMEOUT`). ``StateError`` when it is not: the
        write failed (the change stays queued and is retried), the writer is stopped, or
        the time is up. Nothing waits for the disk without a bound."""
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

    async def close(self) -> None:
        """Commit what is queued and stop the thread. Idempotent."""
        thread, self._thread = self._thread, None
        if thread is not None:
            with self._cond:
                self._closing = True
                self._cond.notify()
            await asyncio.to_thread(thread.join)

    def _unflushed_message(self) -> str:
        return f"{self._queued - self._committed} changes were not written to {self.path}"

    # -- the thread ------------------------------------------------------------------------
    def _run(self) -> None:
        """Commit whatever is queued, batch after batch, until closing; no error ends it
        before (:meth:`_round`)."""
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
        if not contention(error):  # a full disk: tell the waiters now, not at their timeout
            self._settle_waiters(seq, error)
        if closing:
            log.error("state file %s: %s; giving up: %s", self.path, describe(error),
                      self._unflushed_message())
            return -1.0
        delay = min(max(delay * 2, 0.05), MAX_RETRY_DELAY)
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
        if error is not None and not retried(error):
            for key in list(batch):
                error = self._write({key: batch[key]})
                if error is not None and retried(error):
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
        text = f"{what}: {describe(error)}"
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
        puts: dict[str, list[Values]] = {name: [] for name in self._tables}
        drops: dict[str, list[tuple[str]]] = {name: [] for name in self._tables}
        for (name, key), values in batch.items():
            if values is None:
                drops[name].append((key,))
            else:
                puts[name].append(values)
        try:
            self._conn.execute("BEGIN IMMEDIATE")
            for name, table in self._tables.items():
                self._conn.executemany(table.delete_sql, drops[name])
                self._conn.executemany(table.upsert_sql, puts[name])
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
            f"a change could not be written to the state file {self.path}: {describe(error)}")
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

        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
            self._loop.call_soon_threadsafe(settle)
