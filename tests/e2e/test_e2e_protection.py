"""Acceptance 3 against the real topology: protection and bad input. Each bad request
gets a clear 4xx, starts nothing on any backend, and the mixer keeps serving."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from yarl import URL

from .helpers import where
from .support import topology
from .support.api import ApiClient
from .support.topology import JupyterServer, Mixer

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
async def test_token_authenticated_unsafe_methods_need_no_xsrf(
    http: aiohttp.ClientSession, mixer_api: ApiClient, local_api: ApiClient, janitor, xsrf: str | None,
) -> None:
    """SPEC §6 / issue 13: the token authenticates; an XSRF pair is not asked for (editors'
    clients send none). Without a configured token it is: see ``test_open_mixer_*``."""
    extra = {"Cookie": "_xsrf=a", "X-XSRFToken": "b"} if xsrf else {}
    no_xsrf = ApiClient(http, mixer_api.base_url, auth=mixer_api.auth, xsrf=None)
    resp = await no_xsrf.request("POST", "/api/kernels", json_body={"name": "local-python3"},
                                 headers=extra)
    assert resp.status == 201, resp.describe()
    kernel_id = janitor.track(resp.json()["id"])
    assert kernel_id in await local_api.kernel_ids()
    resp = await no_xsrf.request("DELETE", f"/api/kernels/{kernel_id}", headers=extra)
    assert resp.status == 204, resp.describe()


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
        # jupyter_server would start the kernel, then answer 500 ("not a valid path")
        ("POST", "/api/sessions", b'{"path": "a\\u0000.ipynb", "kernel": {"name": "remote-python3"}}',
         400, "NUL character"),
        ("POST", "/api/sessions", b'{"path": "a\\u0000.ipynb", "kernel": {"name": "local-python3"}}',
         400, "NUL character"),
        ("POST", "/api/kernels", b'{"name": "remote-python3", "path": "a\\u0000"}', 400, "NUL character"),
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


# -- DNS rebinding: the Host check (issue 11 item 2) --------------------------------------------


def evil(port: int) -> dict[str, str]:
    """What a page at http://evil.example:PORT/ re-pointed at 127.0.0.1 sends."""
    return {"Host": f"evil.example:{port}", "Origin": f"http://evil.example:{port}"}


async def refused_as_rebinding(
    http: aiohttp.ClientSession, base_url: str, port: int, kernel_id: str, auth: dict[str, str],
) -> None:
    """Every request and the kernel websocket from ``evil.example`` get a 403."""
    xsrf = {"Cookie": "_xsrf=x", "X-XSRFToken": "x"}  # the page can set its own cookie
    api = ApiClient(http, base_url, auth=lambda: {**auth, **evil(port), **xsrf}, name="evil")
    for method, path, body in (
        ("GET", "/api/kernelspecs", None),
        ("GET", f"/api/kernels/{kernel_id}", None),
        ("POST", "/api/kernels", {"name": "local-python3"}),
        ("POST", f"/api/kernels/{kernel_id}/restart", {}),
        ("GET", "/lab", None),
    ):
        resp = await api.request(method, path, json_body=body)
        assert resp.status == 403, resp.describe()
        assert "Host" in resp.json()["message"]
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        await http.ws_connect(api.ws_url(f"/api/kernels/{kernel_id}/channels"),
                              headers={**auth, **evil(port)})
    assert info.value.status == 403


async def test_foreign_host_is_refused_even_with_the_token(
    http: aiohttp.ClientSession, mixer_api: ApiClient, mixer_proc, local_api: ApiClient, janitor,
) -> None:
    kernel = await mixer_api.start_kernel("local-python3")
    janitor.track(kernel["id"])
    before = await local_api.kernel_ids()
    await refused_as_rebinding(http, mixer_api.base_url, mixer_proc.port, kernel["id"],
                               mixer_api.auth())
    # the token in the query, as browsers send it on websockets
    url = mixer_api.ws_url(f"/api/kernels/{kernel['id']}/channels?token={mixer_proc.token}")
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        await http.ws_connect(url, headers=evil(mixer_proc.port))
    assert info.value.status == 403
    assert await local_api.kernel_ids() == before


@pytest.mark.parametrize("host", ["[::1]", "127.0.0.1", "localhost"])
async def test_loopback_hosts_reach_kernels(
    http: aiohttp.ClientSession, mixer_api: ApiClient, mixer_proc, janitor, host: str,
) -> None:
    api = ApiClient(http, f"http://{host}:{mixer_proc.port}", auth=mixer_api.auth, name=host)
    kernel = await api.start_kernel("local-python3")
    janitor.track(kernel["id"])
    assert await where(http, api, kernel["id"]) == "local"
    assert (await api.delete_kernel(kernel["id"])).status == 204


@pytest.fixture(scope="module")
def open_stack(e2e_dir: Path) -> Iterator[tuple[JupyterServer, Mixer]]:
    """A mixer without a token (allowed, and warned about) in front of a local
    jupyter_server without one: the case DNS rebinding was a real threat for."""
    local = topology.jupyter_server("open-local", e2e_dir, where="local", token="-")
    # topology prepares servers with auth; this one has none (an empty token)
    argv = local.process.argv
    argv[argv.index("--IdentityProvider.token=-")] = "--IdentityProvider.token="
    local.auth_headers = {}
    mixer = topology.mixer(e2e_dir, local=local, remote=None, token="", gcloud=None,
                           name="open-mixer", extra_args=["--log-all-request-responses"])
    try:
        local.start()
        mixer.start()
        yield local, mixer
    finally:
        mixer.stop()
        local.stop()


async def test_open_mixer_refuses_rebinding_and_wants_xsrf(
    http: aiohttp.ClientSession, open_stack: tuple[JupyterServer, Mixer],
) -> None:
    local, mixer = open_stack
    assert "no token configured" in mixer.log_text()
    direct = ApiClient(http, local.url, xsrf="x", name="open-local")
    api = ApiClient(http, mixer.url, xsrf=None, name="open-mixer")
    resp = await api.post("/api/kernels", {"name": "local-python3"})
    assert resp.status == 403 and "_xsrf" in resp.json()["message"], resp.describe()
    api.xsrf = "pair"
    kernel = await api.start_kernel("local-python3")
    try:
        assert await where(http, api, kernel["id"]) == "local"
        before = await direct.kernel_ids()
        await refused_as_rebinding(http, mixer.url, mixer.port, kernel["id"], {})
        assert await direct.kernel_ids() == before
    finally:
        await direct.delete_kernel(kernel["id"])
    log = mixer.log_text()
    # issue 11 item 6: the refused requests reach the access log
    assert f"GET /api/kernels/{kernel['id']}/channels -> 403" in log
    assert "POST /api/kernels -> 403" in log
