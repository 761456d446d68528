"""Acceptance 3 against the real topology: protection and bad input. Each bad request
gets a clear 4xx, starts nothing on any backend, and the mixer keeps serving."""

from __future__ import annotations

import aiohttp
import pytest
from yarl import URL

from .support.api import ApiClient

pytestmark = pytest.mark.e2e


async def backend_kernels(local_api: ApiClient, remote_api: ApiClient) -> set[str]:
    return await local_api.kernel_ids() | await remote_api.kernel_ids()


async def still_serving(mixer_api: ApiClient) -> None:
    assert "local-python3" in (await mixer_api.kernelspecs())["kernelspecs"]


@pytest.mark.parametrize(
    "auth",
    [{}, {"token": "wrong"}, {"Authorization": "token wrong"}, {"Authorization": "token "}],
    ids=["none", "wrong-header", "wrong-authorization", "empty-authorization"],
)
async def test_missing_or_wrong_token_is_403_and_nothing_starts(
    http: aiohttp.ClientSession, mixer_api: ApiClient, local_api: ApiClient,
    remote_api: ApiClient, auth: dict[str, str],
) -> None:
    before = await backend_kernels(local_api, remote_api)
    stranger = ApiClient(http, mixer_api.base_url, auth=lambda: auth, xsrf="X", name="stranger")
    for method, path, body in (
        ("GET", "/api/kernels", None),
        ("GET", "/api/kernelspecs", None),
        ("POST", "/api/kernels", {"name": "remote-python3"}),
        ("POST", "/api/sessions", {"path": "x.ipynb", "kernel": {"name": "local-python3"}}),
        ("GET", "/lab", None),
    ):
        resp = await stranger.request(method, path, json_body=body)
        assert resp.status == 403, resp.describe()
        assert "token" in resp.json()["message"]
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        await http.ws_connect(stranger.ws_url("/api/kernels/x/channels"), headers=auth)
    assert info.value.status == 403
    assert await backend_kernels(local_api, remote_api) == before
    await still_serving(mixer_api)


@pytest.mark.parametrize("xsrf", [None, "mismatch"])
async def test_unsafe_methods_without_matching_xsrf_are_403(
    http: aiohttp.ClientSession, mixer_api: ApiClient, local_api: ApiClient,
    remote_api: ApiClient, xsrf: str | None,
) -> None:
    before = await backend_kernels(local_api, remote_api)
    extra = {"Cookie": "_xsrf=a", "X-XSRFToken": "b"} if xsrf else {}
    no_xsrf = ApiClient(http, mixer_api.base_url, auth=mixer_api.auth, xsrf=None)
    for method, path, body in (
        ("POST", "/api/kernels", {"name": "local-python3"}),
        ("PATCH", "/api/sessions/5f62c0c4-d4ba-4dfb-8cd1-33eafb7f6938", {"path": "y"}),
        ("DELETE", "/api/kernels/5f62c0c4-d4ba-4dfb-8cd1-33eafb7f6938", None),
    ):
        resp = await no_xsrf.request(method, path, json_body=body, headers=extra)
        assert resp.status == 403, resp.describe()
        assert "_xsrf" in resp.json()["message"]
    assert await backend_kernels(local_api, remote_api) == before
    await still_serving(mixer_api)


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "message"),
    [
        ("POST", "/api/kernels", b"{not json", 400, "not valid JSON"),
        ("POST", "/api/kernels", b'{"name": ["python3"]}', 400, "'name' must be a string"),
        ("POST", "/api/kernels", b'{"name": "remote-python3", "env": "x"}', 400, "'env' must be an object"),
        ("POST", "/api/kernels", b'{"name": "elsewhere-python3"}', 400, "unknown kernelspec"),
        ("POST", "/api/kernels", b'{"name": "python3"}', 400, "unknown kernelspec"),
        ("POST", "/api/sessions", b'{"path": 1, "kernel": {"name": "local-python3"}}', 400,
         "'path' must be a string"),
        ("POST", "/api/sessions", b'{"path": "a", "kernel": {"name": "nope-python3"}}', 400,
         "unknown kernelspec"),
        ("GET", "/api/kernelspecs/python3", None, 400, "unknown kernelspec"),
        ("GET", "/api/kernels/0b5e6c1e-0000-4000-8000-000000000000", None, 404, "not found"),
        ("DELETE", "/api/kernels/0b5e6c1e-0000-4000-8000-000000000000", None, 404, "not found"),
        ("GET", "/api/sessions/0b5e6c1e-0000-4000-8000-000000000000", None, 404, "not found"),
        ("PATCH", "/api/sessions/0b5e6c1e-0000-4000-8000-000000000000", b"{}", 404, "not found"),
        ("POST", "/api/kernels", b'{"name": "' + b"x" * (2 * 1024 * 1024) + b'"}', 413, "larger than"),
    ],
)
async def test_bad_input_gets_a_clear_4xx(
    mixer_api: ApiClient, local_api: ApiClient, remote_api: ApiClient,
    method: str, path: str, body: bytes | None, status: int, message: str,
) -> None:
    before = await backend_kernels(local_api, remote_api)
    resp = await mixer_api.request(method, path, data=body,
                                   headers={"Content-Type": "application/json"})
    assert resp.status == status, resp.describe()
    assert message in resp.json()["message"]
    assert await backend_kernels(local_api, remote_api) == before
    await still_serving(mixer_api)


@pytest.mark.parametrize(
    "raw_path",
    [
        "/kernelspecs/local-python3/../kernel.json",
        "/kernelspecs/local-python3/..%2Fkernel.json",
        "/kernelspecs/local-python3/..%2F..%2F..%2F..%2Fetc%2Fpasswd",
        "/kernelspecs/local-python3/%2e%2e/%2e%2e/kernel.json",
        "/kernelspecs/remote-..%2Fpython3/logo-64x64.png",
        "/kernelspecs/local-python3/logo-64x64.png%00.json",
    ],
)
async def test_path_traversal_under_kernelspecs_reads_nothing(
    http: aiohttp.ClientSession, mixer_api: ApiClient, raw_path: str
) -> None:
    url = URL(mixer_api.base_url + raw_path, encoded=True)
    async with http.get(url, headers=mixer_api.headers()) as resp:
        body = await resp.read()
    assert resp.status in (400, 404), (resp.status, body[:200])
    assert b"argv" not in body and b"root:" not in body  # no kernel.json, no /etc/passwd
    await still_serving(mixer_api)
