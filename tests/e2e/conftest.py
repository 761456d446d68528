"""Fixtures of the end-to-end suite: the real process topology of SPEC §1.

Servers are session-scoped (starting a jupyter_server costs seconds on a small
machine) and started in parallel where they do not depend on each other. Tests
that break the topology on purpose (stop the remote, kill the mixer, make gcloud
fail) put it back through ``topology_guard``. Process logs are kept under the
pytest temporary directory (e.g. /tmp/pytest-of-root/pytest-N/e2e0/{local,remote,mixer,front}/);
the failure messages carry their tails.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from .support import topology
from .support.api import DEFAULT_TIMEOUT, ApiClient
from .support.fake_gcloud import FakeGcloud
from .support.topology import JupyterServer, Mixer


@dataclass(frozen=True)
class Tokens:
    jupyter: str  # local jupyter's token, also the one clients present to the mixer
    front: str  # the front jupyter's own token
    xsrf: str  # the _xsrf value tests send to the mixer directly


@pytest.fixture(scope="session")
def e2e_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("e2e")


@pytest.fixture(scope="session")
def tokens() -> Tokens:
    return Tokens(jupyter=uuid.uuid4().hex, front=uuid.uuid4().hex, xsrf=uuid.uuid4().hex)


@pytest.fixture(scope="session")
def gcloud(e2e_dir: Path) -> FakeGcloud:
    return FakeGcloud(e2e_dir / "gcloud", token_file=e2e_dir / "remote-bearer-token")


@dataclass
class Backends:
    local: JupyterServer
    remote: JupyterServer


@pytest.fixture(scope="session")
def backends(e2e_dir: Path, tokens: Tokens, gcloud: FakeGcloud) -> Iterator[Backends]:
    local = topology.jupyter_server("local", e2e_dir, where="local", token=tokens.jupyter)
    remote = topology.jupyter_server("remote", e2e_dir, where="remote", bearer_file=gcloud.token_file)
    try:
        local.start(wait=False)
        remote.start(wait=False)
        local.wait_ready()
        remote.wait_ready()
        yield Backends(local, remote)
    finally:
        for server in (remote, local):
            server.stop()


@pytest.fixture(scope="session")
def local_server(backends: Backends) -> JupyterServer:
    return backends.local


@pytest.fixture(scope="session")
def remote_server(backends: Backends) -> JupyterServer:
    return backends.remote


@pytest.fixture(scope="session")
def mixer_proc(e2e_dir: Path, backends: Backends, tokens: Tokens, gcloud: FakeGcloud) -> Iterator[Mixer]:
    if not topology.mixer_available():
        pytest.fail("notebook_kernels_mixer is not installed (pip install -e .)")
    m = topology.mixer(
        e2e_dir, local=backends.local, remote=backends.remote, token=tokens.jupyter, gcloud=gcloud
    )
    try:
        m.start()
        yield m
    finally:
        m.stop()


@pytest.fixture(scope="session")
def front_server(e2e_dir: Path, mixer_proc: Mixer, tokens: Tokens) -> Iterator[JupyterServer]:
    front = topology.front_server(
        e2e_dir, token=tokens.front, mixer_port=mixer_proc.port, mixer_token=tokens.jupyter
    )
    try:
        front.start()
        yield front
    finally:
        front.stop()


@pytest.fixture
def topology_guard(backends: Backends, gcloud: FakeGcloud, mixer_proc: Mixer) -> Iterator[None]:
    """Puts the shared topology back together after a test that broke it."""
    yield
    gcloud.succeed()
    for server in (backends.local, backends.remote):
        if not server.running():
            server.start()
    if not mixer_proc.running():
        mixer_proc.start()


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
