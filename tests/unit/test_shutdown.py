"""SIGTERM (issue 5): in-flight requests finish, websockets get a proper close code,
and the process exits promptly."""

import asyncio
import signal
import sys
import time

import aiohttp
from aiohttp import WSMsgType

from notebook_kernels_mixer.processes import free_port
from tests.unit.conftest import TOKEN


async def test_sigterm_is_graceful(fakes) -> None:
    local = await fakes("local")
    kernel = local._new_kernel("python3")
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "notebook_kernels_mixer", f"--port={port}",
        f"--jupyter-port={local.port}", f"--jupyter-token={TOKEN}",
        stderr=asyncio.subprocess.PIPE,
    )
    base = f"http://127.0.0.1:{port}"
    headers = {"token": TOKEN}
    try:
        async with aiohttp.ClientSession() as session:
            for _ in range(100):
                try:
                    async with session.get(base + "/api/kernels", headers=headers) as r:
                        if r.status == 200:
                            break
                except aiohttp.ClientConnectionError:
                    pass
                await asyncio.sleep(0.1)
            ws = await session.ws_connect(
                base.replace("http", "ws") + f"/api/kernels/{kernel['id']}/channels",
                headers=headers,
            )
            local.delay = 1.5
            slow = asyncio.ensure_future(session.get(base + "/api/kernels", headers=headers))
            await asyncio.sleep(0.5)  # the slow request is in flight
            started = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            resp = await slow
            assert resp.status == 200 and await resp.json() != []
            msg = await ws.receive(timeout=5)
            assert msg.type is WSMsgType.CLOSE and msg.data == 1001  # "going away"
            await asyncio.wait_for(proc.wait(), 5)
            assert time.monotonic() - started < 5
            assert proc.returncode == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
