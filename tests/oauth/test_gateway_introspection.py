"""Opaque access tokens through a real gateway, checked at a real introspection endpoint: what
the backend is told, how soon a revocation is seen, and an outage answered 503, never 401."""

from __future__ import annotations

from typing import Any

from tests.conftest import FakeClock, GatewayFactory, Upstream, UpstreamFactory, make_config
from tests.helpers import ADMIN, Admin
from tests.oauth.conftest import JWT_ROUTES, send
from tests.oauth.introspection_endpoint import CLIENT_ID, SECRET, Introspection
from tests.oauth.introspection_endpoint import start_introspection as start_endpoint

INVALID = (
    'Bearer realm="api", error="invalid_token",'
    ' error_description="The access token is invalid or has expired"'
)


def opaque_config(
    upstream: Upstream, endpoint: Introspection, cache_ttl: str = "30s", **extra: Any
) -> dict[str, Any]:
    oauth = {
        "audience": "https://api.example.test",
        "introspection": {
            "url": endpoint.url,
            "client_id": CLIENT_ID,
            "client_secret": SECRET,
            "cache_ttl": cache_ttl,
            "timeout": "500ms",
        },
    }
    return make_config(
        {"app": {"targets": [upstream.url]}},
        JWT_ROUTES,
        **{"oauth": oauth, "plans": {"free": {}}, **extra},
    )


def active(clock: FakeClock, org: str = "acme", **claims: Any) -> dict[str, Any]:
    return {
        "active": True,
        "scope": "orders:read",
        "client_id": "installed-app",
        "sub": "user-7",
        "org_id": org,
        "exp": int(clock.now) + 3600,
        **claims,
    }


async def test_an_opaque_token_is_asked_about_and_the_backend_told_who_called(
    gateway_factory: GatewayFactory,
    upstream: Upstream,
    upstream_factory: UpstreamFactory,
    gateway_clock: FakeClock,
    store_config: dict[str, Any],
) -> None:
    endpoint = await start_endpoint(upstream_factory)
    config = opaque_config(upstream, endpoint, store=store_config)
    gw = await gateway_factory(config, clock=gateway_clock)
    org = await Admin(gw).org()
    endpoint.answers["bwp_at_opaque1"] = active(gateway_clock)
    for path in ("/v1/orders", "/v1/apps", "/v1/orders"):
        answer = await send(gw, path, "bwp_at_opaque1")
        assert answer.status == 200, answer.body
    # One call for the three requests (the answer is kept), with our credentials (the
    # endpoint answers 401 to any other, which the gateway would have made a 503).
    assert endpoint.forms == [{"token": "bwp_at_opaque1", "token_type_hint": "access_token"}]
    headers = {name.lower(): value for name, value in upstream.seen[0].headers}
    assert headers["x-org-id"] == org["id"]
    assert headers["x-scopes"] == "orders:read"
    assert headers["x-subject"] == "user-7"
    assert headers["x-client-id"] == "installed-app"
    assert "authorization" not in headers
    assert "x-api-key-id" not in headers
    me = await send(gw, "/v1/me", "bwp_at_opaque1")
    assert me.status == 200
    assert (me.body["data"]["clientId"], me.body["data"]["apiKeyId"]) == ("installed-app", None)


async def test_a_revocation_is_seen_within_cache_ttl(
    gateway_factory: GatewayFactory,
    upstream: Upstream,
    upstream_factory: UpstreamFactory,
    gateway_clock: FakeClock,
) -> None:
    endpoint = await start_endpoint(upstream_factory)
    gw = await gateway_factory(opaque_config(upstream, endpoint), clock=gateway_clock)
    await Admin(gw).org()
    endpoint.answers["tok"] = active(gateway_clock)
    assert (await send(gw, "/v1/orders", "tok")).status == 200
    del endpoint.answers["tok"]  # revoked at the authorization server
    gateway_clock.now += 29
    assert (await send(gw, "/v1/orders", "tok")).status == 200  # within cache_ttl
    gateway_clock.now += 2
    refused = await send(gw, "/v1/orders", "tok")
    assert (refused.status, refused.headers["WWW-Authenticate"]) == (401, INVALID)
    assert endpoint.calls == 2


async def test_cache_ttl_zero_asks_on_every_request(
    gateway_factory: GatewayFactory,
    upstream: Upstream,
    upstream_factory: UpstreamFactory,
    gateway_clock: FakeClock,
) -> None:
    endpoint = await start_endpoint(upstream_factory)
    config = opaque_config(upstream, endpoint, cache_ttl="0s")
    gw = await gateway_factory(config, clock=gateway_clock)
    await Admin(gw).org()
    endpoint.answers["tok"] = active(gateway_clock)
    for _ in range(3):
        assert (await send(gw, "/v1/orders", "tok")).status == 200
    assert endpoint.calls == 3
    del endpoint.answers["tok"]
    assert (await send(gw, "/v1/orders", "tok")).status == 401


async def test_an_endpoint_outage_is_503_never_401_and_readiness_says_so(
    gateway_factory: GatewayFactory,
    upstream: Upstream,
    upstream_factory: UpstreamFactory,
    gateway_clock: FakeClock,
) -> None:
    endpoint = await start_endpoint(upstream_factory)
    gw = await gateway_factory(opaque_config(upstream, endpoint), clock=gateway_clock)
    await Admin(gw).org()
    for failure in ("503", "hang", "401", "html"):
        endpoint.answers[failure] = active(gateway_clock)
        endpoint.fail = failure
        answer = await send(gw, "/v1/orders", failure)
        assert answer.status == 503, (failure, answer.body)
        assert answer.headers["Retry-After"] == "1"
        assert answer.body["error"]["code"] == "unavailable"
        async with gw.session.get(f"{gw.admin_url}/readyz") as r:
            ready = (await r.json())["data"]
        assert r.status == 200
        assert ready["status"] == "ready"
        assert ready["oauth"]["introspection"]["ok"] is False
        assert ready["oauth"]["introspection"]["last_error"]
        endpoint.fail = None
        gateway_clock.now += 1  # the endpoint is left alone for a second after a failure
        assert (await send(gw, "/v1/orders", failure)).status == 200
    async with gw.session.get(f"{gw.admin_url}/readyz") as r:
        assert (await r.json())["data"]["oauth"]["introspection"]["ok"] is True


async def test_inactive_tokens_get_the_common_401_and_keys_never_leave_the_gateway(
    gateway_factory: GatewayFactory,
    upstream: Upstream,
    upstream_factory: UpstreamFactory,
    gateway_clock: FakeClock,
) -> None:
    endpoint = await start_endpoint(upstream_factory)
    gw = await gateway_factory(opaque_config(upstream, endpoint), clock=gateway_clock)
    admin = Admin(gw)
    await admin.org()
    key = await admin.key(scopes=["orders:read"])
    endpoint.answers["for-another-org"] = active(gateway_clock, org="globex")
    for token in ("never-issued", "for-another-org"):
        answer = await send(gw, "/v1/apps", token)
        assert (answer.status, answer.headers["WWW-Authenticate"]) == (401, INVALID)
    calls = endpoint.calls
    # SECURITY: one of our keys sent to a route that takes tokens only is refused here; it is
    # never shown to the authorization server.
    refused = await send(gw, "/v1/apps", key["secret"])
    assert refused.status == 401
    # Nor is a mistyped one, whose checksum fails: it would give most of the key away.
    for typo in (key["secret"][:-1], key["secret"] + "x", key["secret"][:-1] + "0"):
        for path in ("/v1/apps", "/v1/orders"):
            assert (await send(gw, path, typo)).status == 401, (path, typo)
    assert (await send(gw, "/v1/orders", key["secret"])).status == 200  # keys routes: a key
    assert endpoint.calls == calls
    assert all(key["secret"] not in form.values() for form in endpoint.forms)


async def test_the_client_secret_is_never_shown(
    gateway_factory: GatewayFactory, upstream: Upstream, upstream_factory: UpstreamFactory
) -> None:
    endpoint = await start_endpoint(upstream_factory)
    gw = await gateway_factory(opaque_config(upstream, endpoint))
    async with gw.session.get(f"{gw.admin_url}/admin/config", headers=ADMIN) as r:
        text = await r.text()
        shown = (await r.json())["data"]["config"]["oauth"]["introspection"]
    assert shown["client_secret"] == "***"
    assert SECRET not in text
