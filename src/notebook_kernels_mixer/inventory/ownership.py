"""Which backend owns which kernel id and notebook session id.

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
from collections.abc import Iterable, Sequence

from notebook_kernels_mixer.state import StateStore

log = logging.getLogger(__name__)


class Ownership:
    def __init__(self, names: Iterable[str], state: StateStore) -> None:
        self.names = tuple(names)
        self.state = state
        self._order = {name: i for i, name in enumerate(self.names)}
        self._created: set[str] = set()  # kernels started through this mixer
        self._collisions: set[str] = set()  # logged once each
        # When an id was last confirmed: a listing that started earlier must not prune it.
        # A kernel's time is the later of its entry here and of the last complete listing
        # of its backend if that had it (``_listed``: one time for a whole listing).
        self._touched: dict[str, float] = {}
        self._listed: dict[str, tuple[float, set[str]]] = {}  # backend -> (time, ids)
        self.first_seen: dict[str, float] = {}  # kernel id -> wall time (ages in status)
        # backend -> the ids of the kernels it owns, in the order learnt (an ordered set):
        # what the state says, indexed, so a listing compares sets instead of scanning
        # the state (every change of a kernel's owner goes through _set_kernel/forget_kernel)
        self._by_backend: dict[str, dict[str, None]] = {name: {} for name in self.names}
        for kernel_id, name in state.kernels.items():
            self._by_backend.setdefault(name, {})[kernel_id] = None
        self._unaged = set(state.kernels)  # known from the state file, not seen yet
        # (backend, backend's session id) -> client-visible id, for moved sessions
        self._aliases: dict[tuple[str, str], str] = {
            (b, bsid): csid for csid, (b, bsid) in state.sessions.items() if csid != bsid
        }

    # -- kernels -------------------------------------------------------------------------
    def kernel_owner(self, kernel_id: str) -> str | None:
        name = self.state.kernels.get(kernel_id)
        return name if name in self._order else None

    def created_kernel(self, kernel_id: str, backend: str) -> None:
        """Ownership from creation wins over anything a listing says."""
        self._created.add(kernel_id)
        self._set_kernel(kernel_id, backend)

    def listed_kernel(self, kernel_id: str, backend: str) -> bool:
        """Learn a kernel seen on ``backend``; False if another backend owns that id."""
        if kernel_id in self._by_backend.get(backend, ()):  # known to be its: confirmed
            self._touched[kernel_id] = time.monotonic()
            self._age(kernel_id, time.time())
            return True
        owner = self.kernel_owner(kernel_id)
        if owner is not None and owner != backend:
            winner = self._winner(kernel_id, owner, backend)
            if kernel_id not in self._collisions:
                self._collisions.add(kernel_id)
                log.warning("kernel id %s exists on backends %r and %r; %r keeps it",
                            kernel_id, owner, backend, winner)
            if winner == owner:
                return False
        self._set_kernel(kernel_id, backend)
        return True

    def kernels_listed(self, backend: str, ids: Sequence[str], *, started: float) -> set[str]:
        """``backend`` answered a complete kernel listing of ``ids`` that began at
        ``started`` (monotonic): what it no longer has, and nobody confirmed since, is
        forgotten (``prune``); what it has is learnt (``listed_kernel``). Returns the ids
        it owns. Incremental: a kernel it is already known to own only has its
        confirmation time renewed, by set operations on the whole listing (no state
        write, no per-id check), so only ids that are new or gone cost Python work
        (issue 20: the bookkeeping was most of the mixer's per-kernel cost of a listing).
        The set returned is also this listing's record (``_listed``): read it, never
        change it."""
        # (set.intersection with a dict looks each of the dict's keys up in the set: it
        # costs as much as the backend's kernels, not as all the kernels known)
        present = set(ids)
        mine = self._by_backend.setdefault(backend, {})
        known = present.intersection(mine)
        if len(known) < len(mine):  # some are gone
            # their confirmation by the listing before this one outlives its record
            self._prune_kernels(backend, [k for k in mine if k not in known], started, keep=True)
        self._listed[backend] = (time.monotonic(), known)  # confirms what it owns
        if self._unaged:
            wall = time.time()
            for kernel_id in [k for k in ids if k in self._unaged]:
                self._age(kernel_id, wall)
        if len(known) < len(present):  # some are new
            new = present - known
            for kernel_id in ids:
                if kernel_id in new:
                    new.discard(kernel_id)
                    if self.listed_kernel(kernel_id, backend):
                        known.add(kernel_id)
        return known

    def _age(self, kernel_id: str, wall: float) -> None:
        """Its age starts now if it has none yet (a kernel known from the state file)."""
        self.first_seen.setdefault(kernel_id, wall)
        self._unaged.discard(kernel_id)

    def _winner(self, kernel_id: str, owner: str, other: str) -> str:
        if kernel_id in self._created:
            return owner
        return min(owner, other, key=self._order.__getitem__)

    def _set_kernel(self, kernel_id: str, backend: str) -> None:
        self.state.put_kernel(kernel_id, backend)
        mine = self._by_backend.setdefault(backend, {})
        if kernel_id not in mine:  # an id is in one backend's index at most
            for ids in self._by_backend.values():
                ids.pop(kernel_id, None)
            mine[kernel_id] = None
        self._touched[kernel_id] = time.monotonic()
        self._age(kernel_id, time.time())

    def forget_kernel(self, kernel_id: str) -> None:
        self.state.drop_kernel(kernel_id)
        for ids in self._by_backend.values():
            ids.pop(kernel_id, None)
        for _, listed in self._listed.values():
            listed.discard(kernel_id)
        self._unaged.discard(kernel_id)
        self._created.discard(kernel_id)
        self._collisions.discard(kernel_id)
        self._touched.pop(kernel_id, None)
        self.first_seen.pop(kernel_id, None)

    def kernels_of(self, backend: str) -> list[str]:
        return list(self._by_backend.get(backend, ()))

    # -- notebook sessions ---------------------------------------------------------------
    def session(self, client_sid: str) -> tuple[str, str] | None:
        known = self.state.sessions.get(client_sid)
        if known is None or known[0] not in self._order:
            return None
        return known[0], known[1]

    def client_session_id(self, backend: str, backend_sid: str) -> str:
        return self._aliases.get((backend, backend_sid), backend_sid)

    def remember_session(self, client_sid: str, backend: str, backend_sid: str) -> None:
        if self.state.sessions.get(client_sid) != (backend, backend_sid):
            self.forget_session(client_sid, keep_touch=True)
            self.state.put_session(client_sid, backend, backend_sid)
        if client_sid != backend_sid:
            self._aliases[(backend, backend_sid)] = client_sid
        self._touched["s:" + client_sid] = time.monotonic()

    def learn_session(self, client_sid: str, backend: str, backend_sid: str) -> bool:
        """Record a session seen in a listing, unless the mixer knows that client id to
        be elsewhere: then the listing is older than a move (SPEC §4) and must not
        undo it. Returns whether the session belongs in the listing."""
        known = self.session(client_sid)
        if known is not None and known != (backend, backend_sid):
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
    def prune(self, backend: str, *, started: float, kernels: Iterable[str] | None = None,
              sessions: Iterable[str] | None = None) -> None:
        """``backend`` answered a complete listing that began at ``started`` (monotonic):
        what it no longer has, and nobody confirmed since, is forgotten."""
        if kernels is not None:
            present = set(kernels)
            self._prune_kernels(backend, [k for k in self.kernels_of(backend) if k not in present],
                                started)
        if sessions is not None:
            present = set(sessions)
            for csid, (name, bsid) in list(self.state.sessions.items()):
                if name == backend and bsid not in present and self._stale("s:" + csid, started):
                    self.forget_session(csid)

    def _stale(self, key: str, started: float) -> bool:
        """Not confirmed since a listing that began at ``started``."""
        return self._touched.get(key, 0.0) < started

    def _prune_kernels(self, backend: str, missing: list[str], started: float, *,
                       keep: bool = False) -> None:
        """Forget the kernels of ``backend`` in ``missing`` not confirmed since
        ``started``; ``keep``: the time of those it keeps is kept in ``_touched`` (the
        record of its last listing is about to be replaced)."""
        at, listed = self._listed.get(backend, (0.0, set()))
        for kernel_id in missing:
            confirmed = self._touched.get(kernel_id, 0.0)
            if at > confirmed and kernel_id in listed:
                confirmed = at
            if confirmed < started:
                self.forget_kernel(kernel_id)
            elif keep:
                self._touched[kernel_id] = confirmed

    def sizes(self) -> dict[str, int]:
        """How much the mixer remembers (status, soak): bounded by what backends hold."""
        return {
            "kernels": len(self.state.kernels),
            "sessions": len(self.state.sessions),
            "session_aliases": len(self._aliases),
            "kept_sessions": len(self.state.kept),
            "timestamps": len(self._touched.keys() | set().union(*(
                ids for _, ids in self._listed.values()))),
            "created": len(self._created),
            "first_seen": len(self.first_seen),
        }
