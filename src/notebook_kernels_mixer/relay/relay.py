"""Relays kernel (and proxied) websockets: handshake, splice, and which kernel
websocket sessions are open.

The client's offer (subprotocols, extensions) goes to the backend and the backend's
choice comes back; the query string is kept except for the client's credentials
(``backends.forwarding``). A backend that cannot be reached gets the client's socket
accepted and closed with 1011 rather than an HTTP error, so JupyterLab retries
instead of declaring the kernel dead (SPEC §4). It knows which kernels clients are
connected to through it (culling, orphans) and closes their sockets when a kernel
is gone (``close_kernel``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator
from urllib.parse import parse_qsl, quote, urlencode

from aiohttp import web

from notebook_kernels_mixer import descriptors
from notebook_kernels_mixer.backends import Backend
from notebook_kernels_mixer.backends.forwarding import forwarded_query, origin_headers
from notebook_kernels_mixer.errors import BackendError
from notebook_kernels_mixer.relay.tunnel import INTERNAL_ERROR, Tunnel
from notebook_kernels_mixer.relay.upgrade import Dialer, Upgrade

log = logging.getLogger(__name__)

# What of the client's handshake reaches the backend, and of the backend's answer the client.
_HANDSHAKE_TO_BACKEND = (
    "Upgrade", "Connection", "Sec-WebSocket-Key", "Sec-WebSocket-Version",
    "Sec-WebSocket-Protocol", "Sec-WebSocket-Extensions", "User-Agent",
)
_HANDSHAKE_TO_CLIENT = (
    "Upgrade", "Connection", "Sec-WebSocket-Accept", "Sec-WebSocket-Protocol",
    "Sec-WebSocket-Extensions",
)
#: The close code of a kernel websocket whose kernel is gone (culled, shut down as an
#: orphan, or no longer on its backend), in the range RFC 6455 leaves to applications.
#: @jupyterlab/services stops only on 1000/1001 ("disconnected", not "dead"); on any
#: other code it reconnects at once, the upgrade answers 404, it asks
#: ``GET /api/kernels/{id}``, gets 404 again and shows the kernel as dead.
KERNEL_GONE = 4004


def channels_path(kernel_id: str) -> str:
    """The backend path of a kernel's websocket, as ``KernelsHandlers.channels`` relays it."""
    return f"/api/kernels/{quote(kernel_id, safe='')}/channels"


#: How long an older socket of the same kernel websocket session has to answer a ping
#: before it counts as half-open and is replaced.
STALE_PING_TIMEOUT = 2.0

SessionKey = tuple[str, str, str]  # (backend, path, client's session_id)
PathKey = tuple[str, str]  # (backend, path)
#: A socket's place in its session: its tunnel once spliced, None while opening.
Slot = list[Tunnel | None]


class Relay:
    def __init__(self, *, external_hostname: str | None, local_backend: str) -> None:
        self.external_hostname = external_hostname
        #: The local server's name: it alone gets a client's foreign Origin (SPEC §6).
        self.local_backend = local_backend
        self._live: set[Tunnel] = set()
        self._dialers: dict[str, Dialer] = {}
        # kernel websocket session -> the slots of its sockets, oldest first
        self._ws_sessions: dict[SessionKey, list[Slot]] = {}
        # (backend, path) -> its spliced sockets: who is connected to which kernel
        self._by_path: dict[PathKey, set[Tunnel]] = {}

    @property
    def live(self) -> int:
        return len(self._live)

    def _dialer(self, backend: Backend) -> Dialer:
        dialer = self._dialers.get(backend.name)
        if dialer is None or dialer.backend is not backend:
            dialer = self._dialers[backend.name] = Dialer(backend)
        return dialer

    async def refuse(self, request: web.Request, error: BackendError) -> web.WebSocketResponse:
        """Accept the upgrade and close at once (1011), saying why."""
        offered = request.headers.get("Sec-WebSocket-Protocol", "")
        ws = web.WebSocketResponse(protocols=[p.strip() for p in offered.split(",") if p.strip()][:1])
        await ws.prepare(request)
        await ws.close(code=INTERNAL_ERROR, message=str(error).encode()[:123])
        log.warning("websocket %s refused: %s", request.path, error)
        return ws

    async def run(self, request: web.Request, backend: Backend, path: str) -> web.StreamResponse:
        """Relay one websocket. Raises ``NotFound`` when the backend has no such kernel,
        ``OutOfDescriptors`` (a 503 before the upgrade) when the mixer is short of file
        descriptors (``descriptors``); any other backend failure closes the client's
        socket with 1011."""
        descriptors.DESCRIPTORS.check(_fileno(request))
        headers = {k: request.headers[k] for k in _HANDSHAKE_TO_BACKEND if k in request.headers}
        headers.update(origin_headers(request.headers, scheme=request.scheme, mixer_host=request.host,
                                      external_hostname=self.external_hostname,
                                      backend_origin=backend.origin,
                                      local=backend.name == self.local_backend))
        async with self._ws_session(request, backend, path) as (query, slot):
            try:
                upgrade = await self._dialer(backend).upgrade(path, query, headers)
            except BackendError as exc:
                return await self.refuse(request, exc)
            return await self._splice(request, upgrade, slot, (backend.name, path))

    async def _splice(self, request: web.Request, upgrade: Upgrade,
                      slot: Slot, key: PathKey) -> web.StreamResponse:
        response = web.StreamResponse(status=101, reason="Switching Protocols")
        for name in _HANDSHAKE_TO_CLIENT:
            if name in upgrade.headers:
                response.headers[name] = upgrade.headers[name]
        try:
            await response.prepare(request)
        except BaseException:
            upgrade.transport.close()
            raise
        tunnel = Tunnel(request, upgrade.connection)
        slot[0] = tunnel
        self._live.add(tunnel)
        same_path = self._by_path.setdefault(key, set())
        same_path.add(tunnel)
        try:
            tunnel.start(request, upgrade.rest)
            await tunnel.done
        finally:
            self._live.discard(tunnel)
            same_path.discard(tunnel)
            if not same_path and self._by_path.get(key) is same_path:
                del self._by_path[key]
            tunnel.close()
        return response

    @contextlib.asynccontextmanager
    async def _ws_session(self, request: web.Request, backend: Backend,
                          path: str) -> AsyncIterator[tuple[str, Slot]]:
        """The query for the backend (client credentials removed), and a slot for this
        socket's tunnel in its kernel websocket session.

        The backend gives sockets with one ``session_id`` one ZMQ identity. When a
        socket of that session is already open through the mixer, the older one is
        pinged: if it is half-open (a laptop slept), it is closed and the new socket
        keeps the client's id, so the backend replaces the stale connection and
        replays what was missed. If it answers, it is alive — JupyterLab behind a
        gateway-mode front abandons its first socket and the front keeps it open — and
        the new socket gets a session id of its own, so the two never share an identity.
        """
        query = forwarded_query(request.rel_url.raw_query_string)
        session_id = request.rel_url.query.get("session_id", "")
        slot: Slot = [None]
        if not session_id:
            yield query, slot
            return
        key = (backend.name, path, session_id)
        open_ones = self._ws_sessions.setdefault(key, [])
        if open_ones and await self._older_alive(open_ones):
            query = _with_session_id(query, f"{session_id}.{uuid.uuid4().hex[:12]}")
            log.info("websocket %s: session %s already open; this socket gets its own",
                     path, session_id)
        open_ones.append(slot)
        try:
            yield query, slot
        finally:
            open_ones.remove(slot)
            if not open_ones:
                self._ws_sessions.pop(key, None)

    async def _older_alive(self, open_ones: list[Slot]) -> bool:
        """Whether any older socket of the session is alive; half-open ones are closed."""
        alive = False
        for slot in list(open_ones):
            tunnel = slot[0]
            if tunnel is None:
                alive = True  # still opening: certainly not stale
            elif await tunnel.client_alive(STALE_PING_TIMEOUT):
                alive = True
            else:
                log.info("websocket: replacing a half-open socket of the same session")
                tunnel.close()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(asyncio.shield(tunnel.done), 1.0)
        return alive

    async def close_all(self) -> None:
        """Shutdown: every relayed websocket gets a proper "going away" close."""
        await asyncio.gather(*(t.go_away() for t in list(self._live)), return_exceptions=True)

    # -- who is connected to which kernel (culling, orphans, metrics) -------------------------
    def kernel_sockets(self, backend: str, kernel_id: str) -> int:
        """How many websockets of ``kernel_id`` on ``backend`` the mixer relays now."""
        return len(self._by_path.get((backend, channels_path(kernel_id)), ()))

    def kernels_connected(self) -> dict[str, dict[str, int]]:
        """backend -> kernel id -> its relayed websockets, for every kernel with one."""
        out: dict[str, dict[str, int]] = {}
        for (backend, path), tunnels in self._by_path.items():
            kernel_id = _kernel_of(path)
            if kernel_id is not None and tunnels:
                out.setdefault(backend, {})[kernel_id] = len(tunnels)
        return out

    async def close_kernel(self, backend: str, kernel_id: str, reason: str) -> int:
        """Close every relayed websocket of a kernel that is gone, with ``KERNEL_GONE``
        and ``reason`` (ASCII, at most 123 bytes): the client stops waiting for it.
        Returns how many were closed."""
        tunnels = list(self._by_path.get((backend, channels_path(kernel_id)), ()))
        message = reason.encode("ascii", "replace")[:123]
        await asyncio.gather(*(t.go_away(code=KERNEL_GONE, reason=message) for t in tunnels),
                             return_exceptions=True)
        return len(tunnels)

    def state(self) -> dict[str, int]:
        return {"websockets": len(self._live), "websocket_sessions": len(self._ws_sessions)}


def _fileno(request: web.Request) -> int | None:
    """The descriptor of the client's connection (None once it is gone)."""
    transport = request.transport
    sock = transport.get_extra_info("socket") if transport is not None else None
    return sock.fileno() if sock is not None else None


def _kernel_of(path: str) -> str | None:
    """The kernel id of a kernel websocket's path (None for other relayed paths)."""
    head, sep, rest = path.partition("/api/kernels/")
    kernel_id, _, tail = rest.partition("/")
    return kernel_id if sep and not head and tail == "channels" and kernel_id else None


def _with_session_id(query: str, session_id: str) -> str:
    params = [(k, v) for k, v in parse_qsl(query, keep_blank_values=True) if k != "session_id"]
    return urlencode([*params, ("session_id", session_id)])
