"""Routes: what the core reads of one (path, upstream, methods, auth, scopes, cost, header rules);
plugins add their own fields (see gateway.config.registry)."""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from gateway.config.section import Section
from gateway.config.types import (
    DAY,
    HEADER_NAME,
    MINUTE,
    WEEK,
    ByteSize,
    DurationRange,
    Timeout,
    check_scope,
)
from gateway.http.headers import GATEWAY_OWNED, normalize
from gateway.http.paths import compile_template

_METHOD = re.compile(r"^[A-Z][A-Z0-9!#$%&'*+.^_`|~-]*$")
_ROUTE_NAME = re.compile(r"^[A-Za-z0-9_.:/{}*-]{1,100}$")

# What a caller authenticates with on a route: an API key, an OAuth access token.
Credential = Literal["key", "oauth"]


class HeaderRuleSet(Section):
    set: dict[str, str] = Field(default_factory=dict, description="Replace (or add) these.")
    add: dict[str, str] = Field(default_factory=dict, description="Add these, keeping others.")
    remove: tuple[str, ...] = Field((), description="Remove these.")

    @model_validator(mode="after")
    def _names(self) -> HeaderRuleSet:
        for name in [*self.set, *self.add, *self.remove]:
            if not HEADER_NAME.fullmatch(name):
                raise ValueError(f"not a header name: {name!r}")
            normalized = normalize(name)
            if normalized in GATEWAY_OWNED or normalized.startswith("access-control-"):
                raise ValueError(f"{name} is set by the gateway itself and cannot be changed")
        for value in [*self.set.values(), *self.add.values()]:
            if any((ord(c) < 0x20 and c != "\t") or ord(c) == 0x7F for c in value):
                raise ValueError("header values must not contain control characters")
        return self


class HeaderRulesConfig(Section):
    request: HeaderRuleSet = Field(default_factory=HeaderRuleSet, description="To the upstream.")
    response: HeaderRuleSet = Field(default_factory=HeaderRuleSet, description="To the client.")


class RouteTimeoutsConfig(Section):
    connect: Timeout | None = Field(
        None, description="Overrides the upstream's connect timeout; over 0, at most 1d."
    )
    read: Timeout | None = Field(
        None, description="Overrides the upstream's read timeout; over 0, at most 1d."
    )
    websocket_idle: Annotated[float, DurationRange(least=0.1, most=DAY)] = Field(
        5 * MINUTE,
        description="A relayed WebSocket with no bytes either way for this long is closed"
        " (websocket: true only); from 100ms, at most 1d.",
    )
    websocket_total: Annotated[float, DurationRange(least=0.1, most=WEEK)] = Field(
        DAY,
        description="A relayed WebSocket is closed after this long whatever its traffic"
        " (websocket: true only); from 100ms, at most 7d.",
    )


class RouteConfig(Section):
    """One entry of routes: the core's fields. Each plugin adds its own by subclassing this (its
    ``route_fields``); the loader validates the route model composed of them all."""

    path: str = Field(description="Path template: /v1/contacts/{id}, /v1/legacy/{rest:.*}.")
    upstream: str = Field(description="Name of an entry in upstreams.")
    name: str | None = Field(None, description="Label in metrics and logs (default: the path).")
    methods: tuple[str, ...] | None = Field(None, description="Allowed methods (default: all).")
    host: str | None = Field(None, description="Only match requests for this Host.")
    timeouts: RouteTimeoutsConfig = Field(default_factory=RouteTimeoutsConfig)
    max_body_size: ByteSize = Field(
        10 * 1024 * 1024, description="Largest request body accepted; at most 1024GiB."
    )
    auth: Literal["key", "oauth", "none"] | tuple[Credential, ...] = Field(
        "key",
        description="key: an API key is required; oauth: an OAuth access token (see oauth);"
        " [key, oauth]: either; none: public.",
    )
    scopes: tuple[str, ...] = Field(
        (), description="Scopes a key needs, all of them, for this route."
    )
    forward_authorization: bool = Field(
        False, description="Pass the client's Authorization header to the upstream."
    )
    cost: int = Field(1, ge=1, le=1000, description="Units a request takes from every limit.")
    headers: HeaderRulesConfig = Field(
        default_factory=HeaderRulesConfig,
        description="Add, set or remove headers, after the gateway's own sanitising.",
    )
    websocket: bool = Field(
        False,
        description="Let an Upgrade: websocket handshake through the route's chain to the"
        " upstream, then relay the connection's bytes both ways.",
    )

    @field_validator("auth")
    @classmethod
    def _auth_kinds(
        cls, value: Literal["key", "oauth", "none"] | tuple[Credential, ...]
    ) -> Literal["key", "oauth", "none"] | tuple[Credential, ...]:
        if isinstance(value, str):
            return value
        if not value:
            raise ValueError("list at least one of key, oauth (or write none)")
        if len(set(value)) != len(value):
            raise ValueError(f"names a kind twice: {list(value)}")
        return value[0] if len(value) == 1 else value

    @property
    def credentials(self) -> tuple[Credential, ...]:
        """What a caller may authenticate with here; empty on a public route."""
        if self.auth == "none":
            return ()
        return (self.auth,) if isinstance(self.auth, str) else self.auth

    @property
    def auth_text(self) -> str:
        return self.auth if isinstance(self.auth, str) else f"[{', '.join(self.auth)}]"

    @field_validator("scopes")
    @classmethod
    def _scopes_are_names(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(check_scope(s) for s in value)

    @model_validator(mode="after")
    def _scopes_need_auth(self) -> RouteConfig:
        if self.scopes and self.auth == "none":
            raise ValueError("scopes: a route with auth: none cannot require scopes")
        return self

    @model_validator(mode="after")
    def _websocket_fields(self) -> RouteConfig:
        if not self.websocket:
            # A WebSocket timeout on a plain route would silently do nothing: a mistake.
            for name in ("websocket_idle", "websocket_total"):
                if name in self.timeouts.model_fields_set:
                    raise ValueError(
                        f"timeouts: {name} applies only to a route with websocket: true"
                    )
        elif self.methods is not None and "GET" not in self.methods:
            raise ValueError("methods: a route with websocket: true must allow GET (the handshake)")
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
