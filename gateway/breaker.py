"""Leaving a failing store alone: one circuit breaker, and one backoff for reconnect loops."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import Literal

Clock = Callable[[], float]
State = Literal["closed", "open", "half_open"]


class CircuitBreaker:
    """After a failure, calls are refused for ``cooldown`` seconds instead of each waiting on a
    dependency that is down.

    Closed, every call goes through. A failure opens it. Once the cooldown is over it is
    half-open: calls go through again, as they did before the failure (refusing all but one
    trial would turn the first milliseconds after an outage into refusals); a success closes
    it, a failure opens it for another cooldown.
    """

    def __init__(self, cooldown: float, *, clock: Clock = time.time) -> None:
        self.cooldown = cooldown
        self.clock = clock
        self._state: State = "closed"
        self._until = 0.0  # open: no call before this

    @property
    def state(self) -> State:
        return self._state

    def allow(self) -> bool:
        """Whether a call may go to the dependency now."""
        if self._state != "open":
            return True
        if self.clock() < self._until:
            return False
        self._state = "half_open"
        return True

    def success(self) -> None:
        """The dependency answered. While it is open, the answer of a call that started before
        the failure says nothing about now; only an answer after the cooldown closes it."""
        if self._state == "half_open":
            self._state = "closed"

    def failure(self) -> bool:
        """The dependency failed. True when this failure opened the breaker; False when it was
        open already (calls that were in flight together fail together: count one)."""
        if self._state == "open":
            return False
        self._state = "open"
        self._until = self.clock() + self.cooldown
        return True


class Backoff:
    """Waits between the tries of a reconnect loop: ``first``, doubling after each failure up to
    ``cap``; ``reset()`` after a success starts again from ``first``.

    With ``jitter`` j, each wait is drawn from [w * (1 - j), w]: processes that lost the same
    server at once come back spread out, and no wait is longer than it would be without jitter.
    """

    def __init__(
        self,
        first: float,
        cap: float,
        *,
        jitter: float = 0.0,
        rng: random.Random | None = None,
    ) -> None:
        self.first = first
        self.cap = cap
        self.jitter = jitter
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not security
        self._next = min(first, cap)

    def reset(self) -> None:
        self._next = min(self.first, self.cap)

    def next_delay(self) -> float:
        """The wait before the next try; the one after it is twice as long, up to the cap."""
        wait = self._next
        self._next = min(wait * 2, self.cap)
        if self.jitter:
            wait *= self._rng.uniform(1 - self.jitter, 1)
        return wait
