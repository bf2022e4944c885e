"""Access tokens verified by RFC 9068 and RFC 8725: valid ones pass, every attack is refused."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization

from gateway.oauth import InvalidToken, JwksCache, JwtVerifier, check_algorithms
from tests.conftest import FakeClock
from tests.oauth.conftest import (
    AUDIENCE,
    ISSUER,
    START,
    AuthServer,
    CacheFactory,
    Signer,
    mint,
    rsa_signer,
)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forge(header: dict[str, Any], payload: dict[str, Any], signature: bytes = b"") -> str:
    """A token put together by hand, as an attacker would (PyJWT refuses to make these)."""
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(payload).encode())}"
    return f"{signing_input}.{b64(signature)}"


def claims(**overrides: Any) -> dict[str, Any]:
    return {"iss": ISSUER, "aud": AUDIENCE, "sub": "u", "exp": int(START) + 600, **overrides}


async def refused(verifier: JwtVerifier, token: str, reason: str) -> None:
    with pytest.raises(InvalidToken, match=reason):
        await verifier.verify(token)


@pytest.mark.parametrize("key", ["rsa_key", "ec_key", "ed_key"])
async def test_valid_tokens_of_each_key_type_are_accepted(
    auth_server: AuthServer, verifier: JwtVerifier, key: str, request: pytest.FixtureRequest
) -> None:
    """RS256, ES256 and EdDSA tokens verify against the published set; the claims come out."""
    signer: Signer = request.getfixturevalue(key)
    auth_server.publish(signer)
    await verifier.jwks.refresh()
    token = mint(signer, jti="t-1")
    got = await verifier.verify(token)
    assert (got.subject, got.client_id, got.token_id) == ("user-1", "app-1", "t-1")
    assert got.scopes == ("orders:read", "orders:write")
    assert got.expires_at == START + 3600
    assert got.raw["iss"] == ISSUER


@pytest.mark.parametrize(
    ("extra", "scopes"),
    [
        ({"scope": "a b"}, ("a", "b")),
        ({"scope": None, "scp": ["a", "b"]}, ("a", "b")),
        ({"scope": None, "scp": "a b"}, ("a", "b")),
        ({"scope": None}, ()),
    ],
)
async def test_scopes_come_from_scope_or_scp(
    verifier: JwtVerifier, rsa_key: Signer, extra: dict[str, Any], scopes: tuple[str, ...]
) -> None:
    token = mint(rsa_key, **extra, drop=tuple(k for k, v in extra.items() if v is None))
    assert (await verifier.verify(token)).scopes == scopes


async def test_a_configured_scopes_claim_and_azp(
    jwks: JwksCache, rsa_key: Signer, clock: FakeClock
) -> None:
    """scopes_claim names where scopes are; azp stands in for a missing client_id."""
    verifier = JwtVerifier(
        jwks,
        issuer=ISSUER,
        audience=AUDIENCE,
        algorithms=["RS256"],
        scopes_claim="perms",
        clock=clock,
    )
    got = await verifier.verify(mint(rsa_key, perms=["x"], azp="legacy", drop=("client_id",)))
    assert (got.scopes, got.client_id) == (("x",), "legacy")
    await refused(verifier, mint(rsa_key, perms=[1]), "perms is neither")


@pytest.mark.parametrize("typ", ["at+jwt", "application/at+jwt", "AT+JWT", None, "JWT"])
async def test_access_token_types_and_none_are_accepted(
    verifier: JwtVerifier, rsa_key: Signer, typ: str | None
) -> None:
    assert await verifier.verify(mint(rsa_key, headers={"typ": typ}))


async def test_other_token_types_are_refused(verifier: JwtVerifier, rsa_key: Signer) -> None:
    """A DPoP proof or a logout token signed by the same server is no access token."""
    await refused(verifier, mint(rsa_key, headers={"typ": "dpop+jwt"}), "typ")
    await refused(verifier, mint(rsa_key, headers={"typ": "logout+jwt"}), "typ")


async def test_require_typ_accepts_only_at_jwt(
    jwks: JwksCache, rsa_key: Signer, clock: FakeClock
) -> None:
    strict = JwtVerifier(
        jwks,
        issuer=ISSUER,
        audience=AUDIENCE,
        algorithms=["RS256"],
        require_typ=True,
        clock=clock,
    )
    assert await strict.verify(mint(rsa_key, headers={"typ": "application/at+jwt"}))
    await refused(strict, mint(rsa_key, headers={"typ": None}), "no typ")
    await refused(strict, mint(rsa_key, headers={"typ": "JWT"}), "typ")


async def test_alg_none_is_refused(verifier: JwtVerifier, rsa_key: Signer) -> None:
    for alg in ("none", "None", "NONE"):
        token = forge({"alg": alg, "kid": rsa_key.kid, "typ": "at+jwt"}, claims())
        await refused(verifier, token, "not allowed")


async def test_hs256_signed_with_the_public_key_is_refused(
    jwks: JwksCache, rsa_key: Signer, clock: FakeClock
) -> None:
    """The classic confusion: the RSA public key's PEM used as an HMAC secret. Refused when HS256
    is not allowed, and, where a config allows only HS256, because the key is an RSA key."""
    pem = rsa_key.private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    header = {"alg": "HS256", "kid": rsa_key.kid, "typ": "at+jwt"}
    unsigned = forge(header, claims()).rsplit(".", 1)[0]
    mac = hmac.new(pem, unsigned.encode(), hashlib.sha256).digest()
    token = f"{unsigned}.{b64(mac)}"
    rs_only = JwtVerifier(jwks, issuer=ISSUER, audience=AUDIENCE, algorithms=["RS256"], clock=clock)
    await refused(rs_only, token, "not allowed")
    hs_only = JwtVerifier(jwks, issuer=ISSUER, audience=AUDIENCE, algorithms=["HS256"], clock=clock)
    await refused(hs_only, token, "no key")
    assert rs_only.signature_checks == hs_only.signature_checks == 0


async def test_an_algorithm_outside_the_allowlist_is_refused(
    auth_server: AuthServer, verifier: JwtVerifier, clock: FakeClock
) -> None:
    """RS512 by a key the server publishes without alg: valid signature, not allowed."""
    unpinned = rsa_signer("unpinned")
    del unpinned.jwk["alg"]
    auth_server.publish(unpinned)
    clock.now += verifier.jwks.unknown_kid_interval
    await refused(verifier, mint(unpinned, alg="RS512"), "not allowed")
    assert await verifier.verify(mint(unpinned, alg="RS256"))


async def test_a_key_pinned_to_another_algorithm_is_refused(
    auth_server: AuthServer, make_cache: CacheFactory, clock: FakeClock
) -> None:
    """The JWK says RS384, the header RS256: the key verifies nothing but RS384."""
    pinned = rsa_signer("pinned", alg="RS384")
    cache = make_cache(jwks={"keys": [pinned.jwk]})
    verifier = JwtVerifier(
        cache, issuer=ISSUER, audience=AUDIENCE, algorithms=["RS256", "RS384"], clock=clock
    )
    await refused(verifier, mint(pinned, alg="RS256"), "no key")
    assert await verifier.verify(mint(pinned, alg="RS384"))


@pytest.mark.parametrize(
    ("changes", "drop", "reason"),
    [
        ({"exp": int(START) - 31}, (), "expired"),
        ({"nbf": int(START) + 31}, (), "not yet valid"),
        ({"iat": int(START) + 31}, (), "issued in the future"),
        ({"iss": "https://evil.test"}, (), "Issuer"),
        ({"aud": "https://other-api.test"}, (), "Audience"),
        ({"aud": ["https://other-api.test"]}, (), "Audience"),
        ({}, ("exp",), "exp"),
        ({}, ("aud",), "aud"),
        ({}, ("iss",), "iss"),
        ({"exp": "tomorrow"}, (), "exp is not a number"),
        ({"sub": 42}, (), "[Ss]ubject"),
        ({"jti": 42}, (), "JWT ID"),
        ({"client_id": ["a"]}, (), "client_id is not a string"),
    ],
)
async def test_claims_that_do_not_hold_are_refused(
    verifier: JwtVerifier,
    rsa_key: Signer,
    changes: dict[str, Any],
    drop: tuple[str, ...],
    reason: str,
) -> None:
    await refused(verifier, mint(rsa_key, drop=drop, **changes), reason)


async def test_time_claims_have_a_leeway(verifier: JwtVerifier, rsa_key: Signer) -> None:
    """Clocks differ a little: 29 s past exp or before nbf/iat is still accepted."""
    skewed: dict[str, Any] = {
        "exp": int(START) - 29,
        "nbf": int(START) + 29,
        "iat": int(START) + 29,
    }
    assert await verifier.verify(mint(rsa_key, **skewed))
    assert await verifier.verify(mint(rsa_key, aud=["other", AUDIENCE]))


async def test_a_bad_signature_is_refused(verifier: JwtVerifier, rsa_key: Signer) -> None:
    """A tampered payload, and a token signed by another key under the published kid."""
    header, _, signature = mint(rsa_key).split(".")
    tampered = f"{header}.{b64(json.dumps(claims(sub='admin')).encode())}.{signature}"
    await refused(verifier, tampered, "Signature verification failed")
    await refused(verifier, mint(rsa_signer(rsa_key.kid)), "Signature verification failed")


async def test_an_oversized_token_is_refused_before_parsing(
    verifier: JwtVerifier, rsa_key: Signer
) -> None:
    token = mint(rsa_key, pad="x" * 8192)
    await refused(verifier, token, "larger than")
    assert verifier.signature_checks == 0


async def test_a_crit_header_is_refused(verifier: JwtVerifier, rsa_key: Signer) -> None:
    await refused(verifier, mint(rsa_key, headers={"crit": ["exp"], "exp": 1}), "crit")
    assert verifier.signature_checks == 0


@pytest.mark.parametrize(
    "garbage",
    [
        "",
        "bearer",
        "a.b.c",
        "..",
        "e30.e30.",  # {} header: no alg
        b64(b'{"alg":"RS256","kid":7}') + ".e30.AAAA",
        b64(b"[1]") + ".e30.AAAA",
        "eyJhbGciOiJSUzI1NiJ9." + b64(b"not json") + ".AAAA",
        "ünïcödé.tøken.here",
        "\ud800.e30.e30",
    ],
)
async def test_garbage_is_refused(verifier: JwtVerifier, garbage: str) -> None:
    with pytest.raises(InvalidToken):
        await verifier.verify(garbage)


@pytest.mark.parametrize(
    ("algorithms", "message"),
    [
        (["RS256", "none"], "never allowed"),
        (["NONE"], "never allowed"),
        (["RS256", "HS256"], "cannot be mixed"),
        (["ES256", "HS512"], "cannot be mixed"),
        ([], "at least one"),
        (["RS999"], "unknown algorithm"),
    ],
)
def test_unsafe_allowlists_are_config_errors(
    jwks: JwksCache, algorithms: list[str], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        check_algorithms(algorithms)
    with pytest.raises(ValueError, match=message):
        JwtVerifier(jwks, issuer=ISSUER, audience=AUDIENCE, algorithms=algorithms)


def test_safe_allowlists_pass() -> None:
    assert check_algorithms(["RS256", "PS256", "ES256", "EdDSA"]) == (
        "RS256",
        "PS256",
        "ES256",
        "EdDSA",
    )
    assert check_algorithms(["HS256", "HS512"]) == ("HS256", "HS512")


async def test_a_repeated_token_makes_no_signature_check(
    verifier: JwtVerifier, rsa_key: Signer, clock: FakeClock
) -> None:
    """The verified-token cache: the second verify is a lookup, until exp (plus leeway)."""
    token = mint(rsa_key)
    first = await verifier.verify(token)
    assert await verifier.verify(token) is first
    assert (verifier.signature_checks, verifier.cache_hits) == (1, 1)
    clock.now = first.expires_at + verifier.leeway - 1
    assert await verifier.verify(token) is first
    assert verifier.signature_checks == 1
    clock.now = first.expires_at + verifier.leeway
    await refused(verifier, token, "expired")
    assert verifier.signature_checks == 2


async def test_refused_tokens_are_not_cached(verifier: JwtVerifier, rsa_key: Signer) -> None:
    token = mint(rsa_key, aud="elsewhere")
    for _ in range(2):
        await refused(verifier, token, "Audience")
    assert (verifier.signature_checks, verifier.cache_hits) == (2, 0)


async def test_the_cache_is_bounded(jwks: JwksCache, rsa_key: Signer, clock: FakeClock) -> None:
    """The least recently used token is evicted: it costs a signature check again."""
    verifier = JwtVerifier(
        jwks, issuer=ISSUER, audience=AUDIENCE, algorithms=["RS256"], cache_entries=2, clock=clock
    )
    a, b, c = (mint(rsa_key) for _ in range(3))
    for token in (a, b, a, c):  # c evicts b, the least recently used
        await verifier.verify(token)
    assert verifier.signature_checks == 3
    await verifier.verify(a)
    assert verifier.signature_checks == 3
    await verifier.verify(b)
    assert verifier.signature_checks == 4


def test_tokens_minted_here_are_what_pyjwt_itself_accepts(rsa_key: Signer) -> None:
    """The test minting is sound: PyJWT verifies our tokens with the published key."""
    key = jwt.PyJWK(rsa_key.jwk).key
    payload = jwt.decode(
        mint(rsa_key, now=START),
        key,
        algorithms=["RS256"],
        audience=AUDIENCE,
        options={"verify_exp": False, "verify_iat": False},
    )
    assert payload["iss"] == ISSUER
