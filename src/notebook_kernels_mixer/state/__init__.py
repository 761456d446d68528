"""The mixer's durable state: what it must remember across a restart, even ``kill -9``.

The backends are the source of truth for kernels and sessions, but three things exist
only in the mixer (issue 10 item 4): kernel ownership, session aliases of moved
sessions, and the notebook sessions it keeps for gateway backends (no sessions API).

Where: one SQLite file per mixer port, by default ``mixer-state-{port}.sqlite`` in
Jupyter's runtime directory (:func:`default_state_path`); ``":memory:"`` keeps nothing.

Where to go:

* **what is persisted, and adding a field** (one field with a default + one migration
  line): :mod:`.tables`; how a table is declared (columns by name): :mod:`.schema`;
* **the mirror** every read is served from, generic ``put``/``drop``: :mod:`.store`;
* **the write-behind writer thread** (batches, retries, bounded ``flush``): :mod:`.writer`;
* **opening the file**: schema checks, migration, a corrupt file moved aside, a failing
  disk not taken for corruption: :mod:`.database`;
* **the lock and the files' safety** (one mixer per file, ``O_NOFOLLOW``, 0600, the
  directory's permissions): :mod:`.lock`;
* **the default location** (a copy of Jupyter's runtime-dir rule): :mod:`.runtime_dir`;
* **errors** and how a failing disk is told from a bad file: :mod:`.errors`.
"""

from __future__ import annotations

from notebook_kernels_mixer.state.errors import StateError
from notebook_kernels_mixer.state.runtime_dir import default_state_path
from notebook_kernels_mixer.state.schema import MAX_VALUE_CHARS, Migration, Schema, Table, storable
from notebook_kernels_mixer.state.store import MEMORY, StateStore, Store
from notebook_kernels_mixer.state.tables import (
    SCHEMA,
    SCHEMA_VERSION,
    KeptSession,
    KernelRow,
    SessionRow,
)
from notebook_kernels_mixer.state.writer import FLUSH_TIMEOUT

__all__ = [
    "FLUSH_TIMEOUT",
    "MAX_VALUE_CHARS",
    "MEMORY",
    "SCHEMA",
    "SCHEMA_VERSION",
    "KeptSession",
    "KernelRow",
    "Migration",
    "Schema",
    "SessionRow",
    "StateError",
    "StateStore",
    "Store",
    "Table",
    "default_state_path",
    "storable",
]
