"""The state files' safety: every file 0600 whatever the umask, never through a link,
never another user's file, no directory where another user could swap them."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from notebook_kernels_mixer.state import (
    StateError,
    StateStore,
)
from tests.unit.state_support import KEPT, contents, opened


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
