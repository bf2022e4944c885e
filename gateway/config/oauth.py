"""oauth: the authorization server the gateway trusts for access tokens (JWTs and opaque ones)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Annotated, Any

from jwt import PyJWK
from jwt.algorithms import get_default_algorithms
from jwt.exceptions import InvalidKeyError, PyJWKError
from pydantic import Field, field_validator, model_validator
from yarl import URL

from gateway.config.section import Section
from gateway.config.types import DAY, HOUR, DurationRange

# A claim's name as servers write them: "org_id", "https://example.com/org", "tenant".
_CLAIM = r"^[\x21-\x7e]{1,200}$"


def check_algorithms(algorithms: Iterable[str]) -> tuple[str, ...]:
    """The JWS algorithm allowlist, or ValueError saying what is wrong with it."""
    names = tuple(algorithms)
    if not names:
        raise ValueError("name at least one algorithm")
    supported = set(get_default_algorithms()) - {"none"}
    for name in names:
        # SECURITY: an unsigned token proves nothing (RFC 8725 3.1), whatever the config says.
        if name.lower() == "none":
            raise ValueError('"none" is never allowed: an unsigned token proves nothing')
        if name not in supported:
            raise ValueError(
                f"unknown algorithm {name!r} (supported: {', '.join(sorted(supported))})"
            )
    # SECURITY: with both, a public key could be taken as an HMAC secret (RFC 8725 2.1).
    if any(n.startswith("HS") for n in names) and not all(n.startswith("HS") for n in names):
        raise ValueError("HS* algorithms cannot be mixed with asymmetric ones")
    return names


def _http_url(value: str) -> str:
    url = URL(value)
    if url.scheme not in ("http", "https") or not url.host:
        raise ValueError(f"must be an http(s) URL (got {value!r})")
    if url.user or url.fragment:
        raise ValueError(f"must not carry credentials or a fragment (got {value!r})")
    return value


class IntrospectionConfig(Section):
    """RFC 7662: opaque tokens are asked about at the server, with the gateway's credentials."""

    url: str = Field(description="The introspection endpoint (POSTed to, HTTP Basic auth).")
    client_id: str = Field(min_length=1, description="The gateway's client id at the server.")
    client_secret: str = Field(
        min_length=1, description="Its secret; write ${VAR} to keep it out of the file."
    )
    cache_ttl: Annotated[float, DurationRange(most=HOUR)] = Field(
        60.0,
        description="An active answer is kept until the token expires, at most this long: a"
        " token revoked at the server is refused within it. 0: ask on every request.",
    )
    timeout: Annotated[float, DurationRange(least=0.1, most=60.0)] = Field(
        5.0, description="How long one introspection call may take (then 503)."
    )

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        return _http_url(value)


class OAuthConfig(Section):
    """Access tokens beside API keys: JWTs verified with the server's keys (RFC 9068), opaque
    tokens by introspection (RFC 7662). Routes take them with ``auth: oauth`` or
    ``auth: [key, oauth]``."""

    issuer: str | None = Field(
        None,
        description="The iss every token must carry (required to verify JWTs; checked against"
        " introspection answers that carry one).",
    )
    audience: str | tuple[str, ...] = Field(
        description="This API's identifier: a token's aud must name it (or one of these)."
    )
    jwks_url: str | None = Field(None, description="Where the server publishes its keys.")
    discovery_url: str | None = Field(
        None, description="An OIDC/RFC 8414 discovery document naming jwks_uri (instead)."
    )
    jwks: dict[str, Any] | None = Field(
        None, description='The keys inline, as a JWK Set ({"keys": [...]}), instead of a URL.'
    )
    jwks_refresh: Annotated[float, DurationRange(least=10.0, most=DAY)] = Field(
        300.0,
        description="How often a fetched key set is refreshed; a token naming an unknown kid"
        " refetches at once, at most once per 10s.",
    )
    algorithms: tuple[str, ...] = Field(
        (),
        description="The JWS algorithms accepted, e.g. [RS256] (required to verify JWTs; none"
        " is never accepted, HS* only with inline jwks).",
    )
    org_claim: str = Field(
        "org_id",
        pattern=_CLAIM,
        description="The claim holding the org's id or slug; a token for no known org is refused.",
    )
    scopes_claim: str | None = Field(
        None,
        pattern=_CLAIM,
        description="The claim holding the scopes (default: scope, else scp).",
    )
    leeway: Annotated[float, DurationRange(most=300.0)] = Field(
        30.0, description="Clock skew allowed on exp, nbf and iat."
    )
    introspection: IntrospectionConfig | None = Field(
        None, description="Check opaque (non-JWT) tokens at the server's introspection endpoint."
    )

    @field_validator("audience")
    @classmethod
    def _audience(cls, value: str | tuple[str, ...]) -> str | tuple[str, ...]:
        names = (value,) if isinstance(value, str) else value
        if not names or not all(names):
            raise ValueError("name this API's audience (a non-empty string)")
        return value

    @field_validator("jwks_url", "discovery_url")
    @classmethod
    def _urls(cls, value: str | None) -> str | None:
        return None if value is None else _http_url(value)

    @field_validator("jwks")
    @classmethod
    def _jwks_shape(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is None:
            return None
        keys = value.get("keys")
        if not isinstance(keys, list) or not keys:
            raise ValueError('must be a JWK Set: {"keys": [ ... ]} with at least one key')
        for i, key in enumerate(keys):
            if not isinstance(key, dict) or not isinstance(key.get("kty"), str):
                raise ValueError(f"keys[{i}]: a JWK is an object with a kty")
            if key["kty"] != "oct" and "d" in key:
                # SECURITY: the private half has no business in a verifier's config.
                raise ValueError(f"keys[{i}]: a private key; give its public part only")
            try:
                PyJWK(key)
            except (PyJWKError, InvalidKeyError, TypeError, ValueError) as exc:
                raise ValueError(f"keys[{i}]: not a usable key ({exc})") from None
        return value

    @model_validator(mode="after")
    def _consistent(self) -> OAuthConfig:
        sources = [n for n in ("jwks_url", "discovery_url", "jwks") if getattr(self, n)]
        if len(sources) > 1:
            raise ValueError(f"{' and '.join(sources)}: give one source of keys, not several")
        if not sources:
            if self.introspection is None:
                raise ValueError(
                    "give jwks_url, discovery_url or jwks (JWTs), or introspection (opaque"
                    " tokens), or both"
                )
            if self.algorithms:
                raise ValueError("algorithms: only used to verify JWTs; give a source of keys")
            return self
        if not self.issuer:
            raise ValueError("issuer: required to verify JWTs (the iss they must carry)")
        try:
            names = check_algorithms(self.algorithms)
        except ValueError as exc:
            raise ValueError(f"algorithms: {exc}") from None
        # SECURITY: a shared secret must not travel over the network to every gateway.
        if names[0].startswith("HS") and self.jwks is None:
            raise ValueError("algorithms: HS* (shared secrets) only with inline jwks")
        return self

    @property
    def audiences(self) -> tuple[str, ...]:
        return (self.audience,) if isinstance(self.audience, str) else self.audience

    @property
    def verifies_jwts(self) -> bool:
        return bool(self.jwks_url or self.discovery_url or self.jwks)
