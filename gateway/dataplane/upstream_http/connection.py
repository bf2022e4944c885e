"""One upstream HTTP/1.1 connection: a Protocol that writes a request and parses its answer.

The answer is parsed by llhttp (httptools); this module adds what a forwarding proxy needs on
top: framing a second party could read differently is refused, a body cut short is an error
and never a short body, the head has a size limit, and reading pauses while the consumer lags.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, Callable, Sequence
from typing import cast

import httptools

from gateway.dataplane.upstream_http.errors import (
    UpstreamDisconnected,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamReadTimeout,
)
from gateway.dataplane.upstream_http.request_head import build_head, head_for_stream
from gateway.dataplane.upstream_http.response import UpstreamResponse, wake, within

Header = tuple[bytes, bytes]
Body = bytes | AsyncIterable[bytes] | None


class _Stop(Exception):
    """Raised inside a parser callback to stop llhttp; the reason is kept on the connection."""


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
        self._max_head = max_head_size
        self._high = high_water
        self._on_idle = on_idle
        self._on_close: Callable[[UpstreamConnection], None] | None = on_close
        self._transport: asyncio.Transport | None = None
        self.closed = False
        self.reused = False
        self.idle_since = 0.0
        self.reading_paused = False
        self._write_paused = False
        self._drain_waiter: asyncio.Future[bool] | None = None
        self._head_waiter: asyncio.Future[bool] | None = None
        self._parser: httptools.HttpResponseParser | None = None
        # _answer is what request() returns; _response is where body bytes go until the end.
        self._answer: UpstreamResponse | None = None
        self._response: UpstreamResponse | None = None
        self._failure: UpstreamError | None = None
        self._refusal: UpstreamProtocolError | None = None
        self._read_timeout = 0.0
        self._sent = self._received = False
        self._is_head = self._interim = self._head_done = self._complete = False
        self._keep_alive = self._has_length = self._chunked = self._until_close = False
        self._head_seen = self._quiet = 0
        self._body_seen = self._idle_pending = False
        self._reason = b""
        self._headers: list[Header] = []

    async def request(
        self,
        method: bytes,
        target: bytes,
        headers: Sequence[Header],
        body: Body = None,
        *,
        content_length: int | None = None,
        read_timeout: float,
    ) -> UpstreamResponse:
        """Send one request and return its answer once the head arrived.

        ``headers`` must not carry Content-Length or Transfer-Encoding: the framing is chosen
        here from ``body`` (bytes: a length; a stream: ``content_length`` or chunked; None: no
        body). Any failure closes the connection, whose state is then unknown.
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
            elif isinstance(body, bytes):
                framing = b"Content-Length: %d\r\n" % len(body)
                self._write(build_head(method, target, headers, framing) + body)
            else:
                await self._send_stream(
                    head_for_stream(method, target, headers, content_length), body, content_length
                )
            await self._drain()
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
            wake(self._head_waiter)
        self.abort()

    def pause_reading(self) -> None:
        if self._transport is not None and not self.closed:
            self.reading_paused = True
            self._transport.pause_reading()

    def resume_reading(self) -> None:
        if self.reading_paused and self._transport is not None and not self.closed:
            self.reading_paused = False
            self._transport.resume_reading()

    # The exchange.

    def _begin(self, method: bytes, read_timeout: float) -> None:
        self._parser = httptools.HttpResponseParser(self)
        self._read_timeout = read_timeout
        self._answer = self._response = None
        self._failure = self._refusal = None
        self._sent = self._received = False
        self._is_head = method == b"HEAD"
        self._interim = self._head_done = self._complete = False
        self._keep_alive = self._has_length = self._chunked = self._until_close = False
        self._head_seen = self._quiet = 0
        self._body_seen = self._idle_pending = False
        self._reason = b""
        self._headers = []

    def _write(self, data: bytes) -> None:
        if self.closed or self._transport is None:
            raise UpstreamDisconnected(
                "the upstream closed the connection while the request was sent",
                sent=self._sent,
                received=self._received,
            )
        self._sent = True
        self._transport.write(data)

    async def _send_stream(
        self, head: bytes, body: AsyncIterable[bytes], content_length: int | None
    ) -> None:
        self._write(head)
        written = 0
        async for chunk in body:
            if not chunk:
                continue  # an empty chunk would end a chunked body early
            written += len(chunk)
            if content_length is None:
                self._write(b"%x\r\n%b\r\n" % (len(chunk), chunk))
            elif written > content_length:
                raise ValueError("the request body is longer than its Content-Length")
            else:
                self._write(chunk)
            await self._drain()
        if content_length is None:
            self._write(b"0\r\n\r\n")
        elif written != content_length:
            raise ValueError("the request body is shorter than its Content-Length")

    async def _drain(self) -> None:
        """Wait while the transport's buffer is over its high-water mark: the reverse
        back-pressure, a slow upstream slows the sender of the body."""
        if self._write_paused and not self.closed:
            waiter = self._drain_waiter = self._loop.create_future()
            try:
                drained = await within(waiter, self._read_timeout)
            finally:
                self._drain_waiter = None
            if not drained:
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
        if self._answer is None and self._failure is None:
            waiter = self._head_waiter = self._loop.create_future()
            try:
                arrived = await within(waiter, self._read_timeout)
            finally:
                self._head_waiter = None
            if not arrived and self._answer is None and self._failure is None:
                raise UpstreamReadTimeout(
                    f"no answer within {self._read_timeout} s",
                    sent=True,
                    received=self._received,
                )
        if self._answer is not None:
            return self._answer  # a failure after the head reaches the body's reader
        if self._failure is not None:
            raise self._failure
        raise RuntimeError("woken without an answer or a failure")

    def _finish_exchange(self) -> None:
        response, self._response = self._response, None
        self._parser = None
        if response is not None:
            response._finish()
        if self._keep_alive and not self.closed:
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

    def data_received(self, data: bytes) -> None:
        parser = self._parser
        if parser is None:
            # An idle connection must be silent; bytes nobody asked for make it untrustworthy.
            self.abort()
            return
        self._received = True
        try:
            if self._head_done:
                self._body_seen = False
                parser.feed_data(data)
                # SECURITY: trailer fields and chunk extensions carry no body bytes, and
                # httptools joins a field's pieces in memory: bound what arrives without body
                # like a head (within one read of the limit).
                self._quiet = 0 if self._body_seen else self._quiet + len(data)
                if self._quiet > self._max_head:
                    self._refuse(f"more than {self._max_head} bytes of trailers or chunk metadata")
            else:
                room = self._max_head - self._head_seen
                if len(data) <= room:
                    self._head_seen += len(data)
                    parser.feed_data(data)
                else:
                    view = memoryview(data)
                    self._head_seen += room
                    parser.feed_data(view[:room])
                    if not self._head_done:
                        self._refuse(f"the response head is larger than {self._max_head} bytes")
                    parser.feed_data(view[room:])
        except (_Stop, httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
            if self._complete:
                self._keep_alive = False  # bytes after the answer: never reused
            else:
                self.fail(
                    self._refusal
                    or UpstreamProtocolError(f"malformed answer: {exc}", sent=True, received=True)
                )
                return
        if self._complete:
            self._finish_exchange()

    def eof_received(self) -> bool:
        return False  # close our side too; connection_lost settles the exchange

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        wake(self._drain_waiter)
        if self._parser is not None and not self._complete:
            if self._head_done and self._until_close:
                # No length and no chunks: the answer ends where the connection does.
                self._complete, self._keep_alive = True, False
                self._finish_exchange()
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

    # httptools callbacks

    def _refuse(self, reason: str) -> None:
        self._refusal = UpstreamProtocolError(reason, sent=True, received=True)
        raise _Stop(reason)

    def on_message_begin(self) -> None:
        if self._complete:
            raise _Stop("a second answer to one request")

    def on_status(self, status: bytes) -> None:
        self._reason += status

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._head_done:
            return  # a chunked body's trailer fields: not part of the head, not forwarded
        self._headers.append((name, value))
        size = len(name)
        # SECURITY: refuse any framing two parties could read differently (response smuggling).
        if size == 14 and name.lower() == b"content-length":
            if self._has_length:
                self._refuse("more than one Content-Length")
            if not value.strip(b" \t").isdigit():
                self._refuse("an invalid Content-Length")
            self._has_length = True
        elif size == 17 and name.lower() == b"transfer-encoding":
            if self._chunked or value.strip(b" \t").lower() != b"chunked":
                self._refuse("a transfer coding other than a single chunked")
            self._chunked = True

    def on_headers_complete(self) -> None:
        parser = self._parser
        if parser is None:
            raise _Stop("no exchange")
        status = parser.get_status_code()
        if status < 200:
            if status == 101:
                self._refuse("101 Switching Protocols to a request that asked for no upgrade")
            # An interim answer (100 Continue, 103 Early Hints): the final one follows.
            self._interim = True
            self._reason, self._headers = b"", []
            self._has_length = self._chunked = False
            return
        if self._has_length and self._chunked:
            self._refuse("both Content-Length and Transfer-Encoding")
        self._head_done = True
        bodiless = self._is_head or status in (204, 304)
        self._until_close = not (bodiless or self._has_length or self._chunked)
        self._answer = self._response = UpstreamResponse(
            self,
            status,
            self._reason,
            self._headers,
            parser.get_http_version(),
            high_water=self._high,
            read_timeout=self._read_timeout,
        )
        wake(self._head_waiter)
        if self._is_head:
            # llhttp cannot be told the request was HEAD and would wait for the body the
            # Content-Length announces: stop at the head, and do not reuse the connection
            # since what follows in the stream cannot be told apart.
            self._complete, self._keep_alive = True, False
            raise _Stop("HEAD")

    def on_body(self, body: bytes) -> None:
        self._body_seen = True
        if self._response is not None:
            self._response._feed(body)

    def on_message_complete(self) -> None:
        if self._interim:
            self._interim = False
            return
        self._complete = True
        parser = self._parser
        self._keep_alive = parser is not None and parser.should_keep_alive()
