"""A Jupyter-API fake whose spec ``huge`` answers far more than anyone should read.

Its kernelspec model (``GET /api/kernelspecs/huge``) is sent chunked; its resources
with a Content-Length (``/kernelspecs/huge/big.png``) or chunked (``chunked.png``).
The body is made as it is sent, so the fake holds none of it. ``sent`` has, for each
answer, the bytes its writes handed to the socket before it ended; ``closed`` counts
the answers the reader cut short. Everything else is ``FakeJupyter``'s.

In the tests' loop (``tests/unit/test_base.py``), or as a process for a real mixer
(``python -m tests.flood --port P --size BYTES``; ``GET /_fake/stats`` then has
``sent`` and ``closed``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal

from aiohttp import web

from tests.fakes import FakeJupyter

CHUNK = b"x" * 65536


class Flood(FakeJupyter):
    def __init__(self, name: str, size: int) -> None:
        super().__init__(name, specs=("python3", "huge"), record=False)
        self.size = size
        self.sent: list[int] = []
        self.closed = 0

    async def _flood(self, request: web.Request, *, length: bool,
                     content_type: str) -> web.StreamResponse:
        answer = web.StreamResponse(headers={"Content-Type": content_type})
        if length:
            answer.content_length = self.size
        await answer.prepare(request)
        sent = 0
        try:
            while sent < self.size:  # bounded: size / 64 KiB writes
                chunk = CHUNK[: self.size - sent]
                await answer.write(chunk)
                sent += len(chunk)
            await answer.write_eof()
        except (ConnectionError, RuntimeError):
            self.closed += 1
        finally:
            self.sent.append(sent)
        return answer

    async def kernelspec(self, request: web.Request) -> web.StreamResponse:
        if request.match_info["name"] != "huge":
            return await super().kernelspec(request)
        return await self._flood(request, length=False, content_type="application/json")

    async def resource(self, request: web.Request) -> web.StreamResponse:
        if request.match_info["name"] != "huge":
            return await super().resource(request)
        chunked = request.match_info["res"].startswith("chunked")
        return await self._flood(request, length=not chunked, content_type="image/png")

    async def get_stats(self, request: web.Request) -> web.Response:
        return web.json_response({"sent": self.sent, "closed": self.closed})


async def _serve(port: int, size: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    server = await Flood("flood", size).start(port, ("127.0.0.1",))
    print(f"flood: {size} bytes per huge answer on port {server.port}", flush=True)
    await stop.wait()
    with contextlib.suppress(Exception):
        await asyncio.wait_for(server.stop(), 3)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="A Jupyter-API fake with huge answers.")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--size", type=int, required=True, help="bytes of each huge answer")
    args = parser.parse_args(argv)
    asyncio.run(_serve(args.port, args.size))


if __name__ == "__main__":
    main()
