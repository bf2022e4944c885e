"""The typed, frozen models of gateway.yaml; field names are the product contract."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator
from yarl import URL

from gateway.config.types import ByteSize, Duration, Network
from gateway.paths import compile_template

_METHOD = re.compile(r"^[A-Z][A-Z0-9!#$%&'*+.^_`|~-]*$")
_ROUTE_NAME = re.compile(r"^[A-Za-z0-9_.:/{}*-]{1,100}$")


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
        None,
        description="Bearer token for /admin/*; use ${GATEWAY_ADMIN_TOKEN}. Unset: admin API off.",
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

    @model_validator(mode="after")
    def _redis_needs_url(self) -> StoreConfig:
        if self.backend == "redis" and not self.url:
            raise ValueError("url: required when backend is redis")
        return self


class ServerConfig(Section):
    idle_timeout: Duration = Field(
        75.0,
        description=(
            "A connection must deliver a complete request head within this time of opening or of"
            " its previous response, else it is closed (keep-alive idle and header-read timeout)."
        ),
    )
    body_timeout: Duration = Field(
        30.0, description="Longest wait for the next piece of a request body before giving up."
    )
    drain_timeout: Duration = Field(
        30.0, description="On SIGTERM, how long in-flight requests may take to finish."
    )
    max_header_size: ByteSize = Field(8190, description="Longest request line or header field.")
    max_headers: int = Field(100, ge=1, le=1000, description="Most header fields in one request.")

    @field_validator("idle_timeout", "body_timeout")
    @classmethod
    def _positive(cls, value: float) -> float:
        if value <= 0:
            raise ValueError(f"must be > 0 (got {value:g}s)")
        return value


class LogConfig(Section):
    level: Literal["debug", "info", "warning", "error"] = Field(
        "info", description="Lowest level logged."
    )
    format: Literal["json", "console"] = Field(
        "json", description="json for machines, console for people."
    )
    access_log: bool = Field(True, description="One line per request on stdout.")


class TimeoutsConfig(Section):
    connect: Duration = Field(2.0, description="Time to open a connection to a target.")
    read: Duration = Field(30.0, description="Longest silence while waiting for upstream bytes.")


class RouteTimeoutsConfig(Section):
    connect: Duration | None = Field(None, description="Overrides the upstream's connect timeout.")
    read: Duration | None = Field(None, description="Overrides the upstream's read timeout.")


class UpstreamConfig(Section):
    targets: tuple[str, ...] = Field(
        (), description="Base URLs, e.g. http://10.0.0.5:8000; requests go round robin."
    )
    builtin: Literal["echo"] | None = Field(
        None, description="Start a built-in backend instead of targets (echo: a demo)."
    )
    timeouts: TimeoutsConfig = Field(default_factory=TimeoutsConfig)
    preserve_host: bool = Field(
        False, description="Send the client's Host instead of the target's."
    )
    max_connections: int = Field(256, ge=1, description="Pooled connections per target at most.")

    @field_validator("targets")
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
        return self


class RouteConfig(Section):
    path: str = Field(description="Path template: /v1/contacts/{id}, /v1/legacy/{rest:.*}.")
    upstream: str = Field(description="Name of an entry in upstreams.")
    name: str | None = Field(None, description="Label in metrics and logs (default: the path).")
    methods: tuple[str, ...] | None = Field(None, description="Allowed methods (default: all).")
    host: str | None = Field(None, description="Only match requests for this Host.")
    timeouts: RouteTimeoutsConfig = Field(default_factory=RouteTimeoutsConfig)
    max_body_size: ByteSize = Field(10 * 1024 * 1024, description="Largest request body accepted.")

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
    upstreams: dict[str, UpstreamConfig] = Field(default_factory=dict)
    routes: tuple[RouteConfig, ...] = Field(
        default=(), description="Matched literal paths first, then templates in file order."
    )

    @field_validator("upstreams")
    @classmethod
    def _upstream_names(cls, value: dict[str, UpstreamConfig]) -> dict[str, UpstreamConfig]:
        for name in value:
            if not re.match(r"^[A-Za-z0-9_-]{1,64}$", name):
                raise ValueError(f"upstream name {name!r} must be 1-64 characters of [A-Za-z0-9_-]")
        return value
