"""Fixtures of the API fuzzing tests: the real topology (``stack.py``), per module."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.e2e.support import topology

from .stack import Stack, running_stack


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "fuzz: API fuzzing of the mixer with schemathesis and real backends")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    if not topology.mixer_available():
        pytest.fail("notebook_kernels_mixer is not installed (pip install -e .)")
    with running_stack(tmp_path_factory.mktemp("fuzz")) as s:
        yield s
