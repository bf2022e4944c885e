"""Route policies: deprecation and sunset (and, as they arrive, CORS and header rules)."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

import pytest

from gateway.config import ConfigError, parse_config
from tests.conftest import LogLines, RunningGateway, Upstream, make_config

GatewayFactory = Callable[..., Awaitable[RunningGateway]]


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


DEPRECATION = {
    "deprecated_at": "2026-01-01",
    "sunset_at": "2026-07-01T00:00:00Z",
    "link": "https://example.com/migrate",
    "successor": "https://api.example.com/v2/contacts",
}


async def test_deprecated_route_carries_the_standard_headers_then_answers_410(
    gateway_factory: GatewayFactory, upstream: Upstream, logs: LogLines
) -> None:
    clock = Clock(datetime(2026, 3, 1, tzinfo=UTC).timestamp())
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
    async with gw.session.get(f"{gw.admin_url}/metrics") as r:
        text = await r.text()
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
