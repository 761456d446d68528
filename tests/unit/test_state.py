"""The durable state store (issue 10 item 4): round trips through the mirror and the
file, ``:memory:``, kill -9 and the single owner, values refused before they reach the
mirror."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import stat
import sys
import textwrap
from pathlib import Path

import pytest

from notebook_kernels_mixer import state
from notebook_kernels_mixer.state import (
    KeptSession,
    StateError,
    StateStore,
)
from tests.unit.state_support import KEPT, contents, opened

REPO = Path(__file__).resolve().parents[2]


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


# -- a writer that nothing stops (issue 16 item 3) -------------------------------------------
BAD_PATH = "\udcff.ipynb"  # stdlib json decodes "\udcff" into this; UTF-8 cannot hold it


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
