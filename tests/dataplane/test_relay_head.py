"""The answer's head as the client gets it: what the upstream said, never more."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from tests.conftest import GatewayFactory, ServeRaw, make_config, parse_response, raw_request

StartUpstream = Callable[[bytes], Awaitable[str]]


@pytest.fixture
def raw_upstream(raw_server: ServeRaw) -> StartUpstream:
    """An upstream that answers every request with the given bytes, exactly."""

    async def start(answer: bytes) -> str:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while True:
                await reader.readuntil(b"\r\n\r\n")
                writer.write(answer)
                await writer.drain()

        return f"http://127.0.0.1:{await raw_server(handle)}"

    return start


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    ],
    ids=["length", "chunked"],
)
async def test_an_answer_without_content_type_gains_none(
    gateway_factory: GatewayFactory, raw_upstream: StartUpstream, answer: bytes
) -> None:
    url = await raw_upstream(answer)
    gw = await gateway_factory(
        make_config({"app": {"targets": [url]}}, [{"path": "/v1/{rest:.*}", "upstream": "app"}])
    )
    raw = await raw_request(gw.port, b"GET /v1/x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    status, headers, body = parse_response(raw)
    assert status == 200
    assert "content-type" not in headers
    assert b"hello" in body


async def test_a_transfer_coding_besides_chunked_is_refused_not_forwarded(
    gateway_factory: GatewayFactory, raw_upstream: StartUpstream
) -> None:
    url = await raw_upstream(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
    )
    gw = await gateway_factory(
        make_config({"app": {"targets": [url]}}, [{"path": "/v1/{rest:.*}", "upstream": "app"}])
    )
    raw = await raw_request(gw.port, b"GET /v1/x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    status, _, body = parse_response(raw)
    assert status == 502
    assert b"hello" not in body
