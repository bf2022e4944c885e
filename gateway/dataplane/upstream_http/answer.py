"""One upstream answer as llhttp (httptools) reads it, with what a forwarding proxy adds on top.

Framing a second party could read differently is refused, the head and the trailers have a
size limit, and interim answers (100, 102, 103) are passed over for the final one: only that
one is handed to the connection, never an interim answer taken for it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import httptools

from gateway.dataplane.upstream_http.errors import UpstreamProtocolError
from gateway.dataplane.upstream_http.response import UpstreamResponse
from gateway.http.framing import Framing

if TYPE_CHECKING:
    from gateway.dataplane.upstream_http.connection import UpstreamConnection

Header = tuple[bytes, bytes]


class _Stop(Exception):
    """Raised inside a parser callback to stop llhttp; the reason is kept in ``_refusal``."""


class AnswerParser:
    """The answers on one connection, one at a time: ``begin`` starts the next one. Fed the
    bytes that arrive, it tells the connection of the final head (``head_arrived``) and of a
    ``100 Continue`` (``continued``), and fills the response.

    ``complete`` says the answer ended; ``keep_alive`` then says whether the connection may
    carry another exchange as far as the answer is concerned.
    """

    __slots__ = (
        "_body_seen",
        "_conn",
        "_framing",
        "_head_seen",
        "_headers",
        "_high",
        "_interim",
        "_is_head",
        "_max_head",
        "_parser",
        "_quiet",
        "_read_timeout",
        "_reason",
        "_refusal",
        "_response",
        "complete",
        "head_done",
        "keep_alive",
        "until_close",
    )

    def __init__(self, conn: UpstreamConnection, max_head_size: int, high_water: int) -> None:
        self._conn = conn
        self._max_head = max_head_size
        self._high = high_water
        self._framing = Framing()
        self.begin(False, 0.0)

    def begin(self, is_head: bool, read_timeout: float) -> None:
        """Get ready for the answer to the next request (one made once per connection and
        reset: this is on every exchange)."""
        self._parser = httptools.HttpResponseParser(self)
        self._is_head = is_head
        self._read_timeout = read_timeout
        self._response: UpstreamResponse | None = None
        self._refusal: UpstreamProtocolError | None = None
        self.head_done = self.complete = self.keep_alive = self.until_close = False
        self._interim = self._body_seen = False
        self._framing.reset()
        # Interim heads count too: a flood of 100s is bounded like one large head.
        self._head_seen = self._quiet = 0
        self._reason = b""
        self._headers: list[Header] = []

    def feed(self, data: bytes) -> None:
        """Parse what arrived; UpstreamProtocolError for an answer that must not be passed on."""
        parser = self._parser
        try:
            if self.head_done:
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
                    if not self.head_done:
                        self._refuse(f"the response head is larger than {self._max_head} bytes")
                    parser.feed_data(view[room:])
        except (_Stop, httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
            if self.complete:
                self.keep_alive = False  # bytes after the answer: never reused
                return
            raise self._refusal or UpstreamProtocolError(
                f"malformed answer: {exc}", sent=True, received=True
            ) from None

    def _refuse(self, reason: str) -> None:
        self._refusal = UpstreamProtocolError(reason, sent=True, received=True)
        raise _Stop(reason)

    # httptools callbacks

    def on_message_begin(self) -> None:
        if self.complete:
            raise _Stop("a second answer to one request")

    def on_status(self, status: bytes) -> None:
        self._reason += status

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.head_done:
            return  # a chunked body's trailer fields: not part of the head, not forwarded
        self._headers.append((name, value))
        refusal = self._framing.refusal(name, value)
        if refusal is not None:
            self._refuse(refusal)

    def on_headers_complete(self) -> None:
        parser = self._parser
        status = parser.get_status_code()
        if status < 200:
            if status == 101:
                self._refuse("101 Switching Protocols to a request that asked for no upgrade")
            # An interim answer (100 Continue, 102 Processing, 103 Early Hints), asked for or
            # not: the final one follows, and only that one is the answer.
            self._interim = True
            self._reason, self._headers = b"", []
            self._framing.reset()
            if status == 100:
                self._conn.continued()
            return
        conflict = self._framing.conflict()
        if conflict is not None:
            self._refuse(conflict)
        self.head_done = True
        bodiless = self._is_head or status in (204, 304)
        self.until_close = not (bodiless or self._framing.delimited)
        self._response = UpstreamResponse(
            self._conn,
            status,
            self._reason,
            self._headers,
            parser.get_http_version(),
            length=self._framing.length,
            high_water=self._high,
            read_timeout=self._read_timeout,
        )
        self._conn.head_arrived(self._response)
        if self._is_head:
            self._response = None
            # llhttp cannot be told the request was HEAD and would wait for the body the
            # Content-Length announces: stop at the head, and do not reuse the connection
            # since what follows in the stream cannot be told apart.
            self.complete, self.keep_alive = True, False
            raise _Stop("HEAD")

    def on_body(self, body: bytes) -> None:
        self._body_seen = True
        if self._response is not None:
            self._response._feed(body)

    def on_message_complete(self) -> None:
        if self._interim:
            self._interim = False
            return
        self.complete = True
        self.keep_alive = self._parser.should_keep_alive()
        self._response = None  # the connection's to finish; an idle one keeps no body alive
