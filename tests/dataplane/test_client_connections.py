"""The data plane's HTTP/1.1 server, seen from raw client sockets: pipelining, HTTP/1.0,
request framing, clients that leave early. (Deadlines: test_slow_clients; malformed input
at large: test_fuzz.)"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from typing import Any

import pytest
from aiohttp import web

from gateway.http.protocol import HttpServer
from gateway.http.request import Request
from tests.conftest import (
    GatewayFactory,
    LogLines,
    RunningGateway,
    Upstream,
    UpstreamFactory,
    make_config,
    parse_response,
    raw_request,
    read_one_response,
)
from tests.helpers import Admin


async def _gateway(factory: GatewayFactory, upstream: Upstream, **extra: Any) -> RunningGateway:
    return await factory(
        make_config(
            {"app": {"targets": [upstream.url]}},
            [{"path": "/v1/{rest:.*}", "upstream": "app"}],
            **extra,
        )
    )


def _split(raw: bytes) -> list[tuple[int, dict[str, str], bytes]]:
    """Consecutive Content-Length responses, as one connection carried them."""
    answers = []
    while raw:
        head, _, rest = raw.partition(b"\r\n\r\n")
        status, headers, _ = parse_response(head + b"\r\n\r\n")
        length = int(headers["content-length"])
        answers.append((status, headers, rest[:length]))
        raw = rest[length:]
    return answers


async def test_pipelined_requests_are_answered_in_order(
    gateway_factory: GatewayFactory, upstream: Upstream
) -> None:
    gw = await _gateway(gateway_factory, upstream)
    requests = b"".join(
        f"GET /v1/{n} HTTP/1.1\r\nHost: gw\r\n\r\n".encode() for n in ("a", "b", "c")
    )
    raw = await raw_request(
        gw.port, requests + b"GET /v1/d HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n"
    )
    answers = _split(raw)
    assert [status for status, _, _ in answers] == [200] * 4
    assert [body for _, _, body in answers] == [
        f'{{"ok": true, "path": "/v1/{n}"}}'.encode() for n in ("a", "b", "c", "d")
    ]
    assert "connection" not in answers[0][1]
    assert answers[-1][1]["connection"] == "close"
    assert [seen.raw_path for seen in upstream.seen] == ["/v1/a", "/v1/b", "/v1/c", "/v1/d"]


async def test_http_1_0_clients_get_no_chunks_and_keep_alive_only_when_they_ask(
    gateway_factory: GatewayFactory, upstream_factory: UpstreamFactory
) -> None:
    async def streamed(request: web.BaseRequest) -> web.StreamResponse:
        response = web.StreamResponse()  # no length: chunked to us
        await response.prepare(request)
        await response.write(b"first,")
        await response.write(b"second")
        await response.write_eof()
        return response

    gw = await _gateway(gateway_factory, await upstream_factory(streamed))
    # Unknown length: the end of the connection ends the body, as HTTP/1.0 has it.
    raw = await raw_request(
        gw.port, b"GET /v1/s HTTP/1.0\r\nHost: gw\r\nConnection: keep-alive\r\n\r\n"
    )
    status, headers, body = parse_response(raw)
    assert status == 200
    assert "transfer-encoding" not in headers
    assert headers["connection"] == "close"
    assert body == b"first,second"
    # To HTTP/1.1 the same answer is chunked, and the connection stays open.
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    try:
        writer.write(b"GET /v1/s HTTP/1.1\r\nHost: gw\r\n\r\n")
        async with asyncio.timeout(5):
            head = await reader.readuntil(b"\r\n\r\n")
            assert parse_response(head)[1]["transfer-encoding"] == "chunked"
            assert (
                await reader.readuntil(b"0\r\n\r\n") == b"6\r\nfirst,\r\n6\r\nsecond\r\n0\r\n\r\n"
            )
        # An HTTP/1.0 request that asks for keep-alive, to an answer of known length, gets it.
        writer.write(b"GET /nope HTTP/1.0\r\nHost: gw\r\nConnection: keep-alive\r\n\r\n")
        status, headers, _ = parse_response(await read_one_response(reader))
        assert status == 404
        assert headers["connection"] == "keep-alive"
        writer.write(b"GET /nope HTTP/1.0\r\nHost: gw\r\n\r\n")
        status, headers, body = parse_response(await read_one_response(reader))
        assert status == 404
        assert headers["connection"] == "close"
        assert b'"code":"route_not_found"' in body
        assert headers["date"].endswith(" GMT")
        async with asyncio.timeout(5):
            assert await reader.read() == b""
    finally:
        writer.close()


@pytest.mark.parametrize(
    "framing",
    [
        b"Content-Length: 3\r\nTransfer-Encoding: chunked\r\n",
        b"Transfer-Encoding: chunked\r\nContent-Length: 3\r\n",
        b"Content-Length: 3\r\nContent-Length: 3\r\n",
        b"Content-Length: 3\r\nContent-Length: 4\r\n",
        b"Transfer-Encoding: gzip, chunked\r\n",
        b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
        b"Transfer-Encoding: identity\r\n",
        b"Content-Length: +3\r\n",
    ],
)
async def test_request_framing_two_parties_could_read_differently_is_refused(
    gateway_factory: GatewayFactory, upstream: Upstream, framing: bytes
) -> None:
    """SECURITY: request smuggling. The backend never sees such a request, and nothing after
    it on the connection is read as another."""
    gw = await _gateway(gateway_factory, upstream)
    smuggled = b"GET /v1/smuggled HTTP/1.1\r\nHost: gw\r\n\r\n"
    raw = await raw_request(
        gw.port,
        b"POST /v1/x HTTP/1.1\r\nHost: gw\r\n" + framing + b"\r\n3\r\nabc\r\n0\r\n\r\n" + smuggled,
    )
    status, headers, body = parse_response(raw)
    assert status == 400
    assert headers["connection"] == "close"
    assert b'"code":"bad_request"' in body
    assert raw.count(b"HTTP/1.1 ") == 1
    assert upstream.seen == []


async def test_a_client_that_leaves_before_its_answer_costs_no_error(
    gateway_factory: GatewayFactory, upstream_factory: UpstreamFactory, logs: LogLines
) -> None:
    answered = asyncio.Event()

    async def slow(request: web.BaseRequest) -> web.StreamResponse:
        await asyncio.sleep(0.3)
        answered.set()
        return web.json_response({"late": True})

    gw = await _gateway(gateway_factory, await upstream_factory(slow))
    for path in (b"/v1/slow", b"/nope"):
        _, writer = await asyncio.open_connection("127.0.0.1", gw.port)
        writer.write(b"GET " + path + b" HTTP/1.1\r\nHost: gw\r\n\r\n")
        await writer.drain()
        writer.transport.abort()  # gone before any answer: a reset, not a polite close
    async with asyncio.timeout(5):
        await answered.wait()
    await asyncio.sleep(0.2)
    errors = [line for line in logs.events() if line.get("level") in ("error", "critical")]
    assert errors == []
    async with gw.session.get(f"{gw.url}/v1/after") as r:
        assert r.status == 200


async def test_a_client_that_pipelines_without_reading_gets_no_more_answers_queued(
    gateway_factory: GatewayFactory, upstream_factory: UpstreamFactory
) -> None:
    """Answers wait for the client to read the ones before: a client that sends and never
    reads costs a bounded buffer, not one answer per request it sent."""
    answer = b"x" * 60_000

    async def large(request: web.BaseRequest) -> web.StreamResponse:
        return web.Response(body=answer)

    gw = await _gateway(gateway_factory, await upstream_factory(large))
    server = gw.process.data_server
    assert server is not None
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16_384)  # little room in the kernel
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", gw.port))
    reader, writer = await asyncio.open_connection(sock=sock)
    try:
        count = 200  # 12 MB of answers
        writer.write(b"GET /v1/big HTTP/1.1\r\nHost: gw\r\n\r\n" * count)
        await writer.drain()
        await asyncio.sleep(1.0)
        buffered = [
            conn.transport.get_write_buffer_size()
            for conn in server.connections
            if conn.transport is not None
        ]
        assert max(buffered) < 1024 * 1024
        async with asyncio.timeout(20):
            for _ in range(count):
                status, _, body = parse_response(await read_one_response(reader))
                assert status == 200
                assert body == answer
    finally:
        writer.close()


async def test_an_upgrade_request_answered_without_switching_leaves_http_going(
    gateway_factory: GatewayFactory, upstream: Upstream
) -> None:
    """llhttp stops after a request that asks to switch protocols; when the answer does not
    switch, the requests after it are read and answered all the same."""
    gw = await _gateway(gateway_factory, upstream)
    raw = await raw_request(
        gw.port,
        b"GET /v1/a HTTP/1.1\r\nHost: gw\r\nConnection: Upgrade\r\nUpgrade: foo\r\n\r\n"
        b"GET /v1/b HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n",
    )
    answers = _split(raw)
    assert [status for status, _, _ in answers] == [200, 200]
    assert [seen.raw_path for seen in upstream.seen] == ["/v1/a", "/v1/b"]


@pytest.mark.parametrize("framing", [b"Content-Length: 35\r\n", b"Transfer-Encoding: chunked\r\n"])
async def test_an_upgrade_request_with_a_body_is_refused_and_nothing_is_smuggled(
    gateway_factory: GatewayFactory, upstream: Upstream, framing: bytes
) -> None:
    """SECURITY: llhttp skips the body of an upgrade request; read as the next request, a body
    could carry one past every check."""
    gw = await _gateway(gateway_factory, upstream)
    smuggled = b"GET /v1/smuggled HTTP/1.1\r\nHost: g\r\n\r\n"
    body = (
        smuggled if b"Length" in framing else b"%x\r\n%s\r\n0\r\n\r\n" % (len(smuggled), smuggled)
    )
    raw = await raw_request(
        gw.port,
        b"POST /v1/x HTTP/1.1\r\nHost: gw\r\nConnection: Upgrade\r\nUpgrade: foo\r\n"
        + framing
        + b"\r\n"
        + body,
    )
    status, headers, _ = parse_response(raw)
    assert status == 400
    assert headers["connection"] == "close"
    assert raw.count(b"HTTP/1.1 ") == 1
    assert upstream.seen == []


async def test_a_head_larger_than_every_field_at_its_limit_is_refused_as_it_arrives(
    gateway_factory: GatewayFactory, upstream: Upstream
) -> None:
    """A header field is handed over by the parser only once whole: one megabytes long is
    refused while it arrives, not after it is buffered."""
    gw = await _gateway(gateway_factory, upstream, server={"max_headers": 10})
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    try:
        writer.write(b"GET /v1/x HTTP/1.1\r\nHost: gw\r\nX-Big: ")
        with contextlib.suppress(ConnectionError):
            for _ in range(64):  # up to 4 MiB; the limit is 11 x 8190 bytes
                writer.write(b"a" * 65536)
                await writer.drain()
        async with asyncio.timeout(5):
            status, _, body = parse_response(await reader.read(65536))
        assert status == 431
        assert b'"code":"bad_request"' in body
        assert upstream.seen == []
    finally:
        writer.close()


async def test_a_malformed_request_after_valid_ones_is_answered_after_them(
    gateway_factory: GatewayFactory, upstream_factory: UpstreamFactory
) -> None:
    async def slow(request: web.BaseRequest) -> web.StreamResponse:
        if request.raw_path == "/v1/slow":
            await asyncio.sleep(0.2)
        return web.json_response({"path": request.raw_path})

    gw = await _gateway(gateway_factory, await upstream_factory(slow))
    raw = await raw_request(
        gw.port,
        b"GET /v1/slow HTTP/1.1\r\nHost: gw\r\n\r\n"
        b"GET /v1/b HTTP/1.1\r\nHost: gw\r\n\r\n"
        b"GET /v1/c HTTP/1.1\r\nHost gw\r\n\r\n",
    )
    answers = _split(raw)
    assert [status for status, _, _ in answers] == [200, 200, 400]
    assert answers[-1][1]["connection"] == "close"


async def test_a_client_that_reads_nothing_is_cut_off_at_the_idle_timeout(
    gateway_factory: GatewayFactory, upstream_factory: UpstreamFactory
) -> None:
    answer = b"x" * 60_000

    async def large(request: web.BaseRequest) -> web.StreamResponse:
        return web.Response(body=answer)

    gw = await _gateway(
        gateway_factory, await upstream_factory(large), server={"idle_timeout": "1s"}
    )
    server = gw.process.data_server
    assert server is not None
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16_384)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", gw.port))
    _, writer = await asyncio.open_connection(sock=sock)
    try:
        writer.write(b"GET /v1/big HTTP/1.1\r\nHost: gw\r\n\r\n" * 200)
        await writer.drain()
        async with asyncio.timeout(5):
            while server.connections:
                await asyncio.sleep(0.1)
    finally:
        writer.close()


async def test_a_body_still_arriving_when_the_server_drains_is_read_and_answered(
    gateway_factory: GatewayFactory, upstream: Upstream
) -> None:
    gw = await _gateway(gateway_factory, upstream)
    server = gw.process.data_server
    assert server is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    try:
        writer.write(b"POST /v1/upload HTTP/1.1\r\nHost: gw\r\nContent-Length: 10\r\n\r\nhello")
        await writer.drain()
        await asyncio.sleep(0.1)
        drain = asyncio.create_task(server.shutdown(5.0))
        await asyncio.sleep(0.1)
        writer.write(b"world")  # the rest of the body, after the drain began
        await writer.drain()
        async with asyncio.timeout(5):
            status, headers, _ = parse_response(await read_one_response(reader))
            await drain
        assert status == 200
        assert headers["connection"] == "close"
        assert upstream.seen[0].body_size == 10
    finally:
        writer.close()


async def test_the_server_alone_frames_its_answers() -> None:
    """A response that carries framing headers of its own (a stored answer replayed, a
    plugin's) is sent with one Content-Length, the server's."""

    async def handler(request: Request) -> web.StreamResponse:
        response = web.Response(body=b"hello")
        response.headers["Content-Length"] = "99"
        response.headers["Transfer-Encoding"] = "chunked"
        return response

    server = HttpServer(
        handler, header_timeout=5.0, idle_timeout=5.0, max_field_size=8190, max_headers=100
    )
    _, port = await server.listen("127.0.0.1", 0, reuse_port=False)
    try:
        raw = await raw_request(port, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    finally:
        await server.shutdown(1.0)
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.lower().count(b"content-length") == 1
    assert b"content-length: 5" in head.lower()
    assert b"transfer-encoding" not in head.lower()
    assert body == b"hello"


@pytest.mark.parametrize("idempotent", [False, True])
async def test_trailers_of_a_chunked_body_never_reach_the_backend_as_headers(
    gateway_factory: GatewayFactory, upstream: Upstream, idempotent: bool
) -> None:
    """SECURITY: no plugin sees a chunked body's trailers (an Authorization, a Cookie), so
    they must not turn into headers upstream: not when the whole request arrives in one
    write, and not when a plugin read the body before it was forwarded (idempotency)."""
    route: dict[str, Any] = {"path": "/v1/{rest:.*}", "upstream": "app"}
    head = b"POST /v1/x HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n"
    if idempotent:
        route |= {"auth": "key", "idempotency": "optional"}
    gw = await gateway_factory(make_config({"app": {"targets": [upstream.url]}}, [route]))
    if idempotent:
        admin = Admin(gw)
        await admin.org(plan="default")
        secret = (await admin.key())["secret"]
        head += f"Authorization: Bearer {secret}\r\nIdempotency-Key: k-1\r\n".encode()
    body = b"5\r\nhello\r\n0\r\nX-Smuggled: 1\r\nCookie: session=evil\r\n\r\n"
    raw = await raw_request(gw.port, head + b"Connection: close\r\n\r\n" + body)
    status, _, _ = parse_response(raw)
    assert status == 200
    (seen,) = upstream.seen
    names = {name.lower() for name, _ in seen.headers}
    assert "x-smuggled" not in names
    assert "cookie" not in names
    assert seen.body_size == 5
