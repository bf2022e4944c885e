"""Access logs, metrics, health and the admin listener; the plugin chain and internal errors."""

from __future__ import annotations

import io
import stat
from pathlib import Path
from typing import ClassVar

from aiohttp import web

from gateway.config import GatewayConfig, GatewaySettings, RouteConfig, parse_config
from gateway.config.registry import registered
from gateway.control.listener import redacted_config
from gateway.dataplane.chain import Handler, RequestContext
from gateway.dataplane.plugins import PluginServices
from tests.conftest import (
    ADMIN_TOKEN,
    GatewayFactory,
    LogLines,
    RunningGateway,
    Upstream,
    make_config,
)
from tests.helpers import ADMIN, eventually


async def test_one_access_log_line_per_request_with_its_fields(
    gateway: RunningGateway, upstream: Upstream, logs: LogLines
) -> None:
    async with gateway.session.post(
        f"{gateway.url}/v1/items?token=secret-in-query",
        data=b"12345",
        headers={
            "Authorization": "Bearer fw_live_supersecret",
            "User-Agent": "t/1",
            "X-Request-Id": "rid-1",
        },
    ) as r:
        assert r.status == 200
    [line] = logs.events("request")
    assert line["request_id"] == "rid-1"
    assert line["method"] == "POST"
    assert line["path"] == "/v1/items"
    assert line["route"] == "/v1/items"
    assert line["status"] == 200
    assert line["bytes_in"] == 5
    assert line["bytes_out"] > 0
    assert line["client_ip"] == "127.0.0.1"
    assert line["user_agent"] == "t/1"
    assert line["upstream"] == upstream.url
    assert line["duration_ms"] >= line["upstream_ms"] > 0
    assert line["level"] == "info"
    assert line["time"].endswith("Z")
    raw = logs.raw()
    assert b"supersecret" not in raw
    assert b"secret-in-query" not in raw


async def test_error_responses_are_logged_with_their_request_id(
    gateway: RunningGateway, logs: LogLines
) -> None:
    async with gateway.session.get(f"{gateway.url}/missing") as r:
        request_id = r.headers["X-Request-Id"]
    [line] = logs.events("request")
    assert (line["status"], line["route"], line["request_id"]) == (404, None, request_id)


async def _scrape(gw: RunningGateway) -> str:
    """Metrics once no request is in flight: a response's last byte can reach the client just
    before its handler records it."""

    async def settled() -> str:
        async with gw.session.get(f"{gw.admin_url}/metrics") as r:
            assert r.status == 200
            text = await r.text()
        return text if "gateway_inflight_requests 0.0" in text else ""

    return await eventually(settled, 2.0, interval=0.01)


async def test_metrics_have_low_cardinality_labels(gateway: RunningGateway) -> None:
    for path in ["/v1/items", "/v1/a/1", "/v1/a/2", "/nope/1", "/nope/2"]:
        async with gateway.session.get(f"{gateway.url}{path}") as r:
            await r.read()
    async with gateway.session.request("PROPFIND", f"{gateway.url}/v1/x") as r:
        await r.read()
    text = await _scrape(gateway)
    assert 'gateway_requests_total{method="GET",route="/v1/items",status_class="2xx"} 1.0' in text
    assert 'gateway_requests_total{method="GET",route="v1",status_class="2xx"} 2.0' in text
    assert 'gateway_requests_total{method="GET",route="unmatched",status_class="4xx"} 2.0' in text
    assert 'gateway_requests_total{method="other",route="v1",status_class="2xx"} 1.0' in text
    assert 'gateway_request_duration_seconds_count{method="GET",route="v1"} 2.0' in text
    assert 'gateway_upstream_duration_seconds_count{upstream="app"} 4.0' in text
    assert "gateway_inflight_requests 0.0" in text
    assert f'gateway_config_info{{hash="{gateway.process.loaded.digest}"}} 1.0' in text
    assert "/nope/1" not in text
    assert "PROPFIND" not in text
    assert "_created" not in text


async def test_upstream_errors_are_counted_by_kind(gateway_factory: GatewayFactory) -> None:
    from tests.conftest import closed_port_url

    gw = await gateway_factory(
        make_config({"app": {"targets": [closed_port_url()]}}, [{"path": "/x", "upstream": "app"}])
    )
    async with gw.session.get(f"{gw.url}/x") as r:
        assert r.status == 502
    assert 'gateway_upstream_errors_total{kind="connect",upstream="app"} 1.0' in await _scrape(gw)


async def test_health_and_readiness(gateway: RunningGateway) -> None:
    async with gateway.session.get(f"{gateway.admin_url}/healthz") as r:
        assert (r.status, await r.json()) == (200, {"data": {"status": "ok"}})
    async with gateway.session.get(f"{gateway.admin_url}/readyz") as r:
        body = await r.json()
        assert r.status == 200
        assert body["data"]["status"] == "ready"
    gateway.process.draining = True
    async with gateway.session.get(f"{gateway.admin_url}/readyz") as r:
        assert r.status == 503
        assert (await r.json())["data"]["status"] == "draining"


async def test_admin_api_needs_the_token(gateway: RunningGateway) -> None:
    url = f"{gateway.admin_url}/admin/config"
    for headers in (
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": f"Basic {ADMIN_TOKEN}"},
    ):
        async with gateway.session.get(url, headers=headers) as r:
            assert r.status == 401
            assert r.headers["WWW-Authenticate"] == 'Bearer realm="admin"'
            assert (await r.json())["error"]["code"] == "unauthorized"
    async with gateway.session.get(url, headers=ADMIN) as r:
        body = await r.json()
    assert r.status == 200
    assert body["data"]["hash"] == gateway.process.loaded.digest
    assert body["data"]["config"]["admin"]["token"] == "***"
    assert ADMIN_TOKEN not in str(body)
    async with gateway.session.get(f"{gateway.admin_url}/admin/nothing", headers=ADMIN) as r:
        assert r.status == 404
        assert (await r.json())["error"]["code"] == "route_not_found"


async def test_admin_token_is_made_and_saved_when_not_configured(
    gateway_factory: GatewayFactory, upstream: Upstream, tmp_path: Path
) -> None:
    token_file = tmp_path / "secret" / "admin-token"
    gw = await gateway_factory(
        make_config(
            {"app": {"targets": [upstream.url]}},
            [],
            admin={"token": None, "token_file": str(token_file)},
        )
    )
    token = token_file.read_text().strip()
    assert len(token) >= 40
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    async with gw.session.get(
        f"{gw.admin_url}/admin/orgs", headers={"Authorization": f"Bearer {token}"}
    ) as r:
        assert r.status == 200
    async with gw.session.get(
        f"{gw.admin_url}/admin/orgs", headers={"Authorization": "Bearer x"}
    ) as r:
        assert r.status == 401


class _Tag:
    """A test plugin on every route: records its order, adds an upstream and a response header."""

    name: ClassVar[str]
    priority: ClassVar[int]
    label: ClassVar[str]
    upstream_headers: ClassVar[tuple[str, ...]] = ("X-Tag-low", "X-Tag-high")
    route_fields: ClassVar[type[RouteConfig] | None] = None
    config_fields: ClassVar[type[GatewaySettings] | None] = None
    calls: ClassVar[list[str]] = []

    @classmethod
    def build(cls, route: RouteConfig, config: GatewayConfig, services: PluginServices) -> _Tag:
        return cls()

    async def startup(self) -> None:
        pass

    async def shutdown(self) -> None:
        pass

    async def __call__(self, ctx: RequestContext, call_next: Handler) -> web.StreamResponse:
        _Tag.calls.append(self.label)
        ctx.upstream_headers[f"X-Tag-{self.label}"] = "1"
        ctx.response_headers.append(("X-Tagged", self.label))
        if ctx.request.headers.get("X-Refuse") == self.label:
            from gateway.errors import BadRequest

            raise BadRequest("refused by plugin")
        if ctx.request.headers.get("X-Crash") == self.label:
            raise RuntimeError("plugin bug with secret detail")
        return await call_next(ctx)


class _TagLow(_Tag):
    name = "tag_low"
    priority = 10
    label = "low"


class _TagHigh(_Tag):
    name = "tag_high"
    priority = 100
    label = "high"


async def test_plugins_run_by_priority_and_shape_both_directions(
    gateway_factory: GatewayFactory, upstream: Upstream, logs: LogLines
) -> None:
    _Tag.calls.clear()
    with registered(_TagLow, _TagHigh):
        gw = await gateway_factory(
            make_config({"app": {"targets": [upstream.url]}}, [{"path": "/x", "upstream": "app"}])
        )
    async with gw.session.get(
        f"{gw.url}/x", headers={"X-Tag-low": "spoofed", "X_Tag_High": "spoofed"}
    ) as r:
        assert r.status == 200
        assert r.headers.getall("X-Tagged") == ["high", "low"]
    assert _Tag.calls == ["high", "low"]
    # What a plugin injects replaces every client-sent variant of that header.
    assert upstream.header_values(0, "X-Tag-low") == ["1"]
    assert [
        v for k, v in upstream.seen[0].headers if k.lower().replace("_", "-") == "x-tag-high"
    ] == ["1"]

    # A plugin's refusal is the envelope and still carries the headers plugins added.
    async with gw.session.get(f"{gw.url}/x", headers={"X-Refuse": "low"}) as r:
        assert r.status == 400
        assert r.headers.getall("X-Tagged") == ["high", "low"]
        assert (await r.json())["error"]["message"] == "refused by plugin"

    # An unexpected exception is a 500 envelope; the traceback is logged, never sent.
    async with gw.session.get(f"{gw.url}/x", headers={"X-Crash": "high"}) as r:
        body = await r.text()
        assert r.status == 500
        assert '"code":"internal_error"' in body
        assert "secret detail" not in body
        assert "Traceback" not in body
        request_id = r.headers["X-Request-Id"]
    [error] = logs.events("unhandled_error")
    assert error["request_id"] == request_id
    assert "RuntimeError: plugin bug with secret detail" in error["exception"]


async def test_admin_api_answers_its_own_refusals_in_the_envelope(gateway: RunningGateway) -> None:
    async with gateway.session.post(
        f"{gateway.admin_url}/admin/orgs",
        data=io.BytesIO(b"x" * (2 * 1024 * 1024)),
        headers=ADMIN,
    ) as r:
        assert r.status == 413
        body = await r.json()
        assert body["error"]["code"] == "payload_too_large"
        assert body["error"]["request_id"] == r.headers["X-Request-Id"]


def test_config_view_redacts_every_secret() -> None:
    loaded = parse_config(
        b"admin: {token: admin-token-0123456789abc}\n"
        b"keys: {pepper: pepper-0123456789abcdef}\n"
        b"store: {backend: redis, url: 'redis://user:pw1@10.0.0.1:6379/0?password=pw2&db=1'}\n",
        source="t",
        env={},
    )
    view = redacted_config(loaded)["config"]
    assert view["admin"]["token"] == "***"
    assert view["keys"]["pepper"] == "***"
    assert view["store"]["url"] == "redis://***@10.0.0.1:6379/0?password=***&db=1"
