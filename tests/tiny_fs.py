"""A small filesystem to fill up: a tmpfs of a few hundred KiB mounted for one test.

Mounting needs root (or CAP_SYS_ADMIN); without it the test that asks is skipped, and
it says why. Used by the state tests (a full disk at start-up and while running).
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


@contextlib.contextmanager
def tiny_filesystem(where: Path, size_kib: int = 512) -> Iterator[Path]:
    """A tmpfs of ``size_kib`` KiB mounted at ``where`` (created), unmounted after."""
    mount = shutil.which("mount")
    if mount is None or not hasattr(os, "geteuid") or os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root and mount(8)")
    where.mkdir(parents=True, exist_ok=True)
    done = subprocess.run([mount, "-t", "tmpfs", "-o", f"size={size_kib}k,mode=0700", "tmpfs",
                           str(where)], capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield where
    finally:
        umount = shutil.which("umount") or "umount"
        if subprocess.run([umount, str(where)], capture_output=True, timeout=60).returncode:
            subprocess.run([umount, "-l", str(where)], capture_output=True, timeout=60)


def fill(where: Path) -> Path:
    """Fill the filesystem of ``where`` to the last block; the file that did it."""
    filler = where / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        for size in (65536, 4096, 512, 1):  # bounded: the filesystem is small
            for _ in range(100_000):
                try:
                    os.write(fd, b"\0" * size)
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    break
    finally:
        os.close(fd)
    return filler
