"""The backends, and which backend owns which kernel and session.

Ownership is learnt from every answer that passes through (create, list, get) and,
for an id the mixer has never seen — e.g. after the mixer restarted — by asking all
backends at once. Nothing here is persisted: the backends are the source of truth.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import TypeVar

from notebook_kernels_mixer.backends import Backend
from notebook_kernels_mixer.errors import (
    BackendError,
    BackendTimeout,
    BackendUnavailable,
    NotFound,
)
from notebook_kernels_mixer.resources.naming import checked_id, split_prefixed

log = logging.getLogger(__name__)
T = TypeVar("T")


class Registry:
    def __init__(self, backends: Iterable[Backend], *, default: str, local: str) -> None:
        self.backends: dict[str, Backend] = {b.name: b for b in backends}
        self.names = tuple(self.backends)
        self.default = self.backends[default]
        self.local = self.backends[local]
        self._kernels: dict[str, Backend] = {}
        # Client-visible session id -> (backend, that backend's session id). A session
        # moved to another backend keeps the id the client knows (SPEC §4).
        self._sessions: dict[str, tuple[Backend, str]] = {}
        self._session_ids: dict[tuple[str, str], str] = {}

    # -- kernelspecs -------------------------------------------------------------------
    def spec_backend(self, name: object) -> tuple[Backend, str]:
        prefix, bare = split_prefixed(name, self.names)
        return self.backends[prefix], bare

    # -- kernels -----------------------------------------------------------------------
    def remember_kernel(self, kernel_id: str, backend: Backend) -> None:
        self._kernels[kernel_id] = backend

    def forget_kernel(self, kernel_id: str) -> None:
        self._kernels.pop(kernel_id, None)

    async def kernel_owner(self, kernel_id: str) -> Backend:
        known = self._kernels.get(kernel_id)
        if known is not None:
            return known
        path = f"/api/kernels/{checked_id(kernel_id, 'kernel')}"
        owner = await self._find_owner(path, f"kernel {kernel_id!r}")
        self._kernels[kernel_id] = owner
        return owner

    # -- sessions ----------------------------------------------------------------------
    def client_session_id(self, backend: Backend, backend_sid: str) -> str:
        return self._session_ids.get((backend.name, backend_sid), backend_sid)

    def remember_session(self, client_sid: str, backend: Backend, backend_sid: str) -> None:
        old = self._sessions.get(client_sid)
        if old is not None:
            self._session_ids.pop((old[0].name, old[1]), None)
        self._sessions[client_sid] = (backend, backend_sid)
        if client_sid != backend_sid:
            self._session_ids[(backend.name, backend_sid)] = client_sid

    def learn_session(self, client_sid: str, backend: Backend, backend_sid: str) -> bool:
        """Record a session seen in a listing, unless the mixer knows that client id to
        be elsewhere: then the listing is older than a move (SPEC §4) and must not
        undo it. Returns whether the session belongs in the listing."""
        known = self._sessions.get(client_sid)
        if known is not None and (known[0] is not backend or known[1] != backend_sid):
            return False
        self.remember_session(client_sid, backend, backend_sid)
        return True

    def forget_session(self, client_sid: str) -> None:
        old = self._sessions.pop(client_sid, None)
        if old is not None:
            self._session_ids.pop((old[0].name, old[1]), None)

    async def session_owner(self, client_sid: str) -> tuple[Backend, str]:
        known = self._sessions.get(client_sid)
        if known is not None:
            return known
        path = f"/api/sessions/{checked_id(client_sid, 'session')}"
        owner = await self._find_owner(path, f"session {client_sid!r}")
        self.remember_session(client_sid, owner, client_sid)
        return owner, client_sid

    # -- asking several backends ---------------------------------------------------------
    async def _find_owner(self, path: str, what: str) -> Backend:
        results = await self.gather(
            lambda b: b.request("GET", path, timeout=b.config.request_timeout),
            timeout=lambda b: b.config.request_timeout,
        )
        unreachable = []
        for backend, result in results:
            if isinstance(result, BackendError):
                unreachable.append(f"{backend.name} ({result.cause})")
            elif result.status == 200:
                return backend
            elif result.status != 404:
                unreachable.append(f"{backend.name} (HTTP {result.status})")
        if unreachable:
            raise BackendUnavailable(
                "/".join(u.split(" ")[0] for u in unreachable),
                f"{what} is not on any backend that answered; no answer from "
                + "; ".join(unreachable),
            )
        raise NotFound(f"{what} not found")

    async def gather(
        self,
        call: Callable[[Backend], Awaitable[T]],
        *,
        timeout: Callable[[Backend], float] | None = None,
    ) -> list[tuple[Backend, T | BackendError]]:
        """Ask every backend at once; each answer is a result or its BackendError.

        A backend known to be down is not waited for (its probe brings it back), unless
        every backend is down — then there is nobody to keep waiting, so all are tried.
        """
        if timeout is None:
            timeout = _list_timeout
        backends = list(self.backends.values())
        live = [b for b in backends if b.health.up] or backends

        async def one(backend: Backend) -> T | BackendError:
            limit = timeout(backend)
            try:
                return await asyncio.wait_for(call(backend), limit)
            except asyncio.TimeoutError:
                error = BackendTimeout(backend.name, f"no answer within {limit:g}s")
                backend.health.failure(error)
                return error
            except BackendError as exc:
                return exc

        answers = await asyncio.gather(*(one(b) for b in live))
        results: list[tuple[Backend, T | BackendError]] = list(zip(live, answers, strict=True))
        for backend in backends:
            if backend not in live:
                results.append(
                    (backend, BackendUnavailable(backend.name, backend.health.last_error or "down"))
                )
        return results


def _list_timeout(backend: Backend) -> float:
    return backend.config.list_timeout


def all_failed(results: list[tuple[Backend, object]]) -> BackendUnavailable | None:
    """The error to answer when no backend contributed to a merged listing."""
    if any(not isinstance(r, BackendError) for _, r in results):
        return None
    causes = "; ".join(f"{b.name}: {getattr(r, 'cause', r)}" for b, r in results)
    return BackendUnavailable("all", f"no backend answered ({causes})")
