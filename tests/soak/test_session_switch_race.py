"""A session switched between backends while clients poll the merged session list.

Found by the soak: JupyterLab polls ``GET /api/sessions`` while the user changes a
notebook's kernel (``PATCH /api/sessions/{id}`` to a spec of the other backend).
The move must hold whatever the listings that run meanwhile: afterwards the
session answers under the id the client knows, on the new backend, and nothing
is left orphaned on either backend: no session, and no kernel (with or without one).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from tests.e2e.support.stack import Stack

pytestmark = pytest.mark.soak

MOVES = 6
LISTERS = 3


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with Stack(Path(tmp_path_factory.mktemp("race"))) as s:
        yield s


async def test_switch_holds_while_sessions_are_listed(stack: Stack) -> None:
    headers = stack.mixer_headers()
    async with aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=60), cookie_jar=aiohttp.DummyCookieJar(), trust_env=False
    ) as http:

        async def call(method: str, path: str, body: object = None) -> tuple[int, object]:
            data = json.dumps(body) if body is not None else None
            async with http.request(method, stack.mixer.url + path, headers=headers, data=data) as r:
                text = await r.text()
                return r.status, (json.loads(text) if text else None)

        async def backend_ids(kind: str) -> dict[str, set[str]]:
            out = {}
            for name, server in (("local", stack.local), ("remote", stack.remote)):
                async with http.get(server.url + f"/api/{kind}", headers=server.auth()) as r:
                    out[name] = {item["id"] for item in await r.json()}
            return out

        kernels_before = await backend_ids("kernels")
        broken = []
        for i in range(MOVES):
            body = {"path": f"race-{i}.ipynb", "type": "notebook", "name": "race",
                    "kernel": {"name": "local-python3"}}  # fmt: skip
            status, created = await call("POST", "/api/sessions", body)
            assert status == 201, created
            sid = created["id"]
            stop = asyncio.Event()

            async def lister(stop: asyncio.Event = stop) -> None:
                for _ in range(1000):  # bounded; stopped right after the move
                    if stop.is_set():
                        return
                    await call("GET", "/api/sessions")

            listers = [asyncio.create_task(lister()) for _ in range(LISTERS)]
            try:
                status, moved = await call(
                    "PATCH", f"/api/sessions/{sid}", {"kernel": {"name": "remote-python3"}}
                )
                assert status == 200, moved
                await asyncio.sleep(0.3)
            finally:
                stop.set()
                await asyncio.gather(*listers)
            status, after = await call("GET", f"/api/sessions/{sid}")
            if status != 200 or after["kernel"]["name"] != "remote-python3":
                broken.append(
                    f"move {i}: PATCH answered 200, then GET /api/sessions/{sid} -> {status} {after}"
                )
            await call("DELETE", f"/api/sessions/{sid}")

        # whatever happened, nothing may be left on the backends: no session, and no
        # kernel the moves started (one left without its session is listed only there)
        orphans: dict[str, list[str]] = {}
        sessions, kernels = await backend_ids("sessions"), await backend_ids("kernels")
        for name, server in (("local", stack.local), ("remote", stack.remote)):
            left_kernels = kernels[name] - kernels_before[name]
            for kind, ids in (("session", sessions[name]), ("kernel", left_kernels)):
                orphans.update({f"{name} {kind}s": sorted(ids)} if ids else {})
                for ident in ids:  # clean up for the next test
                    async with http.delete(server.url + f"/api/{kind}s/{ident}", headers=server.auth()):
                        pass
        assert not broken and not orphans, (
            f"{len(broken)}/{MOVES} moves undone by concurrent listings; orphans {orphans}\n"
            + "\n".join(broken)
            + f"\n(mixer log: {stack.mixer.process.log_path})"
        )
