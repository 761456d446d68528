"""One fan-out: ask every backend at once, for merged listings and id lookups.

It owns what merged answers have in common (SPEC §4):

* each backend gets its listing timeout; a backend that is down, or whose last call
  failed (until its probe says otherwise), is not waited for — its last-known
  entries stand in for it — unless no backend answers: then all are asked;
* the one retry policy: a listing that fails with a 5xx or a broken answer is asked
  once more within its timeout (jupyter_server 2.21 answers 500 while a kernel
  starts); timeouts and refusals are not retried;
* last-known answers: clients (GatewayClient, JupyterLab, VS Code) dispose every
  kernel and session a successful listing omits, so a backend that cannot answer
  contributes what it answered last, for the retention window, instead of vanishing;
* single flight: concurrent identical listings (many tabs polling) share one
  fan-out, so the backends see one request whatever the number of pollers, and a
  listing that completed less than ``window`` seconds ago is answered again (any
  change made through the mixer ends that at once, so a client sees its own changes;
  a change made behind the mixer's back shows up at most ``window`` later);
* a backend whose listings fail is logged once per change, not per request;
* what is retained is bounded: one last-known answer per listing (a fixed set of
  names) and backend, each an answer within the backend's answer cap
  (``--max-backend-answer``; a larger one is a failure and never retained) and of at
  most ``max_retained`` entries (a larger answer is served but not kept: that backend
  then has no last-known entries to stand in for it); ``amend`` never grows them past
  that either.
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


def _entries(value: Any) -> int:
    """How many entries a listing's value holds (a list, or a view that has a length)."""
    try:
        return len(value)
    except TypeError:
        return 0


class FanOut:
    #: Most entries one backend's last-known answer to one listing may keep.
    max_retained = 10_000

    def __init__(self, backends: Sequence[Backend], *, retention: float,
                 window: float = 0.0) -> None:
        self.backends = list(backends)
        self.retention = retention
        self.window = window
        self._recent: dict[str, tuple[float, list[Answer[Any]]]] = {}  # listing -> (monotonic, answers)
        self._last: dict[tuple[str, str], tuple[float, Any]] = {}  # (listing, backend)
        self._failing: dict[tuple[str, str], float] = {}  # (listing, backend) -> since
        self._inflight: dict[str, asyncio.Task[list[Answer[Any]]]] = {}
        self._amended: dict[tuple[str, str], float] = {}  # (listing, backend) -> monotonic

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

    async def listing(self, name: str, call: Callable[[Backend], Awaitable[T]], *,
                      last_known: bool = True) -> list[Answer[T]]:
        """A merged listing called ``name``: single flight, last-known values for the
        backends that fail now (within the retention window), failures logged."""
        recent = self._recent.get(name)
        if recent is not None and time.monotonic() - recent[0] < self.window:
            return recent[1]
        task = self._inflight.get(name)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._listing(name, call, last_known))
            self._inflight[name] = task
            task.add_done_callback(lambda t: self._done(name, t))
        return await asyncio.shield(task)

    def _done(self, name: str, task: asyncio.Task[list[Answer[Any]]]) -> None:
        if self._inflight.get(name) is not task:
            return  # ``changed`` disowned it: it may predate a change, so it is not reused
        del self._inflight[name]
        if self.window and not task.cancelled() and task.exception() is None:
            self._recent[name] = (time.monotonic(), task.result())

    async def _listing(self, name: str, call: Callable[[Backend], Awaitable[T]],
                       last_known: bool) -> list[Answer[T]]:
        started = time.monotonic()
        answers = await self.gather(call)
        now = time.time()
        out = []
        for answer in answers:
            key = (name, answer.backend.name)
            if answer.ok:
                if _entries(answer.value) > self.max_retained:
                    self._last.pop(key, None)  # served now, but too large to keep
                elif self._amended.get(key, 0.0) < started:  # else it predates what amend knows
                    self._last[key] = (now, answer.value)
                self._note_recovery(key)
                out.append(answer)
                continue
            self._note_failure(key, answer.error, now)
            last = self._last.get(key) if last_known else None
            if last is not None and now - last[0] <= self.retention:
                answer = Answer(answer.backend, last[1], answer.error, stale_since=last[0])
            out.append(answer)
        return out

    def _note_failure(self, key: tuple[str, str], error: MixerError | None, now: float) -> None:
        if key not in self._failing:
            self._failing[key] = now
            log.warning("listing %s: backend %r failed (%s); serving its last-known entries "
                        "for up to %gs", key[0], key[1], error, self.retention)

    def _note_recovery(self, key: tuple[str, str]) -> None:
        if self._failing.pop(key, None) is not None:
            log.warning("listing %s: backend %r answers again", key[0], key[1])

    def stale(self) -> dict[str, dict[str, float]]:
        """backend -> listing -> since when its last-known entries are served."""
        out: dict[str, dict[str, float]] = {}
        for (listing, backend), since in self._failing.items():
            last = self._last.get((listing, backend))
            if last is not None and time.time() - last[0] <= self.retention:
                out.setdefault(backend, {})[listing] = since
        return out

    def changed(self, listing: str | None = None) -> None:
        """Something changed through the mixer: the next ``listing`` (all, if None)
        asks the backends again. A listing already in flight may predate the change,
        so it is not shared either."""
        for name in [listing] if listing else list(self._recent) + list(self._inflight):
            self._recent.pop(name, None)
            self._inflight.pop(name, None)

    def amend(self, listing: str, backend: Backend, *, add: dict[str, Any] | None = None,
              remove: str | None = None) -> None:
        """Keep ``backend``'s last-known entries of ``listing`` up to date with what the
        mixer itself just did there (an entry created or deleted by id), so a kernel
        started just before an outage is not missing from the listings during it."""
        self.changed()
        key = (listing, backend.name)
        self._amended[key] = time.monotonic()
        at, entries = self._last.get(key, (time.time(), []))
        kept = [e for e in entries if e.get("id") not in (remove, add and add.get("id"))]
        if add is not None and len(kept) < self.max_retained:
            kept.append(add)
        self._last[key] = (at, kept)


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
