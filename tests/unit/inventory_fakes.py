"""In-memory stand-ins for what the inventory and the fan-out ask of a backend: a
name, timeouts, and health. No network: these tests drive the units directly."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, cast

from notebook_kernels_mixer.backends import Backend
from notebook_kernels_mixer.backends.health import Health


@dataclass
class Timeouts:
    request_timeout: float = 5.0
    list_timeout: float = 0.5


@dataclass(eq=False)  # hashable by identity, as Backend is
class StubBackend:
    name: str
    config: Timeouts = field(default_factory=Timeouts)
    health: Health = field(init=False)
    probes: int = 0

    def __post_init__(self) -> None:
        self.health = Health(self.name, self._probe)

    async def _probe(self) -> None:
        self.probes += 1


def stub(name: str, **timeouts: Any) -> Backend:
    """A backend for units that only read its name, timeouts and health."""
    return cast(Backend, StubBackend(name, Timeouts(**timeouts)))
