"""The mixer's state file under faults, with real processes: a Kernel Gateway whose
notebook sessions the mixer keeps (only its state file knows them), a real mixer, a
client sending what a hostile or buggy client sends, and a small real filesystem that
fills up (a tmpfs; skipped where nothing can be mounted).

* A session path that is not Unicode text (a lone surrogate escape, ``"\\udcff"``) is a
  clear 400 before any kernel starts, with stdlib json (the default install) as with
  orjson; later sessions are created and survive ``kill -9``.
* A full disk: a kept-session create answers a clear 503 at once and shuts down the
  kernel it started; once there is room, creates are kept again. A mixer started on
  the full disk exits with a message and leaves the file as it is (not moved aside as
  corrupt): the kept sessions are back once there is room.
"""

from __future__ import annotations

import importlib.util
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.tiny_fs import fill, tiny_filesystem

from .support import topology
from .support.api import ApiClient
from .support.stack import Stack, Tokens
from .support.topology import Mixer
from .test_e2e_nothing_lost import notebook
from .test_three_backends import Server, kernel_gateway

pytestmark = pytest.mark.e2e

# Raw JSON bytes: the escape must reach the mixer as written (stdlib json decodes it).
SURROGATE_BODY = b'{"path": "\\udcff.ipynb", "type": "notebook", "kernel": {"name": "kg-python3"}}'
DECODERS = ["stdlib-json"] + (["orjson"] if importlib.util.find_spec("orjson") else [])


@pytest.fixture(scope="module")
def kg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A Kernel Gateway that lets its kernels be listed, so a test sees any orphan."""
    server = kernel_gateway(tmp_path_factory.mktemp("kg-state-faults"), uuid.uuid4().hex)
    server.process.env["KG_LIST_KERNELS"] = "True"
    server.process.start()
    try:
        yield server
    finally:
        server.process.stop()


def kg_mixer(workdir: Path, backends: Stack, tokens: Tokens, kg: Server, state_file: Path,
             *, decoder: str = "orjson") -> Mixer:
    """A mixer (prepared, not started) in front of the local server and ``kg``, whose
    sessions it keeps in ``state_file``; ``decoder`` "stdlib-json": without orjson."""
    (workdir / "kg.token").write_text(kg.token)
    config = workdir / "mixer.toml"
    config.write_text(f"""
[[backends]]
name = "kg"
display_suffix = " (Kernel Gateway)"
url = "{kg.url}/"
auth = "token"
token_file = "kg.token"
sessions = "{"mixer" if kg.standin_reason else "auto"}"
""")
    mixer = topology.mixer(workdir, local=backends.local, remote=None, token=tokens.jupyter,
                           gcloud=None, name="mixer", extra_args=[f"--config={config}"],
                           state_file=state_file)
    if decoder == "stdlib-json":  # the default install: no orjson
        blocker = workdir / "no-orjson"
        blocker.mkdir(exist_ok=True)
        (blocker / "orjson.py").write_text('raise ImportError("orjson is left out by this test")\n')
        mixer.process.env["PYTHONPATH"] = str(blocker)
    return mixer


def api_of(http: aiohttp.ClientSession, mixer: Mixer, tokens: Tokens) -> ApiClient:
    return ApiClient(http, mixer.url, auth=mixer.auth, xsrf=tokens.xsrf, name="state-faults mixer")


async def kg_kernels(http: aiohttp.ClientSession, kg: Server) -> set[str]:
    """The kernels running on the gateway, asked directly (not through the mixer)."""
    api = ApiClient(http, kg.url, auth=kg.auth, name="kg")
    return await api.kernel_ids()


async def create(api: ApiClient, path: str) -> dict[str, Any]:
    return await api.ok_json("POST", "/api/sessions", notebook(path, "kg-python3"), expect=(201,))


async def paths(api: ApiClient) -> set[str]:
    return {s["path"] for s in await api.sessions()}


async def delete_all(api: ApiClient) -> None:
    for session in await api.sessions():
        await api.delete(f"/api/sessions/{session['id']}")


@pytest.mark.parametrize("decoder", DECODERS)
async def test_a_path_that_is_not_unicode_text_is_refused_and_later_sessions_are_kept(
    decoder: str, http: aiohttp.ClientSession, backends: Stack, tokens: Tokens, kg: Server,
    tmp_path: Path,
) -> None:
    mixer = kg_mixer(tmp_path, backends, tokens, kg, tmp_path / "state" / "s.sqlite", decoder=decoder)
    api = api_of(http, mixer, tokens)
    mixer.start()
    try:
        before = await kg_kernels(http, kg)
        resp = await api.request("POST", "/api/sessions", data=SURROGATE_BODY,
                                 headers={"Content-Type": "application/json"}, timeout=60)
        assert resp.status == 400, resp.describe()
        assert "not valid JSON" in resp.json()["message"], resp.describe()
        assert await kg_kernels(http, kg) == before  # no kernel started for it: no orphan

        first = await create(api, f"a-{uuid.uuid4().hex[:6]}.ipynb")
        second = await create(api, f"b-{uuid.uuid4().hex[:6]}.ipynb")
        status = await api.ok_json("GET", "/mixer/api/status")
        assert status["state"]["problem"] is None and status["state"]["durable"], status["state"]

        mixer.restart(kill=True)  # what was kept is on disk
        assert await paths(api) == {first["path"], second["path"]}
        assert "Traceback" not in mixer.log_text(), mixer.log_text()
        await delete_all(api)
    finally:
        mixer.stop()


@pytest.fixture
def tiny_dir(tmp_path: Path) -> Iterator[Path]:
    with tiny_filesystem(tmp_path / "fs") as where:
        yield where


async def test_a_full_disk_refuses_kept_sessions_cleanly_and_keeps_the_state_file(
    http: aiohttp.ClientSession, backends: Stack, tokens: Tokens, kg: Server, tmp_path: Path,
    tiny_dir: Path,
) -> None:
    state = tiny_dir / "state" / "s.sqlite"
    mixer = kg_mixer(tmp_path, backends, tokens, kg, state)
    api = api_of(http, mixer, tokens)
    mixer.start()
    try:
        kept = await create(api, f"kept-{uuid.uuid4().hex[:6]}.ipynb")
        filler = fill(tiny_dir)
        before = await kg_kernels(http, kg)

        resp = await api.request("POST", "/api/sessions", json_body=notebook("full.ipynb", "kg-python3"),
                                 timeout=60)
        assert resp.status == 503, resp.describe()
        message = resp.json()["message"]
        assert "could not be recorded" in message and str(state) in message, message
        assert "shut down" in message, message
        assert await kg_kernels(http, kg) == before  # the kernel it started is gone again
        status = await api.ok_json("GET", "/mixer/api/status")
        # reported (the problem itself is over once nothing is left to write: the
        # undone session's record was never on disk)
        error = status["state"]["last_error"]
        assert "disk is full" in error or "disk I/O error" in error, status["state"]
        assert await paths(api) == {kept["path"]}  # the mixer goes on serving

        filler.unlink()  # room again: the writer's retry succeeds, creates are kept again
        later = await create(api, f"later-{uuid.uuid4().hex[:6]}.ipynb")
        mixer.restart(kill=True)
        assert await paths(api) == {kept["path"], later["path"]}

        # Started on a full disk: a clear exit, the file left as it is (not "corrupt").
        mixer.stop()
        original = state.read_bytes()
        filler = fill(tiny_dir)
        mixer.process.start(wait=False)
        code = mixer.process.wait_exit(timeout=60)
        log = mixer.log_text().split("===== start #")[-1]
        assert code != 0, log
        assert str(state) in log and "left as it is" in log and "Traceback" not in log, log
        assert state.read_bytes() == original
        assert not [n for n in os.listdir(state.parent) if ".corrupt-" in n]

        filler.unlink()
        mixer.start()
        assert await paths(api) == {kept["path"], later["path"]}
        await delete_all(api)
    finally:
        mixer.stop()
