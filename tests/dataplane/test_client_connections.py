"""The data plane's HTTP/1.1 server, seen from raw client sockets: pipelining, HTTP/1.0,
request framing, clients that leave early. (Deadlines: test_slow_clients; malformed input
at large: test_fuzz.)"""

from __future__ import annotations

import asyncio
import socket

import pytest
from aiohttp import web

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


async def _gateway(factory: GatewayFactory, upstream: Upstream) -> RunningGateway:
    return await factory(
        make_config(
            {"app": {"targets": [upstream.url]}}, [{"path": "/v1/{rest:.*}", "upstream": "app"}]
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
