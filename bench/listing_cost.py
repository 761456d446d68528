"""What one uncached ``GET /api/kernels`` costs the mixer, per kernel (issue 20 item 2).

Starts up to 4 fake backends (``python -m tests.fakes``), gives each N kernels, and for
every (kernels per backend, backends) pair starts a mixer with ``--listing-window 0``
over that many backends, warms it up (the first listing learns the kernels), then
does sequential listings from one client: p50/p90 latency, and the mixer's CPU per
listing and per kernel listed (its process CPU clock, ``bench.procs.cpu_seconds``).
One backend's own listing (direct) is timed alongside for scale. Run from the
repository root::

    .venv/bin/python -m bench.listing_cost                       # 10,100,1000,5000 x 1,4
    .venv/bin/python -m bench.listing_cost --kernels 1000 --backends 4 --py-spy out.txt
    git archive OLD src | tar -x -C /tmp/old     # and then, taking turns with it:
    .venv/bin/python -m bench.listing_cost --compare /tmp/old --rounds 3

Every process started here is stopped by its pid; everything listens on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import aiohttp

from bench.procs import cpu_seconds, system_cpu
from notebook_kernels_mixer.processes import Process, free_port, gateway_headers, port_open

ROOT = Path(__file__).resolve().parent.parent
TOKEN = uuid.uuid4().hex
XSRF = "listingxsrf" + uuid.uuid4().hex[:8]
NAMES = ("local", "b1", "b2", "b3")  # backend names, in configured order


def _env() -> dict[str, str]:
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONPATH": path}


def _ready(port: int) -> bool:
    return port_open(port)


class Run:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.tmp = Path(tempfile.mkdtemp(prefix="listing-cost-"))
        self.fakes: list[tuple[Process, int]] = []
        self.counts = [0] * len(NAMES)

    def start_fakes(self, n: int) -> None:
        for i in range(n):
            port = free_port()
            proc = Process(f"fake-{NAMES[i]}", [sys.executable, "-m", "tests.fakes", "--port",
                                                str(port), "--label", NAMES[i]],
                           log_path=self.tmp / f"fake-{i}.log", env=_env(), cwd=ROOT,
                           ready=lambda p=port: _ready(p), die_with_parent=True)
            self.fakes.append((proc.start(), port))

    async def fill(self, http: aiohttp.ClientSession, n: int) -> None:
        """Each fake holds ``n`` kernels (started directly: the mixer learns them)."""
        async def add(port: int) -> None:
            async with http.post(f"http://127.0.0.1:{port}/api/kernels",
                                 json={"name": "python3"}) as r:
                r.raise_for_status()

        for i, (_, port) in enumerate(self.fakes):
            missing = n - self.counts[i]
            for start in range(0, missing, 100):  # bounded concurrency
                await asyncio.gather(*(add(port) for _ in range(min(100, missing - start))))
            self.counts[i] = max(n, self.counts[i])

    def mixer(self, backends: int, src: str | None = None) -> tuple[Process, int]:
        """A mixer over the first ``backends`` fakes; ``src``: a directory whose
        ``src/notebook_kernels_mixer`` it runs instead of this checkout's."""
        port = free_port()
        lines = []
        for name, (_, fport) in zip(NAMES[1:backends], self.fakes[1:backends], strict=True):
            lines += ["[[backends]]", f'name = "{name}"', f'display_suffix = " ({name})"',
                      f'url = "http://127.0.0.1:{fport}/"', 'auth = "none"',
                      'sessions = "backend"', ""]
        config = self.tmp / f"mixer-{port}.toml"
        config.write_text("\n".join(lines))
        argv = [sys.executable, "-m", "notebook_kernels_mixer", "--port", str(port),
                "--jupyter-port", str(self.fakes[0][1]), "--jupyter-token", TOKEN,
                "--listing-window", "0", "--state-file", str(self.tmp / f"state-{port}.json"),
                "--log-level", "warning"]
        if backends > 1:
            argv += ["--config", str(config)]
        env = {**_env(), "JUPYTER_RUNTIME_DIR": str(self.tmp)}
        if src is not None:
            env["PYTHONPATH"] = os.pathsep.join((str(Path(src) / "src"), env["PYTHONPATH"]))
        if self.args.no_orjson:
            # A directory first on the path whose orjson cannot be imported: the mixer
            # runs as the default install does (stdlib json).
            stub = self.tmp / "no-orjson"
            stub.mkdir(exist_ok=True)
            (stub / "orjson.py").write_text("raise ImportError('orjson left out by the bench')\n")
            env["PYTHONPATH"] = os.pathsep.join((str(stub), env["PYTHONPATH"]))
        proc = Process(f"mixer-{backends}", argv, log_path=self.tmp / f"mixer-{port}.log",
                       env=env, cwd=ROOT, ready=lambda: _ready(port), die_with_parent=True)
        return proc.start(), port

    def stop(self) -> None:
        for proc, _ in self.fakes:
            proc.stop()
        self.fakes.clear()


async def timed(http: aiohttp.ClientSession, url: str, headers: dict[str, str], n: int,
                expect: int, pid: int | None, backends: list[int]) -> dict[str, float]:
    """``n`` sequential GETs of ``url``: latencies, and the CPU of ``pid`` over them
    (and of the ``backends``' pids, to tell what else used the machine meanwhile)."""
    lat = []
    busy0, _ = system_cpu()
    c0 = cpu_seconds(pid) if pid else 0.0
    b0 = sum(cpu_seconds(b) for b in backends)
    me0 = time.process_time()
    t0 = time.perf_counter()
    for _ in range(n):
        s = time.perf_counter()
        async with http.get(url, headers=headers) as r:
            body = await r.read()
        lat.append(time.perf_counter() - s)
        if r.status != 200:
            raise SystemExit(f"GET {url}: HTTP {r.status}: {body[:200]!r}")
    wall = time.perf_counter() - t0
    cpu = (cpu_seconds(pid) - c0) if pid else 0.0
    backend_cpu = sum(cpu_seconds(b) for b in backends) - b0
    other = (system_cpu()[0] - busy0) - cpu - backend_cpu - (time.process_time() - me0)
    got = len(json.loads(body))
    if got != expect:
        raise SystemExit(f"GET {url}: {got} kernels listed, {expect} expected")
    lat.sort()
    return {
        "p50_ms": 1e3 * statistics.median(lat),
        "p90_ms": 1e3 * lat[int(0.9 * (len(lat) - 1))],
        "cpu_ms": 1e3 * cpu / n,
        "us_per_kernel": 1e6 * cpu / n / max(1, expect),
        "other_cpu_pct": max(0.0, 100 * other / wall),
    }


async def measure(run: Run, http: aiohttp.ClientSession, n: int, backends: int,
                  variant: tuple[str, str | None], listings: int) -> dict[str, float]:
    """One mixer of ``variant`` over ``backends`` fakes: warmed up, then timed."""
    mixer, port = run.mixer(backends, variant[1])
    spy: Process | None = None
    try:
        url = f"http://127.0.0.1:{port}/api/kernels"
        headers = gateway_headers(TOKEN, XSRF)
        pids = [p.pid for p, _ in run.fakes[:backends] if p.pid]
        await timed(http, url, headers, 5, n * backends, None, [])  # learn, warm up
        if run.args.py_spy:
            out = f"{run.args.py_spy}.{variant[0]}.{n}x{backends}"
            spy = Process("py-spy", [run.args.py_spy_bin, "record", "--pid", str(mixer.pid),
                                     "--rate", "500", "--nonblocking", "--format", "raw",
                                     "-o", out], log_path=run.tmp / "spy.log")
            spy.start(wait=False)
            await asyncio.sleep(1.0)  # let it attach
        return await timed(http, url, headers, listings, n * backends, mixer.pid, pids)
    finally:
        if spy is not None:
            spy.stop(timeout=30, sig=signal.SIGINT)
        mixer.stop()


async def main(args: argparse.Namespace) -> list[dict]:
    run = Run(args)
    out: list[dict] = []
    variants: list[tuple[str, str | None]] = [] if args.only_compare else [("this", None)]
    variants += [(Path(src).name or src, src) for src in args.compare]
    try:
        run.start_fakes(max(args.backends))
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as http:
            for n in args.kernels:
                await run.fill(http, n)
                listings = args.listings or max(20, min(300, 400_000 // (n * max(args.backends))))
                direct_url = f"http://127.0.0.1:{run.fakes[0][1]}/api/kernels"
                for backends in args.backends:
                    rounds: dict[str, list[dict[str, float]]] = {v[0]: [] for v in variants}
                    direct = []
                    for _ in range(args.rounds):  # variants interleaved: same conditions
                        direct.append(await timed(http, direct_url, {}, listings, n,
                                                  run.fakes[0][0].pid, []))
                        for variant in variants:
                            rounds[variant[0]].append(
                                await measure(run, http, n, backends, variant, listings))
                    for label, results in rounds.items():
                        res = {k: statistics.median(r[k] for r in results) for k in results[0]}
                        row = {"variant": label, "kernels_per_backend": n, "backends": backends,
                               "listings": listings, "rounds": args.rounds,
                               "direct_p50_ms": statistics.median(d["p50_ms"] for d in direct),
                               "direct_us_per_kernel": statistics.median(
                                   d["us_per_kernel"] for d in direct), **res}
                        out.append(row)
                        print(f"{label:>8} {n:>5} x {backends}  p50 {res['p50_ms']:7.2f} ms  p90 "
                              f"{res['p90_ms']:7.2f} ms  mixer CPU {res['cpu_ms']:7.2f} ms/listing"
                              f" {res['us_per_kernel']:5.2f} us/kernel  (direct, 1 backend: p50 "
                              f"{row['direct_p50_ms']:.2f} ms, {row['direct_us_per_kernel']:.2f}"
                              f" us/kernel; other CPU {res['other_cpu_pct']:.0f}%)", flush=True)
    finally:
        run.stop()
        shutil.rmtree(run.tmp, ignore_errors=True)
    return out


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    ints = lambda s: [int(x) for x in s.split(",")]  # noqa: E731
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--kernels", type=ints, default=[10, 100, 1000, 5000],
                   help="kernels per backend, comma-separated")
    p.add_argument("--backends", type=ints, default=[1, 4], help="backend counts (at most 4)")
    p.add_argument("--listings", type=int, default=0, help="timed listings (0: by size)")
    p.add_argument("--no-orjson", action="store_true",
                   help="the mixer without orjson (stdlib json, the default install)")
    p.add_argument("--rounds", type=int, default=1,
                   help="rounds per case (medians; the variants take turns)")
    p.add_argument("--compare", action="append", default=[], metavar="DIR",
                   help="also a mixer from DIR/src (e.g. an older commit's `git archive`),"
                        " interleaved with this one")
    p.add_argument("--only-compare", action="store_true",
                   help="only the --compare directories, not this checkout")
    p.add_argument("--py-spy", metavar="FILE",
                   help="profile the timed part (raw py-spy output: FILE.VARIANT.NxB)")
    p.add_argument("--json", metavar="FILE", help="write the rows as JSON")
    args = p.parse_args(argv)
    if args.only_compare and not args.compare:
        p.error("--only-compare needs --compare")
    if max(args.backends) > len(NAMES) or min(args.backends) < 1:
        p.error(f"--backends: 1 to {len(NAMES)}")
    args.py_spy_bin = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    return args


def slopes(rows: list[dict]) -> list[dict]:
    """Per variant and backend count, the least-squares line of the mixer's CPU per
    listing over the kernels listed: its slope is the CPU per kernel (the fixed cost of
    a listing left out), its intercept the fixed cost."""
    out = []
    for key in sorted({(r["variant"], r["backends"]) for r in rows}):
        pts = [(r["kernels_per_backend"] * r["backends"], r["cpu_ms"]) for r in rows
               if (r["variant"], r["backends"]) == key]
        if len(pts) < 2:
            continue
        mx = statistics.fmean(x for x, _ in pts)
        my = statistics.fmean(y for _, y in pts)
        slope = sum((x - mx) * (y - my) for x, y in pts) / sum((x - mx) ** 2 for x, _ in pts)
        out.append({"variant": key[0], "backends": key[1], "us_per_kernel": 1e3 * slope,
                    "fixed_ms": my - slope * mx})
        print(f"{key[0]:>8} {key[1]} backend(s): mixer CPU per listing = {my - slope * mx:.2f} ms"
              f" + {1e3 * slope:.2f} us x kernels listed (least squares over "
              f"{', '.join(str(x) for x, _ in pts)} kernels)")
    return out


if __name__ == "__main__":
    ns = parse()
    rows = asyncio.run(main(ns))
    rows += slopes(rows)
    if ns.json:
        Path(ns.json).write_text(json.dumps(rows, indent=1))
