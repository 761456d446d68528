"""A minimal Jupyter kernel-protocol client over ``/api/kernels/{id}/channels``.

Speaks both websocket protocols jupyter_server offers:

* ``legacy``: every message is a JSON text frame carrying a ``channel`` key (a message
  with binary buffers comes as jupyter_server's offsets-framed binary message);
* ``v1``: the ``v1.kernel.websocket.jupyter.org`` subprotocol, binary frames framed
  with 64-bit little-endian offsets (channel, header, parent_header, metadata,
  content, buffers…), as ``serialize_msg_to_ws_v1`` / ``deserialize_msg_from_ws_v1``
  in ``jupyter_server.services.kernels.connection.base``.

All waits are bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import aiohttp
from jupyter_server.services.kernels.connection.base import (
    deserialize_binary_message,
    deserialize_msg_from_ws_v1,
    serialize_msg_to_ws_v1,
)

V1_PROTOCOL = "v1.kernel.websocket.jupyter.org"


@dataclass
class ExecResult:
    status: str | None = None  # execute_reply content.status: ok / error / aborted
    stdout: str = ""
    stderr: str = ""
    ename: str | None = None
    evalue: str | None = None
    reply: dict = field(default_factory=dict)
    messages: list[dict] = field(default_factory=list)  # everything seen for this request

    def __str__(self) -> str:
        return (
            f"ExecResult(status={self.status!r}, ename={self.ename!r}, evalue={self.evalue!r}, "
            f"stdout={self.stdout!r}, stderr={self.stderr[-500:]!r})"
        )


class KernelProtocolError(AssertionError):
    pass


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat().replace("+00:00", "Z")


class KernelConnection:
    def __init__(self, ws: aiohttp.ClientWebSocketResponse, protocol: str) -> None:
        self.ws = ws
        self.protocol = protocol  # "legacy" or "v1"
        self.session_id = uuid.uuid4().hex
        self.negotiated = ws.protocol  # the subprotocol the server chose (None for legacy)
        self._backlog: list[dict] = []
        self.frame_types: set[str] = set()  # websocket frame kinds received: TEXT / BINARY

    @classmethod
    async def open(
        cls,
        http: aiohttp.ClientSession,
        ws_url: str,
        *,
        headers: Mapping[str, str] | None = None,
        protocol: str = "legacy",
        session_id: str | None = None,
        query: Mapping[str, str] | None = None,
        timeout: float = 30,
    ) -> KernelConnection:
        if protocol not in ("legacy", "v1"):
            raise ValueError(protocol)
        session_id = session_id or uuid.uuid4().hex
        params = {"session_id": session_id, **(query or {})}
        url = ws_url + ("&" if "?" in ws_url else "?") + urlencode(params)
        ws = await asyncio.wait_for(
            http.ws_connect(
                url,
                headers=dict(headers or {}),
                protocols=(V1_PROTOCOL,) if protocol == "v1" else (),
                autoping=True,
                heartbeat=None,
                max_msg_size=64 * 1024 * 1024,
            ),
            timeout,
        )
        conn = cls(ws, protocol)
        conn.session_id = session_id
        return conn

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.ws.close(), 5)

    async def __aenter__(self) -> KernelConnection:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- framing ---------------------------------------------------------------------------

    def make_message(self, msg_type: str, content: dict, channel: str = "shell") -> dict:
        return {
            "header": {
                "msg_id": uuid.uuid4().hex,
                "msg_type": msg_type,
                "username": "e2e",
                "session": self.session_id,
                "date": _now(),
                "version": "5.3",
            },
            "parent_header": {},
            "metadata": {},
            "content": content,
            "channel": channel,
            "buffers": [],
        }

    async def send_message(self, msg: dict) -> str:
        if self.protocol == "legacy":
            await self.ws.send_str(json.dumps(msg))
        else:
            parts = [
                json.dumps(msg[key]).encode("utf-8")
                for key in ("header", "parent_header", "metadata", "content")
            ]
            await self.ws.send_bytes(serialize_msg_to_ws_v1(parts, msg["channel"]))
        return msg["header"]["msg_id"]

    def _decode(self, frame: aiohttp.WSMessage) -> dict:
        if frame.type in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
            self.frame_types.add(frame.type.name)
        if frame.type == aiohttp.WSMsgType.TEXT:
            if self.protocol == "v1":
                raise KernelProtocolError(f"text frame on a v1 connection: {frame.data[:200]!r}")
            return json.loads(frame.data)
        if frame.type == aiohttp.WSMsgType.BINARY:
            if self.protocol == "legacy":
                return deserialize_binary_message(frame.data)
            channel, parts = deserialize_msg_from_ws_v1(frame.data)
            if len(parts) < 4:
                raise KernelProtocolError(f"short v1 message on {channel}: {len(parts)} parts")
            msg = {
                "channel": channel,
                "header": json.loads(parts[0]),
                "parent_header": json.loads(parts[1]),
                "metadata": json.loads(parts[2]),
                "content": json.loads(parts[3]),
                "buffers": parts[4:],
            }
            return msg
        raise KernelProtocolError(
            f"websocket closed or failed ({frame.type.name}, data={frame.data!r}, "
            f"close_code={self.ws.close_code})"
        )

    async def receive(self, timeout: float) -> dict:
        if self._backlog:
            return self._backlog.pop(0)
        frame = await asyncio.wait_for(self.ws.receive(), timeout)
        return self._decode(frame)

    # -- requests --------------------------------------------------------------------------

    async def send_execute(self, code: str, **content: Any) -> str:
        msg = self.make_message(
            "execute_request",
            {
                "code": code,
                "silent": False,
                "store_history": True,
                "user_expressions": {},
                "allow_stdin": False,
                "stop_on_error": True,
                **content,
            },
        )
        return await self.send_message(msg)

    async def collect(self, msg_id: str, timeout: float = 60) -> ExecResult:
        """Gather the outputs of request ``msg_id`` until its reply and the idle status."""
        result = ExecResult()
        got_reply = got_idle = False
        deadline = time.monotonic() + timeout
        while not (got_reply and got_idle):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise KernelProtocolError(
                    f"no complete answer to {msg_id} within {timeout:.0f}s "
                    f"(reply={got_reply}, idle={got_idle}); so far {result}"
                )
            try:
                msg = await self.receive(remaining)
            except asyncio.TimeoutError:
                continue
            if msg.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            result.messages.append(msg)
            msg_type = msg["header"]["msg_type"]
            content = msg.get("content", {})
            if msg["channel"] == "shell" and msg_type.endswith("_reply"):
                got_reply = True
                result.reply = content
                result.status = content.get("status")
                if result.status == "error":
                    result.ename = result.ename or content.get("ename")
                    result.evalue = result.evalue or content.get("evalue")
            elif msg_type == "stream":
                if content.get("name") == "stdout":
                    result.stdout += content.get("text", "")
                else:
                    result.stderr += content.get("text", "")
            elif msg_type == "error":
                result.ename = content.get("ename")
                result.evalue = content.get("evalue")
            elif msg_type == "status" and content.get("execution_state") == "idle":
                got_idle = True
        return result

    async def wait_for_state(self, msg_id: str, state: str, timeout: float = 30) -> None:
        """Wait for an iopub status ``state`` (e.g. ``busy``) of request ``msg_id``.

        Other messages read meanwhile are kept for the next ``receive``.
        """
        seen: list[dict] = []
        try:
            await self._wait_for_state(msg_id, state, timeout, seen)
        finally:
            self._backlog[:0] = seen

    async def _wait_for_state(self, msg_id: str, state: str, timeout: float, seen: list) -> None:
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise KernelProtocolError(f"kernel never reported {state!r} for {msg_id}")
            try:
                msg = await self.receive(remaining)
            except asyncio.TimeoutError:
                continue
            if (
                msg.get("parent_header", {}).get("msg_id") == msg_id
                and msg["header"]["msg_type"] == "status"
                and msg["content"].get("execution_state") == state
            ):
                return
            seen.append(msg)

    async def execute(self, code: str, timeout: float = 60) -> ExecResult:
        return await self.collect(await self.send_execute(code), timeout)

    async def kernel_info(self, timeout: float = 60) -> dict:
        msg_id = await self.send_message(self.make_message("kernel_info_request", {}))
        return (await self.collect(msg_id, timeout)).reply


async def execute(
    http: aiohttp.ClientSession,
    ws_url: str,
    code: str,
    *,
    headers: Mapping[str, str] | None = None,
    protocol: str = "legacy",
    timeout: float = 60,
) -> ExecResult:
    """Connect, run ``code``, disconnect."""
    conn = await KernelConnection.open(http, ws_url, headers=headers, protocol=protocol, timeout=timeout)
    async with conn:
        return await conn.execute(code, timeout=timeout)
