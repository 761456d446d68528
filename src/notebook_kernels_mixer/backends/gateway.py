"""Backends whose notebook sessions the mixer keeps: Kernel and Enterprise Gateway.

jupyter_server keeps sessions itself (``/api/sessions``), and the sessions handlers
(``resources/sessions.py``) rely on that API to move a notebook between backends:
``GET`` the old session, ``POST`` one on the new backend, ``DELETE`` the old one.
The gateways cannot be used that way (observed with Kernel Gateway 3.0.1 on
jupyter_server 2.21 and Enterprise Gateway 3.3.0 on jupyter_server 1.24):

* listing kernels and sessions answers 403 unless the gateway runs with
  ``list_kernels`` (``KG_LIST_KERNELS=True`` / ``EG_LIST_KERNELS=True``);
* ``GET`` and ``PATCH /api/sessions/{id}`` of an existing session answer 500 (their
  in-memory session manager is synchronous where jupyter_server's handlers await it),
  and their session models carry ``notebook.path`` but no ``path``/``type``;
* they serve no ``GET /api/status`` (jupyter_server does).

Their kernels API, though, is complete. So a ``GatewayBackend`` answers the sessions
API itself, as a thin session store over the backend's kernels: a session is a record
(id, path, name, type, kernel id) in the mixer; its kernel model is read from the
backend on every answer, and a session whose kernel is gone is gone. The handlers above
see an ordinary backend. The records live in the mixer's memory, like the gateways'
own: after a restart of the mixer the kernels are still found by id, the sessions not.

Independently, when listing kernels is forbidden (403), ``GET /api/kernels`` is
answered with the kernels started or found through this mixer, each asked for by id,
so that merged listings (and GatewayClient, which drops the kernels a listing lacks)
still show them.

``sessions = "auto"`` decides once, on the first sessions call: Google's kernel
service (auth ``gcloud``/``google-adc``) and servers that answer ``GET /api/status``
(jupyter_server) keep their own sessions; a server that answers it with 404 (a
gateway) gets mixer-kept sessions.
"""

from __future__ import annotations

import asyncio
import logging
import posixpath
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from multidict import CIMultiDict, CIMultiDictProxy

from notebook_kernels_mixer import jsonutil
from notebook_kernels_mixer.backends.base import Backend, BackendResponse
from notebook_kernels_mixer.backends.credentials import Credentials
from notebook_kernels_mixer.config import BackendConfig
from notebook_kernels_mixer.errors import BackendError

log = logging.getLogger(__name__)

_JSON_HEADERS = CIMultiDictProxy(CIMultiDict({"Content-Type": "application/json"}))


@dataclass
class SessionRecord:
    """A session the mixer keeps for a backend without a usable sessions API."""

    id: str
    path: str
    name: str
    type: str
    kernel_id: str

    def model(self, kernel: dict[str, Any]) -> dict[str, Any]:
        # jupyter_server 2's session model, including the legacy "notebook" field.
        return {
            "id": self.id,
            "path": self.path,
            "name": self.name,
            "type": self.type,
            "kernel": kernel,
            "notebook": {"path": self.path, "name": self.name},
        }


class GatewayBackend(Backend):
    """A Backend that keeps sessions over the kernels API when the server cannot."""

    def __init__(self, config: BackendConfig, credentials: Credentials) -> None:
        super().__init__(config, credentials)
        mode: str | None = config.sessions
        if mode == "auto":
            mode = "backend" if config.auth in ("gcloud", "google-adc") else None
        self._mode = mode
        self.sessions: dict[str, SessionRecord] = {}
        #: Kernels started or found through the mixer (the listing fallback).
        self.known_kernels: set[str] = set()
        self._list_forbidden = False  # the last GET /api/kernels answered 403
        self._list_forbidden_logged = False

    # -- the one entry point --------------------------------------------------------------
    async def request(
        self,
        method: str,
        path: str,
        *,
        query: str = "",
        body: bytes | None = None,
        json: Any = None,
        timeout: float | None = None,
        headers: Any = None,
    ) -> BackendResponse:
        if (path == "/api/sessions" or path.startswith("/api/sessions/")) and (
            await self.sessions_mode() == "mixer"
        ):
            if json is None and body:
                try:
                    json = jsonutil.loads(body)
                except jsonutil.JSONDecodeError:
                    return self._error(400, "request body is not valid JSON")
            return await self._sessions(method, path, json, timeout)
        resp = await super().request(
            method, path, query=query, body=body, json=json, timeout=timeout, headers=headers
        )
        return await self._learn(method, path, resp, timeout)

    async def sessions_mode(self) -> str:
        """"backend" or "mixer"; asks the server once when configured "auto"."""
        if self._mode is not None:
            return self._mode
        resp = await super().request("GET", "/api/status")
        if resp.status == 200:
            self._mode = "backend"
        elif resp.status == 404:
            self._mode = "mixer"
            log.info("backend %r has no jupyter_server sessions API (a Kernel or Enterprise "
                     "Gateway): the mixer keeps its notebook sessions", self.name)
        else:
            raise BackendError(
                self.name, f"cannot tell whether it keeps sessions: GET /api/status "
                f"answered HTTP {resp.status}"
            )
        return self._mode

    def state(self) -> dict[str, object]:
        state = super().state()
        state["sessions_kept_by"] = self._mode or "not known yet"
        if self._list_forbidden:
            state["kernel_listing"] = "forbidden; the mixer lists the kernels it started there"
        return state

    # -- kernels: remember ids, list them when the backend forbids listing ----------------
    async def _learn(self, method: str, path: str, resp: BackendResponse,
                     timeout: float | None) -> BackendResponse:
        if path == "/api/kernels":
            if method == "POST" and resp.ok:
                model = resp.json()
                if isinstance(model, dict) and isinstance(model.get("id"), str):
                    self.known_kernels.add(model["id"])
            elif method == "GET":
                self._list_forbidden = resp.status == 403
                if self._list_forbidden:
                    return await self._kernel_list_fallback(timeout)
        elif path.startswith("/api/kernels/") and path.count("/") == 3:
            kernel_id = path.rsplit("/", 1)[1]
            if method == "GET" and resp.status == 200:
                self.known_kernels.add(kernel_id)
            elif resp.status == 404 or (method == "DELETE" and resp.ok):
                self.known_kernels.discard(kernel_id)
        return resp

    async def _kernel_list_fallback(self, timeout: float | None) -> BackendResponse:
        if not self._list_forbidden_logged:
            self._list_forbidden_logged = True
            log.warning(
                "backend %r forbids listing kernels (GET /api/kernels: 403); listing the "
                "kernels started through the mixer instead. Start a Kernel Gateway with "
                "KG_LIST_KERNELS=True, an Enterprise Gateway with EG_LIST_KERNELS=True",
                self.name,
            )
        models = await self._kernel_models(sorted(self.known_kernels), timeout)
        return self._json(200, [m for m in models.values() if m is not None])

    async def _kernel_model(self, kernel_id: str, timeout: float | None) -> dict[str, Any] | None:
        resp = await super().request("GET", f"/api/kernels/{quote(kernel_id, safe='')}",
                                     timeout=timeout)
        if resp.status == 404:
            self.known_kernels.discard(kernel_id)
            return None
        model = resp.json() if resp.status == 200 else None
        if not isinstance(model, dict) or not isinstance(model.get("id"), str):
            raise BackendError(self.name, f"answered HTTP {resp.status} without a kernel model "
                                          f"to GET /api/kernels/{kernel_id}")
        self.known_kernels.add(kernel_id)
        return model

    async def _kernel_models(self, ids: list[str],
                             timeout: float | None) -> dict[str, dict[str, Any] | None]:
        """Models of ``ids`` (None for a kernel that is gone): one listing if allowed,
        else one request per kernel."""
        if not ids:
            return {}
        if not self._list_forbidden:
            resp = await super().request("GET", "/api/kernels", timeout=timeout)
            listed = resp.json() if resp.status == 200 else None
            if isinstance(listed, list):
                by_id = {m["id"]: m for m in listed if isinstance(m, dict) and isinstance(m.get("id"), str)}
                return {i: by_id.get(i) for i in ids}
            if resp.status != 403:
                raise BackendError(self.name, f"answered HTTP {resp.status} to GET /api/kernels")
            self._list_forbidden = True
        models = await asyncio.gather(*(self._kernel_model(i, timeout) for i in ids))
        return dict(zip(ids, models, strict=True))

    # -- sessions kept by the mixer -------------------------------------------------------
    async def _sessions(self, method: str, path: str, body: Any,
                        timeout: float | None) -> BackendResponse:
        session_id = path[len("/api/sessions/"):] if path.startswith("/api/sessions/") else ""
        if body is not None and not isinstance(body, dict):
            return self._error(400, "request body must be a JSON object")
        body = body or {}
        if not session_id:
            if method == "GET":
                return await self._list(timeout)
            if method == "POST":
                return await self._create(body, timeout)
            return self._error(405, f"{method} is not allowed on /api/sessions")
        record = self.sessions.get(session_id)
        if record is None:
            return self._error(404, f"Session not found: {session_id}")
        if method == "GET":
            return await self._get(record, timeout)
        if method == "PATCH":
            return await self._patch(record, body, timeout)
        if method == "DELETE":
            return await self._delete(record, timeout)
        return self._error(405, f"{method} is not allowed on /api/sessions/{{id}}")

    async def _list(self, timeout: float | None) -> BackendResponse:
        records = list(self.sessions.values())
        models = await self._kernel_models([r.kernel_id for r in records], timeout)
        out = []
        for record in records:
            kernel = models.get(record.kernel_id)
            if kernel is None:
                self.sessions.pop(record.id, None)  # its kernel is gone (culled, deleted)
                continue
            out.append(record.model(kernel))
        return self._json(200, out)

    async def _get(self, record: SessionRecord, timeout: float | None) -> BackendResponse:
        kernel = await self._kernel_model(record.kernel_id, timeout)
        if kernel is None:
            self.sessions.pop(record.id, None)
            return self._error(404, f"Session not found: {record.id} (its kernel is gone)")
        return self._json(200, record.model(kernel))

    async def _kernel_for(self, kernel: Any, timeout: float | None
                          ) -> tuple[dict[str, Any] | None, BackendResponse | None]:
        """The kernel a session request asks for: an existing one by id, or a new one
        started by name (the backend's default without either)."""
        if kernel is not None and not isinstance(kernel, dict):
            return None, self._error(400, "'kernel' must be an object")
        kernel = kernel or {}
        if isinstance(kernel.get("id"), str):
            model = await self._kernel_model(kernel["id"], timeout)
            if model is None:
                return None, self._error(400, f"Kernel does not exist: {kernel['id']}")
            return model, None
        start = {"name": kernel["name"]} if isinstance(kernel.get("name"), str) else {}
        resp = await super().request("POST", "/api/kernels", json=start, timeout=timeout)
        if not resp.ok:
            return None, resp  # the backend's own error (unknown spec, refused user, …)
        model = resp.json()
        if not isinstance(model, dict) or not isinstance(model.get("id"), str):
            raise BackendError(self.name, "answered a kernel start without a kernel model")
        self.known_kernels.add(model["id"])
        return model, None

    async def _create(self, body: dict[str, Any], timeout: float | None) -> BackendResponse:
        kernel, error = await self._kernel_for(body.get("kernel"), timeout)
        if error is not None:
            return error
        assert kernel is not None
        notebook = body.get("notebook") if isinstance(body.get("notebook"), dict) else {}
        path = _text(body.get("path")) or _text(notebook.get("path"))
        record = SessionRecord(
            id=str(uuid.uuid4()),
            path=path,
            name=_text(body.get("name")) or _text(notebook.get("name")) or posixpath.basename(path),
            type=_text(body.get("type")) or "notebook",
            kernel_id=kernel["id"],
        )
        self.sessions[record.id] = record
        return self._json(201, record.model(kernel))

    async def _patch(self, record: SessionRecord, body: dict[str, Any],
                     timeout: float | None) -> BackendResponse:
        old_kernel = record.kernel_id
        kernel: dict[str, Any] | None = None
        if body.get("kernel") is not None:
            kernel, error = await self._kernel_for(body["kernel"], timeout)
            if error is not None:
                return error
            assert kernel is not None
            record.kernel_id = kernel["id"]
        for key in ("path", "name", "type"):
            if isinstance(body.get(key), str):
                setattr(record, key, body[key])
        if record.kernel_id != old_kernel:
            # As jupyter_server does: a session's replaced kernel is shut down.
            await self._shutdown(old_kernel, timeout)
        if kernel is None:
            return await self._get(record, timeout)
        return self._json(200, record.model(kernel))

    async def _delete(self, record: SessionRecord, timeout: float | None) -> BackendResponse:
        resp = await self._shutdown(record.kernel_id, timeout)
        if resp is not None and not resp.ok and resp.status != 404:
            return resp
        self.sessions.pop(record.id, None)
        return BackendResponse(204, _JSON_HEADERS, b"", self.name)

    async def _shutdown(self, kernel_id: str, timeout: float | None) -> BackendResponse | None:
        try:
            resp = await super().request(
                "DELETE", f"/api/kernels/{quote(kernel_id, safe='')}", timeout=timeout
            )
        except BackendError as exc:
            log.warning("backend %r: shutting down kernel %s failed: %s", self.name, kernel_id,
                        exc.cause)
            return None
        if resp.ok or resp.status == 404:
            self.known_kernels.discard(kernel_id)
        return resp

    # -- answers ------------------------------------------------------------------------------
    def _json(self, status: int, data: Any) -> BackendResponse:
        return BackendResponse(status, _JSON_HEADERS, jsonutil.dumps(data), self.name)

    def _error(self, status: int, message: str) -> BackendResponse:
        return self._json(status, {"message": message, "reason": None})


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""
