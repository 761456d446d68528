"""The carry engine (``carry/engine.py``, ``carry/link.py``) against fake kernels.

A ``FakeKernels`` server speaks jupyter_server's legacy kernel websocket: it answers
``kernel_info``, "runs" the carry's cell by registering the comm target it names (the
cell's source must be ``kernel_code`` itself), and drives the real kernel-side ends
(``kernel_code._SourceEnd``/``_TargetEnd``) on a dict standing in for the user
namespace. Faults replace the n-th comm message a kernel sends: garbage, a closed
websocket, silence, a restart, a wrong answer, a flood. Real kernels are in
tests/e2e/test_e2e_carry.py.
"""

from __future__ import annotations

import ast
import asyncio
import json
import logging
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import WSMsgType, web

from notebook_kernels_mixer.backends import Backend, build_backend
from notebook_kernels_mixer.carry import (
    FAILED,
    OK,
    PARTIAL,
    REPORT_VARIABLE,
    UNSUPPORTED,
    CarryReport,
    carry_namespace,
    kernel_code,
    wire,
)
from notebook_kernels_mixer.carry.engine import KERNEL_CODE
from notebook_kernels_mixer.config import BackendConfig

INSTALL = re.compile(r"\ninstall\('(source|target)', '(mixer_carry_[0-9a-f]+)', ([0-9.]+)\)\n$")


@dataclass
class Shell:
    """What kernel_code's ends use of IPython's shell."""

    user_ns: dict[str, Any]
    user_ns_hidden: dict[str, Any] = field(default_factory=dict)


@dataclass
class Fault:
    """Instead of the ``at``-th comm message the kernel sends (0: hello, 1: manifest or
    the modules' ack, 2…: chunks or acks), do ``kind``."""

    kind: str  # garbage | close | silence | restart | shutdown | wrong_op | inflate | flood
    at: int


@dataclass
class FakeKernel:
    user_ns: dict[str, Any] = field(default_factory=dict)
    language: str = "python"
    busy: bool = False  # execute requests are never answered (a cell is running)
    fault: Fault | None = None
    sent: int = 0  # comm messages sent so far
    silent: bool = False
    targets: dict[str, tuple[str, float]] = field(default_factory=dict)
    cells: list[str] = field(default_factory=list)


@dataclass
class Traffic:
    """What the fake saw, for the bounded-memory check."""

    pulls: int = 0
    acks: int = 0
    max_in_flight: int = 0


class FakeKernels:
    def __init__(self) -> None:
        self.kernels: dict[str, FakeKernel] = {}
        self.open_sockets = 0
        self.traffic = Traffic()
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> FakeKernels:
        app = web.Application()
        app.router.add_get("/api/kernels/{kid}/channels", self.channels)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def stop(self) -> None:
        assert self.runner is not None
        await self.runner.cleanup()

    async def channels(self, request: web.Request) -> web.StreamResponse:
        kernel = self.kernels.get(request.match_info["kid"])
        if kernel is None:
            raise web.HTTPNotFound()
        ws = web.WebSocketResponse(max_msg_size=64 * 1024 * 1024)
        await ws.prepare(request)
        self.open_sockets += 1
        try:
            ends: dict[str, Any] = {}
            async for frame in ws:
                if frame.type not in (WSMsgType.TEXT, WSMsgType.BINARY):
                    break
                msg = wire.decode(frame.data)
                out = self.handle(kernel, msg, ends)
                for item in out:
                    if not await self.emit(kernel, ws, item):
                        return ws
        finally:
            self.open_sockets -= 1
            for end in ends.values():
                end.timer.cancel()
        return ws

    # -- the kernel ------------------------------------------------------------------------
    def handle(self, kernel: FakeKernel, msg: wire.Message, ends: dict[str, Any]) -> list[Any]:
        """Messages to send for ``msg``: ("reply", channel, type, content, parent) or
        ("comm", comm_id, data, buffers)."""
        if msg.msg_type == "kernel_info_request":
            if msg.channel == "shell" and kernel.busy:
                return []
            info = {"status": "ok", "language_info": {"name": kernel.language}}
            return [("reply", msg.channel, "kernel_info_reply", info, msg.msg_id)]
        if msg.msg_type == "execute_request":
            if kernel.busy:
                return []
            code = msg.content["code"]
            kernel.cells.append(code)
            call = ast.parse(code).body[0].value  # exec(compile(SOURCE, ...), {...})
            source = call.args[0].args[0].value  # type: ignore[attr-defined]
            assert source.startswith(KERNEL_CODE)
            role, target, ttl = INSTALL.search(source).groups()  # type: ignore[union-attr]
            kernel.targets[target] = (role, float(ttl))
            return [("reply", "shell", "execute_reply", {"status": "ok"}, msg.msg_id)]
        if msg.msg_type == "comm_open":
            role, ttl = kernel.targets.pop(msg.content["target_name"])
            comm = Comm(msg.content["comm_id"])
            end_class = kernel_code._SourceEnd if role == "source" else kernel_code._TargetEnd
            end = ends[comm.comm_id] = end_class(Shell(kernel.user_ns), comm, ttl)
            comm.send(kernel_code.hello())
            return comm.take()
        if msg.msg_type == "comm_msg":
            end = ends.get(msg.content["comm_id"])
            if end is None:
                return []
            op = msg.content["data"].get("op")
            if op == "pull":
                self.traffic.pulls += 1
                self.traffic.max_in_flight = max(self.traffic.max_in_flight,
                                                 self.traffic.pulls - self.traffic.acks)
            end.on_msg({"content": msg.content, "buffers": msg.buffers})
            if op == "chunk":
                self.traffic.acks += 1
            return end.comm.take()
        if msg.msg_type == "comm_close":
            end = ends.pop(msg.content["comm_id"], None)
            if end is not None:
                end.on_close({})
        return []

    async def emit(self, kernel: FakeKernel, ws: web.WebSocketResponse, item: Any) -> bool:
        """Send one message (or the fault in its place); False: the socket is closed."""
        if item[0] == "reply":
            _, channel, msg_type, content, parent = item
            await ws.send_str(json.dumps({
                "header": {"msg_id": wire.new_id(), "msg_type": msg_type}, "channel": channel,
                "parent_header": {"msg_id": parent}, "metadata": {}, "content": content,
            }))  # fmt: skip
            return True
        if kernel.silent:
            return True
        _, comm_id, data, buffers = item
        frame = wire.encode("iopub", "comm_msg", {"comm_id": comm_id, "data": data}, session="k",
                            buffers=buffers or ())
        fault, kernel.sent = kernel.fault, kernel.sent + 1
        if fault is None or fault.at != kernel.sent - 1:
            await (ws.send_str(frame) if isinstance(frame, str) else ws.send_bytes(frame))
            return True
        if fault.kind == "garbage":
            await ws.send_str("this is not a Jupyter message")
        elif fault.kind == "close":
            await ws.close()
            return False
        elif fault.kind == "silence":
            kernel.silent = True
        elif fault.kind == "restart":
            await ws.send_str(json.dumps({
                "header": {"msg_type": "status"}, "parent_header": {}, "channel": "iopub",
                "content": {"execution_state": "restarting"},
            }))  # fmt: skip
            kernel.silent = True
        elif fault.kind == "shutdown":
            await ws.send_str(json.dumps({
                "header": {"msg_type": "shutdown_reply"}, "parent_header": {}, "channel": "iopub",
                "content": {"status": "ok", "restart": False},
            }))  # fmt: skip
            kernel.silent = True
        elif fault.kind == "wrong_op":
            await ws.send_str(wire.encode("iopub", "comm_msg", {"comm_id": comm_id,
                                                                "data": {"op": "surprise"}}, session="k"))
        elif fault.kind == "inflate":
            data = {**data, "bytes": data["bytes"] + 1}
            await ws.send_str(wire.encode("iopub", "comm_msg", {"comm_id": comm_id, "data": data},
                                          session="k"))
        elif fault.kind == "flood":
            for _ in range(50):
                await (ws.send_str(frame) if isinstance(frame, str) else ws.send_bytes(frame))
        return True


class Comm:
    """What kernel_code's ends use of an ipykernel Comm: ``send``."""

    def __init__(self, comm_id: str) -> None:
        self.comm_id = comm_id
        self.outbox: list[Any] = []

    def send(self, data: dict[str, Any], buffers: list[Any] | None = None) -> None:
        # as ipykernel does: the message is built (and its buffers read) when sent
        self.outbox.append(("comm", self.comm_id, json.loads(json.dumps(data)),
                            [bytes(b) for b in buffers or ()]))

    def take(self) -> list[Any]:
        out, self.outbox = self.outbox, []
        return out


# -- fixtures ------------------------------------------------------------------------------


@pytest.fixture
async def fake() -> AsyncIterator[FakeKernels]:
    server = await FakeKernels().start()
    yield server
    await server.stop()


@pytest.fixture
async def backend(fake: FakeKernels) -> AsyncIterator[Backend]:
    b = build_backend(BackendConfig(name="fake", display_suffix=" (Fake)", url=fake.url))
    await b.start()
    yield b
    await b.close()


async def carry(fake: FakeKernels, backend: Backend, source: FakeKernel, target: FakeKernel,
                **kw: Any) -> CarryReport:
    fake.kernels.update(src=source, dst=target)
    kw.setdefault("budget", 5.0)
    kw.setdefault("cap", 1 << 30)
    report = await carry_namespace(backend, "src", backend, "dst", **kw)
    for _ in range(100):  # the server side notices the closes on its next turn
        if fake.open_sockets == 0:
            break
        await asyncio.sleep(0.01)
    assert fake.open_sockets == 0, "a websocket of the carry was left open"
    return report


def values() -> dict[str, Any]:
    return {"n": 1, "text": "t" * 3000, "nested": {"a": [1, 2, (3,)]}, "js": json,
            "gen": (i for i in range(2)), "_hidden": 5}


# -- the tests -----------------------------------------------------------------------------


async def test_values_arrive_in_small_chunks_and_the_report_lands_in_the_target(
    fake: FakeKernels, backend: Backend
) -> None:
    source, target = FakeKernel(values()), FakeKernel()
    report = await carry(fake, backend, source, target, chunk_size=500, window=3)
    assert report.outcome == PARTIAL and report.reason is None, report
    assert sorted(report.carried_names) == ["js", "n", "nested", "text"]
    assert list(report.skipped) == ["gen"] and report.in_kernel
    ns = target.user_ns
    assert ns["n"] == 1 and ns["text"] == "t" * 3000 and ns["nested"] == {"a": [1, 2, (3,)]}
    assert ns["js"] is json and "_hidden" not in ns and "gen" not in ns
    shown = ns[REPORT_VARIABLE]
    assert shown.outcome == "partial" and shown.source == "fake" and "gen" in shown.skipped
    assert set(shown.carried) == set(report.carried_names)
    assert report.bytes == sum(c.size for c in report.carried) > 3000


async def test_one_log_line_per_carry_with_counts_and_no_values(
    fake: FakeKernels, backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="notebook_kernels_mixer.carry")
    source = FakeKernel({"password": "s3cr3t-value", "gen": (i for i in range(2))})
    await carry(fake, backend, source, FakeKernel())
    lines = [r.getMessage() for r in caplog.records if r.name.startswith("notebook_kernels_mixer.carry")]
    assert len(lines) == 1, lines
    assert lines[0].startswith("carry fake/src -> fake/dst: partial, 1 carried, 1 skipped, ")
    assert "s3cr3t" not in lines[0] and "password" not in lines[0]


async def test_the_mixer_keeps_at_most_a_window_of_chunks_in_flight(
    fake: FakeKernels, backend: Backend
) -> None:
    source, target = FakeKernel({"blob": b"x" * 100_000}), FakeKernel()
    report = await carry(fake, backend, source, target, chunk_size=1000, window=3)
    assert report.outcome == OK, report
    assert target.user_ns["blob"] == b"x" * 100_000
    assert fake.traffic.pulls == fake.traffic.acks > 100
    assert fake.traffic.max_in_flight == 3  # pipelined, and never more than the window


async def test_an_empty_namespace_is_an_ok_carry_of_nothing(fake: FakeKernels, backend: Backend) -> None:
    target = FakeKernel()
    report = await carry(fake, backend, FakeKernel({"_only_private": 1}), target)
    assert report.outcome == OK and report.carried == () and report.skipped == {} and report.bytes == 0
    assert target.user_ns[REPORT_VARIABLE].outcome == "ok"


async def test_a_non_python_source_is_unsupported_and_the_target_says_so(
    fake: FakeKernels, backend: Backend
) -> None:
    target = FakeKernel()
    report = await carry(fake, backend, FakeKernel(values(), language="R"), target)
    assert report.outcome == UNSUPPORTED
    assert report.reason == "source kernel is not a Python kernel (R), nothing carried"
    assert target.user_ns[REPORT_VARIABLE].outcome == "unsupported"
    assert set(target.user_ns) == {REPORT_VARIABLE}


async def test_a_non_python_target_gets_nothing_and_the_source_runs_nothing(
    fake: FakeKernels, backend: Backend
) -> None:
    source, target = FakeKernel(values(), busy=True), FakeKernel(language="julia")
    started = time.monotonic()
    report = await carry(fake, backend, source, target, budget=30)
    assert report.outcome == UNSUPPORTED and report.reason.startswith("target kernel is not a Python")
    assert time.monotonic() - started < 30, "waited for the busy source although the target was not Python"
    assert target.cells == [] and target.user_ns == {}


async def test_a_busy_source_is_given_up_at_the_budget(fake: FakeKernels, backend: Backend) -> None:
    source, target = FakeKernel(values(), busy=True), FakeKernel()
    started = time.monotonic()
    report = await carry(fake, backend, source, target, budget=1.0)
    assert time.monotonic() - started >= 1.0
    assert report.outcome == FAILED and report.reason.startswith("source busy"), report
    assert target.user_ns[REPORT_VARIABLE].reason.startswith("source busy")


async def test_an_unknown_kernel_is_a_failed_carry(fake: FakeKernels, backend: Backend) -> None:
    fake.kernels["dst"] = FakeKernel()
    report = await carry_namespace(backend, "missing", backend, "dst", budget=5, cap=1 << 30)
    assert report.outcome == FAILED
    assert report.reason == "source kernel lost (connect): refused the kernel's websocket: HTTP 404"


async def test_an_unreachable_backend_is_a_failed_carry(backend: Backend) -> None:
    nowhere = build_backend(BackendConfig(name="gone", display_suffix="", url="http://127.0.0.1:9"))
    await nowhere.start()
    try:
        report = await carry_namespace(nowhere, "a", backend, "b", budget=5, cap=1 << 30)
    finally:
        await nowhere.close()
    assert report.outcome == FAILED and "cannot open the kernel's websocket" in report.reason


# (kind, at, expected words in the reason); at: 0 hello, 1 manifest/modules ack, 2… chunks/acks
FAULTS = [
    ("garbage", 0, "not a Jupyter message"),
    ("garbage", 3, "not a Jupyter message"),
    ("close", 1, "closed the kernel's websocket"),
    ("close", 4, "closed the kernel's websocket"),
    ("silence", 0, "did not open the carry's comm within the budget"),
    ("silence", 3, "stopped answering"),
    ("restart", 3, "the kernel restarted"),
    ("shutdown", 3, "the kernel was shut down"),
    ("wrong_op", 1, "answered garbage: 'surprise'"),
    ("wrong_op", 3, "answered garbage: 'surprise'"),
    ("flood", 2, "sent more comm messages than it was asked for"),
]


@pytest.mark.parametrize("role", ["source", "target"])
@pytest.mark.parametrize(("kind", "at", "words"), FAULTS)
async def test_a_misbehaving_kernel_ends_the_carry_with_a_report(
    fake: FakeKernels, backend: Backend, role: str, kind: str, at: int, words: str
) -> None:
    source = FakeKernel({f"v{i}": bytes([i]) * 3000 for i in range(5)})
    target = FakeKernel()
    (source if role == "source" else target).fault = Fault(kind, at)
    report = await carry(fake, backend, source, target, budget=1.5, chunk_size=1000, window=1)
    assert report.outcome in (FAILED, PARTIAL), report
    assert report.reason is not None and report.reason.startswith(role), report.reason
    assert words in report.reason, report.reason
    assert len(report.carried) + len(report.skipped) <= 5
    assert len(report.carried) < 5
    if role == "source" and kind != "silence":  # a target that still answers gets the report
        assert target.user_ns[REPORT_VARIABLE].outcome == report.outcome


async def test_cancelling_a_carry_closes_both_websockets(fake: FakeKernels, backend: Backend) -> None:
    source = FakeKernel({"a": b"a" * 10_000}, fault=Fault("silence", 3))
    fake.kernels.update(src=source, dst=FakeKernel())
    task = asyncio.ensure_future(carry_namespace(backend, "src", backend, "dst", budget=60, cap=1 << 30,
                                                 chunk_size=1000, window=1))
    for _ in range(500):
        if source.silent:
            break
        await asyncio.sleep(0.01)
    assert source.silent and fake.open_sockets == 2
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    for _ in range(100):
        if fake.open_sockets == 0:
            break
        await asyncio.sleep(0.01)
    assert fake.open_sockets == 0


async def test_a_manifest_that_does_not_add_up_is_garbage(fake: FakeKernels, backend: Backend) -> None:
    report = await carry(fake, backend, FakeKernel({"a": 1}, fault=Fault("inflate", 1)), FakeKernel())
    assert report.outcome == FAILED
    assert report.reason == "source answered garbage: an inconsistent manifest"


@pytest.mark.parametrize(("budget", "cap", "window"), [(0, 1, 1), (-1, 1, 1), (1, -1, 1), (1, 1, 0)])
async def test_invalid_limits_are_a_programming_error(backend: Backend, budget: float, cap: int,
                                                      window: int) -> None:
    with pytest.raises(ValueError):
        await carry_namespace(backend, "a", backend, "b", budget=budget, cap=cap, window=window)
