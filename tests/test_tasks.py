"""Stopping background tasks ends in bounded time, whatever a task does with its cancellation."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable
from typing import Any

import pytest

from gateway.tasks import cancel_and_wait
from tests.conftest import LogLines


async def within(seconds: float, awaitable: Awaitable[Any]) -> Any:
    """The result of ``awaitable``; a test failure (not a hang) if it takes longer."""
    task = asyncio.ensure_future(awaitable)
    done, _ = await asyncio.wait({task}, timeout=seconds)
    assert done, f"still waiting after {seconds}s"
    return task.result()


async def swallows_one_cancellation() -> None:
    # As asyncio.wait_for did on Python 3.11 when what it waited for had just finished.
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.Event().wait()
    await asyncio.Event().wait()


async def ignores_cancellation(released: asyncio.Event) -> None:
    while not released.is_set():
        with contextlib.suppress(asyncio.CancelledError):
            await released.wait()


async def test_a_task_that_swallowed_its_cancellation_is_cancelled_again() -> None:
    task = asyncio.create_task(swallows_one_cancellation())
    await asyncio.sleep(0)
    await within(5, cancel_and_wait(task))
    assert task.cancelled()


async def test_a_task_that_will_not_stop_is_logged_and_left_behind_after_the_grace(
    logs: LogLines,
) -> None:
    released = asyncio.Event()
    task = asyncio.create_task(ignores_cancellation(released), name="stubborn")
    await asyncio.sleep(0)
    try:
        started = time.monotonic()
        await within(5, cancel_and_wait(task, None, grace=0.3))
        assert 0.3 <= time.monotonic() - started < 2
        assert not task.done()
    finally:
        released.set()
        await task
    (event,) = logs.events("background_task_not_stopped")
    assert event["task"] == "stubborn"


async def test_the_callers_own_cancellation_is_not_swallowed() -> None:
    """A deadline around a stop (or Ctrl-C) interrupts it, even while a task holds it up."""
    released = asyncio.Event()
    task = asyncio.create_task(ignores_cancellation(released))
    await asyncio.sleep(0)

    async def stop_with_a_deadline() -> None:
        async with asyncio.timeout(0.2):
            await cancel_and_wait(task)

    try:
        with pytest.raises(TimeoutError):
            await within(5, stop_with_a_deadline())
    finally:
        released.set()
        await task


async def test_a_task_that_failed_is_logged_and_the_stop_goes_on(logs: LogLines) -> None:
    async def fails() -> None:
        raise ValueError("broken")

    task = asyncio.create_task(fails(), name="broken-loop")
    await asyncio.sleep(0)
    await within(5, cancel_and_wait(task))
    (event,) = logs.events("background_task_failed")
    assert event["task"] == "broken-loop"
    assert "ValueError: broken" in event["exception"]
