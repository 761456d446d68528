"""Fixtures of the browser suite: the real topology of SPEC §1 with a JupyterLab front,
and headless Chromium driven by Playwright.

The processes come from the shared topology (``tests/e2e/support/stack.py``): a local
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
import http.client
import json
import os
import shutil
import time
import urllib.error
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from notebook_kernels_mixer.processes import http_get

from ..e2e.support.stack import Stack
from ..e2e.support.topology import FRONT_XSRF, JupyterServer

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
XSRF = FRONT_XSRF  # what the front's GatewayClient.headers send as _xsrf cookie and X-XSRFToken


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
    return json.loads(http_get(url, headers, timeout=timeout).decode("utf-8"))


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


class Topology(Stack):
    """The shared stack with a JupyterLab front, and what the browser tests ask of it."""

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir, front="lab")

    @property
    def jupyter_token(self) -> str:
        """The local jupyter's token, also the one presented to the mixer."""
        return self.tokens.jupyter

    def _front(self) -> JupyterServer:
        assert self.front is not None, "prepared with a front"
        return self.front

    def lab_url(self, workspace: str) -> str:
        # a fresh workspace per page: nothing restored from an earlier test
        return f"{self._front().url}/lab/workspaces/{workspace}?reset&token={self.tokens.front}"

    def front_sessions(self) -> list[dict]:
        return get_json(self._front().url + "/api/sessions", self._front().auth())

    def front_request(self, method: str, path: str) -> int:
        """Status of ``method path`` on the front (http.client: no proxy, any method)."""
        url = urlsplit(self._front().url)
        conn = http.client.HTTPConnection(url.hostname or "127.0.0.1", url.port, timeout=30)
        try:
            conn.request(method, path, headers=self._front().auth())
            return conn.getresponse().status
        finally:
            conn.close()

    def backend_kernel(self, backend: JupyterServer, kernel_id: str) -> dict | None:
        try:
            return get_json(f"{backend.url}/api/kernels/{kernel_id}", backend.auth())
        except urllib.error.HTTPError as e:
            if e.code == 404:
                return None
            raise


@pytest.fixture(scope="package")
def lab_topology(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Topology]:
    with Topology(tmp_path_factory.mktemp("browser")) as topo:
        yield topo


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


def watched_page(chromium: Any, name: str) -> tuple[Any, LabPage]:
    """A fresh browser context and its page, the console captured from the first request
    on; the earlier artifacts of ``name`` removed."""
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
    for old in ARTIFACTS.glob(f"{name}-*"):  # the artifacts of an earlier run of this test
        old.unlink()
    return context, LabPage(page=page, console=console, name=name)


@pytest.fixture
def lab_page(request: pytest.FixtureRequest, chromium: Any, lab_topology: Topology) -> Iterator[LabPage]:
    """A fresh browser context and page; console captured; artifacts kept under test-artifacts/."""
    name = request.node.name.removeprefix("test_")
    context, lab = watched_page(chromium, name)
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
        (ARTIFACTS / f"{name}-console.log").write_text(lab.console.dump())
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
