"""The mixer's own connection to one kernel, for a carry: a websocket to the backend's
``/api/kernels/{id}/channels`` with the backend's credentials, a reader that routes
what comes back (replies to our requests by their parent id, comm messages of our
comms by comm id; everything else, e.g. other clients' outputs, is dropped), and
sends bounded in time.

Every wait has a deadline (``time.monotonic()``); past it, ``asyncio.TimeoutError``.
A connection that closes, a kernel that is shut down (its iopub ``shutdown_reply``;
jupyter_server keeps the websocket open), restarts or dies (jupyter_server's iopub
``status: restarting/dead``), or a frame that is not a Jupyter message ends the link:
every waiter, present and future, gets ``LinkLost`` saying which.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections import deque
from collections.abc import Awaitable, Sequence
from typing import Any, TypeVar
from urllib.parse import quote

import aiohttp

from notebook_kernels_mixer.backends import Backend
from notebook_kernels_mixer.carry import wire
from notebook_kernels_mixer.errors import MixerError

#: Largest message read from a kernel: a chunk plus its header, or other clients'
#: outputs that pass by on iopub (larger ones end the link rather than the memory).
T = TypeVar("T")

MAX_MESSAGE = 32 * 1024 * 1024
#: How long a closing handshake may take before the connection is just dropped.
CLOSE_TIMEOUT = 1.0


class LinkLost(Exception):
    """The kernel's websocket is no longer usable; the message says why."""


def remaining(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise asyncio.TimeoutError
    return left


async def within(aw: Awaitable[T], deadline: float) -> T:
    """``await aw`` until ``deadline``; past it, ``aw`` is cancelled and
    ``asyncio.TimeoutError`` raised. Unlike ``asyncio.wait_for`` before Python 3.12, a
    cancellation of the caller is never lost when ``aw`` completes at the same moment
    (a carry that is cancelled must end, not run on to its budget)."""
    task = asyncio.ensure_future(aw)
    try:
        done, _ = await asyncio.wait({task}, timeout=remaining(deadline))
    except (asyncio.CancelledError, asyncio.TimeoutError):
        task.cancel()
        raise
    if not done:
        task.cancel()
        await asyncio.wait({task})
        raise asyncio.TimeoutError
    return task.result()


class _Inbox:
    """The messages of one comm, in order; at most ``limit`` waiting to be read."""

    def __init__(self, limit: int) -> None:
        self.items: deque[wire.Message] = deque()
        self.waiter: asyncio.Future[wire.Message] | None = None
        self.limit = limit


class KernelLink:
    def __init__(self, backend: Backend, kernel_id: str, ws: aiohttp.ClientWebSocketResponse,
                 session: str) -> None:
        self.backend = backend
        self.kernel_id = kernel_id
        self.ws = ws
        self.session = session
        self.failure: LinkLost | None = None
        self._replies: dict[str, asyncio.Future[wire.Message]] = {}
        self._comms: dict[str, _Inbox] = {}
        sock = ws.get_extra_info("socket")
        self._sock = sock if sock is not None and hasattr(socket, "TCP_QUICKACK") else None
        self._quickack()
        self._reader = asyncio.get_running_loop().create_task(self._read())

    @classmethod
    async def open(cls, backend: Backend, kernel_id: str, deadline: float) -> KernelLink:
        """Connect to ``kernel_id`` on ``backend`` (``LinkLost`` if refused, or if it
        cannot be reached; ``asyncio.TimeoutError`` past ``deadline``)."""
        session = wire.new_id()
        try:
            headers = await backend.auth_headers(remaining(deadline))
        except MixerError as exc:
            raise LinkLost(f"no credentials: {exc.message}") from None
        url = backend.url_for(f"/api/kernels/{quote(kernel_id, safe='')}/channels",
                              f"session_id={session}")
        connect = asyncio.ensure_future(backend.http.ws_connect(
            url, headers=headers, max_msg_size=MAX_MESSAGE, autoping=True,
            timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=CLOSE_TIMEOUT),
        ))
        try:
            ws = await within(connect, deadline)
        except asyncio.CancelledError:
            # connected at the moment the carry was cancelled: not left open
            if connect.done() and not connect.cancelled() and connect.exception() is None:
                await within(connect.result().close(), time.monotonic() + CLOSE_TIMEOUT)
            raise
        except aiohttp.WSServerHandshakeError as exc:
            raise LinkLost(f"refused the kernel's websocket: HTTP {exc.status}") from None
        except (aiohttp.ClientError, OSError) as exc:
            raise LinkLost(f"cannot open the kernel's websocket: {type(exc).__name__}: {exc}") from None
        return cls(backend, kernel_id, ws, session)

    # -- receiving -----------------------------------------------------------------------
    def _quickack(self) -> None:
        """ACK what came in at once. A stock jupyter_server leaves Nagle's algorithm on
        (see ``notebook_kernels_mixer.jupyter``): a message it writes right after another
        (the answer after the kernel's ``status: busy``) waits for our ACK of the first,
        which Linux delays by up to 40 ms unless asked not to — and re-arms the delay on
        its own, hence after every message."""
        if self._sock is not None:
            try:
                self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
            except OSError:
                self._sock = None

    async def _read(self) -> None:
        try:
            async for frame in self.ws:
                self._quickack()
                if frame.type not in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
                    self._fail(f"the websocket failed: {frame.data!r}"[:300])
                    return
                try:
                    msg = wire.decode(frame.data)
                except wire.WireError as exc:
                    self._fail(f"answered something that is not a Jupyter message ({exc})")
                    return
                self._route(msg)
            self._fail("closed the kernel's websocket")
        except Exception as exc:  # the reader must never die silently
            self._fail(f"the websocket failed: {type(exc).__name__}: {exc}")

    def _route(self, msg: wire.Message) -> None:
        if msg.channel in ("shell", "control"):
            future = self._replies.pop(msg.parent_id or "", None)
            if future is not None and not future.done():
                future.set_result(msg)
        elif msg.channel == "iopub":
            if msg.msg_type in ("comm_msg", "comm_close"):
                inbox = self._comms.get(str(msg.content.get("comm_id")))
                if inbox is not None:
                    self._deliver(inbox, msg)
            elif msg.msg_type == "shutdown_reply":  # ipykernel says it on iopub too
                self._fail("the kernel was shut down")
            elif msg.msg_type == "status":
                state = msg.content.get("execution_state")
                if state == "restarting":
                    self._fail("the kernel restarted")
                elif state == "dead":
                    self._fail("the kernel died")

    def _deliver(self, inbox: _Inbox, msg: wire.Message) -> None:
        if inbox.waiter is not None and not inbox.waiter.done():
            inbox.waiter.set_result(msg)
            return
        if len(inbox.items) >= inbox.limit:
            self._fail("sent more comm messages than it was asked for")
            return
        inbox.items.append(msg)

    def _fail(self, why: str) -> None:
        if self.failure is not None:
            return
        self.failure = LinkLost(why)
        for future in self._replies.values():
            if not future.done():
                future.set_exception(self.failure)
        self._replies.clear()
        for inbox in self._comms.values():
            if inbox.waiter is not None and not inbox.waiter.done():
                inbox.waiter.set_exception(self.failure)

    # -- sending -------------------------------------------------------------------------
    async def send(self, channel: str, msg_type: str, content: dict[str, Any], deadline: float, *,
                   buffers: Sequence[bytes | memoryview] = (), msg_id: str | None = None) -> None:
        if self.failure is not None:
            raise self.failure
        frame = wire.encode(channel, msg_type, content, session=self.session, buffers=buffers,
                            msg_id=msg_id)
        try:
            if isinstance(frame, str):
                await within(self.ws.send_str(frame), deadline)
            else:
                await within(self.ws.send_bytes(frame), deadline)
        except (aiohttp.ClientError, ConnectionError, OSError) as exc:
            self._fail(f"the websocket broke: {type(exc).__name__}: {exc}")
            raise self.failure from None  # type: ignore[misc]

    async def request(self, channels: Sequence[str], msg_type: str, content: dict[str, Any],
                      deadline: float) -> wire.Message:
        """Send a request on each of ``channels``; the first reply (by parent id)."""
        loop = asyncio.get_running_loop()
        futures: dict[str, asyncio.Future[wire.Message]] = {}
        try:
            for channel in channels:
                msg_id = wire.new_id()
                futures[msg_id] = self._replies[msg_id] = loop.create_future()
                await self.send(channel, msg_type, content, deadline, msg_id=msg_id)
            done, _ = await asyncio.wait(futures.values(), timeout=remaining(deadline),
                                         return_when=asyncio.FIRST_COMPLETED)
            if not done:
                raise asyncio.TimeoutError
            return done.pop().result()
        finally:
            for msg_id, future in futures.items():
                self._replies.pop(msg_id, None)
                if future.done() and not future.cancelled():
                    future.exception()  # retrieved: no "never retrieved" warning
                future.cancel()

    # -- comms ---------------------------------------------------------------------------
    def watch_comm(self, comm_id: str, limit: int) -> None:
        """Keep the iopub messages of ``comm_id`` (at most ``limit`` unread)."""
        self._comms[comm_id] = _Inbox(limit)

    def comm_pending(self, comm_id: str) -> bool:
        """Whether a message of ``comm_id`` is there to be read without waiting."""
        return bool(self._comms[comm_id].items)

    async def comm_recv(self, comm_id: str, deadline: float) -> wire.Message:
        """The next ``comm_msg``/``comm_close`` of a watched comm."""
        inbox = self._comms[comm_id]
        if inbox.items:
            return inbox.items.popleft()
        if self.failure is not None:
            raise self.failure
        inbox.waiter = asyncio.get_running_loop().create_future()
        try:
            return await within(inbox.waiter, deadline)
        finally:
            inbox.waiter = None

    # -- closing -------------------------------------------------------------------------
    async def close(self, *, goodbye: Sequence[tuple[str, str, dict[str, Any]]] = ()) -> None:
        """Send ``goodbye`` messages if the link still works (no waiting on a stalled
        peer), then close: a closing handshake of at most ``CLOSE_TIMEOUT``, else
        the connection is dropped."""
        if self.failure is None:
            deadline = time.monotonic() + CLOSE_TIMEOUT / 2
            for channel, msg_type, content in goodbye:
                with contextlib.suppress(Exception):
                    await self.send(channel, msg_type, content, deadline)
        self._reader.cancel()
        await asyncio.wait([self._reader])
        with contextlib.suppress(Exception):
            await within(self.ws.close(), time.monotonic() + CLOSE_TIMEOUT)
