"""The write-behind writer: a loop that never waits for the disk, retries, a writer that
nothing stops, bounded waits, a disk that fills up while running."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from notebook_kernels_mixer import state
from notebook_kernels_mixer.state import (
    KeptSession,
    StateError,
)
from notebook_kernels_mixer.state.writer import Batch
from tests.tiny_fs import fill, tiny_filesystem
from tests.unit.state_support import KEPT, contents, opened, write_locked


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
        store._queue("kept", "bad", {**dataclasses.asdict(KEPT), "id": "bad", "path": BAD_PATH})
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
        assert store._writer is not None
        real = store._writer._commit
        failures = iter([RuntimeError("a bug")])

        def commit(batch: Batch, seq: int) -> Exception | None:
            for failure in failures:
                raise failure
            return real(batch, seq)

        monkeypatch.setattr(store._writer, "_commit", commit)
        store.put_kernel("k1", "local")
        with pytest.raises(StateError, match="RuntimeError"):
            await store.flush()
        assert "RuntimeError" in str(store.status()["problem"])
        await store.flush()  # the failed change was kept and retried
        store.put_kernel("k2", "local")
        await store.flush()
        assert store.status()["problem"] is None
    assert (await contents(path))[0] == {"k1": "local", "k2": "local"}


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


@pytest.fixture
def tiny_dir(tmp_path: Path) -> Iterator[Path]:
    with tiny_filesystem(tmp_path / "fs") as where:
        yield where


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
