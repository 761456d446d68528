"""The backend leg of a kernel websocket: a raw connection that sends the client's
upgrade and is spliced with the client's connection afterwards (``relay.tunnel``).

The mixer does not terminate kernel websockets: it forwards the client's handshake
(its ``Sec-WebSocket-Key``, subprotocols and extensions) to the backend, hands the
backend's ``101`` answer back, and from then on moves bytes, as nginx and Go's
reverse proxy do. Frames from the client are masked, as a backend expects from a
client; frames from the backend are not, as a client expects from a server — so
nothing needs decoding, re-masking or re-framing, and many small messages cost one
``write`` per TCP segment instead of one per frame.

``UpgradeConnection`` is the asyncio protocol of the backend leg: it collects the
answer's head, then passes every byte to a ``Sink`` (the relay's tunnel).
``Dialer.upgrade`` opens such a connection to one backend, with that backend's
credentials, within the backend's request timeout (credentials included), through
``Backend.authorized`` as REST requests do (retry on 401/403, health).
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol, cast

from multidict import CIMultiDict
from yarl import URL

from notebook_kernels_mixer.backends import Backend
from notebook_kernels_mixer.errors import BackendError, BadRequest, NotFound

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


@dataclass(frozen=True)
class Upgrade:
    """A backend connection's answer to a websocket upgrade (101 if it took it)."""

    status: int
    connection: UpgradeConnection
    headers: CIMultiDict[str]
    #: Bytes the backend sent right after its head (already websocket frames).
    rest: bytes

    @property
    def transport(self) -> asyncio.Transport:
        assert self.connection.transport is not None
        return self.connection.transport

    def close(self) -> None:
        """Drop the connection (an answer other than 101)."""
        self.transport.close()


class Dialer:
    """Opens upgrade connections to one backend.

    Addresses are resolved once a minute, not per connection (200 kernels
    reconnecting at once must not queue on getaddrinfo); the TLS context is built
    once, off the event loop (loading the CA bundle reads files).
    """

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self._addresses: tuple[float, list[tuple[int, Any]]] | None = None
        self._ssl: ssl.SSLContext | None = None

    async def upgrade(self, path: str, query: str, headers: Mapping[str, str]) -> Upgrade:
        """Send the upgrade (the client's handshake headers plus the backend's
        credentials); return once the backend said 101. A 401/403 is retried once
        with fresh credentials (``Backend.authorized``); 404 means no such kernel
        (``NotFound``)."""
        backend = self.backend
        for name, value in headers.items():
            if any(c in name or c in value for c in "\r\n\0"):
                raise BadRequest(f"invalid characters in header {name!r}")
        url = backend.url_for(path, query)
        deadline = time.monotonic() + backend.config.request_timeout
        what = f"websocket upgrade for {path}"

        async def attempt(auth: Mapping[str, str]) -> Upgrade:
            lines = [f"GET {url.raw_path_qs} HTTP/1.1", f"Host: {url.raw_authority}"]
            lines += [f"{k}: {v}" for k, v in {**headers, **auth}.items()]
            return await self._exchange(url, lines, deadline, what)

        upgrade = await backend.authorized(attempt, deadline, what)
        if upgrade.status == 101:
            return upgrade
        upgrade.close()
        if upgrade.status == 404:
            raise NotFound(f"backend {backend.name!r} has no such kernel")
        raise BackendError(backend.name, f"refused the websocket for {path}: HTTP {upgrade.status}")

    async def _exchange(self, url: URL, lines: list[str], deadline: float, what: str) -> Upgrade:
        transport: asyncio.Transport | None = None
        try:
            remaining = max(deadline - time.monotonic(), 0.001)
            connected, conn = await asyncio.wait_for(self._connect(url), remaining)
            transport = connected
            connected.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
            # The answer gets a budget of its own: jupyter_server answers the upgrade only
            # once the kernel is ready, which takes a while on a busy machine.
            limit = self.backend.config.request_timeout
            status, answer, rest = await asyncio.wait_for(conn.head, limit)
        except UpgradeError as exc:
            if transport is not None:
                transport.close()
            error = BackendError(self.backend.name, f"{exc} to the {what}")
            self.backend.health.failure(error)
            raise error from None
        except (OSError, asyncio.TimeoutError) as exc:
            if transport is not None:
                transport.close()
            raise self.backend.failed(exc, what) from None
        return Upgrade(status, conn, answer, rest)

    async def _connect(self, url: URL) -> tuple[asyncio.Transport, UpgradeConnection]:
        loop = asyncio.get_running_loop()
        host, port = url.host or "localhost", url.port or (443 if url.scheme == "https" else 80)
        now = time.monotonic()
        if self._addresses is None or now > self._addresses[0]:
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            self._addresses = (now + 60.0, [(info[0], info[4]) for info in infos])
        tls = url.scheme == "https"
        if tls and self._ssl is None:
            self._ssl = await asyncio.to_thread(ssl.create_default_context)
        last: OSError | None = None
        for family, address in self._addresses[1]:
            try:
                transport, conn = await loop.create_connection(
                    UpgradeConnection, address[0], address[1], family=family,
                    ssl=self._ssl if tls else None, server_hostname=host if tls else None,
                )
            except OSError as exc:
                last = exc
                continue
            return transport, conn
        self._addresses = None
        raise last or OSError(f"no address for {host}")
