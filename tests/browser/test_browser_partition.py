"""Issue 10, acceptance 2: a network partition under JupyterLab costs the user nothing.

chromium --> front JupyterLab --GatewayClient--> mixer --> remote jupyter_server (frozen)

A notebook runs on a remote kernel; the remote jupyter_server process alone is frozen
(SIGSTOP: its kernels run on, its socket accepts and answers nothing, as behind a
dropped Wi-Fi) for 30 s while the page stays open and JupyterLab keeps polling. The
front's GatewayClient disposes every kernel a successful listing omits, and JupyterLab
then offers "Select Kernel" or reports a dead kernel; the mixer must keep listing the
remote's last-known entries (SPEC §4). After SIGCONT the next cell must run on the same
kernel, with its state, without any dialog and without reloading the page.

What the page, the front and the mixer showed during the outage is noted on the
test's console log (``test-artifacts/browser/browser_partition_*``), with screenshots
before, during and after.
"""

from __future__ import annotations

import re
import time
import urllib.error
from dataclasses import dataclass, field
from typing import Any

import pytest

from .conftest import LabPage, Topology, get_json, poll
from .test_jupyterlab import (
    RUN,
    expect,
    expect_kernel_idle,
    front_session,
    open_lab,
    open_remote_notebook,
    type_into_last_cell,
    websocket_problems,
)

pytestmark = pytest.mark.browser

FREEZE_SECONDS = 30.0
POLL_EVERY = 2.0  # s: as often as JupyterLab itself lists kernels and sessions
LISTING_TIMEOUT = 8.0  # s: one listing asked of the front or the mixer during the outage
RESUME_WITHIN = 60_000  # ms: the cell run after SIGCONT answers within this

# Installed before JupyterLab loads: every dialog ever attached to the page is recorded
# (a "Kernel Restarting", "No Kernel", "Select Kernel" or error dialog may be shown
# and closed between two polls), and the record is lost only if the page reloads.
DIALOG_WATCH = """
(() => {
  window.__dialogs = [];
  const seen = node => {
    if (node.nodeType !== 1) return;
    const found = node.matches('.jp-Dialog') ? [node] : [...node.querySelectorAll('.jp-Dialog')];
    for (const d of found) {
      const text = (d.innerText || d.textContent || '').slice(0, 300);
      window.__dialogs.push({at: new Date().toISOString(), text});
    }
  };
  new MutationObserver(records => records.forEach(r => r.addedNodes.forEach(seen)))
    .observe(document, {childList: true, subtree: true});
})();
"""


@dataclass
class Outage:
    """What the page, the front and the mixer showed while the remote was frozen."""

    kernel_id: str
    lines: list[str] = field(default_factory=list)  # one per observation, timed
    dialogs: list[str] = field(default_factory=list)  # dialog texts seen by polling
    lost: list[str] = field(default_factory=list)  # successful listings without the kernel

    def add(self, lab: LabPage, line: str) -> None:
        self.lines.append(line)
        lab.console.note(line)

    def report(self) -> str:
        return "\n".join(["during the outage:", *self.lines])


def listing(url: str, headers: dict[str, str]) -> tuple[str, list[dict] | None]:
    """``GET url`` once, bounded: a one-line summary, and the items when it answered 200."""
    started = time.monotonic()
    try:
        items = get_json(url, headers, timeout=LISTING_TIMEOUT)
    except urllib.error.HTTPError as e:
        return f"{e.code} in {time.monotonic() - started:.1f}s", None
    except (OSError, ValueError) as e:
        return f"no answer ({e!r}) after {time.monotonic() - started:.1f}s", None
    return f"200 in {time.monotonic() - started:.1f}s, {len(items)} entries", items


def kernel_ids(items: list[dict]) -> set[str]:
    """Kernel ids of a kernels listing, or of the kernels of a sessions listing."""
    return {(item.get("kernel") or {}).get("id") if "path" in item else item["id"] for item in items}


def observe(lab: LabPage, topo: Topology, outage: Outage, at: float) -> None:
    """One look at the page (dialogs, kernel status) and at the listings JupyterLab polls
    (the front's, which the front answers from the mixer's) and the mixer's own."""
    dialogs = lab.page.locator(".jp-Dialog")
    if dialogs.count():
        outage.dialogs += [t.strip()[:300] for t in dialogs.all_inner_texts()]
    status = lab.page.locator("#jp-main-statusbar").inner_text().replace("\n", " ")
    toasts = lab.page.locator(".Toastify__toast").all_inner_texts()
    assert topo.front is not None
    answers = []
    for who, url, headers in (
        ("front /api/kernels", topo.front.url + "/api/kernels", topo.front.auth()),
        ("front /api/sessions", topo.front.url + "/api/sessions", topo.front.auth()),
        ("mixer /api/kernels", topo.mixer.url + "/api/kernels", topo.mixer_headers()),
    ):
        summary, items = listing(url, headers)
        answers.append(f"{who} -> {summary}")
        if items is not None and outage.kernel_id not in kernel_ids(items):
            outage.lost.append(f"{at:5.1f}s {who}: {items}")
    outage.add(
        lab,
        f"{at:5.1f}s status bar [{status}] dialogs={dialogs.count()} toasts={toasts}; " + "; ".join(answers),
    )


def freeze_remote(lab: LabPage, topo: Topology, kernel_id: str) -> Outage:
    """SIGSTOP the remote server for ``FREEZE_SECONDS`` (SIGCONT whatever happens),
    looking at the page and the listings every ``POLL_EVERY`` seconds meanwhile."""
    outage = Outage(kernel_id)
    t0 = time.monotonic()
    lab.console.note("SIGSTOP remote jupyter_server")
    with topo.remote.frozen():
        shot_taken = False
        while (at := time.monotonic() - t0) < FREEZE_SECONDS:
            observe(lab, topo, outage, at)
            if not shot_taken and at >= FREEZE_SECONDS / 2:
                lab.screenshot("during-outage")
                shot_taken = True
            lab.page.wait_for_timeout(max(0.0, POLL_EVERY - (time.monotonic() - t0 - at)) * 1000)
        status = get_json(topo.mixer.url + "/mixer/api/status", topo.mixer_headers(), timeout=LISTING_TIMEOUT)
        remote = next(b for b in status["backends"] if b["name"] == "remote")
        outage.add(lab, f"{time.monotonic() - t0:5.1f}s mixer status of the remote: {remote}")
    lab.console.note(f"SIGCONT remote jupyter_server after {time.monotonic() - t0:.1f}s")
    if not shot_taken:
        lab.screenshot("during-outage")
    return outage


def run_expression(lab: LabPage, code: str, *, timeout: float = RUN, quiet: bool = False) -> tuple[int, str]:
    """Type ``code`` into the last (empty) cell, run it, return its execution count and
    its result (text/plain; ``quiet``: there is none); an error output fails."""
    cells, cell, count = type_into_last_cell(lab, code)
    prompt = cell.locator(".jp-InputPrompt")
    expect(prompt).to_have_text(re.compile(r"^\[\d+\]:$"), timeout=timeout)
    outputs = cell.locator(".jp-OutputArea-output")
    errors = cell.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']")
    assert errors.count() == 0, f"{code!r} failed: {errors.all_inner_texts()}"
    expect(cells).to_have_count(count + 1)
    result = cell.locator(".jp-OutputArea-output[data-mime-type='text/plain']")
    if quiet:
        expect(outputs).to_have_count(0)
        text = ""
    else:
        expect(result).to_have_count(1, timeout=timeout)
        text = result.inner_text().strip()
    return int(prompt.inner_text().strip()[1:-2]), text


def recorded_dialogs(lab: LabPage) -> list[Any]:
    return lab.page.evaluate("() => window.__dialogs || null")


@pytest.mark.timeout(480)
def test_remote_frozen_30s_notebook_keeps_kernel_and_state(lab_page: LabPage, lab_topology: Topology) -> None:
    lab, topo = lab_page, lab_topology
    lab.page.add_init_script(DIALOG_WATCH)
    open_lab(lab, topo)
    # a document loaded again (JupyterLab's router changes the URL without a load)
    loads: list[str] = []
    lab.page.on("load", lambda page: loads.append(page.url))
    remote_name, path = open_remote_notebook(lab)
    session = front_session(topo, path)
    kernel_id = session["kernel"]["id"]
    assert session["kernel"]["name"] == "remote-python3", session
    assert topo.backend_kernel(topo.remote, kernel_id), "kernel not running on the remote"

    run_expression(lab, "x = 41", quiet=True)
    before_count, before = run_expression(lab, "x + 1")
    assert before == "42", before
    expect_kernel_idle(lab, remote_name)
    lab.page.evaluate("() => { window.__marker = 1; }")  # gone if anything reloads the page
    assert recorded_dialogs(lab) == [], "the dialog watch is installed and saw nothing so far"
    lab.screenshot("before-outage")

    outage = freeze_remote(lab, topo, kernel_id)

    # the user runs the next cell at once; JupyterLab may be reconnecting meanwhile
    resumed = time.monotonic()
    after_count, after = run_expression(lab, "x + 1", timeout=RESUME_WITHIN)
    lab.console.note(f"x + 1 answered {after!r} {time.monotonic() - resumed:.1f}s after SIGCONT")
    expect_kernel_idle(lab, remote_name)
    lab.screenshot("after-outage")

    context = outage.report() + "\nwebsocket problems: " + repr(websocket_problems(lab.console))
    assert after == "42", f"the kernel lost its state: x + 1 -> {after!r}\n{context}"
    assert after_count == before_count + 1, f"execution count {before_count} then {after_count}\n{context}"
    assert lab.page.evaluate("() => window.__marker") == 1, f"the page was reloaded\n{context}"
    assert loads == [], f"the page loaded again: {loads}\n{context}"
    assert recorded_dialogs(lab) == [] and outage.dialogs == [], (
        f"dialogs shown: {recorded_dialogs(lab)} {outage.dialogs}\n{context}"
    )
    assert not outage.lost, (
        "listings without the notebook's kernel:\n" + "\n".join(outage.lost) + "\n" + context
    )
    assert front_session(topo, path)["kernel"]["id"] == kernel_id, context
    assert topo.backend_kernel(topo.remote, kernel_id), f"kernel {kernel_id} gone from the remote\n{context}"

    def recovered() -> bool:  # the next tests of this package find the remote up again
        status = get_json(topo.mixer.url + "/mixer/api/status", topo.mixer_headers())
        remote = next(b for b in status["backends"] if b["name"] == "remote")
        return bool(remote["reachable"] and not remote["stale_since"])

    poll(recovered, timeout=30, what="the mixer listing the remote afresh")
