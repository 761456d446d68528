"""The backends, and which backend owns which kernel and notebook session.

Ownership is learnt from every answer that passes through (create, list, get) and,
for an id the mixer has never seen, by asking all backends at once. It lives in the
durable state (``state.StateStore``), so a restarted mixer — even after ``kill -9`` —
still knows where kernels run and which backend session a moved session's id stands
for. What a backend no longer has is forgotten when it answers a complete listing
(``prune``), so the maps stay as large as what the backends hold.

Kernel ids are UUIDs chosen by the backends, but a collision is possible (Enterprise
Gateway lets a client choose one): the backend that created a kernel through the
mixer keeps it; otherwise the backend first in configured order does. Either way the
collision is logged once, and listings show only the owner's kernel.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from notebook_kernels_mixer.backends import Backend
from notebook_kernels_mixer.errors import BackendUnavailable, MixerError, NotFound
from notebook_kernels_mixer.resources.fanout import FanOut
from notebook_kernels_mixer.resources.naming import split_prefixed
from notebook_kernels_mixer.state import StateStore

log = logging.getLogger(__name__)


class Registry:
    def __init__(self, backends: Iterable[Backend], *, default: str, local: str,
                 state: StateStore, fanout: FanOut) -> None:
        self.backends: dict[str, Backend] = {b.name: b for b in backends}
        self.names = tuple(self.backends)
        self.default = self.backends[default]
        self.local = self.backends[local]
        self.state = state
        self.fanout = fanout
        self._order = {name: i for i, name in enumerate(self.names)}
        self._created: set[str] = set()  # kernels started through this mixer
        self._collisions: set[str] = set()  # logged once each
        # When an id was last confirmed: a listing that started earlier must not prune it.
        self._touched: dict[str, float] = {}
        self.first_seen: dict[str, float] = {}  # kernel id -> wall time (ages in status)
        # (backend, backend's session id) -> client-visible id, for moved sessions
        self._aliases: dict[tuple[str, str], str] = {
            (b, bsid): csid for csid, (b, bsid) in state.sessions.items() if csid != bsid
        }

    def spec_backend(self, name: object) -> tuple[Backend, str]:
        prefix, bare = split_prefixed(name, self.names)
        return self.backends[prefix], bare

    # -- kernels -------------------------------------------------------------------------
    def owner(self, kernel_id: str) -> Backend | None:
        name = self.state.kernels.get(kernel_id)
        return self.backends.get(name) if name else None

    def created_kernel(self, kernel_id: str, backend: Backend) -> None:
        """Ownership from creation wins over anything a listing says."""
        self._created.add(kernel_id)
        self._set_kernel(kernel_id, backend)

    def listed_kernel(self, kernel_id: str, backend: Backend) -> bool:
        """Learn a kernel seen on ``backend``; False if another backend owns that id."""
        owner = self.owner(kernel_id)
        if owner is not None and owner is not backend:
            if kernel_id not in self._collisions:
                self._collisions.add(kernel_id)
                log.warning("kernel id %s exists on backends %r and %r; %r keeps it", kernel_id,
                            owner.name, backend.name, self._winner(kernel_id, owner, backend).name)
            if self._winner(kernel_id, owner, backend) is owner:
                return False
        self._set_kernel(kernel_id, backend)
        return True

    def _winner(self, kernel_id: str, owner: Backend, other: Backend) -> Backend:
        if kernel_id in self._created:
            return owner
        return min(owner, other, key=lambda b: self._order[b.name])

    def _set_kernel(self, kernel_id: str, backend: Backend) -> None:
        self.state.put_kernel(kernel_id, backend.name)
        self._touched[kernel_id] = time.monotonic()
        self.first_seen.setdefault(kernel_id, time.time())

    def forget_kernel(self, kernel_id: str) -> None:
        self.state.drop_kernel(kernel_id)
        self._created.discard(kernel_id)
        self._collisions.discard(kernel_id)
        self._touched.pop(kernel_id, None)
        self.first_seen.pop(kernel_id, None)

    def kernels_of(self, backend: Backend) -> list[str]:
        return [k for k, name in self.state.kernels.items() if name == backend.name]

    # -- notebook sessions ---------------------------------------------------------------
    def session(self, client_sid: str) -> tuple[Backend, str] | None:
        known = self.state.sessions.get(client_sid)
        if known is None or known[0] not in self.backends:
            return None
        return self.backends[known[0]], known[1]

    def client_session_id(self, backend: Backend, backend_sid: str) -> str:
        return self._aliases.get((backend.name, backend_sid), backend_sid)

    def remember_session(self, client_sid: str, backend: Backend, backend_sid: str) -> None:
        if self.state.sessions.get(client_sid) != (backend.name, backend_sid):
            self.forget_session(client_sid, keep_touch=True)
            self.state.put_session(client_sid, backend.name, backend_sid)
        if client_sid != backend_sid:
            self._aliases[(backend.name, backend_sid)] = client_sid
        self._touched["s:" + client_sid] = time.monotonic()

    def learn_session(self, client_sid: str, backend: Backend, backend_sid: str) -> bool:
        """Record a session seen in a listing, unless the mixer knows that client id to
        be elsewhere: then the listing is older than a move (SPEC §4) and must not
        undo it. Returns whether the session belongs in the listing."""
        known = self.session(client_sid)
        if known is not None and (known[0] is not backend or known[1] != backend_sid):
            return False
        if known is None:
            self.remember_session(client_sid, backend, backend_sid)
        return True

    def forget_session(self, client_sid: str, *, keep_touch: bool = False) -> None:
        old = self.state.sessions.get(client_sid)
        if old is not None:
            self._aliases.pop(old, None)
            self.state.drop_session(client_sid)
        if not keep_touch:
            self._touched.pop("s:" + client_sid, None)

    # -- forgetting --------------------------------------------------------------------------
    def prune(self, backend: Backend, *, started: float, kernels: Iterable[str] | None = None,
              sessions: Iterable[str] | None = None) -> None:
        """``backend`` answered a complete listing that began at ``started`` (monotonic):
        what it no longer has, and nobody confirmed since, is forgotten."""
        def stale(key: str) -> bool:
            return self._touched.get(key, 0.0) < started

        if kernels is not None:
            present = set(kernels)
            for kernel_id in self.kernels_of(backend):
                if kernel_id not in present and stale(kernel_id):
                    self.forget_kernel(kernel_id)
        if sessions is not None:
            present = set(sessions)
            for csid, (name, bsid) in list(self.state.sessions.items()):
                if name == backend.name and bsid not in present and stale("s:" + csid):
                    self.forget_session(csid)

    # -- finding an id on the backends -----------------------------------------------------
    async def find(self, what: str, has: Callable[[Backend], Awaitable[Any]]) -> Backend:
        """The backend on which ``has`` succeeds (NotFound elsewhere); asked all at once."""
        # Down backends are asked too: "not found" must mean not there, not "not asked".
        answers = await self.fanout.gather(has, timeout=lambda b: b.config.request_timeout,
                                           ask_all=True)
        unreachable: list[tuple[str, MixerError]] = []
        for answer in answers:
            if answer.ok:
                return answer.backend
            if not isinstance(answer.error, NotFound):
                assert answer.error is not None
                unreachable.append((answer.backend.name, answer.error))
        if unreachable:
            raise BackendUnavailable(
                "/".join(name for name, _ in unreachable),
                f"{what} is not on any backend that answered; no answer from "
                + "; ".join(f"{name} ({getattr(e, 'cause', e)})" for name, e in unreachable),
            )
        raise NotFound(f"{what} not found")

    def sizes(self) -> dict[str, int]:
        """How much the mixer remembers (status, soak): bounded by what backends hold."""
        return {
            "kernels": len(self.state.kernels),
            "sessions": len(self.state.sessions),
            "session_aliases": len(self._aliases),
            "kept_sessions": len(self.state.kept),
            "timestamps": len(self._touched),
            "created": len(self._created),
            "first_seen": len(self.first_seen),
        }
