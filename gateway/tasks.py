"""Background tasks: one way to stop them, in bounded time."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Hashable
from functools import partial
from typing import Any, TypeVar

import structlog

log = structlog.get_logger("gateway")

K = TypeVar("K", bound=Hashable)
T = TypeVar("T")

STOP_GRACE = 5.0  # how long a stop waits for cancelled tasks to finish their cleanup
_CANCEL_AGAIN_AFTER = 1.0


async def cancel_and_wait(*tasks: asyncio.Task[Any] | None, grace: float = STOP_GRACE) -> None:
    """Cancel background tasks (None: never started) and wait until they have stopped.

    Bounded, so that a shutdown always ends: a task still running a moment after its
    cancellation (one that swallowed it) is cancelled again, and one still running after
    ``grace`` seconds is logged and left behind. A task that failed is logged, not raised:
    the rest of the shutdown still runs. The caller's own cancellation (a deadline around
    the shutdown, Ctrl-C) is not swallowed here; only the tasks' own are.
    """
    started = [task for task in tasks if task is not None]
    pending = {task for task in started if not task.done()}
    loop = asyncio.get_running_loop()
    deadline = loop.time() + grace
    while pending:
        remaining = deadline - loop.time()
        if remaining <= 0:
            break
        for task in pending:
            task.cancel()
        # asyncio.wait never cancels what it waits for, so a cancellation of the caller stays
        # the caller's (awaiting a task would hand it to the task, which may swallow it too).
        _, pending = await asyncio.wait(pending, timeout=min(remaining, _CANCEL_AGAIN_AFTER))
    for task in pending:
        log.error("background_task_not_stopped", task=task.get_name(), grace=grace)
    for task in started:
        if task.done() and not task.cancelled() and (error := task.exception()) is not None:
            log.error("background_task_failed", task=task.get_name(), exc_info=error)


def shared_lookup(
    inflight: dict[K, asyncio.Task[T]], key: K, lookup: Callable[[], Coroutine[Any, Any, T]]
) -> asyncio.Task[T]:
    """The lookup of ``key`` in flight, or ``lookup()`` started as a task of its own: one per
    key, shared by every caller, which awaits it through ``asyncio.shield`` (a caller that is
    cancelled cancels only its own wait). Done, it leaves ``inflight``, and its failure is read:
    its callers may all have gone (clients that left during an outage), and asyncio would log
    it as an exception never retrieved, with a traceback."""
    task = inflight.get(key)
    if task is None:
        task = asyncio.ensure_future(lookup())
        inflight[key] = task
        task.add_done_callback(partial(_settled, inflight, key))
    return task


def _settled(inflight: dict[K, asyncio.Task[T]], key: K, task: asyncio.Task[T]) -> None:
    inflight.pop(key, None)
    if not task.cancelled():
        task.exception()
