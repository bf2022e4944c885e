"""The console's login, sessions and CSRF defences over plain HTTP, and named admin tokens."""

from __future__ import annotations

import asyncio
import re
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry

from gateway.config import ConfigError, parse_config
from gateway.console.app import SESSION_COOKIE
from gateway.console.login_limit import LoginLimit
from gateway.console.sessions import SessionStore
from gateway.control.admin_tokens import AdminTokens
from gateway.control.listener import build_admin_app, saved_admin_token
from tests.certificates import self_signed
from tests.conftest import (
    ADMIN_TOKEN,
    FakeClock,
    GatewayFactory,
    LogLines,
    RunningGateway,
    free_port,
    make_config,
)
from tests.helpers import ADMIN

ALICE = "alice-token-0123456789abcdef"
BOB = "bob-token-0123456789abcdef"
EVIL = "http://evil.example"


@pytest.fixture
async def gw(gateway_factory: GatewayFactory) -> RunningGateway:
    """A gateway with admin.token (actor admin) and two named tokens, alice's and bob's."""
    return await gateway_factory(
        make_config(
            {"echo": {"builtin": "echo"}},
            [{"path": "/v1/echo/{rest:.*}", "upstream": "echo", "auth": "key"}],
            admin={"tokens": [{"name": "alice", "token": ALICE}, {"name": "bob", "token": BOB}]},
            plans={"free": {}},
        )
    )


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """A client that keeps no cookies: each test sends the session cookie by hand."""
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as session:
        yield session


class Browser:
    """What a browser on the console's own origin sends: its cookie, Origin and CSRF token."""

    def __init__(self, http: aiohttp.ClientSession, origin: str) -> None:
        self.http, self.origin = http, origin
        self.cookie: str | None = None
        self.csrf: str | None = None
        self.set_cookie = ""

    async def login(self, token: str, origin: str | None = None) -> aiohttp.ClientResponse:
        async with self.http.post(
            f"{self.origin}/login",
            data={"token": token},
            headers={"Origin": origin or self.origin},
            allow_redirects=False,
        ) as r:
            await r.read()
            if SESSION_COOKIE in r.cookies:
                self.cookie = r.cookies[SESSION_COOKIE].value
                self.set_cookie = r.headers["Set-Cookie"]
            return r

    def headers(self, **extra: str) -> dict[str, str]:
        assert self.cookie is not None
        return {"Cookie": f"{SESSION_COOKIE}={self.cookie}", **extra}

    async def page(self) -> tuple[int, str, Any]:
        async with self.http.get(
            f"{self.origin}/", headers=self.headers(), allow_redirects=False
        ) as r:
            text = await r.text()
            found = re.search(r'name="csrf-token" content="([^"]+)"', text)
            if found:
                self.csrf = found[1]
            return r.status, text, r.headers

    async def call(
        self, method: str, path: str, body: Any = None, **headers: str
    ) -> tuple[int, Any]:
        async with self.http.request(
            method, f"{self.origin}{path}", json=body, headers=self.headers(**headers)
        ) as r:
            return r.status, await r.json()

    def same_origin(self) -> dict[str, str]:
        assert self.csrf is not None
        return {"Origin": self.origin, "X-CSRF-Token": self.csrf}


async def logged_in(gw: RunningGateway, http: aiohttp.ClientSession, token: str = ALICE) -> Browser:
    browser = Browser(http, gw.admin_url)
    r = await browser.login(token)
    assert r.status == 303, r.status
    assert (await browser.page())[0] == 200
    return browser


async def test_login_with_a_wrong_token_is_401_and_sets_no_cookie(
    gw: RunningGateway, http: aiohttp.ClientSession
) -> None:
    browser = Browser(http, gw.admin_url)
    r = await browser.login("not-the-token-0123456789")
    assert r.status == 401
    assert "Set-Cookie" not in r.headers
    assert browser.cookie is None
    async with http.get(f"{gw.admin_url}/", allow_redirects=False) as r:
        assert r.status == 303
        assert r.headers["Location"] == "/login"


async def test_the_session_cookie_is_http_only_strict_and_not_secure_over_plain_http(
    gw: RunningGateway, http: aiohttp.ClientSession
) -> None:
    browser = await logged_in(gw, http)
    flags = [part.strip().lower() for part in browser.set_cookie.split(";")]
    assert "httponly" in flags
    assert "samesite=strict" in flags
    assert "path=/" in flags
    assert "secure" not in flags
    assert browser.cookie is not None
    assert len(browser.cookie) >= 43  # 256 random bits, base64url


async def test_the_session_cookie_is_secure_when_the_login_came_over_tls(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert, key)
    client_tls = ssl.create_default_context(cafile=str(cert))

    async def ready() -> dict[str, Any]:
        return {"status": "ready"}

    # The admin app as the listener builds it, served over TLS.
    app = build_admin_app(
        registry=CollectorRegistry(),
        tokens=AdminTokens([("alice", ALICE)]),
        readiness=ready,
        config_view=dict,
    )
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port, ssl_context=server_tls).start()
    try:
        origin = f"https://127.0.0.1:{port}"
        async with (
            aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http,
            http.post(
                f"{origin}/login",
                data={"token": ALICE},
                headers={"Origin": f"http://127.0.0.1:{port}"},  # TLS asks for an https origin
                ssl=client_tls,
                allow_redirects=False,
            ) as refused,
            http.post(
                f"{origin}/login",
                data={"token": ALICE},
                headers={"Origin": origin},
                ssl=client_tls,
                allow_redirects=False,
            ) as r,
        ):
            assert refused.status == 403
            assert r.status == 303
            flags = [p.strip().lower() for p in r.headers["Set-Cookie"].split(";")]
            assert {"secure", "httponly", "samesite=strict", "path=/"} <= set(flags)
    finally:
        await runner.cleanup()


async def test_the_console_page_has_strict_headers_and_no_secret(
    gw: RunningGateway, http: aiohttp.ClientSession, logs: LogLines
) -> None:
    async with http.get(f"{gw.admin_url}/login") as r:
        login_page = await r.text()
        assert r.status == 200
        assert 'name="token"' in login_page
    browser = await logged_in(gw, http)
    status, text, headers = await browser.page()
    assert status == 200
    csp = headers["Content-Security-Policy"]
    assert "default-src 'self'" in csp
    assert "frame-ancestors 'none'" in csp
    assert "unsafe-inline" not in csp
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["Referrer-Policy"] == "same-origin"
    assert headers["X-Frame-Options"] == "DENY"
    assert headers["Cache-Control"] == "no-store"
    assert "<script>" not in text  # no inline script: the CSP would refuse it anyway
    assert "alice" in text
    assert browser.cookie is not None
    async with http.get(f"{gw.admin_url}/console/app.js") as r:
        script = await r.text()
        assert r.headers["Content-Type"].startswith("text/javascript")
        assert r.headers["X-Content-Type-Options"] == "nosniff"
    async with http.get(f"{gw.admin_url}/console/../listener.py") as r:
        assert r.status == 404
    seen = login_page + text + script + logs.raw().decode()
    for secret in (ALICE, BOB, ADMIN_TOKEN, browser.cookie):
        assert secret not in seen
    assert "alice" in [e["actor"] for e in logs.events("console_login")]


async def test_api_calls_with_the_cookie_read_freely_but_change_only_with_the_csrf_token(
    gw: RunningGateway, http: aiohttp.ClientSession
) -> None:
    browser = await logged_in(gw, http)
    assert (await browser.call("GET", "/admin/orgs"))[0] == 200  # the cookie alone reads
    org = {"slug": "acme", "name": "Acme", "plan": "free"}
    status, body = await browser.call("POST", "/admin/orgs", org, Origin=gw.admin_url)
    assert status == 403
    assert body["error"]["code"] == "forbidden"
    status, _ = await browser.call(
        "POST", "/admin/orgs", org, Origin=gw.admin_url, **{"X-CSRF-Token": "wrong" * 9}
    )
    assert status == 403
    assert (await browser.call("GET", "/admin/orgs/acme"))[0] == 404  # nothing was made
    status, body = await browser.call("POST", "/admin/orgs", org, **browser.same_origin())
    assert status == 201, body
    status, _ = await browser.call(
        "PATCH", "/admin/orgs/acme", {"name": "Acme 2"}, Origin=gw.admin_url
    )
    assert status == 403


async def test_cross_origin_requests_are_refused_even_with_the_csrf_token(
    gw: RunningGateway, http: aiohttp.ClientSession
) -> None:
    browser = await logged_in(gw, http)
    assert browser.csrf is not None
    org = {"slug": "acme", "name": "Acme", "plan": "free"}
    csrf = {"X-CSRF-Token": browser.csrf}
    for origin in (EVIL, "null", f"{gw.admin_url}.evil.example", "https://127.0.0.1:1"):
        status, body = await browser.call("POST", "/admin/orgs", org, Origin=origin, **csrf)
        assert (status, body["error"]["code"]) == (403, "forbidden"), origin
    status, _ = await browser.call("POST", "/admin/orgs", org, **csrf)  # no Origin, no Referer
    assert status == 403
    status, _ = await browser.call("POST", "/admin/orgs", org, Referer=f"{EVIL}/", **csrf)
    assert status == 403
    # Without Origin, a same-origin Referer will do (older browsers).
    status, _ = await browser.call("POST", "/admin/orgs", org, Referer=f"{gw.admin_url}/", **csrf)
    assert status == 201
    # Login CSRF: another site cannot log a browser in to its own session.
    other = Browser(http, gw.admin_url)
    r = await other.login(ALICE, origin=EVIL)
    assert r.status == 403
    assert other.cookie is None
    # Nor log it out.
    async with http.post(
        f"{gw.admin_url}/logout",
        data={"csrf_token": browser.csrf},
        headers=browser.headers(Origin=EVIL),
        allow_redirects=False,
    ) as r:
        assert r.status == 403
    assert (await browser.call("GET", "/admin/orgs"))[0] == 200


async def test_logout_needs_the_csrf_token_and_ends_the_session_on_the_server(
    gw: RunningGateway, http: aiohttp.ClientSession
) -> None:
    browser = await logged_in(gw, http)
    assert browser.csrf is not None
    old = browser.headers(Origin=gw.admin_url)
    async with http.post(
        f"{gw.admin_url}/logout", data={}, headers=old, allow_redirects=False
    ) as r:
        assert r.status == 403
        assert (await r.json())["error"]["code"] == "forbidden"
    async with http.post(
        f"{gw.admin_url}/logout",
        data={"csrf_token": browser.csrf},
        headers=old,
        allow_redirects=False,
    ) as r:
        assert r.status == 303
        assert r.headers["Location"] == "/login"
        assert r.cookies[SESSION_COOKIE].value == ""  # the browser forgets it
    # The server forgot it too: the old cookie, replayed, opens nothing.
    status, body = await browser.call("GET", "/admin/orgs")
    assert (status, body["error"]["code"]) == (401, "unauthorized")
    assert (await browser.page())[0] == 303


async def test_bearer_tokens_work_as_before_without_csrf_and_name_their_actor(
    gw: RunningGateway, http: aiohttp.ClientSession
) -> None:
    for token, slug in ((BOB, "by-bob"), (ADMIN_TOKEN, "by-admin")):
        async with http.post(
            f"{gw.admin_url}/admin/orgs",
            json={"slug": slug, "name": slug, "plan": "free"},
            headers={"Authorization": f"Bearer {token}"},  # no Origin, no CSRF token
        ) as r:
            assert r.status == 201, await r.text()
    browser = await logged_in(gw, http, ALICE)
    status, _ = await browser.call(
        "POST",
        "/admin/orgs",
        {"slug": "by-alice", "name": "A", "plan": "free"},
        **browser.same_origin(),
    )
    assert status == 201
    async with http.get(f"{gw.admin_url}/admin/audit?action=org.create", headers=ADMIN) as r:
        entries = (await r.json())["data"]
    actors = {e["after"]["slug"]: e["actor"] for e in entries}
    assert actors == {"by-bob": "bob", "by-admin": "admin", "by-alice": "alice"}
    # A wrong Bearer token is refused, whatever cookie comes with it.
    async with http.get(
        f"{gw.admin_url}/admin/orgs",
        headers=browser.headers(Authorization="Bearer wrong-token-0123456789"),
    ) as r:
        assert r.status == 401
        assert r.headers["WWW-Authenticate"] == 'Bearer realm="admin"'


async def test_a_login_body_that_is_no_form_is_a_400(
    gw: RunningGateway, http: aiohttp.ClientSession
) -> None:
    origin = {"Origin": gw.admin_url}
    bodies = [
        ("application/x-www-form-urlencoded; charset=bogus", b"token=x"),
        ("application/x-www-form-urlencoded", b"token=\xff\xfe"),
        ("multipart/form-data", b"--x\r\n"),  # no boundary
    ]
    for content_type, body in bodies:
        headers = {**origin, "Content-Type": content_type}
        async with http.post(
            f"{gw.admin_url}/login", data=body, headers=headers, allow_redirects=False
        ) as r:
            assert r.status == 400, (content_type, r.status, await r.text())
            assert (await r.json())["error"]["code"] == "bad_request"


async def test_failed_logins_sent_at_once_are_limited_like_others(
    gw: RunningGateway, http: aiohttp.ClientSession
) -> None:
    """Twelve logins whose heads arrive first and whose bodies arrive together: each is
    counted against the limit, none slips through while the others wait for their bodies."""
    host, port = gw.admin_url.removeprefix("http://").split(":")
    body = b"token=guess-0123456789abcdef"
    head = (
        f"POST /login HTTP/1.1\r\nHost: {host}:{port}\r\nOrigin: {gw.admin_url}\r\n"
        "Content-Type: application/x-www-form-urlencoded\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode()
    streams = [await asyncio.open_connection(host, int(port)) for _ in range(12)]
    for _, writer in streams:
        writer.write(head)
        await writer.drain()
    await asyncio.sleep(0.2)  # every head is in, every handler waits for its body
    for _, writer in streams:
        writer.write(body)
    statuses = []
    for reader, writer in streams:
        status_line = await asyncio.wait_for(reader.readline(), 5)
        statuses.append(int(status_line.split()[1]))
        writer.close()
    assert sorted(statuses) == [401] * 5 + [429] * 7


async def test_failed_logins_are_limited_per_address(
    gw: RunningGateway, http: aiohttp.ClientSession
) -> None:
    browser = Browser(http, gw.admin_url)
    for _ in range(5):
        assert (await browser.login("guess-0123456789abcdef")).status == 401
    r = await browser.login("guess-0123456789abcdef")
    assert r.status == 429
    assert 1 <= int(r.headers["Retry-After"]) <= 60
    r = await browser.login(ALICE)  # while blocked, the right token tells nothing either
    assert r.status == 429
    assert browser.cookie is None
    # Bearer calls are not the login form's business.
    async with http.get(f"{gw.admin_url}/admin/orgs", headers=ADMIN) as r:
        assert r.status == 200


def test_the_login_limit_lets_an_address_try_again_once_its_failures_age() -> None:
    clock = FakeClock(1000.0)
    limit = LoginLimit(clock=clock, failures=3, window=60.0)
    for _ in range(3):
        assert limit.retry_after("10.0.0.1") is None
        limit.failed("10.0.0.1")
        clock.now += 10
    assert limit.retry_after("10.0.0.1") == 30  # the first failure leaves the window at 1060
    assert limit.retry_after("10.0.0.2") is None  # per address
    clock.now = 1060.0
    assert limit.retry_after("10.0.0.1") is None


def test_sessions_expire_when_idle_and_at_their_maximum_age() -> None:
    clock = FakeClock(0.0)
    store = SessionStore(clock=clock, idle_timeout=100.0, max_age=250.0)
    session_id, session = store.open("alice")
    assert session_id not in repr(store._sessions)  # only its hash is kept
    clock.now = 99.0
    assert store.find(session_id) is session  # used: the idle time starts again
    clock.now = 198.0
    assert store.find(session_id) is session
    clock.now = 249.0
    assert store.find(session_id) is session
    clock.now = 250.0  # never idle for 100 s, but 250 s old
    assert store.find(session_id) is None
    other, _ = store.open("bob")
    clock.now = 350.0
    assert store.find(other) is None  # idle for 100 s
    assert len(store) == 0


def test_the_least_recently_used_session_ends_when_too_many_are_open() -> None:
    store = SessionStore(max_sessions=2)
    first, _ = store.open("a")
    second, _ = store.open("b")
    assert store.find(first) is not None  # now second is the least recently used
    third, _ = store.open("c")
    assert store.find(second) is None
    assert store.find(first) is not None
    assert store.find(third) is not None


def test_named_admin_tokens_are_checked_with_their_path() -> None:
    base = "upstreams: {a: {targets: ['http://127.0.0.1:1']}}\nroutes: []\n"

    def problems(admin: str) -> list[str]:
        try:
            parse_config(f"admin: {admin}\n{base}".encode(), source="t.yaml", env={})
        except ConfigError as exc:
            return exc.problems
        return []

    good = "aaaaaaaaaaaaaaaa"
    assert problems(
        f"{{tokens: [{{name: alice, token: {good}}}, {{name: bob, token: short}}]}}"
    ) == ["admin.tokens[1].token: must be at least 16 characters"]
    assert problems(f"{{tokens: [{{name: Alice, token: {good}}}]}}") == [
        "admin.tokens[0].name: must be 1-32 of a-z, 0-9, '.', '_', '-' (got 'Alice')"
    ]
    assert problems(f"{{tokens: [{{name: sighup, token: {good}}}]}}")[0].startswith(
        "admin.tokens[0].name: 'sighup' is reserved"
    )
    assert problems(f"{{tokens: [{{name: a, token: {good}}}, {{name: a, token: {good}b}}]}}") == [
        "admin.tokens: the name 'a' is given twice (tokens[0] and tokens[1])"
    ]
    shared = problems(f"{{token: {good}, tokens: [{{name: a, token: {good}}}]}}")
    assert shared == [
        "admin.tokens: tokens[0].token is the same as token: each holder needs a token of their own"
    ]
    assert problems("{tokens: [{name: a, token: '${UNSET_CONSOLE_TOKEN}'}]}")[0].startswith(
        "admin.tokens[0].token: environment variable UNSET_CONSOLE_TOKEN is not set"
    )
    loaded = parse_config(
        f"admin: {{tokens: [{{name: ci, token: '${{CI_TOKEN}}'}}]}}\n{base}".encode(),
        source="t.yaml",
        env={"CI_TOKEN": "from-the-environment-123"},
    )
    assert loaded.config.admin.tokens[0].token == "from-the-environment-123"
    # With named tokens only, the CLI uses none from the token file: it is given one.
    assert saved_admin_token(loaded.config.admin) is None


async def test_with_named_tokens_only_no_token_is_made_and_the_config_view_redacts_them(
    gateway_factory: GatewayFactory, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    token_file = tmp_path / "made-token"
    gw = await gateway_factory(
        make_config(
            {"echo": {"builtin": "echo"}},
            [],
            admin={
                "token": None,
                "token_file": str(token_file),
                "tokens": [{"name": "alice", "token": ALICE}],
            },
        )
    )
    assert not token_file.exists()
    async with http.get(
        f"{gw.admin_url}/admin/config", headers={"Authorization": f"Bearer {ALICE}"}
    ) as r:
        assert r.status == 200
        body = await r.json()
    assert body["data"]["config"]["admin"]["tokens"] == [{"name": "alice", "token": "***"}]
    assert ALICE not in str(body)
    async with http.get(f"{gw.admin_url}/admin/orgs", headers=ADMIN) as r:
        assert r.status == 401  # admin.token is not configured here
