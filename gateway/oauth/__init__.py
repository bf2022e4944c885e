"""OAuth 2.1 access tokens: JWTs checked against a JWKS without a call per request, and opaque
tokens asked about at the authorization server (introspection)."""

from gateway.config.oauth import check_algorithms
from gateway.oauth.introspection import IntrospectionUnavailable, Introspector
from gateway.oauth.jwks import JwksCache, KeysUnavailable
from gateway.oauth.tokens import Claims, InvalidToken, JwtVerifier

__all__ = [
    "Claims",
    "IntrospectionUnavailable",
    "Introspector",
    "InvalidToken",
    "JwksCache",
    "JwtVerifier",
    "KeysUnavailable",
    "check_algorithms",
]
