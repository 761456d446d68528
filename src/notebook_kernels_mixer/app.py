"""Builds the aiohttp application from a MixerConfig and runs it.

Routes: the three merged resources (kernelspecs, kernels, sessions), the status API,
then a catch-all that proxies the rest to the local Jupyter server.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal

from aiohttp import web

from notebook_kernels_mixer.backends import Backend, build_backend
from notebook_kernels_mixer.config import MixerConfig
from notebook_kernels_mixer.front.middlewares import access_logger, errors, protector
from notebook_kernels_mixer.proxy import LocalProxy
from notebook_kernels_mixer.relay import Relay
from notebook_kernels_mixer.resources.kernels import KernelsHandlers
from notebook_kernels_mixer.resources.kernelspecs import KernelspecsCache, KernelspecsHandlers
from notebook_kernels_mixer.resources.registry import Registry
from notebook_kernels_mixer.resources.sessions import SessionsHandlers
from notebook_kernels_mixer.status import StatusHandlers

log = logging.getLogger(__name__)

REGISTRY = web.AppKey("registry", Registry)
RELAY = web.AppKey("relay", Relay)


def build_app(config: MixerConfig, backends: list[Backend] | None = None) -> web.Application:
    """The mixer as an aiohttp app; ``backends`` may be given (tests), else built."""
    backends = backends if backends is not None else [build_backend(b) for b in config.backends]
    registry = Registry(backends, default=config.default_backend, local=config.local_backend)
    relay = Relay(external_hostname=config.external_hostname)
    cache = KernelspecsCache(config.kernelspecs_ttl)
    app = web.Application(
        middlewares=[errors, access_logger(config), protector(config)],
        client_max_size=config.max_body_bytes,
    )
    app[REGISTRY] = registry
    app[RELAY] = relay
    app.add_routes(StatusHandlers(registry, relay).routes())
    app.add_routes(KernelspecsHandlers(registry, cache).routes())
    app.add_routes(KernelsHandlers(registry, relay).routes())
    app.add_routes(SessionsHandlers(registry).routes())
    app.add_routes(
        LocalProxy(registry, relay, external_hostname=config.external_hostname).routes()
    )

    async def start_backends(app: web.Application) -> None:
        for backend in backends:
            await backend.start()

    async def close_relays(app: web.Application) -> None:
        await relay.close_all()

    async def close_backends(app: web.Application) -> None:
        await cache.close()
        for backend in backends:
            await backend.close()

    app.on_startup.append(start_backends)
    app.on_shutdown.append(close_relays)
    app.on_cleanup.append(close_backends)
    return app


async def serve(config: MixerConfig, *, ready: asyncio.Event | None = None) -> None:
    """Listen on the configured (loopback) addresses until SIGINT/SIGTERM."""
    app = build_app(config)
    # access_log=None: aiohttp's own access log prints query strings (?token=…);
    # the mixer logs requests itself, redacted.
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=4.0)
    await runner.setup()
    bound = []
    for host in config.hosts:
        # backlog: 200 kernels reconnecting at once must not overflow the accept queue
        site = web.TCPSite(runner, host.strip("[]"), config.port, reuse_address=True, backlog=1024)
        try:
            await site.start()
            bound.append(host)
        except OSError as exc:
            log.warning("cannot listen on [%s]:%s: %s", host, config.port, exc.strerror)
    if not bound:
        await runner.cleanup()
        raise SystemExit(f"mixer: cannot listen on port {config.port} on {', '.join(config.hosts)}")
    names = ", ".join(f"{b.name} ({b.url}{b.display_suffix and ''})" for b in config.backends)
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
