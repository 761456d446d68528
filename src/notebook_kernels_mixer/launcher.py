"""``mixer lab``: the whole topology of SPEC §1 in one command, and its clean stop.

Children, each in its own session (so each leads a process group), each logging to a
file in the run directory:

1. ``local``: a jupyter_server on a free port with a fresh random token — the local
   backend that runs the local kernels;
2. ``demo remote`` (``--demo-remote``): a second jupyter_server standing in for a remote,
   reached with token auth through the config model (no cloud account needed);
3. ``mixer``: this package as a child process, configured by a TOML file written to the
   run directory (plus the user's ``--config`` files and seed remote flags);
4. ``front``: the JupyterLab the user opens, its ``GatewayClient`` pointed at the mixer
   with the headers of SPEC §1.

The supervisor is a plain blocking loop (the mixer has its own event loop in its own
process): every readiness wait is bounded; the first child that exits, or SIGINT /
SIGTERM / SIGHUP, stops all of them — the front first (it shuts its kernels down
through the mixer), then the rest; a group that outlives its grace period is killed,
and kernels that run in sessions of their own are found through /proc beforehand and
killed by PID if their server left them behind. On Linux the children also get
SIGTERM if the launcher itself dies (PR_SET_PDEATHSIG). Tokens travel in environment
variables, never on a command line (``ps`` shows those to every user).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import importlib.util
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

from notebook_kernels_mixer.config import ConfigError
from notebook_kernels_mixer.processes import LOOPBACK, descendants, free_port, http_status, is_alive

PYTHON = sys.executable
#: Environment variables through which the launcher hands tokens to its children.
LOCAL_TOKEN_ENV = "MIXER_LAB_LOCAL_TOKEN"
DEMO_TOKEN_ENV = "MIXER_LAB_DEMO_TOKEN"
#: Set in each backend server's environment, so a kernel can tell where it runs.
WHERE_ENV = "MIXER_LAB_BACKEND"
# Variables of the user's environment that would rewire the children.
_SCRUB = ("JUPYTER_TOKEN", "JUPYTER_TOKEN_FILE", "JUPYTER_GATEWAY_", "JUPYTER_PORT")


class LabError(Exception):
    """mixer lab cannot go on; the message says which child and why."""


# -- small helpers ---------------------------------------------------------------------------
def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    """Linux: the child gets SIGTERM when the launcher dies, even by SIGKILL."""
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return f"(no log at {path})"
    return f"--- last {len(text)} lines of {path} ---\n" + "\n".join(text)


# -- one child --------------------------------------------------------------------------------
@dataclass
class Child:
    name: str
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    cwd: str
    ready: Callable[[], bool]
    proc: subprocess.Popen[bytes] | None = None
    known_descendants: set[int] = field(default_factory=set)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def start(self) -> None:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=self.cwd,
                start_new_session=True,
                preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
            )

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


# -- the launcher ----------------------------------------------------------------------------
class Lab:
    def __init__(self, args: argparse.Namespace, extra: list[str]) -> None:
        self.args = args
        self.extra = extra
        self.children: list[Child] = []
        self.stop_signal: int | None = None
        self.cwd = os.getcwd()
        self.run_dir = Path()  # made by run()
        #: Remote backends from --config files and seed flags (set by check_config).
        self.remote_names: tuple[str, ...] = ()
        self.local_token = secrets.token_hex(24)
        self.demo_token = secrets.token_hex(24)
        self.front_token = secrets.token_hex(24)
        self.xsrf = secrets.token_hex(16)
        self.root = ["--allow-root"] if hasattr(os, "geteuid") and os.geteuid() == 0 else []

    def say(self, message: str) -> None:
        print(f"mixer lab: {message}", file=sys.stderr, flush=True)

    # -- signals ---------------------------------------------------------------------------
    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self.stop_signal is None:
            self.stop_signal = signum
        else:  # a second Ctrl-C: stop waiting politely
            for child in self.children:
                child.signal_group(signal.SIGKILL)

    def install_signals(self) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, self._on_signal)

    # -- building the children -----------------------------------------------------------
    def base_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(_SCRUB)}
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def jupyter_server(self, name: str, where: str, port: int, token: str) -> Child:
        env = self.base_env()
        env["JUPYTER_TOKEN"] = token
        env[WHERE_ENV] = where
        argv = [
            PYTHON, "-m", "jupyter_server", "--no-browser", "--port-retries=0",
            f"--port={port}", f"--ServerApp.ip={LOOPBACK}", *self.root,
        ]  # fmt: skip
        url = f"http://{LOOPBACK}:{port}/api/status"
        return Child(
            name, argv, env, self.run_dir / f"{where}.log", self.cwd,
            ready=lambda: http_status(url, {"Authorization": f"token {token}"}) == 200,
        )  # fmt: skip

    def write_config(self, local_port: int, demo: tuple[str, str, int] | None) -> Path:
        lines = [
            "# Written by `mixer lab`: the backends it started. Tokens come from the",
            "# environment the launcher gave the mixer; none is written here.",
            "[mixer]",
            f'token_env = "{LOCAL_TOKEN_ENV}"',
            "",
            "[[backends]]",
            'name = "local"',
            'display_suffix = " (Local)"',
            f'url = "http://{LOOPBACK}:{local_port}/"',
            'auth = "token"',
            f'token_env = "{LOCAL_TOKEN_ENV}"',
            'sessions = "backend"',
            "local = true",
        ]
        if demo is not None:
            name, suffix, port = demo
            lines += [
                "",
                "[[backends]]",
                f'name = "{name}"',
                f"display_suffix = {json.dumps(suffix)}",
                f'url = "http://{LOOPBACK}:{port}/"',
                'auth = "token"',
                f'token_env = "{DEMO_TOKEN_ENV}"',
                'sessions = "backend"',
            ]
        path = self.run_dir / "mixer-lab.toml"
        path.write_text("\n".join(lines) + "\n")
        return path

    def seed_flags(self) -> list[str]:
        out = []
        for flag in ("remote_url", "mixer_project", "mixer_region", "mixer_host",
                     "gce_metadata_override_ip"):
            value = getattr(self.args, flag)
            if value is not None:
                out.append(f"--{flag.replace('_', '-')}={value}")
        return out

    def mixer(self, port: int, config: Path) -> Child:
        # The user's files may name any variable in token_env: keep the environment whole.
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        env[LOCAL_TOKEN_ENV] = self.local_token
        env[DEMO_TOKEN_ENV] = self.demo_token
        configs = [f"--config={Path(c).expanduser().resolve()}" for c in self.args.config]
        argv = [
            PYTHON, "-m", "notebook_kernels_mixer", f"--port={port}",
            # the launcher's file last: its [mixer] token wins over the user's
            *configs, f"--config={config}", *self.seed_flags(),
            f"--log-level={self.args.log_level}",
        ]  # fmt: skip
        url = f"http://{LOOPBACK}:{port}/mixer/api/status"
        return Child(
            "mixer", argv, env, self.run_dir / "mixer.log", self.cwd,
            ready=lambda: http_status(url, {"token": self.local_token}) == 200,
        )  # fmt: skip

    def front(self, port: int, mixer_port: int) -> Child:
        env = self.base_env()
        env["JUPYTER_TOKEN"] = self.front_token
        # SPEC §1's GatewayClient headers; in the environment, as they hold the token.
        env["JUPYTER_GATEWAY_HEADERS"] = json.dumps({
            "token": self.local_token,
            "Cookie": f"_xsrf={self.xsrf}",
            "X-XSRFToken": self.xsrf,
        })
        argv = [
            PYTHON, "-m", "jupyterlab", "--port-retries=0", f"--port={port}",
            f"--ServerApp.ip={LOOPBACK}",
            f"--GatewayClient.url=http://{LOOPBACK}:{mixer_port}/",
            *([] if self.args.browser else ["--no-browser"]), *self.root, *self.extra,
        ]  # fmt: skip
        # Ready when the front lists the kernelspecs: front, mixer and local all answer.
        url = f"http://{LOOPBACK}:{port}/api/kernelspecs"
        return Child(
            "front JupyterLab", argv, env, self.run_dir / "front.log", self.cwd,
            ready=lambda: http_status(url, {"Authorization": f"token {self.front_token}"},
                                      timeout=15) == 200,
        )  # fmt: skip

    # -- running -----------------------------------------------------------------------------
    def start(self, child: Child) -> None:
        if self.stop_signal is not None:
            raise LabError("stopped by a signal while starting")
        with open(child.log_path, "ab") as log:
            log.write(f"===== mixer lab starts: {' '.join(child.argv)}\n".encode())
        try:
            child.start()
        except OSError as exc:
            raise LabError(f"cannot start the {child.name}: {exc}") from None
        self.children.append(child)

    def wait_ready(self, *children: Child) -> None:
        deadline = time.monotonic() + self.args.ready_timeout
        pending = list(children)
        while pending:
            for child in list(pending):
                code = child.exited()
                if code is not None:
                    raise LabError(
                        f"the {child.name} (pid {child.pid}) exited with code {code} while "
                        f"starting\n{tail(child.log_path)}"
                    )
                if child.ready():
                    pending.remove(child)
            if not pending:
                return
            if self.stop_signal is not None:
                raise LabError("stopped by a signal while starting")
            if time.monotonic() > deadline:
                child = pending[0]
                raise LabError(
                    f"the {child.name} (pid {child.pid}) was not ready within "
                    f"{self.args.ready_timeout:g}s\n{tail(child.log_path)}"
                )
            time.sleep(0.2)

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
            if time.monotonic() - last_scan > 2.0:
                # Kernels run in sessions of their own; remember them while their
                # server is alive, to reap them should the server die first.
                for child in self.children:
                    child.remember_descendants()
                last_scan = time.monotonic()
            time.sleep(0.2)
        self.say(f"{signal.Signals(self.stop_signal).name} received; stopping")
        return 0

    def stop_all(self, grace: float = 10.0) -> None:
        for child in self.children:
            child.remember_descendants()
        fronts = [c for c in self.children if c.name.startswith("front")]
        rest = [c for c in reversed(self.children) if c not in fronts]
        for group in (fronts, rest):
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
        # Kernels their server did not shut down (it was killed, or too slow).
        leftovers = {pid for c in self.children for pid in c.known_descendants}
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline and any(is_alive(p) for p in leftovers):
            time.sleep(0.1)
        for pid in leftovers:
            if is_alive(pid):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)

    def run(self) -> int:
        self.run_dir = Path(self.args.log_dir or tempfile.mkdtemp(prefix="mixer-lab-")).resolve()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.install_signals()
        try:
            try:
                self.start_all()
            except LabError as exc:
                if self.stop_signal is not None:
                    self.say("stopped while starting")
                    return 0
                self.say(str(exc))
                self.say(f"logs are in {self.run_dir}")
                return 1
            code = self.supervise()
            if code:
                self.say(f"logs are in {self.run_dir}")
            return code
        finally:
            self.stop_all()
            self.say("stopped")

    def start_all(self) -> None:
        args = self.args
        local_port = args.jupyter_port or free_port()
        mixer_port = args.mixer_port or free_port()
        front_port = free_port(args.port) if not args.port_exact else args.port
        demo: tuple[str, str, int] | None = None
        local = self.jupyter_server("local backend", "local", local_port, self.local_token)
        self.start(local)
        waiting = [local]
        if args.demo_remote:
            taken = "remote" in self.remote_names
            name = "demo" if taken else "remote"
            suffix = " (Demo remote)" if taken else " (Remote)"
            demo = (name, suffix, free_port())
            demo_child = self.jupyter_server("demo remote", name, demo[2], self.demo_token)
            self.start(demo_child)
            waiting.append(demo_child)
        self.say(f"starting the backend{'s' if demo else ''} (logs in {self.run_dir})")
        self.wait_ready(*waiting)
        config = self.write_config(local_port, demo)
        mixer = self.mixer(mixer_port, config)
        self.start(mixer)
        self.wait_ready(mixer)
        front = self.front(front_port, mixer_port)
        self.start(front)
        self.say("starting the front JupyterLab")
        self.wait_ready(front)
        self.announce(front_port, mixer_port, demo)

    def announce(self, front_port: int, mixer_port: int, demo: tuple[str, str, int] | None) -> None:
        url = f"http://{LOOPBACK}:{front_port}/lab?token={self.front_token}"
        kinds = ["local-* (this machine)", *(f"{name}-*" for name in self.remote_names)]
        if demo is not None:
            kinds.append(f"{demo[0]}-* (demo remote: a second local Jupyter server)")
        lines = [
            "",
            "Notebook Kernels Mixer is running. Open this URL in a browser:",
            "",
            f"    {url}",
            "",
            f"  kernels: {', '.join(kinds)}",
            f"  backends' status: http://{LOOPBACK}:{mixer_port}/mixer/?token={self.local_token}",
            f"  logs: {self.run_dir}",
        ]
        if len(kinds) == 1:
            lines.append(
                "  no remote backend: add one with --config FILE (see examples/mixer.toml), "
                "--remote-url URL or --mixer-project/--mixer-region, or try --demo-remote"
            )
        lines += ["  Ctrl-C stops everything.", ""]
        print("\n".join(lines), flush=True)


def lab_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mixer lab",
        allow_abbrev=False,  # unknown arguments go to JupyterLab; never guess ours from them
        description=(
            "Start the whole topology: a local Jupyter server (free port, fresh random "
            "token), the mixer, and the JupyterLab you open, wired to the mixer. Prints "
            "the URL to open; Ctrl-C stops everything. Arguments this command does not "
            "know (or everything after --) go to the front JupyterLab."
        ),
    )
    p.add_argument("--demo-remote", action="store_true",
                   help="also start a second local Jupyter server as a stand-in remote "
                        "(kernels 'remote-*'), to try switching without a cloud account")
    p.add_argument("--config", action="append", default=[], metavar="FILE",
                   help="TOML file with remote backends (examples/mixer.toml); may be repeated. "
                        "The local backend is the one mixer lab starts")
    p.add_argument("--remote-url", help="URL of a remote backend (Google auth), as for mixer")
    p.add_argument("--mixer-project", help="GCP project of the remote backend")
    p.add_argument("--mixer-region", help="GCP region of the remote backend")
    p.add_argument("--mixer-host", help="parent host of the remote (kernels.googleusercontent.com)")
    p.add_argument("--gce-metadata-override-ip", help="metadata server for Google credentials")
    p.add_argument("--port", type=int, default=8888,
                   help="port of the JupyterLab you open (a free one if this one is taken)")
    p.add_argument("--port-exact", action="store_true",
                   help="fail rather than pick another port when --port is taken")
    p.add_argument("--mixer-port", type=int, default=None, help="port of the mixer (default: free)")
    p.add_argument("--jupyter-port", type=int, default=None,
                   help="port of the local backend Jupyter server (default: free)")
    p.add_argument("--ready-timeout", type=float, default=120.0,
                   help="seconds each child may take to become ready")
    p.add_argument("--log-dir", default=None,
                   help="where the children's logs go (default: a new temporary directory)")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"],
                   help="the mixer's log level")
    p.add_argument("--browser", action="store_true", help="let JupyterLab open a browser")
    return p


def check_config(lab: Lab) -> None:
    """Read the user's files now: a bad file stops us before anything is started."""
    from notebook_kernels_mixer.config_file import load_files

    names: list[str] = []
    if lab.args.config:
        settings = load_files(lab.args.config)
        for fb in settings.backends:
            if fb.local or fb.config.name == "local":
                raise ConfigError(
                    f"{fb.where}: mixer lab starts the local backend itself; remove this "
                    "entry (or its local = true), or run the mixer directly with this file"
                )
            names.append(fb.config.name)
    if lab.args.remote_url or (lab.args.mixer_project and lab.args.mixer_region):
        if "remote" not in names:
            names.append("remote")
    elif lab.args.mixer_project or lab.args.mixer_region:
        raise ConfigError("--mixer-project and --mixer-region go together")
    lab.remote_names = tuple(names)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[2:] if argv is None else argv)
    extra: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, extra = argv[:cut], argv[cut + 1:]
    args, unknown = lab_parser().parse_known_args(argv)
    missing = [m for m in ("jupyter_server", "jupyterlab") if importlib.util.find_spec(m) is None]
    if missing:
        print(f"mixer lab: {' and '.join(missing)} not installed: "
              "pip install 'notebook-kernels-mixer[lab]'", file=sys.stderr)
        return 2
    lab = Lab(args, unknown + extra)
    try:
        check_config(lab)
    except ConfigError as exc:
        print(f"mixer lab: {exc}", file=sys.stderr)
        return 2
    return lab.run()
