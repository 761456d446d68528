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
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlencode

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
        # (backend, path, session_id) -> relays open or opening with that kernel session
        self._sessions: Counter[tuple[str, str, str]] = Counter()

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
        with self._kernel_session(request, backend, path) as query:
            return await self._relay(request, backend, path, query, on_missing)

    @contextlib.contextmanager
    def _kernel_session(self, request: web.Request, backend: Backend, path: str) -> Iterator[str]:
        """The query string for the backend, with a ``session_id`` of its own if that
        kernel session already has a socket open through the mixer.

        JupyterLab behind a gateway-mode front abandons its first socket (it offers a
        subprotocol the front declines and reconnects at once), and the front keeps its
        side of the abandoned socket open. The backend gives sockets with one
        ``session_id`` one ZMQ identity, so the kernel's replies may go to the abandoned
        one and the notebook hangs. A second concurrent socket therefore gets a session
        of its own; a reconnect after the first closed keeps the original id, so the
        backend's replay of missed messages still works.
        """
        query = request.rel_url.raw_query_string
        session_id = request.rel_url.query.get("session_id", "")
        if not session_id:
            yield query
            return
        key = (backend.name, path, session_id)
        if self._sessions[key]:
            params = request.rel_url.query.copy()
            params["session_id"] = f"{session_id}.{uuid.uuid4().hex[:12]}"
            query = urlencode(list(params.items()))
            log.info("websocket %s: session %s already open; this socket gets its own",
                     path, session_id)
        self._sessions[key] += 1
        try:
            yield query
        finally:
            self._sessions[key] -= 1
            if not self._sessions[key]:
                del self._sessions[key]

    async def _relay(
        self,
        request: web.Request,
        backend: Backend,
        path: str,
        query: str,
        on_missing: Callable[[], object] | None,
    ) -> web.StreamResponse:
        offered = _offered_protocols(request)
        headers = backend.origin_headers(request.headers, request.host, self.external_hostname)
        try:
            upstream = await backend.ws_connect(
                path,
                query=query,
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
