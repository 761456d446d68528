"""The state file's errors, and how a failing write or open is told apart.

Kept apart because every other module of the package needs the same judgement: a
disk or system that fails (full, I/O error, read-only, locked) is not a corrupt file
(the file must be left as it is, and a retry may succeed), and a value SQLite cannot
hold fails one row, not the batch. Messages name no value (paths may be private).
"""

from __future__ import annotations

import sqlite3


class StateError(Exception):
    """The state file cannot be used; the message says which file and what to do."""


# SQLite's primary result codes for a failing disk or system, not a bad file: PERM,
# BUSY, LOCKED, NOMEM, READONLY, INTERRUPT, IOERR, FULL, CANTOPEN, PROTOCOL, NOLFS, AUTH.
_IO_CODES = frozenset({3, 5, 6, 7, 8, 9, 10, 13, 14, 15, 22, 23})
_CORRUPT_CODES = frozenset({11, 26})  # CORRUPT, NOTADB
_BUSY_CODES = frozenset({5, 6})  # BUSY, LOCKED


def _code(exc: BaseException) -> int | None:
    code = getattr(exc, "sqlite_errorcode", None)  # Python 3.11+
    return code & 0xFF if isinstance(code, int) else None


def io_error(exc: BaseException) -> bool:
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


def contention(exc: BaseException) -> bool:
    """Another connection holds the file (BUSY, LOCKED): soon over, unlike a full disk."""
    code = _code(exc)
    if code is not None:
        return code in _BUSY_CODES
    return isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc)


def retried(exc: BaseException) -> bool:
    """A failed write worth retrying as a whole: nothing a single value did."""
    if io_error(exc):
        return True
    code = _code(exc)
    return code in _CORRUPT_CODES if code is not None else type(exc) is sqlite3.DatabaseError


def describe(exc: BaseException) -> str:
    """An error for logs and status, without the values (paths may be private): SQLite
    and the OS name no bound value in their messages; anything else by its type."""
    if isinstance(exc, (sqlite3.Error, OSError)):
        return f"{type(exc).__name__}: {exc}"
    return f"{type(exc).__name__} (a value the state file cannot hold)"
