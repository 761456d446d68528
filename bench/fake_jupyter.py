"""A minimal, fast Jupyter-API server for benchmarks and tests.

It answers the parts of the Jupyter REST API the mixer multiplexes, with models shaped
like jupyter_server's, and its kernel channel websocket echoes every frame (text as
text, binary as binary). No kernel runs: "kernels" are just records. Any
authentication is accepted.

    python bench/fake_jupyter.py --port 9100                 # fast backend
    python bench/fake_jupyter.py --port 9100 --delay-ms 200  # slow REST answers
    python bench/fake_jupyter.py --port 9100 --blackhole     # accepts TCP, never answers

``GET /_fake/stats`` (not counted itself) reports how many REST requests, websocket
connections and websocket messages the server has seen, and its pid.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import sys
import uuid
from datetime import datetime, timezone

from aiohttp import WSMsgType, web

TIME_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"
KERNEL_PROTOCOL = "v1.kernel.websocket.jupyter.org"
# 1x1 transparent PNG, served as every kernelspec resource.
PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6360000002000100ff5f0ee80000000049454e44ae426082"
)

log = logging.getLogger("fake_jupyter")


def now() -> str:
    return datetime.now(timezone.utc).strftime(TIME_FORMAT)


def make_spec(name: str, display_name: str, language: str = "python") -> dict:
    return {
        "name": name,
        "spec": {
            "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            "env": {},
            "display_name": display_name,
            "language": language,
            "interrupt_mode": "signal",
            "metadata": {"debugger": True},
        },
        "resources": {
            "logo-32x32": f"/kernelspecs/{name}/logo-32x32.png",
            "logo-64x64": f"/kernelspecs/{name}/logo-64x64.png",
        },
    }


class FakeJupyter:
    def __init__(self, *, specs: int = 2, delay_ms: float = 0.0, label: str = "") -> None:
        all_specs = [
            make_spec("python3", "Python 3 (ipykernel)"),
            make_spec("echo", "Echo", language="text"),
        ]
        self.specs = {s["name"]: s for s in all_specs[: max(1, min(specs, 2))]}
        self.default = next(iter(self.specs))
        self.delay = delay_ms / 1000.0
        self.label = label
        self.kernels: dict[str, dict] = {}
        self.sessions: dict[str, dict] = {}
        self.stats = {"requests": 0, "ws_connections": 0, "ws_open": 0, "ws_messages": 0}

    # -- plumbing ------------------------------------------------------------------

    @web.middleware
    async def middleware(self, request: web.Request, handler):
        path = request.path
        if path.startswith("/_fake/"):
            return await handler(request)
        self.stats["requests"] += 1
        if self.delay and not path.endswith("/channels"):
            await asyncio.sleep(self.delay)
        return await handler(request)

    @staticmethod
    def json(data: object, status: int = 200) -> web.Response:
        return web.Response(body=json.dumps(data).encode(), status=status, content_type="application/json")

    @staticmethod
    def error(status: int, message: str) -> web.Response:
        return FakeJupyter.json({"message": message, "reason": None}, status)

    async def body(self, request: web.Request) -> dict:
        if not request.can_read_body:
            return {}
        try:
            data = await request.json()
        except ValueError:
            raise web.HTTPBadRequest(text="invalid JSON") from None
        return data if isinstance(data, dict) else {}

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self.middleware], client_max_size=64 * 1024 * 1024)
        r = app.router
        r.add_get("/_fake/stats", self.get_stats)
        r.add_get("/api", self.get_api)
        r.add_get("/api/status", self.get_status)
        r.add_get("/api/kernelspecs", self.list_specs)
        r.add_get("/api/kernelspecs/{name}", self.get_spec)
        r.add_get("/kernelspecs/{name}/{resource}", self.get_resource)
        r.add_get("/api/kernels", self.list_kernels)
        r.add_post("/api/kernels", self.start_kernel)
        r.add_get("/api/kernels/{id}", self.get_kernel)
        r.add_delete("/api/kernels/{id}", self.delete_kernel)
        r.add_post("/api/kernels/{id}/interrupt", self.interrupt_kernel)
        r.add_post("/api/kernels/{id}/restart", self.restart_kernel)
        r.add_get("/api/kernels/{id}/channels", self.channels)
        r.add_get("/api/sessions", self.list_sessions)
        r.add_post("/api/sessions", self.create_session)
        r.add_get("/api/sessions/{id}", self.get_session)
        r.add_patch("/api/sessions/{id}", self.patch_session)
        r.add_delete("/api/sessions/{id}", self.delete_session)
        return app

    # -- misc ----------------------------------------------------------------------

    async def get_stats(self, request: web.Request) -> web.Response:
        return self.json({**self.stats, "pid": os.getpid(), "label": self.label})

    async def get_api(self, request: web.Request) -> web.Response:
        return self.json({"version": "2.21.1"})

    async def get_status(self, request: web.Request) -> web.Response:
        return self.json(
            {
                "connections": self.stats["ws_open"],
                "kernels": len(self.kernels),
                "last_activity": now(),
                "started": now(),
            }
        )

    # -- kernelspecs ---------------------------------------------------------------

    async def list_specs(self, request: web.Request) -> web.Response:
        return self.json({"default": self.default, "kernelspecs": self.specs})

    async def get_spec(self, request: web.Request) -> web.Response:
        spec = self.specs.get(request.match_info["name"])
        if spec is None:
            return self.error(404, f"Kernel spec {request.match_info['name']} not found")
        return self.json(spec)

    async def get_resource(self, request: web.Request) -> web.Response:
        if request.match_info["name"] not in self.specs:
            return self.error(404, "no such kernelspec")
        if not request.match_info["resource"].endswith(".png"):
            return self.error(404, "no such resource")
        return web.Response(body=PNG, content_type="image/png")

    # -- kernels -------------------------------------------------------------------

    def kernel(self, request: web.Request) -> dict:
        model = self.kernels.get(request.match_info["id"])
        if model is None:
            raise web.HTTPNotFound(
                text=json.dumps({"message": f"Kernel does not exist: {request.match_info['id']}"}),
                content_type="application/json",
            )
        return model

    async def list_kernels(self, request: web.Request) -> web.Response:
        return self.json(list(self.kernels.values()))

    def new_kernel(self, name: str | None) -> dict:
        name = name or self.default
        if name not in self.specs:
            raise web.HTTPNotFound(
                text=json.dumps({"message": f"No such kernel named {name}"}),
                content_type="application/json",
            )
        kernel_id = str(uuid.uuid4())
        model = {
            "id": kernel_id,
            "name": name,
            "last_activity": now(),
            "execution_state": "idle",
            "connections": 0,
        }
        self.kernels[kernel_id] = model
        return model

    async def start_kernel(self, request: web.Request) -> web.Response:
        data = await self.body(request)
        name = data.get("name")
        if name is not None and not isinstance(name, str):
            return self.error(400, "name must be a string")
        model = self.new_kernel(name)
        response = self.json(model, 201)
        response.headers["Location"] = f"/api/kernels/{model['id']}"
        return response

    async def get_kernel(self, request: web.Request) -> web.Response:
        return self.json(self.kernel(request))

    async def delete_kernel(self, request: web.Request) -> web.Response:
        model = self.kernel(request)
        del self.kernels[model["id"]]
        for sid in [s for s, m in self.sessions.items() if m["kernel"]["id"] == model["id"]]:
            del self.sessions[sid]
        return web.Response(status=204)

    async def interrupt_kernel(self, request: web.Request) -> web.Response:
        self.kernel(request)
        return web.Response(status=204)

    async def restart_kernel(self, request: web.Request) -> web.Response:
        model = self.kernel(request)
        model["last_activity"] = now()
        return self.json(model)

    async def channels(self, request: web.Request) -> web.StreamResponse:
        model = self.kernel(request)
        offered = [
            p.strip() for p in request.headers.get("Sec-WebSocket-Protocol", "").split(",") if p.strip()
        ]
        ws = web.WebSocketResponse(protocols=offered[:1], max_msg_size=0, compress=False, autoping=True)
        await ws.prepare(request)
        self.stats["ws_connections"] += 1
        self.stats["ws_open"] += 1
        model["connections"] += 1
        stats = self.stats
        try:
            while True:
                msg = await ws.receive()
                kind = msg.type
                if kind is WSMsgType.TEXT:
                    stats["ws_messages"] += 1
                    await ws.send_str(msg.data)
                elif kind is WSMsgType.BINARY:
                    stats["ws_messages"] += 1
                    await ws.send_bytes(msg.data)
                else:
                    break  # close, closing, closed or error
        finally:
            self.stats["ws_open"] -= 1
            model["connections"] -= 1
            model["last_activity"] = now()
        return ws

    # -- sessions ------------------------------------------------------------------

    def session(self, request: web.Request) -> dict:
        model = self.sessions.get(request.match_info["id"])
        if model is None:
            raise web.HTTPNotFound(
                text=json.dumps({"message": f"Session not found: {request.match_info['id']}"}),
                content_type="application/json",
            )
        return model

    async def list_sessions(self, request: web.Request) -> web.Response:
        return self.json(list(self.sessions.values()))

    async def create_session(self, request: web.Request) -> web.Response:
        data = await self.body(request)
        kernel = data.get("kernel") or {}
        if kernel.get("id"):
            if kernel["id"] not in self.kernels:
                return self.error(404, "no such kernel")
            kmodel = self.kernels[kernel["id"]]
        else:
            kmodel = self.new_kernel(kernel.get("name"))
        path = data.get("path") or data.get("name") or "untitled.ipynb"
        sid = str(uuid.uuid4())
        model = {
            "id": sid,
            "path": path,
            "name": data.get("name") or path,
            "type": data.get("type") or "notebook",
            "kernel": kmodel,
            "notebook": {"path": path, "name": data.get("name") or path},
        }
        self.sessions[sid] = model
        return self.json(model, 201)

    async def get_session(self, request: web.Request) -> web.Response:
        return self.json(self.session(request))

    async def patch_session(self, request: web.Request) -> web.Response:
        model = self.session(request)
        data = await self.body(request)
        for key in ("path", "name", "type"):
            if isinstance(data.get(key), str):
                model[key] = data[key]
        kernel = data.get("kernel")
        if isinstance(kernel, dict):
            if kernel.get("id"):
                if kernel["id"] not in self.kernels:
                    return self.error(404, "no such kernel")
                model["kernel"] = self.kernels[kernel["id"]]
            elif kernel.get("name"):
                model["kernel"] = self.new_kernel(kernel["name"])
        return self.json(model)

    async def delete_session(self, request: web.Request) -> web.Response:
        model = self.session(request)
        del self.sessions[model["id"]]
        return web.Response(status=204)


# -- serving ---------------------------------------------------------------------------


def listen_sockets(hosts: list[str], port: int) -> list[socket.socket]:
    socks = []
    for host in hosts:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        try:
            sock = socket.socket(family, socket.SOCK_STREAM)
        except OSError as exc:
            log.warning("cannot listen on %s: %s", host, exc)
            continue
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            sock.close()
            if host == hosts[0]:
                raise
            log.warning("cannot listen on [%s]:%d: %s", host, port, exc)
            continue
        sock.listen(4096)
        sock.setblocking(False)
        socks.append(sock)
    return socks


async def serve_blackhole(socks: list[socket.socket], stop: asyncio.Event) -> None:
    """Accept connections and read whatever comes, never answering."""
    held: set[asyncio.StreamWriter] = set()

    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.add(writer)
        try:
            while await reader.read(65536):
                pass
        except (ConnectionError, OSError):
            pass
        finally:
            held.discard(writer)
            writer.close()

    servers = [await asyncio.start_server(swallow, sock=s) for s in socks]
    await stop.wait()
    for server in servers:
        server.close()
    for writer in list(held):
        writer.transport.abort()


async def serve(args: argparse.Namespace) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    socks = listen_sockets(args.host or ["127.0.0.1", "::1"], args.port)
    if args.blackhole:
        print(f"fake_jupyter {args.label}: blackhole on port {args.port}", flush=True)
        await serve_blackhole(socks, stop)
        return
    fake = FakeJupyter(specs=args.specs, delay_ms=args.delay_ms, label=args.label)
    runner = web.AppRunner(fake.app(), access_log=None, handle_signals=False)
    await runner.setup()
    for sock in socks:
        await web.SockSite(runner, sock, shutdown_timeout=1.0).start()
    print(
        f"fake_jupyter {args.label}: serving on port {args.port}"
        f" (delay {args.delay_ms:g} ms, {len(fake.specs)} specs)",
        flush=True,
    )
    await stop.wait()
    with contextlib.suppress(Exception):
        await asyncio.wait_for(runner.cleanup(), 3)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument(
        "--host", action="append", help="address to listen on (repeatable; default 127.0.0.1 and ::1)"
    )
    parser.add_argument("--delay-ms", type=float, default=0.0, help="latency added to REST answers")
    parser.add_argument("--blackhole", action="store_true", help="accept TCP, never answer")
    parser.add_argument("--specs", type=int, default=2, choices=(1, 2), help="kernelspecs offered")
    parser.add_argument("--label", default="", help="name shown in logs and stats")
    parser.add_argument("--no-uvloop", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    if not args.no_uvloop:
        try:
            import uvloop
        except ImportError:
            pass
        else:
            uvloop.run(serve(args))
            return
    asyncio.run(serve(args))


if __name__ == "__main__":
    main()
