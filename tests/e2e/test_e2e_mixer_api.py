"""Acceptance 2: the mixer used directly as a Jupyter server, as an editor would."""

from __future__ import annotations

import datetime

import aiohttp
import pytest

from .helpers import PNG_MAGIC, WHERE, channels_path, wait_kernel_gone, where
from .support.api import ApiClient
from .support.kernel_client import V1_PROTOCOL, KernelConnection

pytestmark = pytest.mark.e2e

BACKENDS = ["local", "remote"]


def _own(backend: str, local_api: ApiClient, remote_api: ApiClient) -> ApiClient:
    return local_api if backend == "local" else remote_api


async def test_kernelspecs_are_merged_with_prefixes_and_suffixes(
    mixer_api: ApiClient, local_api: ApiClient, remote_api: ApiClient
) -> None:
    merged = await mixer_api.kernelspecs()
    specs = merged["kernelspecs"]
    for prefix, suffix, api in (("local", " (Local)", local_api), ("remote", " (Remote)", remote_api)):
        own = await api.kernelspecs()
        for bare, own_spec in own["kernelspecs"].items():
            name = f"{prefix}-{bare}"
            assert name in specs, f"{name} missing from {sorted(specs)}"
            spec = specs[name]
            assert spec["name"] == name
            assert spec["spec"]["display_name"] == own_spec["spec"]["display_name"] + suffix
            assert spec["spec"]["language"] == own_spec["spec"]["language"]
            for key, url in spec["resources"].items():
                assert f"/kernelspecs/{name}/" in url, (key, url)
    assert all(n.startswith(("local-", "remote-")) for n in specs), sorted(specs)
    # SPEC §3: the remote's default while the remote is reachable and has one
    assert merged["default"] == "remote-python3", merged["default"]


@pytest.mark.parametrize("backend", BACKENDS)
async def test_kernelspec_and_logo_come_from_the_owning_backend(
    mixer_api: ApiClient, local_api: ApiClient, remote_api: ApiClient, backend: str
) -> None:
    name = f"{backend}-python3"
    resp = await mixer_api.get(f"/api/kernelspecs/{name}")
    assert resp.status == 200, resp.describe()
    assert resp.json()["name"] == name
    assert resp.headers.get("X-Mixer-Backend") == backend

    logo = await mixer_api.get(f"/kernelspecs/{name}/logo-64x64.png")
    assert logo.status == 200, logo.describe()
    assert logo.headers.get("X-Mixer-Backend") == backend
    assert logo.body.startswith(PNG_MAGIC)
    own = await _own(backend, local_api, remote_api).get("/kernelspecs/python3/logo-64x64.png")
    assert logo.body == own.body


@pytest.mark.parametrize("backend", BACKENDS)
async def test_kernels_create_list_get_delete(
    http: aiohttp.ClientSession,
    mixer_api: ApiClient,
    local_api: ApiClient,
    remote_api: ApiClient,
    janitor,
    backend: str,
) -> None:
    own_api = _own(backend, local_api, remote_api)
    name = f"{backend}-python3"
    created = await mixer_api.start_kernel(name)
    kernel_id = janitor.track(created["id"])
    assert created["name"] == name
    # ids pass through unchanged: the backend knows the kernel by the same id
    own = {k["id"]: k for k in await own_api.kernels()}
    assert kernel_id in own and own[kernel_id]["name"] == "python3"

    listed = {k["id"]: k for k in await mixer_api.kernels()}
    assert listed[kernel_id]["name"] == name
    resp = await mixer_api.get(f"/api/kernels/{kernel_id}")
    assert resp.status == 200, resp.describe()
    assert resp.json()["id"] == kernel_id and resp.json()["name"] == name
    assert resp.headers.get("X-Mixer-Backend") == backend
    # the backend's last_activity format is kept (GatewayClient parses it strictly)
    datetime.datetime.strptime(resp.json()["last_activity"], "%Y-%m-%dT%H:%M:%S.%fZ")

    assert await where(http, mixer_api, kernel_id) == backend

    resp = await mixer_api.delete_kernel(kernel_id)
    assert resp.status == 204, resp.describe()
    await wait_kernel_gone(own_api, kernel_id)
    resp = await mixer_api.get(f"/api/kernels/{kernel_id}")
    assert resp.status == 404, resp.describe()
    assert kernel_id not in await mixer_api.kernel_ids()


async def test_session_create_patch_across_backends_delete(
    http: aiohttp.ClientSession,
    mixer_api: ApiClient,
    local_api: ApiClient,
    remote_api: ApiClient,
    janitor,
) -> None:
    created = await mixer_api.ok_json(
        "POST",
        "/api/sessions",
        {"path": "editor.ipynb", "name": "editor.ipynb", "type": "notebook",
         "kernel": {"name": "local-python3"}},
        expect=(201,),
    )  # fmt: skip
    session_id = created["id"]
    local_kernel = janitor.track(created["kernel"]["id"])
    assert created["kernel"]["name"] == "local-python3"
    assert created["path"] == "editor.ipynb"
    assert local_kernel in await local_api.kernel_ids()
    assert session_id in {s["id"] for s in await mixer_api.sessions()}
    assert await where(http, mixer_api, local_kernel) == "local"

    # switch the notebook to the remote: same session id for the client
    patched = await mixer_api.ok_json(
        "PATCH", f"/api/sessions/{session_id}", {"kernel": {"name": "remote-python3"}}
    )
    remote_kernel = janitor.track(patched["kernel"]["id"])
    assert patched["id"] == session_id
    assert patched["kernel"]["name"] == "remote-python3"
    assert patched["path"] == "editor.ipynb"
    assert remote_kernel in await remote_api.kernel_ids()
    await wait_kernel_gone(local_api, local_kernel)
    assert not [s for s in await local_api.sessions() if s["path"] == "editor.ipynb"]
    assert [s for s in await remote_api.sessions() if s["kernel"]["id"] == remote_kernel]

    got = await mixer_api.ok_json("GET", f"/api/sessions/{session_id}")
    assert got["id"] == session_id and got["kernel"]["id"] == remote_kernel
    assert got["kernel"]["name"] == "remote-python3"
    listed = [s for s in await mixer_api.sessions() if s["id"] == session_id]
    assert len(listed) == 1 and listed[0]["kernel"]["id"] == remote_kernel
    assert await where(http, mixer_api, remote_kernel) == "remote"

    # a PATCH that changes nothing about the backend is forwarded and keeps the kernel
    renamed = await mixer_api.ok_json("PATCH", f"/api/sessions/{session_id}", {"path": "renamed.ipynb"})
    assert renamed["id"] == session_id and renamed["path"] == "renamed.ipynb"
    assert renamed["kernel"]["id"] == remote_kernel

    resp = await mixer_api.delete(f"/api/sessions/{session_id}")
    assert resp.status == 204, resp.describe()
    await wait_kernel_gone(remote_api, remote_kernel)
    resp = await mixer_api.get(f"/api/sessions/{session_id}")
    assert resp.status == 404, resp.describe()
    assert session_id not in {s["id"] for s in await mixer_api.sessions()}
    assert not [s for s in await remote_api.sessions() if s["path"] == "renamed.ipynb"]


@pytest.mark.parametrize("backend", BACKENDS)
async def test_websocket_execution_with_both_protocols(
    http: aiohttp.ClientSession, mixer_api: ApiClient, janitor, backend: str
) -> None:
    kernel = await mixer_api.start_kernel(f"{backend}-python3")
    kernel_id = janitor.track(kernel["id"])
    ws_url = mixer_api.ws_url(channels_path(kernel_id))

    legacy = await KernelConnection.open(http, ws_url, headers=mixer_api.auth(), timeout=60)
    async with legacy:
        assert legacy.negotiated is None
        result = await legacy.execute(WHERE)
        assert result.status == "ok" and result.stdout.strip() == backend, result
        assert legacy.frame_types == {"TEXT"}, legacy.frame_types

    v1 = await KernelConnection.open(http, ws_url, headers=mixer_api.auth(), protocol="v1", timeout=60)
    async with v1:
        assert v1.negotiated == V1_PROTOCOL
        result = await v1.execute(WHERE + "; print('v1', 'ok')")
        assert result.status == "ok", result
        assert result.stdout.split() == [backend, "v1", "ok"], result
        assert v1.frame_types == {"BINARY"}, v1.frame_types
        info = await v1.kernel_info()
        assert info.get("status") == "ok" and info.get("language_info", {}).get("name") == "python"
