"""The proxy through real HTTP: what reaches the upstream, and what the client gets back."""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from tests.conftest import (
    GatewayFactory,
    LogLines,
    RunningGateway,
    Upstream,
    UpstreamFactory,
    closed_port_url,
    make_config,
    parse_response,
    raw_request,
    read_one_response,
)
from tests.helpers import eventually, slow_upstream


def assert_envelope(body: dict[str, object], code: str, request_id: str) -> None:
    assert body == {
        "error": {"code": code, "message": body["error"]["message"], "request_id": request_id}
    }  # type: ignore[index]


async def test_get_is_forwarded_with_exact_path_and_query(
    gateway: RunningGateway, upstream: Upstream
) -> None:
    raw = await raw_request(
        gateway.port,
        b"GET /v1/a%20b/%C3%A9~x?q=%2F%2e&x HTTP/1.1\r\n"
        b"Host: api.example.com\r\nConnection: close\r\n\r\n",
    )
    status, headers, _ = parse_response(raw)
    assert status == 200
    assert upstream.seen[0].raw_path == "/v1/a%20b/%C3%A9~x?q=%2F%2e&x"
    assert upstream.header_values(0, "X-Forwarded-Host") == ["api.example.com"]
    assert upstream.header_values(0, "X-Request-Id") == [headers["x-request-id"]]


@pytest.mark.parametrize(
    "path",
    [
        b"/v1/%61dmin",
        b"/v1//admin",
        b"/v1/%2e%2e/admin",
        b"/v1/%2E%2E/admin",
        b"/v1/a%2fb",
        b"/v1/a%5cb",
        b"/v1/..;/admin",
        b"/v1/%252e%252e/admin",
        b"/v1/../admin",
    ],
)
async def test_ambiguous_paths_never_reach_the_upstream(
    gateway: RunningGateway, upstream: Upstream, path: bytes
) -> None:
    raw = await raw_request(
        gateway.port, b"GET " + path + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    status, headers, body = parse_response(raw)
    assert status == 400
    assert b'"code":"bad_request"' in body
    assert headers["x-request-id"]
    assert upstream.seen == []


async def test_absolute_form_target_routes_on_the_path_and_the_host_header(
    gateway: RunningGateway, upstream: Upstream
) -> None:
    raw = await raw_request(
        gateway.port,
        b"GET http://evil.example/v1/items?x=1 HTTP/1.1\r\n"
        b"Host: api.example.com\r\nConnection: close\r\n\r\n",
    )
    assert parse_response(raw)[0] == 200
    assert upstream.seen[0].raw_path == "/v1/items?x=1"
    assert upstream.header_values(0, "X-Forwarded-Host") == ["api.example.com"]


async def test_hop_by_hop_and_connection_named_headers_are_removed(
    gateway: RunningGateway, upstream: Upstream
) -> None:
    raw = await raw_request(
        gateway.port,
        b"GET /v1/items HTTP/1.1\r\nHost: x\r\n"
        b"Connection: close, X-Custom, X-Request-Id, X-Forwarded-For\r\n"
        b"X-Custom: secret\r\nKeep-Alive: timeout=5\r\nTE: trailers\r\n"
        b"Proxy-Authorization: Basic eA==\r\n"
        b"X-Request-Id: client-id-1\r\nX-Kept: yes\r\n\r\n",
    )
    assert parse_response(raw)[0] == 200
    names = {k.lower() for k, _ in upstream.seen[0].headers}
    assert {"x-custom", "keep-alive", "te", "proxy-authorization"}.isdisjoint(names)
    assert upstream.header_values(0, "X-Kept") == ["yes"]
    # Naming our headers in Connection cannot remove them: they are injected after the strip.
    assert upstream.header_values(0, "X-Request-Id") == ["client-id-1"]
    assert upstream.header_values(0, "X-Forwarded-For") == ["127.0.0.1"]


async def test_client_cannot_spoof_forwarded_headers_in_any_spelling(
    gateway: RunningGateway, upstream: Upstream
) -> None:
    raw = await raw_request(
        gateway.port,
        b"GET /v1/items HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        b"X-Forwarded-For: 6.6.6.6\r\nx-forwarded-for: 7.7.7.7\r\nX_Forwarded_For: 8.8.8.8\r\n"
        b"X-Forwarded-Proto: https\r\nX-Forwarded-Host: evil\r\nForwarded: for=6.6.6.6\r\n"
        b"X-Real-IP: 6.6.6.6\r\nX_Request_Id: spoofed\r\n\r\n",
    )
    assert parse_response(raw)[0] == 200
    headers = [(k.lower().replace("_", "-"), v) for k, v in upstream.seen[0].headers]
    assert [v for k, v in headers if k == "x-forwarded-for"] == ["127.0.0.1"]
    assert [v for k, v in headers if k == "x-forwarded-proto"] == ["http"]
    assert [v for k, v in headers if k == "x-forwarded-host"] == ["x"]
    assert [v for k, v in headers if k == "forwarded"] == []
    assert [v for k, v in headers if k == "x-real-ip"] == []
    assert len([v for k, v in headers if k == "x-request-id"]) == 1
    assert "spoofed" not in [v for _, v in headers]


async def test_forwarded_headers_are_believed_from_trusted_proxies(
    gateway_factory: GatewayFactory, upstream: Upstream
) -> None:
    gw = await gateway_factory(
        make_config(
            {"app": {"targets": [upstream.url]}},
            [{"path": "/x", "upstream": "app"}],
            trusted_proxies=["127.0.0.0/8"],
        )
    )
    raw = await raw_request(
        gw.port,
        b"GET /x HTTP/1.1\r\nHost: lb\r\nConnection: close\r\n"
        b"X-Forwarded-For: 203.0.113.9, 10.1.1.1\r\n"
        b"X-Forwarded-Proto: https\r\nX-Forwarded-Host: api.example.com\r\n\r\n",
    )
    assert parse_response(raw)[0] == 200
    assert upstream.header_values(0, "X-Forwarded-For") == ["203.0.113.9, 10.1.1.1, 127.0.0.1"]
    assert upstream.header_values(0, "X-Forwarded-Proto") == ["https"]
    assert upstream.header_values(0, "X-Forwarded-Host") == ["api.example.com"]


async def test_request_ids_are_kept_when_safe_and_replaced_otherwise(
    gateway_factory: GatewayFactory, upstream: Upstream
) -> None:
    gw = await gateway_factory(
        make_config(
            {"app": {"targets": [upstream.url]}},
            [{"path": "/x", "upstream": "app"}],
            server={"max_header_size": "16KiB"},
        )
    )
    async with gw.session.get(f"{gw.url}/x", headers={"X-Request-Id": "abc-123"}) as r:
        assert r.headers["X-Request-Id"] == "abc-123"
    big = "a" * 10_240
    async with gw.session.get(f"{gw.url}/x", headers={"X-Request-Id": big}) as r:
        replaced = r.headers["X-Request-Id"]
    assert replaced != big
    assert len(replaced) == 28
    assert upstream.header_values(1, "X-Request-Id") == [replaced]
    # A CR inside a header value is refused by the HTTP parser: an envelope, nothing reflected.
    raw = await raw_request(
        gw.port, b"GET /x HTTP/1.1\r\nHost: x\r\nX-Request-Id: a\rX-Evil: 1\r\n\r\n"
    )
    status, headers, body = parse_response(raw)
    assert status == 400
    assert "x-evil" not in headers
    assert b'"code":"bad_request"' in body


async def test_unknown_path_and_wrong_method_get_the_envelope(
    gateway_factory: GatewayFactory, upstream: Upstream
) -> None:
    gateway = await gateway_factory(
        make_config(
            {"app": {"targets": [upstream.url]}},
            [{"path": "/v1/items", "upstream": "app", "methods": ["GET", "POST"]}],
        )
    )
    async with gateway.session.get(f"{gateway.url}/nope") as r:
        assert r.status == 404
        assert_envelope(await r.json(), "route_not_found", r.headers["X-Request-Id"])
    async with gateway.session.delete(f"{gateway.url}/v1/items") as r:
        assert r.status == 405
        assert r.headers["Allow"] == "GET, POST"
        assert_envelope(await r.json(), "method_not_allowed", r.headers["X-Request-Id"])


async def test_upstream_down_is_502_without_address(gateway_factory: GatewayFactory) -> None:
    dead = closed_port_url()
    gw = await gateway_factory(
        make_config({"app": {"targets": [dead]}}, [{"path": "/x", "upstream": "app"}])
    )
    async with gw.session.get(f"{gw.url}/x") as r:
        assert r.status == 502
        text = await r.text()
    assert '"code":"bad_gateway"' in text
    assert "127.0.0.1" not in text
    assert dead.rsplit(":", 1)[1] not in text


async def test_slow_upstream_is_504(
    gateway_factory: GatewayFactory, upstream_factory: UpstreamFactory
) -> None:
    up = await upstream_factory(slow_upstream(2, "late"))
    gw = await gateway_factory(
        make_config(
            {"app": {"targets": [up.url], "timeouts": {"read": "300ms"}}},
            [
                {"path": "/x", "upstream": "app"},
                {"path": "/y", "upstream": "app", "timeouts": {"read": "5s"}},
            ],
        )
    )
    async with gw.session.get(f"{gw.url}/x") as r:
        assert r.status == 504
        assert (await r.json())["error"]["code"] == "gateway_timeout"
    # A per-route override wins over the upstream's timeout.
    async with gw.session.get(f"{gw.url}/y") as r:
        assert r.status == 200
        assert await r.text() == "late"


async def test_get_tries_the_next_target_once_but_post_never(
    gateway_factory: GatewayFactory, upstream: Upstream
) -> None:
    dead = closed_port_url()
    gw = await gateway_factory(
        make_config(
            {"app": {"targets": [dead, upstream.url], "health": {"failures": 100}}},
            [{"path": "/x", "upstream": "app"}],
        )
    )
    for _ in range(6):
        async with gw.session.get(f"{gw.url}/x") as r:
            assert r.status == 200
    statuses = []
    for _ in range(4):
        async with gw.session.post(f"{gw.url}/x", data=b"{}") as r:
            statuses.append(r.status)
    assert sorted(statuses) == [200, 200, 502, 502]  # round robin: half went to the dead target
    assert [s.method for s in upstream.seen].count("POST") == 2


async def test_round_robin_spreads_requests(
    gateway_factory: GatewayFactory, upstream_factory: UpstreamFactory
) -> None:
    a, b = await upstream_factory(), await upstream_factory()
    gw = await gateway_factory(
        make_config({"app": {"targets": [a.url, b.url]}}, [{"path": "/x", "upstream": "app"}])
    )
    for _ in range(10):
        async with gw.session.get(f"{gw.url}/x") as r:
            assert r.status == 200
    assert (len(a.seen), len(b.seen)) == (5, 5)


async def test_redirects_are_passed_back_not_followed(
    gateway_factory: GatewayFactory, upstream_factory: UpstreamFactory
) -> None:
    async def redirect(request: web.BaseRequest) -> web.Response:
        return web.Response(status=302, headers={"Location": "http://127.0.0.1:1/elsewhere"})

    up = await upstream_factory(redirect)
    gw = await gateway_factory(
        make_config({"app": {"targets": [up.url]}}, [{"path": "/x", "upstream": "app"}])
    )
    async with gw.session.get(f"{gw.url}/x", allow_redirects=False) as r:
        assert r.status == 302
        assert r.headers["Location"] == "http://127.0.0.1:1/elsewhere"
    assert len(up.seen) == 1


async def test_response_headers_and_encoded_bodies_pass_through(
    gateway_factory: GatewayFactory, upstream_factory: UpstreamFactory
) -> None:
    import gzip

    payload = gzip.compress(b"hello " * 1000)

    async def compressed(request: web.BaseRequest) -> web.Response:
        return web.Response(
            body=payload,
            headers={
                "Content-Encoding": "gzip",
                "Content-Type": "text/plain",
                "Set-Cookie": "a=1",
                "Connection": "X-Secret-Hop",
                "X-Secret-Hop": "1",
                "X-Request-Id": "upstream-id",
            },
        )

    up = await upstream_factory(compressed)
    gw = await gateway_factory(
        make_config({"app": {"targets": [up.url]}}, [{"path": "/x", "upstream": "app"}])
    )
    async with gw.session.get(f"{gw.url}/x", headers={"Accept-Encoding": "gzip"}) as r:
        assert r.status == 200
        assert await r.read() == payload  # byte for byte, not decompressed
        assert r.headers["Content-Encoding"] == "gzip"
        assert r.headers["Set-Cookie"] == "a=1"
        assert "X-Secret-Hop" not in r.headers
        assert r.headers["X-Request-Id"] != "upstream-id"
    # Nothing the client did not send is invented for the upstream.
    assert up.header_values(0, "Accept-Encoding") == ["gzip"]
    assert up.header_values(0, "User-Agent") != ["Python/3 aiohttp"]


async def test_head_and_no_content_responses(
    gateway_factory: GatewayFactory, upstream_factory: UpstreamFactory
) -> None:
    async def handler(request: web.BaseRequest) -> web.Response:
        if request.method == "DELETE":
            return web.Response(status=204)
        return web.Response(body=b"x" * 100)

    up = await upstream_factory(handler)
    gw = await gateway_factory(
        make_config({"app": {"targets": [up.url]}}, [{"path": "/x", "upstream": "app"}])
    )
    async with gw.session.head(f"{gw.url}/x") as r:
        assert r.status == 200
        assert r.headers["Content-Length"] == "100"
        assert await r.read() == b""
    async with gw.session.delete(f"{gw.url}/x") as r:
        assert r.status == 204
        assert await r.read() == b""
    async with gw.session.get(f"{gw.url}/x") as r:  # the connection is still usable
        assert await r.read() == b"x" * 100


async def test_upload_is_streamed_and_arrives_intact(
    gateway: RunningGateway, upstream: Upstream
) -> None:
    body = os.urandom(8 * 1024 * 1024)

    async def chunks() -> AsyncIterator[bytes]:
        for i in range(0, len(body), 256 * 1024):
            yield body[i : i + 256 * 1024]

    async with gateway.session.post(f"{gateway.url}/v1/items", data=chunks()) as r:  # chunked
        assert r.status == 200
    async with gateway.session.post(
        f"{gateway.url}/v1/items", data=io.BytesIO(body)
    ) as r:  # Content-Length
        assert r.status == 200
    digest = hashlib.sha256(body).hexdigest()
    assert [(s.body_size, s.body_sha256) for s in upstream.seen] == [(len(body), digest)] * 2
    assert upstream.header_values(0, "Transfer-Encoding") == ["chunked"]
    assert upstream.header_values(1, "Content-Length") == [str(len(body))]


async def test_body_over_the_limit_is_413_declared_or_chunked(
    gateway_factory: GatewayFactory, upstream: Upstream
) -> None:
    gw = await gateway_factory(
        make_config(
            {"app": {"targets": [upstream.url]}},
            [{"path": "/x", "upstream": "app", "max_body_size": "1MiB"}],
        )
    )
    async with gw.session.post(f"{gw.url}/x", data=io.BytesIO(b"a" * (1024 * 1024 + 1))) as r:
        assert r.status == 413
        assert (await r.json())["error"]["code"] == "payload_too_large"
    assert upstream.seen == []  # refused on Content-Length, before any upstream contact

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(40):
            yield b"b" * 65536

    async with gw.session.post(f"{gw.url}/x", data=chunks()) as r:
        assert r.status == 413
        assert (await r.json())["error"]["code"] == "payload_too_large"
    # Whatever reached the upstream was cut off before the limit and never completed.
    assert all(s.body_size <= 1024 * 1024 for s in upstream.seen)
    async with gw.session.post(f"{gw.url}/x", data=b"small") as r:
        assert r.status == 200


async def _truncating_upstream(chunked: bool) -> tuple[asyncio.Server, int]:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        if chunked:
            writer.write(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                + b"400\r\n"
                + b"x" * 1024
                + b"\r\n"
            )
        else:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"x" * 1024)
        await writer.drain()
        await asyncio.sleep(0.05)  # real time: the first bytes reach the gateway before the reset
        writer.transport.abort()  # reset mid-body

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


@pytest.mark.parametrize("chunked", [False, True])
async def test_upstream_reset_mid_body_is_never_a_complete_response(
    gateway_factory: GatewayFactory, chunked: bool
) -> None:
    server, port = await _truncating_upstream(chunked)
    try:
        gw = await gateway_factory(
            make_config(
                {"app": {"targets": [f"http://127.0.0.1:{port}"]}},
                [{"path": "/x", "upstream": "app"}],
            )
        )
        async with gw.session.get(f"{gw.url}/x") as r:
            assert r.status == 200
            with pytest.raises(aiohttp.ClientPayloadError):
                await r.read()
        raw = await raw_request(gw.port, b"GET /x HTTP/1.1\r\nHost: x\r\n\r\n")
        _head, _, body = raw.partition(b"\r\n\r\n")
        if chunked:
            assert not body.endswith(b"0\r\n\r\n")
        else:
            assert len(body) < 100000
    finally:
        server.close()


async def test_small_body_cut_short_by_the_upstream_is_a_clean_502(
    gateway_factory: GatewayFactory,
) -> None:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2000\r\n\r\n" + b"x" * 1000)
        await writer.drain()
        writer.transport.abort()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        port = server.sockets[0].getsockname()[1]
        gw = await gateway_factory(
            make_config(
                {"app": {"targets": [f"http://127.0.0.1:{port}"]}},
                [{"path": "/x", "upstream": "app"}],
            )
        )
        async with gw.session.get(f"{gw.url}/x") as r:
            assert r.status == 502
            assert (await r.json())["error"]["code"] == "bad_gateway"
    finally:
        server.close()


async def test_large_download_is_streamed(
    gateway_factory: GatewayFactory, upstream_factory: UpstreamFactory
) -> None:
    size = 64 * 1024 * 1024

    async def big(request: web.BaseRequest) -> web.StreamResponse:
        response = web.StreamResponse()
        response.content_length = size
        await response.prepare(request)
        block = b"z" * (1024 * 1024)
        for _ in range(size // len(block)):
            await response.write(block)
        return response

    up = await upstream_factory(big)
    gw = await gateway_factory(
        make_config({"app": {"targets": [up.url]}}, [{"path": "/x", "upstream": "app"}])
    )
    received = 0
    async with gw.session.get(f"{gw.url}/x") as r:
        assert r.headers["Content-Length"] == str(size)
        async for chunk in r.content.iter_any():
            received += len(chunk)
    assert received == size


async def test_target_base_path_is_prepended(
    gateway_factory: GatewayFactory, upstream: Upstream
) -> None:
    gw = await gateway_factory(
        make_config(
            {"app": {"targets": [f"{upstream.url}/api/"]}},
            [{"path": "/v1/{rest:.*}", "upstream": "app"}],
        )
    )
    async with gw.session.get(f"{gw.url}/v1/a%2Bb?x=1") as r:
        assert r.status == 200
    assert upstream.seen[0].raw_path == "/api/v1/a%2Bb?x=1"


async def test_preserve_host_sends_the_client_host(
    gateway_factory: GatewayFactory, upstream: Upstream
) -> None:
    gw = await gateway_factory(
        make_config(
            {
                "a": {"targets": [upstream.url], "preserve_host": True},
                "b": {"targets": [upstream.url]},
            },
            [{"path": "/a", "upstream": "a"}, {"path": "/b", "upstream": "b"}],
        )
    )
    for path in ("/a", "/b"):
        async with gw.session.get(f"{gw.url}{path}", headers={"Host": "api.example.com"}) as r:
            assert r.status == 200
    assert upstream.header_values(0, "Host") == ["api.example.com"]
    assert upstream.header_values(1, "Host") == [f"127.0.0.1:{upstream.port}"]


async def test_client_hanging_up_mid_response_is_a_499_not_a_server_error(
    gateway_factory: GatewayFactory, upstream_factory: UpstreamFactory, logs: LogLines
) -> None:
    finished = asyncio.Event()

    async def slow_stream(request: web.BaseRequest) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        try:
            for _ in range(50):
                await response.write(b"x" * 65536)
                await asyncio.sleep(0.02)  # a slow stream, still going when the client leaves
        finally:
            finished.set()
        return response

    up = await upstream_factory(slow_stream)
    gw = await gateway_factory(
        make_config({"app": {"targets": [up.url]}}, [{"path": "/x", "upstream": "app"}])
    )
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    writer.write(b"GET /x HTTP/1.1\r\nHost: x\r\n\r\n")
    await reader.readuntil(b"\r\n\r\n")
    writer.transport.abort()  # the client gives up mid-body
    await eventually(lambda: logs.events("request"))
    [line] = logs.events("request")
    assert line["status"] == 499
    assert logs.events("unhandled_error") == []
    assert logs.events("upstream_body_failed") == []
    text = await gw.metrics()
    assert 'gateway_requests_total{method="GET",route="/x",status_class="4xx"} 1.0' in text
    assert "gateway_upstream_errors_total{" not in text


async def test_expect_100_continue_is_answered_once_the_request_is_accepted(
    gateway: RunningGateway, upstream: Upstream
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
    writer.write(
        b"POST /v1/items HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n"
    )
    async with asyncio.timeout(2):
        interim = await reader.readuntil(b"\r\n\r\n")
    assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
    writer.write(b"hello")
    status, _, _ = parse_response(await read_one_response(reader))
    writer.close()
    assert status == 200
    assert upstream.seen[0].body_size == 5
    # Passed on, so the upstream may refuse before the body is sent (this one never sends
    # 100 Continue: the body went after the short wait for it).
    assert upstream.header_values(0, "Expect") == ["100-continue"]


async def test_expect_100_continue_is_not_sent_for_a_refused_request(
    gateway_factory: GatewayFactory, upstream: Upstream
) -> None:
    gw = await gateway_factory(
        make_config(
            {"app": {"targets": [upstream.url]}},
            [{"path": "/x", "upstream": "app", "max_body_size": 10}],
        )
    )
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    writer.write(
        b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 50\r\nExpect: 100-continue\r\n\r\n"
    )
    status, _, _ = parse_response(await read_one_response(reader))
    writer.close()
    assert status == 413
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    writer.write(b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nExpect: magic\r\n\r\n")
    status, _, body = parse_response(await read_one_response(reader))
    writer.close()
    assert status == 417
    assert b'"code":"expectation_failed"' in body
