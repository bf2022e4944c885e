"""The edges of the introspection client that test_introspector.py leaves open: the exact bytes of
the client authentication, a 403, a redirect, a refused connection, answers that are not an
object, how long a "no" is kept under a short cache_ttl, the bound on lookups in flight, a lookup
nobody waits for any more, shutdown, and what reaches the logs."""

from __future__ import annotations

import asyncio
import base64
import gc
import hashlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from aiohttp import web

from gateway.oauth import Claims, IntrospectionUnavailable, Introspector, InvalidToken
from tests.conftest import FakeClock, LogLines, UpstreamFactory, closed_port_url
from tests.helpers import eventually
from tests.oauth.introspection_endpoint import (
    CLIENT_ID,
    SECRET,
    Introspection,
    start_introspection,
)

START = 1_700_000_000.0
TOKEN = "secret-opaque-token-0123456789"


@pytest.fixture
async def server(upstream_factory: UpstreamFactory) -> Introspection:
    return await start_introspection(upstream_factory)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(START)


Make = Callable[..., Introspector]


@pytest.fixture
async def make(server: Introspection, clock: FakeClock) -> AsyncIterator[Make]:
    made: list[Introspector] = []

    def build(url: str | None = None, **options: Any) -> Introspector:
        settings: dict[str, Any] = {
            "client_id": CLIENT_ID,
            "client_secret": SECRET,
            "timeout": 2.0,
            "clock": clock,
            **options,
        }
        introspector = Introspector(url or server.url, **settings)
        made.append(introspector)
        return introspector

    yield build
    for introspector in made:
        await introspector.shutdown()


def active(**claims: Any) -> dict[str, Any]:
    return {"active": True, "sub": "user-1", "client_id": "app-1", "exp": START + 3600, **claims}


async def check(introspector: Introspector, token: str = TOKEN) -> Claims:
    return await introspector.introspect(token, hashlib.sha256(token.encode()).digest())


async def test_the_request_as_rfc_6749_and_7662_spell_it(
    upstream_factory: UpstreamFactory, make: Make
) -> None:
    endpoint = Introspection(answers={TOKEN: active()})
    upstream = await upstream_factory(endpoint.handle)  # recorded: the headers as sent
    await check(make(f"{upstream.url}/introspect"))
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
    server: Introspection, make: Make, clock: FakeClock
) -> None:
    server.answers[TOKEN] = active(exp=None, aud=["https://b.test"])
    introspector = make(cache_ttl=30, audience=("https://a.test", "https://b.test"))
    claims = await check(introspector)  # one of the configured audiences is enough
    assert claims.expires_at == START + 30
    clock.now += 29
    await check(introspector)
    assert (introspector.calls, introspector.cache_hits, server.calls) == (1, 1, 1)
    clock.now += 1
    await check(introspector)
    assert (introspector.calls, introspector.cache_hits) == (2, 1)
    assert introspector.state()["last_success"] == START + 30


async def test_a_no_is_kept_no_longer_than_cache_ttl(
    server: Introspection, make: Make, clock: FakeClock
) -> None:
    introspector = make(cache_ttl=2, negative_ttl=5)
    for _ in range(3):
        with pytest.raises(InvalidToken, match="inactive"):
            await check(introspector)
    assert server.calls == 1
    clock.now += 2
    with pytest.raises(InvalidToken):
        await check(introspector)
    assert server.calls == 2


async def refuse(request: web.BaseRequest) -> web.StreamResponse:
    return web.json_response({"error": "unauthorized_client"}, status=403)


async def test_a_403_is_our_credentials_and_the_token_is_never_logged(
    upstream_factory: UpstreamFactory, make: Make, logs: LogLines
) -> None:
    upstream = await upstream_factory(refuse)
    introspector = make(upstream.url)
    with pytest.raises(IntrospectionUnavailable, match="credentials"):
        await check(introspector)
    [event] = logs.events("introspection_failed")
    assert event["level"] == "warning"
    assert "credentials" in event["error"]
    assert "403" in event["error"]
    # SECURITY: neither the token nor the client secret reaches a log line.
    assert TOKEN.encode() not in logs.raw()
    assert b"cr%t" not in logs.raw()
    assert SECRET.encode() not in logs.raw()


async def test_a_refused_connection_is_unavailable(make: Make) -> None:
    introspector = make(closed_port_url())
    with pytest.raises(IntrospectionUnavailable):
        await check(introspector)
    state = introspector.state()
    assert state["failing"] is True
    assert state["last_success"] is None
    assert isinstance(state["last_error"], str)
    assert state["last_error"]
    assert introspector.calls == 1


async def test_a_redirect_is_not_followed(upstream_factory: UpstreamFactory, make: Make) -> None:
    elsewhere = Introspection(answers={TOKEN: active()})
    target = await upstream_factory(elsewhere.handle, record=False)

    async def moved(request: web.BaseRequest) -> web.StreamResponse:
        raise web.HTTPTemporaryRedirect(f"{target.url}/introspect")

    upstream = await upstream_factory(moved)
    with pytest.raises(IntrospectionUnavailable, match="307"):
        await check(make(upstream.url))
    assert elsewhere.calls == 0  # SECURITY: the token went nowhere it was not configured to go


@pytest.mark.parametrize(
    ("status", "body"),
    [(200, b"[true]"), (200, b'"active"'), (500, b'{"active": true}'), (200, b"{")],
)
async def test_only_a_200_with_a_json_object_is_an_answer(
    upstream_factory: UpstreamFactory, make: Make, status: int, body: bytes
) -> None:
    async def odd(request: web.BaseRequest) -> web.StreamResponse:
        return web.Response(status=status, body=body, content_type="application/json")

    upstream = await upstream_factory(odd)
    with pytest.raises(IntrospectionUnavailable):
        await check(make(upstream.url))


async def test_at_most_32_lookups_are_in_flight(server: Introspection, make: Make) -> None:
    tokens = [f"tok-{n}" for n in range(40)]
    server.answers.update({token: active() for token in tokens})
    server.fail = "gate"
    introspector = make()
    waiters = [asyncio.ensure_future(check(introspector, token)) for token in tokens]
    await eventually(lambda: server.calls, expect=32)
    await asyncio.sleep(0.05)
    assert server.calls == 32  # the other 8 wait their turn, not the endpoint
    server.release.set()
    assert len(await asyncio.gather(*waiters)) == 40
    assert server.calls == 40


async def test_a_lookup_left_by_its_only_waiter_still_answers(
    server: Introspection, make: Make
) -> None:
    server.answers[TOKEN] = active()
    server.fail = "gate"
    introspector = make()
    waiter = asyncio.ensure_future(check(introspector))
    await eventually(lambda: server.calls, expect=1)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    server.release.set()
    assert (await check(introspector)).subject == "user-1"  # shared or cached, never asked again
    assert server.calls == 1


async def test_a_failure_nobody_waits_for_is_not_an_unhandled_error(
    upstream_factory: UpstreamFactory, make: Make, caplog: pytest.LogCaptureFixture
) -> None:
    release = asyncio.Event()

    async def slow_outage(request: web.BaseRequest) -> web.StreamResponse:
        await release.wait()
        return web.Response(status=503)

    upstream = await upstream_factory(slow_outage)
    introspector = make(upstream.url)
    waiter = asyncio.ensure_future(check(introspector))
    await eventually(lambda: len(upstream.seen), expect=1)
    waiter.cancel()
    release.set()
    await eventually(lambda: introspector.state()["failing"])
    del waiter
    await asyncio.sleep(0)
    gc.collect()  # asyncio reports an exception never retrieved when the task is collected
    assert not [r for r in caplog.records if "never retrieved" in r.getMessage()]


async def test_shutdown_cancels_lookups_in_flight(server: Introspection, make: Make) -> None:
    server.answers[TOKEN] = active()
    server.fail = "hang"
    introspector = make(timeout=30.0)
    waiter = asyncio.ensure_future(check(introspector))
    await eventually(lambda: server.calls, expect=1)
    async with asyncio.timeout(2):
        await introspector.shutdown()
        with pytest.raises(asyncio.CancelledError):
            await waiter
    server.fail = None
    assert (await check(introspector)).subject == "user-1"  # a new session, made when needed
