"""The soak's verdict on failures a kernel's failed start explains (``checks.explain``):
matched to that kernel by id, never any 1011 (the mixer's code for an unreachable
backend too), and one failure per such kernel."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from .checks import explain
from .ledger import Ledger
from .soak import kernels_failed_to_start

pytestmark = pytest.mark.soak

REFUSED = "Lost: connection lost before the reply to m1: closed (close_code=1011)"
RACE = "zmq.error.ZMQError: Address already in use (addr='tcp://127.0.0.1:{port}')\n"


def failure(ledger: Ledger, kernel: str | None, detail: str = REFUSED) -> None:
    ledger.fail("remote", "kernels-remote", "execute", RuntimeError(detail), t0=1.0, created=0.5,
                kernel=kernel)


def test_a_kernel_that_died_at_start_explains_one_refusal_on_itself_only() -> None:
    ledger = Ledger(duration=60)
    failure(ledger, "b")  # another kernel's 1011 (e.g. the backend unreachable): not
    failure(ledger, None)  # no kernel known: not
    failure(ledger, "a", "HttpError: 500")  # not a refused websocket: not
    failure(ledger, "a")  # on the kernel that died at start: explained
    failure(ledger, "a")  # a second one on it: not
    explain(ledger, grace=10, failed_starts={"remote": ["a"], "local": ["b"]})
    assert [f.explained for f in ledger.failures] == [
        "", "", "", "kernel failed to start on the backend", ""]


def test_the_backends_port_races_are_matched_to_kernels_by_port() -> None:
    ledger = Ledger(duration=60)
    ledger.note_ports("remote", "a", {40001, 40002})
    ledger.note_ports("remote", "b", {40003})
    ledger.note_ports("local", "c", {40001})
    log = "Traceback (most recent call last):\n" + RACE.format(port=40002)

    def server(text: str) -> SimpleNamespace:
        return SimpleNamespace(process=SimpleNamespace(log_text=lambda: text))

    stack = SimpleNamespace(local=server(""), remote=server(log))
    assert kernels_failed_to_start(stack, ledger) == {"local": [], "remote": ["a"]}  # type: ignore[arg-type]
