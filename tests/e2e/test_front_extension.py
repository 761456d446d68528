"""A gateway-mode front with :mod:`notebook_kernels_mixer.jupyter` (issue 12 item 2).

The stock front declines JupyterLab's ``v1.kernel.websocket.jupyter.org`` offer, so
the browser's first handshake of every kernel connection fails. With the extension
the front asks the gateway (the mixer, and behind it the backend) for the protocol the
browser offers and chooses what the gateway chose:

* v1 offered → v1 end to end (binary frames); nothing offered → the legacy protocol;
* a mixer restart under an open kernel websocket: the front reconnects to the mixer
  and the browser's socket carries on, as with the stock front;
* the browser's socket closed: the front's socket to the gateway goes too.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator

import aiohttp
import pytest

from notebook_kernels_mixer.lab.topology import EXTENSION_FLAG

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
                        f"--GatewayClient.headers={headers}", EXTENSION_FLAG],
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
