"""What the inventory's listings retain is bounded: a backend's last-known answer to a
listing keeps at most ``Listings.max_retained`` entries, from its listings and from
what the mixer itself created alike."""

from __future__ import annotations

import asyncio

import pytest

from notebook_kernels_mixer.app import INVENTORY
from notebook_kernels_mixer.inventory import Listing
from notebook_kernels_mixer.inventory.listings import Listings
from tests.unit.conftest import Mixer

BOUND = 5


@pytest.fixture(autouse=True)
def small_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Listings, "max_retained", BOUND)


async def kernel_ids(m: Mixer) -> list[str]:
    status, kernels = await m.call("GET", "/api/kernels")
    assert status == 200
    return sorted(k["id"] for k in kernels)


async def test_a_listing_over_the_bound_is_served_but_not_kept(fakes, mixer) -> None:
    local, remote = await fakes("local"), await fakes("remote")
    m: Mixer = await mixer([("local", local), ("remote", remote)], list_timeout=0.3)
    for _ in range(BOUND):
        remote._new_kernel("python3")
    assert len(await kernel_ids(m)) == BOUND
    remote.fail_status = 500
    assert len(await kernel_ids(m)) == BOUND  # within the bound: last-known entries stand in
    remote.fail_status = None
    remote._new_kernel("python3")
    for _ in range(100):  # until its health probe has it answering again
        if len(await kernel_ids(m)) == BOUND + 1:
            break
        await asyncio.sleep(0.1)
    assert len(await kernel_ids(m)) == BOUND + 1  # answered now: served whole
    remote.fail_status = 500
    assert await kernel_ids(m) == []  # but not kept: nothing stands in for the remote
    last = m.app[INVENTORY].listings._last
    assert all(len(value) <= BOUND for _, value in last.values())


async def test_amend_does_not_grow_last_known_entries_past_the_bound(fakes, mixer) -> None:
    local, remote = await fakes("local"), await fakes("remote")
    m: Mixer = await mixer([("local", local), ("remote", remote)])
    assert await kernel_ids(m) == []
    for _ in range(BOUND + 3):  # each start is amended into the last-known entries
        status, _ = await m.call("POST", "/api/kernels", json={"name": "remote-python3"})
        assert status == 201
    last = m.app[INVENTORY].listings._last
    assert len(last[(Listing.KERNELS, "remote")][1]) == BOUND
