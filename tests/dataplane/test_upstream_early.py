"""The upstream client and the request body: Expect: 100-continue towards the upstream, interim
answers nobody asked for, and answers that arrive before the body was sent whole.

Real servers on 127.0.0.1 that read and write raw bytes, so each test decides exactly when the
upstream answers and how much of the body it takes.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import time
from collections.abc import AsyncIterator, Callable

import pytest

from gateway.dataplane.upstream_http import TargetPool, UpstreamDisconnected
from gateway.dataplane.upstream_http import connection as upstream_connection
from tests.conftest import ServeRaw

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
TOO_LARGE = b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 7\r\n\r\ntoo big"


@pytest.fixture
async def pools() -> AsyncIterator[Callable[..., TargetPool]]:
    made: list[TargetPool] = []

    def make(port: int, **options: float) -> TargetPool:
        pool = TargetPool("127.0.0.1", port, **options)  # type: ignore[arg-type]  # test knobs
        made.append(pool)
        return pool

    yield make
    for pool in made:
        await pool.close()


class Body:
    """A streamed request body that records how far it was read, and can stall like a slow
    client: ``chunks`` pieces come at once, then it waits for ``more`` (never, by default)."""

    def __init__(self, chunks: int, size: int = 65536, *, then_stall: bool = False) -> None:
        self.chunks, self.size, self.then_stall = chunks, size, then_stall
        self.taken = 0
        self.started = self.finished = False
        self.more = asyncio.Event()

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._generate()

    async def _generate(self) -> AsyncIterator[bytes]:
        self.started = True
        try:
            for _ in range(self.chunks):
                self.taken += 1
                yield b"x" * self.size
                await asyncio.sleep(0)
            if self.then_stall:
                await self.more.wait()
        finally:
            self.finished = True

    @property
    def length(self) -> int:
        return self.chunks * self.size


async def nothing_more(reader: asyncio.StreamReader, seconds: float = 0.3) -> bool:
    """True when no byte arrives within ``seconds``: the client holds the body back."""
    try:
        async with asyncio.timeout(seconds):
            return await reader.read(1) == b""
    except TimeoutError:
        return True


def reset(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP reset, as a server does that closes on a body it did not read."""
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


# ---------------------------------------------------------------------------------------------
# Expect: 100-continue towards the upstream


async def test_with_expect_the_body_waits_for_100_continue(
    raw_server: ServeRaw, pools: Callable[..., TargetPool]
) -> None:
    held_back: list[bool] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for _ in range(2):
            head = await reader.readuntil(b"\r\n\r\n")
            assert b"\r\nExpect: 100-continue\r\n" in head
            assert b"\r\nContent-Length: 131072\r\n" in head
            held_back.append(await nothing_more(reader))
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            await reader.readexactly(131072)
            writer.write(OK)

    pool = pools(await raw_server(handler))
    for _ in range(2):
        body = Body(2)
        response = await pool.request(
            b"PUT", b"/", [], body, content_length=body.length, expect_continue=True
        )
        assert (response.status, await response.read()) == (200, b"ok")
        assert body.finished
    assert held_back == [True, True]
    assert pool.size == 1  # the exchange was whole: kept alive


async def test_a_final_answer_to_expect_is_returned_and_the_body_never_sent(
    raw_server: ServeRaw, pools: Callable[..., TargetPool]
) -> None:
    after_answer: list[bool] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(TOO_LARGE)  # keep-alive, and the connection stays open
        after_answer.append(await nothing_more(reader))
        await reader.read()

    pool = pools(await raw_server(handler), read_timeout=5.0)
    body = Body(4)
    response = await pool.request(
        b"POST", b"/", [], body, content_length=body.length, expect_continue=True
    )
    assert (response.status, await response.read()) == (413, b"too big")
    assert not body.started
    async with asyncio.timeout(2):
        while not after_answer:
            await asyncio.sleep(0.01)
    assert after_answer == [True]
    # The upstream still waits for the announced body: never reused, whatever it said.
    assert pool.size == 0


async def test_an_upstream_that_ignores_expect_gets_the_body_after_a_short_wait(
    raw_server: ServeRaw, pools: Callable[..., TargetPool], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(upstream_connection, "EXPECT_WAIT", 0.2)
    received: list[int] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        received.append(len(await reader.readuntil(b"0\r\n\r\n")))
        writer.write(OK)

    pool = pools(await raw_server(handler))
    body = Body(1, 10)
    started = time.monotonic()
    response = await pool.request(b"POST", b"/", [], body, expect_continue=True)
    assert (response.status, await response.read()) == (200, b"ok")
    assert time.monotonic() - started >= 0.2
    assert received == [len(b"a\r\n" + b"x" * 10 + b"\r\n0\r\n\r\n")]


# ---------------------------------------------------------------------------------------------
# Interim answers nobody asked for


@pytest.mark.parametrize(
    "interim",
    [
        b"HTTP/1.1 100 Continue\r\n\r\n",
        b"HTTP/1.1 102 Processing\r\n\r\n",
        b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n",
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 102 Processing\r\n\r\n"
        b"HTTP/1.1 103 Early Hints\r\nContent-Length: 5\r\n\r\n",
    ],
)
async def test_interim_answers_not_asked_for_are_never_taken_for_the_answer(
    raw_server: ServeRaw, pools: Callable[..., TargetPool], interim: bytes
) -> None:
    final = b"HTTP/1.1 201 Created\r\nX-Final: yes\r\nContent-Length: 4\r\n\r\ndone"

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await reader.readuntil(b"\r\n\r\n")
            # Byte by byte, while the body is still on its way: the head of the interim
            # answer arrives in pieces, before and between the body's chunks.
            for byte in interim:
                writer.write(bytes([byte]))
                await writer.drain()
            await reader.readexactly(3 * 65536)
            writer.write(final)

    pool = pools(await raw_server(handler))
    for _ in range(2):
        body = Body(3)
        response = await pool.request(b"POST", b"/", [], body, content_length=body.length)
        assert response.status == 201
        assert response.headers == [(b"X-Final", b"yes"), (b"Content-Length", b"4")]
        assert await response.read() == b"done"
        assert body.finished
    assert pool.size == 1


async def test_an_interim_answer_then_a_close_is_a_disconnect_not_an_answer(
    raw_server: ServeRaw, pools: Callable[..., TargetPool]
) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        await writer.drain()
        writer.close()

    pool = pools(await raw_server(handler))
    with pytest.raises(UpstreamDisconnected) as caught:
        await pool.request(b"POST", b"/", [], Body(1, 10), expect_continue=True)
    assert caught.value.sent
    assert caught.value.received


# ---------------------------------------------------------------------------------------------
# An answer before the whole body was sent


async def test_an_answer_while_the_client_stalls_mid_body_is_returned_at_once(
    raw_server: ServeRaw, pools: Callable[..., TargetPool]
) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        await reader.readexactly(65536)
        writer.write(TOO_LARGE[:-7].replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n"))
        writer.write(b"too big")
        await writer.drain()
        writer.close()  # with the rest of the body unread: the kernel resets

    pool = pools(await raw_server(handler), read_timeout=30.0)
    body = Body(2, then_stall=True)  # the source of the body waits, like a slow client
    async with asyncio.timeout(3):
        response = await pool.request(b"POST", b"/", [], body, content_length=10 * 65536)
        assert (response.status, await response.read()) == (413, b"too big")
        while not body.finished:
            await asyncio.sleep(0.01)
    assert body.taken == 2  # nothing more was asked of the source
    assert pool.size == 0


async def test_an_answer_from_an_upstream_that_stops_reading_is_returned_at_once(
    raw_server: ServeRaw, pools: Callable[..., TargetPool]
) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(OK)  # a complete answer, keep-alive, and not another byte taken
        await writer.wait_closed()

    pool = pools(await raw_server(handler), read_timeout=30.0)
    body = Body(1024)  # 64 MiB: far more than the socket buffers hold
    async with asyncio.timeout(3):
        response = await pool.request(b"POST", b"/", [], body, content_length=body.length)
        assert (response.status, await response.read()) == (200, b"ok")
        while not body.finished:
            await asyncio.sleep(0.01)
    assert body.taken < 1024
    assert pool.size == 0  # the upstream waits for the rest: never reused


@pytest.mark.parametrize("delay", [0.0, 0.2])
async def test_a_reset_after_a_complete_answer_still_hands_over_the_answer(
    raw_server: ServeRaw, pools: Callable[..., TargetPool], delay: float
) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        await reader.readexactly(65536)
        writer.write(TOO_LARGE)
        await writer.drain()
        await asyncio.sleep(delay)
        reset(writer)

    pool = pools(await raw_server(handler), read_timeout=30.0)
    body = Body(4096)
    async with asyncio.timeout(3):
        response = await pool.request(b"POST", b"/", [], body, content_length=body.length)
        assert (response.status, await response.read()) == (413, b"too big")
    assert pool.size == 0


async def test_a_reset_before_any_answer_is_still_an_error(
    raw_server: ServeRaw, pools: Callable[..., TargetPool]
) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        await reader.readexactly(65536)
        reset(writer)

    pool = pools(await raw_server(handler), read_timeout=30.0)
    body = Body(4096)
    with pytest.raises(UpstreamDisconnected) as caught:
        await pool.request(b"POST", b"/", [], body, content_length=body.length)
    assert caught.value.sent
    assert not caught.value.received
