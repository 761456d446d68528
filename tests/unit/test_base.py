"""The Backend (backends/base.py).

``Backend.authorized``, the one path of an exchange the backend may refuse (REST and
the websocket upgrade): one retry on a 401/403 with fresh credentials, the credentials
told what the backend took, the health record.

A backend's answers are read within a cap (``--max-backend-answer``): an answer over
it is a 502 naming the backend and the cap, read no further than needed to know (its
Content-Length, else counting), its connection closed, and the mixer keeps serving."""

from __future__ import annotations

import asyncio
import base64
import errno
import os
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from types import SimpleNamespace

import aiohttp
import pytest

from notebook_kernels_mixer import descriptors
from notebook_kernels_mixer.app import INVENTORY
from notebook_kernels_mixer.backends import Backend
from notebook_kernels_mixer.backends.credentials import Credentials
from notebook_kernels_mixer.config import BackendConfig
from notebook_kernels_mixer.errors import BackendUnavailable, NotFound, OutOfDescriptors
from notebook_kernels_mixer.relay.upgrade import Dialer
from tests.fakes import FakeJupyter
from tests.flood import Flood
from tests.unit.conftest import Mixer


class Rotating(Credentials):
    """Hands out ``tokens`` in turn, the next one after each refusal (while there is
    one); records what the backend refused and what it took."""

    kind = "token"

    def __init__(self, *tokens: str) -> None:
        self.tokens = list(tokens)
        self.refused: list[str] = []
        self.taken: list[str] = []

    async def headers(self, timeout: float | None = None) -> dict[str, str]:
        return {"Authorization": f"token {self.tokens[0]}"}

    def rejected(self, headers: Mapping[str, str]) -> bool:
        self.refused.append(headers["Authorization"])
        if len(self.tokens) == 1:
            return False
        self.tokens.pop(0)
        return True

    def accepted(self, headers: Mapping[str, str]) -> None:
        self.taken.append(headers["Authorization"])


@dataclass
class Answer:
    status: int
    closed: bool = False

    def close(self) -> None:
        self.closed = True


@pytest.fixture
async def backends() -> AsyncIterator[list[Backend]]:
    made: list[Backend] = []
    yield made
    for backend in made:
        await backend.close()  # and its health probe


def backend_with(made: list[Backend], credentials: Credentials, url: str = "http://127.0.0.1:1/") -> Backend:
    backend = Backend(BackendConfig("b", "", url), credentials)
    made.append(backend)
    return backend


async def test_a_refusal_is_tried_once_more_with_fresh_credentials(backends: list[Backend]) -> None:
    credentials = Rotating("old", "new")
    backend = backend_with(backends, credentials)
    answers = {"token old": Answer(401), "token new": Answer(200)}
    sent: list[str] = []

    async def send(auth: Mapping[str, str]) -> Answer:
        sent.append(auth["Authorization"])
        return answers[auth["Authorization"]]

    got = await backend.authorized(send, time.monotonic() + 5, "GET /api/kernels")
    assert got is answers["token new"] and not got.closed
    assert answers["token old"].closed  # the refused answer is dropped
    assert sent == ["token old", "token new"]
    assert credentials.refused == ["token old"] and credentials.taken == ["token new"]
    assert backend.health.last_ok is not None and backend.health.failures == 0


async def test_a_second_refusal_is_handed_on(backends: list[Backend]) -> None:
    credentials = Rotating("old", "new", "newer")
    backend = backend_with(backends, credentials)
    sent: list[str] = []

    async def send(auth: Mapping[str, str]) -> Answer:
        sent.append(auth["Authorization"])
        return Answer(403)

    got = await backend.authorized(send, time.monotonic() + 5, "GET /api/kernels")
    assert got.status == 403 and not got.closed
    assert sent == ["token old", "token new"]  # two attempts at most
    assert credentials.taken == []


# status → (the credentials are told it was taken, health: "ok", "failure" or None)
OUTCOMES = {200: (True, "ok"), 101: (True, "ok"), 404: (True, "ok"), 403: (False, "ok"),
            503: (True, "failure"), 500: (True, None), 502: (True, None)}


@pytest.mark.parametrize("status", list(OUTCOMES))
async def test_what_an_answer_tells_the_credentials_and_the_health(
        backends: list[Backend], status: int) -> None:
    credentials = Rotating("only")  # a refusal is not retried: no fresher credentials
    backend = backend_with(backends, credentials)

    async def send(auth: Mapping[str, str]) -> Answer:
        return Answer(status)

    got = await backend.authorized(send, time.monotonic() + 5, "GET /api/kernels")
    assert got.status == status and not got.closed
    taken, health = OUTCOMES[status]
    assert credentials.taken == (["token only"] if taken else [])
    assert (backend.health.last_ok is not None) == (health == "ok")
    assert backend.health.failures == (1 if health == "failure" else 0)


def handshake() -> dict[str, str]:
    return {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
            "Sec-WebSocket-Key": base64.b64encode(os.urandom(16)).decode()}


async def test_a_websocket_upgrade_takes_the_same_path(backends: list[Backend]) -> None:
    fake = await FakeJupyter("remote", token="new").start()
    try:
        credentials = Rotating("old", "new")
        backend = backend_with(backends, credentials, fake.url)
        kernel = fake._new_kernel("python3")
        upgrade = await Dialer(backend).upgrade(f"/api/kernels/{kernel['id']}/channels", "", handshake())
        assert upgrade.status == 101
        upgrade.close()
        assert credentials.refused == ["token old"]  # 403 from the fake, then a retry
        assert credentials.taken == ["token new"]  # and the new token was taken
        assert [s.headers.get("Authorization") for s in fake.seen] == ["token old", "token new"]
        assert backend.health.last_ok is not None
        with pytest.raises(NotFound):
            await Dialer(backend).upgrade("/api/kernels/nope/channels", "", handshake())
    finally:
        await fake.stop()


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


def connector_error(code: int) -> aiohttp.ClientConnectorError:
    key = SimpleNamespace(host="127.0.0.1", port=1, ssl=True)
    return aiohttp.ClientConnectorError(key, OSError(code, os.strerror(code)))  # type: ignore[arg-type]


class FailingPool:
    """An HTTP pool whose every connection fails with ``code``."""

    def __init__(self, code: int) -> None:
        self.code = code

    async def request(self, *args: object, **kwargs: object) -> aiohttp.ClientResponse:
        raise connector_error(self.code)

    async def close(self) -> None:
        pass


async def test_a_mixer_out_of_descriptors_answers_503_and_the_backend_stays_healthy(
        backends: list[Backend], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(descriptors, "DESCRIPTORS", descriptors.Descriptors())
    backend = backend_with(backends, Rotating("only"))
    backend._http = FailingPool(errno.EMFILE)  # type: ignore[assignment]
    with pytest.raises(OutOfDescriptors) as info:
        await backend.request("GET", "/api/kernels")
    assert info.value.status == 503 and "out of file descriptors" in info.value.message
    assert backend.health.failures == 0
    backend._http = FailingPool(errno.ECONNREFUSED)  # type: ignore[assignment]
    with pytest.raises(BackendUnavailable):  # a backend that is down is still its failure
        await backend.request("GET", "/api/kernels")
    assert backend.health.failures == 1


async def test_a_rest_request_out_of_descriptors_is_a_json_503_that_closes_its_connection(
        fakes, mixer, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(descriptors, "DESCRIPTORS", descriptors.Descriptors())
    local = await fakes("local")
    m = await mixer([("local", local)])
    m.app[INVENTORY].backends["local"]._http = FailingPool(errno.EMFILE)
    async with m.session.get(m.url + "/api/contents", headers=m.headers()) as resp:
        assert resp.status == 503 and resp.headers["Connection"] == "close"
        body = await resp.json()
    assert body["reason"] == "Service Unavailable"
    assert body["message"].startswith("the mixer is out of file descriptors")
