#!/usr/bin/env python3
"""Benchmark the mixer against direct access (issue 3).

    python bench/run.py            # full run, a few minutes
    python bench/run.py --quick    # short run, under 2 minutes
    python bench/run.py --json out.json --mixer-cmd 'go={python} -m other --port {port} ...'

Everything runs on loopback: fake Jupyter-API backends (bench/fake_jupyter.py), a real
jupyter_server with ipykernel, and the mixer under test. This process is the load
generator (one asyncio loop, aiohttp client, uvloop when available); every server is a
separate process. Each configuration (direct, mixer→local, mixer→remote) runs in
interleaved rounds (A B C, C B A, ...) so drift hits all alike; the tables show the
median over rounds and its ratio to direct from the same run, with the range of the
per-round ratios in brackets.

Mixer command templates (``--mixer-cmd [LABEL=]TEMPLATE``, repeatable) may use
{python} {port} {jupyter_port} {remote_port} {remote_url} {token}; the default is
the notebook_kernels_mixer package. A stand-in ``gcloud`` first on the mixer's PATH
prints a token valid for an hour and counts its runs.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import contextlib
import json
import os
import platform
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import aiohttp
from aiohttp import WSMsgType

try:
    import orjson

    loads = orjson.loads
except ImportError:  # pragma: no cover
    loads = json.loads

HERE = Path(__file__).resolve().parent
FAKE = HERE / "fake_jupyter.py"
CLK_TCK = os.sysconf("SC_CLK_TCK")
TOKEN = uuid.uuid4().hex
XSRF = "benchxsrf" + uuid.uuid4().hex[:8]
KIB = b"k" * 1024
MIB = os.urandom(1 << 20)
DEFAULT_MIXER = (
    "{python} -m notebook_kernels_mixer --port {port} --jupyter-port {jupyter_port}"
    " --jupyter-token {token} --remote-url {remote_url} --context_request_timeout 10s"
)
KERNEL_PROTOCOL = "v1.kernel.websocket.jupyter.org"
GCLOUD_STANDIN = """#!/bin/sh
# Stand-in for `gcloud config config-helper --format=json`: a token valid for an hour.
[ -n "$BENCH_GCLOUD_COUNT" ] && echo "$*" >> "$BENCH_GCLOUD_COUNT"
exp=$(date -u -d '+1 hour' +%Y-%m-%dT%H:%M:%SZ)
printf '{"configuration": {"active_configuration": "default"}, '
printf '"credential": {"access_token": "bench-%s", "token_expiry": "%s"}}\\n' "$$" "$exp"
"""


@dataclass(frozen=True)
class Profile:
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
    conns: int = 200
    conn_rts: int = 50
    pipe_window: int = 64
    bulk_window: int = 4


QUICK = Profile(
    "quick",
    ws_rounds=3,
    rtt_n=300,
    pipe_n=6000,
    bulk_n=32,
    many_rounds=2,
    kernel_rounds=2,
    exec_n=60,
    big_mb=20,
    rest_rounds=3,
    rest_fast_n=30,
    rest_slow_n=2,
    later_s=1.5,
    recover_cap_s=20,
)
FULL = Profile(
    "full",
    ws_rounds=7,
    rtt_n=2000,
    pipe_n=30000,
    bulk_n=128,
    many_rounds=7,
    kernel_rounds=5,
    exec_n=200,
    big_mb=20,
    rest_rounds=5,
    rest_fast_n=100,
    rest_slow_n=6,
    later_s=4,
    recover_cap_s=30,
)


# ------------------------------------------------------------------------------------
# processes and /proc


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex((host, port)) == 0


def children_map() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(b")") + 2 :].split()[1])
        kids.setdefault(ppid, []).append(int(entry))
    return kids


def tree(pid: int) -> list[int]:
    kids = children_map()
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(kids.get(p, ()))
    return out


def start_time(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    return int(stat[stat.rindex(b")") + 2 :].split()[19])


def cpu_seconds(pid: int) -> float:
    """CPU time of a process (all threads) plus its reaped children.

    The process's own time comes from its CPU-time clock (nanoseconds; Linux's
    MAKE_PROCESS_CPUCLOCK(pid, CPUCLOCK_SCHED)), since /proc's utime+stime tick at only
    100 Hz; reaped children (e.g. credential commands) only from /proc.
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return 0.0
    fields = stat[stat.rindex(b")") + 2 :].split()
    children = (int(fields[13]) + int(fields[14])) / CLK_TCK
    try:
        own = time.clock_gettime((~pid << 3) | 2)
    except OSError:
        own = (int(fields[11]) + int(fields[12])) / CLK_TCK
    return own + children


def tree_cpu(pid: int) -> float:
    return sum(cpu_seconds(p) for p in tree(pid))


def listen_overflows() -> int:
    """System-wide count of connections dropped because an accept queue was full."""
    try:
        with open("/proc/net/netstat") as f:
            lines = f.read().splitlines()
    except OSError:
        return 0
    for names, values in zip(lines[::2], lines[1::2], strict=False):
        if names.startswith("TcpExt:"):
            table = dict(zip(names.split()[1:], values.split()[1:], strict=False))
            return int(table.get("ListenOverflows", 0))
    return 0


def system_cpu() -> tuple[float, float]:
    """(busy, steal) CPU seconds of the whole machine since boot, from /proc/stat."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return 0.0, 0.0
    user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return (user + nice + system + irq + softirq) / CLK_TCK, steal / CLK_TCK


def status_kb(pid: int, key: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def tree_peak_mb(pid: int) -> float:
    return sum(status_kb(p, "VmHWM") for p in tree(pid)) / 1024


def reset_peak(pid: int) -> bool:
    ok = True
    for p in tree(pid):
        try:
            with open(f"/proc/{p}/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            ok = False
    return ok


class Procs:
    """Processes this benchmark started; each is stopped by its own pid."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.live: list[subprocess.Popen] = []
        self.names: dict[int, str] = {}

    def start(self, name: str, cmd: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
        log = open(self.log_dir / f"{name}.log", "ab")  # noqa: SIM115 - closed with the process
        log.write(f"$ {shlex.join(cmd)}\n".encode())
        log.flush()
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=self.log_dir,
        )
        log.close()
        self.live.append(proc)
        self.names[proc.pid] = name
        return proc

    def stop(self, proc: subprocess.Popen, timeout: float = 8.0, sig: int = signal.SIGTERM) -> None:
        descendants = [(p, start_time(p)) for p in tree(proc.pid) if p != proc.pid]
        if proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        # Anything it started and left behind (kernels), by pid, if that pid is still
        # the same process (same start time).
        for pid, started in descendants:
            if started is not None and start_time(pid) == started:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
        if proc in self.live:
            self.live.remove(proc)

    def stop_all(self) -> None:
        for proc in reversed(list(self.live)):
            with contextlib.suppress(Exception):
                self.stop(proc, timeout=5)

    def tail(self, proc: subprocess.Popen, lines: int = 15) -> str:
        path = self.log_dir / f"{self.names.get(proc.pid, '?')}.log"
        with contextlib.suppress(OSError):
            return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
        return ""


async def wait_port(procs: Procs, proc: subprocess.Popen, port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(
                f"{procs.names.get(proc.pid)} exited with {proc.returncode}:\n{procs.tail(proc)}"
            )
        if port_open(port):
            return
        await asyncio.sleep(0.05)
    raise RuntimeError(f"{procs.names.get(proc.pid)} not listening on {port} after {timeout}s")


# ------------------------------------------------------------------------------------
# the pieces of a run


class Fake:
    """A fake Jupyter-API backend process (bench/fake_jupyter.py)."""

    def __init__(self, bench: Bench, label: str, port: int | None = None) -> None:
        self.bench, self.label = bench, label
        self.port = port or free_port()
        self.proc: subprocess.Popen | None = None
        self.url = f"http://127.0.0.1:{self.port}"

    async def start(self, delay_ms: float = 0, blackhole: bool = False) -> Fake:
        cmd = [sys.executable, str(FAKE), "--port", str(self.port), "--label", self.label]
        if delay_ms:
            cmd += ["--delay-ms", str(delay_ms)]
        if blackhole:
            cmd.append("--blackhole")
        self.proc = self.bench.procs.start(f"fake-{self.label}", cmd)
        await wait_port(self.bench.procs, self.proc, self.port)
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
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
    """One running instance of a mixer command line."""

    def __init__(self, bench: Bench, label: str, template: str) -> None:
        self.bench, self.label, self.template = bench, label, template
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        self.count_file = bench.tmp / f"gcloud-{label}-{self.port}.count"
        self.client_requests = 0
        self.started_cpu = 0.0

    def command(self, jupyter_port: int, remote_port: int) -> list[str]:
        values = {
            "python": sys.executable,
            "port": self.port,
            "jupyter_port": jupyter_port,
            "remote_port": remote_port,
            "remote_url": f"http://127.0.0.1:{remote_port}",
            "token": TOKEN,
        }
        return [part.format(**values) for part in shlex.split(self.template)]

    async def start(self, name: str, jupyter_port: int, remote_port: int) -> Mixer:
        env = {
            **os.environ,
            "PATH": f"{self.bench.bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
            "BENCH_GCLOUD_COUNT": str(self.count_file),
        }
        self.proc = self.bench.procs.start(
            f"{self.label}-{name}", self.command(jupyter_port, remote_port), env
        )
        await wait_port(self.bench.procs, self.proc, self.port, timeout=60)
        self.started_cpu = tree_cpu(self.proc.pid)
        self.spy = None
        self.name = name
        if self.bench.args.py_spy:
            self.spy_out = self.bench.out_dir / f"py-spy-{self.label}-{name}.txt"
            self.spy = self.bench.procs.start(
                f"py-spy-{self.label}-{name}",
                [
                    self.bench.args.py_spy,
                    "record",
                    "--pid",
                    str(self.proc.pid),
                    "--rate",
                    "250",
                    "--nonblocking",
                    "--format",
                    "raw",
                    "-o",
                    str(self.spy_out),
                ],
            )
            await asyncio.sleep(1.0)  # let it attach
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def gcloud_runs(self) -> int:
        try:
            return len(self.count_file.read_text().splitlines())
        except OSError:
            return 0

    def finish(self) -> dict:
        """Stop it; return its CPU seconds since ready, peak RSS and credential runs."""
        assert self.proc is not None
        out = {
            "cpu_s": round(tree_cpu(self.pid) - self.started_cpu, 3),
            "peak_rss_mb": round(tree_peak_mb(self.pid), 1),
            "gcloud_runs": self.gcloud_runs(),
            "client_requests": self.client_requests,
        }
        if self.spy is not None:
            self.bench.procs.stop(self.spy, timeout=30, sig=signal.SIGINT)
            out["profile"] = str(self.spy_out)
            self.bench.profiles.append((f"{self.label}-{self.name}", self.spy_out))
        alive = self.proc.poll() is None
        self.bench.procs.stop(self.proc)
        out["alive_at_end"] = alive
        self.proc = None
        return out

    @property
    def headers(self) -> dict[str, str]:
        return {"token": TOKEN, "Cookie": f"_xsrf={XSRF}", "X-XSRFToken": XSRF}


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


def direct_headers() -> dict[str, str]:
    return {"Authorization": f"token {TOKEN}", "Cookie": f"_xsrf={XSRF}", "X-XSRFToken": XSRF}


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


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q / 100 * (len(s) - 1))))]


# ------------------------------------------------------------------------------------
# load: websockets


@contextlib.asynccontextmanager
async def ws_open(sess: aiohttp.ClientSession, target: Target, protocols: tuple[str, ...] = ()):
    target.count()
    ws = await sess.ws_connect(
        target.ws_url(),
        headers=target.headers,
        max_msg_size=0,
        compress=0,
        protocols=protocols,
        autoping=True,
        timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=3.0),
        decode_text=False,
    )
    try:
        yield ws
    finally:
        await ws.close()


async def round_trip(ws, payload: bytes = KIB) -> bool:
    await ws.send_frame(payload, WSMsgType.TEXT)
    msg = await ws.receive()
    return msg.type is WSMsgType.TEXT and msg.data == payload


async def t_rtt(sess, target: Target, meter: Meter, n: int) -> dict:
    async with ws_open(sess, target) as ws:
        for _ in range(20):
            await round_trip(ws)
        lat, errors = [], 0
        clock = time.perf_counter
        meter.start()
        for _ in range(n):
            t0 = clock()
            ok = await round_trip(ws)
            lat.append(clock() - t0)
            errors += not ok
        meter.stop()
    return {"p50_us": 1e6 * pct(lat, 50), "p99_us": 1e6 * pct(lat, 99), "msgs": n, "errors": errors}


async def pipeline(ws, meter: Meter, n: int, window: int, payload: bytes, kind: WSMsgType) -> float:
    free = asyncio.Semaphore(window)
    bad = 0

    async def reader() -> None:
        nonlocal bad
        for _ in range(n):
            msg = await ws.receive()
            if msg.type is not kind:
                raise RuntimeError(f"unexpected {msg.type.name} frame: {msg.data!r:.200}")
            if len(msg.data) != len(payload):
                bad += 1
            free.release()

    meter.start()
    t0 = time.perf_counter()
    task = asyncio.create_task(reader())
    try:
        for _ in range(n):
            await free.acquire()
            await ws.send_frame(payload, kind)
        await task
    finally:
        task.cancel()
    elapsed = time.perf_counter() - t0
    meter.stop()
    return elapsed if not bad else -bad


async def t_pipelined(sess, target: Target, meter: Meter, n: int, window: int) -> dict:
    async with ws_open(sess, target) as ws:
        for _ in range(20):
            await round_trip(ws)
        elapsed = await pipeline(ws, meter, n, window, KIB, WSMsgType.TEXT)
    if elapsed < 0:
        return {"msgs": n, "errors": -elapsed}
    return {"msg_per_s": n / elapsed, "msgs": n, "errors": 0}


async def t_bulk(sess, target: Target, meter: Meter, n: int, window: int) -> dict:
    async with ws_open(sess, target) as ws:
        for _ in range(2):
            await ws.send_frame(MIB, WSMsgType.BINARY)
            await ws.receive()
        elapsed = await pipeline(ws, meter, n, window, MIB, WSMsgType.BINARY)
    if elapsed < 0:
        return {"msgs": n, "errors": -elapsed}
    return {"mb_per_s": n * len(MIB) / elapsed / 1e6, "msgs": n, "errors": 0}


async def t_many(sess, target: Target, meter: Meter, conns: int, rts: int) -> dict:
    lat: list[float] = []
    connect: list[float] = []
    errors: list[str] = []
    clock = time.perf_counter

    async def one() -> None:
        t0 = clock()
        try:
            async with ws_open(sess, target) as ws:
                connect.append(clock() - t0)
                for _ in range(rts):
                    t1 = clock()
                    ok = await round_trip(ws)
                    lat.append(clock() - t1)
                    if not ok:
                        errors.append("wrong echo")
        except Exception as exc:
            errors.append(f"{type(exc).__name__}: {exc}"[:200])

    overflows = listen_overflows()
    meter.start()
    t0 = clock()
    async with asyncio.timeout(120):
        await asyncio.gather(*(one() for _ in range(conns)))
    total = clock() - t0
    meter.stop()
    return {
        "listen_overflows": listen_overflows() - overflows,
        "total_s": total,
        "p99_ms": 1e3 * pct(lat, 99),
        "p50_ms": 1e3 * pct(lat, 50),
        "connect_max_ms": 1e3 * max(connect, default=float("nan")),
        "errors": len(errors),
        "error_samples": sorted(set(errors))[:3],
        "msgs": len(lat),
    }


# ------------------------------------------------------------------------------------
# load: real kernels


def execute_request(code: str, session: str) -> tuple[str, bytes]:
    msg_id = uuid.uuid4().hex
    msg = {
        "header": {
            "msg_id": msg_id,
            "username": "bench",
            "session": session,
            "msg_type": "execute_request",
            "version": "5.3",
            "date": datetime.now(timezone.utc).isoformat(),
        },
        "parent_header": {},
        "metadata": {},
        "content": {
            "code": code,
            "silent": False,
            "store_history": False,
            "user_expressions": {},
            "allow_stdin": False,
            "stop_on_error": True,
        },
        "channel": "shell",
        "buffers": [],
    }
    return msg_id, json.dumps(msg).encode()


async def execute(ws, code: str, session: str) -> int:
    """Run ``code``; return the stream bytes it printed, once reply and idle are in."""
    msg_id, frame = execute_request(code, session)
    await ws.send_frame(frame, WSMsgType.TEXT)
    replied = idle = False
    printed = 0
    while not (replied and idle):
        msg = await ws.receive()
        if msg.type is not WSMsgType.TEXT:
            if msg.type is WSMsgType.BINARY:
                continue
            raise RuntimeError(f"kernel websocket: {msg.type.name} {msg.data!r:.200}")
        data = loads(msg.data)
        if (data.get("parent_header") or {}).get("msg_id") != msg_id:
            continue
        kind = data.get("msg_type") or data["header"]["msg_type"]
        content = data.get("content") or {}
        if kind == "execute_reply":
            if content.get("status") != "ok":
                raise RuntimeError(f"execution failed: {content}")
            replied = True
        elif kind == "status" and content.get("execution_state") == "idle":
            idle = True
        elif kind == "stream":
            printed += len(content.get("text", ""))
    return printed


async def t_exec_small(sess, target: Target, meter: Meter, n: int) -> dict:
    session = uuid.uuid4().hex
    async with ws_open(sess, target) as ws:
        for _ in range(5):
            await execute(ws, "1+1", session)
        lat = []
        meter.start()
        t0 = time.perf_counter()
        for _ in range(n):
            t1 = time.perf_counter()
            await execute(ws, "1+1", session)
            lat.append(time.perf_counter() - t1)
        total = time.perf_counter() - t0
        meter.stop()
    return {"total_s": total, "p50_ms": 1e3 * pct(lat, 50), "p99_ms": 1e3 * pct(lat, 99)}


async def t_exec_big(sess, target: Target, meter: Meter, mb: int) -> dict:
    session = uuid.uuid4().hex
    code = f"import sys\nfor _ in range({mb}):\n    sys.stdout.write('x' * 999_999 + '\\n')\n"
    async with ws_open(sess, target) as ws:
        await execute(ws, "1+1", session)
        meter.start()
        t0 = time.perf_counter()
        printed = await execute(ws, code, session)
        total = time.perf_counter() - t0
        meter.stop()
    complete = printed >= mb * 1_000_000
    return {
        "total_s": total,
        "mb_per_s": printed / total / 1e6,
        "printed_mb": printed / 1e6,
        "errors": 0 if complete else 1,
    }


# ------------------------------------------------------------------------------------
# load: REST


async def get_json(sess, target: Target, path: str, timeout: float = 15) -> tuple[int, object, float]:
    target.count()
    t0 = time.perf_counter()
    async with sess.get(
        target.url + path, headers=target.headers, timeout=aiohttp.ClientTimeout(total=timeout)
    ) as r:
        body = await r.read()
        elapsed = time.perf_counter() - t0
        try:
            data = loads(body) if r.status == 200 else None
        except ValueError:
            data = None
        return r.status, data, elapsed


def spec_names(data: object) -> set[str]:
    if isinstance(data, dict) and isinstance(data.get("kernelspecs"), dict):
        return set(data["kernelspecs"])
    return set()


def kernel_ids(data: object) -> set[str]:
    if isinstance(data, list):
        return {k.get("id") for k in data if isinstance(k, dict)}
    return set()


async def t_rest(sess, target: Target, meter: Meter, path: str, n: int, check) -> dict:
    lat, errors = [], 0
    meter.start()
    for _ in range(n):
        status, data, elapsed = await get_json(sess, target, path)
        lat.append(elapsed)
        errors += status != 200 or not check(data)
    meter.stop()
    return {
        "p50_ms": 1e3 * pct(lat, 50),
        "p90_ms": 1e3 * pct(lat, 90),
        "errors": errors,
        "msgs": n,
    }


# ------------------------------------------------------------------------------------
# the benchmark


TestFn = Callable[[aiohttp.ClientSession, Target, Meter], Awaitable[dict]]


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.profile = QUICK if args.quick else FULL
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        self.out_dir = Path(args.out_dir or HERE / "results" / stamp)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(prefix="mixer-bench-"))
        self.bin_dir = self.tmp / "bin"
        self.bin_dir.mkdir()
        gcloud = self.bin_dir / "gcloud"
        gcloud.write_text(GCLOUD_STANDIN)
        gcloud.chmod(0o755)
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
        mixers = {t.mixer.pid: t.mixer for t in targets if t.mixer is not None}
        for pid in mixers:
            reset_peak(pid)
        async with self.session() as sess:
            for r in range(rounds):
                for target in targets if r % 2 == 0 else targets[::-1]:
                    meter = Meter(target)
                    try:
                        async with asyncio.timeout(timeout):
                            m = await fn(sess, target, meter)
                    except Exception as exc:  # a failed round is recorded, not fatal
                        m = {"failed": f"{type(exc).__name__}: {exc}"[:300]}
                        self.log(f"  {test} {target.name} round {r}: {m['failed']}")
                    m.update(meter.result(m.get("msgs")))
                    out[target.name].append(m)
                    await asyncio.sleep(0.1)
        for target in targets:
            if target.mixer is not None:
                out.setdefault("_peak_rss_mb", {})[target.name] = round(  # type: ignore[call-overload]
                    tree_peak_mb(target.mixer.pid), 1
                )
        self.log(f"  {test}: " + summary_line(out))
        return out

    # -- section 1 ---------------------------------------------------------------------

    async def section_ws(self) -> dict:
        p = self.profile
        self.log("1. websocket relay (fast fake backends)")
        local, remote = Fake(self, "local"), Fake(self, "remote")
        await asyncio.gather(local.start(), remote.start())
        local_kernel = await local.start_kernel()
        targets = [Target("direct", local.url, direct_headers(), local_kernel, {"backend": local.pid})]
        splice = None
        if not self.args.no_reference:
            # Reference: a byte-for-byte TCP forwarder to the same backend (not a mixer).
            port = free_port()
            splice = self.procs.start(
                "ref-splice",
                [sys.executable, str(HERE / "splice_proxy.py"), "--port", str(port), "--to", str(local.port)],
            )
            await wait_port(self.procs, splice, port)
            targets.append(
                Target(
                    "ref-splice",
                    f"http://127.0.0.1:{port}",
                    direct_headers(),
                    local_kernel,
                    {"mixer": splice.pid, "backend": local.pid},
                )
            )
        running = []
        for label, template in self.mixers:
            mixer = await Mixer(self, label, template).start("ws", local.port, remote.port)
            running.append(mixer)
            for side, fake in (("local", local), ("remote", remote)):
                kid = await self.mixer_kernel(mixer, f"{side}-python3")
                targets.append(
                    Target(
                        f"{label}:{side}",
                        mixer.url,
                        mixer.headers,
                        kid,
                        {"mixer": mixer.pid, "backend": fake.pid},
                        mixer,
                    )
                )
        sec: dict = {"tests": {}}
        sec["tests"]["rtt"] = await self.rounds(
            "1 KiB round trip", targets, p.ws_rounds, lambda s, t, m: t_rtt(s, t, m, p.rtt_n)
        )
        sec["tests"]["pipelined"] = await self.rounds(
            "pipelined 1 KiB",
            targets,
            p.ws_rounds,
            lambda s, t, m: t_pipelined(s, t, m, p.pipe_n, p.pipe_window),
        )
        sec["tests"]["bulk"] = await self.rounds(
            "1 MiB binary",
            targets,
            p.ws_rounds,
            lambda s, t, m: t_bulk(s, t, m, p.bulk_n, p.bulk_window),
        )
        sec["tests"]["many"] = await self.rounds(
            f"{p.conns} connections",
            targets,
            p.many_rounds,
            lambda s, t, m: t_many(s, t, m, p.conns, p.conn_rts),
        )
        sec["remote_stats"] = await remote.stats()
        sec["mixers"] = {m.label: self.finish_mixer(m, "ws", sec["remote_stats"]) for m in running}
        if splice is not None:
            self.procs.stop(splice)
        local.stop()
        remote.stop()
        return sec

    async def mixer_kernel(self, mixer: Mixer, spec: str) -> str:
        """Start a kernel through the mixer (retrying while it warms up)."""
        deadline = time.monotonic() + 30
        last = ""
        while time.monotonic() < deadline:
            mixer.client_requests += 1
            try:
                async with self.http.post(
                    mixer.url + "/api/kernels",
                    json={"name": spec},
                    headers=mixer.headers,
                    timeout=aiohttp.ClientTimeout(total=30),
                ) as r:
                    body = await r.text()
                    if r.status in (200, 201):
                        return json.loads(body)["id"]
                    last = f"{r.status} {body[:200]}"
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                last = repr(exc)
            await asyncio.sleep(0.3)
        raise RuntimeError(f"cannot start {spec} through {mixer.label}: {last}")

    def finish_mixer(self, mixer: Mixer, section: str, remote_stats: dict) -> dict:
        info = mixer.finish()
        info["section"] = section
        info["remote_requests"] = remote_stats.get("requests")
        self.instances.append({"mixer": mixer.label, **info})
        return info

    # -- section 2 ---------------------------------------------------------------------

    async def section_kernel(self) -> dict:
        p = self.profile
        self.log("2. real kernels (jupyter_server + ipykernel)")
        jport = free_port()
        root = self.tmp / "jupyter-root"
        root.mkdir(exist_ok=True)
        env = {
            **os.environ,
            "JUPYTER_RUNTIME_DIR": str(self.tmp / "jupyter-runtime"),
            "JUPYTER_CONFIG_DIR": str(self.tmp / "jupyter-config"),
        }
        cmd = [
            sys.executable,
            "-m",
            "jupyter_server",
            "--no-browser",
            "--allow-root",
            f"--port={jport}",
            "--port-retries=0",
            f"--IdentityProvider.token={TOKEN}",
            f"--ServerApp.root_dir={root}",
            "--ZMQChannelsWebsocketConnection.limit_rate=False",
            "--ServerApp.log_level=WARN",
        ]
        jupyter = self.procs.start("jupyter_server", cmd, env)
        remote = Fake(self, "remote-k")
        await asyncio.gather(wait_port(self.procs, jupyter, jport, timeout=60), remote.start())
        jurl = f"http://127.0.0.1:{jport}"
        sec: dict = {"tests": {}, "exec_n": p.exec_n}
        try:
            running, targets = [], []
            for label, template in self.mixers:
                mixer = await Mixer(self, label, template).start("kernel", jport, remote.port)
                running.append(mixer)
                kid = await self.mixer_kernel(mixer, "local-python3")
                targets.append(
                    Target(
                        f"{label}:local",
                        mixer.url,
                        mixer.headers,
                        kid,
                        {"mixer": mixer.pid, "backend": jupyter.pid},
                        mixer,
                    )
                )
            if targets:
                kid = targets[0].kernel_id
            else:
                async with self.http.post(
                    jurl + "/api/kernels", json={"name": "python3"}, headers=direct_headers()
                ) as r:
                    r.raise_for_status()
                    kid = (await r.json())["id"]
            targets.insert(0, Target("direct", jurl, direct_headers(), kid, {"backend": jupyter.pid}))
            sec["tests"]["exec_small"] = await self.rounds(
                f"{p.exec_n} x 1+1",
                targets,
                p.kernel_rounds,
                lambda s, t, m: t_exec_small(s, t, m, p.exec_n),
            )
            sec["tests"]["exec_big"] = await self.rounds(
                f"{p.big_mb} MB cell",
                targets,
                p.kernel_rounds,
                lambda s, t, m: t_exec_big(s, t, m, p.big_mb),
            )
            stats = await remote.stats()
            sec["mixers"] = {m.label: self.finish_mixer(m, "kernel", stats) for m in running}
        finally:
            remote.stop()
            self.procs.stop(jupyter, timeout=15)
        return sec

    # -- section 3 ---------------------------------------------------------------------

    async def section_rest(self) -> dict:
        self.log("3. REST listings")
        sec: dict = {}
        for name, local_delay, remote_delay in (
            ("both_fast", 0, 0),
            ("remote_200ms", 0, 200),
            ("local_100ms_remote_200ms", 100, 200),
        ):
            sec[name] = await self.rest_scenario(name, local_delay, remote_delay)
        if self.mixers:
            sec["blackhole"] = {
                label: await self.blackhole(label, template) for label, template in self.mixers
            }
        return sec

    async def rest_scenario(self, name: str, local_delay: float, remote_delay: float) -> dict:
        p = self.profile
        n = p.rest_fast_n if max(local_delay, remote_delay) == 0 else p.rest_slow_n
        local, remote = Fake(self, f"local-{name}"), Fake(self, f"remote-{name}")
        await asyncio.gather(local.start(local_delay), remote.start(remote_delay))
        local_ids = [await local.start_kernel(), await local.start_kernel("echo")]
        remote_ids = [await remote.start_kernel(), await remote.start_kernel("echo")]
        slower, slower_ids = (remote, remote_ids) if remote_delay >= local_delay else (local, local_ids)
        targets = [Target("direct", slower.url, direct_headers(), roles={"backend": slower.pid})]
        running = []
        out: dict = {
            "local_delay_ms": local_delay,
            "remote_delay_ms": remote_delay,
            "direct": slower.label,
            "cold": {},
            "tests": {},
        }
        try:
            for label, template in self.mixers:
                mixer = await Mixer(self, label, template).start(name, local.port, remote.port)
                running.append(mixer)
                target = Target(label, mixer.url, mixer.headers, "", {"mixer": mixer.pid}, mixer)
                targets.append(target)
                # First answers from a fresh mixer (cold caches).
                cold = {}
                async with self.session() as sess:
                    for path in ("/api/kernelspecs", "/api/kernels"):
                        try:
                            status, _, elapsed = await get_json(sess, target, path)
                            cold[path] = {"ms": 1e3 * elapsed, "status": status}
                        except Exception as exc:
                            cold[path] = {"error": repr(exc)}
                out["cold"][label] = cold
            mixed_ok = bool(self.mixers)

            def specs_ok(data: object, direct: bool) -> bool:
                names = spec_names(data)
                if direct:
                    return "python3" in names
                return not mixed_ok or {"local-python3", "remote-python3"} <= names

            def kernels_ok(data: object, direct: bool) -> bool:
                ids = kernel_ids(data)
                if direct:
                    return set(slower_ids) <= ids
                return set(local_ids + remote_ids) <= ids

            for path, check in (("/api/kernelspecs", specs_ok), ("/api/kernels", kernels_ok)):
                out["tests"][path] = await self.rounds(
                    f"{name} GET {path}",
                    targets,
                    p.rest_rounds,
                    lambda s, t, m, path=path, check=check: t_rest(
                        s, t, m, path, n, lambda d, t=t, check=check: check(d, t.mixer is None)
                    ),
                )
            stats = await remote.stats()
            out["remote_stats"] = stats
            out["mixers"] = {m.label: self.finish_mixer(m, f"rest-{name}", stats) for m in running}
        finally:
            for m in running:
                if m.proc is not None:
                    m.finish()
            local.stop()
            remote.stop()
        return out

    async def blackhole(self, label: str, template: str) -> dict:
        """Remote blackholed at start, recovers, then blackholed again while warm."""
        p = self.profile
        self.log(f"  blackholed remote ({label})")
        local, remote = Fake(self, "local-bh"), Fake(self, "remote-bh")
        await asyncio.gather(local.start(), remote.start(blackhole=True))
        local_kernel = await local.start_kernel()
        mixer = await Mixer(self, label, template).start("blackhole", local.port, remote.port)
        target = Target(label, mixer.url, mixer.headers, "", {"mixer": mixer.pid}, mixer)
        out: dict = {}
        try:
            async with self.session() as sess:
                out["cold"] = await self.blackholed_answers(sess, target, local_kernel, p.later_s)
                # Un-blackhole: a normal fake on the same port.
                remote.stop()
                await remote.start()
                out["recovery_s"] = await self.until_remote_back(sess, target, p.recover_cap_s)
                out["recovery_kernels_s"] = await self.until_remote_back(
                    sess, target, p.recover_cap_s, kernels=True, remote=remote
                )
                # Warm mixer, remote blackholed again.
                for _ in range(3):
                    await get_json(sess, target, "/api/kernelspecs")
                    await get_json(sess, target, "/api/kernels")
                remote.stop()
                await remote.start(blackhole=True)
                out["warm"] = await self.blackholed_answers(sess, target, local_kernel, p.later_s)
            out["mixer"] = self.finish_mixer(mixer, "rest-blackhole", {})
        finally:
            if mixer.proc is not None:
                mixer.finish()
            local.stop()
            remote.stop()
        self.log(f"  blackhole: {json.dumps(out)[:600]}")
        return out

    async def blackholed_answers(self, sess, target: Target, local_kernel: str, later_s: float) -> dict:
        out: dict = {}
        for path in ("/api/kernelspecs", "/api/kernels"):
            out["first_" + path.rsplit("/", 1)[1]] = await self.probe(sess, target, path, local_kernel)
        later: list[dict] = []
        deadline = time.monotonic() + later_s
        while time.monotonic() < deadline and len(later) < 1000:
            for path in ("/api/kernelspecs", "/api/kernels"):
                later.append(await self.probe(sess, target, path, local_kernel))
            await asyncio.sleep(0.05)
        times = [x["ms"] for x in later if "ms" in x]
        out["later"] = {
            "n": len(later),
            "p50_ms": pct(times, 50),
            "max_ms": max(times, default=float("nan")),
            "all_ok": all(x.get("status") == 200 and x.get("local_listed") for x in later),
        }
        return out

    async def probe(self, sess, target: Target, path: str, local_kernel: str) -> dict:
        try:
            status, data, elapsed = await get_json(sess, target, path, timeout=15)
        except Exception as exc:
            return {"error": f"{type(exc).__name__}: {exc}"[:200], "ms": 15000.0}
        if path.endswith("kernelspecs"):
            listed = "local-python3" in spec_names(data)
        else:
            listed = local_kernel in kernel_ids(data)
        return {"ms": 1e3 * elapsed, "status": status, "local_listed": listed}

    async def until_remote_back(
        self, sess, target: Target, cap: float, kernels: bool = False, remote: Fake | None = None
    ) -> float | None:
        """Seconds from now until the remote's specs (or a new remote kernel) are listed."""
        wanted = None
        if kernels and remote is not None:
            wanted = await remote.start_kernel()
        t0 = time.monotonic()
        while time.monotonic() - t0 < cap:
            with contextlib.suppress(Exception):
                if kernels:
                    _, data, _ = await get_json(sess, target, "/api/kernels", timeout=5)
                    if wanted in kernel_ids(data):
                        return time.monotonic() - t0
                else:
                    _, data, _ = await get_json(sess, target, "/api/kernelspecs", timeout=5)
                    if "remote-python3" in spec_names(data):
                        return time.monotonic() - t0
            await asyncio.sleep(0.1)
        return None

    # -- driver ------------------------------------------------------------------------

    async def run(self) -> dict:
        started = time.monotonic()
        self.http = self.session()
        try:
            wanted = self.args.sections.split(",")
            for name, section in (
                ("ws", self.section_ws),
                ("kernel", self.section_kernel),
                ("rest", self.section_rest),
            ):
                if name not in wanted:
                    continue
                try:
                    self.results[name] = await section()
                except Exception as exc:  # one broken section must not lose the others
                    self.log(f"section {name} failed: {type(exc).__name__}: {exc}")
                    self.results[name + "_error"] = f"{type(exc).__name__}: {exc}"[:2000]
                    self.procs.stop_all()
        finally:
            await self.http.close()
        self.results["duration_s"] = round(time.monotonic() - started, 1)
        return self.results


def parse_mixers(specs: list[str] | None) -> list[tuple[str, str]]:
    out = []
    for spec in specs or [f"mixer={DEFAULT_MIXER}"]:
        label, sep, template = spec.partition("=")
        if not sep or " " in label or not label:
            label, template = "mixer" if not out else f"mixer{len(out) + 1}", spec
        if template.strip() == "default":
            template = DEFAULT_MIXER
        out.append((label, template))
    return out


# ------------------------------------------------------------------------------------
# summaries


def med(rounds: list[dict], key: str) -> float | None:
    values = [r[key] for r in rounds if isinstance(r.get(key), (int, float))]
    return statistics.median(values) if values else None


def ratio_range(rounds: list[dict], base: list[dict], key: str) -> tuple[float, float] | None:
    ratios = [
        a[key] / b[key]
        for a, b in zip(rounds, base, strict=False)
        if isinstance(a.get(key), (int, float)) and isinstance(b.get(key), (int, float)) and b[key]
    ]
    return (min(ratios), max(ratios)) if ratios else None


def summary_line(out: dict[str, list[dict]]) -> str:
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


def fmt(value: float | str | None, digits: int = 3) -> str:
    if isinstance(value, str):
        return value
    if value is None or value != value:
        return "-"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.{digits}g}"


class Table:
    def __init__(self, title: str, columns: list[str]) -> None:
        self.title, self.columns, self.rows = title, columns, []

    def add(self, *cells: str) -> None:
        self.rows.append([str(c) for c in cells])

    def render(self) -> str:
        rows = [self.columns, *self.rows]
        widths = [max(len(r[i]) for r in rows) for i in range(len(self.columns))]
        lines = [self.title]
        for i, row in enumerate(rows):
            lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
            if i == 0:
                lines.append("  ".join("-" * w for w in widths))
        return "\n".join(lines)


def cell(test: dict, name: str, key: str, higher_better: bool = False, ratio: bool = True) -> str:
    rounds = test.get(name)
    if not rounds:
        return "-"
    value = med(rounds, key)
    text = fmt(value)
    failed = sum("failed" in r for r in rounds)
    if ratio and name != "direct" and value is not None:
        base = med(test.get("direct", []), key)
        if base:
            rr = ratio_range(rounds, test["direct"], key)
            text += f" ({rfmt(value / base)}x"
            text += f" [{rfmt(rr[0])}-{rfmt(rr[1])}])" if rr and len(rounds) > 1 else ")"
    if failed:
        text += f" !{failed} failed"
    return text


def noise(tests: dict, name: str) -> float | None:
    """Worst median CPU % used by processes outside the benchmark, over tests."""
    values = [med(test.get(name, []), "other_cpu_pct") for test in tests.values()]
    values = [v for v in values if v is not None]
    return max(values) if values else None


def rfmt(ratio: float) -> str:
    return f"{ratio:.2f}" if ratio >= 0.1 else f"{ratio:.2g}"


def ratio_of(test: dict, name: str, key: str) -> float | None:
    value, base = med(test.get(name, []), key), med(test.get("direct", []), key)
    return value / base if value is not None and base else None


def render(results: dict, meta: dict) -> tuple[str, list[dict]]:
    out: list[str] = []
    targets: list[dict] = []
    out.append(f"Notebook Kernels Mixer benchmark: {meta['profile']} run, {meta['date']}")
    out.append(f"machine: {meta['machine']}")
    out.append(f"load average at start: {meta.get('loadavg', '?')}")
    out.append(f"setup: {meta['setup']}")
    for label, template in meta["mixers"]:
        out.append(f"{label}: {template}")
    out.append(
        "cells: median over rounds (ratio to direct [range of per-round ratios]); "
        f"total {results.get('duration_s')} s"
    )

    for key, value in results.items():
        if key.endswith("_error"):
            out.append(f"\nSECTION {key[:-6]} FAILED: {value}")

    def target(figure: str, goal: str, config: str, value: float | None, ok: bool | None) -> None:
        targets.append({"figure": figure, "target": goal, "config": config, "value": value, "ok": ok})

    ws = results.get("ws")
    if ws:
        tests = ws["tests"]
        names = [n for n in tests["rtt"] if not n.startswith("_")]
        t = Table("\n1. Kernel websocket relay, fast fake backends", ["figure", *names])
        rows = [
            ("1 KiB round trip p50 (us)", "rtt", "p50_us", False),
            ("1 KiB round trip p99 (us)", "rtt", "p99_us", False),
            ("pipelined 1 KiB, 64 in flight (msg/s)", "pipelined", "msg_per_s", True),
            ("1 MiB binary, 4 in flight (MB/s)", "bulk", "mb_per_s", True),
            ("200 conns x 50 round trips, total (s)", "many", "total_s", False),
            ("  ... round trip p99 (ms)", "many", "p99_ms", False),
            ("  ... slowest connect (ms)", "many", "connect_max_ms", False),
            ("  ... accept-queue overflows (system-wide)", "many", "listen_overflows", False),
        ]
        for label, test, key, hb in rows:
            t.add(label, *(cell(tests[test], n, key, hb, ratio=key != "listen_overflows") for n in names))
        t.add(
            "errors, all tests and rounds",
            *(
                str(
                    sum(
                        r.get("errors", 0) + ("failed" in r)
                        for test in tests.values()
                        for r in test.get(n, ())
                    )
                )
                for n in names
            ),
        )
        for label, test in (
            ("1 KiB one at a time", "rtt"),
            ("1 KiB pipelined", "pipelined"),
            ("1 KiB, 200 conns", "many"),
            ("1 MiB", "bulk"),
        ):
            t.add(
                f"relay CPU per round trip, {label} (us)",
                *(fmt(med(tests[test][n], "mixer_us_per_msg")) for n in names),
            )
        t.add(
            "backend CPU per msg, pipelined (us)",
            *(fmt(med(tests["pipelined"][n], "backend_us_per_msg")) for n in names),
        )
        for test in ("rtt", "pipelined", "bulk", "many"):
            t.add(f"client CPU %, {test}", *(fmt(med(tests[test][n], "client_cpu_pct")) for n in names))
        t.add("other processes' CPU %, worst test", *(fmt(noise(tests, n)) for n in names))
        t.add(
            "mixer peak RSS, 200 conns (MB)",
            *(fmt(tests["many"].get("_peak_rss_mb", {}).get(n)) for n in names),
        )
        out.append(t.render())
        for n in names:
            if n == "direct" or n.startswith("ref-"):
                continue
            r = ratio_of(tests["rtt"], n, "p50_us")
            target("websocket 1 KiB round trip p50", "<= 1.3x", n, r, r is not None and r <= 1.3)
            r = ratio_of(tests["pipelined"], n, "msg_per_s")
            target("pipelined 1 KiB msg/s", ">= 0.6x", n, r, r is not None and r >= 0.6)
            r = ratio_of(tests["bulk"], n, "mb_per_s")
            target("1 MiB binary MB/s", ">= 0.75x", n, r, r is not None and r >= 0.75)
            r = ratio_of(tests["many"], n, "total_s")
            errs = sum(x.get("errors", 0) + ("failed" in x) for x in tests["many"][n])
            target(
                "200 x 50 concurrent, total time",
                "<= 1.6x, 0 errors",
                n,
                r,
                r is not None and r <= 1.6 and errs == 0,
            )
            v = med(tests["pipelined"][n], "mixer_us_per_msg")
            target("mixer CPU per small message (us, pipelined)", "<= 25 us", n, v, v is not None and v <= 25)
            v = tests["many"].get("_peak_rss_mb", {}).get(n)
            target("mixer peak RSS, 200 websockets (MB)", "<= 80 MB", n, v, v is not None and v <= 80)

    kernel = results.get("kernel")
    if kernel:
        tests = kernel["tests"]
        names = [n for n in tests["exec_small"] if not n.startswith("_")]
        t = Table("\n2. Real kernels (jupyter_server + ipykernel as local backend)", ["figure", *names])
        t.add(
            f"{kernel.get('exec_n', '?')} x 1+1, total (s)",
            *(cell(tests["exec_small"], n, "total_s") for n in names),
        )
        t.add("  ... per execution p50 (ms)", *(cell(tests["exec_small"], n, "p50_ms") for n in names))
        t.add("20 MB cell (s)", *(cell(tests["exec_big"], n, "total_s") for n in names))
        t.add("  ... MB received", *(fmt(med(tests["exec_big"][n], "printed_mb")) for n in names))
        t.add(
            f"mixer CPU, {kernel.get('exec_n', '?')} x 1+1 (s)",
            *(fmt(med(tests["exec_small"][n], "mixer_cpu_s")) for n in names),
        )
        t.add("mixer CPU, 20 MB cell (s)", *(fmt(med(tests["exec_big"][n], "mixer_cpu_s")) for n in names))
        t.add("client CPU %, 20 MB cell", *(fmt(med(tests["exec_big"][n], "client_cpu_pct")) for n in names))
        t.add("other processes' CPU %, worst test", *(fmt(noise(tests, n)) for n in names))
        out.append(t.render())
        for n in names:
            if n == "direct":
                continue
            for figure, test in (
                (f"real kernel {kernel.get('exec_n', '?')} x 1+1", "exec_small"),
                ("real kernel 20 MB cell", "exec_big"),
            ):
                r = ratio_of(tests[test], n, "total_s")
                errs = sum(x.get("errors", 0) + ("failed" in x) for x in tests[test][n])
                target(figure, "<= 1.05x", n, r, r is not None and r <= 1.05 and errs == 0)

    rest = results.get("rest")
    if rest:
        t = Table(
            "\n3. REST listings (direct = the slower backend alone; p50 ms)",
            ["scenario", "request", "config", "p50 ms", "p90 ms", "cold ms", "mixer CPU/req us", "errors"],
        )
        for scen in ("both_fast", "remote_200ms", "local_100ms_remote_200ms"):
            if scen not in rest:
                continue
            s = rest[scen]
            for path, test in s["tests"].items():
                for n in [x for x in test if not x.startswith("_")]:
                    cold = s["cold"].get(n, {}).get(path, {})
                    t.add(
                        scen,
                        path.rsplit("/", 1)[1],
                        n,
                        cell(test, n, "p50_ms"),
                        fmt(med(test[n], "p90_ms")),
                        fmt(cold.get("ms")),
                        fmt(med(test[n], "mixer_us_per_msg")),
                        fmt(sum(x.get("errors", 0) + ("failed" in x) for x in test[n])),
                    )
        out.append(t.render())
        for n in [
            x for x in rest["both_fast"]["tests"]["/api/kernels"] if x != "direct" and not x.startswith("_")
        ]:
            fast = rest["both_fast"]["tests"]
            r = ratio_of(fast["/api/kernelspecs"], n, "p50_ms")
            target("REST both fast, kernelspecs p50", "<= 2x", n, r, r is not None and r <= 2)
            r = ratio_of(fast["/api/kernels"], n, "p50_ms")
            target("REST both fast, kernels p50", "<= 3x", n, r, r is not None and r <= 3)
            slow = rest["local_100ms_remote_200ms"]
            r = ratio_of(slow["tests"]["/api/kernels"], n, "p50_ms")
            target(
                "REST local+100 remote+200, kernels p50",
                "<= 1.05x of slower",
                n,
                r,
                r is not None and r <= 1.05,
            )
            cold = slow["cold"].get(n, {}).get("/api/kernels", {}).get("ms")
            direct = med(slow["tests"]["/api/kernels"]["direct"], "p50_ms")
            r = cold / direct if cold and direct else None
            target(
                "REST local+100 remote+200, first kernels",
                "<= 1.05x of slower",
                n,
                r,
                r is not None and r <= 1.05,
            )
            v = med(slow["tests"]["/api/kernelspecs"][n], "p50_ms")
            target(
                "REST local+100 remote+200, kernelspecs fresh cache (ms)",
                "<= 10 ms",
                n,
                v,
                v is not None and v <= 10,
            )
        bh = rest.get("blackhole", {})
        if bh:
            t = Table(
                "\n3b. Remote blackholed (accepts TCP, never answers)",
                [
                    "mixer",
                    "phase",
                    "first specs ms",
                    "first kernels ms",
                    "local listed",
                    "later p50 ms",
                    "later max ms",
                    "later all ok",
                    "back after s",
                ],
            )
            for n, b in bh.items():
                for phase in ("cold", "warm"):
                    ph = b.get(phase, {})
                    fs, fk = ph.get("first_kernelspecs", {}), ph.get("first_kernels", {})
                    later = ph.get("later", {})
                    back = b.get("recovery_s") if phase == "cold" else None
                    t.add(
                        n,
                        "fresh mixer" if phase == "cold" else "warm mixer",
                        fmt(fs.get("ms")),
                        fmt(fk.get("ms")),
                        str(bool(fs.get("local_listed") and fk.get("local_listed"))),
                        fmt(later.get("p50_ms")),
                        fmt(later.get("max_ms")),
                        str(later.get("all_ok")),
                        fmt(back) if phase == "cold" else "-",
                    )
                    first = max(fs.get("ms", 1e9), fk.get("ms", 1e9))
                    listed = bool(fs.get("local_listed") and fk.get("local_listed"))
                    target(
                        f"blackholed remote ({phase}), first answers (ms)",
                        "<= 3000 ms, local listed",
                        n,
                        first,
                        first <= 3000 and listed,
                    )
                    v = later.get("max_ms")
                    target(
                        f"blackholed remote ({phase}), later answers max (ms)",
                        "<= 50 ms",
                        n,
                        v,
                        v is not None and v <= 50 and bool(later.get("all_ok")),
                    )
                v = b.get("recovery_s")
                target(
                    "remote back after un-blackholing (s, specs)",
                    "within seconds (<= 10 s)",
                    n,
                    v,
                    v is not None and v <= 10,
                )
            out.append(t.render())
            out.append(
                "  (remote's new kernel listed after recovery, s: "
                + ", ".join(f"{n} {fmt(b.get('recovery_kernels_s'))}" for n, b in bh.items())
                + ")"
            )

    instances = meta.get("instances", [])
    if instances:
        t = Table(
            "\n4. Mixer processes (one per section/scenario)",
            [
                "mixer",
                "section",
                "CPU s",
                "peak RSS MB",
                "gcloud runs",
                "client reqs",
                "remote reqs",
                "runs/client req",
                "alive",
            ],
        )
        for i in instances:
            reqs = i.get("client_requests") or 0
            t.add(
                i["mixer"],
                i["section"],
                fmt(i["cpu_s"]),
                fmt(i["peak_rss_mb"]),
                str(i["gcloud_runs"]),
                str(reqs),
                fmt(i.get("remote_requests")),
                fmt(i["gcloud_runs"] / reqs if reqs else None),
                str(i["alive_at_end"]),
            )
        out.append(t.render())
        for label in {i["mixer"] for i in instances}:
            mine = [i for i in instances if i["mixer"] == label]
            worst = max(i["gcloud_runs"] for i in mine)
            reqs = sum(i.get("client_requests") or 0 for i in mine)
            target(
                "credential command runs (max per mixer instance, token lifetime 1 h)",
                "<= 1",
                label,
                worst,
                worst <= 1,
            )
            target(
                f"credential runs per request ({reqs} requests)",
                "~0",
                label,
                sum(i["gcloud_runs"] for i in mine) / reqs if reqs else None,
                None,
            )
            peak = max(i["peak_rss_mb"] for i in mine)
            target("mixer peak RSS, any section incl. 20 MB cell (MB)", "(80 MB)", label, peak, None)
            dead = [i["section"] for i in mine if not i["alive_at_end"]]
            target(
                "mixer still running at end of each section",
                "all",
                label,
                f"{len(mine) - len(dead)}/{len(mine)}",
                not dead,
            )

    worst = [
        noise(results[sec]["tests"], n)
        for sec in ("ws", "kernel")
        if sec in results
        for n in results[sec]["tests"].get("rtt" if sec == "ws" else "exec_small", {})
        if not n.startswith("_")
    ]
    worst = [w for w in worst if w is not None]
    if worst and max(worst) > 15:
        out.append(
            f"\nWARNING: other processes used up to {max(worst):.0f}% of a CPU during the "
            "measurements; the ratios are skewed. Run again on a quiet machine."
        )

    if targets:
        t = Table("\nTargets (issue 3)", ["figure", "target", "config", "measured", "verdict"])
        for x in targets:
            v = x["value"]
            is_ratio = "x" in x["target"] and isinstance(v, float)
            measured = f"{v:.3f}x" if is_ratio and 0.1 <= v < 10 else fmt(v) + ("x" if is_ratio else "")
            verdict = {True: "ok", False: "MISS", None: "info"}[x["ok"]]
            t.add(x["figure"], x["target"], x["config"], measured, verdict)
        out.append(t.render())
    return "\n".join(out), targets


def spy_summary(label: str, path: Path, top: int = 12) -> str:
    """Hot spots from a py-spy raw (collapsed) profile: leaf frames, and the deepest
    mixer frame of each sample (which line of the mixer's code the time is spent under)."""
    leaf: dict[str, int] = {}
    mine: dict[str, int] = {}
    total = 0
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        return f"\nprofile {label}: {exc}"
    for line in lines:
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = stack.split(";")
        leaf[frames[-1]] = leaf.get(frames[-1], 0) + n
        own = [
            f for f in frames if "notebook_kernels_mixer/" in f and "cli.py" not in f and "__main__" not in f
        ]
        key = own[-1] if own else f"(outside the mixer's code) {frames[-1]}"
        mine[key] = mine.get(key, 0) + n
    if not total:
        return f"\nprofile {label}: no samples"
    out = [f"\nprofile {label}: {total} samples at 250 Hz ({path})", "  leaf frames:"]
    out += [f"  {100 * n / total:5.1f}%  {f}" for f, n in sorted(leaf.items(), key=lambda x: -x[1])[:top]]
    out.append("  deepest mixer frame:")
    out += [f"  {100 * n / total:5.1f}%  {f}" for f, n in sorted(mine.items(), key=lambda x: -x[1])[:top]]
    return "\n".join(out)


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


async def amain(args: argparse.Namespace) -> int:
    if args.wait_quiet:
        await wait_quiet(args.wait_quiet)
    bench = Bench(args)
    loop_kind = type(asyncio.get_running_loop()).__module__.split(".")[0]
    meta = {
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
    try:
        results = await bench.run()
    finally:
        bench.procs.stop_all()
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short run (under 2 minutes)")
    parser.add_argument("--json", help="also write the results as JSON here")
    parser.add_argument(
        "--mixer-cmd",
        action="append",
        metavar="[LABEL=]TEMPLATE",
        help="mixer command line to benchmark (repeatable; 'default' = this package)",
    )
    parser.add_argument("--direct-only", action="store_true", help="no mixer: check the harness")
    parser.add_argument("--sections", default="ws,kernel,rest", help="subset of ws,kernel,rest")
    parser.add_argument("--out-dir", help="logs and results (default bench/results/<time>)")
    parser.add_argument("--no-uvloop", action="store_true")
    parser.add_argument(
        "--wait-quiet",
        type=float,
        default=0,
        metavar="S",
        help="first wait up to S seconds for the machine to be idle",
    )
    parser.add_argument(
        "--no-reference", action="store_true", help="leave out the byte-splice reference relay"
    )
    parser.add_argument(
        "--py-spy",
        nargs="?",
        const="py-spy",
        metavar="PATH",
        help="profile each mixer with py-spy (skews its timings); prints the hot spots",
    )
    args = parser.parse_args(argv)
    if args.py_spy and os.sep not in args.py_spy:
        found = shutil.which(args.py_spy) or shutil.which(args.py_spy, path=str(Path(sys.executable).parent))
        if not found:
            parser.error(f"{args.py_spy} not found (pip install py-spy)")
        args.py_spy = found

    def stop(signum, frame):  # SIGTERM: unwind so every started process is stopped
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
