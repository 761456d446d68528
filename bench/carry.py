"""Benchmark of the carry engine (``notebook_kernels_mixer.carry``) on loopback.

Two jupyter_servers ("local" and "remote", each with a token) and ipykernels on them;
the engine runs in a child process standing in for the mixer, so that its memory is
its own. Figures: the time of a carry of an empty namespace (what the carry adds to
a switch), of 100 MB of bytes values and of 100 MB of numpy arrays (when the kernels
can import numpy), and the child's peak RSS growth over its idle RSS during a 100 MB
carry (VmHWM after, VmRSS before, the peak reset with /proc/self/clear_refs)::

    .venv/bin/python -m bench.carry                      # 3 rounds of each
    .venv/bin/python -m bench.carry --rounds 5 --mb 100
    .venv/bin/python -m bench.carry --kernel-pythonpath /tmp/np   # numpy from there

(numpy need not be in the environment: ``pip install --target DIR numpy`` and
``--kernel-pythonpath DIR`` give it to the kernels only.)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
from tests.e2e.support.api import ApiClient
from tests.e2e.support.kernel_client import KernelConnection
from tests.e2e.support.topology import JupyterServer, jupyter_server

from notebook_kernels_mixer.backends import build_backend
from notebook_kernels_mixer.carry import CHUNK_SIZE, OK, WINDOW, carry_namespace
from notebook_kernels_mixer.config import BackendConfig

ROOT = Path(__file__).resolve().parent.parent


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return True


# -- the child: the engine, as the mixer runs it ----------------------------------------------


async def _child(plan: dict[str, Any]) -> dict[str, Any]:
    backends = {}
    for name, place in plan["places"].items():
        backend = build_backend(BackendConfig(name=name, display_suffix="", url=place["url"],
                                              auth="token", token=place["token"]))
        await backend.start()
        backends[name] = backend
    out: dict[str, Any] = {}
    try:
        for scenario in plan["scenarios"]:
            src_place, src_kernel = scenario["source"]
            rounds = []
            for dst_place, dst_kernel in scenario["targets"]:
                rss = _status_kb("VmRSS")
                reset = _reset_peak()
                started = time.perf_counter()
                report = await carry_namespace(backends[src_place], src_kernel, backends[dst_place],
                                               dst_kernel, budget=120, cap=1 << 30,
                                               chunk_size=plan["chunk"], window=plan["window"])
                seconds = time.perf_counter() - started
                hwm = _status_kb("VmHWM")
                rounds.append({
                    "seconds": seconds, "outcome": report.outcome, "bytes": report.bytes,
                    "carried": len(report.carried), "rss_before_mb": rss / 1024,
                    "peak_growth_mb": (hwm - rss) / 1024 if reset else None,
                })  # fmt: skip
            out[scenario["name"]] = rounds
    finally:
        for backend in backends.values():
            await backend.close()
    return out


# -- the parent: servers, kernels, namespaces -------------------------------------------------


async def _run_cell(http: aiohttp.ClientSession, api: ApiClient, kernel_id: str, code: str) -> str:
    conn = await KernelConnection.open(http, api.ws_url(f"/api/kernels/{kernel_id}/channels"),
                                       headers=api.auth(), timeout=120)
    async with conn:
        result = await conn.execute(code, timeout=300)
    if result.status != "ok":
        raise RuntimeError(f"cell failed: {result}")
    return result.stdout


async def _prepare(servers: dict[str, JupyterServer], tokens: dict[str, str], args: argparse.Namespace
                   ) -> dict[str, Any]:
    async with aiohttp.ClientSession(trust_env=False) as http:
        apis = {n: ApiClient(http, s.url, auth=s.auth, name=n) for n, s in servers.items()}

        async def kernel(place: str) -> str:
            return (await apis[place].start_kernel("python3"))["id"]

        n = 10
        each = args.mb * 1024 * 1024 // n
        sources = {
            "empty": "",
            f"{args.mb} MB bytes": "import os\n" + "\n".join(f"b{i} = os.urandom({each})" for i in range(n)),
            f"{args.mb} MB numpy": "import numpy as np\nrng = np.random.default_rng(0)\n" + "\n".join(
                f"a{i} = rng.random({each // 8})" for i in range(n)) + "\ndel rng",
        }
        scenarios = []
        for name, cell in sources.items():
            src = await kernel("local")
            if "numpy" in name:
                has = await _run_cell(http, apis["local"], src, "import importlib.util as u; "
                                      "print(u.find_spec('numpy') is not None)")
                if has.strip() != "True":
                    print(f"({name}: numpy is not importable in the kernels; see --kernel-pythonpath)")
                    continue
            if cell:
                await _run_cell(http, apis["local"], src, cell)
            # warm-up round first (not counted), then the measured ones
            targets = [("remote", await kernel("remote")) for _ in range(args.rounds + 1)]
            scenarios.append({"name": name, "source": ("local", src), "targets": targets})
        return {
            "places": {n: {"url": s.url, "token": tokens[n]} for n, s in servers.items()},
            "scenarios": scenarios,
            "chunk": int(args.chunk_mib * 1024 * 1024),
            "window": args.window,
        }


def _report(results: dict[str, Any]) -> None:
    print(f"{'carry local → remote':<22} {'median s':>9} {'min s':>7} {'max s':>7} "
          f"{'peak RSS growth MB':>19} {'MB/s':>7}  outcome")
    for name, rounds in results.items():
        measured = rounds[1:]  # the first round warms up
        secs = [r["seconds"] for r in measured]
        growth = [r["peak_growth_mb"] for r in measured if r["peak_growth_mb"] is not None]
        mb = measured[0]["bytes"] / 1e6
        rate = f"{mb / statistics.median(secs):7.0f}" if mb else f"{'-':>7}"
        outcomes = sorted({r["outcome"] for r in measured})
        print(f"{name:<22} {statistics.median(secs):9.3f} {min(secs):7.3f} {max(secs):7.3f} "
              f"{(max(growth) if growth else float('nan')):19.1f} {rate}  {','.join(outcomes)}"
              f" ({measured[0]['carried']} values, {mb:.0f} MB)")
        bad = [r for r in measured if r["outcome"] != OK]
        if bad:
            print(f"  WARNING: {len(bad)} round(s) did not end ok: {bad}")
    idle = [r["rss_before_mb"] for rounds in results.values() for r in rounds]
    print(f"engine process RSS before the carries: {min(idle):.0f}–{max(idle):.0f} MB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--mb", type=int, default=100)
    parser.add_argument("--chunk-mib", type=float, default=CHUNK_SIZE / (1 << 20))
    parser.add_argument("--window", type=int, default=WINDOW)
    parser.add_argument("--kernel-pythonpath", default=None,
                        help="PYTHONPATH of the kernels (e.g. a pip --target folder with numpy)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        plan = json.loads(Path(args.child).read_text())
        print(json.dumps(asyncio.run(_child(plan))))
        return
    with tempfile.TemporaryDirectory(prefix="bench-carry-") as tmp:
        workdir = Path(tmp)
        tokens = {n: uuid.uuid4().hex for n in ("local", "remote")}
        extra = {"PYTHONPATH": args.kernel_pythonpath} if args.kernel_pythonpath else None
        servers = {n: jupyter_server(n, workdir, where=n, token=tokens[n], extra_env=extra) for n in tokens}
        try:
            for server in servers.values():
                server.start(wait=False)
            for server in servers.values():
                server.wait_ready()
            plan = asyncio.run(_prepare(servers, tokens, args))
            plan_file = workdir / "plan.json"
            plan_file.write_text(json.dumps(plan))
            child = subprocess.run([sys.executable, "-m", "bench.carry", "--child", str(plan_file)],
                                   cwd=ROOT, capture_output=True, text=True, timeout=1800, check=False)
            if child.returncode != 0:
                raise SystemExit(f"the engine's process failed:\n{child.stderr[-3000:]}")
            _report(json.loads(child.stdout.strip().splitlines()[-1]))
        finally:
            for server in servers.values():
                server.stop()


if __name__ == "__main__":
    main()
