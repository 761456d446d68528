"""The benchmark's processes and what /proc says about them.

Every server of a run is a child process started here and stopped by its own pid (and
whatever it left behind, e.g. kernels, by pid and start time). The meters read CPU
clocks and peak memory from /proc, so a figure never depends on the process's help.
The generic helpers (free ports, descendants) are the package's own
(``notebook_kernels_mixer.processes``), shared with ``mixer lab`` and the tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import signal
import socket
import subprocess
import time
from pathlib import Path

from notebook_kernels_mixer.processes import descendants

CLK_TCK = os.sysconf("SC_CLK_TCK")


def tree(pid: int) -> list[int]:
    """``pid`` and its live descendants."""
    return [pid, *descendants(pid)]


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    """Whether something accepts TCP on ``port`` (a blackhole does, and never answers
    HTTP: readiness here is the listening socket, not an HTTP answer)."""
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex((host, port)) == 0


def _stat(pid: int) -> list[bytes] | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    return stat[stat.rindex(b")") + 2 :].split()


def start_time(pid: int) -> int | None:
    """Start time in clock ticks since boot: with the pid, names one process for good."""
    fields = _stat(pid)
    return int(fields[19]) if fields else None


def cpu_seconds(pid: int) -> float:
    """CPU time of a process (all threads) plus its reaped children.

    The process's own time comes from its CPU-time clock (nanoseconds; Linux's
    MAKE_PROCESS_CPUCLOCK(pid, CPUCLOCK_SCHED)), since /proc's utime+stime tick at only
    100 Hz; reaped children (e.g. credential commands) only from /proc.
    """
    fields = _stat(pid)
    if fields is None:
        return 0.0
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
    """Reset the peak RSS (VmHWM) of ``pid``'s tree, so a test measures its own peak."""
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
        left = [(p, start_time(p)) for p in descendants(proc.pid)]
        if proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        # Anything it started and left behind (kernels), by pid, if that pid is still
        # the same process (same start time).
        for pid, started in left:
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
    """Until ``proc`` accepts TCP on ``port``; raises with its log's tail if it exits."""
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
