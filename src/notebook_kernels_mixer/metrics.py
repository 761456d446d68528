"""``/mixer/metrics``: what runs where and what it costs, in the Prometheus text format.

Written with ``prometheus_client``, as jupyter_server's own ``/metrics``, but into a
registry of each app's own (never the library's global one: tests build several
mixers in one process, and a mixer embedded in a Jupyter server must not mix its
series with the server's). The endpoint is protected like every other request
(token, Host, Origin: ``front.middlewares``). Series, labelled by backend:

* ``mixer_kernels``: kernels each backend runs now (its part of a kernels listing made
  for the scrape; a backend that cannot answer contributes its last-known kernels,
  as in ``/api/kernels``, and none when it has none);
* ``mixer_kernel_websockets``: kernel websockets the mixer relays now;
* ``mixer_kernel_seconds_total``: kernel lifetimes seen since the mixer started
  (``KernelClock``): what a cloud backend has been running;
* ``mixer_kernels_culled_total``, ``mixer_orphans_shut_down_total``: kernels the
  mixer shut down by its culling policy, or as orphans (``culling``);
* ``mixer_kernel_listing_seconds`` (histogram) and
  ``mixer_kernel_listing_failures_total``: how each backend answers kernel listings,
  whoever asked (clients, status, culling);
* ``mixer_backend_up``: whether the backend counts as reachable;
* ``mixer_carries_total``, ``mixer_carry_bytes_total``, ``mixer_carry_seconds_total``:
  variable carries between kernels (``carry.service.Carries``' running totals).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, Protocol

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from notebook_kernels_mixer.backends import Backend
from notebook_kernels_mixer.inventory import Inventory, Listing
from notebook_kernels_mixer.relay import Relay
from notebook_kernels_mixer.resources.backend_kernels import BackendKernels, Model
from notebook_kernels_mixer.resources.kernels import KernelsHandlers

#: Kernel listings take milliseconds on a local server, seconds on a slow cloud.
LISTING_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class CarryTotals(Protocol):
    """What the metrics read of the carries (``carry.service.Carries``)."""

    count: int
    bytes: int
    seconds: float


class KernelClock:
    """A running total of kernel lifetimes per backend since the mixer started.

    Read from what the inventory knows (which backend owns which kernel, and when the
    mixer first saw it), so it costs no request: a kernel counts from when this mixer
    first saw it (created, listed or looked up), not before the mixer started, and
    until it is gone (deleted, culled, or missing from a complete listing). A kernel
    known only from the state file of an earlier run counts once it is seen again.
    ``update`` is called every few seconds (``culling.Culler``) and on every read, so
    the end of a kernel that went between two updates is counted to the earlier one
    (``ended`` makes it exact).
    """

    def __init__(self, inventory: Inventory, clock: Callable[[], float] = time.time) -> None:
        self.inventory = inventory
        self.clock = clock
        self.started = clock()
        self._running: dict[str, tuple[str, float]] = {}  # kernel id -> (backend, since)
        self._ended: dict[str, float] = {name: 0.0 for name in inventory.names}
        self._last = self.started

    def _known(self) -> dict[str, str]:
        seen = self.inventory.first_seen
        return {kernel_id: name for name, backend in self.inventory.backends.items()
                for kernel_id in self.inventory.kernels_of(backend) if kernel_id in seen}

    def update(self) -> None:
        now = self.clock()
        known = self._known()
        for kernel_id, backend in known.items():
            self._start(kernel_id, backend, now)
        for kernel_id in [k for k in self._running if k not in known]:
            self._end(kernel_id, self._last)
        self._last = now

    def _start(self, kernel_id: str, backend: str, now: float) -> None:
        if kernel_id not in self._running:
            since = self.inventory.first_seen.get(kernel_id, now)
            self._running[kernel_id] = (backend, min(max(since, self.started), now))

    def ended(self, kernel_id: str, backend: str) -> None:
        """``kernel_id`` on ``backend`` is gone now (the mixer shut it down; called
        while the inventory still knows it, so a kernel younger than the last update
        counts too)."""
        now = self.clock()
        if kernel_id in self.inventory.first_seen:
            self._start(kernel_id, backend, now)
        self._end(kernel_id, now)

    def _end(self, kernel_id: str, at: float) -> None:
        backend, since = self._running.pop(kernel_id, ("", at))
        if backend:
            self._ended[backend] = self._ended.get(backend, 0.0) + max(at - since, 0.0)

    def seconds(self) -> dict[str, float]:
        """backend -> kernel-seconds so far (the running kernels' included)."""
        self.update()
        out = dict(self._ended)
        for backend, since in self._running.values():
            out[backend] = out.get(backend, 0.0) + max(self._last - since, 0.0)
        return out

    def running(self) -> dict[str, int]:
        """backend -> kernels counted now."""
        self.update()
        out = {name: 0 for name in self._ended}
        for backend, _ in self._running.values():
            out[backend] = out.get(backend, 0) + 1
        return out


class Metrics:
    """The registry of one mixer, the counters its parts bump, and the live values
    read at each scrape."""

    def __init__(self, inventory: Inventory, relay: Relay,
                 carries: CarryTotals | None = None) -> None:
        self.inventory = inventory
        self.relay = relay
        self.carries = carries
        self.clock = KernelClock(inventory)
        self.registry = CollectorRegistry(auto_describe=True)
        names = list(inventory.names)
        reg = self.registry
        self.culls = Counter("mixer_kernels_culled", "Kernels shut down by the culling policy",
                             ["backend"], registry=reg)
        self.orphans = Counter("mixer_orphans_shut_down",
                               "Orphan kernels shut down from /mixer/ or `mixer status`",
                               ["backend"], registry=reg)
        self.listing_seconds = Histogram(
            "mixer_kernel_listing_seconds", "Time a backend took to answer a kernel listing",
            ["backend"], buckets=LISTING_BUCKETS, registry=reg)
        self.listing_failures = Counter(
            "mixer_kernel_listing_failures",
            "Kernel listings a backend failed (error, broken answer or timeout)",
            ["backend"], registry=reg)
        for name in names:  # every series present from the start, at 0
            for family in (self.culls, self.orphans, self.listing_seconds, self.listing_failures):
                family.labels(name)
        self._listed: dict[str, int] = {}  # backend -> kernels in the scrape's listing
        reg.register(_Live(self))

    # -- the hooks -------------------------------------------------------------------------
    def culled(self, backend: str) -> None:
        self.culls.labels(backend).inc()

    def orphan_shut_down(self, backend: str) -> None:
        self.orphans.labels(backend).inc()

    def listing_took(self, backend: str, seconds: float) -> None:
        self.listing_seconds.labels(backend).observe(seconds)

    def listing_failed(self, backend: str) -> None:
        self.listing_failures.labels(backend).inc()

    # -- the scrape ------------------------------------------------------------------------
    def listed(self, counts: Mapping[str, int]) -> None:
        """The kernels per backend of the listing made for this scrape."""
        self._listed = dict(counts)

    def exposition(self, accept: str) -> tuple[bytes, str]:
        encoder, content_type = choose_encoder(accept)
        return encoder(self.registry), content_type


class _Live(Collector):
    """The values read at scrape time (gauges, and the kernel-seconds total)."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        m = self.metrics
        kernels = GaugeMetricFamily("mixer_kernels", "Kernels each backend runs now",
                                    labels=["backend"])
        for name, count in m._listed.items():
            kernels.add_metric([name], count)
        yield kernels
        sockets = GaugeMetricFamily("mixer_kernel_websockets",
                                    "Kernel websockets the mixer relays now", labels=["backend"])
        connected = m.relay.kernels_connected()
        for name in m.inventory.names:
            sockets.add_metric([name], sum(connected.get(name, {}).values()))
        yield sockets
        seconds = CounterMetricFamily("mixer_kernel_seconds",
                                      "Kernel lifetimes seen since the mixer started",
                                      labels=["backend"])
        for name, total in m.clock.seconds().items():
            seconds.add_metric([name], round(total, 3))
        yield seconds
        up = GaugeMetricFamily("mixer_backend_up", "Whether the backend counts as reachable",
                               labels=["backend"])
        for name, backend in m.inventory.backends.items():
            up.add_metric([name], 1 if backend.health.up else 0)
        yield up
        if m.carries is not None:
            yield CounterMetricFamily("mixer_carries", "Variable carries between kernels",
                                      value=m.carries.count)
            yield CounterMetricFamily("mixer_carry_bytes", "Bytes of variables carried",
                                      value=m.carries.bytes)
            yield CounterMetricFamily("mixer_carry_seconds", "Time spent carrying variables",
                                      value=round(m.carries.seconds, 3))

    def describe(self) -> Iterable[Metric]:
        return []  # live values: nothing to check against at registration


class MeasuredKernels(BackendKernels):
    """A backend's kernels API whose listings are timed and counted (``Metrics``)."""

    def __init__(self, backend: Backend, known: Callable[[], Iterable[str]],
                 metrics: Metrics) -> None:
        super().__init__(backend, known)
        self.metrics = metrics

    async def list(self, timeout: float | None = None) -> list[Model]:
        started = time.perf_counter()
        try:
            models = await super().list(timeout)
        except (Exception, asyncio.CancelledError):
            # a cancellation here is the fan-out's timeout (or the mixer stopping)
            self.metrics.listing_failed(self.backend.name)
            raise
        self.metrics.listing_took(self.backend.name, time.perf_counter() - started)
        return models


class MetricsHandlers:
    def __init__(self, metrics: Metrics, kernels: KernelsHandlers) -> None:
        self.metrics = metrics
        self.kernels = kernels

    def routes(self) -> list[web.RouteDef]:
        return [web.get("/mixer/metrics", self.scrape)]

    async def scrape(self, request: web.Request) -> web.Response:
        answers = await self.metrics.inventory.listing(Listing.KERNELS, self.kernels.listing)
        self.metrics.listed(_counts(answers))
        body, content_type = self.metrics.exposition(request.headers.get("Accept", ""))
        return web.Response(body=body, headers={"Content-Type": content_type,
                                                "Cache-Control": "no-store"})


def _counts(answers: Sequence[Any]) -> dict[str, int]:
    return {a.backend.name: len(a.value) for a in answers if a.usable and a.value is not None}
