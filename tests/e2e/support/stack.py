"""The running topology of SPEC §1, shared by the e2e, fuzz, browser and soak tests.

A ``Stack`` is a local jupyter_server (token), a remote jupyter_server that accepts only
the bearer token a stand-in ``gcloud`` prints, the mixer in front of both, and
optionally the front (a jupyter_server, or JupyterLab for the browser tests) that uses
the mixer as its gateway. Everything is prepared at once (ports, directories, tokens)
and started in dependency order on demand: the e2e suite starts the front only when a
test asks for it, the other suites start all with ``with Stack(workdir) as stack``.
Processes stop newest first, by PID; the process logs stay under ``workdir``.
"""

from __future__ import annotations

import contextlib
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TypeVar

from notebook_kernels_mixer.processes import gateway_headers

from . import topology
from .fake_gcloud import FakeGcloud
from .processes import ManagedProcess
from .topology import JupyterServer, Mixer

FrontKind = Literal["server", "lab"]
S = TypeVar("S", bound="Stack")


@dataclass(frozen=True)
class Tokens:
    jupyter: str  # the local jupyter's token, also the one clients present to the mixer
    front: str  # the front's own token
    xsrf: str  # the _xsrf value tests send to the mixer directly

    @classmethod
    def fresh(cls) -> Tokens:
        return cls(jupyter=uuid.uuid4().hex, front=uuid.uuid4().hex, xsrf=uuid.uuid4().hex)


class Stack:
    """local + bearer-only remote + mixer (+ front), prepared here, started on demand."""

    def __init__(self, workdir: Path, *, front: FrontKind | None = None) -> None:
        self.workdir = workdir
        self.tokens = Tokens.fresh()
        self.gcloud = FakeGcloud(workdir / "gcloud", token_file=workdir / "remote-bearer-token")
        self.local = topology.jupyter_server("local", workdir, where="local", token=self.tokens.jupyter)
        self.remote = topology.jupyter_server(
            "remote", workdir, where="remote", bearer_file=self.gcloud.token_file
        )
        self.mixer = topology.mixer(
            workdir, local=self.local, remote=self.remote, token=self.tokens.jupyter, gcloud=self.gcloud
        )
        self.front: JupyterServer | None = None
        if front is not None:
            self.front = topology.front_server(
                workdir, token=self.tokens.front, mixer_port=self.mixer.port,
                mixer_token=self.tokens.jupyter, lab=front == "lab",
            )  # fmt: skip
        self._started: list[ManagedProcess] = []  # in start order

    # -- start and stop ------------------------------------------------------------------------

    def start_backends(self) -> None:
        """local and remote, in parallel: each costs seconds on a small machine."""
        pending = [s for s in (self.local, self.remote) if s.process not in self._started]
        for server in pending:
            server.start(wait=False)
            self._started.append(server.process)
        for server in pending:
            server.wait_ready()

    def start_mixer(self) -> Mixer:
        self.start_backends()
        if not topology.mixer_available():
            raise RuntimeError("notebook_kernels_mixer is not installed (pip install -e .)")
        self._start(self.mixer.process)
        return self.mixer

    def start_front(self) -> JupyterServer:
        if self.front is None:
            raise ValueError("this stack was prepared without a front")
        self.start_mixer()
        self._start(self.front.process)
        return self.front

    def start(self: S) -> S:
        """Everything this stack was prepared with."""
        if self.front is not None:
            self.start_front()
        else:
            self.start_mixer()
        return self

    def _start(self, process: ManagedProcess) -> None:
        if process not in self._started:
            self._started.append(process)  # first: a failed start is stopped (its group) too
            process.start()

    def repair(self) -> None:
        """Put back what a test broke on purpose: ``gcloud`` answers again and every
        process started so far runs again (in start order, each waited for), none
        left frozen."""
        self.gcloud.succeed()
        for process in self._started:
            process.thaw()
            if not process.running():
                process.start()

    def stop(self) -> None:
        """Stop every started process, newest first; one failing stop does not keep the
        others running (the first error is raised at the end)."""
        errors: list[Exception] = []
        while self._started:
            try:
                self._started.pop().stop()
            except Exception as exc:
                errors.append(exc)
        if errors:
            raise errors[0]

    def __enter__(self: S) -> S:
        try:
            return self.start()
        except BaseException:
            with contextlib.suppress(Exception):
                self.stop()
            raise

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- what the tests use --------------------------------------------------------------------

    def mixer_headers(self) -> dict[str, str]:
        """What every request to the mixer carries: the token and a matching XSRF pair
        (SPEC §1's GatewayClient headers)."""
        return gateway_headers(self.tokens.jupyter, self.tokens.xsrf)

    def processes(self) -> list[ManagedProcess]:
        """The started processes, in start order."""
        return list(self._started)

    def leader_pids(self) -> dict[str, int]:
        """name → PID (a process-group leader) of every running process, for a
        last-resort stop by PID from outside."""
        return {p.name: p.pid for p in self._started if p.running() and p.pid is not None}

    def logs(self, lines: int = 80) -> str:
        """The tail of every process log, for a failure message."""
        return "\n\n".join(p.tail_text(lines) for p in self._started)
