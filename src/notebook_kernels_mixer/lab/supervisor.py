"""Process supervision for ``mixer lab``: start children, wait until they are ready,
watch them, and stop every one of them, kernels included.

Nothing here knows what the children are (that is :mod:`.topology`), nor how one
process is started or stopped (that is :class:`notebook_kernels_mixer.processes.Process`:
a session and a log file of its own, SIGTERM to its group, SIGKILL after a grace,
kernels left in other sessions killed by PID, never a PID reused by another process).
The supervisor is a plain blocking loop (the mixer has its event loop in its own
process): every readiness wait is bounded; the first child that exits, or SIGINT /
SIGTERM / SIGHUP, ends supervision. Stopping goes in order: the children marked
``stop_first`` (the front, which shuts its kernels down through the mixer), then the
others in reverse start order, each group at once; kernels are remembered through
/proc while their server is alive, to be killed by PID if their server left them
behind. On Linux a child also gets SIGTERM when the launcher itself dies
(PR_SET_PDEATHSIG), even by SIGKILL.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType

from notebook_kernels_mixer.processes import Process

#: Seconds between two /proc scans for the children's descendants (their kernels).
SCAN_INTERVAL = 2.0
POLL_INTERVAL = 0.2
#: Seconds kernels left behind get to end by themselves once their server is gone.
REAP_GRACE = 3.0


class LabError(Exception):
    """mixer lab cannot go on; the message says which child and why."""


def tail(path: Path, lines: int = 30) -> str:
    """The end of a child's log, for the message that says why it stopped."""
    try:
        text = path.read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return f"(no log at {path})"
    return f"--- last {len(text)} lines of {path} ---\n" + "\n".join(text)


class Child(Process):
    """One process to start: how, where it logs, and how to tell it is ready."""

    def __init__(
        self,
        name: str,
        argv: list[str],
        env: dict[str, str],
        log_path: Path,
        cwd: str,
        ready: Callable[[], bool],
        stop_first: bool = False,
    ) -> None:
        super().__init__(name, argv, log_path=log_path, env=env, cwd=cwd, ready=ready,
                         poll_interval=POLL_INTERVAL, reap_grace=REAP_GRACE,
                         die_with_parent=True)  # fmt: skip
        self.stop_first = stop_first


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
                child.start(wait=False)
            except OSError as exc:
                raise LabError(f"cannot start the {child.name}: {exc}") from None
            self.children.append(child)

    def _check_started(self, child: Child) -> bool:
        """Whether ``child`` is ready; raises if it died while starting."""
        code = child.returncode
        if code is not None:
            raise LabError(
                f"the {child.name} (pid {child.pid}) exited with code {code} while "
                f"starting\n{tail(child.log_path)}"
            )
        return child.ready is None or child.ready()

    def wait_ready(self, *children: Child) -> None:
        """Until every one of ``children`` is ready; any child that dies meanwhile (not
        only those waited for) ends the wait, as does a signal or the timeout."""
        deadline = time.monotonic() + self.ready_timeout
        pending = list(children)
        while pending:
            for child in self.children:
                if child not in pending and child.returncode is not None:
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
                code = child.returncode
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
            child.terminate()
        deadline = time.monotonic() + grace
        for child in group:
            child.finish_stop(max(0.1, deadline - time.monotonic()))
            if child.forced:
                self.say(f"the {child.name} (pid {child.pid}) did not stop in {grace:g}s; killed it")

    def stop_all(self, grace: float = 10.0) -> None:
        """Stop every child (``stop_first`` ones first), each with the kernels it left."""
        first = [c for c in self.children if c.stop_first]
        rest = [c for c in reversed(self.children) if not c.stop_first]
        for group in (first, rest):
            self._stop_group(group, grace)
