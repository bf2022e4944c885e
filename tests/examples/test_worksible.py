"""Worksible (seed 003), against config/examples/worksible.yaml.

The overview's promises: wsk_live_ keys; no API keys on Trial and Core; per-plan windows of
requests a minute; scope-gated endpoints and IP allowlists; keys that expire on their own;
Idempotency-Key on mutating endpoints; Sunset and Deprecation on endpoints scheduled for
removal; every request logged with method, path, status, latency, IP and user agent.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from typing import Any

from tests.conftest import FakeClock, GatewayFactory, RunningGateway, Upstream
from tests.examples.seeds import start_example
from tests.helpers import Admin, eventually

NOW = datetime.fromisoformat("2026-12-04T12:00:00+00:00").timestamp()


async def call(gw: RunningGateway, method: str, path: str, key: str, **headers: str) -> Any:
    headers["Authorization"] = f"Bearer {key}"
    headers.setdefault("User-Agent", "worksible-node/1.4")
    async with gw.session.request(method, f"{gw.url}{path}", headers=headers, json={}) as r:
        return r.status, r.headers, await r.json()


async def start(
    gateway_factory: GatewayFactory, store: dict[str, Any], upstream: Upstream, clock: FakeClock
) -> tuple[RunningGateway, Admin]:
    gw = await start_example(
        gateway_factory, "worksible", store=store, backend=upstream.url, clock=clock
    )
    return gw, Admin(gw)


async def test_quick_start_and_plans_without_api_keys(
    gateway_factory: GatewayFactory, upstream: Upstream, store_config: dict[str, Any]
) -> None:
    gw, admin = await start(gateway_factory, store_config, upstream, FakeClock(NOW))
    await admin.org("harbour-studio", plan="growth")
    key = await admin.key("harbour-studio", scopes=["projects:read"])
    assert re.fullmatch(r"wsk_live_[A-Za-z0-9]{38}", key["secret"])
    status, _, body = await call(gw, "GET", "/v1/companies/me", key["secret"])
    assert status == 200
    assert body["data"]["orgSlug"] == "harbour-studio"
    assert (await call(gw, "GET", "/v1/projects", key["secret"]))[0] == 200
    status, _, body = await call(gw, "GET", "/v1/invoices", key["secret"])
    assert (status, body["error"]["code"]) == (403, "insufficient_scope")
    # "Trial and Core plans don't ship API keys."
    await admin.org("trying-out", plan="trial")
    status, body = await admin.call("POST", "/admin/orgs/trying-out/keys", {"name": "k"})
    assert (status, body["error"]["code"]) == (403, "api_access_disabled")


async def test_keys_expire_on_their_own(
    gateway_factory: GatewayFactory, upstream: Upstream, store_config: dict[str, Any]
) -> None:
    """A key made without an expiry gets its plan's lifetime (90 days on Growth) and stops
    working when it ends."""
    clock = FakeClock(NOW)
    gw, admin = await start(gateway_factory, store_config, upstream, clock)
    await admin.org("harbour-studio", plan="growth")
    key = await admin.key("harbour-studio", scopes=["projects:read"])
    expires = datetime.fromisoformat(key["expiresAt"])
    assert expires == datetime.fromtimestamp(NOW, expires.tzinfo) + timedelta(days=90)
    assert (await call(gw, "GET", "/v1/projects", key["secret"]))[0] == 200
    clock.now = NOW + 90 * 86400 + 1
    assert (await call(gw, "GET", "/v1/projects", key["secret"]))[0] == 401


async def test_a_per_minute_window_is_a_window(
    gateway_factory: GatewayFactory, upstream: Upstream, store_config: dict[str, Any]
) -> None:
    """Growth: 120 requests a minute means at most 120 in any 60 seconds, shown as such."""
    clock = FakeClock(NOW)
    gw, admin = await start(gateway_factory, store_config, upstream, clock)
    await admin.org("harbour-studio", plan="growth")
    key = await admin.key("harbour-studio", scopes=["projects:read"])
    for i in range(120):
        clock.now = NOW + i * 0.25  # 120 requests in the first 30 seconds
        status, headers, _ = await call(gw, "GET", "/v1/projects", key["secret"])
        assert status == 200, i
    assert headers["RateLimit-Policy"] == '"key";q=120;w=60'
    clock.now = NOW + 59.0
    status, headers, body = await call(gw, "GET", "/v1/projects", key["secret"])
    assert (status, body["error"]["code"]) == (429, "rate_limited")
    assert int(headers["Retry-After"]) >= 1
    clock.now = NOW + 60.5  # the first request has left the window
    assert (await call(gw, "GET", "/v1/projects", key["secret"]))[0] == 200


async def test_sunset_and_deprecation_headers_then_410(
    gateway_factory: GatewayFactory, upstream: Upstream, store_config: dict[str, Any]
) -> None:
    clock = FakeClock(NOW)
    gw, admin = await start(gateway_factory, store_config, upstream, clock)
    await admin.org("harbour-studio", plan="scale")
    key = await admin.key("harbour-studio", scopes=["timesheets:read"])
    status, headers, _ = await call(gw, "GET", "/v1/timesheets/export", key["secret"])
    assert status == 200
    assert headers["Deprecation"] == "@1796083200"
    assert headers["Sunset"] == "Tue, 01 Jun 2027 00:00:00 GMT"
    assert 'rel="deprecation"' in headers["Link"]
    clock.now = datetime.fromisoformat("2027-06-01T00:00:00+00:00").timestamp()
    status, _, body = await call(gw, "GET", "/v1/timesheets/export", key["secret"])
    assert (status, body["error"]["code"]) == (410, "sunset")


async def test_every_request_is_logged_and_queryable(
    gateway_factory: GatewayFactory, upstream: Upstream, store_config: dict[str, Any]
) -> None:
    gw, admin = await start(gateway_factory, store_config, upstream, FakeClock(NOW))
    org = await admin.org("harbour-studio", plan="growth")
    key = await admin.key("harbour-studio", scopes=["projects:read"])
    await call(gw, "GET", "/v1/projects", key["secret"])

    async def logged() -> list[dict[str, Any]]:
        return await admin.data("GET", f"/admin/requests?org={org['id']}")  # type: ignore[no-any-return]

    (entry,) = await eventually(logged)
    assert entry["method"] == "GET"
    assert entry["path"] == "/v1/projects"
    assert entry["status"] == 200
    assert entry["durationMs"] >= 0
    assert entry["clientIp"] == "127.0.0.1"
    assert entry["userAgent"] == "worksible-node/1.4"
    assert entry["keyId"] == key["id"]
