"""``/mixer/api/status`` and the ``/mixer/`` page, with fakes."""

from __future__ import annotations

from tests.unit.conftest import Mixer
from tests.unit.conftest import two_backends as two


async def remote_status(m: Mixer) -> dict:
    status, info = await m.call("GET", "/mixer/api/status")
    assert status == 200
    return next(b for b in info["backends"] if b["name"] == "remote")


async def test_status_lists_kernels_nobody_uses_as_orphans(fakes, mixer) -> None:
    local, remote, m = await two(fakes, mixer)
    status, lone = await m.call("POST", "/api/kernels", json={"name": "remote-python3"})
    status, s = await m.call("POST", "/api/sessions",
                             json={"path": "a.ipynb", "kernel": {"name": "remote-python3"}})
    connected = remote._new_kernel("python3")
    connected["connections"] = 1
    info = await remote_status(m)
    assert [o["id"] for o in info["orphans"]] == [lone["id"]]
    assert info["orphans"][0]["seen_for_seconds"] is not None
    status, page = await m.call("GET", "/mixer/")
    assert lone["id"] in page.decode() and s["kernel"]["id"] not in page.decode()
