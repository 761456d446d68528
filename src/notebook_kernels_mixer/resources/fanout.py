"""One fan-out: ask every backend at once, for merged listings and id lookups.

It holds no state: it applies the timeout and retry policy that merged answers have
in common (SPEC §4), and the inventory (``inventory.listings``) keeps what the
answers leave behind (last-known entries, single flight, the listing window).

* each backend gets its listing timeout; a backend that is down, or whose last call
  failed (until its probe says otherwise), is not waited for — unless no backend
  answers: then all are asked;
* the one retry policy: a listing that fails with a 5xx or a broken answer is asked
  once more within its timeout (jupyter_server 2.21 answers 500 while a kernel
  starts); timeouts and refusals are not retried.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from notebook_kernels_mixer.backends import Backend
from notebook_kernels_mixer.errors import (
    BackendError,
    BackendTimeout,
    BackendUnavailable,
    MixerError,
    UpstreamError,
)

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class Answer(Generic[T]):
    """One backend's part of a fan-out: a value, or the error it failed with."""

    backend: Backend
    value: T | None = None
    error: MixerError | None = None
    #: The value is last-known (the backend failed now); when it last answered.
    stale_since: float | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def usable(self) -> bool:
        return self.error is None or self.stale_since is not None


def _retryable(exc: MixerError) -> bool:
    if isinstance(exc, UpstreamError):
        return exc.status >= 500 and exc.status != 503
    return isinstance(exc, BackendError) and not isinstance(exc, (BackendTimeout, BackendUnavailable))


class FanOut:
    def __init__(self, backends: Sequence[Backend]) -> None:
        self.backends = list(backends)

    async def gather(self, call: Callable[[Backend], Awaitable[T]], *,
                     timeout: Callable[[Backend], float] | None = None,
                     ask_all: bool = False) -> list[Answer[T]]:
        """Every backend's answer to ``call``, in configured order; ``ask_all`` waits
        for suspect and down backends too."""
        timeout = timeout or (lambda b: b.config.list_timeout)
        live = self.backends if ask_all else (
            [b for b in self.backends if b.health.answering] or self.backends)
        answers = dict(zip(live, await asyncio.gather(
            *(self._one(b, call, timeout(b)) for b in live)), strict=True))
        return [
            answers.get(b) or Answer(b, error=BackendUnavailable(b.name, b.health.last_error or "down"))
            for b in self.backends
        ]

    async def _one(self, backend: Backend, call: Callable[[Backend], Awaitable[T]],
                   limit: float) -> Answer[T]:
        deadline = time.monotonic() + limit
        for attempt in (1, 2):
            try:
                value = await asyncio.wait_for(call(backend), max(deadline - time.monotonic(), 0.001))
            except asyncio.TimeoutError:
                error = BackendTimeout(backend.name, f"no answer within {limit:g}s")
                backend.health.failure(error)
                return Answer(backend, error=error)
            except MixerError as exc:
                if attempt == 1 and _retryable(exc) and deadline - time.monotonic() > 0.1:
                    await asyncio.sleep(0.05)
                    continue
                if isinstance(exc, UpstreamError) or type(exc) is BackendError:
                    # The backend is reachable but its answer is broken: that is a failure
                    # too, or it would stay "up" while contributing nothing.
                    backend.health.failure(BackendError(backend.name, exc.message))
                return Answer(backend, error=exc)
            return Answer(backend, value=value)
        raise AssertionError("unreachable")


def merged(answers: Sequence[Answer[list[T]]]) -> list[T]:
    """The entries of every usable answer; 503 when no backend contributed anything."""
    if not any(a.usable for a in answers):
        raise all_failed(answers)
    return [item for a in answers if a.usable and a.value for item in a.value]


def all_failed(answers: Sequence[Answer[Any]]) -> BackendUnavailable:
    causes = "; ".join(
        f"{a.backend.name}: {getattr(a.error, 'cause', None) or a.error}" for a in answers
    )
    return BackendUnavailable("all", f"no backend answered ({causes})")
