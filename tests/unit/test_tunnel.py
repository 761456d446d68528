"""The splice under abuse (relay/tunnel.py): garbage and oversized frames, peers that vanish
mid-message, many open/close cycles. The relay never hangs, closes both sides, and leaks
no connection, task or file descriptor.

"Both sides" is seen from both ends: the mixer's count of relayed sockets
(``relay.live``) and the fake backend's count of its open websockets (``ws_open``)."""

import asyncio
import base64
import itertools
import os
import random

from aiohttp import WSMsgType

from notebook_kernels_mixer.app import INVENTORY, RELAY
from notebook_kernels_mixer.relay.tunnel import FrameBoundaries
from tests.fakes import BrokenWebsocketBackend
from tests.unit.conftest import TOKEN


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def settle(relay, timeout: float = 5.0) -> None:
    for _ in range(int(timeout / 0.02)):
        if relay.live == 0:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"{relay.live} relayed websockets still open")


async def backend_sockets(fake, expected: int, timeout: float = 5.0) -> None:
    """Until the fake backend has ``expected`` websockets open (its own count, not the
    mixer's): a backend leg the relay forgot to close stays open there."""
    for _ in range(int(timeout / 0.02)):
        if fake.stats["ws_open"] == expected:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"the backend has {fake.stats['ws_open']} websockets open, not {expected}")


async def raw_upgrade(base: str, url: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A websocket handshake by hand, so that the test can then send anything at all."""
    host, port = base.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    path = url.split(port, 1)[1]
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(
        f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
        f"token: {TOKEN}\r\n\r\n".encode()
    )
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 101")
    return reader, writer


async def kernel_url(fakes, mixer, **config):
    local = await fakes("local")
    kernel = local._new_kernel("python3")
    m = await mixer([("local", local)], **config)
    url = m.url.replace("http", "ws") + f"/api/kernels/{kernel['id']}/channels"
    return local, m, url


async def test_oversized_client_frame_closes_both_sides(fakes, mixer) -> None:
    # The relay splices bytes: the backend's own message limit applies (the fake's is
    # aiohttp's 4 MiB); its "message too big" close reaches the client, and the relay ends.
    local, m, url = await kernel_url(fakes, mixer)
    async with m.session.ws_connect(url, headers={"token": TOKEN}) as ws:
        await backend_sockets(local, 1)
        await ws.send_bytes(b"x" * (5 * 1024 * 1024))
        msg = await ws.receive(timeout=10)
        # aiohttp (the fake) drops the connection; jupyter_server sends close 1009 first
        assert msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSED)
    await settle(m.app[RELAY])
    await backend_sockets(local, 0)
    status, _ = await m.call("GET", "/api/kernels")
    assert status == 200


async def test_garbage_frames_close_the_relay(fakes, mixer) -> None:
    local, m, url = await kernel_url(fakes, mixer)
    reader, writer = await raw_upgrade(m.url, url)
    await backend_sockets(local, 1)
    writer.write(b"\xff\xff\xff\xff garbage that is no websocket frame \x00\x01")
    await writer.drain()
    rest = await asyncio.wait_for(reader.read(), 5)  # the mixer closes on us
    assert rest == b"" or rest[0] & 0x0F == 0x8  # EOF, or a close frame first
    writer.close()
    await settle(m.app[RELAY])
    await backend_sockets(local, 0)


async def test_backend_dying_mid_message_closes_client(fakes, mixer) -> None:
    broken = await BrokenWebsocketBackend().start()
    try:
        local = await fakes("local")
        m = await mixer([("local", local), ("broken", broken.url)])
        kernel = "4b6a3a3e-3a8e-4c43-9bde-9df6a1ad7f10"
        registry = m.app[INVENTORY]
        registry.kernel_created(registry.backends["broken"], {"id": kernel})
        url = m.url.replace("http", "ws") + f"/api/kernels/{kernel}/channels"
        async with m.session.ws_connect(url, headers={"token": TOKEN}) as ws:
            await ws.send_str("hello")
            msg = await ws.receive(timeout=5)
            assert msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSED)
            assert ws.close_code not in (None, 1000)
        await settle(m.app[RELAY])
        assert broken.upgrades == 1
    finally:
        await broken.stop()


async def test_client_vanishing_mid_message(fakes, mixer) -> None:
    local, m, url = await kernel_url(fakes, mixer)
    reader, writer = await raw_upgrade(m.url, url)
    for _ in range(250):  # the relay is up once the mixer counts it
        if m.app[RELAY].live == 1:
            break
        await asyncio.sleep(0.02)
    else:
        raise AssertionError("the mixer never counted the relayed websocket")
    await backend_sockets(local, 1)  # and the backend's leg is open
    writer.write(b"\x82\xfe\x10\x00\x00\x00\x00\x00" + b"y" * 10)  # masked 4 KiB frame, cut
    await writer.drain()
    writer.transport.abort()
    await settle(m.app[RELAY])
    await backend_sockets(local, 0)


async def test_many_open_close_cycles_leak_nothing(fakes, mixer) -> None:
    local, m, url = await kernel_url(fakes, mixer)
    relay = m.app[RELAY]

    async def cycle(i: int) -> None:
        async with m.session.ws_connect(url, headers={"token": TOKEN}) as ws:
            await ws.send_str(f"m{i}")
            assert (await ws.receive(timeout=5)).data == f"m{i}"

    # warm up pools before counting
    await asyncio.gather(*(cycle(i) for i in range(20)))
    await settle(relay)
    await backend_sockets(local, 0)
    await asyncio.sleep(0.2)
    tasks_before, fds_before = len(asyncio.all_tasks()), open_fds()
    for batch in range(50):
        await asyncio.gather(*(cycle(batch * 40 + i) for i in range(40)))
    await settle(relay)
    await backend_sockets(local, 0)
    assert local.stats["ws_connections"] == 20 + 50 * 40  # every cycle reached the backend
    await asyncio.sleep(0.3)
    assert len(asyncio.all_tasks()) <= tasks_before + 2
    # pooled keep-alive connections may differ a little; a leak would be thousands
    assert open_fds() <= fds_before + 20


# -- frame boundaries -----------------------------------------------------------------------
def frame(size: int, *, masked: bool = False, opcode: int = 0x82) -> bytes:
    """One websocket frame with a ``size``-byte payload, its length in the shortest
    encoding (7, 16 or 64 bits), as RFC 6455 §5.2 writes it."""
    mask = 0x80 if masked else 0
    if size < 126:
        head = bytes((opcode, mask | size))
    elif size < 1 << 16:
        head = bytes((opcode, mask | 126)) + size.to_bytes(2, "big")
    else:
        head = bytes((opcode, mask | 127)) + size.to_bytes(8, "big")
    return head + (b"\x01\x02\x03\x04" if masked else b"") + b"p" * size


def test_frame_boundaries_are_found_however_the_stream_is_cut() -> None:
    rng = random.Random(20261203)
    sizes = [0, 1, 2, 125, 126, 127, 1024, 65535, 65536, 70000]
    for _ in range(300):
        frames = [frame(rng.choice(sizes), masked=rng.random() < 0.2)
                  for _ in range(rng.randint(1, 6))]
        stream = b"".join(frames)
        ends = set(itertools.accumulate(len(f) for f in frames))
        # cuts anywhere, including inside headers, one byte apart near frame starts
        near = [e + d for e in [0, *ends] for d in (1, 2, 3) if e + d < len(stream)]
        cuts = sorted(set(rng.sample(range(1, len(stream)), min(len(stream) - 1, 8))
                          + rng.sample(near, min(len(near), 6))))
        boundaries = FrameBoundaries()
        start = 0
        for cut in [*cuts, len(stream)]:
            boundaries.feed(stream[start:cut])
            assert boundaries.between_frames == (cut in ends), (cut, sorted(ends))
            start = cut


def test_a_chunk_that_is_one_frame_or_inside_a_payload_takes_no_parsing() -> None:
    """The splice's per-message cost: a kernel message arrives as one whole frame, and
    a long binary one in chunks that only shorten the payload still to come."""
    boundaries = FrameBoundaries()
    for size in (0, 100, 125, 126, 1024, 65535):
        boundaries.feed(frame(size))
    assert boundaries.parsed == 0 and boundaries.between_frames
    big = frame(1 << 20)
    step = 64 * 1024
    for start in range(0, len(big), step):
        boundaries.feed(big[start : start + step])
    assert boundaries.parsed == 1 and boundaries.between_frames  # only its header chunk
    two = frame(10) + frame(20)  # two frames in one chunk need the parser
    boundaries.feed(two)
    assert boundaries.parsed == 2 and boundaries.between_frames


async def test_relayed_messages_are_not_parsed_in_either_direction(fakes, mixer) -> None:
    """Round trips through the mixer: the client's frames are never looked at, and the
    backend's (one frame per chunk) pass without the general parser."""
    local, m, url = await kernel_url(fakes, mixer)
    relay = m.app[RELAY]
    async with m.session.ws_connect(url, headers={"token": TOKEN}) as ws:
        for i in range(50):
            await ws.send_str(f"message {i} " + "x" * (i * 40))
            assert (await ws.receive(timeout=5)).data.startswith(f"message {i} ")
        (tunnel,) = relay._live
        assert tunnel._frames.parsed == 0
        assert tunnel._frames.between_frames
