"""app.py: the open-files limit raised at start."""

from __future__ import annotations

import resource as real_resource
from types import SimpleNamespace

import pytest

from notebook_kernels_mixer import app


def fake_resource(soft: int, hard: int, highest: int) -> SimpleNamespace:
    """A ``resource`` module whose kernel takes a soft limit up to ``highest``."""
    limits = SimpleNamespace(soft=soft, hard=hard)

    def setrlimit(which: int, values: tuple[int, int]) -> None:
        if values[0] > highest:
            raise ValueError("current limit exceeds maximum limit")
        limits.soft = values[0]

    return SimpleNamespace(RLIMIT_NOFILE=real_resource.RLIMIT_NOFILE,
                           RLIM_INFINITY=real_resource.RLIM_INFINITY,
                           getrlimit=lambda which: (limits.soft, limits.hard),
                           setrlimit=setrlimit, limits=limits)


@pytest.mark.parametrize(("soft", "hard", "highest", "raised"), [
    (256, 65536, 1 << 30, 65536),  # Linux: up to the hard limit
    (256, real_resource.RLIM_INFINITY, 10240, 10240),  # macOS: unlimited, OPEN_MAX taken
    (256, 256, 1 << 30, 256),  # nothing to raise
    (4096, 65536, 1024, 4096),  # refused: left as it was
])
def test_the_soft_open_files_limit_is_raised_as_far_as_the_system_takes(
        monkeypatch: pytest.MonkeyPatch, soft: int, hard: int, highest: int, raised: int) -> None:
    fake = fake_resource(soft, hard, highest)
    monkeypatch.setattr(app, "resource", fake)
    assert app.raise_fd_limit() == (raised, hard)
    assert fake.limits.soft == raised
