"""The benchmark's processes and what /proc says about them.

Every server of a run is a :class:`notebook_kernels_mixer.processes.Process` (the class
``mixer lab`` and the tests use) started here, ready once it accepts TCP on its port,
and stopped by its own pid: its process group, then whatever it left behind in other
sessions (kernels) by pid and start time, at once. The meters read CPU clocks and peak
memory from /proc, so a figure never depends on the process's help.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import time
from pathlib import Path

from notebook_kernels_mixer.processes import Process, descendants, port_open

CLK_TCK = os.sysconf("SC_CLK_TCK")


def tree(pid: int) -> list[int]:
    """``pid`` and its live descendants."""
    return [pid, *descendants(pid)]


def _stat(pid: int) -> list[bytes] | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    return stat[stat.rindex(b")") + 2 :].split()


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


def accepts(host: str, port: int) -> bool:
    """Whether something accepts TCP on ``host``:``port`` (IPv4 or IPv6 loopback)."""
    if ":" not in host:
        return port_open(port, host)
    with socket.socket(socket.AF_INET6) as s:
        s.settimeout(0.2)
        return s.connect_ex((host, port)) == 0


class Procs:
    """Processes this benchmark started; each is stopped by its own pid."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.live: list[Process] = []

    def start(self, name: str, cmd: list[str], env: dict[str, str] | None = None,
              port: int | None = None, host: str = "127.0.0.1") -> Process:  # fmt: skip
        """``cmd`` started (not waited for), logging to ``<log_dir>/<name>.log``; ready
        once it accepts TCP on ``host``:``port``. It gets SIGTERM should the benchmark die."""
        proc = Process(
            name, cmd, log_path=self.log_dir / f"{name}.log", env=env, cwd=self.log_dir,
            ready=None if port is None else lambda: accepts(host, port),
            poll_interval=0.05, reap_grace=0.0, die_with_parent=True,
        )  # fmt: skip
        self.live.append(proc)
        return proc.start(wait=False)

    async def launch(self, name: str, cmd: list[str], env: dict[str, str] | None = None, *,
                     port: int, timeout: float = 30, host: str = "127.0.0.1") -> Process:  # fmt: skip
        """``cmd`` started and listening on ``host``:``port``; raises with its log's tail
        if it exits first or does not listen within ``timeout``."""
        proc = self.start(name, cmd, env, port, host)
        await asyncio.to_thread(proc.wait_ready, timeout)
        return proc

    def stop(self, proc: Process, timeout: float = 8.0, sig: int = signal.SIGTERM) -> None:
        proc.stop(timeout, sig)
        if proc in self.live:
            self.live.remove(proc)

    def stop_all(self) -> None:
        for proc in reversed(list(self.live)):
            with contextlib.suppress(Exception):
                self.stop(proc, timeout=5)
