"""Builds the aiohttp application from a MixerConfig and runs it.

Routes: the status API, the three merged resources (kernelspecs, kernels, sessions),
then a catch-all that proxies the rest to the local Jupyter server. Every piece is
built here, once, from the frozen config, and handed what it needs.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import logging
import signal
import sys

from aiohttp import web

try:
    import resource
except ImportError:  # not on Windows, where the C runtime's limit is another matter
    resource = None  # type: ignore[assignment]

from notebook_kernels_mixer.backends import Backend, build_backend
from notebook_kernels_mixer.carry.service import Carries, CarryHandlers
from notebook_kernels_mixer.config import MixerConfig
from notebook_kernels_mixer.culling import Culler, CullPolicy
from notebook_kernels_mixer.descriptors import reserve_for
from notebook_kernels_mixer.front.middlewares import access_logger, errors, protector
from notebook_kernels_mixer.inventory import Inventory
from notebook_kernels_mixer.inventory.kept import KeptRecords
from notebook_kernels_mixer.listener import GuardedSite
from notebook_kernels_mixer.metrics import MeasuredKernels, Metrics, MetricsHandlers
from notebook_kernels_mixer.proxy import LocalProxy
from notebook_kernels_mixer.relay import Relay
from notebook_kernels_mixer.resources.kernels import KernelsHandlers
from notebook_kernels_mixer.resources.kernelspecs import KernelspecsCache, KernelspecsHandlers
from notebook_kernels_mixer.resources.session_stores import session_store
from notebook_kernels_mixer.resources.sessions import SessionsHandlers
from notebook_kernels_mixer.state import MEMORY, StateError, StateStore, default_state_path
from notebook_kernels_mixer.status import StatusHandlers

log = logging.getLogger(__name__)

INVENTORY = web.AppKey("inventory", Inventory)
RELAY = web.AppKey("relay", Relay)
STATE = web.AppKey("state", StateStore)
CULLER = web.AppKey("culler", Culler)


def state_path(config: MixerConfig) -> str:
    """Where the durable state lives: the configured file, else one per port in
    Jupyter's runtime directory (nothing durable for an ephemeral port, as in tests)."""
    if config.state_file:
        return config.state_file
    return default_state_path(config.port) if config.port else MEMORY


async def build_app(config: MixerConfig) -> web.Application:
    """The mixer as an aiohttp app. Opens the state file first: a second mixer on it
    fails here (``StateError``)."""
    backends = [build_backend(b) for b in config.backends]
    path = state_path(config)
    state = await StateStore.open(path)
    inventory = Inventory(backends, default=config.default_backend, local=config.local_backend,
                          state=state, retention=config.retention, window=config.listing_window)
    relay = Relay(external_hostname=config.external_hostname, local_backend=config.local_backend)
    cache = KernelspecsCache(config.kernelspecs_ttl)
    carries = Carries(enabled=config.carry_variables, budget=config.carry_budget,
                      cap=config.carry_cap)
    metrics = Metrics(inventory, relay, carries)
    backend_kernels = {
        b.name: MeasuredKernels(b, known=functools.partial(inventory.kernels_of, b), metrics=metrics)
        for b in backends
    }
    kept = KeptRecords(state)
    stores = {name: session_store(k, kept) for name, k in backend_kernels.items()}
    specs = KernelspecsHandlers(inventory, cache)
    kernels = KernelsHandlers(inventory, relay, backend_kernels, specs.default_spec)
    sessions = SessionsHandlers(inventory, stores, kernels, specs.default_spec, carries)
    culler = Culler(inventory, kernels, relay, metrics,
                    {b.name: CullPolicy.of(b) for b in config.backends})
    app = web.Application(
        middlewares=[access_logger(config), errors, protector(config)],
        client_max_size=config.max_body_bytes,
    )
    app[INVENTORY] = inventory
    app[RELAY] = relay
    app[STATE] = state
    app[CULLER] = culler
    for handlers in (StatusHandlers(inventory, relay, kernels, sessions, path, culler),
                     MetricsHandlers(metrics, kernels), specs, kernels, sessions,
                     CarryHandlers(carries, kernels.owner),
                     LocalProxy(inventory, relay, external_hostname=config.external_hostname)):
        app.add_routes(handlers.routes())
    _lifecycle(app, backends, relay, cache, state, culler)
    return app


def _lifecycle(app: web.Application, backends: list[Backend], relay: Relay,
               cache: KernelspecsCache, state: StateStore, culler: Culler) -> None:
    async def start_backends(app: web.Application) -> None:
        for backend in backends:
            await backend.start()
        culler.start()

    async def close_relays(app: web.Application) -> None:
        await culler.stop()
        await relay.close_all()

    async def close_backends(app: web.Application) -> None:
        await cache.close()
        for backend in backends:
            await backend.close()
        await state.close()

    app.on_startup.append(start_backends)
    app.on_shutdown.append(close_relays)
    app.on_cleanup.append(close_backends)


#: What binding an IPv6 address fails with on a machine without IPv6: tolerated, since
#: the mixer still listens on every address this machine has.
_NO_IPV6 = frozenset({errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT})


async def _listen(runner: web.AppRunner, config: MixerConfig) -> list[str]:
    """Listen on every configured address, or on none (SPEC §6).

    A busy address is an error naming it: had the mixer gone on with the others,
    whoever holds ``[::1]:PORT`` (another local user) would receive the front's
    requests, token included (issue 16 item 2). Only an absent IPv6 stack is
    tolerated, and only when some address could be bound.
    """
    bound = []
    for host in config.hosts:
        # backlog: 200 kernels reconnecting at once must not overflow the accept queue;
        # GuardedSite: no connection lost when descriptors run out (``listener``)
        site: web.BaseSite
        if sys.platform == "win32":  # no add_reader on the Proactor loop
            site = web.TCPSite(runner, host.strip("[]"), config.port, reuse_address=True,
                               backlog=1024)
        else:
            site = GuardedSite(runner, host.strip("[]"), config.port, backlog=1024)
        try:
            await site.start()
        except OSError as exc:
            if ":" in host and exc.errno in _NO_IPV6:
                log.warning("not listening on [%s]:%s: %s (no IPv6 on this machine)",
                            host.strip("[]"), config.port, exc.strerror)
                continue
            where = f"[{host.strip('[]')}]" if ":" in host else host
            raise SystemExit(f"mixer: cannot listen on {where}:{config.port}: {exc.strerror}; "
                             "is another program using that port?") from None
        bound.append(host)
    if not bound:
        raise SystemExit(f"mixer: cannot listen on port {config.port} on {', '.join(config.hosts)}")
    return bound


#: macOS's OPEN_MAX: the highest soft open-files limit it takes when the hard one is unlimited.
OPEN_MAX = 10240


def raise_fd_limit() -> tuple[int, int]:
    """The soft limit of open files raised to the hard one, as servers commonly do.

    Every relayed websocket holds two descriptors (client and backend legs); under
    macOS's default soft limit of 256 the mixer ran out at 120 websockets, while the
    hard limit allows far more. Returns (soft, hard) as they are now.
    """
    if resource is None:
        return -1, -1
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    failure: Exception | None = None
    # macOS's hard limit is "unlimited", but it refuses a soft one above OPEN_MAX
    for attempt in dict.fromkeys((wanted, min(wanted, OPEN_MAX))):
        if attempt <= soft:
            break
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (attempt, hard))
        except (ValueError, OSError) as exc:
            failure = exc
            continue
        soft = attempt
        break
    else:
        log.warning("cannot raise the open-files limit from %s to %s: %s", soft, wanted, failure)
    return soft, hard


async def serve(config: MixerConfig, *, ready: asyncio.Event | None = None) -> None:
    """Listen on the configured (loopback) addresses until SIGINT/SIGTERM."""
    soft, hard = raise_fd_limit()
    if soft > 0:
        log.info("open files: up to %s, so about %s kernel websockets (two descriptors each, "
                 "%s kept for the rest)", soft, (soft - reserve_for(soft)) // 2, reserve_for(soft))
    try:
        app = await build_app(config)
    except StateError as exc:
        raise SystemExit(f"mixer: {exc}") from None
    # access_log=None: aiohttp's own access log prints query strings (?token=…);
    # the mixer logs requests itself, redacted.
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=4.0)
    await runner.setup()
    try:
        bound = await _listen(runner, config)
    except SystemExit:
        await runner.cleanup()
        raise
    names = ", ".join(f"{b.name} ({b.url})" for b in config.backends)
    log.info("mixer listening on %s port %s; backends: %s",
             " and ".join(bound), config.port, names)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    if ready is not None:
        ready.set()
    try:
        await stop.wait()
    finally:
        log.info("mixer shutting down")
        await runner.cleanup()
