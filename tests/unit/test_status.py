"""``/mixer/api/status`` and the ``/mixer/`` page, with fakes."""

from __future__ import annotations

import asyncio
import base64
import hashlib

import pytest

from tests.unit.conftest import TOKEN, Mixer
from tests.unit.conftest import two_backends as two


async def remote_status(m: Mixer) -> dict:
    status, info = await m.call("GET", "/mixer/api/status")
    assert status == 200
    return next(b for b in info["backends"] if b["name"] == "remote")


async def test_status_lists_kernels_nobody_uses_as_orphans(fakes, mixer) -> None:
    local, remote, m = await two(fakes, mixer)
    status, lone = await m.call("POST", "/api/kernels", json={"name": "remote-python3"})
    status, s = await m.call("POST", "/api/sessions",
                             json={"path": "a.ipynb", "kernel": {"name": "remote-python3"}})
    connected = remote._new_kernel("python3")
    connected["connections"] = 1
    info = await remote_status(m)
    assert [o["id"] for o in info["orphans"]] == [lone["id"]]
    assert info["orphans"][0]["seen_for_seconds"] is not None
    status, page = await m.call("GET", "/mixer/")
    assert lone["id"] in page.decode() and s["kernel"]["id"] not in page.decode()


# -- what runs where, and shutting orphans down ---------------------------------------------

async def orphans_setup(fakes, mixer):
    """remote: an orphan, a kernel a session uses, one the backend counts a client on,
    one a client is connected to through the mixer (the fake reports no connection);
    local: an orphan."""
    local, remote, m = await two(fakes, mixer)
    status, lone = await m.call("POST", "/api/kernels", json={"name": "remote-python3"})
    assert status == 201
    status, s = await m.call("POST", "/api/sessions",
                             json={"path": "a.ipynb", "kernel": {"name": "remote-python3"}})
    assert status == 201
    counted = remote._new_kernel("python3")
    counted["connections"] = 1
    relayed = remote._new_kernel("python3")
    local_lone = local._new_kernel("python3")
    ids = {"lone": lone["id"], "session": s["kernel"]["id"], "counted": counted["id"],
           "relayed": relayed["id"], "local": local_lone["id"]}
    return local, remote, m, ids


def ws_url(m: Mixer, kernel_id: str) -> str:
    return m.url.replace("http", "ws") + f"/api/kernels/{kernel_id}/channels?session_id=s1"


def deleted(fake) -> list[str]:
    return [s.path.rsplit("/", 1)[1] for s in fake.seen
            if s.method == "DELETE" and s.path.startswith("/api/kernels/")]


async def test_shutting_down_orphans_stops_exactly_the_orphans_asked_for(fakes, mixer) -> None:
    local, remote, m, ids = await orphans_setup(fakes, mixer)
    async with m.session.ws_connect(ws_url(m, ids["relayed"]), headers={"token": TOKEN}):
        info = await remote_status(m)
        assert [o["id"] for o in info["orphans"]] == [ids["lone"]]
        status, done = await m.call("POST", "/mixer/api/orphans/shutdown", json={
            "backend": "remote", "ids": [ids["lone"], ids["session"], ids["relayed"], "nope-1"]})
    assert status == 200, done
    [result] = done["backends"]
    assert result["stopped"] == [ids["lone"]]
    kept = {k["id"]: k["why"] for k in result["kept"]}
    assert set(kept) == {ids["session"], ids["relayed"], "nope-1"}
    assert "not an orphan" in kept[ids["session"]] and "not running" in kept["nope-1"]
    assert deleted(remote) == [ids["lone"]] and deleted(local) == []
    assert ids["lone"] not in remote.kernels and ids["local"] in local.kernels
    status, kernels = await m.call("GET", "/api/kernels")
    assert ids["lone"] not in {k["id"] for k in kernels}


async def test_shutting_down_every_orphan_of_one_backend_leaves_the_others(fakes, mixer) -> None:
    local, remote, m, ids = await orphans_setup(fakes, mixer)
    async with m.session.ws_connect(ws_url(m, ids["relayed"]), headers={"token": TOKEN}):
        status, done = await m.call("POST", "/mixer/api/orphans/shutdown",
                                    json={"backend": "remote"})
    assert status == 200 and done["backends"][0]["stopped"] == [ids["lone"]], done
    assert deleted(remote) == [ids["lone"]] and deleted(local) == []
    # the relayed kernel has no client now: an orphan of the remote too
    status, done = await m.call("POST", "/mixer/api/orphans/shutdown", json={})
    stopped = {b["backend"]: b["stopped"] for b in done["backends"]}
    assert stopped == {"local": [ids["local"]], "remote": [ids["relayed"]]}


@pytest.mark.parametrize("body", [
    {"backend": "nope"}, {"backend": 3}, {"backend": "remote", "ids": "x"},
    {"backend": "remote", "ids": ["../x"]}, {"ids": ["x"]},
])
async def test_a_wrong_shutdown_request_is_a_400_and_stops_nothing(fakes, mixer, body) -> None:
    local, remote, m, ids = await orphans_setup(fakes, mixer)
    status, answer = await m.call("POST", "/mixer/api/orphans/shutdown", json=body)
    assert status == 400, answer
    if body.get("backend") == "nope":
        assert "no backend named 'nope'" in answer["message"] and "local, remote" in answer["message"]
    assert deleted(remote) == [] and deleted(local) == []


@pytest.mark.parametrize("headers", [
    {"Cookie": "_xsrf=x", "X-XSRFToken": "x"},  # no token (an XSRF pair is not one)
    {"token": "wrong"},
    {"token": TOKEN, "Origin": "http://evil.example"},  # another site, token or not
    {"token": TOKEN, "Origin": "http://127.0.0.1:1"},  # another port of localhost is another site
])
async def test_a_shutdown_without_the_token_or_from_another_site_is_refused(
        fakes, mixer, headers) -> None:
    local, remote, m, ids = await orphans_setup(fakes, mixer)
    status, answer = await m.call("POST", "/mixer/api/orphans/shutdown",
                                  json={"backend": "remote"}, headers=headers)
    assert status == 403, answer
    assert deleted(remote) == [] and ids["lone"] in remote.kernels


async def test_the_page_origin_may_shut_orphans_down(fakes, mixer) -> None:
    local, remote, m, ids = await orphans_setup(fakes, mixer)
    origin = m.url  # what a browser sends from the /mixer/ page
    status, done = await m.call("POST", "/mixer/api/orphans/shutdown",
                                json={"backend": "remote", "ids": [ids["lone"]]},
                                headers={"Authorization": f"token {TOKEN}", "Origin": origin})
    assert status == 200 and done["backends"][0]["stopped"] == [ids["lone"]]


async def test_orphans_are_not_shut_down_while_their_backend_cannot_answer(fakes, mixer) -> None:
    local, remote, m, ids = await orphans_setup(fakes, mixer)
    await remote_status(m)  # last-known entries exist from here on
    remote.fail_status = 500
    status, done = await m.call("POST", "/mixer/api/orphans/shutdown", json={"backend": "remote"})
    assert status == 200
    [result] = done["backends"]
    assert result["stopped"] == [] and "cannot say now" in result["unavailable"]
    assert deleted(remote) == []


async def test_the_page_has_shutdown_buttons_and_runs_no_other_script(fakes, mixer) -> None:
    local, remote, m, ids = await orphans_setup(fakes, mixer)
    async with m.session.get(m.url + "/mixer/", headers={"token": TOKEN}) as resp:
        page = await resp.text()
        headers = resp.headers
    # three orphans (lone, relayed: no client now, local), and one button per backend
    assert page.count('class="shutdown"') == 5
    assert f'data-backend="remote" data-ids="{ids["lone"]}"' in page
    assert f'data-backend="remote" data-ids="{ids["lone"]} {ids["relayed"]}"' in page
    script = page.split("<script>", 1)[1].split("</script>", 1)[0]
    digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
    csp = headers["Content-Security-Policy"]
    assert f"script-src 'sha256-{digest}'" in csp and "frame-ancestors 'none'" in csp
    assert headers["X-Frame-Options"] == "DENY" and headers["Referrer-Policy"] == "no-referrer"
    assert "confirm(" in script  # a confirmation before anything is stopped


async def test_the_kernels_api_lists_every_kernel_with_who_uses_it(fakes, mixer) -> None:
    local, remote, m, ids = await orphans_setup(fakes, mixer)
    async with m.session.ws_connect(ws_url(m, ids["relayed"]), headers={"token": TOKEN}):
        status, answer = await m.call("GET", "/mixer/api/kernels")
    assert status == 200
    by_id = {k["id"]: k for k in answer["kernels"]}
    assert set(by_id) == set(ids.values())
    assert {k: by_id[v]["orphan"] for k, v in ids.items()} == {
        "lone": True, "session": False, "counted": False, "relayed": False, "local": True}
    assert by_id[ids["relayed"]]["connections"] == 1
    assert by_id[ids["relayed"]]["relayed_websockets"] == 1
    assert by_id[ids["lone"]]["backend"] == "remote" and by_id[ids["lone"]]["name"] == "remote-python3"
    assert by_id[ids["lone"]]["seen_for_seconds"] is not None
    assert by_id[ids["lone"]]["last_activity"] and by_id[ids["lone"]]["execution_state"] == "idle"


async def test_status_counts_kernel_hours_per_backend_since_the_start(fakes, mixer) -> None:
    local, remote, m = await two(fakes, mixer)
    status, k = await m.call("POST", "/api/kernels", json={"name": "remote-python3"})
    await asyncio.sleep(0.3)
    running = await remote_status(m)
    assert running["kernels"] == 1 and running["kernel_seconds"] >= 0.2
    status, _ = await m.call("DELETE", f"/api/kernels/{k['id']}")
    assert status == 204
    await asyncio.sleep(0.3)
    after = await remote_status(m)
    assert after["kernels"] == 0
    # the deleted kernel's lifetime is kept, and no longer grows
    assert running["kernel_seconds"] <= after["kernel_seconds"] < running["kernel_seconds"] + 0.3
    assert after["kernel_hours"] == round(after["kernel_seconds"] / 3600, 3)
    status, info = await m.call("GET", "/mixer/api/status")
    assert next(b for b in info["backends"] if b["name"] == "local")["kernel_seconds"] == 0
