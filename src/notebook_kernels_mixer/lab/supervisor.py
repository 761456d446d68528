"""Process supervision for ``mixer lab``: start children, wait until they are ready,
watch them, and stop every one of them, kernels included.

Nothing here knows what the children are (that is :mod:`.topology`). Each child runs
in its own session, so it leads a process group, and logs to a file of its own. The
supervisor is a plain blocking loop (the mixer has its event loop in its own process):
every readiness wait is bounded; the first child that exits, or SIGINT / SIGTERM /
SIGHUP, ends supervision. Stopping goes in order: the children marked ``stop_first``
(the front, which shuts its kernels down through the mixer), then the others in reverse
start order; a group that outlives its grace period is killed, and kernels that run in
sessions of their own — remembered through /proc while their server was alive — are
killed by PID if their server left them behind. On Linux a child also gets SIGTERM
when the launcher itself dies (PR_SET_PDEATHSIG), even by SIGKILL.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

from notebook_kernels_mixer.processes import descendants, is_alive, spawn

#: Seconds between two /proc scans for the children's descendants (their kernels).
SCAN_INTERVAL = 2.0
POLL_INTERVAL = 0.2


class LabError(Exception):
    """mixer lab cannot go on; the message says which child and why."""


def tail(path: Path, lines: int = 30) -> str:
    """The end of a child's log, for the message that says why it stopped."""
    try:
        text = path.read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return f"(no log at {path})"
    return f"--- last {len(text)} lines of {path} ---\n" + "\n".join(text)


@dataclass
class Child:
    """One process to start: how, where it logs, and how to tell it is ready."""

    name: str
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    cwd: str
    ready: Callable[[], bool]
    stop_first: bool = False
    proc: subprocess.Popen[bytes] | None = None
    known_descendants: set[int] = field(default_factory=set)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def start(self) -> None:
        self.proc = spawn(self.argv, log_path=self.log_path, env=self.env, cwd=self.cwd,
                          banner=f"===== mixer lab starts: {' '.join(self.argv)}",
                          die_with_parent=True)

    def exited(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def remember_descendants(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.known_descendants.update(descendants(self.proc.pid))

    def signal_group(self, sig: int) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, sig)


class Supervisor:
    """The children started so far, the signal that asks to stop, and the stop itself."""

    def __init__(self, ready_timeout: float, say: Callable[[str], None]) -> None:
        self.ready_timeout = ready_timeout
        self.say = say
        self.children: list[Child] = []
        self.stop_signal: int | None = None

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self.stop_signal is None:
            self.stop_signal = signum
        else:  # a second Ctrl-C: stop waiting politely
            for child in self.children:
                child.signal_group(signal.SIGKILL)

    def install_signals(self) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, self._on_signal)

    def start(self, *children: Child) -> None:
        for child in children:
            if self.stop_signal is not None:
                raise LabError("stopped by a signal while starting")
            try:
                child.start()
            except OSError as exc:
                raise LabError(f"cannot start the {child.name}: {exc}") from None
            self.children.append(child)

    def _check_started(self, child: Child) -> bool:
        """Whether ``child`` is ready; raises if it died while starting."""
        code = child.exited()
        if code is not None:
            raise LabError(
                f"the {child.name} (pid {child.pid}) exited with code {code} while "
                f"starting\n{tail(child.log_path)}"
            )
        return child.ready()

    def wait_ready(self, *children: Child) -> None:
        """Until every one of ``children`` is ready; any child that dies meanwhile (not
        only those waited for) ends the wait, as does a signal or the timeout."""
        deadline = time.monotonic() + self.ready_timeout
        pending = list(children)
        while pending:
            for child in self.children:
                if child not in pending and child.exited() is not None:
                    self._check_started(child)
            pending = [c for c in pending if not self._check_started(c)]
            if not pending:
                return
            if self.stop_signal is not None:
                raise LabError("stopped by a signal while starting")
            if time.monotonic() > deadline:
                child = pending[0]
                raise LabError(
                    f"the {child.name} (pid {child.pid}) was not ready within "
                    f"{self.ready_timeout:g}s\n{tail(child.log_path)}"
                )
            time.sleep(POLL_INTERVAL)

    def supervise(self) -> int:
        """Until a signal (exit 0) or the death of a child (exit 1)."""
        last_scan = 0.0
        while self.stop_signal is None:
            for child in self.children:
                code = child.exited()
                if code is not None:
                    self.say(
                        f"the {child.name} (pid {child.pid}) exited with code {code}; "
                        f"stopping the others\n{tail(child.log_path)}"
                    )
                    return 1
            if time.monotonic() - last_scan > SCAN_INTERVAL:
                # Kernels run in sessions of their own; remember them while their
                # server is alive, to reap them should the server die first.
                for child in self.children:
                    child.remember_descendants()
                last_scan = time.monotonic()
            time.sleep(POLL_INTERVAL)
        self.say(f"{signal.Signals(self.stop_signal).name} received; stopping")
        return 0

    def _stop_group(self, group: list[Child], grace: float) -> None:
        for child in group:
            if child.exited() is None:
                child.signal_group(signal.SIGTERM)
        deadline = time.monotonic() + grace
        for child in group:
            if child.proc is None:
                continue
            try:
                child.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.say(f"the {child.name} (pid {child.pid}) did not stop in {grace:g}s; killing it")
            child.signal_group(signal.SIGKILL)  # whatever is left in its group
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.proc.wait(timeout=5)

    def stop_all(self, grace: float = 10.0) -> None:
        """Stop every child (``stop_first`` ones first), then kernels left behind."""
        for child in self.children:
            child.remember_descendants()
        first = [c for c in self.children if c.stop_first]
        rest = [c for c in reversed(self.children) if not c.stop_first]
        for group in (first, rest):
            self._stop_group(group, grace)
        leftovers = {pid for c in self.children for pid in c.known_descendants}
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline and any(is_alive(p) for p in leftovers):
            time.sleep(0.1)
        for pid in leftovers:
            if is_alive(pid):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
