"""Which targets of an upstream get traffic: ejection after failures, active checks, budgets."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(slots=True)
class TargetHealth:
    failures: int = 0  # in a row
    ejections: int = 0  # in a row, for the growing cool-down
    ejected_until: float = 0.0


class TargetSelector:
    """Round robin over the targets that are not ejected.

    A target that fails ``failures`` times in a row (connection errors and timeouts) is left out
    for a cool-down that doubles each time it is ejected again, up to ``max_cooldown``. The
    last target standing is never ejected: a shaky target beats none.
    """

    def __init__(
        self,
        count: int,
        *,
        failures: int,
        cooldown: float,
        max_cooldown: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.health = [TargetHealth() for _ in range(count)]
        self.threshold = failures
        self.cooldown = cooldown
        self.max_cooldown = max_cooldown
        self.clock = clock
        self._next = 0

    def _usable(self, index: int, now: float) -> bool:
        return self.health[index].ejected_until <= now

    def pick(self, exclude: int | None = None) -> int:
        """The next usable target in round robin (exclude: the one that just failed)."""
        count = len(self.health)
        if count == 1:
            return 0  # the only target, ejected or not: there is nothing else to send to
        now = self.clock()
        for step in range(count):
            index = (self._next + step) % count
            if index != exclude and self._usable(index, now):
                self._next = index + 1
                return index
        # Everything is ejected (or only the excluded one is left): the soonest back.
        candidates = [i for i in range(count) if i != exclude] or [exclude or 0]
        return min(candidates, key=lambda i: self.health[i].ejected_until)

    def healthy(self) -> int:
        now = self.clock()
        return sum(1 for i in range(len(self.health)) if self._usable(i, now))

    def succeeded(self, index: int) -> None:
        state = self.health[index]
        state.failures = 0
        if state.ejections and state.ejected_until <= self.clock():
            state.ejections = 0

    def recovered(self, index: int) -> None:
        """An active check passed: the target is back at once, its record clean."""
        self.health[index] = TargetHealth()

    def failed(self, index: int) -> bool:
        """Count a failure; True when it ejected the target."""
        state = self.health[index]
        now = self.clock()
        if state.ejected_until > now:
            return False  # already out: its cool-down runs as it was set
        state.failures += 1
        others = sum(1 for i in range(len(self.health)) if i != index and self._usable(i, now))
        if state.failures < self.threshold or others == 0:
            return False
        state.failures = 0
        state.ejections += 1
        doublings = min(state.ejections - 1, 30)  # past max_cooldown anyway; no overflow
        state.ejected_until = now + min(self.cooldown * 2**doublings, self.max_cooldown)
        return True

    def eject_until(self, index: int, until: float) -> None:
        """An active check failed: out until at least the next check (unless it is the last)."""
        now = self.clock()
        others = sum(1 for i in range(len(self.health)) if i != index and self._usable(i, now))
        if others:
            state = self.health[index]
            state.ejected_until = max(state.ejected_until, until)


class RetryBudget:
    """Retries may add at most ``ratio`` of the requests (plus a small reserve), so a sick
    upstream never gets multiplied load from the gateway's own retries."""

    def __init__(self, ratio: float = 0.2, reserve: float = 10.0) -> None:
        self.ratio = ratio
        self.reserve = reserve
        self.tokens = reserve

    def deposit(self) -> None:
        self.tokens = min(self.reserve, self.tokens + self.ratio)

    def withdraw(self) -> bool:
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False
