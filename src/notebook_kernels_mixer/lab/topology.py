"""What ``mixer lab`` starts, with which config: SPEC §1's topology as data, then as children.

1. ``local``: a jupyter_server on a free port with a fresh random token — the local
   backend that runs the local kernels;
2. ``demo remote`` (``--demo-remote``): a second jupyter_server standing in for a remote,
   reached with token auth through the config model (no cloud account needed);
3. ``mixer``: this package as a child process, configured by a TOML file written to the
   run directory from data (plus the user's ``--config`` files and seed remote flags);
4. ``front``: the JupyterLab the user opens, its ``GatewayClient`` pointed at the mixer
   with the headers of SPEC §1.

Every Jupyter server it starts loads :mod:`notebook_kernels_mixer.jupyter` (TCP_NODELAY
on kernel websockets; in the front, kernel websockets in the browser's protocol), and
the front's session manager is that module's ``CarryingSessionManager``: "Change
Kernel…" asks the mixer to carry the notebook's variables, which it does only with
``--carry-variables`` (off unless asked: values leave the machine).
Everything is decided up front in a frozen :class:`Plan` (ports, tokens, names); the
children are built from it. The front starts beside the backends (it needs the mixer
only when asked for kernels), the mixer once the backends answer; the front is ready
when its first kernelspec listing — which teaches it the merged default kernel —
comes back through the mixer. Tokens travel in environment variables, never on a
command line (``ps`` shows those to every user).
"""

from __future__ import annotations

import json
import os
import secrets
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomli_w

from notebook_kernels_mixer.lab.supervisor import Child
from notebook_kernels_mixer.processes import (
    LOOPBACK,
    free_port,
    gateway_headers,
    http_status,
    jupyter_server_launch,
)

PYTHON = sys.executable
#: Environment variables through which the launcher hands tokens to its children.
LOCAL_TOKEN_ENV = "MIXER_LAB_LOCAL_TOKEN"
DEMO_TOKEN_ENV = "MIXER_LAB_DEMO_TOKEN"
#: Set in each backend server's environment, so a kernel can tell where it runs.
WHERE_ENV = "MIXER_LAB_BACKEND"
#: Loads this package's jupyter_server extension (traitlets' key=value form of a Dict).
EXTENSION_FLAG = "--ServerApp.jpserver_extensions=notebook_kernels_mixer.jupyter=True"
#: The front's session manager: its kernel changes ask the mixer to carry the state
#: (a mixer without --carry-variables answers at once that it carries nothing).
SESSION_MANAGER_FLAG = (
    "--ServerApp.session_manager_class=notebook_kernels_mixer.jupyter.CarryingSessionManager"
)
#: The backends serve the mixer's kernel APIs only (the front serves the UI, contents and
#: terminals): the environment's UI extensions stay off there, ~0.4 s CPU less each.
BACKEND_WITHOUT = tuple(
    f"--ServerApp.jpserver_extensions={name}=False"
    for name in ("jupyterlab", "jupyter_lsp", "notebook_shim", "jupyter_server_terminals")
)
# Variables of the user's environment that would rewire the children.
_SCRUB = ("JUPYTER_TOKEN", "JUPYTER_TOKEN_FILE", "JUPYTER_GATEWAY_", "JUPYTER_PORT")
_NO_BROWSER = {"--no-browser", "--ServerApp.open_browser=False"}
_SEED_FLAGS = ("remote_url", "mixer_project", "mixer_region", "mixer_host", "gce_metadata_override_ip")


@dataclass(frozen=True)
class Server:
    """A jupyter_server the lab starts as a backend of the mixer."""

    name: str  # backend name in the mixer (kernelspec prefix), log file stem, WHERE_ENV
    label: str  # how messages call it
    suffix: str  # display suffix of its kernelspecs
    port: int
    token: str
    token_env: str
    local: bool


@dataclass(frozen=True)
class Carry:
    """Switching keeps your variables, as the mixer will run it."""

    enabled: bool  # --carry-variables, or [mixer] carry_variables in the user's files
    budget: float  # seconds: the flag, else the user's files, else the mixer's default
    mixer_flags: tuple[str, ...]  # the user's carry flags, handed on to the mixer

    @property
    def front_timeout(self) -> float:
        """How long the front waits for the mixer's answer to a carry."""
        from notebook_kernels_mixer.jupyter import CARRY_MARGIN

        return self.budget + CARRY_MARGIN


@dataclass(frozen=True)
class Plan:
    """Everything ``mixer lab`` will start, decided before anything is."""

    run_dir: Path
    cwd: str
    servers: tuple[Server, ...]  # the local backend first
    remote_names: tuple[str, ...]  # remotes of the user's --config files and seed flags
    mixer_port: int
    front_port: int
    front_token: str
    xsrf: str
    user_configs: tuple[str, ...]
    seed_flags: tuple[str, ...]
    log_level: str
    front_args: tuple[str, ...]  # the user's arguments for JupyterLab, last on its line
    open_browser: bool
    carry: Carry

    @property
    def local(self) -> Server:
        return self.servers[0]

    @property
    def demo(self) -> Server | None:
        return self.servers[1] if len(self.servers) > 1 else None


def make_plan(args: Any, front_args: list[str], remote_names: tuple[str, ...]) -> Plan:
    """Ports, tokens and names for this run (``args`` from :func:`.command.lab_parser`)."""
    servers = [Server("local", "local backend", " (Local)", args.jupyter_port or free_port(),
                      secrets.token_hex(24), LOCAL_TOKEN_ENV, local=True)]  # fmt: skip
    if args.demo_remote:
        taken = "remote" in remote_names
        servers.append(Server(
            "demo" if taken else "remote", "demo remote",
            " (Demo remote)" if taken else " (Remote)", free_port(),
            secrets.token_hex(24), DEMO_TOKEN_ENV, local=False,
        ))  # fmt: skip
    run_dir = Path(args.log_dir or tempfile.mkdtemp(prefix="mixer-lab-")).resolve()
    return Plan(
        run_dir=run_dir,
        cwd=os.getcwd(),
        servers=tuple(servers),
        remote_names=remote_names,
        mixer_port=args.mixer_port or free_port(),
        front_port=args.port if args.port_exact else free_port(args.port),
        front_token=secrets.token_hex(24),
        xsrf=secrets.token_hex(16),
        user_configs=tuple(str(Path(c).expanduser().resolve()) for c in args.config),
        seed_flags=tuple(
            f"--{f.replace('_', '-')}={getattr(args, f)}" for f in _SEED_FLAGS if getattr(args, f) is not None
        ),
        log_level=args.log_level,
        front_args=tuple(front_args),
        # jupyter lab's own ways to say so, handed on to the front, count too
        open_browser=not (args.no_browser or _NO_BROWSER & set(front_args)),
        carry=carry_settings(args),
    )


def carry_settings(args: Any) -> Carry:
    """Whether and how the mixer will carry variables: lab's flags (handed on to the
    mixer, where they win over the files), else the ``[mixer]`` settings of the user's
    ``--config`` files (the mixer reads those too), else the mixer's defaults."""
    from notebook_kernels_mixer.config import CARRY_BUDGET
    from notebook_kernels_mixer.config_file import load_files

    files = load_files(args.config) if args.config else None
    flags = ["--carry-variables"] if args.carry_variables else []
    budget = args.carry_budget
    if budget is not None:
        flags.append(f"--carry-budget={budget!r}")
    elif files is not None and files.carry_budget is not None:
        budget = files.carry_budget
    if args.carry_cap is not None:
        flags.append(f"--carry-cap={args.carry_cap}")
    enabled = bool(args.carry_variables or (files is not None and files.carry_variables))
    return Carry(enabled, CARRY_BUDGET if budget is None else float(budget), tuple(flags))


# -- the mixer's config --------------------------------------------------------------------------
def mixer_settings(plan: Plan) -> dict[str, Any]:
    """The mixer's TOML config as data: the backends the lab starts, tokens by variable."""
    backends = []
    for server in plan.servers:
        backend: dict[str, Any] = {
            "name": server.name,
            "display_suffix": server.suffix,
            "url": f"http://{LOOPBACK}:{server.port}/",
            "auth": "token",
            "token_env": server.token_env,
            "sessions": "backend",
        }
        if server.local:
            backend["local"] = True
        backends.append(backend)
    # the state outlives nothing here: the backends, and their kernels, end with the run
    state = str(plan.run_dir / "mixer-state.sqlite")
    return {"mixer": {"token_env": LOCAL_TOKEN_ENV, "state_file": state}, "backends": backends}


def write_mixer_config(plan: Plan) -> Path:
    path = plan.run_dir / "mixer-lab.toml"
    header = (
        "# Written by `mixer lab`: the backends it started. Tokens come from the\n"
        "# environment the launcher gave the mixer; none is written here.\n"
    )
    path.write_text(header + tomli_w.dumps(mixer_settings(plan)))
    return path


# -- the children ---------------------------------------------------------------------------------
def base_env(**extra: str) -> dict[str, str]:
    """The user's environment without what would rewire a Jupyter server."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(_SCRUB)}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def jupyter_server(plan: Plan, server: Server) -> Child:
    argv, env = jupyter_server_launch(
        server.port, env=base_env(**{WHERE_ENV: server.name}), token=server.token, ip=LOOPBACK,
        extra_args=[EXTENSION_FLAG, *BACKEND_WITHOUT],
    )  # fmt: skip
    url = f"http://{LOOPBACK}:{server.port}/api/status"
    headers = {"Authorization": f"token {server.token}"}
    return Child(
        server.label, argv, env, plan.run_dir / f"{server.name}.log", plan.cwd,
        ready=lambda: http_status(url, headers) == 200,
    )  # fmt: skip


def mixer(plan: Plan, config: Path) -> Child:
    # The user's files may name any variable in token_env: keep the environment whole.
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    for server in plan.servers:
        env[server.token_env] = server.token
    argv = [
        PYTHON, "-m", "notebook_kernels_mixer", f"--port={plan.mixer_port}",
        # the launcher's file last: its [mixer] token wins over the user's
        *(f"--config={c}" for c in plan.user_configs), f"--config={config}",
        *plan.seed_flags, *plan.carry.mixer_flags, f"--log-level={plan.log_level}",
    ]  # fmt: skip
    url = f"http://{LOOPBACK}:{plan.mixer_port}/mixer/api/status"
    headers = {"token": plan.local.token}
    return Child("mixer", argv, env, plan.run_dir / "mixer.log", plan.cwd,
                 ready=lambda: http_status(url, headers) == 200)  # fmt: skip


def front(plan: Plan) -> tuple[Child, FrontInfo]:
    # the launcher opens the browser once everything answers, not JupyterLab at its start
    argv, env = jupyter_server_launch(
        plan.front_port, env=base_env(), app="jupyterlab", token=plan.front_token, ip=LOOPBACK,
        gateway_url=f"http://{LOOPBACK}:{plan.mixer_port}/",
        gateway=gateway_headers(plan.local.token, plan.xsrf),
        extra_args=[EXTENSION_FLAG, SESSION_MANAGER_FLAG,
                    f"--CarryingSessionManager.carry_timeout={plan.carry.front_timeout!r}", *plan.front_args],
    )  # fmt: skip
    child = Child("front JupyterLab", argv, env, plan.run_dir / "front.log", plan.cwd,
                  ready=lambda: info.ready(), stop_first=True)  # fmt: skip
    info = FrontInfo(plan, child)
    return child, info


class FrontInfo:
    """Where the front really listens and its token, from the server-info file JupyterLab
    writes (``jpserver-PID.json`` in Jupyter's runtime directory): the user's
    ``--ServerApp.port``, ``base_url`` or token options are honoured."""

    def __init__(self, plan: Plan, child: Child) -> None:
        self.child = child
        self.url = f"http://{LOOPBACK}:{plan.front_port}/"
        self.token = plan.front_token
        self.open_file: Path | None = None

    def _runtime_file(self, suffix: str) -> Path | None:
        if self.child.pid is None:
            return None
        from jupyter_core.paths import jupyter_runtime_dir

        return Path(jupyter_runtime_dir()) / f"jpserver-{self.child.pid}{suffix}"

    def _read(self) -> Mapping[str, Any] | None:
        path = self._runtime_file(".json")
        try:
            return json.loads(path.read_text()) if path else None
        except (OSError, ValueError):
            return None

    def ready(self) -> bool:
        """Once the info file exists: its first kernelspec listing through the mixer."""
        info = self._read()
        if info is None:
            return False
        self.url = str(info.get("url") or self.url)
        self.token = str(info.get("token") or "")
        opener = self._runtime_file("-open.html")
        self.open_file = opener if opener is not None and opener.exists() else None
        headers = {"Authorization": f"token {self.token}"} if self.token else {}
        return http_status(self.url + "api/kernelspecs", headers, timeout=15) == 200

    @property
    def lab_url(self) -> str:
        return f"{self.url}lab" + (f"?token={self.token}" if self.token else "")
