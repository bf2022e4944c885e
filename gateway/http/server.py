"""The admin listener's server: aiohttp's, with a request-head deadline and its own answers in
our envelope. (The data plane's is ``protocol``.)

aiohttp answers malformed requests (bad request line, oversized headers) and handler crashes
itself, as plain text. A client of the gateway must get the one JSON error envelope for those
too, with a request id, and no detail from the parser echoed back.

aiohttp has no deadline for a request head: a client that sends part of one and stops (or
trickles a byte at a time) holds its connection until the keep-alive timer, and every
such connection costs a socket and a handler. The handler here gives each head a total
deadline, server.header_timeout, from the connection's accept (first request) or from the
head's first byte (later ones), and answers 408 when it passes.
"""

from __future__ import annotations

import asyncio
from typing import Any

import structlog
from aiohttp import web
from aiohttp.http_exceptions import LineTooLong
from aiohttp.streams import EMPTY_PAYLOAD, StreamReader
from aiohttp.web_protocol import RequestHandler, _ErrInfo

from gateway.errors import (
    HEAD_TIMEOUT_MESSAGE,
    GatewayError,
    GatewayTimeout,
    HeadersTooLarge,
    InternalError,
    MalformedRequest,
    RequestTimeout,
)
from gateway.http.request_id import new_request_id

log = structlog.get_logger("gateway.http")


class RequestHeadTimeout(Exception):
    """A request head was not complete by server.header_timeout."""


def _error_for(status: int) -> GatewayError:
    if status == 431:
        return HeadersTooLarge()
    if status == 408:
        return RequestTimeout(HEAD_TIMEOUT_MESSAGE)
    if status == 504:
        return GatewayTimeout()
    if 400 <= status < 500:
        error = MalformedRequest()
        error.status = status
        return error
    return InternalError()


class _EnvelopeRequestHandler(RequestHandler):
    """One connection: envelope errors, and a total deadline for each request head.

    One timer handle per connection, kept like aiohttp's keep-alive timer: starting a head
    only writes its deadline, and the handle reschedules itself when it fires early, so a
    busy keep-alive connection costs no timer work per request.
    """

    __slots__ = (
        "_head_bytes",
        "_head_deadline",
        "_head_handle",
        "_head_payload",
        "_header_timeout",
    )

    def __init__(self, manager: web.Server, *, header_timeout: float, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._header_timeout = header_timeout
        # The loop time by which the head in progress must be complete; 0.0: none is.
        self._head_deadline = 0.0
        self._head_handle: asyncio.TimerHandle | None = None
        # Bytes of the next head have arrived (it is in progress, not merely awaited).
        self._head_bytes = False
        # The body of the last request: bytes arriving before it ends are body, not a head.
        self._head_payload: StreamReader = EMPTY_PAYLOAD

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        # SECURITY: the first head's deadline runs from the accept, so a connection that
        # never completes one is closed at header_timeout whatever the idle timeout.
        self._head_deadline = deadline = self._loop.time() + self._header_timeout
        self._head_handle = self._loop.call_at(deadline, self._check_head)

    def connection_lost(self, exc: BaseException | None) -> None:
        super().connection_lost(exc)
        self._head_deadline = 0.0
        if self._head_handle is not None:
            self._head_handle.cancel()
            self._head_handle = None

    def data_received(self, data: bytes) -> None:
        if (
            not self._head_bytes
            and data
            and self._head_payload.is_eof()
            and not self._upgraded
            and self._payload_parser is None
        ):
            # The first bytes of a head; a later head's deadline runs from here.
            self._head_bytes = True
            self._head_payload = EMPTY_PAYLOAD
            if not self._head_deadline:
                self._head_deadline = deadline = self._loop.time() + self._header_timeout
                if self._head_handle is None:
                    self._head_handle = self._loop.call_at(deadline, self._check_head)
        count = self._request_count
        super().data_received(data)
        if self._request_count != count:
            # The parser produced a message: its head is complete. Bytes that came with it
            # and begin yet another head start that head's deadline on their next read.
            self._head_bytes = False
            self._head_deadline = 0.0
            if self._messages:
                self._head_payload = self._messages[-1][1]

    def _process_keepalive(self) -> None:
        if self._head_bytes:
            # A head in progress answers to its own deadline, not the idle one; aiohttp
            # restarts the idle timer after the response to it.
            self._keepalive_handle = None
            return
        super()._process_keepalive()

    def _check_head(self) -> None:
        self._head_handle = None
        deadline = self._head_deadline
        if not deadline or self._force_close or self._close or self.transport is None:
            return
        loop = self._loop
        now = loop.time()
        if now < deadline or self._buffer_paused:
            if now >= deadline:
                # Reading is paused by our own back-pressure (pipelined requests queued):
                # the rest of the head may be waiting in the socket, so the client is not late.
                self._head_deadline = deadline = now + self._header_timeout
            self._head_handle = loop.call_at(deadline, self._check_head)
            return
        self._head_deadline = 0.0
        if not self._head_bytes:
            # Not a byte since the accept: close it silently, like an idle keep-alive one.
            if self._waiter is not None and not self._waiter.done():
                self.force_close()
            return
        # Answered through aiohttp's own error path (handle_error below): after any request
        # still in progress, then the connection is closed.
        self._messages.append(
            (
                _ErrInfo(status=408, exc=RequestHeadTimeout(), message=HEAD_TIMEOUT_MESSAGE),
                EMPTY_PAYLOAD,
            )
        )
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def finish_response(
        self, request: web.BaseRequest, resp: web.StreamResponse, start_time: float | None
    ) -> tuple[web.StreamResponse, bool]:
        if not resp.prepared and not request.content.is_eof():
            # An answer before the request's body has all arrived: above all a refusal of an
            # `Expect: 100-continue` request, whose client was never asked for the body and
            # may send it now or never. Nothing after this answer can safely be read as a
            # request, so it closes the connection; aiohttp still reads and drops what
            # arrives for a while before closing, so a client still sending does not lose
            # the answer to a reset.
            resp.force_close()
        return await super().finish_response(request, resp, start_time)

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        request_id = new_request_id()
        if isinstance(exc, LineTooLong):
            status = 431
        if status >= 500:
            log.error("http_error", status=status, request_id=request_id, exc_info=exc)
        else:
            # Scanners and broken clients are routine on a public port: one line, no traceback.
            log.info(
                "bad_http_request",
                status=status,
                request_id=request_id,
                client_ip=request.remote,
                reason=type(exc).__name__ if exc else None,
            )
        if request.writer.output_size > 0:
            raise ConnectionError("response already started; the connection is closed")
        response = _error_for(status).render(request_id)
        response.force_close()
        return response


class EnvelopeServer(web.Server):
    """web.Server whose connections answer protocol errors with the JSON error envelope and
    give each request head header_timeout seconds to arrive complete."""

    def __init__(self, *args: Any, header_timeout: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.header_timeout = header_timeout

    def __call__(self) -> RequestHandler:
        kwargs: dict[str, Any] = self._kwargs
        return _EnvelopeRequestHandler(
            self, loop=self._loop, header_timeout=self.header_timeout, **kwargs
        )


class EnvelopeAppRunner(web.AppRunner):
    """web.AppRunner whose server is an EnvelopeServer (the admin listener's)."""

    __slots__ = ("_header_timeout",)

    def __init__(self, app: web.Application, *, header_timeout: float, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self._header_timeout = header_timeout

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()  # the app's own, with its request factory
        return EnvelopeServer(
            server.request_handler,
            request_factory=server.request_factory,
            handler_cancellation=server.handler_cancellation,
            loop=server._loop,
            header_timeout=self._header_timeout,
            **server._kwargs,
        )
