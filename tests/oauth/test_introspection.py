"""The edges of the introspection client that test_introspector.py leaves open: the exact bytes of
the client authentication, a 403, a redirect, a refused connection, answers that are not an
object, how long a "no" is kept under a short cache_ttl, the bound on lookups in flight, a lookup
nobody waits for any more, shutdown, and what reaches the logs."""

from __future__ import annotations

import asyncio
import base64
import gc
from typing import Any

import pytest
from aiohttp import web

from gateway.oauth import IntrospectionUnavailable, InvalidToken
from tests.conftest import FakeClock, LogLines, UpstreamFactory, closed_port_url
from tests.helpers import eventually
from tests.oauth.conftest import START, IntrospectorFactory
from tests.oauth.introspection_endpoint import SECRET, Introspection, check

TOKEN = "secret-opaque-token-0123456789"


def active(**claims: Any) -> dict[str, Any]:
    return {"active": True, "sub": "user-1", "client_id": "app-1", "exp": START + 3600, **claims}


async def test_the_request_as_rfc_6749_and_7662_spell_it(
    upstream_factory: UpstreamFactory, make_introspector: IntrospectorFactory
) -> None:
    endpoint = Introspection(answers={TOKEN: active()})
    upstream = await upstream_factory(endpoint.handle)  # recorded: the headers as sent
    await check(make_introspector(f"{upstream.url}/introspect"), TOKEN)
    seen = upstream.seen[0]
    assert (seen.method, seen.raw_path) == ("POST", "/introspect")
    # RFC 6749 2.3.1: id and secret form-encoded first (space, ":", "%", "é"), then base64.
    pair = b"api+gateway:s3%3Acr%25t+%C3%A9"
    assert upstream.header_values(0, "Authorization") == [
        "Basic " + base64.b64encode(pair).decode()
    ]
    assert upstream.header_values(0, "Accept") == ["application/json"]
    assert upstream.header_values(0, "Content-Type") == ["application/x-www-form-urlencoded"]
    assert endpoint.forms == [{"token": TOKEN, "token_type_hint": "access_token"}]


async def test_an_answer_without_exp_is_kept_for_cache_ttl(
    introspection: Introspection, make_introspector: IntrospectorFactory, clock: FakeClock
) -> None:
    introspection.answers[TOKEN] = active(exp=None, aud=["https://b.test"])
    introspector = make_introspector(cache_ttl=30, audience=("https://a.test", "https://b.test"))
    claims = await check(introspector, TOKEN)  # one of the configured audiences is enough
    assert claims.expires_at == START + 30
    clock.now += 29
    await check(introspector, TOKEN)
    assert (introspector.calls, introspector.cache_hits, introspection.calls) == (1, 1, 1)
    clock.now += 1
    await check(introspector, TOKEN)
    assert (introspector.calls, introspector.cache_hits) == (2, 1)
    assert introspector.state()["last_success"] == START + 30


async def test_a_no_is_kept_no_longer_than_cache_ttl(
    introspection: Introspection, make_introspector: IntrospectorFactory, clock: FakeClock
) -> None:
    introspector = make_introspector(cache_ttl=2, negative_ttl=5)
    for _ in range(3):
        with pytest.raises(InvalidToken, match="inactive"):
            await check(introspector, TOKEN)
    assert introspection.calls == 1
    clock.now += 2
    with pytest.raises(InvalidToken):
        await check(introspector, TOKEN)
    assert introspection.calls == 2


async def refuse(request: web.BaseRequest) -> web.StreamResponse:
    return web.json_response({"error": "unauthorized_client"}, status=403)


async def test_a_403_is_our_credentials_and_the_token_is_never_logged(
    upstream_factory: UpstreamFactory, make_introspector: IntrospectorFactory, logs: LogLines
) -> None:
    upstream = await upstream_factory(refuse)
    introspector = make_introspector(upstream.url)
    with pytest.raises(IntrospectionUnavailable, match="credentials"):
        await check(introspector, TOKEN)
    [event] = logs.events("introspection_failed")
    assert event["level"] == "warning"
    assert "credentials" in event["error"]
    assert "403" in event["error"]
    # SECURITY: neither the token nor the client secret reaches a log line.
    assert TOKEN.encode() not in logs.raw()
    assert b"cr%t" not in logs.raw()
    assert SECRET.encode() not in logs.raw()


async def test_a_refused_connection_is_unavailable(make_introspector: IntrospectorFactory) -> None:
    introspector = make_introspector(closed_port_url())
    with pytest.raises(IntrospectionUnavailable):
        await check(introspector, TOKEN)
    state = introspector.state()
    assert state["failing"] is True
    assert state["last_success"] is None
    assert isinstance(state["last_error"], str)
    assert state["last_error"]
    assert introspector.calls == 1


async def test_a_redirect_is_not_followed(
    upstream_factory: UpstreamFactory, make_introspector: IntrospectorFactory
) -> None:
    elsewhere = Introspection(answers={TOKEN: active()})
    target = await upstream_factory(elsewhere.handle, record=False)

    async def moved(request: web.BaseRequest) -> web.StreamResponse:
        raise web.HTTPTemporaryRedirect(f"{target.url}/introspect")

    upstream = await upstream_factory(moved)
    with pytest.raises(IntrospectionUnavailable, match="307"):
        await check(make_introspector(upstream.url), TOKEN)
    assert elsewhere.calls == 0  # SECURITY: the token went nowhere it was not configured to go


@pytest.mark.parametrize(
    ("status", "body"),
    [(200, b"[true]"), (200, b'"active"'), (500, b'{"active": true}'), (200, b"{")],
)
async def test_only_a_200_with_a_json_object_is_an_answer(
    upstream_factory: UpstreamFactory,
    make_introspector: IntrospectorFactory,
    status: int,
    body: bytes,
) -> None:
    async def odd(request: web.BaseRequest) -> web.StreamResponse:
        return web.Response(status=status, body=body, content_type="application/json")

    upstream = await upstream_factory(odd)
    with pytest.raises(IntrospectionUnavailable):
        await check(make_introspector(upstream.url), TOKEN)


async def test_at_most_32_lookups_are_in_flight(
    introspection: Introspection, make_introspector: IntrospectorFactory
) -> None:
    tokens = [f"tok-{n}" for n in range(40)]
    introspection.answers.update({token: active() for token in tokens})
    introspection.fail = "gate"
    introspector = make_introspector()
    waiters = [asyncio.ensure_future(check(introspector, token)) for token in tokens]
    await eventually(lambda: introspection.calls, expect=32)
    await asyncio.sleep(0.05)
    assert introspection.calls == 32  # the other 8 wait their turn, not the endpoint
    introspection.release.set()
    assert len(await asyncio.gather(*waiters)) == 40
    assert introspection.calls == 40


async def test_a_lookup_left_by_its_only_waiter_still_answers(
    introspection: Introspection, make_introspector: IntrospectorFactory
) -> None:
    introspection.answers[TOKEN] = active()
    introspection.fail = "gate"
    introspector = make_introspector()
    waiter = asyncio.ensure_future(check(introspector, TOKEN))
    await eventually(lambda: introspection.calls, expect=1)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    introspection.release.set()
    assert (
        await check(introspector, TOKEN)
    ).subject == "user-1"  # shared or cached, never asked again
    assert introspection.calls == 1


async def test_a_failure_nobody_waits_for_is_not_an_unhandled_error(
    upstream_factory: UpstreamFactory,
    make_introspector: IntrospectorFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    release = asyncio.Event()

    async def slow_outage(request: web.BaseRequest) -> web.StreamResponse:
        await release.wait()
        return web.Response(status=503)

    upstream = await upstream_factory(slow_outage)
    introspector = make_introspector(upstream.url)
    waiter = asyncio.ensure_future(check(introspector, TOKEN))
    await eventually(lambda: len(upstream.seen), expect=1)
    waiter.cancel()
    release.set()
    await eventually(lambda: introspector.state()["failing"])
    del waiter
    await asyncio.sleep(0)
    gc.collect()  # asyncio reports an exception never retrieved when the task is collected
    assert not [r for r in caplog.records if "never retrieved" in r.getMessage()]


async def test_shutdown_cancels_lookups_in_flight(
    introspection: Introspection, make_introspector: IntrospectorFactory
) -> None:
    introspection.answers[TOKEN] = active()
    introspection.fail = "hang"
    introspector = make_introspector(timeout=30.0)
    waiter = asyncio.ensure_future(check(introspector, TOKEN))
    await eventually(lambda: introspection.calls, expect=1)
    async with asyncio.timeout(2):
        await introspector.shutdown()
        with pytest.raises(asyncio.CancelledError):
            await waiter
    introspection.fail = None
    assert (await check(introspector, TOKEN)).subject == "user-1"  # a new session, made when needed
