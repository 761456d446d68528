"""The Jupyter calls of the soak's workers, all through the mixer, with every execute checked.

An execute runs ``print(<unique number>)``: its reply (``execute_reply``, status ``ok``)
and its output must come back on the connection that sent the request, carrying that
request's number. A request without a reply is *lost*; a reply or output that belongs
to another connection's request, or carries another number, is *misrouted*.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import random
import time
from pathlib import Path
from typing import Any

import aiohttp

from tests.e2e.support.api import ApiClient
from tests.e2e.support.kernel_client import KernelConnection
from tests.e2e.support.stack import Stack

from .ledger import EXECUTE_TIMEOUT, HTTP_TIMEOUT, SPECS, HttpError, Ledger, Lost, Misrouted, Tally

# execute msg_ids remembered to spot misrouted messages; halved when full (long runs)
_MAX_REMEMBERED = 200_000


class MixerClient:
    """REST calls and kernel websockets through the mixer, counted in the ledger."""

    def __init__(self, stack: Stack, http: aiohttp.ClientSession, ledger: Ledger) -> None:
        self.stack, self.http, self.ledger = stack, http, ledger
        tokens = stack.tokens
        self.api = ApiClient(
            http, stack.mixer.url, auth=lambda: {"token": tokens.jupyter}, xsrf=tokens.xsrf, name="mixer"
        )
        self.numbers = itertools.count(random.SystemRandom().randrange(10**9, 2 * 10**9) * 1000)
        self.owner_of_msg: dict[str, int] = {}  # execute msg_id -> connection serial
        self.connections = itertools.count(1)

    # -- REST ----------------------------------------------------------------------------------

    async def call(self, method: str, path: str, body: Any = None, expect: tuple[int, ...] = (200,)) -> Any:
        resp = await self.api.request(method, path, json_body=body, timeout=HTTP_TIMEOUT)
        if resp.status not in expect:
            raise HttpError(resp.status, resp.headers.get("X-Mixer-Backend"), resp.describe()[:400])
        return resp.json() if resp.body else None

    async def start_kernel(self, backend: str) -> str:
        model = await self.call("POST", "/api/kernels", {"name": SPECS[backend]}, expect=(201,))
        self.ledger.tally[backend].kernels_started += 1
        self.note_ports(backend, model["id"])
        return model["id"]

    def note_ports(self, backend: str, kernel_id: str) -> None:
        """The kernel's ports, from its connection file in the backend's runtime directory
        (written before the kernel is launched; read at once, before any restart of
        the kernel picks new ones): what the backend's log names when a port was taken."""
        server = self.stack.local if backend == "local" else self.stack.remote
        path = Path(server.process.env["JUPYTER_RUNTIME_DIR"]) / f"kernel-{kernel_id}.json"
        with contextlib.suppress(OSError, ValueError):
            info = json.loads(path.read_text())
            ports = {v for k, v in info.items() if k.endswith("_port") and isinstance(v, int)}
            self.ledger.note_ports(backend, kernel_id, ports)

    async def stop_kernel(self, backend: str, kernel_id: str) -> None:
        await self.call("DELETE", f"/api/kernels/{kernel_id}", expect=(204,))
        self.ledger.tally[backend].kernels_stopped += 1

    async def discard(self, backend: str, path: str) -> None:
        """Best-effort DELETE of a kernel or session that may have died with its server."""
        with contextlib.suppress(Exception):
            resp = await self.api.request("DELETE", path, timeout=HTTP_TIMEOUT)
            if resp.status == 204:
                self.ledger.tally[backend].kernels_stopped += 1

    # -- websockets ----------------------------------------------------------------------------

    async def connect(self, backend: str, kernel_id: str, protocol: str) -> KernelConnection:
        conn = await KernelConnection.open(
            self.http, self.api.ws_url(f"/api/kernels/{kernel_id}/channels"),
            headers={"token": self.stack.tokens.jupyter}, protocol=protocol, timeout=HTTP_TIMEOUT,
        )  # fmt: skip
        conn.serial = next(self.connections)  # type: ignore[attr-defined]
        self.ledger.tally[backend].websockets_opened += 1
        return conn

    async def disconnect(self, backend: str, conn: KernelConnection) -> None:
        await conn.close()
        self.ledger.tally[backend].websockets_closed += 1

    async def execute(
        self, backend: str, conn: KernelConnection, code: str | None = None, expect: str | None = None
    ) -> None:
        """Run ``print(<unique number>)`` (or ``code``) and check what comes back."""
        number = next(self.numbers)
        if code is None:
            code, expect = f"print({number})", str(number)
        msg_id = await conn.send_execute(code)
        self._remember(msg_id, conn.serial)  # type: ignore[attr-defined]
        tally = self.ledger.tally[backend]
        tally.execute_requests += 1
        sent = time.monotonic()
        stdout, reply = await self._collect(tally, conn, msg_id, code, deadline=sent + EXECUTE_TIMEOUT)
        if reply.get("status") != "ok":
            raise RuntimeError(f"execute {code!r} answered {reply.get('status')}: {reply.get('evalue')}")
        if stdout.strip() != expect:
            tally.misrouted += 1
            raise Misrouted(f"execute {code!r} on {backend}: expected output {expect!r}, got {stdout!r}")
        tally.execute_replies += 1
        self.ledger.successes_after[backend].append(self.ledger.now())
        self.ledger.latency[backend].append(time.monotonic() - sent)

    def _remember(self, msg_id: str, serial: int) -> None:
        self.owner_of_msg[msg_id] = serial
        if len(self.owner_of_msg) > _MAX_REMEMBERED:  # bounded memory on long runs
            for key in list(itertools.islice(self.owner_of_msg, _MAX_REMEMBERED // 2)):
                del self.owner_of_msg[key]

    async def _collect(
        self, tally: Tally, conn: KernelConnection, msg_id: str, code: str, deadline: float
    ) -> tuple[str, dict]:
        """The stdout and the ``execute_reply`` of ``msg_id``, read until the kernel is
        idle again; a message answering another connection's request is misrouted."""
        serial = conn.serial  # type: ignore[attr-defined]
        stdout, reply, idle = "", None, False
        while reply is None or not idle:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                tally.lost += 1
                raise Lost(f"no reply to execute {msg_id} ({code!r}) within {EXECUTE_TIMEOUT:.0f}s")
            try:
                msg = await conn.receive(remaining)
            except asyncio.TimeoutError:
                continue
            except Exception as exc:  # the socket closed or failed before the reply
                tally.lost += 1
                raise Lost(f"connection lost before the reply to {msg_id}: {exc}") from exc
            parent = (msg.get("parent_header") or {}).get("msg_id")
            if parent != msg_id:
                if parent in self.owner_of_msg and self.owner_of_msg[parent] != serial:
                    tally.misrouted += 1
                    raise Misrouted(
                        f"connection {serial} received {msg['header']['msg_type']} of another "
                        f"connection's request {parent}: {json.dumps(msg.get('content'))[:200]}"
                    )
                continue  # e.g. the server's own kernel_info nudge on iopub
            kind = msg["header"]["msg_type"]
            if kind == "stream" and msg["content"].get("name") == "stdout":
                stdout += msg["content"].get("text", "")
            elif kind == "execute_reply":
                reply = msg["content"]
            elif kind == "status" and msg["content"].get("execution_state") == "idle":
                idle = True
        return stdout, reply
