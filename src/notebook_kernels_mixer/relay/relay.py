"""The two-way websocket relay between a client and a backend.

After the handshake the relay is a splice: bytes move between the two connections
unchanged (see ``backends/upgrade.py`` for why that is faithful for websockets), so
text stays text, binary stays binary, pings, pongs and close codes pass through, and
the subprotocol and extensions are whatever client and backend agreed on — the mixer
forwards the client's offer and returns the backend's choice. Only the boundaries of
the backend's frames are tracked, so that on shutdown the client can be sent a proper
"going away" close frame between two frames.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from urllib.parse import urlencode

from aiohttp import web

from notebook_kernels_mixer.backends import Backend
from notebook_kernels_mixer.backends.upgrade import UpgradeConnection
from notebook_kernels_mixer.errors import BackendError, NotFound

log = logging.getLogger(__name__)

GOING_AWAY = 1001
INTERNAL_ERROR = 1011

# What of the client's handshake reaches the backend, and of the backend's answer the client.
_HANDSHAKE_TO_BACKEND = (
    "Upgrade", "Connection", "Sec-WebSocket-Key", "Sec-WebSocket-Version",
    "Sec-WebSocket-Protocol", "Sec-WebSocket-Extensions", "User-Agent",
)
_HANDSHAKE_TO_CLIENT = (
    "Upgrade", "Connection", "Sec-WebSocket-Accept", "Sec-WebSocket-Protocol",
    "Sec-WebSocket-Extensions",
)
#: Past this many bytes waiting for a slow client, stop reading from the backend.
CLIENT_BUFFER_LIMIT = 1024 * 1024


def close_frame(code: int, reason: bytes = b"") -> bytes:
    """An unmasked close frame (server → client), RFC 6455 §5.5.1."""
    payload = code.to_bytes(2, "big") + reason[:123]
    return bytes((0x88, len(payload))) + payload


class FrameBoundaries:
    """Follows the frame headers of a byte stream, skipping payloads unread, to know
    whether the stream is between two frames."""

    __slots__ = ("_partial", "_remaining")

    def __init__(self) -> None:
        self._remaining = 0  # payload bytes of the current frame still to come
        self._partial = b""  # a frame header split across reads

    @property
    def between_frames(self) -> bool:
        return self._remaining == 0 and not self._partial

    def feed(self, data: bytes) -> None:
        pos, size = 0, len(data)
        while True:
            if self._remaining:
                step = min(self._remaining, size - pos)
                self._remaining -= step
                pos += step
            if pos >= size:
                return
            head = self._partial + data[pos : pos + 14]
            if len(head) < 2:
                self._partial, pos = head, size
                continue
            length, need = head[1] & 0x7F, 2 + (4 if head[1] & 0x80 else 0)
            need += 2 if length == 126 else 8 if length == 127 else 0
            if len(head) < need:
                self._partial, pos = head, size
                continue
            if length == 126:
                length = int.from_bytes(head[2:4], "big")
            elif length == 127:
                length = int.from_bytes(head[2:10], "big")
            pos += need - len(self._partial)
            self._partial = b""
            self._remaining = length


class Tunnel:
    """One spliced websocket: the client's connection (aiohttp's) and the backend's.

    Installed as the aiohttp connection's payload parser, as aiohttp's own websocket
    reader is, so client bytes arrive in ``feed_data`` and go straight to the backend.
    """

    def __init__(self, request: web.Request, backend: UpgradeConnection) -> None:
        assert request.transport is not None and backend.transport is not None
        self._client = request.transport
        self._writer = request.writer
        self._backend = backend
        self._backend_transport = backend.transport
        self._frames = FrameBoundaries()
        self._going_away = False
        self._closing: asyncio.Event | None = None  # set when shutdown waits for a boundary
        self._paused = False
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        for transport in (self._client, self._backend_transport):
            transport.set_write_buffer_limits(high=256 * 1024)

    def start(self, request: web.Request, early: bytes) -> None:
        request.protocol.keep_alive(False)
        if early:
            self.from_backend(early)
        request.protocol.set_parser(self)  # type: ignore[arg-type]
        self._backend.attach(self)

    # -- client → backend (aiohttp's payload-parser interface) ----------------------------
    def feed_data(self, data: bytes) -> tuple[bool, bytes]:
        if not self._backend_transport.is_closing():
            self._backend_transport.write(data)
        return False, b""

    def feed_eof(self) -> None:
        self._backend_transport.close()
        self._finish()

    # -- backend → client --------------------------------------------------------------------
    def from_backend(self, data: bytes) -> None:
        if self._going_away or self._client.is_closing():
            return
        self._frames.feed(data)
        self._client.write(data)
        if self._closing is not None and self._frames.between_frames:
            self._say_going_away()
        if not self._paused and self._client.get_write_buffer_size() > CLIENT_BUFFER_LIMIT:
            self._paused = True
            self._backend_transport.pause_reading()
            asyncio.get_running_loop().create_task(self._resume_when_drained())

    async def _resume_when_drained(self) -> None:
        with contextlib.suppress(ConnectionError):
            await self._writer.drain()
        self._paused = False
        if not self._backend_transport.is_closing():
            self._backend_transport.resume_reading()

    def backend_lost(self) -> None:
        self._client.close()
        self._finish()

    def pause_client(self) -> None:
        self._client.pause_reading()

    def resume_client(self) -> None:
        self._client.resume_reading()

    def _finish(self) -> None:
        if not self.done.done():
            self.done.set_result(None)

    def close(self) -> None:
        self._backend_transport.close()
        self._client.close()
        self._finish()

    async def go_away(self, grace: float = 1.0) -> None:
        """Shutdown: a "going away" close frame for the client at the next frame
        boundary (waiting at most ``grace`` for the current frame to end)."""
        if self._frames.between_frames:
            self._say_going_away()
        else:
            self._closing = asyncio.Event()  # from_backend says it at the boundary
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._closing.wait(), grace)
            self._going_away = True
        self._backend_transport.close()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.shield(self.done), grace)
        self.close()

    def _say_going_away(self) -> None:
        self._going_away = True
        if not self._client.is_closing():
            self._client.write(close_frame(GOING_AWAY, b"mixer shutting down"))
        if self._closing is not None:
            self._closing.set()


class Relay:
    """Relays kernel (and proxied) websockets; remembers the live ones for shutdown."""

    def __init__(self, *, external_hostname: str | None) -> None:
        self.external_hostname = external_hostname
        self._live: set[Tunnel] = set()
        # (backend, path, session_id) -> relays open or opening with that kernel session
        self._sessions: Counter[tuple[str, str, str]] = Counter()

    @property
    def live(self) -> int:
        return len(self._live)

    async def refuse(self, request: web.Request, error: BackendError) -> web.WebSocketResponse:
        """Accept the upgrade and close at once, saying why. Clients then retry, where
        an HTTP error would make JupyterLab declare the kernel dead (SPEC §4)."""
        offered = request.headers.get("Sec-WebSocket-Protocol", "")
        ws = web.WebSocketResponse(protocols=[p.strip() for p in offered.split(",") if p.strip()][:1])
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
        headers = {k: request.headers[k] for k in _HANDSHAKE_TO_BACKEND if k in request.headers}
        headers.update(backend.origin_headers(request.headers, request.host, self.external_hostname))
        with self._kernel_session(request, backend, path) as query:
            try:
                upgrade = await backend.open_upgrade(path, query=query, headers=headers)
            except NotFound:
                if on_missing is not None:
                    on_missing()
                raise
            except BackendError as exc:
                return await self.refuse(request, exc)
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
            self._live.add(tunnel)
            try:
                tunnel.start(request, upgrade.rest)
                await tunnel.done
            finally:
                self._live.discard(tunnel)
                tunnel.close()
            return response

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

    async def close_all(self) -> None:
        """Shutdown: every relayed websocket gets a proper "going away" close."""
        await asyncio.gather(*(t.go_away() for t in list(self._live)), return_exceptions=True)
