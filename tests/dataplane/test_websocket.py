"""WebSocket pass-through: a real aiohttp WebSocket backend, a real client, a real gateway."""

from __future__ import annotations

import asyncio
import ssl
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import WSMsgType, web

from gateway.config import ConfigError
from gateway.config.loader import parse_config
from tests.certificates import self_signed
from tests.conftest import (
    GatewayFactory,
    LogLines,
    RunningGateway,
    Upstream,
    UpstreamFactory,
    closed_port_url,
    make_config,
    parse_response,
)
from tests.helpers import Admin, eventually

HANDSHAKE = (
    b"GET %s HTTP/1.1\r\nHost: gw\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n%s\r\n"
)
_ENDED = (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR)
# Far more than every socket buffer on the way can hold, so only flow control can stop it.
FLOOD_SIZE = 64 * 1024 * 1024
FLOOD = {"sent": 0}
DEAF: dict[str, asyncio.Event] = {}


async def _backend(request: web.BaseRequest) -> web.StreamResponse:
    """Echoes; 'headers' answers with the handshake's headers; /ws-refused says no; /ws-ticks
    sends a tick every 50 ms; /ws-bye says bye and closes the connection."""
    if request.path.startswith("/ws-refused"):
        return web.json_response({"backend": "no"}, status=403, headers={"X-Backend": "refused"})
    if request.headers.get("Upgrade", "").lower() != "websocket":
        return web.json_response({"upgrade": request.headers.get("Upgrade")})
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    if request.path.startswith("/ws-bye"):
        await ws.send_str("bye")
        assert request.transport is not None
        request.transport.close()  # before the client could answer a Close frame: ours ends first
        return ws
    if request.path.startswith("/ws-flood"):
        chunk = bytes(64 * 1024)
        while FLOOD["sent"] < FLOOD_SIZE:
            await ws.send_bytes(chunk)  # waits while the way to the client is full
            FLOOD["sent"] += len(chunk)
        await ws.receive()
        return ws
    if request.path.startswith("/ws-deaf"):
        await DEAF["until"].wait()  # reads nothing: what the client sends must wait
        return ws
    if request.path.startswith("/ws-ticks"):
        while not ws.closed:
            await ws.send_str("tick")
            await asyncio.sleep(0.05)
        return ws
    async for msg in ws:
        if msg.type == WSMsgType.TEXT and msg.data == "headers":
            await ws.send_json([[k, v] for k, v in request.headers.items()])
        elif msg.type == WSMsgType.TEXT:
            await ws.send_str(f"echo:{msg.data}")
        elif msg.type == WSMsgType.BINARY:
            await ws.send_bytes(msg.data)
    return ws


@pytest.fixture
async def backend(upstream_factory: UpstreamFactory) -> Upstream:
    return await upstream_factory(_backend)


async def _gateway(
    gateway_factory: GatewayFactory, backend: Upstream, *routes: dict[str, Any], **extra: Any
) -> RunningGateway:
    plain = {"path": "/plain", "upstream": "app"}
    return await gateway_factory(
        make_config({"app": {"targets": [backend.url]}}, [*routes, plain], **extra)
    )


def _ws(path: str, **fields: Any) -> dict[str, Any]:
    return {"path": path, "upstream": "app", "websocket": True, **fields}


async def _ended(ws: aiohttp.ClientWebSocketResponse, timeout: float = 5.0) -> int:
    """Read until the connection ends (the gateway closes TCP: it sends no Close frame);
    returns how many messages came before."""
    messages = 0
    async with asyncio.timeout(timeout):
        while (await ws.receive()).type not in _ENDED:
            messages += 1
    return messages


async def _handshake_then_plain(
    gw: RunningGateway, path: bytes, extra: bytes
) -> tuple[int, dict[str, str], bytes, bytes]:
    """A handshake that is not upgraded: its answer, then the head of the answer to a plain GET
    on the same connection, which stays HTTP."""
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    try:
        writer.write(HANDSHAKE % (path, extra))
        async with asyncio.timeout(5):
            head = await reader.readuntil(b"\r\n\r\n")
            status, headers, _ = parse_response(head)
            body = await reader.readexactly(int(headers["content-length"]))
        writer.write(b"GET /plain HTTP/1.1\r\nHost: gw\r\n\r\n")
        async with asyncio.timeout(5):
            second = await reader.readuntil(b"\r\n\r\n")
    finally:
        writer.close()
    return status, headers, body, second


async def test_text_and_binary_messages_are_relayed_both_ways(
    gateway_factory: GatewayFactory, backend: Upstream
) -> None:
    gw = await _gateway(gateway_factory, backend, _ws("/ws"))
    big = bytes(range(256)) * 8192  # 2 MiB: more than any socket buffer, so flow control works
    async with gw.session.ws_connect(f"{gw.url}/ws", headers={"X-Request-Id": "rid-ws"}) as ws:
        assert ws._response.headers["X-Request-Id"] == "rid-ws"
        await ws.send_str("hello")
        assert await ws.receive_str(timeout=5) == "echo:hello"
        await ws.send_bytes(b"\x00\xffbinary")
        assert await ws.receive_bytes(timeout=5) == b"\x00\xffbinary"
        await ws.send_bytes(big)
        assert await ws.receive_bytes(timeout=10) == big
        await ws.send_str("é" * 1000)
        assert await ws.receive_str(timeout=5) == "echo:" + "é" * 1000


async def test_a_client_that_does_not_read_stops_the_upstream_stream(
    gateway_factory: GatewayFactory, backend: Upstream
) -> None:
    FLOOD["sent"] = 0
    gw = await _gateway(gateway_factory, backend, _ws("/ws-flood"))
    async with gw.session.ws_connect(f"{gw.url}/ws-flood", max_msg_size=0) as ws:
        await asyncio.sleep(0.5)  # reading nothing
        held = FLOOD["sent"]
        assert held < FLOOD_SIZE / 2
        received = 0
        while received < FLOOD_SIZE:
            received += len(await ws.receive_bytes(timeout=10))
    assert received == FLOOD["sent"] == FLOOD_SIZE


async def test_an_upstream_that_does_not_read_stops_the_client_stream(
    gateway_factory: GatewayFactory, backend: Upstream
) -> None:
    gw = await _gateway(gateway_factory, backend, _ws("/ws-deaf"))
    sent = 0
    DEAF["until"] = asyncio.Event()
    closing = aiohttp.ClientWSTimeout(ws_close=0.1)  # the upstream will not answer a Close
    async with gw.session.ws_connect(f"{gw.url}/ws-deaf", timeout=closing) as ws:

        async def flood() -> None:
            nonlocal sent
            chunk = bytes(64 * 1024)
            while sent < FLOOD_SIZE:
                await ws.send_bytes(chunk)  # waits while the way to the upstream is full
                sent += len(chunk)

        task = asyncio.create_task(flood())
        await asyncio.sleep(0.5)
        assert not task.done()
        assert sent < FLOOD_SIZE / 2
        task.cancel()
        DEAF["until"].set()


@pytest.mark.parametrize(
    ("answer", "status", "body"),
    [
        (
            b"HTTP/1.1 400 Bad Request\r\nTransfer-Encoding: chunked\r\nX-B: 1\r\n\r\n"
            b"3\r\nnot\r\n4\r\n now\r\n0\r\n\r\n",
            400,
            b"not now",
        ),
        (b"HTTP/1.1 426 Upgrade Required\r\nX-B: 1\r\n\r\nuntil close", 426, b"until close"),
        (b"HTTP/1.1 400 No\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nno", 502, None),
        (b"HTTP/1.1 400 No\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", 502, None),
        (b"HTTP/1.1 101 Switching\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n", 502, None),
        (b"HTTP/1.1 101 Switching\r\n\r\n", 502, None),
        (b"", 504, None),  # no answer within the read timeout
    ],
)
async def test_the_upstream_answer_to_the_handshake_is_checked_like_any_answer(
    gateway_factory: GatewayFactory, answer: bytes, status: int, body: bytes | None
) -> None:
    async def respond(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(answer)
            if not answer.startswith(b"HTTP/1.1 426"):
                await reader.read()  # until the gateway lets go of the connection
        finally:
            writer.close()  # (for the 426: its body ends with the connection)
            await writer.wait_closed()

    server = await asyncio.start_server(respond, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        gw = await gateway_factory(
            make_config(
                {"app": {"targets": [f"http://127.0.0.1:{port}"]}},
                [_ws("/ws", timeouts={"read": 0.3})],
            )
        )
        async with gw.session.get(
            f"{gw.url}/ws",
            headers={
                "Upgrade": "websocket",
                "Connection": "Upgrade",
                "Sec-WebSocket-Version": "13",
            },
        ) as r:
            got = (r.status, await r.read())
    finally:
        server.close()
    assert got[0] == status
    if body is not None:
        assert got[1] == body
    else:
        assert got[1].startswith(b'{"error"')


async def test_the_handshake_carries_identity_headers_and_the_request_id(
    gateway_factory: GatewayFactory, backend: Upstream
) -> None:
    rules = {"request": {"set": {"X-Tenant": "t1"}}, "response": {"set": {"X-Route": "chat"}}}
    route = _ws("/ws", auth="key", scopes=["chat"], headers=rules)
    gw = await _gateway(gateway_factory, backend, route, plans={"p": {}})
    admin = Admin(gw)
    org = await admin.org("acme", plan="p")
    key = await admin.key("acme", scopes=["chat"])
    spoofed = {"X-Org-Id": "org_evil", "X_Org_Id": "org_evil", "X-Request-Id": "rid-42"}
    auth = {"Authorization": f"Bearer {key['secret']}", **spoofed}
    async with gw.session.ws_connect(f"{gw.url}/ws?room=1", headers=auth) as ws:
        assert ws._response.headers["X-Route"] == "chat"
        assert ws._response.headers["X-Request-Id"] == "rid-42"
        await ws.send_str("headers")
        seen = await ws.receive_json(timeout=5)
    names = [name.lower() for name, _ in seen]
    values = {name.lower(): value for name, value in seen}
    assert names.count("x-org-id") == 1
    assert values["x-org-id"] == org["id"]
    assert values["x-org-slug"] == "acme"
    assert values["x-api-key-id"] == key["id"]
    assert values["x-scopes"] == "chat"
    assert values["x-request-id"] == "rid-42"
    assert values["x-forwarded-for"] == "127.0.0.1"
    assert values["x-tenant"] == "t1"
    assert (values["upgrade"], values["connection"]) == ("websocket", "Upgrade")
    assert "sec-websocket-key" in values
    assert "authorization" not in values
    assert "x_org_id" not in names
    assert backend.seen[0].raw_path == "/ws?room=1"


@pytest.mark.parametrize("secret", [None, "fw_live_notarealkey"])
async def test_a_handshake_without_a_valid_key_gets_401_and_no_upgrade(
    gateway_factory: GatewayFactory, backend: Upstream, secret: str | None
) -> None:
    gw = await _gateway(gateway_factory, backend, _ws("/ws", auth="key"))
    extra = b"" if secret is None else b"Authorization: Bearer %s\r\n" % secret.encode()
    status, headers, body, second = await _handshake_then_plain(gw, b"/ws", extra)
    assert status == 401
    assert "upgrade" not in headers
    assert b'"code":"unauthorized"' in body
    assert headers["www-authenticate"].startswith("Bearer")
    assert parse_response(second)[0] == 200
    assert [s.raw_path for s in backend.seen] == ["/plain"]  # the handshake never got there


async def test_a_handshake_without_the_scope_gets_403(
    gateway_factory: GatewayFactory, backend: Upstream
) -> None:
    gw = await _gateway(
        gateway_factory, backend, _ws("/ws", auth="key", scopes=["chat"]), plans={"p": {}}
    )
    admin = Admin(gw)
    await admin.org("acme", plan="p")
    key = await admin.key("acme", scopes=["other"])
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await gw.session.ws_connect(
            f"{gw.url}/ws", headers={"Authorization": f"Bearer {key['secret']}"}
        )
    assert refused.value.status == 403
    assert backend.seen == []


async def test_a_rate_limited_handshake_gets_429(
    gateway_factory: GatewayFactory, backend: Upstream
) -> None:
    plan = {"rate_limit": {"requests": 1, "per": "1h"}}
    gw = await _gateway(gateway_factory, backend, _ws("/ws", auth="key"), plans={"p": plan})
    admin = Admin(gw)
    await admin.org("acme", plan="p")
    auth = {"Authorization": f"Bearer {(await admin.key('acme'))['secret']}"}
    async with gw.session.ws_connect(f"{gw.url}/ws", headers=auth) as ws:
        assert ws._response.headers["RateLimit-Policy"] == '"key";q=1;w=3600'
        await ws.send_str("one")
        assert await ws.receive_str(timeout=5) == "echo:one"
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await gw.session.ws_connect(f"{gw.url}/ws", headers=auth)
    assert refused.value.status == 429
    assert refused.value.headers is not None
    assert "Retry-After" in refused.value.headers
    assert len(backend.seen) == 1


async def test_an_upstream_refusal_of_the_upgrade_is_relayed(
    gateway_factory: GatewayFactory, backend: Upstream, logs: LogLines
) -> None:
    gw = await _gateway(gateway_factory, backend, _ws("/ws-refused"))
    raw = await _raw_once(gw, HANDSHAKE % (b"/ws-refused", b""))
    status, headers, body = parse_response(raw)
    assert (status, headers["x-backend"], body) == (403, "refused", b'{"backend": "no"}')
    assert "x-request-id" in headers
    [line] = await eventually(lambda: logs.events("request"))
    assert (line["status"], line["websocket"]) == (403, "upstream_refused")
    text = await gw.metrics()
    assert (
        'gateway_websocket_sessions_total{outcome="upstream_refused",route="/ws-refused"} 1.0'
        in text
    )


async def test_an_unreachable_upstream_gets_502(gateway_factory: GatewayFactory) -> None:
    gw = await gateway_factory(make_config({"app": {"targets": [closed_port_url()]}}, [_ws("/ws")]))
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await gw.session.ws_connect(f"{gw.url}/ws")
    assert refused.value.status == 502
    raw = await _raw_once(gw, HANDSHAKE % (b"/ws", b""))
    assert b'"code":"bad_gateway"' in raw
    text = await gw.metrics()
    assert 'gateway_websocket_sessions_total{outcome="upstream_failed",route="/ws"} 2.0' in text


async def test_an_idle_session_is_closed_after_websocket_idle(
    gateway_factory: GatewayFactory, backend: Upstream, logs: LogLines
) -> None:
    gw = await _gateway(gateway_factory, backend, _ws("/ws", timeouts={"websocket_idle": 0.5}))
    async with gw.session.ws_connect(f"{gw.url}/ws", autoping=False) as ws:
        started = time.monotonic()
        for _ in range(8):  # traffic keeps it open past the idle time
            await asyncio.sleep(0.1)
            await ws.send_str("x")
            assert await ws.receive_str(timeout=5) == "echo:x"
        quiet = time.monotonic()  # the last byte either way
        assert quiet - started > 0.75
        await _ended(ws)
        assert 0.45 < time.monotonic() - quiet < 3
    [line] = await eventually(lambda: logs.events("request"))
    assert (line["status"], line["websocket"]) == (101, "idle_timeout")


async def test_a_session_is_closed_after_websocket_total_whatever_its_traffic(
    gateway_factory: GatewayFactory, backend: Upstream, logs: LogLines
) -> None:
    route = _ws("/ws-ticks", timeouts={"websocket_idle": 0.3, "websocket_total": 0.7})
    gw = await _gateway(gateway_factory, backend, route)
    async with gw.session.ws_connect(f"{gw.url}/ws-ticks") as ws:
        started = time.monotonic()
        ticks = await _ended(ws)
        assert 0.65 < time.monotonic() - started < 4  # past twice the idle time
    assert ticks >= 4  # a tick every 50 ms all along
    [line] = await eventually(lambda: logs.events("request"))
    assert line["websocket"] == "total_timeout"


async def test_sessions_are_counted_and_logged_once_when_they_end(
    gateway_factory: GatewayFactory, backend: Upstream, logs: LogLines
) -> None:
    gw = await _gateway(gateway_factory, backend, _ws("/ws", name="chat"), _ws("/ws-bye"))
    async with gw.session.ws_connect(f"{gw.url}/ws", headers={"User-Agent": "t/1"}) as ws:
        await ws.send_str("hello")
        assert await ws.receive_str(timeout=5) == "echo:hello"
        assert 'gateway_websocket_open_sessions{route="chat"} 1.0' in await gw.metrics()
        assert logs.events("request") == []  # the line is written when the session ends
    # Which side's TCP close comes first after a Close handshake is a race; these are not.
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    writer.write(HANDSHAKE % (b"/ws", b""))
    async with asyncio.timeout(5):
        assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 101 ")
    writer.close()
    async with gw.session.ws_connect(f"{gw.url}/ws-bye") as ws:
        assert await ws.receive_str(timeout=5) == "bye"
        await _ended(ws)

    def written() -> list[dict[str, Any]]:
        lines = logs.events("request")
        return lines if len(lines) == 3 else []

    first, raw, bye = await eventually(written)
    assert (first["status"], first["route"]) == (101, "chat")
    assert first["websocket"] in ("client_closed", "upstream_closed")
    assert (first["method"], first["path"], first["user_agent"]) == ("GET", "/ws", "t/1")
    # A masked 5-byte text frame (6 + 5) and a Close frame (6 + 2) from the client.
    assert first["bytes_in"] >= 11
    assert first["bytes_out"] >= len(b"\x81\x0aecho:hello")
    assert first["duration_ms"] >= first["upstream_ms"] > 0
    assert first["upstream"] == backend.url
    assert (raw["websocket"], raw["bytes_in"], raw["bytes_out"]) == ("client_closed", 0, 0)
    assert (bye["route"], bye["websocket"]) == ("/ws-bye", "upstream_closed")
    text = await gw.metrics()
    closed_by_client = 1 + (first["websocket"] == "client_closed")
    assert (
        f'gateway_websocket_sessions_total{{outcome="client_closed",route="chat"}}'
        f" {closed_by_client}.0" in text
    )
    assert 'gateway_websocket_sessions_total{outcome="upstream_closed",route="/ws-bye"} 1.0' in text
    assert 'gateway_websocket_open_sessions{route="chat"} 0.0' in text
    assert 'gateway_requests_total{method="GET",route="chat",status_class="1xx"} 2.0' in text
    # A session's length is not a request latency: the route's histogram never saw them.
    assert 'gateway_request_duration_seconds_count{method="GET",route="chat"}' not in text


async def test_a_route_without_websocket_forwards_an_upgrade_request_as_plain_http(
    gateway_factory: GatewayFactory, backend: Upstream
) -> None:
    """As before WebSocket routes existed: Upgrade and Connection are hop-by-hop, so the
    backend gets a plain GET, its answer is relayed and the connection stays HTTP."""
    gw = await _gateway(gateway_factory, backend)
    status, _, body, second = await _handshake_then_plain(gw, b"/plain", b"")
    assert (status, body) == (200, b'{"upgrade": null}')
    assert parse_response(second)[0] == 200
    assert backend.header_values(0, "Upgrade") == []
    assert backend.header_values(0, "Connection") == []
    assert backend.header_values(0, "Sec-WebSocket-Key") == ["dGhlIHNhbXBsZSBub25jZQ=="]
    with pytest.raises(aiohttp.WSServerHandshakeError):
        await gw.session.ws_connect(f"{gw.url}/plain")


async def test_gateway_stop_ends_an_open_session_without_waiting_out_the_drain(
    gateway_factory: GatewayFactory, backend: Upstream, logs: LogLines
) -> None:
    gw = await _gateway(gateway_factory, backend, _ws("/ws"), server={"drain_timeout": 30})
    async with gw.session.ws_connect(f"{gw.url}/ws") as ws:
        await ws.send_str("x")
        assert await ws.receive_str(timeout=5) == "echo:x"
        started = time.monotonic()
        stopping = asyncio.create_task(gw.process.stop())
        await _ended(ws)
        async with asyncio.timeout(5):
            await stopping
        assert time.monotonic() - started < 5
    [line] = [line for line in logs.events("request") if line.get("websocket")]
    assert line["websocket"] == "shutdown"


async def test_a_tls_upstream_is_verified_with_the_upstreams_ca_file(
    gateway_factory: GatewayFactory, tmp_path: Path
) -> None:
    cert_file, key_file = self_signed(tmp_path)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_file, key_file)
    runner = web.ServerRunner(web.Server(_backend, access_log=None), shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
    await site.start()
    target = f"https://127.0.0.1:{runner.addresses[0][1]}"
    try:
        trusted = {"targets": [target], "tls": {"ca_file": str(cert_file)}}
        gw = await gateway_factory(
            make_config(
                {"app": trusted, "other": {"targets": [target]}},
                [_ws("/ws"), {**_ws("/ws-untrusted"), "upstream": "other"}],
            )
        )
        async with gw.session.ws_connect(f"{gw.url}/ws") as ws:
            await ws.send_str("over tls")
            assert await ws.receive_str(timeout=5) == "echo:over tls"
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await gw.session.ws_connect(f"{gw.url}/ws-untrusted")  # the system's CAs only
        assert refused.value.status == 502
    finally:
        await runner.cleanup()


@pytest.mark.parametrize(
    ("route", "problem"),
    [
        (
            "{path: /a, upstream: app, timeouts: {websocket_idle: 1s}}",
            "routes[0].timeouts: websocket_idle applies only to a route with websocket: true",
        ),
        (
            "{path: /a, upstream: app, websocket: true, timeouts: {websocket_idle: 50ms}}",
            "routes[0].timeouts.websocket_idle: must be at least 100ms (got '50ms')",
        ),
        (
            "{path: /a, upstream: app, websocket: true, timeouts: {websocket_total: 8d}}",
            "routes[0].timeouts.websocket_total: must be at most 7d (got '8d')",
        ),
        (
            "{path: /a, upstream: app, websocket: true, methods: [POST]}",
            "routes[0].methods: a route with websocket: true must allow GET (the handshake)",
        ),
    ],
)
def test_websocket_config_errors_name_the_field(route: str, problem: str) -> None:
    text = f"upstreams: {{app: {{targets: ['http://127.0.0.1:1']}}}}\nroutes: [{route}]\n"
    with pytest.raises(ConfigError) as error:
        parse_config(text.encode(), source="t.yaml", env={})
    assert problem in str(error.value)


async def _raw_once(gw: RunningGateway, data: bytes) -> bytes:
    """One answer with a Content-Length body, read off a fresh connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    try:
        writer.write(data)
        async with asyncio.timeout(5):
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(parse_response(head)[1].get("content-length", "0"))
            return head + await reader.readexactly(length)
    finally:
        writer.close()
