"""The fan-out asks every backend at once and applies the one timeout and retry
policy (SPEC §4); it keeps nothing between calls."""

from __future__ import annotations

import asyncio

import pytest

from notebook_kernels_mixer.backends import Backend
from notebook_kernels_mixer.errors import BackendError, BackendUnavailable, NotFound, UpstreamError
from notebook_kernels_mixer.resources.fanout import FanOut, merged
from tests.unit.inventory_fakes import stub


class Script:
    """Per backend, the outcomes of its successive calls (a value, an exception, or
    "hang"); counts the calls."""

    def __init__(self, **outcomes: list[object]) -> None:
        self.outcomes = outcomes
        self.calls: dict[str, int] = {name: 0 for name in outcomes}

    async def __call__(self, backend: Backend) -> object:
        n = self.calls[backend.name]
        self.calls[backend.name] += 1
        outcome = self.outcomes[backend.name][min(n, len(self.outcomes[backend.name]) - 1)]
        if outcome == "hang":
            await asyncio.Event().wait()
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome


def upstream(status: int) -> UpstreamError:
    return UpstreamError("b", status, b"{}", "application/json")


async def test_answers_come_in_configured_order_with_values_and_errors() -> None:
    a, b = stub("a"), stub("b")
    script = Script(a=[["x"]], b=[NotFound("nope")])
    answers = await FanOut([a, b]).gather(script)
    assert [x.backend.name for x in answers] == ["a", "b"]
    assert answers[0].ok and answers[0].value == ["x"]
    assert not answers[1].ok and isinstance(answers[1].error, NotFound)


@pytest.mark.parametrize(
    "first,retried",
    [(upstream(500), True), (BackendError("b", "garbage"), True), (upstream(503), False),
     (upstream(404), False), (BackendUnavailable("b", "refused"), False)],
)
async def test_a_5xx_or_broken_answer_is_asked_once_more_and_nothing_else_is(first, retried) -> None:
    b = stub("b")
    script = Script(b=[first, ["ok"]])
    (answer,) = await FanOut([b]).gather(script)
    assert script.calls["b"] == (2 if retried else 1)
    assert answer.ok is retried


async def test_a_hanging_backend_is_not_waited_for_past_its_listing_timeout() -> None:
    fast, slow = stub("fast"), stub("slow", list_timeout=0.2)
    answers = await FanOut([fast, slow]).gather(Script(fast=[["f"]], slow=["hang"]))
    assert answers[0].value == ["f"]
    assert "no answer within 0.2s" in str(answers[1].error)
    assert slow.health.failures == 1 and slow.health.answering is False
    assert merged(answers) == ["f"]


async def test_a_suspect_backend_is_skipped_unless_asked_all_or_nobody_else_answers() -> None:
    good, suspect = stub("good"), stub("suspect")
    suspect.health.failure(BackendError("suspect", "earlier"))
    script = Script(good=[["g"]], suspect=[["s"]])
    answers = await FanOut([good, suspect]).gather(script)
    assert script.calls["suspect"] == 0 and isinstance(answers[1].error, BackendUnavailable)
    answers = await FanOut([good, suspect]).gather(script, ask_all=True)
    assert script.calls["suspect"] == 1 and answers[1].value == ["s"]
    good.health.failure(BackendError("good", "earlier"))
    await FanOut([good, suspect]).gather(script)  # nobody answering: all are asked
    assert script.calls == {"good": 3, "suspect": 2}


async def test_merged_fails_only_when_no_backend_contributed() -> None:
    a, b = stub("a"), stub("b")
    answers = await FanOut([a, b]).gather(Script(a=[upstream(404)], b=[upstream(404)]))
    with pytest.raises(BackendUnavailable, match="no backend answered"):
        merged(answers)
