"""One client request on the data plane, as the chain sees it; ``protocol`` parses it."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp.streams import EMPTY_PAYLOAD, StreamReader
from multidict import CIMultiDictProxy

if TYPE_CHECKING:
    import asyncio

    from gateway.http.headers import Field
    from gateway.http.protocol import HttpConnection


class Request:
    """A parsed request head, its body as a stream, and the way back to its client.

    The head is as the client sent it: ``raw_path`` undecoded, header values decoded as UTF-8
    with any other byte kept as a lone surrogate (see ``headers.field_text``); ``fields`` are
    the same headers as received, for forwarding.
    """

    __slots__ = (
        "connection",
        "content",
        "content_length",
        "continued",
        "fields",
        "headers",
        "keep_alive",
        "method",
        "raw_path",
        "started",
        "upgrade",
        "version",
    )

    def __init__(
        self,
        connection: HttpConnection,
        method: str,
        raw_path: str,
        version: tuple[int, int],
        headers: CIMultiDictProxy[str],
        fields: list[Field],
        content_length: int | None,
        content: StreamReader,
        *,
        keep_alive: bool,
        upgrade: bool,
    ) -> None:
        self.connection = connection
        self.method = method
        self.raw_path = raw_path
        self.version = version
        self.headers = headers
        self.fields = fields
        self.content_length = content_length
        self.content = content
        self.keep_alive = keep_alive  # what the client asked for; the answer may still close
        self.upgrade = upgrade  # it asked to switch protocols (the parser stopped after it)
        self.started = False  # a response head (not an interim one) has been sent
        self.continued = False  # `100 Continue` has been sent

    @property
    def body_exists(self) -> bool:
        return self.content is not EMPTY_PAYLOAD

    @property
    def remote(self) -> str:
        return self.connection.remote

    @property
    def secure(self) -> bool:
        return self.connection.secure

    @property
    def transport(self) -> asyncio.Transport | None:
        return self.connection.transport
