"""BuildWorkPro (seed 002), against config/examples/buildworkpro.yaml.

The API-keys page's promises: bwp_live_/bwp_test_ keys; ``GET /api/v1/me`` answers
{keyId, keyName, tenantId, scopes} and meta.request_id; POST/PATCH/DELETE with Idempotency-Key
replay instead of duplicating; a request from outside a key's allowed IPs and a revoked key get
401 unauthorized; /api/v1/* answers no cross-origin preflight, the OAuth endpoints do; apps
call with OAuth 2.1 bwp_at_… tokens that can be revoked individually.
"""

from __future__ import annotations

import re
import uuid
from typing import Any

from tests.conftest import FakeClock, GatewayFactory, RunningGateway, Upstream, UpstreamFactory
from tests.examples.seeds import start_example
from tests.helpers import Admin, eventually
from tests.oauth.introspection_endpoint import CLIENT_ID, SECRET, start_introspection


async def call(
    gw: RunningGateway, method: str, path: str, key: str, body: Any = None, **headers: str
) -> tuple[int, Any, Any]:
    headers["Authorization"] = f"Bearer {key}"
    async with gw.session.request(method, f"{gw.url}{path}", headers=headers, json=body) as r:
        return r.status, r.headers, await r.json()


async def start(
    gateway_factory: GatewayFactory, store: dict[str, Any], upstream: Upstream
) -> tuple[RunningGateway, Admin, dict[str, Any]]:
    gw = await start_example(gateway_factory, "buildworkpro", store=store, backend=upstream.url)
    admin = Admin(gw)
    org = await admin.org("acme-builders", plan="business")
    return gw, admin, org


async def test_me_shows_the_tenant_binding_and_scopes(
    gateway_factory: GatewayFactory, upstream: Upstream, store_config: dict[str, Any]
) -> None:
    gw, admin, org = await start(gateway_factory, store_config, upstream)
    scopes = ["contacts:read", "contacts:write", "leads:read"]
    key = await admin.key("acme-builders", name="Internal sync script", scopes=scopes)
    assert re.fullmatch(r"bwp_live_[A-Za-z0-9]{38}", key["secret"])
    status, headers, body = await call(gw, "GET", "/api/v1/me", key["secret"])
    assert status == 200
    assert body["data"] == {
        "keyId": key["id"],
        "keyName": "Internal sync script",
        "tenantId": org["id"],
        "scopes": scopes,
    }
    assert re.fullmatch(r"key_[0-9A-Za-z]{20}", key["id"])
    assert re.fullmatch(r"tnt_[0-9A-Za-z]{20}", org["id"])
    assert re.fullmatch(r"req_[0-9a-f]{28}", body["meta"]["request_id"])
    assert body["meta"]["request_id"] == headers["X-Request-Id"]
    # Test keys behave the same as live keys today.
    test_key = await admin.key("acme-builders", scopes=scopes, environment="test")
    assert test_key["secret"].startswith("bwp_test_")
    assert (await call(gw, "GET", "/api/v1/contacts", test_key["secret"]))[0] == 200


async def test_writes_with_an_idempotency_key_replay_instead_of_duplicating(
    gateway_factory: GatewayFactory, upstream: Upstream, store_config: dict[str, Any]
) -> None:
    gw, admin, _ = await start(gateway_factory, store_config, upstream)
    key = await admin.key("acme-builders", scopes=["contacts:write"])
    contact = {"firstName": "Jane", "lastName": "Doe", "type": "customer"}
    idem = str(uuid.uuid4())
    first = await call(
        gw, "POST", "/api/v1/contacts", key["secret"], contact, **{"Idempotency-Key": idem}
    )
    before = len(upstream.seen)
    again = await call(
        gw, "POST", "/api/v1/contacts", key["secret"], contact, **{"Idempotency-Key": idem}
    )
    assert first[0] == again[0] == 200
    assert again[1]["Idempotent-Replayed"] == "true"
    assert again[2] == first[2]
    assert len(upstream.seen) == before  # the backend created it once


async def test_outside_the_allowlist_and_after_revocation_401_unauthorized(
    gateway_factory: GatewayFactory, upstream: Upstream, store_config: dict[str, Any]
) -> None:
    gw, admin, _ = await start(gateway_factory, store_config, upstream)
    fenced = await admin.key(
        "acme-builders", scopes=["contacts:read"], allowedIps=["198.51.100.0/24"]
    )
    status, headers, body = await call(gw, "GET", "/api/v1/contacts", fenced["secret"])
    assert (status, body["error"]["code"]) == (401, "unauthorized")
    assert headers["WWW-Authenticate"].startswith("Bearer ")
    home = await admin.key("acme-builders", scopes=["contacts:read"], allowedIps=["127.0.0.1/32"])
    assert (await call(gw, "GET", "/api/v1/contacts", home["secret"]))[0] == 200
    await admin.data("POST", f"/admin/keys/{home['id']}/revoke")

    async def answer() -> tuple[int, str]:
        status, _, body = await call(gw, "GET", "/api/v1/contacts", home["secret"])
        return status, body.get("error", {}).get("code", "")

    await eventually(answer, expect=(401, "unauthorized"))


async def test_cors_is_for_the_oauth_endpoints_only(
    gateway_factory: GatewayFactory, upstream: Upstream, store_config: dict[str, Any]
) -> None:
    gw, _, _ = await start(gateway_factory, store_config, upstream)
    preflight = {
        "Origin": "https://third-party.example",
        "Access-Control-Request-Method": "GET",
        "Access-Control-Request-Headers": "authorization",
    }
    async with gw.session.options(f"{gw.url}/api/v1/contacts", headers=preflight) as r:
        assert "Access-Control-Allow-Origin" not in r.headers
    for path in ("/oauth/token", "/api/v1/oauth/register"):
        asks = {**preflight, "Access-Control-Request-Method": "POST"}
        if path.startswith("/api"):
            asks["Access-Control-Request-Headers"] = "content-type"
        async with gw.session.options(f"{gw.url}{path}", headers=asks) as r:
            assert r.status == 204, path
            assert r.headers["Access-Control-Allow-Origin"] == "*"


async def test_installed_apps_call_with_opaque_oauth_tokens_beside_keys(
    gateway_factory: GatewayFactory,
    upstream: Upstream,
    upstream_factory: UpstreamFactory,
    store_config: dict[str, Any],
) -> None:
    """ "Use OAuth 2.1 instead": an app's bwp_at_… token acts for the tenant that authorized it
    (checked at the authorization server, "revoked individually"), beside the tenant's keys."""
    endpoint = await start_introspection(upstream_factory)
    clock = FakeClock()
    introspection = {
        "url": endpoint.url,
        "client_id": CLIENT_ID,
        "client_secret": SECRET,
        "cache_ttl": "30s",
    }
    gw = await start_example(
        gateway_factory,
        "buildworkpro",
        store=store_config,
        backend=upstream.url,
        clock=clock,
        oauth={"introspection": introspection},
    )
    admin = Admin(gw)
    org = await admin.org("acme-builders", plan="business")
    token = "bwp_at_" + uuid.uuid4().hex
    endpoint.answers[token] = {
        "active": True,
        "scope": "contacts:read leads:read",
        "client_id": "estimating-app",
        "sub": "usr_42",
        "tenant_id": org["id"],
        "exp": int(clock.now) + 3600,
    }
    status, _, _ = await call(gw, "GET", "/api/v1/contacts", token)
    assert status == 200
    told = {name.lower(): value for name, value in upstream.seen[-1].headers}
    assert (told["x-org-id"], told["x-client-id"]) == (org["id"], "estimating-app")
    status, _, body = await call(gw, "GET", "/api/v1/me", token)
    assert status == 200
    # The documented shape, the same as for a key: a token has no key id or name.
    assert body["data"] == {
        "keyId": None,
        "keyName": None,
        "tenantId": org["id"],
        "scopes": ["contacts:read", "leads:read"],
    }
    status, _, body = await call(gw, "POST", "/api/v1/contacts", token, {"name": "x"})
    assert (status, body["error"]["code"]) == (403, "insufficient_scope")
    # Revoked at the authorization server: refused once the 30 s answer is spent.
    del endpoint.answers[token]
    clock.now += 31
    status, _, body = await call(gw, "GET", "/api/v1/contacts", token)
    assert (status, body["error"]["code"]) == (401, "unauthorized")
    # The tenant's server-to-server key still works on the same route.
    key = await admin.key("acme-builders", scopes=["contacts:read"])
    assert (await call(gw, "GET", "/api/v1/contacts", key["secret"]))[0] == 200
