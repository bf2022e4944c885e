"""API keys and who they are: the key format, scopes, the identity endpoint, the demo key."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import Field, field_validator

from gateway.config.section import Section
from gateway.config.types import DAY, DurationRange, Interval, check_scope
from gateway.http.paths import compile_template


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


class DemoConfig(Section):
    org: str = Field("demo", description="Slug of the demo org made on first start.")
    plan: str | None = Field(None, description="Its plan (default: the first plan).")
    scopes: tuple[str, ...] = Field(("*",), description="Scopes of the demo key.")

    @field_validator("scopes")
    @classmethod
    def _scopes_are_names(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(check_scope(s) for s in value)
