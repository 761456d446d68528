"""Acceptance 5: remote credentials from gcloud, rotation, failure, and no token in logs;
issue 11: account switches picked up, no gcloud left behind at shutdown."""

from __future__ import annotations

import asyncio
import re
import signal
import time
import uuid
from collections.abc import Iterator

import aiohttp
import pytest

from notebook_kernels_mixer.processes import is_alive

from .helpers import WHERE, channels_path, error_message, spec_names, where
from .support import topology
from .support.api import ApiClient, wait_until
from .support.fake_gcloud import FakeGcloud
from .support.kernel_client import KernelConnection, execute
from .support.stack import Tokens
from .support.topology import JupyterServer, Mixer

pytestmark = pytest.mark.e2e


async def _remote_is_usable(mixer_api: ApiClient) -> bool:
    resp = await mixer_api.get("/api/kernelspecs/remote-python3")
    return resp.status == 200


async def _refused(http: aiohttp.ClientSession, remote: JupyterServer, token: str) -> bool:
    async with http.get(remote.url + "/api/status", headers={"Authorization": f"Bearer {token}"}) as resp:
        return resp.status in (401, 403)


async def test_remote_requests_carry_the_gcloud_token(mixer_api: ApiClient, gcloud: FakeGcloud) -> None:
    resp = await mixer_api.get("/api/kernelspecs/remote-python3")
    assert resp.status == 200, resp.describe()
    assert resp.headers.get("X-Mixer-Backend") == "remote"
    runs = gcloud.runs()
    assert runs, "the mixer never ran the gcloud on its PATH"
    assert runs[-1]["argv"][:2] == ["config", "config-helper"]
    assert "--format=json" in runs[-1]["argv"]


async def test_token_is_cached_not_fetched_per_request(
    http: aiohttp.ClientSession, mixer_api: ApiClient, janitor, gcloud: FakeGcloud
) -> None:
    await wait_until(lambda: _remote_is_usable(mixer_api), timeout=30, what="remote usable")
    before = gcloud.run_count()
    kernel_id = janitor.track((await mixer_api.start_kernel("remote-python3"))["id"])
    for _ in range(5):
        resp = await mixer_api.get(f"/api/kernels/{kernel_id}")
        assert resp.status == 200, resp.describe()
        resp = await mixer_api.get("/api/kernelspecs/remote-python3")
        assert resp.status == 200, resp.describe()
    assert await where(http, mixer_api, kernel_id) == "remote"
    runs = gcloud.run_count() - before
    assert runs <= 1, f"gcloud ran {runs} times for 12 remote requests (token lifetime 600s)"


async def test_token_expiry_is_honoured(
    mixer_api: ApiClient, remote_server: JupyterServer, gcloud: FakeGcloud
) -> None:
    await wait_until(lambda: _remote_is_usable(mixer_api), timeout=30, what="remote usable")
    gcloud.set_expiry(3)
    try:
        gcloud.rotate()  # makes the mixer fetch a token that expires in 3 s
        resp = await mixer_api.get("/api/kernelspecs/remote-python3")
        assert resp.status == 200, resp.describe()
        fetched = gcloud.run_count()
        await asyncio.sleep(3.5)
        # the token still works on the remote: only its expiry can make the mixer refresh
        resp = await mixer_api.get("/api/kernelspecs/remote-python3")
        assert resp.status == 200, resp.describe()
        assert gcloud.run_count() > fetched, "an expired token was used without a refresh"
    finally:
        gcloud.set_expiry(600)


async def test_token_rotation_is_transparent(
    http: aiohttp.ClientSession,
    mixer_api: ApiClient,
    remote_server: JupyterServer,
    gcloud: FakeGcloud,
    janitor,
) -> None:
    await wait_until(lambda: _remote_is_usable(mixer_api), timeout=30, what="remote usable")
    old = gcloud.token
    before = gcloud.run_count()
    gcloud.rotate()
    assert await _refused(http, remote_server, old), "the remote still accepts the old token"

    resp = await mixer_api.get("/api/kernelspecs/remote-python3")
    assert resp.status == 200, resp.describe()
    kernel = await mixer_api.start_kernel("remote-python3")
    kernel_id = janitor.track(kernel["id"])
    assert await where(http, mixer_api, kernel_id) == "remote"
    assert "remote-python3" in spec_names(await mixer_api.kernelspecs())
    assert gcloud.run_count() > before, "the new token did not come from gcloud"
    resp = await mixer_api.delete_kernel(kernel_id)
    assert resp.status == 204, resp.describe()


async def test_token_rotation_before_a_websocket_connects(
    http: aiohttp.ClientSession,
    mixer_api: ApiClient,
    remote_server: JupyterServer,
    gcloud: FakeGcloud,
    janitor,
) -> None:
    kernel_id = janitor.track((await mixer_api.start_kernel("remote-python3"))["id"])
    assert await where(http, mixer_api, kernel_id) == "remote"
    old = gcloud.token
    gcloud.rotate()
    assert await _refused(http, remote_server, old)
    # the first thing the mixer sends with the stale token is the websocket upgrade
    result = await execute(http, mixer_api.ws_url(channels_path(kernel_id)), WHERE, headers=mixer_api.auth())
    assert result.status == "ok" and result.stdout.strip() == "remote", result


async def test_gcloud_failure_is_a_clear_error_and_local_is_unaffected(
    http: aiohttp.ClientSession,
    mixer_api: ApiClient,
    gcloud: FakeGcloud,
    janitor,
    topology_guard,
) -> None:
    await wait_until(lambda: _remote_is_usable(mixer_api), timeout=30, what="remote usable")
    local_kernel = janitor.track((await mixer_api.start_kernel("local-python3"))["id"])
    gcloud.fail()
    gcloud.rotate()  # the token the mixer holds is no longer accepted

    resp = await mixer_api.post("/api/kernels", {"name": "remote-python3"})
    assert 500 <= resp.status < 600, resp.describe()
    message = error_message(resp).lower()
    assert "remote" in message, resp.describe()
    assert re.search(r"gcloud|credential|token|auth", message), resp.describe()
    resp = await mixer_api.get("/api/kernelspecs/remote-python3")
    assert 500 <= resp.status < 600, resp.describe()
    error_message(resp)

    # local is unaffected
    specs = await mixer_api.kernelspecs()
    assert "local-python3" in spec_names(specs)
    assert local_kernel in await mixer_api.kernel_ids()
    assert await where(http, mixer_api, local_kernel) == "local"
    other = janitor.track((await mixer_api.start_kernel("local-python3"))["id"])
    assert await where(http, mixer_api, other) == "local"

    # gcloud works again: so does the remote (the mixer may back off between retries)
    gcloud.succeed()
    await wait_until(lambda: _remote_is_usable(mixer_api), timeout=60, interval=1, what="remote usable again")
    again = janitor.track((await mixer_api.start_kernel("remote-python3"))["id"])
    assert await where(http, mixer_api, again) == "remote"


async def test_no_token_in_logs_with_all_log_flags(
    http: aiohttp.ClientSession,
    e2e_dir,
    local_server: JupyterServer,
    remote_server: JupyterServer,
    gcloud: FakeGcloud,
    tokens: Tokens,
    mixer_proc: Mixer,
    janitor,
) -> None:
    noisy = topology.mixer(
        e2e_dir,
        name=f"mixer-logall-{uuid.uuid4().hex[:6]}",
        local=local_server,
        remote=remote_server,
        token=tokens.jupyter,
        gcloud=gcloud,
        extra_args=[
            "--log-all-request-headers",
            "--log-all-request-responses",
            "--log-all-response-bodies",
        ],
    )
    noisy.start()
    try:
        await _exercise(http, noisy, tokens, gcloud, remote_server, janitor)
    finally:
        noisy.stop()

    log = noisy.log_text()
    assert "/api/kernels" in log, "the --log-all-* flags logged no requests"
    assert "cookie" in log.lower(), "request headers were not logged"
    secrets = {"mixer token": tokens.jupyter, "xsrf cookie value": tokens.xsrf}
    secrets.update({f"bearer token #{i}": t for i, t in enumerate(gcloud.tokens)})
    leaked = [what for what, secret in secrets.items() if secret in log]
    assert not leaked, f"{leaked} found in {noisy.process.log_path}"
    # nor in the log of the shared mixer, whatever the suite made it do so far
    shared = mixer_proc.log_text()
    leaked = [what for what, secret in secrets.items() if secret in shared]
    assert not leaked, f"{leaked} found in {mixer_proc.process.log_path}"


async def _exercise(
    http: aiohttp.ClientSession,
    mixer: Mixer,
    tokens: Tokens,
    gcloud: FakeGcloud,
    remote: JupyterServer,
    janitor,
) -> None:
    """Every way a token travels through the mixer, once."""
    # GatewayClient's headers: token header, empty Authorization, xsrf cookie + header
    front_like = ApiClient(
        http,
        mixer.url,
        auth=lambda: {"token": tokens.jupyter, "Authorization": "token "},
        xsrf=tokens.xsrf,
        name="mixer (front-like)",
    )
    # an editor: Authorization: token …
    editor = ApiClient(
        http,
        mixer.url_v4,
        auth=lambda: {"Authorization": f"token {tokens.jupyter}"},
        xsrf=tokens.xsrf,
        name="mixer (editor)",
    )
    assert {"local-python3", "remote-python3"} <= spec_names(await front_like.kernelspecs())
    resp = await editor.get("/api/kernelspecs", params={"token": tokens.jupyter})
    assert resp.status == 200, resp.describe()
    for backend in ("local", "remote"):
        kernel = await front_like.start_kernel(f"{backend}-python3", env={"KERNEL_X": "1"})
        kernel_id = janitor.track(kernel["id"])
        # a browser-style websocket: ?token= in the query, no headers
        conn = await KernelConnection.open(
            http, mixer.url.replace("http", "ws") + channels_path(kernel_id),
            query={"token": tokens.jupyter}, timeout=60,
        )  # fmt: skip
        async with conn:
            result = await conn.execute(WHERE)
        assert result.stdout.strip() == backend, result
        session = await editor.ok_json(
            "POST",
            "/api/sessions",
            {"path": f"log-{backend}.ipynb", "type": "notebook", "name": "",
             "kernel": {"id": kernel_id}},
            expect=(201,),
        )  # fmt: skip
        resp = await editor.post(f"/api/kernels/{kernel_id}/interrupt", {})
        assert resp.status == 204, resp.describe()
        if backend == "remote":
            old = gcloud.token
            gcloud.rotate()  # a refresh, so that a second bearer token passes through
            assert await _refused(http, remote, old)
        resp = await editor.delete(f"/api/sessions/{session['id']}")
        assert resp.status == 204, resp.describe()
    resp = await editor.get("/lab/api/settings")
    assert resp.status < 500, resp.describe()
    # wrong tokens get refused (and are not secrets of ours, so not checked for)
    resp = await editor.get("/api/kernels", headers={"Authorization": "token wrong"})
    assert resp.status == 403, resp.describe()


# -- issue 11 items 4 and 5: a mixer that watches the stand-in's gcloud configuration ----------


@pytest.fixture
def watching_mixer(
    e2e_dir, local_server: JupyterServer, remote_server: JupyterServer, tokens: Tokens, gcloud: FakeGcloud
) -> Iterator[Mixer]:
    """A mixer of its own, with ``CLOUDSDK_CONFIG`` at the stand-in's configuration."""
    m = topology.mixer(
        e2e_dir, name=f"mixer-gcloudcfg-{uuid.uuid4().hex[:6]}", local=local_server,
        remote=remote_server, token=tokens.jupyter, gcloud=gcloud,
    )  # fmt: skip
    m.process.env.update(gcloud.env())
    m.start()
    try:
        yield m
    finally:
        gcloud.hang(0)
        m.stop()


def _refusals(remote: JupyterServer) -> int:
    """Requests the remote refused for a stale or wrong bearer token, so far."""
    return remote.process.log_text().count("stale or wrong bearer token")


async def test_account_switch_is_picked_up_by_the_next_request(
    http: aiohttp.ClientSession,
    watching_mixer: Mixer,
    remote_server: JupyterServer,
    gcloud: FakeGcloud,
    tokens: Tokens,
) -> None:
    api = ApiClient(http, watching_mixer.url, auth=watching_mixer.auth, xsrf=tokens.xsrf, name="mixer")
    await wait_until(lambda: _remote_is_usable(api), timeout=30, what="remote usable")
    runs = gcloud.run_count()
    for _ in range(10):  # no switch: no gcloud run
        assert await _remote_is_usable(api)
    assert gcloud.run_count() == runs
    refused = _refusals(remote_server)

    gcloud.switch_account("switched@example.com")  # the remote now takes only its token
    await asyncio.sleep(1.2)  # the mixer looks at the configuration once a second at most
    resp = await api.get("/api/kernelspecs/remote-python3")
    assert resp.status == 200, resp.describe()
    # the first request after the switch carried the new identity's token: the remote
    # refused nothing (a refresh after a refusal would also end in a 200)
    assert _refusals(remote_server) == refused, "the old identity's token was sent after the switch"
    assert gcloud.run_count() == runs + 1 and gcloud.account == "switched@example.com"
    for _ in range(10):
        assert await _remote_is_usable(api)
    assert gcloud.run_count() == runs + 1


async def test_no_gcloud_outlives_the_mixer(
    http: aiohttp.ClientSession, watching_mixer: Mixer, gcloud: FakeGcloud, tokens: Tokens
) -> None:
    api = ApiClient(http, watching_mixer.url, auth=watching_mixer.auth, xsrf=tokens.xsrf, name="mixer")
    await wait_until(lambda: _remote_is_usable(api), timeout=30, what="remote usable")
    runs = gcloud.run_count()
    gcloud.hang(120)
    gcloud.switch_account("hanging@example.com")  # the next request needs a new token
    await asyncio.sleep(1.2)
    pending = asyncio.ensure_future(api.get("/api/kernelspecs/remote-python3"))
    try:
        await wait_until(lambda: _ran(gcloud, runs + 1), timeout=10, what="gcloud started")
        pid = gcloud.runs()[-1]["pid"]
        assert is_alive(pid)
        # SIGTERM to the mixer alone (not its process group, not the harness's reaping):
        # its own shutdown must stop the gcloud it started.
        proc = watching_mixer.process.proc
        assert proc is not None
        proc.send_signal(signal.SIGTERM)
        await asyncio.to_thread(proc.wait, 30)
        assert await _gone(pid, within=5), f"gcloud (pid {pid}) outlived the mixer"
    finally:
        pending.cancel()
        await asyncio.gather(pending, return_exceptions=True)


async def _ran(gcloud: FakeGcloud, count: int) -> bool:
    return gcloud.run_count() >= count


async def _gone(pid: int, *, within: float) -> bool:
    deadline = time.monotonic() + within
    while is_alive(pid):
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True
