"""The ``mixer lab`` command: its arguments, the start-up sequence, and the banner.

It follows ``jupyter lab`` where a user expects it to: the browser opens unless
``--no-browser`` (``--browser`` stays accepted), arguments it does not know
(``--ServerApp.*``, ``--LabApp.*``, ...) and everything after ``--`` go to the front
JupyterLab, and the URL is printed in jupyter lab's shape ("To access the server,
open this file in a browser: ... Or copy and paste one of these URLs: ...").
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import threading
from collections.abc import Sequence

from notebook_kernels_mixer.config import ConfigError, parse_duration
from notebook_kernels_mixer.lab import topology
from notebook_kernels_mixer.lab.supervisor import LabError, Supervisor
from notebook_kernels_mixer.processes import LOOPBACK


def say(message: str) -> None:
    print(f"mixer lab: {message}", file=sys.stderr, flush=True)


def lab_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mixer lab",
        allow_abbrev=False,  # unknown arguments go to JupyterLab; never guess ours from them
        description=(
            "Start the whole topology: a local Jupyter server (free port, fresh random "
            "token), the mixer, and the JupyterLab you open, wired to the mixer. Prints "
            "the URL to open and opens it in a browser; Ctrl-C stops everything. Arguments "
            "this command does not know (e.g. --ServerApp.root_dir=DIR), and everything "
            "after --, go to the front JupyterLab."
        ),
    )
    p.add_argument(
        "--demo-remote",
        action="store_true",
        help="also start a second local Jupyter server as a stand-in remote "
        "(kernels 'remote-*'), to try switching without a cloud account",
    )
    p.add_argument(
        "--config",
        action="append",
        default=[],
        metavar="FILE",
        help="TOML file with remote backends (examples/mixer.toml); may be repeated. "
        "The local backend is the one mixer lab starts",
    )
    p.add_argument("--remote-url", help="URL of a remote backend (Google auth), as for mixer")
    p.add_argument("--mixer-project", help="GCP project of the remote backend")
    p.add_argument("--mixer-region", help="GCP region of the remote backend")
    p.add_argument("--mixer-host", help="parent host of the remote (kernels.googleusercontent.com)")
    p.add_argument("--gce-metadata-override-ip", help="metadata server for Google credentials")
    _carry_options(p)
    _process_options(p)
    return p


def _carry_options(p: argparse.ArgumentParser) -> None:
    """Switching keeps your variables: off unless asked (values leave this machine)."""
    p.add_argument(
        "--carry-variables",
        action="store_true",
        help="when a notebook changes kernel to another backend (Kernel > Change Kernel...), "
        "carry its Python variables into the new kernel. Off by default: their values then "
        "travel to that backend, a remote machine included",
    )
    p.add_argument(
        "--carry-budget",
        type=_duration,
        default=None,
        metavar="DURATION",
        help="longest a carry may hold up a kernel change (default 30s), as for mixer",
    )
    p.add_argument(
        "--carry-cap",
        type=int,
        default=None,
        metavar="BYTES",
        help="most serialized bytes one carry moves (default 1 GiB), as for mixer",
    )


def _duration(text: str) -> float:
    try:
        return parse_duration(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _process_options(p: argparse.ArgumentParser) -> None:
    """Ports, timeouts, logs and the browser: how the children run."""
    p.add_argument(
        "--port",
        type=int,
        default=8888,
        help="port of the JupyterLab you open (a free one if this one is taken)",
    )
    p.add_argument(
        "--port-exact", action="store_true", help="fail rather than pick another port when --port is taken"
    )
    p.add_argument("--mixer-port", type=int, default=None, help="port of the mixer (default: free)")
    p.add_argument(
        "--jupyter-port",
        type=int,
        default=None,
        help="port of the local backend Jupyter server (default: free)",
    )
    p.add_argument(
        "--ready-timeout", type=float, default=120.0, help="seconds each child may take to become ready"
    )
    p.add_argument(
        "--log-dir", default=None, help="where the children's logs go (default: a new temporary directory)"
    )
    p.add_argument(
        "--log-level",
        default="info",
        choices=["debug", "info", "warning", "error"],
        help="the mixer's log level",
    )
    p.add_argument("--no-browser", action="store_true", help="do not open a browser (as for jupyter lab)")
    p.add_argument(
        "--browser",
        action="store_true",
        help="accepted for compatibility: the browser opens unless --no-browser",
    )


def remote_names(args: argparse.Namespace) -> tuple[str, ...]:
    """The remotes the user asks for, read now: a bad file stops us before anything starts."""
    from notebook_kernels_mixer.config_file import load_files

    names: list[str] = []
    if args.config:
        for fb in load_files(args.config).backends:
            if fb.local or fb.config.name == "local":
                raise ConfigError(
                    f"{fb.where}: mixer lab starts the local backend itself; remove this "
                    "entry (or its local = true), or run the mixer directly with this file"
                )
            names.append(fb.config.name)
    if args.remote_url or (args.mixer_project and args.mixer_region):
        if "remote" not in names:
            names.append("remote")
    elif args.mixer_project or args.mixer_region:
        raise ConfigError("--mixer-project and --mixer-region go together")
    return tuple(names)


def start_all(plan: topology.Plan, supervisor: Supervisor) -> topology.FrontInfo:
    """Backends and front at once (the front needs the mixer only when asked for
    kernels), the mixer once the backends answer, then the front's first listing."""
    backends = [topology.jupyter_server(plan, server) for server in plan.servers]
    front, info = topology.front(plan)
    supervisor.start(*backends, front)
    say(f"starting the backend{'s' if len(backends) > 1 else ''} and JupyterLab (logs in {plan.run_dir})")
    supervisor.wait_ready(*backends)
    mixer = topology.mixer(plan, topology.write_mixer_config(plan))
    supervisor.start(mixer)
    supervisor.wait_ready(mixer)
    supervisor.wait_ready(front)
    return info


def banner(plan: topology.Plan, info: topology.FrontInfo) -> str:
    """jupyter lab's URL banner, then what the mixer adds."""
    if info.open_file is not None:
        lines = [
            "",
            "    To access the server, open this file in a browser:",
            f"        {info.open_file.as_uri()}",
            "    Or copy and paste one of these URLs:",
        ]
    else:
        lines = ["", "    To access the server, copy and paste one of these URLs:"]
    lines += [f"        {info.lab_url}", ""]
    kinds = ["local-* (this machine)", *(f"{name}-*" for name in plan.remote_names)]
    if plan.demo is not None:
        kinds.append(f"{plan.demo.name}-* (demo remote: a second local Jupyter server)")
    lines += [
        f"  Notebook Kernels Mixer: kernels {', '.join(kinds)}",
        f"  backends' status: http://{LOOPBACK}:{plan.mixer_port}/mixer/?token={plan.local.token}",
        f"  logs: {plan.run_dir}",
    ]
    if len(kinds) == 1:
        lines.append(
            "  no remote backend: add one with --config FILE (see examples/mixer.toml), "
            "--remote-url URL or --mixer-project/--mixer-region, or try --demo-remote"
        )
    if plan.carry.enabled:
        lines.append(
            f"  Change Kernel carries the notebook's variables (up to {plan.carry.budget:g} s): "
            "their values go to the new kernel's backend, remote machines included"
        )
    else:
        lines.append(
            "  Change Kernel starts an empty kernel; --carry-variables carries the notebook's "
            "variables along (their values then go to the new kernel's backend)"
        )
    return "\n".join([*lines, "  Ctrl-C stops everything.", ""])


def open_browser(info: topology.FrontInfo) -> None:
    """As jupyter lab does: the default browser (or $BROWSER) gets the file that holds the
    token, not a URL with it on a command line; in a thread, as a console browser blocks."""
    import webbrowser

    try:
        browser = webbrowser.get()
    except webbrowser.Error as exc:
        say(f"no web browser found ({exc}); open the URL above")
        return
    target = info.open_file.as_uri() if info.open_file is not None else info.lab_url
    threading.Thread(target=browser.open, args=(target,), kwargs={"new": 2}, daemon=True).start()


def run(plan: topology.Plan, ready_timeout: float) -> int:
    plan.run_dir.mkdir(parents=True, exist_ok=True)
    supervisor = Supervisor(ready_timeout, say)
    supervisor.install_signals()
    try:
        try:
            info = start_all(plan, supervisor)
        except LabError as exc:
            if supervisor.stop_signal is not None:
                say("stopped while starting")
                return 0
            say(str(exc))
            say(f"logs are in {plan.run_dir}")
            return 1
        print(banner(plan, info), flush=True)
        if plan.open_browser:
            open_browser(info)
        code = supervisor.supervise()
        if code:
            say(f"logs are in {plan.run_dir}")
        return code
    finally:
        supervisor.stop_all()
        say("stopped")


def parse(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    """Our options, and the front's: those we do not know, then all after ``--``."""
    argv = list(argv)
    extra: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, extra = argv[:cut], argv[cut + 1 :]
    args, unknown = lab_parser().parse_known_args(argv)
    return args, unknown + extra


def main(argv: Sequence[str] | None = None) -> int:
    args, front_args = parse(sys.argv[2:] if argv is None else argv)
    missing = [m for m in ("jupyter_server", "jupyterlab") if importlib.util.find_spec(m) is None]
    if missing:
        say(f"{' and '.join(missing)} not installed: pip install 'notebook-kernels-mixer[lab]'")
        return 2
    try:
        names = remote_names(args)
    except ConfigError as exc:
        say(str(exc))
        return 2
    return run(topology.make_plan(args, front_args, names), args.ready_timeout)
