"""Opening the state file: schema version and WAL, migration of an older file, an
unusable file moved aside, a failing disk at start not taken for corruption."""

from __future__ import annotations

import errno
import logging
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from notebook_kernels_mixer import state
from notebook_kernels_mixer.state import SCHEMA, Schema, StateError, StateStore, database
from tests.tiny_fs import fill, tiny_filesystem
from tests.unit.state_support import KEPT, contents, opened


async def test_schema_version_and_wal(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    async with opened(path):
        conn = sqlite3.connect(path)
        assert conn.execute("SELECT version FROM schema_version").fetchall() == [(state.SCHEMA_VERSION,)]
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        conn.close()


async def test_older_schema_is_migrated(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    async with opened(path) as store:
        store.put_kernel("k1", "local")
    newer = Schema(SCHEMA.tables, (*SCHEMA.migrations, "ALTER TABLE kernels ADD COLUMN note TEXT"))
    async with opened(path, newer) as store:
        assert dict(store.kernels) == {"k1": "local"}
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT version FROM schema_version").fetchall() == [(2,)]
    assert [r[1] for r in conn.execute("PRAGMA table_info(kernels)")] == ["id", "backend", "note"]
    conn.close()


# -- unusable files ----------------------------------------------------------------------
def other_schema(path: Path) -> None:
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE notes (x TEXT)")
    conn.commit()
    conn.close()


def newer_version(path: Path) -> None:
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
    conn.execute("INSERT INTO schema_version VALUES (?)", (state.SCHEMA_VERSION + 1,))
    conn.commit()
    conn.close()


def wrong_columns(path: Path) -> None:
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
    conn.execute("INSERT INTO schema_version VALUES (?)", (state.SCHEMA_VERSION,))
    for table in ("kernels", "sessions", "kept"):
        conn.execute(f"CREATE TABLE {table} (id TEXT)")
    conn.commit()
    conn.close()


def damaged_pages(path: Path) -> None:
    """A state file of the current schema whose data pages (not the first) are damaged."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
    for statement in SCHEMA.statements(1):
        conn.execute(statement)
    conn.execute("INSERT INTO schema_version VALUES (?)", (state.SCHEMA_VERSION,))
    rows = [(f"s{i}", "gw", "p" * 200, "n", "notebook", f"k{i}") for i in range(300)]
    with conn:
        conn.execute("BEGIN")
        conn.executemany("INSERT INTO kept VALUES (?, ?, ?, ?, ?, ?)", rows)
    conn.close()
    assert path.stat().st_size > 4096 * 12
    with path.open("r+b") as f:
        f.seek(4096 * 8)
        f.write(b"\xa5" * 8192)


@pytest.mark.parametrize(
    "make",
    [
        lambda p: p.write_bytes(bytes(range(256)) * 64),
        lambda p: p.write_text("this is not a database\n"),
        other_schema,
        newer_version,
        wrong_columns,
        damaged_pages,
    ],
    ids=["garbage", "text", "other-schema", "newer-version", "wrong-columns", "damaged-pages"],
)
async def test_unusable_file_is_moved_aside(make, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger=state.__name__)
    path = tmp_path / "s.sqlite"
    make(path)
    original = path.read_bytes()
    async with opened(path) as store:
        assert (dict(store.kernels), dict(store.sessions), dict(store.kept)) == ({}, {}, {})
        store.put_kernel("k1", "local")
    aside = [tmp_path / n for n in os.listdir(tmp_path) if n.startswith("s.sqlite.corrupt-")]
    assert len(aside) == 1 and aside[0].read_bytes() == original
    warning = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warning) == 1 and str(path) in warning[0].getMessage()
    assert str(aside[0]) in warning[0].getMessage()
    assert (await contents(path))[0] == {"k1": "local"}


async def test_empty_file_is_a_new_store(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    path.touch()
    assert await contents(path) == ({}, {}, {})
    assert not [n for n in os.listdir(tmp_path) if ".corrupt-" in n]


async def test_unusable_location_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(StateError, match=r"--state-file") as raised:
        await StateStore.open(str(blocker / "s.sqlite"))  # its directory is a file
    assert str(blocker / "s.sqlite") in str(raised.value)


@pytest.mark.parametrize(
    "error",
    [
        sqlite3.OperationalError("disk I/O error"),
        sqlite3.OperationalError("database or disk is full"),
        OSError(errno.ENOSPC, "No space left on device"),
        OSError(errno.EIO, "Input/output error"),
    ],
    ids=["disk-io-error", "disk-full", "ENOSPC", "EIO"],
)
async def test_io_error_at_start_keeps_the_file(
    error: Exception, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "s.sqlite"
    async with opened(path) as store:
        store.put_kept(KEPT)
    original = path.read_bytes()
    connect, errors = database.connect, iter([error])

    def failing_once(name: str, schema: Schema) -> Any:
        for failure in errors:
            raise failure
        return connect(name, schema)

    monkeypatch.setattr(database, "connect", failing_once)
    with pytest.raises(StateError) as refused:
        await StateStore.open(str(path))
    assert path.read_bytes() == original and not [n for n in os.listdir(tmp_path) if ".corrupt-" in n]
    assert str(path) in str(refused.value) and "left as it is" in str(refused.value)
    assert ":memory:" in str(refused.value)
    assert (await contents(path))[2] == {"s1": KEPT}


@pytest.fixture
def tiny_dir(tmp_path: Path) -> Iterator[Path]:
    with tiny_filesystem(tmp_path / "fs") as where:
        yield where


async def test_full_disk_at_start_keeps_the_file(tiny_dir: Path) -> None:
    path = tiny_dir / "state" / "s.sqlite"
    async with opened(path) as store:
        store.put_kept(KEPT)
    original = path.read_bytes()
    filler = fill(tiny_dir)
    with pytest.raises(StateError) as refused:
        await StateStore.open(str(path))
    assert path.read_bytes() == original and not [n for n in os.listdir(path.parent) if ".corrupt-" in n]
    assert "disk" in str(refused.value) and "left as it is" in str(refused.value)
    filler.unlink()
    assert (await contents(path))[2] == {"s1": KEPT}
