"""Sick backends: ejection, active checks, the concurrency cap and the retry budget."""

from __future__ import annotations

import asyncio

from aiohttp import web

from gateway.dataplane.health import RetryBudget, TargetSelector
from tests.conftest import (
    GatewayFactory,
    Upstream,
    UpstreamFactory,
    closed_port_url,
    make_config,
)
from tests.helpers import eventually, slow_upstream


async def test_one_dead_target_of_two_costs_no_failed_request(
    gateway_factory: GatewayFactory, upstream: Upstream
) -> None:
    gw = await gateway_factory(
        make_config(
            {"app": {"targets": [closed_port_url(), upstream.url]}},
            [{"path": "/x", "upstream": "app"}],
        )
    )
    statuses = []
    for _ in range(20):
        async with gw.session.get(f"{gw.url}/x") as r:
            statuses.append(r.status)
    for _ in range(10):  # once ejected, even writes (never retried) only meet the live target
        async with gw.session.post(f"{gw.url}/x", data=b"{}") as r:
            statuses.append(r.status)
    assert statuses == [200] * 30
    text = await gw.metrics()
    assert 'gateway_upstream_ejections_total{upstream="app"} 1.0' in text
    assert 'gateway_upstream_healthy_targets{upstream="app"} 1.0' in text
    assert 'gateway_upstream_errors_total{kind="connect",upstream="app"} 3.0' in text


async def test_the_last_target_is_never_ejected(gateway_factory: GatewayFactory) -> None:
    gw = await gateway_factory(
        make_config({"app": {"targets": [closed_port_url()]}}, [{"path": "/x", "upstream": "app"}])
    )
    for _ in range(6):
        async with gw.session.get(f"{gw.url}/x") as r:
            assert r.status == 502
    text = await gw.metrics()
    assert 'gateway_upstream_errors_total{kind="connect",upstream="app"} 6.0' in text  # still tried
    assert 'gateway_upstream_ejections_total{upstream="app"} 0.0' in text


async def test_a_full_upstream_answers_503_at_once(
    gateway_factory: GatewayFactory, upstream_factory: UpstreamFactory
) -> None:
    up = await upstream_factory(slow_upstream(0.5))
    gw = await gateway_factory(
        make_config(
            {"app": {"targets": [up.url], "max_concurrency": 1}},
            [{"path": "/x", "upstream": "app"}],
        )
    )

    async def call() -> int:
        async with gw.session.get(f"{gw.url}/x") as r:
            return r.status

    first = asyncio.create_task(call())
    await eventually(lambda: up.seen)  # the one slot is taken
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert await call() == 503
    assert loop.time() - started < 0.3  # not queued behind the slow one
    assert await first == 200
    assert await call() == 200


async def test_active_checks_eject_a_target_without_client_traffic(
    gateway_factory: GatewayFactory, upstream_factory: UpstreamFactory
) -> None:
    healthy = {"value": False}

    async def sick(request: web.BaseRequest) -> web.Response:
        if request.path == "/health":
            return web.Response(status=200 if healthy["value"] else 500)
        return web.Response(text="sick")

    a = await upstream_factory(sick)
    b = await upstream_factory()
    gw = await gateway_factory(
        make_config(
            {
                "app": {
                    "targets": [a.url, b.url],
                    "health": {"path": "/health", "interval": "100ms", "cooldown": "300ms"},
                }
            },
            [{"path": "/x", "upstream": "app"}],
        )
    )

    async def one_healthy() -> bool:
        return 'gateway_upstream_healthy_targets{upstream="app"} 1.0' in await gw.metrics()

    await eventually(one_healthy)  # the checks run on their own interval
    for _ in range(6):
        async with gw.session.get(f"{gw.url}/x") as r:
            assert await r.text() != "sick"
    healthy["value"] = True

    async def back_in_rotation() -> bool:
        bodies = []
        for _ in range(4):
            async with gw.session.get(f"{gw.url}/x") as r:
                bodies.append(await r.text())
        return "sick" in bodies

    # Past the cool-down, and checks pass again: both on the event loop's own clock.
    await eventually(back_in_rotation)


def test_cooldown_grows_on_repeat_and_resets_after_recovery() -> None:
    now = [100.0]
    selector = TargetSelector(2, failures=2, cooldown=5, max_cooldown=12, clock=lambda: now[0])
    assert [selector.failed(0), selector.failed(0)] == [False, True]
    assert selector.health[0].ejected_until == 105
    assert [selector.pick() for _ in range(3)] == [1, 1, 1]
    now[0] = 106
    assert [selector.failed(0), selector.failed(0)] == [False, True]
    assert selector.health[0].ejected_until == 116  # 10 s: doubled
    now[0] = 117
    selector.failed(0)
    selector.failed(0)
    assert selector.health[0].ejected_until == 129  # 20 s, capped at 12
    now[0] = 130
    selector.succeeded(0)
    assert selector.health[0].ejections == 0
    assert selector.pick() in (0, 1)


def test_retry_budget_caps_retries_to_a_share_of_requests() -> None:
    budget = RetryBudget(ratio=0.2, reserve=2)
    assert [budget.withdraw(), budget.withdraw(), budget.withdraw()] == [True, True, False]
    for _ in range(5):
        budget.deposit()
    assert [budget.withdraw(), budget.withdraw()] == [True, False]


def test_a_target_ejected_a_thousand_times_does_not_overflow() -> None:
    now = [0.0]
    selector = TargetSelector(2, failures=1, cooldown=5, max_cooldown=300, clock=lambda: now[0])
    gaps = []
    for _ in range(1100):
        assert selector.failed(0)
        gaps.append(selector.health[0].ejected_until - now[0])
        now[0] = selector.health[0].ejected_until
    assert gaps[:4] == [5, 10, 20, 40]
    assert max(gaps) == 300  # capped, and no OverflowError after 1024 doublings
