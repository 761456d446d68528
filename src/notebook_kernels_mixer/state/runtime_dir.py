"""Where the state file lives by default: Jupyter's runtime directory.

A copy of jupyter_core's rule (``jupyter_core.paths.jupyter_runtime_dir``) for when
jupyter_core is not installed: the mixer itself does not need Jupyter, and a mixer
with and without it must find the same file. jupyter_core is used when present, so
any platform rule it has that this copy lacks still wins there.
"""

from __future__ import annotations

import os
import sys


def default_state_path(port: int) -> str:
    """Jupyter's runtime directory (where servers keep their own runtime files), one
    file per mixer port so mixers on different ports never share state."""
    return os.path.join(jupyter_runtime_dir(), f"mixer-state-{port}.sqlite")


def jupyter_runtime_dir() -> str:
    if os.environ.get("JUPYTER_RUNTIME_DIR"):
        return os.environ["JUPYTER_RUNTIME_DIR"]
    try:
        from jupyter_core.paths import jupyter_runtime_dir as jupyters
    except ImportError:  # the mixer does not need Jupyter installed: same rule by hand
        return os.path.join(jupyter_data_dir(), "runtime")
    return str(jupyters())


def jupyter_data_dir() -> str:
    """jupyter_core.paths.jupyter_data_dir without platformdirs."""
    if os.environ.get("JUPYTER_DATA_DIR"):
        return os.environ["JUPYTER_DATA_DIR"]
    home = os.path.expanduser("~")
    if sys.platform == "darwin":
        return os.path.join(home, "Library", "Jupyter")
    if sys.platform == "win32":
        appdata = os.environ.get("APPDATA")
        return os.path.join(appdata, "jupyter") if appdata else os.path.join(home, ".jupyter", "data")
    xdg = os.environ.get("XDG_DATA_HOME") or os.path.join(home, ".local", "share")
    return os.path.join(xdg, "jupyter")
