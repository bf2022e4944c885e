"""Per-request metrics kept as plain numbers expose exactly what prometheus_client's own
metrics would have: checked against a registry fed the same observations one by one."""

from __future__ import annotations

import random

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from gateway.observability.metrics import _LATENCY_BUCKETS, Metrics, RouteMetrics, UpstreamMetrics


def _reference(observations: list[tuple[str, int, float]]) -> bytes:
    registry = CollectorRegistry()
    requests = Counter(
        "gateway_requests_total",
        "Requests answered, by route, method and status class.",
        ["route", "method", "status_class"],
        registry=registry,
    )
    durations = Histogram(
        "gateway_request_duration_seconds",
        "Time from request head to the end of the response, by route and method.",
        ["route", "method"],
        buckets=_LATENCY_BUCKETS,
        registry=registry,
    )
    for method, status, seconds in observations:
        label = method if method in ("GET", "POST") else "other"
        requests.labels("contacts", label, f"{status // 100}xx").inc()
        durations.labels("contacts", label).observe(seconds)
    return generate_latest(registry)


def _lines(exposition: bytes, *names: str) -> list[bytes]:
    return sorted(line for line in exposition.splitlines() if line.startswith(names))


def test_counts_and_histograms_match_prometheus_clients_own() -> None:
    rng = random.Random(7)  # noqa: S311 - a fixed seed, so a failure can be repeated
    # Every bound exactly (a value on a bound belongs to that bucket), between bounds, over the
    # last one, and an invented method, which is counted as "other".
    values = [*_LATENCY_BUCKETS, 0.0, 1e-9, 0.0011, 61.0, 3600.0]
    values += [rng.uniform(0, 2) for _ in range(500)]
    observations = [
        (rng.choice(["GET", "POST", "BREW"]), rng.choice([200, 201, 404, 503]), v) for v in values
    ]
    metrics = Metrics()
    route = RouteMetrics(metrics, "contacts")
    for index, (method, status, seconds) in enumerate(observations):
        route.record(method, status, seconds)
        if index == 100:
            generate_latest(metrics.registry)  # a scrape in between loses nothing
    names = (b"gateway_requests_total", b"gateway_request_duration_seconds")
    ours = _lines(generate_latest(metrics.registry), *names)
    theirs = _lines(_reference(observations), *names)
    # Counts and buckets exactly; sums up to the order in which floats were added.
    assert [line for line in ours if b"_sum{" not in line] == [
        line for line in theirs if b"_sum{" not in line
    ]
    sums = [(a, b) for a, b in zip(ours, theirs, strict=True) if b"_sum{" in a]
    assert len(sums) == 3
    for a, b in sums:
        assert a.rpartition(b" ")[0] == b.rpartition(b" ")[0]
        assert float(a.rpartition(b" ")[2]) == pytest.approx(float(b.rpartition(b" ")[2]))
    assert any(b'le="+Inf"' in line for line in ours)


def test_a_reload_binds_the_same_numbers_and_a_scrape_sees_every_request() -> None:
    metrics = Metrics()
    before_reload = RouteMetrics(metrics, "contacts")
    after_reload = RouteMetrics(metrics, "contacts")
    upstream = UpstreamMetrics(metrics, "crm")
    before_reload.record("GET", 200, 0.002)
    after_reload.record("GET", 200, 0.003)
    upstream.observe(0.5)
    metrics.inflight.inc()
    text = generate_latest(metrics.registry).decode()
    assert 'gateway_requests_total{method="GET",route="contacts",status_class="2xx"} 2.0' in text
    assert 'gateway_upstream_duration_seconds_count{upstream="crm"} 1.0' in text
    assert "gateway_inflight_requests 1.0" in text
    metrics.inflight.dec()
    assert "gateway_inflight_requests 0.0" in generate_latest(metrics.registry).decode()
    # Bound once per label set, however many reloads bind a route again.
    assert len(metrics.pending._counters) == 1
