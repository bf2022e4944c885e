"""How many failed console logins a client address may make: a few a minute, then 429."""

from __future__ import annotations

import math
import time
from collections import OrderedDict, deque
from collections.abc import Callable

FAILURES = 5  # failed logins an address may make per WINDOW
WINDOW = 60.0
MAX_ADDRESSES = 10_000  # addresses remembered at once; the oldest are forgotten beyond it


class LoginLimit:
    """Failed logins per client address over a sliding window.

    SECURITY: once an address has failed FAILURES times within WINDOW, even the right token
    is refused until the oldest failure leaves the window, so an answer never tells a guess
    right while the address is blocked.
    """

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.time,
        failures: int = FAILURES,
        window: float = WINDOW,
        max_addresses: int = MAX_ADDRESSES,
    ) -> None:
        self._clock = clock
        self._failures = failures
        self._window = window
        self._max_addresses = max_addresses
        self._seen: OrderedDict[str, deque[float]] = OrderedDict()

    def retry_after(self, address: str) -> int | None:
        """Whole seconds until ``address`` may try again; None when it may now."""
        times = self._recent(address)
        if times is None or len(times) < self._failures:
            return None
        return max(1, math.ceil(times[0] + self._window - self._clock()))

    def failed(self, address: str) -> None:
        times = self._recent(address)
        if times is None:
            while len(self._seen) >= self._max_addresses:
                self._seen.popitem(last=False)
            times = self._seen[address] = deque(maxlen=self._failures)
        times.append(self._clock())
        self._seen.move_to_end(address)

    def _recent(self, address: str) -> deque[float] | None:
        times = self._seen.get(address)
        if times is None:
            return None
        cutoff = self._clock() - self._window
        while times and times[0] <= cutoff:
            times.popleft()
        if not times:
            del self._seen[address]
            return None
        return times
