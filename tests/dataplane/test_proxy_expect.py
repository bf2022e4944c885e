"""Expect: 100-continue and early answers through the gateway, between raw-socket clients (and
curl) and raw-byte upstreams on 127.0.0.1.

A client that sends Expect is asked for its body only once the route's chain has passed and
the upstream wants it; an answer given before the body was read whole reaches the client as
given, and closes the client's connection, since what the client sends next cannot be told
apart from a request.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import shutil
import socket
import struct
import subprocess
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import (
    GatewayFactory,
    RawHandler,
    RunningGateway,
    ServeRaw,
    make_config,
    parse_response,
    until_closed,
)
from tests.helpers import Admin

MIB = 1024 * 1024
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


class RawUpstream:
    """An upstream that writes raw bytes; keeps every request head and counts body bytes."""

    def __init__(self) -> None:
        self.url = ""
        self.heads: list[bytes] = []
        self.body_bytes = 0

    async def accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Ask for every body, take it whole, answer 200."""
        while True:
            length = await read_head(reader, self)
            writer.write(CONTINUE)
            await take(reader, self, length)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")


RawUpstreams = Callable[..., Awaitable[RawUpstream]]


@pytest.fixture
def raw_upstream(raw_server: ServeRaw) -> RawUpstreams:
    async def start(handler: RawHandler | None = None) -> RawUpstream:
        """An upstream served by ``handler``, by default ``RawUpstream.accept``."""
        upstream = RawUpstream()
        upstream.url = f"http://127.0.0.1:{await raw_server(handler or upstream.accept)}"
        return upstream

    return start


async def read_head(reader: asyncio.StreamReader, upstream: RawUpstream) -> int:
    """Read a request head; its Content-Length."""
    head = await reader.readuntil(b"\r\n\r\n")
    upstream.heads.append(head)
    _, headers, _ = parse_response(b"HTTP/1.1 000 x\r\n" + head.partition(b"\r\n")[2])
    return int(headers.get("content-length", "0"))


async def take(reader: asyncio.StreamReader, upstream: RawUpstream, size: int) -> None:
    while size:
        chunk = await reader.read(min(size, 65536))
        if not chunk:
            raise ConnectionError("closed mid-body")
        upstream.body_bytes += len(chunk)
        size -= len(chunk)


async def gateway_to(factory: GatewayFactory, url: str, **route: object) -> RunningGateway:
    return await factory(
        make_config({"app": {"targets": [url]}}, [{"path": "/up", "upstream": "app", **route}])
    )


async def read_answer(reader: asyncio.StreamReader) -> tuple[bytes, int, dict[str, str], bytes]:
    """The next response: its raw head, status, headers and Content-Length body."""
    async with asyncio.timeout(5):
        head = await reader.readuntil(b"\r\n\r\n")
        status, headers, _ = parse_response(head)
        body = await reader.readexactly(int(headers.get("content-length", "0")))
    return head, status, headers, body


def expecting(length: int, path: bytes = b"/up", extra: bytes = b"") -> bytes:
    return (
        b"POST "
        + path
        + b" HTTP/1.1\r\nHost: gw\r\nContent-Length: %d\r\n" % length
        + b"Expect: 100-continue\r\n"
        + extra
        + b"\r\n"
    )


# ---------------------------------------------------------------------------------------------
# Refused by the route's chain: the body is never asked for


async def test_a_refused_expect_request_is_answered_without_asking_for_the_body(
    gateway_factory: GatewayFactory, raw_upstream: RawUpstreams
) -> None:
    upstream = await raw_upstream()  # it must not be reached: no head recorded
    gw = await gateway_to(gateway_factory, upstream.url, auth="key")
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    writer.write(expecting(2 * MIB))
    head, _status, headers, body = await read_answer(reader)
    assert head.startswith(b"HTTP/1.1 401 ")  # no 100 Continue came first
    assert b'"code":"unauthorized"' in body
    assert headers["connection"] == "close"
    # A client that sends its body anyway (curl does after a second) has it read and dropped;
    # then the connection ends, and nothing it sent was taken for another request.
    writer.write(b"GET /up HTTP/1.1\r\nHost: gw\r\n\r\n".ljust(2 * MIB, b"x"))
    assert await until_closed(reader) == b""
    writer.close()
    assert upstream.heads == []


async def test_a_request_over_the_size_limit_with_expect_closes_after_its_413(
    gateway_factory: GatewayFactory, raw_upstream: RawUpstreams
) -> None:
    upstream = await raw_upstream()  # it must not be reached: no head recorded
    gw = await gateway_to(gateway_factory, upstream.url, max_body_size=1000)
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    writer.write(expecting(1001))
    _head, status, headers, _ = await read_answer(reader)
    assert (status, headers["connection"]) == (413, "close")
    writer.close()  # the client gives up, as it should on a final answer
    assert upstream.heads == []


async def test_scope_and_rate_limit_refusals_come_before_the_body_is_asked_for(
    gateway_factory: GatewayFactory, raw_upstream: RawUpstreams
) -> None:
    upstream = await raw_upstream()
    gw = await gateway_factory(
        make_config(
            {"app": {"targets": [upstream.url]}},
            [{"path": "/up", "upstream": "app", "auth": "key", "scopes": ["items:write"]}],
            plans={"p": {"rate_limit": {"requests": 1, "per": "1m"}}},
        )
    )
    admin = Admin(gw)
    await admin.org(plan="p")
    allowed = (await admin.key(scopes=["items:write"]))["secret"]
    unscoped = (await admin.key(scopes=["items:read"]))["secret"]

    async def send(secret: str) -> tuple[bool, int, dict[str, str]]:
        """Whether the client was asked for its body, then the answer's status and head."""
        reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
        writer.write(expecting(MIB, extra=b"Authorization: Bearer %s\r\n" % secret.encode()))
        head = await reader.readuntil(b"\r\n\r\n")
        asked = head == CONTINUE
        if asked:
            writer.write(b"b" * MIB)
            head = await reader.readuntil(b"\r\n\r\n")
        writer.close()
        status, headers, _ = parse_response(head)
        return asked, status, headers

    asked, status, headers = await send(unscoped)
    assert (asked, status, headers["connection"]) == (False, 403, "close")
    asked, status, _ = await send(allowed)
    assert (asked, status) == (True, 200)
    asked, status, headers = await send(allowed)
    assert (asked, status, headers["connection"]) == (False, 429, "close")
    assert headers["retry-after"]
    assert upstream.body_bytes == MIB  # only the one accepted request's body


@pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")
async def test_curl_uploads_nothing_to_a_refused_route_and_all_to_an_accepted_one(
    gateway_factory: GatewayFactory, raw_upstream: RawUpstreams, tmp_path: Path
) -> None:
    upstream = await raw_upstream()
    gw = await gateway_factory(
        make_config(
            {"app": {"targets": [upstream.url]}},
            [
                {"path": "/open", "upstream": "app"},
                {"path": "/closed", "upstream": "app", "auth": "key"},
            ],
        )
    )
    payload = tmp_path / "payload"
    payload.write_bytes(b"p" * 2 * MIB)  # curl sends Expect for a body over 1 MiB

    def curl(path: str) -> list[str]:
        # curl waits --expect100-timeout for a 100 before it sends the body regardless:
        # a run well under it shows the gateway answered at once.
        command = ["curl", "-sS", "-o", "/dev/null", "--expect100-timeout", "10"]
        command += ["-w", "%{http_code} %{size_upload} %{time_total}"]
        command += ["--data-binary", f"@{payload}", f"{gw.url}{path}"]
        return subprocess.run(
            command, capture_output=True, check=True, timeout=30, text=True
        ).stdout.split()

    code, uploaded, seconds = await asyncio.to_thread(curl, "/closed")
    assert (code, uploaded) == ("401", "0")
    assert float(seconds) < 5
    code, uploaded, seconds = await asyncio.to_thread(curl, "/open")
    assert (code, uploaded) == ("200", str(2 * MIB))
    assert float(seconds) < 5
    assert upstream.body_bytes == 2 * MIB
    [head] = upstream.heads
    assert b"\r\nExpect: 100-continue\r\n" in head


# ---------------------------------------------------------------------------------------------
# Accepted: the upstream decides when the body comes, or whether it comes at all


async def test_an_accepted_expect_request_gets_100_when_the_upstream_asks(
    gateway_factory: GatewayFactory, raw_upstream: RawUpstreams
) -> None:
    asked = asyncio.Event()

    async def accepting(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            length = await read_head(reader, upstream)
            await asked.wait()
            writer.write(CONTINUE)
            await take(reader, upstream, length)
            writer.write(b"HTTP/1.1 201 Created\r\nContent-Length: 4\r\n\r\nmade")

    upstream = await raw_upstream(accepting)
    gw = await gateway_to(gateway_factory, upstream.url)
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    writer.write(expecting(5))
    with pytest.raises(TimeoutError):  # nothing yet: the upstream has not asked
        async with asyncio.timeout(0.3):
            await reader.readuntil(b"\r\n\r\n")
    asked.set()
    async with asyncio.timeout(5):
        assert await reader.readuntil(b"\r\n\r\n") == CONTINUE
    writer.write(b"hello")
    _, status, headers, body = await read_answer(reader)
    assert (status, body) == (201, b"made")
    assert "connection" not in headers  # the exchange was whole: the connection stays
    writer.write(expecting(5))
    assert await reader.readuntil(b"\r\n\r\n") == CONTINUE
    writer.write(b"again")
    assert (await read_answer(reader))[1] == 201
    writer.close()
    assert upstream.body_bytes == 10
    assert all(b"\r\nExpect: 100-continue\r\n" in head for head in upstream.heads)


async def test_an_upstream_refusing_an_expect_request_is_relayed_without_the_body(
    gateway_factory: GatewayFactory, raw_upstream: RawUpstreams
) -> None:
    refusal = b'{"error": "too big for us"}'

    async def refusing(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader, upstream)
        writer.write(
            b"HTTP/1.1 413 Payload Too Large\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%b" % (len(refusal), refusal)
        )
        await take(reader, upstream, 1)  # any body byte would be counted

    upstream = await raw_upstream(refusing)
    gw = await gateway_to(gateway_factory, upstream.url)
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    writer.write(expecting(MIB))
    head, _status, headers, body = await read_answer(reader)
    assert head.startswith(b"HTTP/1.1 413 ")  # the upstream's, with no 100 before it
    assert body == refusal
    assert headers["connection"] == "close"
    writer.close()
    await asyncio.sleep(0.1)
    assert upstream.body_bytes == 0


async def test_aiohttp_with_expect100_gets_its_answer(
    gateway_factory: GatewayFactory, raw_upstream: RawUpstreams
) -> None:
    upstream = await raw_upstream()
    gw = await gateway_to(gateway_factory, upstream.url)
    async with gw.session.post(f"{gw.url}/up", data=b"d" * 300_000, expect100=True) as r:
        assert (r.status, await r.read()) == (200, b"ok")
    assert upstream.body_bytes == 300_000


async def test_interim_answers_from_the_upstream_are_not_relayed(
    gateway_factory: GatewayFactory, raw_upstream: RawUpstreams
) -> None:
    async def chatty(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        length = await read_head(reader, upstream)
        writer.write(
            b"HTTP/1.1 102 Processing\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"
        )
        await take(reader, upstream, length)
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")  # late, and not asked for
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

    upstream = await raw_upstream(chatty)
    gw = await gateway_to(gateway_factory, upstream.url)
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    writer.write(b"POST /up HTTP/1.1\r\nHost: gw\r\nContent-Length: 5\r\n\r\nhello")
    head, _status, _, body = await read_answer(reader)
    writer.close()
    assert head.startswith(b"HTTP/1.1 200 ")
    assert body == b"ok"


# ---------------------------------------------------------------------------------------------
# Answers before the body was sent whole


async def stream_body(writer: asyncio.StreamWriter, size: int) -> None:
    """Send a body in 64 KiB pieces until done or the gateway stops taking it."""
    with contextlib.suppress(ConnectionError):
        for _ in range(size // 65536):
            writer.write(b"b" * 65536)
            await writer.drain()


def reset(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


@pytest.mark.parametrize("then", ["close", "reset", "stay"])
async def test_an_upstream_answering_mid_body_is_relayed_not_a_502(
    gateway_factory: GatewayFactory, raw_upstream: RawUpstreams, then: str
) -> None:
    async def early(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader, upstream)
        await take(reader, upstream, 65536)
        writer.write(b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 7\r\n\r\ntoo big")
        await writer.drain()
        if then == "close":
            writer.close()  # the rest of the body unread: the kernel resets
        elif then == "reset":
            await asyncio.sleep(0.2)  # the answer is in; the body is still coming
            reset(writer)
        else:
            await writer.wait_closed()  # keeps the connection, takes no more

    upstream = await raw_upstream(early)
    gw = await gateway_to(gateway_factory, upstream.url)
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    size = 8 * MIB
    writer.write(b"POST /up HTTP/1.1\r\nHost: gw\r\nContent-Length: %d\r\n\r\n" % size)
    sender = asyncio.create_task(stream_body(writer, size))
    started = time.monotonic()
    _, status, headers, body = await read_answer(reader)
    assert (status, body) == (413, b"too big")
    assert headers["connection"] == "close"
    assert time.monotonic() - started < 3
    await until_closed(reader, 15)
    sender.cancel()
    writer.close()
    assert upstream.body_bytes < size


async def test_after_an_early_answer_the_next_request_gets_a_fresh_upstream_connection(
    gateway_factory: GatewayFactory, raw_upstream: RawUpstreams
) -> None:
    connections: list[int] = []

    async def early(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(1)
        while True:
            length = await read_head(reader, upstream)
            if length > 65536:
                await take(reader, upstream, 65536)  # and answers without the rest
            else:
                await take(reader, upstream, length)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

    upstream = await raw_upstream(early)
    gw = await gateway_to(gateway_factory, upstream.url)
    with contextlib.suppress(aiohttp.ClientError):
        async with gw.session.post(f"{gw.url}/up", data=io.BytesIO(b"x" * 4 * MIB)) as r:
            assert (r.status, await r.read()) == (200, b"ok")
    async with gw.session.post(f"{gw.url}/up", data=b"small") as r:
        assert (r.status, await r.read()) == (200, b"ok")
    # Had the first connection been reused, the second request would have sat behind body
    # bytes the upstream never read, and been answered as part of them.
    assert len(connections) == 2
    assert upstream.heads[1].startswith(b"POST /up HTTP/1.1\r\n")
