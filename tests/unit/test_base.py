"""A backend's answers are read within a cap (``--max-backend-answer``): an answer over
it is a 502 naming the backend and the cap, read no further than needed to know (its
Content-Length, else counting), its connection closed, and the mixer keeps serving."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import aiohttp
import pytest

from tests.flood import Flood
from tests.unit.conftest import Mixer

CAP = 1024 * 1024  # the cap of these tests: 1 MiB
HUGE = 128 * CAP  # what the hostile backend would send: 128 MiB
#: What may be on its way when the mixer stops reading: the socket buffers of both
#: ends (a few MiB on loopback) and aiohttp's read buffer. Far below ``HUGE``.
SLACK = 32 * CAP

@pytest.fixture
async def flood() -> AsyncIterator[Flood]:
    fake = await Flood("remote", HUGE).start()
    yield fake
    await fake.stop()


async def until(predicate, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def capped_mixer(fakes, mixer, flood: Flood) -> Mixer:  # type: ignore[no-untyped-def]
    local = await fakes("local")
    return await mixer([("local", local), ("remote", flood, {"max_answer_bytes": CAP})])


async def test_a_chunked_rest_answer_over_the_cap_is_a_502_and_is_not_read_further(
        fakes, mixer, flood: Flood) -> None:
    m = await capped_mixer(fakes, mixer, flood)
    status, body = await m.call("GET", "/api/kernelspecs/remote-huge")
    assert status == 502
    assert "'remote'" in body["message"] and "1 MiB" in body["message"]
    assert "--max-backend-answer" in body["message"]
    await until(lambda: len(flood.sent) == 1)
    assert flood.closed == 1  # the mixer closed the connection
    assert flood.sent[0] < CAP + SLACK  # and read no further than the cap (and buffers)
    # the mixer keeps serving, the remote's other answers included
    status, specs = await m.call("GET", "/api/kernelspecs")
    assert status == 200 and {"local-python3", "remote-python3"} <= set(specs["kernelspecs"])
    status, _ = await m.call("GET", "/api/kernelspecs/remote-python3")
    assert status == 200


async def test_an_answer_whose_length_is_over_the_cap_is_refused_before_reading(
        fakes, mixer, flood: Flood) -> None:
    m = await capped_mixer(fakes, mixer, flood)
    status, body = await m.call("GET", "/kernelspecs/remote-huge/big.png")
    assert status == 502
    assert "'remote'" in body["message"] and "1 MiB" in body["message"]
    assert "128 MiB" in body["message"]  # the length it announced
    await until(lambda: len(flood.sent) == 1)
    assert flood.closed == 1 and flood.sent[0] < CAP + SLACK
    status, _ = await m.call("GET", "/api/kernels")
    assert status == 200


async def test_a_streamed_resource_over_the_cap_ends_with_an_aborted_connection(
        fakes, mixer, flood: Flood) -> None:
    m = await capped_mixer(fakes, mixer, flood)
    received = 0
    with pytest.raises((aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError)):
        async with m.session.get(m.url + "/kernelspecs/remote-huge/chunked.png",
                                 headers=m.headers()) as r:
            assert r.status == 200  # streamed: the head went out before the cap was reached
            async for chunk in r.content.iter_any():
                received += len(chunk)
    assert received <= CAP  # never more than the cap reaches the client
    await until(lambda: len(flood.sent) == 1)
    assert flood.closed == 1 and flood.sent[0] < CAP + SLACK
    status, _ = await m.call("GET", "/api/kernelspecs")
    assert status == 200
