"""Switching keeps your variables (SPEC §7, ``--carry-variables``), through the mixer:
a notebook session moved by ``PATCH /api/sessions/{id}`` from ``local-python3`` to
``remote-python3`` (a token-protected jupyter_server with its own credentials) takes
its kernel's variables along, keeps its session id, and brings back what was made
remotely on the way home; the old kernels are gone. Without the flag a switch starts
an empty kernel, as before. The engine's faults are in ``test_e2e_carry.py``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from .helpers import channels_path, run, wait_kernel_gone, where
from .support import topology
from .support.api import ApiClient
from .support.fake_gcloud import FakeGcloud
from .support.kernel_client import KernelConnection
from .support.stack import Tokens
from .support.topology import JupyterServer, Mixer

pytestmark = pytest.mark.e2e

DEFINE = """
import os.path as osp
import socket
answer = 42
nested = {"a": [1, 2.5, ("x", None)], "b": {"c": {1, 2}}}
blob = bytes(range(256)) * (20 * 1024 * 1024 // 256)
def double(x):
    return 2 * x
gen = (i for i in range(3))
sock = socket.socket()
"""
CHECK = """
import hashlib
print(answer, nested == {"a": [1, 2.5, ("x", None)], "b": {"c": {1, 2}}}, len(blob),
      hashlib.sha256(blob).hexdigest()[:12], osp.join("a", "b"), double(21),
      "gen" in dir(), "sock" in dir())
"""


def _carrying_mixer(workdir: Path, stack: tuple[JupyterServer, JupyterServer, Tokens, FakeGcloud],
                    name: str, budget: str) -> Iterator[Mixer]:
    local, remote, tokens, gcloud = stack
    mixer = topology.mixer(workdir, local=local, remote=remote, token=tokens.jupyter,
                           gcloud=gcloud, name=name,
                           extra_args=["--carry-variables", f"--carry-budget={budget}"])
    mixer.start()
    try:
        yield mixer
    finally:
        mixer.stop()


@pytest.fixture(scope="module")
def stack(local_server: JupyterServer, remote_server: JupyterServer, tokens: Tokens,
          gcloud: FakeGcloud) -> tuple[JupyterServer, JupyterServer, Tokens, FakeGcloud]:
    return local_server, remote_server, tokens, gcloud


@pytest.fixture(scope="module")
def carrying_mixer(e2e_dir: Path, stack) -> Iterator[Mixer]:
    yield from _carrying_mixer(e2e_dir, stack, "carrying-mixer", "40s")


@pytest.fixture
def api(http: aiohttp.ClientSession, carrying_mixer: Mixer, tokens: Tokens) -> ApiClient:
    return ApiClient(http, carrying_mixer.url, auth=carrying_mixer.auth, xsrf=tokens.xsrf,
                     name="carrying mixer")


async def _switch(api: ApiClient, session_id: str, spec: str) -> dict:
    moved = await api.ok_json("PATCH", f"/api/sessions/{session_id}", {"kernel": {"name": spec}})
    assert moved["id"] == session_id and moved["kernel"]["name"] == spec
    return moved


async def test_a_switch_takes_the_variables_there_and_back(
    http: aiohttp.ClientSession, api: ApiClient, local_api: ApiClient, remote_api: ApiClient,
) -> None:
    import hashlib

    expected_blob = hashlib.sha256(bytes(range(256)) * (20 * 1024 * 1024 // 256)).hexdigest()[:12]
    session = await api.ok_json("POST", "/api/sessions", {
        "path": "carry.ipynb", "type": "notebook", "kernel": {"name": "local-python3"}},
        expect=(201,))
    local_kernel = session["kernel"]["id"]
    assert (await run(http, api, local_kernel, DEFINE)).status == "ok"

    remote = await _switch(api, session["id"], "remote-python3")
    remote_kernel = remote["kernel"]["id"]
    assert await where(http, api, remote_kernel) == "remote"
    result = await run(http, api, remote_kernel, CHECK)
    assert result.stdout.split() == [
        "42", "True", str(20 * 1024 * 1024), expected_blob, "a/b", "42", "False", "False"], result
    report = await run(http, api, remote_kernel, "print(_mixer_carry.outcome, sorted(_mixer_carry.skipped))")
    assert report.stdout.split() == ["partial", "['gen',", "'sock']"], report
    await wait_kernel_gone(local_api, local_kernel)

    assert (await run(http, api, remote_kernel, "made_remotely = answer + 1")).status == "ok"
    back = await _switch(api, session["id"], "local-python3")
    back_kernel = back["kernel"]["id"]
    assert await where(http, api, back_kernel) == "local"
    result = await run(http, api, back_kernel, "print(made_remotely, answer)")
    assert result.stdout.split() == ["43", "42"], result
    await wait_kernel_gone(remote_api, remote_kernel)

    status = await api.ok_json("GET", "/mixer/api/status")
    recent = status["carries"]["recent"]
    assert [r["session"] for r in recent[:2]] == [session["id"], session["id"]]
    assert recent[1]["outcome"] == "partial" and recent[1]["bytes"] > 20 * 1024 * 1024
    assert set(recent[1]["skipped"]) == {"gen", "sock"}
    assert "42" not in str(recent[1]["skipped"])  # reasons and names, never values
    await api.delete(f"/api/sessions/{session['id']}")


async def test_without_the_flag_a_switch_starts_an_empty_kernel(
    http: aiohttp.ClientSession, mixer_api: ApiClient,
) -> None:
    session = await mixer_api.ok_json("POST", "/api/sessions", {
        "path": "no-carry.ipynb", "type": "notebook", "kernel": {"name": "local-python3"}},
        expect=(201,))
    assert (await run(http, mixer_api, session["kernel"]["id"], "answer = 42")).status == "ok"
    moved = await _switch(mixer_api, session["id"], "remote-python3")
    result = await run(http, mixer_api, moved["kernel"]["id"], "print('answer' in dir())")
    assert result.stdout.strip() == "False"
    status = await mixer_api.ok_json("GET", "/mixer/api/status")
    assert status["carries"]["enabled"] is False and status["carries"]["carries"] == 0
    await mixer_api.delete(f"/api/sessions/{session['id']}")


@pytest.fixture(scope="module")
def hurried_mixer(e2e_dir: Path, stack) -> Iterator[Mixer]:
    yield from _carrying_mixer(e2e_dir, stack, "hurried-mixer", "5s")


async def test_a_busy_kernel_does_not_hold_the_switch_past_the_budget(
    http: aiohttp.ClientSession, hurried_mixer: Mixer, tokens: Tokens, local_api: ApiClient,
) -> None:
    """The old kernel is busy in ``time.sleep(600)``: the switch completes once the
    5 s budget is spent, on the new kernel, and the report says why nothing came."""
    api = ApiClient(http, hurried_mixer.url, auth=hurried_mixer.auth, xsrf=tokens.xsrf,
                    name="hurried mixer")
    session = await api.ok_json("POST", "/api/sessions", {
        "path": "busy.ipynb", "type": "notebook", "kernel": {"name": "local-python3"}},
        expect=(201,))
    old = session["kernel"]["id"]
    conn = await KernelConnection.open(http, api.ws_url(channels_path(old)), headers=api.auth())
    async with conn:
        await conn.send_execute("x = 1; import time; time.sleep(600)")
        moved = await _switch(api, session["id"], "remote-python3")
    assert await where(http, api, moved["kernel"]["id"]) == "remote"
    status = await api.ok_json("GET", "/mixer/api/status")
    (report,) = [r for r in status["carries"]["recent"] if r["session"] == session["id"]]
    assert report["outcome"] == "failed" and "busy" in report["reason"], report
    assert report["seconds"] < 5 + 15  # the budget, plus the report and closing handshakes
    await wait_kernel_gone(local_api, old)
    await api.delete(f"/api/sessions/{session['id']}")
