"""The typed, frozen models of gateway.yaml; field names are the product contract."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from yarl import URL

from gateway.config.types import (
    DAY,
    MIB,
    WEEK,
    YEAR,
    ByteSize,
    Duration,
    DurationRange,
    Interval,
    Network,
    NumberRange,
    SizeRange,
    Timeout,
)
from gateway.dataplane.paths import compile_template
from gateway.keys.scopes import check_scope

_METHOD = re.compile(r"^[A-Z][A-Z0-9!#$%&'*+.^_`|~-]*$")
_ROUTE_NAME = re.compile(r"^[A-Za-z0-9_.:/{}*-]{1,100}$")
# Counts of requests: far above any real limit, far below where a counter stops being exact.
MAX_REQUESTS = 1_000_000_000
MAX_QUOTA = 1_000_000_000_000


class Section(BaseModel):
    """Base of every config section: immutable, strict about unknown keys."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


class ListenConfig(Section):
    host: str = Field("0.0.0.0", description="Address the data listener binds.")  # noqa: S104 - a gateway serves the network by design
    port: int = Field(8080, ge=0, le=65535, description="Port of the data listener.")


class AdminConfig(Section):
    host: str = Field("127.0.0.1", description="Address of the admin listener (keep it private).")
    port: int = Field(9090, ge=0, le=65535, description="Port of the admin listener.")
    token: str | None = Field(
        None, description="Bearer token for /admin/*; use ${GATEWAY_ADMIN_TOKEN}."
    )
    token_file: str = Field(
        ".gateway/admin-token",
        description="Without token: the token is read from here, or made and saved here (0600).",
    )

    @field_validator("token")
    @classmethod
    def _token_strong_enough(cls, value: str | None) -> str | None:
        if value is not None and value != "" and len(value) < 16:
            raise ValueError("must be at least 16 characters")
        return value or None


class StoreConfig(Section):
    backend: Literal["local", "redis"] = Field(
        "local", description="local (SQLite, one instance) or redis."
    )
    path: str = Field(".gateway/state.db", description="SQLite file of the local store.")
    url: str | None = Field(None, description="redis://host:port/db for the redis store.")
    key_prefix: str = Field(
        "gw", pattern=r"^[A-Za-z0-9_-]{1,32}$", description="Namespace of our keys in Redis."
    )

    @model_validator(mode="after")
    def _redis_needs_url(self) -> StoreConfig:
        if self.backend == "redis" and not self.url:
            raise ValueError("url: required when backend is redis")
        return self


class ServerConfig(Section):
    idle_timeout: Timeout = Field(
        75.0,
        description="How long a connection may wait idle for its next request before it is closed.",
    )
    # SECURITY: bounded, so a slow-header client can never hold a socket for long.
    header_timeout: Annotated[float, DurationRange(least=1.0, most=600.0)] = Field(
        10.0,
        description=(
            "Deadline for a complete request head, from its first byte (the accept, for a"
            " connection's first request); 408 and close when it passes; 1s to 10m."
        ),
    )
    body_timeout: Timeout = Field(
        30.0,
        description="Longest wait for the next piece of a request body before giving up;"
        " at most 1d.",
    )
    drain_timeout: Annotated[float, DurationRange(most=DAY)] = Field(
        30.0, description="On SIGTERM, how long in-flight requests may take to finish; at most 1d."
    )
    max_header_size: Annotated[int, SizeRange(least=256, most=MIB)] = Field(
        8190, description="Longest request line or header field; 256b to 1MiB."
    )
    max_headers: int = Field(100, ge=1, le=1000, description="Most header fields in one request.")


class LogConfig(Section):
    level: Literal["debug", "info", "warning", "error"] = Field(
        "info", description="Lowest level logged."
    )
    format: Literal["json", "console"] = Field(
        "json", description="json for machines, console for people."
    )
    access_log: bool = Field(True, description="One line per request on stdout.")


class TimeoutsConfig(Section):
    connect: Timeout = Field(
        2.0, description="Time to open a connection to a target; over 0, at most 1d."
    )
    read: Timeout = Field(
        30.0, description="Longest silence while waiting for upstream bytes; over 0, at most 1d."
    )


def _utc(value: Any) -> Any:
    """YAML reads 2026-01-01 as a date: midnight UTC. A datetime without a zone is UTC."""
    if isinstance(value, datetime):
        return value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day, tzinfo=UTC)
    return value


UtcDateTime = Annotated[
    datetime,
    BeforeValidator(_utc),
    AfterValidator(_utc),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "string", "format": "date"},
                {"type": "string", "format": "date-time"},
            ],
            "description": "A date (midnight UTC) or an RFC 3339 time (UTC if it has no zone).",
        }
    ),
]


class DeprecationConfig(Section):
    deprecated_at: UtcDateTime = Field(description="When the route is (or was) deprecated.")
    sunset_at: UtcDateTime | None = Field(None, description="After this, the route answers 410.")
    link: str | None = Field(None, description="Where clients read about the deprecation.")
    successor: str | None = Field(None, description="The route that replaces this one.")

    @field_validator("link", "successor")
    @classmethod
    def _absolute_url(cls, value: str | None) -> str | None:
        if value is not None:
            url = URL(value)
            if (
                url.scheme not in ("http", "https")
                or not url.host
                or any(c in value for c in '<> "')
            ):
                raise ValueError(f"must be an absolute http(s) URL (got {value!r})")
        return value

    @model_validator(mode="after")
    def _sunset_after_deprecation(self) -> DeprecationConfig:
        if self.sunset_at is not None and self.sunset_at <= self.deprecated_at:
            raise ValueError("sunset_at: must be after deprecated_at")
        return self


_ORIGIN = re.compile(r"^https?://(\*\.)?[a-z0-9.-]+(:\d{1,5})?$")


class CorsConfig(Section):
    origins: tuple[str, ...] = Field(
        (), description="Allowed origins: https://app.example.com, https://*.example.com or *."
    )
    methods: tuple[str, ...] = Field(
        ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"), description="Methods browsers may use."
    )
    headers: tuple[str, ...] = Field(
        ("Authorization", "Content-Type", "Idempotency-Key", "X-Request-Id"),
        description="Request headers browsers may send.",
    )
    max_age: Annotated[float, DurationRange(most=DAY)] = Field(
        600.0, description="How long browsers may cache a preflight; at most 1d."
    )
    credentials: bool = Field(False, description="Allow cookies and HTTP auth from browsers.")

    @field_validator("origins")
    @classmethod
    def _origins(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for origin in value:
            if origin != "*" and not _ORIGIN.match(origin):
                raise ValueError(
                    f"not an origin: {origin!r} (scheme://host[:port], lower case, no path;"
                    " a leading *. for subdomains)"
                )
        return value

    @field_validator("methods")
    @classmethod
    def _methods(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(m.upper() for m in value)

    @model_validator(mode="after")
    def _no_wildcard_with_credentials(self) -> CorsConfig:
        if self.credentials and "*" in self.origins:
            raise ValueError("origins: '*' cannot be used with credentials: true (browsers refuse)")
        return self


_HEADER_NAME = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$")
# What the gateway sets itself: rules may not touch these (they would re-open spoofing).
_OWNED = frozenset(
    n.lower().replace("_", "-")
    for n in (
        "X-Request-Id",
        "X-Forwarded-For",
        "X-Forwarded-Proto",
        "X-Forwarded-Host",
        "Forwarded",
        "X-Real-Ip",
        "X-Org-Id",
        "X-Org-Slug",
        "X-Api-Key-Id",
        "X-Scopes",
        "X-Key-Environment",
        "Host",
        "Content-Length",
        "Transfer-Encoding",
        "Connection",
        "RateLimit",
        "RateLimit-Policy",
        "X-RateLimit-Limit",
        "X-RateLimit-Remaining",
        "X-RateLimit-Reset",
        "Idempotent-Replayed",
        "Keep-Alive",
        "Proxy-Connection",
        "Proxy-Authenticate",
        "Proxy-Authorization",
        "TE",
        "Trailer",
        "Upgrade",
        "Expect",
    )
)


class HeaderRuleSet(Section):
    set: dict[str, str] = Field(default_factory=dict, description="Replace (or add) these.")
    add: dict[str, str] = Field(default_factory=dict, description="Add these, keeping others.")
    remove: tuple[str, ...] = Field((), description="Remove these.")

    @model_validator(mode="after")
    def _names(self) -> HeaderRuleSet:
        for name in [*self.set, *self.add, *self.remove]:
            if not _HEADER_NAME.match(name):
                raise ValueError(f"not a header name: {name!r}")
            normalized = name.lower().replace("_", "-")
            if normalized in _OWNED or normalized.startswith("access-control-"):
                raise ValueError(f"{name} is set by the gateway itself and cannot be changed")
        for value in [*self.set.values(), *self.add.values()]:
            if any((ord(c) < 0x20 and c != "\t") or ord(c) == 0x7F for c in value):
                raise ValueError("header values must not contain control characters")
        return self


class HeaderRulesConfig(Section):
    request: HeaderRuleSet = Field(default_factory=HeaderRuleSet, description="To the upstream.")
    response: HeaderRuleSet = Field(default_factory=HeaderRuleSet, description="To the client.")


class RateLimitConfig(Section):
    requests: int = Field(
        gt=0, le=MAX_REQUESTS, description="Sustained rate: this many requests per `per`."
    )
    per: Annotated[float, DurationRange(most=YEAR, positive=True)] = Field(
        description="The period of the sustained rate, e.g. 1m; at most 365d."
    )
    burst: int = Field(
        0, ge=0, le=MAX_REQUESTS, description="Extra requests a fresh bucket allows at once."
    )

    @model_validator(mode="after")
    def _refills_in_time(self) -> RateLimitConfig:
        # The limiter keeps a bucket's state until it is full again: at most a year.
        refill = (self.requests + self.burst) * self.per / self.requests
        if refill > YEAR:
            raise ValueError(
                f"burst: {self.requests} + {self.burst} requests take {refill / DAY:g}d to"
                f" refill at {self.requests} per {self.per:g}s; at most 365d (lower burst or per)"
            )
        return self


class QuotaConfig(Section):
    requests: int = Field(
        gt=0, le=MAX_QUOTA, description="Requests per calendar period (at most 10**12)."
    )
    per: Literal["day", "month"] = Field(description="UTC day or UTC month.")


class RouteLimitConfig(RateLimitConfig):
    name: str = Field(
        pattern=r"^[a-z0-9][a-z0-9_-]{0,31}$", description="Names the policy: route:<name>."
    )
    scope: Literal["key", "org"] = Field("key", description="Counted per key or per org.")


class IdempotencyConfig(Section):
    ttl: Annotated[float, DurationRange(most=WEEK, positive=True)] = Field(
        86400.0, description="How long a response is replayed to retries; at most 7d."
    )
    lock_timeout: Timeout = Field(
        60.0,
        description="How long a request in flight holds its key (a crashed holder's ends);"
        " at most 1d.",
    )
    max_response_body: Annotated[int, SizeRange(most=64 * MIB)] = Field(
        1024 * 1024,
        description="Largest response kept for replay; retries of a larger one get a 409."
        " At most 64MiB (each is kept in the store).",
    )


class ReloadConfig(Section):
    watch: bool = Field(False, description="Reload when the config file changes (polling).")
    interval: Interval = Field(
        1.0, description="How often the file is checked when watched; 10ms to 1d."
    )


class RateLimitsConfig(Section):
    on_store_error: Literal["open", "closed", "local"] = Field(
        "local",
        description=(
            "When the shared store is unreachable: open (no limits), closed (503), or local"
            " (each instance enforces the plan on its own)."
        ),
    )


class RouteTimeoutsConfig(Section):
    connect: Timeout | None = Field(
        None, description="Overrides the upstream's connect timeout; over 0, at most 1d."
    )
    read: Timeout | None = Field(
        None, description="Overrides the upstream's read timeout; over 0, at most 1d."
    )


class HealthConfig(Section):
    failures: int = Field(3, ge=1, le=1000, description="Failures in a row that eject a target.")
    cooldown: Annotated[float, DurationRange(most=DAY)] = Field(
        5.0, description="First ejection; doubles on each repeat; at most 1d."
    )
    max_cooldown: Annotated[float, DurationRange(most=DAY)] = Field(
        300.0, description="Longest ejection; at most 1d."
    )
    path: str | None = Field(None, description="Active check: GET this path on each target.")
    interval: Interval = Field(10.0, description="Time between active checks; 10ms to 1d.")

    @field_validator("path")
    @classmethod
    def _path(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith("/"):
            raise ValueError(f"must start with '/' (got {value!r})")
        return value


class UpstreamConfig(Section):
    targets: tuple[str, ...] = Field(
        (), description="Base URLs, e.g. http://10.0.0.5:8000; requests go round robin."
    )
    sandbox: tuple[str, ...] = Field(
        (), description="Targets for requests made with _test_ keys (default: the same targets)."
    )
    builtin: Literal["echo"] | None = Field(
        None, description="Start a built-in backend instead of targets (echo: a demo)."
    )
    timeouts: TimeoutsConfig = Field(default_factory=TimeoutsConfig)
    preserve_host: bool = Field(
        False, description="Send the client's Host instead of the target's."
    )
    max_connections: int = Field(
        256, ge=1, le=100_000, description="Pooled connections per target at most."
    )
    max_concurrency: int | None = Field(
        None, ge=1, le=1_000_000, description="Requests in flight at most; more get 503 at once."
    )
    health: HealthConfig = Field(default_factory=HealthConfig)
    retry_budget: Annotated[float, NumberRange(0.0, 1.0)] = Field(
        0.2, description="Retries at most this share (0 to 1) of requests (plus a reserve)."
    )

    @field_validator("targets", "sandbox")
    @classmethod
    def _targets_are_base_urls(cls, targets: tuple[str, ...]) -> tuple[str, ...]:
        for target in targets:
            url = URL(target)
            if url.scheme not in ("http", "https") or not url.host:
                raise ValueError(f"must be http(s)://host[:port][/base] URLs (got {target!r})")
            if url.query_string or url.fragment or url.user:
                raise ValueError(
                    f"must not carry a query, fragment or credentials (got {target!r})"
                )
        return targets

    @model_validator(mode="after")
    def _one_kind_of_target(self) -> UpstreamConfig:
        if self.builtin is None and not self.targets:
            raise ValueError("targets: give at least one target (or builtin: echo)")
        if self.builtin is not None and self.targets:
            raise ValueError("builtin: use either targets or builtin, not both")
        if self.builtin is not None and self.sandbox:
            raise ValueError("sandbox: a builtin upstream has no sandbox")
        return self


class RouteConfig(Section):
    path: str = Field(description="Path template: /v1/contacts/{id}, /v1/legacy/{rest:.*}.")
    upstream: str = Field(description="Name of an entry in upstreams.")
    name: str | None = Field(None, description="Label in metrics and logs (default: the path).")
    methods: tuple[str, ...] | None = Field(None, description="Allowed methods (default: all).")
    host: str | None = Field(None, description="Only match requests for this Host.")
    timeouts: RouteTimeoutsConfig = Field(default_factory=RouteTimeoutsConfig)
    max_body_size: ByteSize = Field(
        10 * 1024 * 1024, description="Largest request body accepted; at most 1024GiB."
    )
    auth: Literal["key", "none"] = Field(
        "key", description="key: an API key is required; none: public."
    )
    scopes: tuple[str, ...] = Field(
        (), description="Scopes a key needs, all of them, for this route."
    )
    forward_authorization: bool = Field(
        False, description="Pass the client's Authorization header to the upstream."
    )
    cost: int = Field(1, ge=1, le=1000, description="Units a request takes from every limit.")
    idempotency: Literal["off", "optional", "required"] = Field(
        "off", description="Idempotency-Key on POST, PATCH and DELETE: off, optional or required."
    )
    idempotency_keep_5xx: bool = Field(
        True, description="Replay an upstream 5xx to retries too (false: let them try again)."
    )
    deprecation: DeprecationConfig | None = Field(
        None, description="Deprecation and Sunset headers; 410 after the sunset."
    )
    cors: CorsConfig | None = Field(
        None, description="This route's CORS (default: the global cors)."
    )
    headers: HeaderRulesConfig = Field(
        default_factory=HeaderRulesConfig,
        description="Add, set or remove headers, after the gateway's own sanitising.",
    )
    rate_limits: tuple[RouteLimitConfig, ...] = Field(
        (), description="Extra limits for this route only, e.g. a stricter one on an export."
    )

    @field_validator("scopes")
    @classmethod
    def _scopes_are_names(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(check_scope(s) for s in value)

    @model_validator(mode="after")
    def _scopes_need_auth(self) -> RouteConfig:
        if self.scopes and self.auth == "none":
            raise ValueError("scopes: a route with auth: none cannot require scopes")
        if self.rate_limits and self.auth == "none":
            raise ValueError("rate_limits: limits count per key or org; they need auth: key")
        if self.idempotency != "off" and self.auth == "none":
            raise ValueError("idempotency: records are kept per org; it needs auth: key")
        names = [limit.name for limit in self.rate_limits]
        if len(set(names)) != len(names):
            raise ValueError("rate_limits: each limit of a route needs its own name")
        return self

    @field_validator("path")
    @classmethod
    def _path_is_template(cls, value: str) -> str:
        compile_template(value)  # raises ValueError with the reason
        return value

    @field_validator("methods")
    @classmethod
    def _methods_are_tokens(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if value is None:
            return None
        if not value:
            raise ValueError("must list at least one method, or be left out for all")
        upper = tuple(m.upper() for m in value)
        for method in upper:
            if not _METHOD.match(method):
                raise ValueError(f"not an HTTP method: {method!r}")
        return upper

    @field_validator("host")
    @classmethod
    def _host_is_lower(cls, value: str | None) -> str | None:
        return value.lower().rstrip(".") if value else None

    @field_validator("name")
    @classmethod
    def _name_is_label(cls, value: str | None) -> str | None:
        if value is not None and not _ROUTE_NAME.match(value):
            raise ValueError(f"must be 1-100 characters of [A-Za-z0-9_.:/{{}}*-] (got {value!r})")
        return value

    @field_validator("upstream")
    @classmethod
    def _upstream_is_known(cls, value: str, info: ValidationInfo) -> str:
        known = (info.context or {}).get("upstreams")
        if known is not None and value not in known:
            listed = ", ".join(sorted(known)) or "none defined"
            raise ValueError(f"unknown upstream {value!r} (known: {listed})")
        return value

    @property
    def label(self) -> str:
        return self.name or self.path


class KeysConfig(Section):
    prefix: str = Field(
        "fw",
        pattern=r"^[a-z][a-z0-9]*(?:_[a-z0-9]+)*$",
        description="Keys start <prefix>_ (fw, fi_pk).",
    )
    environment_in_key: bool = Field(
        True, description="Keys read <prefix>_live_… / <prefix>_test_…; false: <prefix>_<random>."
    )
    pepper: str | None = Field(
        None, description="Secret for HMAC-SHA256 key hashes (else SHA-256); never change it live."
    )
    cache_ttl: Annotated[float, DurationRange(most=DAY)] = Field(
        30.0,
        description="Longest a key is trusted from cache (invalidation usually acts first);"
        " at most 1d.",
    )
    last_used_interval: Interval = Field(
        60.0, description="How often a key's last-used time is saved; 10ms to 1d."
    )

    @field_validator("pepper")
    @classmethod
    def _pepper_long_enough(cls, value: str | None) -> str | None:
        if value is not None and value != "" and len(value) < 16:
            raise ValueError("must be at least 16 characters")
        return value or None


class PlanConfig(Section):
    api_keys: bool = Field(True, description="false: orgs on this plan get no API keys.")
    description: str | None = Field(None, description="Shown to people.")
    rate_limit: RateLimitConfig | None = Field(None, description="Limit of each key of the org.")
    org_rate_limit: RateLimitConfig | None = Field(
        None, description="Limit shared by all keys of the org."
    )
    quota: QuotaConfig | None = Field(
        None, description="Requests per UTC calendar day or month, for the whole org."
    )
    webhook_endpoints: int | None = Field(
        None,
        ge=0,
        le=10_000,
        description="Most webhook endpoints an org may have (at most 10000); null: no cap.",
    )

    def capacities(self) -> list[tuple[str, int]]:
        """The most each of the plan's limits lets through at once."""
        found = []
        if self.rate_limit is not None:
            found.append(("rate_limit", self.rate_limit.requests + self.rate_limit.burst))
        if self.org_rate_limit is not None:
            found.append(
                ("org_rate_limit", self.org_rate_limit.requests + self.org_rate_limit.burst)
            )
        if self.quota is not None:
            found.append(("quota", self.quota.requests))
        return found


class ScopesConfig(Section):
    implies: dict[str, tuple[str, ...]] = Field(
        default_factory=dict, description="A scope grants others too, e.g. admin: [write]."
    )

    @field_validator("implies")
    @classmethod
    def _implied_are_scopes(cls, value: dict[str, tuple[str, ...]]) -> dict[str, tuple[str, ...]]:
        for scope, implied in value.items():
            check_scope(scope)
            for other in implied:
                check_scope(other)
        return value


IDENTITY_FIELDS = (
    "apiKeyId",
    "keyName",
    "orgId",
    "orgName",
    "orgSlug",
    "plan",
    "scopes",
    "environment",
    "rateLimit",
)


class IdentityConfig(Section):
    enabled: bool = Field(True, description="Answer the identity endpoint at path.")
    path: str = Field("/v1/me", description="Where the gateway answers who a key belongs to.")
    fields: dict[str, str] = Field(
        default_factory=dict, description="Rename fields of the answer, e.g. {orgId: tenantId}."
    )

    @field_validator("path")
    @classmethod
    def _path_is_literal(cls, value: str) -> str:
        regex, _ = compile_template(value)
        if regex is not None:
            raise ValueError(f"must be a literal path, without parameters (got {value!r})")
        return value

    @field_validator("fields")
    @classmethod
    def _known_fields(cls, value: dict[str, str]) -> dict[str, str]:
        for name, renamed in value.items():
            if name not in IDENTITY_FIELDS:
                raise ValueError(f"unknown field {name!r} (known: {', '.join(IDENTITY_FIELDS)})")
            if not re.match(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$", renamed):
                raise ValueError(f"{renamed!r} is not a usable field name")
        return value


_SIGNATURE_HEADER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]{0,63}$")
_STANDARD_WEBHOOK_HEADERS = {"webhook-id", "webhook-timestamp", "webhook-signature"}


class WebhooksConfig(Section):
    signature: Literal["standard"] = Field(
        "standard", description="webhook-id, webhook-timestamp, webhook-signature: v1,<base64>."
    )
    legacy_header: str | None = Field(
        None,
        description="Also send this header with sha256=<hex HMAC of the body>,"
        " e.g. X-Finite-Signature.",
    )
    allow_private_targets: bool = Field(
        False, description="Let endpoints reach private and loopback addresses (development only)."
    )
    secret_key: str | None = Field(
        None,
        description="Encrypts endpoint secrets in the store (AES-256-GCM); 32+ random characters,"
        " e.g. ${GATEWAY_WEBHOOK_KEY}. Never change it while endpoints use it.",
    )
    timeout: Timeout = Field(
        15.0, description="Longest an attempt may take, connect to answer; at most 1d."
    )
    retry_schedule: tuple[Annotated[float, DurationRange(most=WEEK, positive=True)], ...] = Field(
        (5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0),
        description="The waits after each failed attempt (each over 0, at most 7d; 20 at"
        " most); after the last the delivery is dead.",
    )
    jitter: Annotated[float, NumberRange(0.0, 0.5)] = Field(
        0.1, description="Each wait is varied by up to this fraction (0 to 0.5) either way."
    )
    secret_overlap: Annotated[float, DurationRange(most=30 * DAY)] = Field(
        86400.0,
        description="How long the old secret also signs after a secret rotation; at most 30d.",
    )
    key_expiring_notice: Duration = Field(
        7 * 86400.0,
        description="key.expiring is sent this long before a key expires; at most 365d.",
    )
    concurrency: int = Field(32, ge=1, le=1024, description="Attempts in flight per process.")
    per_endpoint_concurrency: int = Field(
        4, ge=1, le=256, description="Attempts in flight to one endpoint, per process."
    )
    poll_interval: Interval = Field(
        0.5, description="How often each process looks for deliveries that are due; 10ms to 1d."
    )
    retention: Annotated[float, DurationRange(most=YEAR, positive=True)] = Field(
        30 * 86400.0,
        description="How long events and finished deliveries are kept; at most 365d.",
    )
    api_path: str | None = Field(
        "/v1/webhooks",
        description="Where keys with webhooks:write manage their org's endpoints; null: nowhere.",
    )
    stream: str | None = Field(
        "events",
        description="With the redis store: the stream (under store.key_prefix) backends may XADD"
        " events to; null: none.",
    )

    @model_validator(mode="after")
    def _kept_long_enough(self) -> WebhooksConfig:
        if self.retention < self.key_expiring_notice:
            # An event is remembered for retention; a key.expiring announced earlier than that
            # would be forgotten and announced again.
            raise ValueError(
                "retention must be at least key_expiring_notice"
                f" ({self.retention:g}s < {self.key_expiring_notice:g}s)"
            )
        return self

    @field_validator("legacy_header")
    @classmethod
    def _header_name(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not _SIGNATURE_HEADER.match(value) or value.lower() in _STANDARD_WEBHOOK_HEADERS:
            raise ValueError(f"must be a header name like X-Acme-Signature (got {value!r})")
        return value

    @field_validator("secret_key")
    @classmethod
    def _key_long_enough(cls, value: str | None) -> str | None:
        if value is not None and value != "" and len(value) < 32:
            raise ValueError("must be at least 32 characters")
        return value or None

    @field_validator("retry_schedule")
    @classmethod
    def _waits(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        if len(value) > 20:
            raise ValueError("at most 20 retries")
        return value

    @field_validator("api_path")
    @classmethod
    def _api_path_is_literal(cls, value: str | None) -> str | None:
        if value is None:
            return None
        regex, _ = compile_template(value)
        if regex is not None or not value.startswith("/") or value.endswith("/"):
            raise ValueError(f"must be a literal path like /v1/webhooks (got {value!r})")
        return value

    @field_validator("stream")
    @classmethod
    def _stream_name(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^[A-Za-z0-9_.:-]{1,64}$", value):
            raise ValueError(f"must be 1-64 characters of [A-Za-z0-9_.:-] (got {value!r})")
        return value


class DemoConfig(Section):
    org: str = Field("demo", description="Slug of the demo org made on first start.")
    plan: str | None = Field(None, description="Its plan (default: the first plan).")
    scopes: tuple[str, ...] = Field(("*",), description="Scopes of the demo key.")

    @field_validator("scopes")
    @classmethod
    def _scopes_are_names(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(check_scope(s) for s in value)


class GatewayConfig(Section):
    listen: ListenConfig = Field(default_factory=ListenConfig)
    admin: AdminConfig = Field(default_factory=AdminConfig)
    workers: int = Field(1, ge=1, le=64, description="Processes sharing the data port.")
    store: StoreConfig = Field(default_factory=StoreConfig)
    trusted_proxies: tuple[Network, ...] = Field(
        (), description="Peers whose X-Forwarded-For/-Proto/-Host are believed."
    )
    server: ServerConfig = Field(default_factory=ServerConfig)
    log: LogConfig = Field(default_factory=LogConfig)
    keys: KeysConfig = Field(default_factory=KeysConfig)
    plans: dict[str, PlanConfig] = Field(
        default_factory=lambda: {"default": PlanConfig()}, description="What orgs may subscribe to."
    )
    scopes: ScopesConfig = Field(default_factory=ScopesConfig)
    identity: IdentityConfig = Field(default_factory=IdentityConfig)
    rate_limits: RateLimitsConfig = Field(default_factory=RateLimitsConfig)
    idempotency: IdempotencyConfig = Field(default_factory=IdempotencyConfig)
    reload: ReloadConfig = Field(default_factory=ReloadConfig)
    webhooks: WebhooksConfig = Field(default_factory=WebhooksConfig)
    cors: CorsConfig = Field(
        default_factory=CorsConfig,
        description="Browser access; no origin is allowed unless listed (Bearer APIs are"
        " server-to-server by default).",
    )
    demo: DemoConfig | None = Field(
        None, description="Make a demo org and key on first start and print the key (development)."
    )
    upstreams: dict[str, UpstreamConfig] = Field(default_factory=dict)
    routes: tuple[RouteConfig, ...] = Field(
        default=(), description="Matched literal paths first, then templates in file order."
    )

    @model_validator(mode="after")
    def _consistent(self) -> GatewayConfig:
        if self.workers > 1 and self.store.backend == "local":
            raise ValueError(
                "workers: the local store serves one process;"
                " use workers: 1 or store.backend: redis"
            )
        if not self.plans:
            raise ValueError("plans: define at least one plan")
        if (
            self.demo is not None
            and self.demo.plan is not None
            and self.demo.plan not in self.plans
        ):
            raise ValueError(
                f"demo: unknown plan {self.demo.plan!r} (known: {', '.join(self.plans)})"
            )
        for i, route in enumerate(self.routes):
            if route.auth != "key" or route.cost == 1:
                continue
            for plan_name, plan in self.plans.items():
                for what, capacity in plan.capacities():
                    if route.cost > capacity:
                        raise ValueError(
                            f"routes: routes[{i}].cost {route.cost} is more than plan"
                            f" {plan_name!r} allows at once ({what}: {capacity}); such a request"
                            " could never pass"
                        )
        if self.identity.enabled:
            for i, route in enumerate(self.routes):
                takes_get = route.methods is None or "GET" in route.methods
                if route.path == self.identity.path and takes_get:
                    raise ValueError(
                        f"routes: routes[{i}] takes GET {route.path}, which identity.path answers;"
                        " move one of them or set identity.enabled: false"
                    )
        api_path = self.webhooks.api_path
        if api_path is not None:
            for i, route in enumerate(self.routes):
                if route.path == api_path or route.path.startswith(api_path + "/"):
                    raise ValueError(
                        f"routes: routes[{i}] path {route.path} is under webhooks.api_path"
                        f" ({api_path}); move one of them or set webhooks.api_path: null"
                    )
        return self

    @field_validator("upstreams")
    @classmethod
    def _upstream_names(cls, value: dict[str, UpstreamConfig]) -> dict[str, UpstreamConfig]:
        for name in value:
            if not re.match(r"^[A-Za-z0-9_-]{1,64}$", name):
                raise ValueError(f"upstream name {name!r} must be 1-64 characters of [A-Za-z0-9_-]")
        return value
