"""Switching keeps your variables, in JupyterLab through ``mixer lab --demo-remote
--carry-variables`` (issue 18, acceptance 2).

The user's path: a notebook on "(Local)", a cell sets variables; Kernel → Change
Kernel… → "(Remote)"; the next cell computes with them on the remote (its kernel says
where it runs: ``MIXER_LAB_BACKEND``); and back to "(Local)", with a variable made on
the remote. The front (``CarryingSessionManager``) asks the mixer to carry the state
before it shuts the old kernel down; the new kernel holds ``_mixer_carry``, the
report; the mixer's status lists both carries, and the old kernels are gone.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from ..e2e.support.lab_run import STATUS_RE, Lab, lab
from .conftest import LabPage, get_json, poll
from .test_jupyterlab import STARTUP, expect, expect_kernel_idle, menu, notebook_name, pick_kernel, run_cell
from .test_lab_console import QUIET, page  # noqa: F401  (the page fixture, for this module's lab_run)

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def lab_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Lab, str]]:
    """``mixer lab --demo-remote --carry-variables`` and the URL it printed."""
    with lab(tmp_path_factory.mktemp("lab-carry"), "--demo-remote", "--carry-variables", *QUIET) as run:
        yield run, run.wait_url().group(0)


def test_change_kernel_to_the_remote_and_back_keeps_the_notebooks_variables(
    page: LabPage,  # noqa: F811
    lab_run: tuple[Lab, str],
) -> None:
    run, url = lab_run
    assert "Change Kernel carries the notebook's variables" in run.stdout()  # said before it happens
    status = STATUS_RE.search(run.stdout())
    assert status is not None, run.stdout()
    mixer = f"http://127.0.0.1:{status.group(1)}"
    auth = {"token": status.group(2)}

    workspace = url.replace("/lab?", f"/lab/workspaces/w{uuid.uuid4().hex[:12]}?reset&")
    response = page.page.goto(workspace)
    assert response is not None and response.ok, response and response.status
    expect(page.page.locator(".jp-Launcher")).to_be_visible(timeout=STARTUP)

    menu(page, "File", "notebook:create-new", submenu="New")
    local = pick_kernel(page, "(Local)", "local")
    expect_kernel_idle(page, local)
    notebook_name(page)
    first = run_cell(
        page, 'import os; answer = 6 * 7; made_on = os.environ["MIXER_LAB_BACKEND"]; print(made_on)'
    )
    assert first == "local"
    page.screenshot("set-on-local")

    menu(page, "Kernel", "kernelmenu:change")
    remote = pick_kernel(page, "(Remote)", "remote")
    expect_kernel_idle(page, remote)
    # computed on the remote, from what the local kernel held
    second = run_cell(
        page,
        'import os; from_remote = answer * 10; print(os.environ["MIXER_LAB_BACKEND"], answer + 1, made_on, '
        '_mixer_carry.outcome, "answer" in _mixer_carry.carried)',
    )
    assert second.split() == ["remote", "43", "local", "ok", "True"], second
    page.screenshot("used-on-remote")

    menu(page, "Kernel", "kernelmenu:change")
    local_again = pick_kernel(page, "(Local)", "local-again")
    expect_kernel_idle(page, local_again)
    third = run_cell(page, 'import os; print(os.environ["MIXER_LAB_BACKEND"], from_remote, answer, made_on)')
    assert third.split() == ["local", "420", "42", "local"], third
    page.screenshot("back-on-local")

    # the mixer reports both carries; the kernels switched away from are gone
    carries = get_json(f"{mixer}/mixer/api/status", auth)["carries"]
    assert [c["outcome"] for c in carries["recent"]] == ["ok", "ok"], carries
    kernels = poll(
        lambda: (ks := get_json(f"{mixer}/api/kernels", auth)) and len(ks) == 1 and ks,
        timeout=30,
        what="only the notebook's kernel left",
    )
    assert kernels[0]["name"].startswith("local-"), kernels
