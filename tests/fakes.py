"""The one fake Jupyter-API server, for the unit tests and the benchmark, and the
misbehaving peers real servers cannot be made to be on demand.

* ``FakeJupyter``: kernelspecs, kernels, sessions and a kernel channel that echoes every
  frame (text as text, binary as binary; the text ``close:CODE`` closes with CODE). No
  kernel runs: kernels are records. Knobs: ``delay`` (seconds added to every REST
  answer), ``fail_status`` (every REST answer has it), ``garbage`` (every REST answer is
  invalid JSON), ``token`` (required as ``Authorization: token …`` or ``Bearer …``),
  ``sessions_api`` (off: no ``/api/sessions``), ``status_api`` (``/api`` and
  ``/api/status``, as jupyter_server and unlike a Kernel Gateway), ``record`` (keep every
  request in ``seen``; the benchmark turns it off to keep the backend cheap).
  ``GET /_fake/stats`` (not counted itself) reports requests and websocket traffic.
* ``Blackhole``: accepts TCP connections and never answers (a hung or firewalled host).
* ``BrokenWebsocketBackend``: upgrades, then dies in the middle of a frame.

The unit tests start them in the test's event loop. The benchmark runs one per process
(uvloop, listening on 127.0.0.1 and ::1), from the repository root::

    python -m tests.fakes --port 9100                 # fast backend
    python -m tests.fakes --port 9100 --delay-ms 200  # slow REST answers
    python -m tests.fakes --port 9100 --blackhole     # accepts TCP, never answers
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import datetime
import hashlib
import os
import signal
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMsgType, web

KERNEL_PROTOCOL = "v1.kernel.websocket.jupyter.org"
LOOPBACK = ("127.0.0.1",)


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _new_stats() -> dict[str, int]:
    return {"requests": 0, "ws_connections": 0, "ws_open": 0, "ws_messages": 0, "ws_pings": 0}


def not_found(message: str) -> web.Response:
    return web.json_response({"message": message}, status=404)


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    query: str = ""


@dataclass
class FakeJupyter:
    """A Jupyter-API server (see the module docstring for the knobs). Subclasses
    override handlers by name (the routes call ``self.<handler>``)."""

    name: str
    specs: tuple[str, ...] = ("python3",)
    token: str | None = None
    delay: float = 0.0
    fail_status: int | None = None
    garbage: bool = False
    sessions_api: bool = True
    status_api: bool = False
    record: bool = True
    kernels: dict[str, dict[str, Any]] = field(default_factory=dict)
    sessions: dict[str, dict[str, Any]] = field(default_factory=dict)
    seen: list[Seen] = field(default_factory=list)
    stats: dict[str, int] = field(default_factory=_new_stats)
    port: int = 0
    _runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._middleware])
        app.add_routes([
            web.get("/_fake/stats", self.get_stats),
            web.get("/api/kernelspecs", self.kernelspecs),
            web.get("/api/kernelspecs/{name}", self.kernelspec),
            web.get("/kernelspecs/{name}/{res:.+}", self.resource),
            web.get("/api/kernels", self.list_kernels),
            web.post("/api/kernels", self.start_kernel),
            web.get("/api/kernels/{id}", self.get_kernel),
            web.delete("/api/kernels/{id}", self.delete_kernel),
            web.post("/api/kernels/{id}/{action}", self.kernel_action),
            web.get("/api/kernels/{id}/channels", self.channels),
            web.get("/api/sessions", self.list_sessions),
            web.post("/api/sessions", self.create_session),
            web.get("/api/sessions/{id}", self.get_session),
            web.patch("/api/sessions/{id}", self.patch_session),
            web.delete("/api/sessions/{id}", self.delete_session),
        ])
        if self.status_api:
            app.add_routes([web.get("/api", self.get_api), web.get("/api/status", self.get_status)])
        return app

    async def start(
        self, port: int = 0, hosts: Sequence[str] = LOOPBACK, backlog: int = 128
    ) -> FakeJupyter:
        """Listen on ``port`` (0: any free one) of every host in ``hosts`` that exists
        here (the first one must)."""
        self._runner = web.AppRunner(self.app(), access_log=None, handle_signals=False)
        await self._runner.setup()
        for i, host in enumerate(hosts):
            site = web.TCPSite(self._runner, host, port, backlog=backlog)
            try:
                await site.start()
            except OSError:
                if i == 0:
                    raise
                continue
            port = port or self._runner.addresses[0][1]
        self.port = port
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if request.path.startswith("/_fake/"):
            return await handler(request)
        self.stats["requests"] += 1
        if self.record:
            body = await request.read()
            self.seen.append(
                Seen(request.method, request.path, dict(request.headers), body, request.query_string)
            )
        if self.token is not None:
            auth = request.headers.get("Authorization", "")
            if auth not in (f"token {self.token}", f"Bearer {self.token}"):
                return web.json_response({"message": "Forbidden"}, status=403)
        if request.headers.get("Upgrade", "").lower() == "websocket":
            return await handler(request)
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.fail_status is not None:
            return web.json_response({"message": f"{self.name} fails"}, status=self.fail_status)
        if self.garbage:
            return web.Response(text="<html>not json", content_type="application/json")
        return await handler(request)

    # -- misc --
    async def get_stats(self, request: web.Request) -> web.Response:
        return web.json_response({**self.stats, "pid": os.getpid(), "label": self.name})

    async def get_api(self, request: web.Request) -> web.Response:
        return web.json_response({"version": "2.21.1"})

    async def get_status(self, request: web.Request) -> web.Response:
        return web.json_response({"connections": self.stats["ws_open"], "kernels": len(self.kernels),
                                  "last_activity": now(), "started": now()})

    # -- kernelspecs --
    def _spec(self, name: str) -> dict[str, Any]:
        return {
            "name": name,
            "spec": {"display_name": f"{name.title()} on {self.name}", "language": "python",
                     "argv": [], "env": {}, "metadata": {}},
            "resources": {"logo-64x64": f"/kernelspecs/{name}/logo-64x64.png"},
        }

    async def kernelspecs(self, request: web.Request) -> web.Response:
        return web.json_response(
            {"default": self.specs[0], "kernelspecs": {s: self._spec(s) for s in self.specs}}
        )

    async def kernelspec(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in self.specs:
            return not_found("no such spec")
        return web.json_response(self._spec(name))

    async def resource(self, request: web.Request) -> web.Response:
        return web.Response(body=f"{self.name}:{request.match_info['res']}".encode(),
                            content_type="image/png")

    # -- kernels --
    def _new_kernel(self, name: str) -> dict[str, Any]:
        kernel = {"id": str(uuid.uuid4()), "name": name, "last_activity": now(),
                  "execution_state": "idle", "connections": 0}
        self.kernels[kernel["id"]] = kernel
        return kernel

    async def list_kernels(self, request: web.Request) -> web.Response:
        return web.json_response(list(self.kernels.values()))

    async def start_kernel(self, request: web.Request) -> web.Response:
        body = await request.json() if await request.read() else {}
        return web.json_response(self._new_kernel(body.get("name") or self.specs[0]), status=201)

    async def get_kernel(self, request: web.Request) -> web.Response:
        kernel = self.kernels.get(request.match_info["id"])
        if kernel is None:
            return not_found("Kernel does not exist")
        return web.json_response(kernel)

    async def delete_kernel(self, request: web.Request) -> web.Response:
        if self.kernels.pop(request.match_info["id"], None) is None:
            return not_found("Kernel does not exist")
        return web.Response(status=204)

    async def kernel_action(self, request: web.Request) -> web.Response:
        kernel = self.kernels.get(request.match_info["id"])
        if kernel is None:
            return not_found("Kernel does not exist")
        if request.match_info["action"] == "interrupt":
            return web.Response(status=204)
        return web.json_response(kernel)

    async def channels(self, request: web.Request) -> web.StreamResponse:
        if request.match_info["id"] not in self.kernels:
            return not_found("Kernel does not exist")
        ws = web.WebSocketResponse(protocols=(KERNEL_PROTOCOL,), autoping=False, compress=False)
        await ws.prepare(request)
        self.stats["ws_connections"] += 1
        self.stats["ws_open"] += 1
        try:
            await self._echo(ws)
        finally:
            self.stats["ws_open"] -= 1
        return ws

    async def _echo(self, ws: web.WebSocketResponse) -> None:
        """Echo every frame until the peer closes (``close:CODE`` closes from here)."""
        stats = self.stats
        while True:
            msg = await ws.receive()
            kind = msg.type
            if kind is WSMsgType.TEXT:
                if msg.data.startswith("close:"):
                    await ws.close(code=int(msg.data[6:]), message=b"asked to")
                    return
                stats["ws_messages"] += 1
                await ws.send_str(msg.data)
            elif kind is WSMsgType.BINARY:
                stats["ws_messages"] += 1
                await ws.send_bytes(msg.data)
            elif kind is WSMsgType.PING:
                stats["ws_pings"] += 1
                await ws.pong(msg.data)
            elif kind is not WSMsgType.PONG:
                return  # close, closing, closed or error

    # -- sessions --
    async def list_sessions(self, request: web.Request) -> web.Response:
        if not self.sessions_api:
            return not_found("Not found")
        return web.json_response(list(self.sessions.values()))

    async def create_session(self, request: web.Request) -> web.Response:
        body = await request.json()
        kernel_req = body.get("kernel") or {}
        if kernel_req.get("id"):
            kernel = self.kernels[kernel_req["id"]]
        else:
            kernel = self._new_kernel(kernel_req.get("name") or self.specs[0])
        session = {"id": str(uuid.uuid4()), "path": body.get("path"), "name": body.get("name"),
                   "type": body.get("type"), "kernel": kernel}
        self.sessions[session["id"]] = session
        return web.json_response(session, status=201)

    async def get_session(self, request: web.Request) -> web.Response:
        session = self.sessions.get(request.match_info["id"])
        if session is None:
            return not_found("Session not found")
        return web.json_response(session)

    async def patch_session(self, request: web.Request) -> web.Response:
        session = self.sessions.get(request.match_info["id"])
        if session is None:
            return not_found("Session not found")
        body = await request.json()
        for key in ("path", "name", "type"):
            if key in body:
                session[key] = body[key]
        if (body.get("kernel") or {}).get("name"):
            self.kernels.pop(session["kernel"]["id"], None)
            session["kernel"] = self._new_kernel(body["kernel"]["name"])
        return web.json_response(session)

    async def delete_session(self, request: web.Request) -> web.Response:
        session = self.sessions.pop(request.match_info["id"], None)
        if session is None:
            return not_found("Session not found")
        self.kernels.pop(session["kernel"]["id"], None)
        return web.Response(status=204)


class Blackhole:
    """Accepts TCP connections and never answers (a hung or firewalled backend).
    ``requests``: the method and path of each request received (one per connection,
    as no answer ever frees a connection for the next)."""

    def __init__(self) -> None:
        self._servers: list[asyncio.base_events.Server] = []
        self._writers: set[asyncio.StreamWriter] = set()
        self.port = 0
        self.requests: list[str] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    async def _hold(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        with contextlib.suppress(Exception):
            first = await reader.readline()
            method, _, rest = first.decode("latin-1").partition(" ")
            if rest:
                self.requests.append(f"{method} {rest.split(' ')[0].split('?')[0]}")
            while await reader.read(65536):  # until the client gives up
                pass
        self._writers.discard(writer)

    async def start(self, port: int = 0, hosts: Sequence[str] = LOOPBACK, backlog: int = 128) -> Blackhole:
        for i, host in enumerate(hosts):
            try:
                server = await asyncio.start_server(self._hold, host, port, backlog=backlog)
            except OSError:
                if i == 0:
                    raise
                continue
            self._servers.append(server)
            port = port or server.sockets[0].getsockname()[1]
        self.port = port
        return self

    async def stop(self) -> None:
        for writer in list(self._writers):
            writer.close()
        for server in self._servers:
            server.close()
            await server.wait_closed()


class BrokenWebsocketBackend:
    """Completes the websocket upgrade for any path, then sends half a frame and drops
    the connection (a backend that dies mid-message)."""

    def __init__(self) -> None:
        self._server: asyncio.base_events.Server | None = None
        self.port = 0
        self.upgrades = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        key = next(
            line.split(b":", 1)[1].strip()
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"sec-websocket-key:")
        )
        accept = base64.b64encode(hashlib.sha1(key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest())
        writer.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n"
        )
        self.upgrades += 1
        await reader.read(1)  # wait for the first client frame
        writer.write(b"\x82\x7e\x10\x00" + b"x" * 100)  # 4096-byte frame, cut short
        await writer.drain()
        writer.close()

    async def start(self) -> BrokenWebsocketBackend:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


# -- as a process (the benchmark) ------------------------------------------------------------


async def serve(args: argparse.Namespace) -> None:
    """Serve until SIGTERM/SIGINT on 127.0.0.1 and ::1 with a deep accept queue (the
    benchmark opens hundreds of connections at once)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    hosts = ("127.0.0.1", "::1")
    server: FakeJupyter | Blackhole
    if args.blackhole:
        server = await Blackhole().start(args.port, hosts, backlog=4096)
        what = "blackhole"
    else:
        server = FakeJupyter(args.label, specs=("python3", "echo"), delay=args.delay_ms / 1000,
                             status_api=True, record=False)
        await server.start(args.port, hosts, backlog=4096)
        what = f"serving (delay {args.delay_ms:g} ms)"
    print(f"fake jupyter {args.label}: {what} on port {server.port}", flush=True)
    await stop.wait()
    with contextlib.suppress(Exception):
        await asyncio.wait_for(server.stop(), 3)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="A fake Jupyter-API server (tests and benchmark).")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--delay-ms", type=float, default=0.0, help="latency added to REST answers")
    parser.add_argument("--blackhole", action="store_true", help="accept TCP, never answer")
    parser.add_argument("--label", default="fake", help="name shown in logs, specs and stats")
    parser.add_argument("--no-uvloop", action="store_true")
    args = parser.parse_args(argv)
    try:
        import uvloop
    except ImportError:
        uvloop = None
    if uvloop is not None and not args.no_uvloop:
        uvloop.run(serve(args))
    else:
        asyncio.run(serve(args))


if __name__ == "__main__":
    main()
