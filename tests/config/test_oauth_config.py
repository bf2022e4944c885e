"""The oauth section and auth: oauth on routes: what a config may say, and the message for each
mistake, named by its field."""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from gateway.config import ConfigError, parse_config
from gateway.config.validation import REDACTED
from gateway.control.listener import redacted_config

_RSA = rsa.generate_private_key(public_exponent=65537, key_size=2048)
PUBLIC_JWK = {**RSAAlgorithm.to_jwk(_RSA.public_key(), as_dict=True), "kid": "k1"}
PRIVATE_JWK = {**RSAAlgorithm.to_jwk(_RSA, as_dict=True), "kid": "k1"}

JWT = {
    "issuer": "https://auth.example.test",
    "audience": "https://api.example.test",
    "jwks_url": "https://auth.example.test/jwks",
    "algorithms": ["RS256"],
}
INTROSPECTION = {
    "url": "https://auth.example.test/introspect",
    "client_id": "gateway",
    "client_secret": "s3cret",
}


def config_text(oauth: Any, auth: Any = "oauth") -> bytes:
    document: dict[str, Any] = {
        "upstreams": {"app": {"targets": ["http://127.0.0.1:1"]}},
        "routes": [{"path": "/v1/x", "upstream": "app", "auth": auth}],
    }
    if oauth is not None:
        document["oauth"] = oauth
    return yaml.safe_dump(document).encode()


def problems(oauth: Any, auth: Any = "oauth") -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(config_text(oauth, auth), source="t.yaml", env={})
    return info.value.problems


def test_a_route_takes_keys_tokens_or_both() -> None:
    for auth, credentials in [
        ("key", ("key",)),
        ("oauth", ("oauth",)),
        (["key", "oauth"], ("key", "oauth")),
        (["oauth"], ("oauth",)),
        ("none", ()),
    ]:
        loaded = parse_config(config_text(JWT, auth), source="t.yaml", env={})
        assert loaded.config.routes[0].credentials == credentials


@pytest.mark.parametrize(
    ("oauth", "auth", "expected"),
    [
        (None, "oauth", "routes[0] takes OAuth tokens (auth: oauth), and no oauth section"),
        (None, ["key", "oauth"], "routes[0] takes OAuth tokens (auth: [key, oauth]), and no"),
        (JWT, [], "routes[0].auth: list at least one of key, oauth"),
        (JWT, ["key", "key"], "routes[0].auth: names a kind twice"),
        (JWT, ["key", "none"], "routes[0].auth"),
        ({"audience": "a"}, "oauth", "oauth: give jwks_url, discovery_url or jwks"),
        ({**JWT, "algorithms": ["none"]}, "oauth", 'oauth.algorithms: "none" is never allowed'),
        ({**JWT, "algorithms": []}, "oauth", "oauth.algorithms: name at least one algorithm"),
        ({**JWT, "algorithms": ["RS257"]}, "oauth", "oauth.algorithms: unknown algorithm"),
        (
            {**JWT, "algorithms": ["HS256", "RS256"]},
            "oauth",
            "oauth.algorithms: HS* algorithms cannot be mixed with asymmetric ones",
        ),
        (
            {**JWT, "algorithms": ["HS256"]},
            "oauth",
            "oauth.algorithms: HS* (shared secrets) only with inline jwks",
        ),
        ({**JWT, "issuer": None}, "oauth", "oauth.issuer: required to verify JWTs"),
        (
            {**JWT, "discovery_url": "https://auth.example.test/.well-known/x"},
            "oauth",
            "oauth: jwks_url and discovery_url: give one source of keys",
        ),
        ({**JWT, "jwks_url": "ftp://x/jwks"}, "oauth", "oauth.jwks_url: must be an http(s) URL"),
        ({**JWT, "audience": ""}, "oauth", "oauth.audience: name this API's audience"),
        (
            {**JWT, "jwks_url": None, "jwks": {"keys": [PRIVATE_JWK]}},
            "oauth",
            "oauth.jwks: keys[0]: a private key; give its public part only",
        ),
        (
            {**JWT, "jwks_url": None, "jwks": {"keys": [{"kty": "RSA", "n": "x"}]}},
            "oauth",
            "oauth.jwks: keys[0]: not a usable key",
        ),
        ({**JWT, "jwks_url": None, "jwks": {"keys": []}}, "oauth", "oauth.jwks: must be a JWK Set"),
        ({**JWT, "jwks_refresh": "1s"}, "oauth", "oauth.jwks_refresh"),
        (
            {"audience": "a", "introspection": {**INTROSPECTION, "url": "not a url"}},
            "oauth",
            "oauth.introspection.url: must be an http(s) URL",
        ),
        (
            {"audience": "a", "introspection": {**INTROSPECTION, "cache_ttl": "2h"}},
            "oauth",
            "oauth.introspection.cache_ttl",
        ),
        (
            {"audience": "a", "introspection": {"url": INTROSPECTION["url"], "client_id": "g"}},
            "oauth",
            "oauth.introspection.client_secret",
        ),
        (
            {"audience": "a", "algorithms": ["RS256"], "introspection": INTROSPECTION},
            "oauth",
            "oauth.algorithms: only used to verify JWTs",
        ),
    ],
)
def test_mistakes_are_named_by_their_field(oauth: Any, auth: Any, expected: str) -> None:
    found = problems(oauth, auth)
    assert any(expected in problem for problem in found), found


def test_valid_sections() -> None:
    for oauth in [
        JWT,
        {**JWT, "audience": ["https://a.test", "https://b.test"]},
        {**JWT, "jwks_url": None, "jwks": {"keys": [PUBLIC_JWK]}},
        {**JWT, "jwks_url": None, "discovery_url": "https://auth.example.test/.well-known/o"},
        {
            **JWT,
            "jwks_url": None,
            "algorithms": ["HS256"],
            "jwks": {"keys": [{"kty": "oct", "k": "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LTMy"}]},
        },
        {"audience": "https://api.example.test", "introspection": INTROSPECTION},
        {**JWT, "introspection": INTROSPECTION, "org_claim": "https://example.test/tenant"},
    ]:
        parse_config(config_text(oauth), source="t.yaml", env={})


def test_inline_hmac_keys_are_never_shown() -> None:
    secret = "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LTMy"
    oauth = {
        **JWT,
        "jwks_url": None,
        "algorithms": ["HS256"],
        "jwks": {"keys": [{"kty": "oct", "k": secret, "kid": "h1"}]},
    }
    shown = redacted_config(parse_config(config_text(oauth), source="t.yaml", env={}))
    assert shown["config"]["oauth"]["jwks"]["keys"] == [{"kty": "oct", "k": REDACTED, "kid": "h1"}]
    assert secret not in str(shown)


def test_the_introspection_secret_is_never_shown() -> None:
    oauth = {**JWT, "introspection": {**INTROSPECTION, "client_secret": "${SECRET}"}}
    loaded = parse_config(config_text(oauth), source="t.yaml", env={"SECRET": "hunter2-xyz"})
    assert loaded.config.oauth is not None
    assert loaded.config.oauth.introspection is not None
    assert loaded.config.oauth.introspection.client_secret == "hunter2-xyz"
    shown = redacted_config(loaded)
    assert shown["config"]["oauth"]["introspection"]["client_secret"] == REDACTED
    assert "hunter2-xyz" not in str(shown)
