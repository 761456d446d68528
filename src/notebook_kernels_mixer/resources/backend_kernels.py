"""One backend's kernels API, in the backend's own view (bare kernelspec names).

The one place that knows how backends answer it: a kernel that is gone is ``None``
(404), an error answer is handed on (``UpstreamError``), garbage is a
``BackendError``. A backend that forbids listing kernels (Kernel and Enterprise
Gateway without ``*_LIST_KERNELS``: 403) is listed by asking for each kernel the mixer
knows there, so merged listings — and GatewayClient, which drops the kernels a
listing lacks — still show them.
"""

from __future__ import annotations

import asyncio
import builtins
import logging
import weakref
from collections.abc import Callable, Iterable
from typing import Any, TypeGuard
from urllib.parse import quote

from notebook_kernels_mixer.backends import Backend
from notebook_kernels_mixer.errors import BackendError, NotFound
from notebook_kernels_mixer.resources.naming import valid_id

log = logging.getLogger(__name__)

Model = dict[str, Any]
_warned: weakref.WeakKeyDictionary[Backend, set[str]] = weakref.WeakKeyDictionary()
# backend -> listing ("kernels", "sessions") -> the ids its last listing had, all valid
_valid: weakref.WeakKeyDictionary[Backend, dict[str, set[str]]] = weakref.WeakKeyDictionary()


def is_model(value: Any) -> TypeGuard[Model]:
    """A kernel or session model with an id the mixer can route and keep (naming.valid_id)."""
    return isinstance(value, dict) and valid_id(value.get("id"))


def listed_models(backend: Backend, answer: list[Any], what: str) -> list[Model]:
    """The models of a backend's listing; entries without a valid id are left out, not
    the whole listing: one bad entry must not hide the backend's other kernels or
    sessions (and such an id could not be routed anyway). Logged once per backend.

    An id that was valid in the backend's previous listing is valid now (``valid_id``
    depends on the string alone): a listing of the same ids as the last one (or some
    of them) is not matched against the regular expression again, only one with an id
    the last one did not have (most are the same from one listing to the next)."""
    before = _valid.setdefault(backend, {})
    valid: set[str] | frozenset[str] = before.get(what, frozenset())
    try:  # (JSON: only an object without "id" or what is not an object fails the lookup)
        if valid.issuperset([m["id"] for m in answer]):
            return answer  # all known valid; what the cache holds stays valid (no growth)
    except (KeyError, TypeError):  # an entry without an id, or an id that is not hashable
        pass
    models = [m for m in answer if isinstance(m, dict) and (
        (isinstance(i := m.get("id"), str) and i in valid) or valid_id(i))]
    before[what] = {m["id"] for m in models}  # bounded: this listing's ids
    warned = _warned.setdefault(backend, set())
    if len(models) != len(answer) and what not in warned:
        warned.add(what)
        log.warning("backend %r listed %d %s without a valid id (at most 128 of A-Z a-z 0-9 _ . -);"
                    " left out", backend.name, len(answer) - len(models), what)
    return models


class BackendKernels:
    def __init__(self, backend: Backend, known: Callable[[], Iterable[str]]) -> None:
        self.backend = backend
        self._known = known  # ids of the kernels the mixer knows on this backend
        self.listing_forbidden = False

    def _path(self, kernel_id: str) -> str:
        return f"/api/kernels/{quote(kernel_id, safe='')}"

    async def list(self, timeout: float | None = None) -> list[Model]:
        resp = await self.backend.request("GET", "/api/kernels", timeout=timeout)
        if resp.status == 403:
            if not self.listing_forbidden:
                log.warning(
                    "backend %r forbids listing kernels (GET /api/kernels: 403); listing the "
                    "kernels started through the mixer instead. Start a Kernel Gateway with "
                    "KG_LIST_KERNELS=True, an Enterprise Gateway with EG_LIST_KERNELS=True",
                    self.backend.name)
            self.listing_forbidden = True
            models = await self.many(sorted(self._known()), timeout)
            return [m for m in models.values() if m is not None]
        self.listing_forbidden = False
        if resp.status != 200:
            raise resp.error()
        answer = resp.json()
        if not isinstance(answer, list):
            raise BackendError(self.backend.name, "answered something that is not a list of kernels")
        return listed_models(self.backend, answer, "kernels")

    async def get(self, kernel_id: str, timeout: float | None = None) -> Model | None:
        """The kernel's model; None when the backend has no such kernel."""
        resp = await self.backend.request("GET", self._path(kernel_id), timeout=timeout)
        if resp.status == 404:
            return None
        if resp.status != 200:
            raise resp.error()
        return self._model(resp.json(), f"GET /api/kernels/{kernel_id}")

    async def many(self, ids: builtins.list[str], timeout: float | None = None
                   ) -> dict[str, Model | None]:
        """Models of ``ids`` (None for a kernel that is gone): one listing when the
        backend allows it, else one request per kernel."""
        if not ids:
            return {}
        if not self.listing_forbidden:
            by_id = {m["id"]: m for m in await self.list(timeout)}
            if not self.listing_forbidden:
                return {i: by_id.get(i) for i in ids}
        models = await asyncio.gather(*(self.get(i, timeout) for i in ids))
        return dict(zip(ids, models, strict=True))

    async def start(self, body: dict[str, Any], timeout: float | None = None) -> tuple[int, Model]:
        """Start a kernel; (the backend's status, its model)."""
        resp = await self.backend.request("POST", "/api/kernels", json=body, timeout=timeout)
        if not resp.ok:
            raise resp.error()
        return resp.status, self._model(resp.json(), "a kernel start")

    async def delete(self, kernel_id: str, timeout: float | None = None) -> bool:
        """Shut a kernel down; False when it was not there."""
        resp = await self.backend.request("DELETE", self._path(kernel_id), timeout=timeout)
        if resp.status == 404:
            return False
        if not resp.ok:
            raise resp.error()
        return True

    async def action(self, kernel_id: str, action: str) -> tuple[int, Model | None]:
        """Interrupt or restart: (the backend's status, the model if it sent one)."""
        # GatewayClient posts "{}" here: whatever the body is, it is not a kernel model,
        # and the backends ignore it; send an empty object.
        resp = await self.backend.request("POST", f"{self._path(kernel_id)}/{action}", json={})
        if resp.status == 404:
            raise NotFound(f"kernel {kernel_id!r} not found")
        if not resp.ok:
            raise resp.error()
        model = self._model(resp.json(), f"{action} of {kernel_id}") if resp.body else None
        return resp.status, model

    def _model(self, value: Any, what: str) -> Model:
        if not is_model(value):
            raise BackendError(self.backend.name, f"answered {what} without a kernel model"
                               " (an object with a valid id)")
        return value
