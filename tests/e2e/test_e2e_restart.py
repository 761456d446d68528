"""Issue 10, acceptance 5: what the mixer alone knows survives ``kill -9``.

No backend knows the id a client keeps for a session moved to another backend (SPEC
§4), nor the notebook sessions the mixer keeps for a Kernel Gateway (it has no
sessions API): both live in the mixer's state file (``--state-file``), which must be
read back by the restarted mixer. A corrupt file is moved aside and the mixer starts
empty; a second mixer on a file in use is refused with a clear error.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from .helpers import run, wait_kernel_gone, where
from .support import topology
from .support.api import ApiClient
from .support.stack import Stack, Tokens
from .support.topology import Mixer
from .test_e2e_nothing_lost import notebook
from .test_three_backends import Server, kernel_gateway, wait_gone

pytestmark = pytest.mark.e2e


async def entries_for(api: ApiClient, path: str) -> list[dict[str, Any]]:
    return [s for s in await api.sessions() if s.get("path") == path]


async def printed(http: aiohttp.ClientSession, api: ApiClient, kernel_id: str, code: str) -> str:
    result = await run(http, api, kernel_id, code)
    assert result.status == "ok", f"{api.name} kernel {kernel_id}: {result}"
    return result.stdout.strip()


async def test_moved_session_found_by_its_id_after_kill_9(
    http: aiohttp.ClientSession,
    mixer_api: ApiClient,
    mixer_proc: Mixer,
    local_api: ApiClient,
    remote_api: ApiClient,
    janitor,
    topology_guard,
) -> None:
    path = f"moved-{uuid.uuid4().hex[:8]}.ipynb"
    session = await mixer_api.ok_json("POST", "/api/sessions", notebook(path, "local-python3"), expect=(201,))
    sid = session["id"]
    janitor.track(session["kernel"]["id"])
    moved = await mixer_api.ok_json("PATCH", f"/api/sessions/{sid}", {"kernel": {"name": "remote-python3"}})
    remote_kernel = janitor.track(moved["kernel"]["id"])
    assert moved["id"] == sid and moved["kernel"]["name"] == "remote-python3", moved
    # the remote knows the session by another id: only the mixer's state links the two
    assert sid not in {s["id"] for s in await remote_api.sessions()}
    secret = uuid.uuid4().hex
    assert await printed(http, mixer_api, remote_kernel, f"secret = {secret!r}; print('set')") == "set"

    mixer_proc.restart(kill=True)  # SIGKILL: nothing is saved on the way out

    got = await mixer_api.ok_json("GET", f"/api/sessions/{sid}")
    assert got["id"] == sid and got["kernel"]["id"] == remote_kernel, got
    assert got["kernel"]["name"] == "remote-python3", got
    assert [s["id"] for s in await entries_for(mixer_api, path)] == [sid]
    assert await printed(http, mixer_api, remote_kernel, "print(secret)") == secret

    back = await mixer_api.ok_json("PATCH", f"/api/sessions/{sid}", {"kernel": {"name": "local-python3"}})
    local_kernel = janitor.track(back["kernel"]["id"])
    assert back["id"] == sid and back["kernel"]["name"] == "local-python3", back
    await wait_kernel_gone(remote_api, remote_kernel)
    assert await where(http, mixer_api, local_kernel) == "local"
    assert [s["id"] for s in await entries_for(mixer_api, path)] == [sid]

    resp = await mixer_api.delete(f"/api/sessions/{sid}")
    assert resp.status == 204, resp.describe()
    assert await entries_for(mixer_api, path) == []
    await wait_kernel_gone(local_api, local_kernel)


# -- a Kernel Gateway, whose notebook sessions the mixer keeps ----------------------------------


@pytest.fixture(scope="module")
def kg_mixer(
    tmp_path_factory: pytest.TempPathFactory, backends: Stack, tokens: Tokens
) -> Iterator[tuple[Mixer, Server]]:
    """The e2e local jupyter_server and a Kernel Gateway behind a mixer whose state file
    is set by its config file (``[mixer] state_file``)."""
    workdir = tmp_path_factory.mktemp("kg-restart")
    kg = kernel_gateway(workdir, uuid.uuid4().hex)
    (workdir / "kg.token").write_text(kg.token)
    # sessions "auto" finds out that the Kernel Gateway has no sessions API; a
    # jupyter_server standing in for it has one, so there the mixer is told to keep them
    sessions = "mixer" if kg.standin_reason else "auto"
    config = workdir / "mixer.toml"
    config.write_text(f"""
[mixer]
state_file = "state/kg-mixer.sqlite"

[[backends]]
name = "kg"
display_suffix = " (Kernel Gateway)"
url = "{kg.url}/"
auth = "token"
token_file = "kg.token"
sessions = "{sessions}"
""")
    mixer = topology.mixer(workdir, local=backends.local, remote=None, token=tokens.jupyter, gcloud=None,
                           name="kg-mixer", extra_args=[f"--config={config}"], state_file=None)
    mixer.state_file = workdir / "state" / "kg-mixer.sqlite"
    try:
        kg.process.start()
        mixer.start()
        yield mixer, kg
    finally:
        mixer.stop()
        kg.process.stop()


async def test_kept_gateway_session_listed_and_usable_after_kill_9(
    http: aiohttp.ClientSession, kg_mixer: tuple[Mixer, Server], tokens: Tokens
) -> None:
    mixer, kg = kg_mixer
    api = ApiClient(http, mixer.url, auth=mixer.auth, xsrf=tokens.xsrf, name="kg mixer")
    path = f"kept-{uuid.uuid4().hex[:8]}.ipynb"
    session = await api.ok_json("POST", "/api/sessions", notebook(path, "kg-python3"), expect=(201,))
    sid, kernel = session["id"], session["kernel"]["id"]
    status = await api.ok_json("GET", "/mixer/api/status")
    assert next(b for b in status["backends"] if b["name"] == "kg")["sessions_kept_by"] == "mixer", status
    assert status["state_file"] == str(mixer.state_file) and mixer.state_file.exists(), status
    secret = uuid.uuid4().hex
    assert await printed(http, api, kernel, f"secret = {secret!r}; import os; "
                                            "print(os.environ['MIXER_TEST_WHERE'])") == "kg"

    mixer.restart(kill=True)

    listed = await entries_for(api, path)
    assert [(s["id"], s["kernel"]["id"]) for s in listed] == [(sid, kernel)], listed
    got = await api.ok_json("GET", f"/api/sessions/{sid}")
    assert got["kernel"]["id"] == kernel and got["kernel"]["name"] == "kg-python3", got
    assert kernel in await api.kernel_ids()
    assert await printed(http, api, kernel, "print(secret)") == secret

    resp = await api.delete(f"/api/sessions/{sid}")
    assert resp.status == 204, resp.describe()
    await wait_gone(http, kg, kernel)
    assert await entries_for(api, path) == []


# -- the state file itself ------------------------------------------------------------------------


def moved_aside(state: Path) -> list[bytes]:
    """The contents of the files the mixer moved ``state`` to."""
    return [p.read_bytes() for p in state.parent.glob(state.name + ".corrupt-*")]


async def test_corrupt_state_file_is_moved_aside_and_the_mixer_starts_empty(
    http: aiohttp.ClientSession, backends: Stack, tokens: Tokens, tmp_path: Path
) -> None:
    state = tmp_path / "state.sqlite"
    garbage = b"not a database: the disk filled up mid-write\n" * 100
    state.write_bytes(garbage)
    mixer = topology.mixer(tmp_path, local=backends.local, remote=None, token=tokens.jupyter, gcloud=None,
                           name="corrupt", state_file=state)
    try:
        mixer.start()
        log = mixer.log_text()
        warning = [line for line in log.splitlines() if "WARNING" in line and str(state) in line]
        assert warning and "moved it to" in warning[0], log
        assert moved_aside(state) == [garbage]  # kept for inspection
        assert f"state file {state}: 0 kernels, 0 session aliases, 0 kept sessions" in log, log
        assert state.read_bytes().startswith(b"SQLite format 3\0")  # a fresh one in its place
        api = ApiClient(http, mixer.url, auth=mixer.auth, name="corrupt mixer")
        status = await api.ok_json("GET", "/mixer/api/status")
        assert status["memory"]["session_aliases"] == 0 and status["memory"]["kept_sessions"] == 0, status
    finally:
        mixer.stop()


def test_second_mixer_on_the_same_state_file_is_refused(
    mixer_proc: Mixer, backends: Stack, tokens: Tokens, tmp_path: Path
) -> None:
    assert mixer_proc.state_file is not None
    second = topology.mixer(tmp_path, local=backends.local, remote=None, token=tokens.jupyter, gcloud=None,
                            name="second", state_file=mixer_proc.state_file)
    try:
        second.process.start(wait=False)
        code = second.process.wait_exit(timeout=60)
    finally:
        second.stop()
    log = second.log_text()
    assert code != 0, log
    assert str(mixer_proc.state_file) in log and "in use by another mixer" in log, log
    assert "Traceback" not in log, log  # a message, not a crash
    assert mixer_proc.running() and mixer_proc.probe()  # the first one carries on
