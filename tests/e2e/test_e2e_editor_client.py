"""Issue 13: an editor's client library works against the mixer as against a Jupyter
server. ``tests/node/editor_client.mjs`` drives ``@jupyterlab/services`` 7 (what VS
Code's Jupyter extension builds on) in Node against the real topology: the shared
local jupyter_server, a remote jupyter_server protected by its own token, and a
mixer in front of both (with every --log-all-* flag on).

In Node the library sends ``Authorization: token …`` on REST calls, appends
``?token=…`` to websocket URLs and has no ``_xsrf`` cookie to send. So the test fails
if the mixer asks token-authenticated requests for an XSRF pair again (SPEC §6), and
if it forwards the client's ``?token=`` to a backend: jupyter_server prefers a query
token to the ``Authorization`` header, so the remote would refuse the websocket
(issue 11 item 1; ``test_the_remote_refuses_a_foreign_query_token`` shows that).

Node and the npm packages are installed by ``scripts/install-node`` (run by
``scripts/test``, which sets ``MIXER_E2E_REQUIRE_NODE=1``: there a missing Node is a
failure, elsewhere a skip that says how to install it).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from .support import topology
from .support.api import ApiClient
from .support.stack import Tokens
from .support.topology import JupyterServer, Mixer

pytestmark = pytest.mark.e2e

NODE_DIR = Path(__file__).resolve().parents[1] / "node"
DRIVER = NODE_DIR / "editor_client.mjs"
KERNEL_PROTOCOL = "v1.kernel.websocket.jupyter.org"
NODE_TIMEOUT = 420  # seconds for the whole client run; each of its steps has its own limit


def node_command() -> list[str]:
    """``node`` and the driver, or skip/fail saying how to install them."""
    node = shutil.which("node")
    installed = (NODE_DIR / "node_modules" / "@jupyterlab" / "services" / "package.json").exists()
    if node and installed:
        return [node, str(DRIVER)]
    why = "node is not on PATH" if not node else "tests/node/node_modules is not installed"
    if os.environ.get("MIXER_E2E_REQUIRE_NODE") == "1" or os.environ.get("CI"):
        pytest.fail(f"{why} (run scripts/install-node)")
    pytest.skip(f"{why}: run scripts/install-node (or scripts/test)")


@pytest.fixture(scope="module")
def remote_token() -> str:
    return uuid.uuid4().hex


@pytest.fixture(scope="module")
def token_remote(e2e_dir: Path, remote_token: str) -> Iterator[JupyterServer]:
    """A remote that takes jupyter_server's own token (a Kernel Gateway, a Jupyter
    server elsewhere): the kind that refuses a client's token forwarded to it."""
    server = topology.jupyter_server("editor-remote", e2e_dir, where="remote", token=remote_token)
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def editor_mixer(
    e2e_dir: Path, local_server: JupyterServer, token_remote: JupyterServer,
    remote_token: str, tokens: Tokens,
) -> Iterator[Mixer]:
    home = e2e_dir / "editor-mixer"
    home.mkdir(parents=True, exist_ok=True)
    (home / "remote.token").write_text(remote_token + "\n", encoding="utf-8")
    config = home / "mixer.toml"
    config.write_text(
        '[[backends]]\nname = "remote"\ndisplay_suffix = " (Remote)"\n'
        f'url = "{token_remote.url}/"\nauth = "token"\ntoken_file = "remote.token"\n',
        encoding="utf-8",
    )
    mixer = topology.mixer(
        e2e_dir, local=local_server, remote=None, token=tokens.jupyter, gcloud=None,
        name="editor-mixer",
        extra_args=[f"--config={config}", "--log-all-request-headers",
                    "--log-all-request-responses", "--log-all-response-bodies"],
    )  # fmt: skip
    try:
        mixer.start()
        yield mixer
    finally:
        mixer.stop()


async def run_editor_client(mixer: Mixer) -> dict[str, Any]:
    """Run the Node driver against ``mixer``; its report, or a failure with its output."""
    argv = node_command()
    env = topology.clean_env({"MIXER_URL": f"{mixer.url_v4}/", "MIXER_TOKEN": mixer.token})
    proc = await asyncio.create_subprocess_exec(
        *argv, cwd=NODE_DIR, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        out, err = await asyncio.wait_for(proc.communicate(), NODE_TIMEOUT)
    except asyncio.TimeoutError:
        proc.kill()
        await proc.wait()
        pytest.fail(f"the editor client did not finish within {NODE_TIMEOUT}s")
    stderr = err.decode(errors="replace").replace(mixer.token, "[token]")
    lines = out.decode(errors="replace").strip().splitlines()
    assert proc.returncode == 0 and lines, (
        f"editor client exited {proc.returncode}\n--- its stderr (tail):\n{stderr[-6000:]}"
        f"\n--- mixer log (tail):\n{mixer.log_text()[-6000:]}"
    )
    return json.loads(lines[-1])


async def test_jupyterlab_services_client_runs_local_and_remote_kernels(
    editor_mixer: Mixer, local_server: JupyterServer, token_remote: JupyterServer,
    remote_token: str, http: aiohttp.ClientSession,
) -> None:
    local = ApiClient(http, local_server.url, auth=local_server.auth, name="local")
    remote = ApiClient(http, token_remote.url, auth=token_remote.auth, name="editor-remote")
    before = {b.name: await b.kernel_ids() for b in (local, remote)}
    report = await run_editor_client(editor_mixer)
    print("editor client report:", json.dumps({k: v for k, v in report.items() if k != "requests"}))

    assert {"local-python3", "remote-python3"} <= set(report["kernelspecs"])
    assert report["ranAt"] == {"first": "local", "afterChange": "remote", "afterChangeBack": "local"}
    assert report["listedKernelAfterChange"] == "remote-python3"
    assert report["interruptMs"] < 30_000
    assert len(set(report["kernelIds"])) == 3, report["kernelIds"]  # local, remote, local again
    assert not report["sessionListedAfterShutdown"]
    assert report["kernelsListedAfterShutdown"] == []  # the mixer's kernels listing

    # As the library does in Node: the token in every REST call and websocket URL, no
    # XSRF cookie or header; the unsafe calls (start, PATCH, interrupt, restart,
    # DELETE) among them.
    requests = report["requests"]
    assert all(r["tokenHeader"] and not r["cookie"] and not r["xsrfHeader"] for r in requests)
    assert {"POST", "PATCH", "DELETE"} <= {r["method"] for r in requests}
    failed = [r for r in requests
              if r.get("error") or (r["status"] is not None and not 200 <= r["status"] < 300)]
    assert not failed, failed
    sockets = report["websockets"]
    assert len(sockets) >= 3 and all(s["tokenInQuery"] for s in sockets)
    # jupyter_server 2 accepts the binary protocol the library offers first; the mixer
    # hands the backends' choice back, local and remote alike.
    assert {s["protocol"] for s in sockets} == {KERNEL_PROTOCOL}, sockets

    assert report["sessionId"] not in {s["id"] for s in await remote.sessions()}
    # and on the backends themselves: no kernel the run started is left running there
    # (neither the session's nor any other, listed in a session or not)
    for backend in (local, remote):
        left = await backend.kernel_ids() - before[backend.name]
        assert not left, f"{backend.name} still runs {left} (the session's: {report['kernelIds']})"

    log = editor_mixer.log_text()
    assert "-> 201" in log and "/channels" in log  # the --log-all-* flags worked
    for secret in (editor_mixer.token, remote_token):
        assert secret not in log


async def test_the_remote_refuses_a_foreign_query_token(
    token_remote: JupyterServer, http: aiohttp.ClientSession, tokens: Tokens,
) -> None:
    """Why the test above catches a forwarded token: jupyter_server takes ``?token=``
    before the ``Authorization`` header, so the right credentials plus the client's
    token in the query are refused."""
    remote = ApiClient(http, token_remote.url, auth=token_remote.auth, name="editor-remote")
    kernel = await remote.start_kernel("python3")
    try:
        url = remote.ws_url(f"/api/kernels/{kernel['id']}/channels?token={tokens.jupyter}")
        with pytest.raises(aiohttp.WSServerHandshakeError) as info:
            await http.ws_connect(url, headers=token_remote.auth())
        assert info.value.status == 403
        async with http.ws_connect(remote.ws_url(f"/api/kernels/{kernel['id']}/channels"),
                                   headers=token_remote.auth()):
            pass  # and without the foreign token it connects
    finally:
        await remote.delete_kernel(kernel["id"])
