"""The data plane's HTTP/1.1 server: llhttp (httptools) on asyncio Protocols, one per connection.

A gateway's server has one job, forwarding, and aiohttp's is made for every web application:
per request it builds a request object with lazy properties, a payload writer and its own
task machinery, and the profile put that at about as much CPU as the whole proxying. This one
parses with the same C parser as the upstream client (``dataplane/upstream_http``), hands each
request to the data plane in a task, and writes answers with one ``transport.write`` when
they are whole.

What a public port needs is here, each with its reason beside it: a deadline for every
request head, size limits on heads, framing refused when two parties could read it
differently, pipelined requests answered in order, back-pressure both ways, keep-alive idle
expiry, the JSON error envelope for anything malformed, and a drain on shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Awaitable, Callable
from email.utils import formatdate
from time import time
from typing import Protocol

import httptools
import structlog
from aiohttp import web
from aiohttp.base_protocol import BaseProtocol
from aiohttp.streams import EMPTY_PAYLOAD, StreamReader
from multidict import CIMultiDict, CIMultiDictProxy

from gateway.errors import (
    HEAD_TIMEOUT_MESSAGE,
    GatewayError,
    HeadersTooLarge,
    InternalError,
    MalformedRequest,
    RequestTimeout,
)
from gateway.http.framing import Framing
from gateway.http.headers import Field, encode_fields
from gateway.http.request import Request
from gateway.http.request_id import new_request_id

log = structlog.get_logger("gateway.http")

Handler = Callable[[Request], Awaitable[web.StreamResponse]]
# How an error found below the handler (a malformed request, a handler that failed) is
# answered: by default as ours; the data plane answers it with its config's error map.
RenderError = Callable[[GatewayError], web.Response]


def _render_as_ours(error: GatewayError) -> web.Response:
    return error.render(new_request_id())


# Pipelined requests parsed ahead of the one being answered; past this, reading pauses.
_QUEUE_LIMIT = 16
# A request body is buffered up to twice this before reading from its client pauses.
_BODY_BUFFER = 64 * 1024
_NO_BODY_STATUSES = frozenset({101, 204, 304})
# How long a refused client may go on sending before its connection is reset (see _close).
_LINGER_SECONDS = 2.0
_FRAMING_FIELDS = frozenset({b"content-length", b"transfer-encoding"})


class _Stop(Exception):
    """Raised in a parser callback to stop llhttp; the answer is in ``_refusal``."""


class Upgraded(Protocol):
    """What a connection's bytes go to once another protocol has taken it over."""

    def feed_data(self, data: bytes) -> None: ...

    def feed_eof(self) -> None: ...


class _DateLine:
    """The Date header our own answers carry, formatted once a second."""

    second = 0
    line = b""

    @classmethod
    def now(cls) -> bytes:
        second = int(time())
        if cls.second != second:
            cls.line = f"Date: {formatdate(second, usegmt=True)}\r\n".encode("ascii")
            cls.second = second
        return cls.line


class HttpConnection(BaseProtocol):
    """One client connection: parses its requests, runs them in order, writes the answers.

    Two deadlines, each with one timer handle per connection: the head in progress, and
    keep-alive idleness. Moving a deadline only writes it, and its handle reschedules itself
    when it fires early, so a busy keep-alive connection costs no timer work per request.
    """

    __slots__ = (
        "_body",
        "_chunked",
        "_closing",
        "_complete",
        "_draining",
        "_framing",
        "_head_bytes",
        "_head_deadline",
        "_head_handle",
        "_head_received",
        "_head_size",
        "_headers",
        "_http",
        "_idle_deadline",
        "_idle_handle",
        "_keep",
        "_linger_handle",
        "_queue",
        "_refusal",
        "_server",
        "_stopped",
        "_tail",
        "_taken_over",
        "_task",
        "_upgrading",
        "_url",
        "remote",
        "secure",
    )

    def __init__(self, server: HttpServer) -> None:
        super().__init__(server.loop)
        self._server = server
        self._http = httptools.HttpRequestParser(self)
        self._queue: deque[Request] = deque()
        self._task: asyncio.Task[None] | None = None
        self._body: StreamReader = EMPTY_PAYLOAD  # the body being parsed
        self._url: list[bytes] = []
        self._headers: list[Field] = []
        self._head_size = 0
        self._framing = Framing()
        self._refusal: GatewayError | None = None  # answered once the requests before it are
        self._head_bytes = False  # a head has begun and is not complete
        # Loop times by which the head in progress must be complete, and by which an idle
        # connection closes; 0.0: none.
        self._head_deadline = self._idle_deadline = 0.0
        self._head_handle: asyncio.TimerHandle | None = None
        self._idle_handle: asyncio.TimerHandle | None = None
        self._linger_handle: asyncio.TimerHandle | None = None  # see _close
        # Three ways to stop: _stopped, no more bytes are parsed (a refused request; what is
        # queued before it is still answered); _draining, the server stops: the message being
        # read is finished, then nothing more; _closing, the connection closes after the
        # answer in progress.
        self._stopped = self._draining = self._closing = False
        self._head_received = 0  # bytes fed while a head was in progress
        # After a request that asks to switch protocols, llhttp stops: the bytes after it are
        # held until its answer says whose they are (the next protocol's, or HTTP's again).
        self._upgrading = False
        self._tail = b""
        self._taken_over: tuple[Upgraded, Callable[[], None]] | None = None
        # The response in progress: chunk its body, keep the connection after it, complete.
        self._chunked = False
        self._keep = True
        self._complete = True
        self.remote = ""
        self.secure = False

    # The connection.

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        peer = transport.get_extra_info("peername")
        self.remote = str(peer[0]) if isinstance(peer, tuple) else ""
        self.secure = transport.get_extra_info("sslcontext") is not None
        self._server.connections.add(self)
        # SECURITY: the first head's deadline runs from the accept, so a connection that never
        # completes one is closed at header_timeout whatever the idle timeout.
        self._set_head_deadline()

    def connection_lost(self, exc: BaseException | None) -> None:
        super().connection_lost(exc)
        self._server.closed(self)
        self._stopped = self._closing = True
        for handle in (self._head_handle, self._idle_handle, self._linger_handle):
            if handle is not None:
                handle.cancel()
        self._head_handle = self._idle_handle = self._linger_handle = None
        if self._taken_over is not None:
            self._taken_over[0].feed_eof()
        body = self._body
        if body is not EMPTY_PAYLOAD and not body.is_eof():
            body.set_exception(ConnectionResetError("the client closed the connection"))
        for request in self._queue:
            if not request.content.is_eof():
                request.content.set_exception(ConnectionResetError("connection lost"))

    def data_received(self, data: bytes) -> None:
        if self._taken_over is not None:
            self._taken_over[0].feed_data(data)
            return
        if self._stopped:
            return  # after a refused or last request: nothing is read as HTTP
        if self._upgrading:
            self._tail += data  # an upgrade request is still being answered
            return
        if self._body is EMPTY_PAYLOAD:
            if self._draining and not self._head_bytes:
                self._stopped = True  # between two messages: the next is not read
                return
            # SECURITY: llhttp hands a header field over only once it is whole, and builds it
            # by copying: a field megabytes long would cost memory and CPU before any check.
            # A head is bounded as a whole instead, as it arrives.
            self._head_received += len(data)
            if self._head_received > self._server.max_head_size:
                self._refuse(HeadersTooLarge(), reason="head larger than the limit")
                return
        try:
            self._http.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            # llhttp stops after a request that asks to switch protocols: what follows is the
            # next protocol's, if the answer switches, or the next request's, if it does not.
            self._upgrading = True
            self._tail = data[exc.args[0] :]
            self._buffer_paused = True
            self._pause_transport_reading()
        except httptools.HttpParserCallbackError:
            if self._refusal is None and self._draining:
                self._stopped = True  # the next message began: not read while draining
                return
            self._refuse(self._refusal or MalformedRequest())
        except httptools.HttpParserError as exc:
            self._refuse(MalformedRequest(), reason=str(exc))

    def pause_reading(self) -> None:
        # A request body's buffer is full (aiohttp's StreamReader calls this).
        if not self._reading_paused:
            self._reading_paused = True
            self._pause_transport_reading()

    def resume_reading(self, resume_parser: bool = True) -> None:
        # Called on every read of a body below its low-water mark: cheap when not paused.
        if self._reading_paused:
            self._reading_paused = False
            if not self._buffer_paused:
                self._resume_transport_reading()

    # The parser's callbacks.

    def on_message_begin(self) -> None:
        if self._draining:
            raise _Stop()  # no new request once the server drains
        self._url = []
        self._headers = []
        self._head_size = 0
        self._framing.reset()
        self._head_bytes = True
        self._idle_deadline = 0.0
        if not self._head_deadline:
            # A later head's deadline runs from its first byte (the first's, from the accept).
            self._set_head_deadline()

    def on_url(self, url: bytes) -> None:
        self._url.append(url)
        self._head_size += len(url)
        if self._head_size > self._server.max_field_size:
            self._stop(HeadersTooLarge())

    def on_header(self, name: bytes, value: bytes) -> None:
        server = self._server
        if len(name) + len(value) > server.max_field_size:
            self._stop(HeadersTooLarge())
        if len(self._headers) >= server.max_headers:
            self._stop(HeadersTooLarge("The request has too many header fields."))
        refusal = self._framing.refusal(name, value)
        if refusal is not None:
            # SECURITY: framing a backend could read differently (request smuggling).
            self._stop(MalformedRequest(f"The request has {refusal}."))
        self._headers.append((name, value.rstrip(b" \t")))

    def on_headers_complete(self) -> None:
        parser = self._http
        self._head_bytes = False
        self._head_deadline = 0.0
        self._head_received = 0
        conflict = self._framing.conflict()
        if conflict is not None:
            self._stop(MalformedRequest(f"The request has {conflict}."))
        if parser.should_upgrade() and self._framing.delimited:
            # SECURITY: llhttp does not read the body of a request that asks to switch
            # protocols; its bytes would be taken for the next request (smuggling).
            self._stop(MalformedRequest("A request that asks to switch protocols has a body."))
        # SECURITY: the request keeps the head's fields; what on_header sees from here on
        # are a chunked body's trailers, checked like the head's but never forwarded (no
        # plugin saw them).
        fields, self._headers = self._headers, []
        headers = CIMultiDictProxy(
            CIMultiDict(
                [
                    (
                        name.decode("utf-8", "surrogateescape"),
                        value.decode("utf-8", "surrogateescape"),
                    )
                    for name, value in fields
                ]
            )
        )
        length = self._framing.length
        if length or self._framing.chunked:
            self._body = StreamReader(self, _BODY_BUFFER, loop=self._loop)
        else:
            self._body = EMPTY_PAYLOAD
        version = parser.get_http_version()
        request = Request(
            self,
            parser.get_method().decode("ascii"),
            b"".join(self._url).decode("utf-8", "surrogateescape"),
            (1, 1) if version == "1.1" else (1, 0) if version == "1.0" else (0, 9),
            headers,
            fields,
            length,
            self._body,
            keep_alive=parser.should_keep_alive(),
            upgrade=parser.should_upgrade(),
        )
        self._queue.append(request)
        if self._task is None:
            self._task = self._loop.create_task(self._serve())
        elif len(self._queue) > _QUEUE_LIMIT and not self._buffer_paused:
            self._buffer_paused = True
            self._pause_transport_reading()

    def on_body(self, body: bytes) -> None:
        self._body.feed_data(body)

    def on_message_complete(self) -> None:
        body = self._body
        if body is not EMPTY_PAYLOAD:
            body.feed_eof()
            self._body = EMPTY_PAYLOAD

    def _stop(self, refusal: GatewayError) -> None:
        self._refusal = refusal
        raise _Stop()

    # Answering.

    async def _serve(self) -> None:
        """Answer the queued requests in order; ends when the queue is empty."""
        try:
            while True:
                if not await self._answer_queued():
                    return
                if self._refusal is not None:
                    self._answer_refusal()
                    return
                if self._upgrading:
                    # Answered without switching: the bytes after it are HTTP again, and may
                    # hold more requests.
                    self._after_upgrade()
                    if self._queue:
                        continue
                if not self._head_bytes and not self._stopped:
                    self._set_idle_deadline()
                return
        except Exception:
            log.exception("connection_failed", client_ip=self.remote)
            self.abort()
        except BaseException:
            self.abort()  # cancelled: nothing half-sent may look complete
            raise
        finally:
            self._task = None

    async def _answer_queued(self) -> bool:
        """Answer requests until the queue is empty; False when the connection is done."""
        queue = self._queue
        handler = self._server.handler
        while queue:
            request = queue[0]
            try:
                response = await handler(request)
            except Exception:
                log.exception("unhandled_error")
                response = self._server.render_error(InternalError())
            if not request.started:
                try:
                    self._answer(request, response)
                except ConnectionError:
                    self.abort()  # the client left before its answer
                    return False
            queue.popleft()
            if not self._complete:
                self.abort()  # a response cut short must never look complete
                return False
            if not self._keep or self.transport is None:
                self._answer_refusal()  # a malformed request after this one, if any
                # Answered before its body ended: the client may still be sending it.
                self._close(linger=not request.content.is_eof())
                return False
            if self._paused:
                # The client is not reading its answers: answer nothing more until it does,
                # or pipelined requests would queue answers here without bound.
                try:
                    await self._drained()
                except ConnectionError:
                    return False
            if self._buffer_paused and not self._upgrading and len(queue) <= _QUEUE_LIMIT // 2:
                self._buffer_paused = False
                if not self._reading_paused and not self._stopped:
                    self._resume_transport_reading()
        return True

    async def _drained(self) -> None:
        """Wait until the client takes what it was sent, for at most idle_timeout; a client
        that reads nothing for that long is cut off (ConnectionResetError)."""
        if self.transport is None:
            raise ConnectionResetError("the client closed the connection")
        try:
            async with asyncio.timeout(self._server.idle_timeout):
                await self._drain_helper()
        except TimeoutError:
            self.abort()
            raise ConnectionResetError("the client read nothing for idle_timeout") from None
        if self.transport is None:
            raise ConnectionResetError("the client closed the connection")

    def _answer(self, request: Request, response: web.StreamResponse) -> None:
        """Write one of the gateway's own answers (an envelope, a preflight, /v1/me) whole."""
        body = getattr(response, "body", None)
        data = body if isinstance(body, bytes) else b""
        try:
            self.send_head(
                request,
                response.status,
                response.reason.encode("utf-8", "surrogateescape"),
                encode_fields(response.headers.items()),
                len(data),
                data,
                keep_alive=response.keep_alive is not False,
            )
        except ValueError:
            log.exception("unsendable_response", status=response.status)
            self._answer(request, self._server.render_error(InternalError()))

    def send_interim(self, request: Request, head: bytes) -> None:
        """An interim answer (``100 Continue``): not the response, which is still to come."""
        transport = self._writable()
        transport.write(head)

    def send_head(
        self,
        request: Request,
        status: int,
        reason: bytes,
        fields: list[Field],
        length: int | None,
        body: bytes | None = None,
        *,
        keep_alive: bool = True,
    ) -> None:
        """Send a response's head; with ``body``, the whole response in one write.

        The framing is the gateway's: the length when known, else chunked (or, for an
        HTTP/1.0 client, the end of the connection). A Date is added unless ``fields`` has one.
        """
        transport = self._writable()
        method = request.method
        lines = [b"HTTP/1.1 %d %s\r\n" % (status, reason)]
        dated = False
        for name, value in fields:
            size = len(name)
            if size == 4 and name.lower() == b"date":
                dated = True
            elif size in (14, 17) and name.lower() in _FRAMING_FIELDS:
                # The framing is ours alone: a stored answer replayed, or a plugin's, may
                # carry its own.
                continue
            lines.append(name + b": " + value + b"\r\n")
        keep = keep_alive and request.keep_alive and not self._closing and not self._draining
        if not request.content.is_eof():
            # An answer before the request's body has all arrived (a refused `Expect:
            # 100-continue`, an early upstream answer): nothing after it can safely be read
            # as a request.
            keep = False
        chunked = False
        if status in _NO_BODY_STATUSES or status < 200:
            if status == 304 and length is not None:
                lines.append(b"Content-Length: %d\r\n" % length)
            if status == 101:
                keep = False
            body = b""
        elif length is not None:
            lines.append(b"Content-Length: %d\r\n" % length)
        elif method != "HEAD":
            if request.version >= (1, 1):
                chunked = True
                lines.append(b"Transfer-Encoding: chunked\r\n")
            else:
                keep = False  # the end of the connection ends the body
        # A 101 names the protocol it switches to in its own Connection header.
        if not keep and status != 101:
            lines.append(b"Connection: close\r\n")
        elif keep and request.version < (1, 1):
            lines.append(b"Connection: keep-alive\r\n")
        if not dated:
            lines.append(_DateLine.now())
        lines.append(b"\r\n")
        head = b"".join(lines)
        # SECURITY: a CR or LF inside a value would split the head (response splitting).
        if head.count(b"\n") != len(lines) or head.count(b"\r") != len(lines):
            raise ValueError("a response header holds a line break")
        request.started = True
        self._keep = keep
        self._chunked = chunked
        if body is None:
            self._complete = method == "HEAD" or status in _NO_BODY_STATUSES or status < 200
            transport.write(head)
        else:
            self._complete = True
            transport.write(head + body if body and method != "HEAD" else head)

    async def send_body(self, chunk: bytes) -> None:
        """A piece of the body whose head ``send_head`` sent without it; waits while the
        client is not taking what it was sent."""
        transport = self._writable()
        if self._chunked:
            transport.writelines((f"{len(chunk):x}\r\n".encode("ascii"), chunk, b"\r\n"))
        else:
            transport.write(chunk)
        if self._paused:
            await self._drained()

    async def end_body(self) -> None:
        """The body is complete."""
        transport = self._writable()
        if self._chunked:
            transport.write(b"0\r\n\r\n")
        self._complete = True
        if self._paused:
            await self._drained()

    async def drain(self) -> None:
        """Wait until the client takes what it was sent (raises ConnectionError if it left)."""
        if self.transport is None:
            raise ConnectionResetError("the client closed the connection")
        await self._drain_helper()

    def _writable(self) -> asyncio.Transport:
        transport = self.transport
        if transport is None or transport.is_closing() or self._linger_handle is not None:
            raise ConnectionResetError("the client closed the connection")
        return transport

    def _close(self, *, linger: bool = False) -> None:
        """Close after what is queued is sent; with ``linger``, when the client may still be
        sending: a close with unread bytes resets the connection, and a reset can destroy
        the answer before the client reads it. So the write side is shut first, and what
        arrives is dropped until the client closes, for at most _LINGER_SECONDS (nginx's
        lingering close)."""
        self._stopped = self._closing = True
        transport = self.transport
        if transport is None or self._linger_handle is not None:
            return  # closed, or lingering already
        if linger and transport.can_write_eof() and not transport.is_closing():
            transport.write_eof()
            self._linger_handle = self._loop.call_later(_LINGER_SECONDS, self.abort)
            if not transport.is_reading():
                transport.resume_reading()  # dropped in data_received (_stopped)
            return
        transport.close()

    def abort(self) -> None:
        """Close without sending the rest: a response cut short must never look complete."""
        self._stopped = self._closing = True
        if self.transport is not None:
            self.transport.abort()

    # Malformed requests, late heads, upgrades.

    def _refuse(self, refusal: GatewayError, reason: str | None = None) -> None:
        """Answer a request that cannot be parsed, after those before it, and close."""
        self._refusal = refusal
        self._stopped = True
        self._pause_transport_reading()
        log.info(
            "bad_http_request",
            status=refusal.status,
            client_ip=self.remote,
            reason=reason or refusal.message,
        )
        if self._task is None:
            self._answer_refusal()

    def _answer_refusal(self) -> None:
        refusal, self._refusal = self._refusal, None
        transport = self.transport
        if refusal is None or transport is None or transport.is_closing():
            return
        refusal.close_connection = True
        response = self._server.render_error(refusal)
        request = Request(
            self,
            "GET",
            "",
            (1, 1),
            CIMultiDictProxy(CIMultiDict()),
            [],
            None,
            EMPTY_PAYLOAD,
            keep_alive=False,
            upgrade=False,
        )
        self._answer(request, response)
        self._close(linger=True)

    def take_over(self, upgraded: Upgraded, on_shutdown: Callable[[], None]) -> None:
        """The connection carries another protocol from now on: every byte the client sends
        goes to ``upgraded``; ``on_shutdown`` ends it when the server drains."""
        self._taken_over = (upgraded, on_shutdown)
        self._keep = False
        tail, self._tail = self._tail, b""
        self._upgrading = self._buffer_paused = False
        if tail:
            upgraded.feed_data(tail)
        if self.transport is not None and not self._reading_paused:
            self._resume_transport_reading()
        if self._draining:
            on_shutdown()  # switched while the server drains: ended at once

    def _after_upgrade(self) -> None:
        """An upgrade request was answered without switching: HTTP goes on with a new parser
        (llhttp does not resume after an upgrade) from the bytes that followed it."""
        tail, self._tail = self._tail, b""
        self._http = httptools.HttpRequestParser(self)
        self._upgrading = self._buffer_paused = False
        if not self._reading_paused:
            self._resume_transport_reading()
        if tail:
            self.data_received(tail)

    # Deadlines.

    def _set_head_deadline(self) -> None:
        loop = self._loop
        self._head_deadline = deadline = loop.time() + self._server.header_timeout
        if self._head_handle is None:
            self._head_handle = loop.call_at(deadline, self._check_head)

    def _set_idle_deadline(self) -> None:
        loop = self._loop
        self._idle_deadline = deadline = loop.time() + self._server.idle_timeout
        if self._idle_handle is None:
            self._idle_handle = loop.call_at(deadline, self._check_idle)

    def _check_head(self) -> None:
        self._head_handle = None
        deadline = self._head_deadline
        if not deadline or self._closing or self.transport is None:
            return
        now = self._loop.time()
        if now < deadline:
            self._head_handle = self._loop.call_at(deadline, self._check_head)
            return
        self._head_deadline = 0.0
        if not self._head_bytes:
            if self._task is None:
                self._close()  # not a byte since the accept: closed silently
            return
        if self._buffer_paused or self._reading_paused:
            # Our own back-pressure holds the rest of the head in the socket: not late.
            self._set_head_deadline()
            return
        # SECURITY: a client trickling a head, or sending part of one and stopping, must not
        # hold a connection and a socket past header_timeout.
        self._refuse(RequestTimeout(HEAD_TIMEOUT_MESSAGE), reason="RequestHeadTimeout")

    def _check_idle(self) -> None:
        self._idle_handle = None
        deadline = self._idle_deadline
        if not deadline or self._closing or self.transport is None:
            return
        now = self._loop.time()
        if now < deadline:
            self._idle_handle = self._loop.call_at(deadline, self._check_idle)
            return
        self._idle_deadline = 0.0
        if self._task is None and not self._head_bytes:
            self._close()

    # Draining.

    def begin_drain(self) -> None:
        """The server stops: an idle connection closes now, a busy one after its answer."""
        if self._taken_over is not None:
            end = self._taken_over[1]
            end()
            return
        self._draining = True
        if self._task is None and not self._head_bytes and self._body is EMPTY_PAYLOAD:
            self._close()


class HttpServer:
    """The data plane's listener: its connections, their settings, and the drain on shutdown."""

    def __init__(
        self,
        handler: Handler,
        *,
        header_timeout: float,
        idle_timeout: float,
        max_field_size: int,
        max_headers: int,
        render_error: RenderError = _render_as_ours,
    ) -> None:
        self.handler = handler
        self.render_error = render_error
        self.header_timeout = header_timeout
        self.idle_timeout = idle_timeout
        self.max_field_size = max_field_size
        self.max_headers = max_headers
        # A whole head: the request line and every field at their largest.
        self.max_head_size = max_field_size * (max_headers + 1)
        self.connections: set[HttpConnection] = set()
        self.loop = asyncio.get_running_loop()
        self._servers: list[asyncio.Server] = []
        self._all_closed: asyncio.Event | None = None  # set while draining

    def closed(self, conn: HttpConnection) -> None:
        self.connections.discard(conn)
        if not self.connections and self._all_closed is not None:
            self._all_closed.set()

    async def listen(self, host: str, port: int, *, reuse_port: bool) -> tuple[str, int]:
        """Start accepting on host:port; the address it got (port 0 picks one)."""
        server = await self.loop.create_server(
            lambda: HttpConnection(self),
            host,
            port,
            reuse_port=reuse_port or None,
            backlog=1024,
        )
        self._servers.append(server)
        address = server.sockets[0].getsockname()
        return str(address[0]), int(address[1])

    async def shutdown(self, drain_seconds: float) -> None:
        """Stop accepting, let requests in flight finish for up to drain_seconds, then close."""
        for server in self._servers:
            server.close()
        self._all_closed = all_closed = asyncio.Event()
        for conn in list(self.connections):
            conn.begin_drain()
        if self.connections:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(drain_seconds):
                    await all_closed.wait()
        cancelled = []
        for conn in list(self.connections):
            task = conn._task
            if task is not None:
                task.cancel()
                cancelled.append(task)
            conn.abort()
        if cancelled:
            # Their cleanup (snapshot references, upstream connections) runs before the rest
            # of the shutdown closes what it uses.
            await asyncio.wait(cancelled, timeout=1.0)
        for server in self._servers:
            await server.wait_closed()
        self._servers.clear()
