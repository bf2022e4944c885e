"""A field-service scheduling API (seed 001), against config/examples/field-scheduling.yaml.

The setup guide's steps: confirm the key by fetching customers; "401 unauthorized" when the key
is wrong, missing, or lacks the endpoint's scope; "403 no-scope" when the key is valid but has
no scopes yet; read open jobs; create a job; X-Request-Id on every response; a leaked key
rotated with a grace window so the integration does not break.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

import orjson

from tests.conftest import GatewayFactory, RunningGateway, Upstream
from tests.examples.seeds import start_example
from tests.helpers import Admin

JOB = {
    "site": "3065756",
    "job_type": "29400",
    "title": "Integration check",
    "start_time": "2026-07-01T09:00:00+10:00",
    "end_time": "2026-07-01T11:00:00+10:00",
    "notes": "Created during initial integration.",
}


async def call(
    gw: RunningGateway, method: str, path: str, key: str | None, body: Any = None
) -> tuple[int, Any, Any]:
    headers = {"Content-Type": "application/json"}
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    data = None if body is None else orjson.dumps(body)
    async with gw.session.request(method, f"{gw.url}{path}", headers=headers, data=data) as r:
        return r.status, r.headers, await r.read()


async def start(
    gateway_factory: GatewayFactory, store: dict[str, Any], upstream: Upstream
) -> tuple[RunningGateway, Admin]:
    gw = await start_example(gateway_factory, "field-scheduling", store=store, backend=upstream.url)
    admin = Admin(gw)
    await admin.org("acme-plumbing", plan="integration")
    return gw, admin


def error_of(raw: bytes) -> tuple[str, str]:
    error = orjson.loads(raw)["error"]
    return error["code"], error["message"]


async def test_setup_and_verification_as_documented(
    gateway_factory: GatewayFactory, upstream: Upstream, store_config: dict[str, Any]
) -> None:
    gw, admin = await start(gateway_factory, store_config, upstream)
    key = await admin.key("acme-plumbing", scopes=["customers:read", "jobs:write", "sites:read"])
    assert re.fullmatch(r"fi_pk_live_[A-Za-z0-9]{38}", key["secret"])
    secret = key["secret"]

    # 2. Confirm authentication.
    status, headers, _ = await call(gw, "GET", "/v1/customers", secret)
    assert status == 200
    assert headers["X-Request-Id"]
    # 3. Lookups; 4. a read with a query, passed on as sent.
    for path in ("/v1/sites", "/v1/job-types", "/v1/custom-fields"):
        assert (await call(gw, "GET", path, secret))[0] == 200
    status, _, _ = await call(gw, "GET", "/v1/jobs?state=open&page_size=5", secret)
    assert status == 200
    assert upstream.seen[-1].raw_path == "/v1/jobs?state=open&page_size=5"
    # 5. A write: the job reaches the backend as sent.
    status, _, _ = await call(gw, "POST", "/v1/jobs", secret, JOB)
    assert status == 200
    assert upstream.seen[-1].body_sha256 == hashlib.sha256(orjson.dumps(JOB)).hexdigest()
    # "POST /v1/sites (requires the sites:write scope)": this key lacks it.
    status, headers, raw = await call(gw, "POST", "/v1/sites", secret, {"name": "Depot"})
    assert status == 401
    assert error_of(raw)[0] == "unauthorized"
    assert headers["WWW-Authenticate"].startswith("Bearer ")


async def test_401_unauthorized_and_403_no_scope_mean_what_the_guide_says(
    gateway_factory: GatewayFactory, upstream: Upstream, store_config: dict[str, Any]
) -> None:
    gw, admin = await start(gateway_factory, store_config, upstream)
    jobs_only = await admin.key("acme-plumbing", scopes=["jobs:read"])
    unassigned = await admin.key("acme-plumbing", scopes=[])
    seen = len(upstream.seen)
    # Wrong, missing, or lacking the endpoint's scope: 401 unauthorized, all three.
    for key in ("fi_pk_live_" + "x" * 38, None, jobs_only["secret"]):
        status, headers, raw = await call(gw, "GET", "/v1/customers", key)
        assert status == 401, key
        assert error_of(raw)[0] == "unauthorized"
        assert headers["WWW-Authenticate"].startswith("Bearer ")
        assert headers["X-Request-Id"]
    # Valid, but nothing assigned yet: 403 no-scope.
    status, headers, raw = await call(gw, "GET", "/v1/customers", unassigned["secret"])
    assert status == 403
    assert error_of(raw) == (
        "no-scope",
        "This key has no customers assigned yet; contact us to finish setting it up.",
    )
    assert len(upstream.seen) == seen  # the backend saw none of them


async def test_a_request_id_of_the_clients_own_is_returned_and_passed_on(
    gateway_factory: GatewayFactory, upstream: Upstream, store_config: dict[str, Any]
) -> None:
    """ "Log the X-Request-Id from each response next to your own request ID"."""
    gw, admin = await start(gateway_factory, store_config, upstream)
    key = await admin.key("acme-plumbing", scopes=["customers:read"])
    headers = {"Authorization": f"Bearer {key['secret']}", "X-Request-Id": "sync-42"}
    async with gw.session.get(f"{gw.url}/v1/customers", headers=headers) as r:
        assert r.headers["X-Request-Id"] == "sync-42"
    assert upstream.header_values(-1, "X-Request-Id") == ["sync-42"]


async def test_a_leaked_key_is_rotated_with_a_grace_window(
    gateway_factory: GatewayFactory, upstream: Upstream, store_config: dict[str, Any]
) -> None:
    gw, admin = await start(gateway_factory, store_config, upstream)
    old = await admin.key("acme-plumbing", scopes=["customers:read"])
    new = await admin.data("POST", f"/admin/keys/{old['id']}/rotate", {"grace": "1h"})
    assert new["secret"] != old["secret"]
    for secret in (old["secret"], new["secret"]):
        assert (await call(gw, "GET", "/v1/customers", secret))[0] == 200
    await admin.data("POST", f"/admin/keys/{old['id']}/revoke")
    assert (await call(gw, "GET", "/v1/customers", new["secret"]))[0] == 200
