"""Issue 11 with fakes: client credentials never reach a backend, failing listings are
logged and counted, kernel id collisions, concurrent moves, the advertised default."""

from __future__ import annotations

import asyncio
import logging

from aiohttp import WSMsgType

from notebook_kernels_mixer.app import INVENTORY
from tests.unit.conftest import TOKEN, Mixer


async def two(fakes, mixer, **kwargs):
    local, remote = await fakes("local"), await fakes("remote")
    return local, remote, await mixer([("local", local), ("remote", remote)], **kwargs)


async def test_the_clients_token_reaches_no_backend(fakes, mixer) -> None:
    local, remote, m = await two(fakes, mixer)
    referer = {"Referer": f"{m.url}/lab/tree/nb.ipynb?token={TOKEN}", "Origin": m.url}
    q = f"?token={TOKEN}"
    status, k = await m.call("POST", "/api/kernels" + q, json={"name": "remote-python3"},
                             headers=m.headers(**referer))
    assert status == 201
    for path in ("/api/kernels", f"/api/kernels/{k['id']}", "/api/kernelspecs", "/api/sessions",
                 "/lab/tree/x", "/api/contents"):
        status, _ = await m.call("GET", path + q, headers={**referer, "Authorization": f"token {TOKEN}"})
        assert status in (200, 404), path
    ws_url = m.url.replace("http", "ws") + f"/api/kernels/{k['id']}/channels?session_id=s1&token={TOKEN}"
    async with m.session.ws_connect(ws_url, headers=referer) as ws:
        await ws.send_str("hi")
        assert (await ws.receive(timeout=5)).type is WSMsgType.TEXT
    seen = local.seen + remote.seen
    assert any(s.path.endswith("/channels") for s in remote.seen)
    assert any(s.path == "/lab/tree/x" for s in local.seen)
    for s in seen:
        assert TOKEN not in s.query, (s.method, s.path, s.query)
        assert TOKEN.encode() not in s.body, (s.method, s.path)
        for name, value in s.headers.items():
            assert TOKEN not in value, (s.method, s.path, name, value)
    # what is kept: the rest of the query, and a Referer reduced to the backend's origin
    channels = next(s for s in remote.seen if s.path.endswith("/channels"))
    assert channels.query == "session_id=s1"
    assert channels.headers.get("Referer") == remote.url


async def test_failing_listings_are_logged_once_and_count_as_failures(fakes, mixer, caplog) -> None:
    local, remote, m = await two(fakes, mixer)
    registry = m.app[INVENTORY]
    remote.garbage = True
    with caplog.at_level(logging.WARNING):
        for _ in range(3):
            status, _ = await m.call("GET", "/api/kernels")
            assert status == 200
    lines = [r.getMessage() for r in caplog.records
             if "listing kernels" in r.getMessage() and "'remote'" in r.getMessage()]
    assert len(lines) == 1 and "invalid JSON" in lines[0], lines
    for _ in range(50):  # the health probe that follows a failure finds garbage too
        if not registry.backends["remote"].health.up:
            break
        await asyncio.sleep(0.1)
    assert not registry.backends["remote"].health.up
    remote.garbage = False
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        for _ in range(100):
            await m.call("GET", "/api/kernels")
            if registry.backends["remote"].health.up and any(
                    "answers again" in r.getMessage() for r in caplog.records):
                break
            await asyncio.sleep(0.1)
    assert any("listing kernels: backend 'remote' answers again" in r.getMessage()
               for r in caplog.records)


async def test_a_kernel_id_on_two_backends_belongs_to_its_creator(fakes, mixer, caplog) -> None:
    local, remote, m = await two(fakes, mixer)
    status, k = await m.call("POST", "/api/kernels", json={"name": "remote-python3"})
    assert status == 201
    # the same id appears on the local backend (a chosen KERNEL_ID, a buggy backend)
    local.kernels[k["id"]] = {**remote.kernels[k["id"]]}
    with caplog.at_level(logging.WARNING):
        for _ in range(2):
            status, listed = await m.call("GET", "/api/kernels")
            assert [x["name"] for x in listed if x["id"] == k["id"]] == ["remote-python3"]
    assert sum("exists on backends" in r.getMessage() for r in caplog.records) == 1
    # a client may not choose an id the mixer already routes
    status, err = await m.call("POST", "/api/kernels", json={
        "name": "local-python3", "env": {"KERNEL_ID": k["id"]}})
    assert status == 409 and "already in use" in err["message"]
    status, _ = await m.call("DELETE", f"/api/kernels/{k['id']}")
    assert status == 204 and k["id"] not in remote.kernels and k["id"] in local.kernels


async def test_concurrent_moves_of_one_session_leave_no_orphan(fakes, mixer) -> None:
    local, remote = await fakes("local"), await fakes("remote")
    third = await fakes("third")
    m: Mixer = await mixer([("local", local), ("remote", remote), ("third", third)])
    status, s = await m.call("POST", "/api/sessions",
                             json={"path": "nb.ipynb", "kernel": {"name": "local-python3"}})
    assert status == 201
    remote.delay = third.delay = 0.2  # both moves are in flight at once
    results = await asyncio.gather(*(
        m.call("PATCH", f"/api/sessions/{s['id']}", json={"kernel": {"name": name}})
        for name in ("remote-python3", "third-python3")
    ))
    assert [status for status, _ in results] == [200, 200]
    remote.delay = third.delay = 0
    kernels = {**local.kernels, **remote.kernels, **third.kernels}
    sessions = {**local.sessions, **remote.sessions, **third.sessions}
    assert len(sessions) == 1 and len(kernels) == 1, (sessions, kernels)
    status, got = await m.call("GET", f"/api/sessions/{s['id']}")
    assert got["kernel"]["id"] in kernels


async def test_a_request_without_a_kernel_name_uses_the_advertised_default(fakes, mixer) -> None:
    local, remote, m = await two(fakes, mixer, list_timeout=0.3)
    status, specs = await m.call("GET", "/api/kernelspecs")
    assert specs["default"] == "remote-python3"
    status, k = await m.call("POST", "/api/kernels", json={})
    assert status == 201 and k["name"] == "remote-python3"
    await remote.stop()  # the listing soon advertises the local default ...
    for _ in range(60):
        status, specs = await m.call("GET", "/api/kernelspecs")
        if specs["default"] == "local-python3":
            break
        await asyncio.sleep(0.1)
    assert status == 200 and specs["default"] == "local-python3"
    status, k = await m.call("POST", "/api/kernels", json={})  # ... and starts it there
    assert status == 201 and k["name"] == "local-python3" and k["id"] in local.kernels
    status, s = await m.call("POST", "/api/sessions", json={"path": "a.ipynb"})
    assert status == 201 and s["kernel"]["name"] == "local-python3"
