"""The mixer's accept loop (listener.py): a site that serves as aiohttp's TCPSite does,
and an accept() that finds no descriptor pauses accepting instead of losing the
connections that wait."""

from __future__ import annotations

import asyncio
import errno
import socket
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from notebook_kernels_mixer import descriptors, listener
from notebook_kernels_mixer.listener import GuardedSite, Listener


async def hello(request: web.Request) -> web.Response:
    return web.Response(text="hello")


@pytest.fixture
async def runner() -> AsyncIterator[web.AppRunner]:
    app = web.Application()
    app.router.add_get("/", hello)
    runner = web.AppRunner(app)
    await runner.setup()
    yield runner
    await runner.cleanup()


async def test_a_guarded_site_serves_and_stops_like_a_tcp_site(runner: web.AppRunner) -> None:
    await GuardedSite(runner, "127.0.0.1", 0, backlog=128).start()
    (host, port), = runner.addresses
    assert host == "127.0.0.1" and port > 0
    async with aiohttp.ClientSession() as http:
        for _ in range(3):
            async with http.get(f"http://127.0.0.1:{port}/") as resp:
                assert resp.status == 200 and await resp.text() == "hello"
        await runner.cleanup()
        with pytest.raises(aiohttp.ClientConnectorError):
            async with http.get(f"http://127.0.0.1:{port}/"):
                pass


class ShortAtFirst(socket.socket):
    """A listening socket whose first three accepts find no descriptor."""

    tried = 0

    def accept(self) -> tuple[socket.socket, object]:
        self.tried += 1
        if self.tried <= 3:
            raise OSError(errno.EMFILE, "Too many open files")
        return super().accept()


async def test_an_accept_without_descriptors_pauses_and_loses_no_connection(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(descriptors, "DESCRIPTORS", descriptors.Descriptors())
    monkeypatch.setattr(listener, "PAUSE", 0.01)
    server = web.Server(hello)
    sock = ShortAtFirst(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    port = sock.getsockname()[1]
    serving = Listener(asyncio.get_running_loop(), [sock], server)
    try:
        async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/") as resp:
            assert resp.status == 200  # waited in the backlog, then accepted
    finally:
        serving.close()
        await server.shutdown()
    assert sock.tried > 3
    warnings = [r.getMessage() for r in caplog.records if "out of file descriptors" in r.getMessage()]
    assert len(warnings) == 1  # one line for the three failed accepts
    assert sock.fileno() == -1  # closed with the listener
