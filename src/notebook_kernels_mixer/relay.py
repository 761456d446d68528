"""The two-way websocket pump between a client and a backend.

Frames are moved as they are: text stays text, binary stays binary, nothing is
decoded or re-encoded (a Jupyter message passes through as the bytes it came in).
Pings and pongs are relayed rather than answered here, close codes are passed on,
and the subprotocol the client offers (``v1.kernel.websocket.jupyter.org``) is
offered to the backend, whose choice is what the client gets.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

import aiohttp
from aiohttp import WSMsgType, web

from notebook_kernels_mixer.backends import Backend
from notebook_kernels_mixer.errors import BackendError, NotFound

log = logging.getLogger(__name__)

# Close codes that may not be sent in a close frame (RFC 6455 §7.4.1).
_UNSENDABLE = {1005, 1006, 1015}
GOING_AWAY = 1001
INTERNAL_ERROR = 1011


def _offered_protocols(request: web.Request) -> tuple[str, ...]:
    raw = request.headers.get("Sec-WebSocket-Protocol", "")
    return tuple(p.strip() for p in raw.split(",") if p.strip())


def _close_args(code: Any, reason: Any) -> tuple[int, bytes]:
    if not isinstance(code, int) or code in _UNSENDABLE or not 1000 <= code <= 4999:
        code = 1000 if code in (1005, None) else INTERNAL_ERROR
    text = reason if isinstance(reason, str) else ""
    return code, text.encode()[:123]


class Relay:
    """Relays kernel (and proxied) websockets; remembers the live ones for shutdown."""

    def __init__(self, *, max_client_message: int, max_backend_message: int,
                 external_hostname: str | None) -> None:
        self.max_client_message = max_client_message
        self.max_backend_message = max_backend_message
        self.external_hostname = external_hostname
        self._live: set[web.WebSocketResponse] = set()

    @property
    def live(self) -> int:
        return len(self._live)

    async def refuse(self, request: web.Request, error: BackendError) -> web.WebSocketResponse:
        """Accept the upgrade and close at once, saying why (clients then retry)."""
        ws = web.WebSocketResponse(protocols=_offered_protocols(request)[:1])
        await ws.prepare(request)
        await ws.close(code=INTERNAL_ERROR, message=str(error).encode()[:123])
        log.warning("websocket %s refused: %s", request.path, error)
        return ws

    async def run(
        self,
        request: web.Request,
        backend: Backend,
        path: str,
        *,
        on_missing: Callable[[], object] | None = None,
    ) -> web.StreamResponse:
        offered = _offered_protocols(request)
        headers = backend.origin_headers(request.headers, request.host, self.external_hostname)
        try:
            upstream = await backend.ws_connect(
                path,
                query=request.rel_url.raw_query_string,
                protocols=offered,
                headers=headers,
                max_msg_size=self.max_backend_message,
            )
        except NotFound:
            if on_missing is not None:
                on_missing()
            raise
        except BackendError as exc:
            return await self.refuse(request, exc)

        client = web.WebSocketResponse(
            protocols=(upstream.protocol,) if upstream.protocol else (),
            autoping=False,
            max_msg_size=self.max_client_message,
            compress=False,
        )
        try:
            await client.prepare(request)
        except Exception:
            await upstream.close()
            raise
        self._live.add(client)
        try:
            await self._pump_both(client, upstream)
        finally:
            self._live.discard(client)
        return client

    async def _pump_both(
        self, client: web.WebSocketResponse, upstream: aiohttp.ClientWebSocketResponse
    ) -> None:
        to_backend = asyncio.get_running_loop().create_task(_pump(client, upstream))
        try:
            await _pump(upstream, client)
        finally:
            # Whichever side ended first, the other is closed and the pump stopped,
            # so neither a socket nor a task outlives the relay.
            if not to_backend.done():
                to_backend.cancel()
            with contextlib.suppress(BaseException):
                await to_backend
            if not upstream.closed:
                with contextlib.suppress(Exception):
                    await upstream.close(code=GOING_AWAY)
            if not client.closed:
                with contextlib.suppress(Exception):
                    await client.close(code=GOING_AWAY)

    async def close_all(self) -> None:
        """Shutdown: every relayed websocket gets a proper "going away" close."""
        for ws in list(self._live):
            with contextlib.suppress(Exception):
                await ws.close(code=GOING_AWAY, message=b"mixer shutting down")


async def _pump(src: Any, dst: Any) -> None:
    """Move frames from ``src`` to ``dst`` until ``src`` closes; then close ``dst``
    with the same code."""
    receive = src.receive
    while True:
        msg = await receive()
        kind = msg.type
        try:
            if kind is WSMsgType.TEXT:
                await dst.send_str(msg.data)
            elif kind is WSMsgType.BINARY:
                await dst.send_bytes(msg.data)
            elif kind is WSMsgType.PING:
                await dst.ping(msg.data)
            elif kind is WSMsgType.PONG:
                await dst.pong(msg.data)
            elif kind is WSMsgType.CLOSE:
                code, reason = _close_args(msg.data, msg.extra)
                await dst.close(code=code, message=reason)
                return
            else:  # CLOSING, CLOSED, ERROR: src is gone without a close frame for us
                code = getattr(src, "close_code", None) or INTERNAL_ERROR
                if kind is WSMsgType.ERROR:
                    code = getattr(msg.data, "code", INTERNAL_ERROR)
                await dst.close(code=_close_args(code, None)[0])
                return
        except ConnectionResetError:
            return
