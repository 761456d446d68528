"""What every test of the suite shares: Jupyter's runtime and data directories are
temporary ones for the whole run, so nothing a test starts (a mixer without
``--state-file`` keeps ``mixer-state-PORT.sqlite`` in the runtime directory) writes
into the user's own. At the end of the run the user's runtime directory is checked
for mixer state files that were not there before: the run fails if one appeared.

The e2e support (``tests/e2e/support/topology.py``) gives each process it starts
directories of its own anyway; this covers what inherits the test process's
environment (in-process mixers, ``tests/unit/test_shutdown.py``'s subprocess).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

_VARIABLES = ("JUPYTER_RUNTIME_DIR", "JUPYTER_DATA_DIR")


@dataclass(frozen=True)
class JupyterDirs:
    runtime: Path  # the run's JUPYTER_RUNTIME_DIR
    data: Path  # the run's JUPYTER_DATA_DIR
    user_runtime: Path  # the user's own runtime directory, which the run must not touch

    def user_state_files(self) -> set[str]:
        return {p.name for p in self.user_runtime.glob("mixer-state-*")}


def _user_runtime_dir() -> Path:
    from jupyter_core.paths import jupyter_runtime_dir

    return Path(jupyter_runtime_dir())


@pytest.fixture(scope="session", autouse=True)
def jupyter_dirs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[JupyterDirs]:
    base = tmp_path_factory.mktemp("jupyter")
    dirs = JupyterDirs(runtime=base / "runtime", data=base / "data", user_runtime=_user_runtime_dir())
    for d in (dirs.runtime, dirs.data):
        d.mkdir(mode=0o700)
    before = dirs.user_state_files()
    saved = {name: os.environ.get(name) for name in _VARIABLES}
    os.environ["JUPYTER_RUNTIME_DIR"] = str(dirs.runtime)
    os.environ["JUPYTER_DATA_DIR"] = str(dirs.data)
    try:
        yield dirs
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    written = sorted(dirs.user_state_files() - before)
    assert not written, f"the tests wrote {written} into the user's runtime directory {dirs.user_runtime}"
