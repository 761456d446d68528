"""The inventory, driven directly: each event updates ownership, last-known entries
and the durable state together, so no handler has to keep them in step."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import Any

import pytest

from notebook_kernels_mixer.backends import Backend
from notebook_kernels_mixer.errors import BackendError
from notebook_kernels_mixer.inventory import Inventory, Listing
from notebook_kernels_mixer.state import MEMORY, StateError, StateStore
from tests.unit.conftest import two_backends as two
from tests.unit.inventory_fakes import stub


@pytest.fixture
async def state() -> AsyncIterator[StateStore]:
    store = await StateStore.open(MEMORY)
    yield store
    await store.close()


def inventory(state: StateStore, *names: str, window: float = 0.0) -> Inventory:
    backends = [stub(n) for n in names or ("local", "remote")]
    return Inventory(backends, default=backends[-1].name, local=backends[0].name, state=state,
                     retention=600.0, window=window)


def kernel(kid: str, name: str = "python3") -> dict[str, Any]:
    return {"id": kid, "name": name}


async def listed(inv: Inventory, kind: Listing, answers: dict[str, Any]) -> dict[str, Any]:
    """One merged listing where each backend answers ``answers[name]`` (an exception
    means it failed): backend name -> (value, stale_since)."""
    async def call(backend: Backend) -> Any:
        answer = answers[backend.name]
        if isinstance(answer, Exception):
            raise answer
        return answer

    return {a.backend.name: (a.value, a.stale_since) for a in await inv.listing(kind, call)}


async def test_a_created_kernel_is_owned_and_stands_in_while_its_backend_fails(state) -> None:
    inv = inventory(state)
    local, remote = inv.backends["local"], inv.backends["remote"]
    await listed(inv, Listing.KERNELS, {"local": [], "remote": [kernel("old")]})
    inv.kernel_created(remote, kernel("new", "remote-python3"))
    assert inv.kernel_owner("new") is remote and state.kernels["new"] == "remote"
    got = await listed(inv, Listing.KERNELS, {"local": [], "remote": BackendError("remote", "down")})
    value, since = got["remote"]
    assert [k["id"] for k in value] == ["old", "new"] and since is not None
    assert list(inv.stale()) == ["remote"] and inv.stale()["remote"]["kernels"] >= since
    assert inv.kernel_owner("new") is remote and inv.kernels_of(local) == []


async def test_a_deleted_kernel_leaves_ownership_state_and_last_known_entries(state) -> None:
    inv = inventory(state)
    remote = inv.backends["remote"]
    await listed(inv, Listing.KERNELS, {"local": [], "remote": [kernel("k1"), kernel("k2")]})
    inv.kernels_listed(remote, ["k1", "k2"], started=time.monotonic())
    inv.kernel_gone(remote, "k1")
    assert inv.kernel_owner("k1") is None and "k1" not in state.kernels
    got = await listed(inv, Listing.KERNELS, {"local": [], "remote": BackendError("remote", "down")})
    assert [k["id"] for k in got["remote"][0]] == ["k2"]


async def test_a_complete_listing_prunes_what_the_backend_no_longer_has(state) -> None:
    inv = inventory(state)
    remote = inv.backends["remote"]
    inv.kernels_listed(remote, ["a", "b"], started=time.monotonic())
    began = time.monotonic()
    inv.kernel_created(remote, kernel("c"))  # after that listing began: not in it
    assert inv.kernels_listed(remote, ["a"], started=began) == {"a"}
    assert set(inv.kernels_of(remote)) == {"a", "c"}  # b is gone, c is newer than the listing
    inv.kernels_listed(remote, ["a"], started=time.monotonic())
    assert inv.kernels_of(remote) == ["a"] and set(state.kernels) == {"a"}


async def test_a_shared_kernel_id_stays_with_the_backend_that_created_it(state) -> None:
    inv = inventory(state)
    local, remote = inv.backends["local"], inv.backends["remote"]
    inv.kernel_created(remote, kernel("same"))
    assert inv.kernels_listed(local, ["same", "other"], started=time.monotonic()) == {"other"}
    assert inv.kernel_owner("same") is remote
    assert inv.kernel_seen(local, "same") is False


async def test_a_moved_session_keeps_the_clients_id_durably_and_leaves_the_old_backend(state) -> None:
    inv = inventory(state)
    local, remote = inv.backends["local"], inv.backends["remote"]
    old = {"id": "s1", "kernel": kernel("k-local")}
    inv.session_changed(local, "s1", old, {**old, "kernel": kernel("k-local", "local-python3")})
    new = {"id": "s9", "kernel": kernel("k-remote")}
    translated = {**new, "id": "s1", "kernel": kernel("k-remote", "remote-python3")}
    await inv.session_moved("s1", (local, "s1"), remote, new, translated)
    inv.kernel_gone(local, "k-local")
    assert inv.session("s1") == (remote, "s9") and state.unflushed == 0
    assert state.sessions["s1"] == ("remote", "s9")
    assert inv.client_session_id(remote, "s9") == "s1"
    assert inv.kernel_owner("k-remote") is remote and inv.kernel_owner("k-local") is None
    failing = BackendError("x", "down")
    sessions = await listed(inv, Listing.SESSIONS, {"local": failing, "remote": failing})
    assert sessions["local"][0] == [] and [s["id"] for s in sessions["remote"][0]] == ["s1"]
    kernels = await listed(inv, Listing.KERNELS, {"local": failing, "remote": failing})
    assert kernels["local"][0] == [] and [k["id"] for k in kernels["remote"][0]] == ["k-remote"]


async def test_a_listing_older_than_a_move_does_not_undo_it(state) -> None:
    inv = inventory(state)
    local, remote = inv.backends["local"], inv.backends["remote"]
    started = time.monotonic()
    inv.session_seen(local, "s1", {"id": "s1"})
    await inv.session_moved("s1", (local, "s1"), remote, {"id": "s9"}, {"id": "s1"})
    assert inv.sessions_listed(local, [{"id": "s1"}], started=started) == []
    assert inv.session("s1") == (remote, "s9")


async def test_a_move_the_state_cannot_record_is_undone(state, monkeypatch) -> None:
    inv = inventory(state)
    local, remote = inv.backends["local"], inv.backends["remote"]
    inv.session_seen(local, "s1", {"id": "s1"})

    async def refused(timeout: float | None = None) -> None:
        raise StateError("disk full")

    monkeypatch.setattr(state, "flush", refused)
    new = {"id": "s9", "kernel": kernel("k-remote")}
    with pytest.raises(StateError):
        await inv.session_moved("s1", (local, "s1"), remote, new, {**new, "id": "s1"})
    assert inv.session("s1") == (local, "s1")
    assert inv.kernel_owner("k-remote") is None
    assert inv.client_session_id(remote, "s9") == "s9"


async def test_any_change_ends_the_listing_window_and_a_shared_listing(state) -> None:
    inv = inventory(state, window=60.0)
    remote = inv.backends["remote"]
    calls = []

    async def call(backend: Backend) -> list[Any]:
        calls.append(backend.name)
        return []

    await inv.listing(Listing.KERNELS, call)
    await inv.listing(Listing.KERNELS, call)
    assert len(calls) == 2  # the second came from the window
    await inv.listing(Listing.SESSIONS, call)
    assert len(calls) == 4  # kinds do not share answers
    inv.kernel_created(remote, kernel("k"))
    await inv.listing(Listing.KERNELS, call)
    assert len(calls) == 6
    inv.kernel_changed()
    await inv.listing(Listing.KERNELS, call)
    assert len(calls) == 8


async def test_a_deleted_session_is_forgotten_on_its_backend(state) -> None:
    inv = inventory(state)
    remote = inv.backends["remote"]
    model = {"id": "s1", "kernel": kernel("k")}
    inv.session_changed(remote, "s1", model, model)
    inv.session_deleted(remote, "s1")
    assert inv.session("s1") is None and "s1" not in state.sessions
    got = await listed(inv, Listing.SESSIONS, {"local": [], "remote": BackendError("r", "down")})
    assert got["remote"][0] == []
    assert inv.sizes()["sessions"] == 0


async def test_a_kernel_id_on_two_backends_belongs_to_its_creator(fakes, mixer, caplog) -> None:
    local, remote, m = await two(fakes, mixer)
    status, k = await m.call("POST", "/api/kernels", json={"name": "remote-python3"})
    assert status == 201
    # the same id appears on the local backend (a chosen KERNEL_ID, a buggy backend)
    local.kernels[k["id"]] = {**remote.kernels[k["id"]]}
    with caplog.at_level(logging.WARNING):
        for _ in range(2):
            status, listed = await m.call("GET", "/api/kernels")
            assert [x["name"] for x in listed if x["id"] == k["id"]] == ["remote-python3"]
    assert sum("exists on backends" in r.getMessage() for r in caplog.records) == 1
    # a client may not choose an id the mixer already routes
    status, err = await m.call("POST", "/api/kernels", json={
        "name": "local-python3", "env": {"KERNEL_ID": k["id"]}})
    assert status == 409 and "already in use" in err["message"]
    status, _ = await m.call("DELETE", f"/api/kernels/{k['id']}")
    assert status == 204 and k["id"] not in remote.kernels and k["id"] in local.kernels


async def test_kernels_known_from_the_state_file_are_confirmed_by_a_listing(state) -> None:
    """After a restart the state file says who owns a kernel; a listing that has it
    confirms it (not pruned by a later listing that began before) and starts its age."""
    state.put_kernel("k", "remote")
    inv = inventory(state)
    remote = inv.backends["remote"]
    began = time.monotonic()
    assert inv.kernels_listed(remote, ["k"], started=began) == {"k"}
    assert "k" in inv.first_seen
    inv.kernels_listed(remote, [], started=began)  # an older listing without it
    assert inv.kernel_owner("k") is remote
    inv.kernels_listed(remote, [], started=time.monotonic())
    assert inv.kernel_owner("k") is None and "k" not in inv.first_seen


class _CountingReads(Mapping[str, str]):
    """A mapping that counts every read of an entry (or a pass over them)."""

    def __init__(self, inner: Mapping[str, str]) -> None:
        self.inner, self.reads = inner, 0

    def __getitem__(self, key: str) -> str:
        self.reads += 1
        return self.inner[key]

    def __iter__(self) -> Iterator[str]:
        self.reads += 1
        return iter(self.inner)

    def __len__(self) -> int:
        return len(self.inner)


async def test_a_listing_of_known_kernels_costs_no_per_kernel_ownership_check(
    state, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Incremental bookkeeping: when each backend lists the kernels it is known to own,
    the state is neither read entry by entry nor scanned, nor written; what is new or
    gone is still learnt and forgotten."""
    inv = inventory(state)
    local, remote = inv.backends["local"], inv.backends["remote"]
    ids = {"local": [f"l{i}" for i in range(100)], "remote": [f"r{i}" for i in range(100)]}
    for backend in (local, remote):
        inv.kernels_listed(backend, ids[backend.name], started=time.monotonic())
    counting = _CountingReads(state.kernels)
    monkeypatch.setattr(state, "kernels", counting)
    writes: list[object] = []
    monkeypatch.setattr(state, "put", lambda row: writes.append(row))
    monkeypatch.setattr(state, "drop", lambda kind, key: writes.append(key))
    for backend in (local, remote):
        assert inv.kernels_listed(backend, ids[backend.name], started=time.monotonic()) \
            == set(ids[backend.name])
    assert counting.reads == 0 and writes == []
    monkeypatch.undo()
    began = time.monotonic()
    assert inv.kernels_listed(remote, [*ids["remote"][1:], "r-new"], started=began) \
        == {*ids["remote"][1:], "r-new"}
    assert inv.kernel_owner("r0") is None and inv.kernel_owner("r-new") is remote
    assert set(inv.kernels_of(remote)) == {*ids["remote"][1:], "r-new"}
    assert len(inv.kernels_of(local)) == 100


async def test_a_kernel_confirmed_by_a_listing_outlives_older_listings_without_it(state) -> None:
    """A listing that began before another one confirmed a kernel does not prune it,
    nor does a second such listing after the first has replaced the confirming one."""
    inv = inventory(state)
    remote = inv.backends["remote"]
    inv.kernels_listed(remote, ["k", "other"], started=time.monotonic())
    began = time.monotonic()
    await asyncio.sleep(0.001)  # ticks apart: the next listing confirms after ``began``
    inv.kernels_listed(remote, ["k", "other"], started=time.monotonic())
    assert inv.kernels_listed(remote, ["other"], started=began) == {"other"}
    assert inv.kernel_owner("k") is remote
    assert inv.kernels_listed(remote, ["other"], started=began) == {"other"}
    assert inv.kernel_owner("k") is remote
    inv.kernels_listed(remote, ["other"], started=time.monotonic())
    assert inv.kernel_owner("k") is None and inv.kernels_of(remote) == ["other"]
    assert inv.sizes()["timestamps"] == 1
