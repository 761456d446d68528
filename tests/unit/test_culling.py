"""Culling per backend with fake backends: jupyter_server's policy (idle timeout,
busy, connected, dead), never from a backend that cannot answer, idle time the mixer
has seen, one shutdown and one log line per kernel, and clients told (their
websockets closed with the kernel-gone code) when a kernel is culled or disappears
from its backend. The real-process versions are in tests/e2e/test_e2e_culling.py."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import aiohttp
import pytest
from aiohttp import WSMsgType

from notebook_kernels_mixer import cli
from notebook_kernels_mixer.app import CULLER, INVENTORY
from notebook_kernels_mixer.config import BackendConfig, ConfigError
from notebook_kernels_mixer.config_file import load_files
from notebook_kernels_mixer.culling import Culler, CullPolicy, parse_activity, verdict
from notebook_kernels_mixer.relay.relay import KERNEL_GONE
from tests.unit.conftest import TOKEN, Mixer

#: A last_activity long ago: only the time the mixer has seen it counts.
LONG_AGO = "2020-01-01T00:00:00.000000Z"
TIMEOUT = 0.3


async def culling_mixer(fakes, mixer, **policy: Any) -> tuple[Any, Any, Mixer, Culler]:
    """local (no policy) and remote (idle timeout 0.3 s, checked only when a test asks)."""
    local, remote = await fakes("local"), await fakes("remote")
    cull = {"cull_idle_timeout": TIMEOUT, "cull_interval": 3600.0, **policy}
    m = await mixer([("local", local), ("remote", remote, cull)], list_timeout=0.5,
                    request_timeout=1.0)
    return local, remote, m, m.app[CULLER]


def idle_kernel(fake: Any, **fields: Any) -> dict[str, Any]:
    kernel = fake._new_kernel("python3")
    kernel["last_activity"] = LONG_AGO
    kernel.update(fields)
    return kernel


async def past_timeout(culler: Culler, backends: tuple[str, ...] = ("remote",)) -> list[str]:
    """Two checks more than the idle timeout apart: the mixer has seen the kernels
    unchanged that long. Returns what the second one culled."""
    await culler.check(backends)
    await asyncio.sleep(TIMEOUT + 0.1)
    return await culler.check(backends)


def deletes(fake: Any, kernel_id: str) -> int:
    return sum(1 for s in fake.seen if s.method == "DELETE" and s.path == f"/api/kernels/{kernel_id}")


def ws_url(m: Mixer, kernel_id: str) -> str:
    return m.url.replace("http", "ws") + f"/api/kernels/{kernel_id}/channels?session_id=s1"


async def test_an_idle_kernel_is_shut_down_through_its_backend_once_with_one_log_line(
        fakes, mixer, caplog) -> None:
    local, remote, m, culler = await culling_mixer(fakes, mixer)
    kernel = idle_kernel(remote)
    caplog.set_level(logging.INFO, logger="notebook_kernels_mixer.culling")
    assert await past_timeout(culler) == [kernel["id"]]
    assert kernel["id"] not in remote.kernels and deletes(remote, kernel["id"]) == 1
    assert m.app[INVENTORY].kernel_owner(kernel["id"]) is None  # told, as of a deletion
    assert await culler.check(["remote"]) == []
    assert deletes(remote, kernel["id"]) == 1
    lines = [r.getMessage() for r in caplog.records if "culled kernel" in r.getMessage()]
    assert len(lines) == 1 and kernel["id"] in lines[0] and "'remote'" in lines[0], lines
    status, kernels = await m.call("GET", "/api/kernels")
    assert status == 200 and kernel["id"] not in {k["id"] for k in kernels}
    status, info = await m.call("GET", "/mixer/api/status")
    remote_info = next(b for b in info["backends"] if b["name"] == "remote")
    assert remote_info["culled"] == 1 and remote_info["culling"]["idle_timeout"] == TIMEOUT


async def test_a_kernel_is_idle_for_as_long_as_the_mixer_has_seen_it_idle(fakes, mixer) -> None:
    """A last_activity of years ago (or a backend clock behind the mixer's) does not
    make a kernel the mixer has just seen look idle for years."""
    local, remote, m, culler = await culling_mixer(fakes, mixer)
    kernel = idle_kernel(remote)
    assert await culler.check(["remote"]) == []
    assert kernel["id"] in remote.kernels and deletes(remote, kernel["id"]) == 0


async def test_new_activity_restarts_the_idle_time(fakes, mixer) -> None:
    local, remote, m, culler = await culling_mixer(fakes, mixer)
    kernel = idle_kernel(remote)
    await culler.check(["remote"])
    await asyncio.sleep(TIMEOUT + 0.1)
    kernel["last_activity"] = "2020-01-01T00:00:01.000000Z"  # something ran since
    assert await culler.check(["remote"]) == []
    assert kernel["id"] in remote.kernels


@pytest.mark.parametrize("cull_busy", [False, True])
async def test_a_busy_kernel_is_culled_only_with_cull_busy(fakes, mixer, cull_busy) -> None:
    local, remote, m, culler = await culling_mixer(fakes, mixer, cull_busy=cull_busy)
    kernel = idle_kernel(remote, execution_state="busy")
    assert await past_timeout(culler) == ([kernel["id"]] if cull_busy else [])
    assert (kernel["id"] in remote.kernels) is not cull_busy


@pytest.mark.parametrize("cull_connected", [False, True])
@pytest.mark.parametrize("through", ["backend's count", "mixer's websocket"])
async def test_a_connected_kernel_is_culled_only_with_cull_connected(
        fakes, mixer, cull_connected, through) -> None:
    local, remote, m, culler = await culling_mixer(fakes, mixer, cull_connected=cull_connected)
    if through == "backend's count":
        kernel = idle_kernel(remote, connections=1)
        culled = await past_timeout(culler)
    else:  # the fake always reports 0 connections: only the relay knows
        kernel = idle_kernel(remote)
        async with m.session.ws_connect(ws_url(m, kernel["id"]), headers={"token": TOKEN}):
            culled = await past_timeout(culler)
    assert culled == ([kernel["id"]] if cull_connected else [])
    assert (kernel["id"] in remote.kernels) is not cull_connected


async def test_a_dead_kernel_is_culled_at_the_first_check(fakes, mixer) -> None:
    local, remote, m, culler = await culling_mixer(fakes, mixer)
    kernel = idle_kernel(remote, execution_state="dead", connections=2)
    assert await culler.check(["remote"]) == [kernel["id"]]


async def test_a_kernel_without_last_activity_is_not_culled_for_idleness(fakes, mixer) -> None:
    local, remote, m, culler = await culling_mixer(fakes, mixer)
    kernel = idle_kernel(remote)
    del kernel["last_activity"]
    assert await past_timeout(culler) == []
    assert kernel["id"] in remote.kernels


async def test_a_backend_without_a_policy_is_not_culled(fakes, mixer) -> None:
    local, remote, m, culler = await culling_mixer(fakes, mixer)
    kernel = idle_kernel(local)
    assert await past_timeout(culler, ("local", "remote")) == []
    assert kernel["id"] in local.kernels and deletes(local, kernel["id"]) == 0


async def remote_answers(m: Mixer) -> None:
    """Until the remote is reachable and its listings are fresh again."""
    for _ in range(100):
        status, info = await m.call("GET", "/mixer/api/status")
        remote = next(b for b in info["backends"] if b["name"] == "remote")
        if remote["reachable"] and not remote["stale_since"] and not remote["consecutive_failures"]:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"the remote does not answer again: {remote}")


async def test_nothing_is_culled_from_a_backend_that_cannot_answer_and_an_outage_is_not_idleness(
        fakes, mixer) -> None:
    local, remote, m, culler = await culling_mixer(fakes, mixer)
    kernel = idle_kernel(remote)
    await culler.check(["remote"])  # seen idle from now on
    remote.fail_status = 500  # its listing fails: the mixer serves last-known entries
    await asyncio.sleep(TIMEOUT + 0.1)
    assert await culler.check(["remote"]) == []
    status, kernels = await m.call("GET", "/api/kernels")
    assert kernel["id"] in {k["id"] for k in kernels}  # still listed, as last known
    assert kernel["id"] in remote.kernels and deletes(remote, kernel["id"]) == 0
    remote.fail_status = None
    await remote_answers(m)
    # idle for longer than the timeout, but nobody could have used it meanwhile: the
    # idle time starts again when the backend is back
    assert await culler.check(["remote"]) == []
    assert kernel["id"] in remote.kernels
    await asyncio.sleep(TIMEOUT + 0.1)
    assert await culler.check(["remote"]) == [kernel["id"]]


async def test_a_client_connected_to_a_culled_kernel_is_told_it_is_gone(fakes, mixer) -> None:
    """Its websocket is closed with the kernel-gone code (not 1000/1001, after which
    @jupyterlab/services would stop as "disconnected"); its reconnection and its
    look-up of the kernel then answer 404, which JupyterLab shows as a dead kernel."""
    local, remote, m, culler = await culling_mixer(fakes, mixer, cull_connected=True)
    kernel = idle_kernel(remote)
    async with m.session.ws_connect(ws_url(m, kernel["id"]), headers={"token": TOKEN}) as ws:
        assert await past_timeout(culler) == [kernel["id"]]
        msg = await ws.receive(timeout=5)
        assert msg.type is WSMsgType.CLOSE and msg.data == KERNEL_GONE, msg
        assert "culled" in msg.extra
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await m.session.ws_connect(ws_url(m, kernel["id"]), headers={"token": TOKEN})
    assert refused.value.status == 404
    status, _ = await m.call("GET", f"/api/kernels/{kernel['id']}")
    assert status == 404
    assert m.app[CULLER].relay.kernel_sockets("remote", kernel["id"]) == 0


async def test_the_websockets_of_a_kernel_gone_from_its_backend_are_closed(fakes, mixer) -> None:
    """Without any policy: a kernel deleted behind the mixer's back (jupyter_server
    keeps that kernel's websockets open) has its relayed websockets closed; the
    websockets of other kernels stay."""
    local, remote = await fakes("local"), await fakes("remote")
    m = await mixer([("local", local), ("remote", remote)])
    culler = m.app[CULLER]
    gone, stays = remote._new_kernel("python3"), remote._new_kernel("python3")
    async with m.session.ws_connect(ws_url(m, gone["id"]), headers={"token": TOKEN}) as ws_gone, \
            m.session.ws_connect(ws_url(m, stays["id"]), headers={"token": TOKEN}) as ws_stays:
        await culler.check()
        del remote.kernels[gone["id"]]
        await culler.check()
        msg = await ws_gone.receive(timeout=5)
        assert msg.type is WSMsgType.CLOSE and msg.data == KERNEL_GONE and "gone" in msg.extra
        await ws_stays.send_str("still there?")
        assert (await ws_stays.receive(timeout=5)).data == "still there?"


async def test_the_app_culls_in_the_background_every_interval(fakes, mixer) -> None:
    local, remote = await fakes("local"), await fakes("remote")
    await mixer([("local", local), ("remote", remote,
                  {"cull_idle_timeout": 0.2, "cull_interval": 0.1})])
    kernel = idle_kernel(remote)
    for _ in range(100):
        if kernel["id"] not in remote.kernels:
            break
        await asyncio.sleep(0.1)
    assert kernel["id"] not in remote.kernels and deletes(remote, kernel["id"]) == 1


# -- the pure parts --------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "epoch"), [
    ("2024-05-01T12:00:00.123456Z", 1714564800.123456),
    ("2024-05-01T12:00:00Z", 1714564800.0),
    ("2024-05-01T14:00:00+02:00", 1714564800.0),
    ("2024-05-01T12:00:00", 1714564800.0),  # naive: UTC, as jupyter_server means it
    ("yesterday", None), ("", None), (None, None), (12, None),
])
def test_last_activity_is_read_as_iso_8601(text, epoch) -> None:
    assert parse_activity(text) == (pytest.approx(epoch) if epoch is not None else None)


POLICY = CullPolicy(idle_timeout=10)


@pytest.mark.parametrize(("policy", "model", "idle", "connections", "culled"), [
    (POLICY, {"execution_state": "idle"}, 11, 0, True),
    (POLICY, {"execution_state": "idle"}, 10, 0, False),
    (POLICY, {"execution_state": "idle"}, None, 0, False),
    (POLICY, {"execution_state": "busy"}, 11, 0, False),
    (CullPolicy(idle_timeout=10, busy=True), {"execution_state": "busy"}, 11, 0, True),
    (POLICY, {"execution_state": "idle"}, 11, 1, False),
    (CullPolicy(idle_timeout=10, connected=True), {"execution_state": "idle"}, 11, 1, True),
    (POLICY, {"execution_state": "dead"}, None, 3, True),
    (CullPolicy(), {"execution_state": "dead"}, 1e9, 0, False),  # off
])
def test_the_policy_is_jupyter_servers(policy, model, idle, connections, culled) -> None:
    assert (verdict(policy, model, idle=idle, connections=connections) is not None) is culled


@pytest.mark.parametrize("fields", [
    {"cull_idle_timeout": -1}, {"cull_interval": 0}, {"cull_idle_timeout": "600"},
    {"cull_busy": "yes"}, {"cull_connected": 1},
])
def test_invalid_culling_values_are_refused(fields) -> None:
    with pytest.raises(ConfigError):
        BackendConfig(name="remote", display_suffix="", url="http://127.0.0.1:1", **fields)


def test_culling_is_off_by_default() -> None:
    policy = CullPolicy.of(BackendConfig(name="remote", display_suffix="", url="http://127.0.0.1:1"))
    assert not policy.enabled and policy.describe() is None
    assert (policy.interval, policy.connected, policy.busy) == (300.0, False, False)


# -- where the policy comes from: config files and flags -------------------------------------


def write_config(tmp_path, text: str):
    path = tmp_path / "mixer.toml"
    path.write_text(text)
    return path


CONFIG = """
[[backends]]
name = "local"
url = "http://localhost:9992/"
local = true
cull_idle_timeout = 60

[[backends]]
name = "remote"
url = "http://127.0.0.1:9993/"
cull_idle_timeout = "2h"
cull_interval = "5m"
cull_busy = true

[[backends]]
name = "kg"
url = "http://127.0.0.1:9994/"
"""


def policies(config) -> dict[str, tuple[float, float, bool, bool]]:
    return {b.name: (b.cull_idle_timeout, b.cull_interval, b.cull_connected, b.cull_busy)
            for b in config.backends}


def test_culling_keys_of_a_config_file_are_per_backend(tmp_path) -> None:
    settings = load_files([write_config(tmp_path, CONFIG)])
    assert {fb.config.name: (fb.config.cull_idle_timeout, fb.config.cull_interval,
                             fb.config.cull_busy) for fb in settings.backends} == {
        "local": (60.0, 300.0, False), "remote": (7200.0, 300.0, True), "kg": (0.0, 300.0, False)}


@pytest.mark.parametrize("entry", ['cull_idle_timeout = -5', 'cull_idle_timeout = true',
                                   'cull_interval = 0', 'cull_busy = "yes"',
                                   'cull_idle_timout = 10'])
def test_a_wrong_culling_key_names_the_file_and_backend(tmp_path, entry) -> None:
    path = write_config(tmp_path, f'[[backends]]\nname = "remote"\nurl = "http://h/"\n{entry}\n')
    with pytest.raises(ConfigError) as error:
        load_files([path])
    assert str(path) in str(error.value) and "'remote'" in str(error.value)


def test_culling_flags_set_every_backend_but_the_local_one(tmp_path) -> None:
    path = write_config(tmp_path, CONFIG)
    # no culling flag given: the file's values
    assert policies(cli.config_from_argv([f"--config={path}"])) == {
        "local": (60.0, 300.0, False, False), "remote": (7200.0, 300.0, False, True),
        "kg": (0.0, 300.0, False, False)}
    given = cli.config_from_argv([f"--config={path}", "--cull-idle-timeout=10m",
                                  "--cull-interval=30", "--cull-connected"])
    assert policies(given) == {
        "local": (60.0, 300.0, False, False),  # the local backend keeps its own
        "remote": (600.0, 30.0, True, True),  # the flags given win; cull_busy stays the file's
        "kg": (600.0, 30.0, True, False)}


def test_culling_flags_apply_to_the_seed_remote_and_are_off_by_default() -> None:
    seed = ["--remote-url=http://127.0.0.1:9993"]
    assert policies(cli.config_from_argv(seed)) == {
        "local": (0.0, 300.0, False, False), "remote": (0.0, 300.0, False, False)}
    assert policies(cli.config_from_argv([*seed, "--cull-idle-timeout=600", "--cull-busy"])) == {
        "local": (0.0, 300.0, False, False), "remote": (600.0, 300.0, False, True)}
    with pytest.raises(ConfigError):
        cli.config_from_argv([*seed, "--cull-interval=0"])
