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

    Refused requests change nothing: they are not counted against anyone, so every outcome of a
    refusal, even of the limits that had room, reports the state as it stays.
    """
    checked = [_check(limit, state.get(limit.key), cost, now_us) for limit in limits]
    allowed = all(fits for fits, _, _ in checked)
    outcomes = tuple(
        _outcome(limit, fits, after if allowed else before, cost, now_us)
        for limit, (fits, before, after) in zip(limits, checked, strict=True)
    )
    updates = (
        {limit.key: after for limit, (_, _, after) in zip(limits, checked, strict=True)}
        if allowed and cost > 0
        else {}
    )
    return Decision(allowed, outcomes), updates


def _check(limit: Limit, current: int | None, cost: int, now: int) -> tuple[bool, int, int]:
    """Whether ``cost`` fits, and the limit's state (a GCRA TAT, a window's count) before and
    after counting it."""
    if limit.kind == "gcra":
        tat = now if current is None or current < now else current
        new_tat = tat + cost * limit.interval_us
        return new_tat - now <= limit.capacity * limit.interval_us, tat, new_tat
    used = current or 0
    return used + cost <= limit.capacity, used, used + cost


def _outcome(limit: Limit, fits: bool, held: int, cost: int, now: int) -> Outcome:
    """What a client is told, from the state that holds after the decision."""
    if limit.kind == "gcra":
        interval = limit.interval_us
        tolerance = limit.capacity * interval
        remaining = max(0, (tolerance - (held - now)) // interval)
        reset = held - now
        retry = 0 if fits else held + cost * interval - tolerance - now
    else:
        # A plan change can leave more used than the new capacity: nothing remains, never less.
        remaining = max(0, limit.capacity - held)
        reset = max(0, limit.window_end_us - now)
        retry = 0 if fits else reset
    return Outcome(
        limit.policy, fits, limit.capacity, limit.window, remaining, reset / US, retry / US
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
