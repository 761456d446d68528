"""TCP_NODELAY on kernel websockets (issue 12 item 1), read from the servers' own sockets.

Nagle's algorithm on a kernel websocket holds the second small message of a reply
until the client's delayed ACK (~40 ms a cell). :mod:`notebook_kernels_mixer.jupyter`
switches it off; these tests read the option from the accepted socket inside each
server process (``support.tcp_sockets``: pidfd_getfd + getsockopt), never a timing.

* a stock jupyter_server leaves Nagle on, the same server with the extension does not
  (so the check can tell the two apart);
* every server ``mixer lab`` starts (local, demo remote, front) has it set on the kernel
  websocket it accepted, and so do both legs of each hop behind the front: front →
  mixer, the mixer's accepted socket, and mixer → backend.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from notebook_kernels_mixer.lab.topology import EXTENSION_FLAG

from .support import topology
from .support.api import DEFAULT_TIMEOUT, ApiClient
from .support.kernel_client import KernelConnection
from .support.lab_run import STATUS_RE, Lab, cmdline, environ, lab
from .support.tcp_sockets import Connection, accepted, connections

pytestmark = pytest.mark.e2e


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=DEFAULT_TIMEOUT, trust_env=False) as session:
        yield session


async def open_kernel_socket(client: ApiClient, http: aiohttp.ClientSession, spec: str) -> KernelConnection:
    """A kernel of ``spec`` through ``client`` and its websocket, used once (``1+1``) so
    every hop behind it is connected."""
    kernel = await client.start_kernel(spec)
    conn = await KernelConnection.open(
        http, client.ws_url(f"/api/kernels/{kernel['id']}/channels"), headers=client.auth(), protocol="v1"
    )
    result = await conn.execute("1+1")
    assert result.status == "ok", result
    return conn


def client_port(conn: KernelConnection) -> int:
    return int(conn.ws.get_extra_info("sockname")[1])


@pytest.mark.parametrize("with_extension", [False, True], ids=["stock", "extension"])
async def test_a_jupyter_server_sets_nodelay_on_its_kernel_websocket_only_with_the_extension(
    tmp_path: Path, http: aiohttp.ClientSession, with_extension: bool
) -> None:
    args = [EXTENSION_FLAG] if with_extension else []
    server = topology.jupyter_server("solo", tmp_path, where="solo", token="t0ken", extra_args=args)
    server.start()
    try:
        client = ApiClient(http, server.url, auth=server.auth, name="solo")
        conn = await open_kernel_socket(client, http, "python3")
        async with conn:
            socket = accepted(server.process.pid, server.port, client_port(conn))
            assert socket.nodelay() is with_extension
    finally:
        server.stop()


def _port_of(pid: int) -> int:
    match = re.search(r"--port=(\d+)", cmdline(pid))
    assert match, cmdline(pid)
    return int(match.group(1))


def _only(pids: list[int], what: str) -> int:
    assert len(pids) == 1, f"{what}: {pids}"
    return pids[0]


async def _check_backend(run: Lab, http: aiohttp.ClientSession, where: str) -> None:
    """The backend server ``where`` of the lab, reached directly with its own token."""
    pid = _only(run.children(where, "-m jupyter_server "), where)
    port, token = _port_of(pid), environ(pid)["JUPYTER_TOKEN"]
    client = ApiClient(http, f"http://127.0.0.1:{port}", auth=lambda: {"Authorization": f"token {token}"})
    async with await open_kernel_socket(client, http, "python3") as conn:
        assert accepted(pid, port, client_port(conn)).nodelay(), f"{where}: Nagle on its kernel websocket"


def _new(before: list[Connection], after: list[Connection], remote_port: int) -> list[Connection]:
    known = {(c.local_port, c.remote_port) for c in before}
    return [c for c in after if c.remote_port == remote_port and (c.local_port, c.remote_port) not in known]


async def test_every_server_mixer_lab_starts_sets_nodelay_on_kernel_websockets(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    with lab(tmp_path, "--demo-remote") as run:
        match = await asyncio.to_thread(run.wait_url)
        front_port, front_token = int(match.group(1)), match.group(2)
        status = STATUS_RE.search(run.stdout())
        assert status, run.stdout()
        mixer_port = int(status.group(1))
        for where in ("local", "remote"):
            await _check_backend(run, http, where)

        front_pid = _only(run.children(command="-m jupyterlab "), "front")
        mixer_pid = _only(run.children(command="-m notebook_kernels_mixer "), "mixer")
        demo_port = _port_of(_only(run.children("remote", "-m jupyter_server "), "demo"))
        front = ApiClient(http, f"http://127.0.0.1:{front_port}",
                          auth=lambda: {"Authorization": f"token {front_token}"}, name="front")  # fmt: skip
        kernel = await front.start_kernel("remote-python3")
        front_before, mixer_before = connections(front_pid), connections(mixer_pid)
        conn = await KernelConnection.open(
            http, front.ws_url(f"/api/kernels/{kernel['id']}/channels"), headers=front.auth(), protocol="v1"
        )
        async with conn:
            assert (await conn.execute("1+1")).status == "ok"
            assert accepted(front_pid, front_port, client_port(conn)).nodelay(), "front: browser leg"
            upstream = _new(front_before, connections(front_pid), mixer_port)
            assert upstream, "the front holds no new connection to the mixer"
            assert all(c.nodelay() for c in upstream), "front → mixer leg"
            for leg in upstream:
                assert accepted(mixer_pid, mixer_port, leg.local_port).nodelay(), "mixer: front leg"
            to_backend = _new(mixer_before, connections(mixer_pid), demo_port)
            assert to_backend, "the mixer holds no new connection to the demo remote"
            assert all(c.nodelay() for c in to_backend), "mixer → backend leg"
