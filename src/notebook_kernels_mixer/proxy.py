"""Everything the mixer does not handle itself goes to the local Jupyter server:
``/lab``, ``/api/contents``, static files, terminals and their websockets (SPEC §4).
Bodies are streamed both ways, never held whole in memory."""

from __future__ import annotations

import asyncio
import contextlib

import aiohttp
from aiohttp import web

from notebook_kernels_mixer.backends.base import HOP_BY_HOP
from notebook_kernels_mixer.backends.forwarding import forwarded_query, origin_headers
from notebook_kernels_mixer.front.middlewares import abort_connection
from notebook_kernels_mixer.inventory import Inventory
from notebook_kernels_mixer.relay import Relay
from notebook_kernels_mixer.resources.common import BACKEND_HEADER

# The client's credentials for the mixer stay here (the local server gets the mixer's
# own), and Origin/Referer are rebuilt by ``origin_headers``.
_REQUEST_DROP = HOP_BY_HOP | {"origin", "referer", "token", "authorization"}


class LocalProxy:
    def __init__(self, inventory: Inventory, relay: Relay, *, external_hostname: str | None):
        self.inventory = inventory
        self.relay = relay
        self.external_hostname = external_hostname

    def routes(self) -> list[web.RouteDef]:
        return [web.route("*", "/{tail:.*}", self.handle)]

    async def handle(self, request: web.Request) -> web.StreamResponse:
        backend = self.inventory.local
        if request.headers.get("Upgrade", "").lower() == "websocket":
            return await self.relay.run(request, backend, request.rel_url.raw_path)
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _REQUEST_DROP}
        headers.update(origin_headers(request.headers, scheme=request.scheme, mixer_host=request.host,
                                      external_hostname=self.external_hostname,
                                      backend_origin=backend.origin, local=True))
        query = forwarded_query(request.rel_url.raw_query_string)
        data = request.content if request.body_exists else None
        upstream = await backend.open_stream(
            request.method, request.rel_url.raw_path + (f"?{query}" if query else ""), headers, data,
            timeout=backend.config.request_timeout,
        )
        try:
            response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
            for name, value in upstream.headers.items():
                if name.lower() not in HOP_BY_HOP or name.lower() == "content-length":
                    response.headers.add(name, value)
            response.headers[BACKEND_HEADER] = backend.name
            await response.prepare(request)
            if await _copy_body(request, response, upstream, backend.name):
                await response.write_eof()
            return response
        finally:
            with contextlib.suppress(Exception):
                upstream.release()


async def _copy_body(
    request: web.Request, response: web.StreamResponse, upstream: aiohttp.ClientResponse,
    backend: str,
) -> bool:
    """Stream the backend's body to the client; False if the backend failed part-way.

    The head is on the wire by then, so such a failure (a cut connection, a body
    shorter than its length, a read timeout) cannot become an error answer: the
    client's connection is aborted instead (issue 11 item 3).
    """
    while True:
        try:
            chunk = await upstream.content.readany()
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            cause = str(exc) or type(exc).__name__
            abort_connection(request, f"backend {backend!r} failed in the middle of the body: {cause}")
            return False
        if not chunk:
            return True
        await response.write(chunk)
