"""Fixtures of the API fuzzing tests: the shared real topology (``tests/e2e/support/stack.py``:
a local jupyter_server, a bearer-only remote with the stand-in ``gcloud``, the mixer), per module."""

from __future__ import annotations

import sys
from collections.abc import Iterator

import pytest

from tests.e2e.support.stack import Stack


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "fuzz: API fuzzing of the mixer with schemathesis and real backends")


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """The seed of the run, whatever the outcome and the output capture."""
    module = sys.modules.get("tests.fuzz.test_api_fuzz")
    if module is not None and getattr(module, "RECORD", None) is not None and module.RECORD.calls:
        terminalreporter.write_line(f"API fuzzing: schemathesis seed {module.SEED} ({module.REPEAT})")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with Stack(tmp_path_factory.mktemp("fuzz")) as s:
        yield s
