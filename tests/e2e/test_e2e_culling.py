"""Culling, orphans and metrics with real processes (SPEC §7).

A remote jupyter_server of this module's own (the shared one serves every other e2e
module: a culling mixer in front of it would stop their kernels), the suite's local
server, and a mixer per test started with the flags it tests — ``--cull-idle-timeout=10
--cull-interval=2`` (test values; jupyter_server's defaults are off and 300 s), plus
``--cull-busy``/``--cull-connected`` where a test says so. The flags apply to the remote
backend only: the local server's kernels are never culled by them.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import subprocess
import time
from collections.abc import AsyncIterator, Iterator

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from .helpers import channels_path
from .support.api import ApiClient, wait_until
from .support.fake_gcloud import FakeGcloud
from .support.kernel_client import KernelConnection
from .support.stack import Tokens
from .support.topology import JupyterServer, Mixer, clean_env, jupyter_server, mixer, mixer_command

pytestmark = pytest.mark.e2e

IDLE_TIMEOUT = 10
INTERVAL = 2
POLICY = [f"--cull-idle-timeout={IDLE_TIMEOUT}", f"--cull-interval={INTERVAL}"]
#: The acceptance's bound: an idle kernel is gone from the remote this long after it
#: became idle (timeout 10 s + interval 2 s + the check's own listing and shutdown).
GONE_WITHIN = 20.0
KERNEL_GONE = 4004
_names = itertools.count(1)


@pytest.fixture(scope="module")
def cull_remote(tmp_path_factory: pytest.TempPathFactory, gcloud: FakeGcloud,
                local_server: JupyterServer) -> Iterator[JupyterServer]:
    """A remote of this module's own (bearer tokens of the suite's stand-in gcloud)."""
    workdir = tmp_path_factory.mktemp("culling")
    remote = jupyter_server("remote", workdir, where="remote", bearer_file=gcloud.token_file)
    remote.start()
    try:
        yield remote
    finally:
        remote.stop()


@contextlib.contextmanager
def started_mixer(workdir, local: JupyterServer, remote: JupyterServer, tokens: Tokens,
                  gcloud: FakeGcloud, *args: str) -> Iterator[Mixer]:
    proc = mixer(workdir, local=local, remote=remote, token=tokens.jupyter, gcloud=gcloud,
                 name=f"mixer-cull-{next(_names)}", extra_args=list(args))
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture
def start(tmp_path, local_server, cull_remote, tokens, gcloud):
    """``start(*flags)``: a mixer in front of the suite's local server and this
    module's remote, stopped at the end of the test."""
    with contextlib.ExitStack() as stack:
        yield lambda *args: stack.enter_context(
            started_mixer(tmp_path, local_server, cull_remote, tokens, gcloud, *args))


@pytest.fixture
async def apis(http: aiohttp.ClientSession, cull_remote: JupyterServer,
               local_server: JupyterServer) -> AsyncIterator[dict[str, ApiClient]]:
    """The remote and the local server, asked directly; kernels a test started on
    them (``started``) are shut down at its end."""
    remote = ApiClient(http, cull_remote.url, auth=cull_remote.auth, name="remote")
    local = ApiClient(http, local_server.url, auth=local_server.auth, name="local")
    before = {"remote": await remote.kernel_ids(), "local": await local.kernel_ids()}
    yield {"remote": remote, "local": local}
    for name, api in (("remote", remote), ("local", local)):
        for kernel_id in await api.kernel_ids() - before[name]:
            with contextlib.suppress(Exception):
                await api.delete_kernel(kernel_id)


def mixer_api(http: aiohttp.ClientSession, proc: Mixer, tokens: Tokens) -> ApiClient:
    return ApiClient(http, proc.url, auth=proc.auth, xsrf=tokens.xsrf, name="mixer")


async def connect(http: aiohttp.ClientSession, api: ApiClient, kernel_id: str) -> KernelConnection:
    conn = await KernelConnection.open(http, api.ws_url(channels_path(kernel_id)),
                                       headers=api.auth())
    await conn.kernel_info(timeout=60)
    return conn


async def start_busy(http: aiohttp.ClientSession, api: ApiClient, kernel_id: str) -> None:
    """The kernel runs ``time.sleep(60)``; nobody stays connected to it."""
    async with await connect(http, api, kernel_id) as conn:
        msg_id = await conn.send_execute("import time; time.sleep(60)")
        await conn.wait_for_state(msg_id, "busy")


async def close_of(client: KernelConnection, frames: int = 100) -> aiohttp.WSMessage:
    """The close frame, after what the kernel sent before it."""
    for _ in range(frames):
        msg = await asyncio.wait_for(client.ws.receive(), 10)
        if msg.type is not aiohttp.WSMsgType.TEXT and msg.type is not aiohttp.WSMsgType.BINARY:
            assert msg.type is aiohttp.WSMsgType.CLOSE, msg
            return msg
    raise AssertionError(f"no close within {frames} frames")


def culled_lines(proc: Mixer) -> list[str]:
    return [line for line in proc.log_text().splitlines() if "culled kernel" in line]


async def gone(api: ApiClient, kernel_id: str, what: str, timeout: float) -> None:
    async def absent() -> bool:
        return kernel_id not in await api.kernel_ids()

    await wait_until(absent, timeout=timeout, what=f"{what} {kernel_id} gone from {api.name}")


async def test_an_idle_remote_kernel_is_culled_and_busy_connected_and_local_ones_stay(
        http, start, tokens, apis) -> None:
    proc = start(*POLICY)
    api = mixer_api(http, proc, tokens)
    busy = (await api.start_kernel("remote-python3"))["id"]
    await start_busy(http, api, busy)
    connected = (await api.start_kernel("remote-python3"))["id"]
    local = (await api.start_kernel("local-python3"))["id"]
    async with await connect(http, api, connected) as client:
        idle = (await api.start_kernel("remote-python3"))["id"]
        idle_since = time.monotonic()
        await gone(apis["remote"], idle, "the idle kernel", GONE_WITHIN)
        assert idle not in await api.kernel_ids()  # it left the listing as a deleted one does
        # two more checks: the others met every condition but the one that spares them
        await asyncio.sleep(2 * INTERVAL + 1)
        assert {busy, connected} <= await apis["remote"].kernel_ids()
        assert local in await apis["local"].kernel_ids()
        assert (await client.kernel_info(timeout=30)).get("status") == "ok"
    lines = culled_lines(proc)
    assert len(lines) == 1 and idle in lines[0] and "'remote'" in lines[0], lines
    assert time.monotonic() - idle_since > IDLE_TIMEOUT  # not before its time


async def test_busy_and_connected_kernels_are_culled_with_cull_busy_and_cull_connected(
        http, start, tokens, apis) -> None:
    proc = start(*POLICY, "--cull-busy", "--cull-connected")
    api = mixer_api(http, proc, tokens)
    busy = (await api.start_kernel("remote-python3"))["id"]
    await start_busy(http, api, busy)
    connected = (await api.start_kernel("remote-python3"))["id"]
    async with await connect(http, api, connected) as client:
        await gone(apis["remote"], busy, "the busy kernel", GONE_WITHIN + 5)
        await gone(apis["remote"], connected, "the connected kernel", GONE_WITHIN)
        # its client is told: a close it does not mistake for a network blip (after the
        # kernel's last messages: its shutdown's status and reply)
        closed = await close_of(client)
        assert closed.data == KERNEL_GONE and "culled" in closed.extra, closed
    # what JupyterLab does next: reconnect (404), then look the kernel up (404: dead)
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await http.ws_connect(api.ws_url(channels_path(connected) + "?session_id=again"),
                              headers=api.auth())
    assert refused.value.status == 404
    assert (await api.get(f"/api/kernels/{connected}")).status == 404
    assert len(culled_lines(proc)) == 2


async def test_nothing_is_culled_or_lost_while_the_remote_is_frozen(
        http, start, tokens, apis, cull_remote) -> None:
    proc = start(*POLICY)
    api = mixer_api(http, proc, tokens)
    connected = (await api.start_kernel("remote-python3"))["id"]
    async with await connect(http, api, connected) as client:
        idle = (await api.start_kernel("remote-python3"))["id"]
        await asyncio.sleep(2 * INTERVAL + 1)  # the mixer has seen it idle
        # frozen well past the idle timeout: the mixer has only last-known entries
        with cull_remote.frozen():
            frozen_until = time.monotonic() + IDLE_TIMEOUT + 2 * INTERVAL + 2
            while time.monotonic() < frozen_until:
                assert {idle, connected} <= await api.kernel_ids()  # nothing lost meanwhile
                await asyncio.sleep(INTERVAL)
        thawed = time.monotonic()
        assert (await client.kernel_info(timeout=60)).get("status") == "ok"
        # back: idle for longer than the timeout, but nobody could have used it: it is
        # not culled at once (nor by a shutdown queued during the freeze), though the
        # remote answers again (its probe: within 5 s) and was checked since
        await asyncio.sleep(max(thawed + IDLE_TIMEOUT - 3 - time.monotonic(), 0))
        assert {idle, connected} <= await apis["remote"].kernel_ids()
        assert not culled_lines(proc)
        # and once seen idle for the timeout with the remote answering, it is
        await gone(apis["remote"], idle, "the idle kernel", IDLE_TIMEOUT + GONE_WITHIN)
        assert time.monotonic() - thawed > IDLE_TIMEOUT
        assert connected in await apis["remote"].kernel_ids()


# -- orphans from the terminal, metrics -------------------------------------------------------


def mixer_status(proc: Mixer, tokens: Tokens, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*mixer_command(), "status", "--url", proc.url, *args],
        env=clean_env({"MIXER_TOKEN": tokens.jupyter}), capture_output=True, text=True,
        timeout=60, check=False,
    )


async def test_mixer_status_shuts_down_exactly_the_orphans_of_a_backend(
        http, start, tokens, apis) -> None:
    proc = start()  # no culling: orphans stay until asked
    api = mixer_api(http, proc, tokens)
    orphans = {(await api.start_kernel("remote-python3"))["id"] for _ in range(2)}
    notebook = await api.ok_json("POST", "/api/sessions", {
        "path": "n.ipynb", "name": "n.ipynb", "type": "notebook",
        "kernel": {"name": "remote-python3"}}, expect=(201,))
    connected = (await api.start_kernel("remote-python3"))["id"]
    local_orphan = (await api.start_kernel("local-python3"))["id"]
    async with await connect(http, api, connected):
        refused = await asyncio.to_thread(mixer_status, proc, tokens, "--shutdown-orphans", "nope")
        assert refused.returncode == 2, refused
        assert "no backend named 'nope'" in refused.stderr and refused.stdout == ""
        done = await asyncio.to_thread(mixer_status, proc, tokens, "--shutdown-orphans", "remote")
        assert done.returncode == 0, done
        assert "remote: stopped 2 orphan kernels" in done.stdout
        assert all(k in done.stdout for k in orphans), done.stdout
        remote_now = await apis["remote"].kernel_ids()
        assert not orphans & remote_now
        assert {notebook["kernel"]["id"], connected} <= remote_now
        assert local_orphan in await apis["local"].kernel_ids()
        listing = await asyncio.to_thread(mixer_status, proc, tokens, "--kernels")
    assert listing.returncode == 0, listing
    rows = {line.split()[1]: line.split() for line in listing.stdout.splitlines()[1:]}
    assert rows[connected][0] == "remote" and rows[connected][-1] == "no"
    assert rows[local_orphan][0] == "local" and rows[local_orphan][-1] == "yes"


async def scrape(http: aiohttp.ClientSession, proc: Mixer) -> dict[tuple[str, str], float]:
    async with http.get(proc.url + "/mixer/metrics", headers=proc.auth()) as resp:
        assert resp.status == 200
        text = await resp.text()
    return {(s.name, s.labels.get("backend", "")): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


async def test_metrics_after_creates_culls_and_deletes(http, start, tokens, apis) -> None:
    proc = start(*POLICY)
    api = mixer_api(http, proc, tokens)
    async with http.get(proc.url + "/mixer/metrics") as resp:
        assert resp.status == 403  # the token, as everywhere
    before = await scrape(http, proc)
    assert before[("mixer_kernels", "remote")] == 0
    culled = (await api.start_kernel("remote-python3"))["id"]
    deleted = (await api.start_kernel("remote-python3"))["id"]
    kept = (await api.start_kernel("remote-python3"))["id"]
    local = (await api.start_kernel("local-python3"))["id"]
    assert (await api.delete_kernel(deleted)).status == 204
    async with await connect(http, api, kept):  # connected: never culled
        during = await scrape(http, proc)
        await gone(apis["remote"], culled, "the idle kernel", GONE_WITHIN)
        after = await scrape(http, proc)
    assert during[("mixer_kernel_websockets", "remote")] == 1
    assert after[("mixer_kernels", "remote")] == 1  # kept
    assert after[("mixer_kernels", "local")] == before[("mixer_kernels", "local")] + 1
    assert after[("mixer_kernels_culled_total", "remote")] == 1
    assert after[("mixer_kernels_culled_total", "local")] == 0
    assert after[("mixer_orphans_shut_down_total", "remote")] == 0
    # three remote kernels lived: the culled one alone for more than the idle timeout
    assert after[("mixer_kernel_seconds_total", "remote")] > IDLE_TIMEOUT
    assert after[("mixer_kernel_listing_seconds_count", "remote")] > 0
    assert after[("mixer_kernel_listing_failures_total", "remote")] == 0
    assert after[("mixer_backend_up", "remote")] == 1
    assert local in await apis["local"].kernel_ids()
