"""The durable state store (issue 10 item 4): round trips, a loop that never waits for
the disk, kill -9, corrupt files, the single-owner lock and schema migration."""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import signal
import sqlite3
import stat
import sys
import textwrap
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import pytest

from notebook_kernels_mixer import state
from notebook_kernels_mixer.state import KeptSession, StateError, StateStore, default_state_path
from tests.tiny_fs import fill, tiny_filesystem

REPO = Path(__file__).resolve().parents[2]
KEPT = KeptSession(
    id="s1", backend="gateway", path="a.ipynb", name="a.ipynb", type="notebook", kernel_id="k1"
)


@asynccontextmanager
async def opened(path: Path | str) -> AsyncIterator[StateStore]:
    store = await StateStore.open(str(path))
    try:
        yield store
    finally:
        await store.close()


async def contents(path: Path) -> tuple[dict, dict, dict]:
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


# -- where -------------------------------------------------------------------------------
def test_default_path_in_jupyter_runtime_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "rt"))
    assert default_state_path(9991) == str(tmp_path / "rt" / "mixer-state-9991.sqlite")
    monkeypatch.delenv("JUPYTER_RUNTIME_DIR")
    monkeypatch.setenv("JUPYTER_DATA_DIR", str(tmp_path / "data"))
    from jupyter_core.paths import jupyter_runtime_dir

    assert default_state_path(8081) == os.path.join(jupyter_runtime_dir(), "mixer-state-8081.sqlite")
    assert default_state_path(8081) == str(tmp_path / "data" / "runtime" / "mixer-state-8081.sqlite")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the Linux rule")
def test_default_path_without_jupyter_core(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "jupyter_core.paths", None)  # import now fails
    for name in ("JUPYTER_RUNTIME_DIR", "JUPYTER_DATA_DIR", "XDG_DATA_HOME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert default_state_path(1) == str(tmp_path / ".local/share/jupyter/runtime/mixer-state-1.sqlite")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert default_state_path(2) == str(tmp_path / "xdg/jupyter/runtime/mixer-state-2.sqlite")
    monkeypatch.setenv("JUPYTER_DATA_DIR", str(tmp_path / "jd"))
    assert default_state_path(3) == str(tmp_path / "jd/runtime/mixer-state-3.sqlite")


# -- what --------------------------------------------------------------------------------
async def test_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "state.sqlite"
    async with opened(path) as store:
        store.put_kernel("k1", "local")
        store.put_kernel("k2", "remote")
        store.put_kernel("k2", "gateway")  # ownership can change
        store.put_kernel("k3", "local")
        store.drop_kernel("k3")
        store.drop_kernel("never-there")
        store.put_session("c1", "remote", "b1")
        store.put_session("c2", "local", "c2")
        store.drop_session("c2")
        store.put_kept(KEPT)
        store.put_kept(KeptSession("s2", "gateway", "b.ipynb", "b", "notebook", "k2"))
        store.drop_kept("s2")
        assert dict(store.kernels) == {"k1": "local", "k2": "gateway"}
        with pytest.raises(TypeError):
            store.kernels["k9"] = "local"  # type: ignore[index]
    assert await contents(path) == ({"k1": "local", "k2": "gateway"}, {"c1": ("remote", "b1")}, {"s1": KEPT})
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


async def test_unchanged_put_writes_nothing(tmp_path: Path) -> None:
    async with opened(tmp_path / "s.sqlite") as store:
        store.put_kernel("k1", "local")
        store.put_session("c1", "local", "c1")
        store.put_kept(KEPT)
        await store.flush()
        store.put_kernel("k1", "local")  # listings re-learn the same owners all the time
        store.put_session("c1", "local", "c1")
        store.put_kept(KeptSession(**vars(KEPT)))
        store.drop_kernel("k-unknown")
        assert store.unflushed == 0


async def test_memory_keeps_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    async with opened(":memory:") as store:
        store.put_kernel("k1", "local")
        store.put_kept(KEPT)
        await store.flush()
        assert store.kernels == {"k1": "local"} and store.kept == {"s1": KEPT}
    assert os.listdir(tmp_path) == []
    assert await contents(":memory:") == ({}, {}, {})  # type: ignore[arg-type]


async def test_schema_version_and_wal(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    async with opened(path):
        conn = sqlite3.connect(path)
        assert conn.execute("SELECT version FROM schema_version").fetchall() == [(state.SCHEMA_VERSION,)]
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        conn.close()


async def test_older_schema_is_migrated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "s.sqlite"
    async with opened(path) as store:
        store.put_kernel("k1", "local")
    monkeypatch.setattr(state, "SCHEMA_VERSION", 2)
    monkeypatch.setitem(state._MIGRATIONS, 2, ("ALTER TABLE kernels ADD COLUMN note TEXT",))
    assert (await contents(path))[0] == {"k1": "local"}
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT version FROM schema_version").fetchall() == [(2,)]
    assert [r[1] for r in conn.execute("PRAGMA table_info(kernels)")] == ["id", "backend", "note"]
    conn.close()


# -- never waiting for the disk ------------------------------------------------------------
async def test_burst_does_not_wait_for_disk(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    async with opened(path) as store:
        tick_task = asyncio.create_task(ticker())
        with write_locked(path):
            for i in range(10_000):
                store.put_kernel(f"k{i}", "remote")
            # Every put returned although nothing could be committed.
            assert store.unflushed == 10_000 and len(store.kernels) == 10_000
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(store.flush(), 0.05)  # a waiting flush can be cancelled
            flushing = asyncio.create_task(store.flush())
            before = ticks
            await asyncio.sleep(0.3)
            assert not flushing.done()
            assert ticks - before >= 3, "the loop stalled while the disk was blocked"
        await asyncio.wait_for(flushing, 30)
        assert store.unflushed == 0
        tick_task.cancel()
    assert len((await contents(path))[0]) == 10_000


async def test_failed_write_is_retried(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger=state.__name__)
    path = tmp_path / "s.sqlite"
    async with opened(path) as store:
        with write_locked(path):
            store.put_kernel("k1", "local")
            for _ in range(100):  # longer than the busy timeout: the write fails, once at least
                if "write failed" in caplog.text:
                    break
                await asyncio.sleep(0.05)
        assert "write failed" in caplog.text and "database is locked" in caplog.text
        store.put_kernel("k2", "local")
        await asyncio.wait_for(store.flush(), 30)
    assert (await contents(path))[0] == {"k1": "local", "k2": "local"}


# -- kill -9 and the single-owner lock -----------------------------------------------------
CHILD = textwrap.dedent(
    """
    import asyncio, sys, time
    from notebook_kernels_mixer.state import StateStore

    async def main():
        store = await StateStore.open(sys.argv[1])
        store.put_kernel("flushed", "remote")
        store.put_session("c1", "remote", "b1")
        await store.flush()
        print("flushed", flush=True)
        store.put_kernel("unflushed", "local")  # committed by the writer on its own
        print("put", flush=True)
        await asyncio.sleep(120)

    asyncio.run(main())
    """
)


def rows_on_disk(path: Path) -> set[str]:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return {r[0] for r in conn.execute("SELECT id FROM kernels")}
    finally:
        conn.close()


async def test_survives_kill_9_and_lock_follows_owner(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CHILD, str(path), cwd=REPO, stdout=asyncio.subprocess.PIPE
    )
    try:
        assert child.stdout is not None
        assert await asyncio.wait_for(child.stdout.readline(), 30) == b"flushed\n"
        assert await asyncio.wait_for(child.stdout.readline(), 30) == b"put\n"
        for _ in range(200):  # the writer commits without a flush, promptly
            if rows_on_disk(path) == {"flushed", "unflushed"}:
                break
            await asyncio.sleep(0.05)
        assert rows_on_disk(path) == {"flushed", "unflushed"}
        with pytest.raises(StateError) as refused:
            await StateStore.open(str(path))
        message = str(refused.value)
        assert str(path) in message and "another mixer" in message and f"process {child.pid}" in message
        assert "--state-file" in message
    finally:
        if child.returncode is None:
            child.send_signal(signal.SIGKILL)
        await asyncio.wait_for(child.wait(), 30)
    assert child.returncode == -signal.SIGKILL
    kernels, sessions, _ = await contents(path)
    assert kernels == {"flushed": "remote", "unflushed": "local"} and sessions == {"c1": ("remote", "b1")}


async def test_second_store_refused_until_first_closes(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    first = await StateStore.open(str(path))
    first.put_kernel("k1", "local")
    with pytest.raises(StateError, match="in use by another mixer"):
        await StateStore.open(str(path))
    await first.close()
    await first.close()  # idempotent
    first.put_kernel("k2", "local")  # after close: in memory only
    assert first.kernels == {"k1": "local", "k2": "local"}
    assert (await contents(path))[0] == {"k1": "local"}


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
    for statement in state._MIGRATIONS[1]:
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


# -- a writer that nothing stops (issue 16 item 3) -------------------------------------------
BAD_PATH = "\udcff.ipynb"  # stdlib json decodes "\udcff" into this; UTF-8 cannot hold it


async def test_writer_survives_a_value_sqlite_cannot_hold(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger=state.__name__)
    path = tmp_path / "s.sqlite"
    async with opened(path) as store:
        store.put_kernel("k1", "local")
        # past the checks of put_kept (a last resort: callers check values first)
        store._queue("kept", "bad", ("bad", "gw", BAD_PATH, "n", "notebook", "k1"))
        with pytest.raises(StateError, match="UnicodeEncodeError"):
            await store.flush()
        store.put_kept(KEPT)  # later changes are still written
        await store.flush()
        status = store.status()
        assert status["durable"] and status["dropped_changes"] == 1, status
        assert "UnicodeEncodeError" in str(status["last_error"]) and status["problem"] is None
    assert await contents(path) == ({"k1": "local"}, {}, {"s1": KEPT})
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert any("dropped" in m and "kept" in m for m in errors), errors
    assert not any("\udcff" in m or "ipynb" in m for m in errors), errors  # never a value


async def test_writer_survives_an_unexpected_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "s.sqlite"
    async with opened(path) as store:
        real = store._commit
        failures = iter([RuntimeError("a bug")])

        def commit(batch: state.Batch, seq: int) -> Exception | None:
            for failure in failures:
                raise failure
            return real(batch, seq)

        monkeypatch.setattr(store, "_commit", commit)
        store.put_kernel("k1", "local")
        with pytest.raises(StateError, match="RuntimeError"):
            await store.flush()
        assert "RuntimeError" in str(store.status()["problem"])
        await store.flush()  # the failed change was kept and retried
        store.put_kernel("k2", "local")
        await store.flush()
        assert store.status()["problem"] is None
    assert (await contents(path))[0] == {"k1": "local", "k2": "local"}


@pytest.mark.parametrize("kind", ["lone-surrogate", "too-long", "not-a-string"])
async def test_values_the_file_cannot_hold_are_refused_at_once(tmp_path: Path, kind: str) -> None:
    value = {"lone-surrogate": BAD_PATH, "too-long": "x" * 4097, "not-a-string": 7}[kind]
    async with opened(tmp_path / "s.sqlite") as store:
        with pytest.raises(ValueError, match="UTF-8"):
            store.put_kept(KeptSession("s1", "gw", value, "n", "notebook", "k1"))  # type: ignore[arg-type]
        with pytest.raises(ValueError):
            store.put_kernel(value, "local")  # type: ignore[arg-type]
        with pytest.raises(ValueError):
            store.put_session("c1", "local", value)  # type: ignore[arg-type]
        assert (dict(store.kernels), dict(store.sessions), dict(store.kept)) == ({}, {}, {})
        assert store.unflushed == 0
    assert state.storable("é" * state.MAX_VALUE_CHARS) and state.storable("\U0001F600.ipynb")


# -- bounded waits and a failing disk (issue 16 item 4) ---------------------------------------
async def test_flush_waits_a_bounded_time(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    async with opened(path) as store:
        with write_locked(path):
            store.put_kernel("k1", "local")
            with pytest.raises(StateError, match=r"not written to the state file .* within 0.1 s"):
                await store.flush(timeout=0.1)
            for _ in range(200):  # the writer's first try ends after SQLite's busy timeout
                if store.status()["problem"]:
                    break
                await asyncio.sleep(0.05)
            assert "database is locked" in str(store.status()["problem"])
            with pytest.raises(StateError, match=r"within 0.1 s \(write failed: .*database is locked"):
                await store.flush(timeout=0.1)  # the timeout says why
        await store.flush()  # another connection held the file: retried until it let go
        assert store.status()["problem"] is None and store.status()["last_error"]
    assert (await contents(path))[0] == {"k1": "local"}


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
    connect, errors = state._connect, iter([error])

    def failing_once(name: str) -> Any:
        for failure in errors:
            raise failure
        return connect(name)

    monkeypatch.setattr(state, "_connect", failing_once)
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


async def test_full_disk_while_running_fails_waiters_and_recovers(tiny_dir: Path) -> None:
    path = tiny_dir / "state" / "s.sqlite"
    async with opened(path) as store:
        store.put_kernel("k0", "local")
        await store.flush()
        filler = fill(tiny_dir)
        for i in range(200):  # enough to need new pages in the WAL
            store.put_kept(KeptSession(f"s{i}", "gw", "p" * 1000, "n", "notebook", f"k{i}"))
        with pytest.raises(StateError, match=r"disk is full|disk I/O error"):
            await store.flush(timeout=60)
        assert "full" in str(store.status()["problem"]) or "I/O" in str(store.status()["problem"])
        filler.unlink()
        await store.flush(timeout=60)  # retried once there is room again
        assert store.status()["problem"] is None
    assert len((await contents(path))[2]) == 200


# -- every file 0600 whatever the umask (issue 16 item 4) -------------------------------------
@pytest.fixture
def umask_022() -> Iterator[None]:
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def modes(directory: Path) -> dict[str, int]:
    return {p.name: stat.S_IMODE(p.stat().st_mode) for p in directory.iterdir()}


async def test_every_state_file_is_0600(tmp_path: Path, umask_022: None) -> None:
    path = tmp_path / "s.sqlite"
    path.write_text("this is not a database\n")  # moved aside, replaced
    path.chmod(0o644)
    async with opened(path) as store:
        store.put_kernel("k1", "local")
        await store.flush()
        names = modes(tmp_path)
        assert {"s.sqlite", "s.sqlite-wal", "s.sqlite-shm", "s.sqlite.lock"} <= set(names)
        assert len([n for n in names if ".corrupt-" in n]) == 1
        assert set(names.values()) == {0o600}, names
    existing = tmp_path / "old.sqlite"  # a file and WAL an older mixer left readable
    async with opened(existing) as store:
        store.put_kernel("k1", "local")
    for name in ("old.sqlite", "old.sqlite.lock"):
        (tmp_path / name).chmod(0o644)
    async with opened(existing):
        assert {n: m for n, m in modes(tmp_path).items() if n.startswith("old")} == {
            "old.sqlite": 0o600, "old.sqlite-wal": 0o600, "old.sqlite-shm": 0o600,
            "old.sqlite.lock": 0o600,
        }


# -- links and shared directories (issue 16 item 5) -------------------------------------------
@pytest.mark.parametrize("planted", ["s.sqlite.lock", "s.sqlite", "s.sqlite-wal"])
async def test_symlink_planted_at_a_state_file_is_refused(planted: str, tmp_path: Path) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    state_dir = tmp_path / "state"
    state_dir.mkdir(mode=0o700)
    (state_dir / planted).symlink_to(victim)
    with pytest.raises(StateError, match="symbolic link") as refused:
        await StateStore.open(str(state_dir / "s.sqlite"))
    assert str(state_dir / planted) in str(refused.value)
    assert victim.read_text() == "precious\n" and stat.S_IMODE(victim.stat().st_mode) == 0o644


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="chown needs root")
@pytest.mark.parametrize("how", ["other-owner", "hard-link", "fifo"])
async def test_lock_file_not_our_own_regular_file_is_refused(how: str, tmp_path: Path) -> None:
    lock = tmp_path / "s.sqlite.lock"
    if how == "other-owner":
        lock.write_text("")
        os.chown(lock, 4242, 4242)
    elif how == "hard-link":
        (tmp_path / "other").write_text("precious\n")
        os.link(tmp_path / "other", lock)
    else:
        os.mkfifo(lock)
    with pytest.raises(StateError, match="not a regular file of this user's own") as refused:
        await StateStore.open(str(tmp_path / "s.sqlite"))
    assert str(lock) in str(refused.value)
    if how == "hard-link":
        assert (tmp_path / "other").read_text() == "precious\n"


async def test_directory_writable_by_others_is_refused(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    with pytest.raises(StateError, match=r"writable by other users \(mode 0777") as refused:
        await StateStore.open(str(shared / "s.sqlite"))
    assert str(shared) in str(refused.value) and "chmod go-w" in str(refused.value)
    assert os.listdir(shared) == []
    shared.chmod(0o775)  # group-writable: refused too
    with pytest.raises(StateError, match="writable by other users"):
        await StateStore.open(str(shared / "s.sqlite"))


async def test_sticky_directory_is_accepted_with_our_own_files(tmp_path: Path) -> None:
    sticky = tmp_path / "tmp-like"
    sticky.mkdir()
    sticky.chmod(0o1777)
    async with opened(sticky / "s.sqlite") as store:
        store.put_kept(KEPT)
    assert (await contents(sticky / "s.sqlite"))[2] == {"s1": KEPT}
    if hasattr(os, "geteuid") and os.geteuid() == 0:  # a file there of another user's
        os.chown(sticky / "s.sqlite", 4242, 4242)
        with pytest.raises(StateError, match="not a regular file of this user's own"):
            await StateStore.open(str(sticky / "s.sqlite"))


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="chown needs root")
async def test_directory_of_another_user_is_refused(tmp_path: Path) -> None:
    theirs = tmp_path / "theirs"
    theirs.mkdir(mode=0o755)
    os.chown(theirs, 4242, 4242)
    with pytest.raises(StateError, match="belongs to another user"):
        await StateStore.open(str(theirs / "s.sqlite"))
