"""The request head written to an upstream, checked so no header can inject another."""

from __future__ import annotations

import re
from collections.abc import Sequence

Header = tuple[bytes, bytes]

# SECURITY: a CR, LF or NUL in a name or value would let a header inject more headers (or a
# second request) into the upstream connection; a name must also be a token.
_BAD_NAME = re.compile(rb"[\x00-\x20:\x7f]")
_BAD_VALUE = re.compile(rb"[\r\n\x00]")
_BAD_START_LINE = re.compile(rb"[\x00-\x20\x7f]")


def build_head(method: bytes, target: bytes, headers: Sequence[Header], framing: bytes) -> bytes:
    if _BAD_START_LINE.search(method + target):
        raise ValueError("a request line with a control character or space in it")
    if _BAD_NAME.search(b"".join([name for name, _ in headers])) or _BAD_VALUE.search(
        b"".join([value for _, value in headers])
    ):
        raise ValueError("a request header with a control character in it")
    parts = [method, b" ", target, b" HTTP/1.1\r\n"]
    for name, value in headers:
        size = len(name)
        # SECURITY: a second framing header would desynchronise the upstream connection.
        if size in (14, 17) and name.lower() in (b"content-length", b"transfer-encoding"):
            raise ValueError("framing headers are set by the connection, not the caller")
        parts += (name, b": ", value, b"\r\n")
    parts += (framing, b"\r\n")
    return b"".join(parts)


def head_for_stream(
    method: bytes, target: bytes, headers: Sequence[Header], content_length: int | None
) -> bytes:
    framing = (
        b"Transfer-Encoding: chunked\r\n"
        if content_length is None
        else b"Content-Length: %d\r\n" % content_length
    )
    return build_head(method, target, headers, framing)
