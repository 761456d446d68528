"""The mixer's persisted tables: what its migrations build is exactly what its row
types declare, and a file written by the first release is read by name."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from notebook_kernels_mixer.state import SCHEMA, KeptSession, StateStore, database
from tests.unit.state_support import contents

# The file of the first release, as its mixer created it: never to change.
RELEASE_1 = (
    "CREATE TABLE schema_version (version INTEGER NOT NULL)",
    "CREATE TABLE kernels (id TEXT PRIMARY KEY, backend TEXT NOT NULL)",
    "CREATE TABLE sessions (client_id TEXT PRIMARY KEY, backend TEXT NOT NULL, backend_id TEXT NOT NULL)",
    "CREATE TABLE kept (id TEXT PRIMARY KEY, backend TEXT NOT NULL, path TEXT NOT NULL,"
    " name TEXT NOT NULL, type TEXT NOT NULL, kernel_id TEXT NOT NULL)",
    "INSERT INTO schema_version VALUES (1)",
)


def test_the_migrations_create_exactly_the_declared_columns() -> None:
    """A row type's field without its migration line (or a column without its field,
    which no write would fill) is caught here, not in a user's file."""
    conn = sqlite3.connect(":memory:", isolation_level=None)
    database.migrate(conn, SCHEMA, 0)
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert tables == {"schema_version", *(t.name for t in SCHEMA.tables)}
    for table in SCHEMA.tables:
        info = conn.execute(f"PRAGMA table_info({table.name})").fetchall()
        assert sorted(r[1] for r in info) == sorted(table.columns), table.name
        assert [r[1] for r in info if r[5]] == [table.key], table.name  # the primary key
    assert conn.execute("SELECT version FROM schema_version").fetchall() == [(SCHEMA.version,)]
    conn.close()


async def test_a_file_of_the_first_release_is_read(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    conn = sqlite3.connect(path, isolation_level=None)
    for statement in RELEASE_1:
        conn.execute(statement)
    conn.execute("INSERT INTO kernels VALUES ('k1', 'local')")
    conn.execute("INSERT INTO sessions VALUES ('c1', 'remote', 'b1')")
    conn.execute("INSERT INTO kept (kernel_id, type, name, path, backend, id)"
                 " VALUES ('k2', 'notebook', 'a', 'a.ipynb', 'gw', 's1')")
    conn.close()
    kept = KeptSession(id="s1", backend="gw", path="a.ipynb", name="a", type="notebook", kernel_id="k2")
    assert await contents(path) == ({"k1": "local"}, {"c1": ("remote", "b1")}, {"s1": kept})
    store = await StateStore.open(str(path))
    try:
        store.put_kernel("k3", "gw")  # and written back in the same format
        await store.flush()
    finally:
        await store.close()
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT id, backend FROM kernels ORDER BY id").fetchall() == [
        ("k1", "local"), ("k3", "gw")]
    conn.close()
