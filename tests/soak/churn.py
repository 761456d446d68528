"""Churn behind the mixer's back: kernels and notebook sessions started and deleted
straight on the backends, as a culler, another client or a colleague would.

The mixer learns them from its merged listings (the workers' and the probes') and
must forget them once a backend answers a complete listing without them (issue 10
item 3), or its maps grow for as long as it runs. Failures (the remote restarting)
are counted, not recorded as the mixer's: the mixer is not involved.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections import Counter
from dataclasses import dataclass, field

import aiohttp

from tests.e2e.support.api import ApiClient
from tests.e2e.support.stack import Stack

from .ledger import BACKENDS, HTTP_TIMEOUT, Ledger

CHURN_EVERY = 6.0  # seconds between two creations (each starts a kernel: CPU on 2 cores)


@dataclass
class Made:
    backend: str
    kind: str  # "kernels" or "sessions"
    id: str


@dataclass
class BackdoorChurn:
    """Alternately a kernel and a notebook session, alternately on each backend; the
    previous one on that backend is deleted as the next is made."""

    stack: Stack
    http: aiohttp.ClientSession
    ledger: Ledger
    counts: Counter[str] = field(default_factory=Counter)  # "local kernels created", …
    live: list[Made] = field(default_factory=list)

    def api(self, backend: str) -> ApiClient:
        server = self.stack.local if backend == "local" else self.stack.remote
        return ApiClient(self.http, server.url, auth=server.auth, name=backend)

    async def run(self) -> None:
        """Until the run stops; then everything still alive is deleted."""
        serial = itertools.count(1)
        steps = itertools.product(("kernels", "sessions"), BACKENDS)
        for kind, backend in itertools.cycle(list(steps)):
            if not self.ledger.running():
                break
            await self._make(backend, kind, next(serial))
            for old in [m for m in self.live[:-1] if m.backend == backend]:
                await self._delete(old)
            await self.ledger.pause(CHURN_EVERY)
        await self.delete_all()

    async def _make(self, backend: str, kind: str, n: int) -> None:
        body: dict = {"name": "python3"}
        if kind == "sessions":
            body = {"path": f"churn-{n}.ipynb", "name": "churn", "type": "notebook", "kernel": body}
        try:
            resp = await self.api(backend).post(f"/api/{kind}", body, timeout=HTTP_TIMEOUT)
        except (aiohttp.ClientError, asyncio.TimeoutError):
            self.counts[f"{backend} {kind} failed"] += 1
            return
        if resp.status != 201:
            self.counts[f"{backend} {kind} failed"] += 1
            return
        self.live.append(Made(backend, kind, resp.json()["id"]))
        self.counts[f"{backend} {kind} created"] += 1

    async def _delete(self, made: Made) -> bool:
        """True once it is gone (deleted now, or died with a restart of its server)."""
        with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError):
            resp = await self.api(made.backend).delete(f"/api/{made.kind}/{made.id}", timeout=HTTP_TIMEOUT)
            if resp.status in (204, 404):
                self.live.remove(made)
                self.counts[f"{made.backend} {made.kind} deleted" if resp.status == 204 else
                            f"{made.backend} {made.kind} died"] += 1
                return True
        return False

    async def delete_all(self, attempts: int = 10) -> None:
        for _ in range(attempts):
            for made in list(self.live):
                await self._delete(made)
            if not self.live:
                return
            await asyncio.sleep(1.0)
