"""Issue 10, acceptance 1 and 4: nothing lost when the remote hangs, and nothing kept
once the remote has forgotten it.

Partition under the front: the remote jupyter_server is frozen (SIGSTOP of the server
process alone: its kernels run on, its sockets accept and answer nothing, as behind a
dropped Wi-Fi or a VPN reconnect) for 30 s while a notebook is open through the
GatewayClient front. GatewayClient disposes every kernel a successful listing omits
(``GatewayMappingKernelManager.list_kernels``) and then the notebook session that
used it, so the mixer must keep listing the remote's last-known entries (SPEC §4).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest

from .helpers import WHERE, channels_path
from .support.api import ApiClient, wait_until
from .support.kernel_client import KernelConnection
from .support.topology import JupyterServer

pytestmark = pytest.mark.e2e

FREEZE_SECONDS = 30.0
POLL_EVERY = 2.0
MIXER_ANSWERS_WITHIN = 5.0  # the acceptance's bound on a merged listing during the outage
RESUME_WITHIN = 30.0


def notebook(path: str, spec: str) -> dict[str, Any]:
    return {"path": path, "name": path, "type": "notebook", "kernel": {"name": spec}}


def remote_status(status: dict[str, Any]) -> dict[str, Any]:
    return next(b for b in status["backends"] if b["name"] == "remote")


@dataclass
class Poll:
    """One listing asked during the outage: what came back and how fast."""

    who: str  # "mixer kernels", "front sessions", …
    at: float  # seconds into the outage
    elapsed: float
    status: int | None  # None: no HTTP answer (the error says why)
    ids: set[str] = field(default_factory=set)  # kernel ids, or session ids
    kernel_of: dict[str, str] = field(default_factory=dict)  # session id -> kernel id
    error: str = ""

    def __str__(self) -> str:
        got = f"{self.status}" if self.status is not None else self.error
        return f"{self.who} at {self.at:.1f}s -> {got} in {self.elapsed:.1f}s"


async def poll_listing(api: ApiClient, path: str, who: str, t0: float) -> Poll:
    started = time.monotonic()
    try:
        resp = await api.get(path, timeout=45)
    except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
        return Poll(who, started - t0, time.monotonic() - started, None, error=repr(exc))
    poll = Poll(who, started - t0, time.monotonic() - started, resp.status)
    if resp.status == 200:
        items = resp.json()
        poll.ids = {item["id"] for item in items}
        poll.kernel_of = {i["id"]: (i.get("kernel") or {}).get("id") for i in items if "kernel" in i}
    else:
        poll.error = resp.describe()[:300]
    return poll


async def watch(api: ApiClient, path: str, who: str, t0: float, until: float) -> list[Poll]:
    """``GET path`` every ``POLL_EVERY`` seconds (as JupyterLab polls) until ``until``."""
    polls = []
    while time.monotonic() < until:
        polls.append(await poll_listing(api, path, who, t0))
        await asyncio.sleep(max(0.0, POLL_EVERY - polls[-1].elapsed))
    return polls


async def stale_status(mixer_api: ApiClient, t0: float, at: float) -> dict[str, Any]:
    """The remote as ``/mixer/api/status`` shows it ``at`` seconds into the outage."""
    await asyncio.sleep(max(0.0, t0 + at - time.monotonic()))
    return remote_status(await mixer_api.ok_json("GET", "/mixer/api/status", timeout=MIXER_ANSWERS_WITHIN))


def check(polls: list[Poll], who: str, must_list: set[str], *, every: bool) -> list[str]:
    """What is wrong with the polls of ``who``: with ``every``, each must have answered
    200 in time; any 200 must list ``must_list``."""
    problems = []
    mine = [p for p in polls if p.who == who]
    ok = [p for p in mine if p.status == 200]
    if not ok:
        problems.append(f"{who}: no successful listing during the outage: {[str(p) for p in mine]}")
    for p in mine:
        if every and (p.status != 200 or p.elapsed > MIXER_ANSWERS_WITHIN):
            problems.append(f"{p} (must answer 200 within {MIXER_ANSWERS_WITHIN:g}s) {p.error}")
        elif p.status == 200 and not must_list <= p.ids:
            problems.append(f"{p}: lost {sorted(must_list - p.ids)}")
    return problems


async def outage(
    mixer_api: ApiClient, front_api: ApiClient, remote: JupyterServer, freeze_for: float
) -> tuple[list[Poll], dict[str, Any], bool]:
    """Freeze the remote for ``freeze_for`` seconds, polling the four listings all the
    while; the remote's status near the end; whether the remote still answered a
    request of its own at the end of the window (it must not: frozen all along)."""
    t0 = time.monotonic()
    until = t0 + freeze_for
    with remote.frozen():
        watchers = [
            watch(api, f"/api/{kind}", f"{api.name} {kind}", t0, until)
            for api in (mixer_api, front_api)
            for kind in ("kernels", "sessions")
        ]
        *results, status = await asyncio.gather(*watchers, stale_status(mixer_api, t0, freeze_for - 4))
        await asyncio.sleep(max(0.0, until - time.monotonic()))
        answered_at_end = await asyncio.to_thread(remote.probe)
    return [p for polls in results for p in polls], status, answered_at_end


async def test_partition_under_the_front(
    http: aiohttp.ClientSession,
    mixer_api: ApiClient,
    front_api: ApiClient,
    remote_server: JupyterServer,
    janitor,
    topology_guard,
) -> None:
    local_kernel = janitor.track((await mixer_api.start_kernel("local-python3"))["id"])
    # a notebook opened in the front: its session lives there, its kernel on the remote
    front_nb = await front_api.ok_json("POST", "/api/sessions", notebook("partition.ipynb", "remote-python3"),
                                       expect=(201,))
    kernel = janitor.track(front_nb["kernel"]["id"])
    # a client of the mixer itself (VS Code, another JupyterLab): its session is the remote's
    mixer_nb = await mixer_api.ok_json("POST", "/api/sessions", notebook("direct.ipynb", "remote-python3"),
                                       expect=(201,))
    direct_kernel = janitor.track(mixer_nb["kernel"]["id"])
    secret = uuid.uuid4().hex
    conn = await KernelConnection.open(http, front_api.ws_url(channels_path(kernel)),
                                       headers=front_api.auth(), timeout=60)
    async with conn:
        before = await conn.execute(f"secret = {secret!r}\n{WHERE}", timeout=60)
        assert before.status == "ok" and before.stdout.strip() == "remote", str(before)
        # what JupyterLab has polled before the network drops
        assert {kernel, direct_kernel, local_kernel} <= await mixer_api.kernel_ids()
        assert mixer_nb["id"] in {s["id"] for s in await mixer_api.sessions()}
        assert kernel in await front_api.kernel_ids()
        assert front_nb["id"] in {s["id"] for s in await front_api.sessions()}

        polls, status, answered_at_end = await outage(mixer_api, front_api, remote_server, FREEZE_SECONDS)

        # SIGCONT: the notebook's existing websocket runs code on the same kernel, state kept
        after = await conn.execute("print(secret)", timeout=RESUME_WITHIN)
    assert after.status == "ok" and after.stdout.strip() == secret, str(after)
    # the outage lasted the whole window: the remote answered nobody at its end
    assert not answered_at_end, "the remote answered at the end of the outage: it was not frozen"

    problems = [
        *check(polls, "mixer kernels", {kernel, direct_kernel, local_kernel}, every=True),
        *check(polls, "mixer sessions", {mixer_nb["id"]}, every=True),
        *check(polls, "front kernels", {kernel}, every=False),
        *check(polls, "front sessions", {front_nb["id"]}, every=False),
    ]
    problems += [f"{p}: session {sid} now on kernel {p.kernel_of.get(sid)}" for p in polls
                 for sid, kid in ((front_nb["id"], kernel), (mixer_nb["id"], direct_kernel))
                 if sid in p.kernel_of and p.kernel_of[sid] != kid]
    assert not problems, "\n".join(problems + ["all polls:"] + [str(p) for p in polls])
    # the outage really reached the mixer, which said so
    assert not status["reachable"], status
    assert {"kernels", "sessions"} <= set(status["stale_since"] or {}), status

    async def recovered() -> bool:
        remote = remote_status(await mixer_api.ok_json("GET", "/mixer/api/status"))
        return remote["reachable"] and not remote["stale_since"]

    await wait_until(recovered, timeout=30, what="the remote answering listings again")
    listed = {s["id"]: s["kernel"]["id"] for s in await front_api.sessions()}
    assert listed.get(front_nb["id"]) == kernel, listed
    for api, sid in ((front_api, front_nb["id"]), (mixer_api, mixer_nb["id"])):
        resp = await api.delete(f"/api/sessions/{sid}")
        assert resp.status == 204, resp.describe()


async def test_entries_created_just_before_the_outage_are_kept(
    mixer_api: ApiClient, remote_server: JupyterServer, janitor, topology_guard
) -> None:
    """A kernel and a session the mixer created on the remote (it answered 201), not
    listed yet when the remote stops answering: a client listing now must not lose
    them (JupyterLab lists right after it starts a kernel; the network may drop first)."""
    kernel = janitor.track((await mixer_api.start_kernel("remote-python3"))["id"])
    nb = await mixer_api.ok_json("POST", "/api/sessions", notebook("fresh.ipynb", "remote-python3"),
                                 expect=(201,))
    janitor.track(nb["kernel"]["id"])
    t0 = time.monotonic()
    with remote_server.frozen():
        kernels, sessions = await asyncio.gather(
            poll_listing(mixer_api, "/api/kernels", "mixer kernels", t0),
            poll_listing(mixer_api, "/api/sessions", "mixer sessions", t0),
        )
    problems = [
        *check([kernels], "mixer kernels", {kernel, nb["kernel"]["id"]}, every=True),
        *check([sessions], "mixer sessions", {nb["id"]}, every=True),
    ]
    assert not problems, "\n".join(problems)
    resp = await mixer_api.delete(f"/api/sessions/{nb['id']}")
    assert resp.status == 204, resp.describe()


# -- forgetting ---------------------------------------------------------------------------------


async def mixer_status(mixer_api: ApiClient) -> dict[str, Any]:
    return await mixer_api.ok_json("GET", "/mixer/api/status")


def orphan_ids(status: dict[str, Any]) -> set[str]:
    return {o["id"] for o in remote_status(status)["orphans"]}


async def test_kernel_deleted_on_the_remote_is_forgotten(
    mixer_api: ApiClient, remote_api: ApiClient, janitor
) -> None:
    kernel = janitor.track((await mixer_api.start_kernel("remote-python3"))["id"])
    assert kernel in await mixer_api.kernel_ids()
    # no session, no client connected: an orphan, still running (and paid for)
    assert kernel in orphan_ids(await mixer_status(mixer_api))

    resp = await remote_api.delete_kernel(kernel)  # behind the mixer's back
    assert resp.status == 204, resp.describe()
    started = time.monotonic()

    async def forgotten() -> bool:
        return kernel not in await mixer_api.kernel_ids()

    await wait_until(forgotten, timeout=20, what=f"kernel {kernel} gone from the mixer's listing")
    assert time.monotonic() - started <= 20
    status = await mixer_status(mixer_api)
    assert kernel not in orphan_ids(status)
    # ... and from the mixer's maps: it remembers no more kernels than the backends hold
    listed = await mixer_api.kernel_ids()
    memory = status["memory"]
    too_many = {k: memory[k] for k in ("kernels", "first_seen", "created") if memory[k] > len(listed)}
    assert not too_many, f"maps larger than the {len(listed)} kernels listed: {memory}"
