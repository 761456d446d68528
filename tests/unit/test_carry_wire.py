"""Jupyter messages on a kernel websocket (``carry/wire.py``), checked against
jupyter_server's own framing, and what is not a message."""

from __future__ import annotations

import json
import struct

import pytest
from jupyter_server.services.kernels.connection.base import (
    deserialize_binary_message,
    serialize_binary_message,
)

from notebook_kernels_mixer.carry import wire


def test_a_message_without_buffers_is_a_json_text_frame() -> None:
    frame = wire.encode("shell", "kernel_info_request", {}, session="s1", msg_id="m1")
    assert isinstance(frame, str)
    msg = json.loads(frame)
    assert msg["channel"] == "shell" and msg["header"]["msg_id"] == "m1"
    assert msg["header"]["msg_type"] == "kernel_info_request" and msg["header"]["session"] == "s1"


def test_a_message_with_buffers_is_what_jupyter_server_reads() -> None:
    frame = wire.encode("shell", "comm_msg", {"comm_id": "c", "data": {"seq": 3}}, session="s",
                        buffers=[b"abc", memoryview(b"\x00" * 70000), b""])
    assert isinstance(frame, bytes)
    msg = deserialize_binary_message(frame)
    assert msg["content"] == {"comm_id": "c", "data": {"seq": 3}} and msg["channel"] == "shell"
    assert [bytes(b) for b in msg["buffers"]] == [b"abc", b"\x00" * 70000, b""]


def test_what_jupyter_server_sends_is_decoded() -> None:
    sent = {
        "header": {"msg_id": "i", "msg_type": "comm_msg"}, "parent_header": {"msg_id": "p"},
        "metadata": {}, "content": {"comm_id": "c", "data": {"op": "chunk"}}, "channel": "iopub",
        "buffers": [b"one", b"two!"],
    }  # fmt: skip
    msg = wire.decode(serialize_binary_message(sent))
    assert (msg.channel, msg.msg_type, msg.msg_id, msg.parent_id) == ("iopub", "comm_msg", "i", "p")
    assert msg.content == sent["content"] and [bytes(b) for b in msg.buffers] == [b"one", b"two!"]
    text = wire.decode(json.dumps({**sent, "buffers": []}))
    assert text.buffers == [] and text.content == sent["content"]


def _binary(nbufs: int, offsets: list[int], rest: bytes) -> bytes:
    return struct.pack(f"!{len(offsets) + 1}I", nbufs, *offsets) + rest


GOOD = {"header": {"msg_type": "status"}, "parent_header": {}, "content": {}, "channel": "iopub"}


@pytest.mark.parametrize(
    "frame",
    [
        pytest.param("not json", id="text-not-json"),
        pytest.param("[1, 2]", id="json-not-object"),
        pytest.param(json.dumps({**GOOD, "header": "h"}), id="header-not-object"),
        pytest.param(json.dumps({**GOOD, "header": {}}), id="no-msg-type"),
        pytest.param(json.dumps({k: v for k, v in GOOD.items() if k != "channel"}), id="no-channel"),
        pytest.param(json.dumps({**GOOD, "content": []}), id="content-not-object"),
        pytest.param(b"\x00\x00", id="binary-too-short"),
        pytest.param(_binary(0, [], b"{}"), id="binary-no-parts"),
        pytest.param(_binary(1000, [8], b"{}"), id="binary-more-parts-than-bytes"),
        pytest.param(_binary(2, [12, 11], b"{}xx"), id="binary-offsets-backwards"),
        pytest.param(_binary(1, [2], b"{}"), id="binary-offset-inside-header"),
        pytest.param(_binary(1, [8], b"\xff\xfe"), id="binary-json-not-utf8"),
    ],
)
def test_garbage_is_a_wire_error(frame: str | bytes) -> None:
    with pytest.raises(wire.WireError):
        wire.decode(frame)
