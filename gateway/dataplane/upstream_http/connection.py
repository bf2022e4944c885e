"""One upstream HTTP/1.1 connection: a Protocol that writes a request and hands over its answer.

``answer`` reads the answer (llhttp) and refuses what must not be forwarded; this module writes
the request, its body streamed with back-pressure, and decides whether the connection may
carry another exchange. An answer that arrives before the body was sent whole ends the upload:
the rest is not sent, and the connection, whose framing is then unsettled, is not reused.
"""

from __future__ import annotations

import asyncio
import select
from collections.abc import AsyncIterable, Callable, Sequence
from typing import cast

from gateway.dataplane.upstream_http.answer import AnswerParser
from gateway.dataplane.upstream_http.errors import (
    UpstreamDisconnected,
    UpstreamError,
    UpstreamReadTimeout,
)
from gateway.dataplane.upstream_http.request_head import build_head, head_for_stream
from gateway.dataplane.upstream_http.response import ReadDeadline, UpstreamResponse, wake, within

Header = tuple[bytes, bytes]
Body = bytes | AsyncIterable[bytes] | None

# How long a body waits for the upstream's 100 Continue before it is sent anyway, as curl does
# for upstreams that ignore Expect.
EXPECT_WAIT = 1.0


class UpstreamConnection(asyncio.Protocol):
    """One TCP connection to one upstream, carrying one exchange at a time (no pipelining).

    ``on_idle`` is called when an answer completed and the connection may carry another;
    ``on_close`` once, when it is closed by either side.
    """

    def __init__(
        self,
        *,
        max_head_size: int,
        high_water: int,
        on_idle: Callable[[UpstreamConnection], None],
        on_close: Callable[[UpstreamConnection], None],
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self._on_idle = on_idle
        self._on_close: Callable[[UpstreamConnection], None] | None = on_close
        self._transport: asyncio.Transport | None = None
        self._readable: select.poll | None = None
        self.closed = False
        self.reused = False
        self.idle_since = 0.0
        self.reading_paused = False
        self._write_paused = False
        self._drain_waiter: asyncio.Future[bool] | None = None
        # request() waits here for news: the head, a 100 Continue, a failure, the body sent.
        self._waiter: asyncio.Future[bool] | None = None
        # The read timeout of the answer's head and then its body (see UpstreamResponse).
        self.deadline = ReadDeadline(self._loop)
        # The answer in progress, if any (_answers, reset for each exchange).
        self._parser: AnswerParser | None = None
        self._answers = AnswerParser(self, max_head_size, high_water)
        # _answer is what request() returns; _response is where body bytes go until the end.
        self._answer: UpstreamResponse | None = None
        self._response: UpstreamResponse | None = None
        self._failure: UpstreamError | None = None
        self._read_timeout = 0.0
        self._sent = self._received = self._continued = False
        # Every request byte was handed over before the answer began; else the answer was early.
        self._request_done = self._early = False
        self._idle_pending = False

    async def request(
        self,
        method: bytes,
        target: bytes,
        headers: Sequence[Header],
        body: Body = None,
        *,
        content_length: int | None = None,
        read_timeout: float,
        expect_continue: bool = False,
    ) -> UpstreamResponse:
        """Send one request and return its answer once the head arrived.

        ``headers`` must not carry Content-Length or Transfer-Encoding: the framing is chosen
        here from ``body`` (bytes: a length; a stream: ``content_length`` or chunked; None: no
        body). With ``expect_continue`` a streamed body waits for the upstream's 100 Continue
        (at most EXPECT_WAIT), and is not sent at all if a final answer comes first. Any
        failure closes the connection, whose state is then unknown.
        """
        transport = self._transport
        if self.closed or transport is None or transport.is_closing():
            raise UpstreamDisconnected("the connection closed before the request", sent=False)
        if self._parser is not None:
            raise RuntimeError("an upstream connection carries one exchange at a time")
        self._begin(method, read_timeout)
        try:
            if body is None:
                self._write(build_head(method, target, headers, b""))
                self._request_done = True
            elif isinstance(body, bytes):
                framing = b"Content-Length: %d\r\n" % len(body)
                self._write(build_head(method, target, headers, framing) + body)
                self._request_done = True
                await self._drain()
            else:
                if expect_continue:
                    headers = [*headers, (b"Expect", b"100-continue")]
                self._write(head_for_stream(method, target, headers, content_length))
                if expect_continue:
                    await self._wait_for_continue()
                if self._answer is None and self._failure is None:
                    await self._send_body(body, content_length)
            response = await self._wait_head()
        except BaseException:
            self.abort()
            raise
        self._answer = None  # the caller holds it now; an idle connection keeps no body alive
        if self._idle_pending:
            self._idle_pending = False
            if not self.closed:
                self._on_idle(self)
        return response

    def close(self) -> None:
        """Close an idle connection gracefully (the pool's expiry and shutdown)."""
        if self._parser is not None:
            self.abort()
            return
        if not self.closed:
            self.closed = True
            if self._transport is not None:
                self._transport.close()
        self._notify_closed()

    def abort(self) -> None:
        """Close at once: whatever was in flight is over, and the connection is never reused."""
        if self._parser is not None:
            self.fail(UpstreamDisconnected("the exchange was abandoned", sent=self._sent))
        if not self.closed:
            self.closed = True
            if self._transport is not None:
                self._transport.abort()
        self._notify_closed()

    def fail(self, error: UpstreamError) -> None:
        """End the exchange in flight with ``error`` and close the connection."""
        self._parser = None
        response, self._response = self._response, None
        if response is not None:
            response._fail(error)
        else:
            self._failure = error
            wake(self._waiter)
        self.abort()

    def pause_reading(self) -> None:
        if self._transport is not None and not self.closed:
            self.reading_paused = True
            self._transport.pause_reading()

    def resume_reading(self) -> None:
        if self.reading_paused and self._transport is not None and not self.closed:
            self.reading_paused = False
            self._transport.resume_reading()

    # Called by the answer's parser.

    def head_arrived(self, response: UpstreamResponse) -> None:
        self._answer = self._response = response
        transport = self._transport
        # Early: the upstream answered before it had the whole request (a refusal, an answer
        # to Expect, one that does not wait for the body). The rest is never sent, so the
        # upstream may still wait for it: the connection cannot carry another exchange.
        if not self._request_done or (transport is not None and transport.get_write_buffer_size()):
            self._early = True
        wake(self._waiter)
        wake(self._drain_waiter)

    def continued(self) -> None:
        self._continued = True
        wake(self._waiter)

    # The exchange.

    def _begin(self, method: bytes, read_timeout: float) -> None:
        parser = self._parser = self._answers
        parser.begin(method == b"HEAD", read_timeout)
        self._read_timeout = read_timeout
        self._answer = self._response = None
        self._failure = None
        self._sent = self._received = self._continued = False
        self._request_done = self._early = self._idle_pending = False

    def _write(self, data: bytes) -> None:
        if self.closed or self._transport is None:
            raise UpstreamDisconnected(
                "the upstream closed the connection while the request was sent",
                sent=self._sent,
                received=self._received,
            )
        self._sent = True
        self._transport.write(data)

    async def _wait(self, seconds: float | None) -> bool:
        """Wait for news (see _waiter), at most ``seconds``; False when the time ran out."""
        waiter = self._waiter = self._loop.create_future()
        try:
            return await (waiter if seconds is None else self.deadline.wait(waiter, seconds))
        finally:
            self._waiter = None

    async def _wait_for_continue(self) -> None:
        if not (self._continued or self._answer is not None or self._failure is not None):
            await self._wait(min(EXPECT_WAIT, self._read_timeout))

    async def _send_body(self, body: AsyncIterable[bytes], content_length: int | None) -> None:
        """Send the body from a task of its own, so that an answer arriving meanwhile is
        handed over at once, whatever the body's source is waiting for."""
        sender = self._loop.create_task(self._send_stream(body, content_length))
        sender.add_done_callback(self._body_sent)
        try:
            while not sender.done() and self._answer is None and self._failure is None:
                await self._wait(None)  # the sender's own timeouts bound this
        finally:
            if not sender.done():
                sender.cancel()  # an answer (or a failure) came first: the rest is not sent
        if self._answer is None and sender.done() and not sender.cancelled():
            error = sender.exception()
            if error is not None:
                raise error

    def _body_sent(self, sender: asyncio.Task[None]) -> None:
        if not sender.cancelled():
            sender.exception()  # retrieved: request() raises it unless an answer came first
        wake(self._waiter)

    async def _send_stream(self, body: AsyncIterable[bytes], content_length: int | None) -> None:
        written = 0
        async for chunk in body:
            if not chunk:
                continue  # an empty chunk would end a chunked body early
            await self._read_first()
            if self._answer is not None:
                return
            written += len(chunk)
            if content_length is None:
                self._write(b"%x\r\n%b\r\n" % (len(chunk), chunk))
            elif written > content_length:
                raise ValueError("the request body is longer than its Content-Length")
            else:
                self._write(chunk)
            await self._drain()
        if self._answer is not None:
            return
        if content_length is None:
            self._write(b"0\r\n\r\n")
        elif written != content_length:
            raise ValueError("the request body is shorter than its Content-Length")
        self._request_done = True
        await self._drain()

    async def _read_first(self) -> None:
        """Let the loop read what the upstream sent before more of the body is written.

        An upstream that answers early often closes with the body unread, which resets the
        connection; a write after that fails, and the transport then closes without reading
        the answer that came before the reset. So while bytes wait to be read, the loop reads
        them first (a few turns at most: a paused reader keeps them waiting).
        """
        readable = self._readable
        turns = 0
        while (
            readable is not None
            and turns < 3
            and not self.closed
            and self._answer is None
            and readable.poll(0)
        ):
            turns += 1
            await asyncio.sleep(0)

    async def _drain(self) -> None:
        """Wait while the transport's buffer is over its high-water mark: the reverse
        back-pressure, a slow upstream slows the sender of the body."""
        if self._write_paused and not self.closed and self._answer is None:
            waiter = self._drain_waiter = self._loop.create_future()
            try:
                drained = await within(waiter, self._read_timeout)
            finally:
                self._drain_waiter = None
            if not drained and self._answer is None:
                raise UpstreamReadTimeout(
                    f"the upstream took no request bytes for {self._read_timeout} s", sent=True
                )
        if self.closed and self._answer is None:
            raise self._failure or UpstreamDisconnected(
                "the upstream closed the connection while the request was sent",
                sent=self._sent,
                received=self._received,
            )

    async def _wait_head(self) -> UpstreamResponse:
        # Other news wakes this wait too (a 100 Continue the request did not ask for): like
        # any bytes from the upstream it restarts the read timeout.
        while self._answer is None and self._failure is None:
            arrived = await self._wait(self._read_timeout)
            if not arrived and self._answer is None and self._failure is None:
                raise UpstreamReadTimeout(
                    f"no answer within {self._read_timeout} s",
                    sent=True,
                    received=self._received,
                )
        if self._answer is not None:
            return self._answer  # a failure after the head reaches the body's reader
        raise cast(UpstreamError, self._failure)

    def _finish_exchange(self, keep_alive: bool) -> None:
        response, self._response = self._response, None
        self._parser = None
        if response is not None:
            response._finish()
        if keep_alive and not self._early and not self.closed:
            self.resume_reading()
            if self._answer is None:
                self._on_idle(self)
            else:
                # request() has not handed this answer over yet: a request that took the
                # connection now would reset it under the waiting caller.
                self._idle_pending = True
        else:
            self.abort()

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport (uvloop's do not subclass asyncio.Transport, so no isinstance).
        self._transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None and hasattr(select, "poll"):
            self._readable = select.poll()
            self._readable.register(sock.fileno(), select.POLLIN)

    def data_received(self, data: bytes) -> None:
        parser = self._parser
        if parser is None:
            # An idle connection must be silent; bytes nobody asked for make it untrustworthy.
            self.abort()
            return
        self._received = True
        try:
            parser.feed(data)
        except UpstreamError as exc:
            self.fail(exc)
            return
        if parser.complete:
            self._finish_exchange(parser.keep_alive)

    def eof_received(self) -> bool:
        return False  # close our side too; connection_lost settles the exchange

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.deadline.cancel()
        wake(self._drain_waiter)
        parser = self._parser
        if parser is not None and not parser.complete:
            if parser.head_done and parser.until_close:
                # No length and no chunks: the answer ends where the connection does.
                self._finish_exchange(False)
            else:
                self.fail(
                    UpstreamDisconnected(
                        "the upstream closed the connection before its answer was complete",
                        sent=self._sent,
                        received=self._received,
                    )
                )
        self._notify_closed()

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        wake(self._drain_waiter)

    def _notify_closed(self) -> None:
        on_close, self._on_close = self._on_close, None
        if on_close is not None:
            on_close(self)
