"""A small aiohttp client for the Jupyter REST API of the mixer, the front and the backends."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import aiohttp

DEFAULT_TIMEOUT = aiohttp.ClientTimeout(total=90, sock_connect=10)


@dataclass
class Response:
    method: str
    url: str
    status: int
    headers: Mapping[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body.decode("utf-8"))

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")

    def describe(self) -> str:
        text = self.text
        if len(text) > 2000:
            text = text[:2000] + "…"
        return f"{self.method} {self.url} -> {self.status}: {text}"


@dataclass
class ApiClient:
    """Talks to one Jupyter-API server.

    ``auth`` returns the authentication headers for each request (so a rotating
    bearer token is read when the request is made). ``xsrf`` is sent as the
    ``_xsrf`` cookie and the ``X-XSRFToken`` header on non-GET requests.
    """

    session: aiohttp.ClientSession
    base_url: str  # without a trailing slash
    auth: Callable[[], Mapping[str, str]] = field(default=lambda: {})
    xsrf: str | None = None
    name: str = "server"

    def url(self, path: str) -> str:
        return self.base_url + (path if path.startswith("/") else "/" + path)

    def ws_url(self, path: str) -> str:
        return self.url(path).replace("http://", "ws://", 1).replace("https://", "wss://", 1)

    def headers(self, method: str = "GET", extra: Mapping[str, str] | None = None) -> dict:
        h = dict(self.auth())
        if method not in ("GET", "HEAD", "OPTIONS") and self.xsrf is not None:
            h["Cookie"] = f"_xsrf={self.xsrf}"
            h["X-XSRFToken"] = self.xsrf
        if extra:
            h.update(extra)
        return h

    async def request(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        data: bytes | str | None = None,
        headers: Mapping[str, str] | None = None,
        params: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> Response:
        url = self.url(path)
        kwargs: dict[str, Any] = {"headers": self.headers(method, headers), "params": params}
        if json_body is not None:
            kwargs["data"] = json.dumps(json_body)
            kwargs["headers"].setdefault("Content-Type", "application/json")
        elif data is not None:
            kwargs["data"] = data
        if timeout is not None:
            kwargs["timeout"] = aiohttp.ClientTimeout(total=timeout)
        async with self.session.request(method, url, allow_redirects=False, **kwargs) as resp:
            body = await resp.read()
            return Response(method, str(resp.url), resp.status, resp.headers, body)

    async def get(self, path: str, **kw: Any) -> Response:
        return await self.request("GET", path, **kw)

    async def post(self, path: str, body: Any = None, **kw: Any) -> Response:
        return await self.request("POST", path, json_body=body, **kw)

    async def patch(self, path: str, body: Any = None, **kw: Any) -> Response:
        return await self.request("PATCH", path, json_body=body, **kw)

    async def delete(self, path: str, **kw: Any) -> Response:
        return await self.request("DELETE", path, **kw)

    # -- Jupyter API shortcuts ---------------------------------------------------------------

    async def ok_json(self, method: str, path: str, body: Any = None, expect=(200,), **kw) -> Any:
        resp = await self.request(method, path, json_body=body, **kw)
        assert resp.status in expect, f"{self.name}: {resp.describe()}"
        return resp.json() if resp.body else None

    async def kernelspecs(self) -> dict:
        return await self.ok_json("GET", "/api/kernelspecs")

    async def kernels(self) -> list[dict]:
        return await self.ok_json("GET", "/api/kernels")

    async def kernel_ids(self) -> set[str]:
        return {k["id"] for k in await self.kernels()}

    async def sessions(self) -> list[dict]:
        return await self.ok_json("GET", "/api/sessions")

    async def start_kernel(self, name: str, **extra: Any) -> dict:
        return await self.ok_json("POST", "/api/kernels", {"name": name, **extra}, expect=(201,))

    async def delete_kernel(self, kernel_id: str) -> Response:
        return await self.delete(f"/api/kernels/{quote(kernel_id)}")


async def wait_until(
    probe: Callable[[], Awaitable[Any]],
    *,
    timeout: float,
    interval: float = 0.25,
    what: str = "condition",
) -> Any:
    """Await ``probe()`` until it returns something truthy; fail after ``timeout`` seconds.

    Exceptions from the probe count as "not yet"; the last one is reported.
    """
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = await probe()
            if last:
                return last
        except (AssertionError, aiohttp.ClientError, asyncio.TimeoutError, OSError) as e:
            last = e
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout:.0f}s; last result: {last!r}")
        await asyncio.sleep(interval)
