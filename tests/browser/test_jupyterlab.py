"""Issue 6: real JupyterLab in headless Chromium, against the full topology of SPEC §1.

chromium --> front JupyterLab --GatewayClient--> mixer --> local jupyter_server (MIXER_TEST_WHERE=local)
                                                       \\-> remote jupyter_server (Bearer, =remote)

What is asserted is what a user sees in the page: the kernel picker's entries, the
kernel name and status in the notebook toolbar and status bar, the text in the
output area. Every wait is an explicit, bounded wait on a JupyterLab selector or a
bounded poll; screenshots of each step go to ``test-artifacts/browser/``.
"""

from __future__ import annotations

import re
import time
import uuid
from typing import Any

import pytest

from .conftest import ConsoleLog, LabPage, Topology, poll, publish_docs_screenshot

pytestmark = pytest.mark.browser

WHERE = 'import os; print(os.environ["MIXER_TEST_WHERE"])'
STARTUP = 90_000  # ms: a kernel start through front, mixer and backend on a loaded 2-core machine
RUN = 60_000  # ms: one cell

# jupyter_server in gateway mode answers the kernel websocket with the legacy protocol
# only (jupyter_server PR #1311: there is no translation between the browser's and the
# gateway's framing). JupyterLab first offers the v1.kernel.websocket.jupyter.org
# subprotocol; Chromium then fails that first handshake with this console error and
# JupyterLab reconnects at once without subprotocols (JupyterLab PR #11841). It happens
# with any kernel gateway, mixer or not, once per kernel connection; anything else
# about websockets is an error of the topology under test.
SUBPROTOCOL_FALLBACK = "Sent non-empty 'Sec-WebSocket-Protocol' header but no response was received"


def expect(*args, **kwargs):
    from playwright.sync_api import expect as _expect

    return _expect(*args, **kwargs)


# -- page helpers ------------------------------------------------------------------------------


def open_lab(lab: LabPage, topo: Topology) -> None:
    response = lab.page.goto(topo.lab_url("w" + uuid.uuid4().hex[:12]))
    assert response is not None and response.ok, (
        f"/lab answered {response and response.status}: {response and response.text()[:500]}"
    )
    launcher = lab.page.locator(".jp-Launcher")
    expect(launcher).to_be_visible(timeout=STARTUP)
    # the launcher lists a notebook card per kernelspec of the mixer
    expect(notebook_card(lab, "(Remote)")).to_be_visible()
    expect(notebook_card(lab, "(Local)")).to_be_visible()


def notebook_card(lab: LabPage, suffix: str):
    return lab.page.locator(".jp-LauncherCard[data-category='Notebook']").filter(has_text=suffix)


def notebook_panel(lab: LabPage):
    return lab.page.locator(".jp-NotebookPanel:visible")


def menu(lab: LabPage, top: str, command: str, submenu: str | None = None) -> None:
    page = lab.page
    page.locator(".lm-MenuBar-item", has_text=re.compile(rf"^{top}$")).click()
    if submenu:
        page.locator(".lm-Menu-item[data-type='submenu']", has_text=submenu).first.hover()
    page.locator(f".lm-Menu-item[data-command='{command}']").click()


def pick_kernel(lab: LabPage, suffix: str, step: str) -> str:
    """In the open "Select Kernel" dialog, choose the kernelspec whose name ends with ``suffix``."""
    dialog = lab.page.locator(".jp-Dialog")
    expect(dialog.locator(".jp-Dialog-header")).to_have_text("Select Kernel")
    select = dialog.locator("select")
    start_group = select.locator("optgroup[label='Start Kernel'] option")
    labels = [t.strip() for t in start_group.all_inner_texts()]
    assert any(t.endswith(" (Local)") for t in labels), f"no (Local) kernel in the picker: {labels}"
    assert any(t.endswith(" (Remote)") for t in labels), f"no (Remote) kernel in the picker: {labels}"
    label = next(t for t in labels if t.endswith(f" {suffix}"))
    select.select_option(label=label)
    prefix = {"(Local)": "local-", "(Remote)": "remote-"}[suffix]
    expect(select).to_have_value(re.compile(rf'"name":\s*"{prefix}'))
    # a headless screenshot cannot show the native drop-down: render the same <select> as
    # a list box for one screenshot of every entry, then put it back as it was
    select.evaluate(
        """s => {
            s.size = s.options.length + s.querySelectorAll('optgroup').length;
            s.style.height = s.parentElement.style.height = 'auto';
        }"""
    )
    options_shot = lab.screenshot(f"{step}-options")
    select.evaluate(
        """s => {
            s.removeAttribute('size');
            s.style.height = s.parentElement.style.height = '';
        }"""
    )
    lab.screenshot(step)
    lab.picker_shots.append(options_shot)
    dialog.locator("button.jp-mod-accept").click()
    expect(dialog).to_have_count(0)
    return label


def expect_kernel_idle(lab: LabPage, display_name: str) -> None:
    """The toolbar names the kernel and its status circle, and the status bar, say idle."""
    panel = notebook_panel(lab)
    expect(panel.locator(".jp-KernelName")).to_have_text(display_name, timeout=STARTUP)
    expect(panel.locator(".jp-Notebook-ExecutionIndicator")).to_have_attribute(
        "data-status", "idle", timeout=STARTUP
    )
    expect(lab.page.locator("#jp-main-statusbar")).to_contain_text(f"{display_name} | Idle")


def type_into_last_cell(lab: LabPage, code: str) -> tuple[Any, Any, int]:
    """Type ``code`` into the last (empty) cell and run it with Shift+Enter; return the
    notebook's cells, the cell and how many cells there were."""
    cells = notebook_panel(lab).locator(".jp-Notebook .jp-Cell")
    expect(cells.last).to_be_visible()
    count = cells.count()
    cell = cells.nth(count - 1)
    editor = cell.locator(".cm-content")
    expect(editor).to_have_text("")
    editor.click()
    lab.page.keyboard.insert_text(code)  # one input event: no auto-closed brackets
    expect(editor).to_have_text(code)
    lab.page.keyboard.press("Shift+Enter")
    return cells, cell, count


def run_cell(lab: LabPage, code: str) -> str:
    """Run ``code`` in the last (empty) cell; return its stdout."""
    cells, cell, count = type_into_last_cell(lab, code)
    # the execution count replaces "[ ]" / "[*]" once the kernel replied
    expect(cell.locator(".jp-InputPrompt")).to_have_text(re.compile(r"^\[\d+\]:$"), timeout=RUN)
    out = cell.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stdout']")
    expect(out).to_be_visible(timeout=RUN)
    stderr = cell.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']")
    expect(stderr).to_have_count(0)
    # Shift+Enter on the last cell appends a new empty one for the next run
    expect(cells).to_have_count(count + 1)
    return out.inner_text().strip()


def open_remote_notebook(lab: LabPage) -> tuple[str, str]:
    """A new notebook on the remote kernel, from the launcher's card (no dialog), idle;
    (the kernel's display name, the notebook's path)."""
    notebook_card(lab, "(Remote)").click()
    kernel_name = notebook_panel(lab).locator(".jp-KernelName")
    expect(kernel_name).to_have_text(re.compile(r" \(Remote\)\s*$"), timeout=STARTUP)
    remote_name = kernel_name.inner_text().strip()
    expect_kernel_idle(lab, remote_name)
    return remote_name, notebook_name(lab)


def notebook_name(lab: LabPage) -> str:
    tab = lab.page.locator(".lm-DockPanel-tabBar .lm-TabBar-tab.jp-mod-current .lm-TabBar-tabLabel")
    expect(tab).to_have_text(re.compile(r"\.ipynb$"))
    return tab.inner_text().strip()


def front_session(topo: Topology, path: str) -> dict:
    sessions = [s for s in topo.front_sessions() if s["path"] == path]
    assert len(sessions) == 1, f"front sessions for {path}: {topo.front_sessions()}"
    return sessions[0]


def websocket_problems(console: ConsoleLog) -> list[str]:
    problems = [
        text
        for text in [*console.errors(), *console.socket_errors]
        if "websocket" in text.lower() and SUBPROTOCOL_FALLBACK not in text
    ]
    problems += [e for e in console.socket_errors if SUBPROTOCOL_FALLBACK not in e]
    problems += [f"uncaught: {e}" for e in console.page_errors]
    return list(dict.fromkeys(problems))


def assert_no_websocket_errors(console: ConsoleLog, kernel_connections: int) -> None:
    problems = websocket_problems(console)
    assert not problems, "websocket errors on the browser console:\n" + "\n".join(problems)
    # the one expected protocol fallback per kernel connection, not a reconnect loop
    fallbacks = [t for t in console.errors() if SUBPROTOCOL_FALLBACK in t]
    assert len(fallbacks) <= kernel_connections, "\n".join(fallbacks)
    channels = [url for url in console.websockets if "/channels" in url]
    assert channels, f"no kernel websocket opened: {console.websockets}"
    assert len(channels) <= 2 * kernel_connections, "\n".join(channels)


# -- the tests -----------------------------------------------------------------------------------


def test_pick_remote_kernel_then_change_to_local(lab_page: LabPage, lab_topology: Topology) -> None:
    lab, topo = lab_page, lab_topology
    open_lab(lab, topo)
    lab.screenshot("launcher")

    # File > New > Notebook opens the kernel picker: choose the remote kernel
    menu(lab, "File", "notebook:create-new", submenu="New")
    remote_name = pick_kernel(lab, "(Remote)", "kernel-picker-remote")
    publish_docs_screenshot(lab.picker_shots[0])
    expect_kernel_idle(lab, remote_name)
    path = notebook_name(lab)
    session = front_session(topo, path)
    assert session["kernel"]["name"] == "remote-python3", session
    remote_kernel = session["kernel"]["id"]
    assert topo.backend_kernel(topo.remote, remote_kernel), "kernel not running on the remote"

    assert run_cell(lab, WHERE) == "remote"
    expect_kernel_idle(lab, remote_name)
    lab.screenshot("ran-on-remote")

    # Kernel > Change Kernel… : the same picker, choose the local kernel
    menu(lab, "Kernel", "kernelmenu:change")
    local_name = pick_kernel(lab, "(Local)", "change-kernel-local")
    expect_kernel_idle(lab, local_name)
    session = poll(
        lambda: (s := front_session(topo, path))["kernel"]["name"] == "local-python3" and s,
        timeout=30,
        what="front session on local-python3",
    )
    local_kernel = session["kernel"]["id"]
    assert local_kernel != remote_kernel
    assert topo.backend_kernel(topo.local, local_kernel), "kernel not running on the local server"

    assert run_cell(lab, WHERE) == "local"
    expect_kernel_idle(lab, local_name)
    lab.screenshot("ran-on-local")
    # the earlier output is still on the page, the kernel it came from is gone from the remote
    outputs = notebook_panel(lab).locator(".jp-OutputArea-output").all_inner_texts()
    assert [o.strip() for o in outputs] == ["remote", "local"], outputs
    poll(
        lambda: topo.backend_kernel(topo.remote, remote_kernel) is None,
        timeout=30,
        what="old remote kernel shut down",
    )

    assert_no_websocket_errors(lab.console, kernel_connections=2)


def test_mixer_restart_jupyterlab_keeps_kernel(
    lab_page: LabPage, lab_topology: Topology, record_property
) -> None:
    lab, topo = lab_page, lab_topology
    open_lab(lab, topo)
    remote_name, path = open_remote_notebook(lab)
    kernel_id = front_session(topo, path)["kernel"]["id"]

    marker = uuid.uuid4().hex
    first = run_cell(
        lab, f'import os; marker = "{marker}"; print(os.environ["MIXER_TEST_WHERE"], os.getpid())'
    )
    where, pid = first.split()
    assert where == "remote", first
    # the page's own state: gone if anything reloads the page
    lab.page.evaluate("m => { window.__mixerTestMarker = m; }", marker)
    navigations: list[str] = []
    lab.page.on("framenavigated", lambda f: f.parent_frame is None and navigations.append(f.url))

    def connections() -> int:  # kernel websockets open on the remote itself
        return (topo.backend_kernel(topo.remote, kernel_id) or {}).get("connections", 0)

    poll(lambda: connections() >= 1, timeout=30, what="kernel websocket open through the mixer")
    lab.screenshot("before-mixer-restart")

    lab.console.note("stopping the mixer")
    started = time.monotonic()
    topo.mixer.stop()  # SIGTERM
    poll(lambda: connections() == 0, timeout=30, what="kernel websocket gone with the mixer")
    lab.console.note("starting the mixer again, same port")
    topo.mixer.start()  # the same command on the same port, waited until it answers
    # nobody touches the page: the front re-opens its kernel websocket through the new mixer
    poll(
        lambda: connections() >= 1,
        timeout=60,
        what="kernel websocket re-opened through the restarted mixer",
    )
    reconnected_after = time.monotonic() - started
    lab.console.note(f"the front's kernel websocket is back after {reconnected_after:.1f}s")
    record_property("kernel_websocket_back_after_s", round(reconnected_after, 1))

    expect_kernel_idle(lab, remote_name)
    second = run_cell(lab, 'import os; print(os.environ["MIXER_TEST_WHERE"], os.getpid(), marker)')
    assert second.split() == ["remote", pid, marker], (second, first, reconnected_after)
    expect_kernel_idle(lab, remote_name)
    lab.screenshot("after-mixer-restart")

    assert front_session(topo, path)["kernel"]["id"] == kernel_id
    assert lab.page.evaluate("() => window.__mixerTestMarker") == marker, "the page was reloaded"
    assert navigations == [], f"the page navigated: {navigations}"
    # the browser's own kernel websocket to the front never noticed the restart
    assert_no_websocket_errors(lab.console, kernel_connections=1)
