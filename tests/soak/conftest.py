"""The soak's pytest wrapper needs no fixtures; it registers its marker."""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "soak: the soak command, run for a short time")
