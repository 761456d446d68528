"""What the state tests share: a store opened for the length of a block, what a file
holds once reopened, SQLite's write lock held from another connection, a sample kept
session."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

from notebook_kernels_mixer.state import SCHEMA, KeptSession, Schema, StateStore

KEPT = KeptSession(
    id="s1", backend="gateway", path="a.ipynb", name="a.ipynb", type="notebook", kernel_id="k1"
)


@asynccontextmanager
async def opened(path: Path | str, schema: Schema = SCHEMA) -> AsyncIterator[StateStore]:
    store = await StateStore.open(str(path), schema)
    try:
        yield store
    finally:
        await store.close()


async def contents(path: Path | str) -> tuple[dict[str, str], dict[str, Any], dict[str, KeptSession]]:
    async with opened(path) as store:
        return dict(store.kernels), dict(store.sessions), dict(store.kept)


@contextmanager
def write_locked(path: Path) -> Iterator[None]:
    """Hold SQLite's write lock from another connection: the store's disk 'stalls'."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    finally:
        conn.execute("ROLLBACK")
        conn.close()

