"""Per-request metrics as plain numbers, added to prometheus_client's metrics when collected.

prometheus_client takes a lock for every increment and observation (and in a worker writes a
memory-mapped file); a request would pay that five times. Here a request only adds to plain
numbers, which the event loop's single thread owns. ``Pending.flush`` adds them to the real
metrics: the registry calls it before every collection (``Pending`` is a collector registered
ahead of the metrics), and a worker, whose metrics the supervisor reads from its files, calls
it every second and when it stops.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.metrics_core import Metric


class _Flushable(Protocol):
    def flush(self) -> None: ...


class PendingCounter:
    """Add to ``n``; the counter gets the sum at the next flush."""

    __slots__ = ("_child", "n")

    def __init__(self, child: Counter) -> None:
        self._child = child
        self.n = 0

    def flush(self) -> None:
        n = self.n
        if n:
            self.n = 0
            self._child.inc(n)


class PendingGauge:
    """A gauge of things in progress: ``inc``/``dec`` on a number, ``set`` at the flush."""

    __slots__ = ("_child", "_flushed", "value")

    def __init__(self, child: Gauge) -> None:
        self._child = child
        self.value = 0
        self._flushed = 0

    def inc(self) -> None:
        self.value += 1

    def dec(self) -> None:
        self.value -= 1

    def flush(self) -> None:
        if self.value != self._flushed:
            self._flushed = self.value
            self._child.set(self.value)


class PendingHistogram:
    """Observations counted per bucket; the histogram gets the counts and the sum at the flush.

    prometheus_client has no public call to add many observations at once, so the flush adds
    to the child's bucket and sum values directly (``_buckets``, ``_sum``, ``_upper_bounds``,
    unchanged since 0.4); tests/observability pins the exposition this gives.
    """

    __slots__ = ("_bounds", "_child", "_counts", "_total")

    def __init__(self, child: Histogram) -> None:
        self._child = child
        self._bounds: list[float] = list(child._upper_bounds)  # see the docstring
        self._counts = [0] * len(self._bounds)
        self._total = 0.0

    def observe(self, seconds: float) -> None:
        # The last bound is +Inf, so every value has a bucket: the first bound at or above it.
        self._counts[bisect_left(self._bounds, seconds)] += 1
        self._total += seconds

    def flush(self) -> None:
        counts = self._counts
        if not any(counts):
            return
        self._counts = [0] * len(counts)
        total, self._total = self._total, 0.0
        child = self._child
        child._sum.inc(total)  # see the docstring
        for value, n in zip(child._buckets, counts, strict=True):
            if n:
                value.inc(n)


class Pending:
    """Every pending number of one registry, by metric and labels (so a reload, which binds
    its routes' metrics anew, finds the ones already there), flushed together."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._counters: dict[tuple[str, tuple[str, ...]], PendingCounter] = {}
        self._histograms: dict[tuple[str, tuple[str, ...]], PendingHistogram] = {}
        self._others: list[_Flushable] = []
        registry.register(self)

    def counter(self, metric: Counter, *labels: str) -> PendingCounter:
        key = (metric._name, labels)  # the metric's own name, for the key only
        found = self._counters.get(key)
        if found is None:
            found = self._counters[key] = PendingCounter(metric.labels(*labels))
        return found

    def histogram(self, metric: Histogram, *labels: str) -> PendingHistogram:
        key = (metric._name, labels)  # the metric's own name, for the key only
        found = self._histograms.get(key)
        if found is None:
            found = self._histograms[key] = PendingHistogram(metric.labels(*labels))
        return found

    def add(self, pending: _Flushable) -> None:
        self._others.append(pending)

    def flush(self) -> None:
        for counter in self._counters.values():
            counter.flush()
        for histogram in self._histograms.values():
            histogram.flush()
        for other in self._others:
            other.flush()

    # The collector protocol: nothing of its own to describe or expose.
    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        self.flush()
        return iter(())
