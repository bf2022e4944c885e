"""JWT access tokens (RFC 9068) verified by the rules of the JWT BCP (RFC 8725)."""

from __future__ import annotations

import contextlib
import hashlib
import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePublicKey
from cryptography.hazmat.primitives.asymmetric.ed448 import Ed448PublicKey
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey

from gateway.config.oauth import check_algorithms
from gateway.oauth.cache import VerifiedTokens
from gateway.oauth.jwks import JwksCache, SigningKey

Clock = Callable[[], float]

MAX_TOKEN_SIZE = 8192  # real access tokens are 1-2 KiB; bigger ones are not parsed at all
CACHE_ENTRIES = 10_000
_CURVES = {
    "ES256": "secp256r1",
    "ES256K": "secp256k1",
    "ES384": "secp384r1",
    "ES512": "secp521r1",
    "ES521": "secp521r1",
}
# RFC 9068 section 2.1; "JWT" is what many servers (Keycloak, Auth0 by default) still send.
_ACCESS_TOKEN_TYPES = frozenset({"at+jwt", "application/at+jwt"})
_LENIENT_TYPES = frozenset({"jwt", "application/jwt"})


class InvalidToken(Exception):
    """The token is refused. ``reason`` is for logs only: a client learns nothing from it."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Claims:
    """A verified access token, reduced to what authorization needs; ``raw`` for the rest."""

    subject: str | None
    client_id: str | None  # client_id, or azp from servers that predate RFC 9068
    scopes: tuple[str, ...]
    expires_at: float
    token_id: str | None
    raw: Mapping[str, Any]


def _fits(alg: str, key: Any) -> bool:
    """Whether the key is of the type the algorithm needs: never an RSA key as an HMAC secret."""
    if alg.startswith("HS"):
        return isinstance(key, bytes)
    if alg.startswith(("RS", "PS")):
        return isinstance(key, RSAPublicKey)
    if alg in _CURVES:
        return isinstance(key, EllipticCurvePublicKey) and key.curve.name == _CURVES[alg]
    if alg == "EdDSA":
        return isinstance(key, Ed25519PublicKey | Ed448PublicKey)
    return False


def number_claim(payload: Mapping[str, Any], name: str) -> float | None:
    value = payload.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidToken(f"{name} is not a number")
    try:
        number = float(value)
    except OverflowError:
        raise InvalidToken(f"{name} is out of range") from None
    # SECURITY: a NaN compares false with everything: an exp of NaN would never expire.
    if not math.isfinite(number):
        raise InvalidToken(f"{name} is not a finite number")
    return number


def string_claim(payload: Mapping[str, Any], *names: str) -> str | None:
    for name in names:
        value = payload.get(name)
        if value is not None:
            if not isinstance(value, str):
                raise InvalidToken(f"{name} is not a string")
            return value
    return None


def scopes_of(payload: Mapping[str, Any], claim: str | None) -> tuple[str, ...]:
    for name in (claim,) if claim else ("scope", "scp"):
        value = payload.get(name)
        if value is None:
            continue
        if isinstance(value, str):  # RFC 9068: space-separated
            return tuple(value.split())
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return tuple(value)
        raise InvalidToken(f"{name} is neither a string nor a list of strings")
    return ()


class JwtVerifier:
    """Verifies access tokens against a key set; a token verified once is a lookup until ``exp``.

    ``signature_checks`` and ``cache_hits`` count for metrics (and prove the cache in tests).
    """

    def __init__(
        self,
        jwks: JwksCache,
        *,
        issuer: str,
        audience: str | tuple[str, ...],
        algorithms: Iterable[str],
        leeway: float = 30.0,
        require_typ: bool = False,
        scopes_claim: str | None = None,
        max_size: int = MAX_TOKEN_SIZE,
        cache_entries: int = CACHE_ENTRIES,
        clock: Clock = time.time,
    ) -> None:
        self.jwks = jwks
        self.issuer = issuer
        self.audience = audience
        self.algorithms = frozenset(check_algorithms(algorithms))
        self.leeway = leeway
        self.require_typ = require_typ
        self.scopes_claim = scopes_claim
        self.max_size = max_size
        self._clock = clock
        self._cache: VerifiedTokens[Claims] = VerifiedTokens(cache_entries)
        self.signature_checks = 0
        self.cache_hits = 0
        # Time claims are checked here against the injected clock, the rest by PyJWT.
        self._options: Any = {
            "require": ["exp", "iss", "aud"],
            "verify_exp": False,
            "verify_nbf": False,
            "verify_iat": False,
            "enforce_minimum_key_length": True,
        }

    async def verify(self, token: str, digest: bytes | None = None) -> Claims:
        """The token's claims, or InvalidToken; KeysUnavailable when the key source fails.

        ``digest``: the token's sha256, when the caller has it already.
        """
        # SECURITY: bounded before any parsing or hashing; a JWS is ASCII by construction.
        if len(token) > self.max_size:
            raise InvalidToken(f"larger than {self.max_size} bytes")
        if not token.isascii():
            raise InvalidToken("not ASCII")
        self.jwks.poll()  # cached tokens alone must still keep the key set fresh
        if digest is None:
            digest = hashlib.sha256(token.encode()).digest()
        generation = self.jwks.generation
        claims = self._cache.get(digest, now=self._clock(), generation=generation)
        if claims is not None:
            self.cache_hits += 1
            return claims
        claims = await self._verify(token)
        self._cache.put(
            digest, claims, deadline=claims.expires_at + self.leeway, generation=generation
        )
        return claims

    async def _verify(self, token: str) -> Claims:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise InvalidToken(f"malformed: {exc}") from None
        alg = self._check_header(header)
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise InvalidToken("kid is not a string")
        keys = [key for key in await self.jwks.get_keys(kid) if self._usable(key, alg)]
        if not keys:
            raise InvalidToken(f"no key for kid {kid!r} and alg {alg}")
        payload = self._decode(token, alg, keys)
        return self._claims(payload)

    def _check_header(self, header: Mapping[str, Any]) -> str:
        """The header's algorithm, once the header passes."""
        alg = header.get("alg")
        # SECURITY: the header picks nothing the config did not allow (RFC 8725 2.1, 3.1).
        if not isinstance(alg, str) or alg not in self.algorithms:
            raise InvalidToken(f"algorithm {alg!r} is not allowed")
        # SECURITY: extensions we do not implement must not be ignored (RFC 7515 4.1.11).
        if "crit" in header:
            raise InvalidToken("crit header")
        typ = header.get("typ")
        if typ is None:
            if self.require_typ:
                raise InvalidToken("no typ header")
            return alg
        typ = str(typ).lower()
        # SECURITY: explicit typing keeps other JWTs (logout, DPoP proofs) out (RFC 8725 3.11).
        if typ not in _ACCESS_TOKEN_TYPES and (self.require_typ or typ not in _LENIENT_TYPES):
            raise InvalidToken(f"typ {typ!r} is not an access token's")
        return alg

    def _usable(self, key: SigningKey, alg: str) -> bool:
        # SECURITY: a JWK pinned to one algorithm verifies that one only (RFC 8725 3.1).
        return (key.alg is None or key.alg == alg) and _fits(alg, key.key)

    def _decode(self, token: str, alg: str, keys: list[SigningKey]) -> dict[str, Any]:
        try:
            # Kid-less keys sharing a set: each is tried (at most the set's size).
            for key in keys[:-1]:
                with contextlib.suppress(jwt.InvalidSignatureError):
                    return self._decode_with(token, alg, key)
            return self._decode_with(token, alg, keys[-1])
        except jwt.PyJWTError as exc:
            raise InvalidToken(f"{exc.__class__.__name__}: {exc}") from None

    def _decode_with(self, token: str, alg: str, key: SigningKey) -> dict[str, Any]:
        self.signature_checks += 1
        payload: dict[str, Any] = jwt.decode(
            token,
            key.key,
            algorithms=[alg],
            audience=self.audience,
            issuer=self.issuer,
            options=self._options,
        )
        return payload

    def _claims(self, payload: dict[str, Any]) -> Claims:
        now = self._clock()
        exp = number_claim(payload, "exp")
        if exp is None:
            raise InvalidToken("no exp")
        if exp <= now - self.leeway:
            raise InvalidToken("expired")
        nbf = number_claim(payload, "nbf")
        if nbf is not None and nbf > now + self.leeway:
            raise InvalidToken("not yet valid")
        iat = number_claim(payload, "iat")
        if iat is not None and iat > now + self.leeway:
            raise InvalidToken("issued in the future")
        return Claims(
            subject=string_claim(payload, "sub"),
            client_id=string_claim(payload, "client_id", "azp"),
            scopes=scopes_of(payload, self.scopes_claim),
            expires_at=exp,
            token_id=string_claim(payload, "jti"),
            raw=MappingProxyType(payload),  # shared by every cache hit: read-only
        )
