"""Reference relay for the benchmark: a byte-for-byte TCP forwarder (asyncio Protocols,
uvloop when available), with no HTTP or websocket parsing at all.

It is not a mixer: it forwards every connection to one backend. The benchmark puts it
in front of the fast fake backend to show the floor for any relay written in Python on
this machine: what an upgraded connection spliced byte for byte (as Go's reverse proxy
and nginx do) costs, against a relay that parses and re-frames every message.

    python bench/splice_proxy.py --port 9200 --to 9100
"""

from __future__ import annotations

import argparse
import asyncio
import signal


class Pipe(asyncio.Protocol):
    """One side of a spliced pair; writes what it reads to its peer, with back-pressure."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.peer: Pipe | None = None
        self.pending: list[bytes] = []
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def link(self, peer: Pipe) -> None:
        self.peer = peer
        if self.pending:
            peer.transport.writelines(self.pending)  # type: ignore[union-attr]
            self.pending = []
        if self.closed:
            peer.transport.close()  # type: ignore[union-attr]

    def data_received(self, data: bytes) -> None:
        if self.peer is None:
            self.pending.append(data)
        else:
            self.peer.transport.write(data)  # type: ignore[union-attr]

    def eof_received(self) -> bool:
        if self.peer is not None and self.peer.transport.can_write_eof():  # type: ignore[union-attr]
            self.peer.transport.write_eof()  # type: ignore[union-attr]
            return True
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.peer is not None:
            self.peer.transport.close()  # type: ignore[union-attr]

    def pause_writing(self) -> None:
        if self.peer is not None:
            self.peer.transport.pause_reading()  # type: ignore[union-attr]

    def resume_writing(self) -> None:
        if self.peer is not None:
            self.peer.transport.resume_reading()  # type: ignore[union-attr]


async def serve(port: int, to_host: str, to_port: int) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    tasks: set[asyncio.Task] = set()

    async def connect(client: Pipe) -> None:
        try:
            _, backend = await loop.create_connection(Pipe, to_host, to_port)
        except OSError:
            client.transport.close()  # type: ignore[union-attr]
            return
        backend.link(client)
        client.link(backend)

    def accept() -> Pipe:
        client = Pipe()
        task = loop.create_task(connect(client))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        return client

    server = await loop.create_server(accept, "127.0.0.1", port, backlog=4096)
    await stop.wait()
    server.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--to", type=int, required=True, help="backend port on 127.0.0.1")
    parser.add_argument("--no-uvloop", action="store_true")
    args = parser.parse_args()
    coro = serve(args.port, "127.0.0.1", args.to)
    if not args.no_uvloop:
        try:
            import uvloop
        except ImportError:
            pass
        else:
            uvloop.run(coro)
            return
    asyncio.run(coro)


if __name__ == "__main__":
    main()
