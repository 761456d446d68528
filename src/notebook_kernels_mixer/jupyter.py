"""A jupyter_server extension for the servers around the mixer (and any other Jupyter server).

Enable it on a server's command line (``mixer lab`` does, on every server it starts)::

    jupyter lab --ServerApp.jpserver_extensions=notebook_kernels_mixer.jupyter=True

or once for every server of an environment::

    jupyter server extension enable notebook_kernels_mixer.jupyter

It does two things.

**TCP_NODELAY on kernel websockets.** A stock jupyter_server leaves Nagle's algorithm on
for the kernel websocket: the second of two small messages (``status: busy``, then the
output or the reply) waits for the client's delayed ACK, ~40 ms on Linux, so a cell
takes ~48 ms instead of ~10 ms (issue 12). tornado switches TCP_NODELAY on while it
finishes each HTTP response and back off afterwards (``HTTP1Connection.finish`` /
``_finish_request``), so plain HTTP answers already leave at once, but the 101 answer of
a websocket handshake leaves its socket with Nagle on again. The option must therefore
be set after the handshake, which tornado documents as ``WebSocketHandler.set_nodelay``
called from ``open()``. jupyter_server calls the kernel websocket *connection class*'s
``connect()`` from that ``open()``, and the class is a setting
(``ServerApp.kernel_websocket_connection_class``, read from ``web_app.settings`` on
every request). So the extension replaces the configured class by a subclass whose
``connect()`` sets no-delay first: nothing is patched, and a server configured with its
own connection class keeps it. Other websockets (terminals, events) are out of its
reach without patching their handlers; they carry no request/reply traffic.

**A gateway-mode kernel websocket that speaks the browser's protocol.** JupyterLab
offers the ``v1.kernel.websocket.jupyter.org`` subprotocol; jupyter_server in gateway
mode forces the legacy protocol (``GatewayWebSocketConnection.kernel_ws_protocol = ""``,
jupyter_server PR #1311), so Chromium fails the first handshake of every kernel
connection ("Sent non-empty 'Sec-WebSocket-Protocol' header but no response was
received") and JupyterLab reconnects without subprotocols. In gateway mode the
extension installs :class:`GatewayPassthroughConnection` instead: it opens the gateway
websocket *before* answering the browser (jupyter_server awaits ``prepare()`` of the
connection ahead of the handshake), offering the browser's subprotocols, then chooses
with the browser what the gateway chose, and relays frames unchanged (text stays text,
binary stays binary; the stock class decodes binary frames as UTF-8). A gateway without
v1 simply gets the legacy protocol end to end. When the gateway side closes (a mixer
restart), it reconnects with GatewayClient's retry settings as the stock class does,
so the browser's socket stays open (its frames wait meanwhile, where the stock class
drops them and a cell run then never finishes); if that fails, the browser's socket is closed with
1011 and JupyterLab's own reconnection takes over. It also fetches the gateway's
kernelspecs once at start-up, so the front's first ``/api/kernelspecs`` answer names
the gateway's default kernel: jupyter_server reads ``default_kernel_name`` before the
listing that updates it, and JupyterLab warns "Default kernel not found" otherwise.

**Kernel changes that keep the notebook's variables** (``--carry-variables``). A
gateway-mode front keeps its sessions itself and changes a session's kernel as
"start the new kernel, update the session, shut down the old one" (the sessions
handler's ``patch``). :class:`CarryingSessionManager` — a session manager class, so
it is configuration, not an extension hook: ``mixer lab`` starts its front with
``--ServerApp.session_manager_class=notebook_kernels_mixer.jupyter.CarryingSessionManager``
— asks the mixer to carry the state (``POST /mixer/api/carry``) in the middle step,
while both kernels run. A mixer without ``--carry-variables`` answers at once that it
carries nothing; whatever goes wrong, the change goes on as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from typing import Any

from jupyter_server.gateway.connections import GatewayWebSocketConnection
from jupyter_server.gateway.gateway_client import GatewayClient
from jupyter_server.gateway.managers import GatewaySessionManager
from jupyter_server.services.kernels.connection.base import BaseKernelWebsocketConnection
from jupyter_server.utils import url_path_join
from tornado import web
from tornado.escape import url_escape
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest
from tornado.iostream import StreamClosedError
from tornado.websocket import WebSocketClientConnection, WebSocketClosedError, websocket_connect
from traitlets import Float, default

#: Seconds the gateway websocket opened for a browser waits for the browser's handshake to
#: complete; a handshake tornado refuses after ``prepare()`` (bad headers, origin) never
#: calls ``connect()``, and the gateway side must not stay open for nothing.
HANDSHAKE_GRACE = 10.0
#: Browser frames kept while the front reconnects to the gateway; more are dropped.
MAX_PENDING = 1000
#: Close code sent to the browser when the gateway side of a kernel websocket ends:
#: "internal error" makes JupyterLab reconnect (1000/1001 would leave it disconnected).
UPSTREAM_CLOSED = 1011
#: The mixer's endpoint that carries a kernel's state into another kernel.
CARRY_ENDPOINT = "/mixer/api/carry"
#: Seconds the front waits for a carry beyond the mixer's budget: the mixer answers
#: within its budget (plus a little to hand the report over and close its sockets).
CARRY_MARGIN = 30.0


def _jupyter_server_extension_points() -> list[dict[str, str]]:
    return [{"module": "notebook_kernels_mixer.jupyter"}]


def _load_jupyter_server_extension(serverapp: Any) -> None:
    """Swap the kernel websocket connection class in the web app's settings."""
    settings = serverapp.web_app.settings
    configured = settings.get("kernel_websocket_connection_class")
    if configured is None:
        return
    gateway = bool(serverapp.gateway_config.gateway_enabled)
    chosen = connection_class(configured, gateway=gateway)
    settings["kernel_websocket_connection_class"] = chosen
    serverapp.log.info("notebook_kernels_mixer.jupyter: kernel websockets use %s", chosen.__name__)
    if gateway:
        serverapp.io_loop.add_callback(_learn_gateway_default, serverapp)


def connection_class(configured: type, *, gateway: bool) -> type:
    """The class to use instead of ``configured``: the gateway passthrough for the stock
    gateway class, else ``configured`` with no-delay added."""
    if gateway and configured is GatewayWebSocketConnection:
        return GatewayPassthroughConnection
    if issubclass(configured, NoDelayConnection):
        return configured
    return type(f"NoDelay{configured.__name__}", (NoDelayConnection, configured), {})


async def _learn_gateway_default(serverapp: Any) -> None:
    """One kernelspec listing at start-up: GatewayKernelSpecManager adopts the gateway's
    default kernel name while listing; failures are left to the first real listing."""
    try:
        await serverapp.kernel_spec_manager.get_all_specs()
    except Exception as exc:  # the gateway may not be up yet; nothing is lost
        serverapp.log.info("notebook_kernels_mixer.jupyter: gateway kernelspecs not read yet: %s", exc)


class NoDelayConnection:
    """Mixin for a kernel websocket connection class: TCP_NODELAY once the socket is open."""

    websocket_handler: Any

    def set_nodelay(self) -> None:
        with contextlib.suppress(AttributeError, OSError, WebSocketClosedError):
            self.websocket_handler.set_nodelay(True)

    async def connect(self) -> Any:
        self.set_nodelay()
        return await super().connect()  # type: ignore[misc]


def _offered_protocols(handler: Any) -> list[str]:
    header = handler.request.headers.get("Sec-WebSocket-Protocol", "")
    return [p.strip() for p in header.split(",") if p.strip()]


class GatewayPassthroughConnection(NoDelayConnection, BaseKernelWebsocketConnection):
    """A front's kernel websocket relayed to the gateway with the protocol the gateway
    chose for the browser's offer, frames unchanged."""

    upstream: WebSocketClientConnection | None = None
    _offered: tuple[str, ...] = ()
    _pending: list[str | bytes] | None = None  # browser frames kept while reconnecting
    _pump: asyncio.Task[None] | None = None
    _watchdog: asyncio.TimerHandle | None = None
    _closed: bool = False

    async def prepare(self) -> None:
        """Before the browser's handshake: connect to the gateway, learn its protocol."""
        self._offered = tuple(_offered_protocols(self.websocket_handler))
        self.upstream = await self._connect_upstream()
        # read by KernelWebsocketHandler.select_subprotocol: "" means the legacy protocol
        self.kernel_ws_protocol = self.upstream.selected_subprotocol or ""
        self._watchdog = asyncio.get_running_loop().call_later(HANDSHAKE_GRACE, self._drop_unopened)

    def _drop_unopened(self) -> None:
        if self._pump is None and not self._closed:
            self.log.info("Kernel %s: the browser's handshake did not complete", self.kernel_id)
            self.disconnect()

    async def _connect_upstream(self) -> WebSocketClientConnection:
        client = GatewayClient.instance()
        url = url_path_join(
            client.ws_url or "", client.kernels_endpoint, url_escape(self.kernel_id), "channels"
        )
        if self.session_id:
            url += f"?session_id={url_escape(self.session_id)}"
        request = HTTPRequest(url, **client.load_connection_args())  # type: ignore[no-untyped-call]
        try:
            upstream = await websocket_connect(request, subprotocols=list(self._offered) or None)
        except HTTPClientError as exc:  # the gateway refused the upgrade: say what it said
            status = exc.code if exc.code < 599 else 503
            raise web.HTTPError(status, "gateway kernel websocket: %s", exc) from None
        except (OSError, StreamClosedError) as exc:
            raise web.HTTPError(503, "gateway kernel websocket: %s", exc) from None
        if upstream.protocol is not None:
            with contextlib.suppress(AttributeError, OSError):
                upstream.protocol.set_nodelay(True)  # the front → gateway leg too
        return upstream

    async def connect(self) -> None:
        """Called by the handler's ``open()``, after the handshake: relay the gateway's frames."""
        self.set_nodelay()
        if self._watchdog is not None:
            self._watchdog.cancel()
        if self.upstream is not None and not self._closed:
            self._pump = asyncio.ensure_future(self._relay_upstream())

    async def _relay_upstream(self) -> None:
        """Gateway → browser, reconnecting to the gateway when it goes (as the stock
        class does): the browser's socket stays open across a mixer restart."""
        while not self._closed and self.upstream is not None:
            message = await self.upstream.read_message()
            if message is None:
                if self._closed or not await self._reconnect():
                    break
                continue
            try:
                self.websocket_handler.write_message(message, binary=isinstance(message, bytes))
            except WebSocketClosedError:
                break
        if not self._closed:
            self._closed = True
            self.websocket_handler.close(UPSTREAM_CLOSED, "gateway connection closed")

    async def _reconnect(self) -> bool:
        """GatewayClient's retry policy (``gateway_retry_max`` attempts, doubling from
        ``gateway_retry_interval``); the new socket must speak the browser's protocol.
        The browser's frames meanwhile wait (bounded) and go out once reconnected."""
        client = GatewayClient.instance()
        code = self.upstream.close_code if self.upstream is not None else None
        self.log.info("Gateway closed the websocket of kernel %s (code %s)", self.kernel_id, code)
        if self._pending is None:
            self._pending = []
        for attempt in range(client.gateway_retry_max):
            await asyncio.sleep(
                min(client.gateway_retry_interval * 2**attempt, client.gateway_retry_interval_max)
            )
            if self._closed:
                break
            try:
                upstream = await self._connect_upstream()
            except web.HTTPError as exc:
                self.log.info("Kernel %s: reconnecting to the gateway: %s", self.kernel_id, exc)
                if exc.status_code == 404:  # the kernel is gone: nothing to wait for
                    break
                continue
            if (upstream.selected_subprotocol or "") != self.kernel_ws_protocol:
                upstream.close()
                break
            self.upstream, pending, self._pending = upstream, self._pending, None
            for message in pending:
                self._send(message)
            return True
        self._pending = None
        return False

    def _send(self, message: str | bytes) -> bool:
        if self.upstream is None:
            return False
        try:
            self.upstream.write_message(message, binary=isinstance(message, bytes))
        except WebSocketClosedError:
            return False
        return True

    def handle_incoming_message(self, incoming_msg: str | bytes) -> None:
        """A frame from the browser, to the gateway as it came (or kept for the
        reconnected gateway socket while the front reconnects)."""
        if self._closed:
            return
        if self._pending is None and self._send(incoming_msg):
            return
        if self._pending is None:
            self._pending = []  # the gateway socket just went; _relay_upstream will notice
        if len(self._pending) < MAX_PENDING:
            self._pending.append(incoming_msg)
        else:
            self.log.warning("Kernel %s: message dropped while reconnecting to the gateway", self.kernel_id)

    def handle_outgoing_message(self, stream: str, outgoing_msg: list[Any]) -> None:
        """Unused: frames from the gateway are relayed by ``_relay_upstream``."""

    def disconnect(self) -> None:  # type: ignore[override]
        """The browser went away (the handler's ``on_close`` calls this synchronously)."""
        self._closed = True
        if self.upstream is not None:
            self.upstream.close()


class CarryingSessionManager(GatewaySessionManager):
    """A gateway-mode session manager whose kernel changes carry the notebook's state.

    The sessions handler changes a session's kernel by name as
    ``start_kernel_for_session`` → ``update_session(kernel_id=new)`` →
    ``shutdown_kernel(old)``. When ``update_session`` moves a session to the kernel
    just started for it, it first asks the gateway — the mixer — to carry the old
    kernel's user namespace into the new one (``POST /mixer/api/carry``, with
    GatewayClient's own connection settings and headers), so the old kernel is shut
    down only once the carry has finished or given up. A session moved to a kernel
    that already ran (``{"kernel": {"id": ...}}``) keeps that kernel's own state.

    The mixer decides whether anything is carried (``--carry-variables``) and bounds
    the carry by its budget. Whatever happens here — an error answer, no answer within
    :attr:`carry_timeout`, a gateway that is not a mixer — is logged and the change goes
    on as without this class.
    """

    carry_timeout = Float(
        config=True,
        help="Seconds to wait for the gateway's answer to a carry (POST /mixer/api/carry), "
        "instead of GatewayClient.request_timeout: the mixer's --carry-budget and a margin. "
        "Default: the mixer's default budget (30 s) + 30 s.",
    )

    @default("carry_timeout")
    def _default_carry_timeout(self) -> float:
        from notebook_kernels_mixer.config import CARRY_BUDGET

        return CARRY_BUDGET + CARRY_MARGIN

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[no-untyped-call]
        #: session id → the kernel last started for it and not yet in its row
        self._started_for: dict[str, str] = {}

    async def start_kernel_for_session(self, session_id: str, *args: Any, **kwargs: Any) -> str:
        kernel_id: str = await super().start_kernel_for_session(session_id, *args, **kwargs)
        self._started_for[session_id] = kernel_id
        return kernel_id

    async def save_session(self, session_id: str, *args: Any, **kwargs: Any) -> Any:
        self._started_for.pop(session_id, None)  # a new session: nothing to carry
        return await super().save_session(session_id, *args, **kwargs)  # type: ignore[no-untyped-call]

    async def delete_session(self, session_id: str) -> None:
        self._started_for.pop(session_id, None)
        await super().delete_session(session_id)  # type: ignore[no-untyped-call]

    async def update_session(self, session_id: str, **kwargs: Any) -> None:
        new = kwargs.get("kernel_id")
        started = self._started_for.pop(session_id, None)
        old = self._kernel_of(session_id)
        carried = new is not None and new == started and old is not None and old != new
        if carried:
            await self.carry_state(str(old), str(new))
        try:
            await super().update_session(session_id, **kwargs)  # type: ignore[no-untyped-call]
        except web.HTTPError as exc:
            if carried and exc.status_code == 404:
                # the session went while its state was carried: its new kernel has no owner
                self.log.info(
                    "Session %s went during a kernel change; shutting down kernel %s", session_id, new
                )
                with contextlib.suppress(Exception):
                    await self.kernel_manager.shutdown_kernel(new)
            raise

    def get_kernel_env(self, path: str | None, name: Any = None) -> dict[str, str]:
        """Only what the session adds to the front's environment (``JPY_SESSION_NAME``).

        In gateway mode the environment is no kernel's: ``GatewayKernelManager`` sends
        the gateway only ``KERNEL_*`` and ``GatewayClient.allowed_envs`` variables of
        the front's ``os.environ`` and of this, the same either way. But it logs all
        it is given ("started kernel: …, args: …"), and the front's whole environment
        holds its token and the gateway headers (``JUPYTER_TOKEN``,
        ``JUPYTER_GATEWAY_HEADERS``)."""
        env: dict[str, str] = super().get_kernel_env(path, name)
        return {k: v for k, v in env.items() if os.environ.get(k) != v}

    def _kernel_of(self, session_id: str) -> str | None:
        """The kernel in the session's row now (None: no such session)."""
        self.cursor.execute("SELECT kernel_id FROM session WHERE session_id=?", [session_id])
        row = self.cursor.fetchone()
        return None if row is None or row[0] is None else str(row[0])

    async def carry_state(self, source_kernel: str, target_kernel: str) -> dict[str, Any] | None:
        """Ask the gateway to carry ``source_kernel``'s state into ``target_kernel``;
        its answer, or None when there was none to read. Never raises (but for
        cancellation): the kernel change goes on whatever happens."""
        client = GatewayClient.instance()
        url = url_path_join(client.url or "", CARRY_ENDPOINT)
        body = json.dumps({"source_kernel": source_kernel, "target_kernel": target_kernel})
        try:
            kwargs = client.load_connection_args(  # type: ignore[no-untyped-call]
                method="POST", body=body, headers={"Content-Type": "application/json"}
            )
            # its own timeout: GatewayClient.request_timeout (42 s) is for quick calls
            kwargs["request_timeout"] = self.carry_timeout
            response = await AsyncHTTPClient().fetch(url, raise_error=False, **kwargs)
        except Exception as exc:  # a timeout, a refused connection: the change goes on
            self.log.warning(
                "Kernel %s -> %s: no carry (%s: %s)", source_kernel, target_kernel, type(exc).__name__, exc
            )
            return None
        answer = _json_object(response.body)
        if response.code != 200 or answer is None:
            message = (answer or {}).get("message") or (
                "no JSON object" if answer is None else response.reason
            )
            self.log.warning(
                "Kernel %s -> %s: no carry (the gateway answered %s: %s)",
                source_kernel,
                target_kernel,
                response.code,
                message,
            )
            return answer
        self.log.info("Kernel %s -> %s: %s", source_kernel, target_kernel, describe_carry(answer))
        return answer


def _json_object(body: bytes | None) -> dict[str, Any] | None:
    try:
        value = json.loads(body or b"")
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def describe_carry(answer: dict[str, Any]) -> str:
    """One line about the mixer's answer to a carry: counts, size, time, outcome —
    never a value."""
    if not answer.get("enabled"):
        return "variables not carried (the mixer runs without --carry-variables)"
    if not answer.get("carried"):
        return f"variables not carried ({answer.get('reason') or 'no reason given'})"
    report = answer.get("report")
    if not isinstance(report, dict):
        return "variables carried (no report)"
    carried, skipped = report.get("carried") or [], report.get("skipped") or {}
    line = (
        f"variables carried: {report.get('outcome')}, {len(carried)} carried, "
        f"{len(skipped)} skipped, {report.get('bytes')} bytes in {report.get('seconds')} s"
    )
    return line + (f"; {report['reason']}" if report.get("reason") else "")
