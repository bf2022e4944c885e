"""The algorithm: GCRA buckets and calendar windows, all decided together or not at all.

The same arithmetic runs in Python for the local backend and in ``ratelimit.lua`` on Redis;
the contract tests hold both to the same answers.
"""

from __future__ import annotations

import calendar
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

US = 1_000_000  # all arithmetic is in integer microseconds: exact in Python and in Lua doubles


@dataclass(frozen=True, slots=True)
class Limit:
    """One limit a request is counted against.

    ``gcra``: ``capacity`` requests at once (requests + burst), then one every ``interval_us``.
    ``window``: ``capacity`` requests until ``window_end_us`` (a UTC day or month).
    """

    policy: str  # the name clients see: "key", "org", "quota", "route:<name>"
    key: str  # where its state is kept
    kind: Literal["gcra", "window"]
    capacity: int
    interval_us: int = 0  # gcra: microseconds per request
    window_start_us: int = 0  # window: the period's bounds (epoch microseconds)
    window_end_us: int = 0

    @property
    def window(self) -> float:
        """Seconds in which ``capacity`` requests are allowed (for RateLimit-Policy's w)."""
        if self.kind == "gcra":
            return self.capacity * self.interval_us / US
        return (self.window_end_us - self.window_start_us) / US


@dataclass(frozen=True, slots=True)
class Outcome:
    policy: str
    allowed: bool
    limit: int
    window: float
    remaining: int  # never negative
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
        """The limit that refused, else the one closest to refusing (for X-RateLimit-*)."""
        if not self.outcomes:
            return None
        return self.refused_by or min(self.outcomes, key=lambda o: (o.remaining, -o.reset))


def evaluate(
    limits: Sequence[Limit], state: Mapping[str, int], cost: int, now_us: int
) -> tuple[Decision, dict[str, int]]:
    """Decide every limit; the new state is returned only if all of them allow the request.

    Refused requests change nothing: they are not counted against anyone.
    """
    outcomes = []
    updates: dict[str, int] = {}
    for limit in limits:
        current = state.get(limit.key)
        if limit.kind == "gcra":
            outcome, new = _gcra(limit, current, cost, now_us)
        else:
            outcome, new = _window(limit, current, cost, now_us)
        outcomes.append(outcome)
        updates[limit.key] = new
    allowed = all(o.allowed for o in outcomes)
    return Decision(allowed, tuple(outcomes)), (updates if allowed and cost > 0 else {})


def _gcra(limit: Limit, tat: int | None, cost: int, now: int) -> tuple[Outcome, int]:
    interval = limit.interval_us
    tolerance = limit.capacity * interval
    tat = now if tat is None or tat < now else tat
    new_tat = tat + cost * interval
    if new_tat - now <= tolerance:
        remaining = (tolerance - (new_tat - now)) // interval
        return _outcome(limit, True, remaining, new_tat - now, 0), new_tat
    remaining = max(0, (tolerance - (tat - now)) // interval)
    return _outcome(limit, False, remaining, tat - now, new_tat - tolerance - now), tat


def _window(limit: Limit, count: int | None, cost: int, now: int) -> tuple[Outcome, int]:
    used = count or 0
    reset = max(0, limit.window_end_us - now)
    if used + cost <= limit.capacity:
        return _outcome(limit, True, limit.capacity - used - cost, reset, 0), used + cost
    # A plan change can leave more used than the new capacity: nothing remains, never less.
    return _outcome(limit, False, max(0, limit.capacity - used), reset, reset), used


def _outcome(limit: Limit, allowed: bool, remaining: int, reset_us: int, retry_us: int) -> Outcome:
    return Outcome(
        limit.policy, allowed, limit.capacity, limit.window, remaining, reset_us / US, retry_us / US
    )


def calendar_window(per: Literal["day", "month"], now: float) -> tuple[float, float, str]:
    """The UTC day or month that ``now`` falls in: (start, end, a label for storage keys).

    Seconds; callers turn them into microseconds.
    """
    moment = datetime.fromtimestamp(now, UTC)
    if per == "day":
        start = datetime(moment.year, moment.month, moment.day, tzinfo=UTC)
        label = start.strftime("%Y%m%d")
        end = start.timestamp() + 86400
        return start.timestamp(), end, label
    start = datetime(moment.year, moment.month, 1, tzinfo=UTC)
    days = calendar.monthrange(moment.year, moment.month)[1]
    return start.timestamp(), start.timestamp() + days * 86400, start.strftime("%Y%m")
