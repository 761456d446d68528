"""Routing of kernels and sessions to their owners, and the cross-backend switch."""

import asyncio

from aiohttp import web

from tests.fakes import FakeJupyter
from tests.unit.conftest import Mixer
from tests.unit.conftest import two_backends as two


async def test_kernel_lifecycle_is_routed_by_prefix_and_id(fakes, mixer) -> None:
    local, remote, m = await two(fakes, mixer)
    env = {"KERNEL_LAUNCH_TIMEOUT": "40", "KERNEL_WORKING_DIR": "/x"}
    status, k = await m.call("POST", "/api/kernels", json={"name": "remote-python3", "env": env})
    assert status == 201 and k["name"] == "remote-python3"
    assert k["id"] in remote.kernels and not local.kernels
    sent = next(s for s in remote.seen if s.method == "POST")
    assert b'"name":"python3"' in sent.body and b"KERNEL_WORKING_DIR" in sent.body
    # the backend's last_activity format is kept as is (GatewayClient parses it)
    assert k["last_activity"] == remote.kernels[k["id"]]["last_activity"]
    status, got = await m.call("GET", f"/api/kernels/{k['id']}")
    assert status == 200 and got["name"] == "remote-python3"
    status, _ = await m.call("POST", f"/api/kernels/{k['id']}/interrupt", json={})
    assert status == 204
    status, restarted = await m.call("POST", f"/api/kernels/{k['id']}/restart", json={})
    assert status == 200 and restarted["name"] == "remote-python3"
    status, listed = await m.call("GET", "/api/kernels")
    assert [x["id"] for x in listed] == [k["id"]]
    status, _ = await m.call("DELETE", f"/api/kernels/{k['id']}")
    assert status == 204 and not remote.kernels
    status, _ = await m.call("GET", f"/api/kernels/{k['id']}")
    assert status == 404


async def test_kernel_without_name_goes_to_default_backend(fakes, mixer) -> None:
    local, _remote, m = await two(fakes, mixer, default="local")
    status, k = await m.call("POST", "/api/kernels", json={})
    assert status == 201 and k["name"] == "local-python3" and k["id"] in local.kernels


async def test_restarted_mixer_finds_existing_kernels(fakes, mixer) -> None:
    local, remote, _ = await two(fakes, mixer)
    kernel = remote._new_kernel("python3")
    fresh = await mixer([("local", local), ("remote", remote)])  # knows no ids yet
    status, got = await fresh.call("GET", f"/api/kernels/{kernel['id']}")
    assert status == 200 and got["name"] == "remote-python3"


async def test_session_switch_keeps_id_and_moves_kernel(fakes, mixer) -> None:
    local, remote, m = await two(fakes, mixer)
    body = {"path": "nb.ipynb", "name": "nb.ipynb", "type": "notebook",
            "kernel": {"name": "local-python3"}}
    status, s = await m.call("POST", "/api/sessions", json=body)
    assert status == 201 and s["kernel"]["name"] == "local-python3"
    sid, local_kernel = s["id"], s["kernel"]["id"]
    status, moved = await m.call("PATCH", f"/api/sessions/{sid}",
                                 json={"kernel": {"name": "remote-python3"}})
    assert status == 200
    assert moved["id"] == sid
    assert moved["kernel"]["name"] == "remote-python3"
    assert moved["path"] == "nb.ipynb"
    assert not local.sessions and local_kernel not in local.kernels  # old one deleted
    assert moved["kernel"]["id"] in remote.kernels
    status, listed = await m.call("GET", "/api/sessions")
    assert [(x["id"], x["kernel"]["name"]) for x in listed] == [(sid, "remote-python3")]
    status, got = await m.call("GET", f"/api/sessions/{sid}")
    assert status == 200 and got["id"] == sid
    # a PATCH within the backend is forwarded (rename)
    status, renamed = await m.call("PATCH", f"/api/sessions/{sid}", json={"path": "new.ipynb"})
    assert status == 200 and renamed["path"] == "new.ipynb" and renamed["id"] == sid
    # and back again
    status, back = await m.call("PATCH", f"/api/sessions/{sid}",
                                json={"kernel": {"name": "local-python3"}})
    assert status == 200 and back["id"] == sid and back["kernel"]["name"] == "local-python3"
    assert back["path"] == "new.ipynb" and not remote.sessions
    status, _ = await m.call("DELETE", f"/api/sessions/{sid}")
    assert status == 204 and not local.sessions
    status, _ = await m.call("GET", f"/api/sessions/{sid}")
    assert status == 404


async def test_failed_switch_loses_nothing(fakes, mixer) -> None:
    local, remote, m = await two(fakes, mixer)
    status, s = await m.call("POST", "/api/sessions",
                             json={"path": "a.ipynb", "kernel": {"name": "local-python3"}})
    remote.fail_status = 500
    status, err = await m.call("PATCH", f"/api/sessions/{s['id']}",
                               json={"kernel": {"name": "remote-python3"}})
    assert status == 500
    assert list(local.sessions) == [s["id"]]  # untouched
    assert s["kernel"]["id"] in local.kernels
    remote.fail_status = None
    await remote.stop()
    status, err = await m.call("PATCH", f"/api/sessions/{s['id']}",
                               json={"kernel": {"name": "remote-python3"}})
    assert status in (502, 503) and "remote" in err["message"]
    assert list(local.sessions) == [s["id"]]


async def test_backend_errors_are_marked_as_theirs(fakes, mixer) -> None:
    _local, remote, m = await two(fakes, mixer)
    remote.fail_status = 500
    async with m.session.post(m.url + "/api/kernels", headers=m.headers(),
                              json={"name": "remote-python3"}) as resp:
        assert resp.status == 500
        assert resp.headers["X-Mixer-Backend"] == "remote"
        assert "X-Mixer-Error" not in resp.headers
    async with m.session.post(m.url + "/api/kernels", headers=m.headers(),
                              json={"name": "zzz-python3"}) as resp:
        assert resp.status == 400 and resp.headers["X-Mixer-Error"] == "mixer"


async def test_failures_are_clear_and_isolated(fakes, mixer, blackhole) -> None:
    local = await fakes("local")
    liar = await fakes("liar", garbage=True)
    m: Mixer = await mixer(
        [("local", local), ("liar", liar), ("hole", blackhole.url), ("gone", "http://127.0.0.1:9/")],
        default="local", request_timeout=0.5, list_timeout=0.3,
    )
    for _ in range(2):
        status, kernels = await m.call("GET", "/api/kernels")
        assert status == 200 and kernels == []
        status, specs = await m.call("GET", "/api/kernelspecs")
        assert status == 200 and list(specs["kernelspecs"]) == ["local-python3"]
    cases = {"liar": (502, "invalid JSON"), "hole": (504, "no answer"),
             "gone": (503, "cannot connect")}
    for name, (code, cause) in cases.items():
        status, err = await m.call("POST", "/api/kernels", json={"name": f"{name}-python3"})
        assert status == code, (name, err)
        assert f"'{name}'" in err["message"] and cause in err["message"]
    status, _k = await m.call("POST", "/api/kernels", json={"name": "local-python3"})
    assert status == 201


async def test_all_backends_down_is_an_error(mixer) -> None:
    m = await mixer([("local", "http://127.0.0.1:9/")], list_timeout=0.3)
    status, err = await m.call("GET", "/api/kernels")
    assert status == 503 and "no backend answered" in err["message"]


async def test_backend_comes_back(fakes, mixer) -> None:
    import asyncio

    local, remote = await fakes("local"), await fakes("remote")
    port = remote.port
    m = await mixer([("local", local), ("remote", remote)], list_timeout=0.5)
    await remote.stop()
    status, specs = await m.call("GET", "/api/kernelspecs")
    status, specs = await m.call("GET", "/api/kernelspecs")
    assert status == 200 and list(specs["kernelspecs"]) == ["local-python3"]
    await remote.start(port)
    for _ in range(100):
        status, specs = await m.call("GET", "/api/kernelspecs")
        if "remote-python3" in specs["kernelspecs"]:
            break
        await asyncio.sleep(0.1)
    assert "remote-python3" in specs["kernelspecs"]
    assert specs["default"] == "remote-python3"


async def test_listing_older_than_a_move_does_not_undo_it(fakes, mixer) -> None:
    # JupyterLab polls /api/sessions while the user switches kernels (issue 5 soak). The
    # race is made, not hoped for: local's answer to the listing is taken (the session
    # still on local) and held until the move has completed, then delivered.
    import asyncio

    class HeldListing(FakeJupyter):
        """Takes its first sessions listing at once and answers it when released."""

        taken: asyncio.Event
        release: asyncio.Event
        snapshot: list

        async def list_sessions(self, request):
            if self.release.is_set():
                return await super().list_sessions(request)
            self.snapshot = [dict(x) for x in self.sessions.values()]
            self.taken.set()
            await asyncio.wait_for(self.release.wait(), 30)
            return web.json_response(self.snapshot)

    local = HeldListing("local")
    local.taken, local.release, local.snapshot = asyncio.Event(), asyncio.Event(), []
    await local.start()
    try:
        remote = await fakes("remote")
        # a listing timeout far beyond the test: the held answer is waited for, not replaced
        m = await mixer([("local", local), ("remote", remote)], list_timeout=60.0)
        status, s = await m.call("POST", "/api/sessions",
                                 json={"path": "a.ipynb", "kernel": {"name": "local-python3"}})
        assert status == 201
        listing = asyncio.ensure_future(m.call("GET", "/api/sessions"))
        await asyncio.wait_for(local.taken.wait(), 10)
        assert [x["id"] for x in local.snapshot] == [s["id"]]  # the old answer has it on local
        status, moved = await m.call("PATCH", f"/api/sessions/{s['id']}",
                                     json={"kernel": {"name": "remote-python3"}})
        assert status == 200 and moved["kernel"]["name"] == "remote-python3"
        assert not listing.done()  # the race: the listing is still waiting for local
        local.release.set()
        status, listed = await asyncio.wait_for(listing, 10)
        assert status == 200
        # the stale copy on local is left out (it would move the notebook back)
        assert [x["kernel"]["name"] for x in listed if x["id"] == s["id"]] in ([], ["remote-python3"])
        status, got = await m.call("GET", f"/api/sessions/{s['id']}")
        assert status == 200 and got["kernel"]["name"] == "remote-python3"
        status, listed = await m.call("GET", "/api/sessions")
        assert status == 200
        assert [(x["id"], x["kernel"]["name"]) for x in listed] == [(s["id"], "remote-python3")]
    finally:
        local.release.set()
        await local.stop()


async def test_move_keeps_empty_fields_and_null_kernel_is_400(fakes, mixer) -> None:
    local, remote, m = await two(fakes, mixer)
    status, s = await m.call("POST", "/api/sessions", json={
        "path": "a.ipynb", "name": "", "type": "notebook", "kernel": {"name": "local-python3"}})
    status, moved = await m.call("PATCH", f"/api/sessions/{s['id']}",
                                 json={"kernel": {"name": "remote-python3"}})
    assert status == 200 and moved["name"] == ""
    status, err = await m.call("POST", "/api/sessions", json={"path": "b", "kernel": None})
    assert status == 400 and "'kernel'" in err["message"]


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


async def test_a_listing_prefixes_string_names_only_and_keeps_every_other_field(fakes, mixer) -> None:
    local, remote, m = await two(fakes, mixer)
    local.kernels["named"] = {"id": "named", "name": "python3", "extra": {"n": [1]}}
    local.kernels["nameless"] = {"id": "nameless", "execution_state": "idle"}
    local.kernels["odd"] = {"id": "odd", "name": 5}
    remote.kernels["null"] = {"id": "null", "name": None}
    for _ in range(3):  # listed again and again: prefixed once each time
        status, listed = await m.call("GET", "/api/kernels")
        assert status == 200 and listed == [
            {"id": "named", "name": "local-python3", "extra": {"n": [1]}},
            {"id": "nameless", "execution_state": "idle"}, {"id": "odd", "name": 5},
            {"id": "null", "name": None},
        ], listed
