"""The mixer's listening sockets, with an accept loop of its own.

The event loops' accept loops have no good answer when descriptors run out: uvloop
(libuv) then accepts every connection waiting in the backlog and closes it at once
(clients see "Server disconnected"), asyncio's loop logs a traceback and stops
accepting for a second. The reserve (``descriptors``) keeps ``accept()`` from
running out while new connections come a few at a time; a burst of more at once
than the reserve (tabs reconnecting together) would still meet it, and lose them.

Here an ``accept()`` that fails for want of descriptors only pauses accepting for
``PAUSE`` seconds: the waiting connections stay in the backlog, the ones accepted
meanwhile are answered (a new websocket with a 503 that closes its connection), which
gives their descriptors back, and the next round takes more. No connection is lost,
and none waits for long.

The event loop binds the addresses (``create_server(start_serving=False)``: names,
IPv6-only sockets, address reuse, and its errors for a busy port); the mixer listens
on duplicates of those sockets and hands each accepted one to aiohttp's server
through ``loop.connect_accepted_socket``, the public way in for a socket accepted
elsewhere. Plain TCP only: the mixer serves loopback HTTP (SPEC §6).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Callable
from typing import Any

from aiohttp import web
from yarl import URL

from notebook_kernels_mixer import descriptors

log = logging.getLogger(__name__)

#: How long accepting pauses after an accept() that found no descriptor.
PAUSE = 0.05
#: Connections accepted per wake-up at most, so one burst cannot hold the loop.
BATCH = 128


class Listener(asyncio.AbstractServer):
    """Accepts on ``sockets`` (listening, non-blocking) for ``factory``, aiohttp's
    server; what a site's runner needs of a server: ``sockets`` and ``close``."""

    def __init__(self, loop: asyncio.AbstractEventLoop, sockets: list[socket.socket],
                 factory: Callable[[], asyncio.Protocol]) -> None:
        self.sockets = sockets
        self._loop = loop
        self._factory = factory
        self._closed = False
        self._resume: dict[int, asyncio.TimerHandle] = {}
        self._handing: set[asyncio.Task[Any]] = set()
        for sock in sockets:
            sock.setblocking(False)
            loop.add_reader(sock.fileno(), self._accept, sock)

    def _accept(self, sock: socket.socket) -> None:
        for _ in range(BATCH):
            try:
                conn, _ = sock.accept()
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                return
            except OSError as exc:
                if descriptors.out_of_descriptors(exc):
                    descriptors.DESCRIPTORS.exhausted()
                else:  # ENOBUFS, ENOMEM: pause as well, rather than spin on a ready socket
                    log.warning("accepting a connection failed: %s; trying again shortly", exc)
                self._pause(sock)
                return
            conn.setblocking(False)
            task = self._loop.create_task(self._hand_on(conn))
            self._handing.add(task)
            task.add_done_callback(self._handing.discard)

    async def _hand_on(self, conn: socket.socket) -> None:
        try:
            await self._loop.connect_accepted_socket(self._factory, conn)
        except OSError:  # gone already (reset before it was set up)
            conn.close()

    def _pause(self, sock: socket.socket) -> None:
        fd = sock.fileno()
        self._loop.remove_reader(fd)

        def resume() -> None:
            self._resume.pop(fd, None)
            if not self._closed:
                self._loop.add_reader(fd, self._accept, sock)

        self._resume[fd] = self._loop.call_later(PAUSE, resume)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for handle in self._resume.values():
            handle.cancel()
        for sock in self.sockets:
            self._loop.remove_reader(sock.fileno())
            sock.close()

    def get_loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    def is_serving(self) -> bool:
        return not self._closed

    async def start_serving(self) -> None:
        pass  # serving since it was made

    async def serve_forever(self) -> None:
        raise NotImplementedError

    async def wait_closed(self) -> None:
        pass  # closed by close(); its connections are aiohttp's server's to close


class GuardedSite(web.BaseSite):
    """``web.TCPSite`` (plain HTTP) with the accept loop above."""

    def __init__(self, runner: web.BaseRunner, host: str, port: int, *, backlog: int) -> None:
        super().__init__(runner, backlog=backlog)
        self._host = host
        self._port = port

    @property
    def name(self) -> str:
        return str(URL.build(scheme="http", host=self._host, port=self._port))

    async def start(self) -> None:
        await super().start()
        loop = asyncio.get_running_loop()
        bound = await loop.create_server(asyncio.Protocol, self._host, self._port,
                                         backlog=self._backlog, reuse_address=True,
                                         start_serving=False)
        sockets: list[socket.socket] = []
        try:
            for bound_socket in bound.sockets:
                sockets.append(socket.socket(fileno=os.dup(bound_socket.fileno())))
                sockets[-1].listen(self._backlog)
        except BaseException:
            for sock in sockets:
                sock.close()
            raise
        finally:
            bound.close()
            await bound.wait_closed()
        server = self._runner.server
        assert server is not None
        self._server = Listener(loop, sockets, server)
