"""`mixer lab`: the whole topology from one command, run as a user would run it.

The launcher runs as a subprocess; what it prints is parsed like a person reads it.
Its children are found through /proc (descendants of the launcher, kernels included)
and checked by PID after it stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from notebook_kernels_mixer.processes import descendants, free_port
from notebook_kernels_mixer.processes import is_alive as _alive

from .support.api import DEFAULT_TIMEOUT, ApiClient
from .support.kernel_client import KernelConnection
from .support.topology import clean_env, mixer_command

pytestmark = pytest.mark.e2e

WHERE = "import os; print(os.environ['MIXER_LAB_BACKEND'])"
URL_RE = re.compile(r"http://127\.0\.0\.1:(\d+)/lab\?token=([0-9a-f]+)")
STATUS_RE = re.compile(r"http://127\.0\.0\.1:(\d+)/mixer/\?token=([0-9a-f]+)")
READY_TIMEOUT = 180.0


@dataclass
class Lab:
    proc: subprocess.Popen[bytes]
    out: Path
    err: Path
    workdir: Path

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
            time.sleep(0.2)
        raise AssertionError(
            f"mixer lab printed no URL (exit {self.proc.poll()})\n--- stdout ---\n"
            f"{self.stdout()}\n--- stderr ---\n{self.stderr()}"
        )

    def wait_exit(self, timeout: float = 60) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"mixer lab did not exit within {timeout:.0f}s\n{self.stderr()}") from None


@contextlib.contextmanager
def lab(tmp_path: Path, *args: str) -> Iterator[Lab]:
    workdir = tmp_path / "cwd"
    workdir.mkdir(exist_ok=True)
    out, err = tmp_path / "lab.out", tmp_path / "lab.err"
    with open(out, "wb") as o, open(err, "wb") as e:
        proc = subprocess.Popen(
            [*mixer_command(), "lab", f"--log-dir={tmp_path / 'logs'}", *args],
            stdin=subprocess.DEVNULL, stdout=o, stderr=e, cwd=workdir, env=clean_env(),
            start_new_session=True,
        )  # fmt: skip
    seen: set[int] = set()
    try:
        yield Lab(proc, out, err, workdir)
    finally:
        if proc.poll() is None:
            seen.update(descendants(proc.pid))
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        for pid in seen:
            if _alive(pid):
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
                if Path(os.readlink(f"/proc/{entry}/cwd")) == directory and _alive(int(entry)):
                    out[int(entry)] = cmdline(int(entry))
    return out


def wait_all_gone(pids: set[int], timeout: float = 20) -> set[int]:
    deadline = time.monotonic() + timeout
    alive = {p for p in pids if _alive(p)}
    while alive and time.monotonic() < deadline:
        time.sleep(0.2)
        alive = {p for p in alive if _alive(p)}
    return {p: cmdline(p) for p in alive}  # type: ignore[return-value]


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=DEFAULT_TIMEOUT, trust_env=False) as session:
        yield session


async def test_lab_with_demo_remote_runs_both_and_sigterm_stops_every_child(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    notebooks = tmp_path / "notebooks"
    notebooks.mkdir()
    (notebooks / "marker.txt").write_text("front root")
    # `--` hands the rest to the front JupyterLab
    with lab(tmp_path, "--demo-remote", f"--port={free_port()}", "--",
             f"--ServerApp.root_dir={notebooks}") as run:
        match = await asyncio.to_thread(run.wait_url)
        front = ApiClient(http, f"http://127.0.0.1:{match.group(1)}",
                          auth=lambda: {"Authorization": f"token {match.group(2)}"}, name="front")
        out = run.stdout()
        assert out.count("/lab?token=") == 1, out  # the one URL to open
        assert "remote-*" in out and "local-*" in out

        contents = await front.ok_json("GET", "/api/contents")
        assert "marker.txt" in {c["name"] for c in contents["content"]}  # the extra argument

        specs = await front.kernelspecs()
        names = {n: m["spec"]["display_name"] for n, m in specs["kernelspecs"].items()}
        assert names["local-python3"].endswith(" (Local)")
        assert names["remote-python3"].endswith(" (Remote)")
        assert specs["default"] == "remote-python3"

        kernels = await asyncio.gather(*(front.start_kernel(f"{w}-python3") for w in ("local", "remote")))
        for where, kernel in zip(("local", "remote"), kernels, strict=True):
            conn = await KernelConnection.open(
                http, front.ws_url(f"/api/kernels/{kernel['id']}/channels"), headers=front.auth()
            )
            async with conn:
                result = await conn.execute(WHERE)
            assert result.status == "ok" and result.stdout.strip() == where, result

        status = STATUS_RE.search(out)
        assert status, out
        proc = await asyncio.to_thread(
            subprocess.run,
            [*mixer_command(), "status", f"--url=http://127.0.0.1:{status.group(1)}",
             f"--token={status.group(2)}"],
            capture_output=True, text=True, timeout=60, env=clean_env(),
        )  # fmt: skip
        assert proc.returncode == 0, proc.stdout + proc.stderr
        rows = {line.split()[0]: line for line in proc.stdout.splitlines()[3:] if line.strip()}
        assert rows["local"].split()[4] == "1" and rows["remote"].split()[4] == "1", proc.stdout

        children = set(descendants(run.proc.pid))
        lines = [cmdline(p) for p in children]
        assert sum("jupyter_server" in c for c in lines) == 2, lines
        assert sum("notebook_kernels_mixer" in c for c in lines) == 1, lines
        assert sum("jupyterlab" in c for c in lines) == 1, lines
        assert sum("ipykernel" in c for c in lines) == 2, lines  # the two kernels
        run.proc.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(run.wait_exit)
        assert code == 0, run.stderr()
        assert "SIGTERM received; stopping" in run.stderr()
        left = await asyncio.to_thread(wait_all_gone, children)
        assert not left, f"children outlived mixer lab: {left}"
        assert not running_in(run.workdir)


async def test_a_dying_child_stops_the_others_and_the_launcher_says_which(tmp_path: Path) -> None:
    with lab(tmp_path, "--demo-remote", f"--port={free_port()}") as run:
        await asyncio.to_thread(run.wait_url)
        children = set(descendants(run.proc.pid))
        demo = [p for p in children if environ(p).get("MIXER_LAB_BACKEND") == "remote"
                and "jupyter_server" in cmdline(p)]
        assert len(demo) == 1, [cmdline(p) for p in children]
        os.kill(demo[0], signal.SIGKILL)  # a crash
        code = await asyncio.to_thread(run.wait_exit)
        assert code == 1
        err = run.stderr()
        assert f"the demo remote (pid {demo[0]}) exited with code -9; stopping the others" in err
        assert "--- last" in err and "remote.log" in err  # the tail of its log
        left = await asyncio.to_thread(wait_all_gone, children)
        assert not left, f"children outlived mixer lab: {left}"
        assert not running_in(run.workdir)


async def test_a_child_that_fails_to_start_is_named_with_its_log(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        # the local backend cannot have its port; the demo remote, started beside it, can
        with lab(tmp_path, "--demo-remote", f"--jupyter-port={port}") as run:
            code = await asyncio.to_thread(run.wait_exit, 180)
            err = run.stderr()
            assert code == 1, err
            assert re.search(
                r"the local backend \(pid \d+\) exited with code \d+ while starting", err
            ), err
            assert "local.log" in err and f"port {port} is not available" in err, err  # the tail
            assert "/lab?token=" not in run.stdout()  # it never claimed to be running
            logs = tmp_path / "logs"
            assert (logs / "remote.log").exists() and not (logs / "mixer.log").exists()
            assert not running_in(run.workdir)  # the demo remote was stopped too
