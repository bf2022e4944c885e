"""Sliding-window limits through real HTTP: on every store, across instances and restarts."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.config import ConfigError, parse_config
from tests.conftest import (
    ADMIN_TOKEN,
    FakeClock,
    GatewayFactory,
    GatewayProc,
    RedisServer,
    Spawn,
    Upstream,
    unique_prefix,
)
from tests.helpers import Admin
from tests.plugins.test_rate_limit import Client, limited_config, remaining

# On a boundary of the 60 ms sub-buckets of a 1-minute window, so waits come out whole.
START = 1767225600.0


def sliding(requests: int, per: str, **extra: Any) -> dict[str, Any]:
    return {"requests": requests, "per": per, "algorithm": "sliding_window", **extra}


async def test_a_sliding_window_admits_requests_in_any_per_and_counts_no_refusal(
    gateway_factory: GatewayFactory, upstream: Upstream, store_config: dict[str, Any]
) -> None:
    """5 per minute: 5 pass whenever in the minute they come; then every request is refused,
    uncounted, until the first of the 5 is a minute old, and exactly one passes per one that
    leaves the window."""
    clock = FakeClock(START)
    gw = await gateway_factory(
        limited_config(upstream, store_config, {"rate_limit": sliding(5, "1m")}), clock=clock
    )
    client = Client(gw)
    secret = (await client.key())["secret"]
    for i in range(5):
        clock.now = START + 3 * i
        status, headers, _ = await client.get(secret)
        assert status == 200
        assert headers["RateLimit-Policy"] == '"key";q=5;w=60'
        assert headers["RateLimit"] == f'"key";r={4 - i};t=60'
    clock.now = START + 20
    for _ in range(3):
        status, headers, body = await client.get(secret)
        assert status == 429
        assert body["error"]["code"] == "rate_limited"
        assert "'key' exceeded: 5 requests per 60 s" in body["error"]["message"]
        assert headers["Retry-After"] == "40"  # the first request leaves the window at 60 s
        assert headers["RateLimit-Policy"] == '"key";q=5;w=60'
        assert headers["RateLimit"] == '"key";r=0;t=52'  # the fifth leaves at 72 s
        assert (headers["X-RateLimit-Limit"], headers["X-RateLimit-Remaining"]) == ("5", "0")
    clock.now = START + 59.9
    status, headers, _ = await client.get(secret)
    assert (status, headers["Retry-After"]) == (429, "1")
    clock.now = START + 60
    assert (await client.get(secret))[0] == 200
    status, headers, _ = await client.get(secret)
    assert (status, headers["Retry-After"]) == (429, "3")  # the second leaves at 63 s
    clock.now = START + 63
    assert [(await client.get(secret))[0] for _ in range(2)] == [200, 429]
    assert len(upstream.seen) == 7


async def test_plan_org_and_route_windows_are_decided_together(
    gateway_factory: GatewayFactory, upstream: Upstream, store_config: dict[str, Any]
) -> None:
    """A request refused by a route's window is counted by no other limit."""
    gw = await gateway_factory(
        limited_config(
            upstream,
            store_config,
            {"rate_limit": sliding(3, "1m"), "org_rate_limit": sliding(100, "1m")},
            routes=[
                {
                    "path": "/v1/export",
                    "upstream": "app",
                    "auth": "key",
                    "rate_limits": [{"name": "export", **sliding(1, "1h")}],
                },
                {"path": "/v1/{rest:.*}", "upstream": "app", "auth": "key"},
            ],
        ),
        clock=FakeClock(START),
    )
    client = Client(gw)
    secret = (await client.key())["secret"]
    status, headers, _ = await client.get(secret, "/v1/export")
    assert status == 200
    assert (
        headers["RateLimit-Policy"] == '"key";q=3;w=60, "org";q=100;w=60, "route:export";q=1;w=3600'
    )
    for _ in range(3):
        status, headers, body = await client.get(secret, "/v1/export")
        assert status == 429
        assert "'route:export'" in body["error"]["message"]
        assert headers["Retry-After"] == "3600"
        assert remaining(headers) == {"key": 2, "org": 99, "route:export": 0}
    assert [(await client.get(secret))[0] for _ in range(3)] == [200, 200, 429]


async def test_a_keys_own_window_through_the_admin_api(
    gateway_factory: GatewayFactory, upstream: Upstream, store_config: dict[str, Any]
) -> None:
    """A per-key rateLimit takes an algorithm; it is shown when it is a window, and bad ones
    are refused naming the field."""
    gw = await gateway_factory(
        limited_config(upstream, store_config, {"rate_limit": {"requests": 100, "per": "1m"}}),
        clock=FakeClock(START),
    )
    client = Client(gw)
    key = await client.key(rateLimit=sliding(2, "1m"))
    assert key["rateLimit"] == {
        "requests": 2,
        "per": 60.0,
        "burst": 0,
        "algorithm": "sliding_window",
    }
    statuses = []
    for _ in range(3):
        status, headers, _ = await client.get(key["secret"])
        statuses.append(status)
        assert headers["RateLimit-Policy"] == '"key";q=2;w=60'
    assert statuses == [200, 200, 429]
    back = {"requests": 1, "per": "1m", "algorithm": "token_bucket"}
    updated = await client.admin("PATCH", f"/admin/keys/{key['id']}", {"rateLimit": back})
    assert updated["rateLimit"] == {"requests": 1, "per": 60.0, "burst": 0}
    assert (await client.get(key["secret"]))[0] == 200  # a bucket of its own, full
    admin = Admin(gw)
    for limit, message in (
        (sliding(2, "1m", burst=1), "rateLimit.burst: a sliding window allows `requests` in"),
        (
            {"requests": 2, "per": "1m", "algorithm": "fixed_window"},
            "rateLimit.algorithm: must be one of 'token_bucket' or 'sliding_window'",
        ),
    ):
        status, body = await admin.call("PATCH", f"/admin/keys/{key['id']}", {"rateLimit": limit})
        assert status == 400
        assert body["error"]["message"].startswith(message), body


async def test_identity_and_usage_show_where_a_window_stands(
    gateway_factory: GatewayFactory, upstream: Upstream, store_config: dict[str, Any]
) -> None:
    """/v1/me reports the window after counting its own request; /admin/usage reads it
    without counting."""
    clock = FakeClock(START)
    gw = await gateway_factory(
        limited_config(upstream, store_config, {"rate_limit": sliding(10, "1m")}), clock=clock
    )
    client = Client(gw)
    key = await client.key()
    await client.get(key["secret"])
    clock.now = START + 15
    status, _, body = await client.get(key["secret"], "/v1/me")
    assert status == 200
    assert body["data"]["rateLimit"] == {
        "policies": [{"name": "key", "limit": 10, "window": 60, "remaining": 8, "reset": 60}]
    }
    clock.now = START + 30
    admin = Admin(gw)
    for _ in range(2):  # a look counts nothing: the second sees what the first saw
        status, usage = await admin.call("GET", f"/admin/usage?key={key['id']}")
        assert status == 200, usage
        limits = usage["meta"]["limits"]
        assert limits["rateLimit"]["algorithm"] == "sliding_window"
        assert limits["state"] == [
            {
                "policy": "key",
                "limit": 10,
                "windowSeconds": 60.0,
                "remaining": 8,
                "resetSeconds": 45.0,
            }
        ]


async def test_a_restarted_local_gateway_keeps_the_window(
    gateway_factory: GatewayFactory, upstream: Upstream, tmp_path: Path
) -> None:
    """A restart must not hand out a fresh window: what was counted still counts until it
    leaves the window."""
    store = {"backend": "local", "path": str(tmp_path / "kept.db")}
    config = limited_config(upstream, store, {"rate_limit": sliding(3, "1h")})
    clock = FakeClock(START)
    gw = await gateway_factory(config, clock=clock)
    client = Client(gw)
    secret = (await client.key())["secret"]
    assert [(await client.get(secret))[0] for _ in range(3)] == [200] * 3
    await gw.session.close()
    await gw.process.stop()
    clock.now = START + 600
    again = Client(await gateway_factory(config, clock=clock))
    status, headers, _ = await again.get(secret)
    assert status == 429
    assert (headers["Retry-After"], headers["RateLimit"]) == ("3000", '"key";r=0;t=3000')
    clock.now = START + 3600
    assert [(await again.get(secret))[0] for _ in range(4)] == [200] * 3 + [429]


async def test_a_window_is_kept_locally_while_redis_is_away(
    gateway_factory: GatewayFactory, upstream: Upstream, private_redis: RedisServer
) -> None:
    """on_store_error: local enforces a sliding window on the instance's own counters."""
    store = {"backend": "redis", "url": private_redis.url, "key_prefix": unique_prefix()}
    gw = await gateway_factory(
        limited_config(
            upstream,
            store,
            {"rate_limit": sliding(2, "1m")},
            rate_limits={"on_store_error": "local"},
        )
    )
    client = Client(gw)
    secret = (await client.key())["secret"]
    assert (await client.get(secret))[0] == 200  # the key is warm in the cache
    private_redis.stop()
    statuses = []
    for _ in range(3):
        status, headers, _ = await client.get(secret)
        statuses.append(status)
        assert headers["RateLimit-Policy"] == '"key";q=2;w=60'
    assert statuses == [200, 200, 429]


@pytest.mark.slow
async def test_two_instances_share_one_window_exactly(
    spawn_gateway: Spawn, upstream: Upstream, shared_stores: tuple[dict[str, Any], ...]
) -> None:
    """40 concurrent requests over two gateway processes on 10 per minute: exactly 10 pass,
    and each of them saw its own place in the one shared window."""
    config = {
        "admin": {"token": ADMIN_TOKEN},
        "upstreams": {"app": {"targets": [upstream.url]}},
        "routes": [{"path": "/v1/{rest:.*}", "upstream": "app"}],
        "plans": {"p": {"rate_limit": sliding(10, "1m")}},
    }
    a, b = (spawn_gateway({**config, "store": store}) for store in shared_stores)
    async with aiohttp.ClientSession() as session:
        admin = Admin(a, session)
        await admin.data("POST", "/admin/orgs", {"slug": "acme", "name": "A", "plan": "p"})
        secret = (await admin.data("POST", "/admin/orgs/acme/keys", {"name": "k"}))["secret"]

        async def call(gp: GatewayProc) -> tuple[int, dict[str, str]]:
            async with session.get(
                f"{gp.url}/v1/x", headers={"Authorization": f"Bearer {secret}"}
            ) as r:
                return r.status, dict(r.headers)

        answers = await asyncio.gather(*(call(a if i % 2 else b) for i in range(40)))
    assert sorted(status for status, _ in answers) == [200] * 10 + [429] * 30
    left = sorted(int(h["X-RateLimit-Remaining"]) for s, h in answers if s == 200)
    assert left == list(range(10))
    for status, headers in answers:
        assert headers["RateLimit-Policy"] == '"key";q=10;w=60'
        if status == 429:
            # The oldest leaves within the minute (and at most a 60 ms sub-bucket later).
            assert 1 <= int(headers["Retry-After"]) <= 61


def test_window_config_errors_name_the_field() -> None:
    text = b"""
plans:
  free: {rate_limit: {requests: 3, per: 1m, burst: 2, algorithm: sliding_window}}
  pro: {org_rate_limit: {requests: 3, per: 1m, algorithm: sliding}}
upstreams: {a: {targets: ['http://127.0.0.1:1']}}
routes:
  - path: /x
    upstream: a
    rate_limits: [{name: e, requests: 1, per: 1h, burst: 1, algorithm: sliding_window}]
"""
    with pytest.raises(ConfigError) as info:
        parse_config(text, source="t", env={})
    no_burst = (
        "a sliding window allows `requests` in any `per` and no burst (got {});"
        " raise requests, or use algorithm: token_bucket"
    )
    assert sorted(info.value.problems) == [
        "plans.free.rate_limit.burst: " + no_burst.format(2),
        "plans.pro.org_rate_limit.algorithm: must be one of 'token_bucket' or 'sliding_window'"
        " (got 'sliding')",
        "routes[0].rate_limits[0].burst: " + no_burst.format(1),
    ]
