"""Fixtures of the browser suite: the real topology of SPEC §1 with a JupyterLab front,
and headless Chromium driven by Playwright.

The processes come from the end-to-end support code (``tests/e2e/support``): a local
jupyter_server (``MIXER_TEST_WHERE=local``), a stand-in remote that accepts only the
bearer token of a stand-in ``gcloud`` (``MIXER_TEST_WHERE=remote``), the mixer, and the
FRONT: ``python -m jupyterlab`` with ``--GatewayClient.url`` pointing at the mixer and
the ``--GatewayClient.headers`` of SPEC §1. They live as long as this package's tests.

The browser is Debian's Chromium (``/usr/bin/chromium``, or ``MIXER_CHROMIUM``) driven
by Python Playwright; no browser is downloaded. ``scripts/install-browser`` installs
both. When either is missing the tests FAIL with a message saying so: they are never
skipped.

Screenshots, the browser console and the process logs of failed tests go to
``test-artifacts/browser/`` at the repository root.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from ..e2e.support import topology
from ..e2e.support.fake_gcloud import FakeGcloud
from ..e2e.support.ports import free_port
from ..e2e.support.processes import ManagedProcess, http_status
from ..e2e.support.topology import JupyterServer, Mixer

REPO_ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO_ROOT / "test-artifacts" / "browser"
DOCS_SCREENSHOT = REPO_ROOT / "docs" / "screenshot-kernel-picker.png"
CHROMIUM = os.environ.get("MIXER_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]
XSRF = "XSRF"  # what SPEC §1's GatewayClient.headers send as _xsrf cookie and X-XSRFToken

_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "browser: JupyterLab in headless Chromium, and notebooks run headless, via the mixer"
    )


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Any:
    # remember each phase's report on the item, so fixtures can tell a failed test
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


def require_browser() -> None:
    """Fail (never skip) with a clear message when Chromium or Playwright is missing."""
    problems = []
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        problems.append(f"no Chromium at {CHROMIUM}")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError as e:
        problems.append(f"the python package playwright is not importable ({e})")
    if problems:
        pytest.fail(
            "browser tests need Debian's chromium and Python Playwright: "
            + "; ".join(problems)
            + ". Run scripts/install-browser (scripts/test does it), or set MIXER_CHROMIUM.",
            pytrace=False,
        )


# -- small HTTP helpers (stdlib, never through a proxy) ------------------------------------------


def get_json(url: str, headers: Mapping[str, str] | None = None, timeout: float = 10) -> Any:
    req = urllib.request.Request(url, headers=dict(headers or {}))
    with _NO_PROXY.open(req, timeout=timeout) as resp:
        return json.loads(resp.read().decode("utf-8"))


def poll(probe: Callable[[], Any], *, timeout: float, what: str, interval: float = 0.25) -> Any:
    """Call ``probe`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = probe()
            if last:
                return last
        except (OSError, ValueError, KeyError, urllib.error.URLError) as e:
            last = e
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout:.0f}s; last result: {last!r}")
        time.sleep(interval)


# -- the topology --------------------------------------------------------------------------------


@dataclass
class Topology:
    dir: Path
    jupyter_token: str  # the local jupyter's token, also the one presented to the mixer
    front_token: str
    gcloud: FakeGcloud
    local: JupyterServer
    remote: JupyterServer
    mixer: Mixer
    front: JupyterServer
    processes: list[ManagedProcess] = field(default_factory=list)

    def lab_url(self, workspace: str) -> str:
        # a fresh workspace per page: nothing restored from an earlier test
        return f"{self.front.url}/lab/workspaces/{workspace}?reset&token={self.front_token}"

    def front_sessions(self) -> list[dict]:
        return get_json(self.front.url + "/api/sessions", self.front.auth())

    def front_request(self, method: str, path: str) -> int:
        req = urllib.request.Request(self.front.url + path, method=method, headers=self.front.auth())
        with _NO_PROXY.open(req, timeout=30) as resp:
            return resp.status

    def backend_kernel(self, backend: JupyterServer, kernel_id: str) -> dict | None:
        try:
            return get_json(f"{backend.url}/api/kernels/{kernel_id}", backend.auth())
        except urllib.error.HTTPError as e:
            if e.code == 404:
                return None
            raise

    def logs(self) -> str:
        return "\n\n".join(p.tail_text(80) for p in self.processes)


def jupyterlab_front(
    workdir: Path, *, token: str, mixer_port: int, mixer_token: str, port: int | None = None
) -> JupyterServer:
    """``python -m jupyterlab`` with the mixer as its kernel gateway (SPEC §1, process 3)."""
    port = port or free_port()
    home = workdir / "front"
    root = home / "root"
    for d in (root, home / "runtime", home / "config", home / "data", home / "ipython"):
        d.mkdir(parents=True, exist_ok=True)
    env = topology.clean_env(
        {
            "MIXER_TEST_WHERE": "front",
            "JUPYTER_RUNTIME_DIR": str(home / "runtime"),
            "JUPYTER_CONFIG_DIR": str(home / "config"),
            "JUPYTER_DATA_DIR": str(home / "data"),
            "IPYTHONDIR": str(home / "ipython"),
        }
    )
    # JupyterLab's own first-run prompt ("notified about official Jupyter news?") would sit
    # over the page in every screenshot: answer it in the front's default settings
    labconfig = home / "config" / "labconfig"
    labconfig.mkdir(parents=True, exist_ok=True)
    (labconfig / "default_setting_overrides.json").write_text(
        json.dumps(
            {
                "@jupyterlab/apputils-extension:notification": {
                    "fetchNews": "false",
                    "checkForUpdates": False,
                }
            }
        )
    )
    headers = json.dumps({"token": mixer_token, "Cookie": f"_xsrf={XSRF}", "X-XSRFToken": XSRF})
    argv = [
        topology.PYTHON, "-m", "jupyterlab",
        "--allow-root", "--no-browser", "--port-retries=0",
        f"--port={port}",
        f"--ServerApp.root_dir={root}",
        f"--IdentityProvider.token={token}",
        f"--GatewayClient.url=http://[::1]:{mixer_port}/",
        f"--GatewayClient.headers={headers}",
        # no news feed, no update check: nothing leaves the machine
        "--LabApp.news_url=None",
        "--LabApp.check_for_updates_class=jupyterlab.handlers.announcements.NeverCheckForUpdate",
    ]  # fmt: skip
    server = JupyterServer(
        name="front",
        port=port,
        process=None,  # type: ignore[arg-type]
        auth_headers={"Authorization": f"token {token}"},
    )
    server.process = ManagedProcess(
        "front", argv, log_path=home / "front.log", env=env, cwd=root,
        ready=lambda: http_status(server.url + "/lab", server.auth(), timeout=10) == 200,
        ready_timeout=120,
    )  # fmt: skip
    return server


@pytest.fixture(scope="package")
def lab_topology(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Topology]:
    if not topology.mixer_available():
        pytest.fail("notebook_kernels_mixer is not installed (pip install -e .)", pytrace=False)
    workdir = tmp_path_factory.mktemp("browser")
    jupyter_token, front_token = uuid.uuid4().hex, uuid.uuid4().hex
    gcloud = FakeGcloud(workdir / "gcloud", token_file=workdir / "remote-bearer-token")
    local = topology.jupyter_server("local", workdir, where="local", token=jupyter_token)
    remote = topology.jupyter_server("remote", workdir, where="remote", bearer_file=gcloud.token_file)
    mixer = topology.mixer(workdir, local=local, remote=remote, token=jupyter_token, gcloud=gcloud)
    front = jupyterlab_front(workdir, token=front_token, mixer_port=mixer.port, mixer_token=jupyter_token)
    started: list[ManagedProcess] = []
    try:
        for p in (local.process, remote.process):
            p.start(wait=False)
            started.append(p)
        local.wait_ready()
        remote.wait_ready()
        mixer.start()
        started.append(mixer.process)
        front.start()
        started.append(front.process)
        yield Topology(
            dir=workdir,
            jupyter_token=jupyter_token,
            front_token=front_token,
            gcloud=gcloud,
            local=local,
            remote=remote,
            mixer=mixer,
            front=front,
            processes=[local.process, remote.process, mixer.process, front.process],
        )
    finally:
        for p in reversed(started):
            with contextlib.suppress(Exception):
                p.stop()


# -- the browser ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    """Headless Chromium through Playwright's sync API (one per test module)."""
    require_browser()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@dataclass
class ConsoleLog:
    """Everything the page said on its console, its uncaught errors and its websockets."""

    messages: list[tuple[str, str]] = field(default_factory=list)  # (type, text)
    page_errors: list[str] = field(default_factory=list)
    websockets: list[str] = field(default_factory=list)  # URLs of websockets the page opened
    socket_errors: list[str] = field(default_factory=list)
    events: list[str] = field(default_factory=list)  # all of the above, timed, in order
    started: float = field(default_factory=time.monotonic)

    def _event(self, kind: str, text: str) -> None:
        self.events.append(f"{time.monotonic() - self.started:8.3f}s [{kind}] {text}")

    def on_console(self, kind: str, text: str) -> None:
        self.messages.append((kind, text))
        self._event(kind, text)

    def on_page_error(self, error: str) -> None:
        self.page_errors.append(error)
        self._event("pageerror", error)

    def on_websocket(self, url: str) -> None:
        self.websockets.append(url)
        self._event("websocket", url)

    def on_socket_error(self, url: str, error: str) -> None:
        self.socket_errors.append(f"{url}: {error}")
        self._event("socketerror", f"{url}: {error}")

    def note(self, text: str) -> None:
        self._event("test", text)

    def errors(self) -> list[str]:
        return [text for kind, text in self.messages if kind == "error"]

    def dump(self) -> str:
        return "\n".join(self.events) + "\n"


@dataclass
class LabPage:
    page: Any  # playwright.sync_api.Page
    console: ConsoleLog
    name: str
    shots: list[Path] = field(default_factory=list)
    picker_shots: list[Path] = field(default_factory=list)  # the kernel picker, every entry shown

    def screenshot(self, step: str) -> Path:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        path = ARTIFACTS / f"{self.name}-{len(self.shots) + 1:02d}-{step}.png"
        self.page.screenshot(path=str(path))
        self.console.note(f"screenshot {path.name}")
        self.shots.append(path)
        return path


@pytest.fixture
def lab_page(request: pytest.FixtureRequest, chromium: Any, lab_topology: Topology) -> Iterator[LabPage]:
    """A fresh browser context and page; console captured; artifacts kept under test-artifacts/."""
    context = chromium.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    page.set_default_timeout(30_000)
    console = ConsoleLog()
    page.on("console", lambda m: console.on_console(m.type, m.text))
    page.on("pageerror", lambda e: console.on_page_error(str(e)))

    def on_websocket(ws: Any) -> None:
        console.on_websocket(ws.url)
        ws.on("socketerror", lambda err: console.on_socket_error(ws.url, str(err)))

    page.on("websocket", on_websocket)
    name = request.node.name.removeprefix("test_")
    for old in ARTIFACTS.glob(f"{name}-*"):  # the artifacts of an earlier run of this test
        old.unlink()
    lab = LabPage(page=page, console=console, name=name)
    try:
        yield lab
    finally:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        failed = any(
            getattr(getattr(request.node, f"rep_{when}", None), "failed", False) for when in ("setup", "call")
        )
        if failed:
            with contextlib.suppress(Exception):
                lab.screenshot("FAILED")
            (ARTIFACTS / f"{name}-processes.log").write_text(lab_topology.logs())
        (ARTIFACTS / f"{name}-console.log").write_text(console.dump())
        with contextlib.suppress(Exception):
            context.close()
        # the notebooks' kernels go too (through the front, the mixer and their backends)
        with contextlib.suppress(Exception):
            for session in lab_topology.front_sessions():
                lab_topology.front_request("DELETE", f"/api/sessions/{session['id']}")


def publish_docs_screenshot(path: Path) -> None:
    """Copy a screenshot to docs/ when MIXER_UPDATE_DOCS_SCREENSHOT=1 (the README links it)."""
    if os.environ.get("MIXER_UPDATE_DOCS_SCREENSHOT") == "1":
        DOCS_SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, DOCS_SCREENSHOT)
