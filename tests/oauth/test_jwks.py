"""The key cache against a real JWKS server: rotation, unknown-kid storms, outages, limits."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest

from gateway.oauth import InvalidToken, JwksCache, JwtVerifier, KeysUnavailable
from gateway.oauth.jwks import parse_jwks
from tests.conftest import FakeClock
from tests.helpers import eventually
from tests.oauth.conftest import (
    AUDIENCE,
    ISSUER,
    AuthServer,
    CacheFactory,
    Signer,
    ec_signer,
    mint,
    rsa_signer,
)


def verifier_for(cache: JwksCache, clock: FakeClock) -> JwtVerifier:
    return JwtVerifier(
        cache, issuer=ISSUER, audience=AUDIENCE, algorithms=["RS256", "ES256"], clock=clock
    )


async def test_a_new_kid_is_fetched_once_and_then_accepted(
    auth_server: AuthServer,
    jwks: JwksCache,
    verifier: JwtVerifier,
    rsa_key: Signer,
    clock: FakeClock,
) -> None:
    """Rotation at the server: a token signed by a key published after our last fetch makes
    one refetch, and is accepted without a restart."""
    await verifier.verify(mint(rsa_key))
    assert auth_server.fetches() == 1
    new = rsa_signer("rsa-2")
    auth_server.publish(rsa_key, new)
    clock.now += jwks.unknown_kid_interval
    claims = await verifier.verify(mint(new))
    assert claims.subject == "user-1"
    assert auth_server.fetches() == 2
    await verifier.verify(mint(new))
    assert auth_server.fetches() == 2


async def test_concurrent_requests_for_a_new_kid_all_await_the_one_fetch(
    auth_server: AuthServer, jwks: JwksCache, verifier: JwtVerifier, clock: FakeClock
) -> None:
    """Right after a rotation many requests carry the new kid at once: one fetch, and every one
    of them is accepted once it lands (none refused for arriving while it was in flight)."""
    new = rsa_signer("rsa-2")
    auth_server.publish(new)
    clock.now += jwks.unknown_kid_interval
    auth_server.gate = asyncio.Event()
    tokens = [mint(new) for _ in range(50)]
    wave = asyncio.gather(*(verifier.verify(token) for token in tokens))
    await eventually(lambda: auth_server.fetches() == 2)
    auth_server.gate.set()
    assert all(claims.subject == "user-1" for claims in await wave)
    assert auth_server.fetches() == 2


async def test_a_removed_key_is_refused_after_the_refresh(
    auth_server: AuthServer,
    jwks: JwksCache,
    verifier: JwtVerifier,
    rsa_key: Signer,
    clock: FakeClock,
) -> None:
    """A key the server stops publishing stops verifying once the set is refreshed, even for a
    token already in the verified-token cache; the refresh happens by itself when due."""
    token = mint(rsa_key)
    await verifier.verify(token)
    auth_server.publish(rsa_signer("rsa-2"))
    clock.now += jwks.refresh_interval
    await verifier.verify(token)  # served from the cache while the refresh runs behind it
    await eventually(
        lambda: auth_server.fetches() == 2 and jwks.state()["last_success"] == clock.now
    )
    with pytest.raises(InvalidToken, match="no key"):
        await verifier.verify(token)
    assert auth_server.fetches() == 2  # an unknown kid so soon after a fetch does not refetch


async def test_an_unknown_kid_storm_makes_one_fetch_per_interval(
    auth_server: AuthServer, jwks: JwksCache, verifier: JwtVerifier, clock: FakeClock
) -> None:
    """200 concurrent tokens with random kids: one fetch, which they all await, then none
    until the interval has passed; every token is refused."""
    attacker = rsa_signer(None)

    async def attempt() -> None:
        token = mint(attacker, headers={"kid": uuid.uuid4().hex})
        with pytest.raises(InvalidToken):
            await verifier.verify(token)

    clock.now += jwks.unknown_kid_interval
    auth_server.gate = asyncio.Event()
    storm = asyncio.gather(*(attempt() for _ in range(200)))
    await eventually(lambda: auth_server.fetches() == 2)
    auth_server.gate.set()
    await storm
    assert auth_server.fetches() == 2
    await asyncio.gather(*(attempt() for _ in range(200)))
    assert auth_server.fetches() == 2
    clock.now += jwks.unknown_kid_interval
    await asyncio.gather(*(attempt() for _ in range(200)))
    assert auth_server.fetches() == 3


async def test_cached_keys_keep_serving_while_the_server_is_down(
    auth_server: AuthServer,
    jwks: JwksCache,
    verifier: JwtVerifier,
    rsa_key: Signer,
    clock: FakeClock,
) -> None:
    """An outage of the JWKS endpoint: known keys keep verifying, state() reports the error for
    readiness, an unknown kid is the server's fault (KeysUnavailable), and recovery is seen."""
    auth_server.down = True
    clock.now += jwks.refresh_interval
    assert (await verifier.verify(mint(rsa_key, now=clock.now))).subject == "user-1"
    await eventually(lambda: jwks.state()["failing"])
    state = jwks.state()
    assert state["keys"] == 1
    assert "503" in str(state["last_error"])
    assert state["last_success"] == clock.now - jwks.refresh_interval
    with pytest.raises(KeysUnavailable):
        await verifier.verify(mint(rsa_signer("rsa-new"), now=clock.now))
    auth_server.down = False
    clock.now += jwks.unknown_kid_interval  # a failing set is retried sooner than refresh
    await verifier.verify(mint(rsa_key, now=clock.now))
    await eventually(lambda: not jwks.state()["failing"])
    assert jwks.state()["last_success"] == clock.now


async def test_a_set_never_loaded_is_unavailable_not_invalid(
    auth_server: AuthServer, make_cache: CacheFactory, rsa_key: Signer, clock: FakeClock
) -> None:
    """With no keys ever fetched, a token cannot be judged: KeysUnavailable (a 503 later)."""
    auth_server.down = True
    cache = make_cache(url=auth_server.jwks_url)
    await cache.startup()
    assert cache.state()["keys"] == 0
    with pytest.raises(KeysUnavailable):
        await verifier_for(cache, clock).verify(mint(rsa_key))


async def test_keys_found_through_discovery(
    auth_server: AuthServer, make_cache: CacheFactory, ec_key: Signer, clock: FakeClock
) -> None:
    """OIDC discovery: the document's (relative) jwks_uri is fetched; discovery happens once."""
    auth_server.publish(ec_key)
    cache = make_cache(discovery_url=auth_server.discovery_url, issuer=ISSUER)
    await cache.startup()
    assert (await verifier_for(cache, clock).verify(mint(ec_key))).client_id == "app-1"
    clock.now += cache.refresh_interval
    await cache.refresh()
    assert auth_server.paths.count("/.well-known/openid-configuration") == 1
    assert auth_server.fetches() == 2


async def test_a_discovery_document_of_another_issuer_is_refused(
    auth_server: AuthServer, make_cache: CacheFactory
) -> None:
    cache = make_cache(discovery_url=f"{auth_server.url}/other-issuer", issuer=ISSUER)
    await cache.startup()
    assert "evil.test" in str(cache.state()["last_error"])
    assert auth_server.fetches() == 0


@pytest.mark.parametrize(
    ("path", "error"),
    [
        ("/big", "larger than"),
        ("/big-chunked", "larger than"),
        ("/redirect-https", "another scheme"),
        ("/not-json", "did not answer JSON"),
        ("/nowhere", "HTTP 404"),
    ],
)
async def test_a_bad_answer_is_a_recorded_failure(
    auth_server: AuthServer, make_cache: CacheFactory, path: str, error: str
) -> None:
    """Oversized bodies (declared or streamed), a redirect that changes scheme, non-JSON and
    error statuses fail the fetch with a reason, and leave no keys behind."""
    cache = make_cache(url=f"{auth_server.url}{path}")
    await cache.startup()
    state = cache.state()
    assert error in str(state["last_error"])
    assert state["keys"] == 0
    assert auth_server.fetches() == 0


async def test_a_redirect_on_the_same_scheme_is_followed(
    auth_server: AuthServer, make_cache: CacheFactory
) -> None:
    cache = make_cache(url=f"{auth_server.url}/redirect")
    await cache.startup()
    assert cache.state()["keys"] == 1
    assert cache.state()["last_error"] is None


async def test_a_server_that_does_not_answer_in_time_fails_the_fetch(
    auth_server: AuthServer, make_cache: CacheFactory
) -> None:
    auth_server.gate = asyncio.Event()
    cache = make_cache(url=auth_server.jwks_url, timeout=0.2)
    await cache.startup()
    assert "did not answer within" in str(cache.state()["last_error"])
    auth_server.gate.set()


def test_only_usable_signing_keys_are_taken() -> None:
    """Encryption keys, private keys, unknown types and malformed entries are left out."""
    good = rsa_signer("sig").jwk
    enc = {**rsa_signer("enc").jwk, "use": "enc"}
    wrap = {**rsa_signer("wrap").jwk, "key_ops": ["wrapKey"]}
    unknown = {"kty": "XYZ", "kid": "x"}
    numeric_kid = {**ec_signer().jwk, "kid": 7}
    private: dict[str, Any] = {**good, "kid": "private", "d": "AQAB"}
    keys, _, skipped = parse_jwks({"keys": [good, enc, wrap, unknown, numeric_kid, private, 1]})
    assert list(keys) == ["sig"]
    assert skipped == 6


@pytest.mark.parametrize("document", [[], {"keys": {}}, {"keys": []}, {"keys": [{"kty": "EC"}]}])
def test_a_set_without_usable_keys_is_refused(document: Any) -> None:
    with pytest.raises(ValueError, match="JWK Set"):
        parse_jwks(document)


async def test_a_kidless_token_uses_the_only_key(
    make_cache: CacheFactory, clock: FakeClock
) -> None:
    """A set of one key may leave out kid (and so may its tokens); with two keys, a token
    without kid is refused rather than tried against every key."""
    single = rsa_signer(None)
    cache = make_cache(jwks={"keys": [single.jwk]})
    assert (await verifier_for(cache, clock).verify(mint(single))).subject == "user-1"
    named = rsa_signer("named")
    two = make_cache(jwks={"keys": [named.jwk, ec_signer("e").jwk]})
    with pytest.raises(InvalidToken, match="no key"):
        await verifier_for(two, clock).verify(mint(named, headers={"kid": None}))


def test_a_cache_needs_exactly_one_source(auth_server: AuthServer) -> None:
    with pytest.raises(ValueError, match="exactly one"):
        JwksCache()
    with pytest.raises(ValueError, match="exactly one"):
        JwksCache(url=auth_server.jwks_url, jwks={"keys": []})
    with pytest.raises(ValueError, match="http"):
        JwksCache(url="file:///etc/passwd")
