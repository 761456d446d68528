"""``/mixer/metrics`` with fakes, read back with prometheus_client's own parser; and
the kernel clock (kernel lifetimes per backend) with a clock the test moves."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import prometheus_client
import pytest
from prometheus_client.parser import text_string_to_metric_families

from notebook_kernels_mixer.app import CULLER, INVENTORY, RELAY
from notebook_kernels_mixer.metrics import KernelClock, Metrics
from tests.unit.conftest import TOKEN, Mixer
from tests.unit.conftest import two_backends as two

Samples = dict[tuple[str, str], float]  # (sample name, backend) -> value


async def scrape(m: Mixer, **headers: str) -> Samples:
    async with m.session.get(m.url + "/mixer/metrics", headers={"token": TOKEN, **headers}) as r:
        assert r.status == 200, await r.text()
        assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = await r.text()
    return {
        (s.name, s.labels.get("backend", s.labels.get("outcome", ""))): s.value
        for family in text_string_to_metric_families(text) for s in family.samples
        if not s.name.endswith("_created")
    }


def ws_url(m: Mixer, kernel_id: str) -> str:
    return m.url.replace("http", "ws") + f"/api/kernels/{kernel_id}/channels?session_id=s1"


async def test_metrics_follow_a_known_sequence_of_creates_culls_and_deletes(fakes, mixer) -> None:
    local, remote = await fakes("local"), await fakes("remote")
    m = await mixer([("local", local), ("remote", remote,
                                        {"cull_idle_timeout": 0.2, "cull_interval": 3600.0})])
    before = await scrape(m)
    assert before[("mixer_kernels", "remote")] == 0 and before[("mixer_kernels", "local")] == 0
    assert before[("mixer_kernels_culled_total", "remote")] == 0
    created = []
    for name in ("remote-python3", "remote-python3", "remote-python3", "local-python3"):
        status, k = await m.call("POST", "/api/kernels", json={"name": name})
        assert status == 201
        created.append(k["id"])
    status, _ = await m.call("DELETE", f"/api/kernels/{created[0]}")  # a delete
    assert status == 204
    status, _ = await m.call("POST", "/mixer/api/orphans/shutdown",  # an orphan shut down
                             json={"backend": "remote", "ids": [created[1]]})
    assert status == 200
    remote.kernels[created[2]]["last_activity"] = "2020-01-01T00:00:00.000000Z"
    culler = m.app[CULLER]
    async with m.session.ws_connect(ws_url(m, created[3]), headers={"token": TOKEN}):
        await culler.check(["remote"])
        await asyncio.sleep(0.3)
        assert await culler.check(["remote"]) == [created[2]]  # a cull
        during = await scrape(m)
    after = await scrape(m)
    assert during[("mixer_kernel_websockets", "local")] == 1
    assert during[("mixer_kernel_websockets", "remote")] == 0
    assert after[("mixer_kernel_websockets", "local")] == 0
    assert after[("mixer_kernels", "remote")] == 0 and after[("mixer_kernels", "local")] == 1
    assert after[("mixer_kernels_culled_total", "remote")] == 1
    assert after[("mixer_kernels_culled_total", "local")] == 0
    assert after[("mixer_orphans_shut_down_total", "remote")] == 1
    # three remote kernels lived a while: the one culled at least the 0.3 s it waited
    assert after[("mixer_kernel_seconds_total", "remote")] >= 0.3
    assert after[("mixer_kernel_seconds_total", "local")] > 0
    assert after[("mixer_kernel_listing_seconds_count", "remote")] >= 4  # scrapes and checks
    assert after[("mixer_kernel_listing_failures_total", "remote")] == 0
    assert after[("mixer_backend_up", "remote")] == 1
    assert after[("mixer_carries_total", "")] == 0  # no carry


async def test_failed_listings_are_counted_per_backend(fakes, mixer) -> None:
    local, remote, m = await two(fakes, mixer)
    await scrape(m)
    remote.fail_status = 500
    failed = await scrape(m)
    assert failed[("mixer_kernel_listing_failures_total", "remote")] >= 1
    assert failed[("mixer_kernel_listing_failures_total", "local")] == 0
    # its last-known kernels still count, as in /api/kernels
    assert failed[("mixer_kernels", "remote")] == 0


@pytest.mark.parametrize("headers", [{"X-Nothing": "1"}, {"token": "wrong"},
                                     {"token": TOKEN, "Origin": "http://evil.example"}])
async def test_metrics_need_the_token_like_every_request(fakes, mixer, headers) -> None:
    local, remote, m = await two(fakes, mixer)
    async with m.session.get(m.url + "/mixer/metrics", headers=headers) as r:
        assert r.status == 403


async def test_openmetrics_is_served_to_who_asks_for_it(fakes, mixer) -> None:
    local, remote, m = await two(fakes, mixer)
    accept = "application/openmetrics-text; version=1.0.0"
    async with m.session.get(m.url + "/mixer/metrics",
                             headers={"token": TOKEN, "Accept": accept}) as r:
        assert r.status == 200 and r.headers["Content-Type"].startswith("application/openmetrics-text")
        assert (await r.text()).endswith("# EOF\n")


async def test_each_mixer_has_a_registry_of_its_own(fakes, mixer) -> None:
    local, remote, one = await two(fakes, mixer)
    other = await mixer([("local", local), ("remote", remote)])
    status, _ = await one.call("POST", "/mixer/api/orphans/shutdown", json={"backend": "remote"})
    remote._new_kernel("python3")
    await one.call("POST", "/mixer/api/orphans/shutdown", json={"backend": "remote"})
    assert (await scrape(one))[("mixer_orphans_shut_down_total", "remote")] == 1
    assert (await scrape(other))[("mixer_orphans_shut_down_total", "remote")] == 0
    global_names = {m.name for m in prometheus_client.REGISTRY.collect()}
    assert not {n for n in global_names if n.startswith("mixer_")}


# -- the kernel clock --------------------------------------------------------------------------


@dataclass
class Known:
    """What the clock reads of an inventory: who owns which kernel, first seen when."""

    names: tuple[str, ...] = ("local", "remote")
    owners: dict[str, str] = field(default_factory=dict)
    first_seen: dict[str, float] = field(default_factory=dict)

    @property
    def backends(self) -> dict[str, str]:
        return {n: n for n in self.names}

    def kernels_of(self, backend: str) -> list[str]:
        return [k for k, b in self.owners.items() if b == backend]


def test_kernel_seconds_are_lifetimes_seen_since_the_mixer_started() -> None:
    now = [1000.0]
    known = Known()
    known.owners["old"] = "remote"
    known.first_seen["old"] = 400.0  # running before the mixer started: counts from its start
    clock = KernelClock(known, clock=lambda: now[0])  # type: ignore[arg-type]
    now[0] = 1010.0
    known.owners["new"], known.first_seen["new"] = "remote", 1004.0
    known.owners["loc"], known.first_seen["loc"] = "local", 1005.0
    known.owners["unseen"] = "remote"  # from an earlier run's state file, not seen yet
    assert clock.seconds() == {"local": 5.0, "remote": 10.0 + 6.0}
    assert clock.running() == {"local": 1, "remote": 2}
    now[0] = 1020.0
    del known.owners["old"], known.first_seen["old"]  # gone since the last look
    clock.ended("new", "remote")  # shut down by the mixer: exact
    del known.owners["new"], known.first_seen["new"]
    # old counted to the last look (1010), new to now (1020), both kept once gone
    assert clock.seconds() == {"local": 15.0, "remote": 10.0 + 16.0}
    now[0] = 1100.0
    assert clock.seconds() == {"local": 95.0, "remote": 26.0}
    known.owners["brief"], known.first_seen["brief"] = "remote", 1101.0
    now[0] = 1103.0
    clock.ended("brief", "remote")  # born and shut down between two looks: counted too
    del known.owners["brief"], known.first_seen["brief"]
    assert clock.seconds()["remote"] == 28.0


@dataclass
class Carried:
    count: int = 0
    bytes: int = 0
    seconds: float = 0.0


async def test_carries_are_counted_from_the_carries_totals(fakes, mixer) -> None:
    local, remote, m = await two(fakes, mixer)
    carried = Carried()
    metrics = Metrics(m.app[INVENTORY], m.app[RELAY], carried)
    carried.count, carried.bytes, carried.seconds = 2, 1_000_000, 1.5
    body, content_type = metrics.exposition("")
    samples = {s.name: s.value for f in text_string_to_metric_families(body.decode())
               for s in f.samples}
    assert samples["mixer_carries_total"] == 2
    assert samples["mixer_carry_bytes_total"] == 1_000_000
    assert samples["mixer_carry_seconds_total"] == 1.5
