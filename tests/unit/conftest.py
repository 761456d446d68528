"""Fixtures for unit tests: fakes started in the test's loop and an in-process mixer."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from notebook_kernels_mixer.app import build_app
from notebook_kernels_mixer.config import BackendConfig, LogConfig, MixerConfig
from tests.fakes import Blackhole, FakeJupyter

TOKEN = "mixer-test-token"
XSRF = "xsrf-test-value"


@dataclass
class Mixer:
    url: str
    app: web.Application
    session: aiohttp.ClientSession

    def headers(self, **extra: str) -> dict[str, str]:
        return {"token": TOKEN, "Cookie": f"_xsrf={XSRF}", "X-XSRFToken": XSRF, **extra}

    async def call(self, method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
        headers = kwargs.pop("headers", None) or self.headers()
        async with self.session.request(method, self.url + path, headers=headers, **kwargs) as r:
            body = await r.read()
            try:
                return r.status, (await r.json(content_type=None)) if body else None
            except ValueError:
                return r.status, body


MixerFactory = Callable[..., Awaitable[Mixer]]


async def two_backends(fakes: Any, mixer: Any, **kwargs: Any) -> tuple[Any, Any, Mixer]:
    """A local and a remote fake behind one mixer: the shape most tests need."""
    local, remote = await fakes("local"), await fakes("remote")
    return local, remote, await mixer([("local", local), ("remote", remote)], **kwargs)


@pytest.fixture
async def fakes() -> AsyncIterator[Callable[..., Awaitable[FakeJupyter]]]:
    started: list[FakeJupyter | Blackhole] = []

    async def make(name: str, **kwargs: Any) -> FakeJupyter:
        fake = await FakeJupyter(name, **kwargs).start()
        started.append(fake)
        return fake

    yield make
    for fake in started:
        await fake.stop()


@pytest.fixture
async def blackhole() -> AsyncIterator[Blackhole]:
    hole = await Blackhole().start()
    yield hole
    await hole.stop()


@pytest.fixture
async def mixer() -> AsyncIterator[MixerFactory]:
    runners: list[web.AppRunner] = []
    sessions: list[aiohttp.ClientSession] = []

    async def make(
        backends: list[tuple[Any, ...]],  # (name, fake or url[, BackendConfig overrides])
        *,
        default: str | None = None,
        token: str | None = TOKEN,
        request_timeout: float = 5.0,
        list_timeout: float = 1.0,
        log: LogConfig | None = None,
        **config: Any,
    ) -> Mixer:
        configs = tuple(
            BackendConfig(**{
                "name": name,
                "display_suffix": f" ({name.title()})",
                "url": target if isinstance(target, str) else target.url,
                "auth": "token" if getattr(target, "token", None) else "none",
                "token": getattr(target, "token", None),
                "request_timeout": request_timeout,
                "list_timeout": list_timeout,
                "sessions": "backend",  # the fakes keep their own sessions
                **(overrides[0] if overrides else {}),
            })
            for name, target, *overrides in backends
        )
        # Tests change the fakes behind the mixer's back and list at once.
        config.setdefault("listing_window", 0.0)
        cfg = MixerConfig(
            backends=configs,
            default_backend=default or configs[-1].name,
            local_backend=configs[0].name,
            port=0,
            token=token,
            log=log or LogConfig(),
            **config,
        )
        app = await build_app(cfg)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        runners.append(runner)
        port = runner.addresses[0][1]
        session = aiohttp.ClientSession()
        sessions.append(session)
        return Mixer(f"http://127.0.0.1:{port}", app, session)

    yield make
    for session in sessions:
        await session.close()
    for runner in runners:
        await runner.cleanup()


def pytest_asyncio_loop_factories(config, item):  # type: ignore[no-untyped-def]
    """The mixer runs on uvloop when it is installed (cli.run); so do its unit tests."""
    try:
        import uvloop
    except ImportError:
        import asyncio

        return {"asyncio": asyncio.new_event_loop}
    return {"uvloop": uvloop.new_event_loop}
