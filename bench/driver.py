"""The benchmark's driver: what runs (fake backends, mixers, jupyter_server), what a
client talks to (targets), how a test is metered, and the interleaved rounds.

A scenario (``bench/scenarios*.py``) starts processes through a ``Bench``, builds
``Target``s and hands a load function (``bench/load.py``) to ``Bench.rounds``, which
runs it for every target in alternating order (A B C, C B A, …) so that drift hits all
alike, and attaches the CPU ``Meter`` readings to each round's figures.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import contextlib
import json
import os
import shlex
import signal
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import aiohttp
from tests.e2e.support.fake_gcloud import FakeGcloud

from bench.procs import Procs, reset_peak, system_cpu, tree_cpu, tree_peak_mb
from notebook_kernels_mixer.processes import Process, free_port, gateway_headers

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
TOKEN = uuid.uuid4().hex
XSRF = "benchxsrf" + uuid.uuid4().hex[:8]
DEFAULT_MIXER = (
    "{python} -m notebook_kernels_mixer --port {port} --jupyter-port {jupyter_port}"
    " --jupyter-token {token} --remote-url {remote_url} --context_request_timeout 10s"
)


@dataclass(frozen=True)
class Profile:
    """How much of each test a run does (``--quick`` or full)."""

    name: str
    ws_rounds: int
    rtt_n: int
    pipe_n: int
    bulk_n: int
    many_rounds: int
    kernel_rounds: int
    exec_n: int
    big_mb: int
    rest_rounds: int
    rest_fast_n: int
    rest_slow_n: int
    later_s: float
    recover_cap_s: float
    poll_total: int
    conns: int = 200
    conn_rts: int = 50
    pipe_window: int = 64
    bulk_window: int = 4


QUICK = Profile(
    "quick", ws_rounds=3, rtt_n=300, pipe_n=6000, bulk_n=32, many_rounds=2, kernel_rounds=2,
    exec_n=60, big_mb=20, rest_rounds=3, rest_fast_n=30, rest_slow_n=2, later_s=1.5,
    recover_cap_s=20, poll_total=200,
)
FULL = Profile(
    "full", ws_rounds=7, rtt_n=2000, pipe_n=30000, bulk_n=128, many_rounds=7, kernel_rounds=5,
    exec_n=200, big_mb=20, rest_rounds=5, rest_fast_n=100, rest_slow_n=6, later_s=4,
    recover_cap_s=30, poll_total=1000,
)


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q / 100 * (len(s) - 1))))]


def med(rounds: list[dict], key: str) -> float | None:
    """Median of ``key`` over the rounds that have it."""
    values = [r[key] for r in rounds if isinstance(r.get(key), (int, float))]
    return statistics.median(values) if values else None


def direct_headers() -> dict[str, str]:
    return {"Authorization": f"token {TOKEN}", "Cookie": f"_xsrf={XSRF}", "X-XSRFToken": XSRF}


class Fake:
    """A fake Jupyter-API backend process (``python -m tests.fakes``)."""

    def __init__(self, bench: Bench, label: str, port: int | None = None) -> None:
        self.bench, self.label = bench, label
        self.port = port or free_port()
        self.proc: Process | None = None
        self.url = f"http://127.0.0.1:{self.port}"

    async def start(self, delay_ms: float = 0, blackhole: bool = False) -> Fake:
        cmd = [sys.executable, "-m", "tests.fakes", "--port", str(self.port), "--label", self.label]
        if delay_ms:
            cmd += ["--delay-ms", str(delay_ms)]
        if blackhole:
            cmd.append("--blackhole")
        path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
        env = {**os.environ, "PYTHONPATH": path}
        self.proc = await self.bench.procs.launch(f"fake-{self.label}", cmd, env, port=self.port)
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None and self.proc.pid is not None
        return self.proc.pid

    async def stats(self) -> dict:
        with contextlib.suppress(Exception):
            async with self.bench.http.get(
                self.url + "/_fake/stats", timeout=aiohttp.ClientTimeout(total=2)
            ) as r:
                return await r.json()
        return {}

    def stop(self) -> None:
        if self.proc is not None:
            self.bench.procs.stop(self.proc)
            self.proc = None

    async def start_kernel(self, name: str = "python3") -> str:
        async with self.bench.http.post(self.url + "/api/kernels", json={"name": name}) as r:
            r.raise_for_status()
            return (await r.json())["id"]


class Mixer:
    """One running instance of a mixer command line, with a stand-in ``gcloud`` of its
    own first on its PATH (tests/e2e/support/fake_gcloud.py: a token valid for an hour,
    every run counted)."""

    def __init__(self, bench: Bench, label: str, template: str) -> None:
        self.bench, self.label, self.template = bench, label, template
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: Process | None = None
        state = bench.tmp / f"gcloud-{label}-{self.port}"
        self.gcloud = FakeGcloud(state, state / "token", expiry_seconds=3600)
        self.client_requests = 0
        self.started_cpu = 0.0
        self.spy: Process | None = None
        self.name = ""
        self.config: Path | None = None  # {config} in the template

    def command(self, jupyter_port: int, remote_port: int) -> list[str]:
        values = {
            "python": sys.executable,
            "port": self.port,
            "jupyter_port": jupyter_port,
            "remote_port": remote_port,
            "remote_url": f"http://127.0.0.1:{remote_port}",
            "token": TOKEN,
            "config": str(self.config or ""),
        }
        return [part.format(**values) for part in shlex.split(self.template)]

    async def start(self, name: str, jupyter_port: int, remote_port: int) -> Mixer:
        # Its state file goes to a runtime directory of the run's own, never the user's.
        runtime = tempfile.mkdtemp(prefix=f"mixer-bench-{name}-")
        env = {**os.environ, "PATH": self.gcloud.path_env(), "JUPYTER_RUNTIME_DIR": runtime}
        self.name = name
        self.proc = await self.bench.procs.launch(
            f"{self.label}-{name}", self.command(jupyter_port, remote_port), env, port=self.port, timeout=60
        )
        self.started_cpu = tree_cpu(self.pid)
        if self.bench.args.py_spy:
            await self.start_spy()
        return self

    async def start_spy(self) -> None:
        """Profile this mixer with py-spy (raw samples; summarised by the report)."""
        self.spy_out = self.bench.out_dir / f"py-spy-{self.label}-{self.name}.txt"
        cmd = [self.bench.args.py_spy, "record", "--pid", str(self.pid), "--rate", "250",
               "--nonblocking", "--format", "raw", "-o", str(self.spy_out)]
        self.spy = self.bench.procs.start(f"py-spy-{self.label}-{self.name}", cmd)
        await asyncio.sleep(1.0)  # let it attach

    @property
    def pid(self) -> int:
        assert self.proc is not None and self.proc.pid is not None
        return self.proc.pid

    def finish(self) -> dict:
        """Stop it; return its CPU seconds since ready, peak RSS and credential runs."""
        assert self.proc is not None
        out = {
            "cpu_s": round(tree_cpu(self.pid) - self.started_cpu, 3),
            "peak_rss_mb": round(tree_peak_mb(self.pid), 1),
            "gcloud_runs": self.gcloud.run_count(),
            "client_requests": self.client_requests,
        }
        if self.spy is not None:
            self.bench.procs.stop(self.spy, timeout=30, sig=signal.SIGINT)
            out["profile"] = str(self.spy_out)
            self.bench.profiles.append((f"{self.label}-{self.name}", self.spy_out))
        alive = self.proc.running()
        self.bench.procs.stop(self.proc)
        out["alive_at_end"] = alive
        self.proc = None
        return out

    @property
    def headers(self) -> dict[str, str]:
        return gateway_headers(TOKEN, XSRF)


@dataclass
class Target:
    """One configuration a client talks to: direct to a backend, or via a mixer."""

    name: str
    url: str
    headers: dict[str, str]
    kernel_id: str = ""
    roles: dict[str, int] = field(default_factory=dict)  # role -> pid (cpu accounting)
    mixer: Mixer | None = None

    def ws_url(self, kernel_id: str | None = None) -> str:
        base = "ws" + self.url[4:]
        return f"{base}/api/kernels/{kernel_id or self.kernel_id}/channels?session_id={uuid.uuid4().hex}"

    def count(self, n: int = 1) -> None:
        if self.mixer is not None:
            self.mixer.client_requests += n


class Meter:
    """CPU of the target's processes and of this client over the timed part of a test."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self.t0 = self.t1 = 0.0
        self.c0: dict[str, float] = {}
        self.c1: dict[str, float] = {}

    def _cpu(self) -> dict[str, float]:
        out = {role: tree_cpu(pid) for role, pid in self.target.roles.items()}
        out["client"] = time.process_time()
        out["_busy"], out["_steal"] = system_cpu()
        return out

    def start(self) -> None:
        self.c0 = self._cpu()
        self.t0 = time.perf_counter()

    def stop(self) -> None:
        self.t1 = time.perf_counter()
        self.c1 = self._cpu()

    def result(self, msgs: int | None) -> dict[str, float]:
        if not self.c1:
            return {}
        wall = self.t1 - self.t0
        out: dict[str, float] = {"wall_s": wall}
        if wall > 0:
            # CPU that neither the load generator nor the processes under test used:
            # other work on the machine (it skews the figures when it is high).
            ours = sum(self.c1[r] - self.c0[r] for r in self.c0 if not r.startswith("_"))
            busy = self.c1["_busy"] - self.c0["_busy"]
            out["other_cpu_pct"] = max(0.0, 100 * (busy - ours) / wall)
            out["steal_pct"] = 100 * (self.c1["_steal"] - self.c0["_steal"]) / wall
        for role in self.c0:
            if role.startswith("_"):
                continue
            used = self.c1[role] - self.c0[role]
            out[f"{role}_cpu_s"] = used
            out[f"{role}_cpu_pct"] = 100 * used / wall if wall > 0 else 0.0
            if msgs:
                out[f"{role}_us_per_msg"] = 1e6 * used / msgs
        return out


TestFn = Callable[[aiohttp.ClientSession, Target, Meter], Awaitable[dict]]


def summary_line(out: dict[str, list[dict]]) -> str:
    """One progress line for stderr: each target's headline figure."""
    parts = []
    for name, rounds in out.items():
        if name.startswith("_"):
            continue
        keys = [k for k in ("p50_us", "msg_per_s", "mb_per_s", "total_s", "p50_ms") if med(rounds, k)]
        if keys:
            parts.append(f"{name} {keys[0]}={med(rounds, keys[0]):.4g}")
        fails = [r["failed"] for r in rounds if "failed" in r]
        if fails:
            parts.append(f"{name} FAILED x{len(fails)}")
    return ", ".join(parts)


def parse_mixers(specs: list[str] | None) -> list[tuple[str, str]]:
    """``[LABEL=]TEMPLATE`` options as (label, template); ``default`` is this package."""
    out = []
    for spec in specs or [f"mixer={DEFAULT_MIXER}"]:
        label, sep, template = spec.partition("=")
        if not sep or " " in label or not label:
            label, template = "mixer" if not out else f"mixer{len(out) + 1}", spec
        if template.strip() == "default":
            template = DEFAULT_MIXER
        out.append((label, template))
    return out


class Bench:
    """One run: its processes, output folder, client session and collected figures."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.profile = QUICK if args.quick else FULL
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        self.out_dir = Path(args.out_dir or HERE / "results" / stamp)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(prefix="mixer-bench-"))
        self.procs = Procs(self.out_dir)
        atexit.register(self.procs.stop_all)
        self.mixers: list[tuple[str, str]] = [] if args.direct_only else parse_mixers(args.mixer_cmd)
        self.results: dict = {}
        self.instances: list[dict] = []
        self.profiles: list[tuple[str, Path]] = []
        self.http: aiohttp.ClientSession = None  # type: ignore[assignment]

    def session(self) -> aiohttp.ClientSession:
        return aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, force_close=False), auto_decompress=False
        )

    def log(self, text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    async def rounds(
        self, test: str, targets: list[Target], rounds: int, fn: TestFn, timeout: float = 300
    ) -> dict[str, list[dict]]:
        """Run ``fn`` for every target, ``rounds`` times, alternating the order."""
        out: dict[str, list[dict]] = {t.name: [] for t in targets}
        for pid in {t.mixer.pid for t in targets if t.mixer is not None}:
            reset_peak(pid)
        async with self.session() as sess:
            for r in range(rounds):
                for target in targets if r % 2 == 0 else targets[::-1]:
                    out[target.name].append(await self.one_round(test, r, sess, target, fn, timeout))
                    await asyncio.sleep(0.1)
        for target in targets:
            if target.mixer is not None:
                out.setdefault("_peak_rss_mb", {})[target.name] = round(  # type: ignore[call-overload]
                    tree_peak_mb(target.mixer.pid), 1
                )
        self.log(f"  {test}: " + summary_line(out))
        return out

    async def one_round(
        self, test: str, r: int, sess: aiohttp.ClientSession, target: Target, fn: TestFn, timeout: float
    ) -> dict:
        meter = Meter(target)
        try:
            async with asyncio.timeout(timeout):
                m = await fn(sess, target, meter)
        except Exception as exc:  # a failed round is recorded, not fatal
            m = {"failed": f"{type(exc).__name__}: {exc}"[:300]}
            self.log(f"  {test} {target.name} round {r}: {m['failed']}")
        m.update(meter.result(m.get("msgs")))
        return m

    async def mixer_kernel(self, mixer: Mixer, spec: str) -> str:
        """Start a kernel through the mixer (retrying while it warms up)."""

        def count() -> None:
            mixer.client_requests += 1

        return await self.post_kernel(mixer.url, mixer.headers, spec, mixer.label, count)

    async def post_kernel(
        self,
        url: str,
        headers: dict[str, str],
        spec: str,
        label: str,
        on_try: Callable[[], None] | None = None,
    ) -> str:
        """Start a ``spec`` kernel on the server at ``url`` (retrying while it warms up)."""
        deadline = time.monotonic() + 30
        last = ""
        while time.monotonic() < deadline:
            if on_try is not None:
                on_try()
            try:
                async with self.http.post(
                    url + "/api/kernels",
                    json={"name": spec},
                    headers=headers,
                    timeout=aiohttp.ClientTimeout(total=30),
                ) as r:
                    body = await r.text()
                    if r.status in (200, 201):
                        return json.loads(body)["id"]
                    last = f"{r.status} {body[:200]}"
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                last = repr(exc)
            await asyncio.sleep(0.3)
        raise RuntimeError(f"cannot start {spec} through {label}: {last}")

    def finish_mixer(self, mixer: Mixer, section: str, remote_stats: dict) -> dict:
        """Stop a mixer and keep its process figures for the report's section 4."""
        info = mixer.finish()
        info["section"] = section
        info["remote_requests"] = remote_stats.get("requests")
        self.instances.append({"mixer": mixer.label, **info})
        return info
