"""Opaque tokens asked about at a real introspection endpoint (RFC 7662): what is sent, what is
believed, what is remembered and for how long, and what an outage becomes."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from gateway.oauth import IntrospectionUnavailable, InvalidToken
from tests.conftest import FakeClock
from tests.oauth.conftest import START, IntrospectorFactory
from tests.oauth.introspection_endpoint import Introspection, check


def active(**claims: Any) -> dict[str, Any]:
    return {
        "active": True,
        "scope": "orders:read orders:write",
        "client_id": "app-1",
        "sub": "user-1",
        "exp": int(START) + 3600,
        **claims,
    }


async def test_an_active_token_and_what_was_sent(
    introspection: Introspection, make_introspector: IntrospectorFactory
) -> None:
    introspection.answers["tok-1"] = active(
        org_id="acme", aud=["https://api.example.test", "other"]
    )
    claims = await check(make_introspector(), "tok-1")
    assert (claims.subject, claims.client_id) == ("user-1", "app-1")
    assert claims.scopes == ("orders:read", "orders:write")
    assert claims.expires_at == START + 3600
    assert claims.raw["org_id"] == "acme"
    # The server accepted our Basic credentials (else it would have said 401 and we 503).
    assert introspection.forms == [{"token": "tok-1", "token_type_hint": "access_token"}]


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        ({"active": False}, "inactive"),
        ({"active": "true"}, "inactive"),  # not the JSON true
        (active(exp=int(START) - 31), "expired"),
        (active(nbf=int(START) + 31), "not yet valid"),
        (active(iss="https://evil.test"), "another server"),
        (active(aud="https://other.test"), "another audience"),
        (active(aud=["a", "b"]), "another audience"),
        (active(token_type="refresh_token"), "refresh token"),
        (active(scope=["a", 1]), "scope"),
        (active(sub=42), "sub"),
    ],
)
async def test_what_is_not_believed(
    introspection: Introspection,
    make_introspector: IntrospectorFactory,
    answer: dict[str, Any],
    reason: str,
) -> None:
    introspection.answers["tok"] = answer
    with pytest.raises(InvalidToken) as refused:
        await check(make_introspector(), "tok")
    assert reason in refused.value.reason


async def test_scopes_from_the_configured_claim(
    introspection: Introspection, make_introspector: IntrospectorFactory
) -> None:
    introspection.answers["tok"] = active(permissions=["a:read", "b:write"])
    claims = await check(make_introspector(scopes_claim="permissions"), "tok")
    assert claims.scopes == ("a:read", "b:write")


async def test_an_active_answer_is_kept_until_exp_bounded_by_cache_ttl(
    introspection: Introspection, make_introspector: IntrospectorFactory, clock: FakeClock
) -> None:
    introspection.answers["tok"] = active()
    introspector = make_introspector(cache_ttl=60)
    await check(introspector, "tok")
    del introspection.answers["tok"]  # revoked at the introspection
    clock.now += 59
    await check(introspector, "tok")  # still within cache_ttl: not asked again
    assert introspection.calls == 1
    clock.now += 2
    with pytest.raises(InvalidToken):
        await check(introspector, "tok")  # the revocation is seen within cache_ttl
    assert introspection.calls == 2
    # A token expiring sooner than cache_ttl is kept only until it expires.
    introspection.answers["short"] = active(exp=int(clock.now) + 10)
    await check(introspector, "short")
    clock.now += 11
    await check(introspector, "short")  # asked again: its exp ended the cached answer
    assert introspection.calls == 4


async def test_cache_ttl_zero_asks_every_time(
    introspection: Introspection, make_introspector: IntrospectorFactory
) -> None:
    introspection.answers["tok"] = active()
    introspector = make_introspector(cache_ttl=0)
    for _ in range(3):
        await check(introspector, "tok")
    assert introspection.calls == 3


async def test_a_no_is_kept_briefly(
    introspection: Introspection, make_introspector: IntrospectorFactory, clock: FakeClock
) -> None:
    introspector = make_introspector(cache_ttl=60, negative_ttl=5)
    for _ in range(10):
        with pytest.raises(InvalidToken):
            await check(introspector, "nope")
    assert introspection.calls == 1
    introspection.answers["nope"] = active()  # e.g. an nbf that has arrived
    clock.now += 5
    await check(introspector, "nope")
    assert introspection.calls == 2


@pytest.mark.parametrize("failure", ["503", "401", "html", "huge", "hang"])
async def test_an_outage_is_unavailable_never_invalid_and_never_remembered(
    introspection: Introspection,
    make_introspector: IntrospectorFactory,
    clock: FakeClock,
    failure: str,
) -> None:
    introspection.answers["tok"] = active()
    introspector = make_introspector()
    introspection.fail = failure
    with pytest.raises(IntrospectionUnavailable):
        await check(introspector, "tok")
    assert introspector.state()["failing"] is True
    # Within a second of the failure the endpoint is left alone: no call, still unavailable.
    with pytest.raises(IntrospectionUnavailable):
        await check(introspector, "tok")
    assert introspection.calls == 1
    introspection.fail = None
    clock.now += 1
    assert (await check(introspector, "tok")).subject == "user-1"
    assert introspector.state()["failing"] is False


async def test_wrong_credentials_are_unavailable(
    introspection: Introspection, make_introspector: IntrospectorFactory
) -> None:
    introspection.answers["tok"] = active()
    with pytest.raises(IntrospectionUnavailable, match="credentials"):
        await check(make_introspector(client_secret="wrong"), "tok")


async def test_concurrent_lookups_of_one_token_share_one_call(
    introspection: Introspection, make_introspector: IntrospectorFactory
) -> None:
    introspection.answers["tok"] = active()
    introspection.fail = "gate"
    introspector = make_introspector()
    waiters = [asyncio.ensure_future(check(introspector, "tok")) for _ in range(10)]
    await asyncio.sleep(0.05)
    waiters[0].cancel()  # one client goes away: the others' lookup goes on
    introspection.fail = None
    introspection.release.set()
    results = await asyncio.gather(*waiters[1:])
    assert {claims.subject for claims in results} == {"user-1"}
    assert introspection.calls == 1


async def test_lookups_queued_behind_a_failing_endpoint_fail_at_once(
    introspection: Introspection, make_introspector: IntrospectorFactory
) -> None:
    introspection.fail = "hang"
    introspector = make_introspector(timeout=0.3)
    started = asyncio.get_running_loop().time()
    outcomes = await asyncio.gather(
        *(check(introspector, f"tok-{i}") for i in range(100)), return_exceptions=True
    )
    elapsed = asyncio.get_running_loop().time() - started
    assert all(isinstance(o, IntrospectionUnavailable) for o in outcomes)
    # The first 32 wait out the timeout; the rest find the endpoint failing and do not call.
    assert introspection.calls == 32
    assert elapsed < 0.3 * 2.5


async def test_oversized_or_non_ascii_tokens_are_never_sent(
    introspection: Introspection, make_introspector: IntrospectorFactory
) -> None:
    introspector = make_introspector()
    for token in ("x" * 8193, "tök", "a b", 'tok"en'):
        with pytest.raises(InvalidToken):
            await check(introspector, token)
    assert introspection.calls == 0
