"""Kernels (SPEC §4): a merged list, and every per-kernel call routed to its owner.

Models keep the backend's fields and formats untouched (GatewayClient parses
``last_activity`` with a fixed format); only ``name`` gains the backend prefix.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Mapping

from aiohttp import web

from notebook_kernels_mixer.backends import Backend
from notebook_kernels_mixer.errors import BackendError, BadRequest, Conflict, NotFound
from notebook_kernels_mixer.inventory import Inventory, Listing
from notebook_kernels_mixer.relay import Relay
from notebook_kernels_mixer.relay.relay import channels_path
from notebook_kernels_mixer.resources.backend_kernels import BackendKernels, Model
from notebook_kernels_mixer.resources.common import field, json_response, read_json_object
from notebook_kernels_mixer.resources.fanout import merged
from notebook_kernels_mixer.resources.naming import checked_id, checked_path, prefixed

log = logging.getLogger(__name__)

DefaultSpec = Callable[[], Awaitable[tuple[Backend, str | None]]]


# -- pure translation -------------------------------------------------------------------
def translate_kernel(model: Model, backend: str) -> Model:
    name = model.get("name")
    return {**model, "name": prefixed(backend, name)} if isinstance(name, str) else dict(model)


def translate_kernels(models: list[Model], backend: str, owned: set[str]) -> list[Model]:
    """``translate_kernel`` of the models in ``owned``, for a whole listing whose models
    are the caller's own (``BackendKernels.list`` decodes them for each call): the name
    is prefixed in place, in one loop without a call or a new dict per kernel (a
    listing's cost grows with its kernels)."""
    prefix = prefixed(backend, "")
    if len(owned) < len(models):  # else every id is owned (owned ⊆ the ids listed)
        models = [m for m in models if m["id"] in owned]
    for m in models:
        try:
            m["name"] = prefix + m["name"]
        except (KeyError, TypeError):  # no name, or not a string: left as it is
            continue  # (a try costs nothing per kernel, contextlib.suppress would)
    return models


# -- handlers ----------------------------------------------------------------------------
class KernelsHandlers:
    def __init__(self, inventory: Inventory, relay: Relay, kernels: Mapping[str, BackendKernels],
                 default_spec: DefaultSpec) -> None:
        self.inventory = inventory
        self.relay = relay
        self.kernels = kernels
        self.default_spec = default_spec

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/api/kernels", self.list),
            web.get("/api/kernels/", self.list),
            web.post("/api/kernels", self.create),
            web.post("/api/kernels/", self.create),
            web.get("/api/kernels/{kernel_id}", self.get),
            web.delete("/api/kernels/{kernel_id}", self.delete),
            web.post("/api/kernels/{kernel_id}/{action:interrupt|restart}", self.action),
            web.get("/api/kernels/{kernel_id}/channels", self.channels),
        ]

    async def listing(self, backend: Backend) -> list[Model]:
        """One backend's kernels, translated; ownership learnt, gone ones forgotten."""
        started = time.monotonic()
        models = await self.kernels[backend.name].list()
        owned = self.inventory.kernels_listed(backend, [m["id"] for m in models], started=started)
        return translate_kernels(models, backend.name, owned)

    async def list(self, request: web.Request) -> web.Response:
        return json_response(merged(await self.inventory.listing(Listing.KERNELS, self.listing)))

    async def create(self, request: web.Request) -> web.Response:
        body = await read_json_object(request)
        name = field(body, "name", str, "a string")
        env = field(body, "env", dict, "an object") or {}
        if field(body, "path", str, "a string") is not None:
            checked_path(body["path"], "kernel path")
        chosen = env.get("KERNEL_ID")
        if isinstance(chosen, str) and self.inventory.kernel_owner(chosen) is not None:
            # Enterprise Gateway lets a client choose the id; one the mixer already
            # routes elsewhere would make two kernels share it.
            raise Conflict(f"kernel id {chosen!r} (env.KERNEL_ID) is already in use")
        if name is None:
            backend, bare = await self.default_spec()
        else:
            backend, bare = self.inventory.spec_backend(name)
        forward = {**body, "name": bare} if bare else {k: v for k, v in body.items() if k != "name"}
        status, model = await self.kernels[backend.name].start(forward)
        translated = translate_kernel(model, backend.name)
        self.inventory.kernel_created(backend, translated)
        response = json_response(translated, status=status, backend=backend.name)
        response.headers["Location"] = f"/api/kernels/{checked_id(model['id'], 'kernel')}"
        return response

    async def owner(self, kernel_id: str) -> Backend:
        """The backend that runs ``kernel_id``; asks them all for an id not known yet."""
        checked_id(kernel_id, "kernel")
        known = self.inventory.kernel_owner(kernel_id)
        if known is not None:
            return known

        async def has(backend: Backend) -> None:
            if await self.kernels[backend.name].get(kernel_id) is None:
                raise NotFound(f"kernel {kernel_id!r} not found")

        backend = await self.inventory.find(f"kernel {kernel_id!r}", has)
        self.inventory.kernel_seen(backend, kernel_id)
        return backend

    async def get(self, request: web.Request) -> web.Response:
        kernel_id = request.match_info["kernel_id"]
        backend = await self.owner(kernel_id)
        model = await self.kernels[backend.name].get(kernel_id)
        if model is None:
            raise self._gone(kernel_id, backend)
        return json_response(translate_kernel(model, backend.name), backend=backend.name)

    def _gone(self, kernel_id: str, backend: Backend) -> NotFound:
        """The backend says it has no such kernel: forgotten, and the error to raise."""
        self.inventory.kernel_gone(backend, kernel_id)
        return NotFound(f"kernel {kernel_id!r} not found")

    async def delete(self, request: web.Request) -> web.Response:
        kernel_id = request.match_info["kernel_id"]
        backend = await self.owner(kernel_id)
        if not await self.kernels[backend.name].delete(kernel_id):
            raise self._gone(kernel_id, backend)
        self.inventory.kernel_gone(backend, kernel_id)
        return web.Response(status=204, headers={"X-Mixer-Backend": backend.name})

    async def action(self, request: web.Request) -> web.Response:
        kernel_id = request.match_info["kernel_id"]
        backend = await self.owner(kernel_id)
        try:
            status, model = await self.kernels[backend.name].action(
                kernel_id, request.match_info["action"])
        except NotFound:
            raise self._gone(kernel_id, backend) from None
        self.inventory.kernel_changed()  # a restart changes the kernel's state
        if model is None:
            return web.Response(status=status, headers={"X-Mixer-Backend": backend.name})
        return json_response(translate_kernel(model, backend.name), status=status,
                             backend=backend.name)

    async def channels(self, request: web.Request) -> web.StreamResponse:
        kernel_id = request.match_info["kernel_id"]
        checked_id(kernel_id, "kernel")
        if request.headers.get("Upgrade", "").lower() != "websocket":
            raise BadRequest("this endpoint takes a websocket upgrade")
        try:
            backend = await self.owner(kernel_id)
        except BackendError as exc:
            # Closing (not an HTTP error) makes JupyterLab retry rather than declare
            # the kernel dead (SPEC §4).
            return await self.relay.refuse(request, exc)
        try:
            # one spelling of the path, so the relay knows which kernel a socket serves
            return await self.relay.run(request, backend, channels_path(kernel_id))
        except NotFound:
            self.inventory.kernel_gone(backend, kernel_id)
            raise
