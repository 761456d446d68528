"""A raw connection to a backend for a websocket upgrade, spliced afterwards.

The mixer does not terminate kernel websockets: it forwards the client's handshake
(its ``Sec-WebSocket-Key``, subprotocols and extensions) to the backend, hands the
backend's ``101`` answer back, and from then on moves bytes, as nginx and Go's
reverse proxy do. Frames from the client are masked, as a backend expects from a
client; frames from the backend are not, as a client expects from a server — so
nothing needs decoding, re-masking or re-framing, and many small messages cost one
``write`` per TCP segment instead of one per frame.

``UpgradeConnection`` is the asyncio protocol of the backend leg: it collects the
answer's head, then passes every byte to a ``Sink`` (the relay's tunnel).
"""

from __future__ import annotations

import asyncio
from typing import Protocol, cast

from multidict import CIMultiDict

MAX_HEAD = 64 * 1024


class UpgradeError(Exception):
    """The backend did not answer the upgrade with a readable HTTP head."""


class Sink(Protocol):
    def from_backend(self, data: bytes) -> None: ...
    def backend_lost(self) -> None: ...
    def pause_client(self) -> None: ...
    def resume_client(self) -> None: ...


def parse_head(head: bytes) -> tuple[int, CIMultiDict[str]]:
    """``HTTP/1.1 101 Switching Protocols\\r\\nName: value…`` → (101, headers)."""
    status_line, *lines = head.decode("latin-1").split("\r\n")
    version, _, rest = status_line.partition(" ")
    code = rest[:3]
    if not version.startswith("HTTP/1.") or not code.isdigit():
        raise UpgradeError(f"answered something that is not HTTP: {status_line[:60]!r}")
    headers: CIMultiDict[str] = CIMultiDict()
    for line in lines:
        name, sep, value = line.partition(":")
        if not sep or not name.strip():
            raise UpgradeError(f"answered a malformed header line: {line[:60]!r}")
        headers.add(name.strip(), value.strip())
    return int(code), headers


class UpgradeConnection(asyncio.Protocol):
    def __init__(self) -> None:
        loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        #: (status, headers, bytes that came after the head)
        self.head: asyncio.Future[tuple[int, CIMultiDict[str], bytes]] = loop.create_future()
        self.closed: asyncio.Future[None] = loop.create_future()
        self._buffer = bytearray()
        self._sink: Sink | None = None
        self._early: list[bytes] = []  # bytes after the head, before a sink is attached

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it
        self.transport = cast(asyncio.Transport, transport)

    def attach(self, sink: Sink) -> None:
        self._sink = sink
        early, self._early = self._early, []
        for data in early:
            sink.from_backend(data)
        if self.closed.done():
            sink.backend_lost()

    def data_received(self, data: bytes) -> None:
        if self._sink is not None:
            self._sink.from_backend(data)
            return
        if self.head.done():
            self._early.append(data)
            return
        self._buffer += data
        end = self._buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(self._buffer) > MAX_HEAD:
                self._fail(UpgradeError("answered a head larger than 64 KiB"))
            return
        head, rest = bytes(self._buffer[:end]), bytes(self._buffer[end + 4 :])
        self._buffer.clear()
        try:
            status, headers = parse_head(head)
        except UpgradeError as exc:
            self._fail(exc)
            return
        self.head.set_result((status, headers, rest))

    def _fail(self, exc: Exception) -> None:
        if not self.head.done():
            self.head.set_exception(exc)
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.head.done():
            self.head.set_exception(UpgradeError("closed the connection before answering"))
        if not self.closed.done():
            self.closed.set_result(None)
        if self._sink is not None:
            self._sink.backend_lost()

    # Back-pressure: the backend cannot take more, so stop reading from the client.
    def pause_writing(self) -> None:
        if self._sink is not None:
            self._sink.pause_client()

    def resume_writing(self) -> None:
        if self._sink is not None:
            self._sink.resume_client()
