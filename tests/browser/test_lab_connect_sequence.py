"""The kernel websocket sequence JupyterLab performs on every kernel connection through a
gateway-mode front, without the browser, repeated so that a race shows.

JupyterLab 4 first opens ``/api/kernels/{id}/channels?session_id=S`` offering the
``v1.kernel.websocket.jupyter.org`` subprotocol. A front in gateway mode accepts the
upgrade without choosing it (legacy only, jupyter_server PR #1311), so Chromium drops
that socket at once and JupyterLab reconnects straight away, same ``session_id``,
without subprotocols. The front has already started its upstream connection for the
first socket and cannot take it back (tornado's connect future cannot be cancelled), so
the mixer sees two connections of one kernel session a few milliseconds apart. If both
reach the backend, jupyter_server gives both the same ZMQ identity and may route the
replies to the abandoned one: in the browser the kernel then stays "Unknown" forever.
This test is what the user needs: after the drop, the retry gets its replies, every time.
"""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest

from ..e2e.support.kernel_client import KernelConnection
from .conftest import Topology

pytestmark = pytest.mark.browser

ROUNDS = 5
WHERE = 'import os; print(os.environ["MIXER_TEST_WHERE"])'


@pytest.mark.parametrize(("spec", "where"), [("remote-python3", "remote"), ("local-python3", "local")])
async def test_dropped_first_socket_then_retry_same_session(
    lab_topology: Topology, spec: str, where: str
) -> None:
    front = lab_topology.front
    headers = front.auth()
    ws_base = front.url.replace("http://", "ws://", 1)
    failures: list[str] = []
    timings: list[float] = []
    async with aiohttp.ClientSession(
        cookie_jar=aiohttp.DummyCookieJar(), trust_env=False,
        timeout=aiohttp.ClientTimeout(total=60),
    ) as http:  # fmt: skip
        for round_ in range(ROUNDS):
            # a fresh kernel each round, as a freshly opened notebook has
            async with http.post(front.url + "/api/kernels", json={"name": spec}, headers=headers) as resp:
                assert resp.status == 201, await resp.text()
                kernel_id = (await resp.json())["id"]
            try:
                url = f"{ws_base}/api/kernels/{kernel_id}/channels"
                first = await KernelConnection.open(http, url, headers=headers, protocol="v1")
                # the front does not choose v1: Chromium would fail this socket here
                assert first.negotiated is None, first.negotiated
                await first.close()
                started = time.monotonic()
                retry = await KernelConnection.open(
                    http, url, headers=headers, protocol="legacy", session_id=first.session_id
                )
                async with retry:
                    try:
                        result = await retry.execute(WHERE, timeout=12)
                    except (AssertionError, asyncio.TimeoutError) as e:
                        failures.append(f"round {round_}, kernel {kernel_id}: {e}")
                        continue
                timings.append(time.monotonic() - started)
                assert result.status == "ok", str(result)
                assert result.stdout.strip() == where, str(result)
            finally:
                async with http.delete(f"{front.url}/api/kernels/{kernel_id}", headers=headers):
                    pass
    assert not failures, (
        f"{len(failures)} of {ROUNDS} kernel connections never got an answer after "
        "JupyterLab's subprotocol fallback:\n" + "\n".join(failures)
    )
    assert max(timings) < 15, timings
