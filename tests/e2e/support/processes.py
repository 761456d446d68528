"""Start, probe and stop the real processes of the end-to-end topology.

The class is the package's own :class:`notebook_kernels_mixer.processes.Process`, the one
``mixer lab`` and the benchmark use: every process in a session of its own, logging to a
file, waited for with a bounded readiness probe, stopped by its PID (SIGTERM to its
group, then SIGKILL; what it left in other sessions, e.g. kernels, killed by PID after a
grace, never a PID that names another process by then). Failure messages carry the tail
of the process log; the log's start line shows no token.
"""

from __future__ import annotations

from notebook_kernels_mixer.processes import Process, ProcessError

__all__ = ["ManagedProcess", "ProcessFailed"]

#: What the tests catch when a process does not start, get ready or end as asked.
ProcessFailed = ProcessError


class ManagedProcess(Process):
    """One subprocess of a test topology (``Process`` with the tests' defaults)."""
