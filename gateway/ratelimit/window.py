"""Sliding windows: at most ``requests`` units in any interval of length ``per``, in bounded memory.

A log of every admitted request would be exact but grow with ``requests`` (up to 10**9). Instead
the window is cut into sub-buckets of ``g = ceil(per / 1000)`` microseconds: a request admitted at
``t`` is counted in the sub-bucket that ends at ``t`` rounded *up* to a multiple of ``g``, and a
sub-bucket counts until its end + ``per``. Rounding up only makes a request count for longer, so
every request counts for at least ``per`` after it was admitted and no interval of length ``per``
ever holds more than ``requests``: the promise holds exactly. The price is that a refused client
may wait up to ``g`` (0.1% of the window) longer than strictly needed.

At most ~1000 sub-buckets are alive at once, oldest first with a running total, so a decision
drops only the sub-buckets that expired since the last one (amortised O(1)), and a window that
has emptied entirely is dropped in one step. Only a refusal walks the oldest sub-buckets, to
tell when enough of them will have left. ``ratelimit.lua`` keeps the same state in a Redis
hash (see there) and must give the same answers.
"""

from __future__ import annotations

from collections import deque

GRANULES = 1000  # sub-buckets per window: the memory bound, and the 1/1000 a wait may overrun


def granule_us(per_us: int) -> int:
    """The length of one sub-bucket of a window of ``per_us``."""
    return max(1, -(-per_us // GRANULES))


def slot(now_us: int, granule: int) -> int:
    """The end of the sub-bucket a request at ``now_us`` is counted in: ``now_us`` rounded up."""
    return -(-now_us // granule) * granule


class SlidingWindow:
    """The counted sub-buckets of one window, oldest first, as [end in us, units]."""

    __slots__ = ("buckets", "total")

    def __init__(self) -> None:
        self.buckets: deque[list[int]] = deque()
        self.total = 0

    def expire(self, now_us: int, per_us: int) -> None:
        """Forget the sub-buckets that no longer count at ``now_us``."""
        buckets = self.buckets
        if buckets and buckets[-1][0] + per_us <= now_us:
            buckets.clear()
            self.total = 0
            return
        while buckets and buckets[0][0] + per_us <= now_us:
            self.total -= buckets.popleft()[1]

    def add(self, end_us: int, units: int) -> list[int]:
        """Count ``units`` in the sub-bucket ending at ``end_us``; returns that sub-bucket."""
        buckets = self.buckets
        # An instance whose clock is behind another's may stamp a request before the newest
        # sub-bucket: counting it there makes it count longer, never shorter.
        if buckets and buckets[-1][0] >= end_us:
            buckets[-1][1] += units
        else:
            buckets.append([end_us, units])
        self.total += units
        return buckets[-1]

    def reset(self, now_us: int, per_us: int) -> int:
        """Microseconds until nothing counted now counts any more."""
        return self.buckets[-1][0] + per_us - now_us if self.buckets else 0

    def wait(self, units: int, now_us: int, per_us: int) -> int:
        """Microseconds until ``units`` of what is counted now have left the window."""
        freed = 0
        for end, count in self.buckets:
            freed += count
            if freed >= units:
                return end + per_us - now_us
        # More than the window holds: only a cost above the limit itself asks for that.
        return self.reset(now_us, per_us)
