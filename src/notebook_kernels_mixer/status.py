"""``/mixer/api/status``, ``/mixer/api/kernels``, the orphans' shutdown and the
``/mixer/`` page: how each backend is doing, what runs where, and what it costs.

Reachability, last error, latency of the last call, kernel count, credential state
(its kind and expiry, never the credential itself), the state file's health, whether the backend's entries in
listings are last-known ones and since when, its culling policy, its kernel-hours
since the mixer started (``metrics.KernelClock``), and its orphan kernels: kernels
that no notebook session references and no client is connected to — still running
(and, in a cloud, still paid for) although nobody uses them.

Orphans are told from a fresh kernels listing and a fresh sessions listing of their
backend, never from last-known entries; ``POST /mixer/api/orphans/shutdown`` checks
again before it stops any, so a kernel that gained a session or a client since the
page was drawn is kept. The POST is protected like every request (token, Origin;
``front.middlewares``).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from notebook_kernels_mixer import __version__
from notebook_kernels_mixer.backends import Backend
from notebook_kernels_mixer.culling import Culler, connections_of
from notebook_kernels_mixer.errors import BadRequest, MixerError
from notebook_kernels_mixer.inventory import Inventory, Listing
from notebook_kernels_mixer.relay import Relay
from notebook_kernels_mixer.resources.backend_kernels import Model
from notebook_kernels_mixer.resources.common import json_response, read_json_object
from notebook_kernels_mixer.resources.fanout import Answer
from notebook_kernels_mixer.resources.kernels import KernelsHandlers
from notebook_kernels_mixer.resources.naming import valid_id
from notebook_kernels_mixer.resources.sessions import SessionsHandlers
from notebook_kernels_mixer.status_page import PAGE_HEADERS, render_page

log = logging.getLogger(__name__)

#: At most this many ids in one shutdown request.
MAX_IDS = 1000


@dataclass
class Census:
    """One look at the kernels and sessions of every backend."""

    kernels: list[Answer[list[Model]]]
    #: backend -> ids of the kernels its sessions reference; absent: the backend's
    #: sessions listing is not fresh, so nobody can tell what is unused there
    used: dict[str, set[str]] = field(default_factory=dict)

    def answer(self, backend: str) -> Answer[list[Model]]:
        return next(a for a in self.kernels if a.backend.name == backend)


class StatusHandlers:
    def __init__(self, inventory: Inventory, relay: Relay, kernels: KernelsHandlers,
                 sessions: SessionsHandlers, state_file: str, culler: Culler) -> None:
        self.inventory = inventory
        self.relay = relay
        self.kernels = kernels
        self.sessions = sessions
        self.state_file = state_file
        self.culler = culler
        self.clock = culler.metrics.clock
        self.started = time.time()

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/mixer/api/status", self.api),
            web.get("/mixer/api/kernels", self.kernels_api),
            web.post("/mixer/api/orphans/shutdown", self.shutdown_orphans),
            web.get("/mixer", self.page),
            web.get("/mixer/", self.page),
        ]

    async def census(self) -> Census:
        kernels = await self.inventory.listing(Listing.KERNELS, self.kernels.listing)
        sessions = await self.inventory.listing(Listing.SESSIONS, self.sessions.listing)
        census = Census(kernels)
        for answer in sessions:
            if not answer.ok:
                continue
            census.used[answer.backend.name] = {
                s["kernel"]["id"] for s in answer.value or []
                if isinstance(s.get("kernel"), dict) and isinstance(s["kernel"].get("id"), str)
            }
        return census

    async def collect(self) -> dict[str, Any]:
        census = await self.census()
        stale = self.inventory.stale()
        seconds = self.clock.seconds()
        backends = []
        for answer in census.kernels:
            backend = answer.backend
            state = backend.state()
            state["kernels"] = len(answer.value) if answer.value is not None else None
            state["stale_since"] = stale.get(backend.name)
            state["orphans"] = self._orphans(answer, census)
            state["default"] = backend is self.inventory.default
            state["local"] = backend is self.inventory.local
            state["sessions_kept_by"] = self.sessions.stores[backend.name].kind
            state["kernel_seconds"] = round(seconds.get(backend.name, 0.0), 1)
            state["kernel_hours"] = round(seconds.get(backend.name, 0.0) / 3600, 3)
            state["culling"] = self.culler.policies[backend.name].describe()
            state["culled"] = self.culler.counts.get(backend.name, 0)
            backends.append(state)
        return {
            "version": __version__,
            "uptime_seconds": round(time.time() - self.started, 1),
            "websockets": self.relay.live,
            "state_file": self.state_file,
            # whether changes reach the file: a failing disk, a value dropped (never values)
            "state": self.inventory.state.status(),
            "carries": self.sessions.carries.state(),
            "memory": {**self.inventory.sizes(), **self.relay.state()},
            "backends": backends,
        }

    def _connections(self, backend: str, kernel: Model) -> int:
        return connections_of(kernel, self.relay.kernel_sockets(backend, kernel["id"]))

    def _orphans(self, answer: Answer[list[Model]], census: Census) -> list[dict[str, Any]] | None:
        """None when the backend cannot say now: last-known models are not evidence
        that nobody uses a kernel."""
        used = census.used.get(answer.backend.name)
        if not answer.ok or used is None:
            return None
        now = time.time()
        out = []
        for kernel in answer.value or []:
            if kernel["id"] in used or self._connections(answer.backend.name, kernel):
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
        return web.Response(text=render_page(await self.collect()), content_type="text/html",
                            headers=PAGE_HEADERS)

    # -- every kernel ----------------------------------------------------------------------
    async def kernels_api(self, request: web.Request) -> web.Response:
        """Every kernel of every backend: backend, spec, state, connections, how long the
        mixer has seen it, last activity, and whether it is an orphan (None: cannot tell)."""
        census = await self.census()
        now = time.time()
        kernels = []
        for answer in census.kernels:
            name = answer.backend.name
            orphans = self._orphans(answer, census)
            orphan_ids = None if orphans is None else {o["id"] for o in orphans}
            for kernel in answer.value or []:
                seen = self.inventory.first_seen.get(kernel["id"])
                kernels.append({
                    "backend": name,
                    "id": kernel["id"],
                    "name": kernel.get("name"),
                    "execution_state": kernel.get("execution_state"),
                    "connections": self._connections(name, kernel),
                    "relayed_websockets": self.relay.kernel_sockets(name, kernel["id"]),
                    "seen_for_seconds": None if seen is None else round(now - seen),
                    "last_activity": kernel.get("last_activity"),
                    "orphan": None if orphan_ids is None else kernel["id"] in orphan_ids,
                    "last_known": not answer.ok,
                })
        unavailable = {a.backend.name: str(a.error) for a in census.kernels if a.value is None}
        return json_response({"kernels": kernels, "unavailable": unavailable})

    # -- shutting orphans down -------------------------------------------------------------
    async def shutdown_orphans(self, request: web.Request) -> web.Response:
        """``{"backend": NAME, "ids": [...]}``: stop those orphans of NAME (all of its
        orphans without ``ids``; every backend's without ``backend``). Each kernel is
        checked to be an orphan now; the answer says what was stopped, kept, failed."""
        body = await read_json_object(request)
        name = body.get("backend")
        if name is not None and name not in self.inventory.backends:
            known = ", ".join(self.inventory.names)
            raise BadRequest(f"no backend named {str(name)[:100]!r} (this mixer's backends: {known})")
        ids = body.get("ids")
        if ids is not None and (not isinstance(ids, list) or len(ids) > MAX_IDS
                                or not all(valid_id(i) for i in ids)):
            raise BadRequest(f"'ids' must be a list of at most {MAX_IDS} kernel ids")
        if ids is not None and name is None:
            raise BadRequest("'ids' needs the 'backend' they run on")
        census = await self.census()
        names = [name] if name is not None else list(self.inventory.names)
        results = [await self._shutdown(self.inventory.backends[n], census, ids) for n in names]
        return json_response({"backends": results})

    async def _shutdown(self, backend: Backend, census: Census,
                        ids: list[str] | None) -> dict[str, Any]:
        result: dict[str, Any] = {"backend": backend.name, "stopped": [], "kept": [],
                                  "failed": [], "unavailable": None}
        answer = census.answer(backend.name)
        orphans = self._orphans(answer, census)
        if orphans is None:
            result["unavailable"] = (f"backend {backend.name!r} cannot say now which kernels are "
                                     "orphans (its kernels or sessions listing failed); nothing "
                                     "was stopped there")
            return result
        orphan_ids = [o["id"] for o in orphans]
        targets = orphan_ids if ids is None else list(dict.fromkeys(ids))
        running = {k["id"] for k in answer.value or []}
        for kernel_id in targets:
            if kernel_id not in orphan_ids:
                why = ("not running on this backend" if kernel_id not in running else
                       "not an orphan now: a session references it or a client is connected")
                result["kept"].append({"id": kernel_id, "why": why})
                continue
            try:
                stopped = await self.culler.shut_down(
                    backend, kernel_id, reason="kernel shut down by the mixer: an orphan")
            except MixerError as exc:
                result["failed"].append({"id": kernel_id, "error": str(exc)})
                continue
            if stopped:
                result["stopped"].append(kernel_id)
                self.culler.metrics.orphan_shut_down(backend.name)
                log.warning("shut down orphan kernel %s on backend %r (asked through %s)",
                            kernel_id, backend.name, "/mixer/api/orphans/shutdown")
            else:
                result["kept"].append({"id": kernel_id, "why": "gone already"})
        return result
