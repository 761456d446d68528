"""The websocket relay: frame for frame, subprotocol and close codes passed through,
a client socket closed (not an HTTP error) when the backend cannot be reached, and a
503 before the upgrade when the mixer is short of file descriptors."""

import asyncio
import errno
from types import SimpleNamespace

import aiohttp
import pytest
from aiohttp import WSMsgType

from notebook_kernels_mixer import descriptors
from notebook_kernels_mixer.app import INVENTORY, RELAY
from notebook_kernels_mixer.relay.upgrade import Dialer
from tests.unit.conftest import TOKEN

V1 = "v1.kernel.websocket.jupyter.org"


async def setup(fakes, mixer):
    local = await fakes("local")
    kernel = local._new_kernel("python3")
    m = await mixer([("local", local)])
    url = m.url.replace("http", "ws") + f"/api/kernels/{kernel['id']}/channels?session_id=s1"
    return local, m, url


async def test_frames_pass_unchanged_both_ways(fakes, mixer) -> None:
    local, m, url = await setup(fakes, mixer)
    async with m.session.ws_connect(url, headers={"token": TOKEN}) as ws:
        assert ws.protocol is None
        for text in ("{}", "é" * 1000, '{"channel": "shell"}'):
            await ws.send_str(text)
            msg = await ws.receive(timeout=5)
            assert msg.type is WSMsgType.TEXT and msg.data == text
        for blob in (b"\x00\x01\x02", bytes(range(256)) * 4096):
            await ws.send_bytes(blob)
            msg = await ws.receive(timeout=5)
            assert msg.type is WSMsgType.BINARY and msg.data == blob
    upgrade = next(s for s in local.seen if s.path.endswith("/channels"))
    assert upgrade.headers.get("Authorization") is None  # this fake needs no token


async def test_query_and_subprotocol_pass_through(fakes, mixer) -> None:
    local, m, url = await setup(fakes, mixer)
    async with m.session.ws_connect(url, headers={"token": TOKEN}, protocols=(V1,)) as ws:
        assert ws.protocol == V1
        await ws.send_bytes(b"binary v1 frame")
        assert (await ws.receive(timeout=5)).data == b"binary v1 frame"
    upgrade = next(s for s in local.seen if s.path.endswith("/channels"))
    assert upgrade.headers["Sec-WebSocket-Protocol"] == V1


async def test_pings_are_relayed_to_the_backend(fakes, mixer) -> None:
    local, m, url = await setup(fakes, mixer)
    async with m.session.ws_connect(url, headers={"token": TOKEN}, autoping=False) as ws:
        await ws.ping(b"are you there")
        msg = await ws.receive(timeout=5)
        assert msg.type is WSMsgType.PONG and msg.data == b"are you there"
    # the backend got the ping and answered it (a mixer that answered pings itself
    # would send the same pong, but the backend would see none)
    assert local.stats["ws_pings"] == 1


async def test_backend_close_code_reaches_client(fakes, mixer) -> None:
    _, m, url = await setup(fakes, mixer)
    async with m.session.ws_connect(url, headers={"token": TOKEN}) as ws:
        await ws.send_str("close:4001")
        msg = await ws.receive(timeout=5)
        assert msg.type is WSMsgType.CLOSE
        assert ws.close_code == 4001
    for _ in range(50):
        if m.app[RELAY].live == 0:
            break
        await asyncio.sleep(0.02)
    assert m.app[RELAY].live == 0


async def test_client_close_closes_backend(fakes, mixer) -> None:
    local, m, url = await setup(fakes, mixer)
    relay = m.app[RELAY]
    ws = await m.session.ws_connect(url, headers={"token": TOKEN})
    await ws.send_str("x")
    await ws.receive(timeout=5)
    assert relay.live == 1
    await ws.close(code=4002)
    for _ in range(50):
        if relay.live == 0:
            break
        await asyncio.sleep(0.02)
    assert relay.live == 0


@pytest.mark.parametrize("target", ["down", "hole"])
async def test_unreachable_backend_closes_the_socket(fakes, mixer, blackhole, target) -> None:
    url_of = {"down": "http://127.0.0.1:9/", "hole": blackhole.url}
    local = await fakes("local")
    m = await mixer([("local", local), ("remote", url_of[target])], request_timeout=0.5)
    kernel = "1b8636b2-d964-4f3e-95bd-71eff87da38e"
    registry = m.app[INVENTORY]
    registry.kernel_created(registry.backends["remote"], {"id": kernel})
    url = m.url.replace("http", "ws") + f"/api/kernels/{kernel}/channels"
    async with m.session.ws_connect(url, headers={"token": TOKEN}) as ws:
        msg = await ws.receive(timeout=10)
        assert msg.type is WSMsgType.CLOSE
        assert ws.close_code == 1011
        assert "remote" in (msg.extra or "")


async def test_unknown_kernel_websocket_is_404(fakes, mixer) -> None:
    local = await fakes("local")
    m = await mixer([("local", local)])
    url = m.url.replace("http", "ws") + "/api/kernels/0d1a/channels"
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        await m.session.ws_connect(url, headers={"token": TOKEN})
    assert info.value.status == 404


async def test_concurrent_sockets_of_one_session_get_their_own_backend_session(fakes, mixer):
    # JupyterLab behind a gateway-mode front leaves an abandoned socket open with the
    # same session_id; the backend would route the kernel's replies by that id.
    local, m, url = await setup(fakes, mixer)
    first = await m.session.ws_connect(url, headers={"token": TOKEN})
    await first.send_str("one")
    assert (await first.receive(timeout=5)).data == "one"
    # A live client reads its socket, and so answers the mixer's ping.
    pending = asyncio.ensure_future(first.receive(timeout=10))
    second = await m.session.ws_connect(url, headers={"token": TOKEN})
    await second.send_str("two")
    assert (await second.receive(timeout=5)).data == "two"
    await first.send_str("one again")
    assert (await pending).data == "one again"  # the first socket was kept
    await first.close()
    await second.close()
    await settle_relays(m)
    third = await m.session.ws_connect(url, headers={"token": TOKEN})
    await third.close()
    sessions = [s.query for s in local.seen if s.path.endswith("/channels")]
    assert sessions[0] == "session_id=s1" and sessions[2] == "session_id=s1"
    assert sessions[1].startswith("session_id=s1.") and sessions[1] != sessions[0]


async def test_a_reconnect_replaces_a_half_open_socket_of_its_session(fakes, mixer):
    # After a laptop sleep the old socket is half-open: it takes writes and never
    # answers. The reconnect must keep the client's session id (so the backend replaces
    # the stale connection and replays what was missed), and the stale one is closed.
    local, m, url = await setup(fakes, mixer)
    stale = await m.session.ws_connect(url, headers={"token": TOKEN}, autoping=False)
    await stale.send_str("before the sleep")
    # The stale client reads nothing any more: the mixer's ping goes unanswered.
    fresh = await m.session.ws_connect(url, headers={"token": TOKEN})
    await fresh.send_str("after")
    assert (await fresh.receive(timeout=5)).data == "after"
    sessions = [s.query for s in local.seen if s.path.endswith("/channels")]
    assert sessions == ["session_id=s1", "session_id=s1"]
    for _ in range(100):  # the stale socket was closed by the mixer
        if m.app[RELAY].live == 1:
            break
        await asyncio.sleep(0.02)
    assert m.app[RELAY].live == 1
    await fresh.close()
    await stale.close()


async def settle_relays(m) -> None:
    for _ in range(100):
        if m.app[RELAY].live == 0:
            return
        await asyncio.sleep(0.02)
    raise AssertionError("relays still open")


@pytest.fixture
def descriptors_left(monkeypatch):
    """A fresh guard, and how many descriptors it is told are free (100 at first)."""
    left = SimpleNamespace(free=100, asked=[])

    def free(fd, limit):
        left.asked.append(fd)
        return left.free

    monkeypatch.setattr(descriptors, "DESCRIPTORS", descriptors.Descriptors())
    monkeypatch.setattr(descriptors, "soft_limit", lambda: 65536)
    monkeypatch.setattr(descriptors, "free_descriptors", free)
    return left


def upgrade_headers() -> dict[str, str]:
    return {"token": TOKEN, "Upgrade": "websocket", "Connection": "Upgrade",
            "Sec-WebSocket-Version": "13", "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}


async def test_short_of_descriptors_a_new_websocket_is_a_503_and_the_open_ones_go_on(
        fakes, mixer, descriptors_left) -> None:
    local, m, url = await setup(fakes, mixer)
    async with m.session.ws_connect(url, headers={"token": TOKEN}) as open_one:
        assert descriptors_left.asked and all(fd > 2 for fd in descriptors_left.asked)
        descriptors_left.free = 5  # below the reserve
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await m.session.ws_connect(url.replace("s1", "s2"), headers={"token": TOKEN})
        assert refused.value.status == 503
        async with m.session.get(url.replace("ws", "http", 1), headers=upgrade_headers()) as resp:
            assert resp.status == 503 and resp.headers["Connection"] == "close"
            body = await resp.json()
        assert body["reason"] == "Service Unavailable"
        assert "out of file descriptors" in body["message"]
        await open_one.send_str("still here")
        assert (await open_one.receive(timeout=5)).data == "still here"
        status, _ = await m.call("GET", "/api/kernels")
        assert status == 200
        descriptors_left.free = 100  # some closed
        async with m.session.ws_connect(url.replace("s1", "s3"), headers={"token": TOKEN}) as again:
            await again.send_str("again")
            assert (await again.receive(timeout=5)).data == "again"
    assert [s.path.endswith("/channels") for s in local.seen].count(True) == 2  # the refused never reached it


async def test_a_backend_connection_short_of_descriptors_is_a_503_not_a_1011(
        fakes, mixer, monkeypatch, descriptors_left) -> None:
    async def emfile(self, url):
        raise OSError(errno.EMFILE, "Too many open files")

    local, m, url = await setup(fakes, mixer)
    monkeypatch.setattr(Dialer, "_connect", emfile)
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await m.session.ws_connect(url, headers={"token": TOKEN})
    assert refused.value.status == 503
    backend = m.app[INVENTORY].backends["local"]
    assert backend.health.failures == 0  # the mixer's shortage, not the backend's failure
