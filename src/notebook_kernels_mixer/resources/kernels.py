"""Kernels (SPEC §4): a merged list, and every per-kernel call routed to its owner.

Models keep the backend's fields and formats untouched (GatewayClient parses
``last_activity`` with a fixed format); only ``name`` gains the backend prefix.
"""

from __future__ import annotations

import logging
from typing import Any

from aiohttp import web

from notebook_kernels_mixer.backends import Backend
from notebook_kernels_mixer.errors import BackendError, BadRequest, NotFound
from notebook_kernels_mixer.relay import Relay
from notebook_kernels_mixer.resources.common import (
    field,
    json_response,
    passthrough,
    read_json_object,
)
from notebook_kernels_mixer.resources.naming import checked_id, prefixed
from notebook_kernels_mixer.resources.registry import Registry, all_failed

log = logging.getLogger(__name__)


# -- pure translation -------------------------------------------------------------------
def translate_kernel(model: Any, backend: str) -> dict[str, Any] | None:
    if not isinstance(model, dict) or not isinstance(model.get("id"), str):
        return None
    name = model.get("name")
    if isinstance(name, str):
        return {**model, "name": prefixed(backend, name)}
    return dict(model)


def translate_kernels(answer: Any, backend: str) -> list[dict[str, Any]]:
    if not isinstance(answer, list):
        raise BackendError(backend, "answered something that is not a list of kernels")
    return [k for k in (translate_kernel(m, backend) for m in answer) if k is not None]


# -- handlers ----------------------------------------------------------------------------
class KernelsHandlers:
    def __init__(self, registry: Registry, relay: Relay) -> None:
        self.registry = registry
        self.relay = relay

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

    async def _list_one(self, backend: Backend) -> list[dict[str, Any]]:
        for attempt in (1, 2):
            resp = await backend.request("GET", "/api/kernels", timeout=backend.config.list_timeout)
            # jupyter_server 2.21 sometimes answers 500 while a kernel is starting
            # (last_activity still None); a second look a moment later is fine.
            if resp.status < 500 or attempt == 2:
                break
        if resp.status != 200:
            raise BackendError(backend.name, f"answered HTTP {resp.status} to GET /api/kernels")
        kernels = translate_kernels(resp.json(), backend.name)
        for kernel in kernels:
            self.registry.remember_kernel(kernel["id"], backend)
        return kernels

    async def list(self, request: web.Request) -> web.Response:
        results = await self.registry.gather(self._list_one)
        failed = all_failed(results)
        if failed is not None:
            raise failed
        merged = [k for _, r in results if isinstance(r, list) for k in r]
        return json_response(merged)

    async def create(self, request: web.Request) -> web.Response:
        body = await read_json_object(request)
        name = field(body, "name", str, "a string")
        field(body, "env", dict, "an object")
        field(body, "path", str, "a string")
        if name is None:
            backend, forward = self.registry.default, dict(body)
        else:
            backend, bare = self.registry.spec_backend(name)
            forward = {**body, "name": bare}
        resp = await backend.request("POST", "/api/kernels", json=forward)
        if not resp.ok:
            return passthrough(resp)
        model = translate_kernel(resp.json(), backend.name)
        if model is None:
            raise BackendError(backend.name, "answered a kernel start without a kernel model")
        self.registry.remember_kernel(model["id"], backend)
        headers = {"Location": f"/api/kernels/{checked_id(model['id'], 'kernel')}"}
        response = json_response(model, status=resp.status, backend=backend.name)
        response.headers.update(headers)
        return response

    async def _owner(self, request: web.Request) -> tuple[Backend, str, str]:
        kernel_id = request.match_info["kernel_id"]
        quoted = checked_id(kernel_id, "kernel")
        return await self.registry.kernel_owner(kernel_id), kernel_id, quoted

    async def get(self, request: web.Request) -> web.Response:
        backend, kernel_id, quoted = await self._owner(request)
        resp = await backend.request("GET", f"/api/kernels/{quoted}")
        return self._kernel_answer(resp, backend, kernel_id)

    async def delete(self, request: web.Request) -> web.Response:
        backend, kernel_id, quoted = await self._owner(request)
        resp = await backend.request("DELETE", f"/api/kernels/{quoted}")
        if resp.ok or resp.status == 404:
            self.registry.forget_kernel(kernel_id)
        if resp.status == 404:
            raise NotFound(f"kernel {kernel_id!r} not found")
        return passthrough(resp)

    async def action(self, request: web.Request) -> web.Response:
        backend, kernel_id, quoted = await self._owner(request)
        action = request.match_info["action"]
        # GatewayClient posts "{}" here: whatever the body is, it is not a kernel model,
        # and the backends ignore it; send an empty object.
        resp = await backend.request("POST", f"/api/kernels/{quoted}/{action}", json={})
        if resp.status == 200 and resp.body:
            return self._kernel_answer(resp, backend, kernel_id)
        if resp.status == 404:
            raise NotFound(f"kernel {kernel_id!r} not found")
        return passthrough(resp)

    def _kernel_answer(self, resp: Any, backend: Backend, kernel_id: str) -> web.Response:
        if resp.status == 404:
            self.registry.forget_kernel(kernel_id)
            raise NotFound(f"kernel {kernel_id!r} not found")
        if resp.status != 200:
            return passthrough(resp)
        model = translate_kernel(resp.json(), backend.name)
        if model is None:
            raise BackendError(backend.name, "answered something that is not a kernel model")
        return json_response(model, backend=backend.name)

    async def channels(self, request: web.Request) -> web.StreamResponse:
        kernel_id = request.match_info["kernel_id"]
        quoted = checked_id(kernel_id, "kernel")
        if request.headers.get("Upgrade", "").lower() != "websocket":
            raise BadRequest("this endpoint takes a websocket upgrade")
        try:
            backend = await self.registry.kernel_owner(kernel_id)
        except NotFound:
            raise
        except BackendError as exc:
            # Closing (not an HTTP error) makes JupyterLab retry rather than declare
            # the kernel dead (SPEC §4).
            return await self.relay.refuse(request, exc)
        return await self.relay.run(
            request, backend, f"/api/kernels/{quoted}/channels", on_missing=lambda: (
                self.registry.forget_kernel(kernel_id)
            )
        )
