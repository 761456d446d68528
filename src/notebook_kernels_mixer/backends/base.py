"""The Backend abstraction: one Jupyter-API server the mixer can send work to.

A backend owns its connection pool, credentials, timeouts and health. Every request
the mixer makes goes through ``Backend.request``/``open_upgrade``/``open_stream``, so
network and HTTP failures are mapped to the error tree (``errors``) in one place and
the health record (used by merged listings to skip a dead backend) is always current.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import socket
import ssl
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, cast

import aiohttp
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from notebook_kernels_mixer import jsonutil
from notebook_kernels_mixer.backends.credentials import CredentialError, Credentials
from notebook_kernels_mixer.backends.upgrade import UpgradeConnection, UpgradeError
from notebook_kernels_mixer.config import BackendConfig
from notebook_kernels_mixer.errors import (
    BackendError,
    BackendTimeout,
    BackendUnavailable,
    BadRequest,
    NotFound,
)

log = logging.getLogger(__name__)

_XSRF = "mixer-" + secrets.token_hex(8)


@dataclass(frozen=True)
class Upgrade:
    """A backend connection that answered a websocket upgrade with 101."""

    transport: asyncio.Transport
    connection: UpgradeConnection
    headers: CIMultiDict[str]
    #: Bytes the backend sent right after its head (already websocket frames).
    rest: bytes


@dataclass(frozen=True)
class BackendResponse:
    status: int
    headers: CIMultiDictProxy[str]
    body: bytes
    backend: str

    def json(self) -> Any:
        try:
            return jsonutil.loads(self.body) if self.body else None
        except jsonutil.JSONDecodeError:
            raise BackendError(
                self.backend, f"answered HTTP {self.status} with invalid JSON"
            ) from None

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


class Health:
    """Whether a backend is answering; flips are logged once, not per request.

    After a failure the backend counts as down: merged listings skip it instead of
    waiting for it, and a background probe (bounded backoff) brings it back as soon
    as it answers again.
    """

    probe_initial = 0.5
    probe_max = 5.0

    def __init__(self, name: str, probe: Callable[[], Awaitable[object]]) -> None:
        self.name = name
        self._probe = probe
        self.up = True
        self.last_error: str | None = None
        self.last_latency: float | None = None
        self.last_ok: float | None = None
        self.changed_at = time.time()
        self._probe_task: asyncio.Task[None] | None = None

    def success(self, latency: float) -> None:
        self.last_latency = latency
        self.last_ok = time.time()
        if not self.up:
            self.up = True
            self.changed_at = time.time()
            log.warning("backend %r is answering again", self.name)

    def failure(self, error: BackendError) -> None:
        self.last_error = error.cause
        if self.up:
            self.up = False
            self.changed_at = time.time()
            log.warning("backend %r is unavailable: %s", self.name, error.cause)
        if self._probe_task is None or self._probe_task.done():
            self._probe_task = asyncio.get_running_loop().create_task(self._probe_loop())

    async def _probe_loop(self) -> None:
        delay = self.probe_initial
        while not self.up:
            await asyncio.sleep(delay)
            if self.up:
                return
            with contextlib.suppress(BackendError):
                await self._probe()  # success()/failure() are recorded by request()
            delay = min(delay * 2, self.probe_max)

    async def close(self) -> None:
        if self._probe_task is not None:
            self._probe_task.cancel()
            with contextlib.suppress(BaseException):
                await self._probe_task

    def state(self) -> dict[str, object]:
        return {
            "reachable": self.up,
            "last_error": self.last_error,
            "last_latency_ms": None if self.last_latency is None else round(self.last_latency * 1e3, 1),
            "since": self.changed_at,
        }


HOP_BY_HOP = frozenset(
    h.lower()
    for h in (
        "Connection", "Keep-Alive", "Proxy-Authenticate", "Proxy-Authorization", "TE",
        "Trailer", "Transfer-Encoding", "Upgrade", "Host", "Content-Length",
    )
)


class Backend:
    """A Jupyter-API server (local jupyter_server, a gateway, Google's kernel service)."""

    def __init__(self, config: BackendConfig, credentials: Credentials) -> None:
        self.config = config
        self.name = config.name
        self.suffix = config.display_suffix
        self.credentials = credentials
        self.url = URL(config.url.rstrip("/") + "/")
        self._base_path = self.url.raw_path.rstrip("/")
        self._origin = f"{self.url.scheme}://{self.url.raw_authority}"
        self.health = Health(self.name, self._probe)
        self._session: aiohttp.ClientSession | None = None
        self._addresses: tuple[float, list[tuple[int, Any]]] | None = None
        self._ssl: ssl.SSLContext | None = None

    # -- lifecycle -----------------------------------------------------------------
    async def start(self) -> None:
        connector = aiohttp.TCPConnector(
            limit=0,  # the kernels' websockets alone may be hundreds of connections
            ttl_dns_cache=300,
            keepalive_timeout=30,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            auto_decompress=False,  # proxied bodies pass through as they are
            cookie_jar=aiohttp.DummyCookieJar(),  # one user's cookies never stick
            skip_auto_headers=("User-Agent",),
        )

    async def close(self) -> None:
        await self.health.close()
        await self.credentials.close()
        if self._session is not None:
            await self._session.close()

    @property
    def session(self) -> aiohttp.ClientSession:
        assert self._session is not None, "Backend.start() was not awaited"
        return self._session

    # -- helpers ---------------------------------------------------------------------
    def url_for(self, path: str, query: str = "") -> URL:
        """``path`` must already be percent-encoded (ids and names are validated and
        quoted by the callers), so nothing a client sends can change the path."""
        raw = self._base_path + path + (f"?{query}" if query else "")
        return URL(self._origin + raw, encoded=True)

    def origin_headers(self, client: Mapping[str, str], mixer_host: str | None,
                       external_hostname: str | None) -> dict[str, str]:
        """Origin/Referer that pointed at the mixer now point at this backend (SPEC §5).

        Any other Origin (the external hostname, a foreign site admitted by config) is
        dropped: backends judge same-origin against their own Host, and a request with
        no Origin is what a non-browser client sends.
        """
        out: dict[str, str] = {}
        for name in ("Origin", "Referer"):
            value = client.get(name)
            if not value:
                continue
            try:
                url = URL(value)
            except ValueError:
                continue
            host = url.raw_authority
            if mixer_host and host == mixer_host and (
                not external_hostname or url.host != external_hostname
            ):
                rest = "" if name == "Origin" else (url.raw_path_qs or "/")
                out[name] = self._origin + rest
        return out

    async def auth_headers(self) -> dict[str, str]:
        try:
            return await self.credentials.headers()
        except CredentialError as exc:
            error = BackendUnavailable(self.name, str(exc))
            self.health.failure(error)
            raise error from None

    def _xsrf_headers(self, method: str) -> dict[str, str]:
        if method in ("GET", "HEAD", "OPTIONS"):
            return {}
        return {"X-XSRFToken": _XSRF, "Cookie": f"_xsrf={_XSRF}"}

    def _map_error(self, exc: BaseException, what: str) -> BackendError:
        if isinstance(exc, asyncio.TimeoutError):
            return BackendTimeout(self.name, f"no answer to {what} in time")
        if isinstance(exc, aiohttp.ClientConnectorError):
            return BackendUnavailable(self.name, f"cannot connect to {self.url}: {exc.os_error}")
        if isinstance(exc, aiohttp.ServerDisconnectedError):
            return BackendError(self.name, f"closed the connection during {what}")
        if isinstance(exc, aiohttp.ClientError):
            return BackendError(self.name, f"{what} failed: {type(exc).__name__}: {exc}")
        return BackendError(self.name, f"{what} failed: {exc}")

    # -- requests --------------------------------------------------------------------
    async def request(
        self,
        method: str,
        path: str,
        *,
        query: str = "",
        body: bytes | None = None,
        json: Any = None,
        timeout: float | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> BackendResponse:
        """One request/response exchange, body read in full; errors mapped."""
        if json is not None:
            body = jsonutil.dumps(json)
        send = CIMultiDict(headers or {})
        if body is not None and "Content-Type" not in send:
            send["Content-Type"] = "application/json"
        send.setdefault("Accept-Encoding", "identity")
        send.update(self._xsrf_headers(method))
        url = self.url_for(path, query)
        what = f"{method} {path}"
        limit = aiohttp.ClientTimeout(total=timeout or self.config.request_timeout)
        for attempt in (1, 2):
            auth = await self.auth_headers()
            send.update(auth)
            started = time.perf_counter()
            try:
                async with self.session.request(
                    method, url, data=body, headers=send, timeout=limit, allow_redirects=False
                ) as resp:
                    data = await resp.read()
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
                error = self._map_error(exc, what)
                self.health.failure(error)
                raise error from None
            if resp.status in (401, 403) and attempt == 1 and self.credentials.rejected(auth):
                continue
            if resp.status >= 500 and resp.status not in (501, 503):
                # The backend is up but broken for this call; let the caller pass it on.
                self.health.success(time.perf_counter() - started)
            elif resp.status == 503:
                self.health.failure(BackendUnavailable(self.name, f"{what}: HTTP 503"))
            else:
                self.health.success(time.perf_counter() - started)
            return BackendResponse(resp.status, resp.headers, data, self.name)
        raise AssertionError("unreachable")

    async def request_json(self, method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
        resp = await self.request(method, path, **kwargs)
        return resp.status, resp.json()

    async def open_stream(
        self, method: str, path_qs: str, headers: Mapping[str, str], data: Any, *, timeout: float
    ) -> aiohttp.ClientResponse:
        """Start a streamed request (the catch-all proxy); the caller releases it."""
        send = CIMultiDict((k, v) for k, v in headers.items() if k.lower() not in HOP_BY_HOP)
        send.update(await self.auth_headers())
        limit = aiohttp.ClientTimeout(total=None, sock_connect=timeout, sock_read=timeout)
        try:
            return await self.session.request(
                method, URL(self._origin + self._base_path + path_qs, encoded=True),
                data=data, headers=send, timeout=limit, allow_redirects=False,
            )
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            error = self._map_error(exc, f"{method} {path_qs.split('?')[0]}")
            self.health.failure(error)
            raise error from None

    async def open_upgrade(
        self, path: str, *, query: str = "", headers: Mapping[str, str]
    ) -> Upgrade:
        """Send a websocket upgrade (the client's handshake headers plus this backend's
        credentials) on a new raw connection; return it once the backend said 101.

        The relay then splices the connection with the client's (``backends.upgrade``).
        A 401/403 is retried once with fresh credentials; 404 means no such kernel.
        """
        url = self.url_for(path, query)
        limit = self.config.request_timeout
        for name, value in headers.items():
            if any(c in name or c in value for c in "\r\n\0"):
                raise BadRequest(f"invalid characters in header {name!r}")
        for attempt in (1, 2):
            auth = await self.auth_headers()
            lines = [f"GET {url.raw_path_qs} HTTP/1.1", f"Host: {url.raw_authority}"]
            lines += [f"{k}: {v}" for k, v in {**headers, **auth}.items()]
            started = time.perf_counter()
            transport: asyncio.Transport | None = None
            try:
                transport, conn = await asyncio.wait_for(self._connect(url), limit)
                transport.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
                status, answer, rest = await asyncio.wait_for(conn.head, limit)
            except (OSError, asyncio.TimeoutError, UpgradeError) as exc:
                if transport is not None:
                    transport.close()
                cause = (f"{exc} to the websocket upgrade for {path}" if isinstance(exc, UpgradeError)
                         else None)
                error = (BackendError(self.name, cause) if cause
                         else self._map_error(exc, f"websocket upgrade for {path}"))
                self.health.failure(error)
                raise error from None
            if status == 101:
                self.health.success(time.perf_counter() - started)
                return Upgrade(transport, conn, answer, rest)
            transport.close()
            if status in (401, 403) and attempt == 1 and self.credentials.rejected(auth):
                continue
            if status == 404:
                raise NotFound(f"backend {self.name!r} has no such kernel")
            raise BackendError(self.name, f"refused the websocket for {path}: HTTP {status}")
        raise AssertionError("unreachable")

    async def _connect(self, url: URL) -> tuple[asyncio.Transport, UpgradeConnection]:
        """A new TCP (or TLS) connection; addresses are resolved once a minute, not per
        connection (200 kernels reconnecting at once must not queue on getaddrinfo)."""
        loop = asyncio.get_running_loop()
        host, port = url.host or "localhost", url.port or (443 if url.scheme == "https" else 80)
        now = time.monotonic()
        if self._addresses is None or now > self._addresses[0]:
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            self._addresses = (now + 60.0, [(info[0], info[4]) for info in infos])
        if url.scheme == "https" and self._ssl is None:
            # Loading the CA bundle reads files: not on the event loop.
            self._ssl = await asyncio.to_thread(ssl.create_default_context)
        last: OSError | None = None
        for family, address in self._addresses[1]:
            try:
                transport, conn = await loop.create_connection(
                    UpgradeConnection, address[0], address[1], family=family,
                    ssl=self._ssl if url.scheme == "https" else None,
                    server_hostname=host if url.scheme == "https" else None,
                )
            except OSError as exc:
                last = exc
                continue
            return cast(asyncio.Transport, transport), conn
        self._addresses = None
        raise last or OSError(f"no address for {host}")

    async def _probe(self) -> object:
        return await self.request("GET", "/api/kernelspecs", timeout=self.config.request_timeout)

    def state(self) -> dict[str, object]:
        return {
            "name": self.name,
            "display_suffix": self.suffix,
            "url": str(self.url),
            **self.health.state(),
            "credentials": self.credentials.state(),
        }
