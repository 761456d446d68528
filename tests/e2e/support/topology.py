"""The real processes of SPEC §1, each prepared (not started) by one function here.

* ``local``: a plain jupyter_server with a token, ``MIXER_TEST_WHERE=local``;
* ``remote``: a jupyter_server that accepts only ``Authorization: Bearer <token>``
  (``bearer_identity.BearerFileIdentityProvider``), ``MIXER_TEST_WHERE=remote``;
* ``mixer``: the package under test, with a stand-in ``gcloud`` first on PATH;
* ``front``: the Jupyter the user opens (jupyter_server, or JupyterLab for the browser
  tests) whose kernels are managed by the mixer through ``--GatewayClient.url`` and
  the GatewayClient headers of SPEC §1 (in ``JUPYTER_GATEWAY_HEADERS``, as they hold
  the mixer's token).

The command lines come from the package's launcher
(``notebook_kernels_mixer.processes.jupyter_server_launch``, the one ``mixer lab`` and
the benchmark use) and every process is a ``Process`` of that module.

``stack.py`` assembles them into the running topology the e2e, fuzz, browser and soak
tests share; the tests that need another shape (three backends, ``mixer lab``) build
on the pieces here. Kernels inherit their server's environment, so
``os.environ['MIXER_TEST_WHERE']`` in a kernel tells which backend runs it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from notebook_kernels_mixer.processes import (
    free_port,
    gateway_headers,
    http_status,
    jupyter_dirs,
    jupyter_server_launch,
)

from .fake_gcloud import FakeGcloud
from .processes import ManagedProcess

SUPPORT_DIR = Path(__file__).resolve().parent
PYTHON = sys.executable
VENV_BIN = str(Path(PYTHON).parent)
# what SPEC §1's GatewayClient.headers send as the _xsrf cookie and X-XSRFToken
FRONT_XSRF = "XSRF"

# variables of the developer's environment that would change how the servers behave
_SCRUB_PREFIXES = ("JUPYTER_", "JPY_", "IPYTHON", "GCE_METADATA", "CLOUDSDK_", "MIXER_")
_SCRUB_NAMES = {
    "http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY",
    "GOOGLE_APPLICATION_CREDENTIALS", "PYTHONPATH",
}  # fmt: skip


def clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _SCRUB_NAMES and not k.startswith(_SCRUB_PREFIXES)}
    env["PATH"] = VENV_BIN + os.pathsep + env.get("PATH", "/usr/bin:/bin")
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost,::1,[::1]"
    env["PYTHONUNBUFFERED"] = "1"
    if extra:
        env.update(extra)
    return env


def jupyter_home(workdir: Path, name: str) -> tuple[Path, dict[str, str]]:
    """``workdir/name`` with the root, runtime, config, data and IPython directories of
    one Jupyter process, and the environment variables that point it at them (so no
    two servers, nor the developer's own Jupyter, share state)."""
    home = workdir / name
    return home, jupyter_dirs(home)


@dataclass
class JupyterServer:
    """A jupyter_server process and how to reach it."""

    name: str
    port: int
    process: ManagedProcess
    auth_headers: Mapping[str, str] | None = None  # static auth (None: see ``auth``)
    bearer_file: Path | None = None  # remote: the bearer token is read from here
    host: str = "127.0.0.1"
    ready_path: str = "/api/status"  # answers 200 (with ``auth``) once the server is ready
    probe_timeout: float = 2.0

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def auth(self) -> dict[str, str]:
        if self.bearer_file is not None:
            return {"Authorization": f"Bearer {self.bearer_file.read_text().strip()}"}
        return dict(self.auth_headers or {})

    def probe(self) -> bool:
        return http_status(self.url + self.ready_path, self.auth(), timeout=self.probe_timeout) == 200

    def running(self) -> bool:
        return self.process.running()

    def start(self, wait: bool = True) -> None:
        self.process.start(wait=wait)

    def wait_ready(self) -> None:
        self.process.wait_ready()

    def stop(self) -> None:
        self.process.stop()

    @contextlib.contextmanager
    def frozen(self) -> Iterator[None]:
        """The server process stopped (SIGSTOP) for the ``with`` block, its kernels
        running on: it accepts connections and answers nothing. Continued (SIGCONT)
        on the way out, whatever happened inside."""
        self.process.freeze()
        try:
            yield
        finally:
            self.process.thaw()


def jupyter_server(
    name: str,
    workdir: Path,
    *,
    where: str,
    token: str | None = None,
    bearer_file: Path | None = None,
    extra_args: Sequence[str] = (),
    extra_env: Mapping[str, str] | None = None,
    port: int | None = None,
    ready_timeout: float = 90,
    app: str = "jupyter_server",
    ready_path: str = "/api/status",
    gateway_url: str | None = None,
    gateway: Mapping[str, str] | None = None,
) -> JupyterServer:
    """Prepare (not start) ``python -m <app>`` in ``workdir/name``; ``token`` (``""``:
    none) or ``bearer_file`` picks its auth; ``gateway_url`` and ``gateway`` (headers)
    make it a front (:func:`notebook_kernels_mixer.processes.jupyter_server_launch`)."""
    assert bearer_file is not None or token is not None, "a token, an empty one or a bearer file"
    port = port or free_port()
    home = workdir / name
    env = clean_env({"MIXER_TEST_WHERE": where})
    auth_args: list[str] = []
    auth_headers: dict[str, str] | None = {"Authorization": f"token {token}"} if token else {}
    if bearer_file is not None:
        env["PYTHONPATH"] = str(SUPPORT_DIR)
        env["MIXER_TEST_BEARER_FILE"] = str(bearer_file)
        auth_args = [
            "--ServerApp.identity_provider_class=bearer_identity.BearerFileIdentityProvider",
            f"--BearerFileIdentityProvider.token_file={bearer_file}",
        ]
        token, auth_headers = None, None
    argv, env = jupyter_server_launch(
        port, env=env, app=app, token=token, token_in_argv=True, home=home, python=PYTHON,
        gateway_url=gateway_url, gateway=gateway, extra_args=[*auth_args, *extra_args],
    )  # fmt: skip
    env.update(extra_env or {})
    server = JupyterServer(
        name=name, port=port, process=None,  # type: ignore[arg-type]
        auth_headers=auth_headers, bearer_file=bearer_file, ready_path=ready_path,
    )  # fmt: skip
    server.process = ManagedProcess(
        name, argv, log_path=home / f"{name}.log", env=env, cwd=home / "root",
        ready=server.probe, ready_timeout=ready_timeout,
    )  # fmt: skip
    return server


# JupyterLab: no news feed, no update check (nothing leaves the machine)
_LAB_ARGS = (
    "--LabApp.news_url=None",
    "--LabApp.check_for_updates_class=jupyterlab.handlers.announcements.NeverCheckForUpdate",
)


def _quiet_lab(config_dir: Path) -> None:
    """Answer JupyterLab's first-run prompt ("notified about official Jupyter news?") in
    its default settings: it would sit over the page in every screenshot."""
    labconfig = config_dir / "labconfig"
    labconfig.mkdir(parents=True, exist_ok=True)
    notification = {"fetchNews": "false", "checkForUpdates": False}
    overrides = {"@jupyterlab/apputils-extension:notification": notification}
    (labconfig / "default_setting_overrides.json").write_text(json.dumps(overrides))


def front_server(
    workdir: Path,
    *,
    token: str,
    mixer_port: int,
    mixer_token: str,
    xsrf: str = FRONT_XSRF,
    lab: bool = False,
    port: int | None = None,
) -> JupyterServer:
    """The Jupyter the user opens, with the mixer as its gateway, as in SPEC §1;
    ``lab``: JupyterLab (ready once ``/lab`` answers) instead of a bare jupyter_server."""
    url, headers = f"http://[::1]:{mixer_port}/", gateway_headers(mixer_token, xsrf)
    if not lab:
        return jupyter_server("front", workdir, where="front", token=token, port=port,
                              gateway_url=url, gateway=headers)  # fmt: skip
    server = jupyter_server(
        "front", workdir, where="front", token=token, extra_args=_LAB_ARGS, port=port,
        app="jupyterlab", ready_path="/lab", ready_timeout=120, gateway_url=url, gateway=headers,
    )  # fmt: skip
    server.probe_timeout = 10.0
    _quiet_lab(workdir / "front" / "config")
    return server


def mixer_command() -> list[str]:
    exe = Path(VENV_BIN) / "mixer"
    if exe.exists():
        return [str(exe)]
    found = shutil.which("mixer")
    if found:
        return [found]
    return [PYTHON, "-m", "notebook_kernels_mixer"]


def mixer_available() -> bool:
    try:
        import notebook_kernels_mixer.cli  # noqa: F401
    except ImportError:
        return False
    return True


# ``mixer(state_file=...)`` not given: a file of the mixer's own in the test's directory
DEFAULT_STATE = "<in the mixer's directory>"


@dataclass
class Mixer:
    """The mixer process; restartable on the same port."""

    port: int
    token: str
    process: ManagedProcess
    args: list[str] = field(default_factory=list)
    state_file: Path | None = None  # its --state-file (None: chosen elsewhere, e.g. a config file)

    @property
    def url(self) -> str:
        return f"http://[::1]:{self.port}"

    @property
    def url_v4(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def auth(self) -> dict[str, str]:
        return {"token": self.token}

    def probe(self) -> bool:
        return all(
            http_status(base + "/api/kernelspecs", self.auth(), timeout=15) == 200
            for base in (self.url, self.url_v4)
        )

    def running(self) -> bool:
        return self.process.running()

    def log_text(self) -> str:
        return self.process.log_text()

    def stop(self) -> None:
        self.process.stop()

    def kill(self) -> None:
        self.process.kill()

    def start(self) -> None:
        self.process.start()

    def restart(self, *, kill: bool = False) -> None:
        """Stop (``kill``: SIGKILL, a crash that saves nothing) and start again, on the
        same port and the same state file."""
        if kill:
            self.process.kill()
        else:
            self.process.stop()
        self.process.start()


def mixer(
    workdir: Path,
    *,
    local: JupyterServer,
    remote: JupyterServer | None,
    token: str,
    gcloud: FakeGcloud | None,
    name: str = "mixer",
    extra_args: Sequence[str] = (),
    port: int | None = None,
    ready_timeout: float = 60,
    state_file: Path | str | None = DEFAULT_STATE,
) -> Mixer:
    """Prepare (not start) a mixer in front of ``local`` and ``remote``. Its state file
    is ``workdir/name/mixer-state.sqlite`` unless ``state_file`` names another (or
    ``":memory:"``, or None: no flag), so no test shares Jupyter's runtime directory."""
    port = port or free_port()
    home = workdir / name
    home.mkdir(parents=True, exist_ok=True)
    if state_file is DEFAULT_STATE:
        state_file = home / "mixer-state.sqlite"
    env = clean_env()
    if gcloud is not None:
        env["PATH"] = gcloud.path_env(env["PATH"])
    argv = [
        *mixer_command(),
        f"--port={port}",
        f"--jupyter-port={local.port}",
        f"--jupyter-token={token}",
        "--context_request_timeout=10s",
    ]
    if remote is not None:
        argv.append(f"--remote-url=http://127.0.0.1:{remote.port}")
    if state_file is not None:
        argv.append(f"--state-file={state_file}")
    argv += list(extra_args)
    m = Mixer(port=port, token=token, process=None, args=argv,  # type: ignore[arg-type]
              state_file=Path(state_file) if state_file not in (None, ":memory:") else None)
    m.process = ManagedProcess(
        name, argv, log_path=home / f"{name}.log", env=env, cwd=home,
        ready=m.probe, ready_timeout=ready_timeout,
    )  # fmt: skip
    return m
