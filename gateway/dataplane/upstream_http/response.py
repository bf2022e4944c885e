"""An upstream's answer: its head as sent, its body as chunks read with back-pressure."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from gateway.dataplane.upstream_http.errors import UpstreamError, UpstreamReadTimeout

if TYPE_CHECKING:
    from gateway.dataplane.upstream_http.connection import UpstreamConnection

Header = tuple[bytes, bytes]


class UpstreamResponse:
    """The status and head exactly as the upstream sent them; the body as chunks, in order.

    Chunks are buffered up to a high-water mark, then the connection stops reading until the
    consumer has taken them down to a quarter of it: a slow client slows the upstream rather
    than filling memory. The connection goes back to its pool as soon as the whole answer has
    arrived (buffered here); a consumer that stops early calls ``close``, which closes a
    connection whose answer is still incomplete.
    """

    __slots__ = (
        "_buffered",
        "_chunks",
        "_closed",
        "_conn",
        "_done",
        "_error",
        "_high",
        "_read_timeout",
        "_waiter",
        "headers",
        "length",
        "reason",
        "status",
        "version",
    )

    def __init__(
        self,
        conn: UpstreamConnection,
        status: int,
        reason: bytes,
        headers: list[Header],
        version: str,
        *,
        length: int | None,
        high_water: int,
        read_timeout: float,
    ) -> None:
        self.status = status
        self.reason = reason
        self.headers = headers
        self.version = version
        self.length = length  # the Content-Length it announced, if any
        self._conn: UpstreamConnection | None = conn
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._high = high_water
        self._read_timeout = read_timeout
        self._done = False
        self._closed = False
        self._error: UpstreamError | None = None
        self._waiter: asyncio.Future[bool] | None = None

    @property
    def complete(self) -> bool:
        """The whole body arrived (it may still be buffered here)."""
        return self._done

    @property
    def buffered(self) -> int:
        """Bytes received and not yet taken: what back-pressure keeps near the high-water mark."""
        return self._buffered

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self

    async def __anext__(self) -> bytes:
        while True:
            if self._chunks:
                chunk = self._chunks.popleft()
                self._buffered -= len(chunk)
                conn = self._conn
                if conn is not None and conn.reading_paused and self._buffered <= self._high // 4:
                    conn.resume_reading()
                return chunk
            if self._error is not None:
                raise self._error
            if self._done or self._closed:
                raise StopAsyncIteration
            await self._wait()

    async def read(self) -> bytes:
        """The whole body; for small answers and tests, the proxy streams."""
        return b"".join([chunk async for chunk in self])

    def close(self) -> None:
        """Stop reading: a body not yet complete makes its connection unusable, so it is closed."""
        self._closed = True
        self._chunks.clear()
        self._buffered = 0
        conn, self._conn = self._conn, None
        if conn is not None and not self._done:
            conn.abort()

    async def _wait(self) -> None:
        conn = self._conn
        if conn is None:  # detached without an end or an error: only close() does that
            self._closed = True
            return
        waiter = self._waiter = asyncio.get_running_loop().create_future()
        try:
            arrived = await conn.deadline.wait(waiter, self._read_timeout)
        except asyncio.CancelledError:
            self.close()
            raise
        finally:
            self._waiter = None
        if not arrived and not self._chunks and not self._done and self._error is None:
            conn.fail(
                UpstreamReadTimeout(
                    f"the upstream sent nothing for {self._read_timeout} s mid-body",
                    sent=True,
                    received=True,
                )
            )

    # Called by the connection.

    def _feed(self, chunk: bytes) -> None:
        self._chunks.append(chunk)
        self._buffered += len(chunk)
        conn = self._conn
        if self._buffered > self._high and conn is not None and not conn.reading_paused:
            conn.pause_reading()
        wake(self._waiter)

    def _finish(self) -> None:
        self._done = True
        self._conn = None
        wake(self._waiter)

    def _fail(self, error: UpstreamError) -> None:
        if self._error is None and not self._done:
            self._error = error
        self._conn = None
        wake(self._waiter)


def wake(waiter: asyncio.Future[bool] | None) -> None:
    if waiter is not None and not waiter.done():
        waiter.set_result(True)


async def within(waiter: asyncio.Future[bool], seconds: float) -> bool:
    """Await ``waiter`` for at most ``seconds``; False when the time ran out.

    One timer handle, no task and no exception machinery: this is on every exchange.
    """
    # The future's own loop: on Python 3.11 asyncio.get_running_loop() costs a getpid()
    # system call, twice a request on the proxy path before this.
    handle = waiter.get_loop().call_later(seconds, _expire, waiter)
    try:
        return await waiter
    finally:
        handle.cancel()


def _expire(waiter: asyncio.Future[bool]) -> None:
    if not waiter.done():
        waiter.set_result(False)


class ReadDeadline:
    """``within`` for the waits of one connection that never overlap (its answer's head, then
    its body), with one timer handle for all of them.

    Arming a wait writes its deadline; the handle reschedules itself when it fires early and
    ends when nothing waits. A busy keep-alive connection then does no timer work per exchange,
    where a handle per wait cost a call_later and a cancel each time.
    """

    __slots__ = ("_at", "_handle", "_handle_at", "_loop", "_waiter")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._at = self._handle_at = 0.0
        self._handle: asyncio.TimerHandle | None = None
        self._waiter: asyncio.Future[bool] | None = None

    async def wait(self, waiter: asyncio.Future[bool], seconds: float) -> bool:
        """Await ``waiter`` for at most ``seconds``; False when the time ran out."""
        self._at = at = self._loop.time() + seconds
        if self._handle is not None and at < self._handle_at:
            self._handle.cancel()  # a shorter wait than the one the handle is set for
            self._handle = None
        if self._handle is None:
            self._schedule()
        self._waiter = waiter
        try:
            return await waiter
        finally:
            self._waiter = None

    def cancel(self) -> None:
        """The connection is closed: nothing will wait again."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _schedule(self) -> None:
        self._handle_at = self._at
        self._handle = self._loop.call_at(self._at, self._fire)

    def _fire(self) -> None:
        self._handle = None
        waiter = self._waiter
        if waiter is None or waiter.done():
            return
        if self._loop.time() < self._at - _CLOCK_SLACK:
            self._schedule()  # the deadline moved since the handle was set
        else:
            waiter.set_result(False)


# A timer may fire this much before its time by the loop's clock (its resolution); asyncio
# allows the same.
_CLOCK_SLACK = 0.001
