"""No fd ceiling: a mixer started under a soft open-files limit of 256 (macOS's
default) raises it to the hard limit, so 300 kernel websockets (600 descriptors in
the mixer) all open and echo, and REST keeps answering. With the hard limit at 256
too, websockets past what the limit allows are refused with a 503 before the upgrade
(not dropped, also when many come at once), the open ones go on, REST answers, and
new ones are accepted again once some close."""

from __future__ import annotations

import asyncio
import base64
import collections
import json
import os
import resource
from pathlib import Path
from types import SimpleNamespace

import aiohttp
import pytest

from tests.fakes import FakeJupyter

from .support import topology

pytestmark = pytest.mark.e2e

SOCKETS = 300
SOFT = 256
#: New websockets at once at the limit: several times the descriptors kept free (32).
BURST = 150


def _limits(pid: int) -> tuple[int, int]:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            soft, hard = line.split()[3:5]
            return int(soft), int(hard)
    raise AssertionError("no open-files line")


def _mixer_under_ulimit(tmp_path: Path, fake: FakeJupyter, shell_ulimit: str) -> topology.Mixer:
    """A mixer (prepared, not started) in front of ``fake``, to start with open-files
    limits set as a shell's ``ulimit`` would."""
    mixer = topology.mixer(tmp_path, local=SimpleNamespace(port=fake.port),  # type: ignore[arg-type]
                           remote=None, token="T", gcloud=None)
    mixer.process.argv = ["sh", "-c", f'{shell_ulimit} && exec "$@"', "sh", *mixer.process.argv]
    return mixer


async def test_a_low_soft_limit_is_raised_and_300_websockets_work(tmp_path: Path) -> None:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard != resource.RLIM_INFINITY and hard < 2 * SOCKETS + 100:
        pytest.skip(f"the hard open-files limit here ({hard}) is too low for the test")
    fake = await FakeJupyter("local", record=False).start()
    # the mixer starts with the soft limit at 256, as a shell with `ulimit -S -n 256` would
    mixer = _mixer_under_ulimit(tmp_path, fake, f"ulimit -S -n {SOFT}")
    try:
        await asyncio.to_thread(mixer.start)
        pid = mixer.process.pid
        assert pid is not None
        kernel = fake._new_kernel("python3")
        url = f"ws://127.0.0.1:{mixer.port}/api/kernels/{kernel['id']}/channels"
        # limit=0: the client's pool would otherwise stop at 100 connections
        async with aiohttp.ClientSession(headers={"token": "T"},
                                         connector=aiohttp.TCPConnector(limit=0)) as http:
            sockets = []
            try:
                for i in range(SOCKETS):
                    sockets.append(await asyncio.wait_for(
                        http.ws_connect(f"{url}?session_id=s{i}"), 30))
                for i, ws in enumerate(sockets):
                    await ws.send_str(f"m{i}")
                for i, ws in enumerate(sockets):
                    assert (await ws.receive(timeout=30)).data == f"m{i}"
                async with http.get(f"http://127.0.0.1:{mixer.port}/api/kernels") as resp:
                    assert resp.status == 200  # REST answers beside them
            finally:
                await asyncio.gather(*(ws.close() for ws in sockets), return_exceptions=True)
        assert _limits(pid)[0] > 2 * SOCKETS  # raised at start, and said so
        assert "open files: up to" in mixer.log_text()
    finally:
        await asyncio.to_thread(mixer.stop)
        await fake.stop()


async def _upgrade_answer(http: aiohttp.ClientSession, url: str) -> tuple[int, dict, str]:
    """A websocket upgrade sent as a plain request: the status, JSON body and
    Connection header of an answer that is not a 101."""
    headers = {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
               "Sec-WebSocket-Key": base64.b64encode(os.urandom(16)).decode()}
    async with http.get(url.replace("ws://", "http://"), headers=headers,
                        timeout=aiohttp.ClientTimeout(total=30)) as resp:
        return resp.status, json.loads(await resp.read()), resp.headers.get("Connection", "")


async def test_past_a_hard_limit_websockets_are_refused_cleanly_and_accepted_again(
        tmp_path: Path) -> None:
    fake = await FakeJupyter("local", record=False).start()
    # soft and hard limit at 256: raising the soft one gains nothing
    mixer = _mixer_under_ulimit(tmp_path, fake, f"ulimit -S -n {SOFT} && ulimit -H -n {SOFT}")
    try:
        await asyncio.to_thread(mixer.start)
        pid = mixer.process.pid
        assert pid is not None
        assert _limits(pid) == (SOFT, SOFT)
        kernel = fake._new_kernel("python3")
        base = f"http://127.0.0.1:{mixer.port}"
        url = f"ws://127.0.0.1:{mixer.port}/api/kernels/{kernel['id']}/channels"
        async with aiohttp.ClientSession(headers={"token": "T"},
                                         connector=aiohttp.TCPConnector(limit=0)) as http:
            sockets: list[aiohttp.ClientWebSocketResponse] = []
            try:
                refusal: aiohttp.WSServerHandshakeError | None = None
                # bounded: each websocket takes two of the mixer's 256 descriptors
                for i in range(SOFT):
                    try:
                        sockets.append(await asyncio.wait_for(
                            http.ws_connect(f"{url}?session_id=s{i}"), 30))
                    except aiohttp.WSServerHandshakeError as exc:
                        refusal = exc
                        break
                # refused with an HTTP answer (a dropped connection or a timeout would
                # be another exception), and only near the limit
                assert refusal is not None and refusal.status == 503
                assert SOFT // 4 < len(sockets) < SOFT // 2
                for _ in range(5):  # every refusal says why, and gives its connection back
                    status, body, connection = await _upgrade_answer(http, f"{url}?session_id=x")
                    assert status == 503 and body["reason"] == "Service Unavailable"
                    assert "out of file descriptors" in body["message"]
                    assert connection.lower() == "close"
                # a burst of new ones at once, more than the descriptors kept free: each
                # is refused (or, if some freed meanwhile, accepted), none dropped
                async def attempt(i: int) -> str:
                    try:
                        ws = await asyncio.wait_for(http.ws_connect(f"{url}?session_id=b{i}"), 30)
                    except aiohttp.WSServerHandshakeError as exc:
                        return f"HTTP {exc.status}"
                    except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                        return type(exc).__name__
                    sockets.append(ws)
                    return "accepted"
                outcomes = await asyncio.gather(*(attempt(i) for i in range(BURST)))
                assert set(outcomes) <= {"HTTP 503", "accepted"}, collections.Counter(outcomes)
                assert outcomes.count("HTTP 503") > BURST // 2
                for i, ws in enumerate(sockets):  # the open ones go on
                    await ws.send_str(f"m{i}")
                for i, ws in enumerate(sockets):
                    assert (await ws.receive(timeout=30)).data == f"m{i}"
                for path in ("/mixer/api/status", "/api/kernelspecs", "/api/kernels"):
                    async with http.get(base + path) as resp:
                        assert resp.status == 200, path  # REST answers beside them
                closing, sockets = sockets[:10], sockets[10:]
                await asyncio.gather(*(ws.close() for ws in closing))
                again = None
                for _ in range(50):  # the mixer closes their backend legs after the clients'
                    try:
                        again = await asyncio.wait_for(http.ws_connect(f"{url}?session_id=new"), 30)
                        break
                    except aiohttp.WSServerHandshakeError as exc:
                        assert exc.status == 503
                        await asyncio.sleep(0.1)
                assert again is not None, "no websocket accepted after some closed"
                sockets.append(again)
                await again.send_str("again")
                assert (await again.receive(timeout=30)).data == "again"
            finally:
                await asyncio.gather(*(ws.close() for ws in sockets), return_exceptions=True)
        log = mixer.log_text()
        assert log.count("out of file descriptors") == 1  # one line, not one per refusal
        assert "file descriptors free again" in log
        assert "Traceback" not in log
    finally:
        await asyncio.to_thread(mixer.stop)
        await fake.stop()
