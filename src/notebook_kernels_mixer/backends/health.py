"""Whether a backend is answering, judged so that it does not flap.

One slow or failed call says little (a kernel start that takes long, one reset
connection); a backend counts as down only after ``failures_to_down`` failures in a
row, or when the background probe that runs while it is suspect fails too. While
down, merged listings do not wait for it (they serve its last-known entries) and the
probe (bounded backoff) brings it back as soon as it answers. Flips are logged once,
not per request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

from notebook_kernels_mixer.errors import BackendError

log = logging.getLogger(__name__)


class Health:
    failures_to_down = 3
    probe_initial = 0.5
    probe_max = 5.0

    def __init__(self, name: str, probe: Callable[[], Awaitable[object]]) -> None:
        self.name = name
        self._probe = probe
        self.up = True
        self.failures = 0  # consecutive
        self.last_error: str | None = None
        self.last_latency: float | None = None
        self.last_ok: float | None = None
        self.changed_at = time.time()
        self._probe_task: asyncio.Task[None] | None = None

    @property
    def answering(self) -> bool:
        """Up, and its last call did not fail: worth waiting for in a merged listing.
        (A suspect backend is not "down": only its probe or more failures say that.)"""
        return self.up and not self.failures

    def success(self, latency: float) -> None:
        self.last_latency = latency
        self.last_ok = time.time()
        self.failures = 0
        if not self.up:
            self.up = True
            self.changed_at = time.time()
            log.warning("backend %r is answering again", self.name)

    def failure(self, error: BackendError, *, probing: bool = False) -> None:
        """Record a failed call; ``probing`` failures take the backend down at once."""
        self.last_error = error.cause
        self.failures += 1
        if self.up and (probing or self.failures >= self.failures_to_down):
            self.up = False
            self.changed_at = time.time()
            log.warning("backend %r is unavailable: %s", self.name, error.cause)
        if self._probe_task is None or self._probe_task.done():
            self._probe_task = asyncio.get_running_loop().create_task(self._probe_loop())

    async def _probe_loop(self) -> None:
        """Runs while the backend is suspect (a failure since the last success)."""
        delay = self.probe_initial
        while self.failures:
            await asyncio.sleep(delay)
            if not self.failures:
                return
            try:
                await self._probe()
            except BackendError as exc:
                self.failure(exc, probing=True)
            delay = min(delay * 2, self.probe_max)

    async def close(self) -> None:
        if self._probe_task is not None:
            self._probe_task.cancel()
            with contextlib.suppress(BaseException):
                await self._probe_task

    def state(self) -> dict[str, object]:
        return {
            "reachable": self.up,
            "consecutive_failures": self.failures,
            "last_error": self.last_error,
            "last_latency_ms": None if self.last_latency is None else round(self.last_latency * 1e3, 1),
            "since": self.changed_at,
        }
