"""What a soak run records, and its clock.

Every operation of a worker runs inside ``Ledger.op``: a failure is recorded with its
time span (seconds since the start), the backend it depended on and, when known, when
the kernel or session it used was created, so that the verdict (``checks.py``) can
tell a failure explained by a restart of the remote from one that is not.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass

BACKENDS = ("local", "remote")
SPECS = {"local": "local-python3", "remote": "remote-python3"}
OTHER = {"local": "remote", "remote": "local"}
HTTP_TIMEOUT = 60.0  # one REST call; the mixer itself gives up on a backend after 10 s
EXECUTE_TIMEOUT = 60.0  # the first execute on a new kernel waits for it to start
MIB = 1024 * 1024


@dataclass
class Failure:
    backend: str  # the backend the operation depended on
    worker: str
    what: str
    detail: str
    t0: float  # seconds since the soak started
    t1: float
    stale: bool = False  # about an object created before a restart that happened since
    backend_5xx: bool = False  # the backend's own 5xx (jupyter_server's bug), passed on or named
    created: float | None = None  # when the kernel/session the operation used was created
    kernel: str | None = None  # the kernel the operation used, when it had one
    explained: str = ""  # "down window" / "stale" / "backend's own 5xx" / "" (unexplained)


@dataclass
class Window:
    down: float  # the stop began
    stopped: float | None = None  # the server process was gone
    up: float | None = None  # the restarted server answered again


@dataclass
class Tally:
    execute_requests: int = 0
    execute_replies: int = 0
    lost: int = 0
    misrouted: int = 0
    kernels_started: int = 0
    kernels_stopped: int = 0
    websockets_opened: int = 0
    websockets_closed: int = 0
    operations: int = 0


class HttpError(RuntimeError):
    def __init__(self, status: int, backend: str | None, text: str) -> None:
        super().__init__(f"{text} (X-Mixer-Backend={backend})")
        self.status, self.backend, self.text = status, backend, text

    def from_backend(self, name: str) -> bool:
        """A 5xx the backend made itself: passed through (``X-Mixer-Backend``), or named
        by the mixer's error for a merged listing ("<name>: answered HTTP 5xx")."""
        if self.status < 500:
            return False
        return self.backend == name or re.search(rf"\b{name}: answered HTTP 5\d\d", self.text) is not None


class Misrouted(Exception):
    pass


class Lost(Exception):
    pass


class Ledger:
    """The clock of one soak run and everything it records: per-backend tallies, failed
    operations, the remote's down windows, session switches, execute latencies."""

    def __init__(self, duration: float) -> None:
        self.started = time.monotonic()
        self.deadline = self.started + duration
        self.stop = asyncio.Event()
        self.tally = {b: Tally() for b in BACKENDS}
        self.failures: list[Failure] = []
        self.windows: list[Window] = []
        self.switches: Counter[str] = Counter()
        self.successes_after: dict[str, list[float]] = {b: [] for b in BACKENDS}  # execute reply times
        self.latency: dict[str, list[float]] = {b: [] for b in BACKENDS}  # seconds per checked execute
        # (backend, port) -> kernels started with that port (from their connection files),
        # to tell which kernel a backend's "Address already in use" was about
        self.kernel_ports: dict[tuple[str, int], set[str]] = {}

    def now(self) -> float:
        return time.monotonic() - self.started

    def running(self) -> bool:
        return not self.stop.is_set() and time.monotonic() < self.deadline

    async def pause(self, seconds: float) -> None:
        """Sleep, but wake up as soon as the run is stopped."""
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self.stop.wait(), seconds)

    def websocket_cycles(self) -> int:
        return sum(t.websockets_opened for t in self.tally.values())

    def fail(
        self,
        backend: str,
        worker: str,
        what: str,
        exc: BaseException,
        t0: float,
        created: float | None = None,
        kernel: str | None = None,
    ) -> None:
        t1 = self.now()
        detail = f"{type(exc).__name__}: {exc}"[:600]
        stale = created is not None and any(created < w.down <= t0 for w in self.windows)
        own = isinstance(exc, HttpError) and exc.from_backend(backend)
        self.failures.append(
            Failure(backend, worker, what, detail, round(t0, 3), round(t1, 3), stale, own, created, kernel)
        )

    def note_ports(self, backend: str, kernel: str, ports: set[int]) -> None:
        for port in ports:
            self.kernel_ports.setdefault((backend, port), set()).add(kernel)

    def kernels_on_ports(self, backend: str, ports: set[int]) -> set[str]:
        return {k for port in ports for k in self.kernel_ports.get((backend, port), ())}

    @contextlib.asynccontextmanager
    async def op(
        self, backend: str, worker: str, what: str, created: float | None = None,
        kernel: str | None = None,
    ) -> AsyncIterator[None]:
        """One operation: a failure is recorded (with its time span and kernel) and re-raised."""
        t0 = self.now()
        self.tally[backend].operations += 1
        try:
            yield
        except (Exception, asyncio.TimeoutError) as exc:
            self.fail(backend, worker, what, exc, t0, created, kernel)
            raise
