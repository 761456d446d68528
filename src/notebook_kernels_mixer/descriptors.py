"""Open files: new connections refused cleanly before the descriptors run out.

Every relayed kernel websocket holds two descriptors (the client's leg and the
backend's). ``app.raise_fd_limit`` raises the soft limit to the hard one at start;
when the hard limit is low too, descriptors can still run out, and then the worst
failure is the event loop's: its ``accept()`` fails with EMFILE, and uvloop (libuv)
accepts and closes the waiting connections at once (clients see "Server
disconnected"), while asyncio's own loop logs a traceback and stops accepting for a
second, leaving clients hanging in the backlog. Neither says anything to the client
(``listener`` has an accept loop of the mixer's own for bursts that still meet it).

So the mixer keeps a reserve (``reserve_for``): a new websocket is refused with a
503 — before the upgrade, before any backend connection — once fewer descriptors
than the reserve are left. The reserve is what ``accept()``, REST requests (and
their backend connections) and the refusals themselves keep working with; the
websockets already open are not touched, and once some close, new ones are let
through again. A backend connection that fails with EMFILE/ENFILE anyway is the same
503 (``out_of_descriptors``; ``Backend.failed``), not a 502 and not the backend's
fault (its health is not touched).

How many are left is measured without listing ``/proc/self/fd`` (whose cost grows
with the descriptors open): POSIX gives a new descriptor the lowest free number, so
``os.dup`` of a descriptor the caller holds (two system calls, only when a websocket
opens) tells the lowest free number p, and ``limit - p`` descriptors are free when
nothing above p is open — the usual state, as descriptors are taken from the
bottom. When some below others were closed (holes), the count is optimistic: it
lets connections through while there are freed numbers to take, and fills them
first; should descriptors run out anyway, the EMFILE above is the answer.

One warning per episode (from the first refusal to the next websocket let through,
which takes a quarter of the reserve more, so that a count wobbling at the edge is
one episode), at most one per ``WARN_INTERVAL``, and one line when they are accepted
again with how many were refused: a client retrying in a loop must not flood the log.
"""

from __future__ import annotations

import errno
import logging
import os
import time

try:
    import resource
except ImportError:  # Windows: no such limit to guard
    resource = None  # type: ignore[assignment]

from notebook_kernels_mixer.errors import OutOfDescriptors

log = logging.getLogger(__name__)

#: Descriptors kept free for accept(), REST and the refusals (an eighth of small limits).
RESERVE = 32
#: At most one "out of file descriptors" warning per this many seconds.
WARN_INTERVAL = 60.0
_EXHAUSTED = frozenset({errno.EMFILE, errno.ENFILE})


def reserve_for(limit: int) -> int:
    """How many descriptors stay free for what is not a new websocket."""
    return max(1, min(RESERVE, limit // 8))


def soft_limit() -> int | None:
    """The open-files limit in force now (None: unknown or unlimited)."""
    if resource is None:
        return None
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return None if soft == resource.RLIM_INFINITY else soft


def free_descriptors(fd: int, limit: int) -> int:
    """``limit`` minus the lowest free descriptor number, found by duplicating ``fd``
    (an open descriptor): the free descriptors when none above that number is open.
    0 when even the duplicate fails for want of descriptors."""
    try:
        probe = os.dup(fd)
    except OSError as exc:
        if exc.errno in _EXHAUSTED:
            return 0
        raise
    os.close(probe)
    return max(limit - probe, 0)


def out_of_descriptors(exc: BaseException | None) -> bool:
    """Whether ``exc`` says the process (EMFILE) or the system (ENFILE) has no
    descriptor left, also as aiohttp wraps it (``ClientConnectorError.os_error``)."""
    inner = getattr(exc, "os_error", None)
    if isinstance(inner, OSError) and inner.errno in _EXHAUSTED:
        return True
    return isinstance(exc, OSError) and exc.errno in _EXHAUSTED


class Descriptors:
    """The process's guard (descriptors are per process): ``check`` before a new
    websocket, ``refusal`` for an EMFILE met anyway, one log line per episode."""

    def __init__(self, *, warn_interval: float = WARN_INTERVAL) -> None:
        self.warn_interval = warn_interval
        #: Refusals since the last "free again" line.
        self.refused = 0
        self._episode = False
        self._told = False  # this episode's warning was logged
        self._warned_at: float | None = None

    def check(self, fd: int | None) -> None:
        """Raise ``OutOfDescriptors`` (503) when fewer than the reserve are left;
        ``fd``: a descriptor the caller holds (the client's socket), None if unknown."""
        limit = soft_limit()
        if fd is None or fd < 0 or limit is None:
            return
        reserve = reserve_for(limit)
        # Once refusing, a quarter of the reserve more must be free before websockets are
        # let through again: the count wobbles by a descriptor or two (a state-file
        # journal, a pooled backend connection), which must not make an episode many.
        if free_descriptors(fd, limit) < reserve + (reserve // 4 if self._episode else 0):
            raise self.refusal(limit)
        if self._episode:
            self._episode = False
            if self._told:
                self._told = False
                log.warning("file descriptors free again: new connections are accepted "
                            "(%d refused)", self.refused)
                self.refused = 0

    def refusal(self, limit: int | None = None) -> OutOfDescriptors:
        """Count one refused connection, warn if it starts an episode, and return the
        error (503) for its client."""
        limit = soft_limit() if limit is None else limit
        shown = "unknown" if limit is None else str(limit)
        self.refused += 1
        self.exhausted(shown)
        return OutOfDescriptors(
            f"the mixer is out of file descriptors (open-files limit {shown}); new "
            "connections are refused until some close")

    def exhausted(self, shown: str | None = None) -> None:
        """None left (an accept() that failed): the episode's warning if it starts one."""
        if shown is None:
            limit = soft_limit()
            shown = "unknown" if limit is None else str(limit)
        if not self._episode:
            self._episode = True
            now = time.monotonic()
            if self._warned_at is None or now - self._warned_at >= self.warn_interval:
                self._warned_at, self._told = now, True
                log.warning(
                    "out of file descriptors (open-files limit %s): new websockets and "
                    "backend connections are refused with 503 until some close; existing "
                    "ones go on; a higher hard limit (ulimit -Hn) allows more", shown)


#: The one guard of this process.
DESCRIPTORS = Descriptors()

