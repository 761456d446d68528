"""Soak test of the mixer (issue 5, item 3): ``python -m tests.soak --duration SECONDS``.

Starts the real topology (a local jupyter_server, a bearer-only jupyter_server standing
in for the remote, the mixer as a subprocess; see ``tests/e2e/support/stack.py``) and,
for the given duration, runs these concurrently against the mixer:

* the workers (``workers.py``): kernel lifecycles and websocket cycles on each backend,
  a notebook session switched back and forth between the backends, merged listings;
* the restarter (``faults.py``): stops the REMOTE jupyter_server at intervals, waits,
  starts it again on the same port (its kernels die with it);
* the churn (``churn.py``): kernels and sessions started and deleted straight on both
  backends, behind the mixer's back;
* the probes (``probes.py``): the mixer's memory and file descriptors, sampled every
  second, the sizes of its maps (``memory`` in ``/mixer/api/status``: known kernels,
  sessions, aliases, …), and the websockets it still relays once the load is over.

Every execute is checked (``client.py``): the reply (``execute_reply``, status ``ok``)
and the output must come back on the connection that sent the request, carrying that
request's number. A request without a reply is *lost*; a reply or output that
belongs to another connection's request, or carries another number, or a kernel
that runs on the other backend, is *misrouted*.

Verdict (``checks.py``; exit status 0 only if all hold; 1 otherwise; 2 if the topology
did not start):

* local: zero lost, zero misrouted, zero failed operations — the local backend is
  the healthy one, the remote's restarts must not touch it. Excepted (and listed)
  are failures that the local jupyter_server caused itself with a 5xx: jupyter_server
  2.21 answers ``GET /api/kernels`` with 500 now and then while a kernel is starting
  (``last_activity`` is still None), and when that coincides with the remote being
  down the mixer rightly answers the merged listing with 503;
* remote: zero misrouted; every failed operation overlaps a down window (from the
  stop until the restarted server answers, plus ``--grace`` seconds), or concerns a
  kernel/session that died with an earlier restart ("stale", reported), or is the
  remote jupyter_server's own 5xx; after each restart remote executes succeed again;
* the work happened: replies on both backends, at least one restart, at least one
  session switch each way;
* maps bounded (issue 10): after the load, each of the mixer's maps is no larger than
  what the backends hold;
* memory flat: the mixer's RSS (``VmRSS`` of ``/proc/PID/status``) at the end of the
  load is at most the baseline plus ``max(--rss-tolerance-mib, --rss-tolerance-pct``
  of the baseline), by default max(4 MiB, 10 %). The baseline is the median RSS over
  the 10 s after a warm-up (``--warmup``, default 20 % of the run, at most 60 s), the
  end value the median of the last 10 s of load; the start (before any load) is
  reported too. Why a tolerance and not zero: see ``probes.py``. Measured on this
  harness (2 cores): 40.6 MiB at start, 41.3 MiB baseline and 41.4 MiB after 300 s,
  ~9,500 executes, ~5,700 websocket cycles and two remote restarts, i.e. noise of a
  few hundred KiB. The tolerance is about ten times that, and still catches a leak
  of ~4 KiB per websocket cycle in the 60 s CI run (~1,000 cycles) and of ~150 bytes
  per cycle in the default 30-minute run; the report gives the growth per 1000
  websocket cycles;
* nothing left behind: once the workers are done the mixer relays no websocket
  (``/mixer/api/status``) and holds at most 16 more file descriptors than before
  the load (idle keep-alive connections to the backends), the backends hold no
  kernel or session the workers did not delete themselves (an orphan), the mixer
  is alive and logged no traceback.

Everything is bounded: each HTTP call and each execute has a timeout, the workers
stop at the deadline, processes are stopped by PID.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import signal
import tempfile
import time
import traceback
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp

from tests.e2e.support.stack import Stack

from .checks import verdict
from .client import MixerClient
from .faults import restart_remote
from .ledger import EXECUTE_TIMEOUT, HTTP_TIMEOUT, Ledger
from .probes import Probe, ProcessProbe, default_probes
from .report import log, print_report, save_report
from .workers import Workers


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m tests.soak", description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=float, default=1800, help="seconds of load (default 1800)")
    p.add_argument(
        "--restart-interval",
        type=float,
        default=None,
        help="seconds between remote restarts (default: 120, or a third of a shorter run)",
    )
    p.add_argument("--down-time", type=float, default=5, help="seconds the remote stays down (default 5)")
    p.add_argument(
        "--grace",
        type=float,
        default=10,
        help="seconds after a restart in which remote failures still count as the window's (default 10)",
    )
    p.add_argument("--kernel-workers", type=int, default=1, help="kernel-lifecycle workers per backend")
    p.add_argument("--socket-workers", type=int, default=1, help="websocket open/close workers per backend")
    p.add_argument("--rounds", type=int, default=3, help="websocket rounds per kernel lifecycle")
    p.add_argument("--executes", type=int, default=5, help="executes per websocket round")
    p.add_argument("--socket-pause", type=float, default=0.05, help="pause between websocket cycles")
    p.add_argument("--warmup", type=float, default=None, help="seconds before the RSS baseline")
    p.add_argument("--rss-tolerance-mib", type=float, default=4.0, help="allowed RSS growth, MiB (default 4)")
    p.add_argument(
        "--rss-tolerance-pct",
        type=float,
        default=10.0,
        help="allowed RSS growth, percent of the baseline, if larger (default 10)",
    )
    p.add_argument("--workdir", type=Path, default=None, help="logs go here (default: a new temporary dir)")
    p.add_argument("--report", type=Path, default=None, help="write the JSON report here too")
    args = p.parse_args(argv)
    if args.duration < 30:
        p.error("--duration must be at least 30 seconds")
    if args.restart_interval is None:
        args.restart_interval = min(120.0, args.duration / 3)
    return args


# -- the load ------------------------------------------------------------------------------------


async def run_load(stack: Stack, args: argparse.Namespace, client: MixerClient, probes: list[Probe]) -> None:
    """Workers and restarts until the deadline, the probes sampled meanwhile."""
    ledger = client.ledger
    workers = [asyncio.create_task(w) for w in Workers(client, args).all()]
    restarter = asyncio.create_task(restart_remote(stack, ledger, args, lambda: write_pids(stack)))
    helpers = [
        asyncio.create_task(_sample(ledger, probes)),
        asyncio.create_task(_progress(ledger, probes, args.duration)),
    ]
    await ledger.pause(ledger.deadline - time.monotonic())
    ledger.stop.set()
    log(f"{ledger.now():.1f}s: stopping the workers")
    await _finish([restarter, *workers], timeout=EXECUTE_TIMEOUT + 2 * HTTP_TIMEOUT)
    await _finish(helpers, timeout=10)
    if not stack.remote.running():  # a restart cut short by a crash of the restarter
        await asyncio.to_thread(stack.remote.start)


async def _sample(ledger: Ledger, probes: list[Probe]) -> None:
    while not ledger.stop.is_set():
        for probe in probes:
            await probe.sample(ledger.now())
        await ledger.pause(1.0)


async def _progress(ledger: Ledger, probes: list[Probe], duration: float) -> None:
    memory = next((p for p in probes if isinstance(p, ProcessProbe)), None)
    while ledger.running():
        await ledger.pause(min(30.0, max(5.0, duration / 6)))
        parts = [f"{b}: {t.execute_replies}/{t.execute_requests} replies" for b, t in ledger.tally.items()]
        rss = memory.latest_rss() if memory else "?"
        failed = len(ledger.failures)
        log(f"{ledger.now():6.1f}s  " + ", ".join(parts) + f", {failed} failed ops, mixer RSS {rss}")


async def _finish(tasks: list[asyncio.Task], timeout: float) -> None:
    done, pending = await asyncio.wait(tasks, timeout=timeout)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    for task in done:
        if task.exception() is not None:
            raise task.exception()  # a bug of the soak itself, not of the mixer


# -- after the load ------------------------------------------------------------------------------


async def delete_everything(stack: Stack, http: aiohttp.ClientSession) -> dict[str, int]:
    """Every session and kernel on both backends, straight at the backends."""
    removed: Counter[str] = Counter()
    for backend, server in (("local", stack.local), ("remote", stack.remote)):
        base, auth = server.url, server.auth()
        for _ in range(10):
            async with http.get(base + "/api/sessions", headers=auth) as r:
                sessions = await r.json()
            async with http.get(base + "/api/kernels", headers=auth) as r:
                kernels = await r.json()
            if not sessions and not kernels:
                break
            for kind, items in (("sessions", sessions), ("kernels", kernels)):
                for item in items:
                    async with http.delete(f"{base}/api/{kind}/{item['id']}", headers=auth):
                        removed[f"{backend} {kind}"] += 1
    return dict(removed)


#: What a kernel that died at start prints, naming the port it could not bind.
KERNEL_PORT_RACE = re.compile(r"zmq\.error\.ZMQError: Address already in use \(addr='tcp://[^']*:(\d+)'\)")


def kernels_failed_to_start(stack: Stack, ledger: Ledger) -> dict[str, list[str]]:
    """Per backend, the kernels its log shows dying at start: the port in each
    "Address already in use" traceback, matched to the kernels started with that port
    (their connection files, read by ``MixerClient.note_ports``)."""
    out = {}
    for name, server in (("local", stack.local), ("remote", stack.remote)):
        ports = {int(p) for p in KERNEL_PORT_RACE.findall(server.process.log_text())}
        out[name] = sorted(ledger.kernels_on_ports(name, ports))
    return out


async def end_state(stack: Stack, http: aiohttp.ClientSession, ledger: Ledger) -> dict[str, Any]:
    """The mixer alive, the orphans deleted, the tracebacks and backend errors logged."""
    mixer_alive = stack.mixer.running()
    cleanup = await delete_everything(stack, http)
    return {
        "mixer_alive": mixer_alive,
        "log_tracebacks": stack.mixer.log_text().count("Traceback (most recent call last)"),
        "backend_uncaught_exceptions": {
            name: server.process.log_text().count("Uncaught exception")
            for name, server in (("local", stack.local), ("remote", stack.remote))
        },
        # jupyter_client picks a kernel's ports before the kernel binds them; under this
        # load another socket of the machine sometimes takes one first, and the kernel
        # dies at start (upstream; the kernel's server waits for it, then fails).
        "kernels_failed_to_start": kernels_failed_to_start(stack, ledger),
        # how many kernels that matching could name (their connection files were read)
        "kernels_with_known_ports": len({k for ks in ledger.kernel_ports.values() for k in ks}),
        "cleanup": cleanup,
    }


async def soak(stack: Stack, args: argparse.Namespace) -> dict[str, Any]:
    timeout = aiohttp.ClientTimeout(total=HTTP_TIMEOUT, sock_connect=10)
    async with aiohttp.ClientSession(
        timeout=timeout, cookie_jar=aiohttp.DummyCookieJar(), trust_env=False
    ) as http:
        pid = stack.mixer.process.pid
        assert pid is not None
        client = MixerClient(stack, http, Ledger(args.duration))
        probes = default_probes(pid, client, args)
        log(
            f"load for {args.duration:.0f}s; remote restarts every {args.restart_interval:.0f}s, "
            f"down {args.down_time:.0f}s; mixer pid {pid}"
        )
        await run_load(stack, args, client, probes)
        sections = [await probe.finish() for probe in probes]
        extra = await end_state(stack, http, client.ledger)
        extra.update(duration=args.duration, workdir=str(stack.workdir))
        return verdict(client.ledger, args, sections, extra)


# -- command line --------------------------------------------------------------------------------


def write_pids(stack: Stack) -> None:
    """PIDs (process-group leaders) of the topology, for a last-resort stop by PID
    if this process is killed (see test_soak.py)."""
    tmp = stack.workdir / "pids.json.tmp"
    tmp.write_text(json.dumps(stack.leader_pids()))
    tmp.replace(stack.workdir / "pids.json")


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="mixer-soak-"))
    workdir.mkdir(parents=True, exist_ok=True)
    # SIGTERM unwinds like Ctrl-C, so that the topology is stopped on the way out
    signal.signal(signal.SIGTERM, _interrupt)
    started = time.monotonic()
    try:
        with Stack(workdir) as stack:
            write_pids(stack)
            log(f"topology up in {time.monotonic() - started:.1f}s (logs in {workdir})")
            report = asyncio.run(soak(stack, args))
    except KeyboardInterrupt:
        log("interrupted; the topology was stopped")
        return 3
    except Exception as exc:  # the topology did not come up, or the soak itself broke
        log(f"soak could not run: {type(exc).__name__}: {exc}\n{traceback.format_exc()}")
        return 2
    report["wall_seconds"] = round(time.monotonic() - started, 1)
    save_report(report, workdir, args.report)
    print_report(report)
    return 0 if report["ok"] else 1
