"""The Backend: one Jupyter-API server the mixer can send work to.

A backend owns its HTTP connection pool, credentials, timeouts, error mapping and
health. Every HTTP request the mixer makes goes through ``Backend.request`` (or
``open_stream`` for the catch-all proxy), so network failures become the error tree
(``errors``) in one place and the health record stays current. Websocket upgrades are
the relay's business (``relay.upgrade``); they use ``url_for``, ``authorized``,
``failed`` and ``health`` from here.

``authorized`` is the one path of an exchange that the backend may refuse: the
credentials, one retry on a 401/403 with fresh ones, and the health record. REST
requests (``exchange``) and websocket upgrades both go through it.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import aiohttp
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from notebook_kernels_mixer import descriptors, jsonutil
from notebook_kernels_mixer.backends.credentials import CredentialError, Credentials
from notebook_kernels_mixer.backends.health import Health
from notebook_kernels_mixer.errors import (
    BackendError,
    BackendTimeout,
    BackendUnavailable,
    MixerError,
    NotFound,
    UpstreamError,
)

if TYPE_CHECKING:  # config imports backends.kinds, which imports this package
    from notebook_kernels_mixer.config import BackendConfig

_XSRF = "mixer-" + secrets.token_hex(8)

HOP_BY_HOP = frozenset(
    h.lower()
    for h in (
        "Connection", "Keep-Alive", "Proxy-Authenticate", "Proxy-Authorization", "TE",
        "Trailer", "Transfer-Encoding", "Upgrade", "Host", "Content-Length",
    )
)


def _bytes(n: int) -> str:
    """``67108864`` → ``64 MiB``; sizes that are not whole MiB/KiB stay in bytes."""
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size and n % size == 0:
            return f"{n // size} {unit}"
    return f"{n} bytes"


class Answer(Protocol):
    """What one attempt of ``Backend.authorized`` gives back: an answer with a status,
    which can be dropped unread (an aiohttp response, a websocket upgrade)."""

    @property
    def status(self) -> int: ...

    def close(self) -> None: ...


AnswerT = TypeVar("AnswerT", bound=Answer)


@dataclass(frozen=True)
class BackendResponse:
    status: int
    headers: CIMultiDictProxy[str]
    body: bytes
    backend: str

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    def json(self) -> Any:
        try:
            return jsonutil.loads(self.body) if self.body else None
        except jsonutil.JSONDecodeError:
            raise BackendError(
                self.backend, f"answered HTTP {self.status} with invalid JSON"
            ) from None

    def error(self) -> UpstreamError:
        """This (error) answer, to be handed on to the client as the backend gave it."""
        return UpstreamError(self.backend, self.status, self.body, self.headers.get("Content-Type"))


class Backend:
    """A Jupyter-API server (local jupyter_server, a gateway, Google's kernel service)."""

    def __init__(self, config: BackendConfig, credentials: Credentials) -> None:
        self.config = config
        self.name = config.name
        self.suffix = config.display_suffix
        self.credentials = credentials
        self.url = URL(config.url.rstrip("/") + "/")
        self._base_path = self.url.raw_path.rstrip("/")
        self.origin = f"{self.url.scheme}://{self.url.raw_authority}"
        self.health = Health(self.name, self._probe)
        self._http: aiohttp.ClientSession | None = None

    # -- lifecycle -----------------------------------------------------------------
    async def start(self) -> None:
        connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300, keepalive_timeout=30)
        self._http = aiohttp.ClientSession(
            connector=connector,
            auto_decompress=False,  # proxied bodies pass through as they are
            cookie_jar=aiohttp.DummyCookieJar(),  # one user's cookies never stick
            skip_auto_headers=("User-Agent",),
        )

    async def close(self) -> None:
        await self.health.close()
        await self.credentials.close()
        if self._http is not None:
            await self._http.close()

    @property
    def http(self) -> aiohttp.ClientSession:
        """The HTTP client pool (an aiohttp ClientSession) of this backend."""
        assert self._http is not None, "Backend.start() was not awaited"
        return self._http

    # -- helpers ---------------------------------------------------------------------
    def url_for(self, path: str, query: str = "") -> URL:
        """``path`` must already be percent-encoded (ids and names are validated and
        quoted by the callers), so nothing a client sends can change the path."""
        raw = self._base_path + path + (f"?{query}" if query else "")
        return URL(self.origin + raw, encoded=True)

    async def auth_headers(self, timeout: float) -> dict[str, str]:
        """This backend's credentials, had within ``timeout`` seconds (else 503)."""
        try:
            return await self.credentials.headers(timeout)
        except CredentialError as exc:
            error = BackendUnavailable(self.name, str(exc))
            self.health.failure(error)
            raise error from None

    def map_error(self, exc: BaseException, what: str) -> BackendError:
        if isinstance(exc, asyncio.TimeoutError):
            return BackendTimeout(self.name, f"no answer to {what} in time")
        if isinstance(exc, aiohttp.ClientConnectorError):
            return BackendUnavailable(self.name, f"cannot connect to {self.url}: {exc.os_error}")
        if isinstance(exc, ConnectionRefusedError):
            return BackendUnavailable(self.name, f"cannot connect to {self.url}: {exc}")
        if isinstance(exc, aiohttp.ServerDisconnectedError):
            return BackendError(self.name, f"closed the connection during {what}")
        if isinstance(exc, aiohttp.ClientError):
            return BackendError(self.name, f"{what} failed: {type(exc).__name__}: {exc}")
        return BackendError(self.name, f"{what} failed: {exc}")

    def failed(self, exc: BaseException, what: str) -> MixerError:
        """Map ``exc``, record it in the health, and return it for raising. A mixer out
        of file descriptors is its own failure, not the backend's: a 503 saying so
        (``descriptors``), the health untouched."""
        if descriptors.out_of_descriptors(exc):
            return descriptors.DESCRIPTORS.refusal()
        error = self.map_error(exc, what)
        self.health.failure(error)
        return error

    def _headers(self, method: str, headers: Mapping[str, str] | None,
                 has_body: bool) -> CIMultiDict[str]:
        send = CIMultiDict(headers or {})
        if has_body and "Content-Type" not in send:
            send["Content-Type"] = "application/json"
        send.setdefault("Accept-Encoding", "identity")
        if method not in ("GET", "HEAD", "OPTIONS"):
            send.update({"X-XSRFToken": _XSRF, "Cookie": f"_xsrf={_XSRF}"})
        return send

    # -- requests --------------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def exchange(
        self,
        method: str,
        path: str,
        *,
        query: str = "",
        json: Any = None,
        timeout: float | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """One exchange within ``timeout`` (credentials included), the answer's body not
        read yet: the caller reads it (``read_capped``, ``iter_capped``). A 401/403 is
        retried once if fresh credentials could help (``Credentials.rejected``). Errors
        of the connection are mapped; an answer not read to its end is closed, not
        given back to the pool."""
        body = None if json is None else jsonutil.dumps(json)
        send = self._headers(method, headers, body is not None)
        what = f"{method} {path}"
        deadline = time.monotonic() + (timeout or self.config.request_timeout)

        async def attempt(auth: Mapping[str, str]) -> aiohttp.ClientResponse:
            send.update(auth)
            client_timeout = aiohttp.ClientTimeout(total=max(deadline - time.monotonic(), 0.001))
            try:
                return await self.http.request(
                    method, self.url_for(path, query), data=body, headers=send,
                    timeout=client_timeout, allow_redirects=False,
                )
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
                raise self.failed(exc, what) from None

        resp = await self.authorized(attempt, deadline, what)
        try:
            yield resp
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            resp.close()
            raise self.failed(exc, what) from None
        except BaseException:
            resp.close()
            raise
        resp.release()

    async def authorized(self, send: Callable[[Mapping[str, str]], Awaitable[AnswerT]],
                         deadline: float, what: str) -> AnswerT:
        """``send`` with this backend's credentials, by ``deadline`` (``time.monotonic``);
        the one path of every exchange the backend may refuse (REST, websocket upgrade):

        * the credentials, had within what is left of the deadline (else a 503,
          recorded in the health);
        * ``send(auth)`` makes one attempt with the headers ``auth`` added to its own
          and maps its connection errors itself (``failed``);
        * a 401/403 is tried once more if fresh credentials could help
          (``Credentials.rejected``), the refused answer closed; any other answer
          tells the credentials they were ``accepted``;
        * the health: a 503 is a failure, any other answer below 500 a success with
          its latency (a 5xx is neither: the backend is there, but broken for this
          call).

        The answer is returned unread (``what`` names the exchange in errors)."""
        for attempt in (1, 2):
            auth = await self.auth_headers(max(deadline - time.monotonic(), 0.001))
            started = time.perf_counter()
            answer = await send(auth)
            if answer.status in (401, 403):
                if attempt == 1 and self.credentials.rejected(auth):
                    answer.close()
                    continue
            else:
                self.credentials.accepted(auth)
            if answer.status == 503:
                self.health.failure(BackendUnavailable(self.name, f"{what}: HTTP 503"))
            elif answer.status < 500:
                self.health.success(time.perf_counter() - started)
            return answer
        raise AssertionError("unreachable")

    def too_large(self, what: str, size: str) -> BackendError:
        """The answer to ``what`` is over this backend's cap (``--max-backend-answer``)."""
        cap = self.config.max_answer_bytes
        return BackendError(
            self.name, f"answered {what} with {size}, over the limit of {_bytes(cap)} for "
            "an answer from a backend (--max-backend-answer)"
        )

    async def iter_capped(self, resp: aiohttp.ClientResponse, what: str) -> AsyncGenerator[bytes, None]:
        """The body of ``resp`` as it arrives; a ``BackendError`` (502, naming the backend
        and the cap) as soon as it is known to be over the cap: by its Content-Length
        before anything is read, else by counting (a chunked answer)."""
        cap = self.config.max_answer_bytes
        length = resp.content_length
        if length is not None and length > cap:
            resp.close()
            raise self.too_large(what, _bytes(length))
        total = 0
        async for chunk in resp.content.iter_any():
            total += len(chunk)
            if total > cap:
                resp.close()
                raise self.too_large(what, f"more than {_bytes(cap)}")
            yield chunk

    async def read_capped(self, resp: aiohttp.ClientResponse, what: str) -> bytes:
        """The whole body of ``resp``, at most the cap (``iter_capped``)."""
        return b"".join([chunk async for chunk in self.iter_capped(resp, what)])

    async def request(
        self,
        method: str,
        path: str,
        *,
        query: str = "",
        json: Any = None,
        timeout: float | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> BackendResponse:
        """One exchange, body read in full (at most the cap), within ``timeout``
        (credentials included); a 401/403 is retried once if fresh credentials could
        help. Errors mapped."""
        what = f"{method} {path}"
        async with self.exchange(method, path, query=query, json=json, timeout=timeout,
                                 headers=headers) as resp:
            data = await self.read_capped(resp, what)
        return BackendResponse(resp.status, resp.headers, data, self.name)

    async def call(self, method: str, path: str, *, ok: tuple[int, ...] = (200,),
                   json: Any = None, timeout: float | None = None) -> Any:
        """A JSON API call: the decoded answer for an ``ok`` status; 404 → NotFound;
        any other status → the backend's own answer as an ``UpstreamError``."""
        resp = await self.request(method, path, json=json, timeout=timeout)
        if resp.status in ok:
            return resp.json()
        if resp.status == 404:
            raise NotFound(f"backend {self.name!r} has no {path.split('?')[0]}")
        raise resp.error()

    async def open_stream(
        self, method: str, path_qs: str, headers: Mapping[str, str], data: Any, *, timeout: float
    ) -> aiohttp.ClientResponse:
        """Start a streamed request (the catch-all proxy); the caller releases it."""
        send = CIMultiDict((k, v) for k, v in headers.items() if k.lower() not in HOP_BY_HOP)
        send.update(await self.auth_headers(timeout))
        limit = aiohttp.ClientTimeout(total=None, sock_connect=timeout, sock_read=timeout)
        try:
            return await self.http.request(
                method, URL(self.origin + self._base_path + path_qs, encoded=True),
                data=data, headers=send, timeout=limit, allow_redirects=False,
            )
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            raise self.failed(exc, f"{method} {path_qs.split('?')[0]}") from None

    async def _probe(self) -> None:
        """Is it answering, with a kernelspecs list? (A backend that answers garbage or
        5xx is not "up".) Failures are the caller's to record."""
        started = time.perf_counter()
        limit = aiohttp.ClientTimeout(total=self.config.list_timeout)
        try:
            auth = await self.credentials.headers(self.config.list_timeout)
            async with self.http.get(self.url_for("/api/kernelspecs"), timeout=limit,
                                     headers=auth, allow_redirects=False) as resp:
                body = await self.read_capped(resp, "the health probe")
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            raise self.map_error(exc, "the health probe") from None
        except CredentialError as exc:
            raise BackendUnavailable(self.name, str(exc)) from None
        if resp.status not in (401, 403):
            self.credentials.accepted(auth)
        if resp.status >= 500:
            raise BackendError(self.name, f"answered the health probe with HTTP {resp.status}")
        if resp.status == 200:
            answer = BackendResponse(resp.status, resp.headers, body, self.name).json()
            if not isinstance(answer, dict) or "kernelspecs" not in answer:
                raise BackendError(self.name, "answered the health probe without kernelspecs")
        self.health.success(time.perf_counter() - started)

    def state(self) -> dict[str, object]:
        return {
            "name": self.name,
            "display_suffix": self.suffix,
            "url": str(self.url),
            **self.health.state(),
            "credentials": self.credentials.state(),
        }
