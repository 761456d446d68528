"""The splice of one kernel websocket: client connection ⇄ backend connection.

After the handshake, bytes move between the two connections unchanged (see
``relay.upgrade`` for why that is faithful for websockets), so text stays text,
binary stays binary, pings, pongs and close codes pass through, and the subprotocol
and extensions are whatever client and backend agreed on. Only the boundaries of
the backend's frames are tracked, so that the mixer can put a frame of its own
between two of them: a "going away" close on shutdown, or a ping to learn whether a
client is still there (a half-open socket after a laptop sleep).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket

from aiohttp import web

from notebook_kernels_mixer.relay.upgrade import UpgradeConnection

GOING_AWAY = 1001
INTERNAL_ERROR = 1011

#: Past this many bytes waiting for a slow client, stop reading from the backend.
CLIENT_BUFFER_LIMIT = 1024 * 1024


#: An unmasked, empty ping frame (server → client), RFC 6455 §5.5.2.
PING = b"\x89\x00"


def close_frame(code: int, reason: bytes = b"") -> bytes:
    """An unmasked close frame (server → client), RFC 6455 §5.5.1."""
    payload = code.to_bytes(2, "big") + reason[:123]
    return bytes((0x88, len(payload))) + payload


def no_delay(transport: asyncio.BaseTransport) -> None:
    """TCP_NODELAY on a leg of the splice: kernel messages are small, and Nagle would
    hold the second of two until the peer's delayed ACK (~40 ms per execution)."""
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class FrameBoundaries:
    """Follows the frame headers of a byte stream, skipping payloads unread, to know
    whether the stream is between two frames.

    Without the boundary of the frame being sent, a frame of the mixer's own could
    only be put in the middle of a backend's frame, and nothing in the bytes that
    follow tells where a frame starts: so every frame header is read as it passes
    (two to ten bytes; a payload, however long, is only counted). A chunk that is one
    whole frame, as a kernel message usually is, takes one check.
    """

    __slots__ = ("_partial", "_remaining", "parsed")

    def __init__(self) -> None:
        self._remaining = 0  # payload bytes of the current frame still to come
        self._partial = b""  # a frame header split across reads
        #: Chunks that needed the general parser (for tests): not a chunk that is one
        #: whole frame, nor one inside a payload.
        self.parsed = 0

    @property
    def between_frames(self) -> bool:
        return self._remaining == 0 and not self._partial

    def feed(self, data: bytes) -> None:
        size = len(data)
        if self._remaining >= size:  # inside a long payload
            self._remaining -= size
            return
        if not self._remaining and not self._partial and size >= 2:
            # The common case: the chunk is exactly one unmasked frame.
            length = data[1]
            if (length < 126 and size == 2 + length) or (
                    length == 126 and size >= 4 and size == 4 + (data[2] << 8 | data[3])):
                return
        self._parse(data, size)

    def _parse(self, data: bytes, size: int) -> None:
        self.parsed += 1
        pos = 0
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
        self._close_with = (GOING_AWAY, b"mixer shutting down")  # what go_away says
        self._paused = False
        self._client_heard: asyncio.Event | None = None  # set while a liveness ping waits
        self._pending_ping = False
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        for transport in (self._client, self._backend_transport):
            transport.set_write_buffer_limits(high=256 * 1024)
            no_delay(transport)

    def start(self, request: web.Request, early: bytes) -> None:
        request.protocol.keep_alive(False)
        if early:
            self.from_backend(early)
        request.protocol.set_parser(self)  # type: ignore[arg-type]
        self._backend.attach(self)

    # -- client → backend (aiohttp's payload-parser interface) ----------------------------
    def feed_data(self, data: bytes) -> tuple[bool, bytes]:
        if self._client_heard is not None:
            self._client_heard.set()
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
        if (self._closing is not None or self._pending_ping) and self._frames.between_frames:
            if self._closing is not None:
                self._say_going_away()
            else:
                self._send_ping()
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

    async def go_away(self, grace: float = 1.0, *, code: int = GOING_AWAY,
                      reason: bytes = b"mixer shutting down") -> None:
        """Shutdown: a close frame for the client (a "going away" one unless ``code``
        says otherwise) at the next frame boundary (waiting at most ``grace`` for the
        current frame to end); the backend's leg is dropped."""
        self._close_with = (code, reason)
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

    async def client_alive(self, timeout: float) -> bool:
        """Ping the client (at the next frame boundary) and wait up to ``timeout`` for
        any byte from it. A client whose machine slept leaves a half-open socket
        that accepts writes and never answers."""
        if self.done.done() or self._client.is_closing():
            return False
        self._client_heard = asyncio.Event()
        if self._frames.between_frames:
            self._send_ping()
        else:
            self._pending_ping = True
        try:
            await asyncio.wait_for(self._client_heard.wait(), timeout)
        except asyncio.TimeoutError:
            return False
        finally:
            self._client_heard = None
        return True

    def _send_ping(self) -> None:
        self._pending_ping = False
        if not self._client.is_closing():
            self._client.write(PING)

    def _say_going_away(self) -> None:
        self._going_away = True
        if not self._client.is_closing():
            self._client.write(close_frame(*self._close_with))
        if self._closing is not None:
            self._closing.set()


