"""What the gateway keeps of what happened: the request log, its usage counts, the audit log."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, field_validator

from gateway.config.section import Section
from gateway.config.types import DAY, MINUTE, YEAR, DurationRange, check_scope
from gateway.http.paths import literal_path


class RequestLogConfig(Section):
    enabled: bool = Field(
        True,
        description="Keep every data-plane request in the store, for /admin/requests, usage"
        " counts and the console.",
    )
    max_age: Annotated[float, DurationRange(least=MINUTE, most=YEAR)] = Field(
        7 * DAY, description="Entries older than this are dropped; 1m to 365d."
    )
    max_entries: int = Field(
        1_000_000,
        ge=1_000,
        le=100_000_000,
        description="The most entries kept in all; the oldest go first (Redis keeps about this"
        " many, spread over 16 streams).",
    )
    flush_interval: Annotated[float, DurationRange(least=0.01, most=10.0)] = Field(
        0.25,
        description="How often a process writes the entries it collected, in one batch; 10ms"
        " to 10s.",
    )
    buffer: int = Field(
        20_000,
        ge=100,
        le=1_000_000,
        description="Entries a process holds while the store cannot take them; past this the"
        " oldest are dropped, and counted in gateway_request_log_dropped_total.",
    )
    api_path: str | None = Field(
        "/v1/requests",
        description="Where keys with request_log.scope read their own org's log on the data"
        " plane; null: nowhere.",
    )
    scope: str = Field("logs:read", description="The scope a key needs to read api_path.")

    @field_validator("api_path")
    @classmethod
    def _api_path_is_literal(cls, value: str | None) -> str | None:
        return literal_path(value, "/v1/requests")

    @field_validator("scope")
    @classmethod
    def _scope(cls, value: str) -> str:
        return check_scope(value)


class AuditConfig(Section):
    max_age: Annotated[float, DurationRange(least=DAY, most=10 * YEAR)] = Field(
        400 * DAY, description="Audit entries older than this are dropped; 1d to 3650d."
    )
