"""The upstream's side of a WebSocket: a connection of its own, the handshake sent, the answer
parsed by llhttp (a 101's head, or a refusal whole), then the upstream's bytes for the relay."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, cast

import httptools

from gateway.dataplane.upstream import Target
from gateway.dataplane.upstream_http import (
    UpstreamDisconnected,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamReadTimeout,
    UpstreamResponse,
)
from gateway.http.framing import Framing

if TYPE_CHECKING:
    from gateway.dataplane.websocket_relay import Relay

Header = tuple[bytes, bytes]

# The upstream's answer to a handshake: its head is bounded like any answer's; a refusal is
# read whole before it is relayed as an ordinary answer, so its body is bounded too.
_MAX_HEAD = 64 * 1024
_MAX_REFUSAL_BODY = 1024 * 1024


class _Stop(Exception):
    """Raised inside a parser callback to stop llhttp."""


async def open_upstream(
    target: Target, head: bytes, *, connect_timeout: float, read_timeout: float
) -> UpstreamSide:
    """A connection of its own (never pooled: it will carry another protocol) with the
    handshake sent and the answer in: a 101's head, or a refusal whole."""
    upstream = await target.pool.connect(UpstreamSide, connect_timeout)
    try:
        await upstream.handshake(head, read_timeout)
    except BaseException:
        upstream.abort()
        raise
    return upstream


class UpstreamSide(asyncio.Protocol):
    """The upstream's connection: the answer to the handshake, then its WebSocket bytes."""

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.status = 0
        self.reason = b""
        self.headers: list[Header] = []
        self.body = bytearray()
        self.tail = b""  # what followed a 101's head: the start of the upstream's stream
        self.relay: Relay | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._answered: asyncio.Future[UpstreamError | None] = self._loop.create_future()
        self._received = 0
        self._refusal: str | None = None
        self._interim = self._head_done = self._until_close = False
        self._framing = Framing()

    async def handshake(self, head: bytes, read_timeout: float) -> None:
        if self.transport is None or self.closed:
            raise UpstreamDisconnected("the connection closed before the handshake", sent=False)
        self.transport.write(head)
        try:
            async with asyncio.timeout(read_timeout):
                error = await self._answered
        except TimeoutError:
            raise UpstreamReadTimeout(
                f"no answer to the WebSocket handshake within {read_timeout} s",
                sent=True,
                received=self._received > 0,
            ) from None
        if error is not None:
            raise error

    def answer(self) -> UpstreamResponse:
        """The answer, whole, in the form the response relay sends on."""
        # Detached from any pooled connection: the body is all here, nothing more is read.
        response = UpstreamResponse(
            None,  # type: ignore[arg-type] # no connection: the answer is complete
            self.status,
            self.reason,
            self.headers,
            self._parser.get_http_version(),
            length=self._framing.length,
            high_water=len(self.body) + 1,
            read_timeout=0.0,
        )
        if self.body:
            response._feed(bytes(self.body))
        response._finish()
        return response

    def abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    def _settle(self, error: UpstreamError | None) -> None:
        if not self._answered.done():
            self._answered.set_result(error)

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        relay = self.relay
        if relay is not None:
            relay.from_upstream(data)
            return
        if self._answered.done():
            if self.status == 101:
                self.tail += data  # read before the relay started; reading is paused now
            return
        self._received += len(data)
        try:
            self._parser.feed_data(data)
            if not self._head_done and self._received > _MAX_HEAD:
                raise _Stop(f"the response head is larger than {_MAX_HEAD} bytes")
        except httptools.HttpParserUpgrade as exc:
            if self.status != 101:
                self._fail("an upgrade without 101 Switching Protocols")
                return
            self.tail = data[exc.args[0] :]
            if self.transport is not None:
                self.transport.pause_reading()  # until the client has the head
            self._settle(None)
        except (_Stop, httptools.HttpParserError) as exc:
            if not self._answered.done():  # else: a refusal, complete; it is relayed as it is
                self._fail(self._refusal or f"malformed answer: {exc}")

    def _fail(self, reason: str) -> None:
        self._settle(UpstreamProtocolError(reason, sent=True, received=True))
        self.abort()

    def eof_received(self) -> bool:
        return False  # close our side too; connection_lost says what it means

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.relay is not None:
            self.relay.finish("upstream_closed")
        elif self._head_done and self._until_close:
            self._settle(None)  # no length and no chunks: the answer ends with the connection
        else:
            self._settle(
                UpstreamDisconnected(
                    "the upstream closed the connection before its answer to the handshake",
                    sent=True,
                    received=self._received > 0,
                )
            )

    def pause_writing(self) -> None:
        if self.relay is not None:
            self.relay.pause_client()

    def resume_writing(self) -> None:
        if self.relay is not None:
            self.relay.resume_client()

    # httptools callbacks

    def _refuse(self, reason: str) -> None:
        self._refusal = reason
        raise _Stop(reason)

    def on_status(self, status: bytes) -> None:
        self.reason += status

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._head_done:
            return  # a chunked refusal's trailer fields: not relayed
        self.headers.append((name, value))
        refusal = self._framing.refusal(name, value)  # as for any answer
        if refusal is not None:
            self._refuse(refusal)

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if status < 200 and status != 101:
            # An interim answer (100 Continue, 103 Early Hints): the final one follows.
            self._interim = True
            self.reason, self.headers = b"", []
            self._framing.reset()
            return
        self.status = status
        if status == 101:
            if not any(
                n.lower() == b"upgrade" and v.strip().lower() == b"websocket"
                for n, v in self.headers
            ):
                self._refuse("101 Switching Protocols to something other than websocket")
            return
        conflict = self._framing.conflict()
        if conflict is not None:
            self._refuse(conflict)
        self._head_done = True
        self._until_close = not (self._framing.delimited or status in (204, 304))

    def on_body(self, body: bytes) -> None:
        if len(self.body) + len(body) > _MAX_REFUSAL_BODY:
            self._refuse(f"a refusal of the handshake larger than {_MAX_REFUSAL_BODY} bytes")
        self.body += body

    def on_message_complete(self) -> None:
        if self._interim:
            self._interim = False
        elif self.status != 101:  # a 101 ends in HttpParserUpgrade, with the stream's offset
            self._settle(None)
            raise _Stop("the answer is complete")  # nothing after it is read
