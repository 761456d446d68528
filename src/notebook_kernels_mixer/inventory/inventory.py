"""The mixer's memory of kernels and sessions, in one place.

For each backend: the kernels and notebook sessions it holds and who owns which id
(``Ownership``, persisted in ``state``), its last-known listings and their age
(``Listings``), and the aliases of moved sessions. Handlers announce what happened —
a kernel created, a session moved, a listing answered, an id gone — and the events
below update ownership, last-known entries and persistence together; no handler
reaches into a cache. Where a crash would lose what only the mixer knows (the id a
moved session's client still uses), the event returns once it is on disk.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, TypeVar

from notebook_kernels_mixer.backends import Backend
from notebook_kernels_mixer.errors import BackendUnavailable, MixerError, NotFound
from notebook_kernels_mixer.inventory.listings import Listing, Listings
from notebook_kernels_mixer.inventory.ownership import Ownership
from notebook_kernels_mixer.resources.fanout import Answer, FanOut
from notebook_kernels_mixer.resources.naming import split_prefixed, valid_id
from notebook_kernels_mixer.state import StateError, StateStore

T = TypeVar("T")
Model = dict[str, Any]


def _kernel_id(model: Model | None) -> str | None:
    """The id of a session model's kernel, if it is one the mixer can route and keep."""
    kernel = model.get("kernel") if isinstance(model, dict) else None
    kernel_id = kernel.get("id") if isinstance(kernel, dict) else None
    return kernel_id if valid_id(kernel_id) else None


class Inventory:
    def __init__(self, backends: Sequence[Backend], *, default: str, local: str,
                 state: StateStore, retention: float, window: float = 0.0) -> None:
        self.backends: dict[str, Backend] = {b.name: b for b in backends}
        self.names = tuple(self.backends)
        self.default = self.backends[default]
        self.local = self.backends[local]
        self.state = state
        self.fanout = FanOut(backends)
        self.owners = Ownership(self.names, state)
        self.listings = Listings(self.fanout, retention=retention, window=window)

    # -- reading ---------------------------------------------------------------------------
    def spec_backend(self, name: object) -> tuple[Backend, str]:
        """The backend a prefixed kernelspec name points at, and the bare name."""
        prefix, bare = split_prefixed(name, self.names)
        return self.backends[prefix], bare

    def kernel_owner(self, kernel_id: str) -> Backend | None:
        name = self.owners.kernel_owner(kernel_id)
        return self.backends[name] if name is not None else None

    def kernels_of(self, backend: Backend) -> list[str]:
        return self.owners.kernels_of(backend.name)

    def session(self, client_sid: str) -> tuple[Backend, str] | None:
        known = self.owners.session(client_sid)
        return (self.backends[known[0]], known[1]) if known is not None else None

    def client_session_id(self, backend: Backend, backend_sid: str) -> str:
        return self.owners.client_session_id(backend.name, backend_sid)

    @property
    def first_seen(self) -> dict[str, float]:
        return self.owners.first_seen

    async def listing(self, kind: Listing, call: Callable[[Backend], Awaitable[T]], *,
                      last_known: bool = True) -> list[Answer[T]]:
        """Every backend's part of a merged listing (``Listings``)."""
        return await self.listings.get(kind, call, last_known=last_known)

    async def find(self, what: str, has: Callable[[Backend], Awaitable[Any]]) -> Backend:
        """The backend on which ``has`` succeeds (NotFound elsewhere); asked all at once."""
        # Down backends are asked too: "not found" must mean not there, not "not asked".
        answers = await self.fanout.gather(has, timeout=lambda b: b.config.request_timeout,
                                           ask_all=True)
        unreachable: list[tuple[str, MixerError]] = []
        for answer in answers:
            if answer.ok:
                return answer.backend
            if answer.error is not None and not isinstance(answer.error, NotFound):
                unreachable.append((answer.backend.name, answer.error))
        if unreachable:
            raise BackendUnavailable(
                "/".join(name for name, _ in unreachable),
                f"{what} is not on any backend that answered; no answer from "
                + "; ".join(f"{name} ({getattr(e, 'cause', e)})" for name, e in unreachable),
            )
        raise NotFound(f"{what} not found")

    def stale(self) -> dict[str, dict[str, float]]:
        return self.listings.stale()

    def sizes(self) -> dict[str, int]:
        return {**self.owners.sizes(), **self.listings.sizes()}

    # -- kernel events ---------------------------------------------------------------------
    def kernel_created(self, backend: Backend, model: Model) -> None:
        """The mixer started ``model`` (merged view) on ``backend``."""
        self.owners.created_kernel(model["id"], backend.name)
        self.listings.amend(Listing.KERNELS, backend.name, add=model)

    def kernel_seen(self, backend: Backend, kernel_id: str) -> bool:
        """``backend`` answered for ``kernel_id`` (a get, a lookup, a session model);
        False if another backend owns that id."""
        return self.owners.listed_kernel(kernel_id, backend.name)

    def kernel_gone(self, backend: Backend, kernel_id: str) -> None:
        """``kernel_id`` was deleted through the mixer, or ``backend`` no longer has it."""
        self.owners.forget_kernel(kernel_id)
        self.listings.amend(Listing.KERNELS, backend.name, remove=kernel_id)

    def kernel_changed(self) -> None:
        """A kernel's state changed through the mixer (restart, interrupt)."""
        self.listings.changed()

    def kernels_listed(self, backend: Backend, ids: Iterable[str], *, started: float) -> set[str]:
        """``backend`` answered a complete kernel listing that began at ``started``
        (monotonic): what it no longer has is forgotten, what it has is learnt.
        Returns the ids it owns (another backend keeps an id they share)."""
        return self.owners.kernels_listed(backend.name, list(ids), started=started)

    # -- session events --------------------------------------------------------------------
    def session_seen(self, backend: Backend, client_sid: str, model: Model) -> None:
        """``backend`` answered with session ``model`` (its own id) for ``client_sid``."""
        self.owners.remember_session(client_sid, backend.name, model["id"])
        kernel_id = _kernel_id(model)
        if kernel_id is not None:
            self.owners.listed_kernel(kernel_id, backend.name)

    def session_changed(self, backend: Backend, client_sid: str, model: Model,
                        translated: Model) -> None:
        """The mixer created or changed session ``model`` on ``backend``;
        ``translated`` is its merged view."""
        self.session_seen(backend, client_sid, model)
        self.listings.amend(Listing.SESSIONS, backend.name, add=translated)
        if isinstance(translated.get("kernel"), dict):
            self.listings.amend(Listing.KERNELS, backend.name, add=translated["kernel"])

    async def session_moved(self, client_sid: str, old: tuple[Backend, str], new: Backend,
                            model: Model, translated: Model) -> None:
        """Session ``client_sid`` (``old``: its backend and that backend's id) now runs
        on ``new`` as ``model``. Returns once that is on disk: after a crash nothing
        else could tell what the client's id stands for. If the state file does not
        take it (``StateError``), the client's id stands for the old session again
        and the new one is forgotten; the caller deletes it on ``new``."""
        self.session_changed(new, client_sid, model, translated)
        try:
            await self.state.flush()
        except StateError:
            self.listings.amend(Listing.SESSIONS, new.name, remove=client_sid)
            kernel_id = _kernel_id(model)
            if kernel_id is not None:
                self.kernel_gone(new, kernel_id)
            self.owners.remember_session(client_sid, old[0].name, old[1])
            raise
        self.listings.amend(Listing.SESSIONS, old[0].name, remove=client_sid)

    def session_deleted(self, backend: Backend, client_sid: str) -> None:
        self.owners.forget_session(client_sid)
        self.listings.amend(Listing.SESSIONS, backend.name, remove=client_sid)

    def session_gone(self, client_sid: str) -> None:
        """A backend said it has no such session (404)."""
        self.owners.forget_session(client_sid)

    def session_found(self, backend: Backend, client_sid: str) -> None:
        """A lookup found ``client_sid`` on ``backend`` under the same id."""
        self.owners.remember_session(client_sid, backend.name, client_sid)

    def sessions_listed(self, backend: Backend, models: Sequence[Model], *,
                        started: float) -> list[tuple[str, Model]]:
        """``backend`` answered a complete session listing that began at ``started``:
        the (client id, model) pairs that belong in the merged listing; a session the
        mixer knows to have moved since the listing began is left out."""
        self.owners.prune(backend.name, started=started, sessions=[m["id"] for m in models])
        out = []
        for model in models:
            client_sid = self.owners.client_session_id(backend.name, model["id"])
            if not self.owners.learn_session(client_sid, backend.name, model["id"]):
                continue  # a stale copy: the session moved while this list was on its way
            kernel_id = _kernel_id(model)
            if kernel_id is not None:
                self.owners.listed_kernel(kernel_id, backend.name)
            out.append((client_sid, model))
        return out
