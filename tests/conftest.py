"""What every test of the suite shares: Jupyter's runtime and data directories are
temporary ones for the whole run, so nothing a test starts (a mixer without
``--state-file`` keeps ``mixer-state-PORT.sqlite`` in the runtime directory) writes
into the user's own.

And the user's runtime directory is watched while the tests run: a mixer state file
locked there by a process this run started (its ``.lock`` names the mixer's PID, whose
parents lead to this process) fails the run at the end. Other programs of the machine
(a mixer the user runs, another test run) may write there meanwhile: they are not
this run's, and not counted.

The e2e support (``tests/e2e/support/topology.py``) gives each process it starts
directories of its own anyway; the temporary directories cover what inherits the test
process's environment (in-process mixers, ``tests/unit/test_shutdown.py``'s subprocess).
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

_VARIABLES = ("JUPYTER_RUNTIME_DIR", "JUPYTER_DATA_DIR")


def _parent(pid: int) -> int | None:
    with contextlib.suppress(OSError, ValueError, IndexError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        return int(stat.rsplit(")", 1)[1].split()[1])  # the field after the state
    return None


def started_by_us(pid: int, ancestor: int | None = None) -> bool:
    """Whether ``pid`` descends from ``ancestor`` (this process); bounded walk."""
    ancestor = os.getpid() if ancestor is None else ancestor
    for _ in range(64):
        if pid == ancestor:
            return True
        parent = _parent(pid)
        if parent is None or parent <= 1:
            return False
        pid = parent
    return False


class StateFileWatch:
    """Polls a directory for mixer state locks taken by this run's processes."""

    def __init__(self, directory: Path, interval: float = 0.2) -> None:
        self.directory = directory
        self.interval = interval
        self.seen = self._locks()  # (name, content) pairs there before the run
        self.ours: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="state-file-watch", daemon=True)

    def _locks(self) -> set[tuple[str, str]]:
        found = set()
        for lock in self.directory.glob("mixer-state-*.lock"):
            with contextlib.suppress(OSError):
                found.add((lock.name, lock.read_text(errors="replace")))
        return found

    def scan(self) -> None:
        for name, content in self._locks() - self.seen:
            self.seen.add((name, content))
            pid = re.match(r"\s*(\d+)", content)
            # no PID to follow: counted, rather than a leak let through
            if pid is None or started_by_us(int(pid.group(1))):
                self.ours.add(name.removesuffix(".lock"))

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.scan()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self.scan()


@dataclass(frozen=True)
class JupyterDirs:
    runtime: Path  # the run's JUPYTER_RUNTIME_DIR
    data: Path  # the run's JUPYTER_DATA_DIR
    user_runtime: Path  # the user's own runtime directory, which the run must not touch
    watch: StateFileWatch


def _user_runtime_dir() -> Path:
    from jupyter_core.paths import jupyter_runtime_dir

    return Path(jupyter_runtime_dir())


@pytest.fixture(scope="session", autouse=True)
def jupyter_dirs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[JupyterDirs]:
    base = tmp_path_factory.mktemp("jupyter")
    user_runtime = _user_runtime_dir()
    dirs = JupyterDirs(runtime=base / "runtime", data=base / "data", user_runtime=user_runtime,
                       watch=StateFileWatch(user_runtime))
    for d in (dirs.runtime, dirs.data):
        d.mkdir(mode=0o700)
    saved = {name: os.environ.get(name) for name in _VARIABLES}
    os.environ["JUPYTER_RUNTIME_DIR"] = str(dirs.runtime)
    os.environ["JUPYTER_DATA_DIR"] = str(dirs.data)
    dirs.watch.start()
    try:
        yield dirs
    finally:
        dirs.watch.stop()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    written = sorted(dirs.watch.ours)
    assert not written, f"the tests wrote {written} into the user's runtime directory {user_runtime}"
