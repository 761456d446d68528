"""Everything the mixer does not handle itself goes to the local Jupyter server:
``/lab``, ``/api/contents``, static files, terminals and their websockets (SPEC §4).
Bodies are streamed both ways, never held whole in memory."""

from __future__ import annotations

import contextlib

from aiohttp import web

from notebook_kernels_mixer.backends.base import HOP_BY_HOP
from notebook_kernels_mixer.relay import Relay
from notebook_kernels_mixer.resources.common import BACKEND_HEADER
from notebook_kernels_mixer.resources.registry import Registry

_REQUEST_DROP = HOP_BY_HOP | {"origin", "referer", "token"}


class LocalProxy:
    def __init__(self, registry: Registry, relay: Relay, *, external_hostname: str | None):
        self.registry = registry
        self.relay = relay
        self.external_hostname = external_hostname

    def routes(self) -> list[web.RouteDef]:
        return [web.route("*", "/{tail:.*}", self.handle)]

    async def handle(self, request: web.Request) -> web.StreamResponse:
        backend = self.registry.local
        if request.headers.get("Upgrade", "").lower() == "websocket":
            return await self.relay.run(request, backend, request.rel_url.raw_path)
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _REQUEST_DROP}
        headers.update(
            backend.origin_headers(request.headers, request.host, self.external_hostname)
        )
        data = request.content if request.body_exists else None
        upstream = await backend.open_stream(
            request.method, request.rel_url.raw_path_qs, headers, data,
            timeout=backend.config.request_timeout,
        )
        try:
            response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
            for name, value in upstream.headers.items():
                if name.lower() not in HOP_BY_HOP or name.lower() == "content-length":
                    response.headers.add(name, value)
            response.headers[BACKEND_HEADER] = backend.name
            await response.prepare(request)
            async for chunk in upstream.content.iter_any():
                await response.write(chunk)
            await response.write_eof()
            return response
        finally:
            with contextlib.suppress(Exception):
                upstream.release()
