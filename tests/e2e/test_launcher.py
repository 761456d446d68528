"""`mixer lab`: the whole topology from one command, run as a user would run it.

The launcher runs as a subprocess; what it prints is parsed like a person reads it.
Its children are found through /proc (descendants of the launcher, kernels included)
and checked by PID after it stops.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from notebook_kernels_mixer.processes import descendants, free_port

from .support.api import DEFAULT_TIMEOUT, ApiClient
from .support.kernel_client import V1_PROTOCOL, KernelConnection
from .support.lab_run import STATUS_RE, cmdline, environ, lab, running_in, wait_all_gone
from .support.topology import clean_env, mixer_command

pytestmark = pytest.mark.e2e

WHERE = "import os; print(os.environ['MIXER_LAB_BACKEND'])"


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=DEFAULT_TIMEOUT, trust_env=False) as session:
        yield session


def browser_recorder(tmp_path: Path) -> tuple[Path, Path]:
    """A stand-in browser for $BROWSER (Python's webbrowser runs it with the URL)."""
    log = tmp_path / "browser-opened.txt"
    script = tmp_path / "fake-browser"
    script.write_text(f'#!/bin/sh\necho "$1" >> "{log}"\n')
    script.chmod(0o755)
    return script, log


def front_client(http: aiohttp.ClientSession, url: re.Match[str]) -> ApiClient:
    port, token = url.group(1), url.group(2)
    headers = {"Authorization": f"token {token}"}
    return ApiClient(http, f"http://127.0.0.1:{port}", auth=lambda: headers, name="front")


def check_banner(out: str, runtime_dir: Path) -> None:
    """jupyter lab's URL banner: the open-in-browser file, then the one URL."""
    banner = re.search(
        r"\n    To access the server, open this file in a browser:\n        (file://\S+)\n"
        r"    Or copy and paste one of these URLs:\n        (http://127\.0\.0\.1:\d+/lab\?token=\w+)\n",
        out,
    )
    assert banner, out
    opener = Path(banner.group(1).removeprefix("file://"))
    assert opener.parent == runtime_dir and re.fullmatch(r"jpserver-\d+-open\.html", opener.name)
    assert banner.group(2) in opener.read_text()  # the file sends the browser to that URL
    assert out.count("/lab?token=") == 1, out  # the one URL to open


async def test_lab_with_demo_remote_runs_both_and_sigterm_stops_every_child(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    notebooks = tmp_path / "notebooks"
    notebooks.mkdir()
    (notebooks / "marker.txt").write_text("front root")
    browser, opened = browser_recorder(tmp_path)
    # `--` hands the rest to the front JupyterLab; lab() adds --no-browser
    with lab(tmp_path, "--demo-remote", f"--port={free_port()}", "--",
             f"--ServerApp.root_dir={notebooks}", env={"BROWSER": str(browser)}) as run:  # fmt: skip
        match = await asyncio.to_thread(run.wait_url)
        front = front_client(http, match)
        out = run.stdout()
        check_banner(out, run.runtime_dir)
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
            # JupyterLab offers v1 first; the front now accepts it (and the legacy protocol)
            for protocol, chosen in (("v1", V1_PROTOCOL), ("legacy", None)):
                conn = await KernelConnection.open(
                    http, front.ws_url(f"/api/kernels/{kernel['id']}/channels"),
                    headers=front.auth(), protocol=protocol,
                )  # fmt: skip
                assert conn.negotiated == chosen, (protocol, conn.negotiated)
                async with conn:
                    result = await conn.execute(WHERE)
                assert result.status == "ok" and result.stdout.strip() == where, (protocol, result)
        assert not opened.exists(), "--no-browser, yet a browser was opened"

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
        assert sum("-m jupyter_server " in c for c in lines) == 2, lines
        assert sum("-m notebook_kernels_mixer " in c for c in lines) == 1, lines
        assert sum("-m jupyterlab " in c for c in lines) == 1, lines
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


async def test_lab_opens_the_browser_and_passes_serverapp_options_on(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    """As jupyter lab: a browser unless --no-browser (--browser is a no-op alias), and
    options the launcher does not know (here without ``--``) go to the front."""
    notebooks = tmp_path / "notebooks"
    notebooks.mkdir()
    (notebooks / "marker.txt").write_text("front root")
    browser, opened = browser_recorder(tmp_path)
    with lab(tmp_path, "--browser", f"--ServerApp.root_dir={notebooks}", browser=True,
             env={"BROWSER": str(browser)}) as run:  # fmt: skip
        match = await asyncio.to_thread(run.wait_url)
        check_banner(run.stdout(), run.runtime_dir)
        front = front_client(http, match)
        contents = await front.ok_json("GET", "/api/contents")
        assert "marker.txt" in {c["name"] for c in contents["content"]}
        for _ in range(100):  # the browser is started in a thread, after the banner
            if opened.exists():
                break
            await asyncio.sleep(0.1)
        # the browser gets the file that holds the token, as jupyter lab does
        assert opened.read_text().split() == [re.search(r"file://\S+", run.stdout()).group(0)]
        assert "no web browser found" not in run.stderr()
        # the mixer's state lives with the run's logs, not in Jupyter's runtime directory
        assert (tmp_path / "logs" / "mixer-state.sqlite").exists()
        assert not list(run.runtime_dir.glob("mixer-state*"))
