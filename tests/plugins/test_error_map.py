"""errors: our error answers renamed by config, without changing what they mean; ids: prefixes."""

from __future__ import annotations

import importlib
import pkgutil
import re
from typing import Any

import pytest
import yaml

import gateway
import plugins
from gateway.config.errors import ERROR_CODES
from gateway.errors import GatewayError
from tests.config.test_config import problems
from tests.conftest import GatewayFactory, Upstream, make_config, raw_request
from tests.helpers import Admin

# Errors the data plane never answers with: the admin listener's and the console's own, the
# outcome of a client that left (never sent), and a 431 that carries the code bad_request.
_NOT_DATA_PLANE = {"config_invalid", "forbidden", "client_closed_request"}


def config_error(extra: dict[str, Any]) -> str:
    """Every problem the config loader reports for a minimal config with ``extra``."""
    text = yaml.safe_dump({"routes": [], **extra})
    return "\n".join(problems(text))


def _error_classes() -> list[type[GatewayError]]:
    for package in (gateway, plugins):
        for module in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
            if not module.name.endswith("__main__"):  # that one runs the CLI
                importlib.import_module(module.name)
    found: list[type[GatewayError]] = []
    todo = [GatewayError]
    while todo:
        cls = todo.pop()
        found.append(cls)
        todo.extend(cls.__subclasses__())
    return found


def test_the_error_code_table_is_true_to_the_error_classes() -> None:
    """Every code an error class answers with is mappable, with the status it really has; and
    the table names no code that nothing answers with (no_scopes aside: it is a lookup name)."""
    answered: set[str] = set()
    for cls in _error_classes():
        if cls.code in _NOT_DATA_PLANE:
            continue
        assert cls.code in ERROR_CODES, f"{cls.__qualname__}: {cls.code} is not in ERROR_CODES"
        answered.add(cls.code)
        if cls.status != ERROR_CODES[cls.code]:
            # Only the 431 shares a code with another status (its own stays, see ErrorMap).
            assert (cls.code, cls.status) == ("bad_request", 431)
    assert set(ERROR_CODES) - answered == {"no_scopes"}


@pytest.mark.parametrize(
    ("errors", "message"),
    [
        ({"no_such_code": {"code": "x"}}, "unknown error code 'no_such_code'"),
        ({"unauthorized": {"status": 200}}, "unauthorized.status: 200 would change"),
        ({"rate_limited": {"status": 503}}, "rate_limited.status: 503 would change"),
        ({"bad_gateway": {"status": 400}}, "bad_gateway.status: 400 would change"),
        ({"insufficient_scope": {"status": 429}}, "carry protocol meaning"),
        ({"rate_limited": {"status": 403}}, "carry protocol meaning"),
        ({"method_not_allowed": {"status": 404}}, "carry protocol meaning"),
        ({"unauthorized": {"code": "not a code"}}, "must be 1-64 letters"),
        ({"unauthorized": {"message": "two\nlines"}}, "printable"),
        ({"unauthorized": {"colour": "red"}}, "colour"),
    ],
)
def test_an_error_map_that_would_change_a_meaning_is_refused(
    errors: dict[str, Any], message: str
) -> None:
    text = config_error({"errors": errors})
    assert "errors" in text
    assert message in text


@pytest.mark.parametrize(
    ("ids", "message"),
    [
        ({"key": "key"}, "ids.key"),
        ({"org": "Tenant_"}, "ids.org"),
        ({"org": "tnt-"}, "ids.org"),
        ({"key": "tnt_", "org": "tnt_"}, "keys and orgs need their own"),
        ({"request": "req id "}, "ids.request"),
    ],
)
def test_bad_id_prefixes_are_refused(ids: dict[str, str], message: str) -> None:
    assert message in config_error({"ids": ids})


def _routes() -> list[dict[str, Any]]:
    return [
        {"path": "/v1/customers", "upstream": "app", "auth": "key", "scopes": ["customers:read"]},
        {"path": "/v1/open", "upstream": "app", "auth": "key"},
    ]


async def test_mapped_errors_answer_as_the_config_says(
    gateway_factory: GatewayFactory, upstream: Upstream, store_config: dict[str, Any]
) -> None:
    """A seed's contract: a key lacking the scope is 401 unauthorized, a key with no scopes is
    403 no-scope, an address outside the allowlist is 401 unauthorized; every 401 still carries
    a Bearer challenge, and unmapped errors are answered as ours."""
    config = make_config(
        {"app": {"targets": [upstream.url]}},
        _routes(),
        store=store_config,
        errors={
            "insufficient_scope": {"status": 401, "code": "unauthorized"},
            "no_scopes": {"status": 403, "code": "no-scope", "message": "No scope assigned yet."},
            "ip_not_allowed": {"status": 401, "code": "unauthorized"},
            "route_not_found": {"code": "not_found"},
        },
    )
    gw = await gateway_factory(config)
    admin = Admin(gw)
    await admin.org(plan="default")
    other = await admin.key(scopes=["jobs:read"])
    empty = await admin.key(scopes=[])
    fenced = await admin.key(scopes=["customers:read"], allowedIps=["203.0.113.0/24"])

    async def get(path: str, secret: str) -> tuple[int, Any, dict[str, Any]]:
        headers = {"Authorization": f"Bearer {secret}"}
        async with gw.session.get(f"{gw.url}{path}", headers=headers) as r:
            return r.status, r.headers, await r.json()

    status, headers, body = await get("/v1/customers", other["secret"])
    assert (status, body["error"]["code"]) == (401, "unauthorized")
    challenge = headers["WWW-Authenticate"]
    assert challenge.startswith("Bearer ")
    assert 'scope="customers:read"' in challenge
    assert body["error"]["request_id"] == headers["X-Request-Id"]

    status, headers, body = await get("/v1/customers", empty["secret"])
    assert (status, body["error"]) == (
        403,
        {"code": "no-scope", "message": "No scope assigned yet.", "request_id": ANY_ID},
    )
    # A route needing no scope lets the scopeless key through.
    status, _, _ = await get("/v1/open", empty["secret"])
    assert status == 200

    status, headers, body = await get("/v1/customers", fenced["secret"])
    assert (status, body["error"]["code"]) == (401, "unauthorized")
    assert headers["WWW-Authenticate"].startswith("Bearer ")

    status, headers, body = await get("/nowhere", fenced["secret"])
    assert (status, body["error"]["code"]) == (404, "not_found")
    status, headers, body = await get("/v1/customers", "fw_live_nonsense")
    assert (status, body["error"]["code"]) == (401, "unauthorized")


class _AnyId:
    """Equal to any request id (a test cannot know the one the gateway made)."""

    def __eq__(self, other: object) -> bool:
        return isinstance(other, str) and bool(other)


ANY_ID: Any = _AnyId()


async def test_no_scopes_follows_insufficient_scope_unless_mapped(
    gateway_factory: GatewayFactory, upstream: Upstream
) -> None:
    config = make_config(
        {"app": {"targets": [upstream.url]}},
        _routes(),
        errors={"insufficient_scope": {"status": 401, "code": "unauthorized"}},
    )
    gw = await gateway_factory(config)
    admin = Admin(gw)
    await admin.org(plan="default")
    empty = await admin.key(scopes=[])
    headers = {"Authorization": f"Bearer {empty['secret']}"}
    async with gw.session.get(f"{gw.url}/v1/customers", headers=headers) as r:
        assert r.status == 401
        assert (await r.json())["error"]["code"] == "unauthorized"
        assert 'error="insufficient_scope"' in r.headers["WWW-Authenticate"]


async def test_unmapped_errors_are_ours(
    gateway_factory: GatewayFactory, upstream: Upstream
) -> None:
    gw = await gateway_factory(make_config({"app": {"targets": [upstream.url]}}, _routes()))
    admin = Admin(gw)
    await admin.org(plan="default")
    empty = await admin.key(scopes=[])
    headers = {"Authorization": f"Bearer {empty['secret']}"}
    async with gw.session.get(f"{gw.url}/v1/customers", headers=headers) as r:
        assert r.status == 403
        assert (await r.json())["error"]["code"] == "insufficient_scope"


async def test_a_malformed_request_is_answered_with_the_map_and_the_request_id_prefix(
    gateway_factory: GatewayFactory, upstream: Upstream
) -> None:
    """Errors found before any route (the HTTP parser's) follow the config too."""
    config = make_config(
        {"app": {"targets": [upstream.url]}},
        _routes(),
        errors={"bad_request": {"code": "invalid_request"}},
        ids={"request": "req_"},
    )
    gw = await gateway_factory(config)
    raw = await raw_request(gw.port, b"GET /v1/open HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n")
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 ")
    assert b'"code":"invalid_request"' in body
    assert re.search(rb"\r\nX-Request-Id: req_[0-9a-f]{28}\r\n", head, re.IGNORECASE)


async def test_generated_ids_carry_the_configured_prefixes(
    gateway_factory: GatewayFactory, upstream: Upstream, store_config: dict[str, Any]
) -> None:
    """Keys as akey_…, orgs as tnt_…, request ids as req_…; a client's own X-Request-Id is
    kept as sent, and an org is found by its id and by its slug."""
    config = make_config(
        {"app": {"targets": [upstream.url]}},
        [{"path": "/status", "upstream": "app"}],
        store=store_config,
        ids={"key": "akey_", "org": "tnt_", "request": "req_"},
    )
    gw = await gateway_factory(config)
    admin = Admin(gw)
    org = await admin.org(plan="default")
    assert re.fullmatch(r"tnt_[0-9A-Za-z]{20}", org["id"])
    key = await admin.key()
    assert re.fullmatch(r"akey_[0-9A-Za-z]{20}", key["id"])
    assert (await admin.data("GET", f"/admin/keys/{key['id']}"))["orgId"] == org["id"]
    assert (await admin.data("GET", f"/admin/orgs/{org['id']}"))["slug"] == "acme"
    assert (await admin.data("GET", "/admin/orgs/acme"))["id"] == org["id"]
    async with gw.session.get(f"{gw.url}/status") as r:
        assert re.fullmatch(r"req_[0-9a-f]{28}", r.headers["X-Request-Id"])
    async with gw.session.get(f"{gw.url}/status", headers={"X-Request-Id": "mine-1"}) as r:
        assert r.headers["X-Request-Id"] == "mine-1"
    async with gw.session.get(f"{gw.url}/nowhere") as r:
        body = await r.json()
        assert body["error"]["request_id"].startswith("req_")
