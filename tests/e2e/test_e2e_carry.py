"""The carry engine (``notebook_kernels_mixer.carry``) between real kernels: two
jupyter_servers of this module's own (a "local" and a "remote" one, each with its own
token), an ipykernel on each, started through the REST API, and the engine called
directly with two ``Backend`` objects, as the session move will call it.

Values are checked by running code in the target kernel; the remote kernel says where
it runs (``MIXER_TEST_WHERE``). Faults: the source busy in ``time.sleep(600)``, the
target kernel killed or deleted mid-carry, the remote server frozen (SIGSTOP)
mid-carry, a value over the cap.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field

import aiohttp
import pytest

from notebook_kernels_mixer.backends import Backend, build_backend
from notebook_kernels_mixer.carry import (
    FAILED,
    FINISH_SLACK,
    OK,
    PARTIAL,
    REPORT_VARIABLE,
    CarryReport,
    carry_namespace,
)
from notebook_kernels_mixer.carry.link import CLOSE_TIMEOUT
from notebook_kernels_mixer.config import BackendConfig

from .helpers import channels_path
from .support.api import DEFAULT_TIMEOUT, ApiClient
from .support.kernel_client import ExecResult, KernelConnection
from .support.topology import JupyterServer, jupyter_server

pytestmark = pytest.mark.e2e

#: What a carry may take beyond its budget: the report to the target (FINISH_SLACK),
#: the closing handshakes and a loaded 2-core machine — far below a hang (the busy
#: source sleeps 600 s; a frozen server answers never).
SLACK = FINISH_SLACK + CLOSE_TIMEOUT + 10.0


@dataclass
class Place:
    name: str
    server: JupyterServer
    token: str


@pytest.fixture(scope="module")
def places(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Place]]:
    workdir = tmp_path_factory.mktemp("carry")
    tokens = {name: uuid.uuid4().hex for name in ("local", "remote")}
    servers = {name: jupyter_server(name, workdir, where=name, token=tokens[name]) for name in tokens}
    try:
        for server in servers.values():
            server.start(wait=False)
        for server in servers.values():
            server.wait_ready()
        yield {name: Place(name, servers[name], tokens[name]) for name in servers}
    finally:
        for server in servers.values():
            server.process.thaw()
            server.stop()


@dataclass
class Kernels:
    """Kernels of one test: started through REST, code run over their websockets,
    shut down at the end."""

    http: aiohttp.ClientSession
    places: dict[str, Place]
    started: list[tuple[str, str]] = field(default_factory=list)
    backends: dict[str, Backend] = field(default_factory=dict)

    def api(self, place: str) -> ApiClient:
        server = self.places[place].server
        return ApiClient(self.http, server.url, auth=server.auth, name=place)

    async def start(self, place: str) -> str:
        kernel = await self.api(place).start_kernel("python3")
        self.started.append((place, kernel["id"]))
        return kernel["id"]

    async def connect(self, place: str, kernel_id: str) -> KernelConnection:
        api = self.api(place)
        return await KernelConnection.open(self.http, api.ws_url(channels_path(kernel_id)),
                                           headers=api.auth())

    async def run(self, place: str, kernel_id: str, code: str, timeout: float = 120) -> ExecResult:
        async with await self.connect(place, kernel_id) as conn:
            result = await conn.execute(code, timeout=timeout)
        assert result.status == "ok", f"{place} kernel: {result}"
        return result

    async def backend(self, place: str) -> Backend:
        if place not in self.backends:
            p = self.places[place]
            backend = build_backend(BackendConfig(
                name=place, display_suffix=f" ({place})", url=p.server.url, auth="token", token=p.token,
            ))  # fmt: skip
            await backend.start()
            self.backends[place] = backend
        return self.backends[place]

    async def carry(self, source: tuple[str, str], target: tuple[str, str], **kw) -> CarryReport:
        return await carry_namespace(await self.backend(source[0]), source[1],
                                     await self.backend(target[0]), target[1], **kw)

    async def close(self) -> None:
        for place, kernel_id in self.started:
            with contextlib.suppress(Exception):
                await self.api(place).delete_kernel(kernel_id)
        for backend in self.backends.values():
            await backend.close()


@pytest.fixture
async def kernels(places: dict[str, Place]) -> AsyncIterator[Kernels]:
    async with aiohttp.ClientSession(timeout=DEFAULT_TIMEOUT, cookie_jar=aiohttp.DummyCookieJar(),
                                     trust_env=False) as http:
        k = Kernels(http, places)
        try:
            yield k
        finally:
            await k.close()


SOURCE_CELL = """
import os.path as osp
import json
import socket
n = 42
x = 2.5
s = "héllo ✓"
nested = {"a": [1, (2, 3), {4, 5}], "b": {"c": None, "d": [b"raw", bytearray(b"ba")]}}
big = bytes(range(256)) * (20 * 1024 * 1024 // 256)
def square(v):
    return v * v + n
class Point:
    def __init__(self, x, y):
        self.x, self.y = x, y
    def __eq__(self, other):
        return (self.x, self.y) == (other.x, other.y)
p = Point(1, 2)
gen = (i for i in range(3))
sock = socket.socket()
_private = "stays"
"""

CHECK_CELL = """
import os
assert n == 42 and x == 2.5 and s == "héllo ✓"
assert nested == {"a": [1, (2, 3), {4, 5}], "b": {"c": None, "d": [b"raw", bytearray(b"ba")]}}
assert big == bytes(range(256)) * (20 * 1024 * 1024 // 256)
assert osp.join("a", "b") == os.path.join("a", "b") and json.dumps([1]) == "[1]"
assert square(3) == 9 + 42
n = 0
assert square(3) == 9, "a carried function sees the notebook's globals"
assert p == Point(1, 2) and isinstance(p, Point)
assert "gen" not in globals() and "sock" not in globals() and "_private" not in globals()
print(os.environ["MIXER_TEST_WHERE"])
print(repr({REPORT}))
""".replace("{REPORT}", REPORT_VARIABLE)


COMMS_CELL = """
_cm = get_ipython().kernel.comm_manager
print([t for t in _cm.targets if "mixer" in t], len(_cm.comms))
del _cm
"""


async def test_carry_moves_values_modules_and_notebook_functions_and_reports_the_unpicklable(
    kernels: Kernels,
) -> None:
    src = await kernels.start("local")
    dst = await kernels.start("remote")
    await kernels.run("local", src, SOURCE_CELL)
    report = await kernels.carry(("local", src), ("remote", dst), budget=60, cap=1 << 30)

    assert report.outcome == PARTIAL, report
    assert report.serializer == "cloudpickle"
    carried = {c.name: c for c in report.carried}
    assert set(carried) == {"osp", "json", "socket", "n", "x", "s", "nested", "big", "square", "Point", "p"}
    assert carried["osp"].module == os.path.__name__ and carried["big"].type == "bytes"
    assert carried["big"].size > 20 * 1024 * 1024
    assert set(report.skipped) == {"gen", "sock"}
    assert "cannot be serialized" in report.skipped["gen"]
    assert report.bytes >= 20 * 1024 * 1024 and report.in_kernel and report.reason is None

    result = await kernels.run("remote", dst, CHECK_CELL)
    where, _, shown = result.stdout.partition("\n")
    assert where == "remote"
    assert "partial" in shown and "gen: cannot be serialized" in shown and "big (bytes, 20.0 MiB)" in shown

    # Nothing of the carry is left in either kernel's comm manager, nor in the source's
    # namespace; the source's values are intact.
    leftover = await kernels.run("local", src, "print(sorted(k for k in globals() if 'carry' in k.lower()"
                                 " or 'mixer' in k.lower()), n, len(big), next(gen))")
    assert leftover.stdout.strip() == "[] 42 20971520 0"
    for place, kernel in (("local", src), ("remote", dst)):
        comms = await kernels.run(place, kernel, COMMS_CELL)
        assert comms.stdout.strip() == "[] 0", place


async def test_a_variable_made_remotely_comes_back_and_the_old_report_stays_behind(kernels: Kernels) -> None:
    src = await kernels.start("local")
    remote = await kernels.start("remote")
    await kernels.run("local", src, "a = 1")
    first = await kernels.carry(("local", src), ("remote", remote), budget=60, cap=1 << 30)
    assert first.outcome == OK and first.carried_names == ["a"], first
    await kernels.run("remote", remote, "b = a + 1; import os; where = os.environ['MIXER_TEST_WHERE']")
    back = await kernels.start("local")
    second = await kernels.carry(("remote", remote), ("local", back), budget=60, cap=1 << 30)
    assert second.outcome == OK and sorted(second.carried_names) == ["a", "b", "os", "where"], second
    result = await kernels.run("local", back, f"print(a, b, where, {REPORT_VARIABLE}.source, "
                               f"sorted({REPORT_VARIABLE}.carried))")
    assert result.stdout.strip() == "1 2 remote remote ['a', 'b', 'os', 'where']"


async def test_empty_namespace_is_an_ok_carry_of_nothing(kernels: Kernels) -> None:
    src = await kernels.start("local")
    dst = await kernels.start("remote")
    report = await kernels.carry(("local", src), ("remote", dst), budget=60, cap=1 << 30)
    assert report.outcome == OK and report.carried == () and report.skipped == {} and report.in_kernel


async def test_values_over_the_cap_stay_behind_largest_first(kernels: Kernels) -> None:
    src = await kernels.start("local")
    dst = await kernels.start("remote")
    await kernels.run("local", src, "huge = b'h' * 3_000_000; a = b'a' * 600_000; b = b'b' * 500_000; c = 1")
    report = await kernels.carry(("local", src), ("remote", dst), budget=60, cap=1_000_000)
    assert report.outcome == PARTIAL, report
    assert sorted(report.carried_names) == ["b", "c"]
    assert set(report.skipped) == {"huge", "a"}
    assert all("over the size cap" in why for why in report.skipped.values())
    result = await kernels.run("remote", dst, f"print(len(b), c, 'a' in globals(), "
                               f"sorted({REPORT_VARIABLE}.skipped))")
    assert result.stdout.strip() == "500000 1 False ['a', 'huge']"


async def test_a_busy_source_is_waited_for_within_the_budget_and_not_interrupted(kernels: Kernels) -> None:
    src = await kernels.start("local")
    dst = await kernels.start("remote")
    await kernels.run("local", src, "before = 1")
    async with await kernels.connect("local", src) as user:
        sleeping = await user.send_execute("import time; time.sleep(600)")
        await user.wait_for_state(sleeping, "busy")
        started = time.monotonic()
        report = await kernels.carry(("local", src), ("remote", dst), budget=5, cap=1 << 30)
        elapsed = time.monotonic() - started
        assert report.outcome == FAILED and report.reason is not None, report
        assert report.reason.startswith("source busy"), report.reason
        assert 5 <= elapsed <= 5 + SLACK, elapsed
        # The user's cell still runs: no reply to it has come.
        with pytest.raises(asyncio.TimeoutError):
            while True:
                msg = await user.receive(1.0)
                assert msg.get("parent_header", {}).get("msg_id") != sleeping or \
                    msg["header"]["msg_type"] != "execute_reply", msg
    result = await kernels.run("remote", dst, f"print({REPORT_VARIABLE}.outcome, 'before' in globals())")
    assert result.stdout.strip() == "failed False"


BIG_NAMESPACE = "blobs = [bytes([i]) * (8 * 1024 * 1024) for i in range(30)]\n" + "\n".join(
    f"v{i} = blobs[{i}]" for i in range(30)
) + "\ndel blobs"


async def _mid_carry(kernels: Kernels, source: tuple[str, str], target: tuple[str, str],
                     fault, budget: float) -> tuple[CarryReport, float]:
    """Carry a 240 MB namespace; ``fault()`` runs when the target has the first chunk."""
    fired: list[bool] = []

    def progress(done: int, total: int) -> None:
        if not fired:
            fired.append(True)
            fault()

    started = time.monotonic()
    report = await kernels.carry(source, target, budget=budget, cap=1 << 30, progress=progress)
    assert fired, "the fault never ran"
    return report, time.monotonic() - started


@pytest.mark.parametrize("how", ["sigkill", "delete"])
async def test_target_kernel_dying_mid_carry_ends_it_with_a_report(kernels: Kernels, how: str) -> None:
    src = await kernels.start("local")
    dst = await kernels.start("remote")
    await kernels.run("local", src, BIG_NAMESPACE)
    pid = int((await kernels.run("remote", dst, "import os; print(os.getpid())")).stdout)
    deleting: list[asyncio.Task] = []

    def fault() -> None:
        if how == "sigkill":
            os.kill(pid, signal.SIGKILL)
        else:
            deleting.append(asyncio.ensure_future(kernels.api("remote").delete_kernel(dst)))

    report, elapsed = await _mid_carry(kernels, ("local", src), ("remote", dst), fault, budget=30)
    if deleting:
        assert (await deleting[0]).status == 204
    assert report.outcome in (FAILED, PARTIAL) and report.reason, report
    assert report.reason.startswith("target kernel lost"), report.reason
    assert ("restarted" if how == "sigkill" else "shut down") in report.reason, report.reason
    assert not report.in_kernel
    assert len(report.carried) < 30 and len(report.carried) + len(report.skipped) == 30
    assert elapsed <= 30 + SLACK
    # The source is as it was.
    result = await kernels.run("local", src, "print(len(v29), v29[:1])")
    assert result.stdout.strip() == "8388608 b'\\x1d'"


async def test_remote_frozen_mid_carry_ends_it_within_the_budget(kernels: Kernels) -> None:
    src = await kernels.start("local")
    dst = await kernels.start("remote")
    await kernels.run("local", src, BIG_NAMESPACE)
    remote = kernels.places["remote"].server
    try:
        report, elapsed = await _mid_carry(kernels, ("local", src), ("remote", dst),
                                           remote.process.freeze, budget=8)
    finally:
        remote.process.thaw()
    assert report.outcome in (FAILED, PARTIAL) and report.reason, report
    assert report.reason.startswith("target"), report.reason
    assert elapsed <= 8 + SLACK, elapsed
    assert len(report.carried) < 30
