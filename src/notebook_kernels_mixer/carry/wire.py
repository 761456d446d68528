"""Jupyter messages on a kernel websocket, as jupyter_server speaks it by default
(the "legacy" protocol, no subprotocol): a message without buffers is one JSON text
frame with a ``channel`` key; a message with buffers is one binary frame,

    nbufs (uint32, big-endian) | nbufs offsets (uint32, from the frame's start) |
    the JSON of the message (without "buffers") | buffer 1 | buffer 2 | …

where nbufs counts the JSON part too (jupyter_server's ``serialize_binary_message``
and ``deserialize_binary_message``). Only what a carry needs is here: the mixer never
decodes its clients' kernel traffic (the relay moves bytes).
"""

from __future__ import annotations

import datetime
import itertools
import struct
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from notebook_kernels_mixer import jsonutil

PROTOCOL_VERSION = "5.3"
_U32 = struct.Struct("!I")


class WireError(Exception):
    """A frame that is not a Jupyter message."""


@dataclass
class Message:
    channel: str
    msg_type: str
    msg_id: str
    parent_id: str | None
    content: dict[str, Any]
    buffers: list[memoryview] = field(default_factory=list)


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat().replace("+00:00", "Z")


def new_id() -> str:
    return uuid.uuid4().hex


def encode(channel: str, msg_type: str, content: dict[str, Any], *, session: str,
           buffers: Sequence[bytes | memoryview] = (), msg_id: str | None = None) -> str | bytes:
    """One message as a websocket frame's payload: text without buffers, else binary."""
    msg = {
        "header": {
            "msg_id": msg_id or new_id(),
            "msg_type": msg_type,
            "username": "mixer",
            "session": session,
            "date": _now(),
            "version": PROTOCOL_VERSION,
        },
        "parent_header": {},
        "metadata": {},
        "content": content,
        "channel": channel,
    }
    body = jsonutil.dumps(msg)
    if not buffers:
        return body.decode()
    parts: list[bytes | memoryview] = [body, *buffers]
    offsets = [4 * (len(parts) + 1)]
    for part in parts[:-1]:
        offsets.append(offsets[-1] + memoryview(part).nbytes)
    head = struct.pack(f"!{len(parts) + 1}I", len(parts), *offsets)
    return b"".join([head, *parts])


def _split_binary(data: bytes) -> tuple[bytes | memoryview, list[memoryview]]:
    view = memoryview(data)
    if len(view) < 8:
        raise WireError("a binary frame too short for a message")
    (nbufs,) = _U32.unpack_from(view, 0)
    if nbufs < 1 or 4 * (nbufs + 1) > len(view):
        raise WireError(f"a binary frame announcing {nbufs} parts")
    offsets = list(struct.unpack_from(f"!{nbufs}I", view, 4))
    offsets.append(len(view))
    if offsets[0] < 4 * (nbufs + 1) or any(a > b for a, b in itertools.pairwise(offsets)):
        raise WireError("a binary frame with offsets out of order")
    parts = [view[a:b] for a, b in itertools.pairwise(offsets)]
    return parts[0], parts[1:]


def decode(data: str | bytes) -> Message:
    """A frame's payload as a message; ``WireError`` if it is not one."""
    buffers: list[memoryview] = []
    if isinstance(data, str):
        body: str | bytes | memoryview = data
    else:
        body, buffers = _split_binary(data)
    try:
        msg = jsonutil.loads(bytes(body) if isinstance(body, memoryview) else body)
    except (jsonutil.JSONDecodeError, UnicodeDecodeError, ValueError) as exc:
        raise WireError(f"not JSON: {exc}") from None
    if not isinstance(msg, dict):
        raise WireError("a JSON value that is not a message")
    header, parent, content = msg.get("header"), msg.get("parent_header"), msg.get("content")
    channel = msg.get("channel")
    if not isinstance(header, dict) or not isinstance(header.get("msg_type"), str):
        raise WireError("a message without a header")
    if not isinstance(channel, str) or not isinstance(content, dict):
        raise WireError(f"a {header['msg_type']} message without a channel or content")
    parent_id = parent.get("msg_id") if isinstance(parent, dict) else None
    return Message(
        channel=channel,
        msg_type=header["msg_type"],
        msg_id=str(header.get("msg_id")),
        parent_id=parent_id if isinstance(parent_id, str) else None,
        content=content,
        buffers=buffers,
    )
