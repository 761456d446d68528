"""Merged kernelspecs (SPEC §3, §4): prefixed names, suffixed display names,
rewritten resource URLs, a default that exists, and a stable order.

JupyterLab asks for the kernelspecs all the time, so merged answers come from a short
per-backend cache: a fresh entry is served as is, a stale one is served while one
background refresh runs, and a backend slower than its listing timeout is left out of
this answer but filled in as soon as its (still running) fetch completes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from notebook_kernels_mixer.backends import Backend
from notebook_kernels_mixer.errors import BackendError, NotFound
from notebook_kernels_mixer.resources.common import json_response, passthrough
from notebook_kernels_mixer.resources.fanout import all_failed
from notebook_kernels_mixer.resources.naming import checked_resource_path, prefixed
from notebook_kernels_mixer.resources.registry import Registry

log = logging.getLogger(__name__)


# -- pure translation -----------------------------------------------------------------
def translate_spec(model: Any, backend: str, suffix: str) -> dict[str, Any] | None:
    """One backend kernelspec model → the merged view; None if it is not a model."""
    if not isinstance(model, dict) or not isinstance(model.get("name"), str):
        return None
    name = model["name"]
    new_name = prefixed(backend, name)
    spec = model.get("spec")
    spec = dict(spec) if isinstance(spec, dict) else {}
    spec["display_name"] = f"{spec.get('display_name') or name}{suffix}"
    resources = model.get("resources")
    marker = f"/kernelspecs/{name}/"
    new_resources = {}
    if isinstance(resources, dict):
        for key, url in resources.items():
            if isinstance(url, str) and marker in url:
                url = f"/kernelspecs/{new_name}/" + url.split(marker, 1)[1]
            new_resources[key] = url
    return {**model, "name": new_name, "spec": spec, "resources": new_resources}


@dataclass(frozen=True)
class BackendSpecs:
    """One backend's kernelspecs, already translated to the merged view."""

    specs: dict[str, dict[str, Any]]
    default: str | None


def translate_specs(answer: Any, backend: str, suffix: str) -> BackendSpecs:
    if not isinstance(answer, dict) or not isinstance(answer.get("kernelspecs"), dict):
        raise BackendError(backend, "answered something that is not a kernelspecs list")
    specs = {}
    for model in answer["kernelspecs"].values():
        translated = translate_spec(model, backend, suffix)
        if translated is not None:
            specs[translated["name"]] = translated
    default = answer.get("default")
    default_name = prefixed(backend, default) if isinstance(default, str) else None
    return BackendSpecs(specs, default_name if default_name in specs else None)


def _sort_key(model: dict[str, Any]) -> tuple[str, str]:
    resources = model.get("resources") or {}
    parent = resources.get("endpointParentResource") if isinstance(resources, dict) else None
    return (parent if isinstance(parent, str) else "", str(model["spec"]["display_name"]).lower())


def merge(views: list[BackendSpecs]) -> dict[str, Any]:
    """Merge per-backend views, given in order of preference for the default."""
    specs = [model for view in views for model in view.specs.values()]
    specs.sort(key=_sort_key)
    default = next((v.default for v in views if v.default), None)
    if default is None and specs:
        default = specs[0]["name"]
    return {"default": default, "kernelspecs": {m["name"]: m for m in specs}}


# -- cache -----------------------------------------------------------------------------
class KernelspecsCache:
    #: A stale entry older than this is not served; the caller waits for a fetch.
    max_stale = 60.0

    def __init__(self, ttl: float) -> None:
        self.ttl = ttl
        self._entries: dict[str, tuple[float, BackendSpecs]] = {}
        self._tasks: dict[str, asyncio.Task[BackendSpecs]] = {}

    async def get(self, backend: Backend) -> BackendSpecs:
        entry = self._entries.get(backend.name)
        age = time.monotonic() - entry[0] if entry else None
        if entry is not None and age is not None and age < self.ttl:
            return entry[1]
        task = self._tasks.get(backend.name)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._fetch(backend))
            task.add_done_callback(self._done(backend.name))
            self._tasks[backend.name] = task
        if entry is not None and age is not None and age < self.max_stale:
            return entry[1]
        return await asyncio.shield(task)

    def _done(self, name: str):  # type: ignore[no-untyped-def]
        def callback(task: asyncio.Task[BackendSpecs]) -> None:
            self._tasks.pop(name, None)
            if not task.cancelled():
                task.exception()  # retrieved here; the waiting callers saw it already

        return callback

    async def _fetch(self, backend: Backend) -> BackendSpecs:
        answer = await backend.call("GET", "/api/kernelspecs")
        view = translate_specs(answer, backend.name, backend.suffix)
        self._entries[backend.name] = (time.monotonic(), view)
        return view

    def invalidate(self) -> None:
        self._entries.clear()

    async def close(self) -> None:
        for task in list(self._tasks.values()):
            task.cancel()
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)


# -- handlers ----------------------------------------------------------------------------
class KernelspecsHandlers:
    def __init__(self, registry: Registry, cache: KernelspecsCache) -> None:
        self.registry = registry
        self.cache = cache

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/api/kernelspecs", self.list),
            web.get("/api/kernelspecs/", self.list),
            web.get("/api/kernelspecs/{name}", self.get),
            web.get("/kernelspecs/{name}/{resource:.+}", self.resource),
        ]

    async def merged(self) -> dict[str, Any]:
        """Every backend's specs. A backend that cannot answer keeps its last-known
        specs in the picker (within the retention window, like its kernels), but the
        default comes from the backends that answer now (SPEC §3)."""
        answers = await self.registry.fanout.listing("kernelspecs", self.cache.get)
        if not any(a.usable for a in answers):
            raise all_failed(answers)
        order = [self.registry.default.name, self.registry.local.name, *self.registry.names]
        rank = {name: order.index(name) for name in self.registry.names}
        # Backends answering now come first (their default wins); a backend whose last
        # call failed only contributes its specs.
        usable = sorted((a for a in answers if a.usable), key=lambda a: (
            not a.ok or a.backend.health.failures > 0, rank[a.backend.name]))
        return merge([a.value for a in usable if a.value is not None])

    async def default_spec(self) -> tuple[Backend, str | None]:
        """The backend and bare name of the default the listing advertises (a request
        without a kernel name goes there); the default backend if nobody answers."""
        try:
            default = (await self.merged())["default"]
        except BackendError:
            return self.registry.default, None
        if not isinstance(default, str):
            return self.registry.default, None
        return self.registry.spec_backend(default)

    async def list(self, request: web.Request) -> web.Response:
        return json_response(await self.merged())

    async def get(self, request: web.Request) -> web.Response:
        backend, bare = self.registry.spec_backend(request.match_info["name"])
        checked_resource_path(bare)
        try:
            answer = await backend.call("GET", f"/api/kernelspecs/{bare}")
        except NotFound:
            raise NotFound(f"no kernelspec {request.match_info['name']!r}") from None
        model = translate_spec(answer, backend.name, backend.suffix)
        if model is None:
            raise BackendError(backend.name, "answered something that is not a kernelspec")
        return json_response(model, backend=backend.name)

    async def resource(self, request: web.Request) -> web.Response:
        backend, bare = self.registry.spec_backend(request.match_info["name"])
        path = checked_resource_path(request.match_info["resource"])
        checked_resource_path(bare)
        return passthrough(await backend.request("GET", f"/kernelspecs/{bare}/{path}"))
