"""Upstreams: the targets a route proxies to, their timeouts, pools and health checks."""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import Field, PrivateAttr, field_validator, model_validator
from yarl import URL

from gateway.config.section import Section
from gateway.config.tls import read_ca_file
from gateway.config.types import DAY, DurationRange, Interval, NumberRange, Timeout
from gateway.config.validation import shown


class TimeoutsConfig(Section):
    connect: Timeout = Field(
        2.0, description="Time to open a connection to a target; over 0, at most 1d."
    )
    read: Timeout = Field(
        30.0, description="Longest silence while waiting for upstream bytes; over 0, at most 1d."
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


_HOST_NAME = re.compile(r"(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?", re.ASCII)


class UpstreamTlsConfig(Section):
    ca_file: str | None = Field(
        None,
        description=(
            "PEM file of the CA certificates that sign the https targets' certificates, trusted"
            " instead of the system's; read when the config is loaded or reloaded."
        ),
    )
    server_name: str | None = Field(
        None,
        description=(
            "Host name sent in SNI and verified in the targets' certificates, instead of the"
            " target's host (for targets named by address); up to 253 characters."
        ),
    )
    # The PEM text as it was checked: the snapshot trusts exactly what the check accepted.
    _ca_pem: str | None = PrivateAttr(None)

    @property
    def ca_pem(self) -> str | None:
        return self._ca_pem

    @field_validator("server_name")
    @classmethod
    def _server_name_is_a_host_name(cls, value: str | None) -> str | None:
        if value is not None and not _HOST_NAME.fullmatch(value):
            raise ValueError(f"must be a host name like backend.internal (got {shown(value)})")
        return value

    @model_validator(mode="after")
    def _ca_file_holds_certificates(self) -> UpstreamTlsConfig:
        if self.ca_file is not None:
            self._ca_pem = read_ca_file(self.ca_file)
        return self


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
    tls: UpstreamTlsConfig | None = Field(
        None, description="How https targets are verified; only on an upstream with some."
    )
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
        if self.tls is not None and not any(
            URL(target).scheme == "https" for target in (*self.targets, *self.sandbox)
        ):
            # Refused rather than ignored: whoever wrote it believes this traffic is verified.
            raise ValueError("tls: applies to https targets, and this upstream has none")
        return self
