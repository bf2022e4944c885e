"""Prometheus metrics: one registry per gateway, label children bound once per route.

The per-request metrics are plain numbers on the hot path (see ``pending``): prometheus_client
takes a lock for every increment, which a request pays several times over. They are added to
the registry's metrics when it is collected, and every second by a worker whose scrape is
served by the supervisor.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics

from gateway.observability.pending import Pending, PendingCounter, PendingGauge, PendingHistogram

# Set in a worker: prometheus_client then keeps every value in a file in this directory, which
# the supervisor reads to serve one /metrics for all workers.
MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"

# The *_created series double the output and nobody graphs them.
disable_created_metrics()  # type: ignore[no-untyped-call] # untyped upstream

# Only these methods get their own label value; anything a client invents is "other", so a
# client cannot grow the number of series.
_METHOD_LABELS = frozenset(
    {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT"}
)
_STATUS_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")
UNMATCHED_ROUTE = "unmatched"

# Gateway overhead lives in the low milliseconds; backends in the tens to thousands.
_LATENCY_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)


def method_label(method: str) -> str:
    return method if method in _METHOD_LABELS else "other"


class Metrics:
    """Every metric the core exports, registered in the gateway's own registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        # Registered first, so a collection adds what is pending before any metric is read.
        self.pending = Pending(r)
        self.requests = Counter(
            "gateway_requests_total",
            "Requests answered, by route, method and status class.",
            ["route", "method", "status_class"],
            registry=r,
        )
        self.request_duration = Histogram(
            "gateway_request_duration_seconds",
            "Time from request head to the end of the response, by route and method.",
            ["route", "method"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.upstream_duration = Histogram(
            "gateway_upstream_duration_seconds",
            "Time from sending to an upstream to its response head, by upstream.",
            ["upstream"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.upstream_errors = Counter(
            "gateway_upstream_errors_total",
            "Failed upstream exchanges, by upstream and kind of failure.",
            ["upstream", "kind"],
            registry=r,
        )
        self.upstream_ejections = Counter(
            "gateway_upstream_ejections_total",
            "Targets left out after failing (passive) or failing their health check (active).",
            ["upstream"],
            registry=r,
        )
        self.upstream_healthy_targets = Gauge(
            "gateway_upstream_healthy_targets",
            "Targets of an upstream that get traffic now.",
            ["upstream"],
            registry=r,
            multiprocess_mode="min",
        )
        self.inflight = PendingGauge(
            Gauge(
                "gateway_inflight_requests",
                "Requests being handled now.",
                registry=r,
                multiprocess_mode="livesum",
            )
        )
        self.pending.add(self.inflight)
        self.config_info = Gauge(
            "gateway_config_info",
            "The config in force: 1 for its hash (first 12 hex digits of SHA-256 of the file).",
            ["hash"],
            registry=r,
            multiprocess_mode="liveall",
        )
        self.rate_limit_decisions = Counter(
            "gateway_rate_limit_decisions_total",
            "Rate-limit decisions, by policy (key, org, quota, route:<name>) and decision.",
            ["policy", "decision"],
            registry=r,
        )
        self.auth_results = Counter(
            "gateway_auth_total",
            "Credentials checked, by credential (key, jwt, introspection, none: no credential)"
            " and outcome (ok, invalid, unavailable: could not be checked, answered 503).",
            ["credential", "outcome"],
            registry=r,
        )
        self.rate_limit_store_errors = Counter(
            "gateway_rate_limit_store_errors_total",
            "Rate-limit decisions the shared store could not make (on_store_error applied).",
            registry=r,
        )
        self.rate_limit_degraded = Gauge(
            "gateway_rate_limit_degraded",
            "1 while rate limits are decided without the shared store (on_store_error).",
            registry=r,
            multiprocess_mode="max",
        )
        self.idempotency = Counter(
            "gateway_idempotency_total",
            "Requests with an Idempotency-Key, by outcome"
            " (stored, replayed, conflict, mismatch, released, not_stored).",
            ["outcome"],
            registry=r,
        )
        self.deprecated_requests = Counter(
            "gateway_deprecated_requests_total",
            "Requests to deprecated routes (before and after their sunset), by route.",
            ["route"],
            registry=r,
        )
        self.websocket_sessions = Counter(
            "gateway_websocket_sessions_total",
            "WebSocket handshakes that passed the chain, by route and outcome: upstream_refused"
            " (no 101), upstream_failed (502/504), or how a relayed session ended"
            " (client_closed, upstream_closed, idle_timeout, total_timeout, shutdown).",
            ["route", "outcome"],
            registry=r,
        )
        self.websocket_open = Gauge(
            "gateway_websocket_open_sessions",
            "Relayed WebSocket sessions open now, by route.",
            ["route"],
            registry=r,
            multiprocess_mode="livesum",
        )
        self.request_log_entries = Counter(
            "gateway_request_log_entries_total",
            "Request-log entries, by result: written (to the store), dropped (the buffer was"
            " full while the store could not take them).",
            ["result"],
            registry=r,
        )
        self.request_log_buffered = Gauge(
            "gateway_request_log_buffered",
            "Request-log entries waiting to be written.",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.audit_unrecorded = Counter(
            "gateway_audit_unrecorded_total",
            "Admin actions done whose audit entry the store could not take (each is in the log"
            " as audit_unrecorded, in full).",
            registry=r,
        )
        self.config_reloads = Counter(
            "gateway_config_reloads_total",
            "Config reloads (SIGHUP, POST /admin/reload, file watch), by result (ok, error).",
            ["result"],
            registry=r,
        )
        self.webhook_events = Counter(
            "gateway_webhook_events_total",
            "Events queued for at least one webhook endpoint, by source (admin, stream, gateway,"
            " ping).",
            ["source"],
            registry=r,
        )
        self.webhook_deliveries = Counter(
            "gateway_webhook_deliveries_total",
            "Webhook delivery attempts, by result: delivered, retrying (failed, will retry), dead"
            " (failed, no retry left), lost_lease (finished too late to count).",
            ["result"],
            registry=r,
        )
        self.webhook_attempt_duration = Histogram(
            "gateway_webhook_attempt_duration_seconds",
            "Time of one webhook attempt, connect to answer.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.webhook_delivery_latency = Histogram(
            "gateway_webhook_delivery_latency_seconds",
            "Time from an event's publication to its successful delivery, retries included.",
            buckets=(0.1, 0.5, 1.0, 5.0, 30.0, 60.0, 300.0, 1800.0, 7200.0, 36000.0, 86400.0),
            registry=r,
        )
        self.webhook_queue = Gauge(
            "gateway_webhook_queue_depth",
            "Webhook deliveries waiting, by state (pending: all not yet finished; due: due now).",
            ["state"],
            registry=r,
            multiprocess_mode="max",
        )
        self._config_hash: str | None = None
        self._decision_children: dict[tuple[str, bool], PendingCounter] = {}
        self._auth_children: dict[tuple[str, str], PendingCounter] = {}

    def count_decision(self, policy: str, allowed: bool) -> None:
        child = self._decision_children.get((policy, allowed))
        if child is None:
            decision = "allowed" if allowed else "refused"
            child = self.pending.counter(self.rate_limit_decisions, policy, decision)
            self._decision_children[(policy, allowed)] = child
        child.n += 1

    def count_auth(self, credential: str, outcome: str) -> None:
        """One credential checked; both labels come from short fixed lists."""
        child = self._auth_children.get((credential, outcome))
        if child is None:
            child = self.pending.counter(self.auth_results, credential, outcome)
            self._auth_children[(credential, outcome)] = child
        child.n += 1

    def set_config(self, digest: str) -> None:
        if self._config_hash is not None and self._config_hash != digest:
            self.config_info.remove(self._config_hash)
        self.config_info.labels(digest).set(1)
        self._config_hash = digest


class RouteMetrics:
    """A route's label children, looked up once per (method, status class) and kept."""

    __slots__ = ("_durations", "_label", "_metrics", "_requests")

    def __init__(self, metrics: Metrics, label: str) -> None:
        self._metrics = metrics
        self._label = label
        self._requests: dict[tuple[str, int], PendingCounter] = {}
        self._durations: dict[str, PendingHistogram] = {}

    def record(self, method: str, status: int, seconds: float) -> None:
        status_class = min(max(status // 100, 1), 5)
        key = (method, status_class)
        counter = self._requests.get(key)
        if counter is None:
            label = method_label(method)
            counter = self._metrics.pending.counter(
                self._metrics.requests, self._label, label, _STATUS_CLASSES[status_class - 1]
            )
            if label == method:  # an invented method is not kept: clients choose those
                self._requests[key] = counter
        counter.n += 1
        if status == 101:
            # A WebSocket session: its length is the session's, not a request's latency (the
            # access log and gateway_websocket_* say how long and how it ended).
            return
        histogram = self._durations.get(method)
        if histogram is None:
            label = method_label(method)
            histogram = self._metrics.pending.histogram(
                self._metrics.request_duration, self._label, label
            )
            if label == method:
                self._durations[method] = histogram
        histogram.observe(seconds)


class UpstreamMetrics:
    """An upstream's label children."""

    __slots__ = ("_duration", "_errors", "_metrics", "_name", "ejections", "healthy")

    def __init__(self, metrics: Metrics, name: str) -> None:
        self._metrics = metrics
        self._name = name
        self._duration = metrics.pending.histogram(metrics.upstream_duration, name)
        self._errors: dict[str, Counter] = {}
        self.ejections = metrics.upstream_ejections.labels(name)
        self.healthy = metrics.upstream_healthy_targets.labels(name)

    def observe(self, seconds: float) -> None:
        self._duration.observe(seconds)

    def error(self, kind: str) -> None:
        counter = self._errors.get(kind)
        if counter is None:
            counter = self._errors[kind] = self._metrics.upstream_errors.labels(self._name, kind)
        counter.inc()
