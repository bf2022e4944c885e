"""OAuth 2.1 access tokens: JWTs checked against a JWKS, without a call per request."""

from gateway.oauth.jwks import JwksCache, KeysUnavailable
from gateway.oauth.tokens import Claims, InvalidToken, JwtVerifier, check_algorithms

__all__ = [
    "Claims",
    "InvalidToken",
    "JwksCache",
    "JwtVerifier",
    "KeysUnavailable",
    "check_algorithms",
]
