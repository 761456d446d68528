"""The mixer's carry operation (``--carry-variables``): when to carry, one carry at a
time per session, and what the last carries did.

A session move (``resources.sessions``) and a front that keeps its own sessions
(``mixer lab``'s front, through ``POST /mixer/api/carry``) both come here. A carry
never fails or holds up a switch past its budget (``engine``); deleting the session
cancels its carry, and the move then goes on without the rest.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from notebook_kernels_mixer.backends import Backend
from notebook_kernels_mixer.carry.engine import carry_namespace
from notebook_kernels_mixer.carry.report import FAILED, CarryReport
from notebook_kernels_mixer.errors import BadRequest
from notebook_kernels_mixer.resources.common import field, json_response, read_json_object
from notebook_kernels_mixer.resources.naming import checked_id

#: Reports kept for status: the last few per session, for this many sessions.
REPORTS_PER_SESSION = 3
SESSIONS_KEPT = 100

Owner = Callable[[str], Awaitable[Backend]]


class Carries:
    def __init__(self, *, enabled: bool, budget: float, cap: int) -> None:
        self.enabled = enabled
        self.budget = budget
        self.cap = cap
        self._running: dict[str, asyncio.Task[CarryReport]] = {}
        self._reports: collections.OrderedDict[str, list[dict[str, Any]]] = collections.OrderedDict()
        self.count = 0
        self.bytes = 0
        self.seconds = 0.0

    async def run(self, key: str, source: Backend, source_kernel: str, target: Backend,
                  target_kernel: str) -> CarryReport:
        """Carry ``source_kernel``'s namespace into ``target_kernel``; ``key`` names the
        session (or the target kernel, for a front's switch). Returns the report; a
        carry cancelled by ``cancel(key)`` reports that, it does not raise."""
        started = time.monotonic()
        task = asyncio.get_running_loop().create_task(carry_namespace(
            source, source_kernel, target, target_kernel, budget=self.budget, cap=self.cap))
        self._running[key] = task
        try:
            await asyncio.wait({task})
        finally:
            if self._running.get(key) is task:
                del self._running[key]
        if task.cancelled():
            report = CarryReport(
                outcome=FAILED, reason="cancelled: the session was deleted during the carry",
                carried=(), skipped={}, bytes=0, seconds=time.monotonic() - started,
                serializer=None, source=source.name, source_kernel=source_kernel,
                target=target.name, target_kernel=target_kernel)
        else:
            report = task.result()
        self._remember(key, report)
        return report

    def cancel(self, key: str) -> bool:
        """End the carry of ``key`` (its session is being deleted); whether one ran."""
        task = self._running.get(key)
        if task is None or task.done():
            return False
        task.cancel()
        return True

    def _remember(self, key: str, report: CarryReport) -> None:
        self.count += 1
        self.bytes += report.bytes
        self.seconds += report.seconds
        entries = self._reports.pop(key, [])
        entries = [*entries, {"session": key, "at": time.time(), **report.to_json()}]
        self._reports[key] = entries[-REPORTS_PER_SESSION:]
        while len(self._reports) > SESSIONS_KEPT:
            self._reports.popitem(last=False)

    def state(self) -> dict[str, Any]:
        """For ``/mixer/api/status``: the settings and the last carries, newest first."""
        recent = sorted((r for rs in self._reports.values() for r in rs),
                        key=lambda r: r["at"], reverse=True)
        return {
            "enabled": self.enabled,
            "budget_seconds": self.budget,
            "cap_bytes": self.cap,
            "running": len(self._running),
            "carries": self.count,
            "bytes": self.bytes,
            "seconds": round(self.seconds, 3),
            "recent": recent,
        }


class CarryHandlers:
    """``POST /mixer/api/carry``: a front that keeps its own sessions (``mixer lab``'s)
    asks for a carry between the kernels of a switch before it shuts the old one down."""

    def __init__(self, carries: Carries, owner: Owner) -> None:
        self.carries = carries
        self.owner = owner

    def routes(self) -> list[web.RouteDef]:
        return [web.post("/mixer/api/carry", self.carry)]

    async def carry(self, request: web.Request) -> web.Response:
        body = await read_json_object(request)
        source_kernel = field(body, "source_kernel", str, "a string")
        target_kernel = field(body, "target_kernel", str, "a string")
        if source_kernel is None or target_kernel is None:
            raise BadRequest("'source_kernel' and 'target_kernel' (kernel ids) are required")
        checked_id(source_kernel, "kernel")
        checked_id(target_kernel, "kernel")
        if not self.carries.enabled:
            return json_response({"enabled": False})
        source = await self.owner(source_kernel)
        target = await self.owner(target_kernel)
        if source is target:
            return json_response({"enabled": True, "carried": False, "reason": "same backend"})
        report = await self.carries.run(target_kernel, source, source_kernel, target, target_kernel)
        return json_response({"enabled": True, "carried": True, "report": report.to_json()})
