"""What the backends answered last, per listing: single flight, the listing window,
and last-known entries that stand in for a backend that cannot answer (SPEC §4).

* single flight: concurrent identical listings (many tabs polling) share one
  fan-out, so the backends see one request whatever the number of pollers;
* the window: a listing that completed less than ``window`` seconds ago is answered
  again (any change made through the mixer ends that at once, so a client sees its
  own changes; a change made behind the mixer's back shows up at most ``window`` late);
* last-known answers: clients (GatewayClient, JupyterLab, VS Code) dispose every
  kernel and session a successful listing omits, so a backend that cannot answer
  contributes what it answered last, for the retention window, instead of vanishing;
  they learn what the mixer itself creates, moves and deletes (``amend``), so a
  kernel started just before an outage is not missing during it;
* a backend whose listings fail is logged once per change, not per request;
* what is retained is bounded: one answer per listing kind and backend, each within
  the backend's answer cap (``--max-backend-answer``; a larger one is a failure, never
  retained) and of at most ``max_retained`` entries (a larger answer is served, not
  kept); ``amend`` never grows one past that either.

Only ``Inventory`` changes this state; handlers announce events to it.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from notebook_kernels_mixer.backends import Backend
from notebook_kernels_mixer.errors import MixerError
from notebook_kernels_mixer.resources.fanout import Answer, FanOut

log = logging.getLogger(__name__)
T = TypeVar("T")


class Listing(enum.Enum):
    """The merged listings; their names appear in logs and in status."""

    KERNELSPECS = "kernelspecs"
    KERNELS = "kernels"
    SESSIONS = "sessions"


Key = tuple[Listing, str]  # (listing, backend name)


def _entries(value: Any) -> int:
    """How many entries a listing's value holds (a list, or a view with a length)."""
    try:
        return len(value)
    except TypeError:
        return 0


class Listings:
    #: Most entries one backend's last-known answer to one listing may keep.
    max_retained = 10_000

    def __init__(self, fanout: FanOut, *, retention: float, window: float) -> None:
        self.fanout = fanout
        self.retention = retention
        self.window = window
        self._recent: dict[Listing, tuple[float, list[Answer[Any]]]] = {}  # monotonic, answers
        self._inflight: dict[Listing, asyncio.Task[list[Answer[Any]]]] = {}
        self._last: dict[Key, tuple[float, Any]] = {}  # wall time of the answer, value
        self._failing: dict[Key, float] = {}  # wall time since when
        self._amended: dict[Key, float] = {}  # monotonic time of the last amend

    async def get(self, kind: Listing, call: Callable[[Backend], Awaitable[T]], *,
                  last_known: bool = True) -> list[Answer[T]]:
        """Every backend's part of listing ``kind``: shared with concurrent callers,
        last-known values for the backends that fail now (within the retention)."""
        recent = self._recent.get(kind)
        if recent is not None and time.monotonic() - recent[0] < self.window:
            return recent[1]
        task = self._inflight.get(kind)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._listing(kind, call, last_known))
            self._inflight[kind] = task
            task.add_done_callback(lambda t: self._done(kind, t))
        return await asyncio.shield(task)

    def _done(self, kind: Listing, task: asyncio.Task[list[Answer[Any]]]) -> None:
        if self._inflight.get(kind) is not task:
            return  # ``changed`` disowned it: it may predate a change, so it is not reused
        del self._inflight[kind]
        if self.window and not task.cancelled() and task.exception() is None:
            self._recent[kind] = (time.monotonic(), task.result())

    async def _listing(self, kind: Listing, call: Callable[[Backend], Awaitable[T]],
                       last_known: bool) -> list[Answer[T]]:
        started = time.monotonic()
        answers = await self.fanout.gather(call)
        now = time.time()
        out = []
        for answer in answers:
            key = (kind, answer.backend.name)
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

    def _note_failure(self, key: Key, error: MixerError | None, now: float) -> None:
        if key not in self._failing:
            self._failing[key] = now
            log.warning("listing %s: backend %r failed (%s); serving its last-known entries "
                        "for up to %gs", key[0].value, key[1], error, self.retention)

    def _note_recovery(self, key: Key) -> None:
        if self._failing.pop(key, None) is not None:
            log.warning("listing %s: backend %r answers again", key[0].value, key[1])

    def stale(self) -> dict[str, dict[str, float]]:
        """backend -> listing -> since when its last-known entries are served."""
        out: dict[str, dict[str, float]] = {}
        for (kind, backend), since in self._failing.items():
            last = self._last.get((kind, backend))
            if last is not None and time.time() - last[0] <= self.retention:
                out.setdefault(backend, {})[kind.value] = since
        return out

    def changed(self) -> None:
        """Something changed through the mixer: the next listing asks the backends
        again. One already in flight may predate the change, so it is not shared."""
        self._recent.clear()
        self._inflight.clear()

    def amend(self, kind: Listing, backend: str, *, add: dict[str, Any] | None = None,
              remove: str | None = None) -> None:
        """``backend``'s last-known entries of ``kind`` learn an entry the mixer just
        created (``add``) or deleted (``remove``, by id)."""
        self.changed()
        key = (kind, backend)
        self._amended[key] = time.monotonic()
        at, entries = self._last.get(key, (time.time(), []))
        kept = [e for e in entries if e.get("id") not in (remove, add and add.get("id"))]
        if add is not None and len(kept) < self.max_retained:
            kept.append(add)
        self._last[key] = (at, kept)

    def sizes(self) -> dict[str, int]:
        return {"last_known_entries": sum(_entries(v) for _, v in self._last.values())}
