"""FirmWorks (seed 000): the docs' quickstart and promises, against config/examples/firmworks.yaml.

The docs' steps: create a key with scope read, export it, ``GET /api/v1/me``; then the CRUD
endpoints, 401 for an invalid or revoked key, 429 with Retry-After past the per-key cap (100 a
minute, brief spikes tolerated), and webhooks signed with X-FirmWorks-Signature.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from typing import Any

from tests.conftest import (
    FakeClock,
    GatewayFactory,
    RunningGateway,
    Upstream,
    UpstreamFactory,
)
from tests.examples.seeds import start_example
from tests.helpers import Admin, eventually, verify_standard_webhooks
from tests.webhooks.test_delivery import Receiver, publish, subscribe


async def call(
    gw: RunningGateway, method: str, path: str, key: str, body: Any = None
) -> tuple[int, Any, Any]:
    headers = {"Authorization": f"Bearer {key}"}
    async with gw.session.request(method, f"{gw.url}{path}", headers=headers, json=body) as r:
        return r.status, r.headers, await r.json()


async def start(
    gateway_factory: GatewayFactory,
    store: dict[str, Any],
    upstream: Upstream,
    clock: FakeClock | None = None,
) -> tuple[RunningGateway, Admin, dict[str, Any]]:
    gw = await start_example(
        gateway_factory,
        "firmworks",
        store=store,
        backend=upstream.url,
        clock=clock,
        webhooks={"allow_private_targets": True},
        keys={"last_used_interval": "100ms"},  # shown sooner than the shipped once a minute
    )
    admin = Admin(gw)
    status, body = await admin.call(
        "POST",
        "/admin/orgs",
        {"slug": "your-workspace", "name": "Your Workspace", "plan": "default"},
    )
    assert status == 201, body
    return gw, admin, body["data"]


async def test_quickstart_me_answers_the_documented_fields(
    gateway_factory: GatewayFactory, upstream: Upstream, store_config: dict[str, Any]
) -> None:
    gw, admin, org = await start(gateway_factory, store_config, upstream)
    key = await admin.key("your-workspace", scopes=["read"])
    # "fw_AbCdEfGhIjKlMnOpQrStUvWxYz0123456789": the prefix, then the random part.
    assert re.fullmatch(r"fw_[A-Za-z0-9]{38}", key["secret"])
    status, _, body = await call(gw, "GET", "/api/v1/me", key["secret"])
    assert status == 200
    assert body["data"] == {
        "apiKeyId": key["id"],
        "orgId": org["id"],
        "orgName": "Your Workspace",
        "orgSlug": "your-workspace",
        "scopes": ["read"],
    }
    assert key["id"].startswith("akey_")
    assert org["id"].startswith("org_")


async def test_scopes_statuses_and_revocation(
    gateway_factory: GatewayFactory, upstream: Upstream, store_config: dict[str, Any]
) -> None:
    """read lists, write creates (admin implies both); errors are {"error": {code, message}}
    with 401 for an invalid or revoked key and 403 for a missing scope."""
    gw, admin, org = await start(gateway_factory, store_config, upstream)
    reader = await admin.key("your-workspace", scopes=["read"])
    owner = await admin.key("your-workspace", scopes=["admin"])

    status, _, _ = await call(gw, "GET", "/api/v1/contacts", reader["secret"])
    assert status == 200
    assert upstream.header_values(-1, "X-Org-Id") == [org["id"]]
    assert upstream.header_values(-1, "Authorization") == []

    status, _, body = await call(gw, "POST", "/api/v1/documents", reader["secret"], {"vat": 7})
    assert status == 403
    assert set(body["error"]) >= {"code", "message"}
    status, _, _ = await call(gw, "POST", "/api/v1/documents", owner["secret"], {"vat": 7})
    assert status == 200

    status, _, body = await call(gw, "GET", "/api/v1/me", "fw_" + "A" * 38)
    assert (status, body["error"]["code"]) == (401, "unauthorized")
    await admin.data("POST", f"/admin/keys/{reader['id']}/revoke")

    async def refused() -> int:
        return (await call(gw, "GET", "/api/v1/me", reader["secret"]))[0]

    await eventually(refused, expect=401)

    # "Each key shows its last-used timestamp so you can spot stale ones."
    async def last_used() -> str | None:
        return (await admin.data("GET", f"/admin/keys/{owner['id']}"))["lastUsedAt"]  # type: ignore[no-any-return]

    await eventually(last_used)


async def test_past_the_per_key_cap_is_429_with_retry_after(
    gateway_factory: GatewayFactory, upstream: Upstream, store_config: dict[str, Any]
) -> None:
    """100 a minute per key with brief spikes tolerated: a burst of 120 passes, the next is 429,
    and another key of the same workspace has its own cap."""
    # The clock stands still: on a slow machine 0.6 s would refill one request mid-burst.
    gw, admin, _ = await start(gateway_factory, store_config, upstream, FakeClock())
    key = await admin.key("your-workspace", scopes=["read"])
    other = await admin.key("your-workspace", scopes=["read"])
    statuses = [(await call(gw, "GET", "/api/v1/me", key["secret"]))[0] for _ in range(120)]
    assert set(statuses) == {200}
    status, headers, body = await call(gw, "GET", "/api/v1/me", key["secret"])
    assert (status, body["error"]["code"]) == (429, "rate_limited")
    assert int(headers["Retry-After"]) >= 1
    assert headers["RateLimit-Policy"] == '"key";q=120;w=72'
    assert (await call(gw, "GET", "/api/v1/me", other["secret"]))[0] == 200


async def test_webhooks_are_signed_with_x_firmworks_signature(
    gateway_factory: GatewayFactory,
    upstream: Upstream,
    upstream_factory: UpstreamFactory,
    store_config: dict[str, Any],
) -> None:
    """invoice.created reaches a subscribed endpoint with X-FirmWorks-Signature: sha256=<hex
    HMAC-SHA256 of the raw body under the secret as shown>, and the standard headers too."""
    _, admin, _ = await start(gateway_factory, store_config, upstream)
    receiver = await Receiver().start(upstream_factory)
    endpoint = await subscribe(
        admin, receiver.url, ["invoice.created", "member.added"], org="your-workspace"
    )
    await publish(admin, "invoice.created", {"id": "inv_1", "total": 107}, org="your-workspace")
    (delivery,) = await receiver.wait_for(1)
    secret = endpoint["secret"]
    expected = hmac.new(secret.encode(), delivery.body, hashlib.sha256).hexdigest()
    assert delivery.headers["X-FirmWorks-Signature"] == f"sha256={expected}"
    assert verify_standard_webhooks(secret, delivery.headers, delivery.body)
    assert delivery.event["type"] == "invoice.created"
    assert delivery.event["data"] == {"id": "inv_1", "total": 107}
