"""``/mixer/api/status`` and the ``/mixer/`` page: how each backend is doing.

Reachability, last error, latency of the last call, kernel count, credential state
(its kind and expiry, never the credential itself), the state file's health, whether the backend's entries in
listings are last-known ones and since when, and its orphan kernels: kernels that no
notebook session references and no client is connected to — still running (and, in
a cloud, still paid for) although nobody uses them.
"""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web

from notebook_kernels_mixer import __version__
from notebook_kernels_mixer.inventory import Inventory, Listing
from notebook_kernels_mixer.relay import Relay
from notebook_kernels_mixer.resources.common import json_response
from notebook_kernels_mixer.resources.fanout import Answer
from notebook_kernels_mixer.resources.kernels import KernelsHandlers
from notebook_kernels_mixer.resources.sessions import SessionsHandlers
from notebook_kernels_mixer.status_page import render_page


class StatusHandlers:
    def __init__(self, inventory: Inventory, relay: Relay, kernels: KernelsHandlers,
                 sessions: SessionsHandlers, state_file: str) -> None:
        self.inventory = inventory
        self.relay = relay
        self.kernels = kernels
        self.sessions = sessions
        self.state_file = state_file
        self.started = time.time()

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/mixer/api/status", self.api),
            web.get("/mixer", self.page),
            web.get("/mixer/", self.page),
        ]

    async def collect(self) -> dict[str, Any]:
        kernels = await self.inventory.listing(Listing.KERNELS, self.kernels.listing)
        sessions = await self.inventory.listing(Listing.SESSIONS, self.sessions.listing)
        used = {
            s["kernel"]["id"] for a in sessions if a.value for s in a.value
            if isinstance(s.get("kernel"), dict) and isinstance(s["kernel"].get("id"), str)
        }
        stale = self.inventory.stale()
        backends = []
        for answer in kernels:
            backend = answer.backend
            state = backend.state()
            state["kernels"] = len(answer.value) if answer.value is not None else None
            state["stale_since"] = stale.get(backend.name)
            state["orphans"] = self._orphans(answer, used)
            state["default"] = backend is self.inventory.default
            state["local"] = backend is self.inventory.local
            state["sessions_kept_by"] = self.sessions.stores[backend.name].kind
            backends.append(state)
        return {
            "version": __version__,
            "uptime_seconds": round(time.time() - self.started, 1),
            "websockets": self.relay.live,
            "state_file": self.state_file,
            # whether changes reach the file: a failing disk, a value dropped (never values)
            "state": self.inventory.state.status(),
            "memory": {**self.inventory.sizes(), **self.relay.state()},
            "backends": backends,
        }

    def _orphans(self, answer: Answer[list[dict[str, Any]]],
                 used: set[str]) -> list[dict[str, Any]] | None:
        """None when the backend cannot say now: last-known models are not evidence
        that nobody uses a kernel."""
        if not answer.ok:
            return None
        now = time.time()
        out = []
        for kernel in answer.value or []:
            if kernel["id"] in used or kernel.get("connections"):
                continue
            seen = self.inventory.first_seen.get(kernel["id"])
            out.append({
                "id": kernel["id"],
                "name": kernel.get("name"),
                "seen_for_seconds": None if seen is None else round(now - seen),
                "last_activity": kernel.get("last_activity"),
                "execution_state": kernel.get("execution_state"),
            })
        return out

    async def api(self, request: web.Request) -> web.Response:
        return json_response(await self.collect())

    async def page(self, request: web.Request) -> web.Response:
        return web.Response(text=render_page(await self.collect()), content_type="text/html")

