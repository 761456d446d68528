"""Fixtures of the end-to-end suite: the real process topology of SPEC §1.

One ``Stack`` (``support/stack.py``, shared with the fuzz, browser and soak tests) per
session: starting a jupyter_server costs seconds on a small machine. Each fixture
starts the part it names (backends, mixer, front) on first use; everything stops at
the end of the session. Tests that break the topology on purpose (stop the remote,
kill the mixer, make gcloud fail) put it back through ``topology_guard``. Process
logs are kept under the pytest temporary directory (e.g.
/tmp/pytest-of-root/pytest-N/e2e0/{local,remote,mixer,front}/); the failure messages
carry their tails.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest

from .support.api import DEFAULT_TIMEOUT, ApiClient
from .support.fake_gcloud import FakeGcloud
from .support.stack import Stack, Tokens
from .support.topology import JupyterServer, Mixer


@pytest.fixture(scope="session")
def e2e_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Prepared, not started: the fixtures below start what they name."""
    stack = Stack(tmp_path_factory.mktemp("e2e"), front="server")
    try:
        yield stack
    finally:
        stack.stop()


@pytest.fixture(scope="session")
def e2e_dir(e2e_stack: Stack) -> Path:
    return e2e_stack.workdir


@pytest.fixture(scope="session")
def tokens(e2e_stack: Stack) -> Tokens:
    return e2e_stack.tokens


@pytest.fixture(scope="session")
def gcloud(e2e_stack: Stack) -> FakeGcloud:
    return e2e_stack.gcloud


@pytest.fixture(scope="session")
def backends(e2e_stack: Stack) -> Stack:
    """The stack with its local and remote jupyter_servers running."""
    e2e_stack.start_backends()
    return e2e_stack


@pytest.fixture(scope="session")
def local_server(backends: Stack) -> JupyterServer:
    return backends.local


@pytest.fixture(scope="session")
def remote_server(backends: Stack) -> JupyterServer:
    return backends.remote


@pytest.fixture(scope="session")
def mixer_proc(e2e_stack: Stack) -> Mixer:
    return e2e_stack.start_mixer()


@pytest.fixture(scope="session")
def front_server(e2e_stack: Stack) -> JupyterServer:
    return e2e_stack.start_front()


@pytest.fixture
def topology_guard(e2e_stack: Stack, mixer_proc: Mixer) -> Iterator[None]:
    """Puts the shared topology back together after a test that broke it."""
    yield
    e2e_stack.repair()


# -- clients (function scope: one aiohttp session per test, on the test's event loop) ----------


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(
        timeout=DEFAULT_TIMEOUT, cookie_jar=aiohttp.DummyCookieJar(), trust_env=False
    ) as session:
        yield session


@pytest.fixture
def local_api(http: aiohttp.ClientSession, local_server: JupyterServer) -> ApiClient:
    return ApiClient(http, local_server.url, auth=local_server.auth, name="local")


@pytest.fixture
def remote_api(http: aiohttp.ClientSession, remote_server: JupyterServer) -> ApiClient:
    return ApiClient(http, remote_server.url, auth=remote_server.auth, name="remote")


@pytest.fixture
def mixer_api(http: aiohttp.ClientSession, mixer_proc: Mixer, tokens: Tokens) -> ApiClient:
    return ApiClient(http, mixer_proc.url, auth=mixer_proc.auth, xsrf=tokens.xsrf, name="mixer")


@pytest.fixture
def front_api(http: aiohttp.ClientSession, front_server: JupyterServer) -> ApiClient:
    return ApiClient(http, front_server.url, auth=front_server.auth, name="front")


class KernelJanitor:
    """Remembers kernels a test started and shuts down those still alive at teardown."""

    def __init__(self, *apis: ApiClient) -> None:
        self.apis = apis
        self.ids: list[str] = []

    def track(self, kernel_id: str) -> str:
        self.ids.append(kernel_id)
        return kernel_id

    async def cleanup(self) -> None:
        for kernel_id in self.ids:
            for api in self.apis:
                with contextlib.suppress(Exception):
                    resp = await api.delete_kernel(kernel_id)
                    if resp.status == 204:
                        break


@pytest.fixture
async def janitor(local_api: ApiClient, remote_api: ApiClient) -> AsyncIterator[KernelJanitor]:
    # straight to the backends, so that cleanup works whatever state the mixer is in
    j = KernelJanitor(local_api, remote_api)
    yield j
    await j.cleanup()
