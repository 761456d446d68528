"""Listings through a mixer with fakes (``inventory.listings``, ``resources.fanout``):
last-known entries while a backend cannot answer, the retention window, health that
does not flap, forgetting, single flight, the listing window, failures logged once,
and what is retained bounded. The real-process versions (SIGSTOP, kill -9) are in
tests/e2e/test_e2e_nothing_lost.py."""

from __future__ import annotations

import asyncio
import logging

import pytest

from notebook_kernels_mixer.app import INVENTORY
from notebook_kernels_mixer.inventory import Listing
from notebook_kernels_mixer.inventory.listings import Listings
from tests.unit.conftest import Mixer
from tests.unit.conftest import two_backends as two


async def remote_status(m: Mixer) -> dict:
    status, info = await m.call("GET", "/mixer/api/status")
    assert status == 200
    return next(b for b in info["backends"] if b["name"] == "remote")


async def test_a_backend_that_cannot_answer_keeps_its_last_known_entries(fakes, mixer) -> None:
    local, remote, m = await two(fakes, mixer, list_timeout=0.3, request_timeout=0.5)
    status, s = await m.call("POST", "/api/sessions",
                             json={"path": "nb.ipynb", "kernel": {"name": "remote-python3"}})
    assert status == 201
    local._new_kernel("python3")
    status, before = await m.call("GET", "/api/kernels")
    assert status == 200 and len(before) == 2
    status, sessions = await m.call("GET", "/api/sessions")  # clients poll both
    assert status == 200 and len(sessions) == 1
    for failure in ({"fail_status": 500}, {"garbage": True}, {"delay": 2.0}):
        for key, value in failure.items():
            setattr(remote, key, value)
        for _ in range(4):  # past the failures that take the backend down
            status, kernels = await m.call("GET", "/api/kernels")
            assert status == 200, failure
            assert sorted(k["id"] for k in kernels) == sorted(k["id"] for k in before), failure
            status, sessions = await m.call("GET", "/api/sessions")
            assert status == 200 and [x["id"] for x in sessions] == [s["id"]], failure
        info = await remote_status(m)
        assert set(info["stale_since"]) >= {"kernels", "sessions"}, info
        assert info["orphans"] is None  # unknown while only last-known models are there
        # Requests that need the backend still fail clearly, naming it: the backend's
        # own 500 handed on as it is, marked with its name; or the mixer's 502/503/504
        # whose message names it. Never the mixer's own "internal error".
        status, headers, err = await answer(m, f"/api/kernels/{s['kernel']['id']}")
        if "fail_status" in failure:
            assert status == 500 and err == {"message": "remote fails"}, (status, err)
            assert headers.get("X-Mixer-Backend") == "remote" and "X-Mixer-Error" not in headers
        else:
            assert status == (502 if "garbage" in failure else 504), (status, err)
            assert headers.get("X-Mixer-Error") == "mixer", headers
            assert err["message"].startswith("backend 'remote': "), err
        remote.fail_status, remote.garbage, remote.delay = None, False, 0.0
        await answering_again(m)
    status, kernels = await m.call("GET", "/api/kernels")
    assert len(kernels) == 2


async def answer(m: Mixer, path: str) -> tuple[int, dict, object]:
    """Status, headers and JSON body of a GET through the mixer."""
    async with m.session.get(m.url + path, headers=m.headers()) as r:
        return r.status, dict(r.headers), await r.json(content_type=None)


async def answering_again(m: Mixer) -> None:
    """Until the health probe has brought the remote back and listings are fresh."""
    for _ in range(100):
        info = await remote_status(m)
        if info["reachable"] and info["stale_since"] is None:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"the remote did not come back: {info}")


async def test_last_known_entries_end_with_the_retention_window(fakes, mixer) -> None:
    local, remote, m = await two(fakes, mixer, list_timeout=0.3, retention=0.5)
    remote._new_kernel("python3")
    status, kernels = await m.call("GET", "/api/kernels")
    assert len(kernels) == 1
    await remote.stop()
    status, kernels = await m.call("GET", "/api/kernels")
    assert status == 200 and len(kernels) == 1  # last-known
    await asyncio.sleep(0.7)
    status, kernels = await m.call("GET", "/api/kernels")
    assert status == 200 and kernels == []  # the window is over


async def test_one_slow_kernel_start_does_not_hide_the_backends_kernels(fakes, mixer) -> None:
    local, remote, m = await two(fakes, mixer, list_timeout=0.3, request_timeout=0.5)
    kept = remote._new_kernel("python3")
    await m.call("GET", "/api/kernels")
    remote.delay = 1.0  # slower than the request timeout and the listing timeout
    status, err = await m.call("POST", "/api/kernels", json={"name": "remote-python3"})
    assert status == 504 and "remote" in err["message"]
    assert m.app[INVENTORY].backends["remote"].health.up  # one slow call is not "down"
    status, kernels = await m.call("GET", "/api/kernels")  # still slow: last-known
    assert status == 200 and kept["id"] in [k["id"] for k in kernels]


async def test_gone_kernels_and_sessions_are_forgotten_everywhere(fakes, mixer) -> None:
    local, remote, m = await two(fakes, mixer)
    registry = m.app[INVENTORY]
    for i in range(20):
        status, s = await m.call("POST", "/api/sessions",
                                 json={"path": f"{i}.ipynb", "kernel": {"name": "remote-python3"}})
        assert status == 201
    status, s = await m.call("PATCH", f"/api/sessions/{s['id']}",
                             json={"kernel": {"name": "local-python3"}})
    assert status == 200
    assert registry.sizes()["kernels"] == 20 and registry.sizes()["sessions"] == 20
    # everything deleted behind the mixer's back
    remote.sessions.clear()
    remote.kernels.clear()
    local.sessions.clear()
    local.kernels.clear()
    for path in ("/api/kernels", "/api/sessions"):
        status, listed = await m.call("GET", path)
        assert status == 200 and listed == []
    sizes = registry.sizes()
    assert sizes["kernels"] == 0 and sizes["sessions"] == 0 and sizes["session_aliases"] == 0, sizes
    assert sizes["timestamps"] == 0 and sizes["first_seen"] == 0, sizes


async def test_concurrent_listings_share_one_fan_out(fakes, mixer) -> None:
    local, remote, m = await two(fakes, mixer)
    remote.delay = 0.2
    before = sum(1 for s in remote.seen if s.path == "/api/kernels")
    results = await asyncio.gather(*(m.call("GET", "/api/kernels") for _ in range(10)))
    assert all(status == 200 for status, _ in results)
    asked = sum(1 for s in remote.seen if s.path == "/api/kernels") - before
    assert asked <= 2, f"10 concurrent listings asked the backend {asked} times"


async def test_what_the_mixer_started_is_last_known_before_any_listing(fakes, mixer) -> None:
    local, remote, m = await two(fakes, mixer, list_timeout=0.3)
    status, k = await m.call("POST", "/api/kernels", json={"name": "remote-python3"})
    assert status == 201
    status, s = await m.call("POST", "/api/sessions",
                             json={"path": "a.ipynb", "kernel": {"name": "remote-python3"}})
    assert status == 201
    await remote.stop()  # before anybody listed anything
    status, kernels = await m.call("GET", "/api/kernels")
    assert status == 200 and {k["id"], s["kernel"]["id"]} <= {x["id"] for x in kernels}
    status, sessions = await m.call("GET", "/api/sessions")
    assert status == 200 and [x["id"] for x in sessions] == [s["id"]]


async def test_a_recent_listing_is_reused_until_something_changes(fakes, mixer) -> None:
    local, remote, m = await two(fakes, mixer, listing_window=30.0)

    def asked() -> int:
        return sum(1 for s in remote.seen if s.path == "/api/kernels" and s.method == "GET")

    await m.call("GET", "/api/kernels")
    before = asked()
    for _ in range(5):
        status, kernels = await m.call("GET", "/api/kernels")
        assert status == 200 and kernels == []
    assert asked() == before  # answered again within the window
    status, k = await m.call("POST", "/api/kernels", json={"name": "remote-python3"})
    status, kernels = await m.call("GET", "/api/kernels")  # the client's own change: at once
    assert [x["id"] for x in kernels] == [k["id"]] and asked() == before + 1
    status, _ = await m.call("DELETE", f"/api/kernels/{k['id']}")
    status, kernels = await m.call("GET", "/api/kernels")
    assert kernels == [] and asked() == before + 2


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


# -- what is retained is bounded ------------------------------------------------------------

BOUND = 5


@pytest.fixture(autouse=True)
def small_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Listings, "max_retained", BOUND)


async def kernel_ids(m: Mixer) -> list[str]:
    status, kernels = await m.call("GET", "/api/kernels")
    assert status == 200
    return sorted(k["id"] for k in kernels)


async def test_a_listing_over_the_bound_is_served_but_not_kept(fakes, mixer) -> None:
    local, remote = await fakes("local"), await fakes("remote")
    m: Mixer = await mixer([("local", local), ("remote", remote)], list_timeout=0.3)
    for _ in range(BOUND):
        remote._new_kernel("python3")
    assert len(await kernel_ids(m)) == BOUND
    remote.fail_status = 500
    assert len(await kernel_ids(m)) == BOUND  # within the bound: last-known entries stand in
    remote.fail_status = None
    remote._new_kernel("python3")
    for _ in range(100):  # until its health probe has it answering again
        if len(await kernel_ids(m)) == BOUND + 1:
            break
        await asyncio.sleep(0.1)
    assert len(await kernel_ids(m)) == BOUND + 1  # answered now: served whole
    remote.fail_status = 500
    assert await kernel_ids(m) == []  # but not kept: nothing stands in for the remote
    last = m.app[INVENTORY].listings._last
    assert all(len(value) <= BOUND for _, value in last.values())


async def test_amend_does_not_grow_last_known_entries_past_the_bound(fakes, mixer) -> None:
    local, remote = await fakes("local"), await fakes("remote")
    m: Mixer = await mixer([("local", local), ("remote", remote)])
    assert await kernel_ids(m) == []
    for _ in range(BOUND + 3):  # each start is amended into the last-known entries
        status, _ = await m.call("POST", "/api/kernels", json={"name": "remote-python3"})
        assert status == 201
    last = m.app[INVENTORY].listings._last
    assert len(last[(Listing.KERNELS, "remote")][1]) == BOUND
