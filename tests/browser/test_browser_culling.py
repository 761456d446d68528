"""Culling and orphans as a user sees them, in JupyterLab and on ``/mixer/``, in
headless Chromium against the real topology (SPEC §7).

* A notebook on a remote kernel that the mixer culls (``--cull-idle-timeout=10
  --cull-interval=2 --cull-connected``: the notebook is connected) shows the kernel as
  dead instead of spinning, and a new kernel can be chosen and runs.
* ``/mixer/``: an orphan's "Shut down" button, after the confirmation, stops it on the
  remote and it leaves the page; a POST without the token, or from another site's page
  (another port of localhost), is refused (403) and stops nothing.
"""

from __future__ import annotations

import contextlib
import json
import re
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from ..e2e.support import topology
from .conftest import LabPage, Topology, poll
from .test_jupyterlab import (
    RUN,
    WHERE,
    expect,
    expect_kernel_idle,
    front_session,
    menu,
    notebook_panel,
    open_lab,
    open_remote_notebook,
    run_cell,
)

pytestmark = pytest.mark.browser

IDLE_TIMEOUT = 10
POLICY = [f"--cull-idle-timeout={IDLE_TIMEOUT}", "--cull-interval=2", "--cull-connected"]


@contextlib.contextmanager
def culling_mixer(topo: Topology) -> Iterator[topology.Mixer]:
    """The topology's mixer replaced, for the test, by one with a culling policy on
    the same port and state file (the front's GatewayClient.url stays right); the
    usual one is back afterwards."""
    usual = topo.mixer
    culling = topology.mixer(
        topo.workdir, local=topo.local, remote=topo.remote, token=topo.tokens.jupyter,
        gcloud=topo.gcloud, name="mixer-culling", port=usual.port,
        state_file=usual.state_file if usual.state_file is not None else ":memory:",
        extra_args=POLICY,
    )  # fmt: skip
    usual.stop()
    try:
        culling.start()
        yield culling
    finally:
        culling.stop()
        usual.start()


def statusbar(lab: LabPage) -> str:
    return lab.page.locator("#jp-main-statusbar").inner_text()


def expect_dead(lab: LabPage, kernel_id: str) -> None:
    """JupyterLab declares the kernel dead (its kernel listing lacks it), and the
    notebook neither spins nor waits: "No Kernel", ready for another one."""
    def said() -> bool:
        lab.page.wait_for_timeout(200)  # Playwright delivers the page's events while called
        return any(f"Kernel: dead ({kernel_id})" in text for _, text in lab.console.messages)

    poll(said, timeout=60, what="JupyterLab declaring the kernel dead")
    panel = notebook_panel(lab)
    expect(panel.locator(".jp-KernelName")).to_have_text("No Kernel", timeout=60_000)
    status = panel.locator(".jp-Notebook-ExecutionIndicator").get_attribute("data-status")
    lab.console.note(f"after the cull: indicator {status!r}, status bar {statusbar(lab)!r}")
    assert status not in ("busy", "starting", "restarting", "autorestarting", "connecting"), status


def test_a_culled_remote_kernel_shows_dead_and_a_new_one_can_be_chosen(
        lab_page: LabPage, lab_topology: Topology) -> None:
    lab, topo = lab_page, lab_topology
    with culling_mixer(topo) as mixer:
        open_lab(lab, topo)
        remote_name, path = open_remote_notebook(lab)
        kernel_id = front_session(topo, path)["kernel"]["id"]
        assert run_cell(lab, WHERE) == "remote"
        lab.screenshot("before-cull")
        lab.console.note(f"kernel {kernel_id}: waiting for the mixer to cull it")
        poll(lambda: topo.backend_kernel(topo.remote, kernel_id) is None,
             timeout=IDLE_TIMEOUT + 30, what="the idle kernel culled on the remote")
        poll(lambda: f"culled kernel {kernel_id}" in mixer.log_text(), timeout=30,
             what="the mixer's log line of the cull")
        expect_dead(lab, kernel_id)
        lab.screenshot("culled")

        # a new kernel can be chosen (the picker offers the notebook's remote spec), and runs
        menu(lab, "Kernel", "kernelmenu:change")
        dialog = lab.page.locator(".jp-Dialog")
        expect(dialog.locator(".jp-Dialog-header")).to_have_text("Select Kernel")
        expect(dialog.locator("select")).to_have_value(re.compile(r'"name":\s*"remote-'))
        lab.screenshot("choose-again")
        dialog.locator("button.jp-mod-accept").click()
        expect(dialog).to_have_count(0)
        expect_kernel_idle(lab, remote_name)
        new_id = poll(lambda: (k := front_session(topo, path)["kernel"]["id"]) != kernel_id and k,
                      timeout=30, what="the notebook on a new kernel")
        assert topo.backend_kernel(topo.remote, new_id)
        assert run_cell(lab, WHERE) == "remote"
        lab.screenshot("new-kernel")


# -- /mixer/: shutting orphans down ------------------------------------------------------------


def mixer_call(topo: Topology, method: str, path: str, body: Any = None) -> Any:
    request = urllib.request.Request(
        topo.mixer.url + path, method=method, headers={**topo.mixer_headers(),
                                                       "Content-Type": "application/json"},
        data=None if body is None else json.dumps(body).encode())
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(request, timeout=60) as resp:
        return json.loads(resp.read() or b"null")


def test_an_orphan_is_shut_down_from_the_status_page_and_foreign_posts_are_refused(
        lab_page: LabPage, lab_topology: Topology) -> None:
    lab, topo = lab_page, lab_topology
    topo.start_mixer()
    orphan = mixer_call(topo, "POST", "/api/kernels", {"name": "remote-python3"})["id"]
    other = mixer_call(topo, "POST", "/api/kernels", {"name": "remote-python3"})["id"]
    try:
        page = lab.page
        status_url = f"{topo.mixer.url}/mixer/?token={topo.jupyter_token}"
        # a page of another site (another port of localhost) posts to the mixer, token
        # and all, as a cross-site form can (its text/plain body is the JSON the
        # mixer takes): refused by its Origin, nothing stopped
        page.goto(topo.local.url + "/api/status")
        with page.expect_navigation() as cross_site:
            page.evaluate(
                """([url, token, id]) => {
                     const form = document.createElement("form");
                     form.method = "POST";
                     form.enctype = "text/plain";
                     form.action = url + "/mixer/api/orphans/shutdown?token=" + token;
                     const field = document.createElement("input");
                     field.name = '{"backend": "remote", "ids": ["' + id + '"], "x": "';
                     field.value = '"}';
                     form.appendChild(field);
                     document.body.appendChild(form);
                     form.submit();
                   }""", [topo.mixer.url, topo.jupyter_token, orphan])
        assert cross_site.value is not None and cross_site.value.status == 403
        assert "foreign origin" in page.content()
        page.goto(status_url)
        row = page.locator(f"tr.orphan[data-id='{orphan}']")
        expect(row).to_be_visible()
        # the page's own origin, without the token: refused
        no_token = page.evaluate(
            """async (id) => (await fetch("/mixer/api/orphans/shutdown", {
                 method: "POST", headers: {"Content-Type": "application/json"},
                 body: JSON.stringify({backend: "remote", ids: [id]})})).status""", orphan)
        assert no_token == 403
        assert topo.backend_kernel(topo.remote, orphan), "stopped by a refused request"
        lab.screenshot("orphans")

        dialogs: list[str] = []

        def accept(dialog: Any) -> None:
            dialogs.append(dialog.message)
            dialog.accept()

        page.on("dialog", accept)
        row.locator("button.shutdown").click()
        expect(page.locator(f"tr.orphan[data-id='{orphan}']")).to_have_count(0, timeout=RUN)
        expect(page.locator("#outcome")).to_contain_text("Stopped 1 kernel(s) on remote")
        lab.screenshot("orphan-shut-down")
        assert len(dialogs) == 1 and orphan in dialogs[0], dialogs
        assert topo.backend_kernel(topo.remote, orphan) is None
        assert topo.backend_kernel(topo.remote, other), "an orphan nobody asked to stop"
        expect(page.locator(f"tr.orphan[data-id='{other}']")).to_be_visible()
    finally:
        for kernel_id in (orphan, other):
            with contextlib.suppress(Exception):
                mixer_call(topo, "DELETE", f"/api/kernels/{kernel_id}")
