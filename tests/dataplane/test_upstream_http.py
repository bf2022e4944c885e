"""The upstream HTTP/1.1 client against real servers on 127.0.0.1 that write raw response bytes:
framing, refusals, timeouts, keep-alive and the pool, back-pressure."""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from gateway.dataplane.upstream_http import (
    TargetPool,
    UpstreamConnectError,
    UpstreamConnectTimeout,
    UpstreamDisconnected,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamReadTimeout,
)
from tests.conftest import FakeClock, free_port

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def read_request(reader: asyncio.StreamReader) -> bytes:
    """One request as the test server sees it (enough framing for what these tests send)."""
    head = await reader.readuntil(b"\r\n\r\n")
    lower = head.lower()
    length = re.search(rb"\r\ncontent-length: *(\d+)", lower)
    if length:
        return head + await reader.readexactly(int(length[1]))
    if b"\r\ntransfer-encoding: chunked" in lower:
        return head + await reader.readuntil(b"0\r\n\r\n")
    return head


class RawServer:
    """A real asyncio server; counts connections and keeps every request it read."""

    def __init__(self) -> None:
        self.port = 0
        self.connections = 0
        self.requests: list[bytes] = []
        self.pools: list[TargetPool] = []

    def pool(self, **options: object) -> TargetPool:
        pool = TargetPool("127.0.0.1", self.port, **options)  # type: ignore[arg-type]  # test knobs
        self.pools.append(pool)
        return pool


def answering(*responses: bytes, close: bool = False) -> Callable[[RawServer], Handler]:
    """Answer the n-th request (over all connections) with responses[n] (the last repeats)."""

    def make(server: RawServer) -> Handler:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
                while True:
                    server.requests.append(await read_request(reader))
                    index = min(len(server.requests), len(responses)) - 1
                    writer.write(responses[index])
                    await writer.drain()
                    if close:
                        break
            writer.close()

        return handle

    return make


@pytest.fixture
async def serve() -> AsyncIterator[
    Callable[[Callable[[RawServer], Handler]], Awaitable[RawServer]]
]:
    started: list[tuple[asyncio.Server, RawServer]] = []
    handlers: list[tuple[asyncio.Task[None], asyncio.StreamWriter]] = []

    async def start(make: Callable[[RawServer], Handler]) -> RawServer:
        raw = RawServer()
        handle = make(raw)

        async def counted(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            raw.connections += 1
            task = asyncio.current_task()
            assert task is not None
            handlers.append((task, writer))
            await handle(reader, writer)

        server = await asyncio.start_server(counted, "127.0.0.1", 0)
        raw.port = server.sockets[0].getsockname()[1]
        started.append((server, raw))
        return raw

    yield start
    for server, raw in started:
        for pool in raw.pools:
            await pool.close()
        server.close()
    for _, writer in handlers:
        writer.transport.abort()  # the handlers see the end of their connection and return
    async with asyncio.timeout(5):
        await asyncio.gather(*(task for task, _ in handlers), return_exceptions=True)
    for server, _ in started:
        await server.wait_closed()


Serve = Callable[[Callable[[RawServer], Handler]], Awaitable[RawServer]]

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


async def until(condition: Callable[[], bool]) -> None:
    """Let the loop run until another party's action shows (a closed socket), with a bound."""
    async with asyncio.timeout(5):
        while not condition():
            await asyncio.sleep(0.001)


# ---------------------------------------------------------------------------------------------
# Framing accepted


async def test_head_is_exactly_what_the_upstream_sent_and_the_body_is_whole(serve: Serve) -> None:
    raw = (
        b"HTTP/1.1 201 Made It\r\nX-Thing: a b\r\nset-cookie: 1\r\nSet-Cookie: 2\r\n"
        b"Content-Length: 5\r\n\r\nhello"
    )
    server = await serve(answering(raw))
    response = await server.pool().request(b"GET", b"/x?y=1", [(b"Accept", b"*/*")])
    assert (response.status, response.reason) == (201, b"Made It")
    assert response.headers == [
        (b"X-Thing", b"a b"),
        (b"set-cookie", b"1"),
        (b"Set-Cookie", b"2"),
        (b"Content-Length", b"5"),
    ]
    assert await response.read() == b"hello"
    assert server.requests[0].startswith(b"GET /x?y=1 HTTP/1.1\r\nHost: 127.0.0.1:")
    assert b"\r\nAccept: */*\r\n" in server.requests[0]


async def test_a_chunked_body_is_dechunked_and_its_trailers_stay_out_of_the_head(
    serve: Serve,
) -> None:
    raw = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3\r\nabc\r\n4\r\ndefg\r\n0\r\nX-Trailer: t\r\n\r\n"
    )
    server = await serve(answering(raw))
    pool = server.pool()
    response = await pool.request(b"GET", b"/", [])
    assert await response.read() == b"abcdefg"
    assert response.headers == [(b"Transfer-Encoding", b"chunked")]
    assert pool.idle == 1  # complete and reusable


@pytest.mark.parametrize(
    ("method", "raw"),
    [
        (b"HEAD", b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n"),
        (b"GET", b"HTTP/1.1 204 No Content\r\nContent-Length: 10\r\n\r\n"),
        (b"GET", b"HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n"),
    ],
)
async def test_head_204_and_304_answers_have_no_body(
    serve: Serve, method: bytes, raw: bytes
) -> None:
    server = await serve(answering(raw))
    response = await server.pool(read_timeout=5.0).request(method, b"/", [])
    assert response.complete
    assert await response.read() == b""


async def test_an_answer_without_length_ends_with_the_connection(serve: Serve) -> None:
    server = await serve(answering(b"HTTP/1.1 200 OK\r\n\r\nuntil close", close=True))
    pool = server.pool()
    response = await pool.request(b"GET", b"/", [])
    assert await response.read() == b"until close"
    assert pool.size == 0  # never reused


async def test_interim_answers_are_skipped_for_the_final_one(serve: Serve) -> None:
    raw = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n" + OK
    server = await serve(answering(raw))
    response = await server.pool().request(b"POST", b"/", [], b"data")
    assert response.status == 200
    assert response.headers == [(b"Content-Length", b"2")]
    assert await response.read() == b"ok"


# ---------------------------------------------------------------------------------------------
# Framing refused


@pytest.mark.parametrize(
    "head",
    [
        b"Content-Length: 3\r\nTransfer-Encoding: chunked",
        b"Transfer-Encoding: chunked\r\nContent-Length: 3",
        b"Content-Length: 3\r\nContent-Length: 3",
        b"Content-Length: 3\r\ncontent-length: 4",
        b"Content-Length: 3a",
        b"Content-Length: -3",
        b"Content-Length: +3",
        b"Content-Length: ",
        b"Transfer-Encoding: gzip, chunked",
        b"Transfer-Encoding: gzip",
        b"Transfer-Encoding: identity",
        b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked",
        b"Transfer-Encoding: chunked, chunked",
    ],
)
async def test_ambiguous_framing_is_refused(serve: Serve, head: bytes) -> None:
    raw = b"HTTP/1.1 200 OK\r\n" + head + b"\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
    server = await serve(answering(raw))
    pool = server.pool()
    with pytest.raises(UpstreamProtocolError) as caught:
        await pool.request(b"GET", b"/", [])
    assert caught.value.sent
    assert caught.value.received
    assert pool.size == 0  # the connection is closed, never reused


@pytest.mark.parametrize(
    "raw",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly ten b",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nabcde\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab",
    ],
)
async def test_a_body_cut_short_is_an_error_never_a_short_complete_body(
    serve: Serve, raw: bytes
) -> None:
    server = await serve(answering(raw, close=True))
    response = await server.pool().request(b"GET", b"/", [])
    with pytest.raises(UpstreamDisconnected):
        await response.read()
    assert not response.complete


async def test_a_head_over_the_limit_is_refused_and_one_at_the_limit_is_not(
    serve: Serve,
) -> None:
    raw = b"HTTP/1.1 200 OK\r\nX-Big: " + b"b" * 200 + b"\r\nContent-Length: 2\r\n\r\nok"
    head_size = len(raw) - 2
    server = await serve(answering(raw))
    with pytest.raises(UpstreamProtocolError, match="larger than"):
        await server.pool(max_head_size=head_size - 1).request(b"GET", b"/", [])
    response = await server.pool(max_head_size=head_size).request(b"GET", b"/", [])
    assert await response.read() == b"ok"


async def test_endless_trailers_are_refused_like_an_oversized_head(serve: Serve) -> None:
    def make(server: RawServer) -> Handler:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
                await read_request(reader)
                writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
                writer.write(b"3\r\nabc\r\n0\r\nX-Trailer: ")
                for _ in range(256):
                    writer.write(b"t" * 16384)
                    await writer.drain()
                    await asyncio.sleep(0)

        return handle

    server = await serve(make)
    response = await server.pool(max_head_size=1024, read_timeout=5.0).request(b"GET", b"/", [])
    with pytest.raises(UpstreamProtocolError, match="trailers"):
        await response.read()


async def test_a_malformed_status_line_is_a_protocol_error(serve: Serve) -> None:
    server = await serve(answering(b"HTTX/1.1 200 OK\r\n\r\n"))
    with pytest.raises(UpstreamProtocolError):
        await server.pool().request(b"GET", b"/", [])


# ---------------------------------------------------------------------------------------------
# Timeouts and connection failures


async def test_a_closed_port_is_a_connect_error_with_nothing_sent() -> None:
    pool = TargetPool("127.0.0.1", free_port())
    with pytest.raises(UpstreamConnectError) as caught:
        await pool.request(b"GET", b"/", [])
    assert not caught.value.sent


async def test_a_connection_not_accepted_in_time_is_a_connect_timeout() -> None:
    # A listener whose accept queue is full drops further handshakes: a connect that hangs.
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        fillers = [socket.socket() for _ in range(4)]
        try:
            for filler in fillers:
                filler.setblocking(False)
                with contextlib.suppress(BlockingIOError):
                    filler.connect(("127.0.0.1", port))
            pool = TargetPool("127.0.0.1", port, connect_timeout=0.1)
            with pytest.raises(UpstreamConnectTimeout) as caught:
                await pool.request(b"GET", b"/", [])
            assert not caught.value.sent
            assert pool.size == 0
        finally:
            for filler in fillers:
                filler.close()


async def test_no_free_slot_in_time_is_a_connect_timeout_with_nothing_sent(
    serve: Serve,
) -> None:
    big = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n12345"  # held open: never finishes
    server = await serve(answering(big))
    pool = server.pool(max_connections=1, connect_timeout=0.05, read_timeout=5.0)
    held = await pool.request(b"GET", b"/", [])
    with pytest.raises(UpstreamConnectTimeout) as caught:
        await pool.request(b"GET", b"/", [])
    assert not caught.value.sent
    held.close()  # abandoned mid-body: closed, and its slot is free again
    assert pool.size == 0


async def test_a_silent_upstream_is_a_read_timeout_after_the_request_was_sent(
    serve: Serve,
) -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            await read_request(reader)
            await reader.read()  # until the client gives up

    server = await serve(lambda _: silent)
    with pytest.raises(UpstreamReadTimeout) as caught:
        await server.pool(read_timeout=0.05).request(b"GET", b"/", [])
    assert caught.value.sent
    assert not caught.value.received


async def test_an_upstream_silent_mid_body_is_a_read_timeout(serve: Serve) -> None:
    server = await serve(answering(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n12345"))
    pool = server.pool(read_timeout=0.05)
    response = await pool.request(b"GET", b"/", [])
    assert await response.__anext__() == b"12345"
    with pytest.raises(UpstreamReadTimeout):
        await response.__anext__()
    assert pool.size == 0


async def test_timeouts_given_with_a_request_override_the_pools(serve: Serve) -> None:
    """Routes sharing a target may set their own timeouts: the request's are the ones kept."""
    big = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n12345"  # held open: never finishes
    server = await serve(answering(big))
    pool = server.pool(max_connections=1, connect_timeout=30.0, read_timeout=30.0)
    async with asyncio.timeout(5):
        held = await pool.request(b"GET", b"/", [], read_timeout=0.05)
        assert await held.__anext__() == b"12345"
        with pytest.raises(UpstreamReadTimeout):
            await held.__anext__()
        held = await pool.request(b"GET", b"/", [])
        with pytest.raises(UpstreamConnectTimeout) as caught:
            await pool.request(b"GET", b"/", [], connect_timeout=0.05)
    assert "within 0.05 s" in str(caught.value)
    held.close()


async def test_a_shorter_timeout_after_a_longer_one_on_the_same_connection_still_holds(
    serve: Serve,
) -> None:
    """A connection keeps one timer for its waits: one set for a long wait must not delay the
    expiry of a shorter one that follows, on the head or mid-body."""
    partial = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n12345"  # then nothing more

    async def slow_then_stuck(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            await read_request(reader)
            await asyncio.sleep(0.1)  # inside the long timeout: answered in time
            writer.write(OK)
            await read_request(reader)
            writer.write(partial)
            await reader.read()

    server = await serve(lambda _: slow_then_stuck)
    pool = server.pool(max_connections=1, read_timeout=30.0)
    async with asyncio.timeout(5):
        first = await pool.request(b"GET", b"/", [])
        assert await first.read() == b"ok"
        second = await pool.request(b"GET", b"/", [], read_timeout=0.2)
        assert await second.__anext__() == b"12345"
        started = asyncio.get_running_loop().time()
        with pytest.raises(UpstreamReadTimeout):
            await second.__anext__()
    assert asyncio.get_running_loop().time() - started < 2.0
    assert server.connections == 1


# ---------------------------------------------------------------------------------------------
# The pool


async def test_a_connection_is_reused_for_the_next_request(serve: Serve) -> None:
    server = await serve(answering(OK))
    pool = server.pool()
    for _ in range(3):
        response = await pool.request(b"GET", b"/", [])
        assert await response.read() == b"ok"
    assert (server.connections, pool.size, pool.idle) == (1, 1, 1)


async def test_concurrent_requests_each_get_their_own_answer(serve: Serve) -> None:
    """A connection goes back to the pool only once its answer was handed over: a request that
    took it in between would otherwise see (or take) the previous one's answer."""

    def make(server: RawServer) -> Handler:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
                while True:
                    request = await read_request(reader)
                    tag = request.split(b" ", 2)[1]
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(tag) + tag)

        return handle

    server = await serve(make)
    pool = server.pool(max_connections=4)

    async def worker(number: int) -> None:
        for index in range(25):
            tag = b"/%d/%d" % (number, index)
            response = await pool.request(b"GET", tag, [])
            assert await response.read() == tag

    await asyncio.gather(*(worker(number) for number in range(16)))
    assert pool.size <= 4


async def test_a_request_beyond_the_limit_waits_for_a_connection_and_reuses_it(
    serve: Serve,
) -> None:
    go = asyncio.Event()

    def make(server: RawServer) -> Handler:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
                await read_request(reader)
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n12345")
                await go.wait()
                writer.write(b"67890")
                await read_request(reader)
                writer.write(OK)
                await writer.drain()

        return handle

    server = await serve(make)
    pool = server.pool(max_connections=1)
    first = await pool.request(b"GET", b"/", [])
    second = asyncio.create_task(pool.request(b"GET", b"/", []))
    await until(lambda: pool.waiting == 1)
    assert not second.done()
    go.set()
    assert await first.read() == b"1234567890"
    assert await (await second).read() == b"ok"
    assert server.connections == 1


@pytest.mark.parametrize(
    "raw",
    [
        b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok",
    ],
)
async def test_connection_close_is_honoured(serve: Serve, raw: bytes) -> None:
    server = await serve(answering(raw))
    pool = server.pool()
    for _ in range(2):
        assert await (await pool.request(b"GET", b"/", [])).read() == b"ok"
    assert server.connections == 2
    assert pool.idle == 0


async def test_a_pooled_connection_the_upstream_closed_is_not_reused(serve: Serve) -> None:
    server = await serve(answering(OK, close=True))
    pool = server.pool()
    assert await (await pool.request(b"GET", b"/", [])).read() == b"ok"
    await until(lambda: pool.size == 0)  # its close reached us while it was idle
    assert await (await pool.request(b"GET", b"/", [])).read() == b"ok"
    assert server.connections == 2


def closing_on_the_second_request(server: RawServer) -> Handler:
    """Answer the first request of a connection; close without answering the second."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            server.requests.append(await read_request(reader))
            writer.write(OK)
            await writer.drain()
            server.requests.append(await read_request(reader))
        writer.close()

    return handle


async def test_the_keep_alive_race_is_retried_on_a_fresh_connection_if_idempotent(
    serve: Serve,
) -> None:
    server = await serve(closing_on_the_second_request)
    pool = server.pool()
    assert await (await pool.request(b"GET", b"/", [])).read() == b"ok"
    response = await pool.request(b"GET", b"/", [], idempotent=True)
    assert await response.read() == b"ok"
    assert server.connections == 2


async def test_the_keep_alive_race_is_not_retried_once_sent_if_not_idempotent(
    serve: Serve,
) -> None:
    server = await serve(closing_on_the_second_request)
    pool = server.pool()
    assert await (await pool.request(b"POST", b"/", [], b"1")).read() == b"ok"
    with pytest.raises(UpstreamDisconnected) as caught:
        await pool.request(b"POST", b"/", [], b"2")
    assert caught.value.sent  # the upstream may have acted: the idempotency plugin must know
    assert server.connections == 1


async def test_an_idle_connection_expires(serve: Serve) -> None:
    clock = FakeClock(1000.0)
    server = await serve(answering(OK))
    pool = server.pool(idle_timeout=30.0, clock=clock)
    assert await (await pool.request(b"GET", b"/", [])).read() == b"ok"
    clock.now += 29
    assert await (await pool.request(b"GET", b"/", [])).read() == b"ok"
    assert server.connections == 1
    clock.now += 30
    assert await (await pool.request(b"GET", b"/", [])).read() == b"ok"
    assert server.connections == 2
    assert pool.size == 1


async def test_bytes_on_an_idle_connection_make_it_unusable(serve: Serve) -> None:
    server = await serve(answering(OK + b"HTTP/1.1 200 OK\r\n"))
    pool = server.pool()
    assert await (await pool.request(b"GET", b"/", [])).read() == b"ok"
    assert pool.idle == 0  # the extra bytes came with the answer: it is never reused


# ---------------------------------------------------------------------------------------------
# Bodies both ways


async def _chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


@pytest.mark.parametrize(
    ("length", "framing", "wire"),
    [
        (None, b"Transfer-Encoding: chunked", b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"),
        (5, b"Content-Length: 5", b"abcde"),
    ],
)
async def test_a_streamed_request_body_is_framed(
    serve: Serve, length: int | None, framing: bytes, wire: bytes
) -> None:
    server = await serve(answering(OK))
    response = await server.pool().request(
        b"PUT", b"/", [], _chunks(b"abc", b"", b"de"), content_length=length
    )
    assert await response.read() == b"ok"
    head, _, body = server.requests[0].partition(b"\r\n\r\n")
    assert framing in head.split(b"\r\n")
    assert body == wire


@pytest.mark.parametrize(
    "headers",
    [
        [(b"X-A", b"1\r\nX-Injected: 1")],
        [(b"X-A: 1", b"2")],
        [(b"Content-Length", b"5")],
        [(b"transfer-encoding", b"chunked")],
    ],
)
async def test_headers_that_would_inject_or_reframe_are_refused(
    serve: Serve, headers: list[tuple[bytes, bytes]]
) -> None:
    server = await serve(answering(OK))
    with pytest.raises(ValueError, match=r"control character|framing"):
        await server.pool().request(b"GET", b"/", headers)
    assert server.requests == []


async def test_a_lagging_reader_pauses_the_upstream_and_gets_every_byte(serve: Serve) -> None:
    size = 8 * 1024 * 1024
    blob = bytes(range(256)) * (size // 256)
    writers: list[asyncio.StreamWriter] = []

    def make(server: RawServer) -> Handler:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writers.append(writer)
            await read_request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size + blob)
            with contextlib.suppress(ConnectionError):
                await writer.drain()

        return handle

    server = await serve(make)
    pool = server.pool(high_water=64 * 1024)
    response = await pool.request(b"GET", b"/", [])
    first = await response.__anext__()
    # The client stopped reading, so the server's data waits in its own buffer.
    await until(lambda: writers[0].transport.get_write_buffer_size() > 0)
    for _ in range(200):  # many turns of the loop, each one a read if reading went on
        await asyncio.sleep(0)
    assert response.buffered <= 64 * 1024 + 256 * 1024  # the mark, plus at most one read
    assert writers[0].transport.get_write_buffer_size() > 0
    assert pool.size == 1
    assert not response.complete
    rest = await response.read()
    assert first + rest == blob
    assert pool.idle == 1


# ---------------------------------------------------------------------------------------------
# Whatever the upstream sends: an answer, or one of the upstream errors, within the timeouts.

_STATUS_LINES = st.sampled_from(
    [
        b"HTTP/1.1 200 OK\r\n",
        b"HTTP/1.0 404 Nope\r\n",
        b"HTTP/1.1 204 No Content\r\n",
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n",
        b"HTTP/1.1 101 Switching Protocols\r\n",
        b"HTTP/1.1 999\r\n",
        b"HTTP/2 200\r\n",
        b"",
    ]
)
_HEADER_LINES = st.sampled_from(
    [
        b"Content-Length: 3\r\n",
        b"Content-Length: 0\r\n",
        b"Content-Length: 99999999999999999999999\r\n",
        b"Transfer-Encoding: chunked\r\n",
        b"Transfer-Encoding: gzip\r\n",
        b"Connection: close\r\n",
        b"Connection: keep-alive, Upgrade\r\nUpgrade: x\r\n",
        b"X: \x00\xff\r\n",
        b" folded\r\n",
        b"No-Colon\r\n",
        b"X-Long: " + b"x" * 300 + b"\r\n",
    ]
)
_BODY_PIECES = st.sampled_from(
    [b"abc", b"5\r\nabcde\r\n", b"0\r\n\r\n", b"ffffffffffffffffff\r\n", b"3\r\nab", b"\r\n"]
)
_ANSWERS = st.one_of(
    st.tuples(
        _STATUS_LINES,
        st.lists(_HEADER_LINES, max_size=4),
        st.sampled_from([b"\r\n", b"\n", b""]),
        st.lists(st.one_of(_BODY_PIECES, st.binary(max_size=8)), max_size=4),
    ).map(lambda parts: parts[0] + b"".join(parts[1]) + parts[2] + b"".join(parts[3])),
    st.binary(max_size=64),
)


@settings(max_examples=150, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(_ANSWERS, st.booleans())
@example(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nab", True)
@example(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n", False)
@example(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab", False)
@example(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n", False)  # interim, then silence
async def test_malformed_answers_end_in_an_answer_or_an_upstream_error_never_a_hang(
    serve: Serve, payload: bytes, close: bool
) -> None:
    server = await serve(answering(payload, close=close))
    pool = server.pool(read_timeout=0.05, connect_timeout=1.0, max_head_size=256)
    async with asyncio.timeout(10):  # a hang fails here, well before the suite's timeout
        try:
            response = await pool.request(b"GET", b"/", [])
            body = await response.read()
        except UpstreamError as exc:
            event(type(exc).__name__)
            return
    event("answer")
    assert response.complete
    assert len(body) <= len(payload)
