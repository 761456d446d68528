#!/usr/bin/env python3
"""Benchmark the mixer against direct access (issues 3 and 12).

    python bench/run.py            # full run, a few minutes
    python bench/run.py --quick    # short run, under 2 minutes
    python bench/run.py --json out.json --mixer-cmd 'go={python} -m other --port {port} ...'

Everything runs on loopback: fake Jupyter-API backends (``python -m tests.fakes``), a
real jupyter_server with ipykernel, and the mixer under test. This process is the load
generator (one asyncio loop, aiohttp client, uvloop when available); every server is a
separate process. Each configuration (direct, mixer→local, mixer→remote) runs in
interleaved rounds (A B C, C B A, ...) so drift hits all alike; the tables show the
median over rounds and its ratio to direct from the same run, with the range of the
per-round ratios in brackets.

Mixer command templates (``--mixer-cmd [LABEL=]TEMPLATE``, repeatable) may use
{python} {port} {jupyter_port} {remote_port} {remote_url} {token}; the default is
the notebook_kernels_mixer package. A stand-in ``gcloud`` first on the mixer's PATH
prints a token valid for an hour and counts its runs.

Modules: ``procs`` (processes, /proc meters), ``driver`` (fakes, mixers, targets,
interleaved rounds), ``load`` (what the client does), ``scenarios*`` (the sections),
``report`` and ``render`` (the tables and targets).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import shutil
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import datetime, timezone
from pathlib import Path

# Run as a script: import the bench package and tests.fakes from the repository root,
# not this folder's modules as top-level names.
ROOT = str(Path(__file__).resolve().parent.parent)
if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path[0] = ROOT
elif ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import aiohttp  # noqa: E402

from bench import front, scale, scenarios, scenarios_rest, switch  # noqa: E402
from bench.driver import Bench  # noqa: E402
from bench.procs import system_cpu  # noqa: E402
from bench.render import render  # noqa: E402
from bench.report import spy_summary  # noqa: E402

SECTIONS: dict[str, Callable[[Bench], Awaitable[dict]]] = {
    "ws": scenarios.section_ws,
    "kernel": scenarios.section_kernel,
    "rest": scenarios_rest.section_rest,
    "front": front.section_front,
    "switch": switch.section_switch,  # issue 18; only when asked (--sections switch)
    "scale": scale.section_scale,  # issue 20; only when asked (--sections scale)
}
DEFAULT_SECTIONS = "ws,kernel,rest,front"


async def run_sections(bench: Bench) -> dict:
    """Every wanted section in order; a broken one is recorded and the rest still run."""
    started = time.monotonic()
    bench.http = bench.session()
    try:
        wanted = bench.args.sections.split(",")
        for name, section in SECTIONS.items():
            if name not in wanted:
                continue
            try:
                bench.results[name] = await section(bench)
            except Exception as exc:  # one broken section must not lose the others
                bench.log(f"section {name} failed: {type(exc).__name__}: {exc}")
                bench.results[name + "_error"] = f"{type(exc).__name__}: {exc}"[:2000]
                bench.procs.stop_all()
    finally:
        await bench.http.close()
    bench.results["duration_s"] = round(time.monotonic() - started, 1)
    return bench.results


def machine() -> str:
    model = "?"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    total = "?"
    with contextlib.suppress(OSError), open("/proc/meminfo") as f:
        total = f"{int(f.readline().split()[1]) / 1024 / 1024:.0f} GiB"
    return (
        f"{model}, {os.cpu_count()} CPUs, {total} RAM, Linux {platform.release()}, "
        f"Python {platform.python_version()}, aiohttp {aiohttp.__version__}"
    )


async def wait_quiet(limit: float) -> float:
    """Wait (at most ``limit`` s) for 2 s in which the machine is < 25% busy; return
    the busy % of the last window."""
    deadline = time.monotonic() + limit
    while True:
        b0, _ = system_cpu()
        await asyncio.sleep(2)
        busy = 100 * (system_cpu()[0] - b0) / 2
        if busy < 25 or time.monotonic() >= deadline:
            return busy
        print(f"waiting for a quiet machine: {busy:.0f}% of a CPU busy", file=sys.stderr)


def describe(bench: Bench) -> dict:
    loop_kind = type(asyncio.get_running_loop()).__module__.split(".")[0]
    return {
        "profile": bench.profile.name,
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
        "loadavg": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "setup": (
            f"load generator = this process (pid {os.getpid()}, one {loop_kind} event loop, "
            "aiohttp client, frames sent pre-encoded, text not decoded); every server is a "
            "separate process; no CPU pinning; configurations interleaved per round"
        ),
        "mixers": bench.mixers,
        "params": bench.profile.__dict__,
        "log_dir": str(bench.out_dir),
    }


async def amain(args: argparse.Namespace) -> int:
    if args.wait_quiet:
        await wait_quiet(args.wait_quiet)
    bench = Bench(args)
    meta = describe(bench)
    try:
        results = await run_sections(bench)
    finally:
        bench.procs.stop_all()
        shutil.rmtree(bench.tmp, ignore_errors=True)
    meta["instances"] = bench.instances
    text, targets = render(results, meta)
    print(text, flush=True)
    for label, path in bench.profiles:
        print(spy_summary(label, path), flush=True)
    doc = {"meta": meta, "results": results, "targets": targets, "table": text}
    for path in {bench.out_dir / "result.json", *([Path(args.json)] if args.json else [])}:
        path.write_text(json.dumps(doc, indent=1, default=str))
    (bench.out_dir / "table.txt").write_text(text + "\n")
    print(f"\nlogs and JSON: {bench.out_dir}", file=sys.stderr)
    return 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short run (under 2 minutes)")
    parser.add_argument("--json", help="also write the results as JSON here")
    parser.add_argument(
        "--mixer-cmd",
        action="append",
        metavar="[LABEL=]TEMPLATE",
        help="mixer command line to benchmark (repeatable; 'default' = this package)",
    )
    parser.add_argument("--direct-only", action="store_true", help="no mixer: check the harness")
    parser.add_argument("--sections", default=DEFAULT_SECTIONS,
                        help=f"subset of {','.join(SECTIONS)} (default {DEFAULT_SECTIONS})")
    parser.add_argument("--kernel-pythonpath", metavar="DIR",
                        help="PYTHONPATH of the switch section's kernels (e.g. a folder with numpy)")
    parser.add_argument("--out-dir", help="logs and results (default bench/results/<time>)")
    parser.add_argument("--no-uvloop", action="store_true")
    parser.add_argument(
        "--wait-quiet", type=float, default=0, metavar="S",
        help="first wait up to S seconds for the machine to be idle",
    )
    parser.add_argument(
        "--no-reference", action="store_true", help="leave out the reference relays (splice, nginx, Go)"
    )
    parser.add_argument(
        "--go-original", metavar="DIR", default=os.environ.get("MIXER_GO_ORIGINAL_SRC"),
        help="source of the Go original, a reference relay in section 1 "
        "(default $MIXER_GO_ORIGINAL_SRC; see bench/goorig.py)",
    )
    parser.add_argument(
        "--py-spy", nargs="?", const="py-spy", metavar="PATH",
        help="profile each mixer with py-spy (skews its timings); prints the hot spots",
    )
    args = parser.parse_args(argv)
    if args.py_spy and os.sep not in args.py_spy:
        found = shutil.which(args.py_spy) or shutil.which(args.py_spy, path=str(Path(sys.executable).parent))
        if not found:
            parser.error(f"{args.py_spy} not found (pip install py-spy)")
        args.py_spy = found
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def stop(signum: int, frame: object) -> None:  # SIGTERM: unwind so every process is stopped
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    if not args.no_uvloop:
        try:
            import uvloop
        except ImportError:
            pass
        else:
            return uvloop.run(amain(args))
    return asyncio.run(amain(args))


if __name__ == "__main__":
    sys.exit(main())
