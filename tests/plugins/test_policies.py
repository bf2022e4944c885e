"""Route policies: deprecation and sunset (and, as they arrive, CORS and header rules)."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import pytest

from gateway.config import ConfigError, parse_config
from tests.conftest import (
    FakeClock,
    GatewayFactory,
    LogLines,
    Upstream,
    UpstreamFactory,
    make_config,
)

DEPRECATION = {
    "deprecated_at": "2026-01-01",
    "sunset_at": "2026-07-01T00:00:00Z",
    "link": "https://example.com/migrate",
    "successor": "https://api.example.com/v2/contacts",
}


async def test_deprecated_route_carries_the_standard_headers_then_answers_410(
    gateway_factory: GatewayFactory, upstream: Upstream, logs: LogLines
) -> None:
    clock = FakeClock(datetime(2026, 3, 1, tzinfo=UTC).timestamp())
    gw = await gateway_factory(
        make_config(
            {"app": {"targets": [upstream.url]}},
            [
                {"path": "/v1/legacy/{rest:.*}", "upstream": "app", "deprecation": DEPRECATION},
                {"path": "/v2/{rest:.*}", "upstream": "app"},
            ],
        ),
        clock=clock,
    )
    async with gw.session.get(f"{gw.url}/v1/legacy/contacts") as r:
        assert r.status == 200
        assert r.headers["Deprecation"] == f"@{int(datetime(2026, 1, 1, tzinfo=UTC).timestamp())}"
        assert r.headers["Sunset"] == "Wed, 01 Jul 2026 00:00:00 GMT"
        assert r.headers.getall("Link") == [
            '<https://example.com/migrate>; rel="deprecation"; type="text/html"',
            '<https://api.example.com/v2/contacts>; rel="successor-version"',
        ]
    async with gw.session.get(f"{gw.url}/v2/contacts") as r:
        assert "Deprecation" not in r.headers
    clock.now = datetime(2026, 7, 1, 0, 0, 1, tzinfo=UTC).timestamp()
    async with gw.session.get(f"{gw.url}/v1/legacy/contacts") as r:
        assert r.status == 410
        body = await r.json()
        assert body["error"]["code"] == "sunset"
        assert "https://api.example.com/v2/contacts" in body["error"]["message"]
        assert r.headers["Sunset"] == "Wed, 01 Jul 2026 00:00:00 GMT"
    assert len(upstream.seen) == 2
    text = await gw.metrics()
    assert 'gateway_deprecated_requests_total{route="/v1/legacy/{rest:.*}"} 2.0' in text
    lines = logs.events("request")
    assert [line.get("deprecated") for line in lines] == [True, None, True]


def test_sunset_before_deprecation_is_refused() -> None:
    text = b"""
upstreams: {a: {targets: ['http://127.0.0.1:1']}}
routes:
  - {path: /x, upstream: a, deprecation: {deprecated_at: 2026-07-01, sunset_at: 2026-01-01}}
  - {path: /y, upstream: a, deprecation: {deprecated_at: 2026-07-01, link: 'not a url'}}
"""
    with pytest.raises(ConfigError) as info:
        parse_config(text, source="t", env={})
    assert info.value.problems == [
        "routes[0].deprecation.sunset_at: must be after deprecated_at",
        "routes[1].deprecation.link: must be an absolute http(s) URL (got 'not a url')",
    ]


def test_dates_without_a_zone_are_utc() -> None:
    text = b"""
upstreams: {a: {targets: ['http://127.0.0.1:1']}}
routes:
  - path: /x
    upstream: a
    deprecation: {deprecated_at: 2026-01-01, sunset_at: '2026-07-01 12:00:00'}
"""
    route = parse_config(text, source="t", env={}).config.routes[0]
    assert route.deprecation is not None
    assert route.deprecation.sunset_at == datetime(2026, 7, 1, 12, tzinfo=UTC)
    assert time.gmtime(route.deprecation.deprecated_at.timestamp())[:3] == (2026, 1, 1)


def cors_config(upstream: Upstream, cors: dict[str, object], **route: object) -> dict[str, object]:
    return make_config(
        {"app": {"targets": [upstream.url]}},
        [
            {"path": "/v1/contacts", "upstream": "app", "methods": ["GET"], "auth": "key", **route},
            {
                "path": "/v1/public",
                "upstream": "app",
                "methods": ["GET"],
                "cors": {"origins": ["https://other.test"]},
            },
        ],
        cors=cors,
    )


PREFLIGHT = {
    "Access-Control-Request-Method": "GET",
    "Access-Control-Request-Headers": "authorization, content-type",
}


async def test_a_listed_origin_gets_its_preflight_answered_before_auth(
    gateway_factory: GatewayFactory, upstream: Upstream
) -> None:
    gw = await gateway_factory(
        cors_config(upstream, {"origins": ["https://app.example.com"], "max_age": "10m"})
    )
    async with gw.session.options(
        f"{gw.url}/v1/contacts", headers={"Origin": "https://app.example.com", **PREFLIGHT}
    ) as r:
        assert r.status == 204
        assert r.headers["Access-Control-Allow-Origin"] == "https://app.example.com"
        assert r.headers["Access-Control-Allow-Methods"] == "GET, HEAD, POST, PUT, PATCH, DELETE"
        assert "Authorization" in r.headers["Access-Control-Allow-Headers"]
        assert r.headers["Access-Control-Max-Age"] == "600"
        assert "Origin" in r.headers["Vary"]
        assert "Access-Control-Allow-Credentials" not in r.headers
    assert upstream.seen == []  # answered by the gateway, without a key


async def test_an_unlisted_origin_gets_no_cors_headers_at_all(
    gateway_factory: GatewayFactory, upstream: Upstream
) -> None:
    gw = await gateway_factory(
        cors_config(upstream, {"origins": ["https://app.example.com"]}, auth="none")
    )
    for origin in ("https://evil.test", "https://app.example.com.evil.test", "null"):
        async with gw.session.options(
            f"{gw.url}/v1/contacts", headers={"Origin": origin, **PREFLIGHT}
        ) as r:
            assert r.status == 403
            assert (await r.json())["error"]["code"] == "cors_not_allowed"
            assert not [h for h in r.headers if h.lower().startswith("access-control-")]
        async with gw.session.get(f"{gw.url}/v1/contacts", headers={"Origin": origin}) as r:
            assert r.status == 200
            assert not [h for h in r.headers if h.lower().startswith("access-control-")]
            assert r.headers["Vary"] == "Origin"


async def test_actual_requests_from_a_listed_origin_expose_our_headers(
    gateway_factory: GatewayFactory, upstream: Upstream
) -> None:
    gw = await gateway_factory(
        cors_config(upstream, {"origins": ["https://*.example.com"]}, auth="none")
    )
    for origin, allowed in [
        ("https://app.example.com", True),
        ("https://a.b.example.com", True),
        ("https://example.com", False),
        ("https://evil-example.com", False),
        ("http://app.example.com", False),
    ]:
        async with gw.session.get(f"{gw.url}/v1/contacts", headers={"Origin": origin}) as r:
            assert (r.headers.get("Access-Control-Allow-Origin") == origin) is allowed, origin
            if allowed:
                exposed = r.headers["Access-Control-Expose-Headers"]
                for name in (
                    "X-Request-Id",
                    "RateLimit",
                    "RateLimit-Policy",
                    "Retry-After",
                    "Idempotent-Replayed",
                    "Deprecation",
                    "Sunset",
                    "Link",
                ):
                    assert name in exposed


async def test_preflight_for_a_header_or_method_not_allowed_is_refused(
    gateway_factory: GatewayFactory, upstream: Upstream
) -> None:
    gw = await gateway_factory(
        cors_config(
            upstream,
            {
                "origins": ["https://app.example.com"],
                "methods": ["GET"],
                "headers": ["Authorization"],
            },
        )
    )
    origin = {"Origin": "https://app.example.com"}
    async with gw.session.options(
        f"{gw.url}/v1/contacts",
        headers={
            **origin,
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "x-secret",
        },
    ) as r:
        assert r.status == 403
    async with gw.session.options(
        f"{gw.url}/v1/contacts", headers={**origin, "Access-Control-Request-Method": "DELETE"}
    ) as r:
        assert r.status in (403, 405)


async def test_a_route_may_have_its_own_policy_and_the_default_allows_no_origin(
    gateway_factory: GatewayFactory, upstream: Upstream
) -> None:
    gw = await gateway_factory(cors_config(upstream, {}))
    async with gw.session.options(
        f"{gw.url}/v1/contacts", headers={"Origin": "https://app.example.com", **PREFLIGHT}
    ) as r:
        assert r.status == 403
    async with gw.session.options(
        f"{gw.url}/v1/public",
        headers={"Origin": "https://other.test", "Access-Control-Request-Method": "GET"},
    ) as r:
        assert r.status == 204
        assert r.headers["Access-Control-Allow-Origin"] == "https://other.test"


def test_cors_config_problems() -> None:
    text = b"""
cors: {origins: ['*'], credentials: true}
upstreams: {a: {targets: ['http://127.0.0.1:1']}}
routes: [{path: /x, upstream: a, cors: {origins: ['https://app.example.com/path']}}]
"""
    with pytest.raises(ConfigError) as info:
        parse_config(text, source="t", env={})
    assert info.value.problems == [
        "cors.origins: '*' cannot be used with credentials: true (browsers refuse)",
        "routes[0].cors.origins: not an origin: 'https://app.example.com/path' (scheme://host[:port],"
        " lower case, no path; a leading *. for subdomains)",
    ]


async def test_header_rules_apply_after_our_sanitising(
    gateway_factory: GatewayFactory, upstream_factory: UpstreamFactory
) -> None:
    from aiohttp import web

    async def backend(request: web.BaseRequest) -> web.Response:
        return web.Response(text="ok", headers={"X-Powered-By": "php", "X-Backend": "1"})

    up = await upstream_factory(backend)
    rules = {
        "request": {
            "set": {"X-Backend-Token": "s3cret-static"},
            "remove": ["X-Debug"],
            "add": {"X-Via": "gw"},
        },
        "response": {"remove": ["X-Powered-By"], "set": {"Cache-Control": "no-store"}},
    }
    gw = await gateway_factory(
        make_config(
            {"app": {"targets": [up.url]}}, [{"path": "/x", "upstream": "app", "headers": rules}]
        )
    )
    async with gw.session.get(
        f"{gw.url}/x", headers={"X-Backend-Token": "client-forged", "X-Debug": "1", "X_Debug": "2"}
    ) as r:
        assert r.status == 200
        assert "X-Powered-By" not in r.headers
        assert r.headers["X-Backend"] == "1"
        assert r.headers["Cache-Control"] == "no-store"
    assert up.header_values(0, "X-Backend-Token") == ["s3cret-static"]
    assert up.header_values(0, "X-Via") == ["gw"]
    assert [k for k, _ in up.seen[0].headers if k.lower().replace("_", "-") == "x-debug"] == []


def test_header_rules_cannot_touch_what_the_gateway_owns() -> None:
    text = b"""
upstreams: {a: {targets: ['http://127.0.0.1:1']}}
routes:
  - {path: /x, upstream: a, headers: {request: {set: {X-Org-Id: org_evil}}}}
  - {path: /y, upstream: a, headers: {response: {remove: [X_Request_Id]}}}
"""
    with pytest.raises(ConfigError) as info:
        parse_config(text, source="t", env={})
    assert info.value.problems == [
        "routes[0].headers.request: X-Org-Id is set by the gateway itself and cannot be changed",
        "routes[1].headers.response: X_Request_Id is set by the gateway itself"
        " and cannot be changed",
    ]


async def test_a_pinned_header_replaces_every_client_spelling_and_backend_cors_is_dropped(
    gateway_factory: GatewayFactory, upstream_factory: UpstreamFactory
) -> None:
    from aiohttp import web

    async def permissive(request: web.BaseRequest) -> web.Response:
        return web.Response(
            text="ok",
            headers={
                "Access-Control-Allow-Origin": request.headers.get("Origin", "*"),
                "Access-Control-Allow-Credentials": "true",
            },
        )

    up = await upstream_factory(permissive)
    gw = await gateway_factory(
        make_config(
            {"app": {"targets": [up.url]}},
            [
                {
                    "path": "/x",
                    "upstream": "app",
                    "headers": {"request": {"set": {"X-Tenant": "acme"}}},
                }
            ],
        )
    )
    async with gw.session.get(
        f"{gw.url}/x",
        headers={"X_Tenant": "evil", "x-tenant": "evil2", "Origin": "https://evil.test"},
    ) as r:
        assert not [h for h in r.headers if h.lower().startswith("access-control-")]
    tenant = [v for k, v in up.seen[0].headers if k.lower().replace("_", "-") == "x-tenant"]
    assert tenant == ["acme"]


def test_sunset_with_an_offset_is_converted_to_utc() -> None:
    text = b"""
upstreams: {a: {targets: ['http://127.0.0.1:1']}}
routes:
  - path: /x
    upstream: a
    deprecation: {deprecated_at: 2026-01-01, sunset_at: '2026-06-30T02:00:00+02:00'}
"""
    route = parse_config(text, source="t", env={}).config.routes[0]
    assert route.deprecation is not None
    assert route.deprecation.sunset_at == datetime(2026, 6, 30, 0, 0, tzinfo=UTC)
