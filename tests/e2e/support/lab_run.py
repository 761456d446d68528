"""``mixer lab`` run as a user runs it, for the tests: a subprocess whose output is read
as a person reads it, whose children are found through /proc and checked by PID.

Each run gets its own Jupyter runtime directory (the front's server-info and
open-in-browser files land there, not in the developer's), and ``--no-browser``
unless the test asks for a browser.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from notebook_kernels_mixer.processes import descendants, is_alive

from .topology import clean_env, mixer_command

URL_RE = re.compile(r"http://127\.0\.0\.1:(\d+)/lab\?token=([0-9a-f]+)")
STATUS_RE = re.compile(r"http://127\.0\.0\.1:(\d+)/mixer/\?token=([0-9a-f]+)")
READY_TIMEOUT = 180.0


@dataclass
class Lab:
    proc: subprocess.Popen[bytes]
    out: Path
    err: Path
    workdir: Path
    runtime_dir: Path

    def stdout(self) -> str:
        return self.out.read_text(errors="replace")

    def stderr(self) -> str:
        return self.err.read_text(errors="replace")

    def wait_url(self) -> re.Match[str]:
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            match = URL_RE.search(self.stdout())
            if match:
                return match
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        raise AssertionError(
            f"mixer lab printed no URL (exit {self.proc.poll()})\n--- stdout ---\n"
            f"{self.stdout()}\n--- stderr ---\n{self.stderr()}"
        )

    def wait_exit(self, timeout: float = 60) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"mixer lab did not exit within {timeout:.0f}s\n{self.stderr()}") from None

    def children(self, where: str | None = None, command: str = "") -> list[int]:
        """PIDs of the launcher's descendants whose command line holds ``command`` and,
        with ``where``, whose MIXER_LAB_BACKEND is ``where``."""
        pids = [p for p in descendants(self.proc.pid) if command in cmdline(p)]
        if where is not None:
            pids = [p for p in pids if environ(p).get("MIXER_LAB_BACKEND") == where]
        return pids


@contextlib.contextmanager
def lab(
    tmp_path: Path, *args: str, browser: bool = False, env: Mapping[str, str] | None = None
) -> Iterator[Lab]:
    """``mixer lab ARGS`` in ``tmp_path``; killed (group, then every descendant seen) at the end."""
    workdir = tmp_path / "cwd"
    workdir.mkdir(exist_ok=True)
    runtime = tmp_path / "runtime"
    out, err = tmp_path / "lab.out", tmp_path / "lab.err"
    argv = [*mixer_command(), "lab", f"--log-dir={tmp_path / 'logs'}", *([] if browser else ["--no-browser"])]
    with open(out, "wb") as o, open(err, "wb") as e:
        proc = subprocess.Popen(
            [*argv, *args],
            stdin=subprocess.DEVNULL, stdout=o, stderr=e, cwd=workdir,
            env=clean_env({"JUPYTER_RUNTIME_DIR": str(runtime), **(env or {})}),
            start_new_session=True,
        )  # fmt: skip
    seen: set[int] = set()
    try:
        yield Lab(proc, out, err, workdir, runtime)
    finally:
        if proc.poll() is None:
            seen.update(descendants(proc.pid))
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        for pid in seen:
            if is_alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def environ(pid: int) -> dict[str, str]:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    return dict(item.split("=", 1) for item in raw.decode(errors="replace").split("\0") if "=" in item)


def running_in(directory: Path) -> dict[int, str]:
    """Processes whose working directory is ``directory`` (every child of a lab)."""
    out = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                if Path(os.readlink(f"/proc/{entry}/cwd")) == directory and is_alive(int(entry)):
                    out[int(entry)] = cmdline(int(entry))
    return out


def wait_all_gone(pids: set[int], timeout: float = 20) -> dict[int, str]:
    deadline = time.monotonic() + timeout
    alive = {p for p in pids if is_alive(p)}
    while alive and time.monotonic() < deadline:
        time.sleep(0.2)
        alive = {p for p in alive if is_alive(p)}
    return {p: cmdline(p) for p in alive}
