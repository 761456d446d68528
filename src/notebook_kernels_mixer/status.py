"""``/mixer/api/status`` and the ``/mixer/`` page: how each backend is doing.

Reachability, last error, latency of the last call, kernel count and credential
state (its kind and expiry, never the credential itself).
"""

from __future__ import annotations

import html
import time
from typing import Any

from aiohttp import web

from notebook_kernels_mixer import __version__
from notebook_kernels_mixer.backends import Backend
from notebook_kernels_mixer.errors import BackendError
from notebook_kernels_mixer.relay import Relay
from notebook_kernels_mixer.resources.common import json_response
from notebook_kernels_mixer.resources.registry import Registry


class StatusHandlers:
    def __init__(self, registry: Registry, relay: Relay) -> None:
        self.registry = registry
        self.relay = relay
        self.started = time.time()

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/mixer/api/status", self.api),
            web.get("/mixer", self.page),
            web.get("/mixer/", self.page),
        ]

    async def _count(self, backend: Backend) -> int:
        status, answer = await backend.request_json(
            "GET", "/api/kernels", timeout=backend.config.list_timeout
        )
        if status != 200 or not isinstance(answer, list):
            raise BackendError(backend.name, f"answered HTTP {status} to GET /api/kernels")
        return len(answer)

    async def collect(self) -> dict[str, Any]:
        counts = dict(await self.registry.gather(self._count))
        backends = []
        for backend in self.registry.backends.values():
            state = backend.state()
            count = counts.get(backend)
            state["kernels"] = count if isinstance(count, int) else None
            state["default"] = backend is self.registry.default
            state["local"] = backend is self.registry.local
            backends.append(state)
        return {
            "version": __version__,
            "uptime_seconds": round(time.time() - self.started, 1),
            "websockets": self.relay.live,
            "backends": backends,
        }

    async def api(self, request: web.Request) -> web.Response:
        return json_response(await self.collect())

    async def page(self, request: web.Request) -> web.Response:
        status = await self.collect()
        rows = "".join(render_row(b) for b in status["backends"])
        body = PAGE.format(
            version=html.escape(status["version"]),
            websockets=status["websockets"],
            rows=rows,
        )
        return web.Response(text=body, content_type="text/html")


def render_row(b: dict[str, Any]) -> str:
    cred = b["credentials"]
    cred_text = cred["kind"] + ("" if cred.get("ok", True) else f" — {cred.get('error')}")
    cells = [
        b["name"] + (" (default)" if b["default"] else ""),
        b["url"],
        "yes" if b["reachable"] else "no",
        "–" if b["kernels"] is None else str(b["kernels"]),
        "–" if b["last_latency_ms"] is None else f"{b['last_latency_ms']} ms",
        cred_text,
        b["last_error"] or "",
    ]
    cls = "up" if b["reachable"] else "down"
    return f'<tr class="{cls}">' + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>"


PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>Notebook Kernels Mixer</title>
<meta http-equiv="refresh" content="5">
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; }} td, th {{ padding: .3em .8em; border-bottom: 1px solid #ddd; }}
tr.down td {{ color: #a00; }} th {{ text-align: left; }}
</style></head>
<body><h1>Notebook Kernels Mixer</h1>
<p>Version {version} · {websockets} kernel websockets relayed now · refreshes every 5 s</p>
<table><tr><th>backend</th><th>url</th><th>reachable</th><th>kernels</th>
<th>last latency</th><th>credentials</th><th>last error</th></tr>
{rows}</table></body></html>
"""
