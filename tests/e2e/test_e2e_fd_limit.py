"""No fd ceiling: a mixer started under a soft open-files limit of 256 (macOS's
default) raises it to the hard limit, so 300 kernel websockets (600 descriptors in
the mixer) all open and echo, and REST keeps answering."""

from __future__ import annotations

import asyncio
import resource
from pathlib import Path
from types import SimpleNamespace

import aiohttp
import pytest

from tests.fakes import FakeJupyter

from .support import topology

pytestmark = pytest.mark.e2e

SOCKETS = 300
SOFT = 256


def _limits(pid: int) -> tuple[int, int]:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            soft, hard = line.split()[3:5]
            return int(soft), int(hard)
    raise AssertionError("no open-files line")


async def test_a_low_soft_limit_is_raised_and_300_websockets_work(tmp_path: Path) -> None:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard != resource.RLIM_INFINITY and hard < 2 * SOCKETS + 100:
        pytest.skip(f"the hard open-files limit here ({hard}) is too low for the test")
    fake = await FakeJupyter("local", record=False).start()
    mixer = topology.mixer(tmp_path, local=SimpleNamespace(port=fake.port),  # type: ignore[arg-type]
                           remote=None, token="T", gcloud=None)
    # the mixer starts with the soft limit at 256, as a shell with `ulimit -S -n 256` would
    mixer.process.argv = ["sh", "-c", f'ulimit -S -n {SOFT} && exec "$@"', "sh", *mixer.process.argv]
    try:
        await asyncio.to_thread(mixer.start)
        pid = mixer.process.pid
        assert pid is not None
        kernel = fake._new_kernel("python3")
        url = f"ws://127.0.0.1:{mixer.port}/api/kernels/{kernel['id']}/channels"
        # limit=0: the client's pool would otherwise stop at 100 connections
        async with aiohttp.ClientSession(headers={"token": "T"},
                                         connector=aiohttp.TCPConnector(limit=0)) as http:
            sockets = []
            try:
                for i in range(SOCKETS):
                    sockets.append(await asyncio.wait_for(
                        http.ws_connect(f"{url}?session_id=s{i}"), 30))
                for i, ws in enumerate(sockets):
                    await ws.send_str(f"m{i}")
                for i, ws in enumerate(sockets):
                    assert (await ws.receive(timeout=30)).data == f"m{i}"
                async with http.get(f"http://127.0.0.1:{mixer.port}/api/kernels") as resp:
                    assert resp.status == 200  # REST answers beside them
            finally:
                await asyncio.gather(*(ws.close() for ws in sockets), return_exceptions=True)
        assert _limits(pid)[0] > 2 * SOCKETS  # raised at start, and said so
        assert "open files: up to" in mixer.log_text()
    finally:
        await asyncio.to_thread(mixer.stop)
        await fake.stop()
