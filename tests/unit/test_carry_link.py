"""The carry's connection to a kernel (``carry/link.py``): what the fake kernels of
test_carry.py cannot make happen on demand."""

from __future__ import annotations

import asyncio
import time

import pytest

from notebook_kernels_mixer.carry.link import within


async def test_a_cancellation_that_comes_with_the_answer_is_not_lost() -> None:
    # asyncio.wait_for before Python 3.12 returns the answer and drops the
    # cancellation when both come in the same turn of the loop: a cancelled carry
    # would then run on to its budget.
    answer: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    task = asyncio.ensure_future(within(answer, time.monotonic() + 10))
    await asyncio.sleep(0)  # the task waits for the answer
    answer.set_result(1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_past_the_deadline_the_awaited_is_cancelled() -> None:
    started: list[bool] = []

    async def slow() -> None:
        started.append(True)
        await asyncio.sleep(60)

    inner = asyncio.ensure_future(slow())
    with pytest.raises(asyncio.TimeoutError):
        await within(inner, time.monotonic() + 0.05)
    assert started and inner.cancelled()


async def test_a_deadline_already_past_cancels_without_waiting() -> None:
    answer: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    with pytest.raises(asyncio.TimeoutError):
        await within(answer, time.monotonic() - 1)
    assert answer.cancelled()
