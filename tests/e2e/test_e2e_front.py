"""Acceptance 1: the seed topology, driven through the FRONT server as JupyterLab does.

front jupyter_server --GatewayClient--> mixer --> local jupyter_server (token)
                                               \\-> remote jupyter_server (Bearer from gcloud)
"""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest

from .helpers import PNG_MAGIC, WHERE, channels_path, run, wait_kernel_gone, where
from .support.api import ApiClient
from .support.kernel_client import KernelConnection

pytestmark = pytest.mark.e2e

BACKENDS = ["local", "remote"]


async def test_front_lists_both_backends_specs_and_serves_their_logos(
    front_api: ApiClient, local_api: ApiClient, remote_api: ApiClient
) -> None:
    # jupyter_server's GatewayClient answers its own stale default on the first listing and
    # adopts the gateway's default from then on: list twice, check the second
    await front_api.kernelspecs()
    specs = await front_api.kernelspecs()
    names = set(specs["kernelspecs"])
    assert {"local-python3", "remote-python3"} <= names, names
    assert specs["default"] in names

    for name, suffix, backend in (
        ("local-python3", " (Local)", local_api),
        ("remote-python3", " (Remote)", remote_api),
    ):
        spec = specs["kernelspecs"][name]
        assert spec["name"] == name
        assert spec["spec"]["display_name"].endswith(suffix), spec["spec"]
        logo_url = spec["resources"].get("logo-64x64")
        assert logo_url, f"no logo resource for {name}: {spec['resources']}"
        # the front serves kernelspec resources under its own /kernelspecs/{name}/
        assert logo_url.endswith(f"/kernelspecs/{name}/logo-64x64.png"), logo_url
        logo = await front_api.get(f"/kernelspecs/{name}/logo-64x64.png")
        assert logo.status == 200, logo.describe()
        assert logo.body.startswith(PNG_MAGIC), f"{name}: not a PNG ({logo.body[:16]!r})"
        original = await backend.get("/kernelspecs/python3/logo-64x64.png")
        assert original.status == 200, original.describe()
        assert logo.body == original.body, f"{name}: logo differs from the backend's own"


async def test_front_notebook_session_moves_from_local_to_remote(
    http: aiohttp.ClientSession,
    front_api: ApiClient,
    local_api: ApiClient,
    remote_api: ApiClient,
    janitor,
) -> None:
    created = await front_api.ok_json(
        "POST",
        "/api/sessions",
        {
            "path": "switch.ipynb",
            "name": "switch.ipynb",
            "type": "notebook",
            "kernel": {"name": "local-python3"},
        },
        expect=(201,),
    )
    session_id = created["id"]
    local_kernel = created["kernel"]["id"]
    janitor.track(local_kernel)
    assert created["kernel"]["name"] == "local-python3"
    assert local_kernel in await local_api.kernel_ids()
    assert await where(http, front_api, local_kernel) == "local"

    patched = await front_api.ok_json(
        "PATCH", f"/api/sessions/{session_id}", {"kernel": {"name": "remote-python3"}}
    )
    remote_kernel = patched["kernel"]["id"]
    janitor.track(remote_kernel)
    assert patched["id"] == session_id
    assert patched["kernel"]["name"] == "remote-python3"
    assert remote_kernel != local_kernel
    assert remote_kernel in await remote_api.kernel_ids()
    # the front shut the old kernel down: it is gone from the local server itself
    await wait_kernel_gone(local_api, local_kernel)
    assert await where(http, front_api, remote_kernel) == "remote"

    listed = {s["id"]: s for s in await front_api.sessions()}
    assert listed[session_id]["kernel"]["id"] == remote_kernel

    resp = await front_api.delete(f"/api/sessions/{session_id}")
    assert resp.status == 204, resp.describe()
    await wait_kernel_gone(remote_api, remote_kernel)
    assert session_id not in {s["id"] for s in await front_api.sessions()}


@pytest.mark.parametrize("backend", BACKENDS)
async def test_front_interrupts_a_long_sleep(
    http: aiohttp.ClientSession,
    front_api: ApiClient,
    local_api: ApiClient,
    remote_api: ApiClient,
    janitor,
    backend: str,
) -> None:
    own_api = local_api if backend == "local" else remote_api
    kernel = await front_api.start_kernel(f"{backend}-python3")
    kernel_id = janitor.track(kernel["id"])
    assert kernel["name"] == f"{backend}-python3"
    assert kernel_id in await own_api.kernel_ids()

    conn = await KernelConnection.open(
        http, front_api.ws_url(channels_path(kernel_id)), headers=front_api.auth(), timeout=60
    )
    async with conn:
        warm = await conn.execute(WHERE)
        assert warm.stdout.strip() == backend, warm
        msg_id = await conn.send_execute("import time; time.sleep(60); print('slept')")
        await conn.wait_for_state(msg_id, "busy", timeout=30)
        await asyncio.sleep(0.5)  # let the kernel enter the sleep
        started = time.monotonic()
        resp = await front_api.post(f"/api/kernels/{kernel_id}/interrupt", {})
        assert resp.status == 204, resp.describe()
        result = await conn.collect(msg_id, timeout=30)
        elapsed = time.monotonic() - started
        assert result.status == "error", result
        assert result.ename == "KeyboardInterrupt", result
        assert "slept" not in result.stdout
        assert elapsed < 20, f"interrupt took {elapsed:.1f}s"
        after = await conn.execute("print(6 * 7)")
        assert after.status == "ok" and after.stdout.strip() == "42", after

    resp = await front_api.delete_kernel(kernel_id)
    assert resp.status == 204, resp.describe()
    await wait_kernel_gone(own_api, kernel_id)


@pytest.mark.parametrize("backend", BACKENDS)
async def test_front_restart_clears_state(
    http: aiohttp.ClientSession,
    front_api: ApiClient,
    local_api: ApiClient,
    remote_api: ApiClient,
    janitor,
    backend: str,
) -> None:
    own_api = local_api if backend == "local" else remote_api
    kernel = await front_api.start_kernel(f"{backend}-python3")
    kernel_id = janitor.track(kernel["id"])

    before = await run(http, front_api, kernel_id, "mixer_marker = 'still here'; print(mixer_marker)")
    assert before.status == "ok" and before.stdout.strip() == "still here", before

    resp = await front_api.post(f"/api/kernels/{kernel_id}/restart", {})
    assert resp.status == 200, resp.describe()
    restarted = resp.json()
    assert restarted["id"] == kernel_id
    assert restarted["name"] == f"{backend}-python3"

    after = await run(http, front_api, kernel_id, "print(mixer_marker)")
    assert after.status == "error" and after.ename == "NameError", after
    assert await where(http, front_api, kernel_id) == backend

    resp = await front_api.delete_kernel(kernel_id)
    assert resp.status == 204, resp.describe()
    await wait_kernel_gone(own_api, kernel_id)
    assert kernel_id not in await front_api.kernel_ids()
