"""Acceptance 4: a backend going away and coming back; the mixer itself crashing."""

from __future__ import annotations

import time

import aiohttp
import pytest

from .helpers import error_message, spec_names, wait_kernel_gone, where
from .support.api import ApiClient, wait_until
from .support.topology import JupyterServer, Mixer

pytestmark = pytest.mark.e2e


async def test_remote_down_then_back(
    http: aiohttp.ClientSession,
    mixer_api: ApiClient,
    front_api: ApiClient,
    remote_server: JupyterServer,
    janitor,
    topology_guard,
) -> None:
    local_kernel = janitor.track((await mixer_api.start_kernel("local-python3"))["id"])
    remote_kernel = janitor.track((await mixer_api.start_kernel("remote-python3"))["id"])
    assert await where(http, mixer_api, local_kernel) == "local"

    remote_server.stop()
    assert not remote_server.running()

    # local keeps working: specs, kernels, execution
    started = time.monotonic()
    specs = await mixer_api.kernelspecs()
    assert "local-python3" in spec_names(specs)
    assert specs["default"] in spec_names(specs)
    assert local_kernel in await mixer_api.kernel_ids()
    elapsed = time.monotonic() - started
    assert elapsed < 10, f"listing with the remote down took {elapsed:.1f}s"

    # SPEC §4: a backend that cannot answer keeps its last-known kernels (clients drop
    # what a listing omits) and specs, but the default comes from those that answer.
    async def local_default() -> dict | None:
        specs = await mixer_api.kernelspecs()
        return specs if specs["default"].startswith("local-") else None

    specs = await wait_until(local_default, timeout=15, what="the local default advertised")
    assert {"local-python3", "remote-python3"} <= set(spec_names(specs))
    assert remote_kernel in await mixer_api.kernel_ids()
    assert await where(http, mixer_api, local_kernel) == "local"
    # ... also through the front
    front_specs = await front_api.kernelspecs()
    assert "local-python3" in spec_names(front_specs)

    # requests that need the remote fail clearly
    resp = await mixer_api.post("/api/kernels", {"name": "remote-python3"})
    assert resp.status in (502, 503, 504), resp.describe()
    assert "remote" in error_message(resp).lower(), resp.describe()
    resp = await mixer_api.get(f"/api/kernels/{remote_kernel}")
    assert resp.status in (502, 503, 504), resp.describe()
    assert "remote" in error_message(resp).lower(), resp.describe()
    resp = await mixer_api.get("/api/kernelspecs/remote-python3")
    assert resp.status in (502, 503, 504), resp.describe()

    # the remote comes back on the same port: its specs come back
    remote_server.start()

    async def remote_specs_back() -> bool:
        return "remote-python3" in spec_names(await mixer_api.kernelspecs())

    await wait_until(remote_specs_back, timeout=60, what="remote kernelspecs listed again")
    again = janitor.track((await mixer_api.start_kernel("remote-python3"))["id"])
    assert await where(http, mixer_api, again) == "remote"
    assert await where(http, mixer_api, local_kernel) == "local"


async def test_mixer_killed_and_restarted_keeps_kernels(
    http: aiohttp.ClientSession,
    mixer_api: ApiClient,
    mixer_proc: Mixer,
    front_api: ApiClient,
    local_api: ApiClient,
    remote_api: ApiClient,
    janitor,
    topology_guard,
) -> None:
    # kernels a JupyterLab user has open through the front
    kernels = {
        "local": janitor.track((await front_api.start_kernel("local-python3"))["id"]),
        "remote": janitor.track((await front_api.start_kernel("remote-python3"))["id"]),
    }
    for backend, kernel_id in kernels.items():
        assert await where(http, front_api, kernel_id) == backend

    pid = mixer_proc.process.pid
    mixer_proc.restart(kill=True)  # SIGKILL: nothing is saved on the way out
    assert mixer_proc.process.pid != pid

    listed = {k["id"]: k for k in await mixer_api.kernels()}
    for backend, kernel_id in kernels.items():
        assert kernel_id in listed, f"{backend} kernel {kernel_id} not listed after restart"
        assert listed[kernel_id]["name"] == f"{backend}-python3"
        resp = await mixer_api.get(f"/api/kernels/{kernel_id}")
        assert resp.status == 200, resp.describe()
        assert resp.json()["name"] == f"{backend}-python3"
        assert await where(http, mixer_api, kernel_id) == backend
        # the front reaches them through the restarted mixer too
        assert await where(http, front_api, kernel_id) == backend

    # the front shuts them down through the restarted mixer, which routes by id
    for backend, kernel_id in kernels.items():
        resp = await front_api.delete_kernel(kernel_id)
        assert resp.status == 204, f"{backend}: {resp.describe()}"
        own_api = local_api if backend == "local" else remote_api
        await wait_kernel_gone(own_api, kernel_id)
