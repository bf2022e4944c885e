"""JWT access tokens through a real gateway to a real backend, checked against a real key server:
who the backend is told the caller is, which routes take what, scopes and every refusal."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable
from functools import partial
from typing import Any

from cryptography.hazmat.primitives import serialization

from tests.conftest import (
    FakeClock,
    GatewayFactory,
    LogLines,
    RunningGateway,
    Upstream,
    make_config,
)
from tests.helpers import Admin, eventually
from tests.oauth.conftest import (
    AUDIENCE,
    ISSUER,
    AuthServer,
    Signer,
    Tokens,
    jwt_config,
    rsa_signer,
    send,
)
from tests.oauth.test_tokens import b64, forge

INVALID_TOKEN = (
    'Bearer realm="api", error="invalid_token",'
    ' error_description="The access token is invalid or has expired"'
)
EITHER = "A valid API key or access token is required."
# Every spelling a backend might merge with ours: case, '_' for '-', repeated.
SPOOFED = [
    ("X-Subject", "evil"),
    ("x-subject", "evil-2"),
    ("X_SUBJECT", "evil-3"),
    ("X-Client-Id", "evil-app"),
    ("x_client_id", "evil-app-2"),
    ("X-CLIENT-ID", "evil-app-3"),
    ("X-Org-Id", "org_evil"),
    ("X-Api-Key-Id", "key_evil"),
]
_TOLD = {
    "x-org-id",
    "x-org-slug",
    "x-scopes",
    "x-subject",
    "x-client-id",
    "x-api-key-id",
    "x-key-environment",
    "authorization",
}


def told(upstream: Upstream, index: int) -> dict[str, list[str]]:
    """Who the backend was told the caller of its index-th request is, every copy of it."""
    seen: dict[str, list[str]] = {}
    for name, value in upstream.seen[index].headers:
        norm = name.lower().replace("_", "-")
        if norm in _TOLD:
            seen.setdefault(norm, []).append(value)
    return seen


async def test_a_route_taking_both_tells_the_backend_exactly_who_called(
    gateway_factory: GatewayFactory,
    upstream: Upstream,
    auth_server: AuthServer,
    tokens: Tokens,
    gateway_clock: FakeClock,
    store_config: dict[str, Any],
) -> None:
    """A token (its org named by slug or by id) and a key on one route: one trusted copy of each
    identity header, a token's subject and client beside the org and scopes, none of a key's
    fields for a token; what clients send under those names never arrives, nor Authorization."""
    config = jwt_config(upstream, auth_server, store=store_config)
    gw = await gateway_factory(config, clock=gateway_clock)
    admin = Admin(gw)
    org = await admin.org()
    key = await admin.key(scopes=["orders:read"])
    by_slug = tokens()
    by_id = tokens(org_id=org["id"], sub="user-2", client_id="app-2", scope="orders:read")
    for credential in (by_slug, by_id, key["secret"]):
        answer = await send(gw, "/v1/orders", credential, headers=SPOOFED)
        assert answer.status == 200, answer.body
    assert (await send(gw, "/public", headers=SPOOFED)).status == 200
    org_headers = {"x-org-id": [org["id"]], "x-org-slug": ["acme"]}
    assert told(upstream, 0) == {
        **org_headers,
        "x-scopes": ["orders:read orders:write"],
        "x-subject": ["user-1"],
        "x-client-id": ["app-1"],
    }
    assert told(upstream, 1) == {
        **org_headers,
        "x-scopes": ["orders:read"],
        "x-subject": ["user-2"],
        "x-client-id": ["app-2"],
    }
    assert told(upstream, 2) == {
        **org_headers,
        "x-scopes": ["orders:read"],
        "x-api-key-id": [key["id"]],
        "x-key-environment": ["live"],
    }
    assert told(upstream, 3) == {}  # a public route: no identity, and no spoofed one either


async def test_each_route_takes_only_the_credential_it_names(
    gateway_factory: GatewayFactory,
    upstream: Upstream,
    auth_server: AuthServer,
    tokens: Tokens,
    gateway_clock: FakeClock,
) -> None:
    gw = await gateway_factory(jwt_config(upstream, auth_server), clock=gateway_clock)
    admin = Admin(gw)
    await admin.org()
    key = (await admin.key())["secret"]
    token = tokens()
    refused = await send(gw, "/v1/apps", key)
    assert (refused.status, refused.body["error"]["message"]) == (
        401,
        "A valid access token is required.",
    )
    refused = await send(gw, "/v1/servers", token)
    assert (refused.status, refused.body["error"]["message"]) == (
        401,
        "A valid API key is required.",
    )
    assert refused.headers["WWW-Authenticate"].startswith('Bearer realm="api"')
    assert upstream.seen == []
    assert (await send(gw, "/v1/apps", token)).status == 200
    assert (await send(gw, "/v1/servers", key)).status == 200


async def test_identity_endpoint_describes_a_token_and_a_key(
    gateway_factory: GatewayFactory,
    upstream: Upstream,
    auth_server: AuthServer,
    tokens: Tokens,
    gateway_clock: FakeClock,
) -> None:
    gw = await gateway_factory(jwt_config(upstream, auth_server), clock=gateway_clock)
    admin = Admin(gw)
    org = await admin.org()
    key = await admin.key(scopes=["orders:read"])
    token = tokens(sub="user-7", client_id="app-7", scope="orders:admin webhooks:write")
    answer = await send(gw, "/v1/me", token)
    assert answer.status == 200, answer.body
    me = answer.body["data"]
    # The scopes as the token carries them (scopes.implies adds orders:read, reports:read).
    assert {name: me[name] for name in ("subject", "clientId", "orgId", "scopes")} == {
        "subject": "user-7",
        "clientId": "app-7",
        "orgId": org["id"],
        "scopes": ["orders:admin", "webhooks:write"],
    }
    assert (me["apiKeyId"], me["keyName"], me["orgSlug"]) == (None, None, "acme")
    me = (await send(gw, "/v1/me", key["secret"])).body["data"]
    assert (me["apiKeyId"], me["keyName"], me["orgId"]) == (key["id"], "k", org["id"])
    assert (me["subject"], me["clientId"]) == (None, None)


async def test_without_oauth_the_identity_endpoint_has_no_token_fields(
    gateway_factory: GatewayFactory, upstream: Upstream
) -> None:
    config = make_config({"app": {"targets": [upstream.url]}}, [], plans={"free": {}})
    gw = await gateway_factory(config)
    admin = Admin(gw)
    await admin.org()
    answer = await send(gw, "/v1/me", (await admin.key())["secret"])
    assert answer.status == 200
    assert "apiKeyId" in answer.body["data"]
    assert "subject" not in answer.body["data"]
    assert "clientId" not in answer.body["data"]


async def test_a_tokens_scopes_are_checked_like_a_keys(
    gateway_factory: GatewayFactory,
    upstream: Upstream,
    auth_server: AuthServer,
    tokens: Tokens,
    gateway_clock: FakeClock,
) -> None:
    """The route's scopes, scopes.implies on a token's scopes, and the scp claim as a list."""
    gw = await gateway_factory(jwt_config(upstream, auth_server), clock=gateway_clock)
    await Admin(gw).org()
    lacking = await send(gw, "/v1/reports", tokens(scope="orders:read"))
    assert (lacking.status, lacking.body["error"]["code"]) == (403, "insufficient_scope")
    assert lacking.body["error"]["message"] == "This access token lacks the scope reports:read."
    assert (
        lacking.headers["WWW-Authenticate"]
        == 'Bearer realm="api", error="insufficient_scope", scope="reports:read"'
    )
    assert (await send(gw, "/v1/reports", tokens(scope=""))).status == 403
    assert upstream.seen == []
    assert (await send(gw, "/v1/reports", tokens(scope="orders:admin"))).status == 200
    assert upstream.header_values(0, "X-Scopes") == ["orders:admin orders:read reports:read"]
    listed = tokens(scp=["webhooks:write", "reports:read"], drop=("scope",))
    assert (await send(gw, "/v1/reports", listed)).status == 200
    assert upstream.header_values(1, "X-Scopes") == ["reports:read webhooks:write"]
    assert (await send(gw, "/v1/orders", listed)).status == 403


def _payload(clock: FakeClock, **claims: Any) -> dict[str, Any]:
    return {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "user-1",
        "client_id": "app-1",
        "scope": "orders:read",
        "org_id": "acme",
        "exp": int(clock.now) + 600,
        **claims,
    }


def _hs256_with_public_key(signer: Signer, clock: FakeClock) -> str:
    """The classic confusion: the RSA public key's PEM, which anyone has, as an HMAC secret."""
    pem = signer.private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    header = {"alg": "HS256", "typ": "at+jwt", "kid": signer.kid}
    unsigned = forge(header, _payload(clock)).rsplit(".", 1)[0]
    return f"{unsigned}.{b64(hmac.new(pem, unsigned.encode(), hashlib.sha256).digest())}"


async def test_every_refused_token_gets_the_same_rfc6750_answer(
    gateway_factory: GatewayFactory,
    upstream: Upstream,
    auth_server: AuthServer,
    tokens: Tokens,
    rsa_key: Signer,
    gateway_clock: FakeClock,
    logs: LogLines,
) -> None:
    """Nothing in the answer tells one reason from another; the access log says which it was,
    and never holds the token."""
    gw = await gateway_factory(jwt_config(upstream, auth_server), clock=gateway_clock)
    await Admin(gw).org()
    now = int(gateway_clock.now)
    refused = {
        "expired": tokens(exp=now - 31),  # beyond the 30 s leeway
        "not yet valid": tokens(nbf=now + 31),
        "audience": tokens(aud="https://other-api.example.test"),
        "issuer": tokens(iss="https://evil.example.test"),
        "alg none": forge(
            {"alg": "none", "typ": "at+jwt", "kid": "rsa-1"}, _payload(gateway_clock)
        ),
        "hs256": _hs256_with_public_key(rsa_key, gateway_clock),
        "unpublished key": tokens(signer=rsa_signer(rsa_key.kid)),  # same kid, other key
        "unknown org": tokens(org_id="globex"),
        "no org": tokens(drop=("org_id",)),
        "malformed": "eyJhbGciOiJSUzI1NiJ9.bm90IGpzb24.c2ln",
        # Signed by the server, but would inject a header into the upstream request.
        "sub with CRLF": tokens(sub="user-1\r\nX-Org-Id: org_other"),
        "client_id with NUL": tokens(client_id="app\x00"),
        "scope list with a space": tokens(drop=("scope",), scp=["orders:read", "a b"]),
        "sub a lone surrogate": tokens(sub="\ud800"),
        "scope a lone surrogate": tokens(scope="orders:read \udc80x"),
        # An exp no number can hold, or none at all (NaN compares false: it would never end).
        "exp out of range": tokens(exp=10**400),
        "exp NaN": tokens(exp=float("nan")),
        "exp Infinity": tokens(exp=float("inf")),
    }
    refusal = (401, INVALID_TOKEN, "unauthorized", EITHER)
    answers = {name: await _refusal(gw, token) for name, token in refused.items()}
    assert answers == dict.fromkeys(refused, refusal)
    assert upstream.seen == []
    lines = await eventually(lambda: _requests_logged(logs, "/v1/orders", len(refused)))
    reasons: list[str] = [line.get("auth_error") or "" for line in lines]
    assert all(reasons), lines
    by_name = dict(zip(refused, reasons, strict=True))
    assert by_name["expired"] == "expired"
    assert by_name["not yet valid"] == "not yet valid"
    assert "org" in by_name["unknown org"]
    assert "none" in by_name["alg none"]
    text = logs.raw().decode()
    for token in refused.values():
        assert token not in text
        signature = token.rsplit(".", 1)[-1]
        assert len(signature) < 16 or signature not in text  # nor its signature alone
    # Garbage too (and logged why: see the test below).
    assert await _refusal(gw, "garbage-that-is-no-token") == refusal
    # Just inside the leeway is still good.
    assert (await send(gw, "/v1/orders", tokens(exp=now - 29))).status == 200
    assert (await send(gw, "/v1/orders", tokens(nbf=now + 29))).status == 200


async def _refusal(gw: RunningGateway, token: str) -> tuple[int, str, str, str]:
    """What a client is told when ``token`` is refused on /v1/orders."""
    answer = await send(gw, "/v1/orders", token)
    error = answer.body["error"]
    return answer.status, answer.headers["WWW-Authenticate"], error["code"], error["message"]


def _requests_logged(logs: LogLines, path: str, count: int) -> list[dict[str, Any]]:
    """The access log lines of requests to ``path`` once there are ``count`` (else none)."""
    lines = [line for line in logs.events("request") if line.get("path") == path]
    assert len(lines) <= count, lines
    return lines if len(lines) == count else []


async def test_a_token_over_8_kib_is_refused_like_any_invalid_token(
    gateway_factory: GatewayFactory,
    upstream: Upstream,
    auth_server: AuthServer,
    tokens: Tokens,
    gateway_clock: FakeClock,
    logs: LogLines,
) -> None:
    # A header field this long passes the server's own limit: the token check is what refuses.
    config = jwt_config(upstream, auth_server, server={"max_header_size": 32768})
    gw = await gateway_factory(config, clock=gateway_clock)
    await Admin(gw).org()
    token = tokens(padding="x" * 8192)
    assert len(token) > 8192
    answer = await send(gw, "/v1/orders", token)
    assert (answer.status, answer.body["error"]["message"]) == (401, EITHER)
    assert answer.headers["WWW-Authenticate"] == INVALID_TOKEN
    [line] = await eventually(lambda: _requests_logged(logs, "/v1/orders", 1))
    assert line.get("auth_error")


async def test_garbage_is_refused_like_any_invalid_token_and_logged_why(
    gateway_factory: GatewayFactory,
    upstream: Upstream,
    auth_server: AuthServer,
    gateway_clock: FakeClock,
    logs: LogLines,
) -> None:
    gw = await gateway_factory(jwt_config(upstream, auth_server), clock=gateway_clock)
    await Admin(gw).org()
    for path in ("/v1/orders", "/v1/apps"):
        answer = await send(gw, path, "garbage-that-is-no-token")
        assert answer.status == 401
        assert answer.headers["WWW-Authenticate"] == INVALID_TOKEN
        lines = await eventually(partial(_requests_logged, logs, path, 1))
        assert lines[0].get("auth_error"), lines


async def test_the_error_map_applies_to_tokens(
    gateway_factory: GatewayFactory,
    upstream: Upstream,
    auth_server: AuthServer,
    tokens: Tokens,
    gateway_clock: FakeClock,
) -> None:
    config = jwt_config(
        upstream,
        auth_server,
        errors={"insufficient_scope": {"status": 401, "code": "unauthorized"}},
    )
    gw = await gateway_factory(config, clock=gateway_clock)
    await Admin(gw).org()
    answer = await send(gw, "/v1/reports", tokens(scope="orders:read"))
    assert (answer.status, answer.body["error"]["code"]) == (401, "unauthorized")
    challenge = answer.headers["WWW-Authenticate"]
    assert challenge.startswith('Bearer realm="api"')
    assert 'scope="reports:read"' in challenge
    assert upstream.seen == []


async def test_plan_limits_count_per_client_and_the_orgs_limit_is_shared(
    gateway_factory: GatewayFactory,
    upstream: Upstream,
    auth_server: AuthServer,
    tokens: Tokens,
    gateway_clock: FakeClock,
) -> None:
    """The plan's per-key limit applies to each client (whatever token or user it acts with);
    the org's limit is one for all its clients and keys."""
    plans = {
        "metered": {"rate_limit": {"requests": 2, "per": "1m", "burst": 0}},
        "shared": {
            "rate_limit": {"requests": 100, "per": "1m"},
            "org_rate_limit": {"requests": 3, "per": "1m", "burst": 0},
        },
    }
    gw = await gateway_factory(jwt_config(upstream, auth_server, plans=plans), clock=gateway_clock)
    admin = Admin(gw)
    await admin.org("acme", plan="metered")
    await admin.org("globex", plan="shared")
    globex_key = (await admin.key("globex", scopes=["orders:read"]))["secret"]

    async def status(credential: str) -> int:
        return (await send(gw, "/v1/orders", credential)).status

    # Each request with a token of its own: the limit belongs to the client, not the token.
    assert [await status(tokens(client_id="app-a")) for _ in range(2)] == [200, 200]
    refused = await send(gw, "/v1/orders", tokens(client_id="app-a", sub="someone-else"))
    assert (refused.status, refused.body["error"]["code"]) == (429, "rate_limited")
    assert refused.headers["Retry-After"]
    assert '"key";q=2;w=60' in refused.headers["RateLimit-Policy"]
    assert await status(tokens(client_id="app-b")) == 200

    def globex(client: str) -> str:
        return tokens(org_id="globex", client_id=client)

    assert [await status(c) for c in (globex("app-a"), globex("app-b"), globex_key)] == [200] * 3
    refused = await send(gw, "/v1/orders", globex("app-c"))
    assert refused.status == 429
    assert '"org";q=3;w=60' in refused.headers["RateLimit-Policy"]
    assert await status(globex_key) == 429


async def test_token_requests_are_logged_and_counted(
    gateway_factory: GatewayFactory,
    upstream: Upstream,
    auth_server: AuthServer,
    tokens: Tokens,
    gateway_clock: FakeClock,
) -> None:
    config = jwt_config(upstream, auth_server, request_log={"flush_interval": "20ms"})
    gw = await gateway_factory(config, clock=gateway_clock)
    admin = Admin(gw)
    org = await admin.org()
    key = await admin.key(scopes=["orders:read"])
    assert (await send(gw, "/v1/orders", tokens(client_id="app-9"))).status == 200
    assert (await send(gw, "/v1/orders", tokens(exp=int(gateway_clock.now) - 60))).status == 401
    assert (await send(gw, "/v1/orders", tokens(org_id="nowhere"))).status == 401
    assert (await send(gw, "/v1/orders", key["secret"])).status == 200

    async def logged() -> list[dict[str, Any]]:
        entries: list[dict[str, Any]] = await admin.data("GET", "/admin/requests")
        return entries if len(entries) == 4 else []

    entries: list[dict[str, Any]] = await eventually(logged)
    key_entry, *_, token_entry = entries  # newest first
    assert (token_entry["orgId"], token_entry["keyId"], token_entry["clientId"]) == (
        org["id"],
        None,
        "app-9",
    )
    assert (key_entry["keyId"], key_entry["clientId"]) == (key["id"], None)

    def counted(text: str) -> bool:
        return all(
            f'gateway_auth_total{{credential="{credential}",outcome="{outcome}"}} {n}' in text
            for credential, outcome, n in (
                ("jwt", "ok", 1.0),
                ("jwt", "invalid", 2.0),
                ("key", "ok", 1.0),
            )
        )

    settled: bool = await eventually(partial(_metrics_when, gw, counted))
    assert settled


async def _metrics_when(gw: RunningGateway, check: Callable[[str], bool]) -> bool:
    """Whether the metrics scraped now pass ``check``."""
    return check(await gw.metrics())


async def test_idempotency_replays_and_webhooks_are_audited_for_a_token(
    gateway_factory: GatewayFactory,
    upstream: Upstream,
    auth_server: AuthServer,
    tokens: Tokens,
    gateway_clock: FakeClock,
) -> None:
    config = jwt_config(upstream, auth_server, webhooks={"allow_private_targets": True})
    gw = await gateway_factory(config, clock=gateway_clock)
    admin = Admin(gw)
    await admin.org()
    retry = [("Idempotency-Key", "invoice-1")]
    first = await send(gw, "/v1/invoices", tokens(), method="POST", headers=retry, json={"n": 1})
    again = await send(gw, "/v1/invoices", tokens(), method="POST", headers=retry, json={"n": 1})
    assert (first.status, again.status) == (200, 200)
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.body == first.body
    assert len(upstream.seen) == 1
    # Another user of the org is told nothing of the first one's answer.
    other = tokens(sub="user-2")
    reused = await send(gw, "/v1/invoices", other, method="POST", headers=retry, json={"n": 1})
    assert (reused.status, reused.body["error"]["code"]) == (422, "idempotency_key_reused")
    assert len(upstream.seen) == 1

    endpoint = {"url": upstream.url, "events": ["order.created"]}
    refused = await send(gw, "/v1/webhooks", tokens(), method="POST", json=endpoint)
    assert (refused.status, refused.body["error"]["code"]) == (403, "insufficient_scope")
    writer = tokens(client_id="app-hooks", scope="webhooks:write")
    created = await send(gw, "/v1/webhooks", writer, method="POST", json=endpoint)
    assert created.status == 201, created.body
    listed = await send(gw, "/v1/webhooks", writer)
    assert [e["id"] for e in listed.body["data"]] == [created.body["data"]["id"]]
    [entry, *_] = await admin.data("GET", "/admin/audit?org=acme")
    assert (entry["actor"], entry["action"], entry["target"]) == (
        "oauth:app-hooks",
        "webhook.create",
        created.body["data"]["id"],
    )
