"""FiniteSkills CRM (seed 004), against config/examples/finiteskills-crm.yaml.

The docs' promises: fsk_ keys acting inside one organization and inheriting a CRM role, shown
by ``GET /api/me``; the records endpoints with the CRM's own 201/204/400; per-plan requests a
minute, then 429; the current limits in a ``limits`` object of ``GET /api/keys`` and
``GET /api/webhooks``; webhooks for create/update/delete and ping, with the documented payload,
signed ``X-Finite-Signature: sha256=<HMAC-SHA256 of the raw body using your webhook secret>``,
on public targets only and as many as the plan allows.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from typing import Any

import orjson
from aiohttp import web

from tests.conftest import GatewayFactory, RunningGateway, Upstream, UpstreamFactory
from tests.examples.seeds import start_example
from tests.helpers import Admin, verify_standard_webhooks
from tests.webhooks.test_delivery import Receiver, publish

LEAD = {"name": "Asha Rao", "company": "Acme Pumps", "email": "asha@acmepumps.in", "value": 50000}


async def crm(request: web.BaseRequest) -> web.StreamResponse:
    """The CRM behind the gateway: 201 on create, 204 on delete, 400 on a bad record."""
    if request.method == "POST":
        body = await request.json()
        if "name" not in body:
            return web.json_response({"error": {"message": "name is required"}}, status=400)
        return web.json_response({"id": 42, **body}, status=201)
    if request.method == "DELETE":
        return web.Response(status=204)
    if request.path.endswith(".csv"):
        return web.Response(text="id,name\n42,Asha Rao\n", content_type="text/csv")
    return web.json_response({"data": [], "role": request.headers.get("X-Crm-Role")})


async def call(
    gw: RunningGateway, method: str, path: str, key: str, body: Any = None, **headers: str
) -> tuple[int, Any, bytes]:
    headers["Authorization"] = f"Bearer {key}"
    async with gw.session.request(method, f"{gw.url}{path}", headers=headers, json=body) as r:
        return r.status, r.headers, await r.read()


async def start(
    gateway_factory: GatewayFactory,
    upstream_factory: UpstreamFactory,
    store: dict[str, Any],
    **overrides: Any,
) -> tuple[RunningGateway, Admin, Upstream]:
    backend = await upstream_factory(crm)
    gw = await start_example(
        gateway_factory, "finiteskills-crm", store=store, backend=backend.url, **overrides
    )
    admin = Admin(gw)
    status, body = await admin.call(
        "POST", "/admin/orgs", {"slug": "acme-pumps", "name": "Acme Pumps", "plan": "standard"}
    )
    assert status == 201, body
    return gw, admin, backend


async def test_a_key_inherits_its_crm_role(
    gateway_factory: GatewayFactory, upstream_factory: UpstreamFactory, store_config: dict[str, Any]
) -> None:
    """/api/me shows the organization and role; the CRM is told the role and nobody else can
    claim one."""
    gw, admin, backend = await start(gateway_factory, upstream_factory, store_config)
    key = await admin.key(
        "acme-pumps", scopes=["records:read"], attributes={"role": "sales-manager"}
    )
    assert re.fullmatch(r"fsk_[A-Za-z0-9]{38}", key["secret"])
    status, _, raw = await call(gw, "GET", "/api/me", key["secret"])
    assert status == 200
    me = orjson.loads(raw)["data"]
    assert (me["orgName"], me["role"]) == ("Acme Pumps", "sales-manager")
    status, _, raw = await call(
        gw, "GET", "/api/records/leads", key["secret"], **{"X-Crm-Role": "admin"}
    )
    assert status == 200
    assert orjson.loads(raw)["role"] == "sales-manager"
    assert backend.header_values(-1, "X-Crm-Role") == ["sales-manager"]


async def test_records_answer_with_the_crms_own_statuses(
    gateway_factory: GatewayFactory, upstream_factory: UpstreamFactory, store_config: dict[str, Any]
) -> None:
    gw, admin, _ = await start(gateway_factory, upstream_factory, store_config)
    key = await admin.key("acme-pumps", scopes=["records:write"])
    secret = key["secret"]
    assert (await call(gw, "POST", "/api/records/leads", secret, LEAD))[0] == 201
    status, _, raw = await call(gw, "POST", "/api/records/leads", secret, {"company": "x"})
    assert (status, orjson.loads(raw)["error"]["message"]) == (400, "name is required")
    assert (await call(gw, "PUT", "/api/records/leads/42", secret, LEAD))[0] == 200
    assert (await call(gw, "DELETE", "/api/records/leads/42", secret))[0] == 204
    status, headers, raw = await call(gw, "GET", "/api/export/leads.csv", secret)
    assert (status, headers["Content-Type"], raw) == (
        200,
        "text/csv; charset=utf-8",
        b"id,name\n42,Asha Rao\n",
    )
    # Not a module: no route.
    assert (await call(gw, "GET", "/api/records/spaceships", secret))[0] == 404


async def test_the_plans_requests_a_minute_then_429(
    gateway_factory: GatewayFactory, upstream_factory: UpstreamFactory, store_config: dict[str, Any]
) -> None:
    gw, admin, _ = await start(gateway_factory, upstream_factory, store_config)
    key = await admin.key("acme-pumps", scopes=["records:read"])
    for i in range(120):  # Standard: 120 a minute
        assert (await call(gw, "GET", "/api/records/leads", key["secret"]))[0] == 200, i
    status, headers, _ = await call(gw, "GET", "/api/records/leads", key["secret"])
    assert status == 429
    # "Back off and retry after a minute": at most a minute and one sub-bucket (60 ms), rounded
    # up to whole seconds.
    assert 1 <= int(headers["Retry-After"]) <= 61
    assert headers["RateLimit-Policy"] == '"key";q=120;w=60'


async def test_limits_in_get_api_keys_and_get_api_webhooks(
    gateway_factory: GatewayFactory, upstream_factory: UpstreamFactory, store_config: dict[str, Any]
) -> None:
    gw, admin, _ = await start(gateway_factory, upstream_factory, store_config)
    key = await admin.key("acme-pumps", scopes=["admin"])
    for path in ("/api/keys", "/api/webhooks"):
        status, _, raw = await call(gw, "GET", path, key["secret"])
        assert status == 200, raw
        limits = orjson.loads(raw)["limits"]
        assert limits["requestsPerMinute"] == 120
        assert limits["webhookEndpoints"] == 3
    (listed,) = orjson.loads((await call(gw, "GET", "/api/keys", key["secret"]))[2])["data"]
    assert listed["id"] == key["id"]
    assert "secret" not in listed


async def test_webhooks_carry_the_documented_payload_and_signature(
    gateway_factory: GatewayFactory, upstream_factory: UpstreamFactory, store_config: dict[str, Any]
) -> None:
    gw, admin, _ = await start(
        gateway_factory,
        upstream_factory,
        store_config,
        webhooks={"allow_private_targets": True, "retry_schedule": ["200ms"]},
    )
    key = await admin.key("acme-pumps", scopes=["admin"])
    receiver = await Receiver().start(upstream_factory)
    status, _, raw = await call(
        gw, "POST", "/api/webhooks", key["secret"], {"url": receiver.url, "events": ["*"]}
    )
    assert status == 201, raw
    endpoint = orjson.loads(raw)["data"]
    # "Filter by module list": this one wants deals only.
    deals = await Receiver().start(upstream_factory)
    body = {"url": deals.url, "events": ["create", "update"], "filters": {"module": ["deals"]}}
    assert (await call(gw, "POST", "/api/webhooks", key["secret"], body))[0] == 201
    data = {"module": "leads", "record_id": 42, "id": 42, "name": "Asha Rao", "status": "New"}
    await publish(admin, "create", data, org="acme-pumps")
    await publish(admin, "update", {"module": "deals", "record_id": 7, "id": 7}, org="acme-pumps")
    (deal,) = await deals.wait_for(1)
    assert (deal.event["module"], deal.event["record_id"]) == ("deals", 7)
    (delivery,) = [d for d in await receiver.wait_for(2) if d.event["module"] == "leads"]
    event = delivery.event
    assert list(event) == ["event", "module", "record_id", "occurred_at", "data"]
    assert (event["event"], event["module"], event["record_id"]) == ("create", "leads", 42)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?\+00:00", event["occurred_at"])
    secret = endpoint["secret"]
    expected = hmac.new(secret.encode(), delivery.body, hashlib.sha256).hexdigest()
    assert delivery.headers["X-Finite-Signature"] == f"sha256={expected}"
    assert verify_standard_webhooks(secret, delivery.headers, delivery.body)
    # The ping test event is called ping.
    status, _, _ = await call(gw, "POST", f"/api/webhooks/{endpoint['id']}/ping", key["secret"])
    assert status < 300
    ping = (await receiver.wait_for(3))[2]
    assert ping.event["event"] == "ping"


async def test_webhook_targets_must_be_public_and_within_the_plan(
    gateway_factory: GatewayFactory, upstream_factory: UpstreamFactory, store_config: dict[str, Any]
) -> None:
    gw, admin, _ = await start(gateway_factory, upstream_factory, store_config)
    key = await admin.key("acme-pumps", scopes=["webhooks:write"])
    status, _, raw = await call(
        gw, "POST", "/api/webhooks", key["secret"], {"url": "http://10.1.2.3/h", "events": ["*"]}
    )
    assert status == 400, raw
    # Public addresses (registration resolves names; these need no resolving).
    for address in ("1.1.1.1", "8.8.8.8", "9.9.9.9"):  # Standard: 3 webhook endpoints
        body = {"url": f"https://{address}/crm", "events": ["create", "update"]}
        assert (await call(gw, "POST", "/api/webhooks", key["secret"], body))[0] == 201
    body = {"url": "https://208.67.222.222/crm", "events": ["delete"]}
    status, _, raw = await call(gw, "POST", "/api/webhooks", key["secret"], body)
    assert (status, orjson.loads(raw)["error"]["code"]) == (403, "plan_limit_reached")
