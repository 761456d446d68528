"""What the mixer persists across a restart: one row type per table, and the
migrations that built the file. The one place to edit to persist something new.

The backends are the source of truth for kernels and sessions, but three things exist
only in the mixer (issue 10 item 4): kernel ownership, session aliases and kept
sessions (one table each, below).

To add a persisted field, add it to its row type with a default and append one
migration line; nothing else changes (columns are matched by name, the store's put
and drop are generic, and the file of an older mixer is upgraded when it is opened)::

    class KeptSession:
        ...
        kernel_name: str = ""

    MIGRATIONS = (..., "ALTER TABLE kept ADD COLUMN kernel_name TEXT NOT NULL DEFAULT ''")

Never edit a released migration: an older file is upgraded by running the ones it
lacks. ``tests/unit/test_state_tables.py`` checks that the migrations create exactly
the declared columns.
"""

from __future__ import annotations

from dataclasses import dataclass

from notebook_kernels_mixer.state.schema import Migration, Schema, Table


@dataclass(frozen=True)
class KernelRow:
    """Kernel ownership, so a restarted mixer routes a known kernel without asking
    every backend."""

    id: str
    backend: str


@dataclass(frozen=True)
class SessionRow:
    """A session alias: a session moved to another backend keeps the id the client
    knows (SPEC §4), and no backend knows that id."""

    client_id: str
    backend: str
    backend_id: str  # the session's id on ``backend``


@dataclass(frozen=True)
class KeptSession:
    """A notebook session the mixer keeps for a gateway backend (no sessions API)."""

    id: str
    backend: str
    path: str
    name: str
    type: str
    kernel_id: str


KERNELS = Table("kernels", KernelRow, key="id")
SESSIONS = Table("sessions", SessionRow, key="client_id")
KEPT = Table("kept", KeptSession, key="id")

MIGRATIONS: tuple[Migration, ...] = (
    (  # 1: the first release
        "CREATE TABLE kernels (id TEXT PRIMARY KEY, backend TEXT NOT NULL)",
        "CREATE TABLE sessions (client_id TEXT PRIMARY KEY, backend TEXT NOT NULL,"
        " backend_id TEXT NOT NULL)",
        "CREATE TABLE kept (id TEXT PRIMARY KEY, backend TEXT NOT NULL, path TEXT NOT NULL,"
        " name TEXT NOT NULL, type TEXT NOT NULL, kernel_id TEXT NOT NULL)",
    ),
)

SCHEMA = Schema(tables=(KERNELS, SESSIONS, KEPT), migrations=MIGRATIONS)
SCHEMA_VERSION = SCHEMA.version
