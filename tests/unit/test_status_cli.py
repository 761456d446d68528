"""``mixer status --kernels`` and ``mixer status --shutdown-orphans [BACKEND]`` against
an in-process mixer with fake backends (the CLI's blocking HTTP runs in a thread)."""

from __future__ import annotations

import asyncio
import contextlib
import io

from notebook_kernels_mixer import status_cli
from tests.unit.conftest import TOKEN, Mixer
from tests.unit.conftest import two_backends as two


async def run(m: Mixer, *args: str, token: str = TOKEN) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()

    def call() -> int:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            return status_cli.main(["--url", m.url, "--token", token, *args])

    code = await asyncio.to_thread(call)
    return code, out.getvalue(), err.getvalue()


async def orphans(fakes, mixer):
    local, remote, m = await two(fakes, mixer)
    lone = remote._new_kernel("python3")
    other = remote._new_kernel("python3")
    used = remote._new_kernel("python3")
    used["connections"] = 1
    local_lone = local._new_kernel("python3")
    return local, remote, m, (lone["id"], other["id"]), used["id"], local_lone["id"]


async def test_shutdown_orphans_of_one_backend_stops_exactly_those_and_says_so(fakes, mixer) -> None:
    local, remote, m, lone, used, local_lone = await orphans(fakes, mixer)
    code, out, err = await run(m, "--shutdown-orphans", "remote")
    assert code == 0, err
    assert "remote: stopped 2 orphan kernels" in out and all(k in out for k in lone)
    assert set(remote.kernels) == {used} and set(local.kernels) == {local_lone}
    code, out, err = await run(m, "--shutdown-orphans", "remote")
    assert code == 0 and "remote: stopped 0 orphan kernels" in out


async def test_shutdown_orphans_without_a_backend_stops_every_backends(fakes, mixer) -> None:
    local, remote, m, lone, used, local_lone = await orphans(fakes, mixer)
    code, out, err = await run(m, "--shutdown-orphans")
    assert code == 0, err
    assert "local: stopped 1 orphan kernel: " + local_lone in out
    assert set(remote.kernels) == {used} and not local.kernels


async def test_an_unknown_backend_exits_2_with_a_clear_message_and_stops_nothing(fakes, mixer) -> None:
    local, remote, m, lone, used, local_lone = await orphans(fakes, mixer)
    code, out, err = await run(m, "--shutdown-orphans", "nope")
    assert code == 2 and out == ""
    assert "no backend named 'nope'" in err and "local, remote" in err
    assert len(remote.kernels) == 3 and len(local.kernels) == 1


async def test_a_backend_that_cannot_say_exits_1_and_stops_nothing(fakes, mixer) -> None:
    local, remote, m, lone, used, local_lone = await orphans(fakes, mixer)
    await m.call("GET", "/api/kernels")
    remote.fail_status = 500
    code, out, err = await run(m, "--shutdown-orphans", "remote")
    assert code == 1 and "cannot say now" in out
    assert len(remote.kernels) == 3


async def test_a_wrong_token_exits_2(fakes, mixer) -> None:
    local, remote, m, lone, used, local_lone = await orphans(fakes, mixer)
    code, out, err = await run(m, "--shutdown-orphans", "remote", token="wrong")
    assert code == 2 and "HTTP 403" in err
    assert len(remote.kernels) == 3


async def test_kernels_lists_every_kernel_with_backend_spec_state_connections_age_activity(
        fakes, mixer) -> None:
    local, remote, m, lone, used, local_lone = await orphans(fakes, mixer)
    code, out, err = await run(m, "--kernels")
    assert code == 0, err
    header, *rows = out.splitlines()
    assert header.split() == ["BACKEND", "KERNEL", "SPEC", "STATE", "CONNECTIONS", "AGE", "LAST",
                              "ACTIVITY", "ORPHAN"]
    by_id = {row.split()[1]: row.split() for row in rows}
    assert set(by_id) == {*lone, used, local_lone}
    assert by_id[used][:5] == ["remote", used, "remote-python3", "idle", "1"]
    assert by_id[used][-1] == "no" and by_id[local_lone][-1] == "yes"
    assert by_id[local_lone][0] == "local" and by_id[local_lone][6:8] == ["0s", "ago"]


def test_kernel_lines_say_when_a_backend_cannot_list() -> None:
    lines = status_cli.kernel_lines({"kernels": [], "unavailable": {"remote": "timed out"}})
    assert lines == ["no kernels", "remote: cannot list its kernels now: timed out"]


async def test_mixer_kernels_is_mixer_status_kernels(fakes, mixer) -> None:
    from notebook_kernels_mixer import cli

    local, remote, m, lone, used, local_lone = await orphans(fakes, mixer)
    out = io.StringIO()

    def call() -> int:
        with contextlib.redirect_stdout(out):
            return cli.main(["kernels", "--url", m.url, "--token", TOKEN])

    assert await asyncio.to_thread(call) == 0
    assert out.getvalue().startswith("BACKEND") and used in out.getvalue()


async def test_the_status_table_shows_kernels_and_kernel_hours_per_backend(fakes, mixer) -> None:
    local, remote, m = await two(fakes, mixer)
    status, k = await m.call("POST", "/api/kernels", json={"name": "remote-python3"})
    await asyncio.sleep(0.2)
    code, out, err = await run(m)
    assert code == 0, err
    lines = out.splitlines()
    header = next(line.split() for line in lines if line.startswith("BACKEND"))
    rows = {line.split()[0]: line.split() for line in lines if line.startswith(("local", "remote"))}
    column = header.index("KERNEL-HOURS")
    assert header[column - 1] == "KERNELS"
    assert rows["remote"][column - 1] == "1" and rows["local"][column - 1] == "0"
    assert rows["remote"][column] == "0.00" and rows["local"][column] == "0.00"
