"""A real mixer process in front of a backend that answers 600 MB (``tests/flood.py``):
with the default cap (64 MiB) every such answer is refused or cut off, the mixer's
peak memory (VmHWM of /proc/PID/status) does not grow by the body's size, and the
mixer keeps serving."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from notebook_kernels_mixer.processes import free_port, http_status

from .support.processes import ManagedProcess
from .support.topology import clean_env, mixer_command

REPO = Path(__file__).resolve().parents[2]
BODY = 600 * 1000 * 1000  # the size of the report
CAP = 64 * 1024 * 1024  # the default --max-backend-answer
TOKEN = "backend-answers-test-token"


def peak_rss(pid: int) -> int:
    """The process's peak resident set size (VmHWM), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM in /proc/PID/status")


def process(name: str, argv: list[str], home: Path, ready_url: str,
            headers: dict[str, str] | None = None) -> ManagedProcess:
    return ManagedProcess(
        name, argv, log_path=home / f"{name}.log", env=clean_env(), cwd=REPO,
        ready=lambda: http_status(ready_url, headers or {}, timeout=5) == 200, ready_timeout=60,
    )  # fmt: skip


@pytest.fixture
def mixer_and_flood(tmp_path: Path) -> Iterator[tuple[ManagedProcess, str, str]]:
    local_port, flood_port, port = free_port(), free_port(), free_port()
    started: list[ManagedProcess] = []
    try:
        for name, argv, probe in (
            ("local", [sys.executable, "-m", "tests.fakes", f"--port={local_port}", "--label=local"],
             f"http://127.0.0.1:{local_port}/api/kernelspecs"),
            ("flood", [sys.executable, "-m", "tests.flood", f"--port={flood_port}", f"--size={BODY}"],
             f"http://127.0.0.1:{flood_port}/api/kernelspecs"),
        ):
            started.append(process(name, argv, tmp_path, probe).start())
        config = tmp_path / "mixer.toml"
        config.write_text(f'[[backends]]\nname = "remote"\nurl = "http://127.0.0.1:{flood_port}/"\n')
        argv = [*mixer_command(), f"--port={port}", f"--jupyter-port={local_port}",
                f"--jupyter-token={TOKEN}", f"--config={config}", "--state-file=:memory:"]
        url = f"http://127.0.0.1:{port}"
        mixer = process("mixer", argv, tmp_path, url + "/api/kernelspecs", {"token": TOKEN})
        started.append(mixer.start())
        yield mixer, url, f"http://127.0.0.1:{flood_port}"
    finally:
        for proc in reversed(started):
            proc.stop()


async def test_a_600_mb_answer_does_not_grow_the_mixer_by_its_size(mixer_and_flood) -> None:
    mixer, url, flood = mixer_and_flood
    assert mixer.pid is not None
    headers = {"token": TOKEN}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as http:
        for _ in range(3):  # warm up: listings, a model, a small resource
            for path in ("/api/kernelspecs", "/api/kernelspecs/remote-python3",
                         "/kernelspecs/remote-python3/logo-64x64.png"):
                async with http.get(url + path, headers=headers) as r:
                    assert r.status == 200, (path, await r.text())
        before = peak_rss(mixer.pid)

        # With a Content-Length: refused before any of it is read.
        async with http.get(url + "/kernelspecs/remote-huge/big.png", headers=headers) as r:
            body = await r.json()
            assert r.status == 502 and "'remote'" in body["message"] and "64 MiB" in body["message"]
        # Chunked, a REST answer: read up to the cap, then a 502.
        async with http.get(url + "/api/kernelspecs/remote-huge", headers=headers) as r:
            body = await r.json()
            assert r.status == 502 and "'remote'" in body["message"] and "64 MiB" in body["message"]
        # Chunked, a resource: streamed up to the cap, then the connection is cut.
        received = 0
        with pytest.raises((aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError)):
            async with http.get(url + "/kernelspecs/remote-huge/chunked.png", headers=headers) as r:
                assert r.status == 200
                async for chunk in r.content.iter_any():
                    received += len(chunk)
        assert received <= CAP

        grown = peak_rss(mixer.pid) - before
        assert grown < BODY // 3, f"the mixer's peak RSS grew by {grown >> 20} MiB"
        print(f"peak RSS before {before >> 20} MiB, grown by {grown >> 20} MiB")
        async with http.get(flood + "/_fake/stats") as r:
            stats = await r.json()
        assert stats["closed"] == 3  # every huge answer was cut short by the mixer
        assert all(sent < CAP + 32 * 1024 * 1024 for sent in stats["sent"]), stats
        # the mixer keeps serving
        async with http.get(url + "/api/kernelspecs", headers=headers) as r:
            specs = await r.json()
            assert r.status == 200 and "remote-python3" in specs["kernelspecs"]
