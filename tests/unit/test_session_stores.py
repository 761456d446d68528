"""Sessions on backends without a usable sessions API (Kernel/Enterprise Gateway):
the mixer keeps them over the backend's kernels API (resources/session_stores.py).

The fake gateway behaves as the real ones were observed to: no ``GET /api/status``,
``GET /api/sessions/{id}`` broken (500), and optionally listing forbidden (403).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from notebook_kernels_mixer import jsonutil
from notebook_kernels_mixer.app import STATE
from notebook_kernels_mixer.backends import Backend, build_backend
from notebook_kernels_mixer.backends.credentials import Credentials
from notebook_kernels_mixer.config import BackendConfig
from notebook_kernels_mixer.errors import BackendError
from notebook_kernels_mixer.resources.backend_kernels import BackendKernels
from notebook_kernels_mixer.resources.session_stores import (
    AutoSessions,
    ForwardedSessions,
    KeptSessions,
    session_store,
)
from notebook_kernels_mixer.state import MEMORY, StateStore
from tests.fakes import FakeJupyter


class FakeGateway(FakeJupyter):
    """Kernel Gateway as observed: its own sessions are unusable, listing may be forbidden."""

    list_forbidden: bool = False

    async def get_session(self, request: web.Request) -> web.Response:
        return web.json_response({"message": "Unhandled error"}, status=500)

    async def patch_session(self, request: web.Request) -> web.Response:
        return web.json_response({"message": "Unhandled error"}, status=500)

    async def list_kernels(self, request: web.Request) -> web.Response:
        if self.list_forbidden:
            return web.json_response({"reason": "Forbidden", "message": "Forbidden"}, status=403)
        return await super().list_kernels(request)

    async def list_sessions(self, request: web.Request) -> web.Response:
        if self.list_forbidden:
            return web.json_response({"reason": "Forbidden", "message": "Forbidden"}, status=403)
        return await super().list_sessions(request)


async def gateway(list_forbidden: bool = False) -> FakeGateway:
    fake = FakeGateway("kg")
    fake.list_forbidden = list_forbidden
    return await fake.start()  # type: ignore[return-value]


def nb(kernel: str) -> dict[str, Any]:
    return {"path": "work/nb.ipynb", "name": "nb.ipynb", "type": "notebook",
            "kernel": {"name": kernel}}


def store_for(config: BackendConfig, state: StateStore | None = None) -> object:
    backend = build_backend(config)
    return session_store(BackendKernels(backend, known=list), state or StateStore(MEMORY))


def test_the_configured_policy_picks_the_store() -> None:
    def store(sessions: str, auth: str = "none") -> object:
        return store_for(BackendConfig("kg", " (KG)", "http://127.0.0.1:1/", auth=auth,
                                       sessions=sessions))

    assert isinstance(store("auto"), AutoSessions)
    assert isinstance(store("mixer"), KeptSessions)
    assert isinstance(store("backend"), ForwardedSessions)
    # Google's kernel service keeps its own sessions; it is not asked
    assert isinstance(store("auto", auth="google-adc"), ForwardedSessions)


async def test_a_session_moves_onto_a_gateway_and_back(fakes, mixer) -> None:
    local = await fakes("local")
    kg = await gateway()
    try:
        m = await mixer([("local", local), ("kg", kg, {"sessions": "auto"})])
        status, s = await m.call("POST", "/api/sessions", json=nb("local-python3"))
        assert status == 201
        sid, local_kernel = s["id"], s["kernel"]["id"]

        status, moved = await m.call("PATCH", f"/api/sessions/{sid}",
                                     json={"kernel": {"name": "kg-python3"}})
        assert status == 200, moved
        assert moved["id"] == sid and moved["kernel"]["name"] == "kg-python3"
        assert moved["path"] == "work/nb.ipynb" and moved["type"] == "notebook"
        kg_kernel = moved["kernel"]["id"]
        assert kg_kernel in kg.kernels and local_kernel not in local.kernels
        assert not kg.sessions  # kept by the mixer, not by the gateway's broken API
        assert not any(s.path.startswith("/api/sessions") for s in kg.seen)

        status, got = await m.call("GET", f"/api/sessions/{sid}")
        assert status == 200 and got["kernel"]["id"] == kg_kernel
        status, listed = await m.call("GET", "/api/sessions")
        assert [(x["id"], x["kernel"]["name"]) for x in listed] == [(sid, "kg-python3")]

        # rename within the gateway: forwarded to the mixer-kept record
        status, renamed = await m.call("PATCH", f"/api/sessions/{sid}", json={"path": "b.ipynb"})
        assert status == 200 and renamed["path"] == "b.ipynb"
        assert renamed["kernel"]["id"] == kg_kernel

        # a new kernel within the gateway replaces (and shuts down) the old one
        status, again = await m.call("PATCH", f"/api/sessions/{sid}",
                                     json={"kernel": {"name": "kg-python3"}})
        assert status == 200 and again["kernel"]["id"] != kg_kernel
        assert kg_kernel not in kg.kernels and again["kernel"]["id"] in kg.kernels

        status, back = await m.call("PATCH", f"/api/sessions/{sid}",
                                    json={"kernel": {"name": "local-python3"}})
        assert status == 200 and back["id"] == sid and back["kernel"]["name"] == "local-python3"
        assert not kg.kernels  # deleting the gateway session shut its kernel down
        status, _ = await m.call("DELETE", f"/api/sessions/{sid}")
        assert status == 204 and not local.kernels
    finally:
        await kg.stop()


async def test_sessions_created_on_a_gateway_and_their_kernels(fakes, mixer) -> None:
    local = await fakes("local")
    kg = await gateway(list_forbidden=True)
    try:
        m = await mixer([("local", local), ("kg", kg, {"sessions": "mixer"})])
        status, s = await m.call("POST", "/api/sessions", json=nb("kg-python3"))
        assert status == 201 and s["kernel"]["name"] == "kg-python3"
        kernel_id = s["kernel"]["id"]
        # listing is forbidden on the gateway: the mixer lists the kernels it started
        status, kernels = await m.call("GET", "/api/kernels")
        assert status == 200 and [k["id"] for k in kernels] == [kernel_id]
        status, sessions = await m.call("GET", "/api/sessions")
        assert [x["id"] for x in sessions] == [s["id"]]
        # the kernel dies behind the mixer's back: its session is gone too
        kg.kernels.clear()
        status, sessions = await m.call("GET", "/api/sessions")
        assert status == 200 and sessions == []
        status, _ = await m.call("GET", f"/api/sessions/{s['id']}")
        assert status == 404
        status, kernels = await m.call("GET", "/api/kernels")
        assert status == 200 and kernels == []
        # a kernel the gateway refuses to start is its own error, passed on; no session kept
        kg.fail_status = 500
        status, err = await m.call("POST", "/api/sessions", json=nb("kg-python3"))
        assert status == 500 and err["message"] == "kg fails"
        kg.fail_status = None
        status, sessions = await m.call("GET", "/api/sessions")
        assert status == 200 and sessions == []
    finally:
        await kg.stop()


async def test_auto_asks_the_backend_once() -> None:
    answers = {"status": 200}
    asked = []

    async def api_status(request: web.Request) -> web.Response:
        asked.append(request.path)
        return web.json_response({}, status=answers["status"])

    app = web.Application()
    app.router.add_get("/api/status", api_status)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}/"
    try:
        for status, kind in ((200, "backend"), (404, "mixer")):
            answers["status"] = status
            backend = Backend(BackendConfig("b", "", url, sessions="auto"), Credentials())
            await backend.start()
            store = session_store(BackendKernels(backend, known=list), StateStore(MEMORY))
            assert store.kind == "not known yet"
            await store.store()  # type: ignore[attr-defined]
            await store.store()  # type: ignore[attr-defined]
            assert store.kind == kind
            await backend.close()
        assert len(asked) == 2  # once per backend
        answers["status"] = 401
        backend = Backend(BackendConfig("b", "", url, sessions="auto"), Credentials())
        await backend.start()
        store = session_store(BackendKernels(backend, known=list), StateStore(MEMORY))
        with pytest.raises(BackendError, match="cannot tell whether it keeps sessions"):
            await store.list()
        await backend.close()
    finally:
        await runner.cleanup()


# -- what cannot be recorded (issue 16 item 3) -----------------------------------------------
# A lone surrogate escape, as raw JSON bytes: stdlib json decodes it, orjson refuses it.
SURROGATE_BODY = b'{"path": "\\udcff.ipynb", "type": "notebook", "kernel": {"name": "kg-python3"}}'
DECODERS = ["stdlib-json"] + (["orjson"] if importlib.util.find_spec("orjson") else [])


@pytest.fixture(params=DECODERS)
def decoder(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """The mixer decodes JSON with stdlib json (the default install) or orjson."""
    if request.param == "stdlib-json":
        monkeypatch.setattr(jsonutil, "loads", json.loads)
        monkeypatch.setattr(jsonutil, "JSONDecodeError", json.JSONDecodeError)
    return str(request.param)


def kept_on_disk(path: Path) -> dict[str, str]:
    """id -> notebook path of the kept sessions in the state file (read-only)."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return dict(conn.execute("SELECT id, path FROM kept").fetchall())
    finally:
        conn.close()


async def test_a_path_that_is_not_unicode_text_is_refused_before_a_kernel_starts(
    fakes, mixer, decoder: str, tmp_path: Path
) -> None:
    local = await fakes("local")
    kg = await gateway()
    state_file = tmp_path / "state.sqlite"
    try:
        m = await mixer([("local", local), ("kg", kg, {"sessions": "mixer"})], state_file=str(state_file))
        headers = {**m.headers(), "Content-Type": "application/json"}
        status, err = await m.call("POST", "/api/sessions", data=SURROGATE_BODY, headers=headers)
        assert status == 400, err
        assert "not valid JSON" in err["message"], err
        assert not kg.kernels  # nothing started, nothing orphaned
        # the mixer goes on: later creates work and reach the file
        for name in ("a.ipynb", "b.ipynb"):
            status, s = await asyncio.wait_for(
                m.call("POST", "/api/sessions", json={**nb("kg-python3"), "path": name}), 60)
            assert status == 201, s
        status, listed = await m.call("GET", "/api/sessions")
        assert sorted(x["path"] for x in listed) == ["a.ipynb", "b.ipynb"]
        assert len(kg.kernels) == 2
        assert sorted(kept_on_disk(state_file).values()) == ["a.ipynb", "b.ipynb"]
        status, mixer_status = await m.call("GET", "/mixer/api/status")
        assert mixer_status["state"]["problem"] is None and mixer_status["state"]["durable"]
    finally:
        await kg.stop()


@pytest.mark.parametrize("field", ["path", "name", "type"])
async def test_session_fields_the_state_cannot_keep_are_refused(fakes, mixer, field: str) -> None:
    local = await fakes("local")
    kg = await gateway()
    try:
        m = await mixer([("local", local), ("kg", kg, {"sessions": "mixer"})])
        status, err = await m.call("POST", "/api/sessions", json={**nb("kg-python3"), field: "x" * 5000})
        assert status == 400 and f"session {field}" in err["message"], err
        assert not kg.kernels
    finally:
        await kg.stop()


@contextlib.contextmanager
def disk_full(m: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The mixer's state file refuses every write, as a full disk does."""
    writer = m.app[STATE]._writer
    monkeypatch.setattr(writer, "_write", lambda batch: sqlite3.OperationalError("database or disk is full"))
    try:
        yield
    finally:
        monkeypatch.delattr(writer, "_write")


async def test_a_kept_session_that_cannot_be_recorded_is_undone(
    fakes, mixer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    local = await fakes("local")
    kg = await gateway()
    state_file = tmp_path / "state.sqlite"
    try:
        m = await mixer([("local", local), ("kg", kg, {"sessions": "mixer"})], state_file=str(state_file))
        with disk_full(m, monkeypatch):
            # wait_for: before the fix, this create waited for the disk for ever
            status, err = await asyncio.wait_for(m.call("POST", "/api/sessions", json=nb("kg-python3")), 60)
            assert status == 503, err
            assert "could not be recorded" in err["message"] and "disk is full" in err["message"], err
            assert "shut down" in err["message"] and not kg.kernels  # no orphan kernel
            status, listed = await m.call("GET", "/api/sessions")
            assert status == 200 and listed == []
            status, mixer_status = await m.call("GET", "/mixer/api/status")
            assert "disk is full" in mixer_status["state"]["problem"], mixer_status["state"]
        status, s = await asyncio.wait_for(m.call("POST", "/api/sessions", json=nb("kg-python3")), 60)
        assert status == 201, s
        assert kept_on_disk(state_file) == {s["id"]: "work/nb.ipynb"}
        assert list(kg.kernels) == [s["kernel"]["id"]]

        # a change of kernel that cannot be recorded leaves the session as it was
        with disk_full(m, monkeypatch):
            status, err = await asyncio.wait_for(
                m.call("PATCH", f"/api/sessions/{s['id']}", json={"kernel": {"name": "kg-python3"}}), 60)
            assert status == 503 and "could not be recorded" in err["message"], err
        assert list(kg.kernels) == [s["kernel"]["id"]]  # the new one shut down, the old one kept
        status, got = await m.call("GET", f"/api/sessions/{s['id']}")
        assert status == 200 and got["kernel"]["id"] == s["kernel"]["id"]
    finally:
        await kg.stop()


async def test_a_move_that_cannot_be_recorded_leaves_the_session_where_it_was(
    fakes, mixer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    local = await fakes("local")
    kg = await gateway()
    try:
        m = await mixer([("local", local), ("kg", kg, {"sessions": "mixer"})],
                        state_file=str(tmp_path / "state.sqlite"))
        status, s = await m.call("POST", "/api/sessions", json=nb("kg-python3"))
        assert status == 201, s
        with disk_full(m, monkeypatch):
            status, err = await asyncio.wait_for(
                m.call("PATCH", f"/api/sessions/{s['id']}", json={"kernel": {"name": "local-python3"}}), 60)
        assert status == 503 and "stays on 'kg'" in err["message"], err
        assert not local.kernels and not local.sessions  # its copy on local was deleted
        assert list(kg.kernels) == [s["kernel"]["id"]]
        status, got = await m.call("GET", f"/api/sessions/{s['id']}")
        assert status == 200 and got["kernel"]["name"] == "kg-python3", got
        status, moved = await m.call("PATCH", f"/api/sessions/{s['id']}",
                                     json={"kernel": {"name": "local-python3"}})
        assert status == 200 and moved["id"] == s["id"] and moved["kernel"]["name"] == "local-python3"
    finally:
        await kg.stop()


# -- backends' listings (issue 16 item 3) ----------------------------------------------------
async def test_sessions_listed_with_ids_the_mixer_cannot_keep_are_left_out(
    fakes, mixer, decoder: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    local = await fakes("local")
    m = await mixer([("local", local)], state_file=str(tmp_path / "state.sqlite"))
    status, good = await m.call("POST", "/api/sessions", json=nb("local-python3"))
    assert status == 201
    bad_kernel = {"id": "../evil", "name": "python3"}
    for sid, kernel in (("../x", good["kernel"]), ("y" * 200, good["kernel"]),
                        ("s-bad-kernel", bad_kernel), ("\udcff", good["kernel"])):
        local.sessions[sid] = {"id": sid, "path": "p", "name": "p", "type": "notebook", "kernel": kernel}
    for _ in range(2):
        status, listed = await m.call("GET", "/api/sessions")
        assert status == 200, listed
        if decoder == "orjson":
            break  # orjson refuses the whole answer (a lone surrogate is not JSON): that is base.py's
        assert [x["id"] for x in listed] == [good["id"], "s-bad-kernel"], listed
    store = m.app[STATE]
    await store.flush()
    assert set(store.kernels) == {good["kernel"]["id"]} and "../evil" not in store.kernels
    assert store.status()["problem"] is None
    if decoder != "orjson":
        warned = [r.getMessage() for r in caplog.records if "without a valid id" in r.getMessage()]
        assert len(warned) == 1 and "'local'" in warned[0], warned  # once, not at every listing


@pytest.mark.parametrize("sessions", ["backend", "mixer"])
async def test_a_session_created_without_a_name_is_named_after_its_file(
    fakes, mixer, sessions: str
) -> None:
    """jupyter_server (as the fake) would keep ``"name": null``, which api.yaml and
    JupyterLab's model check refuse; the mixer names it as it names its kept ones."""
    local = await fakes("local")
    remote = await fakes("remote")
    m = await mixer([("local", local), ("remote", remote, {"sessions": sessions})])
    body = {"path": "work/nb.ipynb", "type": "notebook", "kernel": {"name": "remote-python3"}}
    status, created = await m.call("POST", "/api/sessions", json=body)
    assert status == 201 and created["name"] == "nb.ipynb", created
    status, listed = await m.call("GET", "/api/sessions")
    assert [s["name"] for s in listed] == ["nb.ipynb"]
    legacy = {"notebook": {"path": "b.ipynb", "name": "legacy name"}, "path": "b.ipynb",
              "type": "notebook", "kernel": {"name": "remote-python3"}}
    status, created = await m.call("POST", "/api/sessions", json=legacy)
    assert status == 201 and created["name"] == "legacy name", created
