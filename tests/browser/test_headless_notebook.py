"""Issue 6, headless: a notebook executed by nbclient through jupyter_server's
``GatewayKernelManager`` pointed at the mixer, as papermill-like tools do.

Two things of jupyter_server 2.21's gateway client shape this test (both upstream):

* ``GatewayKernelManager.start_kernel`` takes the kernelspec from its ``kernel_name``
  *argument* (default ``python3``), not from its ``kernel_name`` trait, and nbclient
  passes none: the spec is given as ``NotebookClient.execute(kernel_name=…)``, which
  nbclient forwards to ``start_kernel``.
* ``GatewayKernelClient.start_channels`` opens the kernel websocket with
  ``websocket.create_connection(url)`` and no headers, so ``GatewayClient.headers``
  (the mixer's token) never reach it and the mixer rightly answers 403. The client
  below is the stock one plus those headers on the websocket handshake.
"""

from __future__ import annotations

import json
import uuid
from threading import Thread

import pytest

from .conftest import ARTIFACTS, XSRF, Topology, poll

pytestmark = pytest.mark.browser


def _authenticated_client_class():
    import websocket
    from jupyter_client.asynchronous.client import AsyncKernelClient
    from jupyter_core.utils import ensure_async
    from jupyter_server.gateway.gateway_client import GatewayClient
    from jupyter_server.gateway.managers import GatewayKernelClient
    from jupyter_server.utils import url_path_join
    from tornado.escape import url_escape

    class AuthenticatedGatewayKernelClient(GatewayKernelClient):
        """GatewayKernelClient whose websocket handshake carries ``GatewayClient.headers``."""

        async def start_channels(self, shell=True, iopub=True, stdin=True, hb=True, control=True):
            gateway = GatewayClient.instance()
            ws_url = url_path_join(
                gateway.ws_url or "", gateway.kernels_endpoint, url_escape(self.kernel_id), "channels"
            )
            headers = gateway.load_connection_args().get("headers", {})
            self.channel_socket = websocket.create_connection(
                ws_url,
                timeout=gateway.KERNEL_LAUNCH_TIMEOUT,
                enable_multithread=True,
                header=headers,
            )
            await ensure_async(
                AsyncKernelClient.start_channels(
                    self, shell=shell, iopub=iopub, stdin=stdin, hb=hb, control=control
                )
            )
            self.response_router = Thread(target=self._route_responses, daemon=True)
            self.response_router.start()

    return AuthenticatedGatewayKernelClient


@pytest.fixture
def gateway_client(lab_topology: Topology):
    """jupyter_server's GatewayClient singleton, configured as SPEC §1 configures the front."""
    from jupyter_server.gateway.gateway_client import GatewayClient

    GatewayClient.clear_instance()
    headers = {"token": lab_topology.jupyter_token, "Cookie": f"_xsrf={XSRF}", "X-XSRFToken": XSRF}
    client = GatewayClient.instance(
        url=lab_topology.mixer.url + "/",
        headers=json.dumps(headers),
        request_timeout=60,
        connect_timeout=30,
    )
    assert client.gateway_enabled
    yield client
    GatewayClient.clear_instance()


@pytest.mark.parametrize(("spec", "where"), [("remote-python3", "remote"), ("local-python3", "local")])
def test_nbclient_runs_notebook_through_gateway_kernel_manager(
    lab_topology: Topology, gateway_client, spec: str, where: str
) -> None:
    import nbformat
    from jupyter_core.utils import run_sync
    from jupyter_server.gateway.managers import GatewayKernelManager
    from nbclient import NotebookClient

    topo = lab_topology
    backend = {"remote": topo.remote, "local": topo.local}[where]
    marker = uuid.uuid4().hex
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": spec, "display_name": spec, "language": "python"}
    nb.cells = [
        nbformat.v4.new_code_cell('import os\nprint(os.environ["MIXER_TEST_WHERE"])'),
        nbformat.v4.new_code_cell(f'state = "{marker}"'),
        nbformat.v4.new_code_cell("print(state, os.getpid())"),
    ]

    km = GatewayKernelManager(client_factory=_authenticated_client_class())
    seen_on_backend: list[dict | None] = []

    def on_cell_executed(cell, cell_index, execute_reply):
        # while the notebook runs, its kernel is one of the backend's own kernels
        seen_on_backend.append(topo.backend_kernel(backend, km.kernel_id))

    client = NotebookClient(nb, km=km, timeout=60, startup_timeout=60, on_cell_executed=on_cell_executed)
    client.execute(kernel_name=spec)

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, str(ARTIFACTS / f"headless-{spec}.ipynb"))

    def stdout(cell) -> str:
        return "".join(o.get("text", "") for o in cell.outputs if o.get("name") == "stdout")

    errors = [o for c in nb.cells for o in c.outputs if o.get("output_type") == "error"]
    assert not errors, errors
    assert stdout(nb.cells[0]).strip() == where
    got_marker, _pid = stdout(nb.cells[2]).split()
    assert got_marker == marker  # one kernel ran every cell
    assert [c.execution_count for c in nb.cells] == [1, 2, 3]
    assert km.kernel is not None and km.kernel["name"] == spec, km.kernel
    assert len(seen_on_backend) == 3 and all(seen_on_backend), seen_on_backend
    assert {k["id"] for k in seen_on_backend} == {km.kernel_id}
    # a NotebookClient given a km leaves the kernel running: shutting it down through the
    # mixer removes it from the backend
    run_sync(km.shutdown_kernel)(now=True)
    kernel_id = km.kernel_id
    poll(lambda: topo.backend_kernel(backend, kernel_id) is None, timeout=30, what="kernel shut down")
