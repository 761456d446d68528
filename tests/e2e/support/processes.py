"""Start, probe and stop the real processes of the end-to-end topology.

Every process is started in its own session (so it leads its own process group),
logs to a file, is waited for with a bounded readiness probe and is stopped by
its PID: SIGTERM to its group, then SIGKILL. Processes the child left behind in
other groups (jupyter_client starts kernels with ``start_new_session=True``) are
found through /proc before the stop and killed by PID if they outlive it.
Failure messages carry the tail of the process log.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from notebook_kernels_mixer.processes import descendants, is_alive, spawn


def _redact_arg(arg: str) -> str:
    """``--x-token=secret`` → ``--x-token=<redacted>`` (the logs are checked for tokens)."""
    name, eq, _ = arg.partition("=")
    if eq and name.startswith("-") and ("token" in name.lower() or "header" in name.lower()):
        return f"{name}=<redacted>"
    return arg


class ProcessFailed(RuntimeError):
    pass


class ManagedProcess:
    """One subprocess with a log file, a readiness probe and a PID-based stop."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        log_path: Path,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        ready: Callable[[], bool] | None = None,
        ready_timeout: float = 60.0,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = Path(log_path)
        self.env = dict(env) if env is not None else dict(os.environ)
        self.cwd = cwd
        self.ready = ready
        self.ready_timeout = ready_timeout
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.frozen = False  # stopped with SIGSTOP (``freeze``) and not continued yet

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, wait: bool = True) -> ManagedProcess:
        if self.running():
            raise ProcessFailed(f"{self.name} is already running (pid {self.pid})")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.starts += 1
        shown = " ".join(_redact_arg(a) for a in self.argv)
        self.proc = spawn(self.argv, log_path=self.log_path, env=self.env, cwd=self.cwd,
                          banner=f"\n===== start #{self.starts}: {shown}")
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float | None = None) -> None:
        deadline = time.monotonic() + (timeout if timeout is not None else self.ready_timeout)
        while True:
            if not self.running():
                code = self.proc.returncode if self.proc else None
                raise ProcessFailed(
                    f"{self.name} exited with code {code} before it was ready\n{self.tail_text()}"
                )
            if self.ready is None or self.ready():
                return
            if time.monotonic() > deadline:
                pid = self.pid
                self.stop()
                raise ProcessFailed(
                    f"{self.name} (pid {pid}) not ready within "
                    f"{timeout or self.ready_timeout:.0f}s\n{self.tail_text()}"
                )
            time.sleep(0.1)

    def freeze(self) -> None:
        """SIGSTOP the process alone, not its group nor its children: a server that
        hangs (a network partition, a laptop lid) while its kernels keep running."""
        if self.proc is None or self.proc.poll() is not None:
            raise ProcessFailed(f"{self.name} is not running: nothing to freeze")
        os.kill(self.proc.pid, signal.SIGSTOP)
        self.frozen = True

    def thaw(self) -> None:
        """SIGCONT after ``freeze``; harmless when not frozen or already gone."""
        if self.frozen and self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGCONT)
        self.frozen = False

    def wait_exit(self, timeout: float) -> int:
        """The exit status of a process expected to end by itself (e.g. a refused start)."""
        if self.proc is None:
            raise ProcessFailed(f"{self.name} was never started")
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise ProcessFailed(
                f"{self.name} (pid {self.proc.pid}) still runs after {timeout:.0f}s\n{self.tail_text()}"
            ) from None

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM the process group, SIGKILL it after ``timeout``; reap leftovers by PID."""
        if self.proc is None:
            return None
        self.thaw()  # a stopped process would not act on SIGTERM
        proc = self.proc
        pid = proc.pid
        leftovers = descendants(pid) if proc.poll() is None else []
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGKILL)
                proc.wait(timeout=10)
        else:
            # the leader is gone; its group may still hold children
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
        self._reap(leftovers)
        return proc.returncode

    def kill(self) -> None:
        """SIGKILL the process group at once (a crash), reaping leftovers by PID."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.frozen = False  # SIGKILL ends a stopped process too
        pid = self.proc.pid
        leftovers = descendants(pid)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
        self.proc.wait(timeout=10)
        self._reap(leftovers)

    def restart(self, wait: bool = True) -> None:
        self.stop()
        self.start(wait=wait)

    @staticmethod
    def _reap(pids: list[int], grace: float = 5.0) -> None:
        # processes of other sessions (kernels) get a chance to be shut down by their
        # server; whatever outlives the grace period is killed by its PID
        deadline = time.monotonic() + grace
        live = [p for p in pids if is_alive(p)]
        while live and time.monotonic() < deadline:
            time.sleep(0.1)
            live = [p for p in live if is_alive(p)]
        for p in live:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(p, signal.SIGKILL)

    # -- diagnostics -------------------------------------------------------------------------

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def tail_text(self, lines: int = 60) -> str:
        tail = self.log_text().splitlines()[-lines:]
        return f"--- last {len(tail)} lines of {self.log_path} ---\n" + "\n".join(tail)

    def __repr__(self) -> str:
        return f"<ManagedProcess {self.name} pid={self.pid} running={self.running()}>"
