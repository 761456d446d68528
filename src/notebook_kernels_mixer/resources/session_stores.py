"""Who keeps one backend's notebook sessions: the backend, or the mixer for it.

A ``SessionStore`` lists, gets, creates, patches and deletes session models in the
backend's view (bare kernelspec names) and raises the mixer's error tree. Two kinds:

* ``ForwardedSessions``: the backend's own ``/api/sessions`` (jupyter_server, Google's
  kernel service);
* ``KeptSessions``: Kernel and Enterprise Gateway have no usable sessions API, so the
  mixer keeps a record (id, path, name, type, kernel id) per session, in its durable
  state, over the backend's kernels API. Its kernel model is read from the backend on
  every answer, and a session whose kernel is gone is gone.

``sessions = "auto"`` picks one on first use (``AutoSessions``): servers that answer
``GET /api/status`` (jupyter_server) and Google's service keep their own sessions;
one that answers it with 404 (a gateway) gets kept sessions.
"""

from __future__ import annotations

import logging
import posixpath
import uuid
from dataclasses import replace
from typing import Any, Protocol
from urllib.parse import quote

from notebook_kernels_mixer.backends import Backend
from notebook_kernels_mixer.backends.kinds import sessions_mode
from notebook_kernels_mixer.errors import (
    BackendError,
    BadRequest,
    MixerError,
    NotFound,
    StateUnavailable,
)
from notebook_kernels_mixer.inventory.kept import KeptRecords
from notebook_kernels_mixer.resources.backend_kernels import (
    BackendKernels,
    Model,
    is_model,
    listed_models,
)
from notebook_kernels_mixer.resources.naming import checked_path, checked_text
from notebook_kernels_mixer.state import KeptSession, StateError

log = logging.getLogger(__name__)


class SessionStore(Protocol):
    @property
    def kind(self) -> str:
        """"backend" or "mixer": who keeps the sessions ("not known yet" before auto decides)."""

    async def list(self, timeout: float | None = None) -> list[Model]: ...
    async def get(self, session_id: str, timeout: float | None = None) -> Model: ...
    async def create(self, body: dict[str, Any]) -> Model: ...
    async def patch(self, session_id: str, body: dict[str, Any]) -> Model: ...
    async def delete(self, session_id: str) -> None: ...


def _session(backend: Backend, value: Any) -> Model:
    if not is_model(value):
        raise BackendError(backend.name, "answered something that is not a session model")
    return value


class ForwardedSessions:
    """The backend's own sessions API."""

    kind = "backend"

    def __init__(self, backend: Backend) -> None:
        self.backend = backend

    def _path(self, session_id: str) -> str:
        return f"/api/sessions/{quote(session_id, safe='')}"

    async def list(self, timeout: float | None = None) -> list[Model]:
        answer = await self.backend.call("GET", "/api/sessions", timeout=timeout)
        if not isinstance(answer, list):
            raise BackendError(self.backend.name, "answered something that is not a session list")
        return listed_models(self.backend, answer, "sessions")

    async def get(self, session_id: str, timeout: float | None = None) -> Model:
        return _session(self.backend, await self.backend.call("GET", self._path(session_id),
                                                              timeout=timeout))

    async def create(self, body: dict[str, Any]) -> Model:
        if not isinstance(body.get("name"), str) and isinstance(body.get("path"), str):
            # jupyter_server keeps a session without a name as ``"name": null``, which
            # its own api.yaml (and JupyterLab's model check) refuses: name it as the
            # mixer names the sessions it keeps.
            body = {**body, "name": session_name(body, body["path"])}
        return _session(self.backend, await self.backend.call(
            "POST", "/api/sessions", ok=(200, 201), json=body))

    async def patch(self, session_id: str, body: dict[str, Any]) -> Model:
        return _session(self.backend, await self.backend.call("PATCH", self._path(session_id),
                                                              json=body))

    async def delete(self, session_id: str) -> None:
        await self.backend.call("DELETE", self._path(session_id), ok=(200, 204))


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def session_name(body: dict[str, Any], path: str) -> str:
    """The name of a session created without one: the legacy ``notebook.name``, else
    the file name of its path."""
    notebook = body.get("notebook")
    legacy = notebook.get("name") if isinstance(notebook, dict) else None
    return _text(body.get("name")) or _text(legacy) or posixpath.basename(path)


def _model(record: KeptSession, kernel: Model) -> Model:
    # jupyter_server 2's session model, including the legacy "notebook" field.
    return {
        "id": record.id, "path": record.path, "name": record.name, "type": record.type,
        "kernel": kernel, "notebook": {"path": record.path, "name": record.name},
    }


class KeptSessions:
    """Sessions the mixer keeps (durably) for a backend over its kernels API."""

    kind = "mixer"

    def __init__(self, kernels: BackendKernels, kept: KeptRecords) -> None:
        self.kernels = kernels
        self.backend = kernels.backend
        self.kept = kept

    def _records(self) -> list[KeptSession]:
        return self.kept.of(self.backend.name)

    def _record_of(self, session_id: str) -> KeptSession:
        record = self.kept.get(session_id)
        if record is None or record.backend != self.backend.name:
            raise NotFound(f"session {session_id!r} not found")
        return record

    async def list(self, timeout: float | None = None) -> list[Model]:
        records = self._records()
        models = await self.kernels.many([r.kernel_id for r in records], timeout)
        out = []
        for record in records:
            kernel = models.get(record.kernel_id)
            if kernel is None:
                self.kept.drop(record.id)  # its kernel is gone (culled, deleted)
                continue
            out.append(_model(record, kernel))
        return out

    async def get(self, session_id: str, timeout: float | None = None) -> Model:
        record = self._record_of(session_id)
        kernel = await self.kernels.get(record.kernel_id, timeout)
        if kernel is None:
            self.kept.drop(record.id)
            raise NotFound(f"session {session_id!r} not found (its kernel is gone)")
        return _model(record, kernel)

    async def _kernel_for(self, request: Any) -> tuple[Model, bool]:
        """The kernel a session asks for: an existing one by id, or a new one started
        by name (the backend's default without either); and whether it was started."""
        request = request or {}
        if isinstance(request.get("id"), str):
            model = await self.kernels.get(request["id"])
            if model is None:
                raise BadRequest(f"Kernel does not exist: {request['id']}")
            return model, False
        start = {"name": request["name"]} if isinstance(request.get("name"), str) else {}
        return (await self.kernels.start(start))[1], True

    async def _record(self, record: KeptSession, undo: KeptSession | None,
                      started: str | None) -> None:
        """Put ``record`` on disk before the answer (only the mixer knows it). If the
        state file does not take it: back to ``undo`` (None: no record), the kernel
        ``started`` for it shut down, and a 503 that says so."""
        try:
            await self.kept.put(record, undo=undo)
        except StateError as exc:
            if started is not None:
                await self._shutdown(started)
            undone = "; the kernel started for it was shut down" if started else ""
            raise StateUnavailable(f"the session could not be recorded: {exc}{undone}") from None

    async def create(self, body: dict[str, Any]) -> Model:
        notebook: dict[str, Any] = body["notebook"] if isinstance(body.get("notebook"), dict) else {}
        path = _text(body.get("path")) or _text(notebook.get("path"))
        fields = {
            "path": path, "type": _text(body.get("type")) or "notebook",
            "name": session_name(body, path),
        }
        for what, value in fields.items():  # before a kernel is started for it
            (checked_path if what == "path" else checked_text)(value, f"session {what}")
        kernel, started = await self._kernel_for(body.get("kernel"))
        record = KeptSession(id=str(uuid.uuid4()), backend=self.backend.name,
                             kernel_id=kernel["id"], **fields)
        await self._record(record, None, kernel["id"] if started else None)
        return _model(record, kernel)

    async def patch(self, session_id: str, body: dict[str, Any]) -> Model:
        record = self._record_of(session_id)
        changes = {k: body[k] for k in ("path", "name", "type") if isinstance(body.get(k), str)}
        for what, value in changes.items():
            (checked_path if what == "path" else checked_text)(value, f"session {what}")
        kernel, started = (await self._kernel_for(body["kernel"])) if body.get("kernel") else (None, False)
        if kernel is not None:
            changes["kernel_id"] = kernel["id"]
        updated = replace(record, **changes)
        await self._record(updated, record, kernel["id"] if kernel is not None and started else None)
        if updated.kernel_id != record.kernel_id:
            # As jupyter_server does: a session's replaced kernel is shut down.
            await self._shutdown(record.kernel_id)
        return _model(updated, kernel) if kernel is not None else await self.get(session_id)

    async def delete(self, session_id: str) -> None:
        record = self._record_of(session_id)
        await self.kernels.delete(record.kernel_id)
        self.kept.drop(record.id)

    async def _shutdown(self, kernel_id: str) -> None:
        try:
            await self.kernels.delete(kernel_id)
        except MixerError as exc:  # unreachable, or its own error answer
            log.warning("backend %r: shutting down kernel %s failed: %s", self.backend.name,
                        kernel_id, getattr(exc, "cause", exc))


class AutoSessions:
    """Asks the backend once, on first use, who keeps its sessions."""

    def __init__(self, kernels: BackendKernels, kept: KeptRecords) -> None:
        self.backend = kernels.backend
        self._candidates = (ForwardedSessions(self.backend), KeptSessions(kernels, kept))
        self._chosen: SessionStore | None = None

    async def store(self) -> SessionStore:
        if self._chosen is None:
            resp = await self.backend.request("GET", "/api/status")
            if resp.status == 200:
                self._chosen = self._candidates[0]
            elif resp.status == 404:
                self._chosen = self._candidates[1]
                log.info("backend %r has no jupyter_server sessions API (a Kernel or Enterprise "
                         "Gateway): the mixer keeps its notebook sessions", self.backend.name)
            else:
                raise BackendError(self.backend.name, "cannot tell whether it keeps sessions: "
                                   f"GET /api/status answered HTTP {resp.status}")
        return self._chosen

    @property
    def kind(self) -> str:
        return "not known yet" if self._chosen is None else self._chosen.kind

    async def list(self, timeout: float | None = None) -> list[Model]:
        return await (await self.store()).list(timeout)

    async def get(self, session_id: str, timeout: float | None = None) -> Model:
        return await (await self.store()).get(session_id, timeout)

    async def create(self, body: dict[str, Any]) -> Model:
        return await (await self.store()).create(body)

    async def patch(self, session_id: str, body: dict[str, Any]) -> Model:
        return await (await self.store()).patch(session_id, body)

    async def delete(self, session_id: str) -> None:
        await (await self.store()).delete(session_id)


def session_store(kernels: BackendKernels, kept: KeptRecords) -> SessionStore:
    """The store for a backend's ``sessions`` policy; for "auto", that of its kind
    when its auth kind tells the kind (Google's service keeps its own sessions), else
    ``AutoSessions`` asks the backend (``backends.kinds.sessions_mode``)."""
    mode = sessions_mode(kernels.backend.config)
    if mode == "backend":
        return ForwardedSessions(kernels.backend)
    if mode == "mixer":
        return KeptSessions(kernels, kept)
    return AutoSessions(kernels, kept)
