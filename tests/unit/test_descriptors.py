"""Open files (descriptors.py): the reserve kept free for what is not a new websocket,
the count of free descriptors by the lowest free number, what counts as running out
(EMFILE/ENFILE, also inside aiohttp's connector error), and one log line per episode."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
from collections.abc import Iterator
from types import SimpleNamespace

import aiohttp
import pytest

from notebook_kernels_mixer import descriptors
from notebook_kernels_mixer.descriptors import (
    Descriptors,
    free_descriptors,
    out_of_descriptors,
    reserve_for,
)
from notebook_kernels_mixer.errors import OutOfDescriptors


@contextlib.contextmanager
def opened(n: int) -> Iterator[list[int]]:
    fds = [os.open(os.devnull, os.O_RDONLY) for _ in range(n)]
    try:
        yield fds
    finally:
        for fd in fds:
            os.close(fd)


def lowest_free() -> int:
    fd = os.open(os.devnull, os.O_RDONLY)
    os.close(fd)
    return fd


def test_the_reserve_is_32_or_an_eighth_of_a_small_limit() -> None:
    assert reserve_for(1 << 20) == 32
    assert reserve_for(256) == 32
    assert reserve_for(64) == 8
    assert reserve_for(4) == 1


def test_free_descriptors_fall_with_every_one_opened() -> None:
    limit = lowest_free() + 200
    with opened(1) as (held,):
        before = free_descriptors(held, limit)
        assert before == limit - lowest_free()
        with opened(10):
            # new descriptors take the lowest free numbers: the next free one is at
            # least 10 further (more where they filled gaps left by closed ones)
            assert free_descriptors(held, limit) <= before - 10
            assert free_descriptors(held, limit) == limit - lowest_free()
        assert free_descriptors(held, limit) == before  # and rise when they close


def test_no_descriptor_left_is_zero_free(monkeypatch: pytest.MonkeyPatch) -> None:
    def emfile(fd: int) -> int:
        raise OSError(errno.EMFILE, "Too many open files")

    monkeypatch.setattr(descriptors.os, "dup", emfile)
    assert free_descriptors(0, 256) == 0


def connector_error(code: int) -> aiohttp.ClientConnectorError:
    key = SimpleNamespace(host="127.0.0.1", port=8888, ssl=True)
    return aiohttp.ClientConnectorError(key, OSError(code, os.strerror(code)))  # type: ignore[arg-type]


@pytest.mark.parametrize(("exc", "running_out"), [
    (OSError(errno.EMFILE, "Too many open files"), True),
    (OSError(errno.ENFILE, "Too many open files in system"), True),
    (connector_error(errno.EMFILE), True),
    (connector_error(errno.ECONNREFUSED), False),
    (ConnectionRefusedError(errno.ECONNREFUSED, "refused"), False),
    (asyncio.TimeoutError(), False),
    (None, False),
])
def test_running_out_is_emfile_or_enfile_also_inside_aiohttps_error(
        exc: BaseException | None, running_out: bool) -> None:
    assert out_of_descriptors(exc) is running_out


@pytest.fixture
def tight(monkeypatch: pytest.MonkeyPatch) -> SimpleNamespace:
    """A limit of 65536 with ``free`` descriptors left (the count is tested above)."""
    state = SimpleNamespace(free=100, fd=0)
    monkeypatch.setattr(descriptors, "soft_limit", lambda: 65536)
    monkeypatch.setattr(descriptors, "free_descriptors", lambda fd, limit: state.free)
    return state


def messages(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == descriptors.__name__]


def test_a_websocket_is_refused_below_the_reserve_with_one_line_per_episode(
        tight: SimpleNamespace, caplog: pytest.LogCaptureFixture) -> None:
    guard = Descriptors()
    guard.check(tight.fd)  # plenty free
    tight.free = 31  # one below the reserve
    for _ in range(5):
        with pytest.raises(OutOfDescriptors) as refused:
            guard.check(tight.fd)
    error = refused.value
    assert error.status == 503 and error.close_connection
    assert "out of file descriptors" in error.message
    tight.free = 33  # above the reserve, not by enough to end the episode (no flapping)
    with pytest.raises(OutOfDescriptors):
        guard.check(tight.fd)
    tight.free = 40
    guard.check(tight.fd)
    lines = messages(caplog)
    assert len(lines) == 2
    assert lines[0].startswith("out of file descriptors (open-files limit ")
    assert lines[1] == "file descriptors free again: new connections are accepted (6 refused)"


def test_episodes_in_quick_succession_warn_once(
        tight: SimpleNamespace, caplog: pytest.LogCaptureFixture) -> None:
    guard = Descriptors(warn_interval=3600)
    for _ in range(3):
        tight.free = 10
        with pytest.raises(OutOfDescriptors):
            guard.check(tight.fd)
        tight.free = 100
        guard.check(tight.fd)
    lines = messages(caplog)
    assert len(lines) == 2  # the first episode's warning and its end
    assert guard.refused == 2  # the later ones are counted for the next line


def test_an_emfile_met_anyway_starts_the_episode(
        tight: SimpleNamespace, caplog: pytest.LogCaptureFixture) -> None:
    guard = Descriptors()
    guard.exhausted()  # an accept() that failed
    error = guard.refusal()  # a backend connection that failed
    assert isinstance(error, OutOfDescriptors)
    guard.refusal()
    assert len(messages(caplog)) == 1 and guard.refused == 2
    with pytest.raises(OutOfDescriptors):  # the episode's margin applies
        tight.free = 33
        guard.check(tight.fd)
