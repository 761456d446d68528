"""The test harness itself: the stand-ins must behave like what they stand in for.

If the bearer-only remote admitted Jupyter's own token forms, or the stand-in
gcloud printed something else than the remote accepts, the credential tests of
the mixer would prove nothing. These tests need no mixer.
"""

from __future__ import annotations

import json
import subprocess

import aiohttp
import pytest

from .support.api import ApiClient
from .support.fake_gcloud import FakeGcloud
from .support.kernel_client import V1_PROTOCOL, KernelConnection, execute
from .support.topology import JupyterServer

pytestmark = pytest.mark.e2e

WHERE = "import os; print(os.environ['MIXER_TEST_WHERE'])"


async def test_remote_accepts_only_the_current_bearer_token(
    http: aiohttp.ClientSession, remote_server: JupyterServer, gcloud: FakeGcloud
) -> None:
    url = remote_server.url + "/api/kernelspecs"
    token = gcloud.token
    refused = {
        "no credentials": {},
        "jupyter token header": {"Authorization": f"token {token}"},
        "token header": {"token": token},
        "wrong bearer": {"Authorization": "Bearer ya29.wrong"},
    }
    for what, headers in refused.items():
        async with http.get(url, headers=headers) as resp:
            assert resp.status in (401, 403), f"{what}: {resp.status}"
    async with http.get(url, params={"token": token}) as resp:
        assert resp.status in (401, 403), f"?token=: {resp.status}"
    async with http.get(url, headers={"Authorization": f"Bearer {token}"}) as resp:
        assert resp.status == 200
        assert "python3" in (await resp.json())["kernelspecs"]


async def test_rotation_retires_the_old_bearer_token(
    http: aiohttp.ClientSession, remote_server: JupyterServer, gcloud: FakeGcloud
) -> None:
    url = remote_server.url + "/api/status"
    old = gcloud.token
    new = gcloud.rotate()
    assert new != old
    async with http.get(url, headers={"Authorization": f"Bearer {old}"}) as resp:
        assert resp.status in (401, 403)
    async with http.get(url, headers={"Authorization": f"Bearer {new}"}) as resp:
        assert resp.status == 200


def test_fake_gcloud_prints_the_remote_token_and_can_fail(gcloud: FakeGcloud) -> None:
    before = gcloud.run_count()
    out = subprocess.run(
        [str(gcloud.script), "config", "config-helper", "--format=json"],
        capture_output=True, text=True, timeout=30, check=True,
    )  # fmt: skip
    cred = json.loads(out.stdout)["credential"]
    assert cred["access_token"] == gcloud.token == gcloud.token_file.read_text().strip()
    assert cred["token_expiry"].endswith("Z")
    gcloud.fail()
    try:
        out = subprocess.run(
            [str(gcloud.script), "config", "config-helper", "--format=json"],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert out.returncode == 1
        assert "ERROR" in out.stderr
        assert out.stdout == ""
    finally:
        gcloud.succeed()
    assert gcloud.run_count() == before + 2
    assert gcloud.runs()[-1]["argv"] == ["config", "config-helper", "--format=json"]


@pytest.mark.parametrize("protocol", ["legacy", "v1"])
async def test_kernels_tell_where_they_run(
    http: aiohttp.ClientSession,
    local_api: ApiClient,
    remote_api: ApiClient,
    janitor,
    protocol: str,
) -> None:
    for api, where in ((local_api, "local"), (remote_api, "remote")):
        kernel = await api.start_kernel("python3")
        janitor.track(kernel["id"])
        ws_url = api.ws_url(f"/api/kernels/{kernel['id']}/channels")
        conn = await KernelConnection.open(http, ws_url, headers=api.auth(), protocol=protocol)
        async with conn:
            if protocol == "v1":
                assert conn.negotiated == V1_PROTOCOL
            else:
                assert conn.negotiated is None
            result = await conn.execute(WHERE)
        assert result.status == "ok", result
        assert result.stdout.strip() == where


async def test_remote_websocket_needs_the_bearer_token(
    http: aiohttp.ClientSession, remote_api: ApiClient, janitor
) -> None:
    kernel = await remote_api.start_kernel("python3")
    janitor.track(kernel["id"])
    ws_url = remote_api.ws_url(f"/api/kernels/{kernel['id']}/channels")
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        await execute(http, ws_url, "1", headers={"Authorization": "token nope"}, timeout=20)
    assert info.value.status in (401, 403)
    result = await execute(http, ws_url, WHERE, headers=remote_api.auth())
    assert result.stdout.strip() == "remote"
