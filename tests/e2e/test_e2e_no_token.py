"""A mixer and a local jupyter_server, neither with a token (SPEC §6, jupyter_server's
own rule): only the Host, Origin and XSRF checks stand between a web page and the
kernels. A page served by another local program (another port of localhost) is
another site: it may not list kernels, subscribe to the event bus or run code."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from .helpers import channels_path
from .support import topology
from .support.kernel_client import execute

pytestmark = pytest.mark.e2e

XSRF = {"Cookie": "_xsrf=X", "X-XSRFToken": "X"}  # a page on any localhost port can set this cookie
FOREIGN = "http://localhost:3000"
ADMITTED = "https://lab.example.org"  # --allow-origin at the mixer, unknown to the local server


@pytest.fixture(scope="module")
def open_mixer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[topology.Mixer]:
    workdir: Path = tmp_path_factory.mktemp("no-token")
    local = topology.jupyter_server("local", workdir, where="local", token="")
    local.start()
    mixer = topology.mixer(workdir, local=local, remote=None, token="", gcloud=None,
                           extra_args=[f"--allow-origin={ADMITTED}"])
    try:
        mixer.start()
        yield mixer
    finally:
        mixer.stop()
        local.stop()


def open_mixer_local_log(mixer: topology.Mixer) -> str:
    """The log of the local server behind ``mixer`` (it says why it refused)."""
    return (mixer.process.log_path.parent.parent / "local" / "local.log").read_text()


async def _kernel(http: aiohttp.ClientSession, base: str) -> str:
    async with http.post(base + "/api/kernels", json={"name": "local-python3"}, headers=XSRF) as r:
        assert r.status == 201, await r.text()
        return (await r.json())["id"]


async def _handshake_status(http: aiohttp.ClientSession, url: str, origin: str) -> int:
    try:
        async with http.ws_connect(url, headers={"Origin": origin}):
            return 101
    except aiohttp.WSServerHandshakeError as exc:
        return exc.status


async def test_a_page_on_another_local_port_cannot_reach_the_kernels(
    open_mixer: topology.Mixer, http: aiohttp.ClientSession
) -> None:
    base = open_mixer.url
    kernel = await _kernel(http, base)
    ws_base = base.replace("http", "ws")
    for path in ("/api/events/subscribe", channels_path(kernel)):
        assert await _handshake_status(http, ws_base + path, FOREIGN) == 403, path
    for method, path in (("GET", "/api/kernels"), ("POST", "/api/kernels"),
                         ("GET", "/api/sessions"), ("POST", f"/api/kernels/{kernel}/restart")):
        async with http.request(method, base + path, headers={**XSRF, "Origin": FOREIGN},
                                json={"name": "local-python3"}) as r:
            assert r.status == 403, (method, path, await r.text())
    # the mixer's own origin (a JupyterLab opened on the mixer) runs code as ever
    result = await execute(http, ws_base + channels_path(kernel), "print(6 * 7)",
                           headers={"Origin": base})
    assert result.stdout == "42\n"


async def test_the_local_server_judges_an_origin_admitted_by_the_mixer(
    open_mixer: topology.Mixer, http: aiohttp.ClientSession
) -> None:
    """``--allow-origin`` at the mixer does not hide that Origin from the local server:
    its own check applies (it was dropped before, so the server saw a script)."""
    url = open_mixer.url.replace("http", "ws") + "/api/events/subscribe"
    assert await _handshake_status(http, url, open_mixer.url) == 101
    # A backend's refusal closes the client's socket (SPEC §4), saying why.
    async with http.ws_connect(url, headers={"Origin": ADMITTED}) as ws:
        msg = await ws.receive(timeout=30)
    assert msg.type == aiohttp.WSMsgType.CLOSE, msg
    assert msg.data == 1011 and "HTTP 403" in msg.extra, msg
    assert "403 GET /api/events/subscribe" in open_mixer_local_log(open_mixer)  # its verdict


@pytest.mark.parametrize("squatted", ["::1", "127.0.0.1"])
async def test_a_busy_address_stops_the_mixer_naming_it(tmp_path: Path, squatted: str) -> None:
    """Whoever holds ``[::1]:PORT`` would get the front's requests, token included:
    the mixer refuses to start on the other address alone."""
    family = socket.AF_INET6 if ":" in squatted else socket.AF_INET
    with socket.socket(family) as squatter:
        squatter.bind((squatted, 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        local = topology.jupyter_server("local", tmp_path, where="local", token="T")  # not started
        mixer = topology.mixer(tmp_path, local=local, remote=None, token="T", gcloud=None, port=port)
        mixer.process.start(wait=False)
        try:
            code = await asyncio.to_thread(mixer.process.wait_exit, 60)
        finally:
            mixer.process.stop()
        where = f"[{squatted}]:{port}" if ":" in squatted else f"{squatted}:{port}"
        assert code != 0
        assert f"cannot listen on {where}" in mixer.log_text()
        other = "127.0.0.1" if ":" in squatted else "::1"
        with socket.socket(socket.AF_INET if other == "127.0.0.1" else socket.AF_INET6) as probe:
            assert probe.connect_ex((other, port)) != 0  # nothing left listening there
