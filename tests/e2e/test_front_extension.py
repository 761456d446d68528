"""A gateway-mode front with :mod:`notebook_kernels_mixer.jupyter` (issue 12 item 2).

The stock front declines JupyterLab's ``v1.kernel.websocket.jupyter.org`` offer, so
the browser's first handshake of every kernel connection fails. With the extension
the front asks the gateway (the mixer, and behind it the backend) for the protocol the
browser offers and chooses what the gateway chose:

* v1 offered → v1 end to end (binary frames); nothing offered → the legacy protocol;
* a mixer restart under an open kernel websocket: the front reconnects to the mixer
  and the browser's socket carries on, as with the stock front;
* the browser's socket closed: the front's socket to the gateway goes too.

Its session manager (``CarryingSessionManager``, what ``mixer lab`` configures) asks
the gateway to carry a notebook's state when a session changes to a kernel started
for it, before the old kernel is shut down; against a fake gateway whose
``/mixer/api/carry`` answers as each test says, nothing it answers (or fails to
answer) fails the change; and against the real mixer without ``--carry-variables`` a
change works as before.
"""

from __future__ import annotations

import asyncio
import json
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from notebook_kernels_mixer.lab.topology import EXTENSION_FLAG, SESSION_MANAGER_FLAG
from notebook_kernels_mixer.processes import gateway_headers

from ..fakes import FakeJupyter
from .support import topology
from .support.api import DEFAULT_TIMEOUT, ApiClient
from .support.kernel_client import V1_PROTOCOL, KernelConnection
from .support.stack import Stack
from .support.topology import JupyterServer

pytestmark = pytest.mark.e2e

WHERE = 'import os; print(os.environ["MIXER_TEST_WHERE"])'


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, JupyterServer]]:
    """local + remote + mixer, and a jupyter_server front with the extension."""
    workdir = tmp_path_factory.mktemp("front-extension")
    with Stack(workdir) as stack:
        headers = json.dumps(stack.mixer_headers())
        front = topology.jupyter_server(
            "front", workdir, where="front", token=stack.tokens.front,
            extra_args=[f"--GatewayClient.url=http://[::1]:{stack.mixer.port}/",
                        f"--GatewayClient.headers={headers}", EXTENSION_FLAG, SESSION_MANAGER_FLAG],
        )  # fmt: skip
        front.start()
        try:
            yield stack, front
        finally:
            front.stop()


@pytest.fixture
async def front(stack: tuple[Stack, JupyterServer]) -> AsyncIterator[ApiClient]:
    server = stack[1]
    async with aiohttp.ClientSession(timeout=DEFAULT_TIMEOUT, trust_env=False) as http:
        yield ApiClient(http, server.url, auth=server.auth, name="front")


async def open_socket(front: ApiClient, kernel_id: str, protocol: str) -> KernelConnection:
    url = front.ws_url(f"/api/kernels/{kernel_id}/channels")
    return await KernelConnection.open(front.session, url, headers=front.auth(), protocol=protocol)


@pytest.mark.parametrize("protocol", ["v1", "legacy"])
@pytest.mark.parametrize("where", ["local", "remote"])
async def test_the_front_speaks_the_protocol_the_client_offers(
    front: ApiClient, where: str, protocol: str
) -> None:
    kernel = await front.start_kernel(f"{where}-python3")
    try:
        async with await open_socket(front, kernel["id"], protocol) as conn:
            assert conn.negotiated == (V1_PROTOCOL if protocol == "v1" else None)
            result = await conn.execute(WHERE)
            assert result.status == "ok" and result.stdout.strip() == where, result
            # v1 frames are binary; legacy frames are text (no buffers here)
            assert conn.frame_types == ({"BINARY"} if protocol == "v1" else {"TEXT"})
    finally:
        await front.delete_kernel(kernel["id"])


async def test_a_mixer_restart_keeps_the_clients_kernel_websocket(
    front: ApiClient, stack: tuple[Stack, JupyterServer]
) -> None:
    kernel = await front.start_kernel("remote-python3")
    try:
        async with await open_socket(front, kernel["id"], "v1") as conn:
            assert (await conn.execute("x = 41")).status == "ok"
            await asyncio.to_thread(stack[0].mixer.restart)
            # the front reconnects (GatewayClient's retry interval: 1 s, then 2 s, ...)
            result = await conn.execute("print(x + 1)", timeout=60)
            assert result.status == "ok" and result.stdout.strip() == "42", result
            assert not conn.ws.closed
    finally:
        await front.delete_kernel(kernel["id"])


async def test_the_front_closes_its_gateway_socket_when_the_client_goes(
    front: ApiClient, stack: tuple[Stack, JupyterServer]
) -> None:
    local = stack[0].local
    backend = ApiClient(front.session, local.url, auth=local.auth, name="local")
    kernel = await front.start_kernel("local-python3")

    async def connections() -> int:
        return int((await backend.ok_json("GET", f"/api/kernels/{kernel['id']}"))["connections"])

    async def wait_connections(expected: int) -> None:
        for _ in range(150):
            if await connections() == expected:
                return
            await asyncio.sleep(0.1)
        raise AssertionError(f"the backend counts {await connections()} connections, not {expected}")

    try:
        async with await open_socket(front, kernel["id"], "v1") as conn:
            assert (await conn.execute("1")).status == "ok"
            await wait_connections(1)  # front → mixer → backend
        await wait_connections(0)  # the client went: so did every hop behind the front
    finally:
        await front.delete_kernel(kernel["id"])


# -- kernel changes that carry the state (CarryingSessionManager) -------------------------------

#: The front's carry_timeout here: a carry answer later than this is given up.
CARRY_TIMEOUT = 3.0
GATEWAY_TOKEN = uuid.uuid4().hex
REPORT = {"outcome": "ok", "reason": None, "carried": [{"name": "x", "type": "int", "bytes": 5}],
          "skipped": {}, "bytes": 5, "seconds": 0.1}  # fmt: skip


@dataclass
class FakeCarryMixer(FakeJupyter):
    """A gateway with the kernels API and ``POST /mixer/api/carry``, answered after
    ``carry_delay`` seconds with ``carry_answer`` (status, JSON or raw bytes). ``events``:
    what happened, in order (carry asked/answered, kernels deleted); ``carries``: each
    carry's body and headers (names in lower case)."""

    carry_answer: tuple[int, Any] = (200, {"enabled": False})
    carry_delay: float = 0.0
    carries: list[tuple[dict[str, Any], dict[str, str]]] = field(default_factory=list)
    events: list[str] = field(default_factory=list)

    def app(self) -> web.Application:
        app = super().app()
        app.router.add_post("/mixer/api/carry", self.carry)
        return app

    async def carry(self, request: web.Request) -> web.Response:
        self.carries.append((await request.json(), {k.lower(): v for k, v in request.headers.items()}))
        self.events.append("carry asked")
        await asyncio.sleep(self.carry_delay)
        self.events.append("carry answered")
        status, answer = self.carry_answer
        if isinstance(answer, bytes):
            return web.Response(status=status, body=answer, content_type="application/json")
        return web.json_response(answer, status=status)

    async def delete_kernel(self, request: web.Request) -> web.Response:
        self.events.append(f"delete {request.match_info['id']}")
        return await super().delete_kernel(request)


class LoopThread:
    """An event loop of its own in a thread, serving the fake gateway while the front
    (another process) and other tests' loops come and go."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="fake-mixer", daemon=True)
        self.thread.start()

    def run(self, coro: Any, timeout: float = 30) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(30)
        self.loop.close()


@pytest.fixture(scope="module")
def fake_gateway_front(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[FakeCarryMixer, JupyterServer]]:
    """A fake mixer (its own thread) and a jupyter_server front with the extension and
    the carrying session manager, using it as its gateway."""
    workdir: Path = tmp_path_factory.mktemp("front-carry")
    thread = LoopThread()
    fake = FakeCarryMixer("mixer", specs=("python3", "other"))
    thread.run(fake.start())
    front = topology.jupyter_server(
        "front", workdir, where="front", token="front-token",
        gateway_url=fake.url, gateway=gateway_headers(GATEWAY_TOKEN, "XSRF"),
        extra_args=[EXTENSION_FLAG, SESSION_MANAGER_FLAG,
                    f"--CarryingSessionManager.carry_timeout={CARRY_TIMEOUT}"],
    )  # fmt: skip
    try:
        front.start()
        try:
            yield fake, front
        finally:
            front.stop()
    finally:
        thread.run(fake.stop(), timeout=CARRY_TIMEOUT + 60)
        thread.close()


@pytest.fixture
async def carrying_front(
    fake_gateway_front: tuple[FakeCarryMixer, JupyterServer],
) -> AsyncIterator[tuple[FakeCarryMixer, ApiClient]]:
    fake, server = fake_gateway_front
    fake.carry_answer, fake.carry_delay = (200, {"enabled": False}), 0.0
    fake.carries.clear()
    fake.events.clear()
    async with aiohttp.ClientSession(timeout=DEFAULT_TIMEOUT, trust_env=False) as http:
        client = ApiClient(http, server.url, auth=server.auth, name="front")
        yield fake, client
        for session in await client.sessions():
            await client.delete(f"/api/sessions/{session['id']}")
        for kernel in await client.kernels():
            await client.delete_kernel(kernel["id"])


async def new_session(front: ApiClient, path: str, kernel: dict[str, str]) -> dict[str, Any]:
    body = {"path": path, "name": path, "type": "notebook", "kernel": kernel}
    return await front.ok_json("POST", "/api/sessions", body, expect=(201,))


async def change_kernel(front: ApiClient, session_id: str, kernel: dict[str, str]) -> dict[str, Any]:
    return await front.ok_json("PATCH", f"/api/sessions/{session_id}", {"kernel": kernel})


@pytest.mark.parametrize("delay", [0.0, 1.0])
async def test_a_kernel_change_carries_the_state_before_the_old_kernel_goes(
    carrying_front: tuple[FakeCarryMixer, ApiClient], delay: float
) -> None:
    fake, front = carrying_front
    fake.carry_answer = (200, {"enabled": True, "carried": True, "report": REPORT})
    fake.carry_delay = delay
    session = await new_session(front, "carry.ipynb", {"name": "python3"})
    old = session["kernel"]["id"]
    assert fake.carries == []  # a new session starts empty: nothing to carry

    changed = await change_kernel(front, session["id"], {"name": "other"})
    new = changed["kernel"]["id"]
    assert changed["id"] == session["id"] and new != old and changed["kernel"]["name"] == "other"
    [(asked, headers)] = fake.carries
    assert asked == {"source_kernel": old, "target_kernel": new}
    # GatewayClient's own headers: the mixer's token and its XSRF pair
    assert headers.get("token") == GATEWAY_TOKEN and headers.get("x-xsrftoken") == "XSRF"
    assert "_xsrf=XSRF" in headers.get("cookie", "")
    # the old kernel was shut down only once the carry had answered
    assert fake.events == ["carry asked", "carry answered", f"delete {old}"], fake.events
    assert await front.kernel_ids() == {new}


@pytest.mark.parametrize(
    "answer",
    [
        (200, {"enabled": False}),
        (200, {"enabled": True, "carried": False, "reason": "same backend"}),
        (404, {"message": "no such kernel"}),
        (500, {"message": "mixer fails"}),
        (200, b"<html>not json"),
        "no answer in time",
    ],
    ids=["carry-off", "same-backend", "404", "500", "garbage", "timeout"],
)
async def test_a_kernel_change_completes_whatever_the_carry_answers(
    carrying_front: tuple[FakeCarryMixer, ApiClient], answer: Any
) -> None:
    fake, front = carrying_front
    if answer == "no answer in time":  # later than the front waits, then an answer anyway
        fake.carry_delay, fake.carry_answer = CARRY_TIMEOUT + 3, (200, {"enabled": False})
    else:
        fake.carry_answer = answer
    session = await new_session(front, "any.ipynb", {"name": "python3"})
    old = session["kernel"]["id"]
    changed = await change_kernel(front, session["id"], {"name": "other"})
    new = changed["kernel"]["id"]
    assert new != old and changed["kernel"]["name"] == "other"
    assert [c[0] for c in fake.carries] == [{"source_kernel": old, "target_kernel": new}]
    assert f"delete {old}" in fake.events and f"delete {new}" not in fake.events
    if answer == "no answer in time":  # the front gave up at its carry_timeout, not later
        assert "carry answered" not in fake.events[: fake.events.index(f"delete {old}")], fake.events
    assert await front.kernel_ids() == {new}
    sessions = await front.sessions()
    assert [(s["id"], s["kernel"]["id"]) for s in sessions] == [(session["id"], new)]


async def test_a_change_to_a_running_kernel_keeps_that_kernels_state(
    carrying_front: tuple[FakeCarryMixer, ApiClient],
) -> None:
    fake, front = carrying_front
    fake.carry_answer = (200, {"enabled": True, "carried": True, "report": REPORT})
    session = await new_session(front, "first.ipynb", {"name": "python3"})
    running = await front.start_kernel("other")
    changed = await change_kernel(front, session["id"], {"id": running["id"]})
    assert changed["kernel"]["id"] == running["id"]
    assert fake.carries == []  # nothing overwrites the variables of a kernel that already ran
    assert f"delete {session['kernel']['id']}" in fake.events


async def test_a_session_deleted_during_the_carry_leaves_no_kernel_behind(
    carrying_front: tuple[FakeCarryMixer, ApiClient],
) -> None:
    fake, front = carrying_front
    fake.carry_delay = 2.0
    session = await new_session(front, "gone.ipynb", {"name": "python3"})
    change = asyncio.ensure_future(
        front.patch(f"/api/sessions/{session['id']}", {"kernel": {"name": "other"}})
    )
    for _ in range(100):  # the carry has begun: the new kernel is running
        if fake.carries:
            break
        await asyncio.sleep(0.05)
    assert fake.carries, "no carry asked"
    new = fake.carries[0][0]["target_kernel"]
    deleted = await front.delete(f"/api/sessions/{session['id']}")
    assert deleted.status == 204, deleted.describe()
    answer = await change
    assert answer.status == 404, answer.describe()
    assert f"delete {new}" in fake.events
    assert await front.kernel_ids() == set()


async def test_the_fronts_log_holds_no_gateway_token(
    carrying_front: tuple[FakeCarryMixer, ApiClient],
    fake_gateway_front: tuple[FakeCarryMixer, JupyterServer],
) -> None:
    _, front = carrying_front
    session = await new_session(front, "log.ipynb", {"name": "python3"})
    await change_kernel(front, session["id"], {"name": "other"})
    log = fake_gateway_front[1].process.log_text()
    # jupyter_server logs the environment it was given with each kernel start
    assert log.count("GatewayKernelManager started kernel") >= 2, log[-3000:]
    assert GATEWAY_TOKEN not in log


async def test_a_kernel_change_through_the_mixer_without_carry_starts_an_empty_kernel(
    front: ApiClient,
) -> None:
    session = await new_session(front, "plain.ipynb", {"name": "local-python3"})
    try:
        async with await open_socket(front, session["kernel"]["id"], "v1") as conn:
            assert (await conn.execute("x = 41")).status == "ok"
        changed = await change_kernel(front, session["id"], {"name": "remote-python3"})
        assert changed["kernel"]["name"] == "remote-python3"
        assert changed["kernel"]["id"] != session["kernel"]["id"]
        async with await open_socket(front, changed["kernel"]["id"], "v1") as conn:
            result = await conn.execute(f"{WHERE}; print('x' in globals())")
            assert result.status == "ok" and result.stdout.split() == ["remote", "False"], result
    finally:
        await front.delete(f"/api/sessions/{session['id']}")
