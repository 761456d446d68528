"""Sessions (SPEC §4), including the switch of a notebook between backends.

A PATCH that moves a session's kernel to a spec of another backend creates the
session there first and only then deletes it on the old backend (which shuts the old
kernel down), so a failure leaves the notebook where it was. The client keeps the
session id it knows; the registry maps it to the new backend's session id.
"""

from __future__ import annotations

import logging
from typing import Any

from aiohttp import web

from notebook_kernels_mixer.backends import Backend, BackendResponse
from notebook_kernels_mixer.errors import BackendError, BadRequest, NotFound
from notebook_kernels_mixer.resources.common import (
    field,
    json_response,
    passthrough,
    read_json_object,
)
from notebook_kernels_mixer.resources.kernels import translate_kernel
from notebook_kernels_mixer.resources.naming import checked_id
from notebook_kernels_mixer.resources.registry import Registry, all_failed

log = logging.getLogger(__name__)

_MODEL_FIELDS = ("path", "name", "type")


# -- pure translation -------------------------------------------------------------------
def translate_session(model: Any, backend: str, client_id: str | None = None) -> dict[str, Any] | None:
    if not isinstance(model, dict) or not isinstance(model.get("id"), str):
        return None
    out = dict(model)
    if client_id is not None:
        out["id"] = client_id
    kernel = model.get("kernel")
    if kernel is not None:
        out["kernel"] = translate_kernel(kernel, backend) or kernel
    return out


def _kernel_request(body: dict[str, Any]) -> dict[str, Any] | None:
    if "kernel" in body and body["kernel"] is None:
        # jupyter_server answers this with a 500 (AttributeError); say what is wrong.
        raise BadRequest("'kernel' must be an object, not null")
    kernel = field(body, "kernel", dict, "an object")
    if kernel is not None:
        field(kernel, "name", str, "a string")
        field(kernel, "id", str, "a string")
    for name in _MODEL_FIELDS:
        field(body, name, str, "a string")
    return kernel


# -- handlers ----------------------------------------------------------------------------
class SessionsHandlers:
    def __init__(self, registry: Registry) -> None:
        self.registry = registry

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

    def _answer(self, backend: Backend, model: Any, *, status: int = 200,
                client_id: str | None = None) -> web.Response:
        if not isinstance(model, dict) or not isinstance(model.get("id"), str):
            raise BackendError(backend.name, "answered something that is not a session model")
        client_id = client_id or self.registry.client_session_id(backend, model["id"])
        self.registry.remember_session(client_id, backend, model["id"])
        self._remember_kernel(model, backend)
        translated = translate_session(model, backend.name, client_id)
        return json_response(translated, status=status, backend=backend.name)

    def _remember_kernel(self, model: dict[str, Any], backend: Backend) -> None:
        kernel = model.get("kernel")
        if isinstance(kernel, dict) and isinstance(kernel.get("id"), str):
            self.registry.remember_kernel(kernel["id"], backend)

    async def _list_one(self, backend: Backend) -> list[dict[str, Any]]:
        status, answer = await backend.request_json(
            "GET", "/api/sessions", timeout=backend.config.list_timeout
        )
        if status == 404:
            return []  # Kernel/Enterprise Gateway have no sessions API
        if status != 200 or not isinstance(answer, list):
            raise BackendError(backend.name, f"answered HTTP {status} without a session list")
        out = []
        for model in answer:
            if not isinstance(model, dict) or not isinstance(model.get("id"), str):
                continue
            client_id = self.registry.client_session_id(backend, model["id"])
            if not self.registry.learn_session(client_id, backend, model["id"]):
                continue  # a stale copy: the session moved while this list was on its way
            self._remember_kernel(model, backend)
            out.append(translate_session(model, backend.name, client_id))
        return out

    async def list(self, request: web.Request) -> web.Response:
        results = await self.registry.gather(self._list_one)
        failed = all_failed(results)
        if failed is not None:
            raise failed
        return json_response([s for _, r in results if isinstance(r, list) for s in r])

    async def _target(self, kernel: dict[str, Any] | None) -> tuple[Backend | None, dict[str, Any] | None]:
        """The backend a kernel request points at, and the request for that backend."""
        if kernel is None:
            return None, None
        if kernel.get("name") is not None:
            backend, bare = self.registry.spec_backend(kernel["name"])
            return backend, {**kernel, "name": bare}
        if kernel.get("id") is not None:
            checked_id(kernel["id"], "kernel")
            return await self.registry.kernel_owner(kernel["id"]), dict(kernel)
        return None, dict(kernel)

    async def create(self, request: web.Request) -> web.Response:
        body = await read_json_object(request)
        backend, kernel = await self._target(_kernel_request(body))
        backend = backend or self.registry.default
        forward = {**body, "kernel": kernel} if kernel is not None else body
        resp = await backend.request("POST", "/api/sessions", json=forward)
        if not resp.ok:
            return passthrough(resp)
        return self._answer(backend, resp.json(), status=resp.status)

    async def get(self, request: web.Request) -> web.Response:
        client_id = request.match_info["session_id"]
        backend, backend_sid = await self.registry.session_owner(client_id)
        resp = await backend.request("GET", f"/api/sessions/{checked_id(backend_sid, 'session')}")
        self._missing(resp, client_id)
        if resp.status != 200:
            return passthrough(resp)
        return self._answer(backend, resp.json(), client_id=client_id)

    def _missing(self, resp: BackendResponse, client_id: str) -> None:
        if resp.status == 404:
            self.registry.forget_session(client_id)
            raise NotFound(f"session {client_id!r} not found")

    async def patch(self, request: web.Request) -> web.Response:
        client_id = request.match_info["session_id"]
        checked_id(client_id, "session")
        body = await read_json_object(request)
        target, kernel = await self._target(_kernel_request(body))
        backend, backend_sid = await self.registry.session_owner(client_id)
        path = f"/api/sessions/{checked_id(backend_sid, 'session')}"
        if target is None or target is backend:
            forward = {**body, "kernel": kernel} if kernel is not None else body
            resp = await backend.request("PATCH", path, json=forward)
            self._missing(resp, client_id)
            if resp.status != 200:
                return passthrough(resp)
            return self._answer(backend, resp.json(), client_id=client_id)
        return await self._move(client_id, body, backend, path, target, kernel)

    async def _move(self, client_id: str, body: dict[str, Any], old: Backend, old_path: str,
                    new: Backend, kernel: dict[str, Any] | None) -> web.Response:
        current = await old.request("GET", old_path)
        self._missing(current, client_id)
        if current.status != 200:
            return passthrough(current)
        model = current.json()
        if not isinstance(model, dict):
            raise BackendError(old.name, "answered something that is not a session model")
        create = {f: v for f in _MODEL_FIELDS if (v := body.get(f, model.get(f))) is not None}
        create["kernel"] = kernel
        created = await new.request("POST", "/api/sessions", json=create)
        if not created.ok:
            return passthrough(created)  # the old session is untouched
        answer = self._answer(new, created.json(), status=200, client_id=client_id)
        try:
            deleted = await old.request("DELETE", old_path)
            if not deleted.ok and deleted.status != 404:
                log.warning("session %s moved to %r; deleting it on %r answered HTTP %s",
                            client_id, new.name, old.name, deleted.status)
        except BackendError as exc:
            log.warning("session %s moved to %r; deleting it on %r failed: %s",
                        client_id, new.name, old.name, exc.cause)
        old_kernel = model.get("kernel")
        if isinstance(old_kernel, dict) and isinstance(old_kernel.get("id"), str):
            self.registry.forget_kernel(old_kernel["id"])
        log.info("session %s moved from %r to %r", client_id, old.name, new.name)
        return answer

    async def delete(self, request: web.Request) -> web.Response:
        client_id = request.match_info["session_id"]
        backend, backend_sid = await self.registry.session_owner(client_id)
        resp = await backend.request(
            "DELETE", f"/api/sessions/{checked_id(backend_sid, 'session')}"
        )
        self._missing(resp, client_id)
        if resp.ok:
            self.registry.forget_session(client_id)
        return passthrough(resp)

