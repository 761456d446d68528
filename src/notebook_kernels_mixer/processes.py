"""Processes for ``mixer lab``, the tests and the benchmark: one :class:`Process` class,
one jupyter_server launcher, and the helpers they share.

* :class:`Process`: a child in a session of its own (it leads a process group), its
  output in a log file, a readiness probe waited for within a bound, freeze/thaw
  (SIGSTOP/SIGCONT), and one stop rule: SIGTERM to the group, SIGKILL after a grace
  period, then the descendants it left in other sessions (kernels) killed by PID. A
  PID is signalled only while its start time (/proc) is the one recorded: never a
  process that got the PID again.
* :func:`jupyter_server_launch`: argv and environment of a jupyter_server (or
  JupyterLab) with its own Jupyter directories, a token or other auth, and optionally
  a gateway with SPEC §1's headers (:func:`gateway_headers`).
* Free loopback ports, process trees, liveness (a zombie is dead), and HTTP probes
  that never go through a proxy (every address here is loopback).

Without /proc (not Linux) the tree walk finds nothing and the guard is the PID alone.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TypeVar

LOOPBACK = "127.0.0.1"

_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))
_handed_out: set[int] = set()


# -- ports and HTTP probes ---------------------------------------------------------------------
def has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


def _free_on(family: int, host: str, port: int) -> bool:
    with socket.socket(family, socket.SOCK_STREAM) as s:
        if family == socket.AF_INET6:
            with contextlib.suppress(OSError, AttributeError):
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


def free_port(preferred: int | None = None) -> int:
    """``preferred`` if it is free, else a port free on 127.0.0.1 (and on ::1, as the
    mixer listens on both) that this process has not handed out before."""
    v6 = has_ipv6_loopback()

    def free(port: int) -> bool:
        return _free_on(socket.AF_INET, LOOPBACK, port) and (
            not v6 or _free_on(socket.AF_INET6, "::1", port)
        )

    if preferred and free(preferred):
        _handed_out.add(preferred)
        return preferred
    for _ in range(200):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((LOOPBACK, 0))
            port = int(s.getsockname()[1])
        if port in _handed_out or (v6 and not _free_on(socket.AF_INET6, "::1", port)):
            continue
        _handed_out.add(port)
        return port
    raise RuntimeError("could not find a free loopback port")


def port_open(port: int, host: str = LOOPBACK) -> bool:
    """Whether something accepts TCP on ``port`` (readiness of a server that may never
    answer HTTP, e.g. a blackhole)."""
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex((host, port)) == 0


def http_status(url: str, headers: Mapping[str, str] | None = None, timeout: float = 5.0) -> int:
    """Status of a GET to ``url`` (0 when nothing answers); never through a proxy."""
    request = urllib.request.Request(url, headers=dict(headers or {}))
    try:
        with _NO_PROXY.open(request, timeout=timeout) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except (OSError, ValueError):
        return 0


def http_get(url: str, headers: Mapping[str, str] | None = None, timeout: float = 10.0) -> bytes:
    """Body of a GET to ``url``, never through a proxy; HTTP errors raise."""
    request = urllib.request.Request(url, headers=dict(headers or {}))
    with _NO_PROXY.open(request, timeout=timeout) as resp:
        return bytes(resp.read())


# -- /proc: trees, liveness, start times -------------------------------------------------------
def _stat_fields(pid: int | str) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name (state [0], ppid [1], starttime [19])."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rfind(")") + 2 :].split()


def start_time(pid: int) -> int | None:
    """When ``pid`` started, in clock ticks since boot (None: no such process, or no
    /proc); with the PID it names one process for good."""
    fields = _stat_fields(pid)
    return int(fields[19]) if fields is not None and len(fields) > 19 else None


def children_map() -> dict[int, list[int]]:
    """ppid → pids of every live process (Linux); {} elsewhere."""
    children: dict[int, list[int]] = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return children
    for entry in entries:
        if not entry.isdigit():
            continue
        fields = _stat_fields(entry)
        if fields is None or len(fields) < 2:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry))
    return children


def descendants(pid: int) -> list[int]:
    """Live descendants of ``pid`` (not ``pid`` itself)."""
    children = children_map()
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def is_alive(pid: int) -> bool:
    """Whether ``pid`` runs; a zombie (exited, not yet reaped) counts as dead."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    fields = _stat_fields(pid)
    return not (fields and fields[0] == "Z")


def is_same(pid: int, started: int | None) -> bool:
    """Whether ``pid`` is still the live process that started at ``started``."""
    return is_alive(pid) and start_time(pid) == started


def signal_same(pid: int, started: int | None, sig: int) -> bool:
    """``sig`` to ``pid`` if it is still the process that started at ``started``; whether
    sent. With a pidfd the check and the signal name one process (no window for reuse)."""
    try:
        fd = os.pidfd_open(pid) if hasattr(os, "pidfd_open") else None
    except ProcessLookupError:
        return False
    except OSError:
        fd = None
    try:
        if start_time(pid) != started:
            return False
        if fd is not None:
            signal.pidfd_send_signal(fd, sig)
        else:
            os.kill(pid, sig)
        return True
    except (ProcessLookupError, PermissionError):
        return False
    finally:
        if fd is not None:
            os.close(fd)


# -- one process -------------------------------------------------------------------------------
class ProcessError(RuntimeError):
    """A process did not start, get ready or end as asked; the message ends with its log's tail."""


def redact_arg(arg: str) -> str:
    """``--x-token=secret`` → ``--x-token=<redacted>``: a log's start line shows no secret."""
    name, eq, _ = arg.partition("=")
    if eq and name.startswith("-") and ("token" in name.lower() or "header" in name.lower()):
        return f"{name}=<redacted>"
    return arg


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    """Linux: the child gets SIGTERM when its parent dies, even by SIGKILL."""
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


P = TypeVar("P", bound="Process")


class Process:
    """One child process, its output appended to ``log_path``, ready when ``ready()``
    says so. ``argv`` and ``env`` may change between starts. ``reap_grace``: how long
    descendants in other sessions (kernels) get to end once it is gone, before SIGKILL.
    ``die_with_parent`` (Linux): it gets SIGTERM if this process dies first."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        log_path: Path,
        env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        ready: Callable[[], bool] | None = None,
        ready_timeout: float = 60.0,
        poll_interval: float = 0.1,
        reap_grace: float = 5.0,
        die_with_parent: bool = False,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = Path(log_path)
        self.env = dict(env) if env is not None else dict(os.environ)
        self.cwd = cwd
        self.ready = ready
        self.ready_timeout = ready_timeout
        self.poll_interval = poll_interval
        self.reap_grace = reap_grace
        self.die_with_parent = die_with_parent
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_at: int | None = None  # start time of the leader (see start_time)
        self.starts = 0
        self.frozen = False  # stopped with SIGSTOP (``freeze``) and not continued yet
        self.forced = False  # the last stop needed SIGKILL
        self.known_descendants: dict[int, int | None] = {}  # pid → start time

    # -- state ---------------------------------------------------------------------------------
    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    @property
    def returncode(self) -> int | None:
        """The exit status once the process has ended (None: running or never started)."""
        return None if self.proc is None else self.proc.poll()

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    # -- start and readiness -------------------------------------------------------------------
    def start(self: P, wait: bool = True) -> P:
        """Start it (``wait``: and wait until it is ready)."""
        if self.running():
            raise ProcessError(f"{self.name} is already running (pid {self.pid})")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.starts += 1
        self.frozen = self.forced = False
        self.known_descendants = {}
        shown = " ".join(redact_arg(a) for a in self.argv)
        linux = sys.platform.startswith("linux")
        with open(self.log_path, "ab") as log:
            log.write(f"\n===== start #{self.starts}: {shown}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                self.argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                env=self.env, cwd=self.cwd, start_new_session=True,
                preexec_fn=_die_with_parent if self.die_with_parent and linux else None,
            )  # fmt: skip
        self.started_at = start_time(self.proc.pid)
        if wait:
            self.wait_ready()
        return self

    def ready_now(self) -> bool:
        """Whether it is ready; raises if it has exited."""
        if not self.running():
            raise ProcessError(
                f"{self.name} (pid {self.pid}) exited with code {self.returncode} before it "
                f"was ready\n{self.tail_text()}"
            )
        return self.ready is None or self.ready()

    def wait_ready(self, timeout: float | None = None) -> None:
        """Until ``ready()``; one that exits first raises, and so does one not ready
        within ``timeout`` (``ready_timeout`` by default), stopped first."""
        limit = self.ready_timeout if timeout is None else timeout
        deadline = time.monotonic() + limit
        while not self.ready_now():
            if time.monotonic() > deadline:
                pid, tail = self.pid, self.tail_text()
                self.stop()
                raise ProcessError(f"{self.name} (pid {pid}) not ready within {limit:g}s\n{tail}")
            time.sleep(self.poll_interval)

    def wait_exit(self, timeout: float) -> int:
        """The exit status of a process expected to end by itself (e.g. a refused start)."""
        if self.proc is None:
            raise ProcessError(f"{self.name} was never started")
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise ProcessError(
                f"{self.name} (pid {self.proc.pid}) still runs after {timeout:g}s\n{self.tail_text()}"
            ) from None

    # -- signals -------------------------------------------------------------------------------
    def signal_group(self, sig: int) -> None:
        """``sig`` to its process group, unless its PID names another process now. Linux
        keeps a group's id while the group has members; an empty group's id may go to a
        new process that leads a group of its own: the start time tells them apart."""
        if self.proc is None:
            return
        now = start_time(self.proc.pid)
        if now is not None and now != self.started_at:
            return  # the PID is another process's now: our group is gone
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, sig)

    def freeze(self) -> None:
        """SIGSTOP the process alone, not its group nor its children: a server that
        hangs (a network partition, a laptop lid) while its kernels keep running."""
        if self.proc is None or not self.running():
            raise ProcessError(f"{self.name} is not running: nothing to freeze")
        signal_same(self.proc.pid, self.started_at, signal.SIGSTOP)
        self.frozen = True

    def thaw(self) -> None:
        """SIGCONT after ``freeze``; harmless when not frozen or already gone."""
        if self.frozen and self.proc is not None:
            signal_same(self.proc.pid, self.started_at, signal.SIGCONT)
        self.frozen = False

    def remember_descendants(self) -> None:
        """Note its live descendants (kernels run in sessions of their own, outside its
        group), to kill them by PID should it leave them behind."""
        if self.running() and self.proc is not None:
            for pid in descendants(self.proc.pid):
                self.known_descendants.setdefault(pid, start_time(pid))

    # -- stop ----------------------------------------------------------------------------------
    def terminate(self, sig: int = signal.SIGTERM) -> None:
        """:meth:`stop`'s first half (to stop several at once): ``sig`` to the group."""
        self.forced = False
        self.thaw()  # a stopped process would not act on SIGTERM
        if self.running():
            self.remember_descendants()
            self.signal_group(sig)

    def finish_stop(self, grace: float) -> int | None:
        """:meth:`stop`'s second half: ``grace`` seconds to end, else SIGKILL (``forced``);
        then SIGKILL to what is left in its group, and :meth:`_reap`."""
        if self.proc is None:
            return None
        try:
            self.proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            self.forced = True
            self.signal_group(signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=10)
        self.signal_group(signal.SIGKILL)  # whatever is left in its group
        self._reap()
        return self.proc.returncode

    def stop(self, timeout: float = 15.0, sig: int = signal.SIGTERM) -> int | None:
        """``sig`` (SIGTERM) to the process group, SIGKILL after ``timeout``; leftovers
        in other sessions killed by PID. The exit status (None: never started)."""
        self.terminate(sig)
        return self.finish_stop(timeout)

    def kill(self) -> int | None:
        """SIGKILL the process group at once (a crash), reaping leftovers by PID."""
        return self.stop(sig=signal.SIGKILL)

    def restart(self, wait: bool = True) -> None:
        self.stop()
        self.start(wait=wait)

    def _reap(self) -> None:
        """Descendants of other sessions get ``reap_grace`` to be shut down by their
        server; those that outlive it are killed by PID, if the PID is still theirs."""
        known = self.known_descendants
        live = [p for p in known if is_same(p, known[p])]
        deadline = time.monotonic() + self.reap_grace
        while live and time.monotonic() < deadline:
            time.sleep(self.poll_interval)
            live = [p for p in live if is_same(p, known[p])]
        for pid in live:
            signal_same(pid, known[pid], signal.SIGKILL)

    # -- diagnostics ---------------------------------------------------------------------------
    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def tail_text(self, lines: int = 60) -> str:
        tail = self.log_text().splitlines()[-lines:]
        return f"--- last {len(tail)} lines of {self.log_path} ---\n" + "\n".join(tail)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} pid={self.pid} running={self.running()}>"


# -- jupyter_server ----------------------------------------------------------------------------
#: Where the front's GatewayClient.headers put the token and the XSRF pair (SPEC §1).
GATEWAY_HEADERS_ENV = "JUPYTER_GATEWAY_HEADERS"


def gateway_headers(token: str, xsrf: str) -> dict[str, str]:
    """SPEC §1's ``GatewayClient.headers``: the mixer's token and a matching XSRF pair."""
    return {"token": token, "Cookie": f"_xsrf={xsrf}", "X-XSRFToken": xsrf}


def jupyter_dirs(home: Path) -> dict[str, str]:
    """``home``'s root, runtime, config, data and IPython directories (made here), and
    the variables that point a Jupyter process at them: no two servers, nor the user's
    own Jupyter, share state."""
    for d in ("root", "runtime", "config", "data", "ipython"):
        (home / d).mkdir(parents=True, exist_ok=True)
    return {
        "JUPYTER_RUNTIME_DIR": str(home / "runtime"),
        "JUPYTER_CONFIG_DIR": str(home / "config"),
        "JUPYTER_DATA_DIR": str(home / "data"),
        "IPYTHONDIR": str(home / "ipython"),
    }


def jupyter_server_launch(
    port: int,
    *,
    env: Mapping[str, str],
    app: str = "jupyter_server",
    token: str | None = None,
    token_in_argv: bool = False,
    home: Path | None = None,
    ip: str | None = None,
    gateway_url: str | None = None,
    gateway: Mapping[str, str] | None = None,
    extra_args: Sequence[str] = (),
    python: str = sys.executable,
) -> tuple[list[str], dict[str, str]]:
    """argv and environment of ``python -m <app>`` (jupyter_server, or jupyterlab) on
    ``port``, no browser, no other port; ``env`` is the environment to start from.

    ``token``: a non-empty one travels in ``JUPYTER_TOKEN`` (``ps`` shows a command line
    to every user) unless ``token_in_argv``; ``""`` turns token auth off; None leaves
    auth to ``extra_args`` (an identity provider). ``home``: root, runtime, config, data
    and IPython directories of its own under it (:func:`jupyter_dirs`); None: the
    user's, and the working directory as root. ``gateway_url``: its kernels come from
    there (a front), with ``gateway`` as its headers (:func:`gateway_headers`; in the
    environment, as they hold a token). ``extra_args`` come last, so they win.
    """
    argv = [python, "-m", app, "--no-browser", "--port-retries=0", f"--port={port}"]
    out = dict(env)
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        argv.append("--allow-root")
    if ip is not None:
        argv.append(f"--ServerApp.ip={ip}")
    if home is not None:
        out.update(jupyter_dirs(home))
        argv.append(f"--ServerApp.root_dir={home / 'root'}")
    if token is not None and (token == "" or token_in_argv):
        argv.append(f"--IdentityProvider.token={token}")
    elif token is not None:
        out["JUPYTER_TOKEN"] = token
    if gateway_url is not None:
        argv.append(f"--GatewayClient.url={gateway_url}")
    if gateway is not None:
        out[GATEWAY_HEADERS_ENV] = json.dumps(dict(gateway))
    argv += extra_args
    return argv, out
