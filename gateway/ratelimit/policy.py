"""The algorithm: GCRA buckets and calendar windows, all decided together or not at all.

The same arithmetic runs in Python for the local backend and in ``ratelimit.lua`` on Redis;
the contract tests hold both to the same answers.
"""

from __future__ import annotations

import calendar
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

# Float rounding must never turn an allowed request into a refusal (or the other way).
EPSILON = 1e-6


@dataclass(frozen=True, slots=True)
class Limit:
    """One limit a request is counted against.

    ``gcra``: ``capacity`` requests at once (requests + burst), then one every ``interval``
    seconds. ``window``: ``capacity`` requests until ``window_end`` (a UTC day or month).
    """

    policy: str  # the name clients see: "key", "org", "quota", "route:<name>"
    key: str  # where its state is kept
    kind: Literal["gcra", "window"]
    capacity: int
    interval: float = 0.0  # gcra: seconds per request
    window_start: float = 0.0  # window: the period's bounds (epoch seconds)
    window_end: float = 0.0

    @property
    def window(self) -> float:
        """Seconds in which ``capacity`` requests are allowed (for RateLimit-Policy's w)."""
        if self.kind == "gcra":
            return self.capacity * self.interval
        return self.window_end - self.window_start


@dataclass(frozen=True, slots=True)
class Outcome:
    policy: str
    allowed: bool
    limit: int
    window: float
    remaining: int
    reset: float  # seconds until the limit is whole again (gcra) or the window ends
    retry_after: float  # seconds until this request would be allowed (0 when it was)


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    outcomes: tuple[Outcome, ...]

    @property
    def refused_by(self) -> Outcome | None:
        """The limit that refused, the one whose wait is longest."""
        refused = [o for o in self.outcomes if not o.allowed]
        return max(refused, key=lambda o: o.retry_after) if refused else None

    @property
    def tightest(self) -> Outcome | None:
        """The limit closest to refusing, for the X-RateLimit-* headers."""
        if not self.outcomes:
            return None
        return min(self.outcomes, key=lambda o: (o.remaining, -o.reset))


def evaluate(
    limits: Sequence[Limit], state: Mapping[str, float], cost: int, now: float
) -> tuple[Decision, dict[str, float]]:
    """Decide every limit; the new state is returned only if all of them allow the request.

    Refused requests change nothing: they are not counted against anyone. A cost of 0 reports
    without counting.
    """
    outcomes = []
    updates: dict[str, float] = {}
    for limit in limits:
        current = state.get(limit.key)
        if limit.kind == "gcra":
            outcome, new = _gcra(limit, current, cost, now)
        else:
            outcome, new = _window(limit, current, cost, now)
        outcomes.append(outcome)
        updates[limit.key] = new
    allowed = all(o.allowed for o in outcomes)
    return Decision(allowed, tuple(outcomes)), (updates if allowed and cost > 0 else {})


def _gcra(limit: Limit, tat: float | None, cost: int, now: float) -> tuple[Outcome, float]:
    interval = limit.interval
    tolerance = limit.capacity * interval
    tat = now if tat is None or tat < now else tat
    new_tat = tat + cost * interval
    if new_tat - now <= tolerance + EPSILON:
        remaining = math.floor((tolerance - (new_tat - now)) / interval + EPSILON)
        return Outcome(
            limit.policy, True, limit.capacity, limit.window, remaining, new_tat - now, 0.0
        ), new_tat
    remaining = max(0, math.floor((tolerance - (tat - now)) / interval + EPSILON))
    retry = new_tat - tolerance - now
    return Outcome(
        limit.policy, False, limit.capacity, limit.window, remaining, tat - now, retry
    ), tat


def _window(limit: Limit, count: float | None, cost: int, now: float) -> tuple[Outcome, float]:
    used = int(count or 0)
    reset = max(0.0, limit.window_end - now)
    if used + cost <= limit.capacity:
        remaining = limit.capacity - used - cost
        return Outcome(
            limit.policy, True, limit.capacity, limit.window, remaining, reset, 0.0
        ), float(used + cost)
    return Outcome(
        limit.policy, False, limit.capacity, limit.window, limit.capacity - used, reset, reset
    ), float(used)


def calendar_window(per: Literal["day", "month"], now: float) -> tuple[float, float, str]:
    """The UTC day or month that ``now`` falls in: (start, end, a label for storage keys)."""
    moment = datetime.fromtimestamp(now, UTC)
    if per == "day":
        start = datetime(moment.year, moment.month, moment.day, tzinfo=UTC)
        label = start.strftime("%Y%m%d")
        end = start.timestamp() + 86400
        return start.timestamp(), end, label
    start = datetime(moment.year, moment.month, 1, tzinfo=UTC)
    days = calendar.monthrange(moment.year, moment.month)[1]
    return start.timestamp(), start.timestamp() + days * 86400, start.strftime("%Y%m")
