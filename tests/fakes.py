"""Small in-memory fakes for unit tests of edge cases real servers can't produce on
demand: a Jupyter-API backend with injectable delay, failures and garbage, and a
"blackhole" that accepts TCP connections and never answers."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import uuid
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMsgType, web


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    query: str = ""


@dataclass
class FakeJupyter:
    """A Jupyter-API server in the test's event loop. Knobs: ``delay`` (seconds added
    to every REST answer), ``fail_status`` (answer every REST call with it),
    ``garbage`` (answer every REST call with invalid JSON), ``token`` (required as
    ``Authorization: token …`` or ``Bearer …``)."""

    name: str
    specs: tuple[str, ...] = ("python3",)
    token: str | None = None
    delay: float = 0.0
    fail_status: int | None = None
    garbage: bool = False
    sessions_api: bool = True
    kernels: dict[str, dict[str, Any]] = field(default_factory=dict)
    sessions: dict[str, dict[str, Any]] = field(default_factory=dict)
    seen: list[Seen] = field(default_factory=list)
    port: int = 0
    _runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    async def start(self, port: int = 0) -> FakeJupyter:
        app = web.Application(middlewares=[self._middleware])
        app.add_routes([
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
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port)
        await site.start()
        self.port = self._runner.addresses[0][1]
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
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
            return web.json_response({"message": "no such spec"}, status=404)
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
            return web.json_response({"message": "Kernel does not exist"}, status=404)
        return web.json_response(kernel)

    async def delete_kernel(self, request: web.Request) -> web.Response:
        if self.kernels.pop(request.match_info["id"], None) is None:
            return web.json_response({"message": "Kernel does not exist"}, status=404)
        return web.Response(status=204)

    async def kernel_action(self, request: web.Request) -> web.Response:
        kernel = self.kernels.get(request.match_info["id"])
        if kernel is None:
            return web.json_response({"message": "Kernel does not exist"}, status=404)
        if request.match_info["action"] == "interrupt":
            return web.Response(status=204)
        return web.json_response(kernel)

    async def channels(self, request: web.Request) -> web.StreamResponse:
        if request.match_info["id"] not in self.kernels:
            return web.json_response({"message": "Kernel does not exist"}, status=404)
        ws = web.WebSocketResponse(protocols=("v1.kernel.websocket.jupyter.org",), autoping=False)
        await ws.prepare(request)
        async for msg in ws:
            if msg.type is WSMsgType.TEXT:
                if msg.data.startswith("close:"):
                    await ws.close(code=int(msg.data[6:]), message=b"asked to")
                    break
                await ws.send_str(msg.data)
            elif msg.type is WSMsgType.BINARY:
                await ws.send_bytes(msg.data)
            elif msg.type is WSMsgType.PING:
                await ws.pong(msg.data)
        return ws

    # -- sessions --
    async def list_sessions(self, request: web.Request) -> web.Response:
        if not self.sessions_api:
            return web.json_response({"message": "Not found"}, status=404)
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
            return web.json_response({"message": "Session not found"}, status=404)
        return web.json_response(session)

    async def patch_session(self, request: web.Request) -> web.Response:
        session = self.sessions.get(request.match_info["id"])
        if session is None:
            return web.json_response({"message": "Session not found"}, status=404)
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
            return web.json_response({"message": "Session not found"}, status=404)
        self.kernels.pop(session["kernel"]["id"], None)
        return web.Response(status=204)


class Blackhole:
    """Accepts TCP connections and never answers (a hung or firewalled backend)."""

    def __init__(self) -> None:
        self._server: asyncio.base_events.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    async def start(self) -> Blackhole:
        async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self._writers.append(writer)
            with contextlib.suppress(Exception):
                await reader.read()  # until the client gives up

        self._server = await asyncio.start_server(hold, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        for writer in self._writers:
            writer.close()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


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

    async def start(self) -> BrokenWebsocketBackend:
        import base64
        import hashlib

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            head = await reader.readuntil(b"\r\n\r\n")
            key = next(
                line.split(b":", 1)[1].strip()
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"sec-websocket-key:")
            )
            accept = base64.b64encode(
                hashlib.sha1(key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest()
            )
            writer.write(
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n"
            )
            self.upgrades += 1
            await reader.read(1)  # wait for the first client frame
            writer.write(b"\x82\x7e\x10\x00" + b"x" * 100)  # 4096-byte frame, cut short
            await writer.drain()
            writer.close()

        self._server = await asyncio.start_server(handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
