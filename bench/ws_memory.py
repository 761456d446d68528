"""Where an open kernel websocket's memory goes in the mixer (issue 20: RSS per idle
websocket).

Starts a fake backend (``python -m tests.fakes``) and a mixer whose Python allocations
are traced (``tracemalloc``, started before the package is imported), opens N kernel
websockets through it (one round trip each, then idle), and compares a snapshot taken
before with one taken after: the mixer's RSS per websocket, the Python allocations
per websocket, and the source lines that hold them. Run from the repository root::

    .venv/bin/python -m bench.ws_memory               # 2,000 websockets
    .venv/bin/python -m bench.ws_memory --websockets 500 --top 20

Tracing slows the mixer and adds its own bookkeeping to the RSS: the per-websocket RSS
figure of record is the scale section's (``python -m bench.scale``); this tool says
what makes it up. Every process is stopped by its pid; everything is on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import signal
import sys
import tempfile
import tracemalloc
import uuid
from pathlib import Path

import aiohttp

from bench.procs import status_kb
from notebook_kernels_mixer.processes import Process, free_port, port_open

ROOT = Path(__file__).resolve().parent.parent
TOKEN = uuid.uuid4().hex

#: Runs in the mixer's process: tracing first, a snapshot to the file named by the
#: environment on each SIGUSR1, then the mixer's own entry point.
TRACED_MIXER = """
import os, signal, sys, tracemalloc
tracemalloc.start(1)
taken = []
def snapshot(*_):
    taken.append(1)
    tracemalloc.take_snapshot().dump(os.environ["WS_MEMORY_SNAPSHOT"] + str(len(taken)))
signal.signal(signal.SIGUSR1, snapshot)
from notebook_kernels_mixer.cli import main
sys.exit(main())
"""


def _env(tmp: Path) -> dict[str, str]:
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONPATH": path, "JUPYTER_RUNTIME_DIR": str(tmp),
            "WS_MEMORY_SNAPSHOT": str(tmp / "snapshot-")}


async def snapshot(proc: Process, path: Path, timeout: float = 60.0) -> tracemalloc.Snapshot:
    """Ask the mixer for a snapshot and wait until its file is complete."""
    assert proc.pid is not None
    os.kill(proc.pid, signal.SIGUSR1)
    for _ in range(int(timeout / 0.2)):
        await asyncio.sleep(0.2)
        try:
            return tracemalloc.Snapshot.load(str(path))
        except (FileNotFoundError, EOFError, ValueError):
            continue  # not written yet, or still being written
    raise RuntimeError(f"the mixer wrote no snapshot to {path} within {timeout} s")


async def measure(args: argparse.Namespace, tmp: Path) -> None:
    fake_port, mixer_port = free_port(), free_port()
    env = _env(tmp)
    fake = Process("fake", [sys.executable, "-m", "tests.fakes", "--port", str(fake_port)],
                   log_path=tmp / "fake.log", env=env, cwd=ROOT,
                   ready=lambda: port_open(fake_port), die_with_parent=True)
    mixer = Process("mixer", [sys.executable, "-c", TRACED_MIXER, "--port", str(mixer_port),
                              "--jupyter-port", str(fake_port), "--jupyter-token", TOKEN,
                              "--state-file", ":memory:", "--log-level", "warning"],
                    log_path=tmp / "mixer.log", env=env, cwd=ROOT,
                    ready=lambda: port_open(mixer_port), die_with_parent=True)
    fake.start()
    mixer.start()
    try:
        headers = {"Authorization": f"token {TOKEN}"}
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
            async with http.post(f"http://127.0.0.1:{fake_port}/api/kernels",
                                 json={"name": "python3"}) as r:
                kernel = (await r.json())["id"]
            async with http.get(f"http://127.0.0.1:{mixer_port}/api/kernels", headers=headers) as r:
                r.raise_for_status()  # the mixer learns the kernel
            url = f"ws://127.0.0.1:{mixer_port}/api/kernels/{kernel}/channels"

            async def open_one() -> aiohttp.ClientWebSocketResponse:
                ws = await http.ws_connect(f"{url}?session_id={uuid.uuid4().hex}", headers=headers)
                await ws.send_str("x")
                await ws.receive(timeout=30)
                return ws

            warm = [await open_one() for _ in range(20)]  # pools and caches filled first
            assert mixer.pid is not None
            before_rss = status_kb(mixer.pid, "VmRSS")
            before = await snapshot(mixer, tmp / "snapshot-1")
            sockets = []
            for start in range(0, args.websockets, 100):
                count = min(100, args.websockets - start)
                sockets += await asyncio.gather(*(open_one() for _ in range(count)))
            await asyncio.sleep(1.0)
            after_rss = status_kb(mixer.pid, "VmRSS")
            after = await snapshot(mixer, tmp / "snapshot-2")
            report(args, before, after, after_rss - before_rss)
            await asyncio.gather(*(ws.close() for ws in sockets + warm))
    finally:
        mixer.stop()
        fake.stop()


def report(args: argparse.Namespace, before: tracemalloc.Snapshot, after: tracemalloc.Snapshot,
           rss_kib: int) -> None:
    n = args.websockets
    by_file = after.compare_to(before, "filename")
    total = sum(s.size_diff for s in by_file)
    print(f"{n} idle kernel websockets through one mixer (traced; tracing adds its own memory):")
    print(f"  mixer RSS: +{rss_kib / n:.1f} KiB per websocket;"
          f" Python allocations: +{total / 1024 / n:.1f} KiB per websocket")
    print("  by module (KiB and objects per websocket):")
    for stat in by_file[: args.top]:
        name = stat.traceback[0].filename.split("site-packages/")[-1].replace(str(ROOT) + "/", "")
        print(f"    {stat.size_diff / 1024 / n:6.2f} KiB {stat.count_diff / n:6.1f}  {name}")
    print("  by line:")
    for stat in after.compare_to(before, "lineno")[: args.top]:
        frame = stat.traceback[0]
        name = frame.filename.split("site-packages/")[-1].replace(str(ROOT) + "/", "")
        print(f"    {stat.size_diff / 1024 / n:6.2f} KiB {stat.count_diff / n:6.1f}  {name}:{frame.lineno}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--websockets", type=int, default=2000)
    parser.add_argument("--top", type=int, default=12, help="rows per table")
    args = parser.parse_args(argv)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = 2 * args.websockets + 256
    if soft < need:  # the servers inherit it
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(need, hard), hard))
    with tempfile.TemporaryDirectory(prefix="ws-memory-") as tmp:
        asyncio.run(measure(args, Path(tmp)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
