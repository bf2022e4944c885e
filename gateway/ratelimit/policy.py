"""The algorithms: GCRA buckets, sliding windows and calendar windows, all decided together or
not at all.

The same arithmetic runs in Python for the local backend and in ``ratelimit.lua`` on Redis;
the contract tests hold both to the same answers.
"""

from __future__ import annotations

import calendar
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from gateway.ratelimit.window import SlidingWindow, slot

US = 1_000_000  # all arithmetic is in integer microseconds: exact in Python and in Lua doubles

# A limit's state: a GCRA TAT or a window's count, or a sliding window's sub-buckets.
State = int | SlidingWindow


@dataclass(frozen=True, slots=True)
class Limit:
    """One limit a request is counted against.

    ``gcra``: ``capacity`` requests at once (requests + burst), then one every ``interval_us``.
    ``sliding``: ``capacity`` requests in any ``per_us``, counted in sub-buckets of
    ``granule_us`` (see window.py).
    ``window``: ``capacity`` requests until ``window_end_us`` (a UTC day or month).
    """

    policy: str  # the name clients see: "key", "org", "quota", "route:<name>"
    key: str  # where its state is kept
    kind: Literal["gcra", "sliding", "window"]
    capacity: int
    interval_us: int = 0  # gcra: microseconds per request
    window_start_us: int = 0  # window: the period's bounds (epoch microseconds)
    window_end_us: int = 0
    per_us: int = 0  # sliding: the window's length
    granule_us: int = 0  # sliding: one sub-bucket's length

    @property
    def window(self) -> float:
        """Seconds in which ``capacity`` requests are allowed (for RateLimit-Policy's w)."""
        if self.kind == "gcra":
            return self.capacity * self.interval_us / US
        if self.kind == "sliding":
            return self.per_us / US
        return (self.window_end_us - self.window_start_us) / US


@dataclass(frozen=True, slots=True)
class Outcome:
    policy: str
    allowed: bool
    limit: int
    window: float
    remaining: int  # never negative
    reset: float  # seconds until the limit is whole again (gcra, sliding) or the window ends
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
    limits: Sequence[Limit], state: Mapping[str, State], cost: int, now_us: int
) -> tuple[Decision, dict[str, State]]:
    """Decide every limit; the new state is returned only if all of them allow the request.

    Refused requests change nothing: they are not counted against anyone, so every outcome of a
    refusal, even of the limits that had room, reports the state as it stays. A sliding window
    in ``state`` is updated in place: its expired sub-buckets are dropped whatever the decision
    (that changes no answer), and the request is counted in it only when it is returned.
    """
    checked = [_check(limit, state.get(limit.key), cost, now_us) for limit in limits]
    allowed = all(fits for fits, _, _ in checked)
    updates: dict[str, State] = {}
    if allowed and cost > 0:
        for limit, (_, _, after) in zip(limits, checked, strict=True):
            if isinstance(after, SlidingWindow):
                after.add(slot(now_us, limit.granule_us), cost)
            updates[limit.key] = after
    outcomes = tuple(
        _outcome(limit, fits, after if allowed else before, cost, now_us)
        for limit, (fits, before, after) in zip(limits, checked, strict=True)
    )
    return Decision(allowed, outcomes), updates


def _check(limit: Limit, current: State | None, cost: int, now: int) -> tuple[bool, State, State]:
    """Whether ``cost`` fits, and the limit's state (a GCRA TAT, a window's count) before and
    after counting it; a sliding window is one object, counted in by ``evaluate``."""
    if limit.kind == "sliding":
        window = current if isinstance(current, SlidingWindow) else SlidingWindow()
        window.expire(now, limit.per_us)
        return window.total + cost <= limit.capacity, window, window
    if isinstance(current, SlidingWindow):  # never: the algorithm is part of the state's key
        current = None
    if limit.kind == "gcra":
        tat = now if current is None or current < now else current
        new_tat = tat + cost * limit.interval_us
        return new_tat - now <= limit.capacity * limit.interval_us, tat, new_tat
    used = current or 0
    return used + cost <= limit.capacity, used, used + cost


def _outcome(limit: Limit, fits: bool, held: State, cost: int, now: int) -> Outcome:
    """What a client is told, from the state that holds after the decision."""
    if isinstance(held, SlidingWindow):
        # As for a calendar window, a lowered limit can leave more counted than it allows.
        remaining = max(0, limit.capacity - held.total)
        reset = held.reset(now, limit.per_us)
        retry = 0 if fits else held.wait(held.total + cost - limit.capacity, now, limit.per_us)
    elif limit.kind == "gcra":
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
