"""JupyterLab in Chromium through ``mixer lab --demo-remote``: a clean browser console
(issue 12 item 2, acceptance 2).

A stock gateway-mode front gives JupyterLab two console complaints: "Default kernel
not found" (its first kernelspec answer names a default it has not fetched yet) and,
for every kernel connection, a failed first websocket handshake ("Sent non-empty
'Sec-WebSocket-Protocol' header but no response was received": it declines the v1
subprotocol). ``mixer lab`` loads :mod:`notebook_kernels_mixer.jupyter` into its front
and waits for the front's first kernelspec listing; here the user's path — open a
notebook on a remote kernel, run a cell, change to the local kernel, run a cell — must
leave no error, and no warning about kernels, websockets or the default kernel.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from ..e2e.support.lab_run import Lab, lab
from .conftest import ARTIFACTS, ConsoleLog, LabPage, watched_page
from .test_jupyterlab import STARTUP, expect, expect_kernel_idle, menu, notebook_name, pick_kernel, run_cell

pytestmark = pytest.mark.browser

WHERE = 'import os; print(os.environ["MIXER_LAB_BACKEND"])'
#: What a console message must not mention (lower case).
TOPICS = ("kernel", "websocket", "socket", "default")
# no news feed, no update check: nothing leaves the machine (passed on to the front)
QUIET = (
    "--LabApp.news_url=None",
    "--LabApp.check_for_updates_class=jupyterlab.handlers.announcements.NeverCheckForUpdate",
)


@pytest.fixture(scope="module")
def lab_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Lab, str]]:
    """``mixer lab --demo-remote`` and the URL it printed."""
    with lab(tmp_path_factory.mktemp("lab-console"), "--demo-remote", *QUIET) as run:
        yield run, run.wait_url().group(0)


@pytest.fixture
def page(request: pytest.FixtureRequest, chromium: Any, lab_run: tuple[Lab, str]) -> Iterator[LabPage]:
    """A fresh page with its console captured from the first request on."""
    name = request.node.name.removeprefix("test_")
    context, watched = watched_page(chromium, name)
    try:
        yield watched
    finally:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        (ARTIFACTS / f"{name}-console.log").write_text(watched.console.dump())
        if getattr(getattr(request.node, "rep_call", None), "failed", False):
            (ARTIFACTS / f"{name}-lab.log").write_text(lab_run[0].stdout() + lab_run[0].stderr())
        context.close()


def complaints(console: ConsoleLog) -> list[str]:
    """Every error, and every warning on the topics of this test; socket and page errors."""
    found = [f"{kind}: {text}" for kind, text in console.messages if kind == "error"]
    found += [
        f"warning: {text}"
        for kind, text in console.messages
        if kind == "warning" and any(topic in text.lower() for topic in TOPICS)
    ]
    found += [f"socket error: {e}" for e in console.socket_errors]
    found += [f"uncaught: {e}" for e in console.page_errors]
    return found


def test_remote_notebook_changed_to_local_leaves_a_clean_console(
    page: LabPage, lab_run: tuple[Lab, str]
) -> None:
    url = lab_run[1]
    workspace = url.replace("/lab?", f"/lab/workspaces/w{uuid.uuid4().hex[:12]}?reset&")
    response = page.page.goto(workspace)
    assert response is not None and response.ok, response and response.status
    expect(page.page.locator(".jp-Launcher")).to_be_visible(timeout=STARTUP)

    menu(page, "File", "notebook:create-new", submenu="New")
    remote = pick_kernel(page, "(Remote)", "remote")
    expect_kernel_idle(page, remote)
    notebook_name(page)
    assert run_cell(page, WHERE) == "remote"

    menu(page, "Kernel", "kernelmenu:change")
    local = pick_kernel(page, "(Local)", "local")
    expect_kernel_idle(page, local)
    assert run_cell(page, WHERE) == "local"
    expect_kernel_idle(page, local)

    channels = [u for u in page.console.websockets if re.search(r"/api/kernels/[^/]+/channels", u)]
    # one kernel websocket per kernel: no handshake failed and was retried
    assert len(channels) == 2, "\n".join(channels)
    problems = complaints(page.console)
    assert not problems, "the browser console complained:\n" + "\n".join(problems)
