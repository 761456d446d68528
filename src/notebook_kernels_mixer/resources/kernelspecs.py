"""Merged kernelspecs (SPEC §3, §4): prefixed names, suffixed display names,
rewritten resource URLs, a default that exists, and a stable order.

JupyterLab asks for the kernelspecs all the time, so merged answers come from a short
per-backend cache: a fresh entry is served as is, a stale one is served while one
background refresh runs, and a backend slower than its listing timeout is left out of
this answer but filled in as soon as its (still running) fetch completes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import posixpath
import time
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from notebook_kernels_mixer.backends import Backend, BackendResponse
from notebook_kernels_mixer.errors import SANDBOX_HEADERS, BackendError, NotFound
from notebook_kernels_mixer.inventory import Inventory, Listing
from notebook_kernels_mixer.resources.common import BACKEND_HEADER, json_response
from notebook_kernels_mixer.resources.fanout import all_failed
from notebook_kernels_mixer.resources.naming import checked_resource_path, prefixed

log = logging.getLogger(__name__)


#: The type a kernelspec resource is served with, by the extension of its name; never
#: the backend's (a remote must not choose what the mixer's origin serves). JupyterLab
#: shows logo-32x32.png, logo-64x64.png and logo-svg.svg. An SVG is a document that
#: can hold scripts: the sandbox CSP (``SANDBOX_HEADERS``) keeps them from running if
#: it is opened as a page. kernel.js (classic notebook extensions) and CSS are text:
#: shown, never run or applied from the mixer's origin (nosniff makes browsers refuse
#: them as scripts and stylesheets).
RESOURCE_TYPES = {
    ".png": "image/png",
    ".svg": "image/svg+xml",
    ".gif": "image/gif",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".ico": "image/x-icon",
    ".webp": "image/webp",
    ".json": "application/json",
    ".txt": "text/plain; charset=utf-8",
    ".js": "text/plain; charset=utf-8",
    ".css": "text/plain; charset=utf-8",
}
#: Validators the backend may give a resource (caching); nothing else of its head.
_RESOURCE_HEADERS = ("ETag", "Last-Modified", "Cache-Control")


def resource_headers(path: str) -> dict[str, str]:
    """The type (and disposition) a kernelspec resource called ``path`` is served with:
    an allowed type by its extension, else a download (``application/octet-stream``)."""
    name = posixpath.basename(path)
    kind = RESOURCE_TYPES.get(posixpath.splitext(name)[1].lower())
    if kind is not None:
        return {"Content-Type": kind}
    return {"Content-Type": "application/octet-stream",
            "Content-Disposition": f'attachment; filename="{name}"'}


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

    def __len__(self) -> int:
        return len(self.specs)


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

    async def close(self) -> None:
        for task in list(self._tasks.values()):
            task.cancel()
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)


# -- handlers ----------------------------------------------------------------------------
class KernelspecsHandlers:
    def __init__(self, inventory: Inventory, cache: KernelspecsCache) -> None:
        self.inventory = inventory
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
        answers = await self.inventory.listing(Listing.KERNELSPECS, self.cache.get)
        if not any(a.usable for a in answers):
            raise all_failed(answers)
        order = [self.inventory.default.name, self.inventory.local.name, *self.inventory.names]
        rank = {name: order.index(name) for name in self.inventory.names}
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
            return self.inventory.default, None
        if not isinstance(default, str):
            return self.inventory.default, None
        return self.inventory.spec_backend(default)

    async def list(self, request: web.Request) -> web.Response:
        return json_response(await self.merged())

    async def get(self, request: web.Request) -> web.Response:
        backend, bare = self.inventory.spec_backend(request.match_info["name"])
        checked_resource_path(bare)
        try:
            answer = await backend.call("GET", f"/api/kernelspecs/{bare}")
        except NotFound:
            raise NotFound(f"no kernelspec {request.match_info['name']!r}") from None
        model = translate_spec(answer, backend.name, backend.suffix)
        if model is None:
            raise BackendError(backend.name, "answered something that is not a kernelspec")
        return json_response(model, backend=backend.name)

    async def resource(self, request: web.Request) -> web.StreamResponse:
        """A kernelspec resource, streamed (never held whole) within the backend's
        answer cap, with a type chosen by its extension and the sandbox headers. An
        error answer is handed on as the backend's error (sandboxed too)."""
        backend, bare = self.inventory.spec_backend(request.match_info["name"])
        path = checked_resource_path(request.match_info["resource"])
        checked_resource_path(bare)
        what = f"GET /kernelspecs/{bare}/{path}"
        async with backend.exchange("GET", f"/kernelspecs/{bare}/{path}") as resp:
            if resp.status != 200:
                body = await backend.read_capped(resp, what)
                raise BackendResponse(resp.status, resp.headers, body, backend.name).error()
            chunks = backend.iter_capped(resp, what)
            async with contextlib.aclosing(chunks):
                # Over the cap by its Content-Length: a 502 before any of it is sent.
                first = await anext(chunks, b"")
                headers = {name: resp.headers[name] for name in _RESOURCE_HEADERS
                           if name in resp.headers}
                headers.update(resource_headers(path))
                headers.update(SANDBOX_HEADERS)
                headers[BACKEND_HEADER] = backend.name
                answer = web.StreamResponse(status=200, headers=headers)
                if resp.content_length is not None:
                    answer.content_length = resp.content_length
                await answer.prepare(request)
                await answer.write(first)
                # Over the cap while streaming (chunked, or longer than it said): the
                # client's connection is aborted (front.middlewares.errors).
                async for chunk in chunks:
                    await answer.write(chunk)
        await answer.write_eof()
        return answer
