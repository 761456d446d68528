"""Where the state file lives by default: Jupyter's runtime directory, with or without
jupyter_core installed."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from notebook_kernels_mixer.state import (
    default_state_path,
)


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
