"""API keys and who they are: the key format, scopes, the identity endpoint and the
attributes it shows and sends upstream, the demo key."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import Field, field_validator

from gateway.config.section import Section
from gateway.config.types import (
    DAY,
    FIELD_NAME,
    HEADER_NAME,
    DurationRange,
    Interval,
    check_scope,
    check_slug,
)
from gateway.http.headers import (
    GATEWAY_OWNED,
    normalize,
    strip_set,
)
from gateway.http.paths import compile_template, literal_path


class SelfServiceConfig(Section):
    path: str = Field(
        "/v1/keys",
        description="Where keys with scope list, create, rotate and revoke their org's keys.",
    )
    scope: str = Field("keys:write", description="The scope a key needs at path.")

    @field_validator("path")
    @classmethod
    def _path_is_literal(cls, value: str) -> str:
        return literal_path(value, "/api/keys") or value

    @field_validator("scope")
    @classmethod
    def _scope(cls, value: str) -> str:
        return check_scope(value)


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

    self_service: SelfServiceConfig | None = Field(
        None,
        description="Keys manage their own org's keys on the data plane, e.g."
        " {path: /api/keys, scope: keys:write}; null: only admins do.",
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
    "attributes",
    "subject",  # an access token's sub (null for a key)
    "clientId",  # an access token's client (null for a key)
)
# Shown only where the config takes access tokens (oauth): the answer to a key is unchanged.
TOKEN_FIELDS = frozenset({"subject", "clientId"})
# An org's or key's attribute name: a JSON key, a config key and part of "attributes.<name>".
ATTRIBUTE_NAME = re.compile(r"[a-z][a-z0-9_]{0,63}")
_ATTRIBUTE_NAME_RULE = "a lower-case letter, then up to 63 of a-z, 0-9 and _"
# SECURITY: headers the gateway sets, strips or acts on between client and upstream, and the
# client's credentials. An attribute sent under one of these names would pass for ours (or
# for the client's), or be dropped with them.
_RESERVED_HEADERS = GATEWAY_OWNED | strip_set(["Authorization", "Cookie", "Idempotency-Key"])


def check_attribute_name(name: str) -> str:
    if not ATTRIBUTE_NAME.fullmatch(name):
        raise ValueError(f"{name!r} is not an attribute name ({_ATTRIBUTE_NAME_RULE})")
    return name


class IdentityConfig(Section):
    enabled: bool = Field(True, description="Answer the identity endpoint at path.")
    path: str = Field("/v1/me", description="Where the gateway answers who a key belongs to.")
    fields: dict[str, str | None] = Field(
        default_factory=dict,
        description="Rename fields of the answer ({orgId: tenantId}), hide them ({plan: null}),"
        " or show an attribute at the top level ({attributes.role: role}).",
    )
    attribute_headers: dict[str, str] = Field(
        default_factory=dict,
        description="Send attributes to the upstream as headers, e.g. {role: X-Crm-Role};"
        " clients' copies are stripped on every route.",
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
    def _known_fields(cls, value: dict[str, str | None]) -> dict[str, str | None]:
        for name, shown_as in value.items():
            attribute = name.startswith("attributes.")
            if attribute:
                check_attribute_name(name.removeprefix("attributes."))
            elif name not in IDENTITY_FIELDS:
                raise ValueError(
                    f"unknown field {name!r} (known: {', '.join(IDENTITY_FIELDS)},"
                    " attributes.<name>)"
                )
            if shown_as is None:
                if attribute:
                    raise ValueError(f"{name}: null shows nothing; remove it instead")
            elif not FIELD_NAME.fullmatch(shown_as):
                raise ValueError(f"{shown_as!r} is not a usable field name")
        shown: dict[str, str] = {}
        for name, shown_as in cls.layout_of(value):
            if shown_as in shown:
                raise ValueError(f"{shown[shown_as]} and {name} would both be {shown_as!r}")
            shown[shown_as] = name
        return value

    @field_validator("attribute_headers")
    @classmethod
    def _header_names(cls, value: dict[str, str]) -> dict[str, str]:
        seen: dict[str, str] = {}
        for name, header in value.items():
            check_attribute_name(name)
            if not HEADER_NAME.fullmatch(header):
                raise ValueError(f"{name}: not a header name: {header!r}")
            key = normalize(header)
            if key in _RESERVED_HEADERS or key.startswith("content-"):
                raise ValueError(f"{name}: {header} is the gateway's own; choose another name")
            if key in seen:
                raise ValueError(f"{seen[key]} and {name} would both be sent as {header}")
            seen[key] = name
        return value

    @staticmethod
    def layout_of(fields: dict[str, str | None], *, tokens: bool = True) -> list[tuple[str, str]]:
        """(field, its name in the answer) for what the answer shows, in order: the known
        fields but hidden ones (and TOKEN_FIELDS without ``tokens``), then the attributes shown
        at the top level."""
        known = IDENTITY_FIELDS if tokens else [f for f in IDENTITY_FIELDS if f not in TOKEN_FIELDS]
        shown = [(name, fields.get(name, name)) for name in known]
        shown += [(name, as_) for name, as_ in fields.items() if name.startswith("attributes.")]
        return [(name, as_) for name, as_ in shown if as_ is not None]

    def layout(self, *, tokens: bool) -> list[tuple[str, str]]:
        return self.layout_of(self.fields, tokens=tokens)


class DemoConfig(Section):
    org: str = Field("demo", description="Slug of the demo org made on first start.")
    plan: str | None = Field(None, description="Its plan (default: the first plan).")
    scopes: tuple[str, ...] = Field(("*",), description="Scopes of the demo key.")

    _slug = field_validator("org")(check_slug)

    @field_validator("scopes")
    @classmethod
    def _scopes_are_names(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(check_scope(s) for s in value)
