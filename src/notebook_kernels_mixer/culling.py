"""Culling idle kernels per backend, the jupyter_server way, and shutting kernels down
on the mixer's own account (SPEC §7).

The policy is ``MappingKernelManager``'s: every ``cull_interval`` seconds, a kernel
idle for more than ``cull_idle_timeout`` seconds is shut down, unless it is busy (and
not ``cull_busy``) or a client is connected to it (and not ``cull_connected``); a
``dead`` kernel is shut down whenever culling is on. The difference is where the
facts come from: each backend's part of a kernels listing made through the
inventory (``last_activity``, ``execution_state``, ``connections``), and the relay's
own count of websockets it carries to the kernel.

* Stale data is no evidence of idleness: a backend whose listing fails, or is served
  from last-known entries, is not culled from; and an outage restarts its kernels'
  idle time (nobody could use them meanwhile: culling them the moment the backend is
  back would take a kernel from the user who was waiting for it).
* Idle time is the shorter of what the backend's ``last_activity`` says and how long
  the mixer has seen that same value: a backend's clock that runs behind, or a mixer
  that just started, never makes a kernel look idle longer than the mixer can tell.
  A backend that does not report ``last_activity`` is not culled for idleness.
* A kernel is shut down through its backend, once (concurrent checks and orphan
  shutdowns do not repeat it), with one log line; the inventory hears of it as of a
  deletion, and clients connected through the mixer get their websockets closed
  (``Relay.close_kernel``), which JupyterLab turns into a dead kernel.
* Independently of any policy, while clients are connected through the mixer, the
  kernels they are connected to are checked every ``watch_interval`` seconds: a
  kernel gone from its backend (deleted behind the mixer's back, a backend's own
  culler) gets its websockets closed the same way — jupyter_server keeps a deleted
  kernel's websocket open.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from notebook_kernels_mixer.backends import Backend
from notebook_kernels_mixer.config import BackendConfig, ConfigError
from notebook_kernels_mixer.errors import MixerError
from notebook_kernels_mixer.inventory import Inventory, Listing
from notebook_kernels_mixer.metrics import Metrics
from notebook_kernels_mixer.relay import Relay
from notebook_kernels_mixer.resources.backend_kernels import Model
from notebook_kernels_mixer.resources.fanout import Answer
from notebook_kernels_mixer.resources.kernels import KernelsHandlers

log = logging.getLogger(__name__)

#: jupyter_server's default ``cull_interval``.
DEFAULT_INTERVAL = 300.0


@dataclass(frozen=True)
class CullPolicy:
    """One backend's culling policy; off while ``idle_timeout`` is 0 (the default)."""

    idle_timeout: float = 0.0
    interval: float = DEFAULT_INTERVAL
    connected: bool = False
    busy: bool = False

    def __post_init__(self) -> None:
        if self.idle_timeout < 0 or self.interval <= 0:
            raise ConfigError("cull_idle_timeout must not be negative and cull_interval must "
                              "be positive (seconds)")

    @property
    def enabled(self) -> bool:
        return self.idle_timeout > 0

    @classmethod
    def of(cls, config: BackendConfig) -> CullPolicy:
        return cls(idle_timeout=config.cull_idle_timeout, interval=config.cull_interval,
                   connected=config.cull_connected, busy=config.cull_busy)

    def describe(self) -> dict[str, Any] | None:
        return asdict(self) if self.enabled else None


def parse_activity(value: object) -> float | None:
    """``last_activity`` (ISO 8601, jupyter_server's ``…T…Z``) as epoch seconds, or None."""
    if not isinstance(value, str) or not value:
        return None
    text = value[:-1] + "+00:00" if value.endswith(("Z", "z")) else value
    try:
        moment = datetime.datetime.fromisoformat(text)
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.timezone.utc)
    return moment.timestamp()


def connections_of(model: Model, relayed: int) -> int:
    """Clients connected to a kernel: the backend's count, or the mixer's if larger."""
    reported = model.get("connections")
    count = reported if isinstance(reported, int) and not isinstance(reported, bool) else 0
    return max(count, relayed)


def verdict(policy: CullPolicy, model: Model, *, idle: float | None, connections: int) -> str | None:
    """Why ``policy`` culls this kernel now (for the log line), or None."""
    if not policy.enabled:
        return None
    state = model.get("execution_state")
    if state == "dead":
        return "dead"
    if idle is None or idle <= policy.idle_timeout:
        return None
    if state == "busy" and not policy.busy:
        return None
    if connections and not policy.connected:
        return None
    return f"idle for {idle:.0f}s" if idle >= 10 else f"idle for {idle:.1f}s"


class Culler:
    """The background task of one app: culling per policy, closing the websockets of
    kernels that are gone, and the kernel clock's updates."""

    #: Seconds between two updates of the kernel clock (memory only: no request).
    tick = 5.0
    #: Seconds between two checks that kernels with relayed websockets still exist.
    watch_interval = 10.0

    def __init__(self, inventory: Inventory, kernels: KernelsHandlers, relay: Relay,
                 metrics: Metrics, policies: Mapping[str, CullPolicy]) -> None:
        self.inventory = inventory
        self.kernels = kernels
        self.relay = relay
        self.metrics = metrics
        self.policies = {name: policies.get(name, CullPolicy()) for name in inventory.names}
        # kernel id -> (backend, last_activity as listed, monotonic time first seen so)
        self._observed: dict[str, tuple[str, object, float]] = {}
        self._stopping: set[str] = set()  # kernels being shut down now
        self._failed: dict[str, str] = {}  # kernel -> backend: its shutdown failed (logged once)
        self._task: asyncio.Task[None] | None = None
        self.counts: dict[str, int] = {}  # backend -> kernels culled since the start

    @property
    def culling(self) -> dict[str, CullPolicy]:
        return {name: p for name, p in self.policies.items() if p.enabled}

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        for name, policy in self.culling.items():
            log.info("culling kernels of backend %r idle for more than %gs, checked every %gs%s%s",
                     name, policy.idle_timeout, policy.interval,
                     ", even busy ones" if policy.busy else "",
                     ", even with clients connected" if policy.connected else "")
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        now = time.monotonic()
        due = {name: now + p.interval for name, p in self.culling.items()}
        watch_due = now + self.watch_interval
        while True:
            wake = min([*due.values(), watch_due, time.monotonic() + self.tick])
            await asyncio.sleep(max(wake - time.monotonic(), 0.0))
            self.metrics.clock.update()
            now = time.monotonic()
            cull = [name for name, at in due.items() if at <= now]
            watch = now >= watch_due
            if watch:
                watch_due = now + self.watch_interval
            if cull or (watch and self.relay.kernels_connected()):
                try:
                    await self.check(cull)
                except MixerError as exc:
                    log.warning("culling: kernels listing failed: %s", exc)
                except Exception:
                    log.exception("culling: unexpected error; trying again at the next interval")
            for name in cull:
                due[name] = time.monotonic() + self.policies[name].interval

    # -- one check -------------------------------------------------------------------------
    async def check(self, cull: Iterable[str] = ()) -> list[str]:
        """One kernels listing: the kernels of the ``cull`` backends that meet their
        policy are shut down, and the websockets of kernels gone are closed. Returns
        the ids of the kernels culled."""
        cull = set(cull)
        answers = await self.inventory.listing(Listing.KERNELS, self.kernels.listing)
        culled: list[str] = []
        for answer in answers:
            name = answer.backend.name
            enabled = self.policies[name].enabled
            if not answer.ok or answer.value is None:
                if enabled:
                    self._forget(name)  # an outage is not idleness
                continue
            if enabled:
                self._observe(name, answer.value)
            await self._close_gone(answer)
            if name in cull and enabled:
                culled += await self._cull(answer)
        return culled

    def _observe(self, backend: str, models: list[Model]) -> None:
        now = time.monotonic()
        listed = set()
        for model in models:
            listed.add(model["id"])
            seen = self._observed.get(model["id"])
            activity = model.get("last_activity")
            if seen is None or seen[0] != backend or seen[1] != activity:
                self._observed[model["id"]] = (backend, activity, now)
        for kernel_id in [k for k, (b, _, _) in self._observed.items()
                          if b == backend and k not in listed]:
            del self._observed[kernel_id]
        for kernel_id in [k for k, b in self._failed.items() if b == backend and k not in listed]:
            del self._failed[kernel_id]

    def _forget(self, backend: str) -> None:
        for kernel_id in [k for k, (b, _, _) in self._observed.items() if b == backend]:
            del self._observed[kernel_id]

    def idle_seconds(self, model: Model) -> float | None:
        """How long the kernel has been idle, as far as the mixer can tell."""
        last = parse_activity(model.get("last_activity"))
        seen = self._observed.get(model["id"])
        if last is None or seen is None:
            return None
        return max(min(time.time() - last, time.monotonic() - seen[2]), 0.0)

    async def _cull(self, answer: Answer[list[Model]]) -> list[str]:
        backend = answer.backend
        policy = self.policies[backend.name]
        culled = []
        for model in answer.value or []:
            kernel_id = model["id"]
            if kernel_id in self._stopping:
                continue
            connections = connections_of(model, self.relay.kernel_sockets(backend.name, kernel_id))
            why = verdict(policy, model, idle=self.idle_seconds(model), connections=connections)
            if why is None:
                continue
            try:
                stopped = await self.shut_down(backend, kernel_id,
                                               reason=f"kernel culled by the mixer: {why}")
            except MixerError:
                continue  # logged once by shut_down; tried again at the next interval
            if stopped:
                culled.append(kernel_id)
                self.counts[backend.name] = self.counts.get(backend.name, 0) + 1
                self.metrics.culled(backend.name)
                log.warning("culled kernel %s (%s) on backend %r: %s, %s, %d connections",
                            kernel_id, model.get("name"), backend.name, why,
                            model.get("execution_state"), connections)
        return culled

    async def _close_gone(self, answer: Answer[list[Model]]) -> None:
        """Close the relayed websockets of this backend's kernels that are gone."""
        name = answer.backend.name
        listed = {m["id"] for m in answer.value or []}
        for kernel_id in list(self.relay.kernels_connected().get(name, {})):
            # not listed, and forgotten by the inventory: not a kernel started after the
            # listing began (its ownership is newer than the listing, so it is kept)
            if kernel_id in listed or kernel_id in self._stopping:
                continue
            if self.inventory.kernel_owner(kernel_id) is not None:
                continue
            closed = await self.relay.close_kernel(
                name, kernel_id, f"kernel is gone from backend {name!r}")
            if closed:
                log.warning("kernel %s is gone from backend %r; closed its %d websockets",
                            kernel_id, name, closed)

    # -- shutting a kernel down ------------------------------------------------------------
    async def shut_down(self, backend: Backend, kernel_id: str, *, reason: str) -> bool:
        """Shut ``kernel_id`` down through ``backend``, as a client's DELETE would, and
        close the websockets relayed to it. False if it was gone already (or is being
        shut down now); a failure is raised (``MixerError``), logged once per kernel."""
        if kernel_id in self._stopping:
            return False
        self._stopping.add(kernel_id)
        try:
            stopped = await self.kernels.kernels[backend.name].delete(kernel_id)
        except MixerError as exc:
            if kernel_id not in self._failed:
                self._failed[kernel_id] = backend.name
                log.warning("could not shut kernel %s down on backend %r: %s",
                            kernel_id, backend.name, exc)
            raise
        finally:
            self._stopping.discard(kernel_id)
        self._failed.pop(kernel_id, None)
        self._observed.pop(kernel_id, None)
        self.metrics.clock.ended(kernel_id, backend.name)
        self.inventory.kernel_gone(backend, kernel_id)
        await self.relay.close_kernel(backend.name, kernel_id, reason)
        return stopped
