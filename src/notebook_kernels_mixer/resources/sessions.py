"""Notebook sessions (SPEC §4), including the move of a notebook between backends.

Each backend's sessions live in its ``SessionStore`` (its own API, or kept by the
mixer). A PATCH that moves a session's kernel to a spec of another backend creates
the session there first and only then deletes it on the old backend (which shuts
the old kernel down), so a failure leaves the notebook where it was. The client keeps
the session id it knows; the inventory maps it to the new backend's session id. Moves
of one session are serialized, so two concurrent moves cannot leave an orphan.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from aiohttp import web

from notebook_kernels_mixer.backends import Backend
from notebook_kernels_mixer.carry.service import Carries
from notebook_kernels_mixer.errors import BadRequest, MixerError, NotFound, StateUnavailable
from notebook_kernels_mixer.inventory import Inventory, Listing
from notebook_kernels_mixer.resources.backend_kernels import Model, is_model
from notebook_kernels_mixer.resources.common import field, json_response, read_json_object
from notebook_kernels_mixer.resources.fanout import merged
from notebook_kernels_mixer.resources.kernels import DefaultSpec, KernelsHandlers, translate_kernel
from notebook_kernels_mixer.resources.naming import checked_id, checked_path, checked_text
from notebook_kernels_mixer.resources.session_stores import SessionStore
from notebook_kernels_mixer.state import StateError

log = logging.getLogger(__name__)

_MODEL_FIELDS = ("path", "name", "type")


# -- pure translation -------------------------------------------------------------------
def translate_session(model: Model, backend: str, client_id: str) -> Model:
    out = {**model, "id": client_id}
    kernel = model.get("kernel")
    if isinstance(kernel, dict):
        out["kernel"] = translate_kernel(kernel, backend)
    return out


def kernel_request(body: dict[str, Any]) -> dict[str, Any] | None:
    """The ``kernel`` of a session request, checked; 400 for wrong types."""
    if "kernel" in body and body["kernel"] is None:
        # jupyter_server answers this with a 500 (AttributeError); say what is wrong.
        raise BadRequest("'kernel' must be an object, not null")
    kernel: dict[str, Any] | None = field(body, "kernel", dict, "an object")
    if kernel is not None:
        field(kernel, "name", str, "a string")
        field(kernel, "id", str, "a string")
    for name in _MODEL_FIELDS:
        if field(body, name, str, "a string") is not None:
            (checked_path if name == "path" else checked_text)(body[name], f"session {name}")
    return kernel


# -- handlers ----------------------------------------------------------------------------
class SessionsHandlers:
    def __init__(self, inventory: Inventory, stores: dict[str, SessionStore],
                 kernels: KernelsHandlers, default_spec: DefaultSpec, carries: Carries) -> None:
        self.carries = carries
        self.inventory = inventory
        self.stores = stores
        self.kernels = kernels
        self.default_spec = default_spec
        self._locks: dict[str, tuple[asyncio.Lock, list[int]]] = {}  # lock, [users]

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/api/sessions", self.list),
            web.get("/api/sessions/", self.list),
            web.post("/api/sessions", self.create),
            web.post("/api/sessions/", self.create),
            web.get("/api/sessions/{session_id}", self.get),
            web.patch("/api/sessions/{session_id}", self.patch),
            web.delete("/api/sessions/{session_id}", self.delete),
        ]

    def _answer(self, backend: Backend, model: Model, client_id: str, status: int = 200,
                *, changed: bool = False) -> web.Response:
        """The answer for ``model``; ``changed``: the mixer just created or moved it
        there, so the backend's last-known sessions learn it too."""
        translated = translate_session(model, backend.name, client_id)
        if changed:
            self.inventory.session_changed(backend, client_id, model, translated)
        else:
            self.inventory.session_seen(backend, client_id, model)
        return json_response(translated, status=status, backend=backend.name)

    # -- list ------------------------------------------------------------------------------
    async def listing(self, backend: Backend) -> list[Model]:
        started = time.monotonic()
        models = await self.stores[backend.name].list()
        return [translate_session(model, backend.name, client_id) for client_id, model
                in self.inventory.sessions_listed(backend, models, started=started)]

    async def list(self, request: web.Request) -> web.Response:
        return json_response(merged(await self.inventory.listing(Listing.SESSIONS, self.listing)))

    # -- create ------------------------------------------------------------------------------
    async def _target(self, kernel: dict[str, Any] | None) -> tuple[Backend | None, dict[str, Any] | None]:
        """The backend a kernel request points at, and the request for that backend."""
        if kernel is None:
            return None, None
        if kernel.get("name") is not None:
            backend, bare = self.inventory.spec_backend(kernel["name"])
            return backend, {**kernel, "name": bare}
        if kernel.get("id") is not None:
            return await self.kernels.owner(kernel["id"]), dict(kernel)
        return None, dict(kernel)

    async def create(self, request: web.Request) -> web.Response:
        body = await read_json_object(request)
        backend, kernel = await self._target(kernel_request(body))
        if backend is None:
            # No kernel named: the default that the merged kernelspecs advertise.
            backend, bare = await self.default_spec()
            if bare is not None:
                kernel = {**(kernel or {}), "name": bare}
        forward = {**body, "kernel": kernel} if kernel is not None else body
        model = await self.stores[backend.name].create(forward)
        return self._answer(backend, model, self.inventory.client_session_id(backend, model["id"]),
                            status=201, changed=True)

    # -- one session ------------------------------------------------------------------------
    async def owner(self, client_id: str) -> tuple[Backend, str]:
        checked_id(client_id, "session")
        known = self.inventory.session(client_id)
        if known is not None:
            return known

        async def has(backend: Backend) -> None:
            await self.stores[backend.name].get(client_id)

        backend = await self.inventory.find(f"session {client_id!r}", has)
        self.inventory.session_found(backend, client_id)
        return backend, client_id

    @asynccontextmanager
    async def _gone_if_missing(self, client_id: str) -> AsyncIterator[None]:
        try:
            yield
        except NotFound:
            self.inventory.session_gone(client_id)
            raise NotFound(f"session {client_id!r} not found") from None

    async def get(self, request: web.Request) -> web.Response:
        client_id = request.match_info["session_id"]
        backend, backend_sid = await self.owner(client_id)
        async with self._gone_if_missing(client_id):
            model = await self.stores[backend.name].get(backend_sid)
        return self._answer(backend, model, client_id)

    async def delete(self, request: web.Request) -> web.Response:
        client_id = request.match_info["session_id"]
        self.carries.cancel(client_id)  # a move under way then completes at once
        async with self._serialized(client_id):
            backend, backend_sid = await self.owner(client_id)
            async with self._gone_if_missing(client_id):
                await self.stores[backend.name].delete(backend_sid)
            self.inventory.session_deleted(backend, client_id)
        return web.Response(status=204, headers={"X-Mixer-Backend": backend.name})

    @asynccontextmanager
    async def _serialized(self, client_id: str) -> AsyncIterator[None]:
        """One change at a time per session (two concurrent moves would each create
        a session and leave one kernel running as an orphan)."""
        lock, users = self._locks.setdefault(client_id, (asyncio.Lock(), [0]))
        users[0] += 1
        try:
            async with lock:
                yield
        finally:
            users[0] -= 1
            if not users[0]:
                self._locks.pop(client_id, None)

    async def patch(self, request: web.Request) -> web.Response:
        client_id = request.match_info["session_id"]
        checked_id(client_id, "session")
        body = await read_json_object(request)
        async with self._serialized(client_id):
            target, kernel = await self._target(kernel_request(body))
            backend, backend_sid = await self.owner(client_id)
            if target is None or target is backend:
                forward = {**body, "kernel": kernel} if kernel is not None else body
                async with self._gone_if_missing(client_id):
                    model = await self.stores[backend.name].patch(backend_sid, forward)
                return self._answer(backend, model, client_id, changed=True)
            return await self._move(client_id, body, (backend, backend_sid), target, kernel)

    async def _move(self, client_id: str, body: dict[str, Any], old: tuple[Backend, str],
                    new: Backend, kernel: dict[str, Any] | None) -> web.Response:
        (old_backend, old_sid), old_store = old, self.stores[old[0].name]
        async with self._gone_if_missing(client_id):
            current = await old_store.get(old_sid)
        create = {f: v for f in _MODEL_FIELDS if (v := body.get(f, current.get(f))) is not None}
        create["kernel"] = kernel
        model = await self._create_exactly(new, create)
        await self._carry(client_id, (old_backend, current), (new, model), kernel)
        translated = translate_session(model, new.name, client_id)
        try:
            await self.inventory.session_moved(client_id, old, new, model, translated)
        except StateError as exc:
            await self._delete_copy(client_id, new, model)
            raise StateUnavailable(f"session {client_id} stays on {old_backend.name!r}: its move"
                                   f" could not be recorded ({exc})") from None
        try:
            await old_store.delete(old_sid)
        except MixerError as exc:
            log.warning("session %s moved to %r; deleting it on %r failed: %s",
                        client_id, new.name, old_backend.name, exc)
        old_kernel = current.get("kernel")
        if is_model(old_kernel):
            self.inventory.kernel_gone(old_backend, old_kernel["id"])
        log.info("session %s moved from %r to %r", client_id, old_backend.name, new.name)
        return json_response(translated, backend=new.name)

    async def _carry(self, client_id: str, old: tuple[Backend, Model], new: tuple[Backend, Model],
                     asked: dict[str, Any] | None) -> None:
        """With ``--carry-variables``, the old kernel's variables go into the new one
        before the old one is shut down (SPEC §7). Only into a kernel this move has
        just started by name: a kernel chosen by id, or one the backend already ran
        for this path, has a user namespace of its own."""
        old_kernel, new_kernel = old[1].get("kernel"), new[1].get("kernel")
        if not self.carries.enabled or not is_model(old_kernel) or not is_model(new_kernel):
            return
        if not (asked or {}).get("name") or self.inventory.kernel_owner(new_kernel["id"]):
            log.info("session %s: no carry into kernel %s, which was running before the move",
                     client_id, new_kernel["id"])
            return
        await self.carries.run(client_id, old[0], old_kernel["id"], new[0], new_kernel["id"])

    async def _delete_copy(self, client_id: str, new: Backend, model: Model) -> None:
        """The session created on ``new`` for a move that could not be recorded is
        deleted (its kernel shut down); the inventory already stands by the old one."""
        try:
            await self.stores[new.name].delete(model["id"])
        except MixerError as exc:
            log.warning("session %s: deleting its unrecorded copy on %r failed: %s",
                        client_id, new.name, exc)

    async def _create_exactly(self, backend: Backend, create: dict[str, Any]) -> Model:
        """Create the session on ``backend``; if it already had one for the path (a
        backend answers a create for an existing path with that session), make sure
        its kernel is the one asked for."""
        store = self.stores[backend.name]
        model = await store.create(create)
        wanted = (create.get("kernel") or {}).get("name")
        got = (model.get("kernel") or {}).get("name")
        if wanted and got != wanted:
            log.info("backend %r already had a session for %r with kernel %r; changing it to %r",
                     backend.name, create.get("path"), got, wanted)
            model = await store.patch(model["id"], {"kernel": create["kernel"]})
        return model
